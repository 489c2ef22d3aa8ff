//! Which database the outbox lives in: connecting by URL, the table name, and the few SQL
//! fragments that differ between SQLite, PostgreSQL and MySQL/MariaDB (clock, intervals,
//! placeholders, quoting). Everything else in the module writes its SQL once, with `?`
//! placeholders, and lets [`Dialect::sql`] adapt it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Executor as _;

use super::error::{redact_url, OutboxError, Result};

/// The table name used when none is given.
pub const DEFAULT_TABLE: &str = "ferry_outbox";

/// Longest table name: index and trigger names add up to 15 characters, and PostgreSQL cuts
/// identifiers at 63 bytes.
pub const TABLE_NAME_CHARS_MAX: usize = 48;

/// Connections a relay keeps to its database: one claims and marks, one refreshes metrics,
/// one cleans up; PostgreSQL's listener has its own.
pub const DB_CONNECTIONS_MAX: u32 = 4;

/// How long a statement waits for a free pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long SQLite waits for another writer's lock before failing a statement.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The id of an outbox row: its auto-increment primary key. Its order is the publish order of
/// the rows of one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OutboxId(pub i64);

impl fmt::Display for OutboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A validated outbox table name: 1 to [`TABLE_NAME_CHARS_MAX`] characters of `[a-z0-9_]`,
/// not starting with a digit. It is spliced into SQL (identifiers cannot be bound), so nothing
/// else gets through; lowercase only, so the name means the same unquoted in every database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName(String);

impl TableName {
    /// Checks `name`.
    ///
    /// # Errors
    /// [`OutboxError::TableName`] saying what is wrong.
    pub fn new(name: &str) -> Result<TableName> {
        let fail = |reason| Err(OutboxError::TableName { name: name.to_string(), reason });
        if name.is_empty() || name.len() > TABLE_NAME_CHARS_MAX {
            return fail("table names have 1 to 48 characters");
        }
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return fail("a table name cannot start with a digit");
        }
        if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return fail("use only a-z, 0-9 and _");
        }
        Ok(TableName(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for TableName {
    fn default() -> Self {
        TableName(DEFAULT_TABLE.to_string())
    }
}

impl FromStr for TableName {
    type Err = OutboxError;

    fn from_str(s: &str) -> Result<Self> {
        TableName::new(s)
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SQL dialect of an outbox database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite 3.35 or later (`RETURNING`).
    Sqlite,
    /// PostgreSQL 14 or later (`CREATE OR REPLACE TRIGGER`).
    Postgres,
    /// MySQL 8.0.1+ or MariaDB 10.6+ (`SKIP LOCKED`).
    MySql,
}

impl Dialect {
    /// The dialect a database URL names by its scheme (`sqlite:`, `postgres://`,
    /// `postgresql://`, `mysql://`, `mariadb://`), without connecting.
    pub fn from_url(url: &str) -> Option<Dialect> {
        let scheme = url.split(':').next().unwrap_or_default().to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Dialect::Sqlite),
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::MySql),
            _ => None,
        }
    }

    /// The name for people: `sqlite`, `postgres`, `mysql`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
            Dialect::MySql => "mysql",
        }
    }

    /// `text` with its `?` placeholders numbered `$1, $2, ...` for PostgreSQL. The module's
    /// SQL has no `?` anywhere else.
    pub(crate) fn sql(self, text: &str) -> String {
        if self != Dialect::Postgres {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len() + 16);
        let mut n = 0;
        for c in text.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The `key` column, quoted (`key` is reserved in MySQL).
    pub(crate) fn key_col(self) -> &'static str {
        match self {
            Dialect::MySql => "`key`",
            Dialect::Sqlite | Dialect::Postgres => "\"key\"",
        }
    }

    /// `column` (a `utf8mb4_bin` column on MySQL) as text to read back: sqlx takes MySQL's
    /// binary collations for binary strings, so it is converted to a text collation there.
    pub(crate) fn read_text(self, column: &str) -> String {
        match self {
            Dialect::MySql => format!("CONVERT({column} USING utf8mb4)"),
            Dialect::Sqlite | Dialect::Postgres => column.to_string(),
        }
    }

    /// The database's current time, as stored in the timestamp columns.
    pub(crate) fn now(self) -> &'static str {
        match self {
            Dialect::Sqlite => "strftime('%Y-%m-%d %H:%M:%f', 'now')",
            Dialect::Postgres => "now()",
            Dialect::MySql => "NOW(6)",
        }
    }

    /// The current time plus a bound number of milliseconds (one `?`, an integer).
    pub(crate) fn now_plus_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "strftime('%Y-%m-%d %H:%M:%f', 'now', '+' || (? / 1000.0) || ' seconds')"
            }
            Dialect::Postgres => "(now() + make_interval(secs => ?::float8 / 1000.0))",
            Dialect::MySql => "DATE_ADD(NOW(6), INTERVAL ? * 1000 MICROSECOND)",
        }
    }

    /// The current time minus a bound number of milliseconds (one `?`, an integer).
    pub(crate) fn now_minus_ms(self) -> &'static str {
        match self {
            Dialect::Sqlite => {
                "strftime('%Y-%m-%d %H:%M:%f', 'now', '-' || (? / 1000.0) || ' seconds')"
            }
            Dialect::Postgres => "(now() - make_interval(secs => ?::float8 / 1000.0))",
            Dialect::MySql => "DATE_SUB(NOW(6), INTERVAL ? * 1000 MICROSECOND)",
        }
    }

    /// Seconds from the timestamp `column` to now, as a double.
    pub(crate) fn age_seconds(self, column: &str) -> String {
        match self {
            Dialect::Sqlite => format!("((julianday('now') - julianday({column})) * 86400.0)"),
            Dialect::Postgres => format!("EXTRACT(EPOCH FROM (now() - {column}))::float8"),
            Dialect::MySql => format!("(TIMESTAMPDIFF(MICROSECOND, {column}, NOW(6)) / 1e6)"),
        }
    }
}

