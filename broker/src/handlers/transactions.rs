//! Transaction handlers: `SendHalf`, `EndTransaction`, `ListTransactions`, `TransactionStats`.
//! Decisions go through Raft and are answered once applied; listing reads applied state on the
//! leader.

use bytes::Bytes;
use ferry_protocol::txn::*;
use ferry_protocol::{Decision, DecisionOrigin, Encode, ErrorCode, Offset, PartitionIndex, TxnId};

use super::{checked_batch, err, rejected_or, Context, HandlerResult, PRODUCER_GROUP_BYTES_MAX};
use crate::replication::ReplicaError;
use crate::state::command::{Command, CommandResponse};
use crate::state::txn::TxnRecord;
use crate::txn::observe_decision;

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub(super) async fn send_half(ctx: &Context, req: SendHalfRequest) -> HandlerResult {
    if req.group.is_empty() || req.group.len() > PRODUCER_GROUP_BYTES_MAX {
        return Err(err(
            ErrorCode::InvalidArgument,
            format!("producer group must be 1..={PRODUCER_GROUP_BYTES_MAX} bytes"),
        ));
    }
    let batch = checked_batch(ctx, req.batch)?;
    let check_timeout_ms = match req.check_timeout_ms {
        0 => u32::try_from(ms(ctx.config.txn_check_timeout)).unwrap_or(u32::MAX),
        custom => custom,
    };
    let replica = ctx.replica.group_for(req.partition.0);
    let resp = replica
        .propose(Command::PutHalf {
            group: req.group,
            topic: req.topic,
            partition: req.partition.0,
            check_timeout_ms,
            created_ms: ferry_protocol::now_ms(),
            batch: batch.bytes().clone(),
        })
        .await?;
    match rejected_or(resp)? {
        CommandResponse::HalfStored { txn_id, created_ms } => {
            Ok(SendHalfResponse { txn_id, created_ms }.to_bytes())
        }
        other => Err(err(ErrorCode::Internal, format!("unexpected apply result {other:?}"))),
    }
}

pub(super) async fn end_transaction(ctx: &Context, req: EndTransactionRequest) -> HandlerResult {
    if req.origin == DecisionOrigin::ChecksExhausted {
        return Err(err(ErrorCode::InvalidArgument, "origin checks_exhausted is the broker's own"));
    }
    if req.origin == DecisionOrigin::CheckBack {
        let counter = match req.decision {
            Decision::Commit => &ctx.metrics.txn.check_commit,
            Decision::Rollback => &ctx.metrics.txn.check_rollback,
            Decision::Unknown => &ctx.metrics.txn.check_unknown,
        };
        counter.inc();
    }
    let commit = match req.decision {
        Decision::Commit => true,
        Decision::Rollback => false,
        Decision::Unknown => return unknown_answer(ctx, req),
    };
    let now = ferry_protocol::now_ms();
    let resp = ctx
        .replica
        .propose(Command::EndTransaction {
            txn_id: req.txn_id,
            commit,
            origin: req.origin,
            decided_ms: now,
            purge_at_ms: now.saturating_add(ms(ctx.config.txn_retention)),
        })
        .await?;
    match rejected_or(resp)? {
        CommandResponse::TxnEnded { state, repeated, offset, created_ms } => {
            if !repeated {
                if commit {
                    ctx.metrics.txn.commits.inc();
                } else {
                    ctx.metrics.txn.rollbacks.inc();
                }
                observe_decision(ctx, created_ms, now);
            }
            Ok(EndTransactionResponse { state, repeated, offset }.to_bytes())
        }
        CommandResponse::TxnAlreadyResolved { state } => Err(ReplicaError {
            code: ErrorCode::TransactionAlreadyResolved,
            message: format!(
                "transaction {} is already {state}; a decision never changes",
                req.txn_id
            ),
            leader: None,
            txn_state: Some(state),
        }),
        other => Err(err(ErrorCode::Internal, format!("unexpected apply result {other:?}"))),
    }
}

/// A check-back answered "unknown": nothing to record; the next check is already scheduled.
fn unknown_answer(ctx: &Context, req: EndTransactionRequest) -> HandlerResult {
    if req.origin != DecisionOrigin::CheckBack {
        return Err(err(ErrorCode::InvalidArgument, "decision unknown only answers a check-back"));
    }
    if !ctx.replica.is_leader() {
        return Err(ctx.replica.not_leader());
    }
    let record = ctx.replica.state().txn(req.txn_id)?.ok_or_else(|| not_found(req.txn_id))?;
    Ok(EndTransactionResponse {
        state: record.state,
        repeated: false,
        offset: record.offset.map(Offset),
    }
    .to_bytes())
}

fn not_found(id: TxnId) -> ReplicaError {
    err(
        ErrorCode::UnknownTransaction,
        format!("transaction {id} not found (never existed, or purged after its retention)"),
    )
}

fn info(id: TxnId, r: TxnRecord, batch: Option<Bytes>) -> TxnInfo {
    TxnInfo {
        txn_id: id,
        group: r.group,
        topic: r.topic,
        partition: PartitionIndex(r.partition),
        state: r.state,
        created_ms: r.created_ms,
        check_timeout_ms: r.check_timeout_ms,
        check_count: r.check_count,
        next_check_ms: r.next_check_ms,
        decided_ms: r.decided_ms,
        origin: r.origin,
        offset: r.offset.map(Offset),
        batch: batch.unwrap_or_default(),
    }
}

pub(super) async fn list(ctx: &Context, req: ListTransactionsRequest) -> HandlerResult {
    if !ctx.replica.is_leader() {
        return Err(ctx.replica.not_leader());
    }
    let state = ctx.replica.state().clone();
    let single = req.txn_id;
    let page = tokio::task::spawn_blocking(move || state.list_txns(&req, ferry_protocol::now_ms()))
        .await
        .map_err(|e| err(ErrorCode::Internal, e.to_string()))??;
    if let Some(id) = single {
        if page.txns.is_empty() {
            return Err(not_found(id));
        }
    }
    let txns = page.txns.into_iter().map(|(id, r, b)| info(id, r, b)).collect();
    Ok(ListTransactionsResponse { txns, next: page.next }.to_bytes())
}

pub(super) fn stats(ctx: &Context) -> HandlerResult {
    if !ctx.replica.is_leader() {
        return Err(ctx.replica.not_leader());
    }
    let (oldest_open_ms, groups) = ctx.replica.state().txn_stats()?;
    Ok(TransactionStatsResponse { oldest_open_ms, groups }.to_bytes())
}
