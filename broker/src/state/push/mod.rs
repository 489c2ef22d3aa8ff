//! Push subscriptions in the replicated state: the subscriptions themselves, how far each has
//! delivered in every partition, and the delivery state of every message that needs another
//! attempt or whose attempts ran out.
//!
//! ```text
//! state CF: [0x13] | name (utf-8)                               → SubRecord
//! state CF: [0x06]                                              → next subscription id: u64be
//! txn CF:   [0x07] | sub_id:u64be | partition:u32be | offset:u64be → DeliveryRecord
//! txn CF:   [0x08] | sub_id:u64be | due_ms:u64be | partition:u32be | offset:u64be → (empty)
//! ```
//!
//! The `0x08` keys index the retrying messages by due time, so the leader's worker finds the
//! due ones with one range scan. Keys carry the subscription's id, not its name: a deleted
//! subscription's keys are one range each, and a new subscription with the old name starts
//! clean.
//!
//! **Positions.** Per partition a subscription keeps a cursor: every message below it had its
//! first attempt settled (delivered, or given a retry or failed record). The worker sends with
//! some concurrency, so first attempts settle out of order; those at or above the cursor are
//! kept in a small `settled` set next to it, and the cursor moves over them once the gap below
//! closes. A message is therefore
//! * delivered: below the cursor or in `settled`, with no delivery record;
//! * retrying or failed: it has a delivery record;
//! * not yet settled: neither — a new leader sends it (again: it may have been in flight).
//!
//! Every change comes from one command, applied here with the leader's clock in it; the
//! worker's results name the due time they acted on, so a result that no longer matches the
//! record (the message was replayed or the subscription recreated meanwhile) changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::push::SubscriptionStatus;
use ferry_protocol::wire::{self, DecodeError, DecodeResult};
use ferry_storage::{Cf, StateStore};

use super::{corrupt, scan_all, SharedState, StateError};

mod apply;
mod command;
#[cfg(test)]
mod tests;

pub use command::{
    PushCommand, TAG_ALTER_PUSH, TAG_CREATE_PUSH, TAG_PUSH_RESULTS, TAG_REPLAY_PUSH,
};

const SUB_PREFIX: u8 = 0x13;
const NEXT_SUB_ID: [u8; 1] = [0x06];
const DELIVERY_PREFIX: u8 = 0x07;
const DUE_PREFIX: u8 = 0x08;

/// Most first attempts a subscription keeps settled above a partition's cursor; the worker
/// sends nothing further ahead (one stuck message holds a partition back at most this far).
pub const SETTLED_AHEAD_MAX: usize = 2048;

/// Longest `last_error` kept per message.
pub const LAST_ERROR_BYTES_MAX: usize = 256;

fn sub_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(SUB_PREFIX);
    k.extend_from_slice(name.as_bytes());
    k
}

