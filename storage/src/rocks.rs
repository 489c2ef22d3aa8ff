//! RocksDB implementation of [`LogStore`] and [`StateStore`]: one database per replica, one
//! column family per structure. `ferry-broker` opens it once and hands clones to its replication
//! module (log + vote) and its state machine (state).
//!
//! Durability model:
//! * Raft log and metadata writes go through the WAL and are synced (`sync = true`) before they
//!   return; an append of many entries is one synced write (group commit).
//! * State writes skip the WAL. `atomic_flush` makes every memtable flush, automatic or
//!   requested by [`StateStore::flush`], cover all families up to one sequence number, so after a
//!   crash the state families hold the same prefix of batches; the broker replays the Raft log
//!   from the `last_applied` stored in that prefix.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, Direction,
    FlushOptions, IteratorMode, Options, ReadOptions, WriteOptions, DB,
};
use tracing::debug;

use crate::log_rules::{check_append, span_after_purge, span_after_truncate, LogSpan};
use crate::snapshot_stream::{StreamReader, StreamWriter};
use crate::{Cf, LogStore, MetaKey, Result, StateStore, StorageError, WriteBatch, WriteOp};

/// Column family of the Raft log.
const LOG_CF: &str = "raft_log";
/// Column family of the Raft metadata ([`MetaKey`] values).
const META_CF: &str = "raft_meta";

/// Import writes records in batches of about this size: big enough to amortise the per-write
/// overhead, small enough not to hold a whole snapshot in one memtable insert.
const IMPORT_BATCH_BYTES_MAX: usize = 4 << 20;

/// Memtable size of every family but `messages` (RocksDB's default).
const WRITE_BUFFER_BYTES: usize = 64 << 20;
/// Memtable size of `messages`, which takes most of the write volume. With atomic flush a full
/// memtable in any family flushes all of them, so a larger one here means fewer (and larger)
/// flushes, and fewer tiny SST files in the small families.
const MESSAGES_WRITE_BUFFER_BYTES: usize = 128 << 20;
/// Bound on the WAL. Only the log families use it, but a WAL file lives until every family with
/// data in it has flushed; past this size RocksDB flushes instead of letting the WAL grow.
const WAL_TOTAL_BYTES_MAX: u64 = 512 << 20;
/// Background flush + compaction threads: flushes must keep up with bursts of appends or writes
/// stall.
const BACKGROUND_JOBS: i32 = 4;
/// RocksDB's own info LOG files kept on disk (they otherwise accumulate, one per open).
const INFO_LOG_FILES_KEPT: usize = 8;

/// Memtable sizes; production uses [`Tuning::default`], the crash test shrinks them so automatic
/// flushes happen within a few megabytes of writes.
#[derive(Debug, Clone)]
pub(crate) struct Tuning {
    /// Memtable size of the log, metadata and every state family but `messages`.
    pub(crate) write_buffer_bytes: usize,
    /// Memtable size of `messages`.
    pub(crate) messages_write_buffer_bytes: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            write_buffer_bytes: WRITE_BUFFER_BYTES,
            messages_write_buffer_bytes: MESSAGES_WRITE_BUFFER_BYTES,
        }
    }
}

/// What [`RocksStore::verify`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Keys read, over every family.
    pub keys: u64,
    /// Key and value bytes read.
    pub bytes: u64,
}

/// The RocksDB store: Raft log, Raft metadata and applied state in one database.
///
/// Cheap to clone (an `Arc`); clones share the database. Every method blocks.
#[derive(Clone)]
pub struct RocksStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: DB,
    path: PathBuf,
    /// Serialises log mutations, so the contiguity check and the write it guards see the same
    /// log. Held across the synced write; readers never take it.
    log_writer: Mutex<()>,
    /// First and last index, cached because Raft asks for them on every append and vote; kept
    /// apart from `log_writer` so reading them never waits for an fsync.
    log_span: Mutex<Option<LogSpan>>,
}

