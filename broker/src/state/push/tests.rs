//! Push state: records, command encoding, and apply's independence of how commands are
//! grouped into apply calls.

use bytes::BytesMut;
use ferry_storage::WriteBatch;

use super::*;
use crate::state::command::Command;
use crate::state::{Applier, Changes};

fn sample_sub() -> SubRecord {
    SubRecord {
        id: 1,
        name: "s".into(),
        topic: "t".into(),
        url: "http://x".into(),
        secret: "whsec_a".into(),
        previous_secret: "whsec_b".into(),
        previous_secret_until_ms: 100,
        schedule_ms: vec![10, 20, 30],
        max_attempts: 9,
        timeout_ms: 1,
        concurrency: 1,
        status: SubscriptionStatus::Active,
        status_reason: String::new(),
        status_ms: 0,
        created_ms: 0,
        retrying: 0,
        failed: 0,
        cursors: BTreeMap::new(),
    }
}

#[test]
fn commands_round_trip_with_the_smallest_elements() {
    let mut sub = sample_sub();
    sub.cursors.insert(3, Cursor { next: 7, settled: [9, 12].into_iter().collect() });
    sub.cursors.insert(4, Cursor::default());
    let result = |error: &str| AttemptResult {
        partition: 1,
        offset: 2,
        first: true,
        expected_due_ms: 0,
        outcome: Outcome::Retry,
        next_attempt_ms: 5,
        status: 0,
        error: error.into(),
    };
    let commands = [
        PushCommand::Create { sub: Box::new(sub), start_at_end: true },
        PushCommand::Alter {
            name: "s".into(),
            sub_id: 1,
            stamped_ms: 2,
            change: Alteration::Rotate { secret: "whsec_c".into(), until_ms: 9 },
        },
        PushCommand::Alter {
            name: "s".into(),
            sub_id: 1,
            stamped_ms: 2,
            change: Alteration::Disable { reason: "410".into() },
        },
        // Empty strings: the smallest encoding of an element must still decode.
        PushCommand::Results {
            name: "s".into(),
            sub_id: 1,
            stamped_ms: 3,
            results: vec![result(""), result("HTTP 500")],
        },
        PushCommand::Replay { name: "s".into(), sub_id: 1, stamped_ms: 4, messages: vec![(0, 1)] },
    ];
    for c in commands {
        let mut buf = BytesMut::new();
        c.encode(&mut buf);
        let mut bytes = buf.freeze();
        let tag = wire::get_u8(&mut bytes, "tag").unwrap();
        assert_eq!(PushCommand::decode(tag, &mut bytes).unwrap(), c);
        assert!(bytes.is_empty());
    }
}

/// Applies commands to a fresh in-memory state, cut into apply calls at `cuts`, and
/// returns every push key and value of both families.
fn apply_grouped(commands: &[Command], cuts: &[usize]) -> Vec<(Cf, Bytes, Bytes)> {
    use ferry_storage::mem::MemStore;
    let store = MemStore::new();
    let resolver: crate::state::BatchResolver =
        Arc::new(|pos| Err(StateError::Corrupt(format!("no batch at {pos:?}"))));
    let mut applier = Applier::open(Arc::new(store.clone()), resolver).unwrap();
    let mut index = 1;
    let mut start = 0;
    let mut bounds: Vec<usize> = cuts.to_vec();
    bounds.push(commands.len());
    for end in bounds {
        let mut wb = WriteBatch::new();
        let mut changes = Changes::default();
        for c in &commands[start..end] {
            applier.apply(index, c, &mut wb, &mut changes);
            index += 1;
        }
        store.write(wb).unwrap();
        applier.publish(&changes);
        start = end;
    }
    let mut out = Vec::new();
    for (cf, from, to) in [
        (Cf::Txn, vec![DELIVERY_PREFIX], vec![DUE_PREFIX + 1]),
        (Cf::State, vec![SUB_PREFIX], vec![SUB_PREFIX + 1]),
    ] {
        for (k, v) in store.scan(cf, &from, &to, usize::MAX).unwrap() {
            out.push((cf, k, v));
        }
    }
    out
}

