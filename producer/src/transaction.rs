//! Transactions as the caller sees them: the configuration of a
//! [`crate::TransactionalProducer`], the [`Transaction`] a half send returns, and the outcome
//! of deciding it.
//!
//! ```text
//! send_half ──SendHalf──▶ leader stores the message, invisible ──▶ Transaction
//!     Transaction::commit / rollback ──EndTransaction{origin: Producer}──▶ visible / discarded
//!     dropped, failed, or producer crashed ──▶ after check_timeout the leader pushes
//!         CheckTransaction to a live producer of the group ──▶ TransactionChecker
//!         ──EndTransaction{origin: CheckBack}──▶ decided (or Unknown: asked again later)
//! ```
//!
//! The producer handle lives in `transactional_producer.rs`, the check-back and heartbeat
//! tasks in `check_back.rs`.

use std::sync::Arc;
use std::time::Duration;

use ferry_protocol::txn::EndTransactionResponse;
use ferry_protocol::{
    ClientError, Decision, DecisionOrigin, ErrorCode, Offset, PartitionIndex, TxnId, TxnState,
};

use crate::config::ProducerConfig;
use crate::error::{ProducerError, Result};
use crate::transactional_producer::Shared;

/// Default time between heartbeats (how fast the producer follows a new leader).
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Default bound on check-backs being answered at once (and on pushes waiting to be).
pub const CHECKS_IN_FLIGHT_MAX_DEFAULT: usize = 64;
/// Largest `checks_in_flight_max`: each waiting push holds a half message (up to
/// `message_bytes_max`), so this bounds the memory check-backs can take.
pub const CHECKS_IN_FLIGHT_LIMIT: usize = 1024;
/// Longest producer group name, in bytes (the same bound as topic names).
pub const GROUP_BYTES_MAX: usize = 249;

/// How a [`crate::TransactionalProducer`] connects and answers check-backs.
///
/// Of `producer`, the transactional producer uses `bootstrap`, `client_id`,
/// `message_bytes_max`, `request_timeout` and `retry_deadline`; the batching fields do not
/// apply (each half message travels alone) but must still be valid.
#[derive(Debug, Clone)]
pub struct TransactionConfig {
    /// Connection, identity and size settings.
    pub producer: ProducerConfig,
    /// The producer group: the broker asks any live member of the group about a transaction
    /// any member started, so every member must run an equivalent checker. Non-empty, at most
    /// [`GROUP_BYTES_MAX`] bytes.
    pub group: String,
    /// Time from storing a half message to its first check-back, for this producer's halves
    /// (`None`: the broker's `txn_check_timeout`). Whole milliseconds, rounded up; 1 ms up to
    /// `u32::MAX` ms.
    pub check_timeout: Option<Duration>,
    /// Time between heartbeats, which keep the producer's connection on the leader (where
    /// check-backs come from). Not zero.
    pub heartbeat_interval: Duration,
    /// Bound on check-backs being answered at once, and size of the queue of pushes waiting
    /// for a turn (pushes beyond it are dropped; the broker asks again).
    /// 1..=[`CHECKS_IN_FLIGHT_LIMIT`].
    pub checks_in_flight_max: usize,
}

impl TransactionConfig {
    /// Defaults for producer group `group` of the cluster at `bootstrap`
    /// (`host:port[,host:port...]`).
    pub fn new(bootstrap: impl Into<String>, group: impl Into<String>) -> Self {
        TransactionConfig {
            producer: ProducerConfig::new(bootstrap),
            group: group.into(),
            check_timeout: None,
            heartbeat_interval: HEARTBEAT_INTERVAL_DEFAULT,
            checks_in_flight_max: CHECKS_IN_FLIGHT_MAX_DEFAULT,
        }
    }

