//! The producer's error type: what went wrong and whether trying again can help.

use std::sync::Arc;

use ferry_protocol::{ClientError, ErrorCode, PartitionIndex, TxnId, TxnState};

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
    /// The message asks for something the call cannot do (e.g. a deliver time on a half
    /// message).
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The producer was closed (or dropped) before the message could be sent.
    #[error("producer is closed")]
    Closed,
    /// The transaction had already been decided the other way (by a check-back answer, an
    /// operator, or the broker after its checks ran out); `state` is where it stands, for good
    /// when `state.is_decided()`. Retrying cannot change it.
    #[error("transaction {txn_id} was already resolved: it is {state}")]
    TransactionAlreadyResolved {
        /// The transaction.
        txn_id: TxnId,
        /// Its state as the broker reported it.
        state: TxnState,
    },
    /// The broker knows no transaction with this id: it never existed, or it was decided and
    /// purged after the broker's retention period.
    #[error("unknown transaction {txn_id}")]
    UnknownTransaction {
        /// The transaction asked about.
        txn_id: TxnId,
    },
    /// A transaction request (`SendHalf`, `EndTransaction`) failed. When `source` is a timeout,
    /// a lost connection or an unreachable cluster, the outcome is unknown: the half message
    /// may have been stored, or the decision recorded. Nothing is lost either way: a half
    /// message left undecided is resolved by the broker's check-back, which asks the producer
    /// group's [`crate::TransactionChecker`].
    #[error("transaction request{} failed: {source}", for_txn(.txn_id))]
    Transaction {
        /// The transaction, when the request named one (`None` for a half send).
        txn_id: Option<TxnId>,
        /// The request error.
        source: Arc<ClientError>,
    },
}

/// ` for transaction N`, or nothing.
fn for_txn(txn_id: &Option<TxnId>) -> String {
    txn_id.map_or_else(String::new, |id| format!(" for transaction {id}"))
}

impl ProducerError {
    /// Whether sending the same message again may succeed. False for an unreachable cluster:
    /// the producer already retried for `retry_deadline` before reporting it.
    pub fn is_retriable(&self) -> bool {
        match self {
            ProducerError::Connect { source, .. }
            | ProducerError::Metadata { source, .. }
            | ProducerError::Produce { source, .. }
            | ProducerError::Transaction { source, .. } => source.is_retriable(),
            ProducerError::Config(_)
            | ProducerError::UnknownTopic { .. }
            | ProducerError::UnknownPartition { .. }
            | ProducerError::MessageTooLarge { .. }
            | ProducerError::InvalidMessage(_)
            | ProducerError::Closed
            | ProducerError::TransactionAlreadyResolved { .. }
            | ProducerError::UnknownTransaction { .. } => false,
        }
    }

    /// The broker's error code, when the failure came from a broker answer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ProducerError::Connect { source, .. }
            | ProducerError::Metadata { source, .. }
            | ProducerError::Produce { source, .. }
            | ProducerError::Transaction { source, .. } => source.code(),
            ProducerError::UnknownTopic { .. } => Some(ErrorCode::UnknownTopic),
            ProducerError::UnknownPartition { .. } => Some(ErrorCode::UnknownPartition),
            ProducerError::TransactionAlreadyResolved { .. } => {
                Some(ErrorCode::TransactionAlreadyResolved)
            }
            ProducerError::UnknownTransaction { .. } => Some(ErrorCode::UnknownTransaction),
            ProducerError::Config(_)
            | ProducerError::MessageTooLarge { .. }
            | ProducerError::InvalidMessage(_)
            | ProducerError::Closed => None,
        }
    }
}

/// Result of producer operations.
pub type Result<T, E = ProducerError> = std::result::Result<T, E>;
