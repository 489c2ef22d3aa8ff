//! The message a caller hands to `Producer::send`.

use bytes::Bytes;
use ferry_protocol::PartitionIndex;

/// One message to produce: a value, an optional key and headers, and optionally the partition
/// it must go to.
///
/// Partition choice: an explicit partition wins; else a key picks the partition by a stable
/// hash (the same key always lands on the same partition while the partition count stays);
/// else the producer spreads messages over partitions a batch at a time.
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
}
