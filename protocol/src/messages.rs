//! Request and response bodies, one pair per [`ApiKey`]. Layouts are drawn above each encoder.
//!
//! Raft RPC bodies (`RaftAppend`, `RaftVote`, `RaftSnapshot`) are opaque bytes here: the broker's
//! replication module owns their encoding, so no Raft library type leaks into this crate.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::api::ApiKey;
use crate::frame::LeaderHint;
use crate::types::{ClientKind, NodeId, Offset, PartitionIndex};
use crate::wire::{self, Decode, DecodeError, DecodeResult, Encode};

/// A request body: its api key, version and response type.
pub trait Request: Encode + Decode {
    /// The operation.
    const API_KEY: ApiKey;
    /// The body version this build sends and understands.
    const API_VERSION: u16 = 1;
    /// The response body.
    type Response: Encode + Decode;
}

/// A body with no fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Empty;

impl Encode for Empty {
    fn encode(&self, _buf: &mut BytesMut) {}
}

impl Decode for Empty {
    fn decode(_buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(Empty)
    }
}

/// A node's id and client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    /// Node id.
    pub id: NodeId,
    /// Client/peer address, `host:port`.
    pub addr: String,
}

// node_addr := id:u64 | addr:string
fn put_node_addr(buf: &mut BytesMut, n: &NodeAddr) {
    buf.put_u64(n.id.0);
    wire::put_string(buf, &n.addr);
}

fn get_node_addr(buf: &mut Bytes) -> DecodeResult<NodeAddr> {
    Ok(NodeAddr {
        id: NodeId(wire::get_u64(buf, "node.id")?),
        addr: wire::get_string(buf, "node.addr")?,
    })
}

fn put_leader(buf: &mut BytesMut, leader: Option<&LeaderHint>) {
    wire::put_option(buf, leader, |b, l| {
        b.put_u64(l.leader_id.0);
        wire::put_string(b, &l.leader_addr);
    });
}

fn get_leader(buf: &mut Bytes) -> DecodeResult<Option<LeaderHint>> {
    wire::get_option(buf, "leader", |b| {
        Ok(LeaderHint {
            leader_id: NodeId(wire::get_u64(b, "leader.id")?),
            leader_addr: wire::get_string(b, "leader.addr")?,
        })
    })
}

/// First request on a connection.
///
/// ```text
/// handshake := version_min:u16 | version_max:u16 | client_id:string | kind:u8
///              | producer_group:string | auth_mechanism:string | auth_payload:bytes
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// Lowest protocol version the client speaks.
    pub version_min: u16,
    /// Highest protocol version the client speaks.
    pub version_max: u16,
    /// Free-form client identity, for logs and metrics.
    pub client_id: String,
    /// What the client is.
    pub kind: ClientKind,
    /// Producer group (empty when not a transactional producer).
    pub producer_group: String,
    /// Authentication mechanism; only `none` exists today.
    pub auth_mechanism: String,
    /// Mechanism-specific credentials.
    pub auth_payload: Bytes,
}

impl Encode for HandshakeRequest {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u16(self.version_min);
        buf.put_u16(self.version_max);
        wire::put_string(buf, &self.client_id);
        buf.put_u8(self.kind as u8);
        wire::put_string(buf, &self.producer_group);
        wire::put_string(buf, &self.auth_mechanism);
        wire::put_bytes(buf, &self.auth_payload);
    }
}

impl Decode for HandshakeRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        let version_min = wire::get_u16(buf, "handshake.version_min")?;
        let version_max = wire::get_u16(buf, "handshake.version_max")?;
        let client_id = wire::get_string(buf, "handshake.client_id")?;
        let raw_kind = wire::get_u8(buf, "handshake.kind")?;
        let kind = ClientKind::from_u8(raw_kind).ok_or_else(|| DecodeError::Invalid {
            what: "handshake.kind",
            detail: format!("unknown {raw_kind}"),
        })?;
        Ok(HandshakeRequest {
            version_min,
            version_max,
            client_id,
            kind,
            producer_group: wire::get_string(buf, "handshake.producer_group")?,
            auth_mechanism: wire::get_string(buf, "handshake.auth_mechanism")?,
            auth_payload: wire::get_bytes(buf, "handshake.auth_payload")?,
        })
    }
}

