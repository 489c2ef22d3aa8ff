//! Relay cases with a fake publisher, run on every database: headers and dedup ids, order per
//! key across relays, failures, the run loop and its metrics.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::record::DEDUP_ID_HEADER;
use tokio_util::sync::CancellationToken;

use super::super::db::with_pool;
use super::super::order::{BLOCKED_HOLD_OFF, FAILED_ROW_RETRY_MIN};
use super::*;

fn relay(t: &TestDb, relay_id: &str) -> Relay<FakePublisher> {
    Relay::new(t.db.clone(), FakePublisher::default(), relay_config(t, relay_id)).unwrap()
}

fn header<'a>(o: &'a Outgoing, name: &str) -> Option<&'a [u8]> {
    o.message.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_ref())
}

#[tokio::test]
async fn rows_are_published_with_key_headers_and_dedup_id_then_marked() {
    for t in databases("publish").await {
        let mut config = relay_config(&t, "r1");
        config.dedup_source = Some("billing".into());
        let r = Relay::new(t.db.clone(), FakePublisher::default(), config).unwrap();
        let id = t
            .enqueue(
                &OutboxMessage::new("orders", "paid").with_key("o-7").with_header("type", "paid"),
            )
            .await;
        let keyless = t.enqueue(&OutboxMessage::new("audit", vec![0u8, 255])).await;
        let report = r.run_once().await.unwrap();
        assert_eq!((report.claimed, report.published, report.full), (2, 2, false), "{}", t.name);
        let sent = r.publisher().sent();
        assert_eq!(sent.len(), 2);
        let o = &sent[0];
        assert_eq!((o.id, o.topic.as_str()), (id, "orders"));
        assert_eq!(o.message.key.as_deref(), Some(&b"o-7"[..]));
        assert_eq!(o.message.value.as_ref(), b"paid");
        assert_eq!(header(o, "type"), Some(&b"paid"[..]));
        let dedup = format!("billing:{id}");
        assert_eq!(header(o, DEDUP_ID_HEADER), Some(dedup.as_bytes()));
        assert_eq!((sent[1].id, sent[1].message.key.clone()), (keyless, None));
        assert_eq!(sent[1].message.value.as_ref(), &[0u8, 255]);
        let s = t.status().await;
        assert_eq!((s.pending, s.published_retained, s.leased), (0, 2, 0), "{}", t.name);
        // Nothing left: a round claims nothing and publishes nothing again.
        assert_eq!(r.run_once().await.unwrap(), RoundReport::default());
        assert_eq!(r.published_total(), 2);
        let text = encode_text(r.registry()).unwrap();
        assert!(text.contains("ferry_outbox_published_total 2"), "{text}");
        assert!(text.contains("ferry_outbox_claims_total 1"), "{text}");
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_key_waits_while_an_earlier_row_is_another_relays() {
    for t in databases("order").await {
        // 1:a 2:a 3:b 4:a 5:-
        for key in [Some("a"), Some("a"), Some("b"), Some("a"), None] {
            let mut m = OutboxMessage::new("t", "x");
            m.key = key.map(str::to_string);
            t.enqueue(&m).await;
        }
        // Relay X holds row 1 (as if mid-publish).
        let x = t.store();
        assert_eq!(x.claim("x", 1, Duration::from_secs(30)).await.unwrap()[0].id, OutboxId(1));
        let r = relay(&t, "r");
        let started = std::time::Instant::now();
        let report = r.run_once().await.unwrap();
        assert_eq!((report.claimed, report.published, report.blocked), (4, 2, 2), "{}", t.name);
        assert_eq!(r.publisher().sent_ids(), vec![3, 5], "{}", t.name);
        // The blocked rows are held off briefly, then still blocked while X holds row 1.
        let again = r.run_once().await.unwrap();
        if started.elapsed() < BLOCKED_HOLD_OFF {
            assert_eq!(again.claimed, 0, "{}", t.name);
        }
        tokio::time::sleep(BLOCKED_HOLD_OFF + Duration::from_millis(50)).await;
        let report = r.run_once().await.unwrap();
        assert_eq!((report.claimed, report.published, report.blocked), (2, 0, 2), "{}", t.name);
        // X publishes row 1: now R takes 2 and 4, in order, one wave each.
        x.mark_published(&[OutboxId(1)]).await.unwrap();
        tokio::time::sleep(BLOCKED_HOLD_OFF + Duration::from_millis(50)).await;
        let report = r.run_once().await.unwrap();
        assert_eq!((report.claimed, report.published), (2, 2), "{}", t.name);
        assert_eq!(r.publisher().sent_ids(), vec![3, 5, 2, 4], "{}", t.name);
        assert_eq!(t.status().await.pending, 0);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn two_relays_publish_every_row_once_in_key_order() {
    for t in databases("tworelays").await {
        for i in 0..200 {
            t.enqueue(&OutboxMessage::new("t", "x").with_key(format!("k{}", i % 5))).await;
        }
        let mut ca = relay_config(&t, "a");
        ca.batch_size = 30;
        let mut cb = relay_config(&t, "b");
        cb.batch_size = 30;
        let a = Arc::new(Relay::new(t.db.clone(), FakePublisher::default(), ca).unwrap());
        let b = Arc::new(Relay::new(t.reconnect().await, FakePublisher::default(), cb).unwrap());
        let cancel = CancellationToken::new();
        let runs = [a.clone(), b.clone()].map(|r| {
            let cancel = cancel.clone();
            tokio::spawn(async move { r.run(cancel).await })
        });
        eventually("200 rows published", || {
            a.publisher().sent().len() + b.publisher().sent().len() >= 200
        })
        .await;
        cancel.cancel();
        for run in runs {
            run.await.unwrap().unwrap();
        }
        let mut all: Vec<i64> = a.publisher().sent_ids();
        all.extend(b.publisher().sent_ids());
        all.sort_unstable();
        assert_eq!(all, (1..=200).collect::<Vec<_>>(), "{}: each row exactly once", t.name);
        // Per key, each relay's sends are in id order, and the rows of a key one relay sent
        // never interleave wrongly with the other's: every row was sent after all earlier
        // rows of its key were acknowledged, i.e. per key the global send order is id order.
        // (The fake acknowledges at once, so send order across relays is visible through ids:
        // a relay publishes only when every earlier pending row of the key is its own.)
        for p in [a.publisher(), b.publisher()] {
            for k in 0..5 {
                let key = format!("k{k}");
                let ids: Vec<i64> = p
                    .sent()
                    .iter()
                    .filter(|o| o.message.key.as_deref() == Some(key.as_bytes()))
                    .map(|o| o.id.0)
                    .collect();
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "{}: key {key}: {ids:?}", t.name);
            }
        }
        assert_eq!(t.status().await.pending, 0);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn a_rejected_row_backs_off_and_holds_back_its_key() {
    for t in databases("rejected").await {
        let first = t.enqueue(&OutboxMessage::new("t", "x").with_key("a")).await;
        t.enqueue(&OutboxMessage::new("t", "x").with_key("a")).await;
        t.enqueue(&OutboxMessage::new("t", "x").with_key("b")).await;
        let r = relay(&t, "r");
        r.publisher().fail_row(first, PublishErrorKind::Rejected);
        let started = std::time::Instant::now();
        let report = r.run_once().await.unwrap();
        assert_eq!(
            (report.published, report.rejected, report.released),
            (1, 1, 1),
            "{}: {report:?}",
            t.name
        );
        assert_eq!(r.publisher().sent_ids(), vec![3]);
        let s = t.status().await;
        assert_eq!((s.pending, s.failed_attempts_rows, s.leased), (2, 1, 0), "{}", t.name);
        let failure = s.first_failure.unwrap();
        assert_eq!((failure.id, failure.attempts), (first, 1));
        assert!(failure.last_error.unwrap().contains("fake failure"));
        // Row 2 is claimable but must wait for row 1, which waits out its backoff (1 s).
        let report = r.run_once().await.unwrap();
        if started.elapsed() < FAILED_ROW_RETRY_MIN {
            assert_eq!((report.claimed, report.blocked), (1, 1), "{}", t.name);
        }
        assert_eq!(report.published, 0, "{}", t.name);
        assert_eq!(r.publisher().sent_ids(), vec![3]);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn malformed_headers_from_another_language_are_recorded_not_published() {
    for t in databases("headers").await {
        let key = t.db.dialect().key_col();
        let sql = t.db.dialect().sql(&format!(
            "INSERT INTO {} (topic, {key}, headers, payload) VALUES (?, ?, ?, ?)",
            t.table
        ));
        with_pool!(&t.db, pool, DB => {
            sqlx::query::<DB>(&sql)
                .bind("t")
                .bind("k")
                .bind(r#"{"n": 1}"#)
                .bind(&b"x"[..])
                .execute(pool)
                .await
                .unwrap();
        });
        let r = relay(&t, "r");
        let report = r.run_once().await.unwrap();
        assert_eq!((report.published, report.rejected), (0, 1), "{}", t.name);
        assert!(r.publisher().sent().is_empty());
        let error = t.status().await.first_failure.unwrap().last_error.unwrap();
        assert!(error.contains("not a string"), "{}: {error}", t.name);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn an_unreachable_broker_releases_rows_without_counting_attempts() {
    for t in databases("unavailable").await {
        for _ in 0..3 {
            t.enqueue(&OutboxMessage::new("t", "x").with_key("a")).await;
        }
        let r = relay(&t, "r");
        r.publisher().fail_all(Some(PublishErrorKind::Unavailable));
        let report = r.run_once().await.unwrap();
        assert!(report.broker_unavailable, "{}", t.name);
        assert_eq!((report.published, report.released), (0, 3), "{}: {report:?}", t.name);
        let s = t.status().await;
        assert_eq!((s.pending, s.leased, s.failed_attempts_rows), (3, 0, 0), "{}", t.name);
        // The broker comes back: everything goes, in order.
        r.publisher().fail_all(None);
        assert_eq!(r.run_once().await.unwrap().published, 3);
        assert_eq!(r.publisher().sent_ids(), vec![1, 2, 3]);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn run_publishes_until_cancelled_and_keeps_metrics() {
    for t in databases("run").await {
        let mut config = relay_config(&t, "r");
        config.batch_size = 16;
        config.metrics_interval = Duration::from_millis(50);
        if t.db.dialect() == Dialect::Postgres {
            // Only NOTIFY can wake it in time.
            config.poll_interval = Duration::from_secs(60);
        }
        let r = Arc::new(Relay::new(t.db.clone(), FakePublisher::default(), config).unwrap());
        let cancel = CancellationToken::new();
        let run = tokio::spawn({
            let (r, cancel) = (r.clone(), cancel.clone());
            async move { r.run(cancel).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..50 {
            t.enqueue(&OutboxMessage::new("t", "x").with_key(format!("k{}", i % 3))).await;
        }
        eventually("50 rows published", || r.publisher().sent().len() == 50).await;
        eventually("the pending gauge at 0", || {
            encode_text(r.registry()).unwrap().contains("ferry_outbox_pending_rows 0")
                && r.published_total() == 50
        })
        .await;
        cancel.cancel();
        run.await.unwrap().unwrap();
        assert_eq!(t.status().await.published_retained, 50, "{}", t.name);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn run_refuses_a_missing_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = OutboxDb::connect(&format!("sqlite://{}", dir.path().join("x.db").display()))
        .await
        .unwrap();
    let r = Relay::new(db, FakePublisher::default(), RelayConfig::new()).unwrap();
    assert!(matches!(r.run(CancellationToken::new()).await, Err(OutboxError::Database { .. })));
}
