//! The reconciliation API on the admin listener: a receiver that missed deliveries (it was
//! down, it lost data, its attempts ran out) reads what it should have received, with each
//! message's delivery state, and catches up without waiting for retries.
//!
//! ```text
//! GET /push/subscriptions/{name}/messages?cursor=0:120,1:98&limit=100
//!     → {"messages": [message...], "next_cursor": "0:220,1:98", "more": true}
//! GET /push/subscriptions/{name}/messages/{webhook-id}
//!     → message
//! message := {"id", "partition", "offset", "timestamp_ms", "key_base64", "headers",
//!             "body_base64", "state": "delivered"|"pending"|"retrying"|"failed",
//!             "attempts", "next_attempt_ms", "last_attempt_ms", "last_status", "last_error"}
//! ```
//!
//! Both need `Authorization: Bearer <secret>` with the subscription's signing secret (or the
//! previous one while its grace period lasts). The cursor names, per partition, the first
//! offset to list (partitions not named start at their log start); listing walks partitions
//! in order, so `next_cursor` of a full page continues exactly where it stopped. Any node
//! answers from its applied state (a follower may be a moment behind the leader).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ferry_protocol::push::{message_id, parse_message_id};
use ferry_protocol::{Offset, PartitionIndex, RecordBatch};
use serde::{Deserialize, Serialize};

use super::sign::constant_time_eq;
use crate::clock::Clock;
use crate::replication::Replica;
use crate::state::push::{Cursor, DeliveryRecord, SubRecord};
use crate::state::StateError;

/// Most messages one page lists.
pub const PAGE_MAX: usize = 1000;
/// Default page size.
pub const PAGE_DEFAULT: usize = 100;

#[derive(Clone)]
struct ApiState {
    replica: Replica,
    clock: Clock,
}

