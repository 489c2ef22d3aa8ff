//! The consumer's error type: what went wrong and whether trying again can help.

use ferry_protocol::{ClientError, DecodeError, ErrorCode, Offset, PartitionIndex};

/// Why connecting or reading failed. Once the stream yields one of these it ends.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// A [`crate::ConsumerConfig`] field is out of range.
    #[error("invalid consumer config: {0}")]
    Config(String),
    /// No leader answered within the retry deadline while connecting (or it answered with an
    /// unexpected error).
    #[error("cannot reach the cluster at {bootstrap}: {source}")]
    Connect {
        /// The bootstrap list used.
        bootstrap: String,
        /// What the last attempt saw.
        source: ClientError,
    },
    /// The topic does not exist.
    #[error("unknown topic {topic:?}")]
    UnknownTopic {
        /// The topic asked for.
        topic: String,
    },
    /// The topic has no such partition.
    #[error("topic {topic:?} has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: PartitionIndex,
        /// How many partitions the topic has.
        partitions: u32,
    },
    /// The start offset asked for is not stored in the partition.
    #[error(
        "offset {offset} is out of range for {topic}/{partition} \
         (log start {log_start}, high watermark {high_watermark})"
    )]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: PartitionIndex,
        /// The offset asked for.
        offset: Offset,
        /// First offset stored.
        log_start: Offset,
        /// Offset the next message will get.
        high_watermark: Offset,
    },
    /// A fetch failed for good (a non-retriable answer, or the cluster stayed unreachable for
    /// the retry deadline).
    #[error("fetch from {topic}/{partition} at offset {offset} failed: {source}")]
    Fetch {
        /// The topic.
        topic: String,
        /// The partition.
        partition: PartitionIndex,
        /// The offset asked for.
        offset: Offset,
        /// The request error.
        source: ClientError,
    },
    /// A fetched batch could not be decoded.
    #[error("corrupt batch in {topic}/{partition} at offset {offset}: {source}")]
    Corrupt {
        /// The topic.
        topic: String,
        /// The partition.
        partition: PartitionIndex,
        /// The batch's base offset.
        offset: Offset,
        /// What was wrong.
        source: DecodeError,
    },
    /// The delivery was settled already (acked, nacked, timed out, or its partition was
    /// revoked).
    #[error("the delivery was settled already (acked, nacked, timed out or revoked)")]
    Settled,
    /// Settling a delivery needed the broker (a redelivery or dead letter to store) and it
    /// failed.
    #[error("could not {what}: {source}")]
    Settle {
        /// What was being done.
        what: &'static str,
        /// The request error.
        source: ClientError,
    },
    /// A group request (heartbeat, commit) failed for good.
    #[error("consumer group {what} failed: {source}")]
    Group {
        /// Which request.
        what: &'static str,
        /// The request error.
        source: ClientError,
    },
}

impl ConsumerError {
    /// Whether connecting again (from the last offset seen) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ConsumerError::Connect { source, .. }
            | ConsumerError::Fetch { source, .. }
            | ConsumerError::Settle { source, .. }
            | ConsumerError::Group { source, .. } => source.is_retriable(),
            _ => false,
        }
    }

    /// The broker's error code, when the failure came from a broker answer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ConsumerError::Connect { source, .. }
            | ConsumerError::Fetch { source, .. }
            | ConsumerError::Settle { source, .. }
            | ConsumerError::Group { source, .. } => source.code(),
            ConsumerError::UnknownTopic { .. } => Some(ErrorCode::UnknownTopic),
            ConsumerError::UnknownPartition { .. } => Some(ErrorCode::UnknownPartition),
            ConsumerError::OffsetOutOfRange { .. } => Some(ErrorCode::OffsetOutOfRange),
            _ => None,
        }
    }
}

/// Result of consumer operations.
pub type Result<T, E = ConsumerError> = std::result::Result<T, E>;
