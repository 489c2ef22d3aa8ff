//! Operation codes and error codes: the numbers on the wire. Both are append-only.

use std::fmt;

/// The operation a request asks for.
///
/// On the wire as `u16`. **Append-only**: never renumber or reuse a value; only add at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ApiKey {
    /// First request on every connection: versions, identity, auth.
    Handshake = 0,
    /// Append a record batch to a partition.
    Produce = 1,
    /// Read record batches from a partition (long-poll).
    Fetch = 2,
    /// Create a topic.
    CreateTopic = 3,
    /// Delete a topic.
    DeleteTopic = 4,
    /// Topics, their partitions and watermarks.
    Metadata = 5,
    /// This node's view of the cluster.
    NodeStatus = 6,
    /// Add a node (learner, then voter).
    AddNode = 7,
    /// Remove a node from the voters.
    RemoveNode = 8,
    /// Raft append-entries (peers only).
    RaftAppend = 9,
    /// Raft vote (peers only).
    RaftVote = 10,
    /// Raft install-snapshot chunk (peers only).
    RaftSnapshot = 11,
    /// Store a half (prepared, invisible) message; returns its transaction id.
    SendHalf = 12,
    /// Commit or roll back a transaction, or answer a check-back with "unknown".
    EndTransaction = 13,
    /// Keeps a client's connection on the leader (transactional producers wait for checks).
    Heartbeat = 14,
    /// List transactions (open ones, or one by id), for operators.
    ListTransactions = 15,
    /// Transaction counts by state and producer group.
    TransactionStats = 16,
    /// Join or stay in a consumer group; answers with the partitions the member may read.
    GroupHeartbeat = 17,
    /// Leave a consumer group at once.
    LeaveGroup = 18,
    /// A group member commits the offsets it has processed.
    CommitOffsets = 19,
    /// An operator sets a group's offsets.
    ResetOffsets = 20,
    /// A group's members, committed offsets and lag.
    DescribeGroup = 21,
    /// Every consumer group.
    ListGroups = 22,
    /// The first offset at or after a time, per partition.
    OffsetsForTime = 23,
    /// Read batches from this node's own applied state, leader or not (admin clients only;
    /// for comparing replicas).
    ReadLocal = 24,
    /// Create a push (webhook) subscription.
    CreatePush = 25,
    /// List push subscriptions, or describe one.
    ListPush = 26,
    /// Pause, resume or delete a push subscription, or rotate its secret.
    AlterPush = 27,
    /// A push subscription's failed messages.
    ListPushFailed = 28,
    /// Send a push subscription's failed messages again.
    ReplayPush = 29,
}

impl ApiKey {
    /// Every key, in wire order.
    pub const ALL: [ApiKey; 30] = [
        ApiKey::Handshake,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::CreateTopic,
        ApiKey::DeleteTopic,
        ApiKey::Metadata,
        ApiKey::NodeStatus,
        ApiKey::AddNode,
        ApiKey::RemoveNode,
        ApiKey::RaftAppend,
        ApiKey::RaftVote,
        ApiKey::RaftSnapshot,
        ApiKey::SendHalf,
        ApiKey::EndTransaction,
        ApiKey::Heartbeat,
        ApiKey::ListTransactions,
        ApiKey::TransactionStats,
        ApiKey::GroupHeartbeat,
        ApiKey::LeaveGroup,
        ApiKey::CommitOffsets,
        ApiKey::ResetOffsets,
        ApiKey::DescribeGroup,
        ApiKey::ListGroups,
        ApiKey::OffsetsForTime,
        ApiKey::ReadLocal,
        ApiKey::CreatePush,
        ApiKey::ListPush,
        ApiKey::AlterPush,
        ApiKey::ListPushFailed,
        ApiKey::ReplayPush,
    ];

    /// The key for a wire value, if known.
    pub fn from_u16(value: u16) -> Option<ApiKey> {
        ApiKey::ALL.get(usize::from(value)).copied()
    }

