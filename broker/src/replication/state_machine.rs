//! openraft's state machine over our [`Applier`]: each `apply` call becomes one atomic state
//! write (with the last applied log id in the same batch), and snapshots are whole-state exports
//! in files under `<data_dir>/snapshots`.
//!
//! State writes may skip the store's WAL: after a crash the state is a consistent prefix and
//! openraft re-applies the Raft log from the stored last-applied id. Because of that, a
//! snapshot flushes the state before it is reported, so the log can be purged behind it.

use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_storage::snapshot_stream::{StreamReader, StreamWriter};
use ferry_storage::{Cf, LogStore, StateStore, WriteBatch};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};

use super::codec;
use super::TypeConfig;
use crate::state::command::CommandResponse;
use crate::state::delayed::DelayedRecord;
use crate::state::txn::TxnRecord;
use crate::state::{
    keys, Applier, BatchResolver, Changes, LogPos, MessageValue, SharedState, StateError,
};

const CURRENT_META: &str = "current.meta";
const CURRENT_DATA: &str = "current.snap";

/// The state machine openraft drives.
pub struct StateMachine {
    applier: Applier,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    snapshot_dir: PathBuf,
    snapshot_seq: u64,
}

fn sm_read_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn sm_write_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::write_snapshot(None, &std::io::Error::other(e.to_string())).into()
}

impl StateMachine {
    /// Opens the state machine over `store`, resolving batches kept in `log`, with snapshot
    /// files in `snapshot_dir`.
    pub fn open(
        store: Arc<dyn StateStore>,
        log: Arc<dyn LogStore>,
        snapshot_dir: &Path,
    ) -> anyhow::Result<StateMachine> {
        std::fs::create_dir_all(snapshot_dir)?;
        let applier = Applier::open(store.clone(), batch_resolver(log))?;
        let last_applied = match store.get(Cf::State, &keys::APPLIED)? {
            Some(mut b) => Some(codec::get_log_id(&mut b)?),
            None => None,
        };
        let membership = match store.get(Cf::State, &keys::MEMBERSHIP)? {
            Some(mut b) => codec::get_stored_membership(&mut b)?,
            None => StoredMembership::default(),
        };
        Ok(StateMachine {
            applier,
            last_applied,
            membership,
            snapshot_dir: snapshot_dir.to_path_buf(),
            snapshot_seq: 0,
        })
    }

    /// The read side for handlers.
    pub fn shared(&self) -> Arc<SharedState> {
        self.applier.shared()
    }

    fn store(&self) -> Arc<dyn StateStore> {
        self.applier.store().clone()
    }

    fn read_current_meta(
        dir: &Path,
    ) -> Result<Option<SnapshotMeta<u64, BasicNode>>, StorageError<u64>> {
        let path = dir.join(CURRENT_META);
        let raw = match std::fs::read(&path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(sm_read_err(e)),
        };
        let mut bytes = Bytes::from(raw);
        codec::get_snapshot_meta(&mut bytes).map(Some).map_err(sm_read_err)
    }

