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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::push::SubscriptionStatus;
use ferry_protocol::wire::{self, DecodeError, DecodeResult};
use ferry_protocol::ErrorCode;
use ferry_storage::{Cf, StateStore, WriteBatch};

use super::command::CommandResponse;
use super::{corrupt, rejected, scan_all, Applier, Changes, SharedState, StateError};

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

/// The push commands (tags 15–18 of [`super::command::Command`]).
///
/// ```text
///  15 CreatePush   name:string | sub fields as in SubRecord (id, counters, cursors ignored)
///                  | start_at_end:bool
///  16 AlterPush    name:string | sub_id:u64 | stamped_ms:u64 | kind:u8 | text:string
///                  | until_ms:u64
///  17 PushResults  name:string | sub_id:u64 | stamped_ms:u64 | count:u32
///                  | (partition:u32 | offset:u64 | first:bool | expected_due_ms:u64
///                  |  outcome:u8 | next_attempt_ms:u64 | status:u16 | error:string)*
///  18 ReplayPush   name:string | sub_id:u64 | stamped_ms:u64 | count:u32
///                  | (partition:u32 | offset:u64)*
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushCommand {
    /// Create a subscription.
    Create {
        /// The new subscription (its id is assigned in apply).
        sub: Box<SubRecord>,
        /// Start every partition's cursor at its high watermark at apply time.
        start_at_end: bool,
    },
    /// Pause, resume, delete, rotate, disable.
    Alter {
        /// Subscription name.
        name: String,
        /// The id it must still have (0: any).
        sub_id: u64,
        /// Leader clock.
        stamped_ms: u64,
        /// The change.
        change: Alteration,
    },
    /// Attempt results from the leader's worker.
    Results {
        /// Subscription name.
        name: String,
        /// The id the worker delivered for.
        sub_id: u64,
        /// Leader clock (the attempts' end time).
        stamped_ms: u64,
        /// Results in the order they arrived.
        results: Vec<AttemptResult>,
    },
    /// Failed messages to send again.
    Replay {
        /// Subscription name.
        name: String,
        /// The id the handler read the records under.
        sub_id: u64,
        /// Leader clock: when the replayed messages become due.
        stamped_ms: u64,
        /// (partition, offset) of failed messages.
        messages: Vec<(u32, u64)>,
    },
}

/// Command tags (see `command.rs`).
pub const TAG_CREATE_PUSH: u8 = 15;
/// See [`PushCommand::Alter`].
pub const TAG_ALTER_PUSH: u8 = 16;
/// See [`PushCommand::Results`].
pub const TAG_PUSH_RESULTS: u8 = 17;
/// See [`PushCommand::Replay`].
pub const TAG_REPLAY_PUSH: u8 = 18;

