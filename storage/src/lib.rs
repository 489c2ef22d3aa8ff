//! ferry-storage: the two stores a broker replica keeps, behind traits that never mention RocksDB.
//!
//! * [`LogStore`] holds the Raft log (opaque entry bytes by index) and a few small metadata
//!   values (vote, committed, last purged). Every mutating call is durable when it returns.
//! * [`StateStore`] holds the applied state (messages, transactions, timers, groups, metadata) as
//!   ordered key/value pairs in column families. Writes are atomic across families but need not
//!   be durable: the broker writes `last_applied` in the same batch and replays the Raft log from
//!   there after a crash. [`StateStore::flush`] makes everything written so far durable; the
//!   broker calls it before it lets the Raft log be purged behind a snapshot.
//!
//! Two implementations: [`rocks::RocksStore`] (production) and [`mem::MemStore`] (tests and
//! simulation). Both pass the same conformance suite in [`conformance`].
//!
//! Callers: `ferry-broker`'s replication module (log + vote) and state machine (state).
//! All methods are blocking; async callers run them on a blocking thread.

use bytes::Bytes;

pub mod conformance;
mod log_rules;
pub mod mem;
pub mod rocks;
pub mod snapshot_stream;

/// A storage failure. Callers treat every one as fatal for the replica (fail-stop): an fsync or
/// write error is never retried and carried on from.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The underlying engine reported an I/O or internal error.
    #[error("storage engine error: {0}")]
    Engine(String),
    /// Data read back does not have the shape it was written with (corruption or a bug).
    #[error("corrupt data in {what}: {detail}")]
    Corrupt {
        /// Which structure was being read.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The caller asked for something the store's invariants forbid (e.g. a gap in the log).
    #[error("invalid storage operation: {0}")]
    Invalid(String),
    /// A snapshot stream could not be read or written.
    #[error("snapshot i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Result type of this crate.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Small, fixed metadata values kept beside the Raft log.
///
/// Discriminants are part of the on-disk format: explicit and append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MetaKey {
    /// The last vote this replica cast or saw (encoded by the caller).
    Vote = 0,
    /// The last committed log id this replica knows (encoded by the caller).
    Committed = 1,
    /// The id of the last purged log entry (encoded by the caller).
    LastPurged = 2,
}

/// The Raft log and its metadata.
///
/// Invariants the implementation keeps (and the conformance suite checks):
/// * indexes are contiguous from [`LogStore::first_index`] to [`LogStore::last_index`];
/// * [`LogStore::append`] is one synced write for the whole slice (group commit): when it returns
///   `Ok`, every entry in it survives a crash (kill -9 or power loss);
/// * `truncate_from`, `purge_upto` and `save_meta` are also durable when they return.
pub trait LogStore: Send + Sync + 'static {
    /// Appends `entries`, whose indexes must be contiguous and, if the log is not empty, start at
    /// `last_index() + 1` (after a truncate, appending at the truncation point is allowed).
    /// One synced write covers the whole slice.
    fn append(&self, entries: &[(u64, Bytes)]) -> Result<()>;

    /// Returns the entries with index in `start..end` (end exclusive) that exist, in index order.
    fn read_range(&self, start: u64, end: u64) -> Result<Vec<(u64, Bytes)>>;

    /// Index of the first entry kept, if any.
    fn first_index(&self) -> Result<Option<u64>>;

    /// Index of the last entry kept, if any.
    fn last_index(&self) -> Result<Option<u64>>;

    /// Deletes every entry with index `>= index` (conflicting suffix). Durable on return.
    fn truncate_from(&self, index: u64) -> Result<()>;

    /// Deletes every entry with index `<= index` (behind a snapshot). Durable on return.
    fn purge_upto(&self, index: u64) -> Result<()>;

    /// Stores a metadata value. Durable on return.
    fn save_meta(&self, key: MetaKey, value: &[u8]) -> Result<()>;

    /// Reads a metadata value.
    fn read_meta(&self, key: MetaKey) -> Result<Option<Bytes>>;
}

