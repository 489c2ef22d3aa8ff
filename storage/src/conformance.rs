//! The conformance suite every [`LogStore`] and [`StateStore`] implementation must pass; run by
//! this crate's tests against `MemStore` and `RocksStore`, and usable by any other implementation.
//!
//! Test-support code: each check panics (through `assert!` and `expect`) on the first violation,
//! with a message naming the rule that broke. Each check gets a fresh store from `make`.

use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use crate::{Cf, LogStore, MetaKey, StateStore, StorageError, WriteBatch};

/// Runs every log check, each against a fresh store from `make`. Panics on the first violation.
pub fn run_log_store_suite<S: LogStore>(make: &mut dyn FnMut() -> S) {
    log_empty_store(&make());
    log_append_and_read(&make());
    log_accepts_any_start_when_empty(make);
    log_rejects_gaps_and_overlaps(&make());
    log_group_append(&make());
    log_truncate_then_reappend(&make());
    log_purge_moves_first_index(&make());
    log_purge_past_the_end(&make());
    log_meta(&make());
}

/// Runs every state check, each against a fresh store from `make`. Panics on the first violation.
pub fn run_state_store_suite<S: StateStore>(make: &mut dyn FnMut() -> S) {
    state_empty_store(&make());
    state_put_get_delete(&make());
    state_delete_range(&make());
    state_batch_applies_in_order(&make());
    state_scan(&make());
    state_last_in_range(&make());
    state_export_import_round_trip(make);
    state_import_rejects_bad_input(make);
    state_export_is_point_in_time(&make());
}

// ---------------------------------------------------------------------------------------------
// Log checks

fn entry(index: u64) -> (u64, Bytes) {
    (index, Bytes::from(format!("entry-{index}")))
}

fn entries(indexes: impl IntoIterator<Item = u64>) -> Vec<(u64, Bytes)> {
    indexes.into_iter().map(entry).collect()
}

fn assert_log<S: LogStore>(store: &S, expected: &[(u64, Bytes)], rule: &str) {
    let first = expected.first().map(|e| e.0);
    let last = expected.last().map(|e| e.0);
    assert_eq!(store.first_index().expect("first_index"), first, "{rule}: first_index");
    assert_eq!(store.last_index().expect("last_index"), last, "{rule}: last_index");
    let all = store.read_range(0, u64::MAX).expect("read_range");
    assert_eq!(all, expected, "{rule}: read_range over everything");
}

fn assert_invalid(result: crate::Result<()>, rule: &str) {
    match result {
        Err(StorageError::Invalid(_)) => {}
        other => panic!("{rule}: expected StorageError::Invalid, got {other:?}"),
    }
}

fn log_empty_store<S: LogStore>(store: &S) {
    assert_log(store, &[], "empty log");
    assert!(store.read_range(0, 100).expect("read_range").is_empty(), "empty log: read_range");
    for key in [MetaKey::Vote, MetaKey::Committed, MetaKey::LastPurged] {
        assert_eq!(store.read_meta(key).expect("read_meta"), None, "empty log: meta {key:?}");
    }
    store.truncate_from(0).expect("truncate_from on an empty log is a no-op");
    store.purge_upto(10).expect("purge_upto on an empty log is a no-op");
    store.append(&[]).expect("appending nothing is a no-op");
    assert_log(store, &[], "empty log after no-ops");
}

fn log_append_and_read<S: LogStore>(store: &S) {
    store.append(&entries(1..=3)).expect("append 1..=3");
    store.append(&entries([4])).expect("append 4 after 3");
    store.append(&[]).expect("appending nothing is a no-op");
    assert_log(store, &entries(1..=4), "append");
    let read = |start, end| store.read_range(start, end).expect("read_range");
    assert_eq!(read(1, 5), entries(1..=4), "read_range covering the log");
    assert_eq!(read(2, 4), entries(2..=3), "read_range end is exclusive");
    assert_eq!(read(0, 2), entries([1]), "read_range starting before the log");
    assert_eq!(read(3, 100), entries(3..=4), "read_range ending after the log");
    assert!(read(5, 10).is_empty(), "read_range after the log");
    assert!(read(3, 3).is_empty(), "read_range of an empty range");
    assert!(read(4, 2).is_empty(), "read_range of an inverted range");
}