impl PushCommand {
    /// Writes tag and body.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            PushCommand::Create { sub, start_at_end } => {
                buf.put_u8(TAG_CREATE_PUSH);
                wire::put_string(buf, &sub.name);
                wire::put_bytes(buf, &sub.encode());
                wire::put_bool(buf, *start_at_end);
            }
            PushCommand::Alter { name, sub_id, stamped_ms, change } => {
                buf.put_u8(TAG_ALTER_PUSH);
                wire::put_string(buf, name);
                buf.put_u64(*sub_id);
                buf.put_u64(*stamped_ms);
                let (kind, text, until) = match change {
                    Alteration::Pause => (1u8, "", 0),
                    Alteration::Resume => (2, "", 0),
                    Alteration::Delete => (3, "", 0),
                    Alteration::Rotate { secret, until_ms } => (4, secret.as_str(), *until_ms),
                    Alteration::Disable { reason } => (5, reason.as_str(), 0),
                };
                buf.put_u8(kind);
                wire::put_string(buf, text);
                buf.put_u64(until);
            }
            PushCommand::Results { name, sub_id, stamped_ms, results } => {
                buf.put_u8(TAG_PUSH_RESULTS);
                wire::put_string(buf, name);
                buf.put_u64(*sub_id);
                buf.put_u64(*stamped_ms);
                wire::put_array(buf, results, |b, r| {
                    b.put_u32(r.partition);
                    b.put_u64(r.offset);
                    wire::put_bool(b, r.first);
                    b.put_u64(r.expected_due_ms);
                    b.put_u8(r.outcome as u8);
                    b.put_u64(r.next_attempt_ms);
                    b.put_u16(r.status);
                    wire::put_string(b, &r.error);
                });
            }
            PushCommand::Replay { name, sub_id, stamped_ms, messages } => {
                buf.put_u8(TAG_REPLAY_PUSH);
                wire::put_string(buf, name);
                buf.put_u64(*sub_id);
                buf.put_u64(*stamped_ms);
                wire::put_array(buf, messages, |b, (p, o)| {
                    b.put_u32(*p);
                    b.put_u64(*o);
                });
            }
        }
    }

    /// Reads the body of a command whose tag was `tag`.
    pub fn decode(tag: u8, buf: &mut Bytes) -> DecodeResult<PushCommand> {
        let name = wire::get_string(buf, "push.name")?;
        Ok(match tag {
            TAG_CREATE_PUSH => {
                let body = wire::get_bytes(buf, "create_push.sub")?;
                let sub = SubRecord::decode(name, body)?;
                let start_at_end = wire::get_bool(buf, "create_push.start_at_end")?;
                PushCommand::Create { sub: Box::new(sub), start_at_end }
            }
            TAG_ALTER_PUSH => {
                let sub_id = wire::get_u64(buf, "alter_push.sub_id")?;
                let stamped_ms = wire::get_u64(buf, "alter_push.stamped_ms")?;
                let kind = wire::get_u8(buf, "alter_push.kind")?;
                let text = wire::get_string(buf, "alter_push.text")?;
                let until_ms = wire::get_u64(buf, "alter_push.until_ms")?;
                let change = match kind {
                    1 => Alteration::Pause,
                    2 => Alteration::Resume,
                    3 => Alteration::Delete,
                    4 => Alteration::Rotate { secret: text, until_ms },
                    5 => Alteration::Disable { reason: text },
                    other => {
                        return Err(DecodeError::Invalid {
                            what: "alter_push.kind",
                            detail: format!("{other}"),
                        })
                    }
                };
                PushCommand::Alter { name, sub_id, stamped_ms, change }
            }
            TAG_PUSH_RESULTS => PushCommand::Results {
                name,
                sub_id: wire::get_u64(buf, "push_results.sub_id")?,
                stamped_ms: wire::get_u64(buf, "push_results.stamped_ms")?,
                results: wire::get_array(buf, "push_results", 36, |b| {
                    let partition = wire::get_u32(b, "result.partition")?;
                    let offset = wire::get_u64(b, "result.offset")?;
                    let first = wire::get_bool(b, "result.first")?;
                    let expected_due_ms = wire::get_u64(b, "result.expected_due_ms")?;
                    let outcome = match wire::get_u8(b, "result.outcome")? {
                        0 => Outcome::Delivered,
                        1 => Outcome::Retry,
                        2 => Outcome::Failed,
                        other => {
                            return Err(DecodeError::Invalid {
                                what: "result.outcome",
                                detail: format!("{other}"),
                            })
                        }
                    };
                    Ok(AttemptResult {
                        partition,
                        offset,
                        first,
                        expected_due_ms,
                        outcome,
                        next_attempt_ms: wire::get_u64(b, "result.next_attempt_ms")?,
                        status: wire::get_u16(b, "result.status")?,
                        error: wire::get_string(b, "result.error")?,
                    })
                })?,
            },
            TAG_REPLAY_PUSH => PushCommand::Replay {
                name,
                sub_id: wire::get_u64(buf, "replay_push.sub_id")?,
                stamped_ms: wire::get_u64(buf, "replay_push.stamped_ms")?,
                messages: wire::get_array(buf, "replay_push.messages", 12, |b| {
                    Ok((wire::get_u32(b, "replay.partition")?, wire::get_u64(b, "replay.offset")?))
                })?,
            },
            other => {
                return Err(DecodeError::Invalid {
                    what: "command.tag",
                    detail: format!("{other}"),
                })
            }
        })
    }

    /// About how many bytes the command encodes to.
    pub fn encoded_len_hint(&self) -> usize {
        match self {
            PushCommand::Create { sub, .. } => 256 + sub.url.len() + sub.topic.len(),
            PushCommand::Alter { name, .. } => 128 + name.len(),
            PushCommand::Results { name, results, .. } => {
                32 + name.len() + results.iter().map(|r| 40 + r.error.len()).sum::<usize>()
            }
            PushCommand::Replay { name, messages, .. } => 32 + name.len() + 12 * messages.len(),
        }
    }
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

