//! Delivery handles: one shared slot per batch, one [`DeliveryFuture`] per message.
//!
//! A batch's outcome (its base offset, or the error that failed it) is stored once in a
//! [`BatchSlot`]; every message's future reads it and adds its own index, so a batch of a
//! thousand messages costs one allocation, not a thousand channels.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};

use ferry_protocol::{Offset, PartitionIndex};

use crate::error::ProducerError;

/// Where an acknowledged message was stored, or when it will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The partition it went to.
    pub partition: PartitionIndex,
    /// Its offset in that partition. `Offset(0)` and meaningless when the message was
    /// scheduled (`deliver_at_ms` is set): it gets its offset once due. A batch the broker
    /// already held (a retry whose first answer was lost) reports where it was stored first;
    /// when only some records of a batch were dropped as duplicates of `ferry-dedup-id`s
    /// stored before, the offsets of its other messages are approximate.
    pub offset: Offset,
    /// Set when the message was scheduled (a deliver time after the leader's clock): it is
    /// stored durably, invisible, and appended to the partition at this time (ms since the
    /// Unix epoch). `None`: appended at `offset`.
    pub deliver_at_ms: Option<u64>,
}

impl Delivered {
    /// Whether the message was scheduled for later rather than appended.
    pub fn is_scheduled(&self) -> bool {
        self.deliver_at_ms.is_some()
    }
}

/// How the broker acknowledged a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acked {
    /// Appended; its first record is at this offset.
    Appended(Offset),
    /// Scheduled: appended once this time (ms since the Unix epoch) is due.
    Scheduled(u64),
}

/// The outcome of one batch, shared by the futures of the messages in it.
#[derive(Debug, Default)]
pub(crate) struct BatchSlot {
    /// Set once: how the batch was acknowledged, or why it failed.
    outcome: OnceLock<Result<Acked, ProducerError>>,
    /// Tasks waiting for `outcome`. A future remembers its index here so re-polling replaces
    /// its waker instead of adding another: the list never outgrows the futures.
    wakers: Mutex<Vec<Waker>>,
}

impl BatchSlot {
    /// A slot with no outcome yet.
    pub(crate) fn new() -> Arc<BatchSlot> {
        Arc::new(BatchSlot::default())
    }

    /// Stores the outcome (the first one wins) and wakes every waiter.
    pub(crate) fn complete(&self, outcome: Result<Acked, ProducerError>) {
        let _ = self.outcome.set(outcome);
        let wakers =
            std::mem::take(&mut *self.wakers.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in wakers {
            waker.wake();
        }
    }

    /// Whether the outcome is known.
    #[cfg(test)]
    pub(crate) fn is_complete(&self) -> bool {
        self.outcome.get().is_some()
    }

    fn poll_outcome(
        &self,
        cx: &mut Context<'_>,
        waker_index: &mut Option<usize>,
    ) -> Poll<&Result<Acked, ProducerError>> {
        if let Some(outcome) = self.outcome.get() {
            return Poll::Ready(outcome);
        }
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        // Checked again under the lock: `complete` sets the outcome before it takes the list.
        if let Some(outcome) = self.outcome.get() {
            return Poll::Ready(outcome);
        }
        match waker_index.and_then(|i| wakers.get_mut(i)) {
            Some(registered) => {
                if !registered.will_wake(cx.waker()) {
                    registered.clone_from(cx.waker());
                }
            }
            None => {
                *waker_index = Some(wakers.len());
                wakers.push(cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

/// Resolves when the batch holding one message is acknowledged (committed by a Raft quorum
/// and applied, so it is durable and readable) or has failed.
///
/// The output is the message's partition and offset (`base_offset + index in batch`) — or,
/// for a delayed message, its deliver time — or the error that failed its batch; all messages
/// of a batch share one outcome. Dropping the future does not cancel the message.
#[derive(Debug)]
#[must_use = "a DeliveryFuture does nothing unless awaited; drop it to ignore the outcome"]
pub struct DeliveryFuture {
    slot: Arc<BatchSlot>,
    index: u32,
    partition: PartitionIndex,
    waker_index: Option<usize>,
}

impl DeliveryFuture {
    pub(crate) fn new(slot: Arc<BatchSlot>, index: u32, partition: PartitionIndex) -> Self {
        DeliveryFuture { slot, index, partition, waker_index: None }
    }

    /// The partition the message was assigned to.
    pub fn partition(&self) -> PartitionIndex {
        self.partition
    }
}

impl Future for DeliveryFuture {
    type Output = Result<Delivered, ProducerError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match this.slot.poll_outcome(cx, &mut this.waker_index) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Acked::Appended(base))) => Poll::Ready(Ok(Delivered {
                partition: this.partition,
                offset: Offset(base.0 + u64::from(this.index)),
                deliver_at_ms: None,
            })),
            Poll::Ready(Ok(Acked::Scheduled(at))) => Poll::Ready(Ok(Delivered {
                partition: this.partition,
                offset: Offset(0),
                deliver_at_ms: Some(*at),
            })),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.clone())),
        }
    }
}