fn log_accepts_any_start_when_empty<S: LogStore>(make: &mut dyn FnMut() -> S) {
    for start in [0, 1, 1_000_000] {
        let store = make();
        store.append(&entries(start..start + 3)).expect("an empty log accepts any start");
        assert_log(&store, &entries(start..start + 3), "append to an empty log");
    }
}

fn log_rejects_gaps_and_overlaps<S: LogStore>(store: &S) {
    assert_invalid(store.append(&entries([1, 2, 4])), "gap inside the appended slice");
    assert_invalid(store.append(&entries([2, 1])), "decreasing indexes in the slice");
    assert_invalid(store.append(&entries([1, 1])), "repeated index in the slice");
    assert_log(store, &[], "a refused append writes nothing");

    store.append(&entries(1..=3)).expect("append 1..=3");
    assert_invalid(store.append(&entries([5])), "gap after the last index");
    assert_invalid(store.append(&entries([3])), "re-append of the last index");
    assert_invalid(store.append(&entries([2, 3, 4])), "overlap with the log");
    assert_invalid(store.append(&entries([4, 6])), "gap after a valid first entry");
    assert_log(store, &entries(1..=3), "refused appends write nothing");

    let fresh_end = u64::MAX;
    store.truncate_from(0).expect("truncate everything");
    assert_invalid(store.append(&entries([fresh_end])), "index u64::MAX is reserved");
    assert_log(store, &[], "refused append of u64::MAX writes nothing");
}

fn log_group_append<S: LogStore>(store: &S) {
    // Sizes vary from empty to 4 KiB so no implementation gets away with fixed-size slots.
    let group: Vec<(u64, Bytes)> = (10..1010u64)
        .map(|i| (i, Bytes::from(vec![(i % 251) as u8; (i as usize * 37) % 4097])))
        .collect();
    store.append(&group).expect("append 1000 entries in one call");
    assert_log(store, &group, "group append");
    assert_eq!(store.read_range(500, 510).expect("read_range"), group[490..500], "read inside");
}

fn log_truncate_then_reappend<S: LogStore>(store: &S) {
    store.append(&entries(1..=10)).expect("append 1..=10");
    store.truncate_from(20).expect("truncate past the end");
    assert_log(store, &entries(1..=10), "truncate past the end is a no-op");

    store.truncate_from(6).expect("truncate_from 6");
    assert_log(store, &entries(1..=5), "truncate_from removes the index and everything after");
    assert_invalid(store.append(&entries([7])), "append past the truncation point");
    let replacement = (6, Bytes::from_static(b"replacement"));
    store.append(std::slice::from_ref(&replacement)).expect("append at the truncation point");
    let mut expected = entries(1..=5);
    expected.push(replacement);
    assert_log(store, &expected, "entry replaced after truncate");

    store.truncate_from(1).expect("truncate from the first index");
    assert_log(store, &[], "truncate from the first index empties the log");
    store.append(&entries(1..=2)).expect("append after emptying");
    store.truncate_from(0).expect("truncate from before the first index");
    assert_log(store, &[], "truncate from before the first index empties the log");
}

fn log_purge_moves_first_index<S: LogStore>(store: &S) {
    store.append(&entries(1..=10)).expect("append 1..=10");
    store.purge_upto(3).expect("purge_upto 3");
    assert_log(store, &entries(4..=10), "purge_upto removes the index and everything before");
    assert!(store.read_range(1, 4).expect("read_range").is_empty(), "purged entries are gone");
    assert_eq!(store.read_range(0, 6).expect("read_range"), entries(4..=5), "reads skip purged");

    store.purge_upto(2).expect("purge behind the first index");
    assert_log(store, &entries(4..=10), "purge behind the first index is a no-op");
    store.append(&entries([11])).expect("append continues after a purge");
    assert_log(store, &entries(4..=11), "append after purge");

    store.purge_upto(10).expect("purge all but the last");
    assert_log(store, &entries([11]), "purge all but the last");
    store.truncate_from(11).expect("truncate the last");
    assert_log(store, &[], "purge then truncate empties the log");
}

