//! The workload drivers, the same for every system: producer slots that keep a bounded window
//! of messages in flight (two-stage send: enqueue, then await the ack), consumer loops, rate
//! pacing, warm-up and the start/stop coordination. The system adapters (`ferry`, `nats`)
//! only supply a [`MessageSender`] or a stream of payloads.
//!
//! Latency of a produce is measured from just before the first-stage `send()` call — after the
//! slot's in-flight window admitted the message, so waiting for a window slot is excluded, but
//! any back-pressure inside the client's `send()` is included — to the moment the ack future
//! resolves. A separate collector task polls the ack futures, so acks are timed when they
//! arrive even while the sending loop is blocked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, Stream, StreamExt};
use tokio::sync::{mpsc, Barrier, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::payload::{decode_timestamp, Clock, PayloadFactory};
use crate::report::LatencyHistogram;

/// The second stage of a send: resolves when the broker acknowledged (durably stored) it.
pub type AckFuture = BoxFuture<'static, anyhow::Result<()>>;

/// One producer instance of some system.
pub trait MessageSender: Send + Sync + 'static {
    /// First stage: hands `payload` for `partition` to the client (may wait for buffer
    /// space) and returns the ack future.
    fn send(&self, partition: u32, payload: Bytes) -> BoxFuture<'_, anyhow::Result<AckFuture>>;

    /// Flushes and closes the instance once every ack was awaited.
    fn close(self) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this many messages in total.
    Count(u64),
    /// After this long.
    Duration(Duration),
}

/// The shape of a produce run, shared by all slots.
#[derive(Debug, Clone)]
pub struct ProducePlan {
    /// When sending stops.
    pub stop: Stop,
    /// Messages sent and acknowledged, in total, before measuring.
    pub warmup: u64,
    /// Total target rate in messages per second, if paced.
    pub rate: Option<u64>,
    /// Payload bytes per message.
    pub size: usize,
    /// Partitions messages rotate over.
    pub partitions: u32,
    /// Messages each slot may have awaiting an ack.
    pub in_flight_max: usize,
}

/// The `index`-th of `parts` near-equal shares of `total` (the first `total % parts` get one
/// more).
pub fn share_of(total: u64, parts: u64, index: u64) -> u64 {
    if parts == 0 {
        return 0;
    }
    total / parts + u64::from(index < total % parts)
}

/// Which partitions the `index`-th of `parts` readers reads: every `parts`-th, from `index`.
pub fn partitions_for_reader(partitions: u32, parts: u32, index: u32) -> Vec<u32> {
    (0..partitions).filter(|p| parts > 0 && p % parts == index).collect()
}

/// Sends due at a steady rate: message `n` is due `n / rate` seconds after the start.
#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    interval: Duration,
}

impl Pacer {
    /// A pacer for `per_second` messages per second from `start` (`None` if the rate is 0).
    pub fn new(start: Instant, per_second: f64) -> Option<Pacer> {
        if !per_second.is_finite() || per_second <= 0.0 {
            return None;
        }
        Some(Pacer { start, interval: Duration::from_secs_f64(1.0 / per_second) })
    }

    /// When message number `n` (0-based) is due.
    pub fn due(&self, n: u64) -> Instant {
        let offset = self.interval.as_secs_f64() * n as f64;
        self.start + Duration::from_secs_f64(offset)
    }
}

/// When a run of `stop` begun now must end (`None` for a count).
pub fn deadline_of(stop: Stop) -> Option<Instant> {
    match stop {
        Stop::Duration(d) => Some(Instant::now() + d),
        Stop::Count(_) => None,
    }
}

/// Waits until send number `n` (0-based) may start: the count is not reached and, with a
/// pacer, its due time has come. False when the run must stop instead (count reached, or the
/// next due time falls after the deadline).
pub async fn await_turn(
    stop: Stop,
    pacer: Option<&Pacer>,
    deadline: Option<Instant>,
    n: u64,
) -> bool {
    if let Stop::Count(limit) = stop {
        if n >= limit {
            return false;
        }
    }
    if let Some(pacer) = pacer {
        let due = pacer.due(n);
        if deadline.is_some_and(|d| due >= d) {
            return false;
        }
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
    }
    true
}

