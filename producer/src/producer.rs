//! The producer handle, its topic-metadata cache and one sender task per partition in use.
//!
//! `send` runs on the caller's task: it picks the partition, reserves buffer bytes and appends
//! the record to the partition's accumulator under a short lock. The partition's sender task
//! (spawned on first use, tracked, stopped by `close` or when the last handle is dropped)
//! sends sealed batches one at a time through the shared [`ClusterClient`], which follows
//! leader changes and retries until `retry_deadline`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Instant;

use ferry_protocol::messages::{MetadataRequest, ProduceRequest, TopicMetadata};
use ferry_protocol::record::{Record, BATCH_HEADER_BYTES};
use ferry_protocol::{
    now_ms, ClientKind, ClusterClient, ClusterOptions, ConnectOptions, ErrorCode, PartitionIndex,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accumulator::{Accumulator, AppendRefused, Next, SealedBatch};
use crate::config::ProducerConfig;
use crate::delivery::{Acked, Delivered, DeliveryFuture, SlotDone};
use crate::error::{ProducerError, Result};
use crate::message::Message;
use crate::partitioner::{partition_for_key, sticky_partition};

/// Times `send` re-routes a message after its partition left the topic's metadata.
const ROUTE_ATTEMPTS_MAX: usize = 3;

/// A cheap, cloneable handle to one producer: one connection to the cluster leader, one
/// sender task per partition written to, and one buffer budget shared by every clone.
///
/// Ordering: messages sent through one producer to one partition get increasing offsets in
/// `send` order (clones share the order of the calls that reach the accumulator first).
/// Durability: a [`DeliveryFuture`] resolves `Ok` only after the broker committed the batch
/// to a Raft quorum and applied it.
///
/// Dropping the last clone stops accepting messages and lets the sender tasks deliver what
/// is queued in the background; [`Producer::close`] does the same and waits for it.
#[derive(Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

/// Owned by the `Producer` clones only: its drop is "the last handle is gone".
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.cancel.cancel();
    }
}

/// State shared by the handles and the sender tasks.
struct Shared {
    config: ProducerConfig,
    client: ClusterClient,
    producer_id: u64,
    /// Bytes of messages accepted and not yet completed; `send` waits for permits.
    buffer: Arc<Semaphore>,
    /// Topic metadata by name.
    topics: RwLock<HashMap<Arc<str>, Arc<TopicState>>>,
    /// Serialises metadata refreshes so a burst of sends to a new topic asks once.
    refresh: tokio::sync::Mutex<()>,
    /// Partitions whose sender task runs (for `flush`).
    running: Mutex<Vec<Arc<PartitionState>>>,
    /// Cancelled on close or drop: sender tasks send what is queued and end.
    cancel: CancellationToken,
    tracker: TaskTracker,
    closed: AtomicBool,
}

/// What the producer knows about one topic.
struct TopicState {
    partitions: Vec<Arc<PartitionState>>,
    /// Set when the broker said the topic or a partition is unknown: refresh before use.
    stale: AtomicBool,
    /// Keyless bytes sent to this topic so far: drives the sticky partition.
    keyless_bytes: AtomicU64,
    /// Where the sticky partition starts, random per producer so producers spread out.
    sticky_start: u32,
}

impl TopicState {
    fn partition_count(&self) -> u32 {
        u32::try_from(self.partitions.len()).unwrap_or(u32::MAX)
    }
}

/// One partition's batching state and the wake-up for its sender task.
struct PartitionState {
    topic: Arc<str>,
    index: PartitionIndex,
    accumulator: Mutex<Accumulator>,
    wake: Notify,
    started: AtomicBool,
}

impl PartitionState {
    fn lock(&self) -> MutexGuard<'_, Accumulator> {
        self.accumulator.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Gives reserved buffer bytes back unless the record was handed to a batch.
struct Reservation<'a> {
    buffer: &'a Semaphore,
    bytes: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.buffer.add_permits(self.bytes);
    }
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = &self.handle.shared;
        f.debug_struct("Producer")
            .field("client_id", &shared.config.client_id)
            .field("producer_id", &shared.producer_id)
            .field("bootstrap", &shared.config.bootstrap)
            .finish()
    }
}