/// Resolves when a batch slot has an outcome (used by `flush`).
pub(crate) struct SlotDone {
    slot: Arc<BatchSlot>,
    waker_index: Option<usize>,
}

impl SlotDone {
    pub(crate) fn new(slot: Arc<BatchSlot>) -> Self {
        SlotDone { slot, waker_index: None }
    }
}

impl Future for SlotDone {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.slot.poll_outcome(cx, &mut this.waker_index).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn offsets_are_base_plus_index() {
        let slot = BatchSlot::new();
        let p = PartitionIndex(3);
        let futures: Vec<DeliveryFuture> =
            (0..4).map(|i| DeliveryFuture::new(slot.clone(), i, p)).collect();
        let waiter = tokio::spawn(futures_util::future::join_all(futures));
        tokio::task::yield_now().await;
        assert!(!slot.is_complete());
        slot.complete(Ok(Acked::Appended(Offset(100))));
        let got: Vec<Offset> =
            waiter.await.unwrap().into_iter().map(|r| r.unwrap().offset).collect();
        assert_eq!(got, vec![Offset(100), Offset(101), Offset(102), Offset(103)]);
        // A future created after completion resolves at once, and the first outcome stays.
        slot.complete(Ok(Acked::Appended(Offset(7))));
        let late = DeliveryFuture::new(slot, 9, p).await.unwrap();
        assert_eq!(late, Delivered { partition: p, offset: Offset(109), deliver_at_ms: None });
        assert!(!late.is_scheduled());
    }

    #[tokio::test]
    async fn a_scheduled_batch_reports_its_deliver_time() {
        let slot = BatchSlot::new();
        let p = PartitionIndex(1);
        let a = DeliveryFuture::new(slot.clone(), 0, p);
        let b = DeliveryFuture::new(slot.clone(), 1, p);
        slot.complete(Ok(Acked::Scheduled(1_700_000_000_000)));
        for f in [a, b] {
            let d = f.await.unwrap();
            assert_eq!(d.deliver_at_ms, Some(1_700_000_000_000));
            assert!(d.is_scheduled());
        }
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_message() {
        let slot = BatchSlot::new();
        let a = DeliveryFuture::new(slot.clone(), 0, PartitionIndex(0));
        let b = DeliveryFuture::new(slot.clone(), 1, PartitionIndex(0));
        slot.complete(Err(ProducerError::Closed));
        assert!(matches!(a.await, Err(ProducerError::Closed)));
        assert!(matches!(b.await, Err(ProducerError::Closed)));
    }

    #[tokio::test]
    async fn repolling_does_not_grow_the_waker_list() {
        let slot = BatchSlot::new();
        let mut f = DeliveryFuture::new(slot.clone(), 0, PartitionIndex(0));
        for _ in 0..100 {
            let pending = futures_util::FutureExt::now_or_never(&mut f);
            assert!(pending.is_none());
        }
        assert_eq!(slot.wakers.lock().unwrap().len(), 1);
        slot.complete(Ok(Acked::Appended(Offset(0))));
        assert_eq!(f.await.unwrap().offset, Offset(0));
    }
}
