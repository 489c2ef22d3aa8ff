//! Transactions in the replicated state: half messages, decisions, check-back bookkeeping and
//! the timers that schedule checks and purges. Applied by [`Applier`] (the Raft state-machine
//! worker); read by handlers and the leader's check-back coordinator through [`SharedState`].
//!
//! A half message lives only in the txn family, so no fetch can see it. Commit appends its
//! batch to the partition in the same apply that marks the record committed: the message
//! becomes visible exactly once, and a decided record never changes state again. Every write
//! of one apply goes into one batch, so a crash never leaves a decision half applied.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::txn::{GroupTxnStats, ListTransactionsRequest};
use ferry_protocol::wire::{self, DecodeError, DecodeResult};
use ferry_protocol::{DecisionOrigin, ErrorCode, Offset, RecordBatch, TxnId, TxnState};
use ferry_storage::{Cf, WriteBatch};

use super::command::{CheckRecord, CommandResponse, TxnDue};
use super::keys::{self, Timer, TimerKind};
use super::{corrupt, rejected, Applier, Changes, LogPos, MessageValue, SharedState, StateError};

/// Most transactions one list request returns.
pub const LIST_LIMIT_MAX: u32 = 1000;

/// Keys a list request may examine per returned row before it stops and returns a cursor, so
/// one request stays bounded however selective its filter is.
const LIST_SCAN_FACTOR: usize = 10;

/// A transaction as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnRecord {
    /// Where it stands.
    pub state: TxnState,
    /// Producer group asked at check-back.
    pub group: String,
    /// Topic of the message.
    pub topic: String,
    /// Partition index inside the topic.
    pub partition: u32,
    /// Leader clock when the half message was stored.
    pub created_ms: u64,
    /// Delay before the first check-back.
    pub check_timeout_ms: u32,
    /// Check-backs that reached a live producer.
    pub check_count: u32,
    /// Due time of the pending check timer (0 when none).
    pub next_check_ms: u64,
    /// When decided or parked (0 while pending).
    pub decided_ms: u64,
    /// Who decided.
    pub origin: Option<DecisionOrigin>,
    /// Base offset of the committed batch.
    pub offset: Option<u64>,
    /// Due time of the purge timer of a decided record (0 when none).
    pub purge_at_ms: u64,
    /// The batch's producer id (dedup key with `sequence`; 0 disables dedup).
    pub producer_id: u64,
    /// The batch's base sequence.
    pub sequence: u32,
    /// Records in the batch.
    pub count: u32,
    /// Where the batch bytes are.
    pub batch: MessageValue,
}

const TXN_RECORD_VERSION: u8 = 1;

impl TxnRecord {
    // txn record := version:u8 (1) | state:u8 | group:string | topic:string | partition:u32
    //               | created_ms:u64 | check_timeout_ms:u32 | check_count:u32
    //               | next_check_ms:u64 | decided_ms:u64 | origin:u8 (0 = none)
    //               | offset:option<u64> | purge_at_ms:u64 | producer_id:u64 | sequence:u32
    //               | count:u32 | batch:bytes (a MessageValue)
    /// Encodes the record.
    pub fn encode(&self) -> Bytes {
        let batch = self.batch.encode();
        let mut buf =
            BytesMut::with_capacity(96 + self.group.len() + self.topic.len() + batch.len());
        buf.put_u8(TXN_RECORD_VERSION);
        buf.put_u8(self.state as u8);
        wire::put_string(&mut buf, &self.group);
        wire::put_string(&mut buf, &self.topic);
        buf.put_u32(self.partition);
        buf.put_u64(self.created_ms);
        buf.put_u32(self.check_timeout_ms);
        buf.put_u32(self.check_count);
        buf.put_u64(self.next_check_ms);
        buf.put_u64(self.decided_ms);
        buf.put_u8(self.origin.map_or(0, |o| o as u8));
        wire::put_option(&mut buf, self.offset.as_ref(), |b, o| b.put_u64(*o));
        buf.put_u64(self.purge_at_ms);
        buf.put_u64(self.producer_id);
        buf.put_u32(self.sequence);
        buf.put_u32(self.count);
        wire::put_bytes(&mut buf, &batch);
        buf.freeze()
    }