fn log_purge_past_the_end<S: LogStore>(store: &S) {
    store.append(&entries(1..=5)).expect("append 1..=5");
    store.purge_upto(5).expect("purge_upto the last index");
    assert_log(store, &[], "purge_upto the last index empties the log");
    store.append(&entries(6..=7)).expect("append continues after the purged index");
    assert_log(store, &entries(6..=7), "append after purging everything");

    // A snapshot beyond the log: purge past the end, then continue after the snapshot.
    store.purge_upto(100).expect("purge past the end");
    assert_log(store, &[], "purge past the end empties the log");
    store.append(&entries(101..=102)).expect("append after the snapshot index");
    assert_log(store, &entries(101..=102), "append after purge past the end");
    store.purge_upto(u64::MAX).expect("purge_upto u64::MAX");
    assert_log(store, &[], "purge_upto u64::MAX empties the log");
}

fn log_meta<S: LogStore>(store: &S) {
    store.save_meta(MetaKey::Vote, b"vote-1").expect("save vote");
    store.save_meta(MetaKey::Committed, b"").expect("save an empty value");
    let read = |key| store.read_meta(key).expect("read_meta");
    assert_eq!(read(MetaKey::Vote).as_deref(), Some(&b"vote-1"[..]), "meta read back");
    assert_eq!(read(MetaKey::Committed).as_deref(), Some(&b""[..]), "empty meta value is kept");
    assert_eq!(read(MetaKey::LastPurged), None, "unset meta key");

    store.save_meta(MetaKey::Vote, b"vote-2 is longer").expect("overwrite vote");
    assert_eq!(read(MetaKey::Vote).as_deref(), Some(&b"vote-2 is longer"[..]), "meta overwrite");
    assert_eq!(read(MetaKey::Committed).as_deref(), Some(&b""[..]), "meta keys are independent");

    // Log operations never touch metadata.
    store.append(&entries(1..=3)).expect("append");
    store.purge_upto(3).expect("purge");
    assert_eq!(read(MetaKey::Vote).as_deref(), Some(&b"vote-2 is longer"[..]), "meta after purge");
}

// ---------------------------------------------------------------------------------------------
// State checks

/// Key/value pairs of one family, in key order.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// An end key greater than every key the checks write (they write keys shorter than this).
const END_OF_KEYS: &[u8] = &[0xff; 32];

fn put<S: StateStore>(store: &S, cf: Cf, key: &[u8], value: &[u8]) {
    let mut batch = WriteBatch::new();
    batch.put(cf, key.to_vec(), value.to_vec());
    store.write(batch).expect("write");
}

fn get<S: StateStore>(store: &S, cf: Cf, key: &[u8]) -> Option<Vec<u8>> {
    store.get(cf, key).expect("get").map(|v| v.to_vec())
}

fn keys_of<S: StateStore>(store: &S, cf: Cf) -> Vec<Vec<u8>> {
    dump_family(store, cf).into_iter().map(|(k, _)| k).collect()
}

fn dump_family<S: StateStore>(store: &S, cf: Cf) -> Pairs {
    let pairs = store.scan(cf, &[], END_OF_KEYS, usize::MAX).expect("scan");
    pairs.into_iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
}

fn dump<S: StateStore>(store: &S) -> Vec<(Cf, Pairs)> {
    Cf::ALL.iter().map(|&cf| (cf, dump_family(store, cf))).collect()
}

