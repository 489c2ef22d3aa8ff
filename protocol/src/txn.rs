//! Transaction requests and the check-back push: half messages, decisions, operator listing.
//!
//! A half message is stored invisible to consumers; the producer later commits or rolls it back
//! with `EndTransaction`. A producer that stays silent is asked by the leader through a
//! [`CheckTransactionPush`] sent on any live connection of its producer group; the producer
//! answers with `EndTransaction` (origin `CheckBack`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::api::ApiKey;
use crate::messages::{Empty, Request};
use crate::types::{Decision, DecisionOrigin, Offset, PartitionIndex, TxnId, TxnState};
use crate::wire::{self, Decode, DecodeError, DecodeResult, Encode};

fn get_state(buf: &mut Bytes, what: &'static str) -> DecodeResult<TxnState> {
    let raw = wire::get_u8(buf, what)?;
    TxnState::from_u8(raw).ok_or_else(|| DecodeError::Invalid { what, detail: format!("{raw}") })
}

fn get_origin(buf: &mut Bytes, what: &'static str) -> DecodeResult<DecisionOrigin> {
    let raw = wire::get_u8(buf, what)?;
    DecisionOrigin::from_u8(raw)
        .ok_or_else(|| DecodeError::Invalid { what, detail: format!("{raw}") })
}

/// Store a half message: invisible until committed.
///
/// ```text
/// send_half := group:string | topic:string | partition:u32 | check_timeout_ms:u32 | batch:bytes
/// ```
///
/// `check_timeout_ms` 0 means the broker's `txn_check_timeout`. The batch is one record batch
/// (usually one record); its producer id and base sequence make the request idempotent: sending
/// the same batch again returns the transaction id of the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendHalfRequest {
    /// The producer group whose members answer check-backs.
    pub group: String,
    /// Topic the message goes to when committed.
    pub topic: String,
    /// Partition inside the topic.
    pub partition: PartitionIndex,
    /// Time before the first check-back, in ms; 0 for the broker default.
    pub check_timeout_ms: u32,
    /// The record batch.
    pub batch: Bytes,
}

impl Encode for SendHalfRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.group);
        wire::put_string(buf, &self.topic);
        buf.put_u32(self.partition.0);
        buf.put_u32(self.check_timeout_ms);
        wire::put_bytes(buf, &self.batch);
    }
}

impl Decode for SendHalfRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(SendHalfRequest {
            group: wire::get_string(buf, "send_half.group")?,
            topic: wire::get_string(buf, "send_half.topic")?,
            partition: PartitionIndex(wire::get_u32(buf, "send_half.partition")?),
            check_timeout_ms: wire::get_u32(buf, "send_half.check_timeout_ms")?,
            batch: wire::get_bytes(buf, "send_half.batch")?,
        })
    }
}

/// The stored half message's transaction.
///
/// ```text
/// send_half_resp := txn_id:u64 | created_ms:u64
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendHalfResponse {
    /// The transaction id to commit or roll back.
    pub txn_id: TxnId,
    /// Leader clock when the half message was stored.
    pub created_ms: u64,
}

impl Encode for SendHalfResponse {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.txn_id.0);
        buf.put_u64(self.created_ms);
    }
}

impl Decode for SendHalfResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(SendHalfResponse {
            txn_id: TxnId(wire::get_u64(buf, "send_half.txn_id")?),
            created_ms: wire::get_u64(buf, "send_half.created_ms")?,
        })
    }
}

impl Request for SendHalfRequest {
    const API_KEY: ApiKey = ApiKey::SendHalf;
    type Response = SendHalfResponse;
}

/// Decide a transaction. Answered only once the decision is committed in Raft.
///
/// ```text
/// end_txn := txn_id:u64 | decision:u8 | origin:u8
/// ```
///
/// Commit and rollback are idempotent; a decision different from the one taken earlier fails
/// with `TransactionAlreadyResolved` (the error body carries the state). `Unknown` is only
/// meaningful from a check-back: it records nothing and the checks go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndTransactionRequest {
    /// The transaction.
    pub txn_id: TxnId,
    /// Commit, rollback, or (check-back answer) unknown.
    pub decision: Decision,
    /// Who decides.
    pub origin: DecisionOrigin,
}

