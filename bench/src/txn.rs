//! The `txn` workload driver: per producer instance, a slot that keeps up to
//! `--transactions-in-flight` transactions open, each one a task doing half send → local work
//! (a sleep) → commit or rollback. Warm-up, pacing and the start barrier work as for produce
//! ([`crate::workload`]); the ferrymq adapter is in [`crate::ferry`], behind [`TxnSession`] so
//! the driver can be tested without a broker. Called by [`crate::run`].
//!
//! ```text
//! slot: window permit ─▶ spawn ─▶ send_half ─t_half─▶ sleep(local_work) ─▶ commit|rollback ─t_decide─▶
//!       └ whole (committed only): from just before send_half to the commit's ack
//! ```
//!
//! A failed step ends its transaction and counts as one error; a transaction whose half was
//! stored but whose decision failed is left to the broker's check-back. No new transaction
//! starts after a half send failed for good (the client already retried for its whole retry
//! deadline, or the topic or message is wrong: every later one would fail the same way) or
//! after [`TXN_ERRORS_MAX`] failures in the run, so a dead cluster ends the run instead of
//! timing out every remaining transaction one retry deadline at a time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{Barrier, Semaphore};
use tokio_util::task::TaskTracker;

use crate::payload::{Clock, PayloadFactory};
use crate::report::LatencyHistogram;
use crate::workload::{await_turn, deadline_of, share_of, Pacer, Stop};

/// Failed transactions after which the run starts no more.
pub const TXN_ERRORS_MAX: u64 = 100;

/// A failed half send.
#[derive(Debug)]
pub struct HalfSendError {
    /// What went wrong.
    pub error: anyhow::Error,
    /// Whether a later half send may succeed. False stops the run from starting transactions.
    pub retriable: bool,
}

/// One transactional producer instance of the system under test.
pub trait TxnSession: Send + Sync + 'static {
    /// A stored half message awaiting its decision.
    type Open: OpenTxn;

    /// Stores `payload` for `partition` as a half message; resolves once it is stored.
    fn send_half(
        &self,
        partition: u32,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<Self::Open, HalfSendError>>;

    /// Closes the instance once every transaction of the slot ended.
    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// The decision on one open transaction.
pub trait OpenTxn: Send + 'static {
    /// Commits; resolves once the decision is acknowledged.
    fn commit(self) -> BoxFuture<'static, anyhow::Result<()>>;

    /// Rolls back; resolves once the decision is acknowledged.
    fn rollback(self) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// The shape of a txn run, shared by all slots.
#[derive(Debug, Clone)]
pub struct TxnPlan {
    /// When starting transactions stops (a count of transactions, or a duration).
    pub stop: Stop,
    /// Transactions decided, in total, before measuring.
    pub warmup: u64,
    /// Total target rate of transactions started per second, if paced.
    pub rate: Option<u64>,
    /// Payload bytes per message.
    pub size: usize,
    /// Partitions messages rotate over.
    pub partitions: u32,
    /// Transactions each slot keeps open at once.
    pub in_flight_max: usize,
    /// Sleep between the half send and the decision.
    pub local_work: Duration,
    /// Fraction of transactions rolled back, 0..=1.
    pub rollback_ratio: f64,
}

/// Whether transaction number `n` (0-based, per slot) is rolled back, for a rollback fraction
/// `ratio`: spread evenly, so any run of `k` transactions rolls back `k * ratio` of them, ±1.
pub fn rolls_back(n: u64, ratio: f64) -> bool {
    if ratio <= 0.0 {
        return false;
    }
    if ratio >= 1.0 {
        return true;
    }
    ((n + 1) as f64 * ratio).floor() > (n as f64 * ratio).floor()
}

/// What a txn run measured.
#[derive(Debug, Default)]
pub struct TxnOutcome {
    /// Transactions committed while measuring.
    pub committed: u64,
    /// Transactions rolled back while measuring.
    pub rolled_back: u64,
    /// Payload bytes of the committed messages.
    pub committed_bytes: u64,
    /// Transactions that failed (warm-up included).
    pub errors: u64,
    /// The first failure, with the step it failed at.
    pub first_error: Option<String>,
    /// Half send → commit ack of committed transactions.
    pub whole: LatencyHistogram,
    /// Half send → its ack.
    pub half: LatencyHistogram,
    /// Commit → its ack.
    pub commit: LatencyHistogram,
    /// Rollback → its ack.
    pub rollback: LatencyHistogram,
    /// From the start of measuring to the end of the slowest slot's last transaction.
    pub elapsed: Duration,
    /// Set when the run stopped starting transactions because too many failed.
    pub stopped_early: Option<String>,
}

impl TxnOutcome {
    fn absorb(&mut self, other: TxnOutcome) -> anyhow::Result<()> {
        self.committed += other.committed;
        self.rolled_back += other.rolled_back;
        self.committed_bytes += other.committed_bytes;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.whole.merge(&other.whole)?;
        self.half.merge(&other.half)?;
        self.commit.merge(&other.commit)?;
        self.rollback.merge(&other.rollback)
    }
}

/// Runs one slot per session: warm-up, then (all slots together) the measured phase; closes
/// every session.
///
/// # Errors
/// When a slot's task panics or loses track of its transactions, or a session fails to close.
/// Failed transactions are counted in the outcome instead.
pub async fn run_transactions<S: TxnSession>(
    sessions: Vec<S>,
    plan: &TxnPlan,
) -> anyhow::Result<TxnOutcome> {
    let slots = sessions.len() as u64;
    let parties = sessions.len() + 1;
    let warmed = Arc::new(Barrier::new(parties));
    let go = Arc::new(Barrier::new(parties));
    let halt = Arc::new(Halt::default());
    let mut tasks = FuturesUnordered::new();
    for (index, session) in (0u64..).zip(sessions) {
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
            local_work: plan.local_work,
            rollback_ratio: plan.rollback_ratio,
        };
        let ctx = SlotContext {
            session: Arc::new(session),
            halt: halt.clone(),
            warmed: warmed.clone(),
            go: go.clone(),
        };
        tasks.push(tokio::spawn(txn_slot(ctx, slot)));
    }
    // A slot never reaches the barrier if its task panics during warm-up; watch for that
    // instead of waiting forever.
    tokio::select! {
        _ = warmed.wait() => {}
        Some(early) = tasks.next() => {
            early.map_err(|e| anyhow::anyhow!("transaction slot failed: {e}"))??;
            anyhow::bail!("a transaction slot ended before measuring started");
        }
    }
    let start = Instant::now();
    go.wait().await;
    let mut total = TxnOutcome::default();
    while let Some(joined) = tasks.next().await {
        let (outcome, finished) =
            joined.map_err(|e| anyhow::anyhow!("transaction slot failed: {e}"))??;
        total.elapsed = total.elapsed.max(finished.saturating_duration_since(start));
        total.absorb(outcome)?;
    }
    total.stopped_early = halt.reason();
    Ok(total)
}

