//! Consumer groups: membership heartbeats, partition assignment, committed offsets, and the
//! operator views (list, describe, reset).
//!
//! A consumer joins a group for one topic by sending [`GroupHeartbeatRequest`] to the leader
//! with an empty member id, then heartbeats with the id it got back and the partitions it still
//! holds. The leader answers with the partitions the member may read. A partition moves to
//! another member only after its previous holder stopped reporting it (or its session timed
//! out), so two live members never read one partition at the same time.
//!
//! Redelivery and dead letters use two ordinary topics per group, named by [`retry_topic`] and
//! [`dead_letter_topic`]; the headers in [`headers`] say where a redelivered or dead-lettered
//! message came from.

use bytes::{BufMut, Bytes, BytesMut};

use crate::api::ApiKey;
use crate::messages::{Empty, Request};
use crate::types::{Offset, PartitionIndex};
use crate::wire::{self, Decode, DecodeResult, Encode};

/// Longest consumer group name.
pub const GROUP_NAME_BYTES_MAX: usize = 100;

/// Prefix of every retry topic; names starting with `__` are reserved for ferrymq.
pub const RETRY_TOPIC_PREFIX: &str = "__retry.";

/// Prefix of every dead-letter topic.
pub const DEAD_LETTER_TOPIC_PREFIX: &str = "__dlq.";

/// Checks a consumer group name: 1..=100 chars of `[A-Za-z0-9_-]` (no dot, so the retry topic
/// name `__retry.<group>.<topic>` reads back unambiguously).
pub fn validate_group_name(name: &str) -> Result<(), String> {
    crate::types::validate_name("group name", name, GROUP_NAME_BYTES_MAX, "_-")
}

/// The topic holding `group`'s redeliveries of messages from `topic`; it has as many
/// partitions as `topic`, and a redelivery goes to the partition its message came from.
pub fn retry_topic(group: &str, topic: &str) -> String {
    format!("{RETRY_TOPIC_PREFIX}{group}.{topic}")
}

/// The group and origin topic of a retry topic name.
pub fn parse_retry_topic(name: &str) -> Option<(&str, &str)> {
    name.strip_prefix(RETRY_TOPIC_PREFIX)?.split_once('.')
}

/// The topic holding `group`'s dead letters (one partition).
pub fn dead_letter_topic(group: &str) -> String {
    format!("{DEAD_LETTER_TOPIC_PREFIX}{group}")
}

/// The group of a dead-letter topic name.
pub fn parse_dead_letter_topic(name: &str) -> Option<&str> {
    name.strip_prefix(DEAD_LETTER_TOPIC_PREFIX)
}

/// Header names set on redelivered and dead-lettered messages. Values are UTF-8 text.
pub mod headers {
    /// Delivery attempt of a redelivered message (2 for the first redelivery).
    pub const ATTEMPT: &str = "ferry-attempt";
    /// Topic the message was first produced to.
    pub const ORIGIN_TOPIC: &str = "ferry-origin-topic";
    /// Partition the message was first produced to.
    pub const ORIGIN_PARTITION: &str = "ferry-origin-partition";
    /// Offset of the message in its origin partition.
    pub const ORIGIN_OFFSET: &str = "ferry-origin-offset";
    /// The consumer's last error (a nack reason, "ack timeout", or the `term` reason).
    pub const LAST_ERROR: &str = "ferry-last-error";
    /// When the message was dead-lettered, ms since the Unix epoch.
    pub const DEAD_LETTERED_MS: &str = "ferry-dead-lettered-ms";

    /// Whether `name` is one of ours (consumers hide them from application headers).
    pub fn is_internal(name: &str) -> bool {
        name.starts_with("ferry-")
    }
}

fn put_partitions(buf: &mut BytesMut, partitions: &[PartitionIndex]) {
    wire::put_array(buf, partitions, |b, p| b.put_u32(p.0));
}

fn get_partitions(buf: &mut Bytes, what: &'static str) -> DecodeResult<Vec<PartitionIndex>> {
    wire::get_array(buf, what, 4, |b| Ok(PartitionIndex(wire::get_u32(b, what)?)))
}

