//! Transactional messages end to end: half messages, decisions, check-back, parking, failover
//! and producer loss, against real broker processes and the real transactional producer.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_consumer::{Consumer, ConsumerConfig, StartFrom};
use ferry_producer::{
    checker_fn, Message, Producer, ProducerConfig, ProducerError, Resolution, TransactionConfig,
    TransactionalProducer,
};
use ferry_protocol::txn::{
    ListTransactionsRequest, TransactionStatsRequest, TransactionStatsResponse, TxnInfo,
};
use ferry_protocol::{
    ClientKind, ClusterClient, ClusterOptions, ConnectOptions, Decision, DecisionOrigin,
    PartitionIndex, TxnId, TxnState,
};
use futures_util::StreamExt;

use crate::cluster::create_topic;
use crate::harness::{wait_for, Cluster, WAIT_MAX};

/// Fast check-back timing so tests run in seconds: first check after 500 ms, then every
/// 300 ms, three counted checks before parking.
const FAST_CHECKS: &str = "txn_check_timeout_ms = 500\n\
                           txn_check_backoff_ms = [300]\n\
                           txn_check_max = 3\n";

/// Marker values start with this; each read uses a fresh one and skips older ones.
const MARKER_PREFIX: &[u8] = b"--end-";

fn admin(bootstrap: &str) -> ClusterClient {
    let mut opts =
        ClusterOptions::new(bootstrap, ConnectOptions::new("test-admin", ClientKind::Admin));
    opts.retry.deadline = Duration::from_secs(60);
    ClusterClient::new(opts).unwrap()
}

fn txn_config(bootstrap: &str, group: &str) -> TransactionConfig {
    let mut c = TransactionConfig::new(bootstrap, group);
    c.producer.retry_deadline = Duration::from_secs(60);
    c.heartbeat_interval = Duration::from_millis(200);
    c
}

/// A checker that decides by the message value's prefix and counts how often it was asked.
#[derive(Clone, Default)]
struct ByPrefix {
    asked: Arc<Mutex<HashMap<TxnId, u32>>>,
}

impl ByPrefix {
    fn checker(&self) -> impl ferry_producer::TransactionChecker {
        let asked = self.asked.clone();
        checker_fn(move |view: ferry_producer::MessageView| {
            let asked = asked.clone();
            async move {
                *asked.lock().unwrap().entry(view.txn_id).or_default() += 1;
                resolution_for(&view.value)
            }
        })
    }

    fn times_asked(&self, id: TxnId) -> u32 {
        self.asked.lock().unwrap().get(&id).copied().unwrap_or(0)
    }
}

fn resolution_for(value: &[u8]) -> Resolution {
    if value.starts_with(b"commit") {
        Resolution::Commit
    } else if value.starts_with(b"rollback") {
        Resolution::Rollback
    } else {
        Resolution::Unknown
    }
}

async fn txn(client: &ClusterClient, id: TxnId) -> TxnInfo {
    let req = ListTransactionsRequest { txn_id: Some(id), limit: 1, ..Default::default() };
    client.call(&req).await.unwrap().txns.pop().unwrap()
}

async fn stats(client: &ClusterClient) -> TransactionStatsResponse {
    client.call(&TransactionStatsRequest).await.unwrap()
}

