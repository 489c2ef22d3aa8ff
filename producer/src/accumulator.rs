//! Per-partition batching, as an I/O-free state machine: `send` appends records, the
//! partition's sender task asks what to do next (send a batch, wait until a deadline, exit).
//!
//! Order: batches leave in the order they were opened and at most one is in flight per
//! partition, so records reach the broker in `send` order for each partition.
//!
//! A batch carries one deliver time (0: append at once; else a delayed message), so a record
//! whose deliver time differs from the open batch's closes that batch and opens the next:
//! records sharing a deliver time still share batches, and sequences stay dense.
//!
//! Guarded by a short `std::sync::Mutex` in the partition state; nothing here awaits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::record::{Record, RecordBatchBuilder};
use tokio::sync::Semaphore;

use crate::delivery::{Acked, BatchSlot};
use crate::error::ProducerError;

/// First allocation for a batch's buffer; it grows by doubling up to `batch_bytes_max`, so a
/// quiet partition does not pin a full-size buffer.
const BATCH_CAPACITY_INITIAL_BYTES: usize = 16 * 1024;

/// Completes a batch exactly once: stores its outcome for the messages' futures and returns
/// the buffer bytes it held. If dropped unfinished (producer torn down) it fails the batch
/// with [`ProducerError::Closed`], so no `DeliveryFuture` waits forever.
#[derive(Debug)]
pub(crate) struct Completion {
    slot: Arc<BatchSlot>,
    buffer: Arc<Semaphore>,
    reserved_bytes: usize,
    done: bool,
}

impl Completion {
    fn new(buffer: Arc<Semaphore>) -> Self {
        Completion { slot: BatchSlot::new(), buffer, reserved_bytes: 0, done: false }
    }

    /// Publishes the outcome and releases the batch's share of the buffer.
    pub(crate) fn complete(mut self, outcome: Result<Acked, ProducerError>) {
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Result<Acked, ProducerError>) {
        if self.done {
            return;
        }
        self.done = true;
        self.slot.complete(outcome);
        self.buffer.add_permits(std::mem::take(&mut self.reserved_bytes));
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.finish(Err(ProducerError::Closed));
    }
}

/// A batch still taking records.
#[derive(Debug)]
struct OpenBatch {
    builder: RecordBatchBuilder,
    base_sequence: u32,
    /// Deliver time of every record in it (0: at once).
    deliver_at_ms: u64,
    opened_at: Instant,
    completion: Completion,
}

/// A batch ready to go: finished bytes plus the handle that completes its messages.
#[derive(Debug)]
pub(crate) struct SealedBatch {
    /// The batch, CRC included.
    pub(crate) bytes: Bytes,
    /// Records in it.
    pub(crate) record_count: u32,
    /// Sequence number of its first record.
    pub(crate) base_sequence: u32,
    /// When its records become visible, ms since the Unix epoch (0: at once).
    pub(crate) deliver_at_ms: u64,
    /// Completes its messages.
    pub(crate) completion: Completion,
}

/// Where a record went.
#[derive(Debug)]
pub(crate) struct Appended {
    /// The batch's slot.
    pub(crate) slot: Arc<BatchSlot>,
    /// The record's index in its batch.
    pub(crate) index: u32,
    /// The sender task should look again: a batch was opened (start its linger timer) or
    /// sealed (send it).
    pub(crate) wake_sender: bool,
}

/// Why a record was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendRefused {
    /// The partition was dropped from the topic's metadata; route again.
    Retired,
    /// The producer is closed.
    Closed,
}

/// What the sender task should do next.
#[derive(Debug)]
pub(crate) enum Next {
    /// Send this batch and report back with [`Accumulator::batch_done`].
    Send(SealedBatch),
    /// Nothing to send yet: wait for a wake-up, or until this instant (linger end) if given.
    Wait(Option<Instant>),
    /// Nothing left and no more records will come: the task ends.
    Exit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Accepting,
    Retired,
    Closed,
}

/// The batching state of one partition.
#[derive(Debug)]
pub(crate) struct Accumulator {
    producer_id: u64,
    batch_bytes_max: usize,
    linger: Duration,
    buffer: Arc<Semaphore>,
    next_sequence: u32,
    open: Option<OpenBatch>,
    sealed: VecDeque<SealedBatch>,
    /// The slot of the batch being sent, so `flush` can wait for it.
    in_flight: Option<Arc<BatchSlot>>,
    lifecycle: Lifecycle,
}

