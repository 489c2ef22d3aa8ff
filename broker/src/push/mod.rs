//! Push subscriptions, leader side: a supervisor runs one [`worker`] per active subscription
//! while this node leads, and the reconciliation API ([`api`]) serves receivers on the admin
//! listener. What a worker must not forget (attempt results, positions) goes through Raft
//! first, so a new leader's workers resume where the old ones stopped; only requests in flight
//! at the change (sent, result not yet committed) are sent again.

pub mod api;
pub mod sign;
pub mod worker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::push::{PartitionProgress, SubscriptionStatus};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::handlers::Context;
use crate::state::push::SubRecord;

/// How often the supervisor compares running workers with the subscriptions.
const SUPERVISOR_TICK: Duration = Duration::from_millis(200);

/// How long a stopping broker waits for its workers' in-flight requests.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

struct Running {
    sub_id: u64,
    /// Creation time of the topic the worker reads: a topic deleted and created again under
    /// the same name has new partitions, so its worker starts over.
    topic_created_ms: u64,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Runs until `shutdown`: starts and stops workers as leadership and subscriptions change.
pub async fn run_supervisor(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut ready_term: Option<u64> = None;
    let mut interval = tokio::time::interval(SUPERVISOR_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        // Finished workers (drained after a stop, or ended on an error) leave the map.
        running.retain(|_, r| !r.task.is_finished());
        let numbers = ctx.replica.raft_numbers();
        if !numbers.is_leader {
            if ready_term.take().is_some() {
                tracing::info!("push delivery stops: not the leader");
                ctx.metrics.push.subscriptions_failing.set(0);
                ctx.metrics.push.retrying.reset();
                ctx.metrics.push.failed.reset();
                ctx.metrics.push.lag.reset();
            }
            for r in running.values() {
                r.stop.cancel();
            }
            continue;
        }
        if ready_term != Some(numbers.term) {
            // Act on everything committed before this term, not an older state.
            if let Err(e) = ctx.replica.read_barrier().await {
                tracing::debug!(error = %e.message, "push supervisor waits for leadership");
                continue;
            }
            tracing::info!(term = numbers.term, "push delivery active");
            ready_term = Some(numbers.term);
        }
        let state = ctx.replica.state();
        let subs = state.push_subscriptions();
        let mut failing = 0;
        // Deleted subscriptions lose their series.
        ctx.metrics.push.retrying.reset();
        ctx.metrics.push.failed.reset();
        ctx.metrics.push.lag.reset();
        for sub in &subs {
            let topic_created_ms = state
                .topics(std::slice::from_ref(&sub.topic))
                .ok()
                .and_then(|t| t.first().map(|t| t.created_ms));
            let wanted = sub.status == SubscriptionStatus::Active && topic_created_ms.is_some();
            let topic_created_ms = topic_created_ms.unwrap_or(0);
            if sub.status == SubscriptionStatus::Disabled || sub.retrying > 0 {
                failing += 1;
            }
            publish_gauges(&ctx, sub);
            match running.get(&sub.name) {
                Some(r)
                    if r.sub_id == sub.id
                        && r.topic_created_ms == topic_created_ms
                        && wanted
                        && !r.stop.is_cancelled() => {}
                Some(r) => r.stop.cancel(),
                None if wanted => {
                    let stop = shutdown.child_token();
                    let task = tokio::spawn(worker::run(
                        ctx.clone(),
                        sub.name.clone(),
                        sub.id,
                        stop.clone(),
                    ));
                    let r = Running { sub_id: sub.id, topic_created_ms, stop, task };
                    running.insert(sub.name.clone(), r);
                }
                None => {}
            }
        }
        for (name, r) in &running {
            if !subs.iter().any(|s| &s.name == name) {
                r.stop.cancel();
            }
        }
        ctx.metrics.push.subscriptions_failing.set(failing);
    }
    // Shutdown: in-flight requests get a moment to finish and be recorded; whatever is still
    // running then is cut off (its messages count as in flight and are sent again).
    for r in running.values() {
        r.stop.cancel();
    }
    for (_, r) in running {
        let abort = r.task.abort_handle();
        if tokio::time::timeout(SHUTDOWN_GRACE, r.task).await.is_err() {
            abort.abort();
        }
    }
}

fn publish_gauges(ctx: &Context, sub: &SubRecord) {
    let m = &ctx.metrics.push;
    let label = [sub.name.as_str()];
    m.retrying.with_label_values(&label).set(i64::try_from(sub.retrying).unwrap_or(i64::MAX));
    m.failed.with_label_values(&label).set(i64::try_from(sub.failed).unwrap_or(i64::MAX));
    let lag: u64 = progress(ctx, sub)
        .iter()
        .map(|p| {
            p.high_watermark.saturating_sub(p.cursor).saturating_sub(u64::from(p.settled_above))
        })
        .sum();
    m.lag.with_label_values(&label).set(i64::try_from(lag).unwrap_or(i64::MAX));
}

/// Where `sub` stands in each partition of its topic (none when the topic is gone).
pub fn progress(ctx: &Context, sub: &SubRecord) -> Vec<PartitionProgress> {
    let Ok(topics) = ctx.replica.state().topics(std::slice::from_ref(&sub.topic)) else {
        return Vec::new();
    };
    let Some(topic) = topics.into_iter().next() else { return Vec::new() };
    topic
        .partitions
        .iter()
        .map(|p| {
            let c = sub.cursors.get(&p.index.0);
            PartitionProgress {
                partition: p.index.0,
                cursor: c.map_or(0, |c| c.next),
                high_watermark: p.high_watermark.0,
                settled_above: c.map_or(0, |c| u32::try_from(c.settled.len()).unwrap_or(u32::MAX)),
            }
        })
        .collect()
}