/// Join (empty `member_id`) or stay in a group; sent to the leader every heartbeat interval.
///
/// ```text
/// group_heartbeat := group:string | topic:string | member_id:string | client_id:string
///                    | session_timeout_ms:u32 | owned:array<u32> | in_flight:u32
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupHeartbeatRequest {
    /// Consumer group.
    pub group: String,
    /// The topic the member reads.
    pub topic: String,
    /// The id the leader gave this member; empty to join.
    pub member_id: String,
    /// Free-form identity for operators.
    pub client_id: String,
    /// The member is dropped when no heartbeat arrives for this long.
    pub session_timeout_ms: u32,
    /// Partitions the member still holds (reading or finishing in-flight work).
    pub owned: Vec<PartitionIndex>,
    /// Deliveries handed to the application and not yet settled.
    pub in_flight: u32,
}

impl Encode for GroupHeartbeatRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.group);
        wire::put_string(buf, &self.topic);
        wire::put_string(buf, &self.member_id);
        wire::put_string(buf, &self.client_id);
        buf.put_u32(self.session_timeout_ms);
        put_partitions(buf, &self.owned);
        buf.put_u32(self.in_flight);
    }
}

impl Decode for GroupHeartbeatRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(GroupHeartbeatRequest {
            group: wire::get_string(buf, "heartbeat.group")?,
            topic: wire::get_string(buf, "heartbeat.topic")?,
            member_id: wire::get_string(buf, "heartbeat.member_id")?,
            client_id: wire::get_string(buf, "heartbeat.client_id")?,
            session_timeout_ms: wire::get_u32(buf, "heartbeat.session_timeout_ms")?,
            owned: get_partitions(buf, "heartbeat.owned")?,
            in_flight: wire::get_u32(buf, "heartbeat.in_flight")?,
        })
    }
}

/// The member's id and the partitions it may read now.
///
/// ```text
/// group_heartbeat_resp := member_id:string | generation:u64 | partitions:u32
///                         | assigned:array<u32>
/// ```
///
/// A partition the member owns but that is missing from `assigned` is revoked: the member
/// stops reading it, settles or gives up its in-flight deliveries, commits, and stops reporting
/// it as owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupHeartbeatResponse {
    /// The member's id (new on join).
    pub member_id: String,
    /// Bumped on every membership change.
    pub generation: u64,
    /// Partitions the topic has.
    pub partitions: u32,
    /// Partitions this member may read.
    pub assigned: Vec<PartitionIndex>,
}

impl Encode for GroupHeartbeatResponse {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.member_id);
        buf.put_u64(self.generation);
        buf.put_u32(self.partitions);
        put_partitions(buf, &self.assigned);
    }
}

impl Decode for GroupHeartbeatResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(GroupHeartbeatResponse {
            member_id: wire::get_string(buf, "heartbeat.member_id")?,
            generation: wire::get_u64(buf, "heartbeat.generation")?,
            partitions: wire::get_u32(buf, "heartbeat.partitions")?,
            assigned: get_partitions(buf, "heartbeat.assigned")?,
        })
    }
}

impl Request for GroupHeartbeatRequest {
    const API_KEY: ApiKey = ApiKey::GroupHeartbeat;
    type Response = GroupHeartbeatResponse;
}

/// Leave a group at once (its partitions go to the others without waiting for the session
/// timeout).
///
/// ```text
/// leave_group := group:string | topic:string | member_id:string
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaveGroupRequest {
    /// Consumer group.
    pub group: String,
    /// The topic the member read.
    pub topic: String,
    /// The member.
    pub member_id: String,
}

impl Encode for LeaveGroupRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.group);
        wire::put_string(buf, &self.topic);
        wire::put_string(buf, &self.member_id);
    }
}

impl Decode for LeaveGroupRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(LeaveGroupRequest {
            group: wire::get_string(buf, "leave.group")?,
            topic: wire::get_string(buf, "leave.topic")?,
            member_id: wire::get_string(buf, "leave.member_id")?,
        })
    }
}