/// A connection pool to the database holding the outbox table.
///
/// Cheap to clone (the pools are handles). Build it with [`OutboxDb::connect`] or from a pool
/// the application already has (the variants are public).
#[derive(Debug, Clone)]
pub enum OutboxDb {
    /// An SQLite file.
    Sqlite(SqlitePool),
    /// A PostgreSQL database.
    Postgres(PgPool),
    /// A MySQL or MariaDB database.
    MySql(MySqlPool),
}

impl OutboxDb {
    /// Connects to the database named by `url`:
    ///
    /// * `sqlite:PATH`, `sqlite://PATH[?mode=rwc|rw|ro]`, `sqlite::memory:` — the file is
    ///   created when missing unless `mode` says otherwise; WAL journal, busy timeout 5 s;
    /// * `postgres://` or `postgresql://USER:PASSWORD@HOST:PORT/DB`;
    /// * `mysql://` or `mariadb://USER:PASSWORD@HOST:PORT/DB` (relay sessions run at
    ///   `READ COMMITTED`, so a claim locks only the rows it takes).
    ///
    /// No TLS: the relay is meant to run next to its database (loopback or a private network).
    /// At most [`DB_CONNECTIONS_MAX`] connections are opened, lazily after the first.
    ///
    /// # Errors
    /// [`OutboxError::Url`] for an unknown scheme or bad options; [`OutboxError::Database`]
    /// when the first connection fails.
    pub async fn connect(url: &str) -> Result<OutboxDb> {
        let bad_url =
            |e: sqlx::Error| OutboxError::Url { url: redact_url(url), reason: e.to_string() };
        match Dialect::from_url(url) {
            Some(Dialect::Sqlite) => {
                let mut options = SqliteConnectOptions::from_str(url).map_err(bad_url)?;
                if !url.contains("mode=") {
                    options = options.create_if_missing(true);
                }
                let options =
                    options.journal_mode(SqliteJournalMode::Wal).busy_timeout(SQLITE_BUSY_TIMEOUT);
                let pool = SqlitePoolOptions::new()
                    .max_connections(DB_CONNECTIONS_MAX)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(OutboxError::db("connecting to SQLite"))?;
                Ok(OutboxDb::Sqlite(pool))
            }
            Some(Dialect::Postgres) => {
                let options = PgConnectOptions::from_str(url).map_err(bad_url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(DB_CONNECTIONS_MAX)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .map_err(OutboxError::db("connecting to PostgreSQL"))?;
                Ok(OutboxDb::Postgres(pool))
            }
            Some(Dialect::MySql) => {
                // MariaDB speaks the MySQL protocol: same driver, its own scheme for clarity.
                let mysql_url = match url.split_once(':') {
                    Some((_, rest)) => format!("mysql:{rest}"),
                    None => url.to_string(),
                };
                let options = MySqlConnectOptions::from_str(&mysql_url).map_err(bad_url)?;
                let pool = MySqlPoolOptions::new()
                    .max_connections(DB_CONNECTIONS_MAX)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                                .await
                                .map(|_| ())
                        })
                    })
                    .connect_with(options)
                    .await
                    .map_err(OutboxError::db("connecting to MySQL"))?;
                Ok(OutboxDb::MySql(pool))
            }
            None => Err(OutboxError::Url {
                url: redact_url(url),
                reason: "expected sqlite:, postgres://, postgresql://, mysql:// or mariadb://"
                    .into(),
            }),
        }
    }

    /// The SQL dialect of this database.
    pub fn dialect(&self) -> Dialect {
        match self {
            OutboxDb::Sqlite(_) => Dialect::Sqlite,
            OutboxDb::Postgres(_) => Dialect::Postgres,
            OutboxDb::MySql(_) => Dialect::MySql,
        }
    }

    /// Closes the pool, waiting for connections in use to come back.
    pub async fn close(&self) {
        match self {
            OutboxDb::Sqlite(pool) => pool.close().await,
            OutboxDb::Postgres(pool) => pool.close().await,
            OutboxDb::MySql(pool) => pool.close().await,
        }
    }
}

