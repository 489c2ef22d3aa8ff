//! Transaction check-back, leader side: which producers of a group are connected here
//! ([`ProducerRegistry`]) and the coordinator that asks them about transactions whose decision
//! is overdue ([`run_coordinator`]).
//!
//! The coordinator runs on every node and acts only while its node leads. Each tick it reads
//! the timers due now (an index range scan, never a scan of all transactions), sends the
//! check-backs, and records through Raft what it did: check counts and next check times,
//! parked transactions, purges. A new leader therefore resumes where the old one stopped; at
//! worst a check made just before a failover is made once more.
//!
//! Every tenth tick it also expires old produce dedup entries (`crate::dedup`).
//!
//! The same pass delivers due delayed messages (`state::delayed`): one `DeliverDelayed` per
//! tick names them in timer order (due time, then id = production order). Delivery is
//! idempotent in apply, so a new leader proposing again what its predecessor delivered
//! appends nothing twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_protocol::frame::{self, OutFrame, ResponseHeader, FLAG_PUSH};
use ferry_protocol::txn::CheckTransactionPush;
use ferry_protocol::{DecisionOrigin, Encode, ErrorCode, PartitionIndex, TxnId, TxnState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::CheckExhausted;
use crate::handlers::Context;
use crate::state::command::{CheckRecord, Command, CommandResponse, DelayedDue, TxnDue};
use crate::state::keys::{Timer, TimerKind};
use crate::state::txn::TxnRecord;
use crate::state::StateError;

/// How often the coordinator looks for due timers.
pub const COORDINATOR_TICK: Duration = Duration::from_millis(100);

/// The coordinator proposes the expiry of old produce dedup entries every this many ticks.
const DEDUP_EXPIRY_EVERY_TICKS: u64 = 10;

/// Most due timers handled per tick (the rest wait for the next tick).
pub const DUE_TIMERS_PER_TICK_MAX: usize = 1024;

struct GroupMembers {
    sessions: Vec<(u64, mpsc::Sender<OutFrame>)>,
    /// Round-robin position.
    cursor: usize,
}

/// The producer sessions connected to this node, by producer group.
#[derive(Default)]
pub struct ProducerRegistry {
    groups: Mutex<HashMap<String, GroupMembers>>,
    next_session: AtomicU64,
}

/// Keeps a session registered; unregisters it when dropped.
pub struct Registration {
    registry: Arc<ProducerRegistry>,
    group: String,
    session: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Ok(mut groups) = self.registry.groups.lock() else { return };
        if let Some(members) = groups.get_mut(&self.group) {
            members.sessions.retain(|(id, _)| *id != self.session);
            if members.sessions.is_empty() {
                groups.remove(&self.group);
            }
        }
    }
}

impl ProducerRegistry {
    /// Registers a producer session of `group` whose pushes go to `sender` (the session's
    /// bounded writer queue).
    pub fn register(self: &Arc<Self>, group: &str, sender: mpsc::Sender<OutFrame>) -> Registration {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut groups) = self.groups.lock() {
            groups
                .entry(group.to_string())
                .or_insert_with(|| GroupMembers { sessions: Vec::new(), cursor: 0 })
                .sessions
                .push((session, sender));
        }
        Registration { registry: self.clone(), group: group.to_string(), session }
    }

    /// Connected sessions of `group`.
    pub fn live(&self, group: &str) -> usize {
        self.groups.lock().ok().and_then(|g| g.get(group).map(|m| m.sessions.len())).unwrap_or(0)
    }

    /// Connected sessions per group (groups with none are absent).
    pub fn live_counts(&self) -> HashMap<String, usize> {
        self.groups
            .lock()
            .map(|g| g.iter().map(|(name, m)| (name.clone(), m.sessions.len())).collect())
            .unwrap_or_default()
    }

    /// Sends `frame` to one session of `group`, round-robin, skipping sessions whose queue is
    /// full or closed. False when no session took it.
    pub fn push(&self, group: &str, frame: &OutFrame) -> bool {
        let Ok(mut groups) = self.groups.lock() else { return false };
        let Some(members) = groups.get_mut(group) else { return false };
        let n = members.sessions.len();
        for _ in 0..n {
            let i = members.cursor % n;
            members.cursor = members.cursor.wrapping_add(1);
            let (_, sender) = &members.sessions[i];
            if sender.try_send(frame.clone()).is_ok() {
                return true;
            }
        }
        false
    }
}

