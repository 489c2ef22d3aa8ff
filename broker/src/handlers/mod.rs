//! Request handlers, one function per [`ApiKey`]. Writes go through Raft ([`Replica::propose`])
//! and are answered after commit and apply; reads are served by the leader from applied state.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::frame::{RequestHeader, PROTOCOL_VERSION};
use ferry_protocol::messages::*;
use ferry_protocol::txn::{EndTransactionRequest, HeartbeatRequest, TransactionStatsRequest};
use ferry_protocol::{ApiKey, ClientKind, Decode, Encode, ErrorCode, NodeId, RecordBatch};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::group::GroupCoordinator;
use crate::metrics::Metrics;
use crate::replication::{Replica, ReplicaError};
use crate::state::command::{Command, CommandResponse};
use crate::state::{validate_topic_name, StateError, TOPIC_PARTITIONS_MAX};
use crate::txn::{CheckWindow, ProducerRegistry};

mod groups;
pub mod push;
mod transactions;

/// Longest producer group name.
pub const PRODUCER_GROUP_BYTES_MAX: usize = 249;

/// Everything a handler needs.
pub struct Context {
    /// Validated configuration.
    pub config: Config,
    /// This node's replica.
    pub replica: Replica,
    /// Metrics handles.
    pub metrics: Arc<Metrics>,
    /// The address clients and peers reach this node at.
    pub advertised: String,
    /// Fires at shutdown; parked fetches return early.
    pub shutdown: CancellationToken,
    /// Producer sessions connected here, by group (check-back targets).
    pub producers: Arc<ProducerRegistry>,
    /// Check-backs this leader sent that are not answered yet.
    pub check_window: CheckWindow,
    /// Consumer-group members (on the leader).
    pub groups: Arc<GroupCoordinator>,
}

pub(crate) type HandlerResult = Result<Bytes, ReplicaError>;

pub(crate) fn err(code: ErrorCode, message: impl Into<String>) -> ReplicaError {
    ReplicaError { code, message: message.into(), leader: None, txn_state: None }
}

fn decode<T: Decode>(body: Bytes) -> Result<T, ReplicaError> {
    T::decode_all(body).map_err(|e| err(ErrorCode::Malformed, e.to_string()))
}

impl From<StateError> for ReplicaError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Request { code, message } => err(code, message),
            other => {
                tracing::error!(error = %other, "state read failed");
                err(ErrorCode::Internal, other.to_string())
            }
        }
    }
}

pub(crate) fn rejected_or(resp: CommandResponse) -> Result<CommandResponse, ReplicaError> {
    match resp {
        CommandResponse::Rejected { code, message } => Err(err(code, message)),
        other => Ok(other),
    }
}

/// What a handshake established about the client.
pub struct Hello {
    /// The client's kind.
    pub kind: ClientKind,
    /// Its producer group (empty if none).
    pub producer_group: String,
}

/// Answers the handshake; returns what the client said about itself and the response body.
pub fn handshake(ctx: &Context, body: Bytes) -> Result<(Hello, Bytes), ReplicaError> {
    let req: HandshakeRequest = decode(body)?;
    if req.producer_group.len() > PRODUCER_GROUP_BYTES_MAX {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("producer group must be at most {PRODUCER_GROUP_BYTES_MAX} bytes"),
        ));
    }
    if req.version_min > PROTOCOL_VERSION || req.version_max < PROTOCOL_VERSION {
        return Err(err(
            ErrorCode::UnsupportedVersion,
            format!(
                "client speaks versions {}..={}, broker speaks {PROTOCOL_VERSION}",
                req.version_min, req.version_max
            ),
        ));
    }
    if req.auth_mechanism != "none" {
        return Err(err(
            ErrorCode::AuthFailed,
            format!("auth mechanism {:?} is not supported (only \"none\")", req.auth_mechanism),
        ));
    }
    let resp = HandshakeResponse {
        version: PROTOCOL_VERSION,
        node_id: NodeId(ctx.replica.node_id()),
        leader: ctx.replica.leader_hint(),
        nodes: ctx.replica.nodes(),
    };
    Ok((Hello { kind: req.kind, producer_group: req.producer_group }, resp.to_bytes()))
}

