//! The `consume --group` driver (ferrymq only): each member of the consumer group settles every
//! delivery it is handed — it acks it, or, for a `--nack-ratio` fraction of first deliveries,
//! nacks it with `--nack-delay` and acks the redelivery when it comes back through the group's
//! retry topic. The ferrymq adapter is in [`crate::ferry`], behind [`GroupDelivery`] so the loop
//! can be tested without a broker. Called by [`crate::run`].
//!
//! ```text
//! member: stream ─▶ delivery ─┬─ attempt 1, picked by --nack-ratio ─▶ nack(--nack-delay) ─┐
//!                             │                       retry topic ◀──────────────────────┘
//!                             └─ otherwise ─▶ ack ─▶ first ack of its message? counted
//! ```
//!
//! Progress counts messages, not deliveries: a message counts once, when a delivery of it is
//! first acked, keyed by the partition and offset it was produced at ([`Processed`]). A nacked
//! message therefore counts only once its redelivery is acked, and one delivered twice (at
//! least once: a rebalance redelivers what was not committed yet) counts once and shows up as
//! a duplicate. The run ends when the wanted number of distinct messages was processed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, Stream, StreamExt};

use crate::txn::rolls_back;
use crate::workload::ReadProgress;

/// One message handed to a group member, to settle once.
pub trait GroupDelivery: Send + 'static {
    /// The partition and offset the message was first produced at (also for a redelivery).
    fn origin(&self) -> (u32, u64);

    /// Delivery attempt: 1 for the first delivery, 2 for the first redelivery, ...
    fn attempt(&self) -> u32;

    /// Payload bytes.
    fn payload_len(&self) -> usize;

    /// Settles it as processed. False when it was settled already (its ack timeout passed or
    /// its partition was revoked): it will be delivered again.
    fn ack(self) -> bool;

    /// Asks for it again after `delay`; resolves once the redelivery is stored.
    fn nack(self, delay: Duration) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// How every member settles its deliveries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemberPlan {
    /// Fraction of first deliveries nacked, 0..=1, spread evenly per member.
    pub nack_ratio: f64,
    /// Delay asked for with each nack.
    pub nack_delay: Duration,
}

/// Which messages were processed already: per partition, a bit per offset from the
/// partition's log start when the run began. Partitions are read by one member at a time, so
/// the per-partition locks are hardly ever contended.
#[derive(Debug)]
pub struct Processed {
    partitions: Vec<Mutex<OffsetBits>>,
}

#[derive(Debug)]
struct OffsetBits {
    base: u64,
    words: Vec<u64>,
}

impl Processed {
    /// Nothing processed yet in partitions whose first offsets are `log_starts`, in partition
    /// order.
    pub fn new(log_starts: impl IntoIterator<Item = u64>) -> Arc<Processed> {
        let partitions = log_starts
            .into_iter()
            .map(|base| Mutex::new(OffsetBits { base, words: Vec::new() }))
            .collect();
        Arc::new(Processed { partitions })
    }

    /// Marks the message at `offset` of `partition` processed; false when it was already. A
    /// message outside what can be tracked (unknown partition, offset before the log start)
    /// counts as new every time.
    pub fn first_time(&self, partition: u32, offset: u64) -> bool {
        let Some(bits) = self.partitions.get(partition as usize) else { return true };
        let mut bits = bits.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(index) = offset.checked_sub(bits.base) else { return true };
        let Ok(word) = usize::try_from(index / 64) else { return true };
        let mask = 1u64 << (index % 64);
        if word >= bits.words.len() {
            bits.words.resize(word + 1, 0);
        }
        let fresh = bits.words[word] & mask == 0;
        bits.words[word] |= mask;
        fresh
    }
}

/// What one member saw and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemberOutcome {
    /// Deliveries handed to this member (first deliveries, redeliveries and duplicates).
    pub deliveries: u64,
    /// Of those, redeliveries (attempt 2 or later).
    pub redeliveries: u64,
    /// First deliveries nacked on purpose.
    pub nacked: u64,
    /// Messages this member was the first to ack: the ones counted.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Acked deliveries of messages processed before (by this or another member).
    pub duplicates: u64,
    /// Acks refused because the delivery was settled already (it comes again).
    pub refused_acks: u64,
    /// Stream failures (the member stops at the first) and failed nacks.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Partitions the member held when it stopped (filled in by the adapter).
    pub partitions: Vec<u32>,
}