    /// Decodes a stored record.
    pub fn decode(mut buf: Bytes) -> DecodeResult<TxnRecord> {
        let b = &mut buf;
        let version = wire::get_u8(b, "txn.version")?;
        if version != TXN_RECORD_VERSION {
            return Err(DecodeError::Invalid { what: "txn.version", detail: format!("{version}") });
        }
        let raw = wire::get_u8(b, "txn.state")?;
        let state = TxnState::from_u8(raw)
            .ok_or_else(|| DecodeError::Invalid { what: "txn.state", detail: format!("{raw}") })?;
        let group = wire::get_string(b, "txn.group")?;
        let topic = wire::get_string(b, "txn.topic")?;
        let partition = wire::get_u32(b, "txn.partition")?;
        let created_ms = wire::get_u64(b, "txn.created_ms")?;
        let check_timeout_ms = wire::get_u32(b, "txn.check_timeout_ms")?;
        let check_count = wire::get_u32(b, "txn.check_count")?;
        let next_check_ms = wire::get_u64(b, "txn.next_check_ms")?;
        let decided_ms = wire::get_u64(b, "txn.decided_ms")?;
        let origin = match wire::get_u8(b, "txn.origin")? {
            0 => None,
            raw => Some(DecisionOrigin::from_u8(raw).ok_or_else(|| DecodeError::Invalid {
                what: "txn.origin",
                detail: format!("{raw}"),
            })?),
        };
        let offset = wire::get_option(b, "txn.offset", |b| wire::get_u64(b, "txn.offset"))?;
        let purge_at_ms = wire::get_u64(b, "txn.purge_at_ms")?;
        let producer_id = wire::get_u64(b, "txn.producer_id")?;
        let sequence = wire::get_u32(b, "txn.sequence")?;
        let count = wire::get_u32(b, "txn.count")?;
        let batch = MessageValue::decode(wire::get_bytes(b, "txn.batch")?)?;
        Ok(TxnRecord {
            state,
            group,
            topic,
            partition,
            created_ms,
            check_timeout_ms,
            check_count,
            next_check_ms,
            decided_ms,
            origin,
            offset,
            purge_at_ms,
            producer_id,
            sequence,
            count,
            batch,
        })
    }

    fn check_timer(&self, txn_id: u64) -> Timer {
        Timer { due_ms: self.next_check_ms, kind: TimerKind::TxnCheck, id: txn_id }
    }

    fn purge_timer(&self, txn_id: u64) -> Timer {
        Timer { due_ms: self.purge_at_ms, kind: TimerKind::TxnPurge, id: txn_id }
    }
}

/// Transaction counts of one producer group, kept by apply and persisted with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupCounts {
    /// Open and not parked.
    pub pending: u64,
    /// Parked.
    pub parked: u64,
    /// Committed, ever.
    pub committed: u64,
    /// Rolled back, ever.
    pub rolled_back: u64,
}

impl GroupCounts {
    // group counts := pending:u64 | parked:u64 | committed:u64 | rolled_back:u64
    pub(super) fn encode(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(32);
        buf.put_u64(self.pending);
        buf.put_u64(self.parked);
        buf.put_u64(self.committed);
        buf.put_u64(self.rolled_back);
        buf.freeze()
    }

    pub(super) fn decode(mut buf: Bytes) -> DecodeResult<GroupCounts> {
        Ok(GroupCounts {
            pending: wire::get_u64(&mut buf, "group_counts.pending")?,
            parked: wire::get_u64(&mut buf, "group_counts.parked")?,
            committed: wire::get_u64(&mut buf, "group_counts.committed")?,
            rolled_back: wire::get_u64(&mut buf, "group_counts.rolled_back")?,
        })
    }
}

/// Adds a timer and notes its due time, so the coordinator's scan cursor can move back to it.
pub(super) fn put_timer(timer: Timer, batch: &mut WriteBatch, changes: &mut Changes) {
    batch.put(Cf::Timers, timer.key().to_vec(), Bytes::new());
    changes.timer_low_ms = Some(changes.timer_low_ms.map_or(timer.due_ms, |t| t.min(timer.due_ms)));
}