/// Handshake answer.
///
/// ```text
/// handshake_resp := version:u16 | node_id:u64 | leader:option<leader> | nodes:array<node_addr>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    /// The protocol version both sides will speak.
    pub version: u16,
    /// The answering node.
    pub node_id: NodeId,
    /// The leader, if known.
    pub leader: Option<LeaderHint>,
    /// Every cluster member the node knows, so clients learn addresses beyond their bootstrap.
    pub nodes: Vec<NodeAddr>,
}

impl Encode for HandshakeResponse {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u16(self.version);
        buf.put_u64(self.node_id.0);
        put_leader(buf, self.leader.as_ref());
        wire::put_array(buf, &self.nodes, put_node_addr);
    }
}

impl Decode for HandshakeResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(HandshakeResponse {
            version: wire::get_u16(buf, "handshake.version")?,
            node_id: NodeId(wire::get_u64(buf, "handshake.node_id")?),
            leader: get_leader(buf)?,
            nodes: wire::get_array(buf, "handshake.nodes", 12, get_node_addr)?,
        })
    }
}

impl Request for HandshakeRequest {
    const API_KEY: ApiKey = ApiKey::Handshake;
    type Response = HandshakeResponse;
}

/// Append one record batch to a partition, now or at a deliver time. Acknowledged after Raft
/// commit and apply.
///
/// ```text
/// produce := topic:string | partition:u32 | batch:bytes | deliver_at_ms:u64
/// ```
///
/// A `deliver_at_ms` after the leader's clock schedules the batch instead: it is stored
/// replicated and invisible, and appended to the partition (getting its offsets) once due.
/// 0, or a time not after the leader's clock, appends now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRequest {
    /// Topic name.
    pub topic: String,
    /// Partition inside the topic.
    pub partition: PartitionIndex,
    /// A batch built by [`crate::record::RecordBatchBuilder`].
    pub batch: Bytes,
    /// When the batch becomes visible, ms since the Unix epoch (leader clock); 0 = now.
    pub deliver_at_ms: u64,
}

impl Encode for ProduceRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.topic);
        buf.put_u32(self.partition.0);
        wire::put_bytes(buf, &self.batch);
        buf.put_u64(self.deliver_at_ms);
    }
}

impl Decode for ProduceRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ProduceRequest {
            topic: wire::get_string(buf, "produce.topic")?,
            partition: PartitionIndex(wire::get_u32(buf, "produce.partition")?),
            batch: wire::get_bytes(buf, "produce.batch")?,
            deliver_at_ms: wire::get_u64(buf, "produce.deliver_at_ms")?,
        })
    }
}

/// Where a produced batch landed, or when it will.
///
/// ```text
/// produce_resp := base_offset:u64 | record_count:u32 | deliver_at_ms:u64 | duplicates:u32
/// ```
/// `duplicates` was added later; a response without it reads as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceResponse {
    /// Offset of the batch's first record; record `i` is at `base_offset + i` when
    /// `duplicates` is 0. 0 and meaningless when the batch was scheduled (`deliver_at_ms`
    /// non-zero). When every record was a duplicate: where the first one was stored before.
    pub base_offset: Offset,
    /// Records appended by this request (duplicates not counted).
    pub record_count: u32,
    /// 0: the batch was appended at `base_offset`. Otherwise the batch was scheduled (stored
    /// durably, invisible) and is appended once this time (ms since the Unix epoch) is due.
    pub deliver_at_ms: u64,
    /// Records the broker had already stored (same producer id and sequence, or same
    /// `ferry-dedup-id`, within its dedup window) and dropped from this batch.
    pub duplicates: u32,
}

impl Encode for ProduceResponse {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.base_offset.0);
        buf.put_u32(self.record_count);
        buf.put_u64(self.deliver_at_ms);
        buf.put_u32(self.duplicates);
    }
}

impl Decode for ProduceResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ProduceResponse {
            base_offset: Offset(wire::get_u64(buf, "produce.base_offset")?),
            record_count: wire::get_u32(buf, "produce.record_count")?,
            deliver_at_ms: wire::get_u64(buf, "produce.deliver_at_ms")?,
            duplicates: if buf.has_remaining() {
                wire::get_u32(buf, "produce.duplicates")?
            } else {
                0
            },
        })
    }
}

