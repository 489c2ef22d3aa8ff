//! The message a caller hands to `Producer::send`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_protocol::{now_ms, PartitionIndex};

/// One message to produce: a value, an optional key and headers, and optionally the partition
/// it must go to.
///
/// Partition choice: an explicit partition wins; else a key picks the partition by a stable
/// hash (the same key always lands on the same partition while the partition count stays);
/// else the producer spreads messages over partitions a batch at a time.
///
/// Delayed delivery: with a deliver time ([`Message::deliver_at`], [`Message::with_delay`]) the
/// broker stores the message replicated and invisible, and appends it to its partition (where
/// consumers see it and it gets its offset) once the time is due on the leader's clock. A
/// deliver time in the past, or none, appends at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// Routes the message (and is stored with it).
    pub key: Option<Bytes>,
    /// Application headers, kept in order.
    pub headers: Vec<(String, Bytes)>,
    /// The payload.
    pub value: Bytes,
    /// Send to this partition instead of choosing one.
    pub partition: Option<PartitionIndex>,
    /// Make the message visible at this time, ms since the Unix epoch (`None`: at once).
    pub deliver_at_ms: Option<u64>,
}

impl Message {
    /// A message carrying `value`, with no key, no headers and no fixed partition.
    pub fn new(value: impl Into<Bytes>) -> Self {
        Message { value: value.into(), ..Message::default() }
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds a header (after those already set).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends the message to partition `p` whatever its key.
    pub fn to_partition(mut self, p: PartitionIndex) -> Self {
        self.partition = Some(p);
        self
    }

    /// Delivers the message at `time` (compared with the broker leader's clock, so keep the
    /// clocks in sync); a time in the past delivers at once.
    pub fn deliver_at(mut self, time: SystemTime) -> Self {
        let ms = time
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.deliver_at_ms = Some(ms);
        self
    }

    /// Delivers the message `delay` from now (this machine's clock, read here).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.deliver_at_ms = Some(now_ms().saturating_add(delay_ms));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_times_are_ms_since_the_epoch() {
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(Message::new("v").deliver_at(at).deliver_at_ms, Some(1_700_000_000_123));
        assert_eq!(Message::new("v").deliver_at(UNIX_EPOCH).deliver_at_ms, Some(0));
        let before = now_ms();
        let delayed = Message::new("v").with_delay(Duration::from_secs(30));
        let at = delayed.deliver_at_ms.unwrap();
        assert!(at >= before + 30_000 && at <= now_ms() + 30_000);
        assert_eq!(Message::new("v").deliver_at_ms, None);
    }
}
