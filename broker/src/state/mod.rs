//! The replicated state: topics, partitions and their messages, applied from committed Raft
//! entries, plus the read side that handlers use (metadata, fetch, long-poll wake-ups).
//!
//! Ownership: [`Applier`] is owned by the Raft state-machine worker (one task); it keeps the
//! authoritative metadata without locks, writes one [`WriteBatch`] per apply call and, once that
//! write succeeded, publishes what changed to [`SharedState`], which handlers read under a short
//! `RwLock` section. Apply is deterministic: no clock, no randomness.

pub mod command;
pub mod dedup;
pub mod delayed;
pub mod groups;
pub mod keys;
pub mod push;
pub mod txn;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::messages::{FetchedBatch, PartitionMetadata, TopicMetadata};
use ferry_protocol::wire::{self, DecodeResult};
use ferry_protocol::{ErrorCode, Offset, PartitionIndex, RecordBatch};
use ferry_storage::{Cf, StateStore, StorageError, WriteBatch};
use tokio::sync::watch;

use self::command::{Command, CommandResponse};
use self::txn::{GroupCounts, TxnRecord};

/// Most partitions one topic may have.
pub const TOPIC_PARTITIONS_MAX: u32 = 1024;

/// Longest topic name.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Checks a topic name: 1..=249 chars of `[A-Za-z0-9._-]`.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    ferry_protocol::types::validate_name("topic name", name, TOPIC_NAME_BYTES_MAX, "._-")
}

/// A topic's durable description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    /// Leader clock at creation.
    pub created_ms: u64,
    /// Global partition ids, by partition index.
    pub partition_ids: Vec<u32>,
}

impl TopicRecord {
    // topic value := created_ms:u64 | count:u32 | partition_id:u32*
    fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(12 + 4 * self.partition_ids.len());
        buf.put_u64(self.created_ms);
        wire::put_array(&mut buf, &self.partition_ids, |b, id| b.put_u32(*id));
        buf.freeze()
    }

    fn decode(mut buf: Bytes) -> DecodeResult<TopicRecord> {
        let created_ms = wire::get_u64(&mut buf, "topic.created_ms")?;
        let partition_ids = wire::get_array(&mut buf, "topic.partitions", 4, |b| {
            wire::get_u32(b, "topic.partition_id")
        })?;
        Ok(TopicRecord { created_ms, partition_ids })
    }
}

/// A partition's durable positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRecord {
    /// Offset the next record gets (the high watermark: everything below is committed).
    pub next_offset: u64,
    /// First offset still stored.
    pub log_start: u64,
}

impl PartitionRecord {
    // partition value := next_offset:u64 | log_start:u64
    fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(16);
        buf.put_u64(self.next_offset);
        buf.put_u64(self.log_start);
        buf.freeze()
    }

    fn decode(mut buf: Bytes) -> DecodeResult<PartitionRecord> {
        Ok(PartitionRecord {
            next_offset: wire::get_u64(&mut buf, "partition.next_offset")?,
            log_start: wire::get_u64(&mut buf, "partition.log_start")?,
        })
    }
}

/// Where a command sits in the Raft log: its entry's index and, when the leader merged several
/// commands into that entry ([`Command::Batch`]), its position among them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogPos {
    /// The entry's log index.
    pub index: u64,
    /// Position inside a merged entry; `None` for an entry holding one command.
    pub position: Option<u32>,
}

impl LogPos {
    /// The command that is the whole entry at `index`.
    pub fn entry(index: u64) -> LogPos {
        LogPos { index, position: None }
    }
}

/// Reads the record batch carried by the command at a log position. Supplied by the
/// replication module, which owns the entry format.
pub type BatchResolver = Arc<dyn Fn(LogPos) -> Result<Bytes, StateError> + Send + Sync>;

/// The value stored for one batch in the messages family.
///
/// ```text
/// message value := 0x01 | log_index:u64be     the batch is in the Raft log entry at log_index
///                | 0x02 | batch bytes         the batch itself (written by snapshot import)
///                | 0x03 | log_index:u64be | position:u32be
///                                             the batch is command `position` of the merged
///                                             entry at log_index
/// ```
///
/// Why a pointer: the batch bytes are already durable in the Raft log, whose keys are
/// sequential, so RocksDB moves its files down the levels without rewriting them. Copying the
/// bytes into this family as well doubled the bytes written and, with partitions interleaved in
/// one key space, made every compaction rewrite them (profiled: flush + compaction + LZ4 took
/// most of a leader's CPU). The Raft log is therefore never purged below an applied produce
/// while a pointer refers to it; snapshots carry the bytes inline instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageValue {
    /// In the Raft log at this position.
    InLog(LogPos),
    /// The batch bytes themselves.
    Inline(Bytes),
}