/// Check-backs sent by this leader and not answered yet, so a producer is never sent more
/// than it can hold (`txn_checks_in_flight_per_producer` per connected instance). A check
/// leaves the window when any `EndTransaction` for its transaction arrives here, or when its
/// next check falls due (the answer was lost, or went to another node).
#[derive(Default)]
pub struct CheckWindow {
    sent: Mutex<HashMap<TxnId, SentCheck>>,
}

struct SentCheck {
    group: String,
    until_ms: u64,
}

impl CheckWindow {
    /// Records a check sent for `txn` of `group`, outstanding until `until_ms` at most.
    pub fn sent(&self, txn: TxnId, group: &str, until_ms: u64) {
        let check = SentCheck { group: group.to_string(), until_ms };
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).insert(txn, check);
    }

    /// An answer (or any decision) for `txn` arrived.
    pub fn answered(&self, txn: TxnId) {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).remove(&txn);
    }

    /// Forgets every check (a new term: this node's earlier checks were answered elsewhere).
    pub fn clear(&self) {
        self.sent.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }

    /// Unanswered checks per group at `now_ms`; expired ones are dropped.
    pub fn in_flight_by_group(&self, now_ms: u64) -> HashMap<String, usize> {
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        sent.retain(|_, c| c.until_ms > now_ms);
        let mut by_group: HashMap<String, usize> = HashMap::new();
        for check in sent.values() {
            *by_group.entry(check.group.clone()).or_default() += 1;
        }
        by_group
    }
}

/// Builds a push frame: a response header with correlation id 0 and the PUSH flag.
pub fn push_frame(body: &impl Encode) -> OutFrame {
    let mut head = BytesMut::with_capacity(frame::RESPONSE_HEADER_BYTES);
    ResponseHeader { correlation_id: 0, error_code: ErrorCode::None, flags: FLAG_PUSH }
        .encode(&mut head);
    OutFrame { head: head.freeze(), body: body.to_bytes() }
}

/// The delay after the `n`-th counted check (0-based), per the backoff schedule.
pub fn backoff_after(schedule: &[Duration], checks_done: u32) -> Duration {
    let last = schedule.len().saturating_sub(1);
    schedule.get((checks_done as usize).min(last)).copied().unwrap_or(Duration::from_secs(60))
}

/// Runs until `shutdown`: on the leader, fires due check, purge and delayed-delivery timers
/// every tick; on every node, keeps the transaction and delayed-message gauges fresh.
pub async fn run_coordinator(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(COORDINATOR_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready_term: Option<u64> = None;
    let mut cursor = Cursor::default();
    let mut expiry = crate::dedup::ExpiryCursor::default();
    let mut ticks_to_expiry = DEDUP_EXPIRY_EVERY_TICKS;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let state = ctx.replica.state();
        let (pending, parked) = state.txn_open_counts();
        ctx.metrics.txn.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
        ctx.metrics.txn.parked.set(i64::try_from(parked).unwrap_or(i64::MAX));
        match state.delayed_pending() {
            Ok(n) => ctx.metrics.delayed.pending.set(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(e) => tracing::warn!(error = %e, "cannot read the delayed-message count"),
        }
        let numbers = ctx.replica.raft_numbers();
        if !numbers.is_leader {
            ready_term = None;
            continue;
        }
        if ready_term != Some(numbers.term) {
            // A new leader first applies everything committed before its term, so it acts on
            // the state its predecessor left, not an older one.
            if let Err(e) = ctx.replica.read_barrier().await {
                tracing::debug!(error = %e.message, "coordinator waits for leadership to settle");
                continue;
            }
            tracing::info!(term = numbers.term, "transaction coordinator active");
            ready_term = Some(numbers.term);
            cursor = Cursor::default();
            expiry.reset();
            ctx.check_window.clear();
        }
        if let Err(e) = tick(&ctx, &mut cursor).await {
            tracing::warn!(error = %e, "transaction coordinator tick failed; retrying");
        }
        ticks_to_expiry -= 1;
        if ticks_to_expiry == 0 {
            ticks_to_expiry = DEDUP_EXPIRY_EVERY_TICKS;
            if let Err(e) = crate::dedup::expire(&ctx, &mut expiry).await {
                tracing::warn!(error = %e, "produce dedup expiry failed; retrying");
            }
        }
    }
}

/// What the coordinator does with a due check timer this tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckPlan {
    /// Not a check to send: another timer kind, a stale timer, a decided transaction, or
    /// one whose checks ran out.
    None,
    /// Send it (the half message is loaded).
    Send,
    /// No producer of the group is connected: recorded as an uncounted check.
    NoProducer,
    /// The group's check budget for this tick is spent: left due, untouched, for a later tick.
    Deferred,
}

