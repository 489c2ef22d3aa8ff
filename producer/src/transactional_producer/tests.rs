//! Tests of the transactional producer against the scripted broker in `fake_broker.rs`:
//! half sends, decisions, routing, check-back answers, close. The real broker is exercised in
//! `broker/tests`.

use std::sync::atomic::AtomicUsize;

use ferry_protocol::record::RecordBatch;
use ferry_protocol::txn::CheckTransactionPush;
use ferry_protocol::{Offset, TxnState};
use tokio::sync::Notify;

use super::*;
use crate::check_back::{checker_fn, MessageView, Resolution};
use crate::fake_broker::{FakeBroker, FakeState, WAIT_MAX};
use crate::transaction::{Committed, RolledBack};

fn config(fake: &FakeBroker) -> TransactionConfig {
    let mut c = TransactionConfig::new(fake.addr.clone(), "g");
    c.producer.client_id = "txn-test".into();
    c.producer.request_timeout = Duration::from_secs(2);
    c.producer.retry_deadline = Duration::from_secs(5);
    c.heartbeat_interval = Duration::from_millis(20);
    c
}

fn unknown_checker() -> impl TransactionChecker {
    checker_fn(|_: MessageView| async { Resolution::Unknown })
}

fn batch_of(value: &'static str) -> Bytes {
    let mut builder = RecordBatchBuilder::new(1, 0, 0);
    builder.push(&Record {
        timestamp_ms: 3,
        key: None,
        headers: vec![],
        value: Bytes::from_static(value.as_bytes()),
    });
    builder.finish()
}

/// The one decision the fake received for `txn_id`, once it arrives.
async fn decision_for(fake: &FakeBroker, txn_id: TxnId) -> EndTransactionRequest {
    fake.wait_for("a decision", |s| s.ends.iter().find(|e| e.txn_id == txn_id).copied()).await
}

fn ends_for(state: &FakeState, txn_id: TxnId) -> usize {
    state.ends.iter().filter(|e| e.txn_id == txn_id).count()
}