    /// Makes `data` (already complete on disk) the current snapshot described by `meta`:
    /// data first, then meta, each renamed into place after an fsync.
    fn commit_snapshot_files(
        dir: &Path,
        data: &Path,
        meta: &SnapshotMeta<u64, BasicNode>,
    ) -> std::io::Result<()> {
        std::fs::rename(data, dir.join(CURRENT_DATA))?;
        let mut buf = BytesMut::new();
        codec::put_snapshot_meta(&mut buf, meta);
        let tmp = dir.join("meta.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
        std::fs::rename(tmp, dir.join(CURRENT_META))?;
        std::fs::File::open(dir)?.sync_all()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::new();
        let mut changes = Changes::default();
        let mut responses = Vec::new();
        let mut last = None;
        let mut membership_changed = false;
        for entry in entries {
            last = Some(entry.log_id);
            let response = match &entry.payload {
                EntryPayload::Blank => CommandResponse::Done,
                EntryPayload::Normal(cmd) => {
                    self.applier.apply(entry.log_id.index, cmd, &mut batch, &mut changes)
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    membership_changed = true;
                    CommandResponse::Done
                }
            };
            responses.push(response);
        }
        let Some(last) = last else { return Ok(responses) };
        let mut buf = BytesMut::new();
        codec::put_log_id(&mut buf, &last);
        batch.put(Cf::State, keys::APPLIED.to_vec(), buf.freeze());
        if membership_changed {
            let mut buf = BytesMut::new();
            codec::put_stored_membership(&mut buf, &self.membership);
            batch.put(Cf::State, keys::MEMBERSHIP.to_vec(), buf.freeze());
        }
        let store = self.store();
        tokio::task::spawn_blocking(move || store.write(batch))
            .await
            .map_err(sm_write_err)?
            .map_err(|e| {
                tracing::error!(error = %e, "state write failed; stopping replica");
                sm_write_err(e)
            })?;
        self.applier.publish(&changes);
        self.last_applied = Some(last);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder {
            store: self.store(),
            shared: self.shared(),
            dir: self.snapshot_dir.clone(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            seq: self.snapshot_seq,
            // Taken now, while no apply can run, so the export matches `last_applied`.
            export: None,
        }
        .prepare()
        .await
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
        let path = self.snapshot_dir.join("receiving.snap");
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .await
            .map_err(snap_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        let mut file = snapshot.into_std().await;
        let store = self.store();
        let dir = self.snapshot_dir.clone();
        let meta_owned = meta.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            file.sync_all()?;
            file.rewind()?;
            let mut reader = std::io::BufReader::new(file);
            store.import(&mut reader)?;
            StateMachine::commit_snapshot_files(&dir, &dir.join("receiving.snap"), &meta_owned)?;
            Ok(())
        })
        .await
        .map_err(snap_err)?
        .map_err(snap_err)?;
        self.applier.reload().map_err(snap_err)?;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        tracing::info!(snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let Some(meta) = Self::read_current_meta(&self.snapshot_dir)? else { return Ok(None) };
        let file = tokio::fs::File::open(self.snapshot_dir.join(CURRENT_DATA))
            .await
            .map_err(sm_read_err)?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(file) }))
    }
}

/// Builds a snapshot: the state export is taken in [`SnapshotBuilder::prepare`] (while applies
/// are paused, so it matches the applied id exactly); `build_snapshot` only publishes it.
pub struct SnapshotBuilder {
    store: Arc<dyn StateStore>,
    shared: Arc<SharedState>,
    dir: PathBuf,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    seq: u64,
    export: Option<Result<PathBuf, String>>,
}

