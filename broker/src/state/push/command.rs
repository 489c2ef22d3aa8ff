//! The push commands' encoding (tags 15–18 of the state machine's `Command`).

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::wire::{self, DecodeError, DecodeResult};

use super::{Alteration, AttemptResult, Outcome, SubRecord};

/// The push commands (tags 15–18 of [`super::command::Command`]).
///
/// ```text
///  15 CreatePush   name:string | sub fields as in SubRecord (id, counters, cursors ignored)
///                  | start_at_end:bool
///  16 AlterPush    name:string | sub_id:u64 | stamped_ms:u64 | kind:u8 | text:string
///                  | until_ms:u64
///  17 PushResults  name:string | sub_id:u64 | stamped_ms:u64 | count:u32
///                  | (partition:u32 | offset:u64 | first:bool | expected_due_ms:u64
///                  |  outcome:u8 | next_attempt_ms:u64 | status:u16 | error:string)*
///  18 ReplayPush   name:string | sub_id:u64 | stamped_ms:u64 | count:u32
///                  | (partition:u32 | offset:u64)*
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushCommand {
    /// Create a subscription.
    Create {
        /// The new subscription (its id is assigned in apply).
        sub: Box<SubRecord>,
        /// Start every partition's cursor at its high watermark at apply time.
        start_at_end: bool,
    },
    /// Pause, resume, delete, rotate, disable.
    Alter {
        /// Subscription name.
        name: String,
        /// The id it must still have (0: any).
        sub_id: u64,
        /// Leader clock.
        stamped_ms: u64,
        /// The change.
        change: Alteration,
    },
    /// Attempt results from the leader's worker.
    Results {
        /// Subscription name.
        name: String,
        /// The id the worker delivered for.
        sub_id: u64,
        /// Leader clock (the attempts' end time).
        stamped_ms: u64,
        /// Results in the order they arrived.
        results: Vec<AttemptResult>,
    },
    /// Failed messages to send again.
    Replay {
        /// Subscription name.
        name: String,
        /// The id the handler read the records under.
        sub_id: u64,
        /// Leader clock: when the replayed messages become due.
        stamped_ms: u64,
        /// (partition, offset) of failed messages.
        messages: Vec<(u32, u64)>,
    },
}

/// Command tags (see `command.rs`).
pub const TAG_CREATE_PUSH: u8 = 15;
/// See [`PushCommand::Alter`].
pub const TAG_ALTER_PUSH: u8 = 16;
/// See [`PushCommand::Results`].
pub const TAG_PUSH_RESULTS: u8 = 17;
/// See [`PushCommand::Replay`].
pub const TAG_REPLAY_PUSH: u8 = 18;