impl Request for ProduceRequest {
    const API_KEY: ApiKey = ApiKey::Produce;
    type Response = ProduceResponse;
}

/// Read batches from a partition starting at an offset; parks up to `max_wait_ms` when there is
/// nothing new.
///
/// ```text
/// fetch := topic:string | partition:u32 | offset:u64 | max_bytes:u32 | max_wait_ms:u32
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// Topic name.
    pub topic: String,
    /// Partition inside the topic.
    pub partition: PartitionIndex,
    /// First offset wanted. The first batch returned may start earlier; skip records before it.
    pub offset: Offset,
    /// Soft cap on the bytes returned (at least one batch is returned when one is available).
    pub max_bytes: u32,
    /// How long to wait for new data when there is none.
    pub max_wait_ms: u32,
}

impl Encode for FetchRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.topic);
        buf.put_u32(self.partition.0);
        buf.put_u64(self.offset.0);
        buf.put_u32(self.max_bytes);
        buf.put_u32(self.max_wait_ms);
    }
}

impl Decode for FetchRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(FetchRequest {
            topic: wire::get_string(buf, "fetch.topic")?,
            partition: PartitionIndex(wire::get_u32(buf, "fetch.partition")?),
            offset: Offset(wire::get_u64(buf, "fetch.offset")?),
            max_bytes: wire::get_u32(buf, "fetch.max_bytes")?,
            max_wait_ms: wire::get_u32(buf, "fetch.max_wait_ms")?,
        })
    }
}

/// One stored batch with the offset the broker assigned to its first record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBatch {
    /// Offset of the first record.
    pub base_offset: Offset,
    /// The batch bytes as the producer built them.
    pub bytes: Bytes,
}

/// Batches read.
///
/// ```text
/// fetch_resp := high_watermark:u64 | log_start:u64 | batches:array<base_offset:u64 | bytes>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchResponse {
    /// Offset the next produced record will get (one past the last readable record).
    pub high_watermark: Offset,
    /// First offset still stored.
    pub log_start: Offset,
    /// Batches in offset order.
    pub batches: Vec<FetchedBatch>,
}

impl Encode for FetchResponse {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.high_watermark.0);
        buf.put_u64(self.log_start.0);
        wire::put_array(buf, &self.batches, |b, batch| {
            b.put_u64(batch.base_offset.0);
            wire::put_bytes(b, &batch.bytes);
        });
    }
}

impl Decode for FetchResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(FetchResponse {
            high_watermark: Offset(wire::get_u64(buf, "fetch.high_watermark")?),
            log_start: Offset(wire::get_u64(buf, "fetch.log_start")?),
            batches: wire::get_array(buf, "fetch.batches", 12, |b| {
                Ok(FetchedBatch {
                    base_offset: Offset(wire::get_u64(b, "fetch.base_offset")?),
                    bytes: wire::get_bytes(b, "fetch.batch")?,
                })
            })?,
        })
    }
}

impl Request for FetchRequest {
    const API_KEY: ApiKey = ApiKey::Fetch;
    type Response = FetchResponse;
}

/// Read batches from the applied state of the node that receives the request, whether it
/// leads or not, without waiting (admin clients only). Followers may lag the leader; use it to
/// compare replicas once they caught up, not to consume.
///
/// ```text
/// read_local := topic:string | partition:u32 | offset:u64 | max_bytes:u32
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadLocalRequest {
    /// Topic name.
    pub topic: String,
    /// Partition inside the topic.
    pub partition: PartitionIndex,
    /// First offset wanted (the first batch returned may start earlier).
    pub offset: Offset,
    /// Soft cap on the bytes returned (at least one batch when one is available).
    pub max_bytes: u32,
}

impl Encode for ReadLocalRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.topic);
        buf.put_u32(self.partition.0);
        buf.put_u64(self.offset.0);
        buf.put_u32(self.max_bytes);
    }
}

impl Decode for ReadLocalRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ReadLocalRequest {
            topic: wire::get_string(buf, "read_local.topic")?,
            partition: PartitionIndex(wire::get_u32(buf, "read_local.partition")?),
            offset: Offset(wire::get_u64(buf, "read_local.offset")?),
            max_bytes: wire::get_u32(buf, "read_local.max_bytes")?,
        })
    }
}

