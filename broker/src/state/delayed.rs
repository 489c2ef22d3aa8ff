//! Delayed messages in the replicated state: a produce with a deliver time is stored invisible
//! with a timer, and appended to its partition when the leader reports the timer due. Applied
//! by [`Applier`] (the Raft state-machine worker); read by the leader's timer coordinator
//! (`crate::txn`) and the metrics through [`SharedState`].
//!
//! `ProduceDelayed` stores a record (a pointer to the batch in the Raft log, never a copy) and
//! a `DelayedDelivery` timer in one write batch. `DeliverDelayed` appends the batch, deletes
//! record and timer, in one write batch: a message is appended exactly once however often the
//! delivery is proposed (a new leader re-proposes what its predecessor may have delivered).
//! Apply reads no clock; due times come from the leader.

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::wire::{self, DecodeError, DecodeResult};
use ferry_protocol::{ErrorCode, RecordBatch};
use ferry_storage::{Cf, StateStore, WriteBatch};

use super::command::{CommandResponse, DelayedDue};
use super::keys::{self, Timer, TimerKind};
use super::txn::put_timer;
use super::{corrupt, rejected, Applier, Changes, LogPos, MessageValue, SharedState, StateError};

/// A delayed message as stored until it is due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelayedRecord {
    /// Topic it goes to (for people; delivery follows `partition_id`).
    pub topic: String,
    /// Partition index inside the topic.
    pub partition: u32,
    /// The global partition id at scheduling time. A topic deleted (and perhaps created
    /// again) meanwhile no longer has this id, so the message is dropped rather than appended
    /// to a topic it was never produced to.
    pub partition_id: u32,
    /// When it becomes visible (leader clock, ms since the Unix epoch); its timer's due time.
    pub deliver_at_ms: u64,
    /// Records in the batch.
    pub count: u32,
    /// Where the batch bytes are.
    pub batch: MessageValue,
}

const DELAYED_RECORD_VERSION: u8 = 1;

impl DelayedRecord {
    // delayed record := version:u8 (1) | topic:string | partition:u32 | partition_id:u32
    //                   | deliver_at_ms:u64 | count:u32 | batch:bytes (a MessageValue)
    /// Encodes the record.
    pub fn encode(&self) -> Bytes {
        let batch = self.batch.encode();
        let mut buf = BytesMut::with_capacity(32 + self.topic.len() + batch.len());
        buf.put_u8(DELAYED_RECORD_VERSION);
        wire::put_string(&mut buf, &self.topic);
        buf.put_u32(self.partition);
        buf.put_u32(self.partition_id);
        buf.put_u64(self.deliver_at_ms);
        buf.put_u32(self.count);
        wire::put_bytes(&mut buf, &batch);
        buf.freeze()
    }

    /// Decodes a stored record.
    pub fn decode(mut buf: Bytes) -> DecodeResult<DelayedRecord> {
        let b = &mut buf;
        let version = wire::get_u8(b, "delayed.version")?;
        if version != DELAYED_RECORD_VERSION {
            return Err(DecodeError::Invalid {
                what: "delayed.version",
                detail: format!("{version}"),
            });
        }
        Ok(DelayedRecord {
            topic: wire::get_string(b, "delayed.topic")?,
            partition: wire::get_u32(b, "delayed.partition")?,
            partition_id: wire::get_u32(b, "delayed.partition_id")?,
            deliver_at_ms: wire::get_u64(b, "delayed.deliver_at_ms")?,
            count: wire::get_u32(b, "delayed.count")?,
            batch: MessageValue::decode(wire::get_bytes(b, "delayed.batch")?)?,
        })
    }

    fn timer(&self, id: u64) -> Timer {
        Timer { due_ms: self.deliver_at_ms, kind: TimerKind::DelayedDelivery, id }
    }
}

/// The delayed-message counters, kept by apply and persisted with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayedCounters {
    /// Id the next delayed message gets (ids start at 1 and grow with log order).
    pub next_id: u64,
    /// Delayed messages stored and not yet due (delivered or dropped).
    pub pending: u64,
}