impl Applier {
    fn delivery(&self, key: &[u8]) -> Result<Option<DeliveryRecord>, StateError> {
        if let Some(v) = self.push_overlay.get(key) {
            return Ok(v.clone());
        }
        match self.store.get(Cf::Txn, key)? {
            Some(v) => DeliveryRecord::decode(v).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    fn put_delivery(&mut self, key: Vec<u8>, record: DeliveryRecord, batch: &mut WriteBatch) {
        batch.put(Cf::Txn, key.clone(), record.encode());
        self.push_overlay.insert(key, Some(record));
    }

    fn delete_delivery(&mut self, key: Vec<u8>, batch: &mut WriteBatch) {
        batch.delete(Cf::Txn, key.clone());
        self.push_overlay.insert(key, None);
    }

    fn save_sub(&mut self, name: &str, batch: &mut WriteBatch, changes: &mut Changes) {
        if let Some(sub) = self.meta.push.get(name) {
            batch.put(Cf::State, sub_key(name), sub.encode());
        }
        changes.push.push(name.to_string());
    }

    /// Drops every delivery record and due key of subscription `id`.
    fn forget_deliveries(&mut self, id: u64, batch: &mut WriteBatch) {
        for prefix in [DELIVERY_PREFIX, DUE_PREFIX] {
            let (start, end) = sub_range(prefix, id);
            batch.delete_range(Cf::Txn, start, end);
        }
        self.push_overlay.retain(|k, _| k.get(1..9) != Some(&id.to_be_bytes()[..]));
    }

    /// Subscriptions of a deleted topic start over (a new topic of that name starts at 0).
    pub(super) fn reset_push_of_topic(
        &mut self,
        topic: &str,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) {
        let names: Vec<String> =
            self.meta.push.values().filter(|s| s.topic == topic).map(|s| s.name.clone()).collect();
        for name in names {
            let Some(sub) = self.meta.push.get_mut(&name) else { continue };
            sub.cursors.clear();
            sub.retrying = 0;
            sub.failed = 0;
            let id = sub.id;
            self.forget_deliveries(id, batch);
            self.save_sub(&name, batch, changes);
        }
    }

    /// Applies a push command.
    pub(super) fn apply_push(
        &mut self,
        command: &PushCommand,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        match command {
            PushCommand::Create { sub, start_at_end } => {
                self.create_push(sub, *start_at_end, batch, changes)
            }
            PushCommand::Alter { name, sub_id, stamped_ms, change } => {
                self.alter_push(name, *sub_id, *stamped_ms, change, batch, changes)
            }
            PushCommand::Results { name, sub_id, stamped_ms, results } => {
                match self.push_results(name, *sub_id, *stamped_ms, results, batch, changes) {
                    Ok(r) => r,
                    Err(e) => Applier::fail(e),
                }
            }
            PushCommand::Replay { name, sub_id, stamped_ms, messages } => {
                match self.replay_push(name, *sub_id, *stamped_ms, messages, batch, changes) {
                    Ok(r) => r,
                    Err(e) => Applier::fail(e),
                }
            }
        }
    }

    fn create_push(
        &mut self,
        sub: &SubRecord,
        start_at_end: bool,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        if self.meta.push.contains_key(&sub.name) {
            return rejected(
                ErrorCode::SubscriptionExists,
                format!("push subscription {} already exists", sub.name),
            );
        }
        let Some(topic) = self.meta.topics.get(&sub.topic) else {
            return rejected(ErrorCode::UnknownTopic, format!("unknown topic {}", sub.topic));
        };
        let mut record = sub.clone();
        record.id = self.meta.next_push_id;
        record.retrying = 0;
        record.failed = 0;
        record.cursors = BTreeMap::new();
        if start_at_end {
            for (i, id) in topic.partition_ids.iter().enumerate() {
                let next = self.meta.partitions.get(id).map_or(0, |p| p.next_offset);
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                record.cursors.insert(index, Cursor { next, settled: BTreeSet::new() });
            }
        }
        self.meta.next_push_id += 1;
        batch.put(Cf::State, NEXT_SUB_ID.to_vec(), self.meta.next_push_id.to_be_bytes().to_vec());
        let name = record.name.clone();
        self.meta.push.insert(name.clone(), record);
        self.save_sub(&name, batch, changes);
        CommandResponse::Done
    }

    fn alter_push(
        &mut self,
        name: &str,
        sub_id: u64,
        stamped_ms: u64,
        change: &Alteration,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        let Some(sub) = self.meta.push.get_mut(name).filter(|s| sub_id == 0 || s.id == sub_id)
        else {
            return rejected(
                ErrorCode::UnknownSubscription,
                format!("unknown push subscription {name}"),
            );
        };
        match change {
            Alteration::Pause => {
                sub.status = SubscriptionStatus::Paused;
                sub.status_reason = "paused by an operator".into();
                sub.status_ms = stamped_ms;
            }
            Alteration::Resume => {
                sub.status = SubscriptionStatus::Active;
                sub.status_reason.clear();
                sub.status_ms = stamped_ms;
            }
            Alteration::Disable { reason } => {
                // An operator's pause stays a pause.
                if sub.status == SubscriptionStatus::Active {
                    sub.status = SubscriptionStatus::Disabled;
                    sub.status_reason = reason.clone();
                    sub.status_ms = stamped_ms;
                }
            }
            Alteration::Rotate { secret, until_ms } => {
                sub.previous_secret = std::mem::replace(&mut sub.secret, secret.clone());
                sub.previous_secret_until_ms = *until_ms;
            }
            Alteration::Delete => {
                let id = sub.id;
                self.meta.push.remove(name);
                self.forget_deliveries(id, batch);
                batch.delete(Cf::State, sub_key(name));
                changes.push.push(name.to_string());
                return CommandResponse::Done;
            }
        }
        self.save_sub(name, batch, changes);
        CommandResponse::Done
    }

    fn push_results(
        &mut self,
        name: &str,
        sub_id: u64,
        stamped_ms: u64,
        results: &[AttemptResult],
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> Result<CommandResponse, StateError> {
        let Some(sub) = self.meta.push.get(name).filter(|s| s.id == sub_id) else {
            // Deleted (or recreated) since: its results no longer matter.
            return Ok(CommandResponse::Done);
        };
        let (id, max_attempts) = (sub.id, sub.max_attempts);
        let mut retrying = sub.retrying;
        let mut failed = sub.failed;
        let mut cursors = sub.cursors.clone();
        for r in results {
            let key = delivery_key(id, r.partition, r.offset);
            let error: String = truncate(&r.error, LAST_ERROR_BYTES_MAX);
            let record = |attempts: u32| DeliveryRecord {
                failed: r.outcome == Outcome::Failed,
                attempts,
                next_attempt_ms: if r.outcome == Outcome::Retry { r.next_attempt_ms } else { 0 },
                last_attempt_ms: stamped_ms,
                last_status: r.status,
                last_error: error.clone(),
            };
            if r.first {
                let cursor = cursors.entry(r.partition).or_default();
                if cursor.is_settled(r.offset) {
                    continue;
                }
                cursor.settle(r.offset);
                match r.outcome {
                    Outcome::Delivered => {}
                    Outcome::Retry if max_attempts > 1 => {
                        retrying += 1;
                        batch.put(
                            Cf::Txn,
                            due_key(id, r.next_attempt_ms, r.partition, r.offset),
                            Vec::new(),
                        );
                        self.put_delivery(key, record(1), batch);
                    }
                    Outcome::Retry | Outcome::Failed => {
                        failed += 1;
                        let mut rec = record(1);
                        rec.failed = true;
                        rec.next_attempt_ms = 0;
                        self.put_delivery(key, rec, batch);
                    }
                }
                continue;
            }
            let Some(old) = self.delivery(&key)? else { continue };
            if old.failed || old.next_attempt_ms != r.expected_due_ms {
                continue;
            }
            batch.delete(Cf::Txn, due_key(id, old.next_attempt_ms, r.partition, r.offset));
            let attempts = old.attempts.saturating_add(1);
            let outcome = match r.outcome {
                Outcome::Retry if attempts >= max_attempts => Outcome::Failed,
                other => other,
            };
            match outcome {
                Outcome::Delivered => {
                    retrying = retrying.saturating_sub(1);
                    self.delete_delivery(key, batch);
                }
                Outcome::Retry => {
                    batch.put(
                        Cf::Txn,
                        due_key(id, r.next_attempt_ms, r.partition, r.offset),
                        Vec::new(),
                    );
                    self.put_delivery(key, record(attempts), batch);
                }
                Outcome::Failed => {
                    retrying = retrying.saturating_sub(1);
                    failed += 1;
                    let mut rec = record(attempts);
                    rec.failed = true;
                    rec.next_attempt_ms = 0;
                    self.put_delivery(key, rec, batch);
                }
            }
        }
        if let Some(sub) = self.meta.push.get_mut(name) {
            sub.retrying = retrying;
            sub.failed = failed;
            sub.cursors = cursors;
        }
        self.save_sub(name, batch, changes);
        Ok(CommandResponse::Done)
    }

    fn replay_push(
        &mut self,
        name: &str,
        sub_id: u64,
        stamped_ms: u64,
        messages: &[(u32, u64)],
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> Result<CommandResponse, StateError> {
        let Some(sub) = self.meta.push.get(name).filter(|s| s.id == sub_id) else {
            return Ok(rejected(
                ErrorCode::UnknownSubscription,
                format!("unknown push subscription {name}"),
            ));
        };
        let id = sub.id;
        let mut replayed = 0u32;
        for (partition, offset) in messages {
            let key = delivery_key(id, *partition, *offset);
            let Some(mut rec) = self.delivery(&key)? else { continue };
            if !rec.failed {
                continue;
            }
            rec.failed = false;
            rec.attempts = 0;
            rec.next_attempt_ms = stamped_ms;
            batch.put(Cf::Txn, due_key(id, stamped_ms, *partition, *offset), Vec::new());
            self.put_delivery(key, rec, batch);
            replayed += 1;
        }
        if let Some(sub) = self.meta.push.get_mut(name) {
            sub.failed = sub.failed.saturating_sub(u64::from(replayed));
            sub.retrying += u64::from(replayed);
        }
        self.save_sub(name, batch, changes);
        Ok(CommandResponse::PushReplayed { replayed })
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
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

/// Delivery records written by the current apply call (`None`: deleted).
pub(super) type PushOverlay = HashMap<Vec<u8>, Option<DeliveryRecord>>;

#[cfg(test)]
mod tests {
    use super::super::command::Command;
    use super::*;

    fn sample_sub() -> SubRecord {
        SubRecord {
            id: 1,
            name: "s".into(),
            topic: "t".into(),
            url: "http://x".into(),
            secret: "whsec_a".into(),
            previous_secret: "whsec_b".into(),
            previous_secret_until_ms: 100,
            schedule_ms: vec![10, 20, 30],
            max_attempts: 9,
            timeout_ms: 1,
            concurrency: 1,
            status: SubscriptionStatus::Active,
            status_reason: String::new(),
            status_ms: 0,
            created_ms: 0,
            retrying: 0,
            failed: 0,
            cursors: BTreeMap::new(),
        }
    }

    #[test]
    fn commands_round_trip_with_the_smallest_elements() {
        let mut sub = sample_sub();
        sub.cursors.insert(3, Cursor { next: 7, settled: [9, 12].into_iter().collect() });
        sub.cursors.insert(4, Cursor::default());
        let result = |error: &str| AttemptResult {
            partition: 1,
            offset: 2,
            first: true,
            expected_due_ms: 0,
            outcome: Outcome::Retry,
            next_attempt_ms: 5,
            status: 0,
            error: error.into(),
        };
        let commands = [
            PushCommand::Create { sub: Box::new(sub), start_at_end: true },
            PushCommand::Alter {
                name: "s".into(),
                sub_id: 1,
                stamped_ms: 2,
                change: Alteration::Rotate { secret: "whsec_c".into(), until_ms: 9 },
            },
            PushCommand::Alter {
                name: "s".into(),
                sub_id: 1,
                stamped_ms: 2,
                change: Alteration::Disable { reason: "410".into() },
            },
            // Empty strings: the smallest encoding of an element must still decode.
            PushCommand::Results {
                name: "s".into(),
                sub_id: 1,
                stamped_ms: 3,
                results: vec![result(""), result("HTTP 500")],
            },
            PushCommand::Replay {
                name: "s".into(),
                sub_id: 1,
                stamped_ms: 4,
                messages: vec![(0, 1)],
            },
        ];
        for c in commands {
            let mut buf = BytesMut::new();
            c.encode(&mut buf);
            let mut bytes = buf.freeze();
            let tag = wire::get_u8(&mut bytes, "tag").unwrap();
            assert_eq!(PushCommand::decode(tag, &mut bytes).unwrap(), c);
            assert!(bytes.is_empty());
        }
    }

    /// Applies commands to a fresh in-memory state, cut into apply calls at `cuts`, and
    /// returns every push key and value of both families.
    fn apply_grouped(commands: &[Command], cuts: &[usize]) -> Vec<(Cf, Bytes, Bytes)> {
        use ferry_storage::mem::MemStore;
        let store = MemStore::new();
        let resolver: super::super::BatchResolver =
            Arc::new(|pos| Err(StateError::Corrupt(format!("no batch at {pos:?}"))));
        let mut applier = Applier::open(Arc::new(store.clone()), resolver).unwrap();
        let mut index = 1;
        let mut start = 0;
        let mut bounds: Vec<usize> = cuts.to_vec();
        bounds.push(commands.len());
        for end in bounds {
            let mut wb = WriteBatch::new();
            let mut changes = Changes::default();
            for c in &commands[start..end] {
                applier.apply(index, c, &mut wb, &mut changes);
                index += 1;
            }
            store.write(wb).unwrap();
            applier.publish(&changes);
            start = end;
        }
        let mut out = Vec::new();
        for (cf, from, to) in [
            (Cf::Txn, vec![DELIVERY_PREFIX], vec![DUE_PREFIX + 1]),
            (Cf::State, vec![SUB_PREFIX], vec![SUB_PREFIX + 1]),
        ] {
            for (k, v) in store.scan(cf, &from, &to, usize::MAX).unwrap() {
                out.push((cf, k, v));
            }
        }
        out
    }

    /// Whatever the grouping of commands into apply calls (replicas differ in it), the push
    /// state comes out the same: what one command writes, the next one in the same call reads.
    #[test]
    fn push_state_does_not_depend_on_how_commands_are_grouped() {
        for seed in 0..30u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut sub = sample_sub();
            sub.max_attempts = 3;
            let mut commands = vec![
                Command::CreateTopic { name: "t".into(), partitions: 2, created_ms: 1 },
                Command::Push(PushCommand::Create { sub: Box::new(sub), start_at_end: false }),
            ];
            for step in 0..60u64 {
                let p = rng.u32(0..2);
                let o = rng.u64(0..12);
                let stamped_ms = 100 + step;
                let command = match rng.u8(0..10) {
                    0 => PushCommand::Replay {
                        name: "s".into(),
                        sub_id: 1,
                        stamped_ms,
                        messages: vec![(p, o), (rng.u32(0..2), rng.u64(0..12))],
                    },
                    1 => PushCommand::Alter {
                        name: "s".into(),
                        sub_id: 1,
                        stamped_ms,
                        change: if rng.bool() { Alteration::Pause } else { Alteration::Resume },
                    },
                    _ => {
                        let results = (0..rng.usize(1..4))
                            .map(|_| AttemptResult {
                                partition: rng.u32(0..2),
                                offset: rng.u64(0..12),
                                first: rng.bool(),
                                // Small due times, so retries sometimes match a record.
                                expected_due_ms: rng.u64(100..104),
                                outcome: match rng.u8(0..3) {
                                    0 => Outcome::Delivered,
                                    1 => Outcome::Retry,
                                    _ => Outcome::Failed,
                                },
                                next_attempt_ms: rng.u64(100..104),
                                status: 500,
                                error: "HTTP 500".into(),
                            })
                            .collect();
                        PushCommand::Results { name: "s".into(), sub_id: 1, stamped_ms, results }
                    }
                };
                commands.push(Command::Push(command));
            }
            let one_per_call: Vec<usize> = (1..commands.len()).collect();
            let want = apply_grouped(&commands, &one_per_call);
            assert!(want.iter().any(|(cf, _, _)| *cf == Cf::Txn), "seed {seed}: some records");
            let mut cuts: Vec<usize> = (1..commands.len()).filter(|_| rng.u8(0..4) == 0).collect();
            cuts.dedup();
            assert_eq!(apply_grouped(&commands, &cuts), want, "seed {seed}, cuts {cuts:?}");
            assert_eq!(apply_grouped(&commands, &[]), want, "seed {seed}, one call");
        }
    }

    #[test]
    fn cursor_moves_over_settled_offsets() {
        let mut c = Cursor::default();
        c.settle(2);
        c.settle(1);
        assert_eq!(c.next, 0);
        assert!(c.is_settled(2) && !c.is_settled(0));
        c.settle(0);
        assert_eq!(c.next, 3);
        assert!(c.settled.is_empty());
        c.settle(1);
        assert_eq!(c.next, 3, "an old offset changes nothing");
    }

    #[test]
    fn delay_follows_the_schedule_and_repeats_its_last_step() {
        let sub = sample_sub();
        assert_eq!(
            (1..=5).map(|a| sub.delay_after(a)).collect::<Vec<_>>(),
            vec![10, 20, 30, 30, 30]
        );
        assert_eq!(sub.signing_secrets(99), vec!["whsec_a", "whsec_b"]);
        assert_eq!(sub.signing_secrets(100), vec!["whsec_a"]);
        let encoded = sub.encode();
        assert_eq!(SubRecord::decode("s".into(), encoded).unwrap(), sub);
    }
}