/// Routes a request to its handler.
pub async fn dispatch(
    ctx: &Context,
    kind: ClientKind,
    header: RequestHeader,
    body: Bytes,
) -> HandlerResult {
    if header.api_version != 1 {
        return Err(err(
            ErrorCode::UnsupportedVersion,
            format!("{} version {} is not supported", header.api_key.name(), header.api_version),
        ));
    }
    match header.api_key {
        ApiKey::Handshake => Err(err(ErrorCode::Malformed, "handshake sent twice")),
        ApiKey::Produce => produce(ctx, decode(body)?).await,
        ApiKey::Fetch => fetch(ctx, decode(body)?).await,
        ApiKey::CreateTopic => create_topic(ctx, decode(body)?).await,
        ApiKey::DeleteTopic => delete_topic(ctx, decode(body)?).await,
        ApiKey::Metadata => metadata(ctx, decode(body)?),
        ApiKey::NodeStatus => {
            let _: NodeStatusRequest = decode(body)?;
            Ok(ctx.replica.status(&ctx.advertised).to_bytes())
        }
        ApiKey::AddNode => {
            let req: AddNodeRequest = decode(body)?;
            if req.node_id.0 == 0 {
                return Err(err(ErrorCode::InvalidArgument, "node id must be non-zero"));
            }
            ctx.replica.add_node(req.node_id.0, req.addr).await?;
            Ok(Empty.to_bytes())
        }
        ApiKey::RemoveNode => {
            let req: RemoveNodeRequest = decode(body)?;
            ctx.replica.remove_node(req.node_id.0).await?;
            Ok(Empty.to_bytes())
        }
        ApiKey::RaftAppend | ApiKey::RaftVote | ApiKey::RaftSnapshot
            if kind != ClientKind::Peer =>
        {
            Err(err(ErrorCode::AuthFailed, "raft requests are for peers only"))
        }
        ApiKey::RaftAppend => ctx.replica.on_append(body).await,
        ApiKey::RaftVote => ctx.replica.on_vote(body).await,
        ApiKey::RaftSnapshot => ctx.replica.on_snapshot(body).await,
        ApiKey::SendHalf => transactions::send_half(ctx, decode(body)?).await,
        ApiKey::EndTransaction => {
            let req: EndTransactionRequest = decode(body)?;
            let txn_id = req.txn_id;
            let result = transactions::end_transaction(ctx, req).await;
            // Answered or decided: the check no longer holds the producer's window.
            ctx.check_window.answered(txn_id);
            result
        }
        ApiKey::Heartbeat => {
            let _: HeartbeatRequest = decode(body)?;
            if !ctx.replica.is_leader() {
                return Err(ctx.replica.not_leader());
            }
            Ok(Empty.to_bytes())
        }
        ApiKey::ListTransactions => transactions::list(ctx, decode(body)?).await,
        ApiKey::TransactionStats => {
            let _: TransactionStatsRequest = decode(body)?;
            transactions::stats(ctx)
        }
        ApiKey::GroupHeartbeat => groups::heartbeat(ctx, decode(body)?),
        ApiKey::LeaveGroup => groups::leave(ctx, decode(body)?),
        ApiKey::CommitOffsets => groups::commit(ctx, decode(body)?).await,
        ApiKey::ResetOffsets => groups::reset(ctx, decode(body)?).await,
        ApiKey::DescribeGroup => groups::describe(ctx, decode(body)?),
        ApiKey::ListGroups => {
            let _: ferry_protocol::group::ListGroupsRequest = decode(body)?;
            groups::list(ctx)
        }
        ApiKey::OffsetsForTime => groups::offsets_for_time(ctx, decode(body)?).await,
        ApiKey::ReadLocal if kind != ClientKind::Admin => {
            Err(err(ErrorCode::AuthFailed, "read_local is for admin clients only"))
        }
        ApiKey::ReadLocal => read_local(ctx, decode(body)?).await,
        ApiKey::CreatePush
        | ApiKey::ListPush
        | ApiKey::AlterPush
        | ApiKey::ListPushFailed
        | ApiKey::ReplayPush
            if kind != ClientKind::Admin =>
        {
            Err(err(ErrorCode::AuthFailed, "push subscriptions are managed by admin clients"))
        }
        ApiKey::CreatePush => push::create(ctx, decode(body)?).await,
        ApiKey::ListPush => push::list(ctx, decode(body)?),
        ApiKey::AlterPush => push::alter(ctx, decode(body)?).await,
        ApiKey::ListPushFailed => push::list_failed(ctx, decode(body)?),
        ApiKey::ReplayPush => push::replay(ctx, decode(body)?).await,
    }
}

