//! openraft's log storage over our [`LogStore`]: entries are encoded once and appended with one
//! synced write per `append` call, so every entry openraft batched since the last call shares
//! one fsync (group commit). The flush callback fires only after that write returned.
//!
//! openraft reads every entry back to replicate it to each follower; the newest entries are
//! kept decoded in a bounded in-memory cache so that read costs neither a RocksDB read, a copy
//! nor a decode.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use ferry_storage::{LogStore, MetaKey};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};

use super::codec;
use super::TypeConfig;

/// Bytes of entry payload the replication cache holds at most.
const CACHE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// The newest durable entries, contiguous by index, decoded.
#[derive(Default)]
struct EntryCache {
    entries: VecDeque<Entry<TypeConfig>>,
    bytes: usize,
}

fn payload_bytes(entry: &Entry<TypeConfig>) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(cmd) => cmd.encoded_len_hint(),
        _ => 64,
    }
}

impl EntryCache {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    /// Adds entries just made durable. A gap (or a rewrite) restarts the cache.
    fn push(&mut self, new: Vec<Entry<TypeConfig>>) {
        for entry in new {
            let contiguous =
                self.entries.back().is_none_or(|last| last.log_id.index + 1 == entry.log_id.index);
            if !contiguous {
                self.entries.clear();
                self.bytes = 0;
            }
            self.bytes += payload_bytes(&entry);
            self.entries.push_back(entry);
        }
        while self.bytes > CACHE_BYTES_MAX {
            match self.entries.pop_front() {
                Some(e) => self.bytes -= payload_bytes(&e),
                None => break,
            }
        }
    }

    /// Drops entries with index `>= index`.
    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= index) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= payload_bytes(&e);
            }
        }
    }

    /// Drops entries with index `<= index`.
    fn purge_upto(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.log_id.index <= index) {
            if let Some(e) = self.entries.pop_front() {
                self.bytes -= payload_bytes(&e);
            }
        }
    }

    /// The entries `start..end` if the cache holds all of them.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.first_index()?;
        let last = self.entries.back()?.log_id.index;
        if start < first || end > last + 1 || start >= end {
            return None;
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(self.entries.range(from..to).cloned().collect())
    }
}

/// The Raft log adapter. Cheap to clone: openraft gets one for writing and clones for reading;
/// all share the store and the cache.
#[derive(Clone)]
pub struct RaftLog {
    store: Arc<dyn LogStore>,
    cache: Arc<Mutex<EntryCache>>,
}

impl RaftLog {
    /// Wraps a log store.
    pub fn new(store: Arc<dyn LogStore>) -> Self {
        RaftLog { store, cache: Arc::default() }
    }

