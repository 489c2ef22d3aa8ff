//! Message payloads: a send timestamp in the first 8 bytes, then incompressible filler.
//!
//! ```text
//! payload := sent_unix_ns:u64be | filler:[u8; size - 8]
//! ```
//!
//! The timestamp comes from [`Clock`]: the wall clock read once at start-up plus a monotonic
//! `Instant` offset, so timestamps in one process never go backwards and are comparable with
//! those of another process on the same host (to the accuracy of the two start-up readings).
//! Filler is pseudo-random so that broker-side compression (RocksDB lz4) gains nothing that
//! NATS, which does not compress, would not also get.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes at the start of every payload taken by the send timestamp.
pub const TIMESTAMP_BYTES: usize = 8;

/// Bytes of random filler a factory copies payload bodies from; far larger than LZ4's 64 KiB
/// window and than a storage block, so neighbouring payloads share no byte run.
const FILLER_BYTES: usize = 1 << 20;

/// Bytes allocated at once for payloads, which are then handed out as slices.
const ARENA_BYTES: usize = 1 << 20;

/// Writes `sent_unix_ns` as the payload header.
pub fn encode_timestamp(buf: &mut impl BufMut, sent_unix_ns: u64) {
    buf.put_u64(sent_unix_ns);
}

/// Reads the send timestamp from a payload, or `None` if it is too short to carry one.
pub fn decode_timestamp(payload: &[u8]) -> Option<u64> {
    let head: [u8; TIMESTAMP_BYTES] = payload.get(..TIMESTAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_be_bytes(head))
}

/// A process-wide clock in nanoseconds since the Unix epoch that never goes backwards.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    anchor: Instant,
    anchor_unix_ns: u64,
}

impl Clock {
    /// The clock of this process (anchored on first use).
    pub fn global() -> &'static Clock {
        static CLOCK: OnceLock<Clock> = OnceLock::new();
        CLOCK.get_or_init(|| {
            let anchor_unix_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            Clock { anchor: Instant::now(), anchor_unix_ns }
        })
    }

    /// Nanoseconds since the Unix epoch at `at` (saturating at the anchor for earlier instants).
    pub fn unix_ns(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.anchor).as_nanos();
        self.anchor_unix_ns.saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// Nanoseconds since the Unix epoch now.
    pub fn now_unix_ns(&self) -> u64 {
        self.unix_ns(Instant::now())
    }
}

/// Builds payloads of one size: one copy of filler per message into a shared arena, no
/// allocation per message.
#[derive(Debug)]
pub struct PayloadFactory {
    size: usize,
    filler: Vec<u8>,
    filler_pos: usize,
    arena: BytesMut,
}

impl PayloadFactory {
    /// A factory for payloads of `size` bytes (at least [`TIMESTAMP_BYTES`]); `seed` varies
    /// the filler between instances.
    pub fn new(size: usize, seed: u64) -> PayloadFactory {
        let size = size.max(TIMESTAMP_BYTES);
        let mut filler = Vec::with_capacity(FILLER_BYTES);
        let mut rng = SplitMix64(seed);
        while filler.len() < FILLER_BYTES {
            filler.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        PayloadFactory { size, filler, filler_pos: 0, arena: BytesMut::new() }
    }

    /// Payload size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The next payload, stamped with `sent_unix_ns`.
    pub fn next(&mut self, sent_unix_ns: u64) -> Bytes {
        if self.arena.capacity() < self.size {
            self.arena.reserve(ARENA_BYTES.max(self.size));
        }
        encode_timestamp(&mut self.arena, sent_unix_ns);
        let mut body = self.size - TIMESTAMP_BYTES;
        while body > 0 {
            if self.filler_pos >= self.filler.len() {
                self.filler_pos = 0;
            }
            let end = self.filler.len().min(self.filler_pos + body);
            let chunk = self.filler.get(self.filler_pos..end).unwrap_or_default();
            self.arena.put_slice(chunk);
            body -= chunk.len();
            self.filler_pos = end;
        }
        self.arena.split().freeze()
    }
}

/// A tiny deterministic generator for filler bytes (SplitMix64), so the bench needs no RNG
/// crate and runs are repeatable.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In a test a failed unwrap is a failed test, which is the point.
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips() {
        for ts in [0, 1, 1_700_000_000_123_456_789, u64::MAX] {
            let mut buf = BytesMut::new();
            encode_timestamp(&mut buf, ts);
            assert_eq!(buf.len(), TIMESTAMP_BYTES);
            buf.put_slice(b"rest");
            assert_eq!(decode_timestamp(&buf), Some(ts));
        }
    }

    #[test]
    fn timestamp_is_big_endian_at_the_start() {
        let mut buf = BytesMut::new();
        encode_timestamp(&mut buf, 0x0102_0304_0506_0708);
        assert_eq!(&buf[..], &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn short_payloads_have_no_timestamp() {
        assert_eq!(decode_timestamp(&[]), None);
        assert_eq!(decode_timestamp(&[1, 2, 3, 4, 5, 6, 7]), None);
        assert_eq!(decode_timestamp(&[0, 0, 0, 0, 0, 0, 0, 9]), Some(9));
    }

    #[test]
    fn factory_builds_stamped_payloads_of_the_right_size() {
        for size in [8, 9, 100, 1024, FILLER_BYTES + 3, ARENA_BYTES * 2] {
            let mut f = PayloadFactory::new(size, 7);
            let mut previous: Option<Bytes> = None;
            for i in 0..5u64 {
                let p = f.next(1000 + i);
                assert_eq!(p.len(), size);
                assert_eq!(decode_timestamp(&p), Some(1000 + i));
                if let Some(prev) = &previous {
                    if size > 64 {
                        assert_ne!(prev[TIMESTAMP_BYTES..], p[TIMESTAMP_BYTES..]);
                    }
                }
                previous = Some(p);
            }
        }
        // Sizes below the header are raised to it.
        assert_eq!(PayloadFactory::new(0, 1).next(5).len(), TIMESTAMP_BYTES);
    }

    #[test]
    fn clock_is_monotonic_and_near_the_wall_clock() {
        let clock = Clock::global();
        let a = clock.now_unix_ns();
        let b = clock.now_unix_ns();
        assert!(b >= a);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        assert!(wall.abs_diff(b) < 5_000_000_000, "clock {b} far from wall {wall}");
        let later = Instant::now() + std::time::Duration::from_millis(3);
        assert_eq!(
            clock.unix_ns(later) - clock.unix_ns(later - std::time::Duration::from_millis(3)),
            3_000_000
        );
    }
}