/// What the produce side of a run measured.
#[derive(Debug, Default)]
pub struct ProduceOutcome {
    /// Messages acknowledged while measuring.
    pub acked: u64,
    /// Sends that failed.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Send→ack latencies.
    pub latency: LatencyHistogram,
    /// From the start of measuring to the last ack of the slowest slot.
    pub elapsed: Duration,
}

impl ProduceOutcome {
    fn absorb(&mut self, other: PumpOutcome) -> anyhow::Result<()> {
        self.acked += other.acked;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency.merge(&other.latency)
    }
}

/// Runs one slot per sender: warm-up, then (all slots together) the measured phase.
///
/// `on_start` runs once, after every slot finished its warm-up and before any measured message
/// is sent, with the instant measuring starts.
///
/// # Errors
/// When a slot's first-stage send fails (the client is unusable) or a task panics.
pub async fn run_producers<S: MessageSender>(
    senders: Vec<S>,
    plan: &ProducePlan,
    on_start: impl FnOnce(Instant),
) -> anyhow::Result<ProduceOutcome> {
    let slots = senders.len() as u64;
    let parties = senders.len() + 1;
    let warmed = Arc::new(Barrier::new(parties));
    let go = Arc::new(Barrier::new(parties));
    let mut tasks = Vec::with_capacity(senders.len());
    for (index, sender) in (0u64..).zip(senders) {
        let slot = SlotPlan {
            index,
            warmup: share_of(plan.warmup, slots, index),
            stop: match plan.stop {
                Stop::Count(n) => Stop::Count(share_of(n, slots, index)),
                Stop::Duration(d) => Stop::Duration(d),
            },
            rate: plan.rate.map(|r| r as f64 / slots as f64),
            size: plan.size,
            partitions: plan.partitions.max(1),
            in_flight_max: plan.in_flight_max.max(1),
        };
        tasks.push(tokio::spawn(producer_slot(sender, slot, warmed.clone(), go.clone())));
    }
    // A slot that fails during warm-up never reaches the barrier; watch for that instead of
    // waiting forever.
    let mut tasks: FuturesUnordered<_> = tasks.into_iter().collect();
    let mut finished = Vec::new();
    tokio::select! {
        _ = warmed.wait() => {}
        Some(early) = tasks.next() => {
            let outcome = early.map_err(|e| anyhow::anyhow!("producer task failed: {e}"))?;
            outcome?;
            anyhow::bail!("a producer slot ended before measuring started");
        }
    }
    let start = Instant::now();
    on_start(start);
    go.wait().await;
    let mut total = ProduceOutcome::default();
    while let Some(joined) = tasks.next().await {
        finished.push(joined.map_err(|e| anyhow::anyhow!("producer task failed: {e}"))??);
    }
    for pump in finished {
        total.elapsed = total.elapsed.max(pump.finished.saturating_duration_since(start));
        total.absorb(pump)?;
    }
    Ok(total)
}

#[derive(Debug, Clone)]
struct SlotPlan {
    index: u64,
    warmup: u64,
    stop: Stop,
    rate: Option<f64>,
    size: usize,
    partitions: u32,
    in_flight_max: usize,
}