/// ```text
/// txn CF: [0x07] | sub_id:u64be | partition:u32be | offset:u64be
/// ```
pub fn delivery_key(sub_id: u64, partition: u32, offset: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(21);
    k.push(DELIVERY_PREFIX);
    k.extend_from_slice(&sub_id.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// ```text
/// txn CF: [0x08] | sub_id:u64be | due_ms:u64be | partition:u32be | offset:u64be
/// ```
fn due_key(sub_id: u64, due_ms: u64, partition: u32, offset: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(29);
    k.push(DUE_PREFIX);
    k.extend_from_slice(&sub_id.to_be_bytes());
    k.extend_from_slice(&due_ms.to_be_bytes());
    k.extend_from_slice(&partition.to_be_bytes());
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

fn sub_range(prefix: u8, sub_id: u64) -> (Vec<u8>, Vec<u8>) {
    let mut start = vec![prefix];
    start.extend_from_slice(&sub_id.to_be_bytes());
    let mut end = vec![prefix];
    match sub_id.checked_add(1) {
        Some(next) => end.extend_from_slice(&next.to_be_bytes()),
        None => end = vec![prefix + 1],
    }
    (start, end)
}

fn u32_at(k: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(k.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(k: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(at..at + 8)?.try_into().ok()?))
}

/// A partition's delivery position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Every message below had its first attempt settled.
    pub next: u64,
    /// First attempts settled at or above `next` (out of order).
    pub settled: BTreeSet<u64>,
}

impl Cursor {
    /// Whether the first attempt of `offset` is settled.
    pub fn is_settled(&self, offset: u64) -> bool {
        offset < self.next || self.settled.contains(&offset)
    }

    /// Marks the first attempt of `offset` settled and moves over what closed up.
    pub fn settle(&mut self, offset: u64) {
        if offset >= self.next {
            self.settled.insert(offset);
        }
        while self.settled.remove(&self.next) {
            self.next += 1;
        }
    }
}

/// A subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubRecord {
    /// Unique for the life of the cluster (a recreated name gets a new id).
    pub id: u64,
    /// Subscription name.
    pub name: String,
    /// Topic pushed.
    pub topic: String,
    /// Endpoint.
    pub url: String,
    /// Signing secret (`whsec_...`).
    pub secret: String,
    /// The secret before the last rotation (empty: none).
    pub previous_secret: String,
    /// Until when the previous secret signs too.
    pub previous_secret_until_ms: u64,
    /// Delay after attempt n is entry n-1; the last repeats.
    pub schedule_ms: Vec<u64>,
    /// Attempts before a message fails.
    pub max_attempts: u32,
    /// Per-request timeout.
    pub timeout_ms: u32,
    /// Requests in flight at most.
    pub concurrency: u32,
    /// Active, paused, disabled.
    pub status: SubscriptionStatus,
    /// Why paused or disabled.
    pub status_reason: String,
    /// When the status changed.
    pub status_ms: u64,
    /// When created.
    pub created_ms: u64,
    /// Messages with a retry scheduled.
    pub retrying: u64,
    /// Messages whose attempts ran out.
    pub failed: u64,
    /// Positions by partition index (a partition not here starts at 0).
    pub cursors: BTreeMap<u32, Cursor>,
}

impl SubRecord {
    /// The secrets that sign a request sent at `now_ms`: the current one, then the previous
    /// one while its grace period lasts.
    pub fn signing_secrets(&self, now_ms: u64) -> Vec<&str> {
        let mut out = vec![self.secret.as_str()];
        if !self.previous_secret.is_empty() && now_ms < self.previous_secret_until_ms {
            out.push(self.previous_secret.as_str());
        }
        out
    }

    /// The delay before attempt `attempts + 1`, after `attempts` failed ones (≥ 1).
    pub fn delay_after(&self, attempts: u32) -> u64 {
        let i = (attempts.max(1) - 1) as usize;
        self.schedule_ms.get(i).or(self.schedule_ms.last()).copied().unwrap_or(5_000)
    }

    /// ```text
    /// sub := id:u64 | topic:string | url:string | secret:string | previous_secret:string
    ///        | previous_secret_until_ms:u64 | schedule_ms:array<u64> | max_attempts:u32
    ///        | timeout_ms:u32 | concurrency:u32 | status:u8 | status_reason:string
    ///        | status_ms:u64 | created_ms:u64 | retrying:u64 | failed:u64
    ///        | cursors:array<partition:u32 | next:u64 | settled:array<u64>>
    /// ```
    fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(256);
        buf.put_u64(self.id);
        wire::put_string(&mut buf, &self.topic);
        wire::put_string(&mut buf, &self.url);
        wire::put_string(&mut buf, &self.secret);
        wire::put_string(&mut buf, &self.previous_secret);
        buf.put_u64(self.previous_secret_until_ms);
        wire::put_array(&mut buf, &self.schedule_ms, |b, v| b.put_u64(*v));
        buf.put_u32(self.max_attempts);
        buf.put_u32(self.timeout_ms);
        buf.put_u32(self.concurrency);
        buf.put_u8(self.status as u8);
        wire::put_string(&mut buf, &self.status_reason);
        buf.put_u64(self.status_ms);
        buf.put_u64(self.created_ms);
        buf.put_u64(self.retrying);
        buf.put_u64(self.failed);
        buf.put_u32(wire::len_u32(self.cursors.len()));
        for (p, c) in &self.cursors {
            buf.put_u32(*p);
            buf.put_u64(c.next);
            buf.put_u32(wire::len_u32(c.settled.len()));
            for o in &c.settled {
                buf.put_u64(*o);
            }
        }
        buf.freeze()
    }

    fn decode(name: String, mut buf: Bytes) -> DecodeResult<SubRecord> {
        let buf = &mut buf;
        let id = wire::get_u64(buf, "sub.id")?;
        let topic = wire::get_string(buf, "sub.topic")?;
        let url = wire::get_string(buf, "sub.url")?;
        let secret = wire::get_string(buf, "sub.secret")?;
        let previous_secret = wire::get_string(buf, "sub.previous_secret")?;
        let previous_secret_until_ms = wire::get_u64(buf, "sub.previous_until")?;
        let schedule_ms = wire::get_array(buf, "sub.schedule", 8, |b| wire::get_u64(b, "s"))?;
        let max_attempts = wire::get_u32(buf, "sub.max_attempts")?;
        let timeout_ms = wire::get_u32(buf, "sub.timeout_ms")?;
        let concurrency = wire::get_u32(buf, "sub.concurrency")?;
        let raw = wire::get_u8(buf, "sub.status")?;
        let status = SubscriptionStatus::from_u8(raw)
            .ok_or_else(|| DecodeError::Invalid { what: "sub.status", detail: format!("{raw}") })?;
        let status_reason = wire::get_string(buf, "sub.status_reason")?;
        let status_ms = wire::get_u64(buf, "sub.status_ms")?;
        let created_ms = wire::get_u64(buf, "sub.created_ms")?;
        let retrying = wire::get_u64(buf, "sub.retrying")?;
        let failed = wire::get_u64(buf, "sub.failed")?;
        let cursors = wire::get_array(buf, "sub.cursors", 16, |b| {
            let p = wire::get_u32(b, "sub.cursor.partition")?;
            let next = wire::get_u64(b, "sub.cursor.next")?;
            let settled = wire::get_array(b, "sub.cursor.settled", 8, |b| wire::get_u64(b, "o"))?;
            Ok((p, Cursor { next, settled: settled.into_iter().collect() }))
        })?;
        Ok(SubRecord {
            id,
            name,
            topic,
            url,
            secret,
            previous_secret,
            previous_secret_until_ms,
            schedule_ms,
            max_attempts,
            timeout_ms,
            concurrency,
            status,
            status_reason,
            status_ms,
            created_ms,
            retrying,
            failed,
            cursors: cursors.into_iter().collect(),
        })
    }
}

