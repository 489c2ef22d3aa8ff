//! ferry-producer: the batching, partitioning producer for ferrymq.
//!
//! Publishing is two-staged (as in async-nats and rdkafka): [`Producer::send`] enqueues a
//! message — waiting only when `buffer_bytes_max` bytes are unacknowledged (back-pressure) —
//! and returns a [`DeliveryFuture`] that resolves once the batch holding the message is
//! committed by a Raft quorum and applied. [`Producer::send_and_wait`] does both.
//!
//! Per partition, messages are gathered into one record batch until it holds
//! `batch_bytes_max` bytes or `linger` has passed since its first message, then sent as one
//! `Produce` request. One request at most is in flight per partition, so the order of `send`
//! calls is the order of offsets within each partition; partitions proceed in parallel.
//!
//! ```text
//! send ─▶ partitioner ─▶ accumulator (per partition, short mutex) ─▶ sender task ─▶ broker
//!                          │ batch slot ◀─ outcome ─────────────────────┘
//!                          └─▶ DeliveryFuture (base_offset + index in batch)
//! ```
//!
//! Delivery is at least once: a batch whose response was lost is retried by the cluster
//! client and may be stored twice (producer id and sequences are filled in for the broker's
//! future deduplication).

mod accumulator;
mod config;
mod delivery;
mod error;
mod message;
pub mod partitioner;
mod producer;

pub use config::{
    ProducerConfig, BATCH_BYTES_LIMIT, BATCH_BYTES_MAX_DEFAULT, BUFFER_BYTES_MAX_DEFAULT,
    LINGER_DEFAULT, MESSAGE_BYTES_MAX_DEFAULT, REQUEST_TIMEOUT_DEFAULT, RETRY_DEADLINE_DEFAULT,
};
pub use delivery::{Delivered, DeliveryFuture};
pub use error::{ProducerError, Result};
pub use message::Message;
pub use producer::Producer;