    fn with_cache<T>(&self, f: impl FnOnce(&mut EntryCache) -> T) -> Option<T> {
        self.cache.lock().ok().map(|mut c| f(&mut c))
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, ferry_storage::StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn LogStore) -> Result<T, ferry_storage::StorageError> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref())).await.map_err(|e| {
            ferry_storage::StorageError::Engine(format!("blocking task failed: {e}"))
        })?
    }

    async fn read_meta_log_id(
        &self,
        key: MetaKey,
    ) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        let raw = self.blocking(move |s| s.read_meta(key)).await.map_err(read_err)?;
        match raw {
            None => Ok(None),
            Some(mut b) => codec::get_log_id(&mut b).map(Some).map_err(read_err),
        }
    }
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        // Every entry asked for: openraft applies committed entries by reading the whole range
        // and treats a short answer as storage damage (a restarted follower with thousands of
        // entries to re-apply stopped its Raft core that way). Replication asks for bounded
        // ranges on its own (`max_payload_entries`).
        if let Some(Some(hit)) = self.with_cache(|c| c.get(start, end)) {
            return Ok(hit);
        }
        let raw = self.blocking(move |s| s.read_range(start, end)).await.map_err(read_err)?;
        raw.into_iter().map(|(_, bytes)| codec::entry_from_bytes(bytes).map_err(read_err)).collect()
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = RaftLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_purged_log_id = self.read_meta_log_id(MetaKey::LastPurged).await?;
        let last = self
            .blocking(|s| match s.last_index()? {
                Some(i) => Ok(s.read_range(i, i + 1)?.pop()),
                None => Ok(None),
            })
            .await
            .map_err(read_err)?;
        let last_log_id = match last {
            Some((_, mut bytes)) => Some(codec::get_log_id(&mut bytes).map_err(read_err)?),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut buf = BytesMut::new();
        codec::put_vote(&mut buf, vote);
        let bytes = buf.freeze();
        self.blocking(move |s| s.save_meta(MetaKey::Vote, &bytes))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        let raw = self
            .blocking(|s| s.read_meta(MetaKey::Vote))
            .await
            .map_err(|e| StorageError::from(StorageIOError::read_vote(&e)))?;
        match raw {
            None => Ok(None),
            Some(mut b) => {
                codec::get_vote(&mut b).map(Some).map_err(|e| StorageIOError::read_vote(&e).into())
            }
        }
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let encoded: Vec<(u64, Bytes)> =
            entries.iter().map(|e| (e.log_id.index, codec::entry_to_bytes(e))).collect();
        let result = self.blocking(move |s| s.append(&encoded)).await;
        match result {
            Ok(()) => {
                // Cached only once durable: replication never ships what a crash could lose.
                self.with_cache(|c| c.push(entries));
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                // Fail-stop: report the error to openraft, which stops this replica.
                tracing::error!(error = %e, "raft log append failed; stopping replica");
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.with_cache(|c| c.truncate_from(log_id.index));
        self.blocking(move |s| s.truncate_from(log_id.index)).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut buf = BytesMut::new();
        codec::put_log_id(&mut buf, &log_id);
        let bytes = buf.freeze();
        self.with_cache(|c| c.purge_upto(log_id.index));
        // Record the purge point first: a crash between the two leaves extra entries behind it,
        // which is harmless; the reverse order could lose the last purged id.
        self.blocking(move |s| {
            s.save_meta(MetaKey::LastPurged, &bytes)?;
            s.purge_upto(log_id.index)
        })
        .await
        .map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(v: Option<Vec<Entry<TypeConfig>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[tokio::test]
    async fn a_long_range_is_read_whole() {
        // Regression: reads were capped at 4,096 entries, and openraft's apply path refuses a
        // short read ("try to get log at index 5359 but got Some(4095)") and stops the node.
        let store = Arc::new(ferry_storage::mem::MemStore::new());
        let raw: Vec<(u64, Bytes)> =
            (1..=5000).map(|i| (i, codec::entry_to_bytes(&entry(i)))).collect();
        store.append(&raw).unwrap();
        let mut log = RaftLog::new(store);
        let got = log.try_get_log_entries(1..5001).await.unwrap();
        assert_eq!(got.len(), 5000);
        assert_eq!(got.last().map(|e| e.log_id.index), Some(5000));
        let tail = log.try_get_log_entries(4000..).await.unwrap();
        assert_eq!(tail.len(), 1001);
    }

    #[test]
    fn cache_serves_only_ranges_it_holds_whole() {
        let mut c = EntryCache::default();
        c.push((5..10).map(entry).collect());
        assert_eq!(indexes(c.get(6, 9)), Some(vec![6, 7, 8]));
        assert_eq!(indexes(c.get(4, 9)), None);
        assert_eq!(indexes(c.get(8, 11)), None);
        c.truncate_from(8);
        assert_eq!(indexes(c.get(5, 8)), Some(vec![5, 6, 7]));
        assert_eq!(indexes(c.get(5, 9)), None);
        c.push(vec![entry(8)]);
        c.purge_upto(6);
        assert_eq!(indexes(c.get(7, 9)), Some(vec![7, 8]));
        assert_eq!(indexes(c.get(6, 8)), None);
        // A gap restarts the cache rather than serving a hole.
        c.push(vec![entry(20)]);
        assert_eq!(indexes(c.get(7, 9)), None);
        assert_eq!(indexes(c.get(20, 21)), Some(vec![20]));
    }
}