/// The delivery state of a message that needs attention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    /// Attempts ran out.
    pub failed: bool,
    /// Attempts made (since the message was last replayed).
    pub attempts: u32,
    /// When the next attempt is due (0 when failed).
    pub next_attempt_ms: u64,
    /// When the last attempt finished.
    pub last_attempt_ms: u64,
    /// HTTP status of the last answer (0: none).
    pub last_status: u16,
    /// Short description of the last failure.
    pub last_error: String,
}

impl DeliveryRecord {
    /// ```text
    /// delivery := failed:bool | attempts:u32 | next_attempt_ms:u64 | last_attempt_ms:u64
    ///             | last_status:u16 | last_error:string
    /// ```
    fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(32 + self.last_error.len());
        wire::put_bool(&mut buf, self.failed);
        buf.put_u32(self.attempts);
        buf.put_u64(self.next_attempt_ms);
        buf.put_u64(self.last_attempt_ms);
        buf.put_u16(self.last_status);
        wire::put_string(&mut buf, &self.last_error);
        buf.freeze()
    }

    fn decode(mut buf: Bytes) -> DecodeResult<DeliveryRecord> {
        let buf = &mut buf;
        Ok(DeliveryRecord {
            failed: wire::get_bool(buf, "delivery.failed")?,
            attempts: wire::get_u32(buf, "delivery.attempts")?,
            next_attempt_ms: wire::get_u64(buf, "delivery.next_attempt_ms")?,
            last_attempt_ms: wire::get_u64(buf, "delivery.last_attempt_ms")?,
            last_status: wire::get_u16(buf, "delivery.last_status")?,
            last_error: wire::get_string(buf, "delivery.last_error")?,
        })
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// 2xx.
    Delivered = 0,
    /// Failed; try again at `next_attempt_ms`.
    Retry = 1,
    /// Failed, and it was the last attempt.
    Failed = 2,
}

/// One attempt's result, as the worker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptResult {
    /// Partition index.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The message's first attempt (settles the cursor); otherwise a retry of a record.
    pub first: bool,
    /// For a retry: the record's due time the worker acted on (a mismatch drops the result).
    pub expected_due_ms: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Retry: when the next attempt is due.
    pub next_attempt_ms: u64,
    /// HTTP status (0: none).
    pub status: u16,
    /// Failure description (empty when delivered).
    pub error: String,
}

/// What changes a subscription's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alteration {
    /// Operator pause.
    Pause,
    /// Operator resume (also after a disable).
    Resume,
    /// Forget the subscription.
    Delete,
    /// New secret; the old one signs until `until_ms`.
    Rotate {
        /// The new secret.
        secret: String,
        /// End of the old secret's grace period.
        until_ms: u64,
    },
    /// The endpoint answered 410 Gone.
    Disable {
        /// Why.
        reason: String,
    },
}

/// Loads every subscription.
pub(super) fn load_subscriptions(
    store: &dyn StateStore,
) -> Result<(BTreeMap<String, SubRecord>, u64), StateError> {
    let mut subs = BTreeMap::new();
    for (k, v) in scan_all(store, Cf::State, &[SUB_PREFIX], &[SUB_PREFIX + 1])? {
        let name = std::str::from_utf8(&k[1..]).map_err(corrupt)?.to_string();
        subs.insert(name.clone(), SubRecord::decode(name, v).map_err(corrupt)?);
    }
    let next_id = match store.get(Cf::State, &NEXT_SUB_ID)? {
        Some(mut v) => wire::get_u64(&mut v, "next_push_id").map_err(corrupt)?,
        None => 1,
    };
    Ok((subs, next_id))
}