/// Column families of the applied state. Discriminants are on-disk: explicit, append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Cf {
    /// Messages by (partition, offset).
    Messages = 0,
    /// Transactions by id.
    Txn = 1,
    /// Timers by (due time, kind, id).
    Timers = 2,
    /// Consumer-group offsets and retry bookkeeping.
    Groups = 3,
    /// Fixed keys: last applied log id, membership, topic metadata, producer sessions.
    State = 4,
}

impl Cf {
    /// Every family, in discriminant order.
    pub const ALL: [Cf; 5] = [Cf::Messages, Cf::Txn, Cf::Timers, Cf::Groups, Cf::State];

    /// The family's name (RocksDB column family name).
    pub fn name(self) -> &'static str {
        match self {
            Cf::Messages => "messages",
            Cf::Txn => "txn",
            Cf::Timers => "timers",
            Cf::Groups => "groups",
            Cf::State => "state",
        }
    }

    /// The family with discriminant `tag`, if any.
    pub fn from_tag(tag: u8) -> Option<Cf> {
        Cf::ALL.get(usize::from(tag)).copied()
    }
}

/// One mutation inside a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Set `key` to `value`.
    Put {
        /// Family.
        cf: Cf,
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
    },
    /// Remove `key` (no error if absent).
    Delete {
        /// Family.
        cf: Cf,
        /// Key.
        key: Bytes,
    },
    /// Remove every key in `start..end` (end exclusive).
    DeleteRange {
        /// Family.
        cf: Cf,
        /// First key removed.
        start: Bytes,
        /// First key kept.
        end: Bytes,
    },
}

/// An ordered list of mutations applied atomically by [`StateStore::write`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The mutations, applied in order.
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a put.
    pub fn put(&mut self, cf: Cf, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.ops.push(WriteOp::Put { cf, key: key.into(), value: value.into() });
    }

    /// Appends a delete.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Bytes>) {
        self.ops.push(WriteOp::Delete { cf, key: key.into() });
    }

    /// Appends a range delete of `start..end`.
    pub fn delete_range(&mut self, cf: Cf, start: impl Into<Bytes>, end: impl Into<Bytes>) {
        self.ops.push(WriteOp::DeleteRange { cf, start: start.into(), end: end.into() });
    }

    /// True when the batch holds no mutation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The applied state: ordered key/value pairs in column families.
///
/// * [`StateStore::write`] is atomic across families; after a crash the store holds some prefix
///   of the batches written (never a part of one batch), not necessarily all of them.
/// * [`StateStore::flush`] makes every batch written before it durable.
/// * [`StateStore::export`] / [`StateStore::import`] stream the whole state (a snapshot).
pub trait StateStore: Send + Sync + 'static {
    /// Applies `batch` atomically. Need not be durable until [`StateStore::flush`].
    fn write(&self, batch: WriteBatch) -> Result<()>;

    /// Reads one value.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>>;

    /// Returns up to `limit` pairs with `start <= key < end`, in key order.
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<(Bytes, Bytes)>>;

    /// Returns the last pair with `start <= key < end` (the greatest key), if any.
    fn last_in_range(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Option<(Bytes, Bytes)>>;

    /// Makes every batch written so far durable.
    fn flush(&self) -> Result<()>;

    /// Writes a point-in-time copy of every family to `out`, in the format drawn below, and
    /// returns the number of bytes written. Concurrent writes are not part of the copy.
    /// Families come in [`Cf::ALL`] order and keys in ascending byte order, so equal states give
    /// byte-identical streams whichever implementation wrote them.
    ///
    /// ```text
    /// stream := magic "FRYSNAP1" | record* | end
    /// record := 0x01 | cf:u8 | key_len:u32be | key | value_len:u32be | value
    /// end    := 0x00 | record_count:u64be
    /// ```
    fn export(&self, out: &mut dyn std::io::Write) -> Result<u64>;

    /// Replaces the whole state with the stream read from `input` (written by `export`), then
    /// flushes. On error the state is unspecified and the replica must stop.
    ///
    /// A malformed stream (bad magic, unknown tag or family, truncation, wrong record count,
    /// bytes after the end marker) is [`StorageError::Corrupt`]; it never panics.
    fn import(&self, input: &mut dyn std::io::Read) -> Result<()>;
}