impl Producer {
    /// Validates `config` and connects to the cluster: succeeds once a leader answered a
    /// metadata request. Topics are looked up on first use.
    ///
    /// # Errors
    /// [`ProducerError::Config`] for a bad setting; [`ProducerError::Connect`] when no leader
    /// answered within `retry_deadline` (the error carries the last failure seen).
    pub async fn connect(config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let mut connect = ConnectOptions::new(config.client_id.clone(), ClientKind::Producer);
        connect.request_timeout = config.request_timeout;
        connect.connect_timeout = connect.connect_timeout.min(config.request_timeout);
        let mut options = ClusterOptions::new(&config.bootstrap, connect);
        options.retry.deadline = config.retry_deadline;
        let client =
            ClusterClient::new(options).map_err(|e| ProducerError::Config(e.to_string()))?;
        let metadata = client.call(&MetadataRequest::default()).await.map_err(|e| {
            ProducerError::Connect { bootstrap: config.bootstrap.clone(), source: Arc::new(e) }
        })?;
        let producer_id = loop {
            let id = fastrand::u64(..);
            if id != 0 {
                break id;
            }
        };
        tracing::debug!(producer_id, topics = metadata.topics.len(), "producer connected");
        let shared = Arc::new(Shared {
            buffer: Arc::new(Semaphore::new(config.buffer_bytes_max)),
            config,
            client,
            producer_id,
            topics: RwLock::default(),
            refresh: tokio::sync::Mutex::new(()),
            running: Mutex::default(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            closed: AtomicBool::new(false),
        });
        Ok(Producer { handle: Arc::new(Handle { shared }) })
    }

    /// Enqueues `message` for `topic` (stage one of two) and returns the handle that resolves
    /// when its batch is acknowledged — committed by a Raft quorum and applied — or failed.
    ///
    /// Waits while `buffer_bytes_max` bytes are unacknowledged (back-pressure). Reads the
    /// topic's metadata on first use and after the broker reported it unknown.
    ///
    /// A message with a future deliver time ([`Message::with_delay`]) is acknowledged once
    /// stored, invisible, by the cluster: its [`Delivered`] carries `deliver_at_ms`, and its
    /// offset comes when it is appended, once due.
    ///
    /// # Errors
    /// `UnknownTopic`, `UnknownPartition` (explicit partition out of range), `MessageTooLarge`,
    /// `Metadata` (metadata could not be read), `Closed`. Failures of the batch itself arrive
    /// through the returned future.
    pub async fn send(&self, topic: &str, message: Message) -> Result<DeliveryFuture> {
        let shared = &self.handle.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Err(ProducerError::Closed);
        }
        let Message { key, headers, value, partition, deliver_at_ms } = message;
        let record = Record { timestamp_ms: now_ms(), key, headers, value };
        // A deliver time already past appends at once: it may share a batch with plain records.
        let deliver_at_ms = deliver_at_ms.filter(|at| *at > record.timestamp_ms).unwrap_or(0);
        let size_bytes = record.encoded_len();
        let max_bytes = shared.config.message_bytes_max;
        let too_large = || ProducerError::MessageTooLarge {
            size_bytes: size_bytes + BATCH_HEADER_BYTES,
            max_bytes,
        };
        if size_bytes + BATCH_HEADER_BYTES > max_bytes {
            return Err(too_large());
        }
        let mut topic_state = shared.topic(topic).await?;
        if let Some(p) = partition {
            if p.0 >= topic_state.partition_count() {
                // Perhaps the topic was re-created with more partitions: look once more.
                topic_state = shared.refresh_topic(topic, Some(&topic_state)).await?;
            }
        }
        // A message larger than the whole buffer takes all of it rather than waiting forever.
        let reserved_bytes = size_bytes.min(shared.config.buffer_bytes_max);
        let permits = u32::try_from(reserved_bytes).map_err(|_| too_large())?;
        shared.buffer.acquire_many(permits).await.map_err(|_| ProducerError::Closed)?.forget();
        let mut reservation = Reservation { buffer: &shared.buffer, bytes: reserved_bytes };
        for _ in 0..ROUTE_ATTEMPTS_MAX {
            let index = match partition {
                Some(p) => p,
                None => shared.choose_partition(&topic_state, record.key.as_deref(), size_bytes),
            };
            let Some(part) = topic_state.partitions.get(index.0 as usize) else {
                return Err(ProducerError::UnknownPartition {
                    topic: topic.to_string(),
                    partition: index,
                    partitions: topic_state.partition_count(),
                });
            };
            shared.ensure_started(part);
            let appended = part.lock().append(
                &record,
                size_bytes,
                reserved_bytes,
                deliver_at_ms,
                Instant::now(),
            );
            match appended {
                Ok(appended) => {
                    reservation.bytes = 0;
                    if appended.wake_sender {
                        part.wake.notify_one();
                    }
                    return Ok(DeliveryFuture::new(appended.slot, appended.index, index));
                }
                Err(AppendRefused::Closed) => return Err(ProducerError::Closed),
                Err(AppendRefused::Retired) => {
                    topic_state = shared.refresh_topic(topic, Some(&topic_state)).await?;
                }
            }
        }
        Err(ProducerError::UnknownTopic { topic: topic.to_string() })
    }