#[tokio::test]
async fn half_send_then_commit_and_rollback() {
    let fake = FakeBroker::start(&[("orders", 4)]).await;
    let producer = TransactionalProducer::connect(config(&fake), unknown_checker()).await.unwrap();
    assert_eq!(producer.group(), "g");
    {
        let state = fake.state();
        let hello = &state.handshakes[0];
        assert_eq!(hello.kind, ClientKind::Producer);
        assert_eq!(hello.producer_group, "g");
        assert_eq!(hello.client_id, "txn-test");
    }

    let message = Message::new("a").with_key("order-42").with_header("h", "v");
    let first = producer.send_half("orders", message).await.unwrap();
    assert_eq!(first.topic(), "orders");
    assert_eq!(first.partition(), partition_for_key(b"order-42", 4));
    let first_id = first.id();
    let committed = first.commit().await.unwrap();
    assert_eq!(
        committed,
        Committed {
            txn_id: first_id,
            partition: partition_for_key(b"order-42", 4),
            offset: Some(Offset(0)),
            repeated: false
        }
    );

    let second = producer
        .send_half_with_timeout(
            "orders",
            Message::new("b").to_partition(PartitionIndex(3)),
            Duration::from_millis(1500),
        )
        .await
        .unwrap();
    assert_eq!(second.partition(), PartitionIndex(3));
    let second_id = second.id();
    let rolled = second.rollback().await.unwrap();
    assert_eq!(rolled, RolledBack { txn_id: second_id, repeated: false });

    {
        let state = fake.state();
        let (a, b) = (&state.halves[0], &state.halves[1]);
        assert_eq!((a.group.as_str(), a.topic.as_str()), ("g", "orders"));
        assert_eq!((a.check_timeout_ms, b.check_timeout_ms), (0, 1500));
        let (a, b) = (
            RecordBatch::parse(a.batch.clone()).unwrap(),
            RecordBatch::parse(b.batch.clone()).unwrap(),
        );
        assert_ne!(a.producer_id(), 0);
        assert_eq!(a.producer_id(), b.producer_id());
        assert_ne!(a.base_sequence(), b.base_sequence(), "every half gets a fresh sequence");
        let record = a.records().next().unwrap().unwrap();
        assert_eq!(a.count(), 1);
        assert_eq!(record.value, Bytes::from_static(b"a"));
        assert_eq!(record.key, Some(Bytes::from_static(b"order-42")));
        assert_eq!(record.headers, vec![("h".to_string(), Bytes::from_static(b"v"))]);
        assert!(state.ends.iter().all(|e| e.origin == DecisionOrigin::Producer));
        assert_eq!(state.metadata_requests, 1, "metadata is cached per topic");
    }

    // Repeating a decision is a no-op; the contrary one fails with the state.
    let again =
        producer.end_transaction(first_id, Decision::Commit, DecisionOrigin::Operator).await;
    assert!(again.unwrap().repeated);
    let contrary =
        producer.end_transaction(first_id, Decision::Rollback, DecisionOrigin::Operator).await;
    assert!(
        matches!(
            contrary,
            Err(ProducerError::TransactionAlreadyResolved { txn_id, state: TxnState::Committed })
                if txn_id == first_id
        ),
        "{contrary:?}"
    );
    let missing =
        producer.end_transaction(TxnId(999), Decision::Commit, DecisionOrigin::Operator).await;
    assert!(matches!(missing, Err(ProducerError::UnknownTransaction { txn_id: TxnId(999) })));

    // Keyless messages without a partition go round-robin.
    let x = producer.send_half("orders", Message::new("x")).await.unwrap();
    let y = producer.send_half("orders", Message::new("y")).await.unwrap();
    assert_eq!(y.partition().0, (x.partition().0 + 1) % 4);
    x.rollback().await.unwrap();
    y.rollback().await.unwrap();

    // The heartbeat keeps going.
    fake.wait_for("heartbeats", |s| (s.heartbeats >= 3).then_some(())).await;
    tokio::time::timeout(WAIT_MAX, producer.close()).await.unwrap().unwrap();
}

#[tokio::test]
async fn routing_errors_and_limits() {
    let fake = FakeBroker::start(&[("orders", 4)]).await;
    let mut c = config(&fake);
    c.producer.message_bytes_max = 1024;
    c.check_timeout = Some(Duration::from_secs(2));
    let producer = TransactionalProducer::connect(c, unknown_checker()).await.unwrap();

    let big = producer.send_half("orders", Message::new(vec![0u8; 2000])).await;
    assert!(matches!(big, Err(ProducerError::MessageTooLarge { max_bytes: 1024, .. })));
    assert_eq!(fake.state().metadata_requests, 0, "refused before any request");
    let delayed = Message::new("v").with_delay(Duration::from_secs(5));
    let delayed = producer.send_half("orders", delayed).await;
    assert!(matches!(delayed, Err(ProducerError::InvalidMessage(_))), "{delayed:?}");
    assert_eq!(fake.state().metadata_requests, 0, "refused before any request");

    let unknown = producer.send_half("nope", Message::new("v")).await;
    assert!(matches!(unknown, Err(ProducerError::UnknownTopic { .. })), "{unknown:?}");

    // A partition beyond the cached count is looked up once more, then refused.
    let txn = producer.send_half("orders", Message::new("v")).await.unwrap();
    txn.rollback().await.unwrap();
    let before = fake.state().metadata_requests;
    let beyond =
        producer.send_half("orders", Message::new("v").to_partition(PartitionIndex(9))).await;
    assert!(
        matches!(
            beyond,
            Err(ProducerError::UnknownPartition {
                partition: PartitionIndex(9),
                partitions: 4,
                ..
            })
        ),
        "{beyond:?}"
    );
    assert_eq!(fake.state().metadata_requests, before + 1);

    // ... and found when the topic has grown meanwhile.
    fake.state().topics.insert("orders".into(), 8);
    let grown = producer
        .send_half("orders", Message::new("v").to_partition(PartitionIndex(6)))
        .await
        .unwrap();
    assert_eq!(grown.partition(), PartitionIndex(6));
    grown.commit().await.unwrap();
    assert!(fake.state().halves.iter().all(|h| h.check_timeout_ms == 2000));

    // The broker saying the partition is gone triggers one refresh and a re-route.
    fake.state().topics.insert("orders".into(), 2);
    let key =
        (0..).map(|i| format!("k{i}")).find(|k| partition_for_key(k.as_bytes(), 8).0 >= 2).unwrap();
    let before = fake.state().metadata_requests;
    let rerouted = producer.send_half("orders", Message::new("v").with_key(key.clone())).await;
    let rerouted = rerouted.unwrap();
    assert_eq!(rerouted.partition(), partition_for_key(key.as_bytes(), 2));
    rerouted.commit().await.unwrap();
    assert_eq!(fake.state().metadata_requests, before + 1);

    producer.close().await.unwrap();
}