const MESSAGE_IN_LOG: u8 = 0x01;
const MESSAGE_INLINE: u8 = 0x02;
const MESSAGE_IN_LOG_AT: u8 = 0x03;

impl MessageValue {
    /// Encodes the value.
    pub fn encode(&self) -> Bytes {
        match self {
            MessageValue::InLog(LogPos { index, position: None }) => {
                let mut buf = BytesMut::with_capacity(9);
                buf.put_u8(MESSAGE_IN_LOG);
                buf.put_u64(*index);
                buf.freeze()
            }
            MessageValue::InLog(LogPos { index, position: Some(position) }) => {
                let mut buf = BytesMut::with_capacity(13);
                buf.put_u8(MESSAGE_IN_LOG_AT);
                buf.put_u64(*index);
                buf.put_u32(*position);
                buf.freeze()
            }
            MessageValue::Inline(batch) => {
                let mut buf = BytesMut::with_capacity(1 + batch.len());
                buf.put_u8(MESSAGE_INLINE);
                buf.extend_from_slice(batch);
                buf.freeze()
            }
        }
    }

    /// Decodes a stored value; `Inline` is a zero-copy slice.
    pub fn decode(mut value: Bytes) -> DecodeResult<MessageValue> {
        match wire::get_u8(&mut value, "message.tag")? {
            MESSAGE_IN_LOG => {
                let index = wire::get_u64(&mut value, "message.log_index")?;
                Ok(MessageValue::InLog(LogPos::entry(index)))
            }
            MESSAGE_IN_LOG_AT => {
                let index = wire::get_u64(&mut value, "message.log_index")?;
                let position = wire::get_u32(&mut value, "message.position")?;
                Ok(MessageValue::InLog(LogPos { index, position: Some(position) }))
            }
            MESSAGE_INLINE => Ok(MessageValue::Inline(value)),
            other => Err(ferry_protocol::DecodeError::Invalid {
                what: "message.tag",
                detail: format!("{other}"),
            }),
        }
    }
}

/// Errors on the state's read or apply paths.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed: the replica must stop.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Stored bytes did not decode: the replica must stop.
    #[error("corrupt state: {0}")]
    Corrupt(String),
    /// The request names something that does not exist or is out of range.
    #[error("{message}")]
    Request {
        /// Wire code for the client.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
}

fn corrupt(e: impl std::fmt::Display) -> StateError {
    StateError::Corrupt(e.to_string())
}

/// The authoritative metadata, owned by the applier.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    topics: BTreeMap<String, TopicRecord>,
    partitions: HashMap<u32, PartitionRecord>,
    next_partition_id: u32,
    /// Id the next half message gets (ids start at 1).
    next_txn_id: u64,
    groups: BTreeMap<String, GroupCounts>,
    /// Next delayed-message id and how many are pending.
    delayed: delayed::DelayedCounters,
    /// Push subscriptions by name.
    push: push::PushMeta,
    /// Id the next push subscription gets.
    next_push_id: u64,
}

impl Meta {
    /// Loads the metadata from the store.
    pub fn load(store: &dyn StateStore) -> Result<Meta, StateError> {
        let mut meta = Meta { next_txn_id: 1, ..Meta::default() };
        if let Some(mut v) = store.get(Cf::State, &keys::NEXT_TXN_ID)? {
            meta.next_txn_id = wire::get_u64(&mut v, "next_txn_id").map_err(corrupt)?;
        }
        if let Some(v) = store.get(Cf::State, &keys::NEXT_PARTITION_ID)? {
            let mut v = v;
            meta.next_partition_id = wire::get_u32(&mut v, "next_partition_id").map_err(corrupt)?;
        }
        let (start, end) = keys::topic_range();
        for (k, v) in scan_all(store, Cf::State, &start, &end)? {
            let name = keys::topic_name(&k).map_err(corrupt)?;
            meta.topics.insert(name, TopicRecord::decode(v).map_err(corrupt)?);
        }
        let (start, end) = keys::partition_range();
        for (k, v) in scan_all(store, Cf::State, &start, &end)? {
            let id = keys::partition_id_of(&k).map_err(corrupt)?;
            meta.partitions.insert(id, PartitionRecord::decode(v).map_err(corrupt)?);
        }
        meta.groups = txn::load_group_counts(store)?;
        meta.delayed = delayed::load_counters(store)?;
        (meta.push, meta.next_push_id) = push::load_subscriptions(store)?;
        Ok(meta)
    }
}