fn export_bytes<S: StateStore>(store: &S) -> Vec<u8> {
    let mut out = Vec::new();
    let written = store.export(&mut out).expect("export");
    assert_eq!(written, out.len() as u64, "export returns the number of bytes it wrote");
    out
}

/// Parses an export independently of the implementations' codec, checking the documented
/// format: magic, records, end marker with the record count, nothing after.
fn parse_export(stream: &[u8]) -> Vec<(u8, Vec<u8>, Vec<u8>)> {
    fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
        assert!(rest.len() >= n, "export format: stream ends early");
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        head
    }
    fn take_len(rest: &mut &[u8]) -> usize {
        let bytes: [u8; 4] = take(rest, 4).try_into().expect("4 bytes");
        u32::from_be_bytes(bytes) as usize
    }
    let mut rest = stream;
    assert_eq!(take(&mut rest, 8), b"FRYSNAP1", "export format: magic");
    let mut records = Vec::new();
    loop {
        match take(&mut rest, 1)[0] {
            0x01 => {
                let cf = take(&mut rest, 1)[0];
                let key_len = take_len(&mut rest);
                let key = take(&mut rest, key_len).to_vec();
                let value_len = take_len(&mut rest);
                let value = take(&mut rest, value_len).to_vec();
                records.push((cf, key, value));
            }
            0x00 => {
                let count: [u8; 8] = take(&mut rest, 8).try_into().expect("8 bytes");
                assert_eq!(u64::from_be_bytes(count), records.len() as u64, "export format: count");
                assert!(rest.is_empty(), "export format: bytes after the end marker");
                return records;
            }
            tag => panic!("export format: unknown record tag {tag:#04x}"),
        }
    }
}

fn state_empty_store<S: StateStore>(store: &S) {
    for cf in Cf::ALL {
        assert_eq!(get(store, cf, b"k"), None, "empty store: get in {cf:?}");
        assert!(keys_of(store, cf).is_empty(), "empty store: scan of {cf:?}");
        let last = store.last_in_range(cf, &[], END_OF_KEYS).expect("last_in_range");
        assert_eq!(last, None, "empty store: last_in_range in {cf:?}");
    }
    store.write(WriteBatch::new()).expect("an empty batch is a no-op");
    store.flush().expect("flush of an empty store");
    let mut expected = b"FRYSNAP1".to_vec();
    expected.push(0x00);
    expected.extend_from_slice(&0u64.to_be_bytes());
    assert_eq!(export_bytes(store), expected, "export of an empty store");
}

fn state_put_get_delete<S: StateStore>(store: &S) {
    for cf in Cf::ALL {
        put(store, cf, b"key", cf.name().as_bytes());
    }
    for cf in Cf::ALL {
        let value = get(store, cf, b"key");
        assert_eq!(value.as_deref(), Some(cf.name().as_bytes()), "families are independent");
    }
    put(store, Cf::Txn, b"key", b"overwritten");
    assert_eq!(get(store, Cf::Txn, b"key").as_deref(), Some(&b"overwritten"[..]), "overwrite");
    put(store, Cf::Txn, b"", b"");
    assert_eq!(get(store, Cf::Txn, b"").as_deref(), Some(&b""[..]), "empty key and value");

    let mut batch = WriteBatch::new();
    batch.delete(Cf::Txn, &b"key"[..]);
    batch.delete(Cf::Txn, &b"absent"[..]);
    store.write(batch).expect("delete");
    assert_eq!(get(store, Cf::Txn, b"key"), None, "deleted key is gone");
    assert_eq!(get(store, Cf::Txn, b"").as_deref(), Some(&b""[..]), "delete touches one key");
    assert_eq!(get(store, Cf::Timers, b"key").as_deref(), Some(&b"timers"[..]), "one family");
}