impl Request for LeaveGroupRequest {
    const API_KEY: ApiKey = ApiKey::LeaveGroup;
    type Response = Empty;
}

/// One committed position: the next offset the group will read in a partition.
///
/// ```text
/// offset_commit := topic:string | partition:u32 | offset:u64
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetCommit {
    /// The topic (the subscribed topic or its retry topic).
    pub topic: String,
    /// Partition inside the topic.
    pub partition: PartitionIndex,
    /// First offset not yet processed.
    pub offset: Offset,
}

fn put_commits(buf: &mut BytesMut, commits: &[OffsetCommit]) {
    wire::put_array(buf, commits, |b, c| {
        wire::put_string(b, &c.topic);
        b.put_u32(c.partition.0);
        b.put_u64(c.offset.0);
    });
}

fn get_commits(buf: &mut Bytes) -> DecodeResult<Vec<OffsetCommit>> {
    wire::get_array(buf, "commit.offsets", 16, |b| {
        Ok(OffsetCommit {
            topic: wire::get_string(b, "commit.topic")?,
            partition: PartitionIndex(wire::get_u32(b, "commit.partition")?),
            offset: Offset(wire::get_u64(b, "commit.offset")?),
        })
    })
}

/// A member commits its progress; replicated before the answer. Only partitions the member
/// holds may be committed.
///
/// ```text
/// commit_offsets := group:string | topic:string | member_id:string
///                   | offsets:array<offset_commit>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOffsetsRequest {
    /// Consumer group.
    pub group: String,
    /// The subscribed topic (offsets may name it or its retry topic).
    pub topic: String,
    /// The committing member.
    pub member_id: String,
    /// Positions to store.
    pub offsets: Vec<OffsetCommit>,
}

impl Encode for CommitOffsetsRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.group);
        wire::put_string(buf, &self.topic);
        wire::put_string(buf, &self.member_id);
        put_commits(buf, &self.offsets);
    }
}

impl Decode for CommitOffsetsRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(CommitOffsetsRequest {
            group: wire::get_string(buf, "commit.group")?,
            topic: wire::get_string(buf, "commit.topic")?,
            member_id: wire::get_string(buf, "commit.member_id")?,
            offsets: get_commits(buf)?,
        })
    }
}

impl Request for CommitOffsetsRequest {
    const API_KEY: ApiKey = ApiKey::CommitOffsets;
    type Response = Empty;
}

/// Operators set a group's positions (`ferryctl group reset-offsets --execute`). Refused with
/// `GroupHasMembers` while the group has live members, unless `force`.
///
/// ```text
/// reset_offsets := group:string | force:bool | offsets:array<offset_commit>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetOffsetsRequest {
    /// Consumer group.
    pub group: String,
    /// Apply even while members are connected (they may commit over it).
    pub force: bool,
    /// Positions to store.
    pub offsets: Vec<OffsetCommit>,
}

impl Encode for ResetOffsetsRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.group);
        wire::put_bool(buf, self.force);
        put_commits(buf, &self.offsets);
    }
}

impl Decode for ResetOffsetsRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ResetOffsetsRequest {
            group: wire::get_string(buf, "reset.group")?,
            force: wire::get_bool(buf, "reset.force")?,
            offsets: get_commits(buf)?,
        })
    }
}

impl Request for ResetOffsetsRequest {
    const API_KEY: ApiKey = ApiKey::ResetOffsets;
    type Response = Empty;
}

/// Describe one group: live members and committed positions with lag.
///
/// ```text
/// describe_group := group:string
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeGroupRequest {
    /// Consumer group.
    pub group: String,
}

impl Encode for DescribeGroupRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.group);
    }
}

impl Decode for DescribeGroupRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(DescribeGroupRequest { group: wire::get_string(buf, "describe.group")? })
    }
}