/// Checks a record batch a client sent: within `produce_batch_bytes_max`, whole, CRC intact.
pub(crate) fn checked_batch(ctx: &Context, bytes: Bytes) -> Result<RecordBatch, ReplicaError> {
    let len = bytes.len();
    if len > ctx.config.produce_batch_bytes_max {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!(
                "batch of {len} bytes exceeds produce_batch_bytes_max {}",
                ctx.config.produce_batch_bytes_max
            ),
        ));
    }
    RecordBatch::parse(bytes).map_err(|e| err(ErrorCode::CorruptBatch, e.to_string()))
}

/// Appends a batch now, or schedules it when its deliver time is after the leader's clock
/// (a delayed message: replicated and invisible until due, see `state::delayed`).
async fn produce(ctx: &Context, req: ProduceRequest) -> HandlerResult {
    let len = req.batch.len();
    let batch = checked_batch(ctx, req.batch)?;
    let replica = ctx.replica.group_for(req.partition.0);
    let now_ms = ferry_protocol::now_ms();
    // Retry and dead-letter topics are counted per consumer group.
    let internal = req.topic.starts_with("__").then(|| req.topic.clone());
    let command = if req.deliver_at_ms > now_ms {
        if !replica.is_leader() {
            // The deliver time is judged by the leader's clock, not this node's.
            return Err(replica.not_leader());
        }
        let delay_max_ms = u64::try_from(ctx.config.delay_max.as_millis()).unwrap_or(u64::MAX);
        if req.deliver_at_ms - now_ms > delay_max_ms {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "deliver time {} ms since the epoch is {} ms away, beyond delay_max_ms {}",
                    req.deliver_at_ms,
                    req.deliver_at_ms - now_ms,
                    delay_max_ms
                ),
            ));
        }
        Command::ProduceDelayed {
            topic: req.topic,
            partition: req.partition.0,
            deliver_at_ms: req.deliver_at_ms,
            batch: batch.bytes().clone(),
        }
    } else if batch.producer_id() != 0 || batch.has_dedup_ids() {
        // Idempotent: apply drops what the partition already holds (`state::dedup`).
        Command::ProduceIdempotent {
            topic: req.topic,
            partition: req.partition.0,
            stamped_ms: now_ms,
            record_ids: batch.has_dedup_ids(),
            batch: batch.bytes().clone(),
        }
    } else {
        Command::Produce {
            topic: req.topic,
            partition: req.partition.0,
            batch: batch.bytes().clone(),
        }
    };
    let resp = replica.propose(command).await?;
    match rejected_or(resp)? {
        CommandResponse::Produced { base_offset, count, duplicates } => {
            ctx.metrics.messages_in.inc_by(u64::from(count));
            ctx.metrics.bytes_in.inc_by(len as u64);
            if duplicates > 0 {
                ctx.metrics.produce_duplicates.inc_by(u64::from(duplicates));
            }
            if let Some(topic) = &internal {
                ctx.metrics.groups.count_produced(topic, count);
            }
            Ok(ProduceResponse { base_offset, record_count: count, deliver_at_ms: 0, duplicates }
                .to_bytes())
        }
        CommandResponse::Scheduled { deliver_at_ms, count } => {
            ctx.metrics.messages_in.inc_by(u64::from(count));
            ctx.metrics.bytes_in.inc_by(len as u64);
            ctx.metrics.delayed.scheduled.inc_by(u64::from(count));
            if let Some(topic) = &internal {
                ctx.metrics.groups.count_produced(topic, count);
            }
            // No offset yet: the batch gets its offsets when it is appended, once due.
            let base_offset = ferry_protocol::Offset(0);
            Ok(ProduceResponse { base_offset, record_count: count, deliver_at_ms, duplicates: 0 }
                .to_bytes())
        }
        other => Err(err(ErrorCode::Internal, format!("unexpected apply result {other:?}"))),
    }
}