impl Accumulator {
    /// An empty accumulator. `buffer` is the producer's byte budget; each batch gives back
    /// what its records reserved when it completes.
    pub(crate) fn new(
        producer_id: u64,
        batch_bytes_max: usize,
        linger: Duration,
        buffer: Arc<Semaphore>,
    ) -> Self {
        Accumulator {
            producer_id,
            batch_bytes_max,
            linger,
            buffer,
            next_sequence: 0,
            open: None,
            sealed: VecDeque::new(),
            in_flight: None,
            lifecycle: Lifecycle::Accepting,
        }
    }

    /// Appends `record`, whose encoding takes `size_bytes`, which reserved `reserved_bytes` of
    /// the buffer (returned when its batch completes) and becomes visible at `deliver_at_ms`
    /// (0: at once). Closes the open batch first if the record would push it past
    /// `batch_bytes_max` or has another deliver time, and after it if the batch is now full; a
    /// record larger than `batch_bytes_max` travels alone.
    pub(crate) fn append(
        &mut self,
        record: &Record,
        size_bytes: usize,
        reserved_bytes: usize,
        deliver_at_ms: u64,
        now: Instant,
    ) -> Result<Appended, AppendRefused> {
        match self.lifecycle {
            Lifecycle::Accepting => {}
            Lifecycle::Retired => return Err(AppendRefused::Retired),
            Lifecycle::Closed => return Err(AppendRefused::Closed),
        }
        let mut wake_sender = false;
        if self.open.as_ref().is_some_and(|b| {
            b.builder.len_bytes() + size_bytes > self.batch_bytes_max
                || b.deliver_at_ms != deliver_at_ms
        }) {
            self.seal();
            wake_sender = true;
        }
        let batch = match &mut self.open {
            Some(batch) => batch,
            None => {
                wake_sender = true;
                let capacity =
                    size_bytes.max(BATCH_CAPACITY_INITIAL_BYTES).min(self.batch_bytes_max);
                self.open.insert(OpenBatch {
                    builder: RecordBatchBuilder::new(
                        self.producer_id,
                        self.next_sequence,
                        capacity,
                    ),
                    base_sequence: self.next_sequence,
                    deliver_at_ms,
                    opened_at: now,
                    completion: Completion::new(self.buffer.clone()),
                })
            }
        };
        batch.builder.push(record);
        batch.completion.reserved_bytes += reserved_bytes;
        let index = batch.builder.count() - 1;
        let slot = batch.completion.slot.clone();
        let full = batch.builder.len_bytes() >= self.batch_bytes_max;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        if full {
            self.seal();
            wake_sender = true;
        }
        Ok(Appended { slot, index, wake_sender })
    }

    /// What the sender task should do now. `draining`: the producer is closing, so the open
    /// batch goes at once and the task ends when everything is sent.
    pub(crate) fn next(&mut self, now: Instant, draining: bool) -> Next {
        if self.in_flight.is_some() {
            return Next::Wait(None);
        }
        let hurry = draining || self.lifecycle != Lifecycle::Accepting;
        if self.sealed.is_empty() {
            let due = self.open.as_ref().map(|b| b.opened_at + self.linger);
            match due {
                Some(due) if hurry || now >= due => self.seal(),
                Some(due) => return Next::Wait(Some(due)),
                None if hurry => {
                    if self.lifecycle == Lifecycle::Accepting {
                        self.lifecycle = Lifecycle::Closed;
                    }
                    return Next::Exit;
                }
                None => return Next::Wait(None),
            }
        }
        match self.sealed.pop_front() {
            Some(batch) => {
                self.in_flight = Some(batch.completion.slot.clone());
                Next::Send(batch)
            }
            None => Next::Wait(None),
        }
    }

    /// The batch handed out by [`Accumulator::next`] has completed.
    pub(crate) fn batch_done(&mut self) {
        self.in_flight = None;
    }

    /// Closes the open batch so it goes without waiting for its linger time, and returns the
    /// slot of the last batch not yet completed (older ones complete before it).
    pub(crate) fn flush(&mut self) -> Option<Arc<BatchSlot>> {
        self.seal();
        self.sealed.back().map(|b| b.completion.slot.clone()).or_else(|| self.in_flight.clone())
    }

