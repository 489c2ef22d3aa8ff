//! Key layouts of the state column families. Every layout is drawn above its encoder.
//!
//! Prefixes taken elsewhere (drawn in their modules): state CF `[0x06]` and `[0x13]`, txn CF
//! `[0x07]` and `[0x08]` by push subscriptions (`state::push`).

use ferry_protocol::wire::{DecodeError, DecodeResult};

/// ```text
/// state CF: [0x01]                → last applied log id (see replication::codec::put_log_id)
/// ```
pub const APPLIED: [u8; 1] = [0x01];

/// ```text
/// state CF: [0x02]                → stored membership (replication::codec)
/// ```
pub const MEMBERSHIP: [u8; 1] = [0x02];

/// ```text
/// state CF: [0x03]                → next partition id: u32be
/// ```
pub const NEXT_PARTITION_ID: [u8; 1] = [0x03];

/// ```text
/// state CF: [0x04]                → next transaction id: u64be
/// ```
pub const NEXT_TXN_ID: [u8; 1] = [0x04];

/// ```text
/// state CF: [0x05]                → next delayed-message id: u64be | delayed pending: u64be
/// ```
/// One key for both counters: every `ProduceDelayed` moves both, so one value is one write.
pub const DELAYED_COUNTERS: [u8; 1] = [0x05];

const GROUP_TXN_PREFIX: u8 = 0x12;

const TOPIC_PREFIX: u8 = 0x10;
const PARTITION_PREFIX: u8 = 0x11;