async fn fetch(ctx: &Context, req: FetchRequest) -> HandlerResult {
    let replica = ctx.replica.group_for(req.partition.0);
    if !replica.is_leader() {
        return Err(replica.not_leader());
    }
    let state = replica.state().clone();
    let mut handle = state.partition(&req.topic, req.partition)?;
    if req.offset < handle.log_start() {
        return Err(err(
            ErrorCode::OffsetOutOfRange,
            format!("offset {} is below the log start {}", req.offset, handle.log_start()),
        ));
    }
    if req.offset >= handle.high_watermark() && req.max_wait_ms > 0 {
        // An offset beyond the high watermark parks too: after a leader change the new leader
        // may briefly lag what a consumer already read from the old one.
        let wait = Duration::from_millis(u64::from(req.max_wait_ms)).min(ctx.config.fetch_wait_max);
        let offset = req.offset;
        tokio::select! {
            _ = ctx.shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
            alive = handle.wait_beyond(offset) => {
                if !alive {
                    return Err(err(ErrorCode::UnknownTopic, format!("topic {} was deleted", req.topic)));
                }
            }
        }
    }
    let max_bytes = (req.max_bytes as usize).clamp(1, ctx.config.frame_bytes_max / 2);
    let offset = req.offset;
    let (handle, batches) = tokio::task::spawn_blocking(move || {
        let batches = state.read(&handle, offset, max_bytes);
        (handle, batches)
    })
    .await
    .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
    let batches = batches?;
    let mut records = 0u64;
    let mut bytes = 0u64;
    for b in &batches {
        bytes += b.bytes.len() as u64;
        records +=
            RecordBatch::from_trusted(b.bytes.clone()).map(|b| u64::from(b.count())).unwrap_or(0);
    }
    ctx.metrics.messages_out.inc_by(records);
    ctx.metrics.bytes_out.inc_by(bytes);
    Ok(FetchResponse {
        high_watermark: handle.high_watermark(),
        log_start: handle.log_start(),
        batches,
    }
    .to_bytes())
}

async fn read_local(ctx: &Context, req: ReadLocalRequest) -> HandlerResult {
    let state = ctx.replica.group_for(req.partition.0).state().clone();
    let handle = state.partition(&req.topic, req.partition)?;
    if req.offset < handle.log_start() {
        return Err(err(
            ErrorCode::OffsetOutOfRange,
            format!("offset {} is below the log start {}", req.offset, handle.log_start()),
        ));
    }
    let max_bytes = (req.max_bytes as usize).clamp(1, ctx.config.frame_bytes_max / 2);
    let offset = req.offset;
    let (handle, batches) = tokio::task::spawn_blocking(move || {
        let batches = state.read(&handle, offset, max_bytes);
        (handle, batches)
    })
    .await
    .map_err(|e| err(ErrorCode::Internal, e.to_string()))?;
    Ok(FetchResponse {
        high_watermark: handle.high_watermark(),
        log_start: handle.log_start(),
        batches: batches?,
    }
    .to_bytes())
}

async fn create_topic(ctx: &Context, req: CreateTopicRequest) -> HandlerResult {
    validate_topic_name(&req.name).map_err(|m| err(ErrorCode::InvalidArgument, m))?;
    if req.partitions == 0 || req.partitions > TOPIC_PARTITIONS_MAX {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("partitions must be 1..={TOPIC_PARTITIONS_MAX}, got {}", req.partitions),
        ));
    }
    let cmd = Command::CreateTopic {
        name: req.name.clone(),
        partitions: req.partitions,
        created_ms: ferry_protocol::now_ms(),
    };
    rejected_or(ctx.replica.propose(cmd).await?)?;
    let mut topics = ctx.replica.state().topics(std::slice::from_ref(&req.name))?;
    let topic = topics.pop().ok_or_else(|| err(ErrorCode::Internal, "created topic not found"))?;
    Ok(topic.to_bytes())
}

async fn delete_topic(ctx: &Context, req: DeleteTopicRequest) -> HandlerResult {
    rejected_or(ctx.replica.propose(Command::DeleteTopic { name: req.name }).await?)?;
    Ok(Empty.to_bytes())
}

fn metadata(ctx: &Context, req: MetadataRequest) -> HandlerResult {
    if !ctx.replica.is_leader() {
        return Err(ctx.replica.not_leader());
    }
    let topics = ctx.replica.state().topics(&req.topics)?;
    Ok(MetadataResponse { leader: ctx.replica.leader_hint(), topics }.to_bytes())
}
