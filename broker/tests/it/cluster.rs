//! Three-node cluster tests: throughput-shaped produce/consume, leader SIGKILL during produce,
//! follower catch-up, full restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_consumer::{Consumer, ConsumerConfig, StartFrom};
use ferry_producer::{Message, Producer, ProducerConfig};
use ferry_protocol::messages::CreateTopicRequest;
use ferry_protocol::{ClientKind, ClusterClient, ClusterOptions, ConnectOptions, PartitionIndex};
use futures_util::StreamExt;

use crate::harness::{wait_for, Cluster, WAIT_MAX};

pub async fn create_topic(bootstrap: &str, name: &str, partitions: u32) {
    let client = ClusterClient::new(ClusterOptions::new(
        bootstrap,
        ConnectOptions::new("test-admin", ClientKind::Admin),
    ))
    .unwrap();
    client.call(&CreateTopicRequest { name: name.into(), partitions }).await.unwrap();
}

fn producer_config(bootstrap: &str) -> ProducerConfig {
    let mut c = ProducerConfig::new(bootstrap);
    c.linger = Duration::from_millis(2);
    c.retry_deadline = Duration::from_secs(60);
    c
}

/// Value layout: "p<partition>-<seq>".
fn value(partition: u32, seq: u64) -> Bytes {
    Bytes::from(format!("p{partition}-{seq}"))
}

fn parse_value(v: &[u8]) -> (u32, u64) {
    let s = std::str::from_utf8(v).unwrap();
    let (p, seq) = s.trim_start_matches('p').split_once('-').unwrap();
    (p.parse().unwrap(), seq.parse().unwrap())
}