impl Encode for EndTransactionRequest {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.txn_id.0);
        buf.put_u8(self.decision as u8);
        buf.put_u8(self.origin as u8);
    }
}

impl Decode for EndTransactionRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        let txn_id = TxnId(wire::get_u64(buf, "end_txn.txn_id")?);
        let raw = wire::get_u8(buf, "end_txn.decision")?;
        let decision = Decision::from_u8(raw).ok_or_else(|| DecodeError::Invalid {
            what: "end_txn.decision",
            detail: format!("{raw}"),
        })?;
        let origin = get_origin(buf, "end_txn.origin")?;
        Ok(EndTransactionRequest { txn_id, decision, origin })
    }
}

/// Where a transaction stands after `EndTransaction`.
///
/// ```text
/// end_txn_resp := state:u8 | repeated:bool | offset:option<u64>
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndTransactionResponse {
    /// The state now (`Pending`/`Parked` after an `Unknown` answer).
    pub state: TxnState,
    /// True when the same decision had been taken before: nothing changed.
    pub repeated: bool,
    /// Where the committed message landed (base offset of its batch).
    pub offset: Option<Offset>,
}

impl Encode for EndTransactionResponse {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u8(self.state as u8);
        wire::put_bool(buf, self.repeated);
        wire::put_option(buf, self.offset.as_ref(), |b, o| b.put_u64(o.0));
    }
}

impl Decode for EndTransactionResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(EndTransactionResponse {
            state: get_state(buf, "end_txn.state")?,
            repeated: wire::get_bool(buf, "end_txn.repeated")?,
            offset: wire::get_option(buf, "end_txn.offset", |b| {
                Ok(Offset(wire::get_u64(b, "end_txn.offset")?))
            })?,
        })
    }
}

impl Request for EndTransactionRequest {
    const API_KEY: ApiKey = ApiKey::EndTransaction;
    type Response = EndTransactionResponse;
}

/// Answered by the leader only (followers say `NotLeader`), so a client that sends it now and
/// then keeps its connection on the leader, where check-backs come from.
///
/// ```text
/// heartbeat := (empty)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeartbeatRequest;

impl Encode for HeartbeatRequest {
    fn encode(&self, _buf: &mut BytesMut) {}
}

impl Decode for HeartbeatRequest {
    fn decode(_buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(HeartbeatRequest)
    }
}

impl Request for HeartbeatRequest {
    const API_KEY: ApiKey = ApiKey::Heartbeat;
    type Response = Empty;
}

/// Which transactions to list (operators). Open transactions (pending and parked) are listed
/// from their own index; `include_decided` scans every retained record instead.
///
/// ```text
/// list_txn := txn_id:option<u64> | group:string | parked_only:bool | include_decided:bool
///             | older_than_ms:u64 | after:u64 | limit:u32 | with_payload:bool
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListTransactionsRequest {
    /// Only this transaction (any state).
    pub txn_id: Option<TxnId>,
    /// Only this producer group; empty for all.
    pub group: String,
    /// Only parked transactions.
    pub parked_only: bool,
    /// Committed and rolled-back transactions too (still retained).
    pub include_decided: bool,
    /// Only transactions whose half message is older than this many ms; 0 for all.
    pub older_than_ms: u64,
    /// Resume after this transaction id (exclusive); 0 to start at the beginning.
    pub after: TxnId,
    /// Most transactions to return (the broker caps it).
    pub limit: u32,
    /// Include each message's record batch.
    pub with_payload: bool,
}

impl Encode for ListTransactionsRequest {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_option(buf, self.txn_id.as_ref(), |b, id| b.put_u64(id.0));
        wire::put_string(buf, &self.group);
        wire::put_bool(buf, self.parked_only);
        wire::put_bool(buf, self.include_decided);
        buf.put_u64(self.older_than_ms);
        buf.put_u64(self.after.0);
        buf.put_u32(self.limit);
        wire::put_bool(buf, self.with_payload);
    }
}

