//! The relay: claims pending rows, publishes them through a [`Publisher`] in per-key order,
//! marks them published, and keeps the table clean. [`Relay::run`] loops until cancelled;
//! [`Relay::run_once`] is one round, for tests and for callers that schedule rounds themselves.
//!
//! One round:
//!
//! ```text
//! claim ≤ batch_size rows ─▶ order check (b(K) per key) ─▶ release blocked rows (hold-off)
//!   ─▶ waves: send ─▶ await acks (renewing the lease) ─▶ next wave ...
//!   ─▶ mark published (one statement per chunk) ─▶ record rejections ─▶ release the rest
//! ```
//!
//! Between rounds the loop refreshes the pending gauges, deletes a chunk of old published
//! rows when due, and waits: not at all after a full claim that made progress, `poll_interval`
//! when idle (woken early by PostgreSQL `NOTIFY`), or an exponential backoff while the database
//! or the broker fails.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus::Registry;
use tokio_util::sync::CancellationToken;

use super::config::{RelayConfig, CLEANUP_CHUNK_ROWS};
use super::db::{OutboxDb, OutboxId};
use super::error::{OutboxError, Result};
use super::metrics::RelayMetrics;
use super::order::{
    distinct_keys, failed_row_retry, plan_waves, split_blocked, Backoff, BLOCKED_HOLD_OFF,
};
use super::publish::{outgoing, Outgoing, PublishError, PublishErrorKind, Publisher};
use super::schema::verify_columns;
use super::store::{ClaimedRow, Store};
use super::wake::{idle, listen, LISTEN_RETRY};
use crate::{Producer, ProducerConfig};

/// First wait after a failed round (database or broker); doubles per failure.
pub const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait between failed rounds.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Wait before trying a failed lease renewal again.
const RENEW_RETRY: Duration = Duration::from_millis(500);

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Rows claimed.
    pub claimed: usize,
    /// The claim returned `batch_size` rows: more are probably waiting.
    pub full: bool,
    /// Rows published and marked.
    pub published: usize,
    /// Rows released because an earlier row of their key was another relay's.
    pub blocked: usize,
    /// Rows whose publish was rejected: `attempts + 1`, `last_error`, retried after a backoff.
    pub rejected: usize,
    /// Rows given back unsent (an earlier row of their key failed, the broker was unreachable,
    /// the round stopped early).
    pub released: usize,
    /// Rows sent but not acknowledged when the shutdown timeout passed: left to their lease.
    pub abandoned: usize,
    /// The broker could not be reached: the relay backs off.
    pub broker_unavailable: bool,
    /// What the publisher said when the broker could not be reached.
    pub broker_error: Option<String>,
    /// A lease renewal failed or found rows gone: the round stopped before its next wave.
    pub lease_lost: bool,
    /// The publisher is closed.
    pub publisher_closed: bool,
}

/// A rejected row, to record at the end of the round.
struct Rejection {
    id: OutboxId,
    attempts: u32,
    error: String,
}

/// What the waves of a round decided, settled in the database at its end.
#[derive(Default)]
struct Settlement {
    published: Vec<OutboxId>,
    rejected: Vec<Rejection>,
    release: Vec<OutboxId>,
    abandoned: Vec<OutboxId>,
    broker_unavailable: bool,
    broker_error: Option<String>,
    publisher_closed: bool,
}

/// The lease this round holds.
struct Lease {
    held: Vec<OutboxId>,
    /// Start of the last successful renewal (or of the claim).
    renewed_at: Instant,
    /// No renewal attempt before this.
    next_attempt: Instant,
    lost: bool,
}

/// Publishes the rows of one outbox table to ferrymq, exactly once per row given the broker's
/// dedup window, in id order per key, with any number of relays side by side.
///
/// Guarantees: a row is marked published only after the publisher acknowledged it; a row is
/// never marked twice; rows of one key are sent in id order, each only after every earlier row
/// of its key was acknowledged (see `outbox::order` for the argument, and its two limits).
/// Every row carries `ferry-dedup-id: <dedup source>:<row id>`, so a row published again after
/// a crash between acknowledgement and mark is dropped by the broker.
#[derive(Debug)]
pub struct Relay<P> {
    store: Store,
    publisher: P,
    config: RelayConfig,
    metrics: RelayMetrics,
    registry: Registry,
    /// One round at a time: the order rule needs "what I hold is what this round claimed".
    round_lock: tokio::sync::Mutex<()>,
    /// A round ended early with rows possibly still leased to us: release them first.
    dirty: AtomicBool,
}