fn scan_all(
    store: &dyn StateStore,
    cf: Cf,
    start: &[u8],
    end: &[u8],
) -> Result<Vec<(Bytes, Bytes)>, StorageError> {
    const PAGE: usize = 1024;
    let mut out = Vec::new();
    let mut from = start.to_vec();
    loop {
        let page = store.scan(cf, &from, end, PAGE)?;
        let full = page.len() == PAGE;
        if let Some((last, _)) = page.last() {
            from = last.to_vec();
            from.push(0);
        }
        out.extend(page);
        if !full {
            return Ok(out);
        }
    }
}

/// What one apply call changed, to publish after its write succeeded.
#[derive(Debug, Default)]
pub struct Changes {
    topics: Vec<String>,
    partitions: Vec<u32>,
    groups: bool,
    /// Push subscriptions written (by name).
    push: Vec<String>,
    /// Earliest due time of a timer added by this apply call.
    timer_low_ms: Option<u64>,
}

/// Applies commands to the state. Owned by the Raft state-machine worker.
pub struct Applier {
    store: Arc<dyn StateStore>,
    meta: Meta,
    shared: Arc<SharedState>,
    /// Transaction records written by the current apply call and not yet in the store
    /// (`None`: deleted), so a later command of the same call reads its predecessor's writes.
    txn_overlay: HashMap<u64, Option<TxnRecord>>,
    /// The same for `SendHalf` dedup entries: (producer id, sequence) → transaction id.
    dedup_overlay: HashMap<(u64, u32), u64>,
    /// The same for delayed-message records (`None`: delivered), so a repeated delivery in
    /// the same call finds the message gone.
    delayed_overlay: HashMap<u64, Option<delayed::DelayedRecord>>,
    /// Group-position keys written by the current apply call and not yet in the store, so a
    /// topic deleted later in the same call forgets them too (replicas group entries into
    /// apply calls differently; the outcome must not depend on it).
    offsets_overlay: Vec<Vec<u8>>,
    /// The same for produce dedup entries (`None`: expired or dropped with its topic), keyed
    /// by the entry bytes (`keys::dedup_entry`).
    dedup_ids_overlay: HashMap<Vec<u8>, Option<dedup::DedupRecord>>,
    /// The same for push delivery records (`None`: deleted), keyed by `push::delivery_key`.
    push_overlay: push::PushOverlay,
}

impl Applier {
    /// Loads metadata from `store` and publishes it to a fresh [`SharedState`], which reads
    /// batches kept in the Raft log through `resolver`.
    pub fn open(
        store: Arc<dyn StateStore>,
        resolver: BatchResolver,
    ) -> Result<Applier, StateError> {
        let meta = Meta::load(store.as_ref())?;
        let shared = Arc::new(SharedState::new(store.clone(), resolver));
        shared.publish_all(&meta);
        Ok(Applier {
            store,
            meta,
            shared,
            txn_overlay: HashMap::new(),
            dedup_overlay: HashMap::new(),
            delayed_overlay: HashMap::new(),
            offsets_overlay: Vec::new(),
            dedup_ids_overlay: HashMap::new(),
            push_overlay: push::PushOverlay::default(),
        })
    }

    /// The read side handlers use.
    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    /// The store under this state.
    pub fn store(&self) -> &Arc<dyn StateStore> {
        &self.store
    }

    /// Reloads everything from the store (after a snapshot was installed).
    pub fn reload(&mut self) -> Result<(), StateError> {
        self.meta = Meta::load(self.store.as_ref())?;
        self.txn_overlay.clear();
        self.dedup_overlay.clear();
        self.delayed_overlay.clear();
        self.offsets_overlay.clear();
        self.dedup_ids_overlay.clear();
        self.push_overlay.clear();
        self.shared.publish_all(&self.meta);
        Ok(())
    }