impl MemberOutcome {
    fn fail(&mut self, e: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{e:#}"));
        }
    }
}

/// Settles the deliveries of `stream` as `plan` says until it ends, fails, or `progress` says
/// stop; then waits for the nacks already asked for.
pub async fn member_loop<St, D>(
    mut stream: St,
    plan: MemberPlan,
    processed: &Processed,
    progress: &ReadProgress,
) -> MemberOutcome
where
    St: Stream<Item = anyhow::Result<D>> + Unpin,
    D: GroupDelivery,
{
    let stop = progress.reached().clone();
    let mut outcome = MemberOutcome::default();
    // A nack waits for the broker to store the redelivery: keep reading meanwhile.
    let mut nacks = FuturesUnordered::new();
    let mut first_deliveries: u64 = 0;
    loop {
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(nacked) = nacks.next(), if !nacks.is_empty() => {
                if let Err(e) = nacked {
                    outcome.fail(&e);
                }
                continue;
            }
            item = stream.next() => item,
        };
        let delivery = match item {
            None => break,
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => {
                outcome.fail(&e);
                break;
            }
        };
        outcome.deliveries += 1;
        if delivery.attempt() > 1 {
            outcome.redeliveries += 1;
        } else {
            let n = first_deliveries;
            first_deliveries += 1;
            // The same even spread as the txn workload's rollbacks.
            if rolls_back(n, plan.nack_ratio) {
                outcome.nacked += 1;
                nacks.push(delivery.nack(plan.nack_delay));
                continue;
            }
        }
        let (partition, offset) = delivery.origin();
        let len = delivery.payload_len() as u64;
        if !delivery.ack() {
            outcome.refused_acks += 1;
        } else if processed.first_time(partition, offset) {
            outcome.messages += 1;
            outcome.bytes += len;
            progress.count_one();
        } else {
            outcome.duplicates += 1;
        }
    }
    while let Some(nacked) = nacks.next().await {
        if let Err(e) = nacked {
            outcome.fail(&e);
        }
    }
    outcome
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In a test a failed unwrap is a failed test, which is the point.
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use futures_util::stream;

    use super::*;

    /// A delivery that records how it was settled.
    struct FakeDelivery {
        partition: u32,
        offset: u64,
        attempt: u32,
        accept_ack: bool,
        fail_nack: bool,
        log: Arc<Settled>,
    }

    #[derive(Default)]
    struct Settled {
        acks: AtomicU64,
        nacks: AtomicU64,
        delay_ms: AtomicU64,
    }

    impl GroupDelivery for FakeDelivery {
        fn origin(&self) -> (u32, u64) {
            (self.partition, self.offset)
        }

        fn attempt(&self) -> u32 {
            self.attempt
        }

        fn payload_len(&self) -> usize {
            10
        }

        fn ack(self) -> bool {
            self.log.acks.fetch_add(1, Ordering::Relaxed);
            self.accept_ack
        }

        fn nack(self, delay: Duration) -> BoxFuture<'static, anyhow::Result<()>> {
            self.log.nacks.fetch_add(1, Ordering::Relaxed);
            self.log.delay_ms.store(delay.as_millis() as u64, Ordering::Relaxed);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                if self.fail_nack {
                    anyhow::bail!("retry topic gone");
                }
                Ok(())
            })
        }
    }

    fn delivery(log: &Arc<Settled>, partition: u32, offset: u64, attempt: u32) -> FakeDelivery {
        FakeDelivery {
            partition,
            offset,
            attempt,
            accept_ack: true,
            fail_nack: false,
            log: log.clone(),
        }
    }

    fn plan(nack_ratio: f64) -> MemberPlan {
        MemberPlan { nack_ratio, nack_delay: Duration::from_millis(100) }
    }

    #[test]
    fn processed_messages_are_remembered_per_partition() {
        let p = Processed::new([0, 1000]);
        assert!(p.first_time(0, 0));
        assert!(!p.first_time(0, 0));
        assert!(p.first_time(0, 64));
        assert!(p.first_time(0, 63));
        assert!(p.first_time(1, 1000));
        assert!(!p.first_time(1, 1000));
        assert!(p.first_time(1, 5000));
        // The same offset in another partition is another message.
        assert!(p.first_time(1, 1063) && p.first_time(0, 1063));
        // Untrackable: counted as new every time.
        assert!(p.first_time(1, 999) && p.first_time(1, 999));
        assert!(p.first_time(7, 1) && p.first_time(7, 1));
    }

    #[tokio::test]
    async fn every_delivery_is_acked_and_messages_count_once() {
        let log = Arc::new(Settled::default());
        let progress = ReadProgress::new(4);
        let processed = Processed::new([0, 0]);
        let items: Vec<anyhow::Result<FakeDelivery>> = vec![
            Ok(delivery(&log, 0, 0, 1)),
            Ok(delivery(&log, 1, 0, 1)),
            Ok(delivery(&log, 0, 0, 1)), // redelivered after a rebalance
            Ok(FakeDelivery { accept_ack: false, ..delivery(&log, 0, 1, 1) }),
            Ok(delivery(&log, 0, 1, 1)),
            Ok(delivery(&log, 1, 1, 1)),
            Ok(delivery(&log, 1, 2, 1)), // after the target: not read
        ];
        let out = member_loop(stream::iter(items), plan(0.0), &processed, &progress).await;
        assert_eq!(out.deliveries, 6);
        assert_eq!(out.messages, 4);
        assert_eq!(out.bytes, 40);
        assert_eq!(out.duplicates, 1);
        assert_eq!(out.refused_acks, 1);
        assert_eq!((out.nacked, out.redeliveries, out.errors), (0, 0, 0));
        assert_eq!(log.acks.load(Ordering::Relaxed), 6);
        assert!(progress.reached().is_cancelled());
    }

    #[tokio::test]
    async fn a_fraction_of_first_deliveries_is_nacked_and_redeliveries_acked() {
        let log = Arc::new(Settled::default());
        let progress = ReadProgress::new(u64::MAX);
        let processed = Processed::new([0]);
        let mut items: Vec<anyhow::Result<FakeDelivery>> =
            (0..20).map(|o| Ok(delivery(&log, 0, o, 1))).collect();
        // Messages 4, 9, 14 and 19 were nacked (every fifth): their redeliveries.
        items.extend([4, 9, 14, 19].map(|o| Ok(delivery(&log, 0, o, 2))));
        let out = member_loop(stream::iter(items), plan(0.2), &processed, &progress).await;
        assert_eq!(out.deliveries, 24);
        assert_eq!(out.nacked, 4);
        assert_eq!(out.redeliveries, 4);
        assert_eq!(out.messages, 20);
        assert_eq!(out.duplicates, 0);
        assert_eq!(log.nacks.load(Ordering::Relaxed), 4);
        assert_eq!(log.acks.load(Ordering::Relaxed), 20);
        assert_eq!(log.delay_ms.load(Ordering::Relaxed), 100);
        assert_eq!(progress.received(), 20);
    }

    #[tokio::test]
    async fn failed_nacks_count_and_a_stream_error_stops_the_member() {
        let log = Arc::new(Settled::default());
        let progress = ReadProgress::new(u64::MAX);
        let processed = Processed::new([0]);
        let items: Vec<anyhow::Result<FakeDelivery>> = vec![
            Ok(FakeDelivery { fail_nack: true, ..delivery(&log, 0, 0, 1) }),
            Err(anyhow::anyhow!("heartbeat refused")),
            Ok(delivery(&log, 0, 1, 1)),
        ];
        let out = member_loop(stream::iter(items), plan(1.0), &processed, &progress).await;
        assert_eq!((out.deliveries, out.nacked, out.messages), (1, 1, 0));
        assert_eq!(out.errors, 2);
        assert_eq!(out.first_error.as_deref(), Some("heartbeat refused"));
    }
}