fn state_delete_range<S: StateStore>(store: &S) {
    for key in [&b"a"[..], b"b", b"ba", b"c", b"d", b"e"] {
        put(store, Cf::Groups, key, b"v");
        put(store, Cf::Timers, key, b"v");
    }
    let mut batch = WriteBatch::new();
    batch.delete_range(Cf::Groups, &b"b"[..], &b"d"[..]);
    store.write(batch).expect("delete_range");
    let expected: Vec<Vec<u8>> = vec![b"a".to_vec(), b"d".to_vec(), b"e".to_vec()];
    assert_eq!(keys_of(store, Cf::Groups), expected, "delete_range removes start..end");
    assert_eq!(keys_of(store, Cf::Timers).len(), 6, "delete_range touches one family");

    let mut batch = WriteBatch::new();
    batch.delete_range(Cf::Groups, &b"e"[..], &b"a"[..]);
    batch.delete_range(Cf::Groups, &b"d"[..], &b"d"[..]);
    store.write(batch).expect("empty and inverted delete_range");
    assert_eq!(keys_of(store, Cf::Groups), expected, "empty or inverted delete_range: no-op");
}

fn state_batch_applies_in_order<S: StateStore>(store: &S) {
    put(store, Cf::Messages, b"m3", b"old");
    let mut batch = WriteBatch::new();
    batch.put(Cf::Messages, &b"m1"[..], &b"first"[..]);
    batch.put(Cf::Messages, &b"m1"[..], &b"second"[..]);
    batch.put(Cf::Messages, &b"m2"[..], &b"gone"[..]);
    batch.delete(Cf::Messages, &b"m2"[..]);
    batch.delete_range(Cf::Messages, &b"m3"[..], &b"m4"[..]);
    batch.put(Cf::Messages, &b"m3"[..], &b"new"[..]);
    batch.put(Cf::State, &b"last_applied"[..], &b"7"[..]);
    store.write(batch).expect("mixed batch");
    assert_eq!(get(store, Cf::Messages, b"m1").as_deref(), Some(&b"second"[..]), "later put wins");
    assert_eq!(get(store, Cf::Messages, b"m2"), None, "delete after put in one batch");
    assert_eq!(get(store, Cf::Messages, b"m3").as_deref(), Some(&b"new"[..]), "put after range");
    assert_eq!(get(store, Cf::State, b"last_applied").as_deref(), Some(&b"7"[..]), "across cfs");
}

fn state_scan<S: StateStore>(store: &S) {
    // Byte order, not string or length order: prefixes sort first, 0x00 and 0xff are plain bytes.
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x00],
        b"a".to_vec(),
        b"a\x00".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        vec![0xff],
    ];
    for key in keys.iter().rev() {
        put(store, Cf::Timers, key, key);
    }
    put(store, Cf::Groups, b"aa", b"other family");
    let scan = |start: &[u8], end: &[u8], limit| -> Vec<Vec<u8>> {
        let pairs = store.scan(Cf::Timers, start, end, limit).expect("scan");
        for (k, v) in &pairs {
            assert_eq!(k, v, "scan pairs each key with its own value");
        }
        pairs.into_iter().map(|(k, _)| k.to_vec()).collect()
    };
    assert_eq!(scan(&[], END_OF_KEYS, usize::MAX), keys, "scan returns keys in byte order");
    assert_eq!(scan(b"a", b"b", usize::MAX), keys[2..5], "start inclusive, end exclusive");
    assert_eq!(scan(b"a\x00", b"ab\x00", usize::MAX), keys[3..5], "bounds between keys");
    assert_eq!(scan(&[], END_OF_KEYS, 3), keys[..3], "limit keeps the first keys");
    assert_eq!(scan(b"a", b"b", 1), keys[2..3], "limit with bounds");
    assert!(scan(&[], END_OF_KEYS, 0).is_empty(), "limit 0");
    assert!(scan(b"b", b"b", usize::MAX).is_empty(), "empty range");
    assert!(scan(b"b", b"a", usize::MAX).is_empty(), "inverted range");
    assert!(scan(b"c", b"d", usize::MAX).is_empty(), "range with no keys");
}