    /// Applies one command, carried by the Raft entry at `log_index`, adding its writes to
    /// `batch` and noting what changed.
    pub fn apply(
        &mut self,
        log_index: u64,
        command: &Command,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        match command {
            Command::Batch(commands) => {
                let responses = commands
                    .iter()
                    .zip(0u32..)
                    .map(|(c, i)| {
                        let pos = LogPos { index: log_index, position: Some(i) };
                        self.apply_one(pos, c, batch, changes)
                    })
                    .collect();
                CommandResponse::Batch(responses)
            }
            other => self.apply_one(LogPos::entry(log_index), other, batch, changes),
        }
    }

    /// Applies one command found at `pos`.
    fn apply_one(
        &mut self,
        pos: LogPos,
        command: &Command,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        match command {
            Command::Batch(_) => {
                rejected(ErrorCode::Malformed, "a merged entry may not hold another".into())
            }
            Command::CreateTopic { name, partitions, created_ms } => {
                self.create_topic(name, *partitions, *created_ms, batch, changes)
            }
            Command::DeleteTopic { name } => self.delete_topic(name, batch, changes),
            Command::Produce { topic, partition, batch: bytes } => {
                self.produce(pos, topic, *partition, bytes, batch, changes)
            }
            Command::ProduceIdempotent { topic, partition, stamped_ms, record_ids, batch: b } => {
                self.produce_idempotent(
                    pos,
                    topic,
                    *partition,
                    *stamped_ms,
                    *record_ids,
                    b,
                    batch,
                    changes,
                )
            }
            Command::ExpireDedup { entries } => self.expire_dedup(entries, batch),
            Command::PutHalf {
                group,
                topic,
                partition,
                check_timeout_ms,
                created_ms,
                batch: b,
            } => self.put_half(
                pos,
                group,
                topic,
                *partition,
                *check_timeout_ms,
                *created_ms,
                b,
                batch,
                changes,
            ),
            Command::EndTransaction { txn_id, commit, origin, decided_ms, purge_at_ms } => self
                .end_transaction(
                    *txn_id,
                    *commit,
                    *origin,
                    *decided_ms,
                    *purge_at_ms,
                    batch,
                    changes,
                ),
            Command::RecordChecks { checks } => self.record_checks(checks, batch, changes),
            Command::ParkTransactions { parked_ms, txns } => {
                self.park_transactions(*parked_ms, txns, batch, changes)
            }
            Command::PurgeTransactions { txns } => self.purge_transactions(txns, batch),
            Command::ProduceDelayed { topic, partition, deliver_at_ms, batch: bytes } => {
                self.produce_delayed(pos, topic, *partition, *deliver_at_ms, bytes, batch, changes)
            }
            Command::DeliverDelayed { items } => self.deliver_delayed(items, batch, changes),
            Command::CommitOffsets { group, committed_ms, offsets } => {
                self.commit_offsets(group, *committed_ms, offsets, batch)
            }
            Command::Push(p) => self.apply_push(p, batch, changes),
        }
    }

    /// The global partition id of `topic`/`partition`, or the rejection to answer.
    fn partition_id(&self, topic: &str, partition: u32) -> Result<u32, CommandResponse> {
        let Some(record) = self.meta.topics.get(topic) else {
            return Err(rejected(ErrorCode::UnknownTopic, format!("unknown topic {topic}")));
        };
        record.partition_ids.get(partition as usize).copied().ok_or_else(|| {
            rejected(
                ErrorCode::UnknownPartition,
                format!("topic {topic} has no partition {partition}"),
            )
        })
    }

