//! `Command`: the payload of a normal Raft entry. One entry carries one whole producer batch,
//! never one message. Tags are on disk: explicit and append-only.
//!
//! ```text
//! command := tag:u8 | body
//!   1 CreateTopic  name:string | partitions:u32 | created_ms:u64
//!   2 DeleteTopic  name:string
//!   3 Produce      topic:string | partition:u32 | batch:bytes
//!   4 PutHalf      group:string | topic:string | partition:u32 | check_timeout_ms:u32
//!                  | created_ms:u64 | batch:bytes
//!   5 EndTxn       txn_id:u64 | commit:bool | origin:u8 | decided_ms:u64 | purge_at_ms:u64
//!   6 RecordChecks count:u32 | (txn_id:u64 | expected_due_ms:u64 | counted:bool
//!                  | next_check_ms:u64)*
//!   7 ParkTxns     parked_ms:u64 | count:u32 | (txn_id:u64 | expected_due_ms:u64)*
//!   8 PurgeTxns    count:u32 | (txn_id:u64 | due_ms:u64)*
//!   9 Batch        count:u32 | (len:u32 | command)*     commands merged by the leader into
//!                                                       one entry; never nested
//!  10 ProduceDelayed  topic:string | partition:u32 | deliver_at_ms:u64 | batch:bytes
//!  11 DeliverDelayed  count:u32 | (delayed_id:u64 | due_ms:u64)*
//!  12 CommitOffsets   group:string | committed_ms:u64
//!                     | count:u32 | (topic:string | partition:u32 | offset:u64)*
//!  13 ProduceIdempotent topic:string | partition:u32 | stamped_ms:u64 | record_ids:bool
//!                     | batch:bytes
//!  14 ExpireDedup     count:u32 | (entry:bytes | stamped_ms:u64)*
//!  15..18             push subscriptions: see `state::push::PushCommand`
//! ```
//!
//! Times inside commands are stamped by the leader: the state machine reads no clock.

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::wire::{self, DecodeError, DecodeResult};
use ferry_protocol::{DecisionOrigin, ErrorCode, Offset, TxnId, TxnState};

use super::push::{self, PushCommand};

const TAG_CREATE_TOPIC: u8 = 1;
const TAG_DELETE_TOPIC: u8 = 2;
const TAG_PRODUCE: u8 = 3;
const TAG_PUT_HALF: u8 = 4;
const TAG_END_TXN: u8 = 5;
const TAG_RECORD_CHECKS: u8 = 6;
const TAG_PARK_TXNS: u8 = 7;
const TAG_PURGE_TXNS: u8 = 8;
const TAG_BATCH: u8 = 9;
const TAG_PRODUCE_DELAYED: u8 = 10;
const TAG_DELIVER_DELAYED: u8 = 11;
const TAG_COMMIT_OFFSETS: u8 = 12;
const TAG_PRODUCE_IDEMPOTENT: u8 = 13;
const TAG_EXPIRE_DEDUP: u8 = 14;

/// Most commands one merged entry may hold (a bound for decoding, too).
pub const BATCH_COMMANDS_MAX: usize = 4096;

/// One check-back the leader made (or tried to make) for a pending transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckRecord {
    /// The transaction.
    pub txn_id: TxnId,
    /// The check time the leader acted on; a record whose schedule moved since is stale and
    /// skipped.
    pub expected_due_ms: u64,
    /// True when a live producer of the group was asked (only those count towards the limit).
    pub counted: bool,
    /// When to check next.
    pub next_check_ms: u64,
}

/// A transaction and the timer due time the leader acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnDue {
    /// The transaction.
    pub txn_id: TxnId,
    /// The timer's due time.
    pub due_ms: u64,
}

/// A delayed message and the due time of its timer the leader acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayedDue {
    /// The delayed message's id.
    pub id: u64,
    /// Its timer's due time; a record whose deliver time differs is not delivered.
    pub due_ms: u64,
}

/// A consumer group's position in one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupOffset {
    /// Topic name.
    pub topic: String,
    /// Partition index inside the topic.
    pub partition: u32,
    /// Next offset the group reads.
    pub offset: u64,
}

