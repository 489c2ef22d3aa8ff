//! The relay with the real ferry [`Producer`] against [`ProduceBroker`]: what reaches the
//! broker (topic, key, headers, dedup id, order per key), and how broker errors are treated.

use std::time::Duration;

use ferry_protocol::record::DEDUP_ID_HEADER;
use ferry_protocol::ErrorCode;

use super::fake_broker::ProduceBroker;
use super::*;
use crate::{Producer, ProducerConfig};

async fn producer(broker: &ProduceBroker) -> Producer {
    let mut config = ProducerConfig::new(&broker.addr);
    config.request_timeout = Duration::from_millis(200);
    config.retry_deadline = Duration::from_millis(600);
    Producer::connect(config).await.unwrap()
}

fn header<'a>(record: &'a ferry_protocol::Record, name: &str) -> Option<&'a [u8]> {
    record.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_ref())
}

#[tokio::test]
async fn the_ferry_producer_publishes_rows_in_key_order_with_dedup_ids() {
    for t in databases("producer").await {
        let broker = ProduceBroker::start(&[("orders", 3)]).await;
        let relay =
            Relay::new(t.db.clone(), producer(&broker).await, relay_config(&t, "r")).unwrap();
        let mut ids = Vec::new();
        for i in 0..12 {
            let m = OutboxMessage::new("orders", format!("v{i}"))
                .with_key(format!("k{}", i % 3))
                .with_header("n", i.to_string());
            ids.push(t.enqueue(&m).await);
        }
        let missing = t.enqueue(&OutboxMessage::new("no-such-topic", "x").with_key("z")).await;
        let report = relay.run_once().await.unwrap();
        assert_eq!((report.published, report.rejected), (12, 1), "{}: {report:?}", t.name);
        let stored = broker.stored();
        assert_eq!(stored.len(), 12);
        assert!(stored.iter().all(|s| s.topic == "orders"));
        for k in 0..3 {
            let key = format!("k{k}");
            let of_key: Vec<&super::fake_broker::Stored> =
                stored.iter().filter(|s| s.record.key.as_deref() == Some(key.as_bytes())).collect();
            let partitions: std::collections::HashSet<u32> =
                of_key.iter().map(|s| s.partition).collect();
            assert_eq!(partitions.len(), 1, "one key, one partition");
            let dedup: Vec<String> = of_key
                .iter()
                .map(|s| {
                    String::from_utf8(header(&s.record, DEDUP_ID_HEADER).unwrap().to_vec()).unwrap()
                })
                .collect();
            let expected: Vec<String> = ids
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 3 == k)
                .map(|(_, id)| format!("{}:{id}", t.table))
                .collect();
            assert_eq!(dedup, expected, "{}: key {key} in id order", t.name);
        }
        assert_eq!(header(&stored[0].record, "n"), Some(&b"0"[..]));
        let s = t.status().await;
        assert_eq!(
            (s.pending, s.published_retained, s.failed_attempts_rows),
            (1, 12, 1),
            "{}",
            t.name
        );
        let failure = s.first_failure.unwrap();
        assert_eq!(failure.id, missing);
        assert!(failure.last_error.unwrap().contains("unknown topic"), "{}", t.name);

        // A broker that keeps answering "no leader" is unreachable: rows go back untouched.
        broker.fail_produce(Some(ErrorCode::NoLeader));
        t.enqueue(&OutboxMessage::new("orders", "later").with_key("k0")).await;
        let report = relay.run_once().await.unwrap();
        assert!(report.broker_unavailable, "{}: {report:?}", t.name);
        assert_eq!((report.published, report.released), (0, 1));
        let s = t.status().await;
        assert_eq!((s.pending, s.failed_attempts_rows, s.leased), (2, 1, 0), "{}", t.name);
        broker.fail_produce(None);
        assert_eq!(relay.run_once().await.unwrap().published, 1);
        assert_eq!(broker.stored().len(), 13);
        relay.publisher().clone().close().await.unwrap();
        t.cleanup().await;
    }
}
