//! Newtypes for ids and positions, so no bare integer crosses a module boundary.

use std::fmt;

/// A broker node's id in the cluster (non-zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub u64);

/// A partition's index inside its topic (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PartitionIndex(pub u32);

/// A record's position in its partition (0-based, dense).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Offset(pub u64);

/// A transaction's id: assigned in order (1, 2, 3, ...) by the replicated state when the half
/// message is stored, so it is unique in the cluster for ever and grows with time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TxnId(pub u64);

/// Where a transaction stands.
///
/// On the wire and on disk as `u8`; append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TxnState {
    /// Half message stored, no decision yet; check-backs run.
    Pending = 1,
    /// Committed: the message is in its partition.
    Committed = 2,
    /// Rolled back: the message never becomes visible.
    RolledBack = 3,
    /// Checks exhausted without a decision; waits for an operator (or a late decision).
    Parked = 4,
}

impl TxnState {
    /// The state for a wire value.
    pub fn from_u8(value: u8) -> Option<TxnState> {
        match value {
            1 => Some(TxnState::Pending),
            2 => Some(TxnState::Committed),
            3 => Some(TxnState::RolledBack),
            4 => Some(TxnState::Parked),
            _ => None,
        }
    }

    /// True once committed or rolled back: such a state never changes again.
    pub fn is_decided(self) -> bool {
        matches!(self, TxnState::Committed | TxnState::RolledBack)
    }

    /// A short lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Pending => "pending",
            TxnState::Committed => "committed",
            TxnState::RolledBack => "rolled_back",
            TxnState::Parked => "parked",
        }
    }
}

impl fmt::Display for TxnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a producer, a checker or an operator says about a transaction.
///
/// On the wire as `u8`; append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Decision {
    /// Make the message visible.
    Commit = 1,
    /// Discard the message.
    Rollback = 2,
    /// A check-back answer: the local transaction's outcome is not known yet; check again.
    Unknown = 3,
}

impl Decision {
    /// The decision for a wire value.
    pub fn from_u8(value: u8) -> Option<Decision> {
        match value {
            1 => Some(Decision::Commit),
            2 => Some(Decision::Rollback),
            3 => Some(Decision::Unknown),
            _ => None,
        }
    }
}

/// Who decided a transaction.
///
/// On the wire and on disk as `u8`; append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DecisionOrigin {
    /// The producer that sent the half message (or its library, after the local transaction).
    Producer = 1,
    /// A producer of the group answering a check-back.
    CheckBack = 2,
    /// An operator through `ferryctl txn commit|rollback`.
    Operator = 3,
    /// The broker, after the last check-back went unanswered (`txn_check_exhausted = rollback`).
    ChecksExhausted = 4,
}

impl DecisionOrigin {
    /// The origin for a wire value.
    pub fn from_u8(value: u8) -> Option<DecisionOrigin> {
        match value {
            1 => Some(DecisionOrigin::Producer),
            2 => Some(DecisionOrigin::CheckBack),
            3 => Some(DecisionOrigin::Operator),
            4 => Some(DecisionOrigin::ChecksExhausted),
            _ => None,
        }
    }

    /// A short lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            DecisionOrigin::Producer => "producer",
            DecisionOrigin::CheckBack => "check_back",
            DecisionOrigin::Operator => "operator",
            DecisionOrigin::ChecksExhausted => "checks_exhausted",
        }
    }
}

/// Who is on the other end of a connection.
///
/// On the wire as `u8`; append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ClientKind {
    /// Sends messages.
    Producer = 0,
    /// Reads messages.
    Consumer = 1,
    /// Administers the cluster.
    Admin = 2,
    /// Another broker (Raft traffic).
    Peer = 3,
}

impl ClientKind {
    /// The kind for a wire value.
    pub fn from_u8(value: u8) -> Option<ClientKind> {
        match value {
            0 => Some(ClientKind::Producer),
            1 => Some(ClientKind::Consumer),
            2 => Some(ClientKind::Admin),
            3 => Some(ClientKind::Peer),
            _ => None,
        }
    }
}

macro_rules! display_inner {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    )*};
}
display_inner!(NodeId, PartitionIndex, Offset, TxnId);

impl Offset {
    /// The offset after this one.
    pub fn next(self) -> Offset {
        Offset(self.0.saturating_add(1))
    }
}

/// Checks a name of 1..=`max` bytes made of ASCII letters, digits and the characters in
/// `punctuation`; `what` names it in the error ("group name", "subscription name").
pub fn validate_name(what: &str, name: &str, max: usize, punctuation: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > max {
        return Err(format!("{what} must be 1..={max} bytes"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || punctuation.contains(*c)))
    {
        return Err(format!("{what} may only hold [A-Za-z0-9{punctuation}], found {c:?}"));
    }
    Ok(())
}