impl Applier {
    /// The record of `txn_id` as this apply call sees it (its own earlier writes first).
    fn load_txn(&self, txn_id: u64) -> Result<Option<TxnRecord>, StateError> {
        if let Some(cached) = self.txn_overlay.get(&txn_id) {
            return Ok(cached.clone());
        }
        match self.store.get(Cf::Txn, &keys::txn_key(txn_id))? {
            Some(v) => Ok(Some(TxnRecord::decode(v).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    fn save_txn(&mut self, txn_id: u64, record: TxnRecord, batch: &mut WriteBatch) {
        batch.put(Cf::Txn, keys::txn_key(txn_id).to_vec(), record.encode());
        self.txn_overlay.insert(txn_id, Some(record));
    }

    fn group_counts(
        &mut self,
        group: &str,
        changes: &mut Changes,
        update: impl FnOnce(&mut GroupCounts),
    ) -> GroupCounts {
        let counts = self.meta.groups.entry(group.to_string()).or_default();
        update(counts);
        changes.groups = true;
        *counts
    }

    fn put_group_counts(&mut self, group: &str, counts: GroupCounts, batch: &mut WriteBatch) {
        batch.put(Cf::State, keys::group_txn_key(group), counts.encode());
    }

    /// The answer when a store read fails inside apply (transactions, produce dedup): report
    /// it; the replica's next write will show whether the store is healthy.
    pub(super) fn fail(e: StateError) -> CommandResponse {
        tracing::error!(error = %e, "state read failed during apply");
        rejected(ErrorCode::Internal, e.to_string())
    }

    /// Stores a half message (its batch is the command at `pos`) under the next transaction id.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn put_half(
        &mut self,
        pos: LogPos,
        group: &str,
        topic: &str,
        partition: u32,
        check_timeout_ms: u32,
        created_ms: u64,
        bytes: &Bytes,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        if let Err(resp) = self.partition_id(topic, partition) {
            return resp;
        }
        let (count, producer_id, sequence) = match RecordBatch::from_trusted(bytes.clone()) {
            Ok(b) if b.count() > 0 => (b.count(), b.producer_id(), b.base_sequence()),
            _ => return rejected(ErrorCode::CorruptBatch, "batch header unreadable".into()),
        };
        if producer_id != 0 {
            let dedup = keys::txn_dedup_key(producer_id, sequence);
            let existing = match self.dedup_overlay.get(&(producer_id, sequence)) {
                Some(id) => Some(*id),
                None => match self.store.get(Cf::Txn, &dedup) {
                    Ok(Some(mut v)) => match wire::get_u64(&mut v, "txn dedup") {
                        Ok(id) => Some(id),
                        Err(e) => return Self::fail(corrupt(e)),
                    },
                    Ok(None) => None,
                    Err(e) => return Self::fail(e.into()),
                },
            };
            if let Some(id) = existing {
                return match self.load_txn(id) {
                    Ok(Some(r)) => {
                        CommandResponse::HalfStored { txn_id: TxnId(id), created_ms: r.created_ms }
                    }
                    Ok(None) => rejected(
                        ErrorCode::Internal,
                        format!("dedup entry names missing transaction {id}"),
                    ),
                    Err(e) => Self::fail(e),
                };
            }
        }
        let txn_id = self.meta.next_txn_id;
        self.meta.next_txn_id = txn_id.saturating_add(1);
        batch.put(
            Cf::State,
            keys::NEXT_TXN_ID.to_vec(),
            self.meta.next_txn_id.to_be_bytes().to_vec(),
        );
        if producer_id != 0 {
            let dedup = keys::txn_dedup_key(producer_id, sequence);
            batch.put(Cf::Txn, dedup.to_vec(), txn_id.to_be_bytes().to_vec());
            self.dedup_overlay.insert((producer_id, sequence), txn_id);
        }
        let record = TxnRecord {
            state: TxnState::Pending,
            group: group.to_string(),
            topic: topic.to_string(),
            partition,
            created_ms,
            check_timeout_ms,
            check_count: 0,
            next_check_ms: created_ms.saturating_add(u64::from(check_timeout_ms)),
            decided_ms: 0,
            origin: None,
            offset: None,
            purge_at_ms: 0,
            producer_id,
            sequence,
            count,
            batch: MessageValue::InLog(pos),
        };
        put_timer(record.check_timer(txn_id), batch, changes);
        batch.put(Cf::Txn, keys::txn_open_key(txn_id).to_vec(), Bytes::new());
        self.save_txn(txn_id, record, batch);
        let counts = self.group_counts(group, changes, |c| c.pending += 1);
        self.put_group_counts(group, counts, batch);
        CommandResponse::HalfStored { txn_id: TxnId(txn_id), created_ms }
    }

    /// Commits or rolls back a transaction. A decided transaction never changes: the same
    /// decision again is a no-op, a different one is refused.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn end_transaction(
        &mut self,
        txn_id: TxnId,
        commit: bool,
        origin: DecisionOrigin,
        decided_ms: u64,
        purge_at_ms: u64,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        let id = txn_id.0;
        let mut record = match self.load_txn(id) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return rejected(
                    ErrorCode::UnknownTransaction,
                    format!("transaction {id} not found (never existed, or purged)"),
                )
            }
            Err(e) => return Self::fail(e),
        };
        let wanted = if commit { TxnState::Committed } else { TxnState::RolledBack };
        if record.state.is_decided() {
            if record.state == wanted {
                return CommandResponse::TxnEnded {
                    state: record.state,
                    repeated: true,
                    offset: record.offset.map(Offset),
                    created_ms: record.created_ms,
                };
            }
            return CommandResponse::TxnAlreadyResolved { state: record.state };
        }
        if commit {
            let id_in_log = match self.partition_id(&record.topic, record.partition) {
                Ok(p) => p,
                Err(resp) => return resp,
            };
            let base = self.append(id_in_log, record.batch.clone(), record.count, batch, changes);
            match base {
                Some(base) => record.offset = Some(base),
                None => {
                    return rejected(
                        ErrorCode::UnknownPartition,
                        format!("partition of transaction {id} is missing"),
                    )
                }
            }
        }
        let was = record.state;
        if was == TxnState::Pending {
            batch.delete(Cf::Timers, record.check_timer(id).key().to_vec());
        }
        batch.delete(Cf::Txn, keys::txn_open_key(id).to_vec());
        record.state = wanted;
        record.decided_ms = decided_ms;
        record.origin = Some(origin);
        record.next_check_ms = 0;
        record.purge_at_ms = purge_at_ms;
        put_timer(record.purge_timer(id), batch, changes);
        let group = record.group.clone();
        let offset = record.offset.map(Offset);
        let created_ms = record.created_ms;
        self.save_txn(id, record, batch);
        let counts = self.group_counts(&group, changes, |c| {
            match was {
                TxnState::Parked => c.parked = c.parked.saturating_sub(1),
                _ => c.pending = c.pending.saturating_sub(1),
            }
            if commit {
                c.committed += 1;
            } else {
                c.rolled_back += 1;
            }
        });
        self.put_group_counts(&group, counts, batch);
        CommandResponse::TxnEnded { state: wanted, repeated: false, offset, created_ms }
    }