impl PushCommand {
    /// Writes tag and body.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            PushCommand::Create { sub, start_at_end } => {
                buf.put_u8(TAG_CREATE_PUSH);
                wire::put_string(buf, &sub.name);
                wire::put_bytes(buf, &sub.encode());
                wire::put_bool(buf, *start_at_end);
            }
            PushCommand::Alter { name, sub_id, stamped_ms, change } => {
                buf.put_u8(TAG_ALTER_PUSH);
                wire::put_string(buf, name);
                buf.put_u64(*sub_id);
                buf.put_u64(*stamped_ms);
                let (kind, text, until) = match change {
                    Alteration::Pause => (1u8, "", 0),
                    Alteration::Resume => (2, "", 0),
                    Alteration::Delete => (3, "", 0),
                    Alteration::Rotate { secret, until_ms } => (4, secret.as_str(), *until_ms),
                    Alteration::Disable { reason } => (5, reason.as_str(), 0),
                };
                buf.put_u8(kind);
                wire::put_string(buf, text);
                buf.put_u64(until);
            }
            PushCommand::Results { name, sub_id, stamped_ms, results } => {
                buf.put_u8(TAG_PUSH_RESULTS);
                wire::put_string(buf, name);
                buf.put_u64(*sub_id);
                buf.put_u64(*stamped_ms);
                wire::put_array(buf, results, |b, r| {
                    b.put_u32(r.partition);
                    b.put_u64(r.offset);
                    wire::put_bool(b, r.first);
                    b.put_u64(r.expected_due_ms);
                    b.put_u8(r.outcome as u8);
                    b.put_u64(r.next_attempt_ms);
                    b.put_u16(r.status);
                    wire::put_string(b, &r.error);
                });
            }
            PushCommand::Replay { name, sub_id, stamped_ms, messages } => {
                buf.put_u8(TAG_REPLAY_PUSH);
                wire::put_string(buf, name);
                buf.put_u64(*sub_id);
                buf.put_u64(*stamped_ms);
                wire::put_array(buf, messages, |b, (p, o)| {
                    b.put_u32(*p);
                    b.put_u64(*o);
                });
            }
        }
    }

    /// Reads the body of a command whose tag was `tag`.
    pub fn decode(tag: u8, buf: &mut Bytes) -> DecodeResult<PushCommand> {
        let name = wire::get_string(buf, "push.name")?;
        Ok(match tag {
            TAG_CREATE_PUSH => {
                let body = wire::get_bytes(buf, "create_push.sub")?;
                let sub = SubRecord::decode(name, body)?;
                let start_at_end = wire::get_bool(buf, "create_push.start_at_end")?;
                PushCommand::Create { sub: Box::new(sub), start_at_end }
            }
            TAG_ALTER_PUSH => {
                let sub_id = wire::get_u64(buf, "alter_push.sub_id")?;
                let stamped_ms = wire::get_u64(buf, "alter_push.stamped_ms")?;
                let kind = wire::get_u8(buf, "alter_push.kind")?;
                let text = wire::get_string(buf, "alter_push.text")?;
                let until_ms = wire::get_u64(buf, "alter_push.until_ms")?;
                let change = match kind {
                    1 => Alteration::Pause,
                    2 => Alteration::Resume,
                    3 => Alteration::Delete,
                    4 => Alteration::Rotate { secret: text, until_ms },
                    5 => Alteration::Disable { reason: text },
                    other => {
                        return Err(DecodeError::Invalid {
                            what: "alter_push.kind",
                            detail: format!("{other}"),
                        })
                    }
                };
                PushCommand::Alter { name, sub_id, stamped_ms, change }
            }
            TAG_PUSH_RESULTS => PushCommand::Results {
                name,
                sub_id: wire::get_u64(buf, "push_results.sub_id")?,
                stamped_ms: wire::get_u64(buf, "push_results.stamped_ms")?,
                results: wire::get_array(buf, "push_results", 36, |b| {
                    let partition = wire::get_u32(b, "result.partition")?;
                    let offset = wire::get_u64(b, "result.offset")?;
                    let first = wire::get_bool(b, "result.first")?;
                    let expected_due_ms = wire::get_u64(b, "result.expected_due_ms")?;
                    let outcome = match wire::get_u8(b, "result.outcome")? {
                        0 => Outcome::Delivered,
                        1 => Outcome::Retry,
                        2 => Outcome::Failed,
                        other => {
                            return Err(DecodeError::Invalid {
                                what: "result.outcome",
                                detail: format!("{other}"),
                            })
                        }
                    };
                    Ok(AttemptResult {
                        partition,
                        offset,
                        first,
                        expected_due_ms,
                        outcome,
                        next_attempt_ms: wire::get_u64(b, "result.next_attempt_ms")?,
                        status: wire::get_u16(b, "result.status")?,
                        error: wire::get_string(b, "result.error")?,
                    })
                })?,
            },
            TAG_REPLAY_PUSH => PushCommand::Replay {
                name,
                sub_id: wire::get_u64(buf, "replay_push.sub_id")?,
                stamped_ms: wire::get_u64(buf, "replay_push.stamped_ms")?,
                messages: wire::get_array(buf, "replay_push.messages", 12, |b| {
                    Ok((wire::get_u32(b, "replay.partition")?, wire::get_u64(b, "replay.offset")?))
                })?,
            },
            other => {
                return Err(DecodeError::Invalid {
                    what: "command.tag",
                    detail: format!("{other}"),
                })
            }
        })
    }

    /// About how many bytes the command encodes to.
    pub fn encoded_len_hint(&self) -> usize {
        match self {
            PushCommand::Create { sub, .. } => 256 + sub.url.len() + sub.topic.len(),
            PushCommand::Alter { name, .. } => 128 + name.len(),
            PushCommand::Results { name, results, .. } => {
                32 + name.len() + results.iter().map(|r| 40 + r.error.len()).sum::<usize>()
            }
            PushCommand::Replay { name, messages, .. } => 32 + name.len() + 12 * messages.len(),
        }
    }
}