/// Failed transactions of the whole run and, once no new one may start, why.
#[derive(Debug, Default)]
struct Halt {
    failures: AtomicU64,
    reason: OnceLock<String>,
}

impl Halt {
    /// Counts one failed transaction; `final_half_send` when its half send failed for good.
    fn note_failure(&self, final_half_send: bool) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if final_half_send {
            let _ = self.reason.set(
                "stopped starting transactions: a half send failed and retrying cannot help".into(),
            );
        } else if failures >= TXN_ERRORS_MAX {
            let _ = self
                .reason
                .set(format!("stopped starting transactions after {TXN_ERRORS_MAX} failed"));
        }
    }

    fn is_halted(&self) -> bool {
        self.reason.get().is_some()
    }

    fn reason(&self) -> Option<String> {
        self.reason.get().cloned()
    }
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
    local_work: Duration,
    rollback_ratio: f64,
}

struct SlotContext<S> {
    session: Arc<S>,
    /// Failures of the whole run (all slots), and whether to stop starting transactions.
    halt: Arc<Halt>,
    warmed: Arc<Barrier>,
    go: Arc<Barrier>,
}

/// One slot: warm-up, the two barriers, the measured phase, close. Returns the measured
/// outcome (warm-up failures folded into its error count) and when its last transaction ended.
async fn txn_slot<S: TxnSession>(
    ctx: SlotContext<S>,
    slot: SlotPlan,
) -> anyhow::Result<(TxnOutcome, Instant)> {
    let mut payloads = PayloadFactory::new(slot.size, slot.index.wrapping_add(1));
    // Slots start on different partitions so that a partition is not hit by all at once.
    let mut next_partition = u32::try_from(slot.index % u64::from(slot.partitions)).unwrap_or(0);
    let mut warm = None;
    if slot.warmup > 0 {
        let phase = Phase { stop: Stop::Count(slot.warmup), pacer: None, record: false };
        warm = Some(phase.run(&ctx, &slot, &mut payloads, &mut next_partition).await);
    }
    ctx.warmed.wait().await;
    ctx.go.wait().await;
    let start = Instant::now();
    let pacer = slot.rate.and_then(|r| Pacer::new(start, r));
    let phase = Phase { stop: slot.stop, pacer, record: true };
    let measured = phase.run(&ctx, &slot, &mut payloads, &mut next_partition).await;
    let finished = Instant::now();
    let closed = ctx.session.close().await;
    let mut outcome = measured?;
    if let Some(warm) = warm {
        let warm = warm?;
        outcome.errors += warm.errors;
        outcome.first_error = warm.first_error.or(outcome.first_error);
    }
    closed?;
    Ok((outcome, finished))
}

