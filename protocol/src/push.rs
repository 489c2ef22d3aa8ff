//! Push subscriptions: the broker POSTs every message of a topic to an HTTP endpoint, signed
//! per the Standard Webhooks scheme, retrying on a schedule, and marks a message failed after
//! its last attempt. These are the operator requests (`ferryctl push ...`); the receiver's side
//! (the signed POST and the reconciliation API) is HTTP, described in the broker.

use bytes::{BufMut, Bytes, BytesMut};

use crate::api::ApiKey;
use crate::messages::Request;
use crate::wire::{self, Decode, DecodeResult, Encode};

/// Longest subscription name.
pub const SUBSCRIPTION_NAME_BYTES_MAX: usize = 100;

/// Longest endpoint URL.
pub const URL_BYTES_MAX: usize = 2048;

/// Most steps a retry schedule may have.
pub const SCHEDULE_STEPS_MAX: usize = 32;

/// The default retry schedule: the delays after attempts 1, 2, ... (the last step repeats
/// when `max_attempts` asks for more).
pub const DEFAULT_SCHEDULE_MS: [u64; 7] =
    [5_000, 5 * 60_000, 30 * 60_000, 2 * 3_600_000, 5 * 3_600_000, 10 * 3_600_000, 10 * 3_600_000];

/// Prefix of a webhook signing secret; the rest is the base64 of the key bytes.
pub const SECRET_PREFIX: &str = "whsec_";

/// Checks a subscription name: 1..=100 chars of `[A-Za-z0-9_-]` (no dot, so a webhook id
/// `<name>.<partition>.<offset>` reads back unambiguously).
pub fn validate_subscription_name(name: &str) -> Result<(), String> {
    crate::types::validate_name("subscription name", name, SUBSCRIPTION_NAME_BYTES_MAX, "_-")
}

/// The webhook id of a message: stable across retries and replays.
pub fn message_id(subscription: &str, partition: u32, offset: u64) -> String {
    format!("{subscription}.{partition}.{offset}")
}

/// (subscription, partition, offset) of a webhook id.
pub fn parse_message_id(id: &str) -> Option<(&str, u32, u64)> {
    let mut parts = id.rsplitn(3, '.');
    let offset = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let name = parts.next()?;
    Some((name, partition, offset))
}

/// Whether a subscription delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SubscriptionStatus {
    /// Delivering.
    Active = 0,
    /// Paused by an operator; `resume` continues where it stopped.
    Paused = 1,
    /// Stopped by the broker (the endpoint answered 410 Gone); `resume` re-enables it.
    Disabled = 2,
}

impl SubscriptionStatus {
    /// The status for a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Active),
            1 => Some(Self::Paused),
            2 => Some(Self::Disabled),
            _ => None,
        }
    }

    /// Lowercase name for output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Paused => "paused",
            Self::Disabled => "disabled",
        }
    }
}

fn get_status(buf: &mut Bytes, what: &'static str) -> DecodeResult<SubscriptionStatus> {
    let v = wire::get_u8(buf, what)?;
    SubscriptionStatus::from_u8(v)
        .ok_or_else(|| crate::DecodeError::Invalid { what, detail: format!("{v}") })
}

fn put_u64s(buf: &mut BytesMut, v: &[u64]) {
    wire::put_array(buf, v, |b, x| b.put_u64(*x));
}

fn get_u64s(buf: &mut Bytes, what: &'static str) -> DecodeResult<Vec<u64>> {
    wire::get_array(buf, what, 8, |b| wire::get_u64(b, what))
}

/// One partition's delivery position.
///
/// ```text
/// push_partition := partition:u32 | cursor:u64 | high_watermark:u64 | settled_above:u32
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    /// Partition index.
    pub partition: u32,
    /// Every message below this offset had its first attempt settled.
    pub cursor: u64,
    /// Offset the partition's next message gets.
    pub high_watermark: u64,
    /// Messages at or above `cursor` settled out of order.
    pub settled_above: u32,
}