impl Relay<Producer> {
    /// Connects a ferry producer with `producer_config` and builds a relay on it.
    ///
    /// # Errors
    /// Those of [`Relay::new`], and [`OutboxError::Producer`] when the cluster cannot be
    /// reached within the producer's retry deadline.
    pub async fn connect(
        db: OutboxDb,
        producer_config: ProducerConfig,
        config: RelayConfig,
    ) -> Result<Relay<Producer>> {
        config.validate()?;
        let producer = Producer::connect(producer_config).await?;
        Relay::new(db, producer, config)
    }
}

impl<P: Publisher> Relay<P> {
    /// A relay for `config.table` in `db`, publishing through `publisher`.
    ///
    /// # Errors
    /// [`OutboxError::Config`] for a bad setting; [`OutboxError::Metrics`] when the registry
    /// already holds a relay's metrics.
    pub fn new(db: OutboxDb, publisher: P, config: RelayConfig) -> Result<Relay<P>> {
        config.validate()?;
        let registry = config.registry.clone().unwrap_or_default();
        let metrics = RelayMetrics::register(&registry)?;
        Ok(Relay {
            store: Store::new(db, config.table.clone()),
            publisher,
            config,
            metrics,
            registry,
            round_lock: tokio::sync::Mutex::new(()),
            // A relay restarted under the same id may find rows its previous run still
            // holds (killed mid-round): release them before the first claim, as after a round
            // cut short, so "what I hold is what this round claimed" holds from the start.
            dirty: AtomicBool::new(true),
        })
    }

    /// The settings.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// The registry holding the relay's metrics (the configured one, or its own).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The publisher.
    pub fn publisher(&self) -> &P {
        &self.publisher
    }

    /// Rows this relay published and marked since it was built.
    pub fn published_total(&self) -> u64 {
        self.metrics.published_total.get()
    }

    /// Pending rows at the last metrics refresh (every `metrics_interval` while running).
    pub fn pending_rows(&self) -> u64 {
        u64::try_from(self.metrics.pending_rows.get()).unwrap_or(0)
    }

