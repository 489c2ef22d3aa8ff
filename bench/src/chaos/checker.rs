//! The history checker of `ferry-bench chaos`: reads the recorded [`Event`]s (client operations,
//! consumer receipts, and the final per-node reads after healing) and decides whether the broker
//! lost, invented, reordered, duplicated or contradicted anything. Called by the chaos runner
//! once the run has healed, drained and read every node; free of I/O so it can be tested on
//! hand-made histories.
//!
//! The checker is deliberately strict: when it cannot interpret an event it counts it as
//! `malformed` (a violation) instead of skipping it, because a skipped event can hide a loss.
//! What a history may legitimately leave open is respected: a `Send` or `SendHalf` whose
//! outcome is `info` may or may not be stored, and a `CheckBack` answer is only what a producer
//! said, never an acknowledged decision.
//!
//! Sound only if the runner guarantees:
//! * msg ids are unique per run; plain ones are `"<client>-<seq>"` with seq counting up per
//!   client in send order, and each (client, partition) has at most one produce batch in
//!   flight, so an acknowledged msg was stored before any later one of its partition was sent;
//! * `fail` is written only when nothing can have been stored (after the client library's own
//!   retries; anything else is `info`), `ok` only for an acknowledgement, and a `Send` ok's
//!   `offset` is the msg's own append offset (omitted for delayed messages);
//! * at most one decided (committed or rolled back) transaction per msg;
//! * the final reads cover every partition of the topic from its first offset to its end, on
//!   every node of `CheckInput::nodes`, after all nodes caught up, with no retention trimming,
//!   and a node that cannot be read makes the run fail instead of being left out;
//! * with `consumers_ran`, the group consumed from the earliest offset and drained everything.
//!
//! ```text
//! events ─▶ Index   per msg: send/half attempts, commit/rollback ok (direct or via txn id),
//!                   receives, and per node the (partition, offset) positions read;
//!                   per txn id: msgs, decisions; per position: msgs, nodes
//!        ─▶ check_messages   lost, divergent, misplaced, ack offsets, unexpected, aborted,
//!                            duplicates, undelivered, receive duplicates
//!        ─▶ check_positions  offset_conflicts
//!        ─▶ check_flips      flipped
//!        ─▶ check_order      order_violations
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::history::{Event, Func, Op};

/// Examples kept per category; counts are always exact.
pub const EXAMPLES_MAX: usize = 10;

/// What the runner knows beyond the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInput {
    /// Every node of the cluster; each must have been read in full after healing.
    pub nodes: Vec<u64>,
    /// Half messages still open (neither committed nor rolled back) when the run ended.
    pub unresolved_at_end: u64,
    /// Whether group consumers ran (and drained); only then is `undelivered` checked.
    pub consumers_ran: bool,
}

/// A count with up to [`EXAMPLES_MAX`] examples (message ids, or a short description of the
/// position or pair concerned), in a deterministic order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Category {
    /// How many (see the field of [`Report`] for what is counted).
    pub count: u64,
    /// Up to [`EXAMPLES_MAX`] examples.
    pub examples: Vec<String>,
}

impl Category {
    /// Counts `by` more and keeps `example` if there is room.
    fn add_n(&mut self, by: u64, example: impl FnOnce() -> String) {
        self.count += by;
        if self.examples.len() < EXAMPLES_MAX {
            self.examples.push(example());
        }
    }

    fn add(&mut self, example: impl FnOnce() -> String) {
        self.add_n(1, example);
    }

    /// One sentence when non-empty: "`name`: `count` `what` (e.g. a; b)".
    fn sentence(&self, name: &str, what: &str) -> Option<String> {
        if self.count == 0 {
            return None;
        }
        let mut s = format!("{name}: {} {what}", self.count);
        if !self.examples.is_empty() {
            s.push_str(&format!(" (e.g. {})", self.examples.join("; ")));
        }
        Some(s)
    }
}

/// The checker's verdict. Violations are listed by [`Report::violations`]; `acknowledged`,
/// `invoked`, `reads`, `duplicates`, `receive_duplicates` and `check_back_rollback_visible`
/// are information only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The nodes whose final reads were checked (sorted, deduplicated `CheckInput::nodes`).
    pub nodes: Vec<u64>,
    /// Distinct msgs with a `Send` or `SendHalf` invoke.
    pub invoked: u64,
    /// Distinct msgs acknowledged: a `Send` ok, or a `Commit` ok naming the msg or its txn.
    pub acknowledged: u64,
    /// Distinct msgs stored on at least one node in the final reads.
    pub reads: u64,
    /// Events the checker could not use (a `Read` without node, partition or offset, or from
    /// a node not in `CheckInput::nodes`; a `Read`/`Receive`/`CheckBack` line that is not ok;
    /// an event without msg id (or, for commit/rollback/check-back, without msg and txn); an
    /// acknowledged plain send without partition or numeric seq; an empty node list).
    pub malformed: Category,
    /// Acknowledged msgs stored on no node.
    pub lost: Category,
    /// Msgs stored on some node whose set of (partition, offset) positions is not the same on
    /// every node (missing on a node, or an extra or different copy).
    pub divergent: Category,
    /// Positions (partition, offset) holding two or more different msgs, across nodes or on
    /// one node.
    pub offset_conflicts: Category,
    /// Msgs whose `Send` ok named a (partition, offset) that does not hold the msg on a node
    /// that stores it.
    pub ack_offset_mismatch: Category,
    /// Msgs stored in a partition none of their send/commit events named.
    pub misplaced: Category,
    /// Msgs read or received that no `Send`/`SendHalf` invoke names.
    pub unexpected: Category,
    /// Msgs read or received whose every send attempt failed, or whose transaction was rolled
    /// back by an acknowledged `Rollback` ok.
    pub aborted_reads: Category,
    /// Transactions (labelled by smallest txn id, else by msg) with both an acknowledged
    /// `Commit` ok and an acknowledged `Rollback` ok.
    pub flipped: Category,
    /// Transactional msgs stored at more than one position on some node (count: msgs).
    pub txn_duplicates: Category,
    /// Allowed: extra copies of plain msgs (per msg, copies beyond the first on the node with
    /// the most copies; count: extra copies).
    pub duplicates: Category,
    /// Pairs of acknowledged plain msgs of one (client, partition), adjacent in seq order,
    /// whose first offsets on some node do not strictly increase (count: distinct pairs).
    pub order_violations: Category,
    /// Msgs a consumer received that are stored on no node (the broker exposed a message that
    /// did not survive).
    pub received_not_stored: Category,
    /// Half messages still unresolved at the end (`CheckInput::unresolved_at_end`).
    pub unresolved: u64,
    /// Whether consumers ran; `undelivered` is only checked then.
    pub consumers_ran: bool,
    /// Acknowledged, stored msgs no consumer received (only when consumers ran).
    pub undelivered: Category,
    /// Allowed: `Receive` events beyond the first per msg (count: events).
    pub receive_duplicates: Category,
    /// Information: visible msgs whose producer answered a check-back with `rollback`, without
    /// an acknowledged commit. Not a violation: the broker may have taken an earlier commit;
    /// with an acknowledged rollback the msg is counted in `aborted_reads`.
    pub check_back_rollback_visible: Category,
}

