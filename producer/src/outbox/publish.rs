//! Where claimed rows go: the [`Publisher`] trait, its implementation for [`Producer`], and
//! the translation of a row into a ferry [`Message`] (key, headers, `ferry-dedup-id`).
//!
//! The trait keeps the relay testable without a broker: tests hand the relay a fake.

use std::collections::HashSet;
use std::future::Future;

use bytes::Bytes;
use ferry_protocol::record::DEDUP_ID_HEADER;

use super::db::OutboxId;
use super::store::ClaimedRow;
use crate::{Message, Producer, ProducerError};

/// One row on its way to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The row it comes from.
    pub id: OutboxId,
    /// Destination topic.
    pub topic: String,
    /// The message: the row's key, its headers plus `ferry-dedup-id`, its payload.
    pub message: Message,
}

/// What the relay does after a failed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishErrorKind {
    /// The broker could not be reached or did not answer in time (the outcome is unknown: the
    /// dedup id makes a retry safe). The row is released without counting an attempt and the
    /// relay backs off.
    Unavailable,
    /// The broker (or the producer) refused this message: unknown topic, too large, malformed
    /// headers. The row gets `attempts + 1` and `last_error` and is retried after a backoff
    /// that grows per attempt (a topic may be created later).
    Rejected,
    /// Not sent, because an earlier row of the same key failed in this batch, or the broker
    /// became unreachable. Released without counting an attempt.
    NotSent,
    /// The publisher is closed: the relay stops.
    Closed,
}

/// A failed publish: what to do about it, and what happened (stored as `last_error`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    /// What the relay does about it.
    pub kind: PublishErrorKind,
    /// What happened.
    pub message: String,
}

impl PublishError {
    /// A failure of `kind` described by `message`.
    pub fn new(kind: PublishErrorKind, message: impl Into<String>) -> Self {
        PublishError { kind, message: message.into() }
    }
}

/// Sends rows to the broker. The relay calls [`Publisher::publish`] with one wave of rows at a
/// time and waits for it before the next wave.
pub trait Publisher: Send + Sync + 'static {
    /// Sends `batch` in order and reports each row's outcome, in the same order. `Ok` promises
    /// the message is stored durably (for ferry: committed by a Raft quorum). An
    /// implementation must not send a row after an earlier row of the same key in `batch`
    /// failed; it reports such rows as [`PublishErrorKind::NotSent`].
    fn publish(
        &self,
        batch: Vec<Outgoing>,
    ) -> impl Future<Output = Vec<Result<(), PublishError>>> + Send;
}

/// The ferry producer publishes each row as a message: stage one (`send`) for the whole batch
/// in order — one batch in flight per partition keeps that order in each partition — then a
/// flush, then stage two (the acknowledgements).
impl Publisher for Producer {
    async fn publish(&self, batch: Vec<Outgoing>) -> Vec<Result<(), PublishError>> {
        let mut outcomes: Vec<Option<Result<(), PublishError>>> = vec![None; batch.len()];
        let mut in_flight = Vec::with_capacity(batch.len());
        let mut failed_keys: HashSet<Bytes> = HashSet::new();
        let mut stop: Option<PublishError> = None;
        for (i, Outgoing { topic, message, .. }) in batch.into_iter().enumerate() {
            let slot = outcomes.get_mut(i);
            if let Some(reason) = &stop {
                let kind = match reason.kind {
                    PublishErrorKind::Closed => PublishErrorKind::Closed,
                    _ => PublishErrorKind::NotSent,
                };
                set(slot, Err(PublishError::new(kind, reason.message.clone())));
                continue;
            }
            let key = message.key.clone();
            if key.as_ref().is_some_and(|k| failed_keys.contains(k)) {
                let e = PublishError::new(
                    PublishErrorKind::NotSent,
                    "an earlier row of its key failed",
                );
                set(slot, Err(e));
                continue;
            }
            match self.send(&topic, message).await {
                Ok(delivery) => in_flight.push((i, key, delivery)),
                Err(e) => {
                    let e = publish_error(&e);
                    if matches!(e.kind, PublishErrorKind::Unavailable | PublishErrorKind::Closed) {
                        stop = Some(e.clone());
                    }
                    if let Some(k) = key {
                        failed_keys.insert(k);
                    }
                    set(slot, Err(e));
                }
            }
        }
        // Send what lingers now; the flush returns once every message above is settled.
        let _ = self.flush().await;
        for (i, _key, delivery) in in_flight {
            let outcome = delivery.await.map(|_| ()).map_err(|e| publish_error(&e));
            set(outcomes.get_mut(i), outcome);
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| Err(PublishError::new(PublishErrorKind::NotSent, "not sent")))
            })
            .collect()
    }
}

fn set(slot: Option<&mut Option<Result<(), PublishError>>>, value: Result<(), PublishError>) {
    if let Some(slot) = slot {
        *slot = Some(value);
    }
}