/// ```text
/// state CF: [0x10] | name (utf-8) → TopicRecord
/// ```
pub fn topic_key(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(TOPIC_PREFIX);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The key range holding every topic.
pub fn topic_range() -> (Vec<u8>, Vec<u8>) {
    (vec![TOPIC_PREFIX], vec![TOPIC_PREFIX + 1])
}

/// The topic name inside a topic key.
pub fn topic_name(key: &[u8]) -> DecodeResult<String> {
    match key.split_first() {
        Some((&TOPIC_PREFIX, name)) => String::from_utf8(name.to_vec())
            .map_err(|_| DecodeError::Invalid { what: "topic key", detail: "not utf-8".into() }),
        _ => Err(DecodeError::Invalid { what: "topic key", detail: "bad prefix".into() }),
    }
}

/// ```text
/// state CF: [0x11] | partition_id:u32be → PartitionRecord
/// ```
pub fn partition_key(id: u32) -> [u8; 5] {
    let mut k = [PARTITION_PREFIX, 0, 0, 0, 0];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The key range holding every partition record.
pub fn partition_range() -> (Vec<u8>, Vec<u8>) {
    (vec![PARTITION_PREFIX], vec![PARTITION_PREFIX + 1])
}

/// The partition id inside a partition key.
pub fn partition_id_of(key: &[u8]) -> DecodeResult<u32> {
    match key {
        [PARTITION_PREFIX, a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(DecodeError::Invalid { what: "partition key", detail: format!("{key:?}") }),
    }
}

/// ```text
/// messages CF: partition_id:u32be | base_offset:u64be → record batch bytes
/// ```
/// Big-endian so that key order is (partition, offset) order.
pub fn message_key(partition_id: u32, base_offset: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&partition_id.to_be_bytes());
    k[4..].copy_from_slice(&base_offset.to_be_bytes());
    k
}

/// Every message key of one partition: `[start, end)`.
pub fn message_range(partition_id: u32) -> ([u8; 12], [u8; 12]) {
    // The end is the first key of the next partition id. Ids are allocated from 0 upwards and
    // never reach u32::MAX in practice; there the bound only excludes offset u64::MAX.
    let end = match partition_id.checked_add(1) {
        Some(next) => message_key(next, 0),
        None => [0xff; 12],
    };
    (message_key(partition_id, 0), end)
}

/// Splits a message key into (partition id, base offset).
pub fn message_key_parts(key: &[u8]) -> DecodeResult<(u32, u64)> {
    let arr: [u8; 12] = key.try_into().map_err(|_| DecodeError::Invalid {
        what: "message key",
        detail: format!("{} bytes", key.len()),
    })?;
    let mut id = [0u8; 4];
    id.copy_from_slice(&arr[..4]);
    let mut off = [0u8; 8];
    off.copy_from_slice(&arr[4..]);
    Ok((u32::from_be_bytes(id), u64::from_be_bytes(off)))
}

/// ```text
/// state CF: [0x12] | group (utf-8) → GroupTxnCounts (pending, parked, committed, rolled back)
/// ```
pub fn group_txn_key(group: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + group.len());
    k.push(GROUP_TXN_PREFIX);
    k.extend_from_slice(group.as_bytes());
    k
}

/// The key range holding every group's transaction counts.
pub fn group_txn_range() -> (Vec<u8>, Vec<u8>) {
    (vec![GROUP_TXN_PREFIX], vec![GROUP_TXN_PREFIX + 1])
}

/// The group name inside a group-counts key.
pub fn group_txn_name(key: &[u8]) -> DecodeResult<String> {
    match key.split_first() {
        Some((&GROUP_TXN_PREFIX, name)) => String::from_utf8(name.to_vec()).map_err(|_| {
            DecodeError::Invalid { what: "group txn key", detail: "not utf-8".into() }
        }),
        _ => Err(DecodeError::Invalid { what: "group txn key", detail: "bad prefix".into() }),
    }
}

const TXN_RECORD_PREFIX: u8 = 0x01;
const TXN_OPEN_PREFIX: u8 = 0x02;
const TXN_DEDUP_PREFIX: u8 = 0x03;

/// ```text
/// txn CF: [0x01] | txn_id:u64be → TxnRecord (every retained transaction)
/// ```
pub fn txn_key(txn_id: u64) -> [u8; 9] {
    let mut k = [TXN_RECORD_PREFIX, 0, 0, 0, 0, 0, 0, 0, 0];
    k[1..].copy_from_slice(&txn_id.to_be_bytes());
    k
}

/// ```text
/// txn CF: [0x02] | txn_id:u64be → (empty)     one per open (pending or parked) transaction
/// ```
/// Ids grow with time, so the first key is the oldest open transaction.
pub fn txn_open_key(txn_id: u64) -> [u8; 9] {
    let mut k = [TXN_OPEN_PREFIX, 0, 0, 0, 0, 0, 0, 0, 0];
    k[1..].copy_from_slice(&txn_id.to_be_bytes());
    k
}

/// ```text
/// txn CF: [0x03] | producer_id:u64be | base_sequence:u32be → txn_id:u64be
/// ```
/// Makes `SendHalf` idempotent: a resent batch maps to the transaction of the first.
pub fn txn_dedup_key(producer_id: u64, sequence: u32) -> [u8; 13] {
    let mut k = [0u8; 13];
    k[0] = TXN_DEDUP_PREFIX;
    k[1..9].copy_from_slice(&producer_id.to_be_bytes());
    k[9..].copy_from_slice(&sequence.to_be_bytes());
    k
}

/// `[start, end)` of the record keys after `after` (exclusive).
pub fn txn_records_after(after: u64) -> ([u8; 9], [u8; 9]) {
    (txn_key(after.saturating_add(1)), [TXN_RECORD_PREFIX + 1, 0, 0, 0, 0, 0, 0, 0, 0])
}

/// `[start, end)` of the open-index keys after `after` (exclusive).
pub fn txn_open_after(after: u64) -> ([u8; 9], [u8; 9]) {
    (txn_open_key(after.saturating_add(1)), [TXN_OPEN_PREFIX + 1, 0, 0, 0, 0, 0, 0, 0, 0])
}

/// The transaction id inside a record or open-index key.
pub fn txn_id_of(key: &[u8]) -> DecodeResult<u64> {
    match key {
        [TXN_RECORD_PREFIX | TXN_OPEN_PREFIX, rest @ ..] if rest.len() == 8 => {
            let mut id = [0u8; 8];
            id.copy_from_slice(rest);
            Ok(u64::from_be_bytes(id))
        }
        _ => Err(DecodeError::Invalid { what: "txn key", detail: format!("{key:?}") }),
    }
}

/// True for a transaction record key (not an index entry).
pub fn is_txn_record_key(key: &[u8]) -> bool {
    key.len() == 9 && key[0] == TXN_RECORD_PREFIX
}

const DELAYED_PREFIX: u8 = 0x04;

/// ```text
/// txn CF: [0x04] | delayed_id:u64be → DelayedRecord (one per delayed message not yet due)
/// ```
/// Kept with the half messages: both are invisible batches waiting for a timer.
pub fn delayed_key(id: u64) -> [u8; 9] {
    let mut k = [DELAYED_PREFIX, 0, 0, 0, 0, 0, 0, 0, 0];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// True for a delayed-message record key.
pub fn is_delayed_key(key: &[u8]) -> bool {
    key.len() == 9 && key[0] == DELAYED_PREFIX
}

const DEDUP_PREFIX: u8 = 0x05;
const DEDUP_EXPIRY_PREFIX: u8 = 0x06;

/// Kinds of dedup entry (on disk; append-only).
pub const DEDUP_KIND_BATCH: u8 = 1;
/// A record's `ferry-dedup-id`.
pub const DEDUP_KIND_RECORD: u8 = 2;

/// The part of a dedup key after its prefix:
/// ```text
/// entry := partition_id:u32be | kind:u8 | id
///   kind 1 (batch):  id = producer_id:u64be | base_sequence:u32be
///   kind 2 (record): id = the record's ferry-dedup-id (1..=256 bytes)
/// ```
pub fn dedup_entry(partition_id: u32, kind: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + id.len());
    k.extend_from_slice(&partition_id.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(id);
    k
}

/// ```text
/// txn CF: [0x05] | entry → first_offset:u64be | count:u32be | stamped_ms:u64be
/// ```
/// One per batch (kind 1) or record id (kind 2) stored within the dedup window. Keyed by the
/// global partition id first, so deleting a topic drops its entries with one range delete.
pub fn dedup_key(entry: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + entry.len());
    k.push(DEDUP_PREFIX);
    k.extend_from_slice(entry);
    k
}

/// Every dedup key of one partition: `[start, end)`.
pub fn dedup_range(partition_id: u32) -> (Vec<u8>, Vec<u8>) {
    let start = dedup_key(&partition_id.to_be_bytes());
    let end = match partition_id.checked_add(1) {
        Some(next) => dedup_key(&next.to_be_bytes()),
        None => vec![DEDUP_PREFIX + 1],
    };
    (start, end)
}

/// ```text
/// txn CF: [0x06] | stamped_ms:u64be | entry → (empty)     expiry index of the dedup entries
/// ```
/// In stamp order, so the leader finds the entries whose window ran out with one range scan.
pub fn dedup_expiry_key(stamped_ms: u64, entry: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + entry.len());
    k.push(DEDUP_EXPIRY_PREFIX);
    k.extend_from_slice(&stamped_ms.to_be_bytes());
    k.extend_from_slice(entry);
    k
}