    /// The partition left the topic's metadata: refuse new records, send what is queued.
    pub(crate) fn retire(&mut self) {
        if self.lifecycle == Lifecycle::Accepting {
            self.lifecycle = Lifecycle::Retired;
        }
    }

    fn seal(&mut self) {
        if let Some(batch) = self.open.take() {
            let record_count = batch.builder.count();
            self.sealed.push_back(SealedBatch {
                bytes: batch.builder.finish(),
                record_count,
                base_sequence: batch.base_sequence,
                deliver_at_ms: batch.deliver_at_ms,
                completion: batch.completion,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::record::{RecordBatch, BATCH_HEADER_BYTES};
    use ferry_protocol::Offset;

    const LINGER: Duration = Duration::from_millis(5);

    fn record(value_len: usize) -> Record {
        Record {
            timestamp_ms: 1,
            key: None,
            headers: vec![],
            value: Bytes::from(vec![7; value_len]),
        }
    }

    fn accumulator(batch_bytes_max: usize) -> (Accumulator, Arc<Semaphore>) {
        let buffer = Arc::new(Semaphore::new(0));
        (Accumulator::new(42, batch_bytes_max, LINGER, buffer.clone()), buffer)
    }

    fn append(acc: &mut Accumulator, r: &Record, now: Instant) -> Appended {
        acc.append(r, r.encoded_len(), r.encoded_len(), 0, now).unwrap()
    }

    fn expect_send(next: Next) -> SealedBatch {
        match next {
            Next::Send(b) => b,
            other => panic!("expected a batch, got {other:?}"),
        }
    }

    #[test]
    fn batch_closes_at_batch_bytes_max() {
        let r = record(100);
        let size = r.encoded_len();
        // Room for the header and exactly three records.
        let (mut acc, _) = accumulator(BATCH_HEADER_BYTES + 3 * size);
        let now = Instant::now();
        let first = append(&mut acc, &r, now);
        assert!(first.wake_sender, "opening a batch wakes the sender (linger timer)");
        assert!(!append(&mut acc, &r, now).wake_sender);
        let third = append(&mut acc, &r, now);
        assert!(third.wake_sender, "the record that fills the batch seals it");
        assert_eq!(third.index, 2);
        // Sealed: goes at once, before the linger time.
        let batch = expect_send(acc.next(now, false));
        assert_eq!(batch.record_count, 3);
        assert_eq!(batch.bytes.len(), BATCH_HEADER_BYTES + 3 * size);
        let parsed = RecordBatch::parse(batch.bytes.clone()).unwrap();
        assert_eq!(parsed.count(), 3);
        assert_eq!(parsed.producer_id(), 42);
        // One in flight at a time.
        let fourth = append(&mut acc, &r, now);
        assert_eq!(fourth.index, 0);
        assert!(matches!(acc.next(now + LINGER, false), Next::Wait(None)));
        acc.batch_done();
        assert_eq!(expect_send(acc.next(now + LINGER, false)).base_sequence, 3);
    }

    #[test]
    fn record_that_does_not_fit_starts_the_next_batch() {
        let small = record(10);
        let big = record(500);
        let (mut acc, _) = accumulator(BATCH_HEADER_BYTES + 400);
        let now = Instant::now();
        append(&mut acc, &small, now);
        let a = append(&mut acc, &big, now);
        assert!(a.wake_sender);
        assert_eq!(a.index, 0, "the big record opened a batch of its own");
        let first = expect_send(acc.next(now, false));
        assert_eq!((first.record_count, first.base_sequence), (1, 0));
        acc.batch_done();
        let second = expect_send(acc.next(now, false));
        assert_eq!((second.record_count, second.base_sequence), (1, 1));
        assert!(second.bytes.len() > BATCH_HEADER_BYTES + 400, "oversize record travels alone");
    }

    #[test]
    fn open_batch_waits_for_linger() {
        let (mut acc, _) = accumulator(64 * 1024);
        let t0 = Instant::now();
        assert!(matches!(acc.next(t0, false), Next::Wait(None)));
        append(&mut acc, &record(1), t0);
        append(&mut acc, &record(1), t0 + Duration::from_millis(1));
        match acc.next(t0 + Duration::from_millis(2), false) {
            Next::Wait(Some(due)) => assert_eq!(due, t0 + LINGER),
            other => panic!("expected a linger wait, got {other:?}"),
        }
        let batch = expect_send(acc.next(t0 + LINGER, false));
        assert_eq!(batch.record_count, 2);
    }

    #[test]
    fn sequences_count_records_across_batches() {
        let r = record(10);
        let (mut acc, _) = accumulator(BATCH_HEADER_BYTES + 2 * r.encoded_len());
        let now = Instant::now();
        for _ in 0..5 {
            append(&mut acc, &r, now);
        }
        let mut bases = vec![];
        loop {
            match acc.next(now, true) {
                Next::Send(b) => {
                    bases.push((b.base_sequence, b.record_count));
                    let parsed = RecordBatch::parse(b.bytes.clone()).unwrap();
                    assert_eq!(parsed.base_sequence(), b.base_sequence);
                    acc.batch_done();
                }
                Next::Exit => break,
                Next::Wait(w) => panic!("draining never waits: {w:?}"),
            }
        }
        assert_eq!(bases, vec![(0, 2), (2, 2), (4, 1)]);
        assert_eq!(acc.append(&r, 1, 1, 0, now).err(), Some(AppendRefused::Closed));
    }

    #[test]
    fn completion_returns_buffer_bytes_once() {
        let r = record(10);
        let (mut acc, buffer) = accumulator(64 * 1024);
        let now = Instant::now();
        let a = append(&mut acc, &r, now);
        append(&mut acc, &r, now);
        let batch = expect_send(acc.next(now + LINGER, false));
        assert_eq!(buffer.available_permits(), 0);
        batch.completion.complete(Ok(Acked::Appended(Offset(10))));
        assert_eq!(buffer.available_permits(), 2 * r.encoded_len());
        assert!(a.slot.is_complete());
    }

    #[test]
    fn dropped_batches_fail_their_messages() {
        let (mut acc, buffer) = accumulator(64 * 1024);
        let a = append(&mut acc, &record(3), Instant::now());
        drop(acc);
        assert!(a.slot.is_complete());
        assert_eq!(buffer.available_permits(), record(3).encoded_len());
    }

    #[test]
    fn flush_seals_and_names_the_last_batch() {
        let (mut acc, _) = accumulator(64 * 1024);
        let now = Instant::now();
        assert!(acc.flush().is_none());
        let a = append(&mut acc, &record(1), now);
        let last = acc.flush().unwrap();
        assert!(Arc::ptr_eq(&last, &a.slot));
        // Sealed by flush: sent before its linger time.
        let batch = expect_send(acc.next(now, false));
        assert!(Arc::ptr_eq(&acc.flush().unwrap(), &a.slot), "in flight still counts");
        batch.completion.complete(Ok(Acked::Appended(Offset(0))));
        acc.batch_done();
        assert!(acc.flush().is_none());
    }

    #[test]
    fn a_new_deliver_time_starts_a_new_batch_and_sequences_stay_dense() {
        let r = record(10);
        let (mut acc, _) = accumulator(64 * 1024);
        let now = Instant::now();
        let size = r.encoded_len();
        let put = |acc: &mut Accumulator, at| acc.append(&r, size, size, at, now).unwrap();
        put(&mut acc, 0);
        let a = put(&mut acc, 5_000);
        assert!(a.wake_sender, "the plain batch was closed");
        assert_eq!(a.index, 0);
        let b = put(&mut acc, 5_000);
        assert_eq!(b.index, 1, "the same deliver time shares the batch");
        put(&mut acc, 0);
        let mut sent = vec![];
        loop {
            match acc.next(now, true) {
                Next::Send(batch) => {
                    sent.push((batch.deliver_at_ms, batch.base_sequence, batch.record_count));
                    acc.batch_done();
                }
                Next::Exit => break,
                Next::Wait(w) => panic!("draining never waits: {w:?}"),
            }
        }
        assert_eq!(sent, vec![(0, 0, 1), (5_000, 1, 2), (0, 3, 1)]);
    }

    #[test]
    fn retired_partition_refuses_and_drains() {
        let (mut acc, _) = accumulator(64 * 1024);
        let now = Instant::now();
        append(&mut acc, &record(1), now);
        acc.retire();
        assert_eq!(acc.append(&record(1), 1, 1, 0, now).err(), Some(AppendRefused::Retired));
        let _batch = expect_send(acc.next(now, false));
        acc.batch_done();
        assert!(matches!(acc.next(now, false), Next::Exit));
        assert_eq!(acc.append(&record(1), 1, 1, 0, now).err(), Some(AppendRefused::Retired));
    }
}
