//! The history a chaos run records: one JSON object per line, written by every workload client
//! as it invokes an operation and as it learns the outcome, then read back by the checker.
//!
//! ```text
//! {"t":1234,"client":"p1","op":"invoke","f":"send","msg":"p1-17","partition":2}
//! {"t":1240,"client":"p1","op":"ok","f":"send","msg":"p1-17","partition":2,"offset":88}
//! ```
//!
//! `msg` is the message id: unique per run, and the payload of the message (the checker finds
//! it again in what was read). Outcomes: `ok` (the broker acknowledged), `fail` (definitely
//! not done: the broker refused it, nothing was stored), `info` (unknown: a timeout or a lost
//! connection; it may or may not have happened).

use serde::{Deserialize, Serialize};

/// What a history line records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// The client starts the operation.
    Invoke,
    /// Acknowledged by the broker.
    Ok,
    /// Refused: certainly not done.
    Fail,
    /// Outcome unknown (timeout, connection lost, client crashed).
    Info,
}

/// The operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Func {
    /// A plain produce of one message (`msg`, `partition`; `offset` on ok).
    Send,
    /// A half message of a transaction (`msg`, `txn` on ok, `partition`).
    SendHalf,
    /// A commit of transaction `txn` (message `msg`); `offset` on ok.
    Commit,
    /// A rollback of transaction `txn` (message `msg`).
    Rollback,
    /// A check-back answered by a transactional producer: `decision` says what it answered
    /// (`commit`, `rollback`, `unknown`) for `txn` / `msg`. Only `ok` lines.
    CheckBack,
    /// A group consumer received `msg` from (`partition`, `offset`) of the topic (attempt in
    /// `attempt`). Only `ok` lines; `node` is not known.
    Receive,
    /// The final read after healing: message `msg` stored at (`partition`, `offset`) on node
    /// `node`. Only `ok` lines.
    Read,
}

/// One history line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the run started.
    pub t: u64,
    /// The client (or "checker" for final reads).
    pub client: String,
    /// invoke / ok / fail / info.
    pub op: Op,
    /// The operation.
    pub f: Func,
    /// Message id (also its payload).
    pub msg: String,
    /// Transaction id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<u64>,
    /// Partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// Offset in the partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The node that served a read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u64>,
    /// A check-back answer (`commit`, `rollback`, `unknown`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<String>,
    /// Delivery attempt of a receive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// Error text of a fail / info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    /// An event with only the required fields set.
    pub fn new(t: u64, client: &str, op: Op, f: Func, msg: &str) -> Event {
        Event {
            t,
            client: client.to_string(),
            op,
            f,
            msg: msg.to_string(),
            txn: None,
            partition: None,
            offset: None,
            node: None,
            decision: None,
            attempt: None,
            error: None,
        }
    }
}
