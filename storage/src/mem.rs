//! In-memory implementation of [`LogStore`] and [`StateStore`] for unit tests and the broker's
//! deterministic simulation; same semantics as [`crate::rocks::RocksStore`] (both pass
//! [`crate::conformance`]), plus crash helpers that model what a real crash keeps.
//!
//! Durability model, mirroring RocksStore: log and metadata writes are durable when they return;
//! state batches are durable only once [`StateStore::flush`] (or an import) returns, and a crash
//! keeps some prefix of the batches written since.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::log_rules::{check_append, span_after_purge, span_after_truncate, LogSpan};
use crate::snapshot_stream::{StreamReader, StreamWriter};
use crate::{Cf, LogStore, MetaKey, Result, StateStore, WriteBatch, WriteOp};

/// One ordered map per state family, indexed by the family's discriminant.
type Families = [BTreeMap<Bytes, Bytes>; Cf::ALL.len()];

/// The in-memory store. Cheap to clone (an `Arc`); clones share the same data. Every method
/// takes one short lock and never blocks otherwise.
///
/// Memory: the batches written since the last flush are kept (to model crashes) until the next
/// [`StateStore::flush`]; the broker flushes before every log purge, which bounds them.
#[derive(Debug, Clone, Default)]
pub struct MemStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Clone, Default)]
struct Inner {
    log: BTreeMap<u64, Bytes>,
    meta: HashMap<MetaKey, Bytes>,
    /// What reads see: every batch written so far.
    state: Families,
    /// State as of the last flush (or import): what survives a crash for certain.
    durable: Families,
    /// Batches written since the last flush, oldest first: a crash may keep any prefix of them.
    unflushed: Vec<WriteBatch>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// What a fresh process would find after this one crashed now, losing every state batch
    /// written since the last flush (the worst case RocksStore allows). Log and metadata are
    /// kept whole: they are durable when written. The returned store shares nothing with `self`.
    pub fn crash(&self) -> MemStore {
        self.crash_keeping_unflushed(0)
    }

    /// Like [`MemStore::crash`], but the first `batches` of the state batches written since the
    /// last flush survive as well (RocksDB may have flushed them on its own). `batches` beyond
    /// [`MemStore::unflushed_batches`] keeps them all. A simulation picks a number in
    /// `0..=unflushed_batches()` to explore every outcome a real crash can have.
    pub fn crash_keeping_unflushed(&self, batches: usize) -> MemStore {
        let inner = self.lock();
        let mut state = inner.durable.clone();
        for batch in inner.unflushed.iter().take(batches) {
            apply(&mut state, batch);
        }
        let survivor = Inner {
            log: inner.log.clone(),
            meta: inner.meta.clone(),
            durable: state.clone(),
            state,
            unflushed: Vec::new(),
        };
        MemStore { inner: Arc::new(Mutex::new(survivor)) }
    }

    /// Number of state batches written since the last flush (those a crash may lose).
    pub fn unflushed_batches(&self) -> usize {
        self.lock().unflushed.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation below leaves the maps valid at each step, so a panic while holding the
        // lock (only possible in a test) does not leave anything half-written to fear.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn span(&self) -> Option<LogSpan> {
        match (self.log.first_key_value(), self.log.last_key_value()) {
            (Some((&first, _)), Some((&last, _))) => Some(LogSpan { first, last }),
            _ => None,
        }
    }
}

fn family(families: &Families, cf: Cf) -> &BTreeMap<Bytes, Bytes> {
    &families[usize::from(cf as u8)]
}

fn family_mut(families: &mut Families, cf: Cf) -> &mut BTreeMap<Bytes, Bytes> {
    &mut families[usize::from(cf as u8)]
}

/// `start..end` as map bounds; callers check `start < end` first (`BTreeMap::range` panics on
/// an inverted range).
fn bounds<'a>(start: &'a [u8], end: &'a [u8]) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (Bound::Included(start), Bound::Excluded(end))
}

fn apply(families: &mut Families, batch: &WriteBatch) {
    for op in &batch.ops {
        match op {
            WriteOp::Put { cf, key, value } => {
                family_mut(families, *cf).insert(key.clone(), value.clone());
            }
            WriteOp::Delete { cf, key } => {
                family_mut(families, *cf).remove(key);
            }
            WriteOp::DeleteRange { cf, start, end } => {
                if start < end {
                    let map = family_mut(families, *cf);
                    let doomed: Vec<Bytes> =
                        map.range::<[u8], _>(bounds(start, end)).map(|(k, _)| k.clone()).collect();
                    for key in doomed {
                        map.remove(&key);
                    }
                }
            }
        }
    }
}

impl LogStore for MemStore {
    fn append(&self, entries: &[(u64, Bytes)]) -> Result<()> {
        let mut inner = self.lock();
        check_append(inner.span(), entries)?;
        for (index, entry) in entries {
            inner.log.insert(*index, entry.clone());
        }
        Ok(())
    }

    fn read_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Bytes)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let inner = self.lock();
        Ok(inner.log.range(start..end).map(|(i, e)| (*i, e.clone())).collect())
    }

    fn first_index(&self) -> Result<Option<u64>> {
        Ok(self.lock().span().map(|s| s.first))
    }

    fn last_index(&self) -> Result<Option<u64>> {
        Ok(self.lock().span().map(|s| s.last))
    }

    fn truncate_from(&self, index: u64) -> Result<()> {
        let mut inner = self.lock();
        let expected = span_after_truncate(inner.span(), index);
        // split_off keeps `< index` in place and returns the rest, which is dropped.
        inner.log.split_off(&index);
        debug_assert_eq!(inner.span(), expected);
        Ok(())
    }

    fn purge_upto(&self, index: u64) -> Result<()> {
        let mut inner = self.lock();
        let expected = span_after_purge(inner.span(), index);
        inner.log = match index.checked_add(1) {
            Some(keep_from) => inner.log.split_off(&keep_from),
            None => BTreeMap::new(),
        };
        debug_assert_eq!(inner.span(), expected);
        Ok(())
    }

    fn save_meta(&self, key: MetaKey, value: &[u8]) -> Result<()> {
        self.lock().meta.insert(key, Bytes::copy_from_slice(value));
        Ok(())
    }

    fn read_meta(&self, key: MetaKey) -> Result<Option<Bytes>> {
        Ok(self.lock().meta.get(&key).cloned())
    }
}