/// Appends a fresh marker to every partition, then reads the topic from the start until each
/// partition's marker: returns every other (non-marker) value with how often it was read.
async fn read_all(bootstrap: &str, topic: &str, partitions: u32) -> BTreeMap<Bytes, usize> {
    let mut pc = ProducerConfig::new(bootstrap);
    pc.retry_deadline = Duration::from_secs(60);
    let producer = Producer::connect(pc).await.unwrap();
    let mut marker_value = MARKER_PREFIX.to_vec();
    marker_value.extend_from_slice(fastrand::u64(..).to_string().as_bytes());
    let marker_value = Bytes::from(marker_value);
    for p in 0..partitions {
        let marker = Message::new(marker_value.clone()).to_partition(PartitionIndex(p));
        producer.send_and_wait(topic, marker).await.unwrap();
    }
    producer.close().await.unwrap();
    let mut config = ConsumerConfig::new(bootstrap, topic);
    config.start = StartFrom::Earliest;
    config.retry_deadline = Duration::from_secs(60);
    let mut consumer = Consumer::connect(config).await.unwrap();
    let mut seen = BTreeMap::new();
    let mut markers = BTreeSet::new();
    let deadline = Instant::now() + WAIT_MAX;
    while markers.len() < partitions as usize {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, consumer.next()).await {
            Ok(Some(m)) => m.unwrap(),
            Ok(None) => panic!("consumer ended"),
            Err(_) => panic!("timed out reading {topic}; markers seen {markers:?}"),
        };
        if msg.value == marker_value {
            markers.insert(msg.partition.0);
        } else if !msg.value.starts_with(MARKER_PREFIX) {
            *seen.entry(msg.value).or_insert(0) += 1;
        }
    }
    consumer.close().await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_is_visible_once_rollback_never_and_decisions_never_flip() {
    let cluster = Cluster::start_with(1, FAST_CHECKS).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "orders", 2).await;
    let checker = ByPrefix::default();
    let producer = TransactionalProducer::connect(txn_config(&bootstrap, "g1"), checker.checker())
        .await
        .unwrap();

    let a = producer.send_half("orders", Message::new("commit-a")).await.unwrap();
    let a_id = a.id();
    let committed = a.commit().await.unwrap();
    assert!(!committed.repeated);
    assert!(committed.offset.is_some());
    // The same decision again is a no-op.
    let again = producer.end_transaction(a_id, Decision::Commit, DecisionOrigin::Producer).await;
    assert!(again.unwrap().repeated);
    // The other decision is refused, with the state.
    let flip = producer.end_transaction(a_id, Decision::Rollback, DecisionOrigin::Producer).await;
    match flip {
        Err(ProducerError::TransactionAlreadyResolved { state, .. }) => {
            assert_eq!(state, TxnState::Committed)
        }
        other => panic!("expected TransactionAlreadyResolved, got {other:?}"),
    }

    let b = producer.send_half("orders", Message::new("rollback-b")).await.unwrap();
    let b_id = b.id();
    assert!(!b.rollback().await.unwrap().repeated);
    let flip = producer.end_transaction(b_id, Decision::Commit, DecisionOrigin::Operator).await;
    assert!(matches!(
        flip,
        Err(ProducerError::TransactionAlreadyResolved { state: TxnState::RolledBack, .. })
    ));

    // A pending one stays invisible while it waits (checked by the marker read below: it is
    // still pending then, its checker answers unknown).
    let pending = producer.send_half("orders", Message::new("unknown-c")).await.unwrap();
    let c_id = pending.id();
    drop(pending);

    // send_in_transaction: Ok commits, Err rolls back.
    let ok: Result<u32, String> = producer
        .send_in_transaction("orders", Message::new("commit-d"), |_id| async { Ok(7) })
        .await
        .unwrap();
    assert_eq!(ok, Ok(7));
    let failed: Result<(), String> = producer
        .send_in_transaction("orders", Message::new("rollback-e"), |_id| async {
            Err("local transaction failed".to_string())
        })
        .await
        .unwrap();
    assert!(failed.is_err());

    let seen = read_all(&bootstrap, "orders", 2).await;
    let expected: BTreeMap<Bytes, usize> =
        [("commit-a", 1), ("commit-d", 1)].into_iter().map(|(v, n)| (Bytes::from(v), n)).collect();
    assert_eq!(seen, expected);

    let client = admin(&bootstrap);
    assert_eq!(txn(&client, a_id).await.state, TxnState::Committed);
    assert_eq!(txn(&client, b_id).await.state, TxnState::RolledBack);
    assert!(matches!(txn(&client, c_id).await.state, TxnState::Pending | TxnState::Parked));
    // Neither the committed nor the rolled-back one was ever checked.
    assert_eq!(checker.times_asked(a_id) + checker.times_asked(b_id), 0);
    producer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_back_resolves_commit_rollback_and_parks_unknown_after_max_checks() {
    let cluster = Cluster::start_with(1, FAST_CHECKS).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "pay", 1).await;
    let checker = ByPrefix::default();
    let producer = TransactionalProducer::connect(txn_config(&bootstrap, "g2"), checker.checker())
        .await
        .unwrap();
    let mut ids = BTreeMap::new();
    for value in ["commit-1", "rollback-1", "unknown-1", "commit-2", "rollback-2"] {
        let t = producer.send_half("pay", Message::new(value)).await.unwrap();
        ids.insert(value, t.id());
        drop(t); // left to check-back
    }
    let client = admin(&bootstrap);
    wait_for("check-backs to resolve or park every transaction", || async {
        let s = stats(&client).await;
        let g = s.groups.iter().find(|g| g.group == "g2")?;
        (g.pending == 0 && g.parked == 1 && g.committed == 2 && g.rolled_back == 2).then_some(())
    })
    .await;
    for (value, id) in &ids {
        let info = txn(&client, *id).await;
        let want = match resolution_for(value.as_bytes()) {
            Resolution::Commit => TxnState::Committed,
            Resolution::Rollback => TxnState::RolledBack,
            Resolution::Unknown => TxnState::Parked,
        };
        assert_eq!(info.state, want, "{value}");
        if want == TxnState::Parked {
            // Exactly txn_check_max counted checks, each answered "unknown".
            assert_eq!(info.check_count, 3);
            assert_eq!(checker.times_asked(*id), 3);
        } else {
            assert_eq!(info.origin, Some(DecisionOrigin::CheckBack));
        }
    }
    let parked = ListTransactionsRequest { parked_only: true, limit: 10, ..Default::default() };
    let listed = client.call(&parked).await.unwrap();
    assert_eq!(listed.txns.len(), 1);
    assert_eq!(listed.txns[0].txn_id, ids["unknown-1"]);

    let seen = read_all(&bootstrap, "pay", 1).await;
    let keys: Vec<&[u8]> = seen.keys().map(|k| k.as_ref()).collect();
    assert_eq!(keys, vec![b"commit-1".as_ref(), b"commit-2".as_ref()]);
    assert!(seen.values().all(|n| *n == 1));

    // An operator resolves the parked one; it becomes visible exactly once.
    let resolved = producer
        .end_transaction(ids["unknown-1"], Decision::Commit, DecisionOrigin::Operator)
        .await
        .unwrap();
    assert_eq!(resolved.state, TxnState::Committed);
    let seen = read_all(&bootstrap, "pay", 1).await;
    assert_eq!(seen.get(&Bytes::from("unknown-1")), Some(&1));
    producer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_wait_for_a_live_producer_and_another_instance_of_the_group_answers() {
    let cluster = Cluster::start_with(1, FAST_CHECKS).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "ship", 1).await;
    // The first instance sends half messages and dies without deciding: its tasks stop and its
    // connections close, as when the process is killed.
    let first = ByPrefix::default();
    let producer = TransactionalProducer::connect(txn_config(&bootstrap, "g3"), first.checker())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        let value = if i % 2 == 0 { format!("commit-{i}") } else { format!("rollback-{i}") };
        let t = producer.send_half("ship", Message::new(value)).await.unwrap();
        ids.push(t.id());
        drop(t);
    }
    drop(producer);
    let client = admin(&bootstrap);
    // With nobody of the group connected, due checks are not counted: after several check
    // periods, nothing is parked and no check was counted.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for id in &ids {
        let info = txn(&client, *id).await;
        assert_eq!(info.state, TxnState::Pending);
        assert_eq!(info.check_count, 0);
    }
    assert!(ids.iter().all(|id| first.times_asked(*id) == 0));

    // Another instance of the group connects and resolves every one.
    let second = ByPrefix::default();
    let other = TransactionalProducer::connect(txn_config(&bootstrap, "g3"), second.checker())
        .await
        .unwrap();
    wait_for("the second instance to resolve every transaction", || async {
        let s = stats(&client).await;
        let g = s.groups.iter().find(|g| g.group == "g3")?;
        (g.pending == 0 && g.committed == 10 && g.rolled_back == 10).then_some(())
    })
    .await;
    assert!(ids.iter().all(|id| second.times_asked(*id) >= 1));
    let seen = read_all(&bootstrap, "ship", 1).await;
    assert_eq!(seen.len(), 10);
    assert!(seen.iter().all(|(v, n)| v.starts_with(b"commit") && *n == 1));
    other.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_with_a_thousand_open_transactions_all_resolve_by_check_back() {
    const TXNS: usize = 1000;
    const IN_FLIGHT: usize = 64;
    // The first check comes 8 s after each half message: the leader dies before any is due.
    // Then all 1,000 are due at once. The new leader paces them (txn_check_rate_per_producer)
    // so the producer's queue never overflows: six checks each are plenty. Unpaced, most
    // checks were dropped by the producer yet counted, and transactions were parked.
    let config = "txn_check_timeout_ms = 8000\ntxn_check_backoff_ms = [500]\ntxn_check_max = 6\n";
    let mut cluster = Cluster::start_with(3, config).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "ledger", 4).await;
    let checker = ByPrefix::default();
    let producer = TransactionalProducer::connect(txn_config(&bootstrap, "g4"), checker.checker())
        .await
        .unwrap();
    let mut ids = BTreeMap::new();
    let values: Vec<String> = (0..TXNS)
        .map(|i| if i % 3 == 0 { format!("rollback-{i}") } else { format!("commit-{i}") })
        .collect();
    for chunk in values.chunks(IN_FLIGHT) {
        let sends = chunk.iter().map(|v| {
            let producer = producer.clone();
            let v = v.clone();
            async move {
                let t = producer.send_half("ledger", Message::new(v.clone())).await.unwrap();
                let id = t.id();
                drop(t);
                (v, id)
            }
        });
        ids.extend(futures_util::future::join_all(sends).await);
    }
    assert_eq!(ids.len(), TXNS);
    let client = admin(&bootstrap);
    let before = stats(&client).await;
    let g = before.groups.iter().find(|g| g.group == "g4").unwrap();
    assert_eq!(g.pending, TXNS as u64, "every transaction still open before the kill");

    let leader = cluster.leader().await;
    cluster.kill(leader);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);

    wait_for("check-back after failover to resolve all 1,000 transactions", || async {
        let s = client.call(&TransactionStatsRequest).await.ok()?;
        let g = s.groups.iter().find(|g| g.group == "g4")?;
        (g.pending == 0 && g.parked == 0).then_some(())
    })
    .await;
    cluster.restart(leader);
    cluster.wait_caught_up().await;

    // None lost, none flipped: every transaction ended the way its checker says.
    let s = stats(&client).await;
    let g = s.groups.iter().find(|g| g.group == "g4").unwrap();
    let rollbacks = values.iter().filter(|v| v.starts_with("rollback")).count() as u64;
    assert_eq!((g.committed, g.rolled_back), (TXNS as u64 - rollbacks, rollbacks));
    for (value, id) in &ids {
        let info = txn(&client, *id).await;
        let want = match resolution_for(value.as_bytes()) {
            Resolution::Commit => TxnState::Committed,
            _ => TxnState::RolledBack,
        };
        assert_eq!(info.state, want, "{value} ({id})");
    }
    // None committed twice, no rolled-back one visible.
    let seen = read_all(&bootstrap, "ledger", 4).await;
    assert_eq!(seen.len() as u64, TXNS as u64 - rollbacks);
    for (value, n) in &seen {
        assert!(value.starts_with(b"commit"), "{value:?} is visible");
        assert_eq!(*n, 1, "{value:?} read {n} times");
    }
    producer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_checks_roll_back_when_configured_to() {
    let config = format!("{FAST_CHECKS}txn_check_exhausted = \"rollback\"\n");
    let cluster = Cluster::start_with(1, &config).await;
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "audit", 1).await;
    let checker = ByPrefix::default();
    let producer = TransactionalProducer::connect(txn_config(&bootstrap, "g5"), checker.checker())
        .await
        .unwrap();
    let t = producer.send_half("audit", Message::new("unknown-x")).await.unwrap();
    let id = t.id();
    drop(t);
    let client = admin(&bootstrap);
    let info = wait_for("the unanswered transaction to be rolled back", || async {
        let info = txn(&client, id).await;
        (info.state == TxnState::RolledBack).then_some(info)
    })
    .await;
    assert_eq!(info.origin, Some(DecisionOrigin::ChecksExhausted));
    assert_eq!(info.check_count, 3);
    // Rolled back by the broker: a late commit from the producer is refused.
    let late = producer.end_transaction(id, Decision::Commit, DecisionOrigin::Producer).await;
    assert!(matches!(
        late,
        Err(ProducerError::TransactionAlreadyResolved { state: TxnState::RolledBack, .. })
    ));
    assert!(read_all(&bootstrap, "audit", 1).await.is_empty());
    producer.close().await.unwrap();
}