/// A state change proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Create a topic with `partitions` partitions.
    CreateTopic {
        /// Topic name (validated by the handler before proposing).
        name: String,
        /// Partition count.
        partitions: u32,
        /// Leader clock at proposal.
        created_ms: u64,
    },
    /// Delete a topic and its messages.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Append one validated record batch to a partition.
    Produce {
        /// Topic name.
        topic: String,
        /// Partition index inside the topic.
        partition: u32,
        /// The batch bytes as the producer built them.
        batch: Bytes,
    },
    /// Append a batch unless it was stored before: a batch with a non-zero producer id is
    /// dropped when its (producer id, base sequence) is known in the partition, and, with
    /// `record_ids`, each record whose `ferry-dedup-id` is known is dropped (`state::dedup`).
    ProduceIdempotent {
        /// Topic name.
        topic: String,
        /// Partition index inside the topic.
        partition: u32,
        /// Leader clock at proposal: the dedup entries' age counts from here.
        stamped_ms: u64,
        /// Some record carries a `ferry-dedup-id` header (the handler saw it while checking).
        record_ids: bool,
        /// The batch bytes as the producer built them.
        batch: Bytes,
    },
    /// Forget dedup entries whose window ran out, as listed by the leader (entry key without
    /// its prefix, and the stamp it was read with: an entry stored again since is kept).
    ExpireDedup {
        /// The entries.
        entries: Vec<(Bytes, u64)>,
    },
    /// Store a half message (invisible); its transaction id is this entry's log index.
    PutHalf {
        /// Producer group asked at check-back.
        group: String,
        /// Topic the message goes to on commit.
        topic: String,
        /// Partition index inside the topic.
        partition: u32,
        /// Delay before the first check-back, resolved by the leader (never 0).
        check_timeout_ms: u32,
        /// Leader clock at proposal.
        created_ms: u64,
        /// The record batch.
        batch: Bytes,
    },
    /// Commit or roll back a transaction.
    EndTransaction {
        /// The transaction.
        txn_id: TxnId,
        /// Commit (true) or roll back.
        commit: bool,
        /// Who decided.
        origin: DecisionOrigin,
        /// Leader clock at the decision.
        decided_ms: u64,
        /// When the decided record may be forgotten.
        purge_at_ms: u64,
    },
    /// Check-backs made by the leader: counts and next check times.
    RecordChecks {
        /// One per transaction checked.
        checks: Vec<CheckRecord>,
    },
    /// Park transactions whose checks ran out.
    ParkTransactions {
        /// Leader clock at parking.
        parked_ms: u64,
        /// The transactions with the check time the leader acted on.
        txns: Vec<TxnDue>,
    },
    /// Forget decided transactions whose retention ran out.
    PurgeTransactions {
        /// The transactions with their purge timer's due time.
        txns: Vec<TxnDue>,
    },
    /// Several commands the leader merged into one entry (one log append and fsync for all),
    /// applied in order; each gets its own response.
    Batch(Vec<Command>),
    /// Store one validated record batch, invisible, and append it to its partition once
    /// `deliver_at_ms` is due (see [`Command::DeliverDelayed`]).
    ProduceDelayed {
        /// Topic name.
        topic: String,
        /// Partition index inside the topic.
        partition: u32,
        /// When it becomes visible (leader clock, ms since the Unix epoch).
        deliver_at_ms: u64,
        /// The batch bytes as the producer built them.
        batch: Bytes,
    },
    /// Append due delayed messages to their partitions, in this order. Idempotent: an id
    /// already delivered (or whose due time differs) is skipped.
    DeliverDelayed {
        /// The messages, with the timer due time the leader acted on.
        items: Vec<DelayedDue>,
    },
    /// Store consumer-group positions (a member's commit or an operator's reset).
    CommitOffsets {
        /// Consumer group.
        group: String,
        /// Leader clock at the commit.
        committed_ms: u64,
        /// Next offset to read, per partition.
        offsets: Vec<GroupOffset>,
    },
    /// Push subscriptions and their delivery state (tags 15–18).
    Push(PushCommand),
}

