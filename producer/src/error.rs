//! The producer's error type: what went wrong and whether trying again can help.

use std::sync::Arc;

use ferry_protocol::{ClientError, ErrorCode, PartitionIndex};

/// Why a producer call or a message failed.
///
/// Cloneable because one failed batch fails every message in it: each [`crate::DeliveryFuture`]
/// gets its own copy (request errors are shared behind an `Arc`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ProducerError {
    /// A [`crate::ProducerConfig`] field is out of range.
    #[error("invalid producer config: {0}")]
    Config(String),
    /// The cluster could not be reached (or answered with an error) within the retry deadline
    /// while connecting.
    #[error("cannot reach the cluster at {bootstrap}: {source}")]
    Connect {
        /// The bootstrap list used.
        bootstrap: String,
        /// What the last attempt saw.
        source: Arc<ClientError>,
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
        /// How many partitions the topic has, as far as the producer knows.
        partitions: u32,
    },
    /// The message is larger than `message_bytes_max`.
    #[error("message takes {size_bytes} bytes, more than message_bytes_max ({max_bytes})")]
    MessageTooLarge {
        /// Encoded size including the batch header.
        size_bytes: usize,
        /// The configured limit.
        max_bytes: usize,
    },
    /// Reading topic metadata failed.
    #[error("cannot read metadata of topic {topic:?}: {source}")]
    Metadata {
        /// The topic.
        topic: String,
        /// The request error.
        source: Arc<ClientError>,
    },
    /// The batch holding the message was not acknowledged. The outcome is unknown when the
    /// error is a timeout or a lost connection: the batch may still have been stored.
    #[error("produce to {topic}/{partition} failed: {source}")]
    Produce {
        /// The topic.
        topic: String,
        /// The partition.
        partition: PartitionIndex,
        /// The request error.
        source: Arc<ClientError>,
    },
    /// The producer was closed (or dropped) before the message could be sent.
    #[error("producer is closed")]
    Closed,
}

impl ProducerError {
    /// Whether sending the same message again may succeed. False for an unreachable cluster:
    /// the producer already retried for `retry_deadline` before reporting it.
    pub fn is_retriable(&self) -> bool {
        match self {
            ProducerError::Connect { source, .. }
            | ProducerError::Metadata { source, .. }
            | ProducerError::Produce { source, .. } => source.is_retriable(),
            ProducerError::Config(_)
            | ProducerError::UnknownTopic { .. }
            | ProducerError::UnknownPartition { .. }
            | ProducerError::MessageTooLarge { .. }
            | ProducerError::Closed => false,
        }
    }

    /// The broker's error code, when the failure came from a broker answer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ProducerError::Connect { source, .. }
            | ProducerError::Metadata { source, .. }
            | ProducerError::Produce { source, .. } => source.code(),
            ProducerError::UnknownTopic { .. } => Some(ErrorCode::UnknownTopic),
            ProducerError::UnknownPartition { .. } => Some(ErrorCode::UnknownPartition),
            _ => None,
        }
    }
}

/// Result of producer operations.
pub type Result<T, E = ProducerError> = std::result::Result<T, E>;