/// Expiry-index keys stamped before `before_ms`: `[start, end)`.
pub fn dedup_expiry_before(before_ms: u64) -> (Vec<u8>, Vec<u8>) {
    (vec![DEDUP_EXPIRY_PREFIX], dedup_expiry_key(before_ms, &[]))
}

/// Splits an expiry-index key into (stamp, entry).
pub fn dedup_expiry_parts(key: &[u8]) -> DecodeResult<(u64, &[u8])> {
    if key.len() < 9 + 5 || key[0] != DEDUP_EXPIRY_PREFIX {
        return Err(DecodeError::Invalid {
            what: "dedup expiry key",
            detail: format!("{} bytes", key.len()),
        });
    }
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&key[1..9]);
    Ok((u64::from_be_bytes(stamp), &key[9..]))
}

/// What a timer does when it fires. On disk; append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TimerKind {
    /// Check back with the producer group of a pending transaction.
    TxnCheck = 1,
    /// Forget a decided transaction after its retention period.
    TxnPurge = 2,
    /// Append a delayed message to its partition (the id is a delayed-message id).
    DelayedDelivery = 3,
}

impl TimerKind {
    fn from_u8(v: u8) -> Option<TimerKind> {
        match v {
            1 => Some(TimerKind::TxnCheck),
            2 => Some(TimerKind::TxnPurge),
            3 => Some(TimerKind::DelayedDelivery),
            _ => None,
        }
    }
}

/// A timer: when, what, and for which id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    /// Leader clock at which it is due.
    pub due_ms: u64,
    /// What to do.
    pub kind: TimerKind,
    /// The subject: a transaction id, or a delayed-message id for `DelayedDelivery`.
    pub id: u64,
}

impl Timer {
    /// ```text
    /// timers CF: due_ms:u64be | kind:u8 | id:u64be → (empty)
    /// ```
    /// Big-endian due time first, so the due timers are one range scan from the start.
    pub fn key(&self) -> [u8; 17] {
        let mut k = [0u8; 17];
        k[..8].copy_from_slice(&self.due_ms.to_be_bytes());
        k[8] = self.kind as u8;
        k[9..].copy_from_slice(&self.id.to_be_bytes());
        k
    }

    /// Reads a timer key.
    pub fn from_key(key: &[u8]) -> DecodeResult<Timer> {
        let bad = || DecodeError::Invalid { what: "timer key", detail: format!("{key:?}") };
        let arr: [u8; 17] = key.try_into().map_err(|_| bad())?;
        let mut due = [0u8; 8];
        due.copy_from_slice(&arr[..8]);
        let mut id = [0u8; 8];
        id.copy_from_slice(&arr[9..]);
        Ok(Timer {
            due_ms: u64::from_be_bytes(due),
            kind: TimerKind::from_u8(arr[8]).ok_or_else(bad)?,
            id: u64::from_be_bytes(id),
        })
    }

