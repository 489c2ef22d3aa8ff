//! Tests of `RocksStore`: the conformance suite, reopen, and a real kill -9 of a writer process.
#![allow(clippy::unwrap_used)] // In a test a failed unwrap is a failed test, which is the point.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tempfile::TempDir;

use super::{RocksStore, Tuning};
use crate::mem::MemStore;
use crate::{conformance, Cf, LogStore, MetaKey, StateStore, WriteBatch};

fn temp_dir() -> TempDir {
    tempfile::Builder::new().prefix("ferry-storage-").tempdir().unwrap()
}

/// Opens stores in fresh temporary directories that live as long as `dirs`.
fn make_store(dirs: &mut Vec<TempDir>) -> RocksStore {
    let dir = temp_dir();
    let store = RocksStore::open(dir.path()).unwrap();
    dirs.push(dir);
    store
}

#[test]
fn passes_log_store_conformance() {
    let mut dirs = Vec::new();
    conformance::run_log_store_suite(&mut || make_store(&mut dirs));
}

#[test]
fn passes_state_store_conformance() {
    let mut dirs = Vec::new();
    conformance::run_state_store_suite(&mut || make_store(&mut dirs));
}

#[test]
fn reopen_keeps_log_meta_and_flushed_state() {
    let dir = temp_dir();
    {
        let store = RocksStore::open(dir.path()).unwrap();
        let entries: Vec<(u64, Bytes)> =
            (1..=100u64).map(|i| (i, Bytes::from(format!("entry {i}")))).collect();
        store.append(&entries).unwrap();
        // Range deletes at both ends: the span read on open must see through them.
        store.purge_upto(30).unwrap();
        store.truncate_from(91).unwrap();
        store.save_meta(MetaKey::Vote, b"vote").unwrap();
        store.save_meta(MetaKey::LastPurged, b"30").unwrap();
        let mut batch = WriteBatch::new();
        batch.put(Cf::Messages, &b"m1"[..], &b"message"[..]);
        batch.put(Cf::State, &b"last_applied"[..], &b"90"[..]);
        store.write(batch).unwrap();
        // A clone is the same store.
        let clone = store.clone();
        let mut batch = WriteBatch::new();
        batch.put(Cf::Groups, &b"g"[..], &b"offset"[..]);
        clone.write(batch).unwrap();
        clone.flush().unwrap();
    }
    let store = RocksStore::open(dir.path()).unwrap();
    assert_eq!(store.path(), dir.path());
    assert_eq!(store.first_index().unwrap(), Some(31));
    assert_eq!(store.last_index().unwrap(), Some(90));
    let entries = store.read_range(0, 1000).unwrap();
    let expected: Vec<(u64, Bytes)> =
        (31..=90u64).map(|i| (i, Bytes::from(format!("entry {i}")))).collect();
    assert_eq!(entries, expected);
    assert_eq!(store.read_meta(MetaKey::Vote).unwrap().as_deref(), Some(&b"vote"[..]));
    assert_eq!(store.read_meta(MetaKey::LastPurged).unwrap().as_deref(), Some(&b"30"[..]));
    assert_eq!(store.read_meta(MetaKey::Committed).unwrap(), None);
    assert_eq!(store.get(Cf::Messages, b"m1").unwrap().as_deref(), Some(&b"message"[..]));
    assert_eq!(store.get(Cf::State, b"last_applied").unwrap().as_deref(), Some(&b"90"[..]));
    assert_eq!(store.get(Cf::Groups, b"g").unwrap().as_deref(), Some(&b"offset"[..]));
    // The log continues where it stopped.
    store.append(&[(91, Bytes::from_static(b"next"))]).unwrap();
    assert_eq!(store.last_index().unwrap(), Some(91));
}

#[test]
fn second_open_of_the_same_directory_fails() {
    let dir = temp_dir();
    let _store = RocksStore::open(dir.path()).unwrap();
    let second = RocksStore::open(dir.path());
    assert!(matches!(second, Err(crate::StorageError::Engine(_))), "{second:?}");
}

/// XORs 64 bytes in the middle of the largest file in `dir` whose name ends with `suffix`.
fn damage_largest(dir: &std::path::Path, suffix: &str) {
    let file = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap_or_else(|| panic!("no {suffix} file in {}", dir.display()));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0xA5;
    }
    std::fs::write(&file, bytes).unwrap();
}

