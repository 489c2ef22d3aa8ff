//! Writing outbox rows from application code: [`OutboxMessage`] and [`enqueue`], which inserts
//! the row through the caller's own connection or transaction, so the row commits (or rolls
//! back) with the caller's business rows.

use std::collections::BTreeMap;
use std::future::Future;

use ferry_protocol::record::DEDUP_ID_HEADER;
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::Row as _;

use super::db::{Dialect, OutboxId, TableName};
use super::error::{OutboxError, Result};

/// Longest topic name (the broker's limit).
pub const TOPIC_CHARS_MAX: usize = 249;

/// Longest key, in characters (the MySQL column is `VARCHAR(255)`).
pub const KEY_CHARS_MAX: usize = 255;

/// One message to publish, as the application hands it to [`enqueue`].
///
/// Rows with the same `key` are published in the order of their ids (insert order); rows
/// without a key are published in no particular order relative to each other. Headers travel
/// as record headers; the relay adds `ferry-dedup-id`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The topic to publish to: 1 to 249 characters of `A-Z a-z 0-9 . _ -`.
    pub topic: String,
    /// The aggregate id: orders the rows that share it and picks the partition.
    pub key: Option<String>,
    /// Record headers (name → value); a name appears once.
    pub headers: BTreeMap<String, String>,
    /// The record's value.
    pub payload: Vec<u8>,
}

impl OutboxMessage {
    /// A message for `topic` carrying `payload`, without key or headers.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        OutboxMessage { topic: topic.into(), payload: payload.into(), ..OutboxMessage::default() }
    }

    /// Sets the key (the aggregate id that orders rows).
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets a header (replacing an earlier value of the same name).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Checks what the table and the broker would refuse later, when it is still the
    /// application's transaction that can react.
    ///
    /// # Errors
    /// [`OutboxError::InvalidMessage`] naming the field.
    pub fn validate(&self) -> Result<()> {
        let fail = |detail: String| Err(OutboxError::InvalidMessage(detail));
        let topic = &self.topic;
        if topic.is_empty() || topic.len() > TOPIC_CHARS_MAX {
            return fail(format!("topic {topic:?} must have 1 to {TOPIC_CHARS_MAX} characters"));
        }
        if let Some(bad) =
            topic.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c)))
        {
            return fail(format!(
                "{bad:?} is not allowed in topic {topic:?} (use A-Z a-z 0-9 . _ -)"
            ));
        }
        if let Some(key) = &self.key {
            if key.chars().count() > KEY_CHARS_MAX {
                return fail(format!("the key has more than {KEY_CHARS_MAX} characters"));
            }
        }
        for name in self.headers.keys() {
            if name.is_empty() {
                return fail("a header name is empty".into());
            }
            if name == DEDUP_ID_HEADER {
                return fail(format!("the relay sets {DEDUP_ID_HEADER} itself"));
            }
        }
        Ok(())
    }

    /// The `headers` column: a JSON object, or NULL when there are none.
    fn headers_json(&self) -> Option<String> {
        if self.headers.is_empty() {
            return None;
        }
        let object: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        Some(serde_json::Value::Object(object).to_string())
    }
}

/// A connection or transaction an outbox row can be inserted through: the three sqlx
/// connection types and any `sqlx::Transaction` over them.
pub trait OutboxExecutor: Send {
    /// Inserts `message` into `table` and returns the new row's id.
    fn insert_outbox_row(
        &mut self,
        table: &TableName,
        message: &OutboxMessage,
    ) -> impl Future<Output = Result<OutboxId>> + Send;
}

/// Inserts `message` into the default table (`ferry_outbox`) through `executor`, normally
/// the caller's open transaction: the row becomes visible to the relay when, and only if,
/// that transaction commits.
///
/// ```ignore
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE orders SET state = 'paid' WHERE id = ?").bind(id).execute(&mut *tx).await?;
/// outbox::enqueue(&mut tx, &OutboxMessage::new("orders", body).with_key(id.to_string())).await?;
/// tx.commit().await?;
/// ```
///
/// # Errors
/// [`OutboxError::InvalidMessage`] (nothing written), or [`OutboxError::Database`]; the
/// caller's transaction is then in whatever state the database left it (usually: roll back).
pub async fn enqueue<E>(executor: &mut E, message: &OutboxMessage) -> Result<OutboxId>
where
    E: OutboxExecutor + ?Sized,
{
    executor.insert_outbox_row(&TableName::default(), message).await
}