/// A live member as the leader sees it.
///
/// ```text
/// member_info := member_id:string | client_id:string | topic:string | assigned:array<u32>
///                | owned:array<u32> | in_flight:u32 | last_seen_ms_ago:u32
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Member id.
    pub member_id: String,
    /// The client's identity.
    pub client_id: String,
    /// Topic it reads.
    pub topic: String,
    /// Partitions the leader gives it.
    pub assigned: Vec<PartitionIndex>,
    /// Partitions it reported holding.
    pub owned: Vec<PartitionIndex>,
    /// Deliveries it has not settled.
    pub in_flight: u32,
    /// Time since its last heartbeat.
    pub last_seen_ms_ago: u32,
}

/// A committed position with the partition's bounds.
///
/// ```text
/// partition_offset := topic:string | partition:u32 | committed:option<u64> | committed_ms:u64
///                     | log_start:u64 | high_watermark:u64
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: PartitionIndex,
    /// Next offset the group reads; `None` when the group never committed here.
    pub committed: Option<Offset>,
    /// When it was committed (0 when never).
    pub committed_ms: u64,
    /// First offset stored.
    pub log_start: Offset,
    /// One past the last message.
    pub high_watermark: Offset,
}

impl PartitionOffset {
    /// Messages not yet processed by the group (from the log start when it never committed).
    pub fn lag(&self) -> u64 {
        let from = self.committed.unwrap_or(self.log_start).max(self.log_start);
        self.high_watermark.0.saturating_sub(from.0)
    }
}

/// ```text
/// describe_group_resp := group:string | generation:u64 | members:array<member_info>
///                        | offsets:array<partition_offset>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribeGroupResponse {
    /// Consumer group.
    pub group: String,
    /// Membership generation (0 when no member joined since this leader took over).
    pub generation: u64,
    /// Live members.
    pub members: Vec<MemberInfo>,
    /// Every partition of the topics the group reads or committed in, with its position.
    pub offsets: Vec<PartitionOffset>,
}

impl Encode for DescribeGroupResponse {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.group);
        buf.put_u64(self.generation);
        wire::put_array(buf, &self.members, |b, m| {
            wire::put_string(b, &m.member_id);
            wire::put_string(b, &m.client_id);
            wire::put_string(b, &m.topic);
            put_partitions(b, &m.assigned);
            put_partitions(b, &m.owned);
            b.put_u32(m.in_flight);
            b.put_u32(m.last_seen_ms_ago);
        });
        wire::put_array(buf, &self.offsets, |b, o| {
            wire::put_string(b, &o.topic);
            b.put_u32(o.partition.0);
            wire::put_option(b, o.committed.as_ref(), |b, c| b.put_u64(c.0));
            b.put_u64(o.committed_ms);
            b.put_u64(o.log_start.0);
            b.put_u64(o.high_watermark.0);
        });
    }
}

impl Decode for DescribeGroupResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(DescribeGroupResponse {
            group: wire::get_string(buf, "describe.group")?,
            generation: wire::get_u64(buf, "describe.generation")?,
            members: wire::get_array(buf, "describe.members", 24, |b| {
                Ok(MemberInfo {
                    member_id: wire::get_string(b, "member.id")?,
                    client_id: wire::get_string(b, "member.client_id")?,
                    topic: wire::get_string(b, "member.topic")?,
                    assigned: get_partitions(b, "member.assigned")?,
                    owned: get_partitions(b, "member.owned")?,
                    in_flight: wire::get_u32(b, "member.in_flight")?,
                    last_seen_ms_ago: wire::get_u32(b, "member.last_seen_ms_ago")?,
                })
            })?,
            offsets: wire::get_array(buf, "describe.offsets", 33, |b| {
                Ok(PartitionOffset {
                    topic: wire::get_string(b, "offset.topic")?,
                    partition: PartitionIndex(wire::get_u32(b, "offset.partition")?),
                    committed: wire::get_option(b, "offset.committed", |b| {
                        Ok(Offset(wire::get_u64(b, "offset.committed")?))
                    })?,
                    committed_ms: wire::get_u64(b, "offset.committed_ms")?,
                    log_start: Offset(wire::get_u64(b, "offset.log_start")?),
                    high_watermark: Offset(wire::get_u64(b, "offset.high_watermark")?),
                })
            })?,
        })
    }
}