impl Request for ReadLocalRequest {
    const API_KEY: ApiKey = ApiKey::ReadLocal;
    type Response = FetchResponse;
}

/// Create a topic.
///
/// ```text
/// create_topic := name:string | partitions:u32
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateTopicRequest {
    /// Topic name: 1..=249 chars of `[A-Za-z0-9._-]`.
    pub name: String,
    /// Number of partitions (1..=1024).
    pub partitions: u32,
}

impl Encode for CreateTopicRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.name);
        buf.put_u32(self.partitions);
    }
}

impl Decode for CreateTopicRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(CreateTopicRequest {
            name: wire::get_string(buf, "create_topic.name")?,
            partitions: wire::get_u32(buf, "create_topic.partitions")?,
        })
    }
}

impl Request for CreateTopicRequest {
    const API_KEY: ApiKey = ApiKey::CreateTopic;
    type Response = TopicMetadata;
}

/// Delete a topic and its messages.
///
/// ```text
/// delete_topic := name:string
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteTopicRequest {
    /// Topic name.
    pub name: String,
}

impl Encode for DeleteTopicRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.name);
    }
}

impl Decode for DeleteTopicRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(DeleteTopicRequest { name: wire::get_string(buf, "delete_topic.name")? })
    }
}

impl Request for DeleteTopicRequest {
    const API_KEY: ApiKey = ApiKey::DeleteTopic;
    type Response = Empty;
}

/// Topics and their partitions.
///
/// ```text
/// metadata := topics:array<string>          (empty = every topic)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataRequest {
    /// Topics wanted; empty for all. An unknown name is an `UnknownTopic` error.
    pub topics: Vec<String>,
}

impl Encode for MetadataRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_array(buf, &self.topics, |b, t| wire::put_string(b, t));
    }
}

impl Decode for MetadataRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(MetadataRequest {
            topics: wire::get_array(buf, "metadata.topics", 4, |b| {
                wire::get_string(b, "metadata.topic")
            })?,
        })
    }
}

/// One partition's watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// Index inside the topic.
    pub index: PartitionIndex,
    /// First offset still stored.
    pub log_start: Offset,
    /// Offset the next record will get.
    pub high_watermark: Offset,
}

/// One topic.
///
/// ```text
/// topic := name:string | created_ms:u64 | partitions:array<index:u32 | log_start:u64 | hw:u64>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMetadata {
    /// Topic name.
    pub name: String,
    /// When the topic was created (leader clock), ms since the Unix epoch.
    pub created_ms: u64,
    /// Partitions in index order.
    pub partitions: Vec<PartitionMetadata>,
}

impl Encode for TopicMetadata {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.name);
        buf.put_u64(self.created_ms);
        wire::put_array(buf, &self.partitions, |b, p| {
            b.put_u32(p.index.0);
            b.put_u64(p.log_start.0);
            b.put_u64(p.high_watermark.0);
        });
    }
}

impl Decode for TopicMetadata {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(TopicMetadata {
            name: wire::get_string(buf, "topic.name")?,
            created_ms: wire::get_u64(buf, "topic.created_ms")?,
            partitions: wire::get_array(buf, "topic.partitions", 20, |b| {
                Ok(PartitionMetadata {
                    index: PartitionIndex(wire::get_u32(b, "partition.index")?),
                    log_start: Offset(wire::get_u64(b, "partition.log_start")?),
                    high_watermark: Offset(wire::get_u64(b, "partition.high_watermark")?),
                })
            })?,
        })
    }
}

/// Metadata answer.
///
/// ```text
/// metadata_resp := leader:option<leader> | topics:array<topic>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetadataResponse {
    /// The leader, if known.
    pub leader: Option<LeaderHint>,
    /// Topics in name order.
    pub topics: Vec<TopicMetadata>,
}

impl Encode for MetadataResponse {
    fn encode(&self, buf: &mut BytesMut) {
        put_leader(buf, self.leader.as_ref());
        wire::put_array(buf, &self.topics, |b, t| t.encode(b));
    }
}

impl Decode for MetadataResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(MetadataResponse {
            leader: get_leader(buf)?,
            topics: wire::get_array(buf, "metadata.topics", 16, TopicMetadata::decode)?,
        })
    }
}

