//! Hand-written encodings of the Raft types we store and send: log ids, votes, membership,
//! entries and the three RPCs. Used by the log store (disk) and the Raft network (wire).
//!
//! ```text
//! log_id      := term:u64 | node_id:u64 | index:u64
//! opt<T>      := present:u8 | T?
//! vote        := term:u64 | node_id:u64 | committed:u8
//! membership  := configs:array<array<node_id:u64>> | nodes:array<node_id:u64 | addr:string>
//! stored_mem  := opt<log_id> | membership
//! entry       := log_id | kind:u8 | payload
//!                kind 0 = blank, 1 = normal (payload = command), 2 = membership
//! append_req  := vote | opt<log_id> prev | opt<log_id> leader_commit | array<entry>
//! append_resp := kind:u8 (0 success, 1 partial, 2 conflict, 3 higher_vote)
//!                | opt<log_id> (partial) | vote (higher_vote)
//! vote_req    := vote | opt<log_id> last_log_id
//! vote_resp   := vote | granted:u8 | opt<log_id> last_log_id
//! snap_meta   := opt<log_id> last_log_id | stored_mem | snapshot_id:string
//! snap_req    := vote | snap_meta | offset:u64 | done:u8 | data:bytes
//! snap_resp   := vote
//! ```

use std::collections::{BTreeMap, BTreeSet};

use bytes::{BufMut, Bytes, BytesMut};
use ferry_protocol::wire::{self, DecodeError, DecodeResult};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    StoredMembership, Vote,
};

use super::TypeConfig;
use crate::state::command::Command;

pub fn put_log_id(buf: &mut BytesMut, id: &LogId<u64>) {
    buf.put_u64(id.leader_id.term);
    buf.put_u64(id.leader_id.node_id);
    buf.put_u64(id.index);
}

pub fn get_log_id(buf: &mut Bytes) -> DecodeResult<LogId<u64>> {
    let term = wire::get_u64(buf, "log_id.term")?;
    let node = wire::get_u64(buf, "log_id.node")?;
    let index = wire::get_u64(buf, "log_id.index")?;
    Ok(LogId::new(CommittedLeaderId::new(term, node), index))
}

pub fn put_opt_log_id(buf: &mut BytesMut, id: Option<&LogId<u64>>) {
    wire::put_option(buf, id, put_log_id);
}

pub fn get_opt_log_id(buf: &mut Bytes) -> DecodeResult<Option<LogId<u64>>> {
    wire::get_option(buf, "log_id?", get_log_id)
}

pub fn put_vote(buf: &mut BytesMut, vote: &Vote<u64>) {
    buf.put_u64(vote.leader_id.term);
    buf.put_u64(vote.leader_id.node_id);
    wire::put_bool(buf, vote.committed);
}

pub fn get_vote(buf: &mut Bytes) -> DecodeResult<Vote<u64>> {
    let term = wire::get_u64(buf, "vote.term")?;
    let node = wire::get_u64(buf, "vote.node")?;
    let committed = wire::get_bool(buf, "vote.committed")?;
    Ok(if committed { Vote::new_committed(term, node) } else { Vote::new(term, node) })
}

pub fn put_membership(buf: &mut BytesMut, m: &Membership<u64, BasicNode>) {
    wire::put_array(buf, m.get_joint_config(), |b, set| {
        let ids: Vec<u64> = set.iter().copied().collect();
        wire::put_array(b, &ids, |b, id| b.put_u64(*id));
    });
    let nodes: Vec<(u64, &BasicNode)> = m.nodes().map(|(id, n)| (*id, n)).collect();
    wire::put_array(buf, &nodes, |b, (id, node)| {
        b.put_u64(*id);
        wire::put_string(b, &node.addr);
    });
}