impl StateStore for MemStore {
    fn write(&self, batch: WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        apply(&mut inner.state, &batch);
        inner.unflushed.push(batch);
        Ok(())
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(family(&self.lock().state, cf).get(key).cloned())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let inner = self.lock();
        Ok(family(&inner.state, cf)
            .range::<[u8], _>(bounds(start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<(Bytes, Bytes)>> {
        if start >= end {
            return Ok(None);
        }
        let inner = self.lock();
        Ok(family(&inner.state, cf)
            .range::<[u8], _>(bounds(start, end))
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn flush(&self) -> Result<()> {
        let mut inner = self.lock();
        inner.durable = inner.state.clone();
        inner.unflushed.clear();
        Ok(())
    }

    fn export(&self, out: &mut dyn Write) -> Result<u64> {
        // Cloning the maps (reference-count bumps, not byte copies) gives the point-in-time copy
        // without holding the lock while `out` is written.
        let state = self.lock().state.clone();
        let mut stream = StreamWriter::new(out)?;
        for cf in Cf::ALL {
            for (key, value) in family(&state, cf) {
                stream.record(cf, key, value)?;
            }
        }
        stream.finish()
    }

    fn import(&self, input: &mut dyn Read) -> Result<()> {
        // Decoded whole before anything is replaced, so a bad stream leaves the store as it was
        // (the contract allows any state after an error; this is simply the easiest one).
        let mut stream = StreamReader::new(input)?;
        let mut state = Families::default();
        while let Some(record) = stream.next_record()? {
            family_mut(&mut state, record.cf).insert(record.key.into(), record.value.into());
        }
        let mut inner = self.lock();
        inner.durable = state.clone();
        inner.state = state;
        inner.unflushed.clear();
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In a test a failed unwrap is a failed test, which is the point.
mod tests {
    use super::*;
    use crate::conformance;

    #[test]
    fn passes_log_store_conformance() {
        conformance::run_log_store_suite(&mut MemStore::new);
    }

    #[test]
    fn passes_state_store_conformance() {
        conformance::run_state_store_suite(&mut MemStore::new);
    }

    fn put(store: &MemStore, cf: Cf, key: &'static [u8], value: &'static [u8]) {
        let mut batch = WriteBatch::new();
        batch.put(cf, key, value);
        store.write(batch).unwrap();
    }

    #[test]
    fn crash_keeps_log_and_meta_but_only_flushed_state() {
        let store = MemStore::new();
        store.append(&[(1, Bytes::from_static(b"a")), (2, Bytes::from_static(b"b"))]).unwrap();
        store.save_meta(MetaKey::Vote, b"vote").unwrap();
        put(&store, Cf::State, b"k1", b"flushed");
        store.flush().unwrap();
        put(&store, Cf::State, b"k2", b"lost");
        put(&store, Cf::Messages, b"k1", b"lost");
        assert_eq!(store.unflushed_batches(), 2);

        let after = store.crash();
        assert_eq!(after.last_index().unwrap(), Some(2));
        assert_eq!(after.read_meta(MetaKey::Vote).unwrap().as_deref(), Some(&b"vote"[..]));
        assert_eq!(after.get(Cf::State, b"k1").unwrap().as_deref(), Some(&b"flushed"[..]));
        assert_eq!(after.get(Cf::State, b"k2").unwrap(), None);
        assert_eq!(after.get(Cf::Messages, b"k1").unwrap(), None);
        assert_eq!(after.unflushed_batches(), 0);

        // The survivor is independent of the crashed store.
        put(&after, Cf::State, b"k3", b"new");
        assert_eq!(store.get(Cf::State, b"k3").unwrap(), None);
    }

    #[test]
    fn crash_keeping_unflushed_keeps_a_prefix_of_batches() {
        let store = MemStore::new();
        for i in 0u8..5 {
            let mut batch = WriteBatch::new();
            batch.put(Cf::State, &b"counter"[..], vec![i]);
            batch.put(Cf::Messages, vec![i], &b"m"[..]);
            store.write(batch).unwrap();
        }
        for kept in 0..=6usize {
            let after = store.crash_keeping_unflushed(kept);
            let messages = after.scan(Cf::Messages, &[], &[0xff], usize::MAX).unwrap();
            let expected = kept.min(5);
            assert_eq!(messages.len(), expected, "kept {kept}");
            let counter = after.get(Cf::State, b"counter").unwrap();
            let expected_counter = expected.checked_sub(1).map(|c| vec![u8::try_from(c).unwrap()]);
            assert_eq!(counter.map(|c| c.to_vec()), expected_counter, "kept {kept}");
        }
    }

    #[test]
    fn clones_share_one_store() {
        let store = MemStore::new();
        let clone = store.clone();
        clone.append(&[(7, Bytes::from_static(b"x"))]).unwrap();
        put(&clone, Cf::Txn, b"t", b"v");
        assert_eq!(store.first_index().unwrap(), Some(7));
        assert_eq!(store.get(Cf::Txn, b"t").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