impl Request for DescribeGroupRequest {
    const API_KEY: ApiKey = ApiKey::DescribeGroup;
    type Response = DescribeGroupResponse;
}

/// Every group with committed offsets or live members.
///
/// ```text
/// list_groups := (empty)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListGroupsRequest;

impl Encode for ListGroupsRequest {
    fn encode(&self, _buf: &mut BytesMut) {}
}

impl Decode for ListGroupsRequest {
    fn decode(_buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ListGroupsRequest)
    }
}

/// One group in a listing.
///
/// ```text
/// group_summary := group:string | topics:array<string> | members:u32 | lag:u64
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// Consumer group.
    pub group: String,
    /// Topics it reads or committed in (retry topics excluded).
    pub topics: Vec<String>,
    /// Live members.
    pub members: u32,
    /// Messages not yet processed, summed over its topics (retry topics included).
    pub lag: u64,
}

/// ```text
/// list_groups_resp := groups:array<group_summary>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListGroupsResponse {
    /// Groups by name.
    pub groups: Vec<GroupSummary>,
}

impl Encode for ListGroupsResponse {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_array(buf, &self.groups, |b, g| {
            wire::put_string(b, &g.group);
            wire::put_array(b, &g.topics, |b, t| wire::put_string(b, t));
            b.put_u32(g.members);
            b.put_u64(g.lag);
        });
    }
}

impl Decode for ListGroupsResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ListGroupsResponse {
            groups: wire::get_array(buf, "groups", 20, |b| {
                Ok(GroupSummary {
                    group: wire::get_string(b, "group.name")?,
                    topics: wire::get_array(b, "group.topics", 4, |b| {
                        wire::get_string(b, "group.topic")
                    })?,
                    members: wire::get_u32(b, "group.members")?,
                    lag: wire::get_u64(b, "group.lag")?,
                })
            })?,
        })
    }
}

impl Request for ListGroupsRequest {
    const API_KEY: ApiKey = ApiKey::ListGroups;
    type Response = ListGroupsResponse;
}

/// The first offset of each partition of `topic` whose message timestamp is at or after
/// `time_ms` (the high watermark when none is).
///
/// ```text
/// offsets_for_time := topic:string | time_ms:u64
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetsForTimeRequest {
    /// Topic.
    pub topic: String,
    /// Ms since the Unix epoch.
    pub time_ms: u64,
}

impl Encode for OffsetsForTimeRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.topic);
        buf.put_u64(self.time_ms);
    }
}

impl Decode for OffsetsForTimeRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(OffsetsForTimeRequest {
            topic: wire::get_string(buf, "offsets_for_time.topic")?,
            time_ms: wire::get_u64(buf, "offsets_for_time.time_ms")?,
        })
    }
}

/// ```text
/// offsets_for_time_resp := offsets:array<partition:u32 | offset:u64>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffsetsForTimeResponse {
    /// One per partition, in partition order.
    pub offsets: Vec<(PartitionIndex, Offset)>,
}

impl Encode for OffsetsForTimeResponse {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_array(buf, &self.offsets, |b, (p, o)| {
            b.put_u32(p.0);
            b.put_u64(o.0);
        });
    }
}

impl Decode for OffsetsForTimeResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(OffsetsForTimeResponse {
            offsets: wire::get_array(buf, "offsets_for_time.offsets", 12, |b| {
                Ok((
                    PartitionIndex(wire::get_u32(b, "offsets_for_time.partition")?),
                    Offset(wire::get_u64(b, "offsets_for_time.offset")?),
                ))
            })?,
        })
    }
}

impl Request for OffsetsForTimeRequest {
    const API_KEY: ApiKey = ApiKey::OffsetsForTime;
    type Response = OffsetsForTimeResponse;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Encode + Decode + PartialEq + std::fmt::Debug>(value: T) {
        assert_eq!(T::decode_all(value.to_bytes()).unwrap(), value);
    }

