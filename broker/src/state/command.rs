//! `Command`: the payload of a normal Raft entry. One entry carries one whole producer batch,
//! never one message. Tags are on disk: explicit and append-only.
//!
//! ```text
//! command := tag:u8 | body
//!   1 CreateTopic  name:string | partitions:u32 | created_ms:u64
//!   2 DeleteTopic  name:string
//!   3 Produce      topic:string | partition:u32 | batch:bytes
//! ```
//!
//! Times inside commands are stamped by the leader: the state machine reads no clock.

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::wire::{self, DecodeError, DecodeResult};
use ferry_protocol::{ErrorCode, Offset};

const TAG_CREATE_TOPIC: u8 = 1;
const TAG_DELETE_TOPIC: u8 = 2;
const TAG_PRODUCE: u8 = 3;

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
            other => {
                return Err(DecodeError::Invalid {
                    what: "command.tag",
                    detail: format!("{other}"),
                })
            }
        })
    }

    /// Rough encoded size, for buffer pre-sizing.
    pub fn encoded_len_hint(&self) -> usize {
        match self {
            Command::CreateTopic { name, .. } | Command::DeleteTopic { name } => 24 + name.len(),
            Command::Produce { topic, batch, .. } => 16 + topic.len() + batch.len(),
        }
    }
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
        /// Offset of its first record.
        base_offset: Offset,
        /// Records in it.
        count: u32,
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
    fn commands_round_trip() {
        for c in [
            Command::CreateTopic { name: "a".into(), partitions: 3, created_ms: 5 },
            Command::DeleteTopic { name: "a".into() },
            Command::Produce { topic: "a".into(), partition: 1, batch: Bytes::from_static(b"xy") },
        ] {
            let mut buf = BytesMut::new();
            c.encode(&mut buf);
            let mut bytes = buf.freeze();
            assert_eq!(Command::decode(&mut bytes).unwrap(), c);
            assert!(bytes.is_empty());
        }
    }
}