pub fn get_membership(buf: &mut Bytes) -> DecodeResult<Membership<u64, BasicNode>> {
    let configs = wire::get_array(buf, "membership.configs", 4, |b| {
        let ids = wire::get_array(b, "membership.config", 8, |b| wire::get_u64(b, "node_id"))?;
        Ok(ids.into_iter().collect::<BTreeSet<u64>>())
    })?;
    let nodes = wire::get_array(buf, "membership.nodes", 12, |b| {
        Ok((wire::get_u64(b, "node.id")?, BasicNode { addr: wire::get_string(b, "node.addr")? }))
    })?;
    let nodes: BTreeMap<u64, BasicNode> = nodes.into_iter().collect();
    // Membership::new fills in a default node for a voter without an address; a membership we
    // wrote always has every address, so anything else is corruption.
    for set in &configs {
        if let Some(id) = set.iter().find(|id| !nodes.contains_key(id)) {
            return Err(DecodeError::Invalid {
                what: "membership",
                detail: format!("voter {id} has no address"),
            });
        }
    }
    Ok(Membership::new(configs, nodes))
}

pub fn put_stored_membership(buf: &mut BytesMut, m: &StoredMembership<u64, BasicNode>) {
    put_opt_log_id(buf, m.log_id().as_ref());
    put_membership(buf, m.membership());
}

pub fn get_stored_membership(buf: &mut Bytes) -> DecodeResult<StoredMembership<u64, BasicNode>> {
    let log_id = get_opt_log_id(buf)?;
    Ok(StoredMembership::new(log_id, get_membership(buf)?))
}

const ENTRY_BLANK: u8 = 0;
const ENTRY_NORMAL: u8 = 1;
const ENTRY_MEMBERSHIP: u8 = 2;

pub fn put_entry(buf: &mut BytesMut, entry: &Entry<TypeConfig>) {
    put_log_id(buf, &entry.log_id);
    match &entry.payload {
        EntryPayload::Blank => buf.put_u8(ENTRY_BLANK),
        EntryPayload::Normal(cmd) => {
            buf.put_u8(ENTRY_NORMAL);
            cmd.encode(buf);
        }
        EntryPayload::Membership(m) => {
            buf.put_u8(ENTRY_MEMBERSHIP);
            put_membership(buf, m);
        }
    }
}

pub fn get_entry(buf: &mut Bytes) -> DecodeResult<Entry<TypeConfig>> {
    let log_id = get_log_id(buf)?;
    let payload = match wire::get_u8(buf, "entry.kind")? {
        ENTRY_BLANK => EntryPayload::Blank,
        ENTRY_NORMAL => EntryPayload::Normal(Command::decode(buf)?),
        ENTRY_MEMBERSHIP => EntryPayload::Membership(get_membership(buf)?),
        other => {
            return Err(DecodeError::Invalid { what: "entry.kind", detail: format!("{other}") })
        }
    };
    Ok(Entry { log_id, payload })
}

/// The command of a stored normal entry, or with `position` the command at that position of
/// its merged batch, decoding only that command. `None` for blank and membership entries.
pub fn command_of_entry(mut bytes: Bytes, position: Option<u32>) -> DecodeResult<Option<Command>> {
    let _ = get_log_id(&mut bytes)?;
    if wire::get_u8(&mut bytes, "entry.kind")? != ENTRY_NORMAL {
        return Ok(None);
    }
    match position {
        None => Command::decode(&mut bytes).map(Some),
        Some(i) => Command::decode_nth_of_batch(&mut bytes, i),
    }
}

/// Encodes one entry on its own (the log store's value).
pub fn entry_to_bytes(entry: &Entry<TypeConfig>) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + entry_payload_hint(entry));
    put_entry(&mut buf, entry);
    buf.freeze()
}

fn entry_payload_hint(entry: &Entry<TypeConfig>) -> usize {
    match &entry.payload {
        EntryPayload::Normal(cmd) => cmd.encoded_len_hint(),
        _ => 64,
    }
}