async fn producer_slot<S: MessageSender>(
    sender: S,
    slot: SlotPlan,
    warmed: Arc<Barrier>,
    go: Arc<Barrier>,
) -> anyhow::Result<PumpOutcome> {
    let mut payloads = PayloadFactory::new(slot.size, slot.index.wrapping_add(1));
    // Slots start on different partitions so that a partition is not hit by all at once.
    let mut next_partition = u32::try_from(slot.index % u64::from(slot.partitions)).unwrap_or(0);
    if slot.warmup > 0 {
        let warm = Pump { stop: Stop::Count(slot.warmup), pacer: None, record: false };
        warm.run(&sender, &slot, &mut payloads, &mut next_partition).await?;
    }
    warmed.wait().await;
    go.wait().await;
    let start = Instant::now();
    let pacer = slot.rate.and_then(|r| Pacer::new(start, r));
    let pump = Pump { stop: slot.stop, pacer, record: true };
    let outcome = pump.run(&sender, &slot, &mut payloads, &mut next_partition).await;
    let closed = sender.close().await;
    let outcome = outcome?;
    closed?;
    Ok(outcome)
}

/// One phase (warm-up or measured) of one slot.
struct Pump {
    stop: Stop,
    pacer: Option<Pacer>,
    record: bool,
}

/// A message handed to the client whose ack is awaited.
struct InFlight {
    sent_at: Instant,
    ack: AckFuture,
    /// The slot's window place, freed when the ack resolves.
    permit: OwnedSemaphorePermit,
}

#[derive(Debug)]
struct PumpOutcome {
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    latency: LatencyHistogram,
    finished: Instant,
}

impl Pump {
    async fn run<S: MessageSender>(
        &self,
        sender: &S,
        slot: &SlotPlan,
        payloads: &mut PayloadFactory,
        next_partition: &mut u32,
    ) -> anyhow::Result<PumpOutcome> {
        let clock = Clock::global();
        let window = Arc::new(Semaphore::new(slot.in_flight_max));
        let (to_collector, from_sender) = mpsc::channel(slot.in_flight_max);
        let collector = tokio::spawn(collect_acks(from_sender, self.record));
        let deadline = deadline_of(self.stop);
        let mut sent: u64 = 0;
        let mut failure = None;
        loop {
            if !await_turn(self.stop, self.pacer.as_ref(), deadline, sent).await {
                break;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            let permit = window.clone().acquire_owned().await?;
            let sent_at = Instant::now();
            let payload = payloads.next(clock.unix_ns(sent_at));
            let partition = *next_partition;
            *next_partition = (partition + 1) % slot.partitions;
            match sender.send(partition, payload).await {
                Ok(ack) => {
                    if to_collector.send(InFlight { sent_at, ack, permit }).await.is_err() {
                        break; // the collector is gone; its join below says why
                    }
                }
                Err(e) => {
                    failure = Some(e.context("send failed"));
                    break;
                }
            }
            sent += 1;
        }
        drop(to_collector);
        let outcome =
            collector.await.map_err(|e| anyhow::anyhow!("ack collector task failed: {e}"))?;
        match failure {
            Some(e) => Err(e),
            None => Ok(outcome),
        }
    }
}

/// Awaits acks in whatever order they arrive and times each one when it does.
async fn collect_acks(mut incoming: mpsc::Receiver<InFlight>, record: bool) -> PumpOutcome {
    let mut outcome = PumpOutcome {
        acked: 0,
        errors: 0,
        first_error: None,
        latency: LatencyHistogram::new(),
        finished: Instant::now(),
    };
    let mut pending = FuturesUnordered::new();
    let mut incoming_open = true;
    loop {
        tokio::select! {
            biased;
            Some((result, latency)) = pending.next(), if !pending.is_empty() => {
                note_ack(&mut outcome, result, latency, record);
            }
            next = incoming.recv(), if incoming_open => match next {
                Some(in_flight) => pending.push(await_ack(in_flight)),
                None => incoming_open = false,
            },
            else => break,
        }
    }
    outcome.finished = Instant::now();
    outcome
}

async fn await_ack(in_flight: InFlight) -> (anyhow::Result<()>, Duration) {
    let result = in_flight.ack.await;
    let latency = in_flight.sent_at.elapsed();
    drop(in_flight.permit);
    (result, latency)
}

fn note_ack(
    outcome: &mut PumpOutcome,
    result: anyhow::Result<()>,
    latency: Duration,
    record: bool,
) {
    match result {
        Ok(()) => {
            outcome.acked += 1;
            if record {
                outcome.latency.record(latency);
            }
        }
        Err(e) => {
            outcome.errors += 1;
            if outcome.first_error.is_none() {
                outcome.first_error = Some(format!("{e:#}"));
            }
        }
    }
}

/// Progress shared by the consumer loops of one run.
#[derive(Debug)]
pub struct ReadProgress {
    received: AtomicU64,
    target: AtomicU64,
    /// e2e: messages stamped before this (warm-up, earlier runs) are skipped.
    measure_from_ns: AtomicU64,
    reached: CancellationToken,
    reached_at: Mutex<Option<Instant>>,
}

impl ReadProgress {
    /// Progress towards `target` messages (`u64::MAX`: no target yet).
    pub fn new(target: u64) -> Arc<ReadProgress> {
        Arc::new(ReadProgress {
            received: AtomicU64::new(0),
            target: AtomicU64::new(target),
            measure_from_ns: AtomicU64::new(0),
            reached: CancellationToken::new(),
            reached_at: Mutex::new(None),
        })
    }

