//! Prometheus metrics: one [`Registry`] per broker instance (several brokers can share a test
//! process). Handles are resolved once at start; the hot path only increments.

use std::time::Duration;

use ferry_protocol::ApiKey;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::replication::RaftNumbers;

/// Every metric a broker exports.
pub struct Metrics {
    registry: Registry,
    /// Records accepted by produce (after commit).
    pub messages_in: IntCounter,
    /// Batch bytes accepted by produce.
    pub bytes_in: IntCounter,
    /// Records dropped by idempotent produce as already stored.
    pub produce_duplicates: IntCounter,
    /// Dedup entries forgotten after their window.
    pub dedup_expired: IntCounter,
    /// Records returned by fetch (counted per batch's records).
    pub messages_out: IntCounter,
    /// Batch bytes returned by fetch.
    pub bytes_out: IntCounter,
    request_duration: Vec<Histogram>,
    request_errors: Vec<IntCounter>,
    /// Open client connections.
    pub connections: IntGauge,
    raft_term: IntGauge,
    raft_commit_index: IntGauge,
    raft_applied_index: IntGauge,
    raft_last_log_index: IntGauge,
    raft_has_leader: IntGauge,
    raft_is_leader: IntGauge,
    /// Times the known leader changed.
    pub raft_leader_changes: IntCounter,
    /// Transaction metrics.
    pub txn: TxnMetrics,
    /// Delayed-message metrics.
    pub delayed: DelayedMetrics,
    /// Consumer-group metrics.
    pub groups: GroupMetrics,
    /// Push-subscription metrics.
    pub push: PushMetrics,
}

/// Push-subscription (webhook) metrics. Deliveries are counted by the leader's workers; the
/// per-subscription gauges are set by the leader's supervisor a few times a second.
pub struct PushMetrics {
    /// Attempts by result: `delivered`, `http_error`, `timeout`, `connect_error`, `gone`.
    pub deliveries: IntCounterVec,
    /// Time from sending a request to its answer (or timeout).
    pub duration: Histogram,
    /// Subscriptions disabled by a 410 or with messages waiting for a retry.
    pub subscriptions_failing: IntGauge,
    /// Messages waiting for a retry, by subscription.
    pub retrying: IntGaugeVec,
    /// Messages whose attempts ran out, by subscription.
    pub failed: IntGaugeVec,
    /// Messages not yet attempted, by subscription (high watermark minus cursor, summed).
    pub lag: IntGaugeVec,
}

/// Consumer-group metrics. Labelled by group name: set by the leader's group monitor about
/// twice a second and by produce into retry and dead-letter topics, never per message.
pub struct GroupMetrics {
    lag: IntGaugeVec,
    members: IntGaugeVec,
    in_flight: IntGaugeVec,
    redeliveries: IntCounterVec,
    dead_lettered: IntCounterVec,
}

impl GroupMetrics {
    /// Live members and their unsettled deliveries.
    pub fn set_live(&self, group: &str, members: u32, in_flight: u64) {
        self.members.with_label_values(&[group]).set(i64::from(members));
        self.in_flight
            .with_label_values(&[group])
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
    }