/// One phase (warm-up or measured) of one slot.
struct Phase {
    stop: Stop,
    pacer: Option<Pacer>,
    /// Whether successes are counted and timed (failures always are).
    record: bool,
}

impl Phase {
    async fn run<S: TxnSession>(
        &self,
        ctx: &SlotContext<S>,
        slot: &SlotPlan,
        payloads: &mut PayloadFactory,
        next_partition: &mut u32,
    ) -> anyhow::Result<TxnOutcome> {
        let clock = Clock::global();
        let window = Arc::new(Semaphore::new(slot.in_flight_max));
        let stats = Arc::new(Mutex::new(TxnOutcome::default()));
        let ended = Arc::new(AtomicU64::new(0));
        let tracker = TaskTracker::new();
        let deadline = deadline_of(self.stop);
        let mut started: u64 = 0;
        loop {
            if !await_turn(self.stop, self.pacer.as_ref(), deadline, started).await {
                break;
            }
            let permit = window.clone().acquire_owned().await?;
            if deadline.is_some_and(|d| Instant::now() >= d) || ctx.halt.is_halted() {
                break;
            }
            let begun_at = Instant::now();
            let payload = payloads.next(clock.unix_ns(begun_at));
            let partition = *next_partition;
            *next_partition = (partition + 1) % slot.partitions;
            let steps = Steps {
                partition,
                payload,
                local_work: slot.local_work,
                rollback: rolls_back(started, slot.rollback_ratio),
            };
            let session = ctx.session.clone();
            let stats = stats.clone();
            let ended = ended.clone();
            let halt = ctx.halt.clone();
            let record = self.record;
            tracker.spawn(async move {
                let sample = steps.run(&*session).await;
                if sample.result.is_err() {
                    halt.note_failure(sample.final_half_send);
                }
                sample.note(&mut stats.lock().unwrap_or_else(PoisonError::into_inner), record);
                ended.fetch_add(1, Ordering::Relaxed);
                drop(permit);
            });
            started += 1;
        }
        tracker.close();
        tracker.wait().await;
        let ended = ended.load(Ordering::Relaxed);
        anyhow::ensure!(
            ended == started,
            "{} of {started} transaction tasks ended without a result (panicked)",
            started - ended
        );
        let outcome = std::mem::take(&mut *stats.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(outcome)
    }
}

/// What one transaction does.
struct Steps {
    partition: u32,
    payload: Bytes,
    local_work: Duration,
    rollback: bool,
}

/// How one transaction went.
struct Sample {
    /// Which decision was made, or the failure (with its step).
    result: Result<Decided, String>,
    bytes: u64,
    /// Half send → its ack, when the half was stored.
    half: Option<Duration>,
    /// Decision → its ack, when it was acknowledged.
    decide: Option<Duration>,
    /// Half send → decision ack, when it was acknowledged.
    whole: Option<Duration>,
    /// The half send failed and retrying cannot help.
    final_half_send: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Committed,
    RolledBack,
}

impl Steps {
    async fn run<S: TxnSession>(self, session: &S) -> Sample {
        let bytes = self.payload.len() as u64;
        let mut sample = Sample {
            result: Ok(Decided::Committed),
            bytes,
            half: None,
            decide: None,
            whole: None,
            final_half_send: false,
        };
        let begun_at = Instant::now();
        let open = match session.send_half(self.partition, self.payload).await {
            Ok(open) => open,
            Err(e) => {
                sample.result = Err(format!("half send: {:#}", e.error));
                sample.final_half_send = !e.retriable;
                return sample;
            }
        };
        sample.half = Some(begun_at.elapsed());
        if !self.local_work.is_zero() {
            tokio::time::sleep(self.local_work).await;
        }
        let deciding_at = Instant::now();
        let (decision, outcome, step) = if self.rollback {
            (Decided::RolledBack, open.rollback().await, "rollback")
        } else {
            (Decided::Committed, open.commit().await, "commit")
        };
        let now = Instant::now();
        match outcome {
            Ok(()) => {
                sample.decide = Some(now.saturating_duration_since(deciding_at));
                sample.whole = Some(now.saturating_duration_since(begun_at));
                sample.result = Ok(decision);
            }
            Err(e) => sample.result = Err(format!("{step}: {e:#}")),
        }
        sample
    }
}

impl Sample {
    /// Adds this transaction to `stats`: failures always, successes when `record`.
    fn note(self, stats: &mut TxnOutcome, record: bool) {
        match self.result {
            Err(e) => {
                stats.errors += 1;
                stats.first_error.get_or_insert(e);
            }
            Ok(_) if !record => {}
            Ok(decided) => {
                if let Some(half) = self.half {
                    stats.half.record(half);
                }
                match decided {
                    Decided::Committed => {
                        stats.committed += 1;
                        stats.committed_bytes += self.bytes;
                        if let Some(d) = self.decide {
                            stats.commit.record(d);
                        }
                        if let Some(w) = self.whole {
                            stats.whole.record(w);
                        }
                    }
                    Decided::RolledBack => {
                        stats.rolled_back += 1;
                        if let Some(d) = self.decide {
                            stats.rollback.record(d);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In a test a failed unwrap is a failed test, which is the point.
mod tests {
    use super::*;

    #[test]
    fn rollbacks_are_spread_evenly() {
        let count = |ratio: f64, n: u64| (0..n).filter(|&i| rolls_back(i, ratio)).count() as u64;
        assert_eq!(count(0.0, 1000), 0);
        assert_eq!(count(1.0, 1000), 1000);
        assert_eq!(count(0.1, 1000), 100);
        assert_eq!(count(0.25, 8), 2);
        assert_eq!(count(1.0 / 3.0, 300), 100);
        // Evenly: no window of 10 at 10% holds more than 2.
        for start in 0..100 {
            assert!((start..start + 10).filter(|&i| rolls_back(i, 0.1)).count() <= 2);
        }
        assert!(!rolls_back(0, 0.1) && rolls_back(9, 0.1));
    }

    /// Stores halves and acknowledges decisions after `delay`; every decision fails when
    /// `fail_decisions`, every half send (for good) when `fail_halves`. Tracks how many
    /// transactions are open at once.
    struct FakeSession {
        delay: Duration,
        fail_decisions: bool,
        fail_halves: bool,
        halves: Arc<AtomicU64>,
        commits: Arc<AtomicU64>,
        rollbacks: Arc<AtomicU64>,
        open_now: Arc<AtomicU64>,
        open_max: Arc<AtomicU64>,
        closed: Arc<AtomicU64>,
    }

    struct FakeOpen {
        delay: Duration,
        fail: bool,
        commits: Arc<AtomicU64>,
        rollbacks: Arc<AtomicU64>,
        open_now: Arc<AtomicU64>,
    }

    impl TxnSession for FakeSession {
        type Open = FakeOpen;

        fn send_half(
            &self,
            _p: u32,
            _payload: Bytes,
        ) -> BoxFuture<'_, Result<FakeOpen, HalfSendError>> {
            Box::pin(async move {
                self.halves.fetch_add(1, Ordering::Relaxed);
                if self.fail_halves {
                    tokio::time::sleep(self.delay).await;
                    let error = anyhow::anyhow!("cluster unreachable");
                    return Err(HalfSendError { error, retriable: false });
                }
                let now = self.open_now.fetch_add(1, Ordering::Relaxed) + 1;
                self.open_max.fetch_max(now, Ordering::Relaxed);
                tokio::time::sleep(self.delay).await;
                Ok(FakeOpen {
                    delay: self.delay,
                    fail: self.fail_decisions,
                    commits: self.commits.clone(),
                    rollbacks: self.rollbacks.clone(),
                    open_now: self.open_now.clone(),
                })
            })
        }

        fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
            self.closed.fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Ok(()) })
        }
    }

    impl FakeOpen {
        fn decide(self, counter: Arc<AtomicU64>) -> BoxFuture<'static, anyhow::Result<()>> {
            Box::pin(async move {
                tokio::time::sleep(self.delay).await;
                self.open_now.fetch_sub(1, Ordering::Relaxed);
                anyhow::ensure!(!self.fail, "broker said no");
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(())
            })
        }
    }

    impl OpenTxn for FakeOpen {
        fn commit(self) -> BoxFuture<'static, anyhow::Result<()>> {
            let c = self.commits.clone();
            self.decide(c)
        }

        fn rollback(self) -> BoxFuture<'static, anyhow::Result<()>> {
            let c = self.rollbacks.clone();
            self.decide(c)
        }
    }