impl SnapshotBuilder {
    async fn prepare(mut self) -> Self {
        let store = self.store.clone();
        let shared = self.shared.clone();
        let raw = self.dir.join(format!("export-{}.snap", self.seq));
        let path = self.dir.join(format!("building-{}.snap", self.seq));
        let result = tokio::task::spawn_blocking(move || -> Result<PathBuf, String> {
            // Flush first: once this snapshot exists the log may be purged behind it, and the
            // state written without a WAL must not depend on that log any more.
            store.flush().map_err(|e| e.to_string())?;
            let file = std::fs::File::create(&raw).map_err(|e| e.to_string())?;
            let mut out = std::io::BufWriter::new(file);
            store.export(&mut out).map_err(|e| e.to_string())?;
            drop(out.into_inner().map_err(|e| e.to_string())?);
            // The export holds pointers into this node's Raft log; a node installing the
            // snapshot lacks those entries, so replace every pointer with the batch itself.
            inline_messages(&raw, &path, &shared).map_err(|e| e.to_string())?;
            std::fs::remove_file(&raw).map_err(|e| e.to_string())?;
            Ok(path)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        self.export = Some(result);
        self
    }
}

/// Copies the snapshot stream at `from` to `to`, resolving every messages-family pointer into
/// the batch bytes, then syncs `to`.
fn inline_messages(from: &Path, to: &Path, shared: &SharedState) -> anyhow::Result<()> {
    let mut reader = StreamReader::new(std::fs::File::open(from)?)?;
    let file = std::fs::File::create(to)?;
    let mut writer = StreamWriter::new(&file)?;
    while let Some(record) = reader.next_record()? {
        if record.cf == Cf::Messages {
            let batch = shared.resolve(Bytes::from(record.value))?;
            writer.record(record.cf, &record.key, &MessageValue::Inline(batch).encode())?;
        } else if record.cf == Cf::Txn && keys::is_txn_record_key(&record.key) {
            // Half messages point into the Raft log too.
            let mut txn = TxnRecord::decode(Bytes::from(record.value))?;
            txn.batch = MessageValue::Inline(shared.txn_batch(&txn)?);
            writer.record(record.cf, &record.key, &txn.encode())?;
        } else if record.cf == Cf::Txn && keys::is_delayed_key(&record.key) {
            // So do delayed messages not yet due.
            let mut delayed = DelayedRecord::decode(Bytes::from(record.value))?;
            delayed.batch = MessageValue::Inline(shared.delayed_batch(&delayed)?);
            writer.record(record.cf, &record.key, &delayed.encode())?;
        } else {
            writer.record(record.cf, &record.key, &record.value)?;
        }
    }
    writer.finish()?;
    file.sync_all()?;
    Ok(())
}

/// Reads the batch of the produce, half-message or delayed-produce command at a log position.
/// Raft log entries the batch resolver keeps (each up to the 1 MiB a merged entry holds).
const RESOLVER_CACHE_ENTRIES: usize = 8;

fn batch_resolver(log: Arc<dyn LogStore>) -> BatchResolver {
    use crate::state::command::Command;
    // The entries read last. A fetch (or a transaction's commit, or a due delayed message)
    // usually resolves several batches of one merged entry in a row; without the cache each
    // would read the whole entry (up to 1 MiB) from the log store again.
    let recent: std::sync::Mutex<std::collections::VecDeque<(u64, Bytes)>> =
        std::sync::Mutex::new(std::collections::VecDeque::with_capacity(RESOLVER_CACHE_ENTRIES));
    Arc::new(move |pos: LogPos| {
        let index = pos.index;
        let cached = recent
            .lock()
            .ok()
            .and_then(|r| r.iter().find(|(i, _)| *i == index).map(|(_, b)| b.clone()));
        let bytes = match cached {
            Some(b) => b,
            None => {
                let entries = log.read_range(index, index.saturating_add(1))?;
                let Some((_, bytes)) = entries.into_iter().next() else {
                    return Err(StateError::Corrupt(format!("raft log entry {index} is missing")));
                };
                if let Ok(mut r) = recent.lock() {
                    if r.len() == RESOLVER_CACHE_ENTRIES {
                        r.pop_front();
                    }
                    r.push_back((index, bytes.clone()));
                }
                bytes
            }
        };
        let command = codec::command_of_entry(bytes, pos.position)
            .map_err(|e| StateError::Corrupt(e.to_string()))?;
        match command {
            Some(
                Command::Produce { batch, .. }
                | Command::ProduceIdempotent { batch, .. }
                | Command::PutHalf { batch, .. }
                | Command::ProduceDelayed { batch, .. },
            ) => Ok(batch),
            _ => Err(StateError::Corrupt(format!("raft log position {pos:?} holds no batch"))),
        }
    })
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let path = match self.export.take() {
            Some(Ok(path)) => path,
            Some(Err(e)) => return Err(snap_err(e)),
            None => return Err(snap_err("snapshot export missing")),
        };
        let snapshot_id = match self.last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, self.seq),
            None => format!("0-0-{}", self.seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let dir = self.dir.clone();
        let meta_c = meta.clone();
        tokio::task::spawn_blocking(move || {
            StateMachine::commit_snapshot_files(&dir, &path, &meta_c)
        })
        .await
        .map_err(snap_err)?
        .map_err(snap_err)?;
        let file = tokio::fs::File::open(self.dir.join(CURRENT_DATA)).await.map_err(sm_read_err)?;
        Ok(Snapshot { meta, snapshot: Box::new(file) })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use ferry_protocol::{
        DecisionOrigin, Offset, PartitionIndex, Record, RecordBatchBuilder, TxnId, TxnState,
    };
    use ferry_storage::mem::MemStore;
    use ferry_storage::{LogStore, StateStore, WriteBatch};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;
    use crate::state::command::Command;
    use crate::state::Changes;

    fn batch(v: &str) -> Bytes {
        let mut b = RecordBatchBuilder::new(0, 0, 0);
        b.push(&Record {
            timestamp_ms: 1,
            key: None,
            headers: vec![],
            value: Bytes::from(v.to_string()),
        });
        b.finish()
    }

    /// Applies commands as Raft would (entry in the log, then apply with its index) and returns
    /// the applier.
    fn applied(store: &MemStore, commands: Vec<Command>) -> Applier {
        let log: Arc<dyn LogStore> = Arc::new(store.clone());
        let mut applier = Applier::open(Arc::new(store.clone()), batch_resolver(log)).unwrap();
        for (i, cmd) in commands.into_iter().enumerate() {
            let index = i as u64 + 1;
            let entry = Entry::<TypeConfig> {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(cmd.clone()),
            };
            store.append(&[(index, codec::entry_to_bytes(&entry))]).unwrap();
            let mut wb = WriteBatch::new();
            let mut changes = Changes::default();
            applier.apply(index, &cmd, &mut wb, &mut changes);
            store.write(wb).unwrap();
            applier.publish(&changes);
        }
        applier
    }

    #[test]
    fn snapshot_carries_batches_inline_to_a_node_without_the_log() {
        let source = MemStore::new();
        let applier = applied(
            &source,
            vec![
                Command::CreateTopic { name: "t".into(), partitions: 1, created_ms: 0 },
                // A merged entry: batches point at (entry, position).
                Command::Batch(vec![
                    Command::Produce { topic: "t".into(), partition: 0, batch: batch("one") },
                    Command::Produce { topic: "t".into(), partition: 0, batch: batch("two") },
                    half("three"),
                ]),
                Command::EndTransaction {
                    txn_id: TxnId(1),
                    commit: true,
                    origin: DecisionOrigin::Producer,
                    decided_ms: 2,
                    purge_at_ms: 3,
                },
                half("four"),
            ],
        );
        let source_shared = applier.shared();
        let source_handle = source_shared.partition("t", PartitionIndex(0)).unwrap();
        assert_eq!(source_shared.read(&source_handle, Offset(0), 1 << 20).unwrap().len(), 3);
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        let out = dir.path().join("out");
        let mut file = std::fs::File::create(&raw).unwrap();
        source.export(&mut file).unwrap();
        inline_messages(&raw, &out, &applier.shared()).unwrap();

        // The receiving node has an empty Raft log: every batch must come from the snapshot.
        let target = MemStore::new();
        target.import(&mut std::fs::File::open(&out).unwrap()).unwrap();
        let empty_log: Arc<dyn LogStore> = Arc::new(MemStore::new());
        let restored = Applier::open(Arc::new(target), batch_resolver(empty_log)).unwrap();
        let shared = restored.shared();
        let handle = shared.partition("t", PartitionIndex(0)).unwrap();
        assert_eq!(handle.high_watermark(), Offset(3));
        let batches = shared.read(&handle, Offset(0), 1 << 20).unwrap();
        let values: Vec<Bytes> = batches
            .iter()
            .map(|b| {
                ferry_protocol::RecordBatch::parse(b.bytes.clone())
                    .unwrap()
                    .records()
                    .next()
                    .unwrap()
                    .unwrap()
                    .value
            })
            .collect();
        assert_eq!(values, vec![Bytes::from("one"), Bytes::from("two"), Bytes::from("three")]);
        // The pending half message travels inline too, and can still be committed.
        let pending = shared.txn(TxnId(2)).unwrap().unwrap();
        assert_eq!(pending.state, TxnState::Pending);
        assert!(matches!(pending.batch, MessageValue::Inline(_)));
        assert_eq!(shared.txn_batch(&pending).unwrap(), batch("four"));
    }

    #[test]
    fn snapshot_carries_a_pending_delayed_message_inline() {
        let source = MemStore::new();
        let delayed = |v: &str, deliver_at_ms| Command::ProduceDelayed {
            topic: "t".into(),
            partition: 0,
            deliver_at_ms,
            batch: batch(v),
        };
        let applier = applied(
            &source,
            vec![
                Command::CreateTopic { name: "t".into(), partitions: 1, created_ms: 0 },
                delayed("alone", 50),
                // In a merged entry: the record points at (entry, position).
                Command::Batch(vec![
                    Command::Produce { topic: "t".into(), partition: 0, batch: batch("now") },
                    delayed("merged", 60),
                ]),
            ],
        );
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        let out = dir.path().join("out");
        let mut file = std::fs::File::create(&raw).unwrap();
        source.export(&mut file).unwrap();
        inline_messages(&raw, &out, &applier.shared()).unwrap();

        // The receiving node has an empty Raft log: the batches must come from the snapshot.
        let target = MemStore::new();
        target.import(&mut std::fs::File::open(&out).unwrap()).unwrap();
        let empty_log: Arc<dyn LogStore> = Arc::new(MemStore::new());
        let mut restored =
            Applier::open(Arc::new(target.clone()), batch_resolver(empty_log)).unwrap();
        let shared = restored.shared();
        assert_eq!(shared.delayed_pending().unwrap(), 2);
        for (id, v) in [(1, "alone"), (2, "merged")] {
            let record = shared.delayed(id).unwrap().unwrap();
            assert!(matches!(record.batch, MessageValue::Inline(_)));
            assert_eq!(shared.delayed_batch(&record).unwrap(), batch(v));
        }
        let due = shared.due_timers(60, 10).unwrap();
        assert_eq!(due.len(), 2, "the timers travel too: {due:?}");

        // Delivered on the receiving node, from the inline bytes.
        let mut wb = WriteBatch::new();
        let mut changes = Changes::default();
        let items = due
            .iter()
            .map(|t| crate::state::command::DelayedDue { id: t.id, due_ms: t.due_ms })
            .collect();
        restored.apply(10, &Command::DeliverDelayed { items }, &mut wb, &mut changes);
        target.write(wb).unwrap();
        restored.publish(&changes);
        let handle = shared.partition("t", PartitionIndex(0)).unwrap();
        let batches = shared.read(&handle, Offset(0), 1 << 20).unwrap();
        let got: Vec<Bytes> = batches.into_iter().map(|b| b.bytes).collect();
        assert_eq!(got, vec![batch("now"), batch("alone"), batch("merged")]);
        assert_eq!(shared.delayed_pending().unwrap(), 0);
    }

    fn half(v: &str) -> Command {
        Command::PutHalf {
            group: "g".into(),
            topic: "t".into(),
            partition: 0,
            check_timeout_ms: 1000,
            created_ms: 1,
            batch: batch(v),
        }
    }

    #[test]
    fn message_values_round_trip() {
        for v in [
            MessageValue::InLog(LogPos::entry(42)),
            MessageValue::InLog(LogPos { index: 42, position: Some(7) }),
            MessageValue::Inline(Bytes::from_static(b"abc")),
        ] {
            assert_eq!(MessageValue::decode(v.encode()).unwrap(), v);
        }
        assert!(MessageValue::decode(Bytes::from_static(b"\x07")).is_err());
        assert!(MessageValue::decode(Bytes::from_static(b"\x01\x00")).is_err());
    }
}