/// A due timer with what is needed to act on it.
struct DueItem {
    timer: Timer,
    record: Option<TxnRecord>,
    batch: Option<Bytes>,
    plan: CheckPlan,
}

/// Reads the timers due at `now_ms` from `from` with their transactions, and plans the checks:
/// a group with a connected producer gets at most `budget[group]` sent, and only the half
/// messages of checks that will be sent are read.
async fn load_due(
    ctx: &Context,
    from: Vec<u8>,
    now_ms: u64,
    check_max: u32,
    mut budget: HashMap<String, usize>,
) -> Result<Vec<DueItem>, StateError> {
    let state = ctx.replica.state().clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<Vec<DueItem>, StateError> {
        let timers = state.due_timers_from(&from, now_ms, DUE_TIMERS_PER_TICK_MAX)?;
        let mut out = Vec::with_capacity(timers.len());
        for timer in timers {
            if timer.kind == TimerKind::DelayedDelivery {
                // Apply reads the record itself; its id is no transaction id.
                out.push(DueItem { timer, record: None, batch: None, plan: CheckPlan::None });
                continue;
            }
            let record = state.txn(TxnId(timer.id))?;
            let plan = match &record {
                Some(r)
                    if timer.kind == TimerKind::TxnCheck
                        && r.state == TxnState::Pending
                        && r.next_check_ms == timer.due_ms
                        && r.check_count < check_max =>
                {
                    match budget.get_mut(&r.group) {
                        None => CheckPlan::NoProducer,
                        Some(0) => CheckPlan::Deferred,
                        Some(left) => {
                            *left -= 1;
                            CheckPlan::Send
                        }
                    }
                }
                _ => CheckPlan::None,
            };
            let batch = match (&record, plan) {
                (Some(r), CheckPlan::Send) => Some(state.txn_batch(r)?),
                _ => None,
            };
            out.push(DueItem { timer, record, batch, plan });
        }
        Ok(out)
    })
    .await;
    loaded.map_err(|e| StateError::Corrupt(format!("due-timer reader failed: {e}")))?
}

/// Where the next pass over the due timers starts.
#[derive(Debug, Default)]
struct Cursor {
    /// Timers before this key have been handled (see `SharedState::due_timers_from`).
    at: Vec<u8>,
    /// The first check deferred (window full) since the scan last restarted: the scan comes
    /// back to it once it reached the end of what is due, so deferred checks are retried
    /// without keeping later timers (other groups, delayed messages) waiting behind them.
    rescan: Option<Vec<u8>>,
}

