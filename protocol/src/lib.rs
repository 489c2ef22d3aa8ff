//! ferry-protocol: the wire protocol shared by brokers and clients — frames, hand-written body
//! codecs, operation and error codes, the record-batch format, a multiplexed connection and the
//! cluster client (bootstrap, leader routing, retry).
//!
//! Nothing here knows about Raft or storage; the broker depends on this crate, never the reverse.

pub mod api;
pub mod client;
pub mod cluster;
pub mod frame;
pub mod group;
pub mod messages;
pub mod push;
pub mod record;
pub mod txn;
pub mod types;
pub mod wire;

#[cfg(test)]
mod fuzz_tests;

pub use api::{ApiKey, ErrorCode};
pub use client::{ClientError, ConnectOptions, Connection};
pub use cluster::{ClusterClient, ClusterOptions, RetryPolicy};
pub use frame::{ErrorBody, LeaderHint};
pub use record::{Record, RecordBatch, RecordBatchBuilder};
pub use types::{
    ClientKind, Decision, DecisionOrigin, NodeId, Offset, PartitionIndex, TxnId, TxnState,
};
pub use wire::{Decode, DecodeError, Encode};

/// Milliseconds since the Unix epoch from the system clock (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