    /// Checks every field; the error names the field and the allowed range.
    ///
    /// # Errors
    /// [`ProducerError::Config`] for the first field out of range.
    pub fn validate(&self) -> Result<()> {
        self.producer.validate()?;
        let fail = |detail: String| Err(ProducerError::Config(detail));
        if self.group.is_empty() || self.group.len() > GROUP_BYTES_MAX {
            return fail(format!(
                "group is {} bytes; allowed 1..={GROUP_BYTES_MAX}",
                self.group.len()
            ));
        }
        if let Some(timeout) = self.check_timeout {
            check_timeout_ms(timeout)?;
        }
        if self.heartbeat_interval.is_zero() {
            return fail("heartbeat_interval is zero".into());
        }
        if !(1..=CHECKS_IN_FLIGHT_LIMIT).contains(&self.checks_in_flight_max) {
            return fail(format!(
                "checks_in_flight_max is {}; allowed 1..={CHECKS_IN_FLIGHT_LIMIT}",
                self.checks_in_flight_max
            ));
        }
        Ok(())
    }
}

/// `timeout` in whole milliseconds for the wire, rounded up: 1..=u32::MAX (0 on the wire means
/// "the broker's default", so a zero timeout is refused rather than silently meaning that).
pub(crate) fn check_timeout_ms(timeout: Duration) -> Result<u32> {
    match u32::try_from(timeout.as_nanos().div_ceil(1_000_000)) {
        Ok(ms) if ms > 0 => Ok(ms),
        _ => Err(ProducerError::Config(format!(
            "check_timeout is {timeout:?}; allowed 1 ms..={} ms",
            u32::MAX
        ))),
    }
}

/// Maps a failed `EndTransaction` (or `SendHalf`, with `txn_id` `None`) to the producer's
/// error: the two transaction codes become their typed variants, anything else keeps the
/// request error. `TransactionAlreadyResolved` without a state in the body (it always has
/// one) stays untyped rather than inventing a state.
pub(crate) fn transaction_error(txn_id: Option<TxnId>, error: ClientError) -> ProducerError {
    match (&error, txn_id) {
        (
            ClientError::Server {
                code: ErrorCode::TransactionAlreadyResolved,
                txn_state: Some(state),
                ..
            },
            Some(txn_id),
        ) => ProducerError::TransactionAlreadyResolved { txn_id, state: *state },
        (ClientError::Server { code: ErrorCode::UnknownTransaction, .. }, Some(txn_id)) => {
            ProducerError::UnknownTransaction { txn_id }
        }
        _ => ProducerError::Transaction { txn_id, source: Arc::new(error) },
    }
}

/// A stored half message awaiting this producer's decision.
///
/// Decide it with [`Transaction::commit`] or [`Transaction::rollback`]. One dropped undecided
/// (or whose decision failed with its outcome unknown) is not lost: the broker asks the
/// group's checker after the check timeout, and a warning is logged.
#[must_use = "an undecided transaction waits for check-back; commit or roll it back"]
pub struct Transaction {
    shared: Arc<Shared>,
    txn_id: TxnId,
    topic: String,
    partition: PartitionIndex,
    /// Set once the outcome is known: decided by this call, or found decided or gone.
    decided: bool,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("txn_id", &self.txn_id)
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .finish()
    }
}

/// A committed transaction: its message is visible to consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The transaction.
    pub txn_id: TxnId,
    /// The partition the message is in.
    pub partition: PartitionIndex,
    /// The message's offset (base offset of its batch), when the broker reported it.
    pub offset: Option<Offset>,
    /// True when it had been committed before (e.g. by a check-back): nothing changed.
    pub repeated: bool,
}

/// A rolled-back transaction: its message will never be visible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolledBack {
    /// The transaction.
    pub txn_id: TxnId,
    /// True when it had been rolled back before: nothing changed.
    pub repeated: bool,
}

impl Transaction {
    /// A transaction for a half message just stored.
    pub(crate) fn new(
        shared: Arc<Shared>,
        txn_id: TxnId,
        topic: String,
        partition: PartitionIndex,
    ) -> Self {
        Transaction { shared, txn_id, topic, partition, decided: false }
    }

