//! Check-back: how a [`crate::TransactionalProducer`] answers the broker's questions about
//! transactions nobody decided, and the heartbeat that keeps it reachable for them.
//!
//! The leader sends `CheckTransaction` pushes on a live connection of the producer group. Every
//! connection the producer's cluster client opens forwards them into one bounded channel; the
//! checker task reads it, runs the application's [`TransactionChecker`] on a [`MessageView`] of
//! the half message (at most `checks_in_flight_max` at once) and answers with `EndTransaction`
//! (origin `CheckBack`). The heartbeat task sends `Heartbeat` now and then: only the leader
//! answers it, so the cluster client's connection follows the leader, where pushes come from.
//!
//! ```text
//! leader ──push──▶ connection ──try_send──▶ sink (bounded) ──▶ checker task
//!                                                               │ permit (checks_in_flight_max)
//!                                                               ▼
//!                               answer task ──spawn──▶ check task: checker.check(&view)
//!                                    └──── EndTransaction{decision, origin: CheckBack} ──▶ leader
//! ```
//!
//! Every loss is covered by the broker asking again: a push dropped because the sink is full, a
//! check that panicked, an answer that failed. Both tasks are spawned by
//! `TransactionalProducer::connect` on its tracker and end when its token is cancelled.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::record::RecordBatch;
use ferry_protocol::txn::{CheckTransactionPush, EndTransactionRequest, HeartbeatRequest, Push};
use ferry_protocol::{
    ClusterClient, Decision, DecisionOrigin, DecodeError, ErrorCode, PartitionIndex, TxnId,
};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A checker's verdict on one transaction, after looking at the application's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// The local transaction committed: the broker makes the message visible.
    Commit,
    /// The local transaction failed or will never happen: the broker discards the message.
    Rollback,
    /// Cannot tell yet (the local transaction may still be running): the broker records
    /// nothing and asks again later, until its check limit.
    Unknown,
}

impl From<Resolution> for Decision {
    fn from(resolution: Resolution) -> Decision {
        match resolution {
            Resolution::Commit => Decision::Commit,
            Resolution::Rollback => Decision::Rollback,
            Resolution::Unknown => Decision::Unknown,
        }
    }
}

/// What a checker sees: the half message and its transaction.
///
/// Built from the first record of the pushed batch (a transactional producer sends one record
/// per half message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageView {
    /// The transaction asked about.
    pub txn_id: TxnId,
    /// The producer group asked (this producer's).
    pub group: String,
    /// The topic the message goes to when committed.
    pub topic: String,
    /// The partition inside the topic.
    pub partition: PartitionIndex,
    /// The message key, if it had one.
    pub key: Option<Bytes>,
    /// The message headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The payload.
    pub value: Bytes,
    /// When the producer built the message (its clock), ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// When the leader stored the half message (leader clock), ms since the Unix epoch.
    pub created_ms: u64,
    /// This check's number for the transaction, from 1.
    pub check_count: u32,
}

impl MessageView {
    /// The view of a pushed check: validates the batch (structure and CRC) and takes its first
    /// record.
    ///
    /// # Errors
    /// The decode error when the batch is damaged or empty.
    pub(crate) fn from_push(push: CheckTransactionPush) -> Result<MessageView, DecodeError> {
        let batch = RecordBatch::parse(push.batch)?;
        if batch.count() > 1 {
            tracing::debug!(
                txn_id = push.txn_id.0,
                records = batch.count(),
                "half message holds several records; the checker sees the first"
            );
        }
        let record = batch.records().next().unwrap_or_else(|| {
            Err(DecodeError::Invalid { what: "check.batch", detail: "no record".into() })
        })?;
        Ok(MessageView {
            txn_id: push.txn_id,
            group: push.group,
            topic: push.topic,
            partition: push.partition,
            key: record.key,
            headers: record.headers,
            value: record.value,
            timestamp_ms: record.timestamp_ms,
            created_ms: push.created_ms,
            check_count: push.check_count,
        })
    }
}

/// Decides, from the application's own state, whether a transaction's local work committed.
///
/// Called by the producer's checker task when the broker asks about a transaction that was
/// neither committed nor rolled back in time (the producer crashed, lost its connection, or
/// the local work is slow). It may run concurrently for different transactions (up to
/// `checks_in_flight_max`) and be asked again about the same transaction later; the answer must
/// not depend on which producer of the group is asked. A panic is contained: that check is
/// left unanswered and the broker asks again.
pub trait TransactionChecker: Send + Sync + 'static {
    /// The verdict on `message`'s transaction; [`Resolution::Unknown`] when it cannot tell yet.
    fn check(&self, message: &MessageView) -> impl Future<Output = Resolution> + Send;
}

/// A [`TransactionChecker`] made from an async closure; see [`checker_fn`].
pub struct FnChecker<F>(F);

impl<F> std::fmt::Debug for FnChecker<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnChecker")
    }
}

impl<F, Fut> TransactionChecker for FnChecker<F>
where
    F: Fn(MessageView) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resolution> + Send + 'static,
{
    fn check(&self, message: &MessageView) -> impl Future<Output = Resolution> + Send {
        (self.0)(message.clone())
    }
}

