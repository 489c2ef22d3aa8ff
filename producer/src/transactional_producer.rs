//! The transactional producer handle: half sends, decisions, the topic-metadata cache, and the
//! start and stop of the check-back and heartbeat tasks (`check_back.rs`).
//!
//! One half message per transaction, one record per half message. Each half is built with a
//! fresh sequence number of this producer, so the cluster client's retries of one request are
//! stored once (the broker deduplicates by producer id and sequence) while two calls of
//! `send_half` are always two transactions. A handle is cheap to clone; every clone shares one
//! cluster client, one checker task and one heartbeat task.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::messages::MetadataRequest;
use ferry_protocol::record::{Record, RecordBatchBuilder, BATCH_HEADER_BYTES};
use ferry_protocol::txn::{EndTransactionRequest, EndTransactionResponse, HeartbeatRequest};
use ferry_protocol::txn::{Push, SendHalfRequest};
use ferry_protocol::{
    now_ms, ClientError, ClientKind, ClusterClient, ClusterOptions, ConnectOptions, Decision,
    DecisionOrigin, ErrorCode, PartitionIndex, TxnId,
};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::check_back::{run_checker, run_heartbeat, CheckBack, TransactionChecker};
use crate::error::{ProducerError, Result};
use crate::message::Message;
use crate::partitioner::partition_for_key;
use crate::transaction::{check_timeout_ms, transaction_error, Transaction, TransactionConfig};

/// What the producer knows about a topic.
#[derive(Debug, Clone, Copy)]
struct TopicEntry {
    partitions: u32,
    /// Changes with every metadata read, so a refresh asked for because of an answer seen
    /// with an older read is not repeated when another task already did it.
    generation: u64,
}