/// Decodes one whole stored entry.
pub fn entry_from_bytes(mut bytes: Bytes) -> DecodeResult<Entry<TypeConfig>> {
    let entry = get_entry(&mut bytes)?;
    if !bytes.is_empty() {
        return Err(DecodeError::Trailing(bytes.len()));
    }
    Ok(entry)
}

/// Encodes an append-entries request, including entries from the front of `rpc.entries` while
/// the body stays within `bytes_max` (always at least one). Returns the body and how many entries
/// it holds, so the caller can report a partial success for the rest.
pub fn encode_append(rpc: &AppendEntriesRequest<TypeConfig>, bytes_max: usize) -> (Bytes, usize) {
    let hint: usize = rpc.entries.iter().map(|e| 64 + entry_payload_hint(e)).sum();
    let mut buf = BytesMut::with_capacity(64 + hint.min(bytes_max));
    put_vote(&mut buf, &rpc.vote);
    put_opt_log_id(&mut buf, rpc.prev_log_id.as_ref());
    put_opt_log_id(&mut buf, rpc.leader_commit.as_ref());
    // The count is patched in once known, so each entry is copied once, straight into `buf`.
    let count_at = buf.len();
    buf.put_u32(0);
    let mut count = 0usize;
    for entry in &rpc.entries {
        let before = buf.len();
        put_entry(&mut buf, entry);
        if count > 0 && buf.len() > bytes_max {
            buf.truncate(before);
            break;
        }
        count += 1;
    }
    buf[count_at..count_at + 4].copy_from_slice(&wire::len_u32(count).to_be_bytes());
    (buf.freeze(), count)
}

pub fn decode_append(mut buf: Bytes) -> DecodeResult<AppendEntriesRequest<TypeConfig>> {
    let vote = get_vote(&mut buf)?;
    let prev_log_id = get_opt_log_id(&mut buf)?;
    let leader_commit = get_opt_log_id(&mut buf)?;
    let entries = wire::get_array(&mut buf, "append.entries", 25, get_entry)?;
    Ok(AppendEntriesRequest { vote, prev_log_id, leader_commit, entries })
}

pub fn encode_append_response(resp: &AppendEntriesResponse<u64>) -> Bytes {
    let mut buf = BytesMut::with_capacity(32);
    match resp {
        AppendEntriesResponse::Success => buf.put_u8(0),
        AppendEntriesResponse::PartialSuccess(m) => {
            buf.put_u8(1);
            put_opt_log_id(&mut buf, m.as_ref());
        }
        AppendEntriesResponse::Conflict => buf.put_u8(2),
        AppendEntriesResponse::HigherVote(v) => {
            buf.put_u8(3);
            put_vote(&mut buf, v);
        }
    }
    buf.freeze()
}

pub fn decode_append_response(mut buf: Bytes) -> DecodeResult<AppendEntriesResponse<u64>> {
    Ok(match wire::get_u8(&mut buf, "append_resp.kind")? {
        0 => AppendEntriesResponse::Success,
        1 => AppendEntriesResponse::PartialSuccess(get_opt_log_id(&mut buf)?),
        2 => AppendEntriesResponse::Conflict,
        3 => AppendEntriesResponse::HigherVote(get_vote(&mut buf)?),
        other => {
            return Err(DecodeError::Invalid {
                what: "append_resp.kind",
                detail: format!("{other}"),
            })
        }
    })
}

pub fn encode_vote_request(rpc: &VoteRequest<u64>) -> Bytes {
    let mut buf = BytesMut::with_capacity(48);
    put_vote(&mut buf, &rpc.vote);
    put_opt_log_id(&mut buf, rpc.last_log_id.as_ref());
    buf.freeze()
}

pub fn decode_vote_request(mut buf: Bytes) -> DecodeResult<VoteRequest<u64>> {
    let vote = get_vote(&mut buf)?;
    let last_log_id = get_opt_log_id(&mut buf)?;
    Ok(VoteRequest { vote, last_log_id })
}