impl Command {
    /// Appends the encoding.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Command::CreateTopic { name, partitions, created_ms } => {
                buf.put_u8(TAG_CREATE_TOPIC);
                wire::put_string(buf, name);
                buf.put_u32(*partitions);
                buf.put_u64(*created_ms);
            }
            Command::DeleteTopic { name } => {
                buf.put_u8(TAG_DELETE_TOPIC);
                wire::put_string(buf, name);
            }
            Command::Produce { topic, partition, batch } => {
                buf.put_u8(TAG_PRODUCE);
                wire::put_string(buf, topic);
                buf.put_u32(*partition);
                wire::put_bytes(buf, batch);
            }
            Command::ProduceIdempotent { topic, partition, stamped_ms, record_ids, batch } => {
                buf.put_u8(TAG_PRODUCE_IDEMPOTENT);
                wire::put_string(buf, topic);
                buf.put_u32(*partition);
                buf.put_u64(*stamped_ms);
                buf.put_u8(u8::from(*record_ids));
                wire::put_bytes(buf, batch);
            }
            Command::ExpireDedup { entries } => {
                buf.put_u8(TAG_EXPIRE_DEDUP);
                wire::put_array(buf, entries, |b, (entry, stamped_ms)| {
                    wire::put_bytes(b, entry);
                    b.put_u64(*stamped_ms);
                });
            }
            Command::PutHalf { group, topic, partition, check_timeout_ms, created_ms, batch } => {
                buf.put_u8(TAG_PUT_HALF);
                wire::put_string(buf, group);
                wire::put_string(buf, topic);
                buf.put_u32(*partition);
                buf.put_u32(*check_timeout_ms);
                buf.put_u64(*created_ms);
                wire::put_bytes(buf, batch);
            }
            Command::EndTransaction { txn_id, commit, origin, decided_ms, purge_at_ms } => {
                buf.put_u8(TAG_END_TXN);
                buf.put_u64(txn_id.0);
                wire::put_bool(buf, *commit);
                buf.put_u8(*origin as u8);
                buf.put_u64(*decided_ms);
                buf.put_u64(*purge_at_ms);
            }
            Command::RecordChecks { checks } => {
                buf.put_u8(TAG_RECORD_CHECKS);
                wire::put_array(buf, checks, |b, c| {
                    b.put_u64(c.txn_id.0);
                    b.put_u64(c.expected_due_ms);
                    wire::put_bool(b, c.counted);
                    b.put_u64(c.next_check_ms);
                });
            }
            Command::ParkTransactions { parked_ms, txns } => {
                buf.put_u8(TAG_PARK_TXNS);
                buf.put_u64(*parked_ms);
                wire::put_array(buf, txns, put_txn_due);
            }
            Command::PurgeTransactions { txns } => {
                buf.put_u8(TAG_PURGE_TXNS);
                wire::put_array(buf, txns, put_txn_due);
            }
            Command::Batch(commands) => {
                buf.put_u8(TAG_BATCH);
                buf.put_u32(wire::len_u32(commands.len()));
                for c in commands {
                    // Length placeholder, patched once the command is written: no second copy
                    // of the batches inside.
                    let at = buf.len();
                    buf.put_u32(0);
                    c.encode(buf);
                    let len = wire::len_u32(buf.len() - at - 4);
                    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
                }
            }
            Command::ProduceDelayed { topic, partition, deliver_at_ms, batch } => {
                buf.put_u8(TAG_PRODUCE_DELAYED);
                wire::put_string(buf, topic);
                buf.put_u32(*partition);
                buf.put_u64(*deliver_at_ms);
                wire::put_bytes(buf, batch);
            }
            Command::DeliverDelayed { items } => {
                buf.put_u8(TAG_DELIVER_DELAYED);
                wire::put_array(buf, items, |b, d| {
                    b.put_u64(d.id);
                    b.put_u64(d.due_ms);
                });
            }
            Command::CommitOffsets { group, committed_ms, offsets } => {
                buf.put_u8(TAG_COMMIT_OFFSETS);
                wire::put_string(buf, group);
                buf.put_u64(*committed_ms);
                wire::put_array(buf, offsets, |b, o| {
                    wire::put_string(b, &o.topic);
                    b.put_u32(o.partition);
                    b.put_u64(o.offset);
                });
            }
            Command::Push(p) => p.encode(buf),
        }
    }

    /// Reads one command; byte fields are zero-copy slices of `buf`.
    pub fn decode(buf: &mut Bytes) -> DecodeResult<Command> {
        Ok(match wire::get_u8(buf, "command.tag")? {
            TAG_CREATE_TOPIC => Command::CreateTopic {
                name: wire::get_string(buf, "create_topic.name")?,
                partitions: wire::get_u32(buf, "create_topic.partitions")?,
                created_ms: wire::get_u64(buf, "create_topic.created_ms")?,
            },
            TAG_DELETE_TOPIC => {
                Command::DeleteTopic { name: wire::get_string(buf, "delete_topic.name")? }
            }
            TAG_PRODUCE => Command::Produce {
                topic: wire::get_string(buf, "produce.topic")?,
                partition: wire::get_u32(buf, "produce.partition")?,
                batch: wire::get_bytes(buf, "produce.batch")?,
            },
            TAG_PUT_HALF => Command::PutHalf {
                group: wire::get_string(buf, "put_half.group")?,
                topic: wire::get_string(buf, "put_half.topic")?,
                partition: wire::get_u32(buf, "put_half.partition")?,
                check_timeout_ms: wire::get_u32(buf, "put_half.check_timeout_ms")?,
                created_ms: wire::get_u64(buf, "put_half.created_ms")?,
                batch: wire::get_bytes(buf, "put_half.batch")?,
            },
            TAG_END_TXN => Command::EndTransaction {
                txn_id: TxnId(wire::get_u64(buf, "end_txn.txn_id")?),
                commit: wire::get_bool(buf, "end_txn.commit")?,
                origin: {
                    let raw = wire::get_u8(buf, "end_txn.origin")?;
                    DecisionOrigin::from_u8(raw).ok_or_else(|| DecodeError::Invalid {
                        what: "end_txn.origin",
                        detail: format!("{raw}"),
                    })?
                },
                decided_ms: wire::get_u64(buf, "end_txn.decided_ms")?,
                purge_at_ms: wire::get_u64(buf, "end_txn.purge_at_ms")?,
            },
            TAG_RECORD_CHECKS => Command::RecordChecks {
                checks: wire::get_array(buf, "record_checks", 25, |b| {
                    Ok(CheckRecord {
                        txn_id: TxnId(wire::get_u64(b, "check.txn_id")?),
                        expected_due_ms: wire::get_u64(b, "check.expected_due_ms")?,
                        counted: wire::get_bool(b, "check.counted")?,
                        next_check_ms: wire::get_u64(b, "check.next_check_ms")?,
                    })
                })?,
            },
            TAG_PARK_TXNS => Command::ParkTransactions {
                parked_ms: wire::get_u64(buf, "park.parked_ms")?,
                txns: wire::get_array(buf, "park.txns", 16, get_txn_due)?,
            },
            TAG_BATCH => {
                let commands = wire::get_array(buf, "batch", 5, |b| {
                    let mut one = wire::get_bytes(b, "batch.command")?;
                    if one.first() == Some(&TAG_BATCH) {
                        return Err(DecodeError::Invalid {
                            what: "batch.command",
                            detail: "nested batch".into(),
                        });
                    }
                    let c = Command::decode(&mut one)?;
                    if !one.is_empty() {
                        return Err(DecodeError::Invalid {
                            what: "batch.command",
                            detail: format!("{} trailing bytes", one.len()),
                        });
                    }
                    Ok(c)
                })?;
                if commands.len() > BATCH_COMMANDS_MAX {
                    return Err(DecodeError::Invalid {
                        what: "batch",
                        detail: format!("{} commands", commands.len()),
                    });
                }
                Command::Batch(commands)
            }
            TAG_PURGE_TXNS => Command::PurgeTransactions {
                txns: wire::get_array(buf, "purge.txns", 16, get_txn_due)?,
            },
            TAG_PRODUCE_IDEMPOTENT => Command::ProduceIdempotent {
                topic: wire::get_string(buf, "produce_idempotent.topic")?,
                partition: wire::get_u32(buf, "produce_idempotent.partition")?,
                stamped_ms: wire::get_u64(buf, "produce_idempotent.stamped_ms")?,
                record_ids: wire::get_u8(buf, "produce_idempotent.record_ids")? != 0,
                batch: wire::get_bytes(buf, "produce_idempotent.batch")?,
            },
            TAG_EXPIRE_DEDUP => Command::ExpireDedup {
                entries: wire::get_array(buf, "expire_dedup", 12, |b| {
                    Ok((
                        wire::get_bytes(b, "expire_dedup.entry")?,
                        wire::get_u64(b, "expire_dedup.stamped_ms")?,
                    ))
                })?,
            },
            TAG_PRODUCE_DELAYED => Command::ProduceDelayed {
                topic: wire::get_string(buf, "produce_delayed.topic")?,
                partition: wire::get_u32(buf, "produce_delayed.partition")?,
                deliver_at_ms: wire::get_u64(buf, "produce_delayed.deliver_at_ms")?,
                batch: wire::get_bytes(buf, "produce_delayed.batch")?,
            },
            TAG_DELIVER_DELAYED => Command::DeliverDelayed {
                items: wire::get_array(buf, "deliver_delayed", 16, |b| {
                    Ok(DelayedDue {
                        id: wire::get_u64(b, "deliver_delayed.id")?,
                        due_ms: wire::get_u64(b, "deliver_delayed.due_ms")?,
                    })
                })?,
            },
            TAG_COMMIT_OFFSETS => Command::CommitOffsets {
                group: wire::get_string(buf, "commit_offsets.group")?,
                committed_ms: wire::get_u64(buf, "commit_offsets.committed_ms")?,
                offsets: wire::get_array(buf, "commit_offsets.offsets", 16, |b| {
                    Ok(GroupOffset {
                        topic: wire::get_string(b, "commit_offsets.topic")?,
                        partition: wire::get_u32(b, "commit_offsets.partition")?,
                        offset: wire::get_u64(b, "commit_offsets.offset")?,
                    })
                })?,
            },
            tag @ push::TAG_CREATE_PUSH..=push::TAG_REPLAY_PUSH => {
                Command::Push(PushCommand::decode(tag, buf)?)
            }
            other => {
                return Err(DecodeError::Invalid {
                    what: "command.tag",
                    detail: format!("{other}"),
                })
            }
        })
    }

    /// The command at `position` of an encoded merged [`Command::Batch`], decoding only that
    /// one (the others are skipped by their length prefixes). `None` when `buf` holds no batch
    /// or the batch is shorter.
    pub fn decode_nth_of_batch(buf: &mut Bytes, position: u32) -> DecodeResult<Option<Command>> {
        if wire::get_u8(buf, "command.tag")? != TAG_BATCH {
            return Ok(None);
        }
        let count = wire::get_u32(buf, "batch")?;
        if position >= count {
            return Ok(None);
        }
        for _ in 0..position {
            let len = wire::get_u32(buf, "batch.command")? as usize;
            if buf.len() < len {
                return Err(DecodeError::Invalid {
                    what: "batch.command",
                    detail: format!("length {len} beyond the entry"),
                });
            }
            let _ = buf.split_to(len);
        }
        let mut one = wire::get_bytes(buf, "batch.command")?;
        Command::decode(&mut one).map(Some)
    }

    /// Rough encoded size, for buffer pre-sizing.
    pub fn encoded_len_hint(&self) -> usize {
        match self {
            Command::CreateTopic { name, .. } | Command::DeleteTopic { name } => 24 + name.len(),
            Command::Produce { topic, batch, .. } => 16 + topic.len() + batch.len(),
            Command::ProduceIdempotent { topic, batch, .. } => 28 + topic.len() + batch.len(),
            Command::ExpireDedup { entries } => {
                8 + entries.iter().map(|(e, _)| 12 + e.len()).sum::<usize>()
            }
            Command::PutHalf { group, topic, batch, .. } => {
                40 + group.len() + topic.len() + batch.len()
            }
            Command::EndTransaction { .. } => 32,
            Command::RecordChecks { checks } => 8 + 25 * checks.len(),
            Command::ParkTransactions { txns, .. } | Command::PurgeTransactions { txns } => {
                16 + 16 * txns.len()
            }
            Command::Batch(commands) => {
                8 + commands.iter().map(|c| 4 + c.encoded_len_hint()).sum::<usize>()
            }
            Command::ProduceDelayed { topic, batch, .. } => 24 + topic.len() + batch.len(),
            Command::DeliverDelayed { items } => 8 + 16 * items.len(),
            Command::CommitOffsets { group, offsets, .. } => {
                16 + group.len() + offsets.iter().map(|o| 16 + o.topic.len()).sum::<usize>()
            }
            Command::Push(p) => p.encoded_len_hint(),
        }
    }
}