    /// Moves check timers as the leader reports its check-backs. Stale entries (the record
    /// moved on since the leader looked) are skipped.
    pub(super) fn record_checks(
        &mut self,
        checks: &[CheckRecord],
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        for check in checks {
            let id = check.txn_id.0;
            let mut record = match self.load_txn(id) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => return Self::fail(e),
            };
            if record.state != TxnState::Pending || record.next_check_ms != check.expected_due_ms {
                continue;
            }
            batch.delete(Cf::Timers, record.check_timer(id).key().to_vec());
            record.next_check_ms = check.next_check_ms;
            if check.counted {
                record.check_count = record.check_count.saturating_add(1);
            }
            put_timer(record.check_timer(id), batch, changes);
            self.save_txn(id, record, batch);
        }
        CommandResponse::Done
    }

    /// Parks pending transactions whose checks ran out: no more checks, kept open for an
    /// operator or a late decision.
    pub(super) fn park_transactions(
        &mut self,
        parked_ms: u64,
        txns: &[TxnDue],
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        for t in txns {
            let id = t.txn_id.0;
            let mut record = match self.load_txn(id) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => return Self::fail(e),
            };
            if record.state != TxnState::Pending || record.next_check_ms != t.due_ms {
                continue;
            }
            batch.delete(Cf::Timers, record.check_timer(id).key().to_vec());
            record.state = TxnState::Parked;
            record.decided_ms = parked_ms;
            record.next_check_ms = 0;
            let group = record.group.clone();
            self.save_txn(id, record, batch);
            let counts = self.group_counts(&group, changes, |c| {
                c.pending = c.pending.saturating_sub(1);
                c.parked += 1;
            });
            self.put_group_counts(&group, counts, batch);
        }
        CommandResponse::Done
    }

    /// Forgets decided transactions whose retention ran out (record, dedup entry, timer).
    pub(super) fn purge_transactions(
        &mut self,
        txns: &[TxnDue],
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        for t in txns {
            let id = t.txn_id.0;
            let record = match self.load_txn(id) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => return Self::fail(e),
            };
            if !record.state.is_decided() || record.purge_at_ms != t.due_ms {
                continue;
            }
            batch.delete(Cf::Timers, record.purge_timer(id).key().to_vec());
            batch.delete(Cf::Txn, keys::txn_key(id).to_vec());
            if record.producer_id != 0 {
                batch.delete(
                    Cf::Txn,
                    keys::txn_dedup_key(record.producer_id, record.sequence).to_vec(),
                );
                self.dedup_overlay.remove(&(record.producer_id, record.sequence));
            }
            self.txn_overlay.insert(id, None);
        }
        CommandResponse::Done
    }
}

/// A page of transactions for operators.
pub struct TxnPage {
    /// (id, record, batch bytes if asked for).
    pub txns: Vec<(TxnId, TxnRecord, Option<Bytes>)>,
    /// Cursor for the next page.
    pub next: Option<TxnId>,
}

impl SharedState {
    /// One transaction's record.
    pub fn txn(&self, txn_id: TxnId) -> Result<Option<TxnRecord>, StateError> {
        match self.store.get(Cf::Txn, &keys::txn_key(txn_id.0))? {
            Some(v) => Ok(Some(TxnRecord::decode(v).map_err(corrupt)?)),
            None => Ok(None),
        }
    }

    /// The batch bytes of a transaction's message.
    pub fn txn_batch(&self, record: &TxnRecord) -> Result<Bytes, StateError> {
        match &record.batch {
            MessageValue::Inline(b) => Ok(b.clone()),
            MessageValue::InLog(pos) => (self.resolver)(*pos),
        }
    }

    /// Timers due at `now_ms` or earlier, earliest first, at most `limit`.
    pub fn due_timers(&self, now_ms: u64, limit: usize) -> Result<Vec<Timer>, StateError> {
        self.due_timers_from(&[], now_ms, limit)
    }

