//! Which partition a message goes to: by key (a stable hash), to a partition named by the
//! caller, or — without either — to a "sticky" partition that changes every `batch_bytes_max`
//! bytes, so keyless traffic fills whole batches and still spreads over every partition.
//!
//! Called by `Producer::send` for every message; everything here is lock-free.

use ferry_protocol::PartitionIndex;

/// Seed of Kafka's murmur2.
const MURMUR2_SEED: u32 = 0x9747_b28c;
/// Mixing constant of murmur2.
const MURMUR2_M: u32 = 0x5bd1_e995;
/// Shift of murmur2.
const MURMUR2_R: u32 = 24;

/// 32-bit MurmurHash2 exactly as Kafka's `Utils.murmur2` computes it (seed `0x9747b28c`,
/// 4-byte little-endian words), so a key lands on the same partition number in ferrymq as it
/// would in Kafka with the same partition count. The value is stable across versions and
/// platforms: changing it would move keys between partitions and break per-key order.
pub fn murmur2(data: &[u8]) -> u32 {
    // Kafka hashes the length as a Java int; lengths beyond 2^32 never reach a partitioner.
    let mut h = MURMUR2_SEED ^ (data.len() as u32);
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        let mut k = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        k = k.wrapping_mul(MURMUR2_M);
        k ^= k >> MURMUR2_R;
        k = k.wrapping_mul(MURMUR2_M);
        h = h.wrapping_mul(MURMUR2_M);
        h ^= k;
    }
    let tail = words.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(MURMUR2_M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(MURMUR2_M);
    h ^= h >> 15;
    h
}

/// The partition for `key` among `partitions` (> 0): `(murmur2(key) & 0x7fffffff) % partitions`,
/// Kafka's default for keyed records.
pub fn partition_for_key(key: &[u8], partitions: u32) -> PartitionIndex {
    PartitionIndex((murmur2(key) & 0x7fff_ffff) % partitions.max(1))
}

/// The sticky partition for a keyless message: `bytes_before` is how many keyless bytes this
/// producer sent to the topic before this message, so the partition moves on (round-robin,
/// from `start`) each time another `batch_bytes_max` bytes have gone out.
pub fn sticky_partition(
    bytes_before: u64,
    batch_bytes_max: usize,
    start: u32,
    partitions: u32,
) -> PartitionIndex {
    let partitions = u64::from(partitions.max(1));
    let batch = (batch_bytes_max as u64).max(1);
    let turn = (bytes_before / batch + u64::from(start)) % partitions;
    // `turn < partitions <= u32::MAX`.
    PartitionIndex(u32::try_from(turn).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from Kafka's `UtilsTest.testMurmur2` (as Java ints): ferrymq must hash keys
    /// exactly like Kafka, forever.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (data, expected) in cases {
            assert_eq!(murmur2(data) as i32, expected, "{:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn key_partition_is_pinned() {
        // Pinned so an accidental change of the hash or the reduction is caught.
        assert_eq!(murmur2(b""), 0x106e_08d9);
        assert_eq!(partition_for_key(b"foobar", 4), PartitionIndex(2));
        assert_eq!(partition_for_key(b"order-42", 8), partition_for_key(b"order-42", 8));
        assert_eq!(partition_for_key(b"anything", 1), PartitionIndex(0));
    }

    #[test]
    fn keys_spread_evenly() {
        const PARTITIONS: u32 = 8;
        const KEYS: u32 = 80_000;
        let mut counts = [0u32; PARTITIONS as usize];
        for i in 0..KEYS {
            let p = partition_for_key(format!("key-{i}").as_bytes(), PARTITIONS);
            counts[p.0 as usize] += 1;
        }
        let mean = KEYS / PARTITIONS;
        for (p, &n) in counts.iter().enumerate() {
            assert!(n.abs_diff(mean) < mean / 20, "partition {p} got {n}, mean {mean}");
        }
    }

    #[test]
    fn sticky_moves_on_every_batch() {
        let batch = 1000;
        let at = |bytes: u64| sticky_partition(bytes, batch, 2, 3).0;
        assert_eq!(at(0), 2);
        assert_eq!(at(999), 2);
        assert_eq!(at(1000), 0);
        assert_eq!(at(1999), 0);
        assert_eq!(at(2000), 1);
        assert_eq!(at(3000), 2);
        assert!(sticky_partition(u64::MAX, batch, u32::MAX, u32::MAX).0 < u32::MAX);
    }
}