/// A subscription as operators see it.
///
/// ```text
/// push_subscription := name:string | topic:string | url:string | secret:string
///                      | previous_secret_until_ms:u64 | schedule_ms:array<u64>
///                      | max_attempts:u32 | timeout_ms:u32 | concurrency:u32 | status:u8
///                      | status_reason:string | status_ms:u64 | created_ms:u64
///                      | retrying:u64 | failed:u64 | partitions:array<push_partition>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSubscription {
    /// Name (unique).
    pub name: String,
    /// The topic whose messages are pushed.
    pub topic: String,
    /// Endpoint URL (http or https).
    pub url: String,
    /// Signing secret (`whsec_...`); only answers to create and rotate carry it, listings
    /// leave it empty.
    pub secret: String,
    /// Until when the secret before the last rotation still signs too (0: none).
    pub previous_secret_until_ms: u64,
    /// Delay after attempt n (1-based) is entry n-1; the last entry repeats.
    pub schedule_ms: Vec<u64>,
    /// Attempts before a message is marked failed.
    pub max_attempts: u32,
    /// Per-request timeout.
    pub timeout_ms: u32,
    /// Most requests in flight at once.
    pub concurrency: u32,
    /// Delivering, paused, or disabled.
    pub status: SubscriptionStatus,
    /// Why it is paused or disabled.
    pub status_reason: String,
    /// When the status last changed.
    pub status_ms: u64,
    /// When it was created.
    pub created_ms: u64,
    /// Messages waiting for a retry.
    pub retrying: u64,
    /// Messages whose attempts ran out.
    pub failed: u64,
    /// Per-partition positions (describe only; listings leave it empty).
    pub partitions: Vec<PartitionProgress>,
}

impl Encode for PushSubscription {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.name);
        wire::put_string(buf, &self.topic);
        wire::put_string(buf, &self.url);
        wire::put_string(buf, &self.secret);
        buf.put_u64(self.previous_secret_until_ms);
        put_u64s(buf, &self.schedule_ms);
        buf.put_u32(self.max_attempts);
        buf.put_u32(self.timeout_ms);
        buf.put_u32(self.concurrency);
        buf.put_u8(self.status as u8);
        wire::put_string(buf, &self.status_reason);
        buf.put_u64(self.status_ms);
        buf.put_u64(self.created_ms);
        buf.put_u64(self.retrying);
        buf.put_u64(self.failed);
        wire::put_array(buf, &self.partitions, |b, p| {
            b.put_u32(p.partition);
            b.put_u64(p.cursor);
            b.put_u64(p.high_watermark);
            b.put_u32(p.settled_above);
        });
    }
}

impl Decode for PushSubscription {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(PushSubscription {
            name: wire::get_string(buf, "push.name")?,
            topic: wire::get_string(buf, "push.topic")?,
            url: wire::get_string(buf, "push.url")?,
            secret: wire::get_string(buf, "push.secret")?,
            previous_secret_until_ms: wire::get_u64(buf, "push.previous_secret_until_ms")?,
            schedule_ms: get_u64s(buf, "push.schedule_ms")?,
            max_attempts: wire::get_u32(buf, "push.max_attempts")?,
            timeout_ms: wire::get_u32(buf, "push.timeout_ms")?,
            concurrency: wire::get_u32(buf, "push.concurrency")?,
            status: get_status(buf, "push.status")?,
            status_reason: wire::get_string(buf, "push.status_reason")?,
            status_ms: wire::get_u64(buf, "push.status_ms")?,
            created_ms: wire::get_u64(buf, "push.created_ms")?,
            retrying: wire::get_u64(buf, "push.retrying")?,
            failed: wire::get_u64(buf, "push.failed")?,
            partitions: wire::get_array(buf, "push.partitions", 24, |b| {
                Ok(PartitionProgress {
                    partition: wire::get_u32(b, "push.partition")?,
                    cursor: wire::get_u64(b, "push.cursor")?,
                    high_watermark: wire::get_u64(b, "push.high_watermark")?,
                    settled_above: wire::get_u32(b, "push.settled_above")?,
                })
            })?,
        })
    }
}

/// Create a subscription. Zero / empty fields take the broker's defaults (a generated secret,
/// [`DEFAULT_SCHEDULE_MS`], `schedule + 1` attempts, 15 s timeout, concurrency 16).
///
/// ```text
/// create_push := name:string | topic:string | url:string | secret:string
///                | schedule_ms:array<u64> | max_attempts:u32 | timeout_ms:u32
///                | concurrency:u32 | start_at_end:bool
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreatePushRequest {
    /// Subscription name.
    pub name: String,
    /// Topic to push.
    pub topic: String,
    /// Endpoint URL.
    pub url: String,
    /// `whsec_...`; empty: the broker generates one.
    pub secret: String,
    /// Retry delays; empty: the default.
    pub schedule_ms: Vec<u64>,
    /// 0: `schedule_ms.len() + 1`.
    pub max_attempts: u32,
    /// 0: 15 s.
    pub timeout_ms: u32,
    /// 0: 16.
    pub concurrency: u32,
    /// Push only messages produced from now on (default: from the start of the topic).
    pub start_at_end: bool,
}