/// State shared by the handles, the transactions and nothing else (the tasks get their own
/// copies of what they need).
pub(crate) struct Shared {
    config: TransactionConfig,
    /// Taken out on close (or when the last handle is dropped): later requests fail with
    /// `Closed`, and the connection closes once no request holds a copy any more — so the
    /// broker stops sending this producer check-backs it would no longer answer.
    client: Mutex<Option<ClusterClient>>,
    /// Random, non-zero: with the sequence, what the broker deduplicates a half message by.
    producer_id: u64,
    next_sequence: AtomicU32,
    /// Spreads keyless messages with no partition over the partitions.
    round_robin: AtomicU32,
    topics: Mutex<HashMap<String, TopicEntry>>,
    /// Serialises metadata reads so a burst of sends to a new topic asks once.
    refresh: tokio::sync::Mutex<()>,
    next_generation: AtomicU64,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Shared {
    fn client(&self) -> Result<ClusterClient> {
        self.client
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(ProducerError::Closed)
    }

    /// Stops taking requests and stops the background tasks (without waiting for them).
    fn shut_down(&self) {
        self.client.lock().unwrap_or_else(PoisonError::into_inner).take();
        self.cancel.cancel();
        self.tracker.close();
    }

    fn topics(&self) -> MutexGuard<'_, HashMap<String, TopicEntry>> {
        self.topics.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `topic`'s partition count: from the cache, or read from the cluster when missing or
    /// when the caller saw generation `outdated` fail.
    async fn topic(&self, topic: &str, outdated: Option<u64>) -> Result<TopicEntry> {
        let cached = self.topics().get(topic).copied();
        if let (Some(entry), None) = (cached, outdated) {
            return Ok(entry);
        }
        let _one_at_a_time = self.refresh.lock().await;
        let cached = self.topics().get(topic).copied();
        if let Some(entry) = cached {
            if outdated != Some(entry.generation) {
                return Ok(entry);
            }
        }
        let request = MetadataRequest { topics: vec![topic.to_string()] };
        let unknown = || {
            self.topics().remove(topic);
            ProducerError::UnknownTopic { topic: topic.to_string() }
        };
        match self.client()?.call(&request).await {
            Ok(response) => match response.topics.iter().find(|t| t.name == topic) {
                Some(meta) => {
                    let entry = TopicEntry {
                        partitions: u32::try_from(meta.partitions.len()).unwrap_or(u32::MAX),
                        generation: self.next_generation.fetch_add(1, Ordering::Relaxed),
                    };
                    self.topics().insert(topic.to_string(), entry);
                    Ok(entry)
                }
                None => Err(unknown()),
            },
            Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => Err(unknown()),
            Err(e) => {
                Err(ProducerError::Metadata { topic: topic.to_string(), source: Arc::new(e) })
            }
        }
    }

    /// The partition for a half message: the explicit one, else by key, else round-robin.
    /// `None` when the explicit partition is beyond the count, or the topic has none.
    fn choose_partition(
        &self,
        topic: TopicEntry,
        explicit: Option<PartitionIndex>,
        key: Option<&[u8]>,
    ) -> Option<PartitionIndex> {
        let count = topic.partitions;
        match (explicit, key) {
            (Some(p), _) => (p.0 < count).then_some(p),
            _ if count == 0 => None,
            (None, Some(key)) => Some(partition_for_key(key, count)),
            (None, None) => {
                Some(PartitionIndex(self.round_robin.fetch_add(1, Ordering::Relaxed) % count))
            }
        }
    }

    /// A one-record batch with this producer's id and a sequence number never used before
    /// (until it wraps after 2^32 halves).
    fn half_batch(&self, record: &Record) -> Bytes {
        let sequence = self.next_sequence.fetch_add(1, Ordering::Relaxed);
        let mut builder = RecordBatchBuilder::new(self.producer_id, sequence, record.encoded_len());
        builder.push(record);
        builder.finish()
    }

    async fn send_half(
        self: &Arc<Self>,
        topic: &str,
        message: Message,
        check_timeout: Option<Duration>,
    ) -> Result<Transaction> {
        let client = self.client()?;
        let check_timeout_ms = match check_timeout.or(self.config.check_timeout) {
            Some(timeout) => check_timeout_ms(timeout)?,
            None => 0,
        };
        let Message { key, headers, value, partition: explicit, deliver_at_ms } = message;
        if deliver_at_ms.is_some() {
            // A half message becomes visible when committed; a deliver time on top is not
            // supported (yet), and ignoring it would deliver early.
            return Err(ProducerError::InvalidMessage(
                "a transactional (half) message cannot have a deliver time".into(),
            ));
        }
        let record = Record { timestamp_ms: now_ms(), key, headers, value };
        let size_bytes = record.encoded_len() + BATCH_HEADER_BYTES;
        let max_bytes = self.config.producer.message_bytes_max;
        if size_bytes > max_bytes {
            return Err(ProducerError::MessageTooLarge { size_bytes, max_bytes });
        }
        let mut known = self.topic(topic, None).await?;
        // Metadata is read again at most once: after a partition beyond the cached count, or
        // after the broker said the topic or partition is unknown.
        let mut refreshed = false;
        loop {
            let Some(partition) = self.choose_partition(known, explicit, record.key.as_deref())
            else {
                if !refreshed {
                    refreshed = true;
                    known = self.topic(topic, Some(known.generation)).await?;
                    continue;
                }
                return Err(ProducerError::UnknownPartition {
                    topic: topic.to_string(),
                    partition: explicit.unwrap_or_default(),
                    partitions: known.partitions,
                });
            };
            let request = SendHalfRequest {
                group: self.config.group.clone(),
                topic: topic.to_string(),
                partition,
                check_timeout_ms,
                batch: self.half_batch(&record),
            };
            let error = match client.call(&request).await {
                Ok(response) => {
                    tracing::debug!(
                        txn_id = response.txn_id.0,
                        topic,
                        partition = partition.0,
                        "half message stored"
                    );
                    return Ok(Transaction::new(
                        self.clone(),
                        response.txn_id,
                        topic.to_string(),
                        partition,
                    ));
                }
                Err(error) => error,
            };
            match error.code() {
                Some(ErrorCode::UnknownTopic | ErrorCode::UnknownPartition) if !refreshed => {
                    refreshed = true;
                    known = self.topic(topic, Some(known.generation)).await?;
                }
                Some(ErrorCode::UnknownTopic) => {
                    self.topics().remove(topic);
                    return Err(ProducerError::UnknownTopic { topic: topic.to_string() });
                }
                Some(ErrorCode::UnknownPartition) => {
                    self.topics().remove(topic);
                    return Err(ProducerError::UnknownPartition {
                        topic: topic.to_string(),
                        partition,
                        partitions: known.partitions,
                    });
                }
                _ => return Err(transaction_error(None, error)),
            }
        }
    }

    pub(crate) async fn end_transaction(
        &self,
        txn_id: TxnId,
        decision: Decision,
        origin: DecisionOrigin,
    ) -> Result<EndTransactionResponse> {
        let request = EndTransactionRequest { txn_id, decision, origin };
        let response = self
            .client()?
            .call(&request)
            .await
            .map_err(|error| transaction_error(Some(txn_id), error))?;
        tracing::debug!(
            txn_id = txn_id.0,
            ?decision,
            origin = origin.name(),
            state = %response.state,
            repeated = response.repeated,
            "transaction decided"
        );
        Ok(response)
    }
}

/// Owned by the [`TransactionalProducer`] clones only: its drop is "the last handle is gone".
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.shut_down();
    }
}