fn state_last_in_range<S: StateStore>(store: &S) {
    for key in [&b"k1"[..], b"k2", b"k3", b"k30", b"k4"] {
        put(store, Cf::Txn, key, key);
    }
    put(store, Cf::Timers, b"k35", b"other family");
    let last = |start: &[u8], end: &[u8]| -> Option<Vec<u8>> {
        let found = store.last_in_range(Cf::Txn, start, end).expect("last_in_range");
        found.map(|(k, v)| {
            assert_eq!(k, v, "last_in_range pairs the key with its own value");
            k.to_vec()
        })
    };
    assert_eq!(last(b"k", b"k5").as_deref(), Some(&b"k4"[..]), "greatest key");
    assert_eq!(last(b"k", b"k4").as_deref(), Some(&b"k30"[..]), "end is exclusive");
    assert_eq!(last(b"k", b"k35").as_deref(), Some(&b"k30"[..]), "end between keys");
    assert_eq!(last(b"k3", b"k30").as_deref(), Some(&b"k3"[..]), "start is inclusive");
    assert_eq!(last(b"k31", b"k4"), None, "range with no keys");
    assert_eq!(last(b"k4", b"k4"), None, "empty range");
    assert_eq!(last(b"k4", b"k1"), None, "inverted range");
    assert_eq!(last(&[], END_OF_KEYS).as_deref(), Some(&b"k4"[..]), "whole family");
}

/// Enough state to cross the 4 MiB import batch of `RocksStore` more than once.
fn fill_for_export<S: StateStore>(store: &S) {
    for chunk in 0..16u32 {
        let mut batch = WriteBatch::new();
        for i in chunk * 100..(chunk + 1) * 100 {
            let cf = Cf::ALL[i as usize % Cf::ALL.len()];
            let value = vec![(i % 253) as u8; 4096 + (i as usize % 7)];
            batch.put(cf, i.to_be_bytes().to_vec(), value);
        }
        store.write(batch).expect("write");
    }
    put(store, Cf::State, b"", b"empty key");
    put(store, Cf::Groups, b"empty value", b"");
}

fn state_export_import_round_trip<S: StateStore>(make: &mut dyn FnMut() -> S) {
    let source = make();
    fill_for_export(&source);
    let expected = dump(&source);
    let stream = export_bytes(&source);
    assert!(stream.len() > 6 << 20, "round trip needs more than 6 MiB, has {}", stream.len());

    // The documented format, with families in Cf::ALL order and keys ascending within each.
    let records = parse_export(&stream);
    let from_dump: Vec<(u8, Vec<u8>, Vec<u8>)> = expected
        .iter()
        .flat_map(|(cf, pairs)| pairs.iter().map(move |(k, v)| (*cf as u8, k.clone(), v.clone())))
        .collect();
    assert!(records == from_dump, "export holds exactly the state, families in order, keys sorted");

    let target = make();
    for cf in Cf::ALL {
        put(&target, cf, b"stale", b"must be gone after import");
        put(&target, cf, &[0xff; 8], b"must be gone after import");
    }
    target.import(&mut stream.as_slice()).expect("import");
    assert!(dump(&target) == expected, "import reproduces the exported state exactly");
    assert!(export_bytes(&target) == stream, "re-export of the import is byte-identical");

    // The imported store is an ordinary store afterwards.
    put(&target, Cf::Messages, b"after", b"import");
    assert_eq!(get(&target, Cf::Messages, b"after").as_deref(), Some(&b"import"[..]), "write");

    // Importing an empty snapshot empties the store.
    let empty = export_bytes(&make());
    target.import(&mut empty.as_slice()).expect("import of an empty snapshot");
    for cf in Cf::ALL {
        assert!(keys_of(&target, cf).is_empty(), "empty import leaves {cf:?} empty");
    }
}