impl Encode for CreatePushRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.name);
        wire::put_string(buf, &self.topic);
        wire::put_string(buf, &self.url);
        wire::put_string(buf, &self.secret);
        put_u64s(buf, &self.schedule_ms);
        buf.put_u32(self.max_attempts);
        buf.put_u32(self.timeout_ms);
        buf.put_u32(self.concurrency);
        wire::put_bool(buf, self.start_at_end);
    }
}

impl Decode for CreatePushRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(CreatePushRequest {
            name: wire::get_string(buf, "create_push.name")?,
            topic: wire::get_string(buf, "create_push.topic")?,
            url: wire::get_string(buf, "create_push.url")?,
            secret: wire::get_string(buf, "create_push.secret")?,
            schedule_ms: get_u64s(buf, "create_push.schedule_ms")?,
            max_attempts: wire::get_u32(buf, "create_push.max_attempts")?,
            timeout_ms: wire::get_u32(buf, "create_push.timeout_ms")?,
            concurrency: wire::get_u32(buf, "create_push.concurrency")?,
            start_at_end: wire::get_bool(buf, "create_push.start_at_end")?,
        })
    }
}

impl Request for CreatePushRequest {
    const API_KEY: ApiKey = ApiKey::CreatePush;
    type Response = PushSubscription;
}

/// List subscriptions, or describe one (with its per-partition positions).
///
/// ```text
/// list_push := name:string      empty: every subscription
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPushRequest {
    /// One subscription's name (described in full), or empty for all.
    pub name: String,
}

/// ```text
/// list_push_resp := subscriptions:array<push_subscription>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPushResponse {
    /// In name order.
    pub subscriptions: Vec<PushSubscription>,
}

impl Encode for ListPushRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.name);
    }
}

impl Decode for ListPushRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ListPushRequest { name: wire::get_string(buf, "list_push.name")? })
    }
}

impl Encode for ListPushResponse {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_array(buf, &self.subscriptions, |b, s| s.encode(b));
    }
}

impl Decode for ListPushResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ListPushResponse {
            subscriptions: wire::get_array(buf, "list_push.subscriptions", 60, |b| {
                PushSubscription::decode(b)
            })?,
        })
    }
}

impl Request for ListPushRequest {
    const API_KEY: ApiKey = ApiKey::ListPush;
    type Response = ListPushResponse;
}

/// What [`AlterPushRequest`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PushAction {
    /// Stop delivering (in-flight requests finish).
    Pause = 1,
    /// Deliver again (also re-enables a disabled subscription).
    Resume = 2,
    /// Forget the subscription and its delivery state.
    Delete = 3,
    /// Replace the secret; the old one keeps signing too for `grace_ms`.
    RotateSecret = 4,
}

impl PushAction {
    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Pause),
            2 => Some(Self::Resume),
            3 => Some(Self::Delete),
            4 => Some(Self::RotateSecret),
            _ => None,
        }
    }
}

/// Pause, resume, delete a subscription, or rotate its secret. Answers with the subscription
/// after the change (with its new secret for a rotation).
///
/// ```text
/// alter_push := name:string | action:u8 | secret:string | grace_ms:u64
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterPushRequest {
    /// Subscription name.
    pub name: String,
    /// What to do.
    pub action: PushAction,
    /// Rotation: the new secret (empty: generated).
    pub secret: String,
    /// Rotation: how long the old secret keeps signing (0: 24 h).
    pub grace_ms: u64,
}

impl Encode for AlterPushRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.name);
        buf.put_u8(self.action as u8);
        wire::put_string(buf, &self.secret);
        buf.put_u64(self.grace_ms);
    }
}

impl Decode for AlterPushRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        let name = wire::get_string(buf, "alter_push.name")?;
        let v = wire::get_u8(buf, "alter_push.action")?;
        let action = PushAction::from_u8(v).ok_or_else(|| crate::DecodeError::Invalid {
            what: "alter_push.action",
            detail: format!("{v}"),
        })?;
        Ok(AlterPushRequest {
            name,
            action,
            secret: wire::get_string(buf, "alter_push.secret")?,
            grace_ms: wire::get_u64(buf, "alter_push.grace_ms")?,
        })
    }
}