#[tokio::test]
async fn send_in_transaction_decides_by_the_local_outcome() {
    let fake = FakeBroker::start(&[("orders", 1)]).await;
    let producer = TransactionalProducer::connect(config(&fake), unknown_checker()).await.unwrap();

    let mut seen = None;
    let ok = producer
        .send_in_transaction("orders", Message::new("ok"), |id| {
            seen = Some(id);
            async { Ok::<_, String>(5) }
        })
        .await
        .unwrap();
    assert_eq!(ok, Ok(5));
    let id = seen.unwrap();
    let end = decision_for(&fake, id).await;
    assert_eq!((end.decision, end.origin), (Decision::Commit, DecisionOrigin::Producer));

    let failed = producer
        .send_in_transaction("orders", Message::new("no"), |_| async {
            Err::<(), _>("local failed")
        })
        .await
        .unwrap();
    assert_eq!(failed, Err("local failed"));
    let last = *fake.state().ends.last().unwrap();
    assert_ne!(last.txn_id, id);
    assert_eq!(last.decision, Decision::Rollback);

    let mut ran = false;
    let refused = producer
        .send_in_transaction("missing", Message::new("x"), |_| {
            ran = true;
            async { Ok::<(), ()>(()) }
        })
        .await;
    assert!(matches!(refused, Err(ProducerError::UnknownTopic { .. })));
    assert!(!ran, "local must not run when the half send fails");
    producer.close().await.unwrap();
}

#[tokio::test]
async fn check_backs_are_answered_by_the_checker() {
    let fake = FakeBroker::start(&[("orders", 1)]).await;
    let checker = checker_fn(|view: MessageView| async move {
        match view.value.as_ref() {
            b"yes" => Resolution::Commit,
            b"no" => Resolution::Rollback,
            b"boom" => panic!("checker bug (expected by the test)"),
            _ => Resolution::Unknown,
        }
    });
    let producer = TransactionalProducer::connect(config(&fake), checker).await.unwrap();

    for (value, decision) in
        [("yes", Decision::Commit), ("no", Decision::Rollback), ("later", Decision::Unknown)]
    {
        let push = fake.pending_txn("g", batch_of(value));
        let txn_id = push.txn_id;
        fake.push_check(push).await;
        let end = decision_for(&fake, txn_id).await;
        assert_eq!((end.decision, end.origin), (decision, DecisionOrigin::CheckBack), "{value}");
    }

    // None of these is answered, and the task survives each of them.
    let boom = fake.pending_txn("g", batch_of("boom"));
    let mut garbage = fake.pending_txn("g", batch_of("yes"));
    garbage.batch = Bytes::from_static(b"\x01not a batch");
    let stranger = fake.pending_txn("other-group", batch_of("yes"));
    let unanswered: Vec<TxnId> = [&boom, &garbage, &stranger].iter().map(|p| p.txn_id).collect();
    for push in [boom, garbage, stranger] {
        fake.push_check(push).await;
    }
    let after = fake.pending_txn("g", batch_of("yes"));
    let after_id = after.txn_id;
    fake.push_check(after).await;
    assert_eq!(decision_for(&fake, after_id).await.decision, Decision::Commit);

    // `close` waits for every check task, so the panicked one has finished too.
    tokio::time::timeout(WAIT_MAX, producer.close()).await.unwrap().unwrap();
    let state = fake.state();
    for txn_id in unanswered {
        assert_eq!(ends_for(&state, txn_id), 0, "txn {txn_id} must not be answered");
    }
}