/// Reads `topic` from the earliest offset until `expected` messages arrived; returns the values
/// per partition in delivery order.
pub async fn consume(
    bootstrap: &str,
    topic: &str,
    expected: usize,
) -> BTreeMap<u32, Vec<(u64, Bytes)>> {
    let mut config = ConsumerConfig::new(bootstrap, topic);
    config.start = StartFrom::Earliest;
    config.retry_deadline = Duration::from_secs(60);
    let mut consumer = Consumer::connect(config).await.unwrap();
    let mut out: BTreeMap<u32, Vec<(u64, Bytes)>> = BTreeMap::new();
    let mut seen = 0usize;
    let deadline = Instant::now() + WAIT_MAX * 2;
    while seen < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left, consumer.next()).await;
        let msg = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => panic!("consumer failed after {seen} messages: {e}"),
            Ok(None) => panic!("consumer ended after {seen} of {expected} messages"),
            Err(_) => panic!("timed out after {seen} of {expected} messages"),
        };
        out.entry(msg.partition.0).or_default().push((msg.offset.0, msg.value));
        seen += 1;
    }
    consumer.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_messages_over_four_partitions_in_order() {
    const PARTITIONS: u32 = 4;
    const PER_PARTITION: u64 = 25_000;
    let cluster = Cluster::start(3).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "orders", PARTITIONS).await;

    let producer = Producer::connect(producer_config(&bootstrap)).await.unwrap();
    let mut acks = Vec::new();
    for seq in 0..PER_PARTITION {
        for p in 0..PARTITIONS {
            let msg = Message::new(value(p, seq)).to_partition(PartitionIndex(p));
            acks.push(producer.send("orders", msg).await.unwrap());
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    producer.close().await.unwrap();

    let got = consume(&bootstrap, "orders", (PARTITIONS as u64 * PER_PARTITION) as usize).await;
    assert_eq!(got.len(), PARTITIONS as usize);
    for (p, msgs) in &got {
        assert_eq!(msgs.len() as u64, PER_PARTITION, "partition {p} count");
        for (i, (offset, v)) in msgs.iter().enumerate() {
            assert_eq!(*offset, i as u64, "partition {p} offsets are dense and in order");
            assert_eq!(parse_value(v), (*p, i as u64), "partition {p} order");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_during_produce_loses_no_acknowledged_message() {
    let mut cluster = Cluster::start(3).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "events", 2).await;
    let producer = Producer::connect(producer_config(&bootstrap)).await.unwrap();

    let mut acked: BTreeSet<(u32, u64)> = BTreeSet::new();
    let mut seq = 0u64;
    // Phase 1: produce, kill the leader halfway through, keep producing.
    let old_leader = cluster.leader().await;
    for round in 0..2 {
        if round == 1 {
            cluster.kill(old_leader);
        }
        let mut pending = Vec::new();
        for _ in 0..2_000 {
            let p = (seq % 2) as u32;
            let msg = Message::new(value(p, seq)).to_partition(PartitionIndex(p));
            pending.push(((p, seq), producer.send("events", msg).await.unwrap()));
            seq += 1;
        }
        for (id, ack) in pending {
            // Acknowledged means quorum durable; an error here is allowed only before the kill
            // took effect and is then not counted as acknowledged.
            if ack.await.is_ok() {
                acked.insert(id);
            }
        }
    }
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader, "a new leader took over");
    assert!(acked.len() >= 3_000, "the producer carried on after failover: {} acked", acked.len());
    producer.close().await.unwrap();

    let total: usize = acked.len();
    let got = consume(&bootstrap, "events", total).await;
    let read: BTreeSet<(u32, u64)> = got.values().flatten().map(|(_, v)| parse_value(v)).collect();
    let lost: Vec<_> = acked.difference(&read).take(10).collect();
    assert!(lost.is_empty(), "acknowledged messages lost: {lost:?}");

    // The killed node comes back and catches up.
    cluster.restart(old_leader);
    cluster.wait_caught_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_follower_catches_up_and_full_restart_keeps_everything() {
    let mut cluster = Cluster::start(3).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "audit", 3).await;
    let leader = cluster.leader().await;
    let follower = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    cluster.stop(follower);

    let producer = Producer::connect(producer_config(&bootstrap)).await.unwrap();
    let mut pending = Vec::new();
    for seq in 0..3_000u64 {
        let p = (seq % 3) as u32;
        let msg = Message::new(value(p, seq)).to_partition(PartitionIndex(p));
        pending.push(producer.send("audit", msg).await.unwrap());
    }
    for ack in pending {
        ack.await.unwrap();
    }
    producer.close().await.unwrap();

    cluster.restart(follower);
    cluster.wait_caught_up().await;
    let leader_status = cluster.status(cluster.leader().await).await.unwrap();
    let follower_status = cluster.status(follower).await.unwrap();
    assert!(follower_status.applied_index >= leader_status.last_log_index);

    // Crash every node (SIGKILL) and start them again; everything acknowledged is still there.
    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.leader().await;
    let got = consume(&bootstrap, "audit", 3_000).await;
    let read: BTreeSet<u64> = got.values().flatten().map(|(_, v)| parse_value(v).1).collect();
    assert_eq!(read.len(), 3_000);
    assert_eq!(read.iter().next_back().copied(), Some(2_999));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_the_same_batches_to_read_local() {
    use ferry_protocol::ErrorCode;
    let cluster = Cluster::start(3).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "replicas", 1).await;
    let producer = Producer::connect(producer_config(&bootstrap)).await.unwrap();
    for seq in 0..300 {
        let msg = Message::new(value(0, seq)).to_partition(PartitionIndex(0));
        producer.send("replicas", msg).await.unwrap().await.unwrap();
    }
    producer.close().await.unwrap();
    cluster.wait_caught_up().await;

    let mut seen = Vec::new();
    for node in &cluster.nodes {
        seen.push(read_local(&node.addr, ClientKind::Admin, "replicas", 0, 4096).await.unwrap());
    }
    assert_eq!(seen[0].len(), 300, "one batch per acknowledged send");
    assert!(seen.iter().all(|s| *s == seen[0]), "followers hold the leader's batches");
    let refused =
        read_local(&cluster.node(1).addr, ClientKind::Consumer, "replicas", 0, 4096).await;
    assert_eq!(refused.unwrap_err().code(), Some(ErrorCode::AuthFailed));
}

/// Regression (found by `ferry-bench chaos --scenario consumer-crash`): a follower killed after
/// more than 4,096 entries lost its unflushed applied state, had to re-apply them all at once
/// on restart, and its Raft core stopped on a short log read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_restarted_with_thousands_of_entries_to_reapply_catches_up() {
    let mut cluster = Cluster::start(3).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "many", 1).await;
    let producer = Producer::connect(producer_config(&bootstrap)).await.unwrap();
    // One at a time: each send is its own Raft entry.
    for seq in 0..5000 {
        let msg = Message::new(value(0, seq)).to_partition(PartitionIndex(0));
        producer.send("many", msg).await.unwrap().await.unwrap();
    }
    producer.close().await.unwrap();
    cluster.wait_caught_up().await;
    let leader = cluster.leader().await;
    let follower = cluster.nodes.iter().map(|n| n.id).find(|id| *id != leader).unwrap();
    cluster.kill(follower);
    cluster.restart(follower);
    cluster.wait_caught_up().await;
    let status = cluster.status(follower).await.unwrap();
    assert_ne!(status.role, "shutdown", "the follower's Raft core is running");
    assert!(status.applied_index >= 5000, "applied {}", status.applied_index);
}