    #[test]
    fn group_bodies_round_trip() {
        round_trip(GroupHeartbeatRequest {
            group: "g".into(),
            topic: "t".into(),
            member_id: "m-1".into(),
            client_id: "c".into(),
            session_timeout_ms: 10_000,
            owned: vec![PartitionIndex(0), PartitionIndex(3)],
            in_flight: 7,
        });
        round_trip(GroupHeartbeatResponse {
            member_id: "m-1".into(),
            generation: 9,
            partitions: 4,
            assigned: vec![PartitionIndex(3)],
        });
        round_trip(LeaveGroupRequest {
            group: "g".into(),
            topic: "t".into(),
            member_id: "m".into(),
        });
        let offsets = vec![
            OffsetCommit { topic: "t".into(), partition: PartitionIndex(1), offset: Offset(5) },
            OffsetCommit {
                topic: retry_topic("g", "t"),
                partition: PartitionIndex(1),
                offset: Offset(0),
            },
        ];
        round_trip(CommitOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            member_id: "m".into(),
            offsets: offsets.clone(),
        });
        round_trip(ResetOffsetsRequest { group: "g".into(), force: true, offsets });
        round_trip(DescribeGroupRequest { group: "g".into() });
        round_trip(DescribeGroupResponse {
            group: "g".into(),
            generation: 3,
            members: vec![MemberInfo {
                member_id: "m".into(),
                client_id: "c".into(),
                topic: "t".into(),
                assigned: vec![PartitionIndex(0)],
                owned: vec![PartitionIndex(0), PartitionIndex(1)],
                in_flight: 2,
                last_seen_ms_ago: 150,
            }],
            offsets: vec![
                PartitionOffset {
                    topic: "t".into(),
                    partition: PartitionIndex(0),
                    committed: Some(Offset(4)),
                    committed_ms: 77,
                    log_start: Offset(0),
                    high_watermark: Offset(10),
                },
                PartitionOffset {
                    topic: "t".into(),
                    partition: PartitionIndex(1),
                    committed: None,
                    committed_ms: 0,
                    log_start: Offset(2),
                    high_watermark: Offset(3),
                },
            ],
        });
        round_trip(ListGroupsRequest);
        round_trip(ListGroupsResponse {
            groups: vec![GroupSummary {
                group: "g".into(),
                topics: vec!["a".into(), "b".into()],
                members: 2,
                lag: 40,
            }],
        });
        round_trip(OffsetsForTimeRequest { topic: "t".into(), time_ms: 1234 });
        round_trip(OffsetsForTimeResponse {
            offsets: vec![(PartitionIndex(0), Offset(1)), (PartitionIndex(1), Offset(0))],
        });
    }

    #[test]
    fn names_and_lag() {
        assert!(validate_group_name("orders-svc_1").is_ok());
        assert!(validate_group_name("").is_err());
        assert!(validate_group_name("a.b").is_err(), "a dot would make retry names ambiguous");
        assert!(validate_group_name(&"g".repeat(101)).is_err());
        let retry = retry_topic("billing", "orders.v2");
        assert_eq!(retry, "__retry.billing.orders.v2");
        assert_eq!(parse_retry_topic(&retry), Some(("billing", "orders.v2")));
        assert_eq!(parse_retry_topic("orders"), None);
        assert_eq!(parse_dead_letter_topic(&dead_letter_topic("billing")), Some("billing"));
        let mut o = PartitionOffset {
            topic: "t".into(),
            partition: PartitionIndex(0),
            committed: None,
            committed_ms: 0,
            log_start: Offset(5),
            high_watermark: Offset(12),
        };
        assert_eq!(o.lag(), 7, "never committed: lag from the log start");
        o.committed = Some(Offset(10));
        assert_eq!(o.lag(), 2);
        o.committed = Some(Offset(1));
        assert_eq!(o.lag(), 7, "a commit below the log start counts from the log start");
    }
}