fn state_import_rejects_bad_input<S: StateStore>(make: &mut dyn FnMut() -> S) {
    let source = make();
    put(&source, Cf::Messages, b"m", b"message");
    put(&source, Cf::State, b"last_applied", b"42");
    put(&source, Cf::Txn, b"", b"");
    let valid = export_bytes(&source);

    let store = make();
    let expect_corrupt = |input: &[u8], what: &str| match store.import(&mut &input[..]) {
        Err(StorageError::Corrupt { .. }) => {}
        other => panic!("import of {what}: expected StorageError::Corrupt, got {other:?}"),
    };
    expect_corrupt(b"", "an empty stream");
    expect_corrupt(b"not a snapshot at all", "garbage");
    expect_corrupt(b"FRYSNAP2\x00\x00\x00\x00\x00\x00\x00\x00\x00", "another format version");
    for len in 0..valid.len() {
        expect_corrupt(&valid[..len], &format!("the first {len} of {} bytes", valid.len()));
    }
    let end_marker = valid.len() - 9;
    let mut bad_tag = valid.clone();
    bad_tag[8] = 0x02;
    expect_corrupt(&bad_tag, "an unknown record tag");
    let mut bad_family = valid.clone();
    bad_family[9] = 0x09;
    expect_corrupt(&bad_family, "an unknown family");
    let mut bad_count = valid.clone();
    bad_count[valid.len() - 1] += 1;
    expect_corrupt(&bad_count, "a wrong record count");
    let mut early_end = valid[..8].to_vec();
    early_end.extend_from_slice(&valid[end_marker..]);
    expect_corrupt(&early_end, "an end marker counting records that are missing");
    let mut trailing = valid.clone();
    trailing.push(0);
    expect_corrupt(&trailing, "bytes after the end marker");
    let mut huge_key = valid[..10].to_vec();
    huge_key.extend_from_slice(&u32::MAX.to_be_bytes());
    huge_key.extend_from_slice(b"short");
    expect_corrupt(&huge_key, "a key length far beyond the stream");

    // After all that, a good stream still imports.
    store.import(&mut valid.as_slice()).expect("valid import after rejected ones");
    assert!(dump(&store) == dump(&source), "valid import after rejected ones");
}

fn state_export_is_point_in_time<S: StateStore>(store: &S) {
    // Each batch adds one message and sets the counter to the number of messages, in two
    // families. Every export must see a state where the two agree: batches are atomic and the
    // export is one point in time.
    const BATCHES: u64 = 300;
    const EXPORTS_MAX: usize = 200;
    let writer_done = AtomicBool::new(false);
    let check = |stream: &[u8]| -> u64 {
        let records = parse_export(stream);
        let messages: Vec<&Vec<u8>> =
            records.iter().filter(|r| r.0 == Cf::Messages as u8).map(|r| &r.1).collect();
        let counter = records
            .iter()
            .find(|r| r.0 == Cf::State as u8 && r.1 == b"counter")
            .map(|r| u64::from_be_bytes(r.2.as_slice().try_into().expect("8-byte counter")))
            .unwrap_or(0);
        let expected: Vec<Vec<u8>> = (0..counter).map(|i| i.to_be_bytes().to_vec()).collect();
        assert!(
            messages.iter().copied().eq(expected.iter()),
            "export mixes batches: counter {counter} but {} messages",
            messages.len()
        );
        counter
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for i in 0..BATCHES {
                let mut batch = WriteBatch::new();
                batch.put(Cf::Messages, i.to_be_bytes().to_vec(), vec![7u8; 512]);
                batch.put(Cf::State, &b"counter"[..], (i + 1).to_be_bytes().to_vec());
                store.write(batch).expect("write");
            }
            writer_done.store(true, Ordering::Release);
        });
        let mut previous = 0;
        for _ in 0..EXPORTS_MAX {
            let counter = check(&export_bytes(store));
            assert!(counter >= previous, "exports go back in time: {counter} after {previous}");
            previous = counter;
            if writer_done.load(Ordering::Acquire) {
                break;
            }
        }
    });
    assert_eq!(check(&export_bytes(store)), BATCHES, "final export holds every batch");
}