impl Request for AlterPushRequest {
    const API_KEY: ApiKey = ApiKey::AlterPush;
    type Response = PushSubscription;
}

/// The delivery state of one message that needs attention (retrying or failed).
///
/// ```text
/// push_delivery := partition:u32 | offset:u64 | failed:bool | attempts:u32
///                  | next_attempt_ms:u64 | last_attempt_ms:u64 | last_status:u16
///                  | last_error:string
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushDelivery {
    /// Partition index.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
    /// True: attempts ran out; false: a retry is scheduled.
    pub failed: bool,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (0 when failed).
    pub next_attempt_ms: u64,
    /// When the last attempt finished (for a failed message: when it failed).
    pub last_attempt_ms: u64,
    /// HTTP status of the last answer (0: none — timeout or connection error).
    pub last_status: u16,
    /// What went wrong, shortly.
    pub last_error: String,
}

impl Encode for PushDelivery {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.partition);
        buf.put_u64(self.offset);
        wire::put_bool(buf, self.failed);
        buf.put_u32(self.attempts);
        buf.put_u64(self.next_attempt_ms);
        buf.put_u64(self.last_attempt_ms);
        buf.put_u16(self.last_status);
        wire::put_string(buf, &self.last_error);
    }
}

impl Decode for PushDelivery {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(PushDelivery {
            partition: wire::get_u32(buf, "push_delivery.partition")?,
            offset: wire::get_u64(buf, "push_delivery.offset")?,
            failed: wire::get_bool(buf, "push_delivery.failed")?,
            attempts: wire::get_u32(buf, "push_delivery.attempts")?,
            next_attempt_ms: wire::get_u64(buf, "push_delivery.next_attempt_ms")?,
            last_attempt_ms: wire::get_u64(buf, "push_delivery.last_attempt_ms")?,
            last_status: wire::get_u16(buf, "push_delivery.last_status")?,
            last_error: wire::get_string(buf, "push_delivery.last_error")?,
        })
    }
}

/// List a subscription's failed messages (attempts ran out), failed at or after `since_ms`,
/// in (partition, offset) order after the cursor.
///
/// ```text
/// list_push_failed := name:string | since_ms:u64 | after_partition:u32 | after_offset:u64
///                     | first:bool | limit:u32
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPushFailedRequest {
    /// Subscription name.
    pub name: String,
    /// Only messages that failed at or after this time (0: all).
    pub since_ms: u64,
    /// Resume after this (partition, offset) unless `first`.
    pub after: (u32, u64),
    /// Start at the beginning.
    pub first: bool,
    /// Most entries to return (capped by the broker).
    pub limit: u32,
}

/// ```text
/// list_push_failed_resp := failed:array<push_delivery> | more:bool
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListPushFailedResponse {
    /// In (partition, offset) order.
    pub failed: Vec<PushDelivery>,
    /// More entries follow the last one.
    pub more: bool,
}

impl Encode for ListPushFailedRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.name);
        buf.put_u64(self.since_ms);
        buf.put_u32(self.after.0);
        buf.put_u64(self.after.1);
        wire::put_bool(buf, self.first);
        buf.put_u32(self.limit);
    }
}

impl Decode for ListPushFailedRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ListPushFailedRequest {
            name: wire::get_string(buf, "list_push_failed.name")?,
            since_ms: wire::get_u64(buf, "list_push_failed.since_ms")?,
            after: (
                wire::get_u32(buf, "list_push_failed.after_partition")?,
                wire::get_u64(buf, "list_push_failed.after_offset")?,
            ),
            first: wire::get_bool(buf, "list_push_failed.first")?,
            limit: wire::get_u32(buf, "list_push_failed.limit")?,
        })
    }
}

impl Encode for ListPushFailedResponse {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_array(buf, &self.failed, |b, d| d.encode(b));
        wire::put_bool(buf, self.more);
    }
}

impl Decode for ListPushFailedResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ListPushFailedResponse {
            failed: wire::get_array(buf, "list_push_failed.failed", 39, PushDelivery::decode)?,
            more: wire::get_bool(buf, "list_push_failed.more")?,
        })
    }
}

impl Request for ListPushFailedRequest {
    const API_KEY: ApiKey = ApiKey::ListPushFailed;
    type Response = ListPushFailedResponse;
}

