//! [`Delivery`]: one message handed to the application, settled exactly once by `ack`, `nack`
//! or `term` (or by its ack timeout).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::{Offset, PartitionIndex};

use super::source::{InFlight, Outcome, Source};
use crate::error::{ConsumerError, Result};

/// One message delivered to a group member.
///
/// Settle it once: [`Delivery::ack`] when processed, [`Delivery::nack`] to have it again
/// later, [`Delivery::term`] to send it to the dead-letter topic now. A delivery left
/// unsettled (dropped, or held too long) counts as nacked once `ack_timeout` passes; settling
/// it after that does nothing.
///
/// `topic`, `partition` and `offset` name where the message was first produced, also for a
/// redelivery (which is read from the group's retry topic).
pub struct Delivery {
    /// Topic the message was produced to.
    pub topic: Arc<str>,
    /// Its partition.
    pub partition: PartitionIndex,
    /// Its offset in that partition.
    pub offset: Offset,
    /// Producer timestamp, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The key, if any.
    pub key: Option<Bytes>,
    /// Application headers, in order (ferrymq's own `ferry-*` headers removed).
    pub headers: Vec<(String, Bytes)>,
    /// The payload.
    pub value: Bytes,
    /// Delivery attempt: 1 for the first delivery, 2 for the first redelivery, ...
    pub attempt: u32,
    inflight: Arc<InFlight>,
    source: Arc<Source>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("attempt", &self.attempt)
            .field("value_bytes", &self.value.len())
            .finish_non_exhaustive()
    }
}

impl Delivery {
    pub(crate) fn new(inflight: Arc<InFlight>, source: Arc<Source>) -> Delivery {
        Delivery {
            topic: inflight.origin.topic.clone(),
            partition: inflight.origin.partition,
            offset: inflight.origin.offset,
            timestamp_ms: inflight.timestamp_ms,
            key: inflight.key.clone(),
            headers: inflight.headers.clone(),
            value: inflight.value.clone(),
            attempt: inflight.attempt,
            inflight,
            source,
        }
    }

    pub(crate) fn in_flight(&self) -> &InFlight {
        &self.inflight
    }

    /// Marks the message processed; the group's position moves past it at the next commit.
    /// Returns false when the delivery was settled already (its ack timeout passed, or its
    /// partition was revoked): the message will be delivered again.
    pub fn ack(self) -> bool {
        if !self.inflight.try_settle() {
            return false;
        }
        if !self.inflight.send_outcome(Outcome::Ack) {
            self.source.finish(self.inflight.position);
        }
        true
    }

    /// Asks for the message again after `delay` (`None`: the group's schedule for this
    /// attempt); after the last attempt it goes to the dead-letter topic instead. Returns
    /// once the broker stored the redelivery (in ordered mode, at once: the partition waits
    /// and retries in place).
    ///
    /// # Errors
    /// [`ConsumerError::Settled`] if it was settled already; [`ConsumerError::Settle`] if the
    /// broker could not store the redelivery (the delivery then times out and is retried).
    pub async fn nack(self, delay: Option<Duration>) -> Result<()> {
        self.nack_because(delay, "nack").await
    }

    /// [`Delivery::nack`] with the reason recorded as the message's last error (a header
    /// on the redelivery and on the dead letter).
    ///
    /// # Errors
    /// As [`Delivery::nack`].
    pub async fn nack_because(self, delay: Option<Duration>, reason: &str) -> Result<()> {
        if !self.inflight.try_settle() {
            return Err(ConsumerError::Settled);
        }
        let outcome = Outcome::Nack { delay, reason: reason.to_string() };
        if self.inflight.send_outcome(outcome) {
            return Ok(());
        }
        self.source.fail(&self.inflight, delay, reason, false).await
    }

    /// Sends the message to the group's dead-letter topic now, with `reason` as its last
    /// error.
    ///
    /// # Errors
    /// As [`Delivery::nack`].
    pub async fn term(self, reason: &str) -> Result<()> {
        if !self.inflight.try_settle() {
            return Err(ConsumerError::Settled);
        }
        if self.inflight.send_outcome(Outcome::Term { reason: reason.to_string() }) {
            return Ok(());
        }
        self.source.fail(&self.inflight, None, reason, true).await
    }
}