    /// A short lowercase name, used as a metric label value.
    pub fn name(self) -> &'static str {
        match self {
            ApiKey::Handshake => "handshake",
            ApiKey::Produce => "produce",
            ApiKey::Fetch => "fetch",
            ApiKey::CreateTopic => "create_topic",
            ApiKey::DeleteTopic => "delete_topic",
            ApiKey::Metadata => "metadata",
            ApiKey::NodeStatus => "node_status",
            ApiKey::AddNode => "add_node",
            ApiKey::RemoveNode => "remove_node",
            ApiKey::RaftAppend => "raft_append",
            ApiKey::RaftVote => "raft_vote",
            ApiKey::RaftSnapshot => "raft_snapshot",
            ApiKey::SendHalf => "send_half",
            ApiKey::EndTransaction => "end_transaction",
            ApiKey::Heartbeat => "heartbeat",
            ApiKey::ListTransactions => "list_transactions",
            ApiKey::TransactionStats => "transaction_stats",
            ApiKey::GroupHeartbeat => "group_heartbeat",
            ApiKey::LeaveGroup => "leave_group",
            ApiKey::CommitOffsets => "commit_offsets",
            ApiKey::ResetOffsets => "reset_offsets",
            ApiKey::DescribeGroup => "describe_group",
            ApiKey::ListGroups => "list_groups",
            ApiKey::OffsetsForTime => "offsets_for_time",
            ApiKey::ReadLocal => "read_local",
            ApiKey::CreatePush => "create_push",
            ApiKey::ListPush => "list_push",
            ApiKey::AlterPush => "alter_push",
            ApiKey::ListPushFailed => "list_push_failed",
            ApiKey::ReplayPush => "replay_push",
        }
    }
}

/// The outcome of a request.
///
/// On the wire as `u16`. **Append-only**: never renumber or reuse a value; only add at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Success.
    None = 0,
    /// An unexpected server-side failure.
    Internal = 1,
    /// The request could not be decoded.
    Malformed = 2,
    /// No protocol version in common, or an api version the server does not speak.
    UnsupportedVersion = 3,
    /// This node is not the leader; the error carries the leader hint when known.
    NotLeader = 4,
    /// No leader is known right now (election in progress).
    NoLeader = 5,
    /// The topic does not exist.
    UnknownTopic = 6,
    /// A topic with that name exists already.
    TopicExists = 7,
    /// The partition does not exist in the topic.
    UnknownPartition = 8,
    /// A request field is out of range or inconsistent.
    InvalidArgument = 9,
    /// The requested offset is below the log start or above the high watermark.
    OffsetOutOfRange = 10,
    /// The operation did not finish in time; its outcome is unknown.
    Timeout = 11,
    /// The server is overloaded; back off and retry.
    Busy = 12,
    /// The first request on a connection must be a handshake.
    HandshakeRequired = 13,
    /// The server is shutting down.
    ShuttingDown = 14,
    /// A membership change was refused (e.g. one is already in progress).
    MembershipChange = 15,
    /// The record batch failed its checksum or structure check.
    CorruptBatch = 16,
    /// Authentication failed or the mechanism is not supported.
    AuthFailed = 17,
    /// No transaction with that id (never existed, or purged after its retention period).
    UnknownTransaction = 18,
    /// The transaction was already decided the other way; the error body carries its state.
    TransactionAlreadyResolved = 19,
    /// No consumer group by that name (no live member, no committed offset).
    UnknownGroup = 20,
    /// The leader does not know this group member (it timed out, or the leader changed):
    /// heartbeat to join again, then retry.
    UnknownMember = 21,
    /// The member does not hold that partition (it was revoked or never assigned).
    NotAssigned = 22,
    /// The group has live members; the operation needs `force`.
    GroupHasMembers = 23,
    /// No push subscription by that name.
    UnknownSubscription = 24,
    /// A push subscription with that name exists already.
    SubscriptionExists = 25,
}