impl Decode for ListTransactionsRequest {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ListTransactionsRequest {
            txn_id: wire::get_option(buf, "list_txn.txn_id", |b| {
                Ok(TxnId(wire::get_u64(b, "list_txn.txn_id")?))
            })?,
            group: wire::get_string(buf, "list_txn.group")?,
            parked_only: wire::get_bool(buf, "list_txn.parked_only")?,
            include_decided: wire::get_bool(buf, "list_txn.include_decided")?,
            older_than_ms: wire::get_u64(buf, "list_txn.older_than_ms")?,
            after: TxnId(wire::get_u64(buf, "list_txn.after")?),
            limit: wire::get_u32(buf, "list_txn.limit")?,
            with_payload: wire::get_bool(buf, "list_txn.with_payload")?,
        })
    }
}

/// One transaction as operators see it.
///
/// ```text
/// txn_info := txn_id:u64 | group:string | topic:string | partition:u32 | state:u8
///             | created_ms:u64 | check_timeout_ms:u32 | check_count:u32
///             | next_check_ms:u64 | decided_ms:u64 | origin:option<u8> | offset:option<u64>
///             | batch:bytes
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnInfo {
    /// Id.
    pub txn_id: TxnId,
    /// Producer group.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: PartitionIndex,
    /// State.
    pub state: TxnState,
    /// Leader clock when the half message was stored.
    pub created_ms: u64,
    /// Time before the first check-back.
    pub check_timeout_ms: u32,
    /// Check-backs sent to a live producer so far.
    pub check_count: u32,
    /// When the next check-back is due (0 when none is scheduled).
    pub next_check_ms: u64,
    /// When it was decided or parked (0 while pending).
    pub decided_ms: u64,
    /// Who decided it.
    pub origin: Option<DecisionOrigin>,
    /// Where the committed message landed.
    pub offset: Option<Offset>,
    /// The record batch, when asked for (else empty).
    pub batch: Bytes,
}

impl Encode for TxnInfo {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.txn_id.0);
        wire::put_string(buf, &self.group);
        wire::put_string(buf, &self.topic);
        buf.put_u32(self.partition.0);
        buf.put_u8(self.state as u8);
        buf.put_u64(self.created_ms);
        buf.put_u32(self.check_timeout_ms);
        buf.put_u32(self.check_count);
        buf.put_u64(self.next_check_ms);
        buf.put_u64(self.decided_ms);
        wire::put_option(buf, self.origin.as_ref(), |b, o| b.put_u8(*o as u8));
        wire::put_option(buf, self.offset.as_ref(), |b, o| b.put_u64(o.0));
        wire::put_bytes(buf, &self.batch);
    }
}

impl Decode for TxnInfo {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(TxnInfo {
            txn_id: TxnId(wire::get_u64(buf, "txn.id")?),
            group: wire::get_string(buf, "txn.group")?,
            topic: wire::get_string(buf, "txn.topic")?,
            partition: PartitionIndex(wire::get_u32(buf, "txn.partition")?),
            state: get_state(buf, "txn.state")?,
            created_ms: wire::get_u64(buf, "txn.created_ms")?,
            check_timeout_ms: wire::get_u32(buf, "txn.check_timeout_ms")?,
            check_count: wire::get_u32(buf, "txn.check_count")?,
            next_check_ms: wire::get_u64(buf, "txn.next_check_ms")?,
            decided_ms: wire::get_u64(buf, "txn.decided_ms")?,
            origin: wire::get_option(buf, "txn.origin", |b| get_origin(b, "txn.origin"))?,
            offset: wire::get_option(buf, "txn.offset", |b| {
                Ok(Offset(wire::get_u64(b, "txn.offset")?))
            })?,
            batch: wire::get_bytes(buf, "txn.batch")?,
        })
    }
}

/// A page of transactions.
///
/// ```text
/// list_txn_resp := txns:array<txn_info> | next:option<u64>
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListTransactionsResponse {
    /// Transactions in id order.
    pub txns: Vec<TxnInfo>,
    /// Pass as `after` to get the next page; `None` when this was the last.
    pub next: Option<TxnId>,
}

impl Encode for ListTransactionsResponse {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_array(buf, &self.txns, |b, t| t.encode(b));
        wire::put_option(buf, self.next.as_ref(), |b, id| b.put_u64(id.0));
    }
}