    /// `[start, end)` of every timer due at or before `now_ms`.
    pub fn due_range(now_ms: u64) -> (Vec<u8>, Vec<u8>) {
        (Vec::new(), now_ms.saturating_add(1).to_be_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_by_partition_then_offset() {
        assert!(message_key(1, u64::MAX) < message_key(2, 0));
        assert!(message_key(1, 255) < message_key(1, 256));
        assert_eq!(message_key_parts(&message_key(7, 99)).unwrap(), (7, 99));
        let (s, e) = message_range(3);
        assert!(s <= message_key(3, 0) && message_key(3, u64::MAX) < e);
    }

    #[test]
    fn timer_keys_sort_by_due_time_and_round_trip() {
        let a = Timer { due_ms: 5, kind: TimerKind::TxnPurge, id: 9 };
        let b = Timer { due_ms: 6, kind: TimerKind::TxnCheck, id: 1 };
        assert!(a.key() < b.key());
        assert_eq!(Timer::from_key(&a.key()).unwrap(), a);
        let (start, end) = Timer::due_range(5);
        assert!(a.key().as_slice() >= start.as_slice() && a.key().as_slice() < end.as_slice());
        assert!(b.key().as_slice() >= end.as_slice());
        assert!(Timer::from_key(&[0u8; 16]).is_err());
    }

    #[test]
    fn txn_keys_round_trip_and_order() {
        assert_eq!(txn_id_of(&txn_key(77)).unwrap(), 77);
        assert_eq!(txn_id_of(&txn_open_key(78)).unwrap(), 78);
        assert!(is_txn_record_key(&txn_key(1)) && !is_txn_record_key(&txn_open_key(1)));
        let (s, e) = txn_open_after(5);
        assert!(txn_open_key(6).as_slice() >= s.as_slice() && txn_open_key(6) < e);
        assert!(txn_open_key(5).as_slice() < s.as_slice());
        assert!(txn_key(u64::MAX) < txn_open_key(0));
        assert_eq!(group_txn_name(&group_txn_key("g1")).unwrap(), "g1");
    }

    #[test]
    fn delayed_keys_stay_apart_from_transactions_and_timers_round_trip() {
        assert!(is_delayed_key(&delayed_key(5)));
        assert!(!is_txn_record_key(&delayed_key(5)) && !is_delayed_key(&txn_key(5)));
        assert!(txn_id_of(&delayed_key(5)).is_err());
        // Above every transaction key, so transaction scans never meet a delayed record.
        assert!(txn_dedup_key(u64::MAX, u32::MAX).as_slice() < delayed_key(0).as_slice());
        let t = Timer { due_ms: 9, kind: TimerKind::DelayedDelivery, id: 3 };
        assert_eq!(Timer::from_key(&t.key()).unwrap(), t);
        // Same due time: ordered by id, so messages due together keep their production order.
        let later = Timer { id: 4, ..t };
        assert!(t.key() < later.key());
    }

    #[test]
    fn dedup_keys_stay_apart_and_range_per_partition() {
        let entry = dedup_entry(7, DEDUP_KIND_RECORD, b"outbox:42");
        let key = dedup_key(&entry);
        let (s, e) = dedup_range(7);
        assert!(key >= s && key < e);
        let other = dedup_key(&dedup_entry(8, DEDUP_KIND_BATCH, &[0; 12]));
        assert!(other >= e);
        assert!(delayed_key(u64::MAX).as_slice() < dedup_range(0).0.as_slice());
        let (_, end) = dedup_range(u32::MAX);
        assert!(dedup_key(&dedup_entry(u32::MAX, 2, b"z")) < end);
        assert!(end.as_slice() <= dedup_expiry_key(0, &[]).as_slice());
        let x = dedup_expiry_key(99, &entry);
        assert_eq!(dedup_expiry_parts(&x).unwrap(), (99, entry.as_slice()));
        let (s, e) = dedup_expiry_before(100);
        assert!(x >= s && x < e);
        assert!(dedup_expiry_key(100, &entry) >= e);
        assert!(dedup_expiry_parts(&key).is_err());
    }

    #[test]
    fn topic_and_partition_keys_round_trip() {
        assert_eq!(topic_name(&topic_key("orders")).unwrap(), "orders");
        assert_eq!(partition_id_of(&partition_key(0xdead)).unwrap(), 0xdead);
        let (s, e) = topic_range();
        assert!(
            topic_key("z").as_slice() >= s.as_slice() && topic_key("z").as_slice() < e.as_slice()
        );
    }
}