    /// [`Producer::send`], then waits for the acknowledgement.
    ///
    /// # Errors
    /// Those of `send`, and the batch's failure.
    pub async fn send_and_wait(&self, topic: &str, message: Message) -> Result<Delivered> {
        self.send(topic, message).await?.await
    }

    /// Sends every batch now (without waiting for `linger`) and waits until every message
    /// whose `send` returned before this call is acknowledged or has failed. Per-message
    /// outcomes arrive through their [`DeliveryFuture`]s; `flush` itself does not fail for them.
    ///
    /// # Errors
    /// None today; the `Result` leaves room for failures of the producer as a whole.
    pub async fn flush(&self) -> Result<()> {
        let shared = &self.handle.shared;
        let running: Vec<Arc<PartitionState>> = shared.running().clone();
        let mut last = Vec::with_capacity(running.len());
        for part in &running {
            let slot = part.lock().flush();
            if let Some(slot) = slot {
                part.wake.notify_one();
                last.push(slot);
            }
        }
        for slot in last {
            SlotDone::new(slot).await;
        }
        Ok(())
    }

    /// Flushes, then stops the sender tasks (for every clone: later sends fail with `Closed`)
    /// and waits for them to end.
    ///
    /// # Errors
    /// Those of [`Producer::flush`].
    pub async fn close(self) -> Result<()> {
        self.flush().await?;
        let shared = &self.handle.shared;
        shared.closed.store(true, Ordering::Release);
        shared.cancel.cancel();
        shared.tracker.close();
        shared.tracker.wait().await;
        Ok(())
    }

    /// This producer's id, stamped on every batch (random, non-zero).
    pub fn producer_id(&self) -> u64 {
        self.handle.shared.producer_id
    }

    /// The number of partitions of `topic`, from the cache or the cluster.
    ///
    /// # Errors
    /// `UnknownTopic`, or `Metadata` when the metadata cannot be read.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.handle.shared.topic(topic).await?.partition_count())
    }
}