impl Cursor {
    /// Moves on after a pass that read `read` timers (a full page when
    /// `DUE_TIMERS_PER_TICK_MAX`), the last at `last_key`, deferring those from
    /// `first_deferred` on.
    fn advance(
        &mut self,
        read: usize,
        last_key: Option<Vec<u8>>,
        first_deferred: Option<Vec<u8>>,
        now_ms: u64,
    ) {
        if let Some(first) = first_deferred {
            if self.rescan.as_ref().is_none_or(|r| first < *r) {
                self.rescan = Some(first);
            }
        }
        self.at = match last_key {
            Some(last) if read == DUE_TIMERS_PER_TICK_MAX => last,
            _ => self
                .rescan
                .take()
                .unwrap_or_else(|| now_ms.saturating_add(1).to_be_bytes().to_vec()),
        };
    }
}

/// One pass over the due timers from `cursor`; moves the cursor past what it handled.
///
/// Timers added since the last pass may be due before the cursor (a short check timeout
/// stamped before the last pass, applied after it): apply reports the earliest one added and
/// the cursor moves back to it first.
async fn tick(ctx: &Context, cursor: &mut Cursor) -> Result<(), String> {
    let config = &ctx.config;
    let now = ferry_protocol::now_ms();
    if let Some(low) = ctx.replica.state().take_timer_low_ms() {
        let low_key = low.to_be_bytes();
        if low_key.as_slice() < cursor.at.as_slice() {
            cursor.at = low_key.to_vec();
        }
    }
    let per_session = usize::try_from(config.txn_checks_in_flight_per_producer).unwrap_or(1);
    let in_flight = ctx.check_window.in_flight_by_group(now);
    let budget = ctx
        .producers
        .live_counts()
        .into_iter()
        .map(|(group, sessions)| {
            let open = in_flight.get(&group).copied().unwrap_or(0);
            let budget = sessions.saturating_mul(per_session).saturating_sub(open);
            (group, budget)
        })
        .collect();
    let items = load_due(ctx, cursor.at.clone(), now, config.txn_check_max, budget)
        .await
        .map_err(|e| e.to_string())?;
    let read = items.len();
    let last_key = items.last().map(|i| i.timer.key().to_vec());
    if items.is_empty() {
        cursor.advance(read, last_key, None, now);
        return Ok(());
    }
    let mut checks = Vec::new();
    let mut park = Vec::new();
    let mut exhausted = Vec::new();
    let mut purge = Vec::new();
    let mut delayed = Vec::new();
    // The first deferred check: the scan comes back to it (`Cursor::advance`). Everything
    // handled around it has its timer moved or removed by the proposals below, so reading
    // from there again sees only what is still due.
    let mut resume_at: Option<Vec<u8>> = None;
    let mut deferred = 0u64;
    for item in items {
        if item.timer.kind == TimerKind::DelayedDelivery {
            delayed.push(DelayedDue { id: item.timer.id, due_ms: item.timer.due_ms });
            continue;
        }
        let due = TxnDue { txn_id: TxnId(item.timer.id), due_ms: item.timer.due_ms };
        let Some(record) = item.record else { continue };
        match item.timer.kind {
            TimerKind::DelayedDelivery => {}
            TimerKind::TxnPurge => purge.push(due),
            TimerKind::TxnCheck => {
                if record.state != TxnState::Pending || record.next_check_ms != item.timer.due_ms {
                    continue;
                }
                if item.plan == CheckPlan::Deferred {
                    deferred += 1;
                    resume_at.get_or_insert_with(|| item.timer.key().to_vec());
                    continue;
                }
                if record.check_count >= config.txn_check_max {
                    match config.txn_check_exhausted {
                        CheckExhausted::Park => park.push(due),
                        CheckExhausted::Rollback => exhausted.push(due),
                    }
                    continue;
                }
                let push = CheckTransactionPush {
                    txn_id: due.txn_id,
                    group: record.group.clone(),
                    topic: record.topic.clone(),
                    partition: PartitionIndex(record.partition),
                    created_ms: record.created_ms,
                    check_count: record.check_count.saturating_add(1),
                    batch: item.batch.unwrap_or_default(),
                };
                let sent = item.plan == CheckPlan::Send
                    && ctx.producers.push(&record.group, &push_frame(&push));
                let delay = backoff_after(&config.txn_check_backoff, record.check_count);
                let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                let next_check_ms = now.saturating_add(delay_ms);
                if sent {
                    ctx.check_window.sent(due.txn_id, &record.group, next_check_ms);
                    tracing::debug!(
                        txn = due.txn_id.0,
                        check = push.check_count,
                        "check-back sent"
                    );
                } else {
                    ctx.metrics.txn.check_no_producer.inc();
                    tracing::debug!(txn = due.txn_id.0, group = %record.group, "no producer of the group connected; check not counted");
                }
                checks.push(CheckRecord {
                    txn_id: due.txn_id,
                    expected_due_ms: due.due_ms,
                    counted: sent,
                    next_check_ms,
                });
            }
        }
    }
    if !delayed.is_empty() {
        deliver_delayed(ctx, delayed).await?;
    }
    if !checks.is_empty() {
        propose(ctx, Command::RecordChecks { checks }).await?;
    }
    if !park.is_empty() {
        let n = park.len() as u64;
        for t in &park {
            tracing::warn!(txn = t.txn_id.0, "transaction parked after its last check-back; resolve with `ferryctl txn commit|rollback`");
        }
        propose(ctx, Command::ParkTransactions { parked_ms: now, txns: park }).await?;
        ctx.metrics.txn.check_parked.inc_by(n);
    }
    let retention_ms = u64::try_from(config.txn_retention.as_millis()).unwrap_or(u64::MAX);
    for t in exhausted {
        let resp = propose(
            ctx,
            Command::EndTransaction {
                txn_id: t.txn_id,
                commit: false,
                origin: DecisionOrigin::ChecksExhausted,
                decided_ms: now,
                purge_at_ms: now.saturating_add(retention_ms),
            },
        )
        .await?;
        if let CommandResponse::TxnEnded { repeated: false, created_ms, .. } = resp {
            tracing::warn!(txn = t.txn_id.0, "transaction rolled back after its last check-back");
            ctx.metrics.txn.check_exhausted_rollback.inc();
            ctx.metrics.txn.rollbacks.inc();
            observe_decision(ctx, created_ms, now);
        }
    }
    if !purge.is_empty() {
        propose(ctx, Command::PurgeTransactions { txns: purge }).await?;
    }
    if deferred > 0 {
        ctx.metrics.txn.check_deferred.inc_by(deferred);
        tracing::debug!(deferred, "check-backs held back by txn_checks_in_flight_per_producer");
    }
    // Only now: a failed proposal above leaves the cursor where it was, so the timers it did
    // not move are read again next tick.
    cursor.advance(read, last_key, resume_at, now);
    Ok(())
}