    /// Timers due at `now_ms` or earlier whose key is at or after `from`, earliest first.
    ///
    /// Why a start key: fired timers are deleted, and RocksDB keeps their tombstones until a
    /// compaction, so a scan from the very first key steps over every timer fired since then
    /// (measured: an idle broker's CPU grew with the number of decided transactions). The
    /// coordinator starts where it stopped instead (see [`SharedState::take_timer_low_ms`]).
    pub fn due_timers_from(
        &self,
        from: &[u8],
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Timer>, StateError> {
        let (_, end) = Timer::due_range(now_ms);
        self.store
            .scan(Cf::Timers, from, &end, limit)?
            .into_iter()
            .map(|(k, _)| Timer::from_key(&k).map_err(corrupt))
            .collect()
    }

    /// Transactions matching `req`, in id order, one bounded page at a time.
    pub fn list_txns(
        &self,
        req: &ListTransactionsRequest,
        now_ms: u64,
    ) -> Result<TxnPage, StateError> {
        let fetch_batch = |r: &TxnRecord| -> Result<Option<Bytes>, StateError> {
            if req.with_payload {
                Ok(Some(self.txn_batch(r)?))
            } else {
                Ok(None)
            }
        };
        if let Some(id) = req.txn_id {
            let txns = match self.txn(id)? {
                Some(r) => {
                    let b = fetch_batch(&r)?;
                    vec![(id, r, b)]
                }
                None => Vec::new(),
            };
            return Ok(TxnPage { txns, next: None });
        }
        let limit = req.limit.clamp(1, LIST_LIMIT_MAX) as usize;
        let scan_max = limit * LIST_SCAN_FACTOR;
        let (start, end) = if req.include_decided {
            keys::txn_records_after(req.after.0)
        } else {
            keys::txn_open_after(req.after.0)
        };
        let keys_page = self.store.scan(Cf::Txn, &start, &end, scan_max)?;
        let exhausted = keys_page.len() < scan_max;
        let mut txns = Vec::new();
        let mut last = None;
        for (k, v) in keys_page {
            let id = keys::txn_id_of(&k).map_err(corrupt)?;
            last = Some(TxnId(id));
            let record = if req.include_decided {
                TxnRecord::decode(v).map_err(corrupt)?
            } else {
                match self.txn(TxnId(id))? {
                    Some(r) => r,
                    None => continue,
                }
            };
            let old_enough = req.older_than_ms == 0
                || now_ms.saturating_sub(record.created_ms) >= req.older_than_ms;
            if (req.group.is_empty() || record.group == req.group)
                && (!req.parked_only || record.state == TxnState::Parked)
                && old_enough
            {
                let b = fetch_batch(&record)?;
                txns.push((TxnId(id), record, b));
                if txns.len() == limit {
                    break;
                }
            }
        }
        let next = if txns.len() == limit || !exhausted { last } else { None };
        Ok(TxnPage { txns, next })
    }

    /// Per-group counts and the creation time of the oldest open transaction (0: none).
    pub fn txn_stats(&self) -> Result<(u64, Vec<GroupTxnStats>), StateError> {
        let (start, end) = keys::txn_open_after(0);
        let oldest = match self.store.scan(Cf::Txn, &start, &end, 1)?.into_iter().next() {
            Some((k, _)) => {
                let id = keys::txn_id_of(&k).map_err(corrupt)?;
                self.txn(TxnId(id))?.map_or(0, |r| r.created_ms)
            }
            None => 0,
        };
        let index = self.index.read().map_err(|_| corrupt("index lock poisoned"))?;
        let groups = index
            .groups
            .iter()
            .map(|(g, c)| GroupTxnStats {
                group: g.clone(),
                pending: c.pending,
                parked: c.parked,
                committed: c.committed,
                rolled_back: c.rolled_back,
            })
            .collect();
        Ok((oldest, groups))
    }

    /// Totals over every group: (pending, parked).
    pub fn txn_open_counts(&self) -> (u64, u64) {
        let Ok(index) = self.index.read() else { return (0, 0) };
        index.groups.values().fold((0, 0), |(p, k), c| (p + c.pending, k + c.parked))
    }
}

/// Loads every group's counts (one key per producer group).
pub(super) fn load_group_counts(
    store: &dyn ferry_storage::StateStore,
) -> Result<BTreeMap<String, GroupCounts>, StateError> {
    let (start, end) = keys::group_txn_range();
    let mut out = BTreeMap::new();
    for (k, v) in super::scan_all(store, Cf::State, &start, &end)? {
        let group = keys::group_txn_name(&k).map_err(corrupt)?;
        out.insert(group, GroupCounts::decode(v).map_err(corrupt)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use ferry_protocol::{PartitionIndex, Record, RecordBatchBuilder};
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

    fn message(producer_id: u64, sequence: u32, v: &str) -> Bytes {
        let mut b = RecordBatchBuilder::new(producer_id, sequence, 0);
        b.push(&Record {
            timestamp_ms: 1,
            key: None,
            headers: vec![],
            value: Bytes::from(v.to_string()),
        });
        b.finish()
    }

    fn half(seq: u32, v: &str) -> Command {
        Command::PutHalf {
            group: "g".into(),
            topic: "t".into(),
            partition: 1,
            check_timeout_ms: 1000,
            created_ms: 10_000,
            batch: message(42, seq, v),
        }
    }

    fn end(id: TxnId, commit: bool) -> Command {
        Command::EndTransaction {
            txn_id: id,
            commit,
            origin: DecisionOrigin::Producer,
            decided_ms: 20_000,
            purge_at_ms: 90_000,
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
            let created = rig.apply(vec![Command::CreateTopic {
                name: "t".into(),
                partitions: 2,
                created_ms: 1,
            }]);
            assert_eq!(created, vec![CommandResponse::TopicCreated]);
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
                if let Command::PutHalf { batch, .. } | Command::Produce { batch, .. } = &cmd {
                    self.log.lock().unwrap().insert(index, batch.clone());
                }
                out.push(self.applier.apply(index, &cmd, &mut wb, &mut changes));
            }
            self.store.write(wb).unwrap();
            self.applier.publish(&changes);
            out
        }

        fn stored(&mut self, cmd: Command) -> TxnId {
            match self.apply(vec![cmd]).pop() {
                Some(CommandResponse::HalfStored { txn_id, .. }) => txn_id,
                other => panic!("not stored: {other:?}"),
            }
        }

        fn visible(&self) -> Vec<Bytes> {
            let shared = self.applier.shared();
            let handle = shared.partition("t", PartitionIndex(1)).unwrap();
            shared
                .read(&handle, ferry_protocol::Offset(0), 1 << 20)
                .unwrap()
                .into_iter()
                .map(|b| b.bytes)
                .collect()
        }

        fn counts(&self) -> GroupCounts {
            self.applier.meta.groups.get("g").copied().unwrap_or_default()
        }
    }

    #[test]
    fn a_half_message_is_invisible_until_committed_then_visible_once() {
        let mut rig = Rig::new();
        let id = rig.stored(half(1, "a"));
        assert!(rig.visible().is_empty());
        assert_eq!(rig.counts().pending, 1);
        let first = rig.apply(vec![end(id, true)]);
        assert_eq!(
            first,
            vec![CommandResponse::TxnEnded {
                state: TxnState::Committed,
                repeated: false,
                offset: Some(Offset(0)),
                created_ms: 10_000,
            }]
        );
        assert_eq!(rig.visible(), vec![message(42, 1, "a")]);
        // The same decision again changes nothing; the other one is refused.
        let again = rig.apply(vec![end(id, true), end(id, false)]);
        assert!(matches!(again[0], CommandResponse::TxnEnded { repeated: true, .. }));
        assert_eq!(again[1], CommandResponse::TxnAlreadyResolved { state: TxnState::Committed });
        assert_eq!(rig.visible().len(), 1);
        let c = rig.counts();
        assert_eq!((c.pending, c.committed, c.rolled_back), (0, 1, 0));
    }

    #[test]
    fn a_rolled_back_message_never_becomes_visible() {
        let mut rig = Rig::new();
        let id = rig.stored(half(1, "a"));
        assert!(matches!(rig.apply(vec![end(id, false)])[0], CommandResponse::TxnEnded { .. }));
        let later = rig.apply(vec![end(id, true)]);
        assert_eq!(later[0], CommandResponse::TxnAlreadyResolved { state: TxnState::RolledBack });
        assert!(rig.visible().is_empty());
        assert_eq!(rig.counts().rolled_back, 1);
    }

    #[test]
    fn decisions_in_the_same_apply_call_see_the_half_message() {
        let mut rig = Rig::new();
        let out = rig.apply(vec![half(1, "a"), end(TxnId(1), true), end(TxnId(1), false)]);
        assert_eq!(out[0], CommandResponse::HalfStored { txn_id: TxnId(1), created_ms: 10_000 });
        assert!(matches!(out[1], CommandResponse::TxnEnded { repeated: false, .. }));
        assert_eq!(out[2], CommandResponse::TxnAlreadyResolved { state: TxnState::Committed });
        assert_eq!(rig.visible().len(), 1);
    }

    #[test]
    fn a_resent_half_batch_maps_to_the_first_transaction() {
        let mut rig = Rig::new();
        let first = rig.stored(half(7, "a"));
        let again = rig.stored(half(7, "a"));
        assert_eq!(first, again);
        let other = rig.stored(half(8, "b"));
        assert_ne!(first, other);
        assert_eq!(rig.counts().pending, 2);
    }

    #[test]
    fn unknown_transactions_and_topics_are_refused() {
        let mut rig = Rig::new();
        let out = rig.apply(vec![end(TxnId(99), true)]);
        assert!(matches!(
            out[0],
            CommandResponse::Rejected { code: ErrorCode::UnknownTransaction, .. }
        ));
        let mut bad = half(1, "a");
        if let Command::PutHalf { topic, .. } = &mut bad {
            *topic = "nope".into();
        }
        assert!(matches!(
            rig.apply(vec![bad])[0],
            CommandResponse::Rejected { code: ErrorCode::UnknownTopic, .. }
        ));
    }

    #[test]
    fn checks_move_the_timer_and_exhausted_ones_park_then_an_operator_decides() {
        let mut rig = Rig::new();
        let id = rig.stored(half(1, "a"));
        let shared = rig.applier.shared();
        assert!(shared.due_timers(10_999, 10).unwrap().is_empty());
        let due = shared.due_timers(11_000, 10).unwrap();
        assert_eq!(due, vec![Timer { due_ms: 11_000, kind: TimerKind::TxnCheck, id: id.0 }]);
        // An uncounted check (no producer) and a counted one; a stale record is skipped.
        let check = |expected, counted, next| Command::RecordChecks {
            checks: vec![CheckRecord {
                txn_id: id,
                expected_due_ms: expected,
                counted,
                next_check_ms: next,
            }],
        };
        rig.apply(vec![check(11_000, false, 12_000), check(11_000, true, 99_000)]);
        let r = shared.txn(id).unwrap().unwrap();
        assert_eq!((r.check_count, r.next_check_ms), (0, 12_000));
        rig.apply(vec![check(12_000, true, 13_000)]);
        let r = shared.txn(id).unwrap().unwrap();
        assert_eq!((r.check_count, r.next_check_ms), (1, 13_000));
        assert_eq!(shared.due_timers(12_999, 10).unwrap(), vec![]);
        rig.apply(vec![Command::ParkTransactions {
            parked_ms: 13_000,
            txns: vec![TxnDue { txn_id: id, due_ms: 13_000 }],
        }]);
        let r = shared.txn(id).unwrap().unwrap();
        assert_eq!(r.state, TxnState::Parked);
        assert!(shared.due_timers(u64::MAX - 1, 10).unwrap().is_empty());
        assert_eq!((rig.counts().pending, rig.counts().parked), (0, 1));
        let parked = ListTransactionsRequest { parked_only: true, limit: 10, ..Default::default() };
        assert_eq!(shared.list_txns(&parked, 0).unwrap().txns.len(), 1);
        // A parked transaction is not decided: a commit still applies, exactly once.
        assert!(matches!(rig.apply(vec![end(id, true)])[0], CommandResponse::TxnEnded { .. }));
        assert_eq!(rig.visible().len(), 1);
        assert_eq!((rig.counts().parked, rig.counts().committed), (0, 1));
        assert!(shared.list_txns(&parked, 0).unwrap().txns.is_empty());
    }

    #[test]
    fn purge_forgets_a_decided_transaction_after_its_retention() {
        let mut rig = Rig::new();
        let id = rig.stored(half(1, "a"));
        rig.apply(vec![end(id, false)]);
        let shared = rig.applier.shared();
        let due = shared.due_timers(90_000, 10).unwrap();
        assert_eq!(due, vec![Timer { due_ms: 90_000, kind: TimerKind::TxnPurge, id: id.0 }]);
        rig.apply(vec![Command::PurgeTransactions {
            txns: vec![TxnDue { txn_id: id, due_ms: 90_000 }],
        }]);
        assert!(shared.txn(id).unwrap().is_none());
        assert!(shared.due_timers(u64::MAX - 1, 10).unwrap().is_empty());
        // The dedup entry went with it: the same batch is a new transaction now.
        assert_ne!(rig.stored(half(1, "a")), id);
    }

    #[test]
    fn counts_survive_a_reload_and_listing_pages_by_cursor() {
        let mut rig = Rig::new();
        let ids: Vec<TxnId> = (0..5).map(|i| rig.stored(half(i, "x"))).collect();
        rig.apply(vec![end(ids[0], true)]);
        let meta = super::super::Meta::load(&rig.store).unwrap();
        assert_eq!(meta.groups.get("g").copied(), Some(rig.counts()));
        let shared = rig.applier.shared();
        let mut req = ListTransactionsRequest { limit: 2, ..Default::default() };
        let mut seen = Vec::new();
        loop {
            let page = shared.list_txns(&req, 0).unwrap();
            seen.extend(page.txns.iter().map(|(id, _, _)| *id));
            match page.next {
                Some(next) => req.after = next,
                None => break,
            }
        }
        assert_eq!(seen, ids[1..].to_vec());
        let (oldest, groups) = shared.txn_stats().unwrap();
        assert_eq!(oldest, 10_000);
        assert_eq!(groups[0].pending, 4);
    }

    #[test]
    fn added_timers_report_their_earliest_due_time() {
        let mut rig = Rig::new();
        let shared = rig.applier.shared();
        assert_eq!(shared.take_timer_low_ms(), Some(0), "a fresh state asks for a full scan");
        assert_eq!(shared.take_timer_low_ms(), None);
        let mut late = half(1, "a");
        if let Command::PutHalf { created_ms, .. } = &mut late {
            *created_ms = 50_000;
        }
        rig.apply(vec![late, half(2, "b")]);
        assert_eq!(shared.take_timer_low_ms(), Some(11_000));
        assert_eq!(shared.take_timer_low_ms(), None);
        // A scan from a cursor sees only what lies at or after it.
        let from = 11_001u64.to_be_bytes();
        let due = shared.due_timers_from(&from, u64::MAX - 1, 10).unwrap();
        assert_eq!(due.iter().map(|t| t.due_ms).collect::<Vec<_>>(), vec![51_000]);
    }

    /// Random apply calls of half sends (sequences repeat, so some are resends), decisions of
    /// both kinds, check records and parking: a transaction's first decision is final, the
    /// message of every committed transaction is visible exactly once and no other is, and the
    /// group counts agree.
    #[test]
    fn random_sequences_keep_decisions_final_and_visibility_exact() {
        // (resends, repeats, conflicts, parks) seen over all seeds: each path must be exercised.
        let mut seen = [0usize; 4];
        for seed in 0..40u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut rig = Rig::new();
            let mut by_seq: HashMap<u32, TxnId> = HashMap::new();
            let mut value_of: HashMap<TxnId, Bytes> = HashMap::new();
            let mut first: HashMap<TxnId, TxnState> = HashMap::new();
            let mut parked: std::collections::HashSet<TxnId> = Default::default();
            for _ in 0..150 {
                let ids: Vec<TxnId> = value_of.keys().copied().collect();
                let mut cmds = Vec::new();
                for _ in 0..rng.usize(1..6) {
                    let pick = |rng: &mut fastrand::Rng| ids[rng.usize(0..ids.len())];
                    match rng.u8(0..5) {
                        0 | 1 => {
                            let seq = rng.u32(0..60);
                            cmds.push(half(seq, &format!("v{seq}")));
                        }
                        2 | 3 if !ids.is_empty() => cmds.push(end(pick(&mut rng), rng.bool())),
                        _ if !ids.is_empty() => {
                            // Park whatever is due at its recorded check time.
                            let id = pick(&mut rng);
                            if let Some(r) = rig.applier.shared().txn(id).unwrap() {
                                cmds.push(Command::ParkTransactions {
                                    parked_ms: 1,
                                    txns: vec![TxnDue { txn_id: id, due_ms: r.next_check_ms }],
                                });
                            }
                        }
                        _ => {}
                    }
                }
                let out = rig.apply(cmds.clone());
                for (cmd, resp) in cmds.iter().zip(out) {
                    match (cmd, resp) {
                        (
                            Command::PutHalf { batch, .. },
                            CommandResponse::HalfStored { txn_id, .. },
                        ) => {
                            let seq = RecordBatch::parse(batch.clone()).unwrap().base_sequence();
                            seen[0] += usize::from(by_seq.contains_key(&seq));
                            let known = *by_seq.entry(seq).or_insert(txn_id);
                            assert_eq!(known, txn_id, "a resent batch must map to its transaction");
                            let value = RecordBatch::parse(batch.clone())
                                .unwrap()
                                .records()
                                .next()
                                .unwrap()
                                .unwrap()
                                .value;
                            value_of.insert(txn_id, value);
                        }
                        (Command::EndTransaction { txn_id, commit, .. }, resp) => {
                            let wanted =
                                if *commit { TxnState::Committed } else { TxnState::RolledBack };
                            match (first.get(txn_id).copied(), resp) {
                                (
                                    None,
                                    CommandResponse::TxnEnded { state, repeated: false, .. },
                                ) => {
                                    assert_eq!(state, wanted);
                                    first.insert(*txn_id, state);
                                }
                                (
                                    Some(s),
                                    CommandResponse::TxnEnded { state, repeated: true, .. },
                                ) => {
                                    seen[1] += 1;
                                    assert_eq!((s, state), (wanted, wanted));
                                }
                                (Some(s), CommandResponse::TxnAlreadyResolved { state }) => {
                                    seen[2] += 1;
                                    assert_eq!(s, state);
                                    assert_ne!(s, wanted);
                                }
                                (f, other) => {
                                    panic!("seed {seed}: {txn_id} first {f:?}, got {other:?}")
                                }
                            }
                        }
                        (Command::ParkTransactions { txns, .. }, CommandResponse::Done) => {
                            for t in txns {
                                if !first.contains_key(&t.txn_id) {
                                    parked.insert(t.txn_id);
                                }
                            }
                        }
                        (c, r) => panic!("seed {seed}: {c:?} answered {r:?}"),
                    }
                }
            }
            // Exactly the committed transactions' messages are visible, each once.
            let mut visible: Vec<Bytes> = rig
                .visible()
                .into_iter()
                .map(|b| RecordBatch::parse(b).unwrap().records().next().unwrap().unwrap().value)
                .collect();
            visible.sort();
            let mut committed: Vec<Bytes> = first
                .iter()
                .filter(|(_, s)| **s == TxnState::Committed)
                .map(|(id, _)| value_of[id].clone())
                .collect();
            committed.sort();
            assert_eq!(visible, committed, "seed {seed}");
            let c = rig.counts();
            let open = value_of.len() as u64 - first.len() as u64;
            assert_eq!(c.pending + c.parked, open, "seed {seed}");
            seen[3] += parked.len();
            let still_parked = parked.iter().filter(|id| !first.contains_key(id)).count();
            assert_eq!(c.parked, still_parked as u64, "seed {seed}");
            let rolled = first.values().filter(|s| **s == TxnState::RolledBack).count() as u64;
            assert_eq!(
                (c.committed, c.rolled_back),
                (committed.len() as u64, rolled),
                "seed {seed}"
            );
        }
        assert!(seen.iter().all(|n| *n > 0), "paths exercised: {seen:?}");
    }

    #[test]
    fn records_round_trip() {
        let r = TxnRecord {
            state: TxnState::Parked,
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
            created_ms: 1,
            check_timeout_ms: 2,
            check_count: 3,
            next_check_ms: 4,
            decided_ms: 5,
            origin: Some(DecisionOrigin::Operator),
            offset: Some(6),
            purge_at_ms: 7,
            producer_id: 8,
            sequence: 9,
            count: 10,
            batch: MessageValue::InLog(LogPos { index: 11, position: Some(2) }),
        };
        assert_eq!(TxnRecord::decode(r.encode()).unwrap(), r);
        assert!(TxnRecord::decode(Bytes::from_static(b"\x02")).is_err());
    }
}
