//! Feeds random, truncated and mutated inputs to every decoder: each must return a value or an
//! error, never panic, and never allocate more than the input can justify.

use bytes::Bytes;

use crate::frame::{ErrorBody, RequestHeader, ResponseHeader};
use crate::group::*;
use crate::messages::*;
use crate::record::{Record, RecordBatch, RecordBatchBuilder};
use crate::txn::*;
use crate::types::{
    ClientKind, Decision, DecisionOrigin, NodeId, Offset, PartitionIndex, TxnId, TxnState,
};
use crate::wire::{Decode, Encode};

const CASES_PER_DECODER: usize = 100_000;

type Decoder = fn(Bytes) -> bool;

fn decoders() -> Vec<(&'static str, Decoder)> {
    fn d<T: Decode>(b: Bytes) -> bool {
        T::decode_all(b).is_ok()
    }
    vec![
        ("request_header", |mut b| RequestHeader::decode(&mut b).is_ok()),
        ("response_header", |mut b| ResponseHeader::decode(&mut b).is_ok()),
        ("error_body", d::<ErrorBody>),
        ("handshake", d::<HandshakeRequest>),
        ("handshake_resp", d::<HandshakeResponse>),
        ("produce", d::<ProduceRequest>),
        ("produce_resp", d::<ProduceResponse>),
        ("fetch", d::<FetchRequest>),
        ("fetch_resp", d::<FetchResponse>),
        ("read_local", d::<ReadLocalRequest>),
        ("create_topic", d::<CreateTopicRequest>),
        ("topic", d::<TopicMetadata>),
        ("delete_topic", d::<DeleteTopicRequest>),
        ("metadata", d::<MetadataRequest>),
        ("metadata_resp", d::<MetadataResponse>),
        ("node_status_resp", d::<NodeStatusResponse>),
        ("add_node", d::<AddNodeRequest>),
        ("remove_node", d::<RemoveNodeRequest>),
        ("send_half", d::<SendHalfRequest>),
        ("send_half_resp", d::<SendHalfResponse>),
        ("end_txn", d::<EndTransactionRequest>),
        ("end_txn_resp", d::<EndTransactionResponse>),
        ("list_txn", d::<ListTransactionsRequest>),
        ("list_txn_resp", d::<ListTransactionsResponse>),
        ("txn_stats_resp", d::<TransactionStatsResponse>),
        ("push", d::<Push>),
        ("group_heartbeat", d::<GroupHeartbeatRequest>),
        ("group_heartbeat_resp", d::<GroupHeartbeatResponse>),
        ("leave_group", d::<LeaveGroupRequest>),
        ("commit_offsets", d::<CommitOffsetsRequest>),
        ("reset_offsets", d::<ResetOffsetsRequest>),
        ("describe_group", d::<DescribeGroupRequest>),
        ("describe_group_resp", d::<DescribeGroupResponse>),
        ("list_groups_resp", d::<ListGroupsResponse>),
        ("offsets_for_time", d::<OffsetsForTimeRequest>),
        ("offsets_for_time_resp", d::<OffsetsForTimeResponse>),
        ("record_batch", |b| {
            RecordBatch::parse(b).is_ok_and(|batch| batch.records().all(|r| r.is_ok()))
        }),
    ]
}