    #[derive(Default, Clone)]
    struct Counters {
        halves: Arc<AtomicU64>,
        commits: Arc<AtomicU64>,
        rollbacks: Arc<AtomicU64>,
        open_max: Arc<AtomicU64>,
        closed: Arc<AtomicU64>,
    }

    fn sessions(n: usize, delay: Duration, fail_decisions: bool, c: &Counters) -> Vec<FakeSession> {
        (0..n)
            .map(|_| FakeSession {
                delay,
                fail_decisions,
                fail_halves: false,
                halves: c.halves.clone(),
                commits: c.commits.clone(),
                rollbacks: c.rollbacks.clone(),
                open_now: Arc::new(AtomicU64::new(0)),
                open_max: c.open_max.clone(),
                closed: c.closed.clone(),
            })
            .collect()
    }

    fn plan(stop: Stop) -> TxnPlan {
        TxnPlan {
            stop,
            warmup: 0,
            rate: None,
            size: 64,
            partitions: 4,
            in_flight_max: 8,
            local_work: Duration::ZERO,
            rollback_ratio: 0.0,
        }
    }

    #[tokio::test]
    async fn transactions_commit_roll_back_and_warm_up() {
        let c = Counters::default();
        let mut p = plan(Stop::Count(200));
        p.warmup = 20;
        p.rollback_ratio = 0.25;
        p.local_work = Duration::from_millis(1);
        let out =
            run_transactions(sessions(2, Duration::from_millis(1), false, &c), &p).await.unwrap();
        assert_eq!(out.errors, 0, "{:?}", out.first_error);
        assert_eq!(out.committed + out.rolled_back, 200);
        assert_eq!(out.rolled_back, 50);
        assert_eq!(out.committed_bytes, out.committed * 64);
        assert_eq!(out.whole.len(), out.committed);
        assert_eq!(out.commit.len(), out.committed);
        assert_eq!(out.rollback.len(), 50);
        assert_eq!(out.half.len(), 200);
        assert_eq!(c.halves.load(Ordering::Relaxed), 220);
        assert_eq!(c.commits.load(Ordering::Relaxed) + c.rollbacks.load(Ordering::Relaxed), 220);
        assert!(c.open_max.load(Ordering::Relaxed) <= 8, "window exceeded");
        assert_eq!(c.closed.load(Ordering::Relaxed), 2);
        // Local work is inside the whole transaction.
        assert!(out.whole.summary().unwrap().p50 >= 3.0);
        assert!(out.elapsed > Duration::ZERO);
        assert!(out.stopped_early.is_none());
    }

