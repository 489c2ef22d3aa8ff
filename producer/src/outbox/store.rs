//! Every statement the relay runs against the outbox table: claim with a lease, find the rows
//! that block a key, renew, release, record failures, mark published, clean up, and count.
//!
//! The relay (in `relay.rs`) decides; this file only talks to the database. Times are always
//! the database's clock (`now()` in SQL), so relays on machines with skewed clocks agree on
//! when a lease ends.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Row as _;

use super::db::{with_pool, Dialect, OutboxDb, OutboxId, TableName};
use super::error::{OutboxError, Result};

/// Most ids (or keys) bound in one `IN (...)` list; longer lists go in chunks.
pub const IN_LIST_MAX: usize = 500;

/// Longest `last_error` stored, in characters.
pub const LAST_ERROR_CHARS_MAX: usize = 1000;

/// One row the relay claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedRow {
    /// Its id.
    pub id: OutboxId,
    /// Destination topic.
    pub topic: String,
    /// Ordering key.
    pub key: Option<String>,
    /// Headers as stored: a JSON object, or NULL.
    pub headers: Option<String>,
    /// The record's value.
    pub payload: Vec<u8>,
    /// Failed publish attempts so far.
    pub attempts: u32,
}

/// How the outbox table stands, from [`status`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxStatus {
    /// Rows not yet published.
    pub pending: u64,
    /// Pending rows under a live lease (a relay is publishing them).
    pub leased: u64,
    /// Published rows kept until the retention period passes.
    pub published_retained: u64,
    /// Pending rows whose publish failed at least once (see `last_error`).
    pub failed_attempts_rows: u64,
    /// Age of the oldest pending row (by id), from its `created_at`.
    pub oldest_pending_age: Option<Duration>,
    /// Live leases per relay (`lease_owner`), by owner name.
    pub relays: Vec<RelayLeases>,
    /// The first pending row that failed, if any: what an operator looks at first.
    pub first_failure: Option<FailedRow>,
}

/// Rows one relay holds under a live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLeases {
    /// The relay id (`lease_owner`).
    pub relay_id: String,
    /// Pending rows it holds.
    pub leased: u64,
}

/// A pending row whose publish failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRow {
    /// Its id.
    pub id: OutboxId,
    /// Its topic.
    pub topic: String,
    /// Failed attempts.
    pub attempts: u32,
    /// The last failure.
    pub last_error: Option<String>,
}

/// The outbox table of one database, for the relay's statements.
#[derive(Debug, Clone)]
pub struct Store {
    db: OutboxDb,
    table: TableName,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn age(seconds: Option<f64>) -> Option<Duration> {
    seconds.map(|s| Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX))
}

/// Decodes a claimed row (`id, topic, key, headers, payload, attempts`) of any driver.
macro_rules! claimed_row {
    ($row:expr, $step:expr) => {{
        let row = $row;
        let attempts: i32 = row.try_get(5).map_err(OutboxError::db($step))?;
        ClaimedRow {
            id: OutboxId(row.try_get(0).map_err(OutboxError::db($step))?),
            topic: row.try_get(1).map_err(OutboxError::db($step))?,
            key: row.try_get(2).map_err(OutboxError::db($step))?,
            headers: row.try_get(3).map_err(OutboxError::db($step))?,
            payload: row.try_get(4).map_err(OutboxError::db($step))?,
            attempts: u32::try_from(attempts).unwrap_or(0),
        }
    }};
}

impl Store {
    /// The table `table` in `db`.
    pub fn new(db: OutboxDb, table: TableName) -> Store {
        Store { db, table }
    }

    /// The database.
    pub fn db(&self) -> &OutboxDb {
        &self.db
    }

