//! Idempotent produce, apply side: a batch or record the partition already holds is dropped,
//! so a retried send is stored once.
//!
//! Two kinds of dedup entry, both per partition (`keys::dedup_key`):
//! * **batch**: (producer id, base sequence) of every batch with a non-zero producer id. A
//!   producer resending a batch whose answer it lost sends the same bytes, so the key matches.
//! * **record**: the record's `ferry-dedup-id` header. For a sender whose retry may cut its
//!   batches differently: an outbox relay killed between publish and mark-done leaves its rows
//!   to another relay, which batches them its own way.
//!
//! The decision is taken here, in apply, and nowhere else: every replica applies the same
//! commands in the same order against the same entries, so all drop the same records, and a
//! retry racing its original (two entries in flight, a new leader re-proposing) is caught by
//! whichever applies second. Entries are stamped with the leader clock carried in the command
//! and forgotten when the leader proposes `ExpireDedup` naming them (with the stamp it read),
//! once `dedup_window_ms` has passed: replicas need not agree on a clock.
//!
//! A batch with some duplicate records is stored without them, re-encoded inline (the log
//! entry's bytes are not the stored bytes any more); a batch with none is stored as it came.

use std::collections::HashSet;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::record::{Record, RecordBatch, RecordBatchBuilder};
use ferry_protocol::wire;
use ferry_protocol::{ErrorCode, Offset};
use ferry_storage::{Cf, WriteBatch};

use super::command::CommandResponse;
use super::{
    corrupt, keys, rejected, Applier, Changes, LogPos, MessageValue, SharedState, StateError,
};

/// What a dedup entry remembers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DedupRecord {
    /// Offset of the batch's first stored record (batch entry) or of the record.
    pub first_offset: u64,
    /// Records stored under the entry.
    pub count: u32,
    /// Leader clock when it was stored; the window counts from here.
    pub stamped_ms: u64,
}

impl DedupRecord {
    /// ```text
    /// dedup := first_offset:u64be | count:u32be | stamped_ms:u64be
    /// ```
    fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(20);
        buf.put_u64(self.first_offset);
        buf.put_u32(self.count);
        buf.put_u64(self.stamped_ms);
        buf.freeze()
    }

    fn decode(mut buf: Bytes) -> Result<DedupRecord, StateError> {
        let read = |buf: &mut Bytes| -> wire::DecodeResult<DedupRecord> {
            Ok(DedupRecord {
                first_offset: wire::get_u64(buf, "dedup.first_offset")?,
                count: wire::get_u32(buf, "dedup.count")?,
                stamped_ms: wire::get_u64(buf, "dedup.stamped_ms")?,
            })
        };
        read(&mut buf).map_err(corrupt)
    }
}

impl Applier {
    /// The dedup entry `entry` (see `keys::dedup_entry`) as this apply call sees it.
    fn dedup_lookup(&self, entry: &[u8]) -> Result<Option<DedupRecord>, StateError> {
        if let Some(v) = self.dedup_ids_overlay.get(entry) {
            return Ok(*v);
        }
        match self.store.get(Cf::Txn, &keys::dedup_key(entry))? {
            Some(v) => DedupRecord::decode(v).map(Some),
            None => Ok(None),
        }
    }

    fn dedup_insert(&mut self, entry: Vec<u8>, record: DedupRecord, batch: &mut WriteBatch) {
        batch.put(Cf::Txn, keys::dedup_key(&entry), record.encode());
        batch.put(Cf::Txn, keys::dedup_expiry_key(record.stamped_ms, &entry), Bytes::new());
        self.dedup_ids_overlay.insert(entry, Some(record));
    }