/// [`enqueue`] into the outbox table `table`.
///
/// # Errors
/// Those of [`enqueue`].
pub async fn enqueue_to<E>(
    executor: &mut E,
    table: &TableName,
    message: &OutboxMessage,
) -> Result<OutboxId>
where
    E: OutboxExecutor + ?Sized,
{
    executor.insert_outbox_row(table, message).await
}

fn insert_sql(dialect: Dialect, table: &TableName, returning: bool) -> String {
    let key = dialect.key_col();
    let tail = if returning { " RETURNING id" } else { "" };
    dialect.sql(&format!(
        "INSERT INTO {table} (topic, {key}, headers, payload) VALUES (?, ?, ?, ?){tail}"
    ))
}

const INSERT_STEP: &str = "inserting an outbox row";

/// SQLite and PostgreSQL take the same statement with `RETURNING id`.
macro_rules! insert_returning_id {
    ($connection:ty, $dialect:expr) => {
        impl OutboxExecutor for $connection {
            async fn insert_outbox_row(
                &mut self,
                table: &TableName,
                message: &OutboxMessage,
            ) -> Result<OutboxId> {
                message.validate()?;
                let sql = insert_sql($dialect, table, true);
                let row = sqlx::query(&sql)
                    .bind(&message.topic)
                    .bind(message.key.as_deref())
                    .bind(message.headers_json())
                    .bind(message.payload.as_slice())
                    .fetch_one(&mut *self)
                    .await
                    .map_err(OutboxError::db(INSERT_STEP))?;
                Ok(OutboxId(row.try_get(0).map_err(OutboxError::db(INSERT_STEP))?))
            }
        }
    };
}

insert_returning_id!(SqliteConnection, Dialect::Sqlite);
insert_returning_id!(PgConnection, Dialect::Postgres);

impl OutboxExecutor for MySqlConnection {
    async fn insert_outbox_row(
        &mut self,
        table: &TableName,
        message: &OutboxMessage,
    ) -> Result<OutboxId> {
        message.validate()?;
        let sql = insert_sql(Dialect::MySql, table, false);
        let done = sqlx::query(&sql)
            .bind(&message.topic)
            .bind(message.key.as_deref())
            .bind(message.headers_json())
            .bind(message.payload.as_slice())
            .execute(&mut *self)
            .await
            .map_err(OutboxError::db(INSERT_STEP))?;
        let id = i64::try_from(done.last_insert_id()).map_err(|_| OutboxError::Database {
            action: INSERT_STEP,
            source: sqlx::Error::Protocol("insert id beyond i64".into()),
        })?;
        Ok(OutboxId(id))
    }
}

impl<DB> OutboxExecutor for sqlx::Transaction<'_, DB>
where
    DB: sqlx::Database,
    DB::Connection: OutboxExecutor,
{
    fn insert_outbox_row(
        &mut self,
        table: &TableName,
        message: &OutboxMessage,
    ) -> impl Future<Output = Result<OutboxId>> + Send {
        let connection: &mut DB::Connection = self;
        connection.insert_outbox_row(table, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_checked_before_anything_is_written() {
        OutboxMessage::new("orders.v1", "x")
            .with_key("o-1")
            .with_header("a", "b")
            .validate()
            .unwrap();
        let bad = [
            OutboxMessage::new("", "x"),
            OutboxMessage::new("a/b", "x"),
            OutboxMessage::new("t".repeat(250), "x"),
            OutboxMessage::new("t", "x").with_key("k".repeat(256)),
            OutboxMessage::new("t", "x").with_header("", "v"),
            OutboxMessage::new("t", "x").with_header(DEDUP_ID_HEADER, "mine"),
        ];
        for m in bad {
            assert!(matches!(m.validate(), Err(OutboxError::InvalidMessage(_))), "{m:?}");
        }
    }

    #[test]
    fn headers_are_a_json_object_or_null() {
        assert_eq!(OutboxMessage::new("t", "x").headers_json(), None);
        let m = OutboxMessage::new("t", "x").with_header("b", "2").with_header("a", "1\"");
        assert_eq!(m.headers_json().as_deref(), Some(r#"{"a":"1\"","b":"2"}"#));
    }
}
