//! One dead letter: what its headers say (origin, attempts, last error, when), how it is shown
//! (`list` row, JSON object), and how `replay` rewrites it and where it sends it.
//!
//! Pure functions of a record and its DLQ offset, so they are tested without a broker.

use bytes::Bytes;
use ferry_protocol::group::{headers, retry_topic};
use ferry_protocol::{Offset, PartitionIndex, Record};
use serde::Serialize;

use crate::output::{format_bytes, format_timestamp_ms, printable, shorten, text_or_base64, Table};

/// Characters of the last error shown in the `list` table (JSON has it whole).
const LAST_ERROR_CHARS_MAX: usize = 80;

/// A record read from a group's dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its offset in the dead-letter topic.
    pub offset: Offset,
    /// The message as the consumer library dead-lettered it.
    pub record: Record,
}

/// The value of the last header called `name`, as text (invalid UTF-8 replaced).
fn header_text(record: &Record, name: &str) -> Option<String> {
    record
        .headers
        .iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// A header holding a number; `None` when missing or not a number.
fn header_number<T: std::str::FromStr>(record: &Record, name: &str) -> Option<T> {
    header_text(record, name).and_then(|t| t.trim().parse().ok())
}

/// What the headers of a dead letter say, for people and scripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LetterRow {
    /// Offset in the dead-letter topic.
    pub offset: Offset,
    /// Topic the message was first produced to.
    pub origin_topic: Option<String>,
    /// Partition it was first produced to.
    pub origin_partition: Option<PartitionIndex>,
    /// Its offset there.
    pub origin_offset: Option<Offset>,
    /// Deliveries tried before it was dead-lettered.
    pub attempts: Option<u32>,
    /// The consumer's last error.
    pub last_error: Option<String>,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub dead_lettered_ms: Option<u64>,
}

impl LetterRow {
    /// Reads the `ferry-*` headers of `letter`; a missing or malformed header is `None`.
    pub fn new(letter: &DeadLetter) -> LetterRow {
        let r = &letter.record;
        LetterRow {
            offset: letter.offset,
            origin_topic: header_text(r, headers::ORIGIN_TOPIC).filter(|t| !t.is_empty()),
            origin_partition: header_number(r, headers::ORIGIN_PARTITION).map(PartitionIndex),
            origin_offset: header_number(r, headers::ORIGIN_OFFSET).map(Offset),
            attempts: header_number(r, headers::ATTEMPT),
            last_error: header_text(r, headers::LAST_ERROR),
            dead_lettered_ms: header_number(r, headers::DEAD_LETTERED_MS),
        }
    }

    /// `topic/partition@offset` (parts the headers lack are left out; `-` when none).
    pub fn origin(&self) -> String {
        match (&self.origin_topic, self.origin_partition, self.origin_offset) {
            (Some(t), Some(p), Some(o)) => format!("{t}/{p}@{o}"),
            (Some(t), Some(p), None) => format!("{t}/{p}"),
            (Some(t), None, _) => t.clone(),
            (None, ..) => "-".into(),
        }
    }
}

/// The `list` table: one row per dead letter; `with_payload` adds the value as text.
pub fn render_list(letters: &[DeadLetter], with_payload: bool) -> String {
    let mut columns =
        vec!["OFFSET", "ORIGIN", "ATTEMPTS", "DEAD_LETTERED", "LAST_ERROR", "KEY", "SIZE"];
    if with_payload {
        columns.push("PAYLOAD");
    }
    let mut table = Table::new(columns);
    for letter in letters {
        let row = LetterRow::new(letter);
        let r = &letter.record;
        let mut cells = vec![
            row.offset.to_string(),
            row.origin(),
            row.attempts.map_or_else(|| "-".into(), |a| a.to_string()),
            row.dead_lettered_ms.map_or_else(|| "-".into(), format_timestamp_ms),
            row.last_error.as_deref().map_or_else(
                || "-".into(),
                |e| shorten(&printable(e.as_bytes()), LAST_ERROR_CHARS_MAX),
            ),
            r.key.as_deref().map_or_else(|| "-".into(), printable),
            format_bytes(r.value.len() as u64),
        ];
        if with_payload {
            cells.push(printable(&r.value));
        }
        table.row(cells);
    }
    table.render()
}