/// The routes, to merge into the admin router.
pub fn routes(replica: Replica, clock: Clock) -> Router {
    Router::new()
        .route("/push/subscriptions/{name}/messages", get(list_messages))
        .route("/push/subscriptions/{name}/messages/{id}", get(get_message))
        .with_state(ApiState { replica, clock })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

/// One message with its delivery state.
#[derive(Debug, Serialize)]
pub struct MessageView {
    id: String,
    partition: u32,
    offset: u64,
    timestamp_ms: u64,
    key_base64: Option<String>,
    headers: BTreeMap<String, String>,
    body_base64: String,
    state: &'static str,
    attempts: u32,
    next_attempt_ms: Option<u64>,
    last_attempt_ms: Option<u64>,
    last_status: Option<u16>,
    last_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Page {
    messages: Vec<MessageView>,
    next_cursor: String,
    more: bool,
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

fn unauthorized(status: StatusCode) -> Response {
    problem(status, "Authorization: Bearer <the subscription's secret> required")
}

fn internal(e: StateError) -> Response {
    tracing::error!(error = %e, "reconciliation read failed");
    problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// The subscription, if the request carries one of its secrets.
fn authorized(s: &ApiState, name: &str, headers: &HeaderMap) -> Result<SubRecord, StatusCode> {
    let denied = || StatusCode::UNAUTHORIZED;
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(denied)?;
    // An unknown name answers like a wrong secret: names are not disclosed.
    let sub = s.replica.state().push_subscription(name).ok_or_else(denied)?;
    let now = s.clock.now_ms();
    if sub
        .signing_secrets(now)
        .iter()
        .any(|secret| constant_time_eq(secret.as_bytes(), token.as_bytes()))
    {
        Ok((*sub).clone())
    } else {
        Err(denied())
    }
}

/// Parses `p:o,p:o`.
fn parse_cursor(text: &str) -> Result<BTreeMap<u32, u64>, String> {
    let mut out = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (p, o) = part.split_once(':').ok_or_else(|| format!("cursor part {part:?}"))?;
        let p = p.parse().map_err(|_| format!("cursor partition {p:?}"))?;
        let o = o.parse().map_err(|_| format!("cursor offset {o:?}"))?;
        out.insert(p, o);
    }
    Ok(out)
}

fn state_of(cursor: Option<&Cursor>, offset: u64, record: Option<&DeliveryRecord>) -> &'static str {
    match record {
        Some(r) if r.failed => "failed",
        Some(_) => "retrying",
        None if cursor.is_some_and(|c| c.is_settled(offset)) => "delivered",
        None => "pending",
    }
}

fn view(
    sub: &SubRecord,
    partition: u32,
    offset: u64,
    record: ferry_protocol::Record,
    delivery: Option<&DeliveryRecord>,
) -> MessageView {
    let cursor = sub.cursors.get(&partition);
    MessageView {
        id: message_id(&sub.name, partition, offset),
        partition,
        offset,
        timestamp_ms: record.timestamp_ms,
        key_base64: record.key.as_ref().map(|k| STANDARD.encode(k)),
        headers: record
            .headers
            .iter()
            .filter(|(n, _)| !ferry_protocol::group::headers::is_internal(n))
            .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect(),
        body_base64: STANDARD.encode(&record.value),
        state: state_of(cursor, offset, delivery),
        attempts: delivery.map_or(0, |d| d.attempts),
        next_attempt_ms: delivery.filter(|d| !d.failed).map(|d| d.next_attempt_ms),
        last_attempt_ms: delivery.map(|d| d.last_attempt_ms),
        last_status: delivery.map(|d| d.last_status).filter(|s| *s != 0),
        last_error: delivery.map(|d| d.last_error.clone()),
    }
}

/// Records read from a partition, the offset to read next, and the high watermark.
type PartitionRead = (Vec<(u64, ferry_protocol::Record)>, u64, u64);

/// Records of one partition from `from`, at most `limit`.
fn read_partition(
    replica: &Replica,
    topic: &str,
    partition: u32,
    from: u64,
    limit: usize,
) -> Result<PartitionRead, StateError> {
    let state = replica.state();
    let handle = state.partition(topic, PartitionIndex(partition))?;
    let hw = handle.high_watermark().0;
    let mut at = from.max(handle.log_start().0);
    let mut out = Vec::new();
    while out.len() < limit && at < hw {
        let batches = state.read(&handle, Offset(at), 256 * 1024)?;
        if batches.is_empty() {
            break;
        }
        for b in batches {
            let batch = RecordBatch::from_trusted(b.bytes)
                .map_err(|e| StateError::Corrupt(format!("stored batch: {e}")))?;
            for (o, r) in (b.base_offset.0..).zip(batch.records()) {
                let r = r.map_err(|e| StateError::Corrupt(e.to_string()))?;
                if o >= at && out.len() < limit {
                    out.push((o, r));
                }
            }
        }
        at = out.last().map_or(hw, |(o, _)| o + 1);
    }
    Ok((out, at, hw))
}

async fn list_messages(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    let sub = match authorized(&s, &name, &headers) {
        Ok(sub) => sub,
        Err(status) => return unauthorized(status),
    };
    let mut positions = match q.cursor.as_deref().map(parse_cursor).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => return problem(StatusCode::BAD_REQUEST, e),
    };
    let limit = q.limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX);
    let replica = s.replica.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<Page, StateError> {
        let state = replica.state();
        let topic = state.topics(std::slice::from_ref(&sub.topic))?;
        let count = topic.first().map_or(0, |t| t.partitions.len());
        let mut messages = Vec::new();
        let mut more = false;
        for p in 0..u32::try_from(count).unwrap_or(u32::MAX) {
            let from = positions.get(&p).copied().unwrap_or(0);
            let left = limit - messages.len();
            let (records, next, hw) = read_partition(&replica, &sub.topic, p, from, left)?;
            if let (Some((first, _)), Some((last, _))) = (records.first(), records.last()) {
                let deliveries: BTreeMap<u64, DeliveryRecord> = state
                    .push_deliveries(sub.id, (p, *first), Some((p, last + 1)), records.len())?
                    .into_iter()
                    .map(|(_, o, d)| (o, d))
                    .collect();
                for (o, r) in records {
                    messages.push(view(&sub, p, o, r, deliveries.get(&o)));
                }
            }
            positions.insert(p, next);
            if messages.len() == limit {
                more = next < hw || (p + 1) < u32::try_from(count).unwrap_or(u32::MAX);
                break;
            }
        }
        let next_cursor =
            positions.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(",");
        Ok(Page { messages, next_cursor, more })
    })
    .await;
    match answer {
        Ok(Ok(page)) => Json(page).into_response(),
        Ok(Err(StateError::Request { message, .. })) => problem(StatusCode::NOT_FOUND, message),
        Ok(Err(e)) => internal(e),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_message(
    State(s): State<ApiState>,
    Path((name, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let sub = match authorized(&s, &name, &headers) {
        Ok(sub) => sub,
        Err(status) => return unauthorized(status),
    };
    let Some((id_name, partition, offset)) = parse_message_id(&id) else {
        return problem(StatusCode::BAD_REQUEST, format!("{id:?} is not a message id"));
    };
    if id_name != name {
        return problem(StatusCode::NOT_FOUND, format!("{id} is not a message of {name}"));
    }
    let replica = s.replica.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<Option<MessageView>, StateError> {
        let (records, _, _) = read_partition(&replica, &sub.topic, partition, offset, 1)?;
        let Some((o, record)) = records.into_iter().next().filter(|(o, _)| *o == offset) else {
            return Ok(None);
        };
        let delivery = replica.state().push_delivery(sub.id, partition, o)?;
        Ok(Some(view(&sub, partition, o, record, delivery.as_ref())))
    })
    .await;
    match answer {
        Ok(Ok(Some(m))) => Json(m).into_response(),
        Ok(Ok(None)) => problem(StatusCode::NOT_FOUND, format!("no message {id}")),
        Ok(Err(StateError::Request { message, .. })) => problem(StatusCode::NOT_FOUND, message),
        Ok(Err(e)) => internal(e),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse() {
        let c = parse_cursor("0:5, 2:9").unwrap();
        assert_eq!(c.get(&0), Some(&5));
        assert_eq!(c.get(&2), Some(&9));
        assert!(parse_cursor("").unwrap().is_empty());
        assert!(parse_cursor("0-5").is_err());
        assert!(parse_cursor("x:1").is_err());
    }

    #[test]
    fn states_follow_cursor_and_record() {
        let mut c = Cursor::default();
        c.settle(0);
        c.settle(2);
        let retry = DeliveryRecord {
            failed: false,
            attempts: 1,
            next_attempt_ms: 9,
            last_attempt_ms: 1,
            last_status: 500,
            last_error: "HTTP 500".into(),
        };
        assert_eq!(state_of(Some(&c), 0, None), "delivered");
        assert_eq!(state_of(Some(&c), 1, None), "pending");
        assert_eq!(state_of(Some(&c), 2, None), "delivered");
        assert_eq!(state_of(Some(&c), 0, Some(&retry)), "retrying");
        let failed = DeliveryRecord { failed: true, ..retry };
        assert_eq!(state_of(None, 7, Some(&failed)), "failed");
        assert_eq!(state_of(None, 7, None), "pending");
    }
}