/// A cheap, cloneable handle to one transactional producer: one cluster client, a checker
/// task answering check-backs for its group, and a heartbeat task.
///
/// Durability: a [`Transaction`] exists once the half message is committed by a Raft quorum;
/// its decision returns once that is committed too. Nothing is visible to consumers before
/// the commit. Dropping the last handle (or [`TransactionalProducer::close`]) stops answering
/// check-backs; open transactions are then decided by other members of the group, or by the
/// broker once its checks run out.
#[derive(Clone)]
pub struct TransactionalProducer {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for TransactionalProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = &self.handle.shared;
        f.debug_struct("TransactionalProducer")
            .field("group", &shared.config.group)
            .field("client_id", &shared.config.producer.client_id)
            .field("producer_id", &shared.producer_id)
            .finish()
    }
}

impl TransactionalProducer {
    /// Validates `config`, connects as a producer of `config.group` and starts answering
    /// check-backs with `checker` (pushes that arrive before this returns wait in the queue).
    /// Succeeds once the leader answered a heartbeat.
    ///
    /// # Errors
    /// [`ProducerError::Config`] for a bad setting; [`ProducerError::Connect`] when no leader
    /// answered within `retry_deadline` (the error carries the last failure seen).
    pub async fn connect<C: TransactionChecker>(
        config: TransactionConfig,
        checker: C,
    ) -> Result<Self> {
        config.validate()?;
        let (push_sink, pushes) = mpsc::channel::<Push>(config.checks_in_flight_max);
        let settings = &config.producer;
        let mut connect = ConnectOptions::new(settings.client_id.clone(), ClientKind::Producer);
        connect.producer_group = config.group.clone();
        connect.push_sink = Some(push_sink);
        connect.request_timeout = settings.request_timeout;
        connect.connect_timeout = connect.connect_timeout.min(settings.request_timeout);
        let mut options = ClusterOptions::new(&settings.bootstrap, connect);
        options.retry.deadline = settings.retry_deadline;
        let client =
            ClusterClient::new(options).map_err(|e| ProducerError::Config(e.to_string()))?;
        let connect_error = |e: ClientError| ProducerError::Connect {
            bootstrap: settings.bootstrap.clone(),
            source: Arc::new(e),
        };
        // The cluster client stops retrying at the deadline, but an attempt under way when it
        // passes runs on: bound the whole wait here.
        let deadline = settings.retry_deadline;
        match tokio::time::timeout(deadline, client.call(&HeartbeatRequest)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(connect_error(e)),
            Err(_) => return Err(connect_error(ClientError::Timeout(deadline))),
        }
        let producer_id = loop {
            let id = fastrand::u64(..);
            if id != 0 {
                break id;
            }
        };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(run_checker(
            CheckBack {
                checker: Arc::new(checker),
                client: client.clone(),
                group: config.group.clone(),
                checks: Arc::new(Semaphore::new(config.checks_in_flight_max)),
                tracker: tracker.clone(),
                cancel: cancel.clone(),
            },
            pushes,
        ));
        tracker.spawn(run_heartbeat(
            client.clone(),
            config.heartbeat_interval,
            settings.request_timeout,
            cancel.clone(),
        ));
        tracing::debug!(producer_id, group = %config.group, "transactional producer connected");
        let shared = Arc::new(Shared {
            config,
            client: Mutex::new(Some(client)),
            producer_id,
            next_sequence: AtomicU32::new(0),
            round_robin: AtomicU32::new(fastrand::u32(..)),
            topics: Mutex::default(),
            refresh: tokio::sync::Mutex::new(()),
            next_generation: AtomicU64::new(0),
            cancel,
            tracker,
        });
        Ok(TransactionalProducer { handle: Arc::new(Handle { shared }) })
    }

