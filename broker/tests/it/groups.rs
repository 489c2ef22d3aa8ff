//! Consumer groups end to end, against real broker processes: rebalancing while producing,
//! crash redelivery, nack with backoff and attempt numbers, dead letters, ordered mode, resume
//! from committed positions, and pending retries surviving a leader kill.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_consumer::{Consumer, ConsumerConfig, Delivery, GroupConfig, GroupConsumer, StartFrom};
use ferry_producer::{Message, Producer, ProducerConfig};
use ferry_protocol::group::{
    dead_letter_topic, headers, DescribeGroupRequest, DescribeGroupResponse,
};
use ferry_protocol::{ClientKind, ClusterClient, ClusterOptions, ConnectOptions, PartitionIndex};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::cluster::create_topic;
use crate::harness::{wait_for, Cluster, WAIT_MAX};

fn producer_config(bootstrap: &str) -> ProducerConfig {
    let mut c = ProducerConfig::new(bootstrap);
    c.linger = Duration::from_millis(2);
    c.retry_deadline = Duration::from_secs(60);
    c
}

/// Short timings so rebalances and redeliveries happen within a test.
fn group_config(bootstrap: &str, group: &str, topic: &str) -> GroupConfig {
    let mut c = GroupConfig::new(bootstrap, group, topic);
    c.client_id = format!("test-{group}");
    c.session_timeout = Duration::from_secs(2);
    c.heartbeat_interval = Duration::from_millis(300);
    c.commit_interval = Duration::from_millis(200);
    c.drain_timeout = Duration::from_secs(5);
    c.retry_deadline = Duration::from_secs(60);
    c
}

