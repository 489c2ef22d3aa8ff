//! Consumer-group requests: heartbeats and leaving (membership in the leader's memory),
//! commits and resets (through Raft), and the operator views.

use std::collections::BTreeSet;
use std::time::Instant;

use ferry_protocol::group::{
    parse_retry_topic, retry_topic, validate_group_name, CommitOffsetsRequest,
    DescribeGroupRequest, DescribeGroupResponse, GroupHeartbeatRequest, GroupSummary,
    LeaveGroupRequest, ListGroupsResponse, OffsetCommit, OffsetsForTimeRequest,
    OffsetsForTimeResponse, PartitionOffset, ResetOffsetsRequest,
};
use ferry_protocol::messages::Empty;
use ferry_protocol::{Encode, ErrorCode, Offset, PartitionIndex, RecordBatch};

use super::{err, rejected_or, Context, HandlerResult};
use crate::group::NotHolder;
use crate::replication::ReplicaError;
use crate::state::command::{Command, GroupOffset};

fn leader_only(ctx: &Context) -> Result<(), ReplicaError> {
    if ctx.replica.is_leader() {
        Ok(())
    } else {
        Err(ctx.replica.not_leader())
    }
}

fn valid_group(group: &str) -> Result<(), ReplicaError> {
    validate_group_name(group).map_err(|m| err(ErrorCode::InvalidArgument, m))
}

/// The partition count of `topic`.
fn partition_count(ctx: &Context, topic: &str) -> Result<u32, ReplicaError> {
    let mut topics = ctx.replica.state().topics(&[topic.to_string()])?;
    let t = topics
        .pop()
        .ok_or_else(|| err(ErrorCode::UnknownTopic, format!("unknown topic {topic}")))?;
    Ok(u32::try_from(t.partitions.len()).unwrap_or(u32::MAX))
}

pub(crate) fn heartbeat(ctx: &Context, req: GroupHeartbeatRequest) -> HandlerResult {
    leader_only(ctx)?;
    valid_group(&req.group)?;
    let partitions = partition_count(ctx, &req.topic)?;
    let resp = ctx.groups.heartbeat(&req, partitions, ctx.replica.node_id(), Instant::now());
    Ok(resp.to_bytes())
}

pub(crate) fn leave(ctx: &Context, req: LeaveGroupRequest) -> HandlerResult {
    leader_only(ctx)?;
    ctx.groups.leave(&req.group, &req.topic, &req.member_id);
    Ok(Empty.to_bytes())
}

fn to_command(group: String, offsets: Vec<OffsetCommit>) -> Command {
    Command::CommitOffsets {
        group,
        committed_ms: ferry_protocol::now_ms(),
        offsets: offsets
            .into_iter()
            .map(|o| GroupOffset { topic: o.topic, partition: o.partition.0, offset: o.offset.0 })
            .collect(),
    }
}

pub(crate) async fn commit(ctx: &Context, req: CommitOffsetsRequest) -> HandlerResult {
    leader_only(ctx)?;
    valid_group(&req.group)?;
    let retry = retry_topic(&req.group, &req.topic);
    for o in &req.offsets {
        if o.topic != req.topic && o.topic != retry {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "a member of {} reading {} may not commit in {}",
                    req.group, req.topic, o.topic
                ),
            ));
        }
        match ctx.groups.check_holder(&req.group, &req.topic, &req.member_id, o.partition.0) {
            Ok(()) => {}
            Err(NotHolder::UnknownMember) => {
                return Err(err(
                    ErrorCode::UnknownMember,
                    format!("member {} is not in group {}", req.member_id, req.group),
                ))
            }
            Err(NotHolder::NotAssigned) => {
                return Err(err(
                    ErrorCode::NotAssigned,
                    format!(
                        "member {} does not hold partition {} of {}",
                        req.member_id, o.partition, req.topic
                    ),
                ))
            }
        }
    }
    if req.offsets.is_empty() {
        return Ok(Empty.to_bytes());
    }
    rejected_or(ctx.replica.propose(to_command(req.group, req.offsets)).await?)?;
    Ok(Empty.to_bytes())
}

pub(crate) async fn reset(ctx: &Context, req: ResetOffsetsRequest) -> HandlerResult {
    leader_only(ctx)?;
    valid_group(&req.group)?;
    let live = ctx.groups.live_members(&req.group, Instant::now());
    if live > 0 && !req.force {
        return Err(err(
            ErrorCode::GroupHasMembers,
            format!("group {} has {live} live members; stop them or force", req.group),
        ));
    }
    let state = ctx.replica.state();
    for o in &req.offsets {
        let mut topics = state.topics(std::slice::from_ref(&o.topic))?;
        let t = topics.pop().ok_or_else(|| err(ErrorCode::UnknownTopic, o.topic.clone()))?;
        if t.partitions.get(o.partition.0 as usize).is_none() {
            return Err(err(
                ErrorCode::UnknownPartition,
                format!("topic {} has no partition {}", o.topic, o.partition),
            ));
        }
    }
    if req.offsets.is_empty() {
        return Ok(Empty.to_bytes());
    }
    rejected_or(ctx.replica.propose(to_command(req.group, req.offsets)).await?)?;
    Ok(Empty.to_bytes())
}