    /// Stores `message` for `topic` as a half message — kept by the cluster, invisible to
    /// consumers — and returns its transaction. The first check-back comes after the config's
    /// `check_timeout` (or the broker's default).
    ///
    /// Partition: `message.partition` if set, else by key hash (as the plain producer), else
    /// round-robin. Topic metadata is cached and read again once after the broker says the
    /// topic or partition is unknown.
    ///
    /// # Errors
    /// `MessageTooLarge`, `InvalidMessage` (a deliver time is set: half messages cannot be
    /// delayed), `UnknownTopic`, `UnknownPartition`, `Metadata`, `Closed`, and
    /// `Transaction` when the request failed: after a timeout or a lost connection the half
    /// message may exist without this caller knowing its id; it is then resolved by
    /// check-back. Calling again sends a second, separate half message.
    pub async fn send_half(&self, topic: &str, message: Message) -> Result<Transaction> {
        self.handle.shared.send_half(topic, message, None).await
    }

    /// Same as [`TransactionalProducer::send_half`], with a first-check delay for this message
    /// only (whole milliseconds, rounded up).
    ///
    /// # Errors
    /// Those of `send_half`; `Config` when `check_timeout` is zero or above `u32::MAX` ms.
    pub async fn send_half_with_timeout(
        &self,
        topic: &str,
        message: Message,
        check_timeout: Duration,
    ) -> Result<Transaction> {
        self.handle.shared.send_half(topic, message, Some(check_timeout)).await
    }

    /// Half send, then the caller's local transaction `local` (given the transaction id, e.g. to
    /// store next to its own changes for the checker), then commit when it returns `Ok` and
    /// roll back when it returns `Err`. If the half send fails, `local` is not run.
    ///
    /// Returns `Ok(local's result)` once the matching decision is durable.
    ///
    /// # Errors
    /// Those of `send_half`; and those of the commit or rollback, in which case `local` has
    /// already run and its outcome stands: `TransactionAlreadyResolved` says the message was
    /// decided the other way meanwhile (by a check-back, when `local` outlasted the check
    /// timeout, or by an operator); a `Transaction` error leaves the decision to check-back.
    pub async fn send_in_transaction<F, Fut, T, E>(
        &self,
        topic: &str,
        message: Message,
        local: F,
    ) -> Result<Result<T, E>>
    where
        F: FnOnce(TxnId) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let txn = self.send_half(topic, message).await?;
        let outcome = local(txn.id()).await;
        match &outcome {
            Ok(_) => {
                txn.commit().await?;
            }
            Err(_) => {
                txn.rollback().await?;
            }
        }
        Ok(outcome)
    }

    /// Operator-style decision on any transaction id (for tests and tools), with the origin the
    /// caller names. Returns the broker's answer once the decision is durable; `Unknown`
    /// records nothing (it is meant as a check-back answer).
    ///
    /// # Errors
    /// `TransactionAlreadyResolved` (decided the other way; carries the state),
    /// `UnknownTransaction`, `Closed`, and `Transaction` for other request failures (after a
    /// timeout or lost connection the decision may or may not be recorded; repeating the same
    /// decision is harmless).
    pub async fn end_transaction(
        &self,
        txn_id: TxnId,
        decision: Decision,
        origin: DecisionOrigin,
    ) -> Result<EndTransactionResponse> {
        self.handle.shared.end_transaction(txn_id, decision, origin).await
    }

    /// The producer group this producer answers check-backs for.
    pub fn group(&self) -> &str {
        &self.handle.shared.config.group
    }

    /// Closes the producer for every clone: later calls (and commits of transactions still
    /// open) fail with `Closed`; stops reading check-backs and the heartbeat, and waits for the
    /// checks already running to finish and their answers to be sent (each answer retried up
    /// to `retry_deadline`; a checker that never returns keeps `close` waiting).
    ///
    /// # Errors
    /// None today; the `Result` leaves room for failures of the producer as a whole.
    pub async fn close(self) -> Result<()> {
        let shared = &self.handle.shared;
        shared.shut_down();
        shared.tracker.wait().await;
        tracing::debug!(group = %shared.config.group, "transactional producer closed");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