    /// The transaction's id (unique in the cluster, growing with time).
    pub fn id(&self) -> TxnId {
        self.txn_id
    }

    /// The topic its message goes to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition its message goes to.
    pub fn partition(&self) -> PartitionIndex {
        self.partition
    }

    /// Commits: returns once the decision is durable and the message visible. Idempotent.
    ///
    /// # Errors
    /// `TransactionAlreadyResolved` (rolled back meanwhile, e.g. by a check-back or an
    /// operator), `UnknownTransaction`, `Closed` (producer closed), `Transaction` for other
    /// failures: after a timeout or lost connection the outcome is unknown and check-back
    /// resolves it.
    pub async fn commit(mut self) -> Result<Committed> {
        let response = self.decide(Decision::Commit).await?;
        if response.state != TxnState::Committed {
            // The broker refuses a contrary decision with an error; an answer in another state
            // would be a broker bug, reported as the state it claims.
            return Err(ProducerError::TransactionAlreadyResolved {
                txn_id: self.txn_id,
                state: response.state,
            });
        }
        Ok(Committed {
            txn_id: self.txn_id,
            partition: self.partition,
            offset: response.offset,
            repeated: response.repeated,
        })
    }

    /// Rolls back: returns once the decision is durable; the message is discarded. Idempotent.
    ///
    /// # Errors
    /// As [`Transaction::commit`] (`TransactionAlreadyResolved` when committed meanwhile).
    pub async fn rollback(mut self) -> Result<RolledBack> {
        let response = self.decide(Decision::Rollback).await?;
        if response.state != TxnState::RolledBack {
            return Err(ProducerError::TransactionAlreadyResolved {
                txn_id: self.txn_id,
                state: response.state,
            });
        }
        Ok(RolledBack { txn_id: self.txn_id, repeated: response.repeated })
    }

