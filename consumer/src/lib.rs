//! ferry-consumer: reads a ferrymq topic as an async [`futures_util::Stream`] of messages.
//!
//! [`Consumer::connect`] reads the topic's metadata, resolves where each partition starts
//! ([`StartFrom`]) and spawns one fetch task per partition. Each task long-polls `Fetch`
//! requests (`fetch_max_wait`) from the leader through a shared cluster client (which
//! follows leader changes), and sends the decoded messages in offset order into one bounded
//! channel (`buffer_messages_max`) that the [`Consumer`] stream reads.
//!
//! ```text
//! fetch task (partition 0) ─┐
//! fetch task (partition 1) ─┼─▶ bounded channel ─▶ Consumer: Stream<Item = Result<ConsumedMessage>>
//! fetch task (partition n) ─┘
//! ```
//!
//! [`Consumer`] is a standalone reader that starts where it is told. [`GroupConsumer`] reads
//! as a member of a consumer group: the leader assigns partitions, positions are committed,
//! and every message is settled with `ack`, `nack` (redelivered on a backoff schedule, then
//! dead-lettered) or `term` — see the [`group`] module.

mod config;
mod consumer;
mod error;
mod fetcher;
pub mod group;

pub use config::{
    ConsumerConfig, StartFrom, BUFFER_MESSAGES_MAX_DEFAULT, FETCH_MAX_BYTES_DEFAULT,
    FETCH_MAX_WAIT_DEFAULT, FETCH_MAX_WAIT_LIMIT, REQUEST_TIMEOUT_DEFAULT, RETRY_DEADLINE_DEFAULT,
};
pub use consumer::Consumer;
pub use error::{ConsumerError, Result};
pub use fetcher::ConsumedMessage;
pub use group::{Delivery, GroupConfig, GroupConsumer};