    /// Appends the batch at `pos` minus what the partition already holds (module docs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn produce_idempotent(
        &mut self,
        pos: LogPos,
        topic: &str,
        partition: u32,
        stamped_ms: u64,
        record_ids: bool,
        bytes: &Bytes,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        let id = match self.partition_id(topic, partition) {
            Ok(id) => id,
            Err(resp) => return resp,
        };
        let parsed = match RecordBatch::from_trusted(bytes.clone()) {
            Ok(b) if b.count() > 0 => b,
            _ => return rejected(ErrorCode::CorruptBatch, "batch header unreadable".into()),
        };
        let batch_entry = (parsed.producer_id() != 0).then(|| {
            let mut key = [0u8; 12];
            key[..8].copy_from_slice(&parsed.producer_id().to_be_bytes());
            key[8..].copy_from_slice(&parsed.base_sequence().to_be_bytes());
            keys::dedup_entry(id, keys::DEDUP_KIND_BATCH, &key)
        });
        if let Some(entry) = &batch_entry {
            match self.dedup_lookup(entry) {
                Ok(Some(seen)) => {
                    return CommandResponse::Produced {
                        base_offset: Offset(seen.first_offset),
                        count: 0,
                        duplicates: parsed.count(),
                    }
                }
                Ok(None) => {}
                Err(e) => return Self::fail(e),
            }
        }
        // Per record: which to keep, and the ids of those kept.
        let mut kept: Vec<(Record, Option<Vec<u8>>)> = Vec::new();
        let mut duplicates = 0u32;
        let mut first_duplicate: Option<u64> = None;
        if record_ids {
            let mut ids_here = HashSet::new();
            for record in parsed.records() {
                let record = match record {
                    Ok(r) => r,
                    Err(e) => return rejected(ErrorCode::CorruptBatch, e.to_string()),
                };
                let entry = record
                    .dedup_id()
                    .map(|dedup_id| keys::dedup_entry(id, keys::DEDUP_KIND_RECORD, dedup_id));
                if let Some(entry) = &entry {
                    let seen = match self.dedup_lookup(entry) {
                        Ok(seen) => seen,
                        Err(e) => return Self::fail(e),
                    };
                    if let Some(seen) = seen {
                        duplicates += 1;
                        first_duplicate.get_or_insert(seen.first_offset);
                        continue;
                    }
                    if !ids_here.insert(entry.clone()) {
                        // The same id twice in one batch: the first one counts. Its offset is
                        // not known yet; the batch's base offset is reported if all are dups.
                        duplicates += 1;
                        continue;
                    }
                }
                kept.push((record, entry));
            }
        }
        let count_in = parsed.count();
        if record_ids && kept.is_empty() {
            let base_offset = Offset(first_duplicate.unwrap_or(0));
            return CommandResponse::Produced { base_offset, count: 0, duplicates };
        }
        let (value, count) = if duplicates == 0 {
            (MessageValue::InLog(pos), count_in)
        } else {
            let mut builder =
                RecordBatchBuilder::new(parsed.producer_id(), parsed.base_sequence(), bytes.len());
            for (record, _) in &kept {
                builder.push(record);
            }
            let count = builder.count();
            (MessageValue::Inline(builder.finish()), count)
        };
        let Some(base) = self.append(id, value, count, batch, changes) else {
            return rejected(ErrorCode::UnknownPartition, format!("partition id {id} missing"));
        };
        if let Some(entry) = batch_entry {
            let record = DedupRecord { first_offset: base, count, stamped_ms };
            self.dedup_insert(entry, record, batch);
        }
        for (offset, (_, entry)) in (base..).zip(kept) {
            if let Some(entry) = entry {
                let record = DedupRecord { first_offset: offset, count: 1, stamped_ms };
                self.dedup_insert(entry, record, batch);
            }
        }
        CommandResponse::Produced { base_offset: Offset(base), count, duplicates }
    }

    /// Forgets the listed entries whose stamp is still the listed one (an entry stored again
    /// after the leader read it has a newer stamp and its own expiry-index key).
    pub(super) fn expire_dedup(
        &mut self,
        entries: &[(Bytes, u64)],
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        for (entry, stamped_ms) in entries {
            match self.dedup_lookup(entry) {
                Ok(Some(r)) if r.stamped_ms == *stamped_ms => {
                    batch.delete(Cf::Txn, keys::dedup_key(entry));
                    self.dedup_ids_overlay.insert(entry.to_vec(), None);
                }
                Ok(_) => {}
                Err(e) => return Self::fail(e),
            }
            batch.delete(Cf::Txn, keys::dedup_expiry_key(*stamped_ms, entry));
        }
        CommandResponse::Done
    }

    /// Drops every dedup entry of partition `id` (its topic is being deleted). Their
    /// expiry-index keys stay until the leader expires them (deleting nothing then).
    pub(super) fn forget_dedup_of_partition(&mut self, id: u32, batch: &mut WriteBatch) {
        let (start, end) = keys::dedup_range(id);
        batch.delete_range(Cf::Txn, start, end);
        let prefix = id.to_be_bytes();
        for (entry, value) in self.dedup_ids_overlay.iter_mut() {
            if entry.starts_with(&prefix) {
                *value = None;
            }
        }
    }
}