async fn produce(bootstrap: &str, topic: &str, values: impl IntoIterator<Item = (u32, String)>) {
    let producer = Producer::connect(producer_config(bootstrap)).await.unwrap();
    let mut acks = Vec::new();
    for (p, v) in values {
        let msg = Message::new(Bytes::from(v)).to_partition(PartitionIndex(p));
        acks.push(producer.send(topic, msg).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    producer.close().await.unwrap();
}

/// The next delivery, failing the test after `WAIT_MAX`.
async fn next(consumer: &mut GroupConsumer) -> Delivery {
    match tokio::time::timeout(WAIT_MAX, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("consumer failed: {e}"),
        Ok(None) => panic!("consumer stream ended"),
        Err(_) => panic!("no delivery within {WAIT_MAX:?}"),
    }
}

/// Asserts that no delivery arrives within `quiet`.
async fn assert_quiet(consumer: &mut GroupConsumer, quiet: Duration) {
    if let Ok(Some(d)) = tokio::time::timeout(quiet, consumer.next()).await {
        panic!("unexpected delivery: {:?}", d.map(|d| (d.partition, d.offset, d.value, d.attempt)));
    }
}

fn text(b: &Bytes) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

async fn describe(bootstrap: &str, group: &str) -> Option<DescribeGroupResponse> {
    let client = ClusterClient::new(ClusterOptions::new(
        bootstrap,
        ConnectOptions::new("test-admin", ClientKind::Admin),
    ))
    .unwrap();
    client.call(&DescribeGroupRequest { group: group.into() }).await.ok()
}

/// One processing event, in the order the consumers saw them.
#[derive(Debug, Clone)]
struct Seen {
    consumer: usize,
    partition: u32,
    offset: u64,
    value: String,
}

/// Runs a group member that acks everything and logs it until `stop` fires; then closes it
/// cleanly (`graceful`) or drops it as a crash would.
fn spawn_member(
    config: GroupConfig,
    id: usize,
    log: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
    graceful: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut consumer = GroupConsumer::subscribe(config).await.unwrap();
        loop {
            let d = tokio::select! {
                () = stop.cancelled() => break,
                d = consumer.next() => d,
            };
            let d = match d {
                Some(Ok(d)) => d,
                Some(Err(e)) => panic!("member {id} failed: {e}"),
                None => panic!("member {id} stream ended"),
            };
            log.lock().unwrap().push(Seen {
                consumer: id,
                partition: d.partition.0,
                offset: d.offset.0,
                value: text(&d.value),
            });
            d.ack();
        }
        if graceful {
            consumer.close().await;
        } else {
            drop(consumer);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_join_and_leave_while_fifty_thousand_messages_are_produced() {
    const PARTITIONS: u32 = 4;
    const TOTAL: u32 = 50_000;
    const ROUND: u32 = 1_000;
    let cluster = Cluster::start(1).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "orders", PARTITIONS).await;
    let config = group_config(&bootstrap, "billing", "orders");
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stops: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
    let seen_count = |log: &Arc<Mutex<Vec<Seen>>>| {
        log.lock().unwrap().iter().map(|s| s.value.clone()).collect::<BTreeSet<_>>().len()
    };

    // 50 rounds of 1,000 messages, 60 ms apart. Member 0 starts alone; 1 joins at round 10
    // and 2 at round 20; 0 leaves cleanly at round 30; 1 crashes at round 40.
    let producer = Producer::connect(producer_config(&bootstrap)).await.unwrap();
    let mut members =
        vec![Some(spawn_member(config.clone(), 0, log.clone(), stops[0].clone(), true))];
    for round in 0..TOTAL / ROUND {
        let mut acks = Vec::with_capacity(ROUND as usize);
        for n in round * ROUND..(round + 1) * ROUND {
            let msg = Message::new(Bytes::from(format!("m{n}")))
                .to_partition(PartitionIndex(n % PARTITIONS));
            acks.push(producer.send("orders", msg).await.unwrap());
        }
        for a in acks {
            a.await.unwrap();
        }
        match round {
            10 => members.push(Some(spawn_member(
                config.clone(),
                1,
                log.clone(),
                stops[1].clone(),
                false,
            ))),
            20 => members.push(Some(spawn_member(
                config.clone(),
                2,
                log.clone(),
                stops[2].clone(),
                true,
            ))),
            30 | 40 => {
                let id = if round == 30 { 0 } else { 1 };
                stops[id].cancel();
                members[id].take().unwrap().await.unwrap();
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    producer.close().await.unwrap();

    wait_for("every message processed by the remaining member", || async {
        (seen_count(&log) == TOTAL as usize).then_some(())
    })
    .await;
    stops[2].cancel();
    members[2].take().unwrap().await.unwrap();

    let log = log.lock().unwrap().clone();
    let values: BTreeSet<&str> = log.iter().map(|s| s.value.as_str()).collect();
    assert_eq!(values.len(), TOTAL as usize, "every message processed at least once");
    // First deliveries per partition come in offset order.
    let mut first_seen: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut last_first: BTreeMap<u32, u64> = BTreeMap::new();
    for s in &log {
        if first_seen.insert((s.partition, s.offset)) {
            if let Some(prev) = last_first.insert(s.partition, s.offset) {
                assert!(
                    s.offset > prev,
                    "partition {} first delivered {} after {prev} (member {})",
                    s.partition,
                    s.offset,
                    s.consumer
                );
            }
        }
    }
    let per_member: BTreeMap<usize, usize> = log.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(s.consumer).or_default() += 1;
        m
    });
    assert_eq!(per_member.len(), 3, "every member processed some messages: {per_member:?}");
    eprintln!(
        "rebalance test: {} deliveries for {TOTAL} messages ({} duplicates after the crash), per member {per_member:?}",
        log.len(),
        log.len() - TOTAL as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_batch_has_its_unacked_messages_redelivered_to_another() {
    let cluster = Cluster::start(1).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "jobs", 2).await;
    produce(&bootstrap, "jobs", (0..200u32).map(|n| (n % 2, format!("j{n}")))).await;
    let config = group_config(&bootstrap, "workers", "jobs");

    let mut first = GroupConsumer::subscribe(config.clone()).await.unwrap();
    let mut held = Vec::new();
    let mut acked = BTreeSet::new();
    for i in 0..100 {
        let d = next(&mut first).await;
        if i % 2 == 0 {
            acked.insert(text(&d.value));
            d.ack();
        } else {
            held.push(d);
        }
    }
    let unacked: BTreeSet<String> = held.iter().map(|d| text(&d.value)).collect();
    // Let a commit happen so the acked prefix is not all redelivered.
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop(first); // a crash: no commit, no leave
    drop(held);

    let mut second = GroupConsumer::subscribe(config).await.unwrap();
    let mut got = BTreeSet::new();
    let everything: BTreeSet<String> = (0..200).map(|n| format!("j{n}")).collect();
    let missing = |got: &BTreeSet<String>| {
        everything.iter().filter(|v| !got.contains(*v) && !acked.contains(*v)).count()
    };
    while missing(&got) > 0 {
        let d = next(&mut second).await;
        assert_eq!(d.attempt, 1, "a crash redelivery is the same attempt from the log");
        got.insert(text(&d.value));
        d.ack();
    }
    assert!(unacked.is_subset(&got), "every message the killed member held is redelivered");
    second.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_redelivers_after_the_delay_with_the_attempt_number() {
    let cluster = Cluster::start(1).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "mail", 1).await;
    produce(&bootstrap, "mail", [(0, "hello".to_string())]).await;
    let mut config = group_config(&bootstrap, "senders", "mail");
    config.retry_schedule = vec![Duration::from_millis(400), Duration::from_millis(800)];
    let mut consumer = GroupConsumer::subscribe(config).await.unwrap();

    let first = next(&mut consumer).await;
    assert_eq!((first.attempt, text(&first.value)), (1, "hello".to_string()));
    let origin = (first.topic.clone(), first.partition, first.offset);
    let nacked = Instant::now();
    first.nack(Some(Duration::from_millis(1500))).await.unwrap();

    let second = next(&mut consumer).await;
    assert!(
        nacked.elapsed() >= Duration::from_millis(1400),
        "came back after {:?}",
        nacked.elapsed()
    );
    assert_eq!(second.attempt, 2);
    assert_eq!((second.topic.clone(), second.partition, second.offset), origin, "origin kept");
    assert_eq!(text(&second.value), "hello");
    assert!(second.headers.iter().all(|(n, _)| !n.starts_with("ferry-")), "ours hidden");

    // No delay given: the schedule's entry for attempt 2 (800 ms).
    let nacked = Instant::now();
    second.nack_because(None, "smtp down").await.unwrap();
    let third = next(&mut consumer).await;
    assert!(
        nacked.elapsed() >= Duration::from_millis(700),
        "came back after {:?}",
        nacked.elapsed()
    );
    assert_eq!(third.attempt, 3);
    assert!(third.ack());
    assert_quiet(&mut consumer, Duration::from_millis(1500)).await;
    consumer.close().await;
}

/// Every record of the group's dead-letter topic, as (value, headers).
async fn dead_letters(
    bootstrap: &str,
    group: &str,
    n: usize,
) -> Vec<(String, BTreeMap<String, String>)> {
    let mut config = ConsumerConfig::new(bootstrap, dead_letter_topic(group));
    config.start = StartFrom::Earliest;
    let mut reader = Consumer::connect(config).await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let m = tokio::time::timeout(WAIT_MAX, reader.next()).await.unwrap().unwrap().unwrap();
        let h = m.headers.iter().map(|(k, v)| (k.clone(), text(v))).collect();
        out.push((text(&m.value), h));
    }
    reader.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_last_attempt_a_message_is_dead_lettered_with_its_origin() {
    let cluster = Cluster::start(1).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "payments", 2).await;
    produce(&bootstrap, "payments", [(1, "poison".to_string()), (0, "bad".to_string())]).await;
    let mut config = group_config(&bootstrap, "ledger", "payments");
    config.max_attempts = 3;
    config.retry_schedule = vec![Duration::from_millis(100)];
    let mut consumer = GroupConsumer::subscribe(config).await.unwrap();

    let mut attempts = Vec::new();
    let mut origin = None;
    while attempts.len() < 4 {
        let d = next(&mut consumer).await;
        if text(&d.value) == "bad" {
            d.term("invalid account").await.unwrap();
            attempts.push(0);
            continue;
        }
        attempts.push(d.attempt);
        origin = Some((d.partition.0, d.offset.0));
        d.nack_because(None, "boom").await.unwrap();
    }
    attempts.retain(|a| *a != 0);
    assert_eq!(attempts, vec![1, 2, 3]);
    assert_quiet(&mut consumer, Duration::from_millis(800)).await;
    consumer.close().await;

    let dead = dead_letters(&bootstrap, "ledger", 2).await;
    let by_value: BTreeMap<&str, &BTreeMap<String, String>> =
        dead.iter().map(|(v, h)| (v.as_str(), h)).collect();
    let poison = by_value["poison"];
    let (p, o) = origin.unwrap();
    assert_eq!(poison[headers::ORIGIN_TOPIC], "payments");
    assert_eq!(poison[headers::ORIGIN_PARTITION], p.to_string());
    assert_eq!(poison[headers::ORIGIN_OFFSET], o.to_string());
    assert_eq!(poison[headers::ATTEMPT], "3");
    assert_eq!(poison[headers::LAST_ERROR], "boom");
    assert!(poison[headers::DEAD_LETTERED_MS].parse::<u64>().unwrap() > 0);
    let bad = by_value["bad"];
    assert_eq!(bad[headers::ATTEMPT], "1", "term dead-letters at once");
    assert_eq!(bad[headers::LAST_ERROR], "invalid account");
    assert_eq!(bad[headers::ORIGIN_PARTITION], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_mode_retries_in_place_and_blocks_only_its_partition() {
    let cluster = Cluster::start(1).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "ledger", 2).await;
    let mut values: Vec<(u32, String)> = (0..3).map(|i| (0, format!("a{i}"))).collect();
    values.extend((0..10).map(|i| (1, format!("b{i}"))));
    produce(&bootstrap, "ledger", values).await;
    let mut config = group_config(&bootstrap, "books", "ledger");
    config.ordered = true;
    config.retry_schedule = vec![Duration::from_secs(1)];
    let mut consumer = GroupConsumer::subscribe(config).await.unwrap();

    let mut order = Vec::new();
    while order.len() < 14 {
        let d = next(&mut consumer).await;
        let label = format!("{}#{}", text(&d.value), d.attempt);
        order.push(label.clone());
        if label == "a0#1" {
            d.nack(None).await.unwrap();
        } else {
            d.ack();
        }
    }
    let partition0: Vec<&str> =
        order.iter().filter(|l| l.starts_with('a')).map(String::as_str).collect();
    assert_eq!(partition0, vec!["a0#1", "a0#2", "a1#1", "a2#1"], "retried in place, in order");
    let retry_at = order.iter().position(|l| l == "a0#2").unwrap();
    let last_b = order.iter().rposition(|l| l.starts_with('b')).unwrap();
    assert!(last_b < retry_at, "partition 1 is not blocked by partition 0: {order:?}");
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumption_resumes_from_the_committed_position_after_a_restart() {
    let cluster = Cluster::start(1).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "events", 3).await;
    produce(&bootstrap, "events", (0..90u32).map(|n| (n % 3, format!("e{n}")))).await;
    let config = group_config(&bootstrap, "audit", "events");

    let mut consumer = GroupConsumer::subscribe(config.clone()).await.unwrap();
    for _ in 0..90 {
        next(&mut consumer).await.ack();
    }
    consumer.close().await;
    let d = describe(&bootstrap, "audit").await.unwrap();
    let committed: u64 =
        d.offsets.iter().filter(|o| o.topic == "events").map(|o| o.committed.unwrap().0).sum();
    assert_eq!(committed, 90, "close commits everything acked");
    assert!(d.members.is_empty(), "close leaves the group");

    produce(&bootstrap, "events", (90..120u32).map(|n| (n % 3, format!("e{n}")))).await;
    let mut consumer = GroupConsumer::subscribe(config).await.unwrap();
    let mut got = BTreeSet::new();
    for _ in 0..30 {
        let d = next(&mut consumer).await;
        got.insert(text(&d.value));
        d.ack();
    }
    assert_eq!(got, (90..120).map(|n| format!("e{n}")).collect::<BTreeSet<_>>());
    assert_quiet(&mut consumer, Duration::from_millis(800)).await;
    consumer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_with_a_thousand_pending_retries_redelivers_them_all() {
    const N: usize = 1000;
    let mut cluster = Cluster::start(3).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "tasks", 2).await;
    produce(&bootstrap, "tasks", (0..N as u32).map(|n| (n % 2, format!("t{n}")))).await;
    let mut config = group_config(&bootstrap, "runners", "tasks");
    config.retry_schedule = vec![Duration::from_secs(4)];
    let mut consumer = GroupConsumer::subscribe(config.clone()).await.unwrap();

    // Nack every first delivery: 1,000 redeliveries pending in the retry topic's timers.
    let mut nacks = Vec::new();
    for _ in 0..N {
        let d = next(&mut consumer).await;
        assert_eq!(d.attempt, 1);
        nacks.push(tokio::spawn(d.nack(None)));
    }
    for n in nacks {
        n.await.unwrap().unwrap();
    }
    let leader = cluster.leader().await;
    cluster.kill(leader);

    let mut redelivered = BTreeSet::new();
    while redelivered.len() < N {
        let d = next(&mut consumer).await;
        if d.attempt == 2 {
            redelivered.insert(text(&d.value));
        }
        d.ack();
    }
    assert_eq!(redelivered.len(), N, "every pending retry came back after the failover");
    consumer.close().await;

    // The positions committed before and after the failover hold: a new member gets nothing.
    let mut again = GroupConsumer::subscribe(config).await.unwrap();
    wait_for("the new member to hold every partition", || async {
        (again.partitions().len() == 2).then_some(())
    })
    .await;
    assert_quiet(&mut again, Duration::from_secs(1)).await;
    again.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_delivery_times_out_and_is_redelivered() {
    let cluster = Cluster::start(1).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "slow", 1).await;
    produce(&bootstrap, "slow", [(0, "held".to_string())]).await;
    let mut config = group_config(&bootstrap, "sleepy", "slow");
    config.ack_timeout = Duration::from_millis(500);
    config.retry_schedule = vec![Duration::from_millis(200)];
    let mut consumer = GroupConsumer::subscribe(config).await.unwrap();

    let held = next(&mut consumer).await;
    let handed = Instant::now();
    let again = next(&mut consumer).await;
    assert!(handed.elapsed() >= Duration::from_millis(700), "after {:?}", handed.elapsed());
    assert_eq!((again.attempt, text(&again.value)), (2, "held".to_string()));
    assert!(!held.ack(), "an ack after the timeout does nothing");
    assert!(again.ack());
    assert_quiet(&mut consumer, Duration::from_millis(1500)).await;
    consumer.close().await;
}