/// Classifies a producer failure: broker answers that say "this message, never" are
/// `Rejected`; everything that may pass by itself (unreachable cluster, timeouts, elections)
/// is `Unavailable`.
fn publish_error(e: &ProducerError) -> PublishError {
    let kind = match e {
        ProducerError::Closed => PublishErrorKind::Closed,
        ProducerError::Connect { source, .. }
        | ProducerError::Metadata { source, .. }
        | ProducerError::Produce { source, .. }
        | ProducerError::Transaction { source, .. } => match source.code() {
            Some(code) if !code.is_retriable() => PublishErrorKind::Rejected,
            _ => PublishErrorKind::Unavailable,
        },
        _ => PublishErrorKind::Rejected,
    };
    PublishError::new(kind, e.to_string())
}

/// The `ferry-dedup-id` of a row: `<source>:<row id>`.
pub fn dedup_id(source: &str, id: OutboxId) -> String {
    format!("{source}:{id}")
}

/// Builds the message for `row` (taking its payload): key, the row's headers except any
/// `ferry-dedup-id` of its own, then the relay's `ferry-dedup-id`.
///
/// # Errors
/// A sentence for `last_error` when the headers are not a JSON object of strings.
pub fn outgoing(row: &mut ClaimedRow, dedup_source: &str) -> Result<Outgoing, String> {
    let mut message = Message::new(std::mem::take(&mut row.payload));
    if let Some(key) = &row.key {
        message = message.with_key(key.clone());
    }
    for (name, value) in parse_headers(row.headers.as_deref())? {
        if name != DEDUP_ID_HEADER {
            message = message.with_header(name, value);
        }
    }
    message = message.with_header(DEDUP_ID_HEADER, dedup_id(dedup_source, row.id));
    Ok(Outgoing { id: row.id, topic: row.topic.clone(), message })
}

/// The `headers` column: NULL, empty or `null` for none, else a JSON object of strings.
fn parse_headers(text: Option<&str>) -> Result<Vec<(String, String)>, String> {
    let text = text.map(str::trim).unwrap_or_default();
    if text.is_empty() || text == "null" {
        return Ok(Vec::new());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("headers are not valid JSON: {e}"))?;
    let serde_json::Value::Object(object) = value else {
        return Err("headers must be a JSON object of strings".into());
    };
    let mut headers = Vec::with_capacity(object.len());
    for (name, value) in object {
        match value {
            serde_json::Value::String(v) => headers.push((name, v)),
            other => return Err(format!("header {name:?} is {other}, not a string")),
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(headers: Option<&str>) -> ClaimedRow {
        ClaimedRow {
            id: OutboxId(42),
            topic: "orders".into(),
            key: Some("o-1".into()),
            headers: headers.map(str::to_string),
            payload: b"body".to_vec(),
            attempts: 0,
        }
    }

    #[test]
    fn rows_become_messages_with_a_dedup_id() {
        let mut r = row(Some(r#"{"b":"2","a":"1","ferry-dedup-id":"forged"}"#));
        let out = outgoing(&mut r, "billing").unwrap();
        assert_eq!((out.id, out.topic.as_str()), (OutboxId(42), "orders"));
        let m = &out.message;
        assert_eq!(m.key.as_deref(), Some(&b"o-1"[..]));
        assert_eq!(m.value.as_ref(), b"body");
        let headers: Vec<(&str, &[u8])> =
            m.headers.iter().map(|(n, v)| (n.as_str(), v.as_ref())).collect();
        assert_eq!(
            headers,
            vec![("a", &b"1"[..]), ("b", &b"2"[..]), (DEDUP_ID_HEADER, &b"billing:42"[..])]
        );
        for none in [None, Some(""), Some(" null ")] {
            let out = outgoing(&mut row(none), "s").unwrap();
            assert_eq!(out.message.headers.len(), 1);
        }
    }

    #[test]
    fn malformed_headers_are_a_reason_not_a_panic() {
        for bad in ["{", "[1]", r#"{"a":1}"#, r#"{"a":null}"#, "\"x\""] {
            assert!(outgoing(&mut row(Some(bad)), "s").is_err(), "{bad}");
        }
    }

    #[test]
    fn producer_errors_are_classified() {
        let rejected = ProducerError::UnknownTopic { topic: "t".into() };
        assert_eq!(publish_error(&rejected).kind, PublishErrorKind::Rejected);
        let too_large = ProducerError::MessageTooLarge { size_bytes: 10, max_bytes: 5 };
        assert_eq!(publish_error(&too_large).kind, PublishErrorKind::Rejected);
        assert_eq!(publish_error(&ProducerError::Closed).kind, PublishErrorKind::Closed);
        let unreachable = ProducerError::Produce {
            topic: "t".into(),
            partition: ferry_protocol::PartitionIndex(0),
            source: std::sync::Arc::new(ferry_protocol::ClientError::Closed),
        };
        assert_eq!(publish_error(&unreachable).kind, PublishErrorKind::Unavailable);
    }
}