/// Valid encodings to mutate, so the fuzzer reaches deep fields and not only the first length.
fn seeds() -> Vec<Bytes> {
    let mut batch = RecordBatchBuilder::new(9, 1, 0);
    for i in 0..3u8 {
        batch.push(&Record {
            timestamp_ms: 1,
            key: Some(Bytes::from(vec![i])),
            headers: vec![("h".into(), Bytes::from_static(b"v"))],
            value: Bytes::from(vec![i; 5]),
        });
    }
    vec![
        batch.finish(),
        HandshakeRequest {
            version_min: 1,
            version_max: 1,
            client_id: "c".into(),
            kind: ClientKind::Admin,
            producer_group: String::new(),
            auth_mechanism: "none".into(),
            auth_payload: Bytes::new(),
        }
        .to_bytes(),
        FetchResponse {
            high_watermark: Offset(3),
            log_start: Offset(0),
            batches: vec![FetchedBatch {
                base_offset: Offset(1),
                bytes: Bytes::from_static(b"abc"),
            }],
        }
        .to_bytes(),
        MetadataResponse {
            leader: None,
            topics: vec![TopicMetadata {
                name: "t".into(),
                created_ms: 0,
                partitions: vec![PartitionMetadata {
                    index: PartitionIndex(0),
                    log_start: Offset(0),
                    high_watermark: Offset(1),
                }],
            }],
        }
        .to_bytes(),
        NodeStatusResponse {
            node_id: NodeId(1),
            addr: "a".into(),
            role: "leader".into(),
            term: 1,
            leader_id: None,
            last_log_index: 0,
            commit_index: 0,
            applied_index: 0,
            members: vec![],
        }
        .to_bytes(),
        GroupHeartbeatRequest {
            group: "g".into(),
            topic: "t".into(),
            member_id: "m".into(),
            client_id: "c".into(),
            session_timeout_ms: 1,
            owned: vec![PartitionIndex(1)],
            in_flight: 1,
        }
        .to_bytes(),
        DescribeGroupResponse {
            group: "g".into(),
            generation: 1,
            members: vec![MemberInfo {
                member_id: "m".into(),
                client_id: "c".into(),
                topic: "t".into(),
                assigned: vec![PartitionIndex(0)],
                owned: vec![],
                in_flight: 0,
                last_seen_ms_ago: 1,
            }],
            offsets: vec![PartitionOffset {
                topic: "t".into(),
                partition: PartitionIndex(0),
                committed: Some(Offset(1)),
                committed_ms: 1,
                log_start: Offset(0),
                high_watermark: Offset(2),
            }],
        }
        .to_bytes(),
        CommitOffsetsRequest {
            group: "g".into(),
            topic: "t".into(),
            member_id: "m".into(),
            offsets: vec![OffsetCommit {
                topic: "t".into(),
                partition: PartitionIndex(0),
                offset: Offset(1),
            }],
        }
        .to_bytes(),
        ProduceRequest {
            topic: "t".into(),
            partition: PartitionIndex(0),
            batch: Bytes::from_static(b"x"),
            deliver_at_ms: 1,
        }
        .to_bytes(),
        EndTransactionRequest {
            txn_id: TxnId(1),
            decision: Decision::Commit,
            origin: DecisionOrigin::CheckBack,
        }
        .to_bytes(),
        EndTransactionResponse {
            state: TxnState::Committed,
            repeated: false,
            offset: Some(Offset(1)),
        }
        .to_bytes(),
        ListTransactionsResponse {
            txns: vec![TxnInfo {
                txn_id: TxnId(1),
                group: "g".into(),
                topic: "t".into(),
                partition: PartitionIndex(0),
                state: TxnState::Pending,
                created_ms: 1,
                check_timeout_ms: 2,
                check_count: 3,
                next_check_ms: 4,
                decided_ms: 0,
                origin: Some(DecisionOrigin::Producer),
                offset: Some(Offset(2)),
                batch: Bytes::from_static(b"b"),
            }],
            next: None,
        }
        .to_bytes(),
        CheckTransactionPush {
            txn_id: TxnId(1),
            group: "g".into(),
            topic: "t".into(),
            partition: PartitionIndex(0),
            created_ms: 1,
            check_count: 1,
            batch: Bytes::from_static(b"b"),
        }
        .to_bytes(),
        ErrorBody { message: "m".into(), leader: None, txn_state: Some(TxnState::Committed) }
            .to_bytes(),
    ]
}

fn random_input(rng: &mut fastrand::Rng, seeds: &[Bytes]) -> Bytes {
    match rng.u8(0..4) {
        // Pure noise of random length.
        0 => {
            let len = rng.usize(0..64);
            Bytes::from((0..len).map(|_| rng.u8(..)).collect::<Vec<u8>>())
        }
        // Noise that starts with a huge length/count prefix: must not allocate for it.
        1 => {
            let mut v = vec![0xff, 0xff, 0xff, rng.u8(..)];
            v.extend((0..rng.usize(0..16)).map(|_| rng.u8(..)));
            Bytes::from(v)
        }
        // A valid seed, truncated.
        2 => {
            let seed = &seeds[rng.usize(0..seeds.len())];
            seed.slice(0..rng.usize(0..=seed.len()))
        }
        // A valid seed with a few bytes flipped.
        _ => {
            let seed = &seeds[rng.usize(0..seeds.len())];
            let mut v = seed.to_vec();
            for _ in 0..rng.usize(1..4) {
                if !v.is_empty() {
                    let i = rng.usize(0..v.len());
                    v[i] = rng.u8(..);
                }
            }
            Bytes::from(v)
        }
    }
}

#[test]
fn every_decoder_survives_random_and_truncated_input() {
    let seeds = seeds();
    let mut rng = fastrand::Rng::with_seed(0x5eed_f0e1);
    for (name, decode) in decoders() {
        let mut accepted = 0usize;
        for _ in 0..CASES_PER_DECODER {
            let input = random_input(&mut rng, &seeds);
            let outcome = std::panic::catch_unwind(|| decode(input.clone()));
            match outcome {
                Ok(true) => accepted += 1,
                Ok(false) => {}
                Err(_) => panic!("decoder {name} panicked on {input:?}"),
            }
        }
        // Sanity: random input must mostly be refused; a decoder accepting everything is broken.
        assert!(accepted < CASES_PER_DECODER, "decoder {name} accepted every input");
    }
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    // count = u32::MAX elements with 4 bytes of input left: must be an error, not an OOM.
    let mut input = vec![0u8];
    input.extend_from_slice(&u32::MAX.to_be_bytes());
    input.extend_from_slice(&[0, 0, 0, 0]);
    assert!(MetadataResponse::decode_all(Bytes::from(input)).is_err());
    let mut input = Vec::new();
    input.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(MetadataRequest::decode_all(Bytes::from(input)).is_err());
}