    /// The table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    fn dialect(&self) -> Dialect {
        self.db.dialect()
    }

    /// The row columns a claim returns.
    fn row_columns(&self) -> String {
        let key = self.dialect().read_text(self.dialect().key_col());
        format!("id, topic, {key}, headers, payload, attempts")
    }

    /// Whether any row could be claimed now: a read, so polling an idle table never takes
    /// SQLite's write lock.
    pub async fn has_claimable(&self) -> Result<bool> {
        let d = self.dialect();
        let sql = format!(
            "SELECT id FROM {t} WHERE published_at IS NULL AND (lease_until IS NULL OR lease_until <= {now}) ORDER BY id LIMIT 1",
            t = self.table,
            now = d.now()
        );
        let step = "looking for claimable rows";
        with_pool!(&self.db, pool, DB => {
            let row = sqlx::query::<DB>(&sql).fetch_optional(pool).await.map_err(OutboxError::db(step))?;
            Ok(row.is_some())
        })
    }

    /// Leases up to `limit` claimable rows (pending, no live lease) to `owner` until now +
    /// `lease`, lowest ids first, and returns them in id order. Two concurrent claims never
    /// return the same row: PostgreSQL and MySQL lock the rows with `FOR UPDATE SKIP LOCKED`
    /// (a row another claim holds is skipped, and one it just leased fails the re-checked
    /// condition), SQLite runs the claim under `BEGIN IMMEDIATE` (one writer at a time).
    pub async fn claim(
        &self,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedRow>> {
        let d = self.dialect();
        let t = &self.table;
        let step = "claiming rows";
        let claimable = format!(
            "SELECT id FROM {t} WHERE published_at IS NULL AND (lease_until IS NULL OR lease_until <= {now}) ORDER BY id LIMIT ?",
            now = d.now()
        );
        let limit_bind = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = Vec::with_capacity(limit);
        match &self.db {
            OutboxDb::Sqlite(pool) => {
                let sql = format!(
                    "UPDATE {t} SET lease_owner = ?, lease_until = {until} WHERE id IN ({claimable}) RETURNING {cols}",
                    until = d.now_plus_ms(),
                    cols = self.row_columns()
                );
                let mut tx =
                    pool.begin_with("BEGIN IMMEDIATE").await.map_err(OutboxError::db(step))?;
                let found = sqlx::query(&sql)
                    .bind(owner)
                    .bind(millis(lease))
                    .bind(limit_bind)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(OutboxError::db(step))?;
                tx.commit().await.map_err(OutboxError::db(step))?;
                for row in &found {
                    rows.push(claimed_row!(row, step));
                }
            }
            OutboxDb::Postgres(pool) => {
                let sql = d.sql(&format!(
                    "UPDATE {t} SET lease_owner = ?, lease_until = {until} WHERE id IN ({claimable} FOR UPDATE SKIP LOCKED) RETURNING {cols}",
                    until = d.now_plus_ms(),
                    cols = self.row_columns()
                ));
                let found = sqlx::query(&sql)
                    .bind(owner)
                    .bind(millis(lease))
                    .bind(limit_bind)
                    .fetch_all(pool)
                    .await
                    .map_err(OutboxError::db(step))?;
                for row in &found {
                    rows.push(claimed_row!(row, step));
                }
            }
            OutboxDb::MySql(pool) => {
                // MySQL has no UPDATE ... RETURNING and no LIMIT in an IN subquery: lock the ids,
                // lease them, read them, all in one short transaction.
                let mut tx = pool.begin().await.map_err(OutboxError::db(step))?;
                let locked = sqlx::query(&format!("{claimable} FOR UPDATE SKIP LOCKED"))
                    .bind(limit_bind)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(OutboxError::db(step))?;
                let mut ids = Vec::with_capacity(locked.len());
                for row in &locked {
                    ids.push(row.try_get::<i64, _>(0).map_err(OutboxError::db(step))?);
                }
                for chunk in ids.chunks(IN_LIST_MAX) {
                    let list = placeholders(chunk.len());
                    let update = format!(
                        "UPDATE {t} SET lease_owner = ?, lease_until = {until} WHERE id IN ({list})",
                        until = d.now_plus_ms()
                    );
                    let mut q = sqlx::query(&update).bind(owner).bind(millis(lease));
                    for id in chunk {
                        q = q.bind(id);
                    }
                    q.persistent(false).execute(&mut *tx).await.map_err(OutboxError::db(step))?;
                    let select = format!(
                        "SELECT {cols} FROM {t} WHERE id IN ({list})",
                        cols = self.row_columns()
                    );
                    let mut q = sqlx::query(&select);
                    for id in chunk {
                        q = q.bind(id);
                    }
                    let found = q
                        .persistent(false)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(OutboxError::db(step))?;
                    for row in &found {
                        rows.push(claimed_row!(row, step));
                    }
                }
                tx.commit().await.map_err(OutboxError::db(step))?;
            }
        }
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// For each of `keys`: the smallest id below `below` of a pending row with that key that
    /// `owner` does not hold (another relay's, or nobody's). Keys without one are absent.
    pub async fn blockers(
        &self,
        owner: &str,
        keys: &[&str],
        below: OutboxId,
    ) -> Result<HashMap<String, OutboxId>> {
        let d = self.dialect();
        let key = d.key_col();
        let step = "checking the order of claimed keys";
        let mut found = HashMap::new();
        for chunk in keys.chunks(IN_LIST_MAX) {
            let sql = d.sql(&format!(
                "SELECT {key_text}, MIN(id) FROM {t} WHERE published_at IS NULL AND {key} IN ({list}) AND id < ? AND (lease_owner IS NULL OR lease_owner <> ?) GROUP BY {key}",
                t = self.table,
                key_text = d.read_text(key),
                list = placeholders(chunk.len())
            ));
            with_pool!(&self.db, pool, DB => {
                let mut q = sqlx::query::<DB>(&sql);
                for k in chunk {
                    q = q.bind(*k);
                }
                let rows = q
                    .bind(below.0)
                    .bind(owner)
                    .persistent(false)
                    .fetch_all(pool)
                    .await
                    .map_err(OutboxError::db(step))?;
                for row in &rows {
                    let k: String = row.try_get(0).map_err(OutboxError::db(step))?;
                    let id: i64 = row.try_get(1).map_err(OutboxError::db(step))?;
                    found.insert(k, OutboxId(id));
                }
            });
        }
        Ok(found)
    }

    /// Runs `sql_for(list)` once per chunk of `ids`, binding `first` (already bound values go
    /// before the ids), and returns the rows affected in total.
    async fn update_ids(
        &self,
        step: &'static str,
        ids: &[OutboxId],
        binds: &[Bind<'_>],
        sql_for: impl Fn(&str) -> String,
    ) -> Result<u64> {
        let d = self.dialect();
        let mut affected = 0;
        for chunk in ids.chunks(IN_LIST_MAX) {
            let sql = d.sql(&sql_for(&placeholders(chunk.len())));
            with_pool!(&self.db, pool, DB => {
                let mut q = sqlx::query::<DB>(&sql);
                for b in binds {
                    q = match b {
                        Bind::Int(v) => q.bind(*v),
                        Bind::Text(v) => q.bind(*v),
                    };
                }
                for id in chunk {
                    q = q.bind(id.0);
                }
                let done = q.persistent(false).execute(pool).await.map_err(OutboxError::db(step))?;
                affected += done.rows_affected();
            });
        }
        Ok(affected)
    }

    /// Marks `ids` published now and clears their lease. Returns the rows changed (a row
    /// already marked by another relay is left as it is).
    pub async fn mark_published(&self, ids: &[OutboxId]) -> Result<u64> {
        let (t, now) = (&self.table, self.dialect().now());
        self.update_ids("marking rows published", ids, &[], |list| {
            format!(
                "UPDATE {t} SET published_at = {now}, lease_owner = NULL, lease_until = NULL WHERE published_at IS NULL AND id IN ({list})"
            )
        })
        .await
    }

    /// Gives back `owner`'s lease on `ids`; they become claimable again after `retry_after`
    /// (zero: at once). Until then they count as nobody's, so they still hold back the later
    /// rows of their keys.
    pub async fn release(
        &self,
        owner: &str,
        ids: &[OutboxId],
        retry_after: Duration,
    ) -> Result<u64> {
        let (t, until) = (&self.table, self.dialect().now_plus_ms());
        let binds = [Bind::Int(millis(retry_after)), Bind::Text(owner)];
        self.update_ids("releasing rows", ids, &binds, |list| {
            format!(
                "UPDATE {t} SET lease_owner = NULL, lease_until = {until} WHERE lease_owner = ? AND published_at IS NULL AND id IN ({list})"
            )
        })
        .await
    }

    /// Gives back every pending row `owner` holds, claimable at once: after a round cut short,
    /// so that the next round starts holding nothing (the order rule relies on it).
    pub async fn release_all(&self, owner: &str) -> Result<u64> {
        let d = self.dialect();
        let sql = d.sql(&format!(
            "UPDATE {t} SET lease_owner = NULL, lease_until = NULL WHERE published_at IS NULL AND lease_owner = ?",
            t = self.table
        ));
        let step = "releasing rows left from a failed round";
        with_pool!(&self.db, pool, DB => {
            let done = sqlx::query::<DB>(&sql).bind(owner).execute(pool).await.map_err(OutboxError::db(step))?;
            Ok(done.rows_affected())
        })
    }

    /// Extends `owner`'s lease on `ids` to now + `lease`. Returns how many rows it still held:
    /// fewer than `ids.len()` means some lease ran out and another relay took the row.
    pub async fn renew(&self, owner: &str, ids: &[OutboxId], lease: Duration) -> Result<u64> {
        let (t, until) = (&self.table, self.dialect().now_plus_ms());
        let binds = [Bind::Int(millis(lease)), Bind::Text(owner)];
        self.update_ids("renewing leases", ids, &binds, |list| {
            format!(
                "UPDATE {t} SET lease_until = {until} WHERE lease_owner = ? AND published_at IS NULL AND id IN ({list})"
            )
        })
        .await
    }

    /// Records a failed publish of `id`: one more attempt, the error, and no claim before
    /// `retry_after` from now.
    pub async fn record_failure(
        &self,
        owner: &str,
        id: OutboxId,
        error: &str,
        retry_after: Duration,
    ) -> Result<()> {
        let d = self.dialect();
        let error: String = error.chars().take(LAST_ERROR_CHARS_MAX).collect();
        let sql = d.sql(&format!(
            "UPDATE {t} SET attempts = attempts + 1, last_error = ?, lease_owner = NULL, lease_until = {until} WHERE id = ? AND lease_owner = ? AND published_at IS NULL",
            t = self.table,
            until = d.now_plus_ms()
        ));
        let step = "recording a failed publish";
        with_pool!(&self.db, pool, DB => {
            sqlx::query::<DB>(&sql)
                .bind(error.as_str())
                .bind(millis(retry_after))
                .bind(id.0)
                .bind(owner)
                .execute(pool)
                .await
                .map_err(OutboxError::db(step))?;
        });
        Ok(())
    }

    /// Deletes up to `limit` rows published more than `retention` ago; returns how many.
    pub async fn delete_published_before(&self, retention: Duration, limit: usize) -> Result<u64> {
        let d = self.dialect();
        let t = &self.table;
        let cutoff = d.now_minus_ms();
        let sql = match d {
            Dialect::MySql => format!(
                "DELETE FROM {t} WHERE published_at < {cutoff} ORDER BY published_at, id LIMIT ?"
            ),
            Dialect::Sqlite | Dialect::Postgres => d.sql(&format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE published_at IS NOT NULL AND published_at < {cutoff} LIMIT ?)"
            )),
        };
        let step = "deleting published rows";
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        with_pool!(&self.db, pool, DB => {
            let done = sqlx::query::<DB>(&sql)
                .bind(millis(retention))
                .bind(limit)
                .execute(pool)
                .await
                .map_err(OutboxError::db(step))?;
            Ok(done.rows_affected())
        })
    }

    /// Pending rows and the age of the oldest (by id): two index lookups, for the gauges.
    pub async fn pending_summary(&self) -> Result<(u64, Option<Duration>)> {
        let d = self.dialect();
        let t = &self.table;
        let count_sql = format!("SELECT COUNT(*) FROM {t} WHERE published_at IS NULL");
        let age_sql = format!(
            "SELECT {age} FROM {t} WHERE published_at IS NULL ORDER BY id LIMIT 1",
            age = d.age_seconds("created_at")
        );
        let step = "counting pending rows";
        with_pool!(&self.db, pool, DB => {
            let pending: i64 = sqlx::query::<DB>(&count_sql)
                .fetch_one(pool)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(OutboxError::db(step))?;
            let oldest = sqlx::query::<DB>(&age_sql)
                .fetch_optional(pool)
                .await
                .map_err(OutboxError::db(step))?;
            let seconds: Option<f64> = match oldest {
                Some(row) => row.try_get(0).map_err(OutboxError::db(step))?,
                None => None,
            };
            Ok((count(pending), age(seconds)))
        })
    }

    /// The whole picture for operators (`ferryctl outbox status`): counts every row once.
    pub async fn status(&self) -> Result<OutboxStatus> {
        let d = self.dialect();
        let (t, now) = (&self.table, d.now());
        let live = format!("lease_owner IS NOT NULL AND lease_until > {now}");
        let counts_sql = format!(
            "SELECT COUNT(CASE WHEN published_at IS NULL THEN 1 END), \
             COUNT(CASE WHEN published_at IS NULL AND {live} THEN 1 END), \
             COUNT(CASE WHEN published_at IS NOT NULL THEN 1 END), \
             COUNT(CASE WHEN published_at IS NULL AND attempts > 0 THEN 1 END) FROM {t}"
        );
        let relays_sql = format!(
            "SELECT {owner}, COUNT(*) FROM {t} WHERE published_at IS NULL AND {live} GROUP BY lease_owner ORDER BY lease_owner",
            owner = d.read_text("lease_owner")
        );
        let failure_sql = format!(
            "SELECT id, topic, attempts, last_error FROM {t} WHERE published_at IS NULL AND attempts > 0 ORDER BY id LIMIT 1"
        );
        let step = "reading the outbox status";
        let (_, oldest_pending_age) = self.pending_summary().await?;
        let mut status = OutboxStatus { oldest_pending_age, ..OutboxStatus::default() };
        with_pool!(&self.db, pool, DB => {
            let row = sqlx::query::<DB>(&counts_sql).fetch_one(pool).await.map_err(OutboxError::db(step))?;
            let get = |i: usize| row.try_get::<i64, _>(i).map(count).map_err(OutboxError::db(step));
            status.pending = get(0)?;
            status.leased = get(1)?;
            status.published_retained = get(2)?;
            status.failed_attempts_rows = get(3)?;
            let rows = sqlx::query::<DB>(&relays_sql).fetch_all(pool).await.map_err(OutboxError::db(step))?;
            for row in &rows {
                status.relays.push(RelayLeases {
                    relay_id: row.try_get(0).map_err(OutboxError::db(step))?,
                    leased: count(row.try_get(1).map_err(OutboxError::db(step))?),
                });
            }
            let failed = sqlx::query::<DB>(&failure_sql).fetch_optional(pool).await.map_err(OutboxError::db(step))?;
            if let Some(row) = failed {
                let attempts: i32 = row.try_get(2).map_err(OutboxError::db(step))?;
                status.first_failure = Some(FailedRow {
                    id: OutboxId(row.try_get(0).map_err(OutboxError::db(step))?),
                    topic: row.try_get(1).map_err(OutboxError::db(step))?,
                    attempts: u32::try_from(attempts).unwrap_or(0),
                    last_error: row.try_get(3).map_err(OutboxError::db(step))?,
                });
            }
        });
        Ok(status)
    }
}

/// A value bound before the id list of [`Store::update_ids`].
enum Bind<'a> {
    Int(i64),
    Text(&'a str),
}

/// How the outbox table `table` in `db` stands: pending, leased, published and failed rows,
/// the oldest pending row's age, and who holds leases. Counts every row, so it costs a scan
/// of the table: meant for operators, not for a tight loop.
///
/// # Errors
/// [`OutboxError::Database`].
pub async fn status(db: &OutboxDb, table: &TableName) -> Result<OutboxStatus> {
    Store::new(db.clone(), table.clone()).status().await
}
