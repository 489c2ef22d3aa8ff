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
display_inner!(NodeId, PartitionIndex, Offset);

impl Offset {
    /// The offset after this one.
    pub fn next(self) -> Offset {
        Offset(self.0.saturating_add(1))
    }
}