    /// Runs rounds until `cancel` fires, then finishes the wave in flight (up to
    /// `shutdown_timeout`), settles the round and returns.
    ///
    /// Database failures and an unreachable broker do not end it: it backs off (100 ms doubling
    /// to 5 s) and tries again, counting `ferry_outbox_errors_total`.
    ///
    /// # Errors
    /// [`OutboxError::Database`] when the table is missing or lacks a column at start;
    /// [`OutboxError::PublisherClosed`] when the publisher was closed.
    pub async fn run(&self, cancel: CancellationToken) -> Result<()> {
        verify_columns(self.store.db(), self.store.table()).await?;
        tracing::info!(
            relay_id = %self.config.relay_id,
            table = %self.config.table,
            dialect = self.store.db().dialect().name(),
            dedup_source = %self.config.effective_dedup_source(),
            "outbox relay started"
        );
        let mut listener = listen(self.store.db(), &self.config.table, &self.metrics).await;
        let mut next_listen = Instant::now() + LISTEN_RETRY;
        let mut backoff = Backoff::new(RETRY_BACKOFF_MIN, RETRY_BACKOFF_MAX);
        let mut next_metrics = Instant::now();
        let mut next_cleanup = Instant::now();
        while !cancel.is_cancelled() {
            self.housekeeping(&mut next_metrics, &mut next_cleanup).await;
            let postgres = matches!(self.store.db(), OutboxDb::Postgres(_));
            if postgres && listener.is_none() && Instant::now() >= next_listen {
                listener = listen(self.store.db(), &self.config.table, &self.metrics).await;
                next_listen = Instant::now() + LISTEN_RETRY;
            }
            let round = self.round(&cancel).await;
            let backing_off = !matches!(&round, Ok(r) if !r.broker_unavailable);
            let wait = match round {
                Ok(report) if report.publisher_closed => return Err(OutboxError::PublisherClosed),
                Ok(report) if report.broker_unavailable => {
                    let wait = backoff.fail();
                    if !cancel.is_cancelled() {
                        let error = report.broker_error.as_deref().unwrap_or_default();
                        tracing::warn!(
                            retry_in_ms = wait.as_millis() as u64,
                            error,
                            "broker unreachable"
                        );
                    }
                    wait
                }
                Ok(report) => {
                    backoff.reset();
                    let progress = report.published + report.rejected > 0;
                    if report.full && progress {
                        Duration::ZERO
                    } else {
                        self.config.poll_interval
                    }
                }
                Err(e) => {
                    self.metrics.errors_db.inc();
                    let wait = backoff.fail();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "outbox round failed");
                    wait
                }
            };
            // Wait, keeping the gauges and the cleanup on schedule meanwhile. New rows end an
            // idle wait at once, but not a backoff: only time (or cancellation) ends that.
            let resume_at = Instant::now() + wait;
            while !wait.is_zero() {
                let until = resume_at.min(next_metrics).min(next_cleanup);
                let woken = idle(&mut listener, until, &cancel, &self.metrics).await;
                let notified = woken && !backing_off;
                if notified || cancel.is_cancelled() || Instant::now() >= resume_at {
                    break;
                }
                self.housekeeping(&mut next_metrics, &mut next_cleanup).await;
            }
        }
        tracing::info!(relay_id = %self.config.relay_id, published = self.published_total(), "outbox relay stopped");
        Ok(())
    }

    /// One round: claim, check order, publish in waves, settle. Waits for a running round of
    /// this relay to end first.
    ///
    /// # Errors
    /// [`OutboxError::Database`]; rows the round held stay leased until the next round of
    /// this relay releases them (or their lease runs out).
    pub async fn run_once(&self) -> Result<RoundReport> {
        self.round(&CancellationToken::new()).await
    }

    /// Deletes up to one chunk (5000 rows) published more than `retention` ago.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn cleanup_once(&self) -> Result<u64> {
        self.store.delete_published_before(self.config.retention, CLEANUP_CHUNK_ROWS).await
    }

    /// Refreshes `ferry_outbox_pending_rows` and `ferry_outbox_oldest_pending_age_seconds`.
    ///
    /// # Errors
    /// [`OutboxError::Database`].
    pub async fn refresh_metrics(&self) -> Result<()> {
        let (pending, oldest) = self.store.pending_summary().await?;
        self.metrics.set_pending(pending, oldest);
        Ok(())
    }

    async fn housekeeping(&self, next_metrics: &mut Instant, next_cleanup: &mut Instant) {
        let now = Instant::now();
        if now >= *next_metrics {
            *next_metrics = now + self.config.metrics_interval;
            if let Err(e) = self.refresh_metrics().await {
                self.metrics.errors_db.inc();
                tracing::warn!(error = %e, "cannot refresh outbox metrics");
            }
        }
        if now >= *next_cleanup {
            // One chunk per loop turn keeps a big cleanup from delaying publishing.
            *next_cleanup = now + self.config.cleanup_interval;
            match self.cleanup_once().await {
                Ok(deleted) => {
                    if deleted > 0 {
                        tracing::debug!(deleted, "deleted published outbox rows");
                    }
                    if deleted >= CLEANUP_CHUNK_ROWS as u64 {
                        *next_cleanup = now;
                    }
                }
                Err(e) => {
                    self.metrics.errors_db.inc();
                    tracing::warn!(error = %e, "outbox cleanup failed");
                }
            }
        }
    }

    async fn round(&self, cancel: &CancellationToken) -> Result<RoundReport> {
        let _one_round = self.round_lock.lock().await;
        let owner = self.config.relay_id.as_str();
        if self.dirty.load(Ordering::Acquire) {
            let released = self.store.release_all(owner).await?;
            if released > 0 {
                tracing::debug!(released, "released rows left from an interrupted round");
            }
        }
        self.dirty.store(true, Ordering::Release);
        let report = self.claim_and_publish(cancel).await?;
        self.dirty.store(report.abandoned > 0, Ordering::Release);
        Ok(report)
    }

    async fn claim_and_publish(&self, cancel: &CancellationToken) -> Result<RoundReport> {
        let config = &self.config;
        let owner = config.relay_id.as_str();
        let mut report = RoundReport::default();
        if !self.store.has_claimable().await? {
            return Ok(report);
        }
        let claimed_at = Instant::now();
        let claimed = self.store.claim(owner, config.batch_size, config.lease).await?;
        report.claimed = claimed.len();
        report.full = claimed.len() >= config.batch_size;
        if claimed.is_empty() {
            return Ok(report);
        }
        self.metrics.claims_total.inc();
        self.metrics.claimed_rows_total.inc_by(claimed.len() as u64);

        let keys = distinct_keys(&claimed);
        let blockers = if keys.is_empty() {
            Default::default()
        } else {
            let below = OutboxId(claimed.last().map_or(0, |r| r.id.0).saturating_add(1));
            self.store.blockers(owner, &keys, below).await?
        };
        let (publishable, blocked) = split_blocked(claimed, &blockers);
        if !blocked.is_empty() {
            report.blocked = blocked.len();
            self.metrics.blocked_rows_total.inc_by(blocked.len() as u64);
            let ids: Vec<OutboxId> = blocked.iter().map(|r| r.id).collect();
            self.store.release(owner, &ids, BLOCKED_HOLD_OFF).await?;
        }

        let mut lease = Lease {
            held: publishable.iter().map(|r| r.id).collect(),
            renewed_at: claimed_at,
            next_attempt: claimed_at + config.lease / 3,
            lost: false,
        };
        let mut settle = Settlement::default();
        self.publish_waves(publishable, &mut lease, cancel, &mut settle).await;

        if !settle.published.is_empty() {
            self.store.mark_published(&settle.published).await?;
            self.metrics.published_total.inc_by(settle.published.len() as u64);
        }
        for r in &settle.rejected {
            let retry = failed_row_retry(r.attempts.saturating_add(1));
            self.store.record_failure(owner, r.id, &r.error, retry).await?;
        }
        if let Some(first) = settle.rejected.first() {
            // One line per round, not per row: a deleted topic can reject thousands.
            tracing::warn!(
                rows = settle.rejected.len(),
                first_row = first.id.0,
                attempts = first.attempts.saturating_add(1),
                error = %first.error,
                "outbox rows rejected; retrying them later"
            );
        }
        if !settle.release.is_empty() {
            self.store.release(owner, &settle.release, Duration::ZERO).await?;
        }
        report.published = settle.published.len();
        report.rejected = settle.rejected.len();
        report.released = settle.release.len();
        report.abandoned = settle.abandoned.len();
        report.broker_unavailable = settle.broker_unavailable;
        report.broker_error = settle.broker_error;
        report.publisher_closed = settle.publisher_closed;
        report.lease_lost = lease.lost;
        tracing::debug!(?report, "outbox round");
        Ok(report)
    }

    /// Sends the rows wave after wave (see `order::plan_waves`), stopping a key at its first
    /// failure and the whole round on cancellation, a lost lease or an unreachable broker.
    async fn publish_waves(
        &self,
        rows: Vec<ClaimedRow>,
        lease: &mut Lease,
        cancel: &CancellationToken,
        settle: &mut Settlement,
    ) {
        let source = self.config.effective_dedup_source();
        let mut stopped_keys: HashSet<String> = HashSet::new();
        let mut halted = false;
        for wave in plan_waves(rows, self.config.in_flight_per_key) {
            halted = halted || cancel.is_cancelled() || !self.lease_fresh(lease).await;
            if halted {
                settle.release.extend(wave.iter().map(|r| r.id));
                continue;
            }
            let mut sent: Vec<(OutboxId, Option<String>, u32)> = Vec::with_capacity(wave.len());
            let mut batch: Vec<Outgoing> = Vec::with_capacity(wave.len());
            for mut row in wave {
                if row.key.as_ref().is_some_and(|k| stopped_keys.contains(k)) {
                    settle.release.push(row.id);
                    continue;
                }
                match outgoing(&mut row, source) {
                    Ok(out) => {
                        batch.push(out);
                        sent.push((row.id, row.key, row.attempts));
                    }
                    Err(error) => {
                        self.metrics.errors_broker.inc();
                        settle.rejected.push(Rejection {
                            id: row.id,
                            attempts: row.attempts,
                            error,
                        });
                        stopped_keys.extend(row.key);
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            let Some(results) = self.await_wave(batch, lease, cancel).await else {
                tracing::warn!(
                    rows = sent.len(),
                    "shutdown timeout: leaving unacknowledged rows to their lease"
                );
                settle.abandoned.extend(sent.iter().map(|s| s.0));
                halted = true;
                continue;
            };
            let mut results = results.into_iter();
            for (id, key, attempts) in sent {
                let result = results.next().unwrap_or_else(|| {
                    Err(PublishError::new(PublishErrorKind::NotSent, "no outcome reported"))
                });
                let Err(e) = result else {
                    settle.published.push(id);
                    continue;
                };
                stopped_keys.extend(key);
                match e.kind {
                    PublishErrorKind::Rejected => {
                        self.metrics.errors_broker.inc();
                        settle.rejected.push(Rejection { id, attempts, error: e.message });
                    }
                    PublishErrorKind::Unavailable => {
                        self.metrics.errors_broker.inc();
                        settle.broker_unavailable = true;
                        settle.broker_error.get_or_insert(e.message);
                        halted = true;
                        settle.release.push(id);
                    }
                    PublishErrorKind::NotSent => settle.release.push(id),
                    PublishErrorKind::Closed => {
                        settle.publisher_closed = true;
                        halted = true;
                        settle.release.push(id);
                    }
                }
            }
        }
    }

    /// Whether the lease was renewed less than a third of it ago, renewing it now if not.
    async fn lease_fresh(&self, lease: &mut Lease) -> bool {
        if lease.renewed_at.elapsed() < self.config.lease / 3 {
            return !lease.lost;
        }
        self.renew(lease).await;
        !lease.lost && lease.renewed_at.elapsed() < self.config.lease / 3
    }

    async fn renew(&self, lease: &mut Lease) {
        if lease.lost {
            return;
        }
        let started = Instant::now();
        let owner = self.config.relay_id.as_str();
        match self.store.renew(owner, &lease.held, self.config.lease).await {
            Ok(still) if still == lease.held.len() as u64 => {
                lease.renewed_at = started;
                lease.next_attempt = started + self.config.lease / 3;
            }
            Ok(still) => {
                tracing::warn!(
                    held = lease.held.len(),
                    still,
                    "outbox lease lost on some rows; ending the round"
                );
                lease.lost = true;
            }
            Err(e) => {
                self.metrics.errors_db.inc();
                tracing::warn!(error = %e, "cannot renew the outbox lease");
                lease.next_attempt = Instant::now() + RENEW_RETRY;
            }
        }
    }

    /// Publishes one wave and waits for its outcomes, renewing the lease meanwhile. `None`
    /// when cancelled and `shutdown_timeout` passed before the outcomes arrived.
    async fn await_wave(
        &self,
        batch: Vec<Outgoing>,
        lease: &mut Lease,
        cancel: &CancellationToken,
    ) -> Option<Vec<Result<(), PublishError>>> {
        let publishing = self.publisher.publish(batch);
        tokio::pin!(publishing);
        let mut give_up_at: Option<tokio::time::Instant> = None;
        loop {
            let renew_at = tokio::time::Instant::from_std(lease.next_attempt);
            let give_up = give_up_at.unwrap_or_else(|| renew_at + self.config.lease);
            tokio::select! {
                results = &mut publishing => return Some(results),
                () = tokio::time::sleep_until(renew_at), if !lease.lost => self.renew(lease).await,
                () = cancel.cancelled(), if give_up_at.is_none() => {
                    give_up_at = Some(tokio::time::Instant::now() + self.config.shutdown_timeout);
                }
                () = tokio::time::sleep_until(give_up), if give_up_at.is_some() => return None,
            }
        }
    }
}