    /// Messages counted so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Sets (or lowers) the target; completes at once if it is already met.
    pub fn set_target(&self, target: u64) {
        self.target.store(target, Ordering::Relaxed);
        if self.received() >= target {
            self.mark_reached(Instant::now());
        }
    }

    /// Only count payloads stamped at or after `unix_ns` from now on.
    pub fn measure_from(&self, unix_ns: u64) {
        self.measure_from_ns.store(unix_ns, Ordering::Relaxed);
    }

    /// Cancelled once the target is met (or the run is stopped).
    pub fn reached(&self) -> &CancellationToken {
        &self.reached
    }

    /// When the target was met, if it was.
    pub fn reached_at(&self) -> Option<Instant> {
        self.reached_at.lock().ok().and_then(|at| *at)
    }

    /// Counts one message; completes once the target is met.
    pub fn count_one(&self) {
        let total = self.received.fetch_add(1, Ordering::Relaxed) + 1;
        if total >= self.target.load(Ordering::Relaxed) {
            self.mark_reached(Instant::now());
        }
    }

    fn mark_reached(&self, at: Instant) {
        if let Ok(mut reached_at) = self.reached_at.lock() {
            reached_at.get_or_insert(at);
        }
        self.reached.cancel();
    }
}

/// What a consumer loop records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Count every message (consume).
    Throughput,
    /// Count only messages of this run and record send→receipt latency (e2e).
    EndToEnd,
}

/// What one consumer loop measured.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    /// Messages counted.
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
    /// Messages seen but not counted (warm-up, older runs, foreign payloads).
    pub skipped: u64,
    /// Read failures (the loop stops at the first).
    pub errors: u64,
    /// The failure.
    pub first_error: Option<String>,
    /// Send→receipt latencies (e2e).
    pub latency: LatencyHistogram,
}

impl ReadOutcome {
    /// Adds `other` into `self`.
    ///
    /// # Errors
    /// Only if the histograms cannot merge (see [`LatencyHistogram::merge`]).
    pub fn absorb(&mut self, other: ReadOutcome) -> anyhow::Result<()> {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.skipped += other.skipped;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latency.merge(&other.latency)
    }
}