/// Regression (found by `ferry-bench chaos --scenario full-restart`): a node elected right
/// after a restart served reads from state it had not re-applied yet, and answered
/// `UnknownTopic` for a topic that exists. It now answers the retriable `NoLeader` until it
/// applied an entry of its own term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_serves_no_read_before_it_reapplied_its_log() {
    use ferry_protocol::messages::MetadataRequest;
    use ferry_protocol::{Connection, ErrorCode};
    let mut cluster = Cluster::start(1).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "kept", 1).await;
    let producer = Producer::connect(producer_config(&bootstrap)).await.unwrap();
    for seq in 0..5000 {
        let msg = Message::new(value(0, seq)).to_partition(PartitionIndex(0));
        producer.send("kept", msg).await.unwrap().await.unwrap();
    }
    producer.close().await.unwrap();
    cluster.kill(1);
    cluster.restart(1);
    // Ask as fast as possible from the moment the node listens: every answer is either the
    // topic or a retriable error, never "unknown topic".
    let addr = cluster.node(1).addr.clone();
    let deadline = Instant::now() + WAIT_MAX;
    let mut answered = false;
    let mut retriable = 0;
    while !answered {
        assert!(Instant::now() < deadline, "no answer from the restarted node");
        let Ok(conn) =
            Connection::connect(&addr, &ConnectOptions::new("test", ClientKind::Admin)).await
        else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        loop {
            match conn.call(&MetadataRequest { topics: vec!["kept".into()] }).await {
                Ok(m) => {
                    assert_eq!(m.topics[0].partitions[0].high_watermark.0, 5000);
                    answered = true;
                    break;
                }
                Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {
                    panic!("a restarted node answered from state it had not re-applied: {e}")
                }
                Err(e) if e.is_retriable() => retriable += 1,
                Err(_) => break,
            }
        }
    }
    eprintln!("retriable answers before the node was ready: {retriable}");
}

/// Every batch of `topic`/`partition` a node holds, read from that node alone as a client of
/// `kind`, `max_bytes` per request.
async fn read_local(
    addr: &str,
    kind: ClientKind,
    topic: &str,
    partition: u32,
    max_bytes: u32,
) -> Result<Vec<(u64, Bytes)>, ferry_protocol::ClientError> {
    use ferry_protocol::messages::ReadLocalRequest;
    use ferry_protocol::{Connection, Offset, RecordBatch};
    let conn = Connection::connect(addr, &ConnectOptions::new("test", kind)).await?;
    let mut out = Vec::new();
    let mut next = 0u64;
    loop {
        let req = ReadLocalRequest {
            topic: topic.into(),
            partition: PartitionIndex(partition),
            offset: Offset(next),
            max_bytes,
        };
        let resp = conn.call(&req).await?;
        for b in &resp.batches {
            next =
                b.base_offset.0 + u64::from(RecordBatch::parse(b.bytes.clone()).unwrap().count());
            out.push((b.base_offset.0, b.bytes.clone()));
        }
        if resp.batches.is_empty() || next >= resp.high_watermark.0 {
            return Ok(out);
        }
    }
}

/// XORs 32 bytes in the middle of the largest write-ahead log file of a RocksDB directory.
fn damage_wal(db: &std::path::Path) {
    let wal = std::fs::read_dir(db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("a WAL file");
    let mut bytes = std::fs::read(&wal).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 32] {
        *b ^= 0x5A;
    }
    std::fs::write(&wal, bytes).unwrap();
}

/// A follower whose data was damaged while it was down finds the damage at start, moves the
/// data aside, and resyncs from the leader. Until caught up it neither votes nor campaigns:
/// with only it and one healthy node running, no leader is elected at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_with_damaged_data_resyncs_and_neither_votes_nor_leads_before() {
    let mut cluster = Cluster::start(3).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "kept", 1).await;
    let producer = Producer::connect(producer_config(&bootstrap)).await.unwrap();
    let send = |seq: u64| {
        let producer = producer.clone();
        async move {
            let msg = Message::new(value(0, seq)).to_partition(PartitionIndex(0));
            producer.send("kept", msg).await.unwrap().await.unwrap();
        }
    };
    for seq in 0..400 {
        send(seq).await;
    }
    cluster.wait_caught_up().await;
    let leader = cluster.leader().await;
    let followers: Vec<u64> =
        cluster.nodes.iter().map(|n| n.id).filter(|id| *id != leader).collect();
    let (victim, healthy) = (followers[0], followers[1]);
    cluster.kill(victim);
    for seq in 400..500 {
        send(seq).await;
    }
    producer.close().await.unwrap();
    let data_dir = cluster.node(victim).data_dir.clone();
    damage_wal(&data_dir.join("db"));

    cluster.kill(leader);
    cluster.restart(victim);
    wait_for("the damaged node to answer", || cluster.status(victim)).await;
    assert!(data_dir.join("RESYNC").exists(), "the damage was detected");
    let moved_aside = std::fs::read_dir(&data_dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with("damaged-"));
    assert!(moved_aside, "the damaged data is kept aside for inspection");
    // 4 s is 8 election timeouts: the healthy node campaigns and never wins without the
    // damaged node's vote; the damaged node never campaigns.
    let quiet_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < quiet_until {
        for id in [victim, healthy] {
            if let Some(s) = cluster.status(id).await {
                assert_ne!(s.role, "leader", "node {id} was elected while {victim} resyncs");
                if id == victim {
                    assert_eq!(s.role, "resyncing");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cluster.restart(leader);
    wait_for("the damaged node to finish its resync", || async {
        (!data_dir.join("RESYNC").exists()).then_some(())
    })
    .await;
    cluster.wait_caught_up().await;
    let read = |id: u64| read_local(&cluster.node(id).addr, ClientKind::Admin, "kept", 0, 1 << 20);
    let want = read(healthy).await.unwrap();
    assert_eq!(want.len(), 500, "one batch per acknowledged send");
    assert_eq!(read(victim).await.unwrap(), want);
}