#[test]
fn a_damaged_wal_record_fails_the_open_and_the_vote_is_salvaged() {
    let dir = temp_dir();
    {
        let store = RocksStore::open(dir.path()).unwrap();
        let entries: Vec<(u64, Bytes)> = (1..=200u64).map(|i| (i, log_payload(i))).collect();
        store.append(&entries).unwrap();
        store.save_meta(MetaKey::Vote, b"vote-7").unwrap();
    }
    damage_largest(dir.path(), ".log");
    let opened = RocksStore::open(dir.path());
    assert!(matches!(opened, Err(crate::StorageError::Corrupt { .. })), "{opened:?}");
    let vote = RocksStore::salvage_vote(dir.path()).unwrap();
    assert_eq!(vote.as_deref(), Some(&b"vote-7"[..]));
}

#[test]
fn verify_reads_everything_and_finds_a_damaged_table_file() {
    let dir = temp_dir();
    {
        let store = RocksStore::open(dir.path()).unwrap();
        let mut batch = WriteBatch::new();
        for i in 0..2_000u32 {
            batch.put(Cf::Messages, i.to_be_bytes().to_vec(), vec![b'm'; 1000]);
        }
        store.write(batch).unwrap();
        store.flush().unwrap();
        let report = store.verify().unwrap();
        assert_eq!(report.keys, 2_000);
        assert_eq!(report.bytes, 2_000 * 1_004);
    }
    damage_largest(dir.path(), ".sst");
    let found = RocksStore::open(dir.path()).and_then(|store| store.verify().map(|_| ()));
    assert!(matches!(found, Err(crate::StorageError::Corrupt { .. })), "{found:?}");
}

#[test]
fn export_is_byte_identical_to_mem_store() {
    let dir = temp_dir();
    let rocks = RocksStore::open(dir.path()).unwrap();
    let mem = MemStore::new();
    for i in 0..500u32 {
        let mut batch = WriteBatch::new();
        let cf = Cf::ALL[i as usize % Cf::ALL.len()];
        batch.put(cf, format!("key-{}", i % 97), format!("value-{i}"));
        if i % 10 == 0 {
            batch.delete_range(cf, &b"key-1"[..], &b"key-2"[..]);
        }
        if i % 7 == 0 {
            batch.delete(cf, format!("key-{}", i % 13));
        }
        rocks.write(batch.clone()).unwrap();
        mem.write(batch).unwrap();
    }
    let mut from_rocks = Vec::new();
    let mut from_mem = Vec::new();
    rocks.export(&mut from_rocks).unwrap();
    mem.export(&mut from_mem).unwrap();
    assert!(from_rocks == from_mem, "same batches, different snapshot streams");
}

// ---------------------------------------------------------------------------------------------
// Crash test: a child process (this test binary, running `crash_writer_child`) writes until it is
// killed with SIGKILL; the parent reopens the directory and checks what survived.

/// Set in the child's environment to the store directory; its absence makes the writer a no-op.
const CRASH_DIR_ENV: &str = "FERRY_STORAGE_CRASH_WRITER_DIR";
/// Prefix of the child's "this index is acknowledged" lines (libtest writes to stdout too).
const ACK_PREFIX: &str = "FERRY_ACK ";
/// The parent kills the child after this many acknowledged entries.
const ACKS_BEFORE_KILL: u64 = 2000;
/// Entries per append call (one synced write each).
const ENTRIES_PER_APPEND: u64 = 4;
/// State batches written after each append.
const STATE_BATCHES_PER_APPEND: u64 = 8;
/// Size of each state batch's data value: with the child's 256 KiB memtables, a few hundred
/// batches fill one, so automatic (atomic) flushes happen well before the kill.
const STATE_VALUE_BYTES: usize = 1024;
/// Bound on the parent's wait for acknowledgements, and on the child's life if nobody kills it.
const CRASH_TEST_DEADLINE: Duration = Duration::from_secs(120);
const LAST_APPLIED_KEY: &[u8] = b"last_applied";

fn log_payload(index: u64) -> Bytes {
    let mut payload = format!("log entry {index}:").into_bytes();
    payload.resize(200 + (index % 64) as usize, (index % 251) as u8);
    Bytes::from(payload)
}

fn state_payload(batch: u64) -> Vec<u8> {
    let mut payload = batch.to_be_bytes().to_vec();
    payload.resize(STATE_VALUE_BYTES, (batch % 253) as u8);
    payload
}