/// Every partition of the topics `group` reads or has positions in (retry topics included),
/// with its position and bounds.
fn positions(
    ctx: &Context,
    group: &str,
    member_topics: &BTreeSet<String>,
) -> Result<Vec<PartitionOffset>, ReplicaError> {
    let state = ctx.replica.state();
    let committed = state.committed_offsets(group)?;
    let mut topics: BTreeSet<String> = member_topics.clone();
    topics.extend(committed.iter().map(|c| c.topic.clone()));
    // Each topic's retry topic too, whether or not a member reads it right now.
    let read: Vec<String> = topics.iter().filter(|t| !t.starts_with("__")).cloned().collect();
    for t in read {
        topics.insert(retry_topic(group, &t));
    }
    let mut out = Vec::new();
    for name in topics {
        // Topics deleted since (or retry topics never created) have nothing to show.
        let Ok(mut metadata) = state.topics(std::slice::from_ref(&name)) else { continue };
        let Some(t) = metadata.pop() else { continue };
        for p in t.partitions {
            let c = committed.iter().find(|c| c.topic == name && c.partition == p.index.0);
            out.push(PartitionOffset {
                topic: name.clone(),
                partition: p.index,
                committed: c.map(|c| Offset(c.offset)),
                committed_ms: c.map_or(0, |c| c.committed_ms),
                log_start: p.log_start,
                high_watermark: p.high_watermark,
            });
        }
    }
    Ok(out)
}

pub(crate) fn describe(ctx: &Context, req: DescribeGroupRequest) -> HandlerResult {
    leader_only(ctx)?;
    valid_group(&req.group)?;
    let (generation, members) = ctx.groups.describe(&req.group, Instant::now());
    let member_topics: BTreeSet<String> = members.iter().map(|m| m.topic.clone()).collect();
    let offsets = positions(ctx, &req.group, &member_topics)?;
    if members.is_empty() && offsets.iter().all(|o| o.committed.is_none()) {
        return Err(err(ErrorCode::UnknownGroup, format!("no consumer group {}", req.group)));
    }
    Ok(DescribeGroupResponse { group: req.group, generation, members, offsets }.to_bytes())
}

pub(crate) fn list(ctx: &Context) -> HandlerResult {
    leader_only(ctx)?;
    let live = ctx.groups.sweep(Instant::now());
    let committed = ctx.replica.state().all_committed_offsets()?;
    let names: BTreeSet<String> = live.keys().chain(committed.keys()).cloned().collect();
    let mut groups = Vec::with_capacity(names.len());
    for group in names {
        let member_topics = live.get(&group).map(|l| l.topics.clone()).unwrap_or_default();
        let offsets = positions(ctx, &group, &member_topics)?;
        let mut topics: BTreeSet<String> = member_topics;
        for o in &offsets {
            match parse_retry_topic(&o.topic) {
                Some((g, origin)) if g == group => topics.insert(origin.to_string()),
                _ => topics.insert(o.topic.clone()),
            };
        }
        groups.push(GroupSummary {
            members: live.get(&group).map_or(0, |l| l.members),
            lag: offsets.iter().map(PartitionOffset::lag).sum(),
            topics: topics.into_iter().collect(),
            group,
        });
    }
    Ok(ListGroupsResponse { groups }.to_bytes())
}

pub(crate) async fn offsets_for_time(ctx: &Context, req: OffsetsForTimeRequest) -> HandlerResult {
    leader_only(ctx)?;
    let state = ctx.replica.state().clone();
    let partitions = partition_count(ctx, &req.topic)?;
    let topic = req.topic.clone();
    let time_ms = req.time_ms;
    let found = tokio::task::spawn_blocking(move || {
        (0..partitions)
            .map(|p| {
                let index = PartitionIndex(p);
                let handle = state.partition(&topic, index)?;
                let mut offset = handle.log_start();
                let hw = handle.high_watermark();
                // Message times come from producers and are not sorted: the answer is the
                // first message at or after the time, found by reading forward.
                while offset < hw {
                    let batches = state.read(&handle, offset, 1 << 20)?;
                    let before = offset;
                    for b in &batches {
                        let Ok(parsed) = RecordBatch::from_trusted(b.bytes.clone()) else {
                            continue;
                        };
                        for (i, record) in parsed.records().enumerate() {
                            let at = Offset(b.base_offset.0 + i as u64);
                            if at < offset {
                                continue;
                            }
                            if record.is_ok_and(|r| r.timestamp_ms >= time_ms) {
                                return Ok((index, at));
                            }
                        }
                        offset = Offset(b.base_offset.0 + u64::from(parsed.count())).max(offset);
                    }
                    if offset == before {
                        break;
                    }
                }
                Ok((index, hw))
            })
            .collect::<Result<Vec<_>, crate::state::StateError>>()
    })
    .await
    .map_err(|e| err(ErrorCode::Internal, e.to_string()))??;
    Ok(OffsetsForTimeResponse { offsets: found }.to_bytes())
}