pub fn encode_vote_response(resp: &VoteResponse<u64>) -> Bytes {
    let mut buf = BytesMut::with_capacity(48);
    put_vote(&mut buf, &resp.vote);
    wire::put_bool(&mut buf, resp.vote_granted);
    put_opt_log_id(&mut buf, resp.last_log_id.as_ref());
    buf.freeze()
}

pub fn decode_vote_response(mut buf: Bytes) -> DecodeResult<VoteResponse<u64>> {
    let vote = get_vote(&mut buf)?;
    let vote_granted = wire::get_bool(&mut buf, "vote.granted")?;
    let last_log_id = get_opt_log_id(&mut buf)?;
    Ok(VoteResponse { vote, vote_granted, last_log_id })
}

pub fn put_snapshot_meta(buf: &mut BytesMut, meta: &SnapshotMeta<u64, BasicNode>) {
    put_opt_log_id(buf, meta.last_log_id.as_ref());
    put_stored_membership(buf, &meta.last_membership);
    wire::put_string(buf, &meta.snapshot_id);
}

pub fn get_snapshot_meta(buf: &mut Bytes) -> DecodeResult<SnapshotMeta<u64, BasicNode>> {
    Ok(SnapshotMeta {
        last_log_id: get_opt_log_id(buf)?,
        last_membership: get_stored_membership(buf)?,
        snapshot_id: wire::get_string(buf, "snapshot.id")?,
    })
}

pub fn encode_snapshot_request(rpc: &InstallSnapshotRequest<TypeConfig>) -> Bytes {
    let mut buf = BytesMut::with_capacity(64 + rpc.data.len());
    put_vote(&mut buf, &rpc.vote);
    put_snapshot_meta(&mut buf, &rpc.meta);
    buf.put_u64(rpc.offset);
    wire::put_bool(&mut buf, rpc.done);
    wire::put_bytes(&mut buf, &rpc.data);
    buf.freeze()
}

pub fn decode_snapshot_request(mut buf: Bytes) -> DecodeResult<InstallSnapshotRequest<TypeConfig>> {
    let vote = get_vote(&mut buf)?;
    let meta = get_snapshot_meta(&mut buf)?;
    let offset = wire::get_u64(&mut buf, "snapshot.offset")?;
    let done = wire::get_bool(&mut buf, "snapshot.done")?;
    let data = wire::get_bytes(&mut buf, "snapshot.data")?.to_vec();
    Ok(InstallSnapshotRequest { vote, meta, offset, data, done })
}

pub fn encode_snapshot_response(resp: &InstallSnapshotResponse<u64>) -> Bytes {
    let mut buf = BytesMut::with_capacity(24);
    put_vote(&mut buf, &resp.vote);
    buf.freeze()
}