/// Reads payloads from `stream` until it ends, fails, or `progress` says stop.
pub async fn read_loop<St>(
    mut stream: St,
    progress: Arc<ReadProgress>,
    mode: ReadMode,
) -> ReadOutcome
where
    St: Stream<Item = anyhow::Result<Bytes>> + Unpin,
{
    let clock = Clock::global();
    let stop = progress.reached().clone();
    let mut outcome = ReadOutcome::default();
    loop {
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            item = stream.next() => item,
        };
        let payload = match item {
            None => break,
            Some(Ok(payload)) => payload,
            Some(Err(e)) => {
                outcome.errors += 1;
                outcome.first_error = Some(format!("{e:#}"));
                break;
            }
        };
        if mode == ReadMode::EndToEnd {
            let now_ns = clock.now_unix_ns();
            let from_ns = progress.measure_from_ns.load(Ordering::Relaxed);
            match decode_timestamp(&payload) {
                Some(sent_ns) if sent_ns >= from_ns && from_ns > 0 => {
                    outcome.latency.record(Duration::from_nanos(now_ns.saturating_sub(sent_ns)));
                }
                _ => {
                    outcome.skipped += 1;
                    continue;
                }
            }
        }
        outcome.messages += 1;
        outcome.bytes += payload.len() as u64;
        progress.count_one();
    }
    outcome
}

/// Why reading ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// The target was met at this instant.
    Reached(Instant),
    /// The run's duration passed.
    TimeUp(Instant),
    /// Nothing arrived for the idle timeout; the last progress was seen at this instant.
    Idle(Instant),
}

impl ReadEnd {
    /// When reading is considered to have ended.
    pub fn at(&self) -> Instant {
        match self {
            ReadEnd::Reached(at) | ReadEnd::TimeUp(at) | ReadEnd::Idle(at) => *at,
        }
    }
}

/// How often the read watcher checks the deadline and idleness.
const READ_WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// Waits until `progress` meets its target, `deadline` passes, or nothing arrives for
/// `idle_timeout`; then stops every loop reading into `progress`.
pub async fn watch_reads(
    progress: &ReadProgress,
    deadline: Option<Instant>,
    idle_timeout: Duration,
) -> ReadEnd {
    let mut last_count = progress.received();
    let mut last_change = Instant::now();
    let mut tick = tokio::time::interval(READ_WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            _ = progress.reached().cancelled() => {
                break ReadEnd::Reached(progress.reached_at().unwrap_or_else(Instant::now));
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if let Some(d) = deadline {
                    if now >= d {
                        break ReadEnd::TimeUp(now);
                    }
                }
                let count = progress.received();
                if count != last_count {
                    last_count = count;
                    last_change = now;
                } else if now.duration_since(last_change) >= idle_timeout {
                    break ReadEnd::Idle(last_change);
                }
            }
        }
    };
    progress.reached().cancel();
    end
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In a test a failed unwrap is a failed test, which is the point.
mod tests {
    use super::*;
    use futures_util::stream;

    #[test]
    fn shares_add_up() {
        for (total, parts) in [(10, 3), (0, 4), (7, 7), (5, 8), (1_000_003, 16)] {
            let shares: Vec<u64> = (0..parts).map(|i| share_of(total, parts, i)).collect();
            assert_eq!(shares.iter().sum::<u64>(), total);
            let (min, max) = (shares.iter().min().unwrap(), shares.iter().max().unwrap());
            assert!(max - min <= 1);
        }
        assert_eq!(share_of(10, 0, 0), 0);
    }

    #[test]
    fn readers_split_partitions() {
        assert_eq!(partitions_for_reader(4, 2, 0), vec![0, 2]);
        assert_eq!(partitions_for_reader(4, 2, 1), vec![1, 3]);
        assert_eq!(partitions_for_reader(3, 3, 2), vec![2]);
        assert_eq!(partitions_for_reader(2, 4, 3), Vec::<u32>::new());
    }

    #[test]
    fn pacer_spaces_messages() {
        let start = Instant::now();
        let p = Pacer::new(start, 1000.0).unwrap();
        assert_eq!(p.due(0), start);
        assert_eq!(p.due(1000).duration_since(start).as_millis(), 1000);
        assert!(Pacer::new(start, 0.0).is_none());
    }

    /// Acks after `delay`, failing every message whose first byte is 0xFF.
    struct FakeSender {
        delay: Duration,
        sent: Arc<AtomicU64>,
    }