/// Whatever the grouping of commands into apply calls (replicas differ in it), the push
/// state comes out the same: what one command writes, the next one in the same call reads.
#[test]
fn push_state_does_not_depend_on_how_commands_are_grouped() {
    let mut with_records = 0;
    for seed in 0..30u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut sub = sample_sub();
        sub.max_attempts = 3;
        let mut commands = vec![
            Command::CreateTopic { name: "t".into(), partitions: 2, created_ms: 1 },
            Command::Push(PushCommand::Create { sub: Box::new(sub), start_at_end: false }),
        ];
        for step in 0..60u64 {
            let p = rng.u32(0..2);
            let o = rng.u64(0..12);
            let stamped_ms = 100 + step;
            if rng.u8(0..12) == 0 {
                // The topic goes and comes back: the subscription's records are dropped with a
                // range delete, which later commands of the same call must see.
                commands.push(Command::DeleteTopic { name: "t".into() });
                commands.push(Command::CreateTopic {
                    name: "t".into(),
                    partitions: 2,
                    created_ms: stamped_ms,
                });
            }
            let command = match rng.u8(0..10) {
                0 => PushCommand::Replay {
                    name: "s".into(),
                    sub_id: 1,
                    stamped_ms,
                    messages: vec![(p, o), (rng.u32(0..2), rng.u64(0..12))],
                },
                1 => PushCommand::Alter {
                    name: "s".into(),
                    sub_id: 1,
                    stamped_ms,
                    change: if rng.bool() { Alteration::Pause } else { Alteration::Resume },
                },
                _ => {
                    let results = (0..rng.usize(1..4))
                        .map(|_| AttemptResult {
                            partition: rng.u32(0..2),
                            offset: rng.u64(0..12),
                            first: rng.bool(),
                            // Small due times, so retries sometimes match a record.
                            expected_due_ms: rng.u64(100..104),
                            outcome: match rng.u8(0..3) {
                                0 => Outcome::Delivered,
                                1 => Outcome::Retry,
                                _ => Outcome::Failed,
                            },
                            next_attempt_ms: rng.u64(100..104),
                            status: 500,
                            error: "HTTP 500".into(),
                        })
                        .collect();
                    PushCommand::Results { name: "s".into(), sub_id: 1, stamped_ms, results }
                }
            };
            commands.push(Command::Push(command));
        }
        let one_per_call: Vec<usize> = (1..commands.len()).collect();
        let want = apply_grouped(&commands, &one_per_call);
        if want.iter().any(|(cf, _, _)| *cf == Cf::Txn) {
            with_records += 1;
        }
        let mut cuts: Vec<usize> = (1..commands.len()).filter(|_| rng.u8(0..4) == 0).collect();
        cuts.dedup();
        assert_eq!(apply_grouped(&commands, &cuts), want, "seed {seed}, cuts {cuts:?}");
        assert_eq!(apply_grouped(&commands, &[]), want, "seed {seed}, one call");
    }
    // A topic deleted near the end may leave a run with no records; most must have some, or
    // the comparisons above compare nothing.
    assert!(with_records >= 20, "only {with_records} of 30 runs left delivery records");
}

#[test]
fn cursor_moves_over_settled_offsets() {
    let mut c = Cursor::default();
    c.settle(2);
    c.settle(1);
    assert_eq!(c.next, 0);
    assert!(c.is_settled(2) && !c.is_settled(0));
    c.settle(0);
    assert_eq!(c.next, 3);
    assert!(c.settled.is_empty());
    c.settle(1);
    assert_eq!(c.next, 3, "an old offset changes nothing");
}

#[test]
fn delay_follows_the_schedule_and_repeats_its_last_step() {
    let sub = sample_sub();
    assert_eq!((1..=5).map(|a| sub.delay_after(a)).collect::<Vec<_>>(), vec![10, 20, 30, 30, 30]);
    assert_eq!(sub.signing_secrets(99), vec!["whsec_a", "whsec_b"]);
    assert_eq!(sub.signing_secrets(100), vec!["whsec_a"]);
    let encoded = sub.encode();
    assert_eq!(SubRecord::decode("s".into(), encoded).unwrap(), sub);
}