pub fn decode_snapshot_response(mut buf: Bytes) -> DecodeResult<InstallSnapshotResponse<u64>> {
    Ok(InstallSnapshotResponse { vote: get_vote(&mut buf)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::command::Command;

    fn membership() -> Membership<u64, BasicNode> {
        let nodes: BTreeMap<u64, BasicNode> =
            (1..=3).map(|i| (i, BasicNode { addr: format!("127.0.0.1:{i}") })).collect();
        Membership::new(vec![(1..=3).collect()], nodes)
    }

    #[test]
    fn entries_round_trip() {
        let log_id = LogId::new(CommittedLeaderId::new(3, 1), 42);
        let entries = vec![
            Entry::<TypeConfig> { log_id, payload: EntryPayload::Blank },
            Entry::<TypeConfig> {
                log_id,
                payload: EntryPayload::Normal(Command::CreateTopic {
                    name: "t".into(),
                    partitions: 4,
                    created_ms: 9,
                }),
            },
            Entry::<TypeConfig> { log_id, payload: EntryPayload::Membership(membership()) },
        ];
        for e in entries {
            let back = entry_from_bytes(entry_to_bytes(&e)).unwrap();
            assert_eq!(back.log_id, e.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", e.payload));
        }
    }

    #[test]
    fn append_request_respects_byte_budget() {
        let log_id = LogId::new(CommittedLeaderId::new(1, 1), 1);
        let big = Command::Produce {
            topic: "t".into(),
            partition: 0,
            batch: Bytes::from(vec![0u8; 1000]),
        };
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            leader_commit: Some(log_id),
            entries: (0..10)
                .map(|i| Entry {
                    log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
                    payload: EntryPayload::Normal(big.clone()),
                })
                .collect(),
        };
        let (body, count) = encode_append(&rpc, 3500);
        assert_eq!(count, 3);
        assert!(body.len() <= 3500);
        let back = decode_append(body).unwrap();
        assert_eq!(back.entries.len(), 3);
        assert_eq!(back.leader_commit, Some(log_id));
        // A single entry larger than the budget is still sent alone.
        let (_, count) = encode_append(&rpc, 10);
        assert_eq!(count, 1);
    }

    #[test]
    fn rpc_responses_round_trip() {
        let v = Vote::new(5, 2);
        for resp in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(v),
            AppendEntriesResponse::PartialSuccess(Some(LogId::new(
                CommittedLeaderId::new(1, 1),
                3,
            ))),
        ] {
            assert_eq!(decode_append_response(encode_append_response(&resp)).unwrap(), resp);
        }
        let vr = VoteResponse { vote: v, vote_granted: true, last_log_id: None };
        assert_eq!(decode_vote_response(encode_vote_response(&vr)).unwrap(), vr);
    }

    /// Every Raft RPC decoder gets 100,000 inputs: noise, and valid encodings truncated or with
    /// bytes flipped. Each must return a value or an error, never panic.
    #[test]
    fn decoders_never_panic_on_noise_truncation_or_mutation() {
        let log_id = LogId::new(CommittedLeaderId::new(2, 1), 7);
        let rpc = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(log_id),
            leader_commit: Some(log_id),
            entries: vec![
                Entry { log_id, payload: EntryPayload::Membership(membership()) },
                Entry {
                    log_id,
                    payload: EntryPayload::Normal(Command::Produce {
                        topic: "t".into(),
                        partition: 1,
                        batch: Bytes::from_static(b"batch"),
                    }),
                },
            ],
        };
        let seeds = [
            encode_append(&rpc, 1 << 20).0,
            encode_vote_request(&VoteRequest { vote: Vote::new(3, 2), last_log_id: Some(log_id) }),
            encode_vote_response(&VoteResponse {
                vote: Vote::new(3, 2),
                vote_granted: true,
                last_log_id: None,
            }),
            encode_append_response(&AppendEntriesResponse::PartialSuccess(Some(log_id))),
            entry_to_bytes(&rpc.entries[0]),
        ];
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..100_000 {
            let input = match rng.u8(0..3) {
                0 => {
                    let len = rng.usize(0..80);
                    Bytes::from((0..len).map(|_| rng.u8(..)).collect::<Vec<u8>>())
                }
                1 => {
                    let seed = &seeds[rng.usize(0..seeds.len())];
                    seed.slice(0..rng.usize(0..=seed.len()))
                }
                _ => {
                    let mut v = seeds[rng.usize(0..seeds.len())].to_vec();
                    for _ in 0..rng.usize(1..4) {
                        let i = rng.usize(0..v.len());
                        v[i] = rng.u8(..);
                    }
                    Bytes::from(v)
                }
            };
            let _ = entry_from_bytes(input.clone());
            let _ = decode_append(input.clone());
            let _ = decode_append_response(input.clone());
            let _ = decode_vote_request(input.clone());
            let _ = decode_vote_response(input.clone());
            let _ = decode_snapshot_request(input.clone());
            let _ = decode_snapshot_response(input);
        }
        // The seeds themselves decode.
        assert_eq!(decode_append(seeds[0].clone()).unwrap().entries.len(), 2);
    }
}
