//! Tests of the outbox against real databases: SQLite files in temp dirs always, and the same
//! cases against PostgreSQL and MySQL/MariaDB when `FERRY_TEST_PG_URL` / `FERRY_TEST_MYSQL_URL`
//! are set (`scripts/test-dbs.sh start DIR` prints both); otherwise those are skipped with a
//! note on stderr. Every case works in a table of its own, so cases run in parallel on one
//! server. The broker is replaced by [`FakePublisher`].

mod fake_broker;
mod producer_cases;
mod relay_cases;
mod store_cases;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::db::with_pool;
use super::store::Store;
use super::*;

/// A database to run a case against, with a table name of the case's own.
pub(super) struct TestDb {
    pub name: &'static str,
    pub url: String,
    pub db: OutboxDb,
    pub table: TableName,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Another pool to the same database, as a second relay process would have.
    pub async fn reconnect(&self) -> OutboxDb {
        OutboxDb::connect(&self.url).await.unwrap()
    }

    /// Drops the case's table (and PostgreSQL's notify function).
    pub async fn cleanup(self) {
        let t = &self.table;
        let mut statements = vec![format!("DROP TABLE IF EXISTS {t}")];
        if self.db.dialect() == Dialect::Postgres {
            statements.push(format!("DROP FUNCTION IF EXISTS {t}_notify()"));
        }
        for sql in statements {
            with_pool!(&self.db, pool, DB => {
                sqlx::query::<DB>(&sql).execute(pool).await.unwrap();
            });
        }
        self.db.close().await;
    }

    /// Inserts `message` in a committed transaction of its own.
    pub async fn enqueue(&self, message: &OutboxMessage) -> OutboxId {
        with_pool!(&self.db, pool, DB => {
            let mut tx = pool.begin().await.unwrap();
            let id = enqueue_to(&mut tx, &self.table, message).await.unwrap();
            tx.commit().await.unwrap();
            id
        })
    }

    pub fn store(&self) -> Store {
        Store::new(self.db.clone(), self.table.clone())
    }

    pub async fn status(&self) -> OutboxStatus {
        status(&self.db, &self.table).await.unwrap()
    }
}

/// SQLite always; PostgreSQL and MySQL when their URL is in the environment. Each gets a
/// migrated table named after `case` plus a random suffix.
pub(super) async fn databases(case: &str) -> Vec<TestDb> {
    let table = TableName::new(&format!("t_{case}_{:08x}", fastrand::u32(..))).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("outbox.db").display());
    let mut found = vec![TestDb {
        name: "sqlite",
        db: OutboxDb::connect(&url).await.unwrap(),
        url,
        table: table.clone(),
        _dir: Some(dir),
    }];
    for (name, var) in [("postgres", "FERRY_TEST_PG_URL"), ("mysql", "FERRY_TEST_MYSQL_URL")] {
        match std::env::var(var) {
            Ok(url) if !url.is_empty() => {
                let db = OutboxDb::connect(&url).await.unwrap();
                found.push(TestDb { name, url, db, table: table.clone(), _dir: None });
            }
            _ => eprintln!("note: {var} is not set; outbox case {case} skips {name}"),
        }
    }
    for t in &found {
        migrate(&t.db, &t.table).await.unwrap();
    }
    found
}

/// Stands in for the broker: records what it was sent, fails rows as told.
#[derive(Debug, Default)]
pub(super) struct FakePublisher {
    sent: Mutex<Vec<Outgoing>>,
    fail_rows: Mutex<HashMap<OutboxId, PublishErrorKind>>,
    fail_all: Mutex<Option<PublishErrorKind>>,
}

impl FakePublisher {
    /// Rows sent and acknowledged so far, in order.
    pub fn sent(&self) -> Vec<Outgoing> {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn sent_ids(&self) -> Vec<i64> {
        self.sent().iter().map(|o| o.id.0).collect()
    }

    pub fn fail_row(&self, id: OutboxId, kind: PublishErrorKind) {
        self.fail_rows.lock().unwrap().insert(id, kind);
    }

    pub fn fail_all(&self, kind: Option<PublishErrorKind>) {
        *self.fail_all.lock().unwrap() = kind;
    }
}

impl Publisher for FakePublisher {
    async fn publish(&self, batch: Vec<Outgoing>) -> Vec<Result<(), PublishError>> {
        tokio::task::yield_now().await;
        let fail_all = *self.fail_all.lock().unwrap();
        let fail_rows = self.fail_rows.lock().unwrap().clone();
        let mut sent = self.sent.lock().unwrap();
        batch
            .into_iter()
            .map(|o| match fail_all.or_else(|| fail_rows.get(&o.id).copied()) {
                Some(kind) => Err(PublishError::new(kind, format!("fake failure of row {}", o.id))),
                None => {
                    sent.push(o);
                    Ok(())
                }
            })
            .collect()
    }
}

/// A relay config for tests: the case's table, short waits.
pub(super) fn relay_config(t: &TestDb, relay_id: &str) -> RelayConfig {
    let mut c = RelayConfig::for_table(t.table.clone());
    c.relay_id = relay_id.to_string();
    c.poll_interval = Duration::from_millis(20);
    c.lease = Duration::from_secs(5);
    c
}

/// Waits until `done` holds, failing after 10 s.
pub(super) async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
