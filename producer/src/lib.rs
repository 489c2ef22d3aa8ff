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
//! Delayed messages: a message with a deliver time ([`Message::with_delay`],
//! [`Message::deliver_at`]) is acknowledged once stored replicated and invisible
//! ([`Delivered::deliver_at_ms`] says when it will appear); the leader appends it to its
//! partition when due, so it takes its offset — and its place in the partition's order — then.
//! It survives leader failover and restarts. Messages with different deliver times never
//! share a batch.
//!
//! Retries are idempotent within the broker's dedup window (`dedup_window_ms`, default one
//! hour): a batch whose response was lost is retried by the cluster client with the same
//! producer id and sequence, and the partition drops it if it stored it already. A send that
//! failed (retry deadline passed) and is sent again by the application is a new batch. A message
//! carrying a `ferry-dedup-id` header is stored at most once per partition within the window
//! whichever batch or producer it comes in (the outbox relay uses this). A producer restarted
//! gets a new producer id: re-sending after a crash can duplicate unless records carry ids.
//!
//! Transactions: a [`TransactionalProducer`] stores a message as an invisible half message
//! ([`TransactionalProducer::send_half`]), the caller runs its local transaction, then
//! [`Transaction::commit`] makes the message visible or [`Transaction::rollback`] discards it
//! ([`TransactionalProducer::send_in_transaction`] does all three). A transaction left
//! undecided — dropped, a failed decision, a crashed producer — is resolved by check-back: after
//! the check timeout the leader asks a live producer of the same group, whose
//! [`TransactionChecker`] looks at the application's own state and answers commit, rollback or
//! unknown (ask again later). Each half message travels alone, one record per batch, with its
//! own sequence number, so a retried request is stored once.

mod accumulator;
mod check_back;
mod config;
mod delivery;
mod error;
#[cfg(test)]
mod fake_broker;
mod message;
#[cfg(feature = "outbox")]
pub mod outbox;
pub mod partitioner;
mod producer;
mod transaction;
mod transactional_producer;

pub use config::{
    ProducerConfig, BATCH_BYTES_LIMIT, BATCH_BYTES_MAX_DEFAULT, BUFFER_BYTES_MAX_DEFAULT,
    LINGER_DEFAULT, MESSAGE_BYTES_MAX_DEFAULT, REQUEST_TIMEOUT_DEFAULT, RETRY_DEADLINE_DEFAULT,
};
pub use delivery::{Delivered, DeliveryFuture};
pub use error::{ProducerError, Result};
pub use message::Message;
pub use producer::Producer;

pub use check_back::{checker_fn, FnChecker, MessageView, Resolution, TransactionChecker};
pub use transaction::{
    Committed, RolledBack, Transaction, TransactionConfig, CHECKS_IN_FLIGHT_LIMIT,
    CHECKS_IN_FLIGHT_MAX_DEFAULT, GROUP_BYTES_MAX, HEARTBEAT_INTERVAL_DEFAULT,
};
pub use transactional_producer::TransactionalProducer;