impl Shared {
    fn read_topics(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<TopicState>>> {
        self.topics.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_topics(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<TopicState>>> {
        self.topics.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn running(&self) -> MutexGuard<'_, Vec<Arc<PartitionState>>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached metadata of `name`, read from the cluster when missing or stale.
    async fn topic(&self, name: &str) -> Result<Arc<TopicState>> {
        let cached = self.read_topics().get(name).cloned();
        match cached {
            Some(t) if !t.stale.load(Ordering::Acquire) => Ok(t),
            other => self.refresh_topic(name, other.as_ref()).await,
        }
    }

    /// Reads `name`'s metadata from the cluster, unless another task replaced `outdated`
    /// meanwhile. Partitions that stay keep their accumulators (and so their order).
    async fn refresh_topic(
        &self,
        name: &str,
        outdated: Option<&Arc<TopicState>>,
    ) -> Result<Arc<TopicState>> {
        let _one_at_a_time = self.refresh.lock().await;
        let current = self.read_topics().get(name).cloned();
        if let Some(current) = current {
            let newer = outdated.is_none_or(|o| !Arc::ptr_eq(o, &current));
            if newer && !current.stale.load(Ordering::Acquire) {
                return Ok(current);
            }
        }
        let request = MetadataRequest { topics: vec![name.to_string()] };
        match self.client.call(&request).await {
            Ok(response) => match response.topics.iter().find(|t| t.name == name) {
                Some(meta) => Ok(self.install_topic(meta)),
                None => {
                    self.forget_topic(name);
                    Err(ProducerError::UnknownTopic { topic: name.to_string() })
                }
            },
            Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {
                self.forget_topic(name);
                Err(ProducerError::UnknownTopic { topic: name.to_string() })
            }
            Err(e) => Err(ProducerError::Metadata { topic: name.to_string(), source: Arc::new(e) }),
        }
    }

    /// Puts `meta` in the cache, reusing the partition states that still exist and retiring
    /// those beyond the new partition count.
    fn install_topic(&self, meta: &TopicMetadata) -> Arc<TopicState> {
        let name: Arc<str> = Arc::from(meta.name.as_str());
        let count = meta.partitions.len();
        let mut topics = self.write_topics();
        let old = topics.get(&name).cloned();
        let partitions: Vec<Arc<PartitionState>> = (0..count)
            .map(|i| {
                old.as_ref().and_then(|o| o.partitions.get(i).cloned()).unwrap_or_else(|| {
                    Arc::new(PartitionState {
                        topic: name.clone(),
                        index: PartitionIndex(u32::try_from(i).unwrap_or(u32::MAX)),
                        accumulator: Mutex::new(Accumulator::new(
                            self.producer_id,
                            self.config.batch_bytes_max,
                            self.config.linger,
                            self.buffer.clone(),
                        )),
                        wake: Notify::new(),
                        started: AtomicBool::new(false),
                    })
                })
            })
            .collect();
        let state = Arc::new(TopicState {
            partitions,
            stale: AtomicBool::new(false),
            keyless_bytes: AtomicU64::new(
                old.as_ref().map_or(0, |o| o.keyless_bytes.load(Ordering::Relaxed)),
            ),
            sticky_start: old.as_ref().map_or_else(|| fastrand::u32(..), |o| o.sticky_start),
        });
        topics.insert(name, state.clone());
        drop(topics);
        if let Some(old) = old {
            retire(old.partitions.iter().skip(count));
        }
        state
    }

    /// Drops `name` from the cache (it no longer exists) and retires its partitions.
    fn forget_topic(&self, name: &str) {
        let old = self.write_topics().remove(name);
        if let Some(old) = old {
            retire(old.partitions.iter());
        }
    }

    /// Marks `name` for a metadata refresh before its next use.
    fn mark_stale(&self, name: &str) {
        if let Some(t) = self.read_topics().get(name) {
            t.stale.store(true, Ordering::Release);
        }
    }

    fn choose_partition(
        &self,
        topic: &TopicState,
        key: Option<&[u8]>,
        size_bytes: usize,
    ) -> PartitionIndex {
        let partitions = topic.partition_count();
        match key {
            Some(key) => partition_for_key(key, partitions),
            None => {
                let before = topic.keyless_bytes.fetch_add(size_bytes as u64, Ordering::Relaxed);
                sticky_partition(
                    before,
                    self.config.batch_bytes_max,
                    topic.sticky_start,
                    partitions,
                )
            }
        }
    }

    /// Spawns the partition's sender task on first use.
    fn ensure_started(self: &Arc<Self>, part: &Arc<PartitionState>) {
        if part.started.load(Ordering::Acquire) || part.started.swap(true, Ordering::AcqRel) {
            return;
        }
        self.running().push(part.clone());
        self.tracker.spawn(run_sender(self.clone(), part.clone()));
    }

    /// Sends one batch (the cluster client retries until the deadline) and completes its
    /// messages.
    async fn produce(&self, part: &PartitionState, batch: SealedBatch) {
        let SealedBatch { bytes, record_count, base_sequence, deliver_at_ms, completion } = batch;
        let request = ProduceRequest {
            topic: part.topic.to_string(),
            partition: part.index,
            batch: bytes,
            deliver_at_ms,
        };
        let outcome = match self.client.call(&request).await {
            Ok(response) => {
                if response.record_count.saturating_add(response.duplicates) != record_count {
                    tracing::warn!(
                        topic = %part.topic,
                        partition = %part.index,
                        sent = record_count,
                        acknowledged = response.record_count,
                        "broker acknowledged a different record count"
                    );
                }
                tracing::trace!(
                    topic = %part.topic,
                    partition = %part.index,
                    base_offset = response.base_offset.0,
                    deliver_at_ms = response.deliver_at_ms,
                    base_sequence,
                    records = record_count,
                    duplicates = response.duplicates,
                    "batch acknowledged"
                );
                Ok(match response.deliver_at_ms {
                    0 => Acked::Appended(response.base_offset),
                    at => Acked::Scheduled(at),
                })
            }
            Err(error) => {
                tracing::debug!(
                    topic = %part.topic,
                    partition = %part.index,
                    records = record_count,
                    %error,
                    "batch failed"
                );
                Err(match error.code() {
                    Some(ErrorCode::UnknownTopic) => {
                        self.mark_stale(&part.topic);
                        ProducerError::UnknownTopic { topic: part.topic.to_string() }
                    }
                    Some(ErrorCode::UnknownPartition) => {
                        self.mark_stale(&part.topic);
                        let partitions =
                            self.read_topics().get(&*part.topic).map_or(0, |t| t.partition_count());
                        ProducerError::UnknownPartition {
                            topic: part.topic.to_string(),
                            partition: part.index,
                            partitions,
                        }
                    }
                    _ => ProducerError::Produce {
                        topic: part.topic.to_string(),
                        partition: part.index,
                        source: Arc::new(error),
                    },
                })
            }
        };
        completion.complete(outcome);
    }
}

fn retire<'a>(partitions: impl Iterator<Item = &'a Arc<PartitionState>>) {
    for part in partitions {
        part.lock().retire();
        part.wake.notify_one();
    }
}

/// The sender task of one partition: sends batches in order, one at a time, waiting for the
/// linger time or a wake-up in between; ends after draining when the producer closes or the
/// partition is retired.
async fn run_sender(shared: Arc<Shared>, part: Arc<PartitionState>) {
    let mut draining = shared.cancel.is_cancelled();
    loop {
        let next = part.lock().next(Instant::now(), draining);
        match next {
            Next::Send(batch) => {
                shared.produce(&part, batch).await;
                part.lock().batch_done();
            }
            Next::Exit => break,
            Next::Wait(due) => {
                let deadline =
                    due.map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
                tokio::select! {
                    () = part.wake.notified() => {}
                    () = tokio::time::sleep_until(deadline), if due.is_some() => {}
                    () = shared.cancel.cancelled(), if !draining => draining = true,
                }
            }
        }
    }
    shared.running().retain(|p| !Arc::ptr_eq(p, &part));
    tracing::trace!(topic = %part.topic, partition = %part.index, "sender task ended");
}