impl Request for MetadataRequest {
    const API_KEY: ApiKey = ApiKey::Metadata;
    type Response = MetadataResponse;
}

/// Ask one node for its own view of the cluster. Any node answers; no redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeStatusRequest;

impl Encode for NodeStatusRequest {
    fn encode(&self, _buf: &mut BytesMut) {}
}

impl Decode for NodeStatusRequest {
    fn decode(_buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(NodeStatusRequest)
    }
}

/// A cluster member as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// Node id.
    pub id: NodeId,
    /// Address.
    pub addr: String,
    /// Voter (true) or learner (false).
    pub voter: bool,
    /// Highest log index known replicated to it (leader only).
    pub matched_index: Option<u64>,
}

/// One node's view.
///
/// ```text
/// node_status := node_id:u64 | addr:string | role:string | term:u64 | leader_id:option<u64>
///                | last_log_index:u64 | commit_index:u64 | applied_index:u64
///                | members:array<id:u64 | addr:string | voter:u8 | matched:option<u64>>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatusResponse {
    /// The answering node.
    pub node_id: NodeId,
    /// Its address.
    pub addr: String,
    /// `leader`, `follower`, `resyncing` (a follower rebuilding damaged data, not voting),
    /// `candidate`, `learner` or `shutdown`.
    pub role: String,
    /// Its current term.
    pub term: u64,
    /// The leader it knows.
    pub leader_id: Option<NodeId>,
    /// Last index in its log.
    pub last_log_index: u64,
    /// Last index it knows committed.
    pub commit_index: u64,
    /// Last index applied to its state machine.
    pub applied_index: u64,
    /// Members of the current configuration.
    pub members: Vec<MemberStatus>,
}

impl Encode for NodeStatusResponse {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.node_id.0);
        wire::put_string(buf, &self.addr);
        wire::put_string(buf, &self.role);
        buf.put_u64(self.term);
        wire::put_option(buf, self.leader_id.as_ref(), |b, id| b.put_u64(id.0));
        buf.put_u64(self.last_log_index);
        buf.put_u64(self.commit_index);
        buf.put_u64(self.applied_index);
        wire::put_array(buf, &self.members, |b, m| {
            b.put_u64(m.id.0);
            wire::put_string(b, &m.addr);
            wire::put_bool(b, m.voter);
            wire::put_option(b, m.matched_index.as_ref(), |b, i| b.put_u64(*i));
        });
    }
}

impl Decode for NodeStatusResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(NodeStatusResponse {
            node_id: NodeId(wire::get_u64(buf, "status.node_id")?),
            addr: wire::get_string(buf, "status.addr")?,
            role: wire::get_string(buf, "status.role")?,
            term: wire::get_u64(buf, "status.term")?,
            leader_id: wire::get_option(buf, "status.leader_id", |b| {
                Ok(NodeId(wire::get_u64(b, "status.leader_id")?))
            })?,
            last_log_index: wire::get_u64(buf, "status.last_log_index")?,
            commit_index: wire::get_u64(buf, "status.commit_index")?,
            applied_index: wire::get_u64(buf, "status.applied_index")?,
            members: wire::get_array(buf, "status.members", 14, |b| {
                Ok(MemberStatus {
                    id: NodeId(wire::get_u64(b, "member.id")?),
                    addr: wire::get_string(b, "member.addr")?,
                    voter: wire::get_bool(b, "member.voter")?,
                    matched_index: wire::get_option(b, "member.matched", |b| {
                        wire::get_u64(b, "member.matched")
                    })?,
                })
            })?,
        })
    }
}

impl Request for NodeStatusRequest {
    const API_KEY: ApiKey = ApiKey::NodeStatus;
    type Response = NodeStatusResponse;
}

/// Add a node: it joins as a learner and is promoted to voter once caught up. Answered when the
/// node is a voter.
///
/// ```text
/// add_node := node_id:u64 | addr:string
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddNodeRequest {
    /// The new node's id.
    pub node_id: NodeId,
    /// The new node's address.
    pub addr: String,
}

impl Encode for AddNodeRequest {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.node_id.0);
        wire::put_string(buf, &self.addr);
    }
}

impl Decode for AddNodeRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(AddNodeRequest {
            node_id: NodeId(wire::get_u64(buf, "add_node.id")?),
            addr: wire::get_string(buf, "add_node.addr")?,
        })
    }
}