impl ErrorCode {
    /// Every code, in wire order.
    pub const ALL: [ErrorCode; 26] = [
        ErrorCode::None,
        ErrorCode::Internal,
        ErrorCode::Malformed,
        ErrorCode::UnsupportedVersion,
        ErrorCode::NotLeader,
        ErrorCode::NoLeader,
        ErrorCode::UnknownTopic,
        ErrorCode::TopicExists,
        ErrorCode::UnknownPartition,
        ErrorCode::InvalidArgument,
        ErrorCode::OffsetOutOfRange,
        ErrorCode::Timeout,
        ErrorCode::Busy,
        ErrorCode::HandshakeRequired,
        ErrorCode::ShuttingDown,
        ErrorCode::MembershipChange,
        ErrorCode::CorruptBatch,
        ErrorCode::AuthFailed,
        ErrorCode::UnknownTransaction,
        ErrorCode::TransactionAlreadyResolved,
        ErrorCode::UnknownGroup,
        ErrorCode::UnknownMember,
        ErrorCode::NotAssigned,
        ErrorCode::GroupHasMembers,
        ErrorCode::UnknownSubscription,
        ErrorCode::SubscriptionExists,
    ];

    /// The code for a wire value, if known.
    pub fn from_u16(value: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.get(usize::from(value)).copied()
    }

    /// Whether sending the same request again (possibly to another node) may succeed.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::NoLeader
                | ErrorCode::Timeout
                | ErrorCode::Busy
                | ErrorCode::ShuttingDown
        )
    }

    /// What the code means, for people.
    pub fn description(self) -> &'static str {
        match self {
            ErrorCode::None => "success",
            ErrorCode::Internal => "internal server error",
            ErrorCode::Malformed => "malformed request",
            ErrorCode::UnsupportedVersion => "unsupported protocol or api version",
            ErrorCode::NotLeader => "this node is not the leader",
            ErrorCode::NoLeader => "no leader is known (election in progress)",
            ErrorCode::UnknownTopic => "unknown topic",
            ErrorCode::TopicExists => "topic already exists",
            ErrorCode::UnknownPartition => "unknown partition",
            ErrorCode::InvalidArgument => "invalid argument",
            ErrorCode::OffsetOutOfRange => "offset out of range",
            ErrorCode::Timeout => "timed out; the outcome is unknown",
            ErrorCode::Busy => "server busy; back off and retry",
            ErrorCode::HandshakeRequired => "handshake required first",
            ErrorCode::ShuttingDown => "server shutting down",
            ErrorCode::MembershipChange => "membership change refused",
            ErrorCode::CorruptBatch => "record batch failed its checksum",
            ErrorCode::AuthFailed => "authentication failed",
            ErrorCode::UnknownTransaction => "unknown transaction",
            ErrorCode::TransactionAlreadyResolved => "transaction already resolved the other way",
            ErrorCode::UnknownGroup => "unknown consumer group",
            ErrorCode::UnknownMember => "unknown group member; join again",
            ErrorCode::NotAssigned => "partition not assigned to this member",
            ErrorCode::GroupHasMembers => "the group has live members",
            ErrorCode::UnknownSubscription => "unknown push subscription",
            ErrorCode::SubscriptionExists => "push subscription already exists",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_match_positions() {
        for (i, key) in ApiKey::ALL.iter().enumerate() {
            assert_eq!(*key as u16 as usize, i);
            assert_eq!(ApiKey::from_u16(*key as u16), Some(*key));
        }
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as u16 as usize, i);
            assert_eq!(ErrorCode::from_u16(*code as u16), Some(*code));
        }
        assert_eq!(ApiKey::from_u16(ApiKey::ALL.len() as u16), None);
        assert_eq!(ErrorCode::from_u16(ErrorCode::ALL.len() as u16), None);
    }

    #[test]
    fn retriable_codes() {
        assert!(ErrorCode::NotLeader.is_retriable());
        assert!(!ErrorCode::UnknownTopic.is_retriable());
        assert!(!ErrorCode::None.is_retriable());
    }
}
