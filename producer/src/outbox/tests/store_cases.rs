//! Schema, enqueue, claim, lease, status and cleanup cases, run on every database.

use std::collections::HashSet;
use std::time::Duration;

use super::super::db::with_pool;
use super::super::store::Store;
use super::*;

#[tokio::test]
async fn migrate_twice_and_concurrently() {
    for t in databases("migrate").await {
        migrate(&t.db, &t.table).await.unwrap();
        // Two migrations of a fresh table at once: both succeed, one table results.
        let fresh = TableName::new(&format!("{}_b", t.table)).unwrap();
        let other = t.reconnect().await;
        let (a, b) = tokio::join!(migrate(&t.db, &fresh), migrate(&other, &fresh));
        a.unwrap_or_else(|e| panic!("{}: {e}", t.name));
        b.unwrap_or_else(|e| panic!("{}: {e}", t.name));
        verify_columns(&t.db, &fresh).await.unwrap();
        let missing = TableName::new(&format!("{}_none", t.table)).unwrap();
        assert!(verify_columns(&t.db, &missing).await.is_err(), "{}", t.name);
        for sql in [format!("DROP TABLE {fresh}")] {
            with_pool!(&t.db, pool, DB => { sqlx::query::<DB>(&sql).execute(pool).await.unwrap(); });
        }
        if t.db.dialect() == Dialect::Postgres {
            let sql = format!("DROP FUNCTION {fresh}_notify()");
            with_pool!(&t.db, pool, DB => { sqlx::query::<DB>(&sql).execute(pool).await.unwrap(); });
        }
        other.close().await;
        t.cleanup().await;
    }
}