    async fn decide(&mut self, decision: Decision) -> Result<EndTransactionResponse> {
        let outcome =
            self.shared.end_transaction(self.txn_id, decision, DecisionOrigin::Producer).await;
        self.decided = match &outcome {
            Ok(_) => true,
            Err(e) => matches!(
                e,
                ProducerError::TransactionAlreadyResolved { .. }
                    | ProducerError::UnknownTransaction { .. }
            ),
        };
        outcome
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if !self.decided {
            tracing::warn!(
                txn_id = self.txn_id.0,
                topic = %self.topic,
                partition = self.partition.0,
                "transaction not decided by its producer; left to check-back"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(code: ErrorCode, txn_state: Option<TxnState>) -> ClientError {
        ClientError::Server { code, message: "m".into(), leader: None, txn_state }
    }

    #[test]
    fn defaults_are_valid() {
        let c = TransactionConfig::new("127.0.0.1:7400", "orders-service");
        c.validate().unwrap();
        assert_eq!(c.group, "orders-service");
        assert_eq!(c.check_timeout, None);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(c.checks_in_flight_max, 64);
    }

    #[test]
    fn bad_values_are_refused() {
        let base = TransactionConfig::new("127.0.0.1:7400", "g");
        let cases: Vec<fn(&mut TransactionConfig)> = vec![
            |c| c.producer.bootstrap = "nohost".into(),
            |c| c.producer.request_timeout = Duration::ZERO,
            |c| c.group = String::new(),
            |c| c.group = "g".repeat(GROUP_BYTES_MAX + 1),
            |c| c.check_timeout = Some(Duration::ZERO),
            |c| c.check_timeout = Some(Duration::from_millis(u64::from(u32::MAX) + 1)),
            |c| c.heartbeat_interval = Duration::ZERO,
            |c| c.checks_in_flight_max = 0,
            |c| c.checks_in_flight_max = CHECKS_IN_FLIGHT_LIMIT + 1,
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut c = base.clone();
            change(&mut c);
            assert!(matches!(c.validate(), Err(ProducerError::Config(_))), "case {i}");
        }
        let edges: Vec<fn(&mut TransactionConfig)> = vec![
            |c| c.group = "g".repeat(GROUP_BYTES_MAX),
            |c| c.check_timeout = Some(Duration::from_nanos(1)),
            |c| c.check_timeout = Some(Duration::from_millis(u64::from(u32::MAX))),
            |c| c.checks_in_flight_max = 1,
            |c| c.checks_in_flight_max = CHECKS_IN_FLIGHT_LIMIT,
        ];
        for (i, change) in edges.iter().enumerate() {
            let mut c = base.clone();
            change(&mut c);
            c.validate().unwrap_or_else(|e| panic!("edge {i}: {e}"));
        }
    }

    #[test]
    fn check_timeout_is_whole_milliseconds_rounded_up() {
        assert_eq!(check_timeout_ms(Duration::from_millis(1500)).unwrap(), 1500);
        assert_eq!(check_timeout_ms(Duration::from_nanos(1)).unwrap(), 1);
        assert_eq!(check_timeout_ms(Duration::from_micros(1_500_500)).unwrap(), 1501);
        assert_eq!(check_timeout_ms(Duration::from_millis(u64::from(u32::MAX))).unwrap(), u32::MAX);
        assert!(check_timeout_ms(Duration::ZERO).is_err());
        assert!(check_timeout_ms(Duration::from_secs(u64::MAX)).is_err());
    }

    #[test]
    fn already_resolved_carries_the_state() {
        let e = transaction_error(
            Some(TxnId(7)),
            server(ErrorCode::TransactionAlreadyResolved, Some(TxnState::Committed)),
        );
        assert!(
            matches!(
                e,
                ProducerError::TransactionAlreadyResolved {
                    txn_id: TxnId(7),
                    state: TxnState::Committed
                }
            ),
            "{e:?}"
        );
        assert!(!e.is_retriable());
        assert_eq!(e.code(), Some(ErrorCode::TransactionAlreadyResolved));
        assert!(e.to_string().contains("committed"), "{e}");
    }

    #[test]
    fn other_failures_keep_the_request_error() {
        let unknown =
            transaction_error(Some(TxnId(3)), server(ErrorCode::UnknownTransaction, None));
        assert!(matches!(unknown, ProducerError::UnknownTransaction { txn_id: TxnId(3) }));
        assert!(!unknown.is_retriable());
        assert_eq!(unknown.code(), Some(ErrorCode::UnknownTransaction));

        // A state-less body (never sent by the broker) is not given an invented state.
        let stateless =
            transaction_error(Some(TxnId(3)), server(ErrorCode::TransactionAlreadyResolved, None));
        assert!(matches!(stateless, ProducerError::Transaction { txn_id: Some(TxnId(3)), .. }));
        assert_eq!(stateless.code(), Some(ErrorCode::TransactionAlreadyResolved));

        // Outcome unknown: retriable (repeating a decision is harmless) and typed as a request
        // failure naming the transaction.
        let timeout =
            transaction_error(Some(TxnId(9)), ClientError::Timeout(Duration::from_secs(1)));
        assert!(matches!(timeout, ProducerError::Transaction { txn_id: Some(TxnId(9)), .. }));
        assert!(timeout.is_retriable());
        assert_eq!(timeout.code(), None);
        assert!(timeout.to_string().contains("for transaction 9"), "{timeout}");

        let half = transaction_error(None, server(ErrorCode::InvalidArgument, None));
        assert!(matches!(half, ProducerError::Transaction { txn_id: None, .. }));
        assert!(!half.is_retriable());
        assert_eq!(half.code(), Some(ErrorCode::InvalidArgument));
        assert!(half.to_string().starts_with("transaction request failed"), "{half}");

        let unreachable = transaction_error(
            Some(TxnId(1)),
            ClientError::Unreachable {
                attempts: 3,
                elapsed: Duration::from_secs(30),
                last: Box::new(server(ErrorCode::NoLeader, None)),
            },
        );
        assert!(!unreachable.is_retriable());
        assert_eq!(unreachable.code(), Some(ErrorCode::NoLeader));
    }
}