/// Wraps `f` as a [`TransactionChecker`]: each check calls `f` with its own copy of the view.
pub fn checker_fn<F, Fut>(f: F) -> FnChecker<F>
where
    F: Fn(MessageView) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resolution> + Send + 'static,
{
    FnChecker(f)
}

/// What the checker task works with; built by `TransactionalProducer::connect`.
pub(crate) struct CheckBack<C> {
    /// The application's checker.
    pub(crate) checker: Arc<C>,
    /// Sends the answers.
    pub(crate) client: ClusterClient,
    /// This producer's group: pushes for another group are not answered.
    pub(crate) group: String,
    /// Bounds the checks being answered at once (`checks_in_flight_max` permits).
    pub(crate) checks: Arc<Semaphore>,
    /// Tracks the answer and check tasks, so `close` waits for them.
    pub(crate) tracker: TaskTracker,
    /// Stops reading pushes (answers already under way finish).
    pub(crate) cancel: CancellationToken,
}

/// Transactions whose check is running; a repeated push for one of them is skipped rather
/// than stacked behind a slow checker (the running check answers it).
type Running = Arc<Mutex<HashSet<TxnId>>>;

/// Removes a transaction from [`Running`] when its answer task ends, however it ends.
struct RunningGuard {
    running: Running,
    txn_id: TxnId,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.txn_id);
    }
}