    /// Appends a batch of `count` records to partition `id`; returns its base offset.
    fn append(
        &mut self,
        id: u32,
        value: MessageValue,
        count: u32,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> Option<u64> {
        let p = self.meta.partitions.get_mut(&id)?;
        let base = p.next_offset;
        p.next_offset = base.saturating_add(u64::from(count));
        batch.put(Cf::Messages, keys::message_key(id, base).to_vec(), value.encode());
        batch.put(Cf::State, keys::partition_key(id).to_vec(), p.encode());
        changes.partitions.push(id);
        Some(base)
    }

    fn create_topic(
        &mut self,
        name: &str,
        partitions: u32,
        created_ms: u64,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        if self.meta.topics.contains_key(name) {
            return rejected(ErrorCode::TopicExists, format!("topic {name} already exists"));
        }
        if let Err(message) = validate_topic_name(name) {
            return rejected(ErrorCode::InvalidArgument, message);
        }
        if partitions == 0 || partitions > TOPIC_PARTITIONS_MAX {
            return rejected(
                ErrorCode::InvalidArgument,
                format!("partitions must be 1..={TOPIC_PARTITIONS_MAX}"),
            );
        }
        let first = self.meta.next_partition_id;
        let Some(next) = first.checked_add(partitions) else {
            return rejected(ErrorCode::InvalidArgument, "partition ids exhausted".into());
        };
        let record = TopicRecord { created_ms, partition_ids: (first..next).collect() };
        for id in first..next {
            let p = PartitionRecord { next_offset: 0, log_start: 0 };
            batch.put(Cf::State, keys::partition_key(id).to_vec(), p.encode());
            self.meta.partitions.insert(id, p);
            changes.partitions.push(id);
        }
        self.meta.next_partition_id = next;
        batch.put(Cf::State, keys::NEXT_PARTITION_ID.to_vec(), next.to_be_bytes().to_vec());
        batch.put(Cf::State, keys::topic_key(name), record.encode());
        self.meta.topics.insert(name.to_string(), record);
        changes.topics.push(name.to_string());
        CommandResponse::TopicCreated
    }

    fn delete_topic(
        &mut self,
        name: &str,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        if !self.meta.topics.contains_key(name) {
            return rejected(ErrorCode::UnknownTopic, format!("unknown topic {name}"));
        }
        if let Err(e) = self.forget_offsets_of_topic(name, batch) {
            // Apply must stay deterministic: a store read error is not a refusal. Positions
            // left behind are harmless (consumers clamp them to the partition's bounds).
            tracing::error!(error = %e, topic = name, "could not read group positions");
        }
        let Some(record) = self.meta.topics.remove(name) else {
            return rejected(ErrorCode::UnknownTopic, format!("unknown topic {name}"));
        };
        for id in &record.partition_ids {
            let (start, end) = keys::message_range(*id);
            batch.delete_range(Cf::Messages, start.to_vec(), end.to_vec());
            batch.delete(Cf::State, keys::partition_key(*id).to_vec());
            self.forget_dedup_of_partition(*id, batch);
            self.meta.partitions.remove(id);
            changes.partitions.push(*id);
        }
        self.reset_push_of_topic(name, batch, changes);
        batch.delete(Cf::State, keys::topic_key(name));
        changes.topics.push(name.to_string());
        CommandResponse::Done
    }

    fn produce(
        &mut self,
        pos: LogPos,
        topic: &str,
        partition: u32,
        bytes: &Bytes,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        let id = match self.partition_id(topic, partition) {
            Ok(id) => id,
            Err(resp) => return resp,
        };
        // The handler validated the batch (CRC, structure, count > 0) before proposing; reading
        // the header again here keeps apply total even if a bad batch reached the log.
        let count = match RecordBatch::from_trusted(bytes.clone()) {
            Ok(b) if b.count() > 0 => b.count(),
            _ => return rejected(ErrorCode::CorruptBatch, "batch header unreadable".into()),
        };
        match self.append(id, MessageValue::InLog(pos), count, batch, changes) {
            Some(base) => {
                CommandResponse::Produced { base_offset: Offset(base), count, duplicates: 0 }
            }
            None => rejected(ErrorCode::UnknownPartition, format!("partition id {id} missing")),
        }
    }

    /// Publishes `changes` to readers. Call only after the batch holding them was written
    /// (the store now holds what the apply call's overlay did, so the overlay is dropped).
    pub fn publish(&mut self, changes: &Changes) {
        self.txn_overlay.clear();
        self.dedup_overlay.clear();
        self.delayed_overlay.clear();
        self.offsets_overlay.clear();
        self.dedup_ids_overlay.clear();
        self.push_overlay.clear();
        self.shared.publish(&self.meta, changes);
        if !changes.partitions.is_empty() || !changes.push.is_empty() {
            // After the index update: a woken worker reads the new watermarks.
            self.shared.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

fn rejected(code: ErrorCode, message: String) -> CommandResponse {
    CommandResponse::Rejected { code, message }
}

struct PartitionView {
    log_start: u64,
    /// Carries the high watermark; fetchers park on it.
    high_watermark: watch::Sender<u64>,
}

#[derive(Default)]
struct ReadIndex {
    topics: BTreeMap<String, TopicRecord>,
    partitions: HashMap<u32, PartitionView>,
    groups: BTreeMap<String, GroupCounts>,
}

/// The read side of the state, shared by every handler.
pub struct SharedState {
    store: Arc<dyn StateStore>,
    resolver: BatchResolver,
    index: RwLock<ReadIndex>,
    /// Earliest due time of the timers added since the coordinator last asked
    /// (`u64::MAX`: none).
    timer_low_ms: std::sync::atomic::AtomicU64,
    /// Push subscriptions as last applied.
    push: RwLock<BTreeMap<String, Arc<push::SubRecord>>>,
    /// Bumped whenever an apply call appended messages or changed push state, so push
    /// workers wait on one channel instead of every partition.
    changed: watch::Sender<u64>,
}

/// A resolved partition ready to read.
pub struct PartitionHandle {
    id: u32,
    log_start: u64,
    high_watermark: watch::Receiver<u64>,
}

impl PartitionHandle {
    /// Offset the next record will get.
    pub fn high_watermark(&self) -> Offset {
        Offset(*self.high_watermark.borrow())
    }

    /// First offset stored.
    pub fn log_start(&self) -> Offset {
        Offset(self.log_start)
    }

    /// Waits until the high watermark passes `offset`. Returns false if the partition was
    /// deleted while waiting.
    pub async fn wait_beyond(&mut self, offset: Offset) -> bool {
        self.high_watermark.wait_for(|hw| *hw > offset.0).await.is_ok()
    }
}

impl SharedState {
    fn new(store: Arc<dyn StateStore>, resolver: BatchResolver) -> Self {
        SharedState {
            store,
            resolver,
            index: RwLock::new(ReadIndex::default()),
            timer_low_ms: std::sync::atomic::AtomicU64::new(0),
            push: RwLock::default(),
            changed: watch::channel(0).0,
        }
    }

    /// A receiver that sees a new value after every apply call that appended messages or
    /// changed a push subscription.
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The earliest due time of the timers added since the last call (`None`: none), so a
    /// scan cursor past it can move back. Starts at 0 (everything), also after a snapshot
    /// install.
    pub fn take_timer_low_ms(&self) -> Option<u64> {
        let low = self.timer_low_ms.swap(u64::MAX, std::sync::atomic::Ordering::AcqRel);
        (low != u64::MAX).then_some(low)
    }

    /// The batch bytes a messages-family value stands for.
    pub fn resolve(&self, value: Bytes) -> Result<Bytes, StateError> {
        match MessageValue::decode(value).map_err(corrupt)? {
            MessageValue::Inline(batch) => Ok(batch),
            MessageValue::InLog(pos) => (self.resolver)(pos),
        }
    }

    fn publish_all(&self, meta: &Meta) {
        self.timer_low_ms.store(0, std::sync::atomic::Ordering::Release);
        self.publish_push(&meta.push, &[]);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        let Ok(mut index) = self.index.write() else { return };
        index.topics = meta.topics.clone();
        index.groups = meta.groups.clone();
        index.partitions.retain(|id, _| meta.partitions.contains_key(id));
        for (id, p) in &meta.partitions {
            match index.partitions.get_mut(id) {
                Some(view) => {
                    view.log_start = p.log_start;
                    view.high_watermark.send_replace(p.next_offset);
                }
                None => {
                    let (tx, _) = watch::channel(p.next_offset);
                    index
                        .partitions
                        .insert(*id, PartitionView { log_start: p.log_start, high_watermark: tx });
                }
            }
        }
    }

    fn publish(&self, meta: &Meta, changes: &Changes) {
        if let Some(low) = changes.timer_low_ms {
            // After the write: a coordinator that takes this mark finds the timer in the store.
            self.timer_low_ms.fetch_min(low, std::sync::atomic::Ordering::AcqRel);
        }
        if !changes.push.is_empty() {
            self.publish_push(&meta.push, &changes.push);
        }
        let Ok(mut index) = self.index.write() else { return };
        if changes.groups {
            index.groups = meta.groups.clone();
        }
        for name in &changes.topics {
            match meta.topics.get(name) {
                Some(t) => index.topics.insert(name.clone(), t.clone()),
                None => index.topics.remove(name),
            };
        }
        for id in &changes.partitions {
            match meta.partitions.get(id) {
                Some(p) => match index.partitions.get_mut(id) {
                    Some(view) => {
                        view.log_start = p.log_start;
                        view.high_watermark.send_if_modified(|hw| {
                            let moved = *hw != p.next_offset;
                            *hw = p.next_offset;
                            moved
                        });
                    }
                    None => {
                        let (tx, _) = watch::channel(p.next_offset);
                        index.partitions.insert(
                            *id,
                            PartitionView { log_start: p.log_start, high_watermark: tx },
                        );
                    }
                },
                // Dropping the sender wakes parked fetchers, which then see the topic is gone.
                None => {
                    index.partitions.remove(id);
                }
            }
        }
    }

    /// Resolves `topic`/`partition` for reading.
    pub fn partition(
        &self,
        topic: &str,
        partition: PartitionIndex,
    ) -> Result<PartitionHandle, StateError> {
        let index = self.index.read().map_err(|_| corrupt("index lock poisoned"))?;
        let record = index.topics.get(topic).ok_or_else(|| StateError::Request {
            code: ErrorCode::UnknownTopic,
            message: format!("unknown topic {topic}"),
        })?;
        let id =
            *record.partition_ids.get(partition.0 as usize).ok_or_else(|| StateError::Request {
                code: ErrorCode::UnknownPartition,
                message: format!("topic {topic} has no partition {partition}"),
            })?;
        let view = index.partitions.get(&id).ok_or_else(|| corrupt("partition view missing"))?;
        Ok(PartitionHandle {
            id,
            log_start: view.log_start,
            high_watermark: view.high_watermark.subscribe(),
        })
    }

    /// Metadata of the named topics (all when `names` is empty), in name order.
    pub fn topics(&self, names: &[String]) -> Result<Vec<TopicMetadata>, StateError> {
        let index = self.index.read().map_err(|_| corrupt("index lock poisoned"))?;
        let describe = |name: &String, t: &TopicRecord| TopicMetadata {
            name: name.clone(),
            created_ms: t.created_ms,
            partitions: t
                .partition_ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let (log_start, hw) = index
                        .partitions
                        .get(id)
                        .map(|v| (v.log_start, *v.high_watermark.borrow()))
                        .unwrap_or_default();
                    PartitionMetadata {
                        index: PartitionIndex(u32::try_from(i).unwrap_or(u32::MAX)),
                        log_start: Offset(log_start),
                        high_watermark: Offset(hw),
                    }
                })
                .collect(),
        };
        if names.is_empty() {
            return Ok(index.topics.iter().map(|(n, t)| describe(n, t)).collect());
        }
        names
            .iter()
            .map(|n| {
                index.topics.get(n).map(|t| describe(n, t)).ok_or_else(|| StateError::Request {
                    code: ErrorCode::UnknownTopic,
                    message: format!("unknown topic {n}"),
                })
            })
            .collect()
    }

    /// Reads whole batches from `offset` on, up to about `max_bytes` (at least one batch when
    /// one is available). The first batch may start before `offset`.
    pub fn read(
        &self,
        handle: &PartitionHandle,
        offset: Offset,
        max_bytes: usize,
    ) -> Result<Vec<FetchedBatch>, StateError> {
        const SCAN_PAGE: usize = 8;
        let hw = handle.high_watermark().0;
        if offset.0 >= hw {
            return Ok(Vec::new());
        }
        let id = handle.id;
        let (range_start, range_end) = keys::message_range(id);
        let upto = keys::message_key(id, offset.0.saturating_add(1));
        let mut from = match self.store.last_in_range(Cf::Messages, &range_start, &upto)? {
            Some((k, _)) => k.to_vec(),
            None => keys::message_key(id, offset.0).to_vec(),
        };
        let mut out = Vec::new();
        let mut bytes = 0usize;
        loop {
            let page = self.store.scan(Cf::Messages, &from, &range_end, SCAN_PAGE)?;
            let full = page.len() == SCAN_PAGE;
            for (k, v) in page {
                let (_, base) = keys::message_key_parts(&k).map_err(corrupt)?;
                if base >= hw {
                    // Written by an apply whose publish has not happened yet: not visible.
                    return Ok(out);
                }
                from = k.to_vec();
                from.push(0);
                let batch = self.resolve(v)?;
                bytes += batch.len();
                out.push(FetchedBatch { base_offset: Offset(base), bytes: batch });
                if bytes >= max_bytes {
                    return Ok(out);
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }
}