impl Decode for ListTransactionsResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(ListTransactionsResponse {
            txns: wire::get_array(buf, "list_txn.txns", 60, TxnInfo::decode)?,
            next: wire::get_option(buf, "list_txn.next", |b| {
                Ok(TxnId(wire::get_u64(b, "list_txn.next")?))
            })?,
        })
    }
}

impl Request for ListTransactionsRequest {
    const API_KEY: ApiKey = ApiKey::ListTransactions;
    type Response = ListTransactionsResponse;
}

/// Transaction counts.
///
/// ```text
/// txn_stats := (empty)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransactionStatsRequest;

impl Encode for TransactionStatsRequest {
    fn encode(&self, _buf: &mut BytesMut) {}
}

impl Decode for TransactionStatsRequest {
    fn decode(_buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(TransactionStatsRequest)
    }
}

/// Counts for one producer group.
///
/// ```text
/// group_stats := group:string | pending:u64 | parked:u64 | committed:u64 | rolled_back:u64
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupTxnStats {
    /// Producer group.
    pub group: String,
    /// Open, not parked.
    pub pending: u64,
    /// Parked.
    pub parked: u64,
    /// Committed since the cluster was created.
    pub committed: u64,
    /// Rolled back since the cluster was created.
    pub rolled_back: u64,
}

impl Encode for GroupTxnStats {
    fn encode(&self, buf: &mut BytesMut) {
        wire::put_string(buf, &self.group);
        buf.put_u64(self.pending);
        buf.put_u64(self.parked);
        buf.put_u64(self.committed);
        buf.put_u64(self.rolled_back);
    }
}

impl Decode for GroupTxnStats {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(GroupTxnStats {
            group: wire::get_string(buf, "txn_stats.group")?,
            pending: wire::get_u64(buf, "txn_stats.pending")?,
            parked: wire::get_u64(buf, "txn_stats.parked")?,
            committed: wire::get_u64(buf, "txn_stats.committed")?,
            rolled_back: wire::get_u64(buf, "txn_stats.rolled_back")?,
        })
    }
}

/// Counts over the whole cluster and per group.
///
/// ```text
/// txn_stats_resp := oldest_open_ms:u64 | groups:array<group_stats>
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TransactionStatsResponse {
    /// `created_ms` of the oldest open (pending or parked) transaction; 0 when none is open.
    pub oldest_open_ms: u64,
    /// Per producer group, in name order.
    pub groups: Vec<GroupTxnStats>,
}

impl Encode for TransactionStatsResponse {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u64(self.oldest_open_ms);
        wire::put_array(buf, &self.groups, |b, g| g.encode(b));
    }
}

impl Decode for TransactionStatsResponse {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(TransactionStatsResponse {
            oldest_open_ms: wire::get_u64(buf, "txn_stats.oldest_open_ms")?,
            groups: wire::get_array(buf, "txn_stats.groups", 36, GroupTxnStats::decode)?,
        })
    }
}

impl Request for TransactionStatsRequest {
    const API_KEY: ApiKey = ApiKey::TransactionStats;
    type Response = TransactionStatsResponse;
}

/// Push kinds (broker → client frames with `FLAG_PUSH`). Append-only.
pub const PUSH_CHECK_TRANSACTION: u16 = 1;

/// The leader asks a producer of the group whether a transaction's local work committed. The
/// producer answers with `EndTransaction` (origin `CheckBack`), `Unknown` if it cannot tell yet.
///
/// ```text
/// push  := response header (correlation_id 0, flags PUSH) | kind:u16 | body
/// check := txn_id:u64 | group:string | topic:string | partition:u32 | created_ms:u64
///          | check_count:u32 | batch:bytes
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckTransactionPush {
    /// The transaction.
    pub txn_id: TxnId,
    /// Producer group asked.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: PartitionIndex,
    /// Leader clock when the half message was stored.
    pub created_ms: u64,
    /// This check's number, from 1.
    pub check_count: u32,
    /// The half message's record batch.
    pub batch: Bytes,
}

