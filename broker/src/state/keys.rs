//! Key layouts of the state column families. Every layout is drawn above its encoder.

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
    fn topic_and_partition_keys_round_trip() {
        assert_eq!(topic_name(&topic_key("orders")).unwrap(), "orders");
        assert_eq!(partition_id_of(&partition_key(0xdead)).unwrap(), 0xdead);
        let (s, e) = topic_range();
        assert!(
            topic_key("z").as_slice() >= s.as_slice() && topic_key("z").as_slice() < e.as_slice()
        );
    }
}