/// A dead letter in JSON output. Byte strings are text when valid UTF-8, else base64; the
/// `*encoding` fields say which, as in `consume --json`.
#[derive(Debug, Serialize)]
pub struct LetterJson {
    offset: u64,
    origin_topic: Option<String>,
    origin_partition: Option<u32>,
    origin_offset: Option<u64>,
    attempts: Option<u32>,
    last_error: Option<String>,
    dead_lettered_ms: Option<u64>,
    /// `dead_lettered_ms` as RFC 3339.
    dead_lettered_at: Option<String>,
    /// When the message was first produced (the producer's clock).
    timestamp_ms: u64,
    key: Option<String>,
    key_encoding: Option<&'static str>,
    /// Application headers (the `ferry-*` ones are in the fields above).
    headers: Vec<HeaderJson>,
    value_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_encoding: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct HeaderJson {
    name: String,
    value: String,
    encoding: &'static str,
}

impl LetterJson {
    /// The object for `letter`; the value only `with_payload`.
    pub fn new(letter: &DeadLetter, with_payload: bool) -> LetterJson {
        let row = LetterRow::new(letter);
        let r = &letter.record;
        let key = r.key.as_deref().map(text_or_base64);
        let value = with_payload.then(|| text_or_base64(&r.value));
        LetterJson {
            offset: row.offset.0,
            origin_topic: row.origin_topic,
            origin_partition: row.origin_partition.map(|p| p.0),
            origin_offset: row.origin_offset.map(|o| o.0),
            attempts: row.attempts,
            last_error: row.last_error,
            dead_lettered_at: row.dead_lettered_ms.map(format_timestamp_ms),
            dead_lettered_ms: row.dead_lettered_ms,
            timestamp_ms: r.timestamp_ms,
            key_encoding: key.as_ref().map(|(_, e)| *e),
            key: key.map(|(k, _)| k),
            headers: r
                .headers
                .iter()
                .filter(|(name, _)| !headers::is_internal(name))
                .map(|(name, v)| {
                    let (value, encoding) = text_or_base64(v);
                    HeaderJson { name: name.clone(), value, encoding }
                })
                .collect(),
            value_bytes: r.value.len(),
            value_encoding: value.as_ref().map(|(_, e)| *e),
            value: value.map(|(v, _)| v),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replay

/// Where a replayed dead letter goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// The group's retry topic for the origin topic, or the origin topic itself.
    pub topic: String,
    /// The origin partition.
    pub partition: PartitionIndex,
    /// The origin topic (to size a retry topic that does not exist yet).
    pub origin_topic: String,
}

/// Where `replay` sends `letter`: `group`'s retry topic for its origin topic (only this group
/// sees it again), or with `to_origin` the origin topic (every group sees it); the partition
/// is the origin partition either way.
///
/// # Errors
/// A sentence when the headers do not say where the message came from.
pub fn replay_target(letter: &DeadLetter, group: &str, to_origin: bool) -> Result<Target, String> {
    let row = LetterRow::new(letter);
    let (Some(origin_topic), Some(partition)) = (row.origin_topic, row.origin_partition) else {
        return Err(format!(
            "it has no valid {} and {} headers, so its origin is unknown",
            headers::ORIGIN_TOPIC,
            headers::ORIGIN_PARTITION
        ));
    };
    let topic = if to_origin { origin_topic.clone() } else { retry_topic(group, &origin_topic) };
    Ok(Target { topic, partition, origin_topic })
}

/// The headers of a replayed message.
///
/// Into the retry topic: the application and origin headers are kept, `ferry-attempt` starts
/// again at 1, and `ferry-last-error` and `ferry-dead-lettered-ms` are removed. Into the
/// origin topic it is a new message there: every `ferry-*` header is removed.
pub fn replay_headers(original: &[(String, Bytes)], to_origin: bool) -> Vec<(String, Bytes)> {
    let mut out: Vec<(String, Bytes)> = original
        .iter()
        .filter(|(name, _)| {
            if to_origin {
                !headers::is_internal(name)
            } else {
                ![headers::ATTEMPT, headers::LAST_ERROR, headers::DEAD_LETTERED_MS]
                    .contains(&name.as_str())
            }
        })
        .cloned()
        .collect();
    if !to_origin {
        out.push((headers::ATTEMPT.to_string(), Bytes::from_static(b"1")));
    }
    out
}

/// The record `replay` sends for `letter`: same timestamp, key and value, headers rewritten by
/// [`replay_headers`].
pub fn replay_record(letter: &DeadLetter, to_origin: bool) -> Record {
    Record {
        timestamp_ms: letter.record.timestamp_ms,
        key: letter.record.key.clone(),
        headers: replay_headers(&letter.record.headers, to_origin),
        value: letter.record.value.clone(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn h(name: &str, value: &str) -> (String, Bytes) {
        (name.to_string(), Bytes::from(value.to_string()))
    }

    /// A dead letter from orders/2@41 after 16 attempts, with one application header.
    pub(crate) fn letter(offset: u64) -> DeadLetter {
        DeadLetter {
            offset: Offset(offset),
            record: Record {
                timestamp_ms: 1_699_999_000_000,
                key: Some(Bytes::from_static(b"k1")),
                headers: vec![
                    h("trace", "abc"),
                    h(headers::ORIGIN_TOPIC, "orders"),
                    h(headers::ORIGIN_PARTITION, "2"),
                    h(headers::ORIGIN_OFFSET, "41"),
                    h(headers::ATTEMPT, "16"),
                    h(headers::LAST_ERROR, "db down\nretry later"),
                    h(headers::DEAD_LETTERED_MS, "1700000000123"),
                ],
                value: Bytes::from_static(b"hello"),
            },
        }
    }

    #[test]
    fn headers_become_a_row() {
        let row = LetterRow::new(&letter(7));
        assert_eq!(row.offset, Offset(7));
        assert_eq!(row.origin_topic.as_deref(), Some("orders"));
        assert_eq!(row.origin_partition, Some(PartitionIndex(2)));
        assert_eq!(row.origin_offset, Some(Offset(41)));
        assert_eq!(row.attempts, Some(16));
        assert_eq!(row.last_error.as_deref(), Some("db down\nretry later"));
        assert_eq!(row.dead_lettered_ms, Some(1_700_000_000_123));
        assert_eq!(row.origin(), "orders/2@41");

        // Missing or malformed headers are unknown, not errors.
        let mut bare = letter(8);
        bare.record.headers = vec![h(headers::ORIGIN_TOPIC, "orders"), h(headers::ATTEMPT, "x")];
        let row = LetterRow::new(&bare);
        assert_eq!((row.origin_partition, row.attempts, row.dead_lettered_ms), (None, None, None));
        assert_eq!(row.origin(), "orders");
        bare.record.headers.clear();
        assert_eq!(LetterRow::new(&bare).origin(), "-");
    }

    #[test]
    fn list_table_escapes_and_shortens() {
        let mut long = letter(1);
        long.record.headers.push(h(headers::LAST_ERROR, &"e".repeat(200)));
        long.record.key = None;
        long.record.value = Bytes::from_static(b"\xff");
        let text = render_list(&[letter(0), long], true);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("OFFSET  ORIGIN       ATTEMPTS  DEAD_LETTERED"), "{text}");
        assert!(lines[0].ends_with("KEY  SIZE  PAYLOAD"), "{text}");
        assert!(lines[1].starts_with("0       orders/2@41  16        2023-11-14T22:13:20.123Z"));
        assert!(lines[1].contains("db down\\nretry later"), "{text}");
        assert!(lines[1].ends_with("k1   5 B   hello"), "{text}");
        assert!(lines[2].contains(&format!("{}…", "e".repeat(79))), "{text}");
        assert!(lines[2].contains(" -    1 B   \\xff (not UTF-8; bytes escaped)"), "{text}");
        assert!(!render_list(&[letter(0)], false).contains("PAYLOAD"));
    }

    #[test]
    fn json_objects_carry_every_field() {
        let v = serde_json::to_value(LetterJson::new(&letter(3), true)).unwrap();
        assert_eq!(v["offset"], 3);
        assert_eq!(v["origin_topic"], "orders");
        assert_eq!(
            (v["origin_partition"].as_u64(), v["origin_offset"].as_u64()),
            (Some(2), Some(41))
        );
        assert_eq!(v["attempts"], 16);
        assert_eq!(v["last_error"], "db down\nretry later");
        assert_eq!(v["dead_lettered_ms"], 1_700_000_000_123u64);
        assert_eq!(v["dead_lettered_at"], "2023-11-14T22:13:20.123Z");
        assert_eq!((v["key"].as_str(), v["key_encoding"].as_str()), (Some("k1"), Some("utf8")));
        assert_eq!(
            v["headers"],
            serde_json::json!([{"name": "trace", "value": "abc", "encoding": "utf8"}])
        );
        assert_eq!((v["value"].as_str(), v["value_bytes"].as_u64()), (Some("hello"), Some(5)));
        let v = serde_json::to_value(LetterJson::new(&letter(3), false)).unwrap();
        assert!(v.get("value").is_none() && v.get("value_encoding").is_none());
        assert_eq!(v["value_bytes"], 5);
    }

    #[test]
    fn replay_into_the_retry_topic_restarts_the_attempts() {
        let l = letter(0);
        let target = replay_target(&l, "billing", false).unwrap();
        assert_eq!(target.topic, "__retry.billing.orders");
        assert_eq!((target.partition, target.origin_topic.as_str()), (PartitionIndex(2), "orders"));
        let record = replay_record(&l, false);
        assert_eq!(
            record.headers,
            vec![
                h("trace", "abc"),
                h(headers::ORIGIN_TOPIC, "orders"),
                h(headers::ORIGIN_PARTITION, "2"),
                h(headers::ORIGIN_OFFSET, "41"),
                h(headers::ATTEMPT, "1"),
            ]
        );
        assert_eq!((record.key, record.value), (l.record.key.clone(), l.record.value.clone()));
        assert_eq!(record.timestamp_ms, l.record.timestamp_ms);
        // A letter without an attempt header still gets one.
        assert_eq!(
            replay_headers(&[h("a", "b")], false),
            vec![h("a", "b"), h(headers::ATTEMPT, "1")]
        );
    }

    #[test]
    fn replay_to_the_origin_sends_a_plain_message() {
        let l = letter(0);
        let target = replay_target(&l, "billing", true).unwrap();
        assert_eq!((target.topic.as_str(), target.partition), ("orders", PartitionIndex(2)));
        assert_eq!(replay_record(&l, true).headers, vec![h("trace", "abc")]);
    }

    #[test]
    fn replay_needs_the_origin() {
        let mut l = letter(0);
        l.record.headers.retain(|(n, _)| n != headers::ORIGIN_PARTITION);
        let err = replay_target(&l, "billing", false).unwrap_err();
        assert!(err.contains("origin is unknown"), "{err}");
    }
}