#[tokio::test]
async fn repeated_push_for_a_running_check_is_skipped() {
    let fake = FakeBroker::start(&[("orders", 1)]).await;
    let gate = Arc::new(Notify::new());
    let slow_calls = Arc::new(AtomicUsize::new(0));
    let checker = {
        let (gate, slow_calls) = (gate.clone(), slow_calls.clone());
        checker_fn(move |view: MessageView| {
            let (gate, slow_calls) = (gate.clone(), slow_calls.clone());
            async move {
                if view.value.as_ref() == b"slow" {
                    slow_calls.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                }
                Resolution::Commit
            }
        })
    };
    let producer = TransactionalProducer::connect(config(&fake), checker).await.unwrap();

    let slow = fake.pending_txn("g", batch_of("slow"));
    let slow_id = slow.txn_id;
    let repeat = CheckTransactionPush { check_count: 2, ..slow.clone() };
    fake.push_check(slow).await;
    fake.push_check(repeat).await;
    // Pushes are read in order: once the next one is answered, the repeat was seen.
    let fast = fake.pending_txn("g", batch_of("fast"));
    let fast_id = fast.txn_id;
    fake.push_check(fast).await;
    decision_for(&fake, fast_id).await;
    assert_eq!(ends_for(&fake.state(), slow_id), 0);

    gate.notify_one();
    decision_for(&fake, slow_id).await;
    tokio::time::timeout(WAIT_MAX, producer.close()).await.unwrap().unwrap();
    assert_eq!(slow_calls.load(Ordering::SeqCst), 1);
    assert_eq!(ends_for(&fake.state(), slow_id), 1);
}

#[tokio::test]
async fn close_ends_every_clone_and_open_transaction() {
    let fake = FakeBroker::start(&[("orders", 1)]).await;
    let producer = TransactionalProducer::connect(config(&fake), unknown_checker()).await.unwrap();
    let clone = producer.clone();
    let open = producer.send_half("orders", Message::new("v")).await.unwrap();
    tokio::time::timeout(WAIT_MAX, producer.close()).await.unwrap().unwrap();
    let late = clone.send_half("orders", Message::new("v")).await;
    assert!(matches!(late, Err(ProducerError::Closed)), "{late:?}");
    let commit = open.commit().await;
    assert!(matches!(commit, Err(ProducerError::Closed)), "{commit:?}");
    let end = clone.end_transaction(TxnId(1), Decision::Commit, DecisionOrigin::Operator).await;
    assert!(matches!(end, Err(ProducerError::Closed)));
}

#[tokio::test]
async fn connect_needs_a_valid_config_and_an_answering_leader() {
    let mut bad = TransactionConfig::new("127.0.0.1:1", "");
    bad.producer.retry_deadline = Duration::from_millis(300);
    let refused = TransactionalProducer::connect(bad, unknown_checker()).await;
    assert!(matches!(refused, Err(ProducerError::Config(_))), "{refused:?}");

    // A port nobody listens on: bind, note it, close.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut c = TransactionConfig::new(addr, "g");
    c.producer.retry_deadline = Duration::from_millis(300);
    let started = std::time::Instant::now();
    let unreachable = TransactionalProducer::connect(c, unknown_checker()).await;
    assert!(matches!(unreachable, Err(ProducerError::Connect { .. })), "{unreachable:?}");
    assert!(started.elapsed() < WAIT_MAX);
}