    /// Messages of `topic` the group has not processed.
    pub fn set_lag(&self, group: &str, topic: &str, lag: u64) {
        self.lag.with_label_values(&[group, topic]).set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// Removes the series in `before` that are not in `now` (`(group, "")` stands for the
    /// member and in-flight series of a group, `(group, topic)` for a lag series).
    pub fn forget(
        &self,
        before: &mut std::collections::BTreeSet<(String, String)>,
        now: &std::collections::BTreeSet<(String, String)>,
    ) {
        for (group, topic) in before.difference(now) {
            if topic.is_empty() {
                let _ = self.members.remove_label_values(&[group]);
                let _ = self.in_flight.remove_label_values(&[group]);
            } else {
                let _ = self.lag.remove_label_values(&[group, topic]);
            }
        }
        before.retain(|k| now.contains(k));
    }

    /// Counts records produced into a retry topic (redeliveries) or dead-letter topic.
    pub fn count_produced(&self, topic: &str, records: u32) {
        if let Some((group, _)) = ferry_protocol::group::parse_retry_topic(topic) {
            self.redeliveries.with_label_values(&[group]).inc_by(u64::from(records));
        } else if let Some(group) = ferry_protocol::group::parse_dead_letter_topic(topic) {
            self.dead_lettered.with_label_values(&[group]).inc_by(u64::from(records));
        }
    }
}

/// Delayed-message metrics, handles resolved once.
pub struct DelayedMetrics {
    /// Delayed messages stored and not yet due (every node, from its applied state).
    pub pending: IntGauge,
    /// Delayed messages accepted by produce on this node (as leader).
    pub scheduled: IntCounter,
    /// Delayed messages appended to their partition by this node's deliveries (as leader).
    pub delivered: IntCounter,
    /// Delayed messages dropped when due because their topic had been deleted.
    pub dropped: IntCounter,
}

/// Transaction metrics, handles resolved once.
pub struct TxnMetrics {
    /// Open transactions not parked.
    pub pending: IntGauge,
    /// Parked transactions.
    pub parked: IntGauge,
    /// Commits applied (first decisions only).
    pub commits: IntCounter,
    /// Rollbacks applied (first decisions only).
    pub rollbacks: IntCounter,
    /// Check-backs answered commit.
    pub check_commit: IntCounter,
    /// Check-backs answered rollback.
    pub check_rollback: IntCounter,
    /// Check-backs answered unknown.
    pub check_unknown: IntCounter,
    /// Checks due while no producer of the group was connected (not counted).
    pub check_no_producer: IntCounter,
    /// Due checks held back a tick by `txn_checks_in_flight_per_producer` (not counted).
    pub check_deferred: IntCounter,
    /// Transactions parked after their last check.
    pub check_parked: IntCounter,
    /// Transactions rolled back after their last check (`txn_check_exhausted = rollback`).
    pub check_exhausted_rollback: IntCounter,
    /// Time from half message to decision.
    pub decision_seconds: Histogram,
}

impl Metrics {
    /// Creates and registers every metric in a new registry.
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "ferry_request_duration_seconds",
                "Time from a request's arrival to its response, by operation.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["operation"],
        )?;
        registry.register(Box::new(durations.clone()))?;
        let errors = IntCounterVec::new(
            Opts::new(
                "ferry_request_errors_total",
                "Requests answered with an error, by operation.",
            ),
            &["operation"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        let request_duration =
            ApiKey::ALL.iter().map(|k| durations.with_label_values(&[k.name()])).collect();
        let request_errors =
            ApiKey::ALL.iter().map(|k| errors.with_label_values(&[k.name()])).collect();
        let checks = IntCounterVec::new(
            Opts::new(
                "ferry_txn_checks_total",
                "Transaction check-backs by result: commit, rollback, unknown (answers), \
                 no_producer (none of the group connected; not counted), deferred (held back \
                 a tick by txn_checks_in_flight_per_producer; not counted), parked and \
                 exhausted_rollback (after the last check).",
            ),
            &["result"],
        )?;
        registry.register(Box::new(checks.clone()))?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "ferry_txn_decisions_total",
                "Transactions decided, by decision (commit, rollback); repeats not counted.",
            ),
            &["decision"],
        )?;
        registry.register(Box::new(decisions.clone()))?;
        let decision_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "ferry_txn_decision_seconds",
                "Time from a half message being stored to its commit or rollback.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0, 900.0, 3600.0,
            ]),
        )?;
        registry.register(Box::new(decision_seconds.clone()))?;
        let txn = TxnMetrics {
            pending: gauge(
                "ferry_txn_pending",
                "Open transactions (half messages) awaiting a decision, not parked.",
            )?,
            parked: gauge(
                "ferry_txn_parked",
                "Transactions parked after their last check-back; need an operator.",
            )?,
            commits: decisions.with_label_values(&["commit"]),
            rollbacks: decisions.with_label_values(&["rollback"]),
            check_commit: checks.with_label_values(&["commit"]),
            check_rollback: checks.with_label_values(&["rollback"]),
            check_unknown: checks.with_label_values(&["unknown"]),
            check_no_producer: checks.with_label_values(&["no_producer"]),
            check_deferred: checks.with_label_values(&["deferred"]),
            check_parked: checks.with_label_values(&["parked"]),
            check_exhausted_rollback: checks.with_label_values(&["exhausted_rollback"]),
            decision_seconds,
        };
        let delayed = DelayedMetrics {
            pending: gauge(
                "ferry_delayed_pending",
                "Delayed messages stored, invisible, and not yet due.",
            )?,
            scheduled: counter(
                "ferry_delayed_scheduled_total",
                "Messages produced with a future deliver time (accepted by this node as leader).",
            )?,
            delivered: counter(
                "ferry_delayed_delivered_total",
                "Delayed messages appended to their partition once due (by this node as leader).",
            )?,
            dropped: counter(
                "ferry_delayed_dropped_total",
                "Delayed messages dropped when due because their topic had been deleted.",
            )?,
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let groups = GroupMetrics {
            lag: gauge_vec(
                "ferry_group_lag",
                "Messages a consumer group has not processed, by group and topic (retry topic \
                 included under the topic it retries); leader only.",
                &["group", "topic"],
            )?,
            members: gauge_vec(
                "ferry_group_members",
                "Live members of a consumer group; leader only.",
                &["group"],
            )?,
            in_flight: gauge_vec(
                "ferry_group_in_flight",
                "Deliveries handed to a group's consumers and not yet settled, as reported in \
                 their heartbeats; leader only.",
                &["group"],
            )?,
            redeliveries: counter_vec(
                "ferry_group_redeliveries_total",
                "Messages scheduled for redelivery (nack or ack timeout), by group.",
                &["group"],
            )?,
            dead_lettered: counter_vec(
                "ferry_group_dead_lettered_total",
                "Messages moved to a group's dead-letter topic, by group.",
                &["group"],
            )?,
        };
        let push_duration = Histogram::with_opts(
            HistogramOpts::new(
                "ferry_push_delivery_duration_seconds",
                "Time from sending a webhook request to its answer (or its timeout).",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0,
            ]),
        )?;
        registry.register(Box::new(push_duration.clone()))?;
        let push = PushMetrics {
            deliveries: counter_vec(
                "ferry_push_deliveries_total",
                "Webhook delivery attempts by result: delivered (2xx), http_error (other \
                 status), timeout, connect_error, gone (410: the subscription is disabled).",
                &["result"],
            )?,
            duration: push_duration,
            subscriptions_failing: {
                let g = IntGauge::new(
                    "ferry_push_subscriptions_failing",
                    "Push subscriptions disabled by a 410 answer or with messages waiting for a \
                     retry; leader only.",
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            retrying: gauge_vec(
                "ferry_push_retrying_messages",
                "Messages of a push subscription waiting for a retry; leader only.",
                &["subscription"],
            )?,
            failed: gauge_vec(
                "ferry_push_failed_messages",
                "Messages of a push subscription whose attempts ran out (see ferryctl push \
                 failed); leader only.",
                &["subscription"],
            )?,
            lag: gauge_vec(
                "ferry_push_lag_messages",
                "Messages of a push subscription's topic not yet attempted; leader only.",
                &["subscription"],
            )?,
        };
        Ok(Metrics {
            txn,
            delayed,
            groups,
            push,
            messages_in: counter("ferry_messages_in_total", "Messages appended by produce.")?,
            bytes_in: counter("ferry_bytes_in_total", "Record-batch bytes appended by produce.")?,
            produce_duplicates: counter(
                "ferry_produce_duplicates_total",
                "Records a produce request carried that the partition already held (same \
                 producer id and sequence, or same ferry-dedup-id, within dedup_window_ms); \
                 dropped, not stored again.",
            )?,
            dedup_expired: counter(
                "ferry_dedup_expired_total",
                "Produce dedup entries forgotten after dedup_window_ms.",
            )?,
            messages_out: counter("ferry_messages_out_total", "Messages served by fetch.")?,
            bytes_out: counter("ferry_bytes_out_total", "Record-batch bytes served by fetch.")?,
            request_duration,
            request_errors,
            connections: gauge("ferry_connections", "Open client and peer connections.")?,
            raft_term: gauge("ferry_raft_term", "Current Raft term.")?,
            raft_commit_index: gauge(
                "ferry_raft_commit_index",
                "Highest log index known committed (followers: applied index, a lower bound).",
            )?,
            raft_applied_index: gauge("ferry_raft_applied_index", "Last log index applied.")?,
            raft_last_log_index: gauge("ferry_raft_last_log_index", "Last log index stored.")?,
            raft_has_leader: gauge("ferry_raft_has_leader", "1 when a leader is known.")?,
            raft_is_leader: gauge("ferry_raft_is_leader", "1 when this node is the leader.")?,
            raft_leader_changes: counter(
                "ferry_raft_leader_changes_total",
                "Times the known leader changed.",
            )?,
            registry,
        })
    }

    /// Records one request's duration and outcome.
    pub fn observe(&self, key: ApiKey, elapsed: Duration, failed: bool) {
        let i = key as usize;
        if let Some(h) = self.request_duration.get(i) {
            h.observe(elapsed.as_secs_f64());
        }
        if failed {
            if let Some(c) = self.request_errors.get(i) {
                c.inc();
            }
        }
    }

    /// Copies the Raft numbers into their gauges.
    pub fn set_raft(&self, n: &RaftNumbers) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.raft_term.set(g(n.term));
        self.raft_commit_index.set(g(n.commit_index));
        self.raft_applied_index.set(g(n.applied_index));
        self.raft_last_log_index.set(g(n.last_log_index));
        self.raft_has_leader.set(i64::from(n.leader.is_some()));
        self.raft_is_leader.set(i64::from(n.is_leader));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}