/// Runs `$body` with `$pool` bound to the pool of `$db`, whatever the database: the body is
/// compiled once per driver, with `$DB` naming the driver's `sqlx::Database` type.
macro_rules! with_pool {
    ($db:expr, $pool:ident, $DB:ident => $body:expr) => {
        match $db {
            $crate::outbox::OutboxDb::Sqlite($pool) => {
                #[allow(dead_code)]
                type $DB = sqlx::Sqlite;
                $body
            }
            $crate::outbox::OutboxDb::Postgres($pool) => {
                #[allow(dead_code)]
                type $DB = sqlx::Postgres;
                $body
            }
            $crate::outbox::OutboxDb::MySql($pool) => {
                #[allow(dead_code)]
                type $DB = sqlx::MySql;
                $body
            }
        }
    };
}
pub(crate) use with_pool;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert_eq!(TableName::new("ferry_outbox").unwrap().as_str(), "ferry_outbox");
        assert_eq!(TableName::default().as_str(), DEFAULT_TABLE);
        TableName::new("o2").unwrap();
        TableName::new("_x").unwrap();
        for bad in ["", "Outbox", "2x", "a-b", "a.b", "a b", "x;drop table y", "\"q\"", "é"] {
            assert!(TableName::new(bad).is_err(), "{bad:?}");
        }
        assert!(TableName::new(&"a".repeat(48)).is_ok());
        assert!(TableName::new(&"a".repeat(49)).is_err());
    }

    #[test]
    fn postgres_placeholders_are_numbered() {
        let text = "UPDATE t SET a = ? WHERE id IN (?, ?)";
        assert_eq!(Dialect::Postgres.sql(text), "UPDATE t SET a = $1 WHERE id IN ($2, $3)");
        assert_eq!(Dialect::Sqlite.sql(text), text);
        assert_eq!(Dialect::MySql.sql(text), text);
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused_with_the_password_hidden() {
        let err = OutboxDb::connect("oracle://u:pw@h/db").await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("u:***@h/db") && !text.contains("pw"), "{text}");
        assert!(matches!(err, OutboxError::Url { .. }));
    }
}