impl Report {
    /// One human sentence per violated category, with its count and examples; empty when the
    /// history is clean.
    pub fn violations(&self) -> Vec<String> {
        let mut out: Vec<String> = [
            self.malformed.sentence("malformed", "history events or inputs the checker cannot use"),
            self.lost.sentence("lost", "acknowledged messages are stored on no node"),
            self.divergent.sentence(
                "divergent",
                "messages are not stored at the same positions on every node",
            ),
            self.offset_conflicts.sentence("offset_conflicts", "positions hold different messages"),
            self.ack_offset_mismatch.sentence(
                "ack_offset_mismatch",
                "acknowledged sends are not stored at the offset their ack named",
            ),
            self.misplaced
                .sentence("misplaced", "messages are stored in a partition they were not sent to"),
            self.unexpected.sentence("unexpected", "messages were read or received but never sent"),
            self.aborted_reads.sentence(
                "aborted_reads",
                "messages are visible although their send failed or their transaction was \
                 rolled back",
            ),
            self.flipped.sentence(
                "flipped",
                "transactions were acknowledged as both committed and rolled back",
            ),
            self.txn_duplicates.sentence(
                "txn_duplicates",
                "transactional messages are stored more than once on a node",
            ),
            self.order_violations.sentence(
                "order_violations",
                "pairs of acknowledged messages of one client and partition are out of order",
            ),
            self.received_not_stored.sentence(
                "received_not_stored",
                "messages were received by a consumer but are stored on no node",
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        if self.unresolved > 0 {
            out.push(format!(
                "unresolved: {} half messages were still unresolved at the end",
                self.unresolved
            ));
        }
        if self.consumers_ran {
            out.extend(self.undelivered.sentence(
                "undelivered",
                "acknowledged, stored messages were never received by a consumer",
            ));
        }
        out
    }

    /// No violation (allowed duplicates and information counts do not matter).
    pub fn is_clean(&self) -> bool {
        self.violations().is_empty()
    }
}

/// Invokes and outcomes of one kind of send (`Send` or `SendHalf`) of one msg.
#[derive(Debug, Default, Clone, Copy)]
struct Attempts {
    invokes: u64,
    oks: u64,
    fails: u64,
    infos: u64,
}

impl Attempts {
    fn record(&mut self, op: Op) {
        match op {
            Op::Invoke => self.invokes += 1,
            Op::Ok => self.oks += 1,
            Op::Fail => self.fails += 1,
            Op::Info => self.infos += 1,
        }
    }

    fn is_empty(&self) -> bool {
        self.invokes == 0 && self.oks == 0 && self.fails == 0 && self.infos == 0
    }

    /// Every attempt was refused: at least one `fail`, no `ok` or `info`, and no invoke left
    /// without an outcome (such an invoke may have been stored).
    fn all_failed(&self) -> bool {
        self.fails > 0 && self.oks == 0 && self.infos == 0 && self.fails >= self.invokes
    }
}

/// Positions (partition, offset) in the topic.
type Positions = BTreeSet<(u32, u64)>;

/// What the history says about one msg.
#[derive(Debug, Default)]
struct MsgFacts<'a> {
    send: Attempts,
    half: Attempts,
    /// Named by a `SendHalf`, `Commit`, `Rollback` or `CheckBack` event.
    transactional: bool,
    /// The client of the first `Send` invoke (else of the first `Send` event).
    client: Option<&'a str>,
    client_from_invoke: bool,
    /// Partition of the first `Send` ok naming one, else of the first `Send` invoke.
    send_ok_partition: Option<u32>,
    send_invoke_partition: Option<u32>,
    /// Partitions named by any `Send`, `SendHalf` or `Commit` event.
    partitions: BTreeSet<u32>,
    /// (partition if named, offset) of each `Send` ok carrying an offset.
    acked_offsets: Vec<(Option<u32>, u64)>,
    commit_ok: bool,
    rollback_ok: bool,
    check_back_rollback: bool,
    txns: BTreeSet<u64>,
    receives: u64,
    /// node -> positions (partition, offset) where the final read found the msg.
    stored: BTreeMap<u64, Positions>,
}

impl MsgFacts<'_> {
    fn invoked(&self) -> bool {
        self.send.invokes > 0 || self.half.invokes > 0
    }

    /// Every attempt of every kind of send that was made was refused.
    fn send_definitely_failed(&self) -> bool {
        let kinds = [self.send, self.half];
        kinds.iter().any(|a| !a.is_empty()) && kinds.iter().all(|a| a.is_empty() || a.all_failed())
    }

    fn is_stored(&self) -> bool {
        !self.stored.is_empty()
    }

    fn order_partition(&self) -> Option<u32> {
        self.send_ok_partition.or(self.send_invoke_partition)
    }
}

/// What the history says about one transaction id.
#[derive(Debug, Default)]
struct TxnFacts<'a> {
    msgs: BTreeSet<&'a str>,
    commit_ok: bool,
    rollback_ok: bool,
    check_back_rollback: bool,
    /// Indexes of `Commit`/`Rollback` ok events naming this txn but no msg.
    decided_without_msg: Vec<usize>,
}

/// The history indexed by msg, txn id and position.
#[derive(Debug, Default)]
struct Index<'a> {
    msgs: BTreeMap<&'a str, MsgFacts<'a>>,
    txns: BTreeMap<u64, TxnFacts<'a>>,
    /// (partition, offset) -> msg -> nodes that hold it there.
    positions: BTreeMap<(u32, u64), BTreeMap<&'a str, BTreeSet<u64>>>,
}

fn describe(i: usize, ev: &Event, why: &str) -> String {
    format!("event #{i} ({:?} {:?} msg {:?}): {why}", ev.f, ev.op, ev.msg)
}