impl Default for DelayedCounters {
    fn default() -> Self {
        DelayedCounters { next_id: 1, pending: 0 }
    }
}

impl DelayedCounters {
    // delayed counters := next_id:u64 | pending:u64      (state CF, keys::DELAYED_COUNTERS)
    fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(16);
        buf.put_u64(self.next_id);
        buf.put_u64(self.pending);
        buf.freeze()
    }

    fn decode(mut buf: Bytes) -> DecodeResult<DelayedCounters> {
        Ok(DelayedCounters {
            next_id: wire::get_u64(&mut buf, "delayed_counters.next_id")?,
            pending: wire::get_u64(&mut buf, "delayed_counters.pending")?,
        })
    }
}

/// Loads the counters (defaults when no delayed message was ever stored).
pub(super) fn load_counters(store: &dyn StateStore) -> Result<DelayedCounters, StateError> {
    match store.get(Cf::State, &keys::DELAYED_COUNTERS)? {
        Some(v) => DelayedCounters::decode(v).map_err(corrupt),
        None => Ok(DelayedCounters::default()),
    }
}

impl Applier {
    /// The delayed record `id` as this apply call sees it (its own earlier writes first).
    fn load_delayed(&self, id: u64) -> Result<Option<DelayedRecord>, StateError> {
        if let Some(cached) = self.delayed_overlay.get(&id) {
            return Ok(cached.clone());
        }
        match self.store.get(Cf::Txn, &keys::delayed_key(id))? {
            Some(v) => Ok(Some(DelayedRecord::decode(v).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    fn put_delayed_counters(&self, batch: &mut WriteBatch) {
        batch.put(Cf::State, keys::DELAYED_COUNTERS.to_vec(), self.meta.delayed.encode());
    }

    /// Stores a delayed message (its batch is the command at `pos`) under the next delayed id,
    /// with its delivery timer.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn produce_delayed(
        &mut self,
        pos: LogPos,
        topic: &str,
        partition: u32,
        deliver_at_ms: u64,
        bytes: &Bytes,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        let partition_id = match self.partition_id(topic, partition) {
            Ok(id) => id,
            Err(resp) => return resp,
        };
        // Validated by the handler; read again so apply stays total (as produce does).
        let count = match RecordBatch::from_trusted(bytes.clone()) {
            Ok(b) if b.count() > 0 => b.count(),
            _ => return rejected(ErrorCode::CorruptBatch, "batch header unreadable".into()),
        };
        let id = self.meta.delayed.next_id;
        self.meta.delayed.next_id = id.saturating_add(1);
        self.meta.delayed.pending = self.meta.delayed.pending.saturating_add(1);
        self.put_delayed_counters(batch);
        let record = DelayedRecord {
            topic: topic.to_string(),
            partition,
            partition_id,
            deliver_at_ms,
            count,
            batch: MessageValue::InLog(pos),
        };
        put_timer(record.timer(id), batch, changes);
        batch.put(Cf::Txn, keys::delayed_key(id).to_vec(), record.encode());
        self.delayed_overlay.insert(id, Some(record));
        CommandResponse::Scheduled { deliver_at_ms, count }
    }

    /// Appends due delayed messages in the order given. An id with no record (delivered
    /// before) or a different deliver time is skipped; a message whose partition is gone is
    /// dropped. Either way record and timer go.
    pub(super) fn deliver_delayed(
        &mut self,
        items: &[DelayedDue],
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        let mut batches = 0u32;
        let mut records = 0u64;
        let mut dropped = 0u32;
        for item in items {
            let record = match self.load_delayed(item.id) {
                Ok(Some(r)) if r.deliver_at_ms == item.due_ms => r,
                Ok(_) => continue,
                Err(e) => {
                    // Nothing of this call is lost: the timers still stand, and the leader
                    // proposes them again.
                    tracing::error!(error = %e, "delayed-message read failed during apply");
                    return rejected(ErrorCode::Internal, e.to_string());
                }
            };
            batch.delete(Cf::Timers, record.timer(item.id).key().to_vec());
            batch.delete(Cf::Txn, keys::delayed_key(item.id).to_vec());
            self.meta.delayed.pending = self.meta.delayed.pending.saturating_sub(1);
            let count = record.count;
            match self.append(record.partition_id, record.batch, count, batch, changes) {
                Some(_) => {
                    batches += 1;
                    records += u64::from(count);
                }
                None => dropped += 1,
            }
            self.delayed_overlay.insert(item.id, None);
        }
        if batches > 0 || dropped > 0 {
            self.put_delayed_counters(batch);
        }
        CommandResponse::DelayedDelivered { batches, records, dropped }
    }
}

impl SharedState {
    /// One delayed message's record, while it is pending.
    pub fn delayed(&self, id: u64) -> Result<Option<DelayedRecord>, StateError> {
        match self.store.get(Cf::Txn, &keys::delayed_key(id))? {
            Some(v) => Ok(Some(DelayedRecord::decode(v).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// The batch bytes of a delayed message.
    pub fn delayed_batch(&self, record: &DelayedRecord) -> Result<Bytes, StateError> {
        match &record.batch {
            MessageValue::Inline(b) => Ok(b.clone()),
            MessageValue::InLog(pos) => (self.resolver)(*pos),
        }
    }

    /// Delayed messages stored and not yet due, as last written (one point read).
    pub fn delayed_pending(&self) -> Result<u64, StateError> {
        Ok(load_counters(self.store.as_ref())?.pending)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use ferry_protocol::{Offset, PartitionIndex, Record, RecordBatchBuilder};
    use ferry_storage::mem::MemStore;

    use super::*;
    use crate::state::command::Command;
    use crate::state::BatchResolver;

    type Log = Arc<Mutex<HashMap<LogPos, Bytes>>>;

    /// An applier over a MemStore whose "Raft log" is a map of batches by position.
    struct Rig {
        store: MemStore,
        applier: Applier,
        log: Log,
        next_index: u64,
    }

    fn message(v: &str) -> Bytes {
        let mut b = RecordBatchBuilder::new(7, 0, 0);
        b.push(&Record {
            timestamp_ms: 1,
            key: None,
            headers: vec![],
            value: Bytes::from(v.to_string()),
        });
        b.finish()
    }

    fn value_of(batch: &Bytes) -> String {
        let record = RecordBatch::parse(batch.clone()).unwrap().records().next().unwrap().unwrap();
        String::from_utf8(record.value.to_vec()).unwrap()
    }

    fn delayed(v: &str, deliver_at_ms: u64) -> Command {
        Command::ProduceDelayed {
            topic: "t".into(),
            partition: 0,
            deliver_at_ms,
            batch: message(v),
        }
    }

    fn deliver(items: &[(u64, u64)]) -> Command {
        Command::DeliverDelayed {
            items: items.iter().map(|&(id, due_ms)| DelayedDue { id, due_ms }).collect(),
        }
    }

    fn resolver(log: &Log) -> BatchResolver {
        let reader = log.clone();
        Arc::new(move |pos: LogPos| {
            reader
                .lock()
                .unwrap()
                .get(&pos)
                .cloned()
                .ok_or_else(|| StateError::Corrupt(format!("no entry {pos:?}")))
        })
    }

    fn remember(log: &Log, pos: LogPos, command: &Command) {
        if let Command::Produce { batch, .. } | Command::ProduceDelayed { batch, .. } = command {
            log.lock().unwrap().insert(pos, batch.clone());
        }
    }

    impl Rig {
        fn new() -> Rig {
            let store = MemStore::new();
            let log = Log::default();
            let applier = Applier::open(Arc::new(store.clone()), resolver(&log)).unwrap();
            let mut rig = Rig { store, applier, log, next_index: 1 };
            rig.apply(vec![Command::CreateTopic {
                name: "t".into(),
                partitions: 1,
                created_ms: 1,
            }]);
            // A fresh state asks for a full timer scan first; start from a quiet mark.
            rig.applier.shared().take_timer_low_ms();
            rig
        }

        /// Reopens the applier over the same store and log (a restart).
        fn reopen(&mut self) {
            let store: Arc<dyn StateStore> = Arc::new(self.store.clone());
            self.applier = Applier::open(store, resolver(&self.log)).unwrap();
        }

        /// Applies `commands`, one entry each, as one Raft apply call (one write batch).
        fn apply(&mut self, commands: Vec<Command>) -> Vec<CommandResponse> {
            let mut wb = WriteBatch::new();
            let mut changes = Changes::default();
            let mut out = Vec::new();
            for cmd in commands {
                let index = self.next_index;
                self.next_index += 1;
                match &cmd {
                    Command::Batch(inner) => {
                        for (c, i) in inner.iter().zip(0u32..) {
                            remember(&self.log, LogPos { index, position: Some(i) }, c);
                        }
                    }
                    other => remember(&self.log, LogPos::entry(index), other),
                }
                out.push(self.applier.apply(index, &cmd, &mut wb, &mut changes));
            }
            self.store.write(wb).unwrap();
            self.applier.publish(&changes);
            out
        }

        fn visible(&self) -> Vec<String> {
            let shared = self.applier.shared();
            let Ok(handle) = shared.partition("t", PartitionIndex(0)) else { return vec![] };
            shared
                .read(&handle, Offset(0), 1 << 20)
                .unwrap()
                .iter()
                .map(|b| value_of(&b.bytes))
                .collect()
        }

        fn pending(&self) -> u64 {
            let pending = self.applier.shared().delayed_pending().unwrap();
            assert_eq!(pending, self.applier.meta.delayed.pending, "stored and kept agree");
            pending
        }

        /// The delayed-delivery timers due at `now_ms`, as (id, due) like the leader reads them.
        fn due(&self, now_ms: u64) -> Vec<(u64, u64)> {
            self.applier
                .shared()
                .due_timers(now_ms, 100)
                .unwrap()
                .into_iter()
                .filter(|t| t.kind == TimerKind::DelayedDelivery)
                .map(|t| (t.id, t.due_ms))
                .collect()
        }
    }

    #[test]
    fn a_delayed_message_is_invisible_until_delivered_then_visible_once() {
        let mut rig = Rig::new();
        let out = rig.apply(vec![
            delayed("later", 5_000),
            Command::Produce { topic: "t".into(), partition: 0, batch: message("now") },
        ]);
        assert_eq!(out[0], CommandResponse::Scheduled { deliver_at_ms: 5_000, count: 1 });
        assert_eq!(rig.visible(), vec!["now"]);
        assert_eq!(rig.pending(), 1);
        assert_eq!(rig.applier.shared().take_timer_low_ms(), Some(5_000));
        assert!(rig.due(4_999).is_empty());
        assert_eq!(rig.due(5_000), vec![(1, 5_000)]);

        let out = rig.apply(vec![deliver(&rig.due(5_000))]);
        assert_eq!(
            out[0],
            CommandResponse::DelayedDelivered { batches: 1, records: 1, dropped: 0 }
        );
        assert_eq!(rig.visible(), vec!["now", "later"]);
        assert_eq!(rig.pending(), 0);
        assert!(rig.due(u64::MAX - 1).is_empty(), "the timer went with the delivery");
        assert!(rig.applier.shared().delayed(1).unwrap().is_none());
    }

    #[test]
    fn a_replayed_delivery_appends_once() {
        let mut rig = Rig::new();
        rig.apply(vec![delayed("a", 10), delayed("b", 20)]);
        // A new leader re-proposes what the old one proposed: in the same apply call, and in
        // a later one. A stale due time (the record moved on) is skipped too.
        let out = rig.apply(vec![deliver(&[(1, 10)]), deliver(&[(1, 10), (2, 19)])]);
        assert_eq!(
            out,
            vec![
                CommandResponse::DelayedDelivered { batches: 1, records: 1, dropped: 0 },
                CommandResponse::DelayedDelivered { batches: 0, records: 0, dropped: 0 },
            ]
        );
        let out = rig.apply(vec![deliver(&[(1, 10), (2, 20)]), deliver(&[(2, 20), (99, 1)])]);
        assert_eq!(
            out[0],
            CommandResponse::DelayedDelivered { batches: 1, records: 1, dropped: 0 }
        );
        assert_eq!(
            out[1],
            CommandResponse::DelayedDelivered { batches: 0, records: 0, dropped: 0 }
        );
        assert_eq!(rig.visible(), vec!["a", "b"]);
        assert_eq!(rig.pending(), 0);
    }

    #[test]
    fn messages_due_together_keep_their_production_order() {
        let mut rig = Rig::new();
        // Scheduled out of due order, two sharing a due time; one in a merged entry.
        rig.apply(vec![
            delayed("third", 30),
            Command::Batch(vec![delayed("first", 10), delayed("second", 10)]),
        ]);
        let due = rig.due(100);
        assert_eq!(due, vec![(2, 10), (3, 10), (1, 30)]);
        rig.apply(vec![deliver(&due)]);
        assert_eq!(rig.visible(), vec!["first", "second", "third"]);
    }

    #[test]
    fn a_message_for_a_deleted_topic_is_dropped() {
        let mut rig = Rig::new();
        rig.apply(vec![delayed("orphan", 10)]);
        // Deleted and created again: the new topic never had this message.
        rig.apply(vec![
            Command::DeleteTopic { name: "t".into() },
            Command::CreateTopic { name: "t".into(), partitions: 1, created_ms: 2 },
        ]);
        let out = rig.apply(vec![deliver(&[(1, 10)])]);
        assert_eq!(
            out[0],
            CommandResponse::DelayedDelivered { batches: 0, records: 0, dropped: 1 }
        );
        assert!(rig.visible().is_empty());
        assert_eq!(rig.pending(), 0);
        assert!(rig.due(u64::MAX - 1).is_empty());
        // A delayed produce to a missing topic or partition is refused like a produce.
        let mut bad = delayed("x", 10);
        if let Command::ProduceDelayed { partition, .. } = &mut bad {
            *partition = 5;
        }
        assert!(matches!(
            rig.apply(vec![bad])[0],
            CommandResponse::Rejected { code: ErrorCode::UnknownPartition, .. }
        ));
        assert_eq!(rig.pending(), 0);
    }

    #[test]
    fn pending_messages_and_counters_survive_a_reopen() {
        let mut rig = Rig::new();
        rig.apply(vec![delayed("a", 10), delayed("b", 20)]);
        rig.reopen();
        assert_eq!(rig.pending(), 2);
        assert_eq!(rig.due(100), vec![(1, 10), (2, 20)]);
        // Ids continue after the reopen: never reused.
        assert_eq!(
            rig.apply(vec![delayed("c", 30)])[0],
            CommandResponse::Scheduled { deliver_at_ms: 30, count: 1 }
        );
        assert_eq!(rig.due(100), vec![(1, 10), (2, 20), (3, 30)]);
        rig.apply(vec![deliver(&rig.due(100))]);
        rig.reopen();
        assert_eq!(rig.visible(), vec!["a", "b", "c"]);
        assert_eq!(rig.pending(), 0);
    }

    #[test]
    fn records_and_counters_round_trip() {
        let r = DelayedRecord {
            topic: "t".into(),
            partition: 1,
            partition_id: 2,
            deliver_at_ms: 3,
            count: 4,
            batch: MessageValue::InLog(LogPos { index: 5, position: Some(6) }),
        };
        assert_eq!(DelayedRecord::decode(r.encode()).unwrap(), r);
        assert!(DelayedRecord::decode(Bytes::from_static(b"\x02")).is_err());
        let c = DelayedCounters { next_id: 9, pending: 8 };
        assert_eq!(DelayedCounters::decode(c.encode()).unwrap(), c);
    }
}