#[tokio::test]
async fn only_committed_rows_are_pending() {
    for t in databases("commit").await {
        let kept = OutboxMessage::new("orders", "kept").with_key("o-1").with_header("h", "v");
        let dropped = OutboxMessage::new("orders", "dropped");
        let (kept_id, _) = with_pool!(&t.db, pool, DB => {
            let mut tx = pool.begin().await.unwrap();
            let kept_id = enqueue_to(&mut tx, &t.table, &kept).await.unwrap();
            tx.commit().await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            let dropped_id = enqueue_to(&mut *tx, &t.table, &dropped).await.unwrap();
            tx.rollback().await.unwrap();
            (kept_id, dropped_id)
        });
        let status = t.status().await;
        assert_eq!((status.pending, status.leased), (1, 0), "{}", t.name);
        let rows = t.store().claim("r", 10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(rows.len(), 1, "{}", t.name);
        let row = &rows[0];
        assert_eq!(row.id, kept_id);
        assert_eq!((row.topic.as_str(), row.key.as_deref()), ("orders", Some("o-1")));
        assert_eq!(row.headers.as_deref(), Some(r#"{"h":"v"}"#));
        assert_eq!((row.payload.as_slice(), row.attempts), (&b"kept"[..], 0));
        // Invalid messages never reach the table.
        let bad = OutboxMessage::new("no spaces", "x");
        let refused = with_pool!(&t.db, pool, DB => {
            let mut conn = pool.acquire().await.unwrap();
            enqueue_to(&mut *conn, &t.table, &bad).await
        });
        assert!(matches!(refused, Err(OutboxError::InvalidMessage(_))));
        t.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_claims_never_return_the_same_row() {
    for t in databases("claims").await {
        let mut all = HashSet::new();
        for i in 0..300 {
            let key = format!("k{}", i % 7);
            all.insert(t.enqueue(&OutboxMessage::new("t", vec![1]).with_key(key)).await.0);
        }
        let other = Store::new(t.reconnect().await, t.table.clone());
        let claimer = |store: Store, owner: &'static str| async move {
            let mut got = Vec::new();
            loop {
                let rows = store.claim(owner, 25, Duration::from_secs(30)).await.unwrap();
                if rows.is_empty() {
                    return got;
                }
                got.extend(rows.iter().map(|r| r.id.0));
            }
        };
        let (a, b) =
            tokio::join!(tokio::spawn(claimer(t.store(), "a")), tokio::spawn(claimer(other, "b")));
        let (a, b) = (a.unwrap(), b.unwrap());
        let a_set: HashSet<i64> = a.iter().copied().collect();
        let b_set: HashSet<i64> = b.iter().copied().collect();
        assert_eq!(
            a_set.len() + b_set.len(),
            a.len() + b.len(),
            "{}: a claimer got a row twice",
            t.name
        );
        assert!(a_set.is_disjoint(&b_set), "{}: both claimers got a row", t.name);
        let union: HashSet<i64> = a_set.union(&b_set).copied().collect();
        assert_eq!(union, all, "{}", t.name);
        assert_eq!(t.status().await.leased, 300);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn an_expired_lease_lets_another_relay_take_the_rows() {
    for t in databases("lease").await {
        for _ in 0..3 {
            t.enqueue(&OutboxMessage::new("t", "x").with_key("k")).await;
        }
        let store = t.store();
        assert_eq!(store.claim("x", 10, Duration::from_secs(5)).await.unwrap().len(), 3);
        assert!(
            store.claim("y", 10, Duration::from_secs(30)).await.unwrap().is_empty(),
            "{}",
            t.name
        );
        assert!(!store.has_claimable().await.unwrap());
        // A renewal sets the lease from now (here it shortens it); a relay renewing rows it
        // no longer holds learns it.
        let ids: Vec<OutboxId> = (1..=3).map(OutboxId).collect();
        assert_eq!(store.renew("x", &ids, Duration::from_millis(300)).await.unwrap(), 3);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(store.has_claimable().await.unwrap(), "{}", t.name);
        let taken = store.claim("y", 10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(taken.iter().map(|r| r.id.0).collect::<Vec<_>>(), vec![1, 2, 3], "{}", t.name);
        assert_eq!(store.renew("x", &ids, Duration::from_secs(30)).await.unwrap(), 0);
        assert_eq!(t.status().await.relays, vec![RelayLeases { relay_id: "y".into(), leased: 3 }]);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn blockers_are_the_earliest_rows_of_a_key_held_by_others() {
    for t in databases("blockers").await {
        // 1:a 2:a 3:b 4:a 5:c
        for key in ["a", "a", "b", "a", "c"] {
            t.enqueue(&OutboxMessage::new("t", "x").with_key(key)).await;
        }
        let store = t.store();
        let x = store.claim("x", 1, Duration::from_secs(30)).await.unwrap();
        assert_eq!(x[0].id, OutboxId(1));
        let r = store.claim("r", 10, Duration::from_secs(30)).await.unwrap();
        assert_eq!(r.len(), 4);
        let blockers = store.blockers("r", &["a", "b", "c"], OutboxId(6)).await.unwrap();
        assert_eq!(blockers, HashMap::from([("a".to_string(), OutboxId(1))]), "{}", t.name);
        // Released rows count as nobody's: they block too.
        store.release("x", &[OutboxId(1)], Duration::ZERO).await.unwrap();
        let blockers = store.blockers("r", &["a"], OutboxId(6)).await.unwrap();
        assert_eq!(blockers.get("a"), Some(&OutboxId(1)));
        // Once published, nothing blocks `a` for `r`; below the bound only.
        store.mark_published(&[OutboxId(1)]).await.unwrap();
        assert!(store.blockers("r", &["a"], OutboxId(6)).await.unwrap().is_empty());
        t.cleanup().await;
    }
}

#[tokio::test]
async fn status_counts_rows_by_state() {
    for t in databases("status").await {
        let empty = t.status().await;
        assert_eq!(empty, OutboxStatus::default(), "{}", t.name);
        for i in 0..5 {
            t.enqueue(&OutboxMessage::new("t", "x").with_key(format!("k{i}"))).await;
        }
        let store = t.store();
        store.claim("relay-x", 2, Duration::from_secs(30)).await.unwrap();
        store.claim("relay-y", 1, Duration::from_secs(30)).await.unwrap();
        store
            .record_failure("relay-y", OutboxId(3), "boom", Duration::from_secs(3600))
            .await
            .unwrap();
        store.claim("relay-z", 1, Duration::from_secs(30)).await.unwrap();
        store.mark_published(&[OutboxId(4)]).await.unwrap();
        let s = t.status().await;
        assert_eq!(
            (s.pending, s.leased, s.published_retained, s.failed_attempts_rows),
            (4, 2, 1, 1),
            "{}",
            t.name
        );
        assert_eq!(s.relays, vec![RelayLeases { relay_id: "relay-x".into(), leased: 2 }]);
        let failure = s.first_failure.unwrap();
        assert_eq!((failure.id, failure.attempts), (OutboxId(3), 1));
        assert_eq!(failure.last_error.as_deref(), Some("boom"));
        let age = s.oldest_pending_age.unwrap();
        assert!(age < Duration::from_secs(60), "{}: {age:?}", t.name);
        let (pending, oldest) = store.pending_summary().await.unwrap();
        assert_eq!(pending, 4);
        assert!(oldest.is_some());
        t.cleanup().await;
    }
}

#[tokio::test]
async fn published_rows_are_deleted_after_retention() {
    for t in databases("cleanup").await {
        for _ in 0..3 {
            t.enqueue(&OutboxMessage::new("t", "x")).await;
        }
        t.enqueue(&OutboxMessage::new("t", "stays pending")).await;
        let store = t.store();
        let ids: Vec<OutboxId> = (1..=3).map(OutboxId).collect();
        assert_eq!(store.mark_published(&ids).await.unwrap(), 3);
        // Marking twice changes nothing.
        assert_eq!(store.mark_published(&ids).await.unwrap(), 0, "{}", t.name);
        assert_eq!(store.delete_published_before(Duration::from_secs(3600), 10).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.delete_published_before(Duration::from_millis(10), 2).await.unwrap(), 2);
        assert_eq!(store.delete_published_before(Duration::from_millis(10), 2).await.unwrap(), 1);
        let s = t.status().await;
        assert_eq!((s.pending, s.published_retained), (1, 0), "{}", t.name);
        // Ids are never reused after a delete (they are dedup ids).
        let next = t.enqueue(&OutboxMessage::new("t", "x")).await;
        assert_eq!(next, OutboxId(5), "{}", t.name);
        t.cleanup().await;
    }
}

#[tokio::test]
async fn urls_pick_the_driver() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        format!("sqlite://{}", dir.path().join("a.db").display()),
        format!("sqlite:{}", dir.path().join("b.db").display()),
        format!("sqlite://{}?mode=rwc", dir.path().join("c.db").display()),
        "sqlite::memory:".to_string(),
    ] {
        let db = OutboxDb::connect(&url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(db.dialect(), Dialect::Sqlite);
        migrate(&db, &TableName::default()).await.unwrap();
        db.close().await;
    }
    let missing = format!("sqlite://{}?mode=rw", dir.path().join("none.db").display());
    assert!(OutboxDb::connect(&missing).await.is_err());
    match std::env::var("FERRY_TEST_MYSQL_URL") {
        Ok(url) if url.starts_with("mysql://") => {
            let db = OutboxDb::connect(&url.replacen("mysql://", "mariadb://", 1)).await.unwrap();
            assert_eq!(db.dialect(), Dialect::MySql);
            db.close().await;
        }
        _ => eprintln!("note: FERRY_TEST_MYSQL_URL is not set; mariadb:// URL not tried"),
    }
}