impl<'a> Index<'a> {
    fn build(events: &'a [Event], nodes: &BTreeSet<u64>, malformed: &mut Category) -> Index<'a> {
        let mut index = Index::default();
        for (i, ev) in events.iter().enumerate() {
            index.add(i, ev, nodes, malformed);
        }
        for (txn, facts) in &index.txns {
            if facts.msgs.is_empty() {
                for i in &facts.decided_without_msg {
                    malformed.add(|| {
                        format!("event #{i}: decision on txn {txn}, which names no message")
                    });
                }
            }
        }
        index
    }

    fn add(&mut self, i: usize, ev: &'a Event, nodes: &BTreeSet<u64>, malformed: &mut Category) {
        let msg = (!ev.msg.is_empty()).then_some(ev.msg.as_str());
        match ev.f {
            Func::Send | Func::SendHalf => {
                let Some(msg) = msg else {
                    malformed.add(|| describe(i, ev, "no msg id"));
                    return;
                };
                let facts = self.msgs.entry(msg).or_default();
                facts.partitions.extend(ev.partition);
                if ev.f == Func::Send {
                    facts.send.record(ev.op);
                    let from_invoke = ev.op == Op::Invoke;
                    if facts.client.is_none() || (from_invoke && !facts.client_from_invoke) {
                        facts.client = Some(ev.client.as_str());
                        facts.client_from_invoke = from_invoke;
                    }
                    match ev.op {
                        Op::Invoke => {
                            facts.send_invoke_partition =
                                facts.send_invoke_partition.or(ev.partition)
                        }
                        Op::Ok => {
                            facts.send_ok_partition = facts.send_ok_partition.or(ev.partition);
                            if let Some(offset) = ev.offset {
                                facts.acked_offsets.push((ev.partition, offset));
                            }
                        }
                        Op::Fail | Op::Info => {}
                    }
                } else {
                    facts.half.record(ev.op);
                    facts.transactional = true;
                    if let Some(txn) = ev.txn {
                        facts.txns.insert(txn);
                        self.txns.entry(txn).or_default().msgs.insert(msg);
                    }
                }
            }
            Func::Commit | Func::Rollback | Func::CheckBack => {
                if ev.f == Func::CheckBack && ev.op != Op::Ok {
                    malformed.add(|| describe(i, ev, "check-back lines must be ok"));
                    return;
                }
                if msg.is_none() && ev.txn.is_none() {
                    malformed.add(|| describe(i, ev, "neither msg id nor txn id"));
                    return;
                }
                let decided_ok = ev.op == Op::Ok && ev.f != Func::CheckBack;
                let check_back_rollback =
                    ev.f == Func::CheckBack && ev.decision.as_deref() == Some("rollback");
                if let Some(msg) = msg {
                    let facts = self.msgs.entry(msg).or_default();
                    facts.transactional = true;
                    if ev.f == Func::Commit {
                        facts.partitions.extend(ev.partition);
                    }
                    facts.commit_ok |= decided_ok && ev.f == Func::Commit;
                    facts.rollback_ok |= decided_ok && ev.f == Func::Rollback;
                    facts.check_back_rollback |= check_back_rollback;
                    facts.txns.extend(ev.txn);
                }
                if let Some(txn) = ev.txn {
                    let facts = self.txns.entry(txn).or_default();
                    facts.msgs.extend(msg);
                    facts.commit_ok |= decided_ok && ev.f == Func::Commit;
                    facts.rollback_ok |= decided_ok && ev.f == Func::Rollback;
                    facts.check_back_rollback |= check_back_rollback;
                    if decided_ok && msg.is_none() {
                        facts.decided_without_msg.push(i);
                    }
                }
            }
            Func::Receive => {
                if ev.op != Op::Ok {
                    malformed.add(|| describe(i, ev, "receive lines must be ok"));
                    return;
                }
                let Some(msg) = msg else {
                    malformed.add(|| describe(i, ev, "no msg id"));
                    return;
                };
                self.msgs.entry(msg).or_default().receives += 1;
            }
            Func::Read => {
                if ev.op != Op::Ok {
                    malformed.add(|| describe(i, ev, "read lines must be ok"));
                    return;
                }
                let (Some(msg), Some(node), Some(partition), Some(offset)) =
                    (msg, ev.node, ev.partition, ev.offset)
                else {
                    malformed
                        .add(|| describe(i, ev, "read without msg, node, partition or offset"));
                    return;
                };
                if !nodes.contains(&node) {
                    malformed
                        .add(|| describe(i, ev, &format!("node {node} is not a cluster node")));
                    return;
                }
                let facts = self.msgs.entry(msg).or_default();
                facts.stored.entry(node).or_default().insert((partition, offset));
                self.positions
                    .entry((partition, offset))
                    .or_default()
                    .entry(msg)
                    .or_default()
                    .insert(node);
            }
        }
    }

    fn committed(&self, facts: &MsgFacts<'_>) -> bool {
        facts.commit_ok || facts.txns.iter().any(|t| self.txns.get(t).is_some_and(|x| x.commit_ok))
    }

    fn rolled_back(&self, facts: &MsgFacts<'_>) -> bool {
        facts.rollback_ok
            || facts.txns.iter().any(|t| self.txns.get(t).is_some_and(|x| x.rollback_ok))
    }

    fn check_back_rollback(&self, facts: &MsgFacts<'_>) -> bool {
        facts.check_back_rollback
            || facts.txns.iter().any(|t| self.txns.get(t).is_some_and(|x| x.check_back_rollback))
    }

    fn acknowledged(&self, facts: &MsgFacts<'_>) -> bool {
        facts.send.oks > 0 || self.committed(facts)
    }
}

fn positions_text(positions: Option<&Positions>) -> String {
    let list: Vec<String> =
        positions.into_iter().flatten().map(|(p, o)| format!("{p}@{o}")).collect();
    format!("[{}]", list.join(" "))
}

/// The number after the last '-' of a plain msg id (`"<client>-<seq>"`).
fn seq_of(msg: &str) -> Option<u64> {
    msg.rsplit_once('-').and_then(|(_, seq)| seq.parse().ok())
}

/// Checks a chaos history. Never panics on any input; whatever it cannot interpret is
/// reported as `malformed`. Sound only under the runner guarantees listed in the module
/// documentation.
pub fn check(events: &[Event], input: &CheckInput) -> Report {
    let nodes: BTreeSet<u64> = input.nodes.iter().copied().collect();
    let mut report = Report {
        nodes: nodes.iter().copied().collect(),
        unresolved: input.unresolved_at_end,
        consumers_ran: input.consumers_ran,
        ..Report::default()
    };
    if nodes.is_empty() {
        report.malformed.add(|| "no cluster nodes given".to_string());
    }
    let index = Index::build(events, &nodes, &mut report.malformed);

    check_messages(&index, &nodes, &mut report);
    check_positions(&index, &mut report);
    check_flips(&index, &mut report);
    check_order(&index, &nodes, &mut report);
    report
}

/// The per-msg categories.
fn check_messages(index: &Index<'_>, nodes: &BTreeSet<u64>, report: &mut Report) {
    for (&msg, facts) in &index.msgs {
        let acknowledged = index.acknowledged(facts);
        let stored = facts.is_stored();
        let visible = stored || facts.receives > 0;
        let invoked = facts.invoked();
        report.invoked += u64::from(invoked);
        report.acknowledged += u64::from(acknowledged);
        report.reads += u64::from(stored);

        if acknowledged && !stored {
            report.lost.add(|| msg.to_string());
        }
        if facts.receives > 0 && !stored {
            report.received_not_stored.add(|| msg.to_string());
        }
        if facts.receives > 1 {
            report.receive_duplicates.add_n(facts.receives - 1, || msg.to_string());
        }
        if visible && !invoked {
            report.unexpected.add(|| msg.to_string());
        }
        if visible && (facts.send_definitely_failed() || index.rolled_back(facts)) {
            report.aborted_reads.add(|| msg.to_string());
        }
        if visible && index.check_back_rollback(facts) && !index.committed(facts) {
            report.check_back_rollback_visible.add(|| msg.to_string());
        }
        if report.consumers_ran && acknowledged && stored && facts.receives == 0 {
            report.undelivered.add(|| msg.to_string());
        }
        if !stored {
            continue;
        }

        let on_node: Vec<(u64, Option<&Positions>)> =
            nodes.iter().map(|n| (*n, facts.stored.get(n))).collect();
        if on_node.windows(2).any(|w| w[0].1 != w[1].1) {
            report.divergent.add(|| {
                let per_node: Vec<String> = on_node
                    .iter()
                    .map(|(n, p)| format!("node {n} {}", positions_text(*p)))
                    .collect();
                format!("{msg} ({})", per_node.join(", "))
            });
        }

        if !facts.partitions.is_empty() {
            let outside: BTreeSet<u32> = facts
                .stored
                .values()
                .flatten()
                .map(|(p, _)| *p)
                .filter(|p| !facts.partitions.contains(p))
                .collect();
            if !outside.is_empty() {
                report.misplaced.add(|| {
                    format!("{msg} (sent to {:?}, stored in {outside:?})", facts.partitions)
                });
            }
        }

        let mismatch = facts.acked_offsets.iter().find_map(|(partition, offset)| {
            let position = (partition.or(facts.order_partition())?, *offset);
            let (node, held) = facts.stored.iter().find(|(_, held)| !held.contains(&position))?;
            Some((position, *node, held))
        });
        if let Some(((p, o), node, held)) = mismatch {
            report.ack_offset_mismatch.add(|| {
                format!(
                    "{msg} (acked at {p}@{o}, node {node} has it at {})",
                    positions_text(Some(held))
                )
            });
        }

        let (most_node, most) = facts
            .stored
            .iter()
            .map(|(n, held)| (*n, held.len() as u64))
            // Most copies; among equals, the lowest node id (for stable examples).
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .unwrap_or_default();
        if most > 1 {
            let example = || format!("{msg} ({most} copies on node {most_node})");
            if facts.transactional {
                report.txn_duplicates.add(example);
            } else if invoked {
                report.duplicates.add_n(most - 1, example);
            }
        }
    }
}

/// Different msgs at one position.
fn check_positions(index: &Index<'_>, report: &mut Report) {
    for ((partition, offset), msgs) in &index.positions {
        if msgs.len() > 1 {
            report.offset_conflicts.add(|| {
                let held: Vec<String> = msgs
                    .iter()
                    .map(|(m, nodes)| format!("{m} on {:?}", nodes.iter().collect::<Vec<_>>()))
                    .collect();
                format!("{partition}@{offset}: {}", held.join(" vs "))
            });
        }
    }
}

/// Transactions with both an acknowledged commit and an acknowledged rollback.
fn check_flips(index: &Index<'_>, report: &mut Report) {
    let mut flipped: BTreeMap<String, String> = BTreeMap::new();
    for (&msg, facts) in &index.msgs {
        if index.committed(facts) && index.rolled_back(facts) {
            let (label, example) = match facts.txns.first() {
                Some(txn) => (format!("txn {txn}"), format!("txn {txn} ({msg})")),
                None => (format!("msg {msg}"), msg.to_string()),
            };
            flipped.entry(label).or_insert(example);
        }
    }
    for (txn, facts) in &index.txns {
        if facts.commit_ok && facts.rollback_ok && facts.msgs.is_empty() {
            flipped.entry(format!("txn {txn}")).or_insert_with(|| format!("txn {txn}"));
        }
    }
    for example in flipped.into_values() {
        report.flipped.add(|| example);
    }
}

/// Acknowledged plain sends of one (client, partition) appear, on every node, at first offsets
/// that strictly increase with their seq.
fn check_order(index: &Index<'_>, nodes: &BTreeSet<u64>, report: &mut Report) {
    let mut streams: BTreeMap<(&str, u32), Vec<(u64, &MsgFacts<'_>)>> = BTreeMap::new();
    for (&msg, facts) in &index.msgs {
        if facts.send.oks == 0 || facts.transactional {
            continue;
        }
        match (facts.client, facts.order_partition(), seq_of(msg)) {
            (Some(client), Some(partition), Some(seq)) => {
                streams.entry((client, partition)).or_default().push((seq, facts));
            }
            _ => report
                .malformed
                .add(|| format!("acknowledged send {msg}: no client, partition or numeric seq")),
        }
    }
    let mut pairs: BTreeMap<(&str, u32, u64, u64), String> = BTreeMap::new();
    for ((client, partition), stream) in &mut streams {
        stream.sort_by_key(|(seq, _)| *seq);
        for node in nodes {
            let firsts: Vec<(u64, u64)> = stream
                .iter()
                .filter_map(|(seq, facts)| {
                    let first = facts
                        .stored
                        .get(node)?
                        .iter()
                        .filter(|(p, _)| p == partition)
                        .map(|(_, o)| *o)
                        .min()?;
                    Some((*seq, first))
                })
                .collect();
            for w in firsts.windows(2) {
                let ((seq_a, off_a), (seq_b, off_b)) = (w[0], w[1]);
                if off_b <= off_a {
                    pairs.entry((*client, *partition, seq_a, seq_b)).or_insert_with(|| {
                        format!(
                            "client {client} partition {partition}: seq {seq_a} at offset \
                             {off_a} not before seq {seq_b} at offset {off_b} on node {node}"
                        )
                    });
                }
            }
        }
    }
    for example in pairs.into_values() {
        report.order_violations.add(|| example);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: [u64; 3] = [1, 2, 3];

    fn input() -> CheckInput {
        CheckInput { nodes: NODES.to_vec(), unresolved_at_end: 0, consumers_ran: false }
    }

    fn ev(client: &str, op: Op, f: Func, msg: &str) -> Event {
        Event::new(0, client, op, f, msg)
    }

    fn client_of(msg: &str) -> &str {
        msg.rsplit_once('-').map_or(msg, |(c, _)| c)
    }

    /// A plain send: invoke, then `outcome` (with the offset when ok).
    fn send(msg: &str, partition: u32, outcome: Op, offset: u64) -> Vec<Event> {
        let c = client_of(msg);
        let mut invoke = ev(c, Op::Invoke, Func::Send, msg);
        invoke.partition = Some(partition);
        let mut done = ev(c, outcome, Func::Send, msg);
        done.partition = Some(partition);
        if outcome == Op::Ok {
            done.offset = Some(offset);
        }
        vec![invoke, done]
    }

    /// A half send: invoke, then `outcome` (with the txn id when ok).
    fn half(msg: &str, partition: u32, outcome: Op, txn: u64) -> Vec<Event> {
        let c = client_of(msg);
        let mut invoke = ev(c, Op::Invoke, Func::SendHalf, msg);
        invoke.partition = Some(partition);
        let mut done = ev(c, outcome, Func::SendHalf, msg);
        done.partition = Some(partition);
        if outcome == Op::Ok {
            done.txn = Some(txn);
        }
        vec![invoke, done]
    }

    /// A commit or rollback: invoke, then `outcome`.
    fn decide(f: Func, msg: &str, txn: Option<u64>, outcome: Op) -> Vec<Event> {
        let c = client_of(msg);
        let mut invoke = ev(c, Op::Invoke, f, msg);
        invoke.txn = txn;
        let mut done = ev(c, outcome, f, msg);
        done.txn = txn;
        vec![invoke, done]
    }

    fn read(node: u64, partition: u32, offset: u64, msg: &str) -> Event {
        let mut e = ev("checker", Op::Ok, Func::Read, msg);
        e.node = Some(node);
        e.partition = Some(partition);
        e.offset = Some(offset);
        e
    }

    fn read_all(partition: u32, offset: u64, msg: &str) -> Vec<Event> {
        NODES.iter().map(|n| read(*n, partition, offset, msg)).collect()
    }

    fn receive(msg: &str, partition: u32, offset: u64) -> Event {
        let mut e = ev("c1", Op::Ok, Func::Receive, msg);
        e.partition = Some(partition);
        e.offset = Some(offset);
        e.attempt = Some(1);
        e
    }

    fn check_back(msg: &str, txn: u64, decision: &str) -> Event {
        let mut e = ev(client_of(msg), Op::Ok, Func::CheckBack, msg);
        e.txn = Some(txn);
        e.decision = Some(decision.to_string());
        e
    }

    /// Sends `msgs` on partition 0 at offsets 0.. and reads them on every node.
    fn sent_and_stored(msgs: &[&str]) -> Vec<Event> {
        let mut h = Vec::new();
        for (o, m) in (0u64..).zip(msgs) {
            h.extend(send(m, 0, Op::Ok, o));
        }
        for (o, m) in (0u64..).zip(msgs) {
            h.extend(read_all(0, o, m));
        }
        h
    }

    fn assert_only(report: &Report, category: &str) {
        let v = report.violations();
        assert_eq!(v.len(), 1, "{v:#?}");
        assert!(v[0].starts_with(&format!("{category}:")), "{v:#?}");
    }

    #[test]
    fn clean_history_is_clean() {
        let mut h = sent_and_stored(&["p1-1", "p1-2", "p2-1"]);
        h.extend(half("tp-t1", 0, Op::Ok, 7));
        h.extend(decide(Func::Commit, "tp-t1", Some(7), Op::Ok));
        h.extend(half("tp-t2", 0, Op::Ok, 8));
        h.extend(decide(Func::Rollback, "tp-t2", Some(8), Op::Ok));
        h.extend(read_all(0, 3, "tp-t1"));
        for (o, m) in [(0, "p1-1"), (1, "p1-2"), (2, "p2-1"), (3, "tp-t1")] {
            h.push(receive(m, 0, o));
        }
        let r = check(&h, &CheckInput { consumers_ran: true, ..input() });
        assert!(r.is_clean(), "{:#?}", r.violations());
        assert_eq!((r.invoked, r.acknowledged, r.reads), (5, 4, 4));
        assert_eq!(r.duplicates.count + r.receive_duplicates.count, 0);
    }

    #[test]
    fn empty_history_is_clean() {
        assert!(check(&[], &input()).is_clean());
    }

    #[test]
    fn lost_when_acknowledged_send_is_stored_nowhere() {
        let mut h = sent_and_stored(&["p1-1"]);
        h.extend(send("p1-2", 0, Op::Ok, 1));
        let r = check(&h, &input());
        assert_only(&r, "lost");
        assert_eq!(r.lost.examples, vec!["p1-2"]);
    }

    #[test]
    fn lost_when_committed_txn_is_stored_nowhere() {
        let mut h = half("tp-t1", 0, Op::Ok, 7);
        h.extend(decide(Func::Commit, "tp-t1", Some(7), Op::Ok));
        let r = check(&h, &input());
        assert_only(&r, "lost");
        assert_eq!(r.lost.count, 1);
    }

    #[test]
    fn divergent_when_missing_on_one_node() {
        let mut h = send("p1-1", 0, Op::Ok, 0);
        h.push(read(1, 0, 0, "p1-1"));
        h.push(read(2, 0, 0, "p1-1"));
        let r = check(&h, &input());
        assert_only(&r, "divergent");
        assert_eq!(r.divergent.count, 1);
        assert!(r.divergent.examples[0].contains("node 3 []"), "{:?}", r.divergent);
    }

    #[test]
    fn divergent_when_one_node_has_an_extra_copy() {
        let mut h = sent_and_stored(&["p1-1"]);
        h.push(read(3, 0, 1, "p1-1"));
        let r = check(&h, &input());
        assert_only(&r, "divergent");
        // The extra copy is an allowed duplicate of a plain send.
        assert_eq!(r.duplicates.count, 1);
    }

    #[test]
    fn divergent_info_send_is_still_divergent() {
        let mut h = send("p1-1", 0, Op::Info, 0);
        h.push(read(1, 0, 0, "p1-1"));
        assert_only(&check(&h, &input()), "divergent");
    }

    #[test]
    fn offset_conflict_across_nodes() {
        let mut h = send("p1-1", 0, Op::Ok, 0);
        h.extend(send("p2-1", 0, Op::Info, 0));
        h.push(read(1, 0, 0, "p1-1"));
        h.push(read(2, 0, 0, "p1-1"));
        h.push(read(3, 0, 0, "p2-1"));
        let r = check(&h, &input());
        assert_eq!(r.offset_conflicts.count, 1);
        assert!(r.offset_conflicts.examples[0].starts_with("0@0: p1-1 on [1, 2] vs p2-1 on [3]"));
        // Both are also divergent: each misses on some node.
        assert_eq!(r.divergent.count, 2);
    }

    #[test]
    fn offset_conflict_on_one_node() {
        let mut h = sent_and_stored(&["p1-1"]);
        h.extend(send("p2-1", 0, Op::Info, 0));
        h.push(read(2, 0, 0, "p2-1"));
        let r = check(&h, &input());
        assert_eq!(r.offset_conflicts.count, 1);
        assert!(!r.is_clean());
    }

    #[test]
    fn repeated_identical_reads_are_not_conflicts_or_copies() {
        let mut h = sent_and_stored(&["p1-1"]);
        h.extend(read_all(0, 0, "p1-1"));
        let r = check(&h, &input());
        assert!(r.is_clean(), "{:#?}", r.violations());
        assert_eq!(r.duplicates.count, 0);
    }

    #[test]
    fn unexpected_read_and_receive() {
        let mut h = read_all(0, 0, "ghost-1");
        h.push(receive("ghost-2", 0, 1));
        h.extend(read_all(0, 1, "ghost-2"));
        let r = check(&h, &input());
        assert_only(&r, "unexpected");
        assert_eq!(r.unexpected.examples, vec!["ghost-1", "ghost-2"]);
    }

    #[test]
    fn unexpected_when_only_a_commit_names_the_msg() {
        let mut h = decide(Func::Commit, "tp-t1", Some(7), Op::Ok);
        h.extend(read_all(0, 0, "tp-t1"));
        assert_only(&check(&h, &input()), "unexpected");
    }

    #[test]
    fn aborted_read_after_failed_send() {
        let mut h = send("p1-1", 0, Op::Fail, 0);
        h.extend(read_all(0, 0, "p1-1"));
        let r = check(&h, &input());
        assert_only(&r, "aborted_reads");
        assert_eq!(r.aborted_reads.examples, vec!["p1-1"]);
    }

    #[test]
    fn aborted_read_after_failed_half_seen_by_consumer() {
        let mut h = half("tp-t1", 0, Op::Fail, 0);
        h.extend(read_all(0, 0, "tp-t1"));
        h.push(receive("tp-t1", 0, 0));
        assert_only(&check(&h, &input()), "aborted_reads");
    }

    #[test]
    fn failed_then_retried_ok_is_not_aborted() {
        let mut h = send("p1-1", 0, Op::Fail, 0);
        h.extend(sent_and_stored(&["p1-1"]));
        let r = check(&h, &input());
        assert!(r.is_clean(), "{:#?}", r.violations());
    }

    #[test]
    fn fail_with_an_invoke_left_open_is_not_aborted() {
        // Two attempts, one refused, the other never answered: it may be stored.
        let mut h = send("p1-1", 0, Op::Fail, 0);
        h.push(ev("p1", Op::Invoke, Func::Send, "p1-1"));
        h.extend(read_all(0, 0, "p1-1"));
        assert!(check(&h, &input()).is_clean());
    }

    #[test]
    fn aborted_read_after_rollback_by_txn_id() {
        let mut h = half("tp-t1", 0, Op::Ok, 7);
        // The rollback line names only the txn.
        h.extend(decide(Func::Rollback, "", Some(7), Op::Ok));
        h.extend(read_all(0, 0, "tp-t1"));
        let r = check(&h, &input());
        assert_only(&r, "aborted_reads");
    }

    #[test]
    fn aborted_read_after_rollback_by_msg_received() {
        let mut h = half("tp-t1", 0, Op::Info, 0);
        h.extend(decide(Func::Rollback, "tp-t1", None, Op::Ok));
        h.extend(read_all(0, 0, "tp-t1"));
        h.push(receive("tp-t1", 0, 0));
        assert_only(&check(&h, &input()), "aborted_reads");
    }

    #[test]
    fn rollback_not_acknowledged_is_not_aborted() {
        let mut h = half("tp-t1", 0, Op::Ok, 7);
        h.extend(decide(Func::Rollback, "tp-t1", Some(7), Op::Info));
        h.extend(read_all(0, 0, "tp-t1"));
        assert!(check(&h, &input()).is_clean());
    }

    #[test]
    fn flipped_commit_and_rollback() {
        let mut h = half("tp-t1", 0, Op::Ok, 7);
        h.extend(decide(Func::Commit, "tp-t1", Some(7), Op::Ok));
        h.extend(decide(Func::Rollback, "tp-t1", Some(7), Op::Ok));
        let r = check(&h, &input());
        assert_eq!(r.flipped.count, 1);
        assert_eq!(r.flipped.examples, vec!["txn 7 (tp-t1)"]);
        // Acknowledged by the commit and stored nowhere: also lost.
        assert_eq!(r.lost.count, 1);
    }

    #[test]
    fn flipped_when_commit_has_txn_and_rollback_only_msg() {
        let mut h = half("tp-t1", 0, Op::Ok, 7);
        h.extend(decide(Func::Commit, "", Some(7), Op::Ok));
        h.extend(decide(Func::Rollback, "tp-t1", None, Op::Ok));
        h.extend(read_all(0, 0, "tp-t1"));
        let r = check(&h, &input());
        assert_eq!(r.flipped.examples, vec!["txn 7 (tp-t1)"]);
        assert_eq!(r.aborted_reads.count, 1);
    }

    #[test]
    fn flipped_by_msg_when_no_txn_id_is_known() {
        let mut h = half("tp-t1", 0, Op::Info, 0);
        h.extend(decide(Func::Commit, "tp-t1", None, Op::Ok));
        h.extend(decide(Func::Rollback, "tp-t1", None, Op::Ok));
        h.extend(read_all(0, 0, "tp-t1"));
        let r = check(&h, &input());
        assert_eq!(r.flipped.examples, vec!["tp-t1"]);
        assert_eq!(r.violations().len(), 2, "{:#?}", r.violations());
    }

    #[test]
    fn check_back_rollback_alone_is_not_a_violation() {
        let mut h = half("tp-t1", 0, Op::Ok, 7);
        h.push(check_back("tp-t1", 7, "rollback"));
        h.extend(read_all(0, 0, "tp-t1"));
        let r = check(&h, &input());
        assert!(r.is_clean(), "{:#?}", r.violations());
        assert_eq!(r.check_back_rollback_visible.count, 1);
    }

    #[test]
    fn check_back_rollback_with_acknowledged_rollback_is_aborted() {
        let mut h = half("tp-t1", 0, Op::Ok, 7);
        h.push(check_back("tp-t1", 7, "rollback"));
        h.extend(decide(Func::Rollback, "tp-t1", Some(7), Op::Ok));
        h.extend(read_all(0, 0, "tp-t1"));
        assert_only(&check(&h, &input()), "aborted_reads");
    }

    #[test]
    fn half_info_committed_by_check_back_is_fine() {
        let mut h = half("tp-t1", 0, Op::Info, 0);
        h.push(check_back("tp-t1", 9, "commit"));
        h.extend(read_all(0, 0, "tp-t1"));
        let r = check(&h, &input());
        assert!(r.is_clean(), "{:#?}", r.violations());
        assert_eq!(r.acknowledged, 0);
    }

    #[test]
    fn commit_ok_after_half_info_is_acknowledged() {
        let mut h = half("tp-t1", 0, Op::Info, 0);
        h.extend(decide(Func::Commit, "tp-t1", Some(7), Op::Ok));
        let r = check(&h, &input());
        assert_eq!(r.acknowledged, 1);
        assert_only(&r, "lost");
    }

    #[test]
    fn commit_by_txn_id_acknowledges_every_msg_of_the_txn() {
        let mut h = half("tp-t1", 0, Op::Ok, 7);
        h.extend(half("tp-t2", 0, Op::Ok, 7));
        h.extend(decide(Func::Commit, "tp-t1", Some(7), Op::Ok));
        h.extend(read_all(0, 0, "tp-t1"));
        let r = check(&h, &input());
        assert_eq!(r.acknowledged, 2);
        assert_only(&r, "lost");
        assert_eq!(r.lost.examples, vec!["tp-t2"]);
    }

    #[test]
    fn txn_duplicate_is_a_violation() {
        let mut h = half("tp-t1", 0, Op::Ok, 7);
        h.extend(decide(Func::Commit, "tp-t1", Some(7), Op::Ok));
        h.extend(read_all(0, 0, "tp-t1"));
        h.extend(read_all(0, 1, "tp-t1"));
        let r = check(&h, &input());
        assert_only(&r, "txn_duplicates");
        assert_eq!(r.txn_duplicates.examples, vec!["tp-t1 (2 copies on node 1)"]);
        assert_eq!(r.duplicates.count, 0);
    }

    #[test]
    fn plain_duplicates_are_counted_not_violations() {
        let mut h = sent_and_stored(&["p1-1", "p1-2"]);
        h.extend(read_all(0, 2, "p1-1"));
        h.extend(read_all(0, 3, "p1-1"));
        h.extend(read_all(0, 4, "p1-2"));
        let r = check(&h, &input());
        assert!(r.is_clean(), "{:#?}", r.violations());
        assert_eq!(r.duplicates.count, 3);
        assert_eq!(
            r.duplicates.examples,
            vec!["p1-1 (3 copies on node 1)", "p1-2 (2 copies on node 1)"]
        );
    }

    #[test]
    fn order_violation_detected() {
        let mut h = send("p1-1", 0, Op::Ok, 1);
        h.extend(send("p1-2", 0, Op::Ok, 0));
        h.extend(read_all(0, 0, "p1-2"));
        h.extend(read_all(0, 1, "p1-1"));
        let r = check(&h, &input());
        assert_only(&r, "order_violations");
        // Deduplicated across the three nodes.
        assert_eq!(r.order_violations.count, 1);
        assert!(r.order_violations.examples[0]
            .starts_with("client p1 partition 0: seq 1 at offset 1 not before seq 2 at offset 0"));
    }

    #[test]
    fn order_violation_on_one_node_only() {
        let mut h = sent_and_stored(&["p1-1", "p1-2"]);
        h.retain(|e| !(e.f == Func::Read && e.node == Some(2)));
        h.push(read(2, 0, 0, "p1-2"));
        h.push(read(2, 0, 1, "p1-1"));
        let r = check(&h, &input());
        assert_eq!(r.order_violations.count, 1);
        assert!(r.order_violations.examples[0].ends_with("on node 2"));
        // The nodes disagree about positions too.
        assert_eq!(r.divergent.count, 2);
        assert_eq!(r.offset_conflicts.count, 2);
    }

    #[test]
    fn order_uses_numeric_seq_not_text() {
        let msgs: Vec<String> = (1..=11).map(|s| format!("p1-{s}")).collect();
        let refs: Vec<&str> = msgs.iter().map(String::as_str).collect();
        let r = check(&sent_and_stored(&refs), &input());
        assert!(r.is_clean(), "{:#?}", r.violations());
    }

    #[test]
    fn order_fine_with_duplicates_first_occurrence_counts() {
        // Retried batch: p1-1 p1-2 at 0 1, again at 2 3, then p1-3 at 4.
        let mut h = sent_and_stored(&["p1-1", "p1-2"]);
        h.extend(read_all(0, 2, "p1-1"));
        h.extend(read_all(0, 3, "p1-2"));
        h.extend(send("p1-3", 0, Op::Ok, 4));
        h.extend(read_all(0, 4, "p1-3"));
        let r = check(&h, &input());
        assert!(r.is_clean(), "{:#?}", r.violations());
        assert_eq!(r.duplicates.count, 2);
    }

    #[test]
    fn order_ignores_unacknowledged_and_other_partitions() {
        let mut h = sent_and_stored(&["p1-2"]);
        // p1-1 timed out and landed after p1-2: allowed.
        h.extend(send("p1-1", 0, Op::Info, 0));
        h.extend(read_all(0, 1, "p1-1"));
        // Another partition has its own offsets.
        h.extend(send("p1-3", 1, Op::Ok, 0));
        h.extend(read_all(1, 0, "p1-3"));
        let r = check(&h, &input());
        assert!(r.is_clean(), "{:#?}", r.violations());
    }

    #[test]
    fn unresolved_is_a_violation() {
        let r = check(&[], &CheckInput { unresolved_at_end: 2, ..input() });
        assert_only(&r, "unresolved");
        assert!(r.violations()[0].contains('2'));
    }

    #[test]
    fn undelivered_only_when_consumers_ran() {
        let mut h = sent_and_stored(&["p1-1", "p1-2"]);
        h.push(receive("p1-1", 0, 0));
        let without = check(&h, &input());
        assert!(without.is_clean(), "{:#?}", without.violations());
        let with = check(&h, &CheckInput { consumers_ran: true, ..input() });
        assert_only(&with, "undelivered");
        assert_eq!(with.undelivered.examples, vec!["p1-2"]);
    }

    #[test]
    fn undelivered_ignores_unacknowledged_stored_msgs() {
        let mut h = send("p1-1", 0, Op::Info, 0);
        h.extend(read_all(0, 0, "p1-1"));
        assert!(check(&h, &CheckInput { consumers_ran: true, ..input() }).is_clean());
    }

    #[test]
    fn receive_duplicates_are_counted_not_violations() {
        let mut h = sent_and_stored(&["p1-1"]);
        for _ in 0..3 {
            h.push(receive("p1-1", 0, 0));
        }
        let r = check(&h, &CheckInput { consumers_ran: true, ..input() });
        assert!(r.is_clean(), "{:#?}", r.violations());
        assert_eq!(r.receive_duplicates.count, 2);
    }

    #[test]
    fn info_sends_are_neither_lost_nor_unexpected() {
        let mut h = send("p1-1", 0, Op::Info, 0);
        h.extend(send("p1-2", 0, Op::Info, 0));
        h.extend(read_all(0, 0, "p1-2"));
        // An invoke with no outcome at all (client crashed) likewise.
        h.push(ev("p1", Op::Invoke, Func::Send, "p1-3"));
        let r = check(&h, &input());
        assert!(r.is_clean(), "{:#?}", r.violations());
        assert_eq!((r.invoked, r.acknowledged, r.reads), (3, 0, 1));
    }

    #[test]
    fn received_but_stored_nowhere() {
        let mut h = send("p1-1", 0, Op::Info, 0);
        h.push(receive("p1-1", 0, 0));
        assert_only(&check(&h, &input()), "received_not_stored");
    }

    #[test]
    fn ack_offset_mismatch_detected() {
        let mut h = send("p1-1", 0, Op::Ok, 5);
        h.extend(read_all(0, 0, "p1-1"));
        let r = check(&h, &input());
        assert_only(&r, "ack_offset_mismatch");
        assert_eq!(
            r.ack_offset_mismatch.examples,
            vec!["p1-1 (acked at 0@5, node 1 has it at [0@0])"]
        );
    }

    #[test]
    fn misplaced_detected() {
        let mut h = send("p1-1", 0, Op::Info, 0);
        h.extend(read_all(1, 0, "p1-1"));
        assert_only(&check(&h, &input()), "misplaced");
    }

    #[test]
    fn malformed_events_are_violations() {
        let mut no_node = read(1, 0, 0, "p1-1");
        no_node.node = None;
        let mut failed_read = read(1, 0, 0, "p1-1");
        failed_read.op = Op::Fail;
        let h = vec![
            no_node,
            failed_read,
            read(9, 0, 0, "p1-1"),
            ev("p1", Op::Invoke, Func::Send, ""),
            ev("p1", Op::Ok, Func::Commit, ""),
        ];
        let r = check(&h, &input());
        assert_only(&r, "malformed");
        assert_eq!(r.malformed.count, 5);
    }

    #[test]
    fn malformed_commit_naming_unknown_txn_only() {
        let h = decide(Func::Commit, "", Some(7), Op::Ok);
        assert_only(&check(&h, &input()), "malformed");
    }

    #[test]
    fn malformed_acknowledged_send_without_seq() {
        let h = [send("p1-x", 0, Op::Ok, 0), read_all(0, 0, "p1-x")].concat();
        assert_only(&check(&h, &input()), "malformed");
    }

    #[test]
    fn malformed_without_nodes() {
        let r = check(&[], &CheckInput { nodes: vec![], ..input() });
        assert_only(&r, "malformed");
    }

    #[test]
    fn examples_are_capped_counts_are_not() {
        let mut h = Vec::new();
        for s in 0..25 {
            h.extend(send(&format!("p1-{s}"), 0, Op::Ok, s));
        }
        let r = check(&h, &input());
        assert_eq!(r.lost.count, 25);
        assert_eq!(r.lost.examples.len(), EXAMPLES_MAX);
        let v = r.violations();
        assert_eq!(v.len(), 1);
        assert!(
            v[0].starts_with("lost: 25 acknowledged messages are stored on no node (e.g. p1-0;")
        );
    }

    #[test]
    fn parses_jsonl_history() {
        let jsonl = r#"
{"t":1,"client":"p1","op":"invoke","f":"send","msg":"p1-1","partition":0}
{"t":2,"client":"p1","op":"ok","f":"send","msg":"p1-1","partition":0,"offset":0}
{"t":3,"client":"p1","op":"invoke","f":"send","msg":"p1-2","partition":0}
{"t":4,"client":"p1","op":"ok","f":"send","msg":"p1-2","partition":0,"offset":1}
{"t":5,"client":"tp","op":"invoke","f":"send_half","msg":"tp-t1","partition":0}
{"t":6,"client":"tp","op":"ok","f":"send_half","msg":"tp-t1","partition":0,"txn":7}
{"t":7,"client":"tp","op":"ok","f":"check_back","msg":"tp-t1","txn":7,"decision":"rollback"}
{"t":8,"client":"tp","op":"invoke","f":"rollback","msg":"tp-t1","txn":7}
{"t":9,"client":"tp","op":"ok","f":"rollback","msg":"tp-t1","txn":7}
{"t":10,"client":"c1","op":"ok","f":"receive","msg":"p1-1","partition":0,"offset":0,"attempt":1}
{"t":20,"client":"checker","op":"ok","f":"read","msg":"p1-1","partition":0,"offset":0,"node":1}
{"t":20,"client":"checker","op":"ok","f":"read","msg":"p1-1","partition":0,"offset":0,"node":2}
{"t":20,"client":"checker","op":"ok","f":"read","msg":"p1-2","partition":0,"offset":1,"node":1}
{"t":20,"client":"checker","op":"ok","f":"read","msg":"tp-t1","partition":0,"offset":2,"node":1}
"#;
        let events: Vec<Event> = jsonl
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(events.len(), 14);
        let r = check(&events, &CheckInput { nodes: vec![1, 2], ..input() });
        assert_eq!((r.invoked, r.acknowledged, r.reads), (3, 2, 3));
        assert_eq!(
            r.divergent.examples,
            vec!["p1-2 (node 1 [0@1], node 2 [])", "tp-t1 (node 1 [0@2], node 2 [])"]
        );
        assert_eq!(r.aborted_reads.examples, vec!["tp-t1"]);
        assert_eq!(r.violations().len(), 2);
        // The report serializes for the runner's JSON output.
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["aborted_reads"]["count"], 1);
    }
}