/// The child half of the crash test. Without the environment variable (a normal test run) it
/// returns at once.
#[test]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else { return };
    let tuning = Tuning { write_buffer_bytes: 256 << 10, messages_write_buffer_bytes: 256 << 10 };
    let store = RocksStore::open_tuned(std::path::Path::new(&dir), &tuning).unwrap();
    // Written straight to fd 1 (not through print!, which libtest may capture).
    let mut stdout = std::io::stdout().lock();
    let deadline = Instant::now() + CRASH_TEST_DEADLINE;
    let mut next_index = 1u64;
    let mut batches = 0u64;
    while Instant::now() < deadline {
        let entries: Vec<(u64, Bytes)> =
            (next_index..next_index + ENTRIES_PER_APPEND).map(|i| (i, log_payload(i))).collect();
        store.append(&entries).unwrap();
        for (index, _) in &entries {
            writeln!(stdout, "{ACK_PREFIX}{index}").unwrap();
        }
        stdout.flush().unwrap();
        next_index += ENTRIES_PER_APPEND;
        for _ in 0..STATE_BATCHES_PER_APPEND {
            let mut batch = WriteBatch::new();
            batch.put(Cf::Messages, batches.to_be_bytes().to_vec(), state_payload(batches));
            batch.put(Cf::State, LAST_APPLIED_KEY, (batches + 1).to_be_bytes().to_vec());
            store.write(batch).unwrap();
            batches += 1;
        }
    }
}

/// Kills the child on every exit path of the parent, so a failed assertion leaves no writer.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already dead on the normal path; errors here only mean that.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_9_keeps_acknowledged_log_and_a_consistent_state_prefix() {
    let dir = temp_dir();
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", "rocks::tests::crash_writer_child", "--nocapture", "--test-threads=1"])
        .env(CRASH_DIR_ENV, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();

    // Lines are read on a thread so the parent can wait with a deadline.
    let (ack_tx, ack_rx) = mpsc::sync_channel::<u64>(4096);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest may print "test name ... " on the same line before the first ack.
            if let Some(pos) = line.find(ACK_PREFIX) {
                let index: u64 = line[pos + ACK_PREFIX.len()..].trim().parse().unwrap();
                if ack_tx.send(index).is_err() {
                    break;
                }
            }
        }
    });

    let deadline = Instant::now() + CRASH_TEST_DEADLINE;
    let mut acked = 0u64;
    while acked < ACKS_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match ack_rx.recv_timeout(left) {
            Ok(index) => {
                assert_eq!(index, acked + 1, "acks arrive in index order");
                acked = index;
            }
            Err(e) => panic!("child acknowledged only {acked} entries before {e:?}"),
        }
    }
    child.0.kill().unwrap(); // SIGKILL: no destructor, no flush, no clean close.
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "the child was killed, not finished: {status:?}");
    // Whatever the child printed before it died was acknowledged too; the pipe is closed now, so
    // the reader ends at once.
    while let Ok(index) = ack_rx.recv_timeout(Duration::from_secs(10)) {
        assert_eq!(index, acked + 1, "acks arrive in index order");
        acked = index;
    }
    reader.join().unwrap();

    let store = RocksStore::open(dir.path()).unwrap();

    // Log: every acknowledged entry is there and intact; anything after it was appended whole.
    assert_eq!(store.first_index().unwrap(), Some(1));
    let last = store.last_index().unwrap().unwrap();
    assert!(last >= acked, "acknowledged up to {acked}, log ends at {last}");
    let entries = store.read_range(1, last + 1).unwrap();
    assert_eq!(entries.len() as u64, last, "log is contiguous from 1 to {last}");
    for (expected_index, (index, payload)) in (1..).zip(&entries) {
        assert_eq!(*index, expected_index);
        assert_eq!(payload, &log_payload(*index), "entry {index} damaged");
    }

    // State: the data keys present are exactly those of the batches up to the stored counter.
    let applied = store
        .get(Cf::State, LAST_APPLIED_KEY)
        .unwrap()
        .map(|v| u64::from_be_bytes(v.as_ref().try_into().unwrap()))
        .unwrap_or(0);
    let messages = store.scan(Cf::Messages, &[], &[0xff; 9], usize::MAX).unwrap();
    assert_eq!(messages.len() as u64, applied, "counter {applied} disagrees with the data keys");
    for (expected_batch, (key, value)) in (0u64..).zip(&messages) {
        assert_eq!(key.as_ref(), expected_batch.to_be_bytes(), "data keys are not a prefix");
        assert_eq!(value.as_ref(), state_payload(expected_batch), "data of batch damaged");
    }
    println!("acknowledged {acked} entries, log ends at {last}, state holds {applied} batches");
    // Thousands of batches went through 256 KiB memtables: some automatic flush must have made
    // a non-empty prefix durable, or this test is not exercising atomic flush at all.
    assert!(applied > 0, "no state survived; the test did not exercise automatic flushes");

    // The reopened store carries on.
    store.append(&[(last + 1, log_payload(last + 1))]).unwrap();
    let mut batch = WriteBatch::new();
    batch.put(Cf::State, LAST_APPLIED_KEY, (applied + 1).to_be_bytes().to_vec());
    store.write(batch).unwrap();
    store.flush().unwrap();
}