impl fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RocksStore").field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl RocksStore {
    /// Opens the database at `path`, creating it and any missing column family.
    ///
    /// Errors: [`StorageError::Engine`] if RocksDB cannot open it (including when another process
    /// holds it open), [`StorageError::Corrupt`] if a log key has the wrong shape.
    pub fn open(path: &Path) -> Result<RocksStore> {
        Self::open_tuned(path, &Tuning::default())
    }

    pub(crate) fn open_tuned(path: &Path, tuning: &Tuning) -> Result<RocksStore> {
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // State writes skip the WAL; atomic flush is what keeps the state families a consistent
        // prefix of batches after a crash (see the module comment).
        db_opts.set_atomic_flush(true);
        db_opts.set_max_total_wal_size(WAL_TOTAL_BYTES_MAX);
        db_opts.set_max_background_jobs(BACKGROUND_JOBS);
        db_opts.set_keep_log_file_num(INFO_LOG_FILES_KEPT);
        // A damaged WAL record fails the open instead of silently ending the log there (the
        // default, point-in-time recovery, would drop synced and acknowledged entries after
        // it). Only an incomplete record at the very end, a write cut short, is tolerated.
        db_opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);

        // The Raft log and the messages hold producer payloads, which are random-looking or
        // compressed by the application already: LZ4 on them cost ~15% of a leader's CPU in a
        // profile and saved little. Metadata families stay compressed.
        let family = |name: &str, write_buffer_bytes: usize, compression: DBCompressionType| {
            let mut opts = Options::default();
            opts.set_compression_type(compression);
            opts.set_write_buffer_size(write_buffer_bytes);
            ColumnFamilyDescriptor::new(name, opts)
        };
        let mut families = vec![
            family(LOG_CF, tuning.write_buffer_bytes, DBCompressionType::None),
            family(META_CF, tuning.write_buffer_bytes, DBCompressionType::Lz4),
        ];
        for cf in Cf::ALL {
            let (write_buffer_bytes, compression) = match cf {
                Cf::Messages => (tuning.messages_write_buffer_bytes, DBCompressionType::None),
                _ => (tuning.write_buffer_bytes, DBCompressionType::Lz4),
            };
            families.push(family(cf.name(), write_buffer_bytes, compression));
        }

        let db = DB::open_cf_descriptors(&db_opts, path, families).map_err(engine)?;
        let span = read_log_span(&db)?;
        debug!(path = %path.display(), first = ?span.map(|s| s.first), last = ?span.map(|s| s.last), "opened rocks store");
        Ok(RocksStore {
            inner: Arc::new(Inner {
                db,
                path: path.to_owned(),
                log_writer: Mutex::new(()),
                log_span: Mutex::new(span),
            }),
        })
    }

    /// Reads every key and value of every family, verifying block checksums: a damaged file
    /// that opening did not touch is found here rather than on a read while serving.
    /// Returns the keys and bytes read.
    ///
    /// Errors: [`StorageError::Corrupt`] naming the family when a checksum or structure check
    /// fails; [`StorageError::Engine`] for other read failures.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let names = [LOG_CF, META_CF].into_iter().chain(Cf::ALL.iter().map(|cf| cf.name()));
        for name in names {
            let mut opts = ReadOptions::default();
            opts.set_verify_checksums(true);
            opts.fill_cache(false);
            let iter = self.inner.db.iterator_cf_opt(self.handle(name)?, opts, IteratorMode::Start);
            for item in iter {
                let (key, value) = item.map_err(|e| match e.kind() {
                    rocksdb::ErrorKind::Corruption => StorageError::Corrupt {
                        what: "column family",
                        detail: format!("{name}: {}", e.into_string()),
                    },
                    _ => engine(e),
                })?;
                report.keys += 1;
                report.bytes += (key.len() + value.len()) as u64;
            }
        }
        Ok(report)
    }

    /// Reads the stored vote of the database at `path` while salvaging what can be read:
    /// damaged WAL records are skipped and nothing is written back. For a replica whose data
    /// is damaged, so it keeps its vote (and never votes twice in a term) when it resyncs.
    ///
    /// Errors: the open or read failed (the vote is unreadable).
    pub fn salvage_vote(path: &Path) -> Result<Option<Bytes>> {
        let mut opts = Options::default();
        opts.set_wal_recovery_mode(DBRecoveryMode::SkipAnyCorruptedRecord);
        opts.set_paranoid_checks(false);
        let names = [LOG_CF, META_CF].into_iter().chain(Cf::ALL.iter().map(|cf| cf.name()));
        let db = DB::open_cf_for_read_only(&opts, path, names, false).map_err(engine)?;
        let value = db
            .get_pinned_cf(handle(&db, META_CF)?, encode_meta_key(MetaKey::Vote))
            .map_err(engine)?
            .map(|v| Bytes::copy_from_slice(&v));
        Ok(value)
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn handle(&self, name: &str) -> Result<&ColumnFamily> {
        handle(&self.inner.db, name)
    }

    fn span(&self) -> Option<LogSpan> {
        *lock(&self.inner.log_span)
    }

    fn set_span(&self, span: Option<LogSpan>) {
        *lock(&self.inner.log_span) = span;
    }

    fn write_synced(&self, batch: rocksdb::WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.inner.db.write_opt(batch, &opts).map_err(engine)
    }

    fn write_unlogged(&self, batch: rocksdb::WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.disable_wal(true);
        self.inner.db.write_opt(batch, &opts).map_err(engine)
    }

    /// Adds to `batch` the deletion of every key in `cf`. There is no greatest byte string to end
    /// a range at, so the range runs from the empty key to the current last key, which is then
    /// deleted on its own.
    fn delete_all(&self, batch: &mut rocksdb::WriteBatch, cf: Cf) -> Result<()> {
        let handle = self.handle(cf.name())?;
        let last = self.inner.db.iterator_cf(handle, IteratorMode::End).next();
        if let Some(item) = last {
            let (last_key, _) = item.map_err(engine)?;
            batch.delete_range_cf(handle, &[][..], &last_key[..]);
            batch.delete_cf(handle, &last_key[..]);
        }
        Ok(())
    }
}