/// The checker task: reads pushes until cancelled (or until every sender is gone), and starts
/// one tracked answer task per check, at most `checks_in_flight_max` at a time. While the
/// permits are taken it stops reading, so the bounded sink fills and further pushes are
/// dropped by the connection; the broker asks again.
pub(crate) async fn run_checker<C: TransactionChecker>(
    ctx: CheckBack<C>,
    mut pushes: mpsc::Receiver<Push>,
) {
    let running: Running = Arc::default();
    loop {
        let push = tokio::select! {
            () = ctx.cancel.cancelled() => break,
            push = pushes.recv() => match push {
                Some(push) => push,
                None => break,
            },
        };
        // One kind today; a new kind added to the protocol makes this stop compiling.
        let Push::CheckTransaction(push) = push;
        let txn_id = push.txn_id;
        if push.group != ctx.group {
            tracing::warn!(
                txn_id = txn_id.0,
                group = %push.group,
                own_group = %ctx.group,
                "check-back for another producer group ignored"
            );
            continue;
        }
        let view = match MessageView::from_push(push) {
            Ok(view) => view,
            Err(error) => {
                tracing::warn!(
                    txn_id = txn_id.0,
                    %error,
                    "check-back carries an undecodable half message; not answered"
                );
                continue;
            }
        };
        let newly_running =
            running.lock().unwrap_or_else(PoisonError::into_inner).insert(view.txn_id);
        if !newly_running {
            tracing::debug!(
                txn_id = txn_id.0,
                check_count = view.check_count,
                "check already running for this transaction; repeated push skipped"
            );
            continue;
        }
        let guard = RunningGuard { running: running.clone(), txn_id };
        let permit = tokio::select! {
            () = ctx.cancel.cancelled() => break,
            permit = ctx.checks.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        ctx.tracker.spawn(answer_check(
            ctx.checker.clone(),
            ctx.client.clone(),
            ctx.tracker.clone(),
            view,
            permit,
            guard,
        ));
    }
    tracing::debug!(group = %ctx.group, "check-back task ended");
}

/// Runs one check in its own task (so a panicking checker only loses this answer) and sends
/// the verdict. Holds a check permit until the answer is acknowledged or has failed.
async fn answer_check<C: TransactionChecker>(
    checker: Arc<C>,
    client: ClusterClient,
    tracker: TaskTracker,
    view: MessageView,
    _permit: OwnedSemaphorePermit,
    _running: RunningGuard,
) {
    let txn_id = view.txn_id;
    let check_count = view.check_count;
    let check = tracker.spawn(async move { checker.check(&view).await });
    let resolution = match check.await {
        Ok(resolution) => resolution,
        Err(error) => {
            tracing::warn!(
                txn_id = txn_id.0,
                check_count,
                %error,
                "transaction checker failed (panicked); not answered, the broker asks again"
            );
            return;
        }
    };
    let request = EndTransactionRequest {
        txn_id,
        decision: resolution.into(),
        origin: DecisionOrigin::CheckBack,
    };
    match client.call(&request).await {
        Ok(response) => tracing::debug!(
            txn_id = txn_id.0,
            check_count,
            ?resolution,
            state = %response.state,
            repeated = response.repeated,
            "check-back answered"
        ),
        Err(error) => match error.code() {
            // Decided meanwhile (by the producer, another member or an operator), or purged:
            // nothing is left to answer.
            Some(ErrorCode::TransactionAlreadyResolved | ErrorCode::UnknownTransaction) => {
                tracing::debug!(
                    txn_id = txn_id.0,
                    check_count,
                    ?resolution,
                    %error,
                    "check-back answer not needed any more"
                );
            }
            _ => tracing::warn!(
                txn_id = txn_id.0,
                check_count,
                ?resolution,
                %error,
                "check-back answer failed; the broker asks again"
            ),
        },
    }
}

/// The heartbeat task: every `interval`, a `Heartbeat` through the cluster client (each
/// attempt allowed `timeout`). Only the leader answers it, so the client's connection moves to
/// a new leader within about one interval after an election, and a lost connection is
/// reopened. Failures are logged at debug and tried again on the next tick.
pub(crate) async fn run_heartbeat(
    client: ClusterClient,
    interval: Duration,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // The first tick is immediate; `connect` has just sent a heartbeat.
    ticker.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let outcome = tokio::select! {
            () = cancel.cancelled() => break,
            outcome = client.call_timeout(&HeartbeatRequest, timeout) => outcome,
        };
        match outcome {
            Ok(_) => tracing::trace!("heartbeat answered"),
            Err(error) => tracing::debug!(%error, "heartbeat failed; trying again next tick"),
        }
    }
    tracing::debug!("heartbeat task ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::record::{Record, RecordBatchBuilder};

    fn push_of(txn_id: u64, records: &[Record]) -> CheckTransactionPush {
        let mut builder = RecordBatchBuilder::new(7, 1, 0);
        for r in records {
            builder.push(r);
        }
        CheckTransactionPush {
            txn_id: TxnId(txn_id),
            group: "g".into(),
            topic: "orders".into(),
            partition: PartitionIndex(3),
            created_ms: 1_000,
            check_count: 2,
            batch: builder.finish(),
        }
    }

    fn record(value: &'static str) -> Record {
        Record {
            timestamp_ms: 42,
            key: Some(Bytes::from_static(b"k")),
            headers: vec![("h".into(), Bytes::from_static(b"v"))],
            value: Bytes::from_static(value.as_bytes()),
        }
    }

    #[test]
    fn resolution_maps_to_decision() {
        assert_eq!(Decision::from(Resolution::Commit), Decision::Commit);
        assert_eq!(Decision::from(Resolution::Rollback), Decision::Rollback);
        assert_eq!(Decision::from(Resolution::Unknown), Decision::Unknown);
    }

    #[test]
    fn view_is_built_from_the_first_record() {
        let view = MessageView::from_push(push_of(9, &[record("first"), record("second")]))
            .expect("valid batch");
        assert_eq!(
            view,
            MessageView {
                txn_id: TxnId(9),
                group: "g".into(),
                topic: "orders".into(),
                partition: PartitionIndex(3),
                key: Some(Bytes::from_static(b"k")),
                headers: vec![("h".into(), Bytes::from_static(b"v"))],
                value: Bytes::from_static(b"first"),
                timestamp_ms: 42,
                created_ms: 1_000,
                check_count: 2,
            }
        );
    }

    #[test]
    fn damaged_or_empty_batches_give_no_view() {
        assert!(MessageView::from_push(push_of(1, &[])).is_err());
        let mut push = push_of(1, &[record("x")]);
        let mut bytes = push.batch.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        push.batch = Bytes::from(bytes);
        assert!(MessageView::from_push(push.clone()).is_err(), "CRC must catch the flip");
        push.batch = Bytes::from_static(b"\x01garbage");
        assert!(MessageView::from_push(push).is_err());
    }

    /// A checker written with `async fn` in the impl, as applications will: it must satisfy
    /// the trait (including `Send`) and be accepted by `connect`.
    struct Table(HashSet<TxnId>);

    impl TransactionChecker for Table {
        async fn check(&self, message: &MessageView) -> Resolution {
            tokio::task::yield_now().await;
            if self.0.contains(&message.txn_id) {
                Resolution::Commit
            } else {
                Resolution::Rollback
            }
        }
    }

    #[tokio::test]
    async fn async_fn_checkers_work() {
        let table = Table([TxnId(1)].into_iter().collect());
        let one = MessageView::from_push(push_of(1, &[record("a")])).unwrap();
        let two = MessageView::from_push(push_of(2, &[record("b")])).unwrap();
        assert_eq!(table.check(&one).await, Resolution::Commit);
        assert_eq!(table.check(&two).await, Resolution::Rollback);
        // Type-checks only: connect's future is built and dropped unpolled.
        let config = crate::TransactionConfig::new("127.0.0.1:1", "g");
        drop(crate::TransactionalProducer::connect(config, table));
    }

    #[tokio::test]
    async fn fn_checker_sees_a_copy_of_the_view() {
        let checker = checker_fn(|view: MessageView| async move {
            if view.value.as_ref() == b"yes" {
                Resolution::Commit
            } else {
                Resolution::Rollback
            }
        });
        let yes = MessageView::from_push(push_of(1, &[record("yes")])).unwrap();
        let no = MessageView::from_push(push_of(2, &[record("no")])).unwrap();
        assert_eq!(checker.check(&yes).await, Resolution::Commit);
        assert_eq!(checker.check(&no).await, Resolution::Rollback);
    }
}