impl SharedState {
    /// Up to `limit` dedup entries stamped in `[from_ms, before_ms)`, for the leader to
    /// propose their expiry: (entry, stamp) in stamp order. The leader passes the last stamp
    /// it expired as `from_ms`, so the scan does not step over the deletion markers of
    /// everything expired before (until compaction drops them).
    pub fn expired_dedup_entries(
        &self,
        from_ms: u64,
        before_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Bytes, u64)>, StateError> {
        let start = keys::dedup_expiry_key(from_ms, &[]);
        let (_, end) = keys::dedup_expiry_before(before_ms);
        let mut out = Vec::new();
        for (key, _) in self.store.scan(Cf::Txn, &start, &end, limit)? {
            let (stamp, entry) = keys::dedup_expiry_parts(&key).map_err(corrupt)?;
            out.push((Bytes::copy_from_slice(entry), stamp));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use ferry_protocol::PartitionIndex;
    use ferry_storage::mem::MemStore;
    use ferry_storage::StateStore;

    use super::*;
    use crate::state::command::Command;
    use crate::state::BatchResolver;

    /// An applier over a MemStore whose "Raft log" is a map of batches by index.
    struct Rig {
        store: MemStore,
        applier: Applier,
        log: Arc<Mutex<HashMap<u64, Bytes>>>,
        next_index: u64,
    }

    fn record(value: &str, dedup_id: Option<&str>) -> Record {
        Record {
            timestamp_ms: 1,
            key: None,
            headers: dedup_id
                .map(|id| {
                    (
                        ferry_protocol::record::DEDUP_ID_HEADER.to_string(),
                        Bytes::from(id.to_string()),
                    )
                })
                .into_iter()
                .collect(),
            value: Bytes::from(value.to_string()),
        }
    }

    fn batch_of(producer_id: u64, sequence: u32, records: &[Record]) -> Bytes {
        let mut b = RecordBatchBuilder::new(producer_id, sequence, 0);
        for r in records {
            b.push(r);
        }
        b.finish()
    }

    /// A produce of records `name=id` (each with that dedup id).
    fn with_ids(producer_id: u64, sequence: u32, ids: &[&str], stamped_ms: u64) -> Command {
        let records: Vec<Record> = ids.iter().map(|id| record(id, Some(id))).collect();
        Command::ProduceIdempotent {
            topic: "t".into(),
            partition: 0,
            stamped_ms,
            record_ids: true,
            batch: batch_of(producer_id, sequence, &records),
        }
    }

    impl Rig {
        fn new() -> Rig {
            let store = MemStore::new();
            let log: Arc<Mutex<HashMap<u64, Bytes>>> = Arc::default();
            let reader = log.clone();
            let resolver: BatchResolver = Arc::new(move |pos: LogPos| {
                reader
                    .lock()
                    .unwrap()
                    .get(&pos.index)
                    .cloned()
                    .ok_or_else(|| StateError::Corrupt(format!("no entry {pos:?}")))
            });
            let applier = Applier::open(Arc::new(store.clone()), resolver).unwrap();
            let mut rig = Rig { store, applier, log, next_index: 1 };
            rig.apply(vec![Command::CreateTopic {
                name: "t".into(),
                partitions: 1,
                created_ms: 1,
            }]);
            rig
        }

        /// Applies `commands` as one Raft apply call (one write batch).
        fn apply(&mut self, commands: Vec<Command>) -> Vec<CommandResponse> {
            let mut wb = WriteBatch::new();
            let mut changes = Changes::default();
            let mut out = Vec::new();
            for cmd in commands {
                let index = self.next_index;
                self.next_index += 1;
                if let Command::ProduceIdempotent { batch, .. } = &cmd {
                    self.log.lock().unwrap().insert(index, batch.clone());
                }
                out.push(self.applier.apply(index, &cmd, &mut wb, &mut changes));
            }
            self.store.write(wb).unwrap();
            self.applier.publish(&changes);
            out
        }

        fn one(&mut self, command: Command) -> CommandResponse {
            self.apply(vec![command]).pop().unwrap()
        }

        /// Every visible record value, in offset order.
        fn values(&self) -> Vec<String> {
            let shared = self.applier.shared();
            let handle = shared.partition("t", PartitionIndex(0)).unwrap();
            let mut out = Vec::new();
            for b in shared.read(&handle, Offset(0), 1 << 24).unwrap() {
                let parsed = RecordBatch::parse(b.bytes).unwrap();
                for r in parsed.records() {
                    out.push(String::from_utf8(r.unwrap().value.to_vec()).unwrap());
                }
            }
            out
        }

        fn dedup_keys(&self) -> usize {
            let (start, _) = keys::dedup_range(0);
            self.store.scan(Cf::Txn, &start, &[0x07], usize::MAX).unwrap().len()
        }
    }

    fn produced(offset: u64, count: u32, duplicates: u32) -> CommandResponse {
        CommandResponse::Produced { base_offset: Offset(offset), count, duplicates }
    }

    #[test]
    fn a_resent_batch_is_stored_once_in_another_call_or_the_same_one() {
        let mut rig = Rig::new();
        let plain = |seq: u32, v: &str| Command::ProduceIdempotent {
            topic: "t".into(),
            partition: 0,
            stamped_ms: 10,
            record_ids: false,
            batch: batch_of(7, seq, &[record(v, None), record(v, None)]),
        };
        assert_eq!(rig.one(plain(0, "a")), produced(0, 2, 0));
        assert_eq!(rig.one(plain(0, "a")), produced(0, 0, 2), "the original's offset");
        let both = rig.apply(vec![plain(2, "b"), plain(2, "b")]);
        assert_eq!(both, vec![produced(2, 2, 0), produced(2, 0, 2)]);
        assert_eq!(rig.values(), ["a", "a", "b", "b"]);
    }

    #[test]
    fn records_already_stored_are_dropped_from_a_differently_cut_batch() {
        let mut rig = Rig::new();
        assert_eq!(rig.one(with_ids(1, 0, &["r1", "r2"], 10)), produced(0, 2, 0));
        // Another sender (another relay) with the rows cut differently.
        assert_eq!(rig.one(with_ids(2, 0, &["r2", "r3", "r4"], 11)), produced(2, 2, 1));
        assert_eq!(rig.one(with_ids(3, 0, &["r1"], 12)), produced(0, 0, 1));
        // The same id twice in one batch: the first one counts.
        assert_eq!(rig.one(with_ids(4, 0, &["r5", "r5", "r6"], 13)), produced(4, 2, 1));
        assert_eq!(rig.values(), ["r1", "r2", "r3", "r4", "r5", "r6"]);
        // The re-encoded batch is a whole, valid batch with its own checksum.
        let shared = rig.applier.shared();
        let handle = shared.partition("t", PartitionIndex(0)).unwrap();
        for b in shared.read(&handle, Offset(0), 1 << 24).unwrap() {
            RecordBatch::parse(b.bytes).unwrap();
        }
    }

    #[test]
    fn records_without_an_id_are_kept_beside_ones_with_one() {
        let mut rig = Rig::new();
        let mixed = |seq: u32| Command::ProduceIdempotent {
            topic: "t".into(),
            partition: 0,
            stamped_ms: 5,
            record_ids: true,
            batch: batch_of(9, seq, &[record("x", Some("x")), record("free", None)]),
        };
        assert_eq!(rig.one(mixed(0)), produced(0, 2, 0));
        // A new sequence: not the same batch, so only the record id protects "x".
        assert_eq!(rig.one(mixed(1)), produced(2, 1, 1));
        assert_eq!(rig.values(), ["x", "free", "free"]);
    }

    #[test]
    fn expiry_forgets_entries_read_with_their_stamp_and_keeps_newer_ones() {
        let mut rig = Rig::new();
        rig.one(with_ids(1, 0, &["a", "b"], 100));
        assert_eq!(rig.dedup_keys(), 3 * 2, "batch + 2 records, each with an index key");
        let shared = rig.applier.shared();
        assert!(shared.expired_dedup_entries(0, 100, 10).unwrap().is_empty(), "not yet");
        let expired = shared.expired_dedup_entries(0, 101, 10).unwrap();
        assert_eq!(expired.len(), 3);
        assert!(expired.iter().all(|(_, stamp)| *stamp == 100));
        // A listing read with a stale stamp forgets nothing but its index key.
        let stale: Vec<(Bytes, u64)> = expired.iter().map(|(e, _)| (e.clone(), 99)).collect();
        assert_eq!(rig.one(Command::ExpireDedup { entries: stale }), CommandResponse::Done);
        assert_eq!(rig.one(with_ids(2, 0, &["a"], 150)), produced(0, 0, 1));
        assert_eq!(rig.one(Command::ExpireDedup { entries: expired }), CommandResponse::Done);
        assert_eq!(rig.dedup_keys(), 0);
        // Forgotten: the same id is a new record now.
        assert_eq!(rig.one(with_ids(3, 0, &["a"], 200)), produced(2, 1, 0));
        // Expiry and a new entry in the same apply call.
        let listed = shared.expired_dedup_entries(0, 201, 10).unwrap();
        let out = rig.apply(vec![
            Command::ExpireDedup { entries: listed },
            with_ids(4, 0, &["a"], 300),
            with_ids(5, 0, &["a"], 300),
        ]);
        assert_eq!(out[1..], [produced(3, 1, 0), produced(3, 0, 1)]);
        assert_eq!(rig.values(), ["a", "b", "a", "a"]);
    }

    #[test]
    fn deleting_the_topic_forgets_its_entries() {
        let mut rig = Rig::new();
        let out = rig.apply(vec![
            with_ids(1, 0, &["a"], 1),
            Command::DeleteTopic { name: "t".into() },
            Command::CreateTopic { name: "t".into(), partitions: 1, created_ms: 2 },
        ]);
        assert_eq!(out[0], produced(0, 1, 0));
        let (start, end) = keys::dedup_range(0);
        assert!(rig.store.scan(Cf::Txn, &start, &end, 10).unwrap().is_empty());
        // The recreated topic has a new partition id: "a" is new there.
        assert_eq!(rig.one(with_ids(1, 0, &["a"], 3)), produced(0, 1, 0));
    }

    #[test]
    fn the_outcome_does_not_depend_on_how_entries_are_grouped_into_apply_calls() {
        for seed in 0..30u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut commands = Vec::new();
            for i in 0..60u32 {
                let stamp = u64::from(i) * 10;
                if rng.u8(..10) == 0 {
                    // Expire whatever a leader would have listed at this point: computed on
                    // a reference run below, so here only a placeholder position.
                    commands.push(None);
                    continue;
                }
                let n = rng.usize(1..5);
                let ids: Vec<String> = (0..n).map(|_| format!("id{}", rng.u8(..12))).collect();
                let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                let producer = rng.u64(1..4);
                let seq = rng.u32(..6);
                commands.push(Some(with_ids(producer, seq, &refs, stamp)));
            }
            // Reference: one command per apply call; expiry lists what the store holds then.
            let mut reference = Rig::new();
            let mut resolved = Vec::new();
            for (i, c) in commands.iter().enumerate() {
                let c = match c {
                    Some(c) => c.clone(),
                    None => {
                        let before = (i as u64 * 10).saturating_sub(100);
                        let shared = reference.applier.shared();
                        let entries = shared.expired_dedup_entries(0, before, 1000).unwrap();
                        Command::ExpireDedup { entries }
                    }
                };
                reference.one(c.clone());
                resolved.push(c);
            }
            // Replay grouped at random cut points.
            let mut grouped = Rig::new();
            let mut rest = resolved.as_slice();
            while !rest.is_empty() {
                let take = rng.usize(1..=rest.len().min(8));
                grouped.apply(rest[..take].to_vec());
                rest = &rest[take..];
            }
            assert_eq!(reference.values(), grouped.values(), "seed {seed}");
            assert_eq!(reference.dedup_keys(), grouped.dedup_keys(), "seed {seed}");
        }
    }
}