    impl MessageSender for FakeSender {
        fn send(&self, _p: u32, payload: Bytes) -> BoxFuture<'_, anyhow::Result<AckFuture>> {
            self.sent.fetch_add(1, Ordering::Relaxed);
            let delay = self.delay;
            Box::pin(async move {
                let ack: AckFuture = Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    if payload.len() > 8 && payload[8] == 0xFF {
                        anyhow::bail!("rejected");
                    }
                    Ok(())
                });
                Ok(ack)
            })
        }

        fn close(self) -> BoxFuture<'static, anyhow::Result<()>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn producers_send_counts_and_warmup() {
        let sent = Arc::new(AtomicU64::new(0));
        let senders = (0..3)
            .map(|_| FakeSender { delay: Duration::from_millis(2), sent: sent.clone() })
            .collect();
        let plan = ProducePlan {
            stop: Stop::Count(100),
            warmup: 10,
            rate: None,
            size: 8,
            partitions: 4,
            in_flight_max: 8,
        };
        let mut started = None;
        let out = run_producers(senders, &plan, |at| started = Some(at)).await.unwrap();
        assert!(started.is_some());
        assert_eq!(out.acked, 100);
        assert_eq!(out.errors, 0);
        assert_eq!(out.latency.len(), 100);
        assert_eq!(sent.load(Ordering::Relaxed), 110);
        assert!(out.elapsed > Duration::ZERO);
    }

    #[tokio::test]
    async fn producers_stop_after_the_duration() {
        let sent = Arc::new(AtomicU64::new(0));
        let senders = vec![FakeSender { delay: Duration::ZERO, sent: sent.clone() }];
        let plan = ProducePlan {
            stop: Stop::Duration(Duration::from_millis(100)),
            warmup: 0,
            rate: Some(200),
            size: 16,
            partitions: 1,
            in_flight_max: 4,
        };
        let out = run_producers(senders, &plan, |_| {}).await.unwrap();
        // 200/s for 0.1 s is about 20 messages; allow scheduling slack, never a hang.
        assert!(out.acked >= 1 && out.acked <= 25, "acked {}", out.acked);
        assert_eq!(out.acked, sent.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn reads_stop_at_the_target_and_skip_other_runs() {
        let progress = ReadProgress::new(u64::MAX);
        let clock = Clock::global();
        let mut old = PayloadFactory::new(16, 1);
        let old_payload = old.next(clock.now_unix_ns());
        progress.measure_from(clock.now_unix_ns() + 1);
        let mut factory = PayloadFactory::new(16, 2);
        let mut items: Vec<anyhow::Result<Bytes>> =
            vec![Ok(old_payload), Ok(Bytes::from_static(b"x"))];
        for _ in 0..5 {
            items.push(Ok(factory.next(clock.now_unix_ns())));
        }
        progress.set_target(3);
        let out = read_loop(stream::iter(items), progress.clone(), ReadMode::EndToEnd).await;
        assert_eq!(out.messages, 3);
        assert_eq!(out.skipped, 2);
        assert_eq!(out.latency.len(), 3);
        assert_eq!(out.bytes, 48);
        assert!(progress.reached().is_cancelled());
        assert!(progress.reached_at().is_some());
        let end = watch_reads(&progress, None, Duration::from_secs(5)).await;
        assert!(matches!(end, ReadEnd::Reached(_)));
    }

    #[tokio::test]
    async fn read_errors_stop_the_loop_and_idle_reads_end() {
        let progress = ReadProgress::new(10);
        let items: Vec<anyhow::Result<Bytes>> =
            vec![Ok(Bytes::from_static(b"12345678")), Err(anyhow::anyhow!("gone"))];
        let out = read_loop(stream::iter(items), progress.clone(), ReadMode::Throughput).await;
        assert_eq!((out.messages, out.errors), (1, 1));
        assert_eq!(out.first_error.as_deref(), Some("gone"));
        let end = watch_reads(&progress, None, Duration::from_millis(100)).await;
        assert!(matches!(end, ReadEnd::Idle(_)));
        assert!(progress.reached().is_cancelled());
    }
}