/// A due retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueRetry {
    /// When it is due.
    pub due_ms: u64,
    /// Partition index.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
}

impl SharedState {
    /// Every subscription, in name order.
    pub fn push_subscriptions(&self) -> Vec<Arc<SubRecord>> {
        self.push.read().map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// One subscription.
    pub fn push_subscription(&self, name: &str) -> Option<Arc<SubRecord>> {
        self.push.read().ok()?.get(name).cloned()
    }

    pub(super) fn publish_push(&self, subs: &BTreeMap<String, SubRecord>, names: &[String]) {
        let Ok(mut map) = self.push.write() else { return };
        if names.is_empty() {
            *map = subs.iter().map(|(n, s)| (n.clone(), Arc::new(s.clone()))).collect();
            return;
        }
        for name in names {
            match subs.get(name) {
                Some(s) => map.insert(name.clone(), Arc::new(s.clone())),
                None => map.remove(name),
            };
        }
    }

    /// Retries of subscription `sub_id` due at or before `now_ms`, earliest first.
    pub fn push_due(
        &self,
        sub_id: u64,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<DueRetry>, StateError> {
        let (start, _) = sub_range(DUE_PREFIX, sub_id);
        let mut end = start.clone();
        end.extend_from_slice(&now_ms.saturating_add(1).to_be_bytes());
        let rows = self.store.scan(Cf::Txn, &start, &end, limit)?;
        rows.iter()
            .map(|(k, _)| {
                let parse = || {
                    Some(DueRetry {
                        due_ms: u64_at(k, 9)?,
                        partition: u32_at(k, 17)?,
                        offset: u64_at(k, 21)?,
                    })
                };
                parse().ok_or_else(|| corrupt("push due key"))
            })
            .collect()
    }

    /// When subscription `sub_id`'s earliest retry is due.
    pub fn push_next_due(&self, sub_id: u64) -> Result<Option<u64>, StateError> {
        let (start, end) = sub_range(DUE_PREFIX, sub_id);
        let first = self.store.scan(Cf::Txn, &start, &end, 1)?;
        Ok(first.first().and_then(|(k, _)| u64_at(k, 9)))
    }

    /// The delivery record of one message, if it has one.
    pub fn push_delivery(
        &self,
        sub_id: u64,
        partition: u32,
        offset: u64,
    ) -> Result<Option<DeliveryRecord>, StateError> {
        match self.store.get(Cf::Txn, &delivery_key(sub_id, partition, offset))? {
            Some(v) => DeliveryRecord::decode(v).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    /// Delivery records of subscription `sub_id` in (partition, offset) order, from `from`
    /// (inclusive) and below `until` (exclusive, `None`: to the end), at most `limit`.
    pub fn push_deliveries(
        &self,
        sub_id: u64,
        from: (u32, u64),
        until: Option<(u32, u64)>,
        limit: usize,
    ) -> Result<Vec<(u32, u64, DeliveryRecord)>, StateError> {
        let start = delivery_key(sub_id, from.0, from.1);
        let end = match until {
            Some((p, o)) => delivery_key(sub_id, p, o),
            None => sub_range(DELIVERY_PREFIX, sub_id).1,
        };
        let rows = self.store.scan(Cf::Txn, &start, &end, limit)?;
        rows.into_iter()
            .map(|(k, v)| {
                let (Some(p), Some(o)) = (u32_at(&k, 9), u64_at(&k, 13)) else {
                    return Err(corrupt("push delivery key"));
                };
                Ok((p, o, DeliveryRecord::decode(v).map_err(corrupt)?))
            })
            .collect()
    }
}

/// Subscriptions as the applier keeps them (loaded at open).
pub(super) type PushMeta = BTreeMap<String, SubRecord>;

/// What the current apply call wrote and the store does not show yet: delivery records by
/// key (`None`: deleted), and subscriptions whose records were all range-deleted (reads of
/// those fall through to nothing, not to the store, unless written again since).
#[derive(Debug, Default)]
pub(super) struct PushOverlay {
    records: HashMap<Vec<u8>, Option<DeliveryRecord>>,
    forgotten: HashSet<u64>,
}

impl PushOverlay {
    /// Forgets everything (the batch holding it was written).
    pub(super) fn clear(&mut self) {
        self.records.clear();
        self.forgotten.clear();
    }
}
