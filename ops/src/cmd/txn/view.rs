//! How one transaction looks: the `list` table row, `show`'s fields, the JSON object, and its
//! payload (the first record of the half message's batch).
//!
//! Pure functions of a [`TxnInfo`] and "now", so they are tested without a broker.

use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::txn::TxnInfo;
use ferry_protocol::{DecisionOrigin, Record, RecordBatch, TxnState};
use serde::Serialize;

use crate::duration::format_span;
use crate::output::{format_bytes, format_timestamp_ms, printable, text_or_base64, Table};

/// Width of `show`'s label column (`check timeout:` and `  header NAME:` fit).
const SHOW_LABEL_CHARS: usize = 16;

/// How long ago `then_ms` was, by this machine's clock (0 if it is in the future: clock skew).
pub(super) fn age(then_ms: u64, now_ms: u64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(then_ms))
}

/// When the next check-back of a transaction is due, seen from `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NextCheck {
    /// None scheduled: decided, parked, or not scheduled yet.
    None,
    /// Due in this long.
    In(Duration),
    /// Past due by this long and not sent yet: the leader is behind (busy, or just elected).
    Overdue(Duration),
}

impl NextCheck {
    fn of(info: &TxnInfo, now_ms: u64) -> NextCheck {
        if info.state.is_decided() || info.next_check_ms == 0 {
            NextCheck::None
        } else if info.next_check_ms > now_ms {
            NextCheck::In(Duration::from_millis(info.next_check_ms - now_ms))
        } else {
            NextCheck::Overdue(age(info.next_check_ms, now_ms))
        }
    }

    fn render(self) -> String {
        match self {
            NextCheck::None => "-".to_string(),
            NextCheck::In(d) => format!("in {}", format_span(d)),
            NextCheck::Overdue(d) => format!("overdue {}", format_span(d)),
        }
    }
}

/// A transaction in JSON output. Times are milliseconds since the Unix epoch on the leader's
/// clock; `null` where the broker has none (`next_check_ms` when no check is scheduled,
/// `decided_ms` while pending).
#[derive(Debug, Serialize)]
pub(super) struct TxnJson {
    txn_id: u64,
    group: String,
    topic: String,
    partition: u32,
    state: &'static str,
    created_ms: u64,
    /// Now (this machine's clock) minus `created_ms`.
    age_ms: u64,
    check_timeout_ms: u32,
    check_count: u32,
    next_check_ms: Option<u64>,
    /// When it was decided, or parked.
    decided_ms: Option<u64>,
    /// `producer`, `check_back`, `operator` or `checks_exhausted`.
    decided_by: Option<&'static str>,
    /// Base offset of the committed message's batch.
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<PayloadJson>,
    /// Why the payload could not be shown (with `--payload`).
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_error: Option<String>,
}

