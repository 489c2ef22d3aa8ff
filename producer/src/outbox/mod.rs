//! The transactional outbox ("local message table"): the application writes its business rows
//! and an outbox row in one local database transaction; a relay publishes each committed row
//! to ferrymq exactly once, in order per key. Used by applications (through [`enqueue`]) and
//! by `ferryctl outbox` (migrate, relay, status); behind the `outbox` cargo feature.
//!
//! ```text
//! app tx: UPDATE orders ...; INSERT INTO ferry_outbox ...; COMMIT
//!                                     │
//! Relay (any number, side by side):   ▼
//!   claim rows with a lease ─▶ order check per key ─▶ Producer::send (+ ferry-dedup-id)
//!     ─▶ acknowledged ─▶ published_at = now ─▶ deleted after `retention`
//! ```
//!
//! # Writing rows
//!
//! From Rust, inside the application's own sqlx transaction (SQLite, PostgreSQL or MySQL):
//!
//! ```ignore
//! use ferry_producer::outbox::{self, OutboxMessage};
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE orders SET state = 'paid' WHERE id = $1").bind(id).execute(&mut *tx).await?;
//! let message = OutboxMessage::new("orders", payload).with_key(id.to_string()).with_header("type", "paid");
//! outbox::enqueue(&mut tx, &message).await?;
//! tx.commit().await?;
//! ```
//!
//! From any other language: insert `topic`, `key` (NULL for none), `headers` (a JSON object of
//! strings, or NULL) and `payload`, and leave every other column to its default, e.g.
//! `INSERT INTO ferry_outbox (topic, "key", headers, payload) VALUES ($1, $2, $3, $4)`
//! (MySQL: `` `key` ``, which is a reserved word there).
//!
//! # Publishing
//!
//! ```ignore
//! let db = OutboxDb::connect("postgres://app:pw@127.0.0.1/app").await?;
//! outbox::migrate(&db, &TableName::default()).await?;
//! let producer = Producer::connect(ProducerConfig::new("127.0.0.1:7400")).await?;
//! let relay = Relay::new(db, producer, RelayConfig::new())?;
//! relay.run(cancel_token).await?;
//! ```
//!
//! Each row becomes one message: the row's key as the message key (so one key stays on one
//! partition), its headers, and `ferry-dedup-id: <dedup source>:<row id>` (the source is the
//! table name unless configured). The broker drops a record whose dedup id it already stored
//! in that partition within its dedup window, so a relay that dies between the broker's
//! acknowledgement and marking the row never causes a duplicate — as long as the row is
//! published again within that window (the default lease of 30 s is far inside it).
//!
//! Guarantees and their limits:
//!
//! * **Nothing committed is lost**: a row is marked published only after the broker
//!   acknowledged it (committed by a Raft quorum). A row that cannot be published stays pending.
//! * **Rows of one key are published in id order**, with any number of relays: a relay
//!   publishes a row only when every earlier pending row of its key is its own, and sends a
//!   key's rows one acknowledgement after another. The argument, and the two cases it does
//!   not cover (concurrent transactions writing one key; `in_flight_per_key` above 1), are in
//!   `order.rs`.
//! * **Failures**: while the broker is unreachable, rows are released untouched and the relay
//!   backs off (100 ms doubling to 5 s). A row the broker refuses (unknown topic, too large)
//!   or whose headers are not a JSON object of strings gets `attempts + 1` and `last_error`,
//!   and is retried after 1 s, 2 s, 4 s ... up to 5 minutes; it holds back the later rows of
//!   its key meanwhile (`ferryctl outbox status` shows it).
//! * **Ids are dedup ids**: never reuse them under one dedup source — do not TRUNCATE the table
//!   or reset its sequence (SQLite's `AUTOINCREMENT` and the other databases' sequences never
//!   reuse ids by themselves).
//!
//! # Schema
//!
//! [`migrate`] creates the table and its indexes idempotently (the default name is
//! `ferry_outbox`; any name of `[a-z0-9_]`, up to 48 characters, works the same). Columns:
//! `id` orders the rows of a key; `topic`, `key`, `headers`, `payload` are the message;
//! `created_at` feeds the age metric; `lease_owner`, `lease_until`, `attempts`, `last_error`
//! and `published_at` are the relay's bookkeeping (NULL or 0 on insert). A row is pending while
//! `published_at` is NULL; claimable when also `lease_until` is NULL or past. The partial
//! indexes make claiming (`published_at IS NULL ORDER BY id`) and the per-key check
//! (`key = ? AND published_at IS NULL`) index lookups.
//!
//! SQLite (timestamps are UTC text `YYYY-MM-DD HH:MM:SS.SSS`; leave `created_at` to its
//! default):
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS ferry_outbox (
//!     id           INTEGER PRIMARY KEY AUTOINCREMENT,
//!     topic        TEXT NOT NULL,
//!     "key"        TEXT,
//!     headers      TEXT,
//!     payload      BLOB NOT NULL,
//!     created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
//!     lease_owner  TEXT,
//!     lease_until  TEXT,
//!     attempts     INTEGER NOT NULL DEFAULT 0,
//!     last_error   TEXT,
//!     published_at TEXT
//! );
//! CREATE INDEX IF NOT EXISTS ferry_outbox_pending_idx ON ferry_outbox (id) WHERE published_at IS NULL;
//! CREATE INDEX IF NOT EXISTS ferry_outbox_key_idx ON ferry_outbox ("key", id) WHERE published_at IS NULL;
//! CREATE INDEX IF NOT EXISTS ferry_outbox_published_idx ON ferry_outbox (published_at) WHERE published_at IS NOT NULL;
//! ```
//!
//! PostgreSQL 14 or later; the trigger sends `NOTIFY ferry_outbox` on every insert statement,
//! whoever inserts, so relays (which `LISTEN`) wake at once:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS ferry_outbox (
//!     id           BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
//!     topic        TEXT NOT NULL,
//!     "key"        TEXT,
//!     headers      TEXT,
//!     payload      BYTEA NOT NULL,
//!     created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
//!     lease_owner  TEXT,
//!     lease_until  TIMESTAMPTZ,
//!     attempts     INTEGER NOT NULL DEFAULT 0,
//!     last_error   TEXT,
//!     published_at TIMESTAMPTZ
//! );
//! CREATE INDEX IF NOT EXISTS ferry_outbox_pending_idx ON ferry_outbox (id) WHERE published_at IS NULL;
//! CREATE INDEX IF NOT EXISTS ferry_outbox_key_idx ON ferry_outbox ("key", id) WHERE published_at IS NULL;
//! CREATE INDEX IF NOT EXISTS ferry_outbox_published_idx ON ferry_outbox (published_at) WHERE published_at IS NOT NULL;
//! CREATE OR REPLACE FUNCTION ferry_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
//! BEGIN
//!     PERFORM pg_notify('ferry_outbox', '');
//!     RETURN NULL;
//! END
//! $$;
//! CREATE OR REPLACE TRIGGER ferry_outbox_notify AFTER INSERT ON ferry_outbox
//!     FOR EACH STATEMENT EXECUTE FUNCTION ferry_outbox_notify();
//! ```
//!
//! MySQL 8.0.1+ or MariaDB 10.6+ (for `SKIP LOCKED`); keys compare byte for byte
//! (`utf8mb4_bin`), at most 255 characters:
//!
//! ```sql
//! CREATE TABLE IF NOT EXISTS ferry_outbox (
//!     id           BIGINT NOT NULL AUTO_INCREMENT,
//!     topic        VARCHAR(249) NOT NULL,
//!     `key`        VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
//!     headers      TEXT NULL,
//!     payload      LONGBLOB NOT NULL,
//!     created_at   TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
//!     lease_owner  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
//!     lease_until  TIMESTAMP(6) NULL DEFAULT NULL,
//!     attempts     INT NOT NULL DEFAULT 0,
//!     last_error   TEXT NULL,
//!     published_at TIMESTAMP(6) NULL DEFAULT NULL,
//!     PRIMARY KEY (id),
//!     KEY ferry_outbox_pending_idx (published_at, id),
//!     KEY ferry_outbox_key_idx (`key`, published_at, id)
//! ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
//! ```
//!
//! # Claiming
//!
//! PostgreSQL and MySQL claim with `SELECT ... FOR UPDATE SKIP LOCKED` in a short transaction
//! that sets `lease_owner` and `lease_until`; SQLite claims under `BEGIN IMMEDIATE`. All times
//! are the database's clock. A relay renews its lease while it publishes; a crashed relay's
//! rows become claimable when their lease runs out. PostgreSQL relays `LISTEN` on the table's
//! channel; all relays also poll every `poll_interval` (lease expiries and retry times send no
//! notification). Published rows are deleted after `retention` (default 24 h), at most 5000 per
//! statement, every `cleanup_interval`.
//!
//! Metrics: see [`RelayMetrics`].

mod config;
mod db;
mod enqueue;
mod error;
mod metrics;
pub mod order;
mod publish;
mod relay;
mod schema;
mod store;
#[cfg(test)]
mod tests;
mod wake;

pub use config::{
    host_pid_relay_id, RelayConfig, BATCH_SIZE_DEFAULT, BATCH_SIZE_MAX, CLEANUP_CHUNK_ROWS,
    CLEANUP_INTERVAL_DEFAULT, DEDUP_SOURCE_BYTES_MAX, LEASE_DEFAULT, LEASE_MIN,
    METRICS_INTERVAL_DEFAULT, POLL_INTERVAL_DEFAULT, RELAY_ID_CHARS_MAX, RETENTION_DEFAULT,
    SHUTDOWN_TIMEOUT_DEFAULT,
};
pub use db::{
    Dialect, OutboxDb, OutboxId, TableName, DB_CONNECTIONS_MAX, DEFAULT_TABLE, SQLITE_BUSY_TIMEOUT,
    TABLE_NAME_CHARS_MAX,
};
pub use enqueue::{
    enqueue, enqueue_to, OutboxExecutor, OutboxMessage, KEY_CHARS_MAX, TOPIC_CHARS_MAX,
};
pub use error::{OutboxError, Result};
pub use metrics::{encode_text, RelayMetrics};
pub use publish::{dedup_id, Outgoing, PublishError, PublishErrorKind, Publisher};
pub use relay::{Relay, RoundReport, RETRY_BACKOFF_MAX, RETRY_BACKOFF_MIN};
pub use schema::{migrate, schema_statements, verify_columns};
pub use store::{status, FailedRow, OutboxStatus, RelayLeases};