    #[tokio::test]
    async fn failures_are_counted_and_stop_the_run() {
        let c = Counters::default();
        let out =
            run_transactions(sessions(1, Duration::ZERO, true, &c), &plan(Stop::Count(10_000)))
                .await
                .unwrap();
        assert_eq!(out.committed, 0);
        // The bound stops new starts; those already open (the window) still end.
        assert!(out.errors >= TXN_ERRORS_MAX && out.errors < TXN_ERRORS_MAX + 8, "{}", out.errors);
        assert_eq!(out.first_error.as_deref(), Some("commit: broker said no"));
        assert_eq!(
            out.stopped_early.as_deref(),
            Some("stopped starting transactions after 100 failed")
        );
    }

    #[tokio::test]
    async fn a_final_half_send_failure_stops_the_run_at_once() {
        let c = Counters::default();
        let mut broken = sessions(2, Duration::from_millis(5), false, &c);
        for s in &mut broken {
            s.fail_halves = true;
        }
        let mut p = plan(Stop::Count(10_000));
        p.warmup = 4;
        let out = run_transactions(broken, &p).await.unwrap();
        // Warm-up (2 per slot) fails and halts; the measured phase starts nothing.
        assert_eq!(out.errors, 4, "{out:?}");
        assert_eq!(c.halves.load(Ordering::Relaxed), 4);
        assert_eq!(out.committed, 0);
        assert_eq!(out.first_error.as_deref(), Some("half send: cluster unreachable"));
        assert!(out.stopped_early.unwrap().contains("retrying cannot help"));
    }

    #[tokio::test]
    async fn a_duration_run_stops() {
        let c = Counters::default();
        let mut p = plan(Stop::Duration(Duration::from_millis(100)));
        p.rate = Some(200);
        let out = run_transactions(sessions(1, Duration::ZERO, false, &c), &p).await.unwrap();
        assert!(out.committed >= 1 && out.committed <= 25, "committed {}", out.committed);
    }
}
