//! How `ferryctl outbox status` looks: the text report and the JSON object. Pure functions of
//! an [`OutboxStatus`], tested without a database.

use ferry_producer::outbox::{Dialect, OutboxStatus, TableName};
use serde::Serialize;

use crate::duration::format_span;
use crate::output::Table;

/// `status --json`.
#[derive(Debug, Serialize)]
pub struct StatusJson<'a> {
    table: &'a str,
    database: &'static str,
    pending: u64,
    leased: u64,
    published_retained: u64,
    failed_attempts_rows: u64,
    /// Age of the oldest pending row in milliseconds; null when nothing is pending.
    oldest_pending_age_ms: Option<u64>,
    relays: Vec<RelayJson<'a>>,
    first_failure: Option<FailureJson<'a>>,
}

#[derive(Debug, Serialize)]
struct RelayJson<'a> {
    relay_id: &'a str,
    leased: u64,
}

#[derive(Debug, Serialize)]
struct FailureJson<'a> {
    id: i64,
    topic: &'a str,
    attempts: u32,
    last_error: Option<&'a str>,
}

impl<'a> StatusJson<'a> {
    /// The JSON view of `status`.
    pub fn new(table: &'a TableName, dialect: Dialect, status: &'a OutboxStatus) -> Self {
        StatusJson {
            table: table.as_str(),
            database: dialect.name(),
            pending: status.pending,
            leased: status.leased,
            published_retained: status.published_retained,
            failed_attempts_rows: status.failed_attempts_rows,
            oldest_pending_age_ms: status
                .oldest_pending_age
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            relays: status
                .relays
                .iter()
                .map(|r| RelayJson { relay_id: &r.relay_id, leased: r.leased })
                .collect(),
            first_failure: status.first_failure.as_ref().map(|f| FailureJson {
                id: f.id.0,
                topic: &f.topic,
                attempts: f.attempts,
                last_error: f.last_error.as_deref(),
            }),
        }
    }
}

/// The text report: counts, then live leases per relay, then the first failed row.
pub fn render_status(table: &TableName, dialect: Dialect, status: &OutboxStatus) -> String {
    let oldest = status.oldest_pending_age.map_or_else(|| "-".to_string(), format_span);
    let mut out = format!(
        "table:           {table} ({})\n\
         pending:         {}\n\
         leased:          {}\n\
         published:       {} (kept until the retention period passes)\n\
         failed:          {}\n\
         oldest pending:  {oldest}\n",
        dialect.name(),
        status.pending,
        status.leased,
        status.published_retained,
        status.failed_attempts_rows,
    );
    if status.relays.is_empty() {
        out.push_str("relays:          none holding leases\n");
    } else {
        out.push('\n');
        let mut relays = Table::new(vec!["RELAY", "LEASED"]);
        for r in &status.relays {
            relays.row(vec![r.relay_id.clone(), r.leased.to_string()]);
        }
        out.push_str(&relays.render());
    }
    if let Some(f) = &status.first_failure {
        let error = f.last_error.as_deref().unwrap_or("-");
        out.push_str(&format!(
            "\nfirst failed row: {} (topic {}), {} attempt{}: {error}\n",
            f.id,
            f.topic,
            f.attempts,
            if f.attempts == 1 { "" } else { "s" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_producer::outbox::{FailedRow, OutboxId, RelayLeases};
    use std::time::Duration;

    fn busy() -> OutboxStatus {
        OutboxStatus {
            pending: 12,
            leased: 10,
            published_retained: 1000,
            failed_attempts_rows: 1,
            oldest_pending_age: Some(Duration::from_secs(303)),
            relays: vec![RelayLeases { relay_id: "host-1".into(), leased: 10 }],
            first_failure: Some(FailedRow {
                id: OutboxId(42),
                topic: "orders".into(),
                attempts: 3,
                last_error: Some("unknown topic \"orders\"".into()),
            }),
        }
    }

    #[test]
    fn text_report() {
        let text = render_status(&TableName::default(), Dialect::Postgres, &busy());
        assert!(text.starts_with("table:           ferry_outbox (postgres)\n"), "{text}");
        assert!(text.contains("pending:         12\n"));
        assert!(text.contains("oldest pending:  5m03s\n"), "{text}");
        assert!(text.contains("RELAY   LEASED\nhost-1  10\n"), "{text}");
        assert!(text.contains("first failed row: 42 (topic orders), 3 attempts: unknown topic"));
        let idle = render_status(&TableName::default(), Dialect::Sqlite, &OutboxStatus::default());
        assert!(
            idle.contains("oldest pending:  -\nrelays:          none holding leases\n"),
            "{idle}"
        );
        assert!(!idle.contains("failed row"));
    }

    #[test]
    fn json_object() {
        let status = busy();
        let table = TableName::default();
        let json = serde_json::to_value(StatusJson::new(&table, Dialect::MySql, &status)).unwrap();
        assert_eq!(json["database"], "mysql");
        assert_eq!(json["pending"], 12);
        assert_eq!(json["oldest_pending_age_ms"], 303_000);
        assert_eq!(json["relays"][0]["relay_id"], "host-1");
        assert_eq!(json["first_failure"]["attempts"], 3);
        let idle = OutboxStatus::default();
        let json = serde_json::to_value(StatusJson::new(&table, Dialect::Sqlite, &idle)).unwrap();
        assert!(json["oldest_pending_age_ms"].is_null() && json["first_failure"].is_null());
    }
}
