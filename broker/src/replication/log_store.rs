//! openraft's log storage over our [`LogStore`]: entries are encoded once and appended with one
//! synced write per `append` call, so every entry openraft batched since the last call shares
//! one fsync (group commit). The flush callback fires only after that write returned.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use ferry_storage::{LogStore, MetaKey};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, RaftLogReader, StorageError, StorageIOError, Vote};

use super::codec;
use super::TypeConfig;

/// Most entries read back in one call, bounding memory when a follower is far behind.
const READ_ENTRIES_MAX: u64 = 4096;

/// The Raft log adapter. Cheap to clone: openraft gets one for writing and clones for reading.
#[derive(Clone)]
pub struct RaftLog {
    store: Arc<dyn LogStore>,
}

impl RaftLog {
    /// Wraps a log store.
    pub fn new(store: Arc<dyn LogStore>) -> Self {
        RaftLog { store }
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
        let end = end.min(start.saturating_add(READ_ENTRIES_MAX));
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
        let encoded: Vec<(u64, Bytes)> =
            entries.into_iter().map(|e| (e.log_id.index, codec::entry_to_bytes(&e))).collect();
        let result = self.blocking(move |s| s.append(&encoded)).await;
        match result {
            Ok(()) => {
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
        self.blocking(move |s| s.truncate_from(log_id.index)).await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut buf = BytesMut::new();
        codec::put_log_id(&mut buf, &log_id);
        let bytes = buf.freeze();
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