/// Send failed messages again (attempts start over): those that failed at or after
/// `since_ms`, or the listed ones (by id) when `messages` is not empty.
///
/// ```text
/// replay_push := name:string | since_ms:u64 | messages:array<partition:u32 | offset:u64>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplayPushRequest {
    /// Subscription name.
    pub name: String,
    /// Replay messages that failed at or after this time (ignored when `messages` is given).
    pub since_ms: u64,
    /// (partition, offset) of the messages to replay.
    pub messages: Vec<(u32, u64)>,
}

/// ```text
/// replay_push_resp := replayed:u32
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayPushResponse {
    /// Messages scheduled for delivery again.
    pub replayed: u32,
}

impl Encode for ReplayPushRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.name);
        buf.put_u64(self.since_ms);
        wire::put_array(buf, &self.messages, |b, (p, o)| {
            b.put_u32(*p);
            b.put_u64(*o);
        });
    }
}

impl Decode for ReplayPushRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ReplayPushRequest {
            name: wire::get_string(buf, "replay_push.name")?,
            since_ms: wire::get_u64(buf, "replay_push.since_ms")?,
            messages: wire::get_array(buf, "replay_push.messages", 12, |b| {
                Ok((
                    wire::get_u32(b, "replay_push.partition")?,
                    wire::get_u64(b, "replay_push.offset")?,
                ))
            })?,
        })
    }
}

impl Encode for ReplayPushResponse {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u32(self.replayed);
    }
}

impl Decode for ReplayPushResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ReplayPushResponse { replayed: wire::get_u32(buf, "replay_push.replayed")? })
    }
}

impl Request for ReplayPushRequest {
    const API_KEY: ApiKey = ApiKey::ReplayPush;
    type Response = ReplayPushResponse;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Encode + Decode + PartialEq + std::fmt::Debug>(v: T) {
        let bytes = v.to_bytes();
        assert_eq!(T::decode_all(bytes).expect("decodes"), v);
    }

    #[test]
    fn messages_round_trip() {
        round_trip(CreatePushRequest {
            name: "orders-hook".into(),
            topic: "orders".into(),
            url: "https://example.com/hook".into(),
            secret: "whsec_abc".into(),
            schedule_ms: vec![1000, 2000],
            max_attempts: 4,
            timeout_ms: 500,
            concurrency: 8,
            start_at_end: true,
        });
        round_trip(PushSubscription {
            name: "s".into(),
            topic: "t".into(),
            url: "http://x".into(),
            secret: String::new(),
            previous_secret_until_ms: 9,
            schedule_ms: DEFAULT_SCHEDULE_MS.to_vec(),
            max_attempts: 8,
            timeout_ms: 15_000,
            concurrency: 16,
            status: SubscriptionStatus::Disabled,
            status_reason: "410 Gone".into(),
            status_ms: 5,
            created_ms: 4,
            retrying: 3,
            failed: 2,
            partitions: vec![PartitionProgress {
                partition: 1,
                cursor: 10,
                high_watermark: 20,
                settled_above: 2,
            }],
        });
        round_trip(AlterPushRequest {
            name: "s".into(),
            action: PushAction::RotateSecret,
            secret: String::new(),
            grace_ms: 60_000,
        });
        round_trip(ListPushFailedResponse {
            failed: vec![PushDelivery {
                partition: 0,
                offset: 7,
                failed: true,
                attempts: 8,
                next_attempt_ms: 0,
                last_attempt_ms: 123,
                last_status: 503,
                last_error: "HTTP 503".into(),
            }],
            more: true,
        });
        round_trip(ReplayPushRequest {
            name: "s".into(),
            since_ms: 0,
            messages: vec![(0, 1), (3, 9)],
        });
    }

    #[test]
    fn message_ids_read_back() {
        let id = message_id("orders-hook", 3, 42);
        assert_eq!(id, "orders-hook.3.42");
        assert_eq!(parse_message_id(&id), Some(("orders-hook", 3, 42)));
        assert_eq!(parse_message_id("x.1"), None);
        assert_eq!(parse_message_id("x.a.1"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(validate_subscription_name("a-b_c1").is_ok());
        assert!(validate_subscription_name("").is_err());
        assert!(validate_subscription_name("a.b").is_err());
        assert!(validate_subscription_name(&"x".repeat(101)).is_err());
    }
}