// raft_log family
//
//   key:   index:u64be   (8 bytes; big-endian so byte order is index order)
//   value: entry bytes, exactly as given to append
//
// The index u64::MAX is never stored (see log_rules::INDEX_MAX), so `last + 1` is always a valid
// exclusive end for a range delete.
fn encode_index(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn decode_index(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StorageError::Corrupt {
        what: "raft log key",
        detail: format!("expected 8 bytes, found {}", key.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

// raft_meta family
//
//   key:   MetaKey discriminant:u8   (1 byte)
//   value: the caller's bytes
fn encode_meta_key(key: MetaKey) -> [u8; 1] {
    [key as u8]
}

// State families (messages, txn, timers, groups, state): keys and values are the caller's bytes,
// unchanged; the broker owns their layouts.

/// Reads the first and last log index from disk (on open; afterwards they are cached).
fn read_log_span(db: &DB) -> Result<Option<LogSpan>> {
    let cf = handle(db, LOG_CF)?;
    let first = db.iterator_cf(cf, IteratorMode::Start).next().transpose().map_err(engine)?;
    let last = db.iterator_cf(cf, IteratorMode::End).next().transpose().map_err(engine)?;
    match (first, last) {
        (Some((first, _)), Some((last, _))) => {
            Ok(Some(LogSpan { first: decode_index(&first)?, last: decode_index(&last)? }))
        }
        (None, None) => Ok(None),
        _ => Err(StorageError::Corrupt {
            what: "raft log",
            detail: "one end of the log exists and the other does not".to_owned(),
        }),
    }
}

fn handle<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| StorageError::Engine(format!("column family {name} is missing")))
}

fn engine(e: rocksdb::Error) -> StorageError {
    match e.kind() {
        rocksdb::ErrorKind::Corruption => {
            StorageError::Corrupt { what: "rocksdb", detail: e.into_string() }
        }
        _ => StorageError::Engine(e.into_string()),
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked (plain assignments only).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read options bounded to `start..end`.
fn bounded(start: &[u8], end: &[u8]) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(start);
    opts.set_iterate_upper_bound(end);
    opts
}

impl LogStore for RocksStore {
    fn append(&self, entries: &[(u64, Bytes)]) -> Result<()> {
        let _writer = lock(&self.inner.log_writer);
        let span = self.span();
        let new_span = check_append(span, entries)?;
        if entries.is_empty() {
            return Ok(());
        }
        let cf = self.handle(LOG_CF)?;
        let mut batch = rocksdb::WriteBatch::default();
        for (index, entry) in entries {
            batch.put_cf(cf, encode_index(*index), entry);
        }
        self.write_synced(batch)?;
        self.set_span(new_span);
        Ok(())
    }

    fn read_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Bytes)>> {
        if start >= end {
            return Ok(Vec::new());
        }
        let cf = self.handle(LOG_CF)?;
        let start_key = encode_index(start);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(encode_index(end));
        let iter = self.inner.db.iterator_cf_opt(
            cf,
            opts,
            IteratorMode::From(&start_key, Direction::Forward),
        );
        let mut entries: Vec<(u64, Bytes)> = Vec::new();
        for item in iter {
            let (key, value) = item.map_err(engine)?;
            let index = decode_index(&key)?;
            // The iterator reads one consistent view, and deletes only ever remove a prefix or a
            // suffix, so a hole here is damage, not a race.
            if let Some(&(previous, _)) = entries.last() {
                if previous.checked_add(1) != Some(index) {
                    return Err(StorageError::Corrupt {
                        what: "raft log",
                        detail: format!("gap between index {previous} and {index}"),
                    });
                }
            }
            entries.push((index, Bytes::from(value)));
        }
        Ok(entries)
    }

    fn first_index(&self) -> Result<Option<u64>> {
        Ok(self.span().map(|s| s.first))
    }

    fn last_index(&self) -> Result<Option<u64>> {
        Ok(self.span().map(|s| s.last))
    }

    fn truncate_from(&self, index: u64) -> Result<()> {
        let _writer = lock(&self.inner.log_writer);
        let span = self.span();
        let new_span = span_after_truncate(span, index);
        let Some(old) = span else { return Ok(()) };
        if new_span == span {
            return Ok(());
        }
        let cf = self.handle(LOG_CF)?;
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_range_cf(cf, encode_index(index.max(old.first)), encode_index(old.last + 1));
        self.write_synced(batch)?;
        self.set_span(new_span);
        Ok(())
    }

    fn purge_upto(&self, index: u64) -> Result<()> {
        let _writer = lock(&self.inner.log_writer);
        let span = self.span();
        let new_span = span_after_purge(span, index);
        let Some(old) = span else { return Ok(()) };
        if new_span == span {
            return Ok(());
        }
        let cf = self.handle(LOG_CF)?;
        let mut batch = rocksdb::WriteBatch::default();
        // A range tombstone rather than one tombstone per entry: a purge can cover millions of
        // entries, and point tombstones would also slow the seek-to-first on the next open.
        batch.delete_range_cf(cf, encode_index(old.first), encode_index(index.min(old.last) + 1));
        self.write_synced(batch)?;
        self.set_span(new_span);
        Ok(())
    }

    fn save_meta(&self, key: MetaKey, value: &[u8]) -> Result<()> {
        let cf = self.handle(META_CF)?;
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(cf, encode_meta_key(key), value);
        self.write_synced(batch)
    }

    fn read_meta(&self, key: MetaKey) -> Result<Option<Bytes>> {
        let cf = self.handle(META_CF)?;
        let value = self.inner.db.get_pinned_cf(cf, encode_meta_key(key)).map_err(engine)?;
        Ok(value.map(|v| Bytes::copy_from_slice(&v)))
    }
}

impl StateStore for RocksStore {
    fn write(&self, batch: WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut rocks_batch = rocksdb::WriteBatch::default();
        for op in &batch.ops {
            match op {
                WriteOp::Put { cf, key, value } => {
                    rocks_batch.put_cf(self.handle(cf.name())?, key, value);
                }
                WriteOp::Delete { cf, key } => {
                    rocks_batch.delete_cf(self.handle(cf.name())?, key);
                }
                WriteOp::DeleteRange { cf, start, end } => {
                    // An empty or inverted range removes nothing; RocksDB may reject it, so it
                    // is skipped (MemStore does the same).
                    if start < end {
                        rocks_batch.delete_range_cf(self.handle(cf.name())?, start, end);
                    }
                }
            }
        }
        self.write_unlogged(rocks_batch)
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>> {
        let value = self.inner.db.get_pinned_cf(self.handle(cf.name())?, key).map_err(engine)?;
        Ok(value.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let iter = self.inner.db.iterator_cf_opt(
            self.handle(cf.name())?,
            bounded(start, end),
            IteratorMode::From(start, Direction::Forward),
        );
        iter.take(limit)
            .map(|item| item.map(|(k, v)| (Bytes::from(k), Bytes::from(v))).map_err(engine))
            .collect()
    }

    fn last_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<(Bytes, Bytes)>> {
        if start >= end {
            return Ok(None);
        }
        // With an upper bound set, seeking to the end lands on the greatest key below it.
        let mut iter = self.inner.db.iterator_cf_opt(
            self.handle(cf.name())?,
            bounded(start, end),
            IteratorMode::End,
        );
        let last = iter.next().transpose().map_err(engine)?;
        Ok(last.map(|(k, v)| (Bytes::from(k), Bytes::from(v))))
    }

    fn flush(&self) -> Result<()> {
        let handles =
            Cf::ALL.iter().map(|cf| self.handle(cf.name())).collect::<Result<Vec<_>>>()?;
        let mut opts = FlushOptions::default();
        opts.set_wait(true);
        // One call over all state families: with atomic_flush they are flushed to the same
        // sequence number, so the durable state is one consistent prefix of batches.
        self.inner.db.flush_cfs_opt(&handles, &opts).map_err(engine)
    }

    fn export(&self, out: &mut dyn Write) -> Result<u64> {
        // The snapshot pins one sequence number: writes after this line are not in the copy.
        let snapshot = self.inner.db.snapshot();
        let mut stream = StreamWriter::new(out)?;
        let mut records: u64 = 0;
        for cf in Cf::ALL {
            let mut opts = ReadOptions::default();
            // A full scan would otherwise evict the hot working set from the block cache.
            opts.fill_cache(false);
            for item in snapshot.iterator_cf_opt(self.handle(cf.name())?, opts, IteratorMode::Start)
            {
                let (key, value) = item.map_err(engine)?;
                stream.record(cf, &key, &value)?;
                records += 1;
            }
        }
        let bytes = stream.finish()?;
        debug!(records, bytes, "exported state snapshot");
        Ok(bytes)
    }

    fn import(&self, input: &mut dyn Read) -> Result<()> {
        // Checking the magic first means a stream that is not a snapshot at all leaves the state
        // untouched; later errors leave it unspecified (the caller stops the replica).
        let mut stream = StreamReader::new(input)?;
        let mut batch = rocksdb::WriteBatch::default();
        for cf in Cf::ALL {
            self.delete_all(&mut batch, cf)?;
        }
        self.write_unlogged(batch)?;

        let mut batch = rocksdb::WriteBatch::default();
        let mut records: u64 = 0;
        while let Some(record) = stream.next_record()? {
            batch.put_cf(self.handle(record.cf.name())?, &record.key, &record.value);
            records += 1;
            if batch.size_in_bytes() >= IMPORT_BATCH_BYTES_MAX {
                self.write_unlogged(std::mem::take(&mut batch))?;
            }
        }
        self.write_unlogged(batch)?;
        self.flush()?;
        debug!(records, "imported state snapshot");
        Ok(())
    }
}

#[cfg(test)]
mod tests;