impl Request for AddNodeRequest {
    const API_KEY: ApiKey = ApiKey::AddNode;
    type Response = Empty;
}

/// Remove a node from the cluster (joint consensus).
///
/// ```text
/// remove_node := node_id:u64
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoveNodeRequest {
    /// The node to remove.
    pub node_id: NodeId,
}

impl Encode for RemoveNodeRequest {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.node_id.0);
    }
}

impl Decode for RemoveNodeRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(RemoveNodeRequest { node_id: NodeId(wire::get_u64(buf, "remove_node.id")?) })
    }
}

impl Request for RemoveNodeRequest {
    const API_KEY: ApiKey = ApiKey::RemoveNode;
    type Response = Empty;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Encode + Decode + PartialEq + std::fmt::Debug>(value: T) {
        let bytes = value.to_bytes();
        assert_eq!(T::decode_all(bytes).unwrap(), value);
    }

    #[test]
    fn bodies_round_trip() {
        round_trip(HandshakeRequest {
            version_min: 1,
            version_max: 1,
            client_id: "c".into(),
            kind: ClientKind::Producer,
            producer_group: "g".into(),
            auth_mechanism: "none".into(),
            auth_payload: Bytes::new(),
        });
        round_trip(HandshakeResponse {
            version: 1,
            node_id: NodeId(2),
            leader: Some(LeaderHint { leader_id: NodeId(1), leader_addr: "a:1".into() }),
            nodes: vec![NodeAddr { id: NodeId(1), addr: "a:1".into() }],
        });
        round_trip(ProduceRequest {
            topic: "t".into(),
            partition: PartitionIndex(3),
            batch: Bytes::from_static(b"xyz"),
            deliver_at_ms: 0,
        });
        round_trip(ProduceRequest {
            topic: "t".into(),
            partition: PartitionIndex(3),
            batch: Bytes::from_static(b"xyz"),
            deliver_at_ms: 1_700_000_000_123,
        });
        round_trip(ProduceResponse {
            base_offset: Offset(5),
            record_count: 2,
            deliver_at_ms: 0,
            duplicates: 0,
        });
        round_trip(ProduceResponse {
            base_offset: Offset(0),
            record_count: 2,
            deliver_at_ms: u64::MAX,
            duplicates: 7,
        });
        // A response from before `duplicates` existed reads as no duplicates.
        let mut old = BytesMut::new();
        old.put_u64(5);
        old.put_u32(2);
        old.put_u64(0);
        let mut old = old.freeze();
        let decoded = ProduceResponse::decode(&mut old).unwrap();
        assert_eq!((decoded.record_count, decoded.duplicates), (2, 0));
        round_trip(FetchRequest {
            topic: "t".into(),
            partition: PartitionIndex(0),
            offset: Offset(9),
            max_bytes: 100,
            max_wait_ms: 5,
        });
        round_trip(FetchResponse {
            high_watermark: Offset(10),
            log_start: Offset(0),
            batches: vec![FetchedBatch { base_offset: Offset(3), bytes: Bytes::from_static(b"b") }],
        });
        round_trip(CreateTopicRequest { name: "t".into(), partitions: 4 });
        round_trip(DeleteTopicRequest { name: "t".into() });
        round_trip(MetadataRequest { topics: vec!["a".into(), "b".into()] });
        round_trip(MetadataResponse {
            leader: None,
            topics: vec![TopicMetadata {
                name: "t".into(),
                created_ms: 1,
                partitions: vec![PartitionMetadata {
                    index: PartitionIndex(0),
                    log_start: Offset(0),
                    high_watermark: Offset(7),
                }],
            }],
        });
        round_trip(NodeStatusResponse {
            node_id: NodeId(1),
            addr: "x:1".into(),
            role: "leader".into(),
            term: 3,
            leader_id: Some(NodeId(1)),
            last_log_index: 10,
            commit_index: 9,
            applied_index: 9,
            members: vec![MemberStatus {
                id: NodeId(2),
                addr: "y:2".into(),
                voter: true,
                matched_index: Some(8),
            }],
        });
        round_trip(AddNodeRequest { node_id: NodeId(4), addr: "z:4".into() });
        round_trip(RemoveNodeRequest { node_id: NodeId(4) });
    }
}