/// Appends due delayed messages (in the order given: due time, then production order).
async fn deliver_delayed(ctx: &Context, items: Vec<DelayedDue>) -> Result<(), String> {
    let due = items.len();
    match propose(ctx, Command::DeliverDelayed { items }).await? {
        CommandResponse::DelayedDelivered { batches, records, dropped } => {
            ctx.metrics.delayed.delivered.inc_by(records);
            ctx.metrics.delayed.dropped.inc_by(u64::from(dropped));
            tracing::debug!(due, batches, records, "delayed messages delivered");
            if dropped > 0 {
                tracing::warn!(dropped, "delayed messages dropped: their topic was deleted");
            }
            Ok(())
        }
        CommandResponse::Rejected { code, message } => {
            Err(format!("delayed delivery refused: {code:?}: {message}"))
        }
        other => Err(format!("unexpected delayed delivery result {other:?}")),
    }
}

async fn propose(ctx: &Context, command: Command) -> Result<CommandResponse, String> {
    ctx.replica.propose(command).await.map_err(|e| e.message)
}

/// Records the time from half message to decision.
pub fn observe_decision(ctx: &Context, created_ms: u64, decided_ms: u64) {
    let secs = decided_ms.saturating_sub(created_ms) as f64 / 1000.0;
    ctx.metrics.txn.decision_seconds.observe(secs);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_checks_are_rescanned_after_the_scan_reached_the_end() {
        let key = |n: u64| n.to_be_bytes().to_vec();
        let full = DUE_TIMERS_PER_TICK_MAX;
        let mut c = Cursor::default();
        // A full page with checks deferred from key 10: the scan goes on to the next page.
        c.advance(full, Some(key(50)), Some(key(10)), 1_000);
        assert_eq!(c.at, key(50));
        // Another full page deferring later ones: still onwards, the rescan point stays 10.
        c.advance(full, Some(key(90)), Some(key(60)), 1_000);
        assert_eq!(c.at, key(90));
        // The end of what is due: back to the first deferred check.
        c.advance(3, Some(key(95)), None, 1_000);
        assert_eq!(c.at, key(10));
        assert_eq!(c.rescan, None);
        // Nothing deferred, nothing left: past now.
        c.advance(0, None, None, 1_000);
        assert_eq!(c.at, key(1_001));
    }

    #[test]
    fn the_check_window_counts_unanswered_unexpired_checks_per_group() {
        let window = CheckWindow::default();
        window.sent(TxnId(1), "a", 1_000);
        window.sent(TxnId(2), "a", 2_000);
        window.sent(TxnId(3), "b", 2_000);
        let counts = window.in_flight_by_group(500);
        assert_eq!((counts.get("a"), counts.get("b")), (Some(&2), Some(&1)));
        window.answered(TxnId(3));
        window.answered(TxnId(99));
        let counts = window.in_flight_by_group(1_000);
        assert_eq!((counts.get("a"), counts.get("b")), (Some(&1), None));
        window.sent(TxnId(2), "a", 3_000);
        assert_eq!(window.in_flight_by_group(2_500).get("a"), Some(&1));
        window.clear();
        assert!(window.in_flight_by_group(0).is_empty());
    }

    #[test]
    fn backoff_repeats_its_last_step() {
        let s: Vec<Duration> = [1, 2, 3].into_iter().map(Duration::from_secs).collect();
        assert_eq!(backoff_after(&s, 0), Duration::from_secs(1));
        assert_eq!(backoff_after(&s, 2), Duration::from_secs(3));
        assert_eq!(backoff_after(&s, 40), Duration::from_secs(3));
    }

    #[tokio::test]
    async fn pushes_go_round_robin_to_live_sessions_only() {
        let registry = Arc::new(ProducerRegistry::default());
        let (tx1, mut rx1) = mpsc::channel(4);
        let (tx2, mut rx2) = mpsc::channel(4);
        let r1 = registry.register("g", tx1);
        let r2 = registry.register("g", tx2);
        assert_eq!(registry.live("g"), 2);
        let frame = OutFrame { head: Bytes::from_static(b"h"), body: Bytes::new() };
        assert!(registry.push("g", &frame));
        assert!(registry.push("g", &frame));
        assert!(rx1.try_recv().is_ok() && rx2.try_recv().is_ok());
        drop(r1);
        assert_eq!(registry.live("g"), 1);
        assert!(registry.push("g", &frame));
        assert!(rx2.try_recv().is_ok());
        assert!(!registry.push("other", &frame));
        drop(r2);
        assert_eq!(registry.live("g"), 0);
        assert!(!registry.push("g", &frame));
    }

    #[tokio::test]
    async fn a_full_session_is_skipped() {
        let registry = Arc::new(ProducerRegistry::default());
        let (full, _keep) = mpsc::channel(1);
        let (free, mut rx) = mpsc::channel(4);
        let _a = registry.register("g", full.clone());
        let _b = registry.register("g", free);
        let frame = OutFrame { head: Bytes::from_static(b"h"), body: Bytes::new() };
        full.try_send(frame.clone()).unwrap();
        assert!(registry.push("g", &frame));
        assert!(registry.push("g", &frame));
        assert_eq!(rx.try_recv().iter().count() + rx.try_recv().iter().count(), 2);
    }
}