impl TxnJson {
    pub(super) fn new(info: &TxnInfo, now_ms: u64, with_payload: bool) -> Self {
        let (payload, payload_error) = if with_payload {
            match Payload::decode(&info.batch) {
                Ok(p) => (Some(PayloadJson::new(&p)), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, None)
        };
        TxnJson {
            txn_id: info.txn_id.0,
            group: info.group.clone(),
            topic: info.topic.clone(),
            partition: info.partition.0,
            state: info.state.name(),
            created_ms: info.created_ms,
            age_ms: now_ms.saturating_sub(info.created_ms),
            check_timeout_ms: info.check_timeout_ms,
            check_count: info.check_count,
            next_check_ms: (info.next_check_ms != 0).then_some(info.next_check_ms),
            decided_ms: (info.decided_ms != 0).then_some(info.decided_ms),
            decided_by: info.origin.map(DecisionOrigin::name),
            offset: info.offset.map(|o| o.0),
            payload,
            payload_error,
        }
    }
}

/// The message of a transaction: its batch's header and first record.
#[derive(Debug)]
struct Payload {
    records: u32,
    batch_bytes: usize,
    producer_id: u64,
    base_sequence: u32,
    first: Record,
}

impl Payload {
    /// Checks and reads the batch (CRC included).
    ///
    /// # Errors
    /// A sentence when the broker sent no batch or the batch does not decode.
    fn decode(batch: &Bytes) -> Result<Payload, String> {
        if batch.is_empty() {
            return Err("the broker returned no payload".into());
        }
        let parsed = RecordBatch::parse(batch.clone())
            .map_err(|e| format!("cannot decode the record batch: {e}"))?;
        let first = match parsed.records().next() {
            Some(Ok(record)) => record,
            Some(Err(e)) => return Err(format!("cannot decode the first record: {e}")),
            None => return Err("the record batch holds no record".into()),
        };
        Ok(Payload {
            records: parsed.count(),
            batch_bytes: batch.len(),
            producer_id: parsed.producer_id(),
            base_sequence: parsed.base_sequence(),
            first,
        })
    }
}

/// The payload in JSON output. Byte strings are text when valid UTF-8, else base64; the
/// `*encoding` fields say which (`utf8` or `base64`), as in `consume --json`.
#[derive(Debug, Serialize)]
struct PayloadJson {
    records: u32,
    batch_bytes: usize,
    producer_id: u64,
    base_sequence: u32,
    timestamp_ms: u64,
    key: Option<String>,
    key_encoding: Option<&'static str>,
    headers: Vec<HeaderJson>,
    value: String,
    value_encoding: &'static str,
}

#[derive(Debug, Serialize)]
struct HeaderJson {
    name: String,
    value: String,
    encoding: &'static str,
}

impl PayloadJson {
    fn new(p: &Payload) -> Self {
        let key = p.first.key.as_deref().map(text_or_base64);
        let (value, value_encoding) = text_or_base64(&p.first.value);
        PayloadJson {
            records: p.records,
            batch_bytes: p.batch_bytes,
            producer_id: p.producer_id,
            base_sequence: p.base_sequence,
            timestamp_ms: p.first.timestamp_ms,
            key_encoding: key.as_ref().map(|(_, e)| *e),
            key: key.map(|(k, _)| k),
            headers: p
                .first
                .headers
                .iter()
                .map(|(name, v)| {
                    let (value, encoding) = text_or_base64(v);
                    HeaderJson { name: name.clone(), value, encoding }
                })
                .collect(),
            value,
            value_encoding,
        }
    }
}

/// `topic/partition`.
fn place(info: &TxnInfo) -> String {
    format!("{}/{}", info.topic, info.partition)
}

/// `show` as text: one `name: value` line per field, then the payload if asked for.
pub(super) fn render_show(info: &TxnInfo, now_ms: u64, with_payload: bool) -> String {
    let mut fields: Vec<(String, String)> = vec![
        ("transaction".into(), info.txn_id.to_string()),
        ("state".into(), info.state.name().into()),
        ("group".into(), info.group.clone()),
        ("topic".into(), info.topic.clone()),
        ("partition".into(), info.partition.to_string()),
        (
            "created".into(),
            format!(
                "{} ({} ago)",
                format_timestamp_ms(info.created_ms),
                format_span(age(info.created_ms, now_ms))
            ),
        ),
        (
            "check timeout".into(),
            format_span(Duration::from_millis(u64::from(info.check_timeout_ms))),
        ),
        ("checks sent".into(), info.check_count.to_string()),
        ("next check".into(), NextCheck::of(info, now_ms).render()),
    ];
    let decided_label = if info.state == TxnState::Parked { "parked" } else { "decided" };
    let decided = if info.decided_ms == 0 {
        "-".to_string()
    } else {
        format!(
            "{} ({} ago)",
            format_timestamp_ms(info.decided_ms),
            format_span(age(info.decided_ms, now_ms))
        )
    };
    fields.push((decided_label.into(), decided));
    fields.push(("decided by".into(), info.origin.map_or("-", DecisionOrigin::name).into()));
    fields.push(("offset".into(), info.offset.map_or_else(|| "-".into(), |o| o.to_string())));
    if with_payload {
        match Payload::decode(&info.batch) {
            Ok(p) => {
                let which = if p.records == 1 {
                    "1 record".to_string()
                } else {
                    format!("first of {} records", p.records)
                };
                fields.push((
                    "payload".into(),
                    format!(
                        "{which} (batch {}, producer {}, sequence {})",
                        format_bytes(p.batch_bytes as u64),
                        p.producer_id,
                        p.base_sequence
                    ),
                ));
                fields.push(("  timestamp".into(), format_timestamp_ms(p.first.timestamp_ms)));
                fields.push((
                    "  key".into(),
                    p.first.key.as_deref().map_or_else(|| "(none)".into(), printable),
                ));
                for (name, value) in &p.first.headers {
                    fields.push((
                        format!("  header {}", printable(name.as_bytes())),
                        printable(value),
                    ));
                }
                fields.push(("  value".into(), printable(&p.first.value)));
            }
            Err(e) => fields.push(("payload".into(), format!("unavailable: {e}"))),
        }
    }
    // A fixed label column, so `show` lines up the same with and without --payload; a longer
    // label (a long header name) pushes its own value right.
    let mut text = String::new();
    for (name, value) in &fields {
        let label = format!("{name}:");
        text.push_str(format!("{label:<SHOW_LABEL_CHARS$} {value}").trim_end());
        text.push('\n');
    }
    if info.state == TxnState::Parked {
        text.push_str(&format!(
            "\nchecks ran out without a decision; decide with `ferryctl txn commit {id}` or \
             `ferryctl txn rollback {id}`\n",
            id = info.txn_id
        ));
    }
    text
}

/// The `list` table: one row per transaction.
pub(super) fn render_list(txns: &[TxnInfo], now_ms: u64) -> String {
    let mut table = Table::new(vec![
        "ID",
        "GROUP",
        "TOPIC/PARTITION",
        "STATE",
        "AGE",
        "CHECKS",
        "NEXT_CHECK",
        "DECIDED_BY",
    ]);
    for t in txns {
        table.row(vec![
            t.txn_id.to_string(),
            t.group.clone(),
            place(t),
            t.state.name().into(),
            format_span(age(t.created_ms, now_ms)),
            t.check_count.to_string(),
            NextCheck::of(t, now_ms).render(),
            t.origin.map_or("-", DecisionOrigin::name).into(),
        ]);
    }
    table.render()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use ferry_protocol::{Offset, PartitionIndex, RecordBatchBuilder, TxnId};

    /// "Now" in tests.
    pub(crate) const NOW_MS: u64 = 1_700_000_000_000;

    /// A transaction created 5m03s before [`NOW_MS`].
    pub(crate) fn info(id: u64, state: TxnState) -> TxnInfo {
        TxnInfo {
            txn_id: TxnId(id),
            group: "payments".into(),
            topic: "orders".into(),
            partition: PartitionIndex(2),
            state,
            created_ms: NOW_MS - 303_000,
            check_timeout_ms: 6000,
            check_count: 3,
            next_check_ms: 0,
            decided_ms: 0,
            origin: None,
            offset: None,
            batch: Bytes::new(),
        }
    }

    #[test]
    fn next_check_is_in_overdue_or_none() {
        let mut t = info(1, TxnState::Pending);
        assert_eq!(NextCheck::of(&t, NOW_MS).render(), "-");
        t.next_check_ms = NOW_MS + 25_000;
        assert_eq!(NextCheck::of(&t, NOW_MS).render(), "in 25s");
        t.next_check_ms = NOW_MS - 3_000;
        assert_eq!(NextCheck::of(&t, NOW_MS).render(), "overdue 3s");
        t.state = TxnState::Committed;
        assert_eq!(NextCheck::of(&t, NOW_MS), NextCheck::None, "decided: no more checks");
    }

    #[test]
    fn list_rows_render() {
        let mut pending = info(7, TxnState::Pending);
        pending.next_check_ms = NOW_MS + 2_000;
        let mut decided = info(12, TxnState::RolledBack);
        decided.origin = Some(DecisionOrigin::ChecksExhausted);
        decided.decided_ms = NOW_MS - 1_000;
        let text = render_list(&[pending, decided], NOW_MS);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                "ID  GROUP     TOPIC/PARTITION  STATE        AGE    CHECKS  NEXT_CHECK  DECIDED_BY",
                "7   payments  orders/2         pending      5m03s  3       in 2s       -",
                "12  payments  orders/2         rolled_back  5m03s  3       -           checks_exhausted",
            ]
        );
    }

    #[test]
    fn json_rows_carry_every_field() {
        let mut t = info(9, TxnState::Committed);
        t.decided_ms = NOW_MS - 10;
        t.origin = Some(DecisionOrigin::Operator);
        t.offset = Some(Offset(1234));
        let v = serde_json::to_value(TxnJson::new(&t, NOW_MS, false)).unwrap();
        assert_eq!(v["txn_id"], 9);
        assert_eq!(v["state"], "committed");
        assert_eq!(v["topic"], "orders");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["age_ms"], 303_000);
        assert!(v["next_check_ms"].is_null());
        assert_eq!(v["decided_ms"], NOW_MS - 10);
        assert_eq!(v["decided_by"], "operator");
        assert_eq!(v["offset"], 1234);
        assert!(v.get("payload").is_none() && v.get("payload_error").is_none());
    }

    fn batch(records: &[Record]) -> Bytes {
        let mut b = RecordBatchBuilder::new(7, 3, 0);
        for r in records {
            b.push(r);
        }
        b.finish()
    }

    #[test]
    fn show_renders_every_field_and_the_payload() {
        let mut t = info(42, TxnState::Parked);
        t.decided_ms = NOW_MS - 60_000;
        t.batch = batch(&[
            Record {
                timestamp_ms: NOW_MS - 303_000,
                key: Some(Bytes::from_static(b"user-1")),
                headers: vec![("trace".into(), Bytes::from_static(b"abc"))],
                value: Bytes::from_static(b"line one\nline two"),
            },
            Record::default(),
        ]);
        let text = render_show(&t, NOW_MS, true);
        let expected = "\
transaction:     42
state:           parked
group:           payments
topic:           orders
partition:       2
created:         2023-11-14T22:08:17.000Z (5m03s ago)
check timeout:   6s
checks sent:     3
next check:      -
parked:          2023-11-14T22:12:20.000Z (1m00s ago)
decided by:      -
offset:          -
payload:         first of 2 records (batch 98 B, producer 7, sequence 3)
  timestamp:     2023-11-14T22:08:17.000Z
  key:           user-1
  header trace:  abc
  value:         line one\\nline two

checks ran out without a decision; decide with `ferryctl txn commit 42` or `ferryctl txn \
rollback 42`
";
        assert_eq!(text, expected);
        assert!(!render_show(&t, NOW_MS, false).contains("payload"));
    }

    #[test]
    fn payload_json_and_binary_values() {
        let mut t = info(42, TxnState::Pending);
        t.batch = batch(&[Record {
            timestamp_ms: 5,
            key: None,
            headers: vec![],
            value: Bytes::from_static(b"\xff\x00a"),
        }]);
        let v = serde_json::to_value(TxnJson::new(&t, NOW_MS, true)).unwrap();
        assert_eq!(v["payload"]["records"], 1);
        assert_eq!(v["payload"]["value"], "/wBh");
        assert_eq!(v["payload"]["value_encoding"], "base64");
        assert!(v["payload"]["key"].is_null());
        assert_eq!(printable(b"\xff\x00a"), "\\xff\\x00a (not UTF-8; bytes escaped)");
        assert_eq!(printable("tab\there \u{1b}".as_bytes()), "tab\\there \\u{1b}");

        t.batch = Bytes::new();
        let v = serde_json::to_value(TxnJson::new(&t, NOW_MS, true)).unwrap();
        assert!(v.get("payload").is_none());
        assert_eq!(v["payload_error"], "the broker returned no payload");
        t.batch = Bytes::from_static(b"\x01garbage");
        let text = render_show(&t, NOW_MS, true);
        assert!(text.contains("\npayload:         unavailable: cannot decode"), "{text}");
    }
}