fn put_txn_due(buf: &mut BytesMut, t: &TxnDue) {
    buf.put_u64(t.txn_id.0);
    buf.put_u64(t.due_ms);
}

fn get_txn_due(buf: &mut Bytes) -> DecodeResult<TxnDue> {
    Ok(TxnDue {
        txn_id: TxnId(wire::get_u64(buf, "txn_due.txn_id")?),
        due_ms: wire::get_u64(buf, "txn_due.due_ms")?,
    })
}

/// What applying a command produced; returned to the proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResponse {
    /// Nothing to report (membership, blank, delete).
    Done,
    /// A topic was created with these partitions.
    TopicCreated,
    /// A batch was appended at `base_offset`.
    Produced {
        /// Offset of its first record; when every record was a duplicate, where the first
        /// was stored before.
        base_offset: Offset,
        /// Records appended.
        count: u32,
        /// Records dropped as already stored (idempotent produce).
        duplicates: u32,
    },
    /// A half message was stored (or found: a resent batch).
    HalfStored {
        /// Its transaction.
        txn_id: TxnId,
        /// Leader clock when it was first stored.
        created_ms: u64,
    },
    /// A transaction decision was applied (or had been, identically).
    TxnEnded {
        /// The state now.
        state: TxnState,
        /// The same decision had been taken before: nothing changed.
        repeated: bool,
        /// Base offset of the committed batch.
        offset: Option<Offset>,
        /// When the half message was stored (for the half-to-decision histogram).
        created_ms: u64,
    },
    /// A different decision was taken before; the transaction stays as it is.
    TxnAlreadyResolved {
        /// Its state.
        state: TxnState,
    },
    /// A delayed batch was stored; it is appended to its partition once due.
    Scheduled {
        /// When it becomes visible.
        deliver_at_ms: u64,
        /// Records in it.
        count: u32,
    },
    /// Due delayed messages were handled.
    DelayedDelivered {
        /// Batches appended by this command (ids already delivered are not counted).
        batches: u32,
        /// Records in them.
        records: u64,
        /// Messages dropped because their topic was deleted meanwhile.
        dropped: u32,
    },
    /// One response per command of a [`Command::Batch`], in order.
    Batch(Vec<CommandResponse>),
    /// Failed push messages scheduled again.
    PushReplayed {
        /// How many.
        replayed: u32,
    },
    /// The command was valid Raft-wise but refused by the state machine (e.g. unknown topic).
    /// Deterministic: every replica refuses it the same way.
    Rejected {
        /// Why, as a wire code.
        code: ErrorCode,
        /// Detail for people.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_command_of_a_merged_entry_decodes_alone() {
        let parts: Vec<Command> = (0..5u32)
            .map(|i| Command::Produce {
                topic: format!("t{i}"),
                partition: i,
                batch: Bytes::from(vec![b'x'; i as usize]),
            })
            .collect();
        let mut buf = BytesMut::new();
        Command::Batch(parts.clone()).encode(&mut buf);
        let bytes = buf.freeze();
        for (i, want) in parts.iter().enumerate() {
            let got = Command::decode_nth_of_batch(&mut bytes.clone(), i as u32).unwrap();
            assert_eq!(got.as_ref(), Some(want));
        }
        assert_eq!(Command::decode_nth_of_batch(&mut bytes.clone(), 5).unwrap(), None);
        let mut single = BytesMut::new();
        parts[0].encode(&mut single);
        assert_eq!(Command::decode_nth_of_batch(&mut single.freeze(), 0).unwrap(), None);
        assert!(Command::decode_nth_of_batch(&mut bytes.slice(..20), 3).is_err(), "cut short");
    }

    #[test]
    fn commands_round_trip() {
        for c in [
            Command::CreateTopic { name: "a".into(), partitions: 3, created_ms: 5 },
            Command::DeleteTopic { name: "a".into() },
            Command::Produce { topic: "a".into(), partition: 1, batch: Bytes::from_static(b"xy") },
            Command::ProduceIdempotent {
                topic: "a".into(),
                partition: 2,
                stamped_ms: 77,
                record_ids: true,
                batch: Bytes::from_static(b"xyz"),
            },
            Command::ExpireDedup {
                entries: vec![(Bytes::from_static(b"k1"), 5), (Bytes::from_static(b""), 6)],
            },
            Command::PutHalf {
                group: "g".into(),
                topic: "t".into(),
                partition: 2,
                check_timeout_ms: 6000,
                created_ms: 9,
                batch: Bytes::from_static(b"b"),
            },
            Command::EndTransaction {
                txn_id: TxnId(4),
                commit: true,
                origin: DecisionOrigin::CheckBack,
                decided_ms: 5,
                purge_at_ms: 6,
            },
            Command::RecordChecks {
                checks: vec![CheckRecord {
                    txn_id: TxnId(1),
                    expected_due_ms: 2,
                    counted: true,
                    next_check_ms: 3,
                }],
            },
            Command::ParkTransactions {
                parked_ms: 3,
                txns: vec![TxnDue { txn_id: TxnId(1), due_ms: 2 }],
            },
            Command::PurgeTransactions { txns: vec![TxnDue { txn_id: TxnId(8), due_ms: 7 }] },
            Command::CommitOffsets {
                group: "g".into(),
                committed_ms: 5,
                offsets: vec![
                    GroupOffset { topic: "t".into(), partition: 1, offset: 9 },
                    GroupOffset { topic: "__retry.g.t".into(), partition: 0, offset: 0 },
                ],
            },
            Command::Batch(vec![
                Command::DeleteTopic { name: "a".into() },
                Command::Produce {
                    topic: "a".into(),
                    partition: 0,
                    batch: Bytes::from_static(b"z"),
                },
            ]),
            Command::ProduceDelayed {
                topic: "d".into(),
                partition: 4,
                deliver_at_ms: 1_700_000_000_000,
                batch: Bytes::from_static(b"later"),
            },
            Command::DeliverDelayed {
                items: vec![DelayedDue { id: 1, due_ms: 5 }, DelayedDue { id: 2, due_ms: 5 }],
            },
            Command::DeliverDelayed { items: vec![] },
            Command::Batch(vec![
                Command::ProduceDelayed {
                    topic: "d".into(),
                    partition: 0,
                    deliver_at_ms: 9,
                    batch: Bytes::from_static(b"z"),
                },
                Command::DeliverDelayed { items: vec![DelayedDue { id: 7, due_ms: 8 }] },
            ]),
        ] {
            let mut buf = BytesMut::new();
            c.encode(&mut buf);
            let mut bytes = buf.freeze();
            assert_eq!(Command::decode(&mut bytes).unwrap(), c);
            assert!(bytes.is_empty());
        }
    }

    #[test]
    fn truncated_delayed_commands_are_refused() {
        for c in [
            Command::ProduceDelayed {
                topic: "d".into(),
                partition: 1,
                deliver_at_ms: 2,
                batch: Bytes::from_static(b"abc"),
            },
            Command::DeliverDelayed { items: vec![DelayedDue { id: 1, due_ms: 2 }] },
        ] {
            let mut buf = BytesMut::new();
            c.encode(&mut buf);
            let whole = buf.freeze();
            for cut in 0..whole.len() {
                assert!(Command::decode(&mut whole.slice(..cut)).is_err(), "{c:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn nested_batches_are_refused() {
        let inner = Command::Batch(vec![Command::DeleteTopic { name: "a".into() }]);
        let mut buf = BytesMut::new();
        Command::Batch(vec![inner]).encode(&mut buf);
        assert!(Command::decode(&mut buf.freeze()).is_err());
    }
}