impl Encode for CheckTransactionPush {
    fn encode(&self, buf: &mut BytesMut) {
        buf.put_u16(PUSH_CHECK_TRANSACTION);
        buf.put_u64(self.txn_id.0);
        wire::put_string(buf, &self.group);
        wire::put_string(buf, &self.topic);
        buf.put_u32(self.partition.0);
        buf.put_u64(self.created_ms);
        buf.put_u32(self.check_count);
        wire::put_bytes(buf, &self.batch);
    }
}

impl Decode for CheckTransactionPush {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        let kind = wire::get_u16(buf, "push.kind")?;
        if kind != PUSH_CHECK_TRANSACTION {
            return Err(DecodeError::Invalid { what: "push.kind", detail: format!("{kind}") });
        }
        Ok(CheckTransactionPush {
            txn_id: TxnId(wire::get_u64(buf, "check.txn_id")?),
            group: wire::get_string(buf, "check.group")?,
            topic: wire::get_string(buf, "check.topic")?,
            partition: PartitionIndex(wire::get_u32(buf, "check.partition")?),
            created_ms: wire::get_u64(buf, "check.created_ms")?,
            check_count: wire::get_u32(buf, "check.check_count")?,
            batch: wire::get_bytes(buf, "check.batch")?,
        })
    }
}

/// A push frame's body, decoded by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Push {
    /// A check-back.
    CheckTransaction(CheckTransactionPush),
}

impl Decode for Push {
    fn decode(buf: &mut Bytes) -> DecodeResult<Self> {
        Ok(Push::CheckTransaction(CheckTransactionPush::decode(buf)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Encode + Decode + PartialEq + std::fmt::Debug>(value: T) {
        assert_eq!(T::decode_all(value.to_bytes()).unwrap(), value);
    }

    #[test]
    fn transaction_bodies_round_trip() {
        round_trip(SendHalfRequest {
            group: "g".into(),
            topic: "t".into(),
            partition: PartitionIndex(2),
            check_timeout_ms: 1500,
            batch: Bytes::from_static(b"batch"),
        });
        round_trip(SendHalfResponse { txn_id: TxnId(7), created_ms: 9 });
        round_trip(EndTransactionRequest {
            txn_id: TxnId(7),
            decision: Decision::Rollback,
            origin: DecisionOrigin::Operator,
        });
        round_trip(EndTransactionResponse {
            state: TxnState::Committed,
            repeated: true,
            offset: Some(Offset(4)),
        });
        round_trip(ListTransactionsRequest {
            txn_id: Some(TxnId(3)),
            group: "g".into(),
            parked_only: true,
            include_decided: false,
            older_than_ms: 60_000,
            after: TxnId(2),
            limit: 100,
            with_payload: true,
        });
        let info = TxnInfo {
            txn_id: TxnId(3),
            group: "g".into(),
            topic: "t".into(),
            partition: PartitionIndex(1),
            state: TxnState::Parked,
            created_ms: 1,
            check_timeout_ms: 6000,
            check_count: 15,
            next_check_ms: 0,
            decided_ms: 99,
            origin: Some(DecisionOrigin::CheckBack),
            offset: None,
            batch: Bytes::from_static(b"b"),
        };
        round_trip(ListTransactionsResponse { txns: vec![info], next: Some(TxnId(3)) });
        round_trip(TransactionStatsResponse {
            oldest_open_ms: 5,
            groups: vec![GroupTxnStats {
                group: "g".into(),
                pending: 1,
                parked: 2,
                committed: 3,
                rolled_back: 4,
            }],
        });
        let push = CheckTransactionPush {
            txn_id: TxnId(11),
            group: "g".into(),
            topic: "t".into(),
            partition: PartitionIndex(0),
            created_ms: 5,
            check_count: 1,
            batch: Bytes::from_static(b"x"),
        };
        round_trip(push.clone());
        assert_eq!(Push::decode_all(push.to_bytes()).unwrap(), Push::CheckTransaction(push));
    }

    #[test]
    fn unknown_enum_values_are_refused() {
        let mut body = EndTransactionRequest {
            txn_id: TxnId(1),
            decision: Decision::Commit,
            origin: DecisionOrigin::Producer,
        }
        .to_bytes()
        .to_vec();
        body[8] = 9;
        assert!(EndTransactionRequest::decode_all(Bytes::from(body)).is_err());
    }
}
