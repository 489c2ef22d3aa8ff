//! A single in-process broker: the request paths, errors and the admin endpoints.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_broker::{Broker, Config};
use ferry_protocol::messages::*;
use ferry_protocol::{
    ApiKey, ClientError, ClientKind, ConnectOptions, Connection, ErrorCode, Offset, PartitionIndex,
    RecordBatch,
};

async fn start() -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listen: "127.0.0.1:0".into(),
        admin_listen: Some("127.0.0.1:0".into()),
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    let broker = Broker::start(config).await.unwrap();
    (broker, dir)
}

async fn connect(broker: &Broker) -> Connection {
    let opts = ConnectOptions::new("test", ClientKind::Admin);
    let deadline = Instant::now() + Duration::from_secs(20);
    // The node elects itself within an election timeout; wait until it leads.
    loop {
        let conn = Connection::connect(&broker.addr().to_string(), &opts).await.unwrap();
        let status = conn.call(&NodeStatusRequest).await.unwrap();
        if status.role == "leader" {
            return conn;
        }
        assert!(Instant::now() < deadline, "single node never became leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

use crate::harness::batch_of as batch;

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    crate::harness::http_get(addr, path, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_fetch_round_trip_and_topic_lifecycle() {
    let (broker, _dir) = start().await;
    let conn = connect(&broker).await;

    let t = conn.call(&CreateTopicRequest { name: "t1".into(), partitions: 2 }).await.unwrap();
    assert_eq!(t.partitions.len(), 2);
    let dup = conn.call(&CreateTopicRequest { name: "t1".into(), partitions: 2 }).await;
    assert_eq!(dup.unwrap_err().code(), Some(ErrorCode::TopicExists));
    let bad = conn.call(&CreateTopicRequest { name: "no spaces".into(), partitions: 1 }).await;
    assert_eq!(bad.unwrap_err().code(), Some(ErrorCode::InvalidArgument));
    let zero = conn.call(&CreateTopicRequest { name: "z".into(), partitions: 0 }).await;
    assert_eq!(zero.unwrap_err().code(), Some(ErrorCode::InvalidArgument));

    let produce = |values: &'static [&'static str]| ProduceRequest {
        topic: "t1".into(),
        partition: PartitionIndex(1),
        batch: batch(values),
        deliver_at_ms: 0,
    };
    let r1 = conn.call(&produce(&["a", "b", "c"])).await.unwrap();
    assert_eq!((r1.base_offset, r1.record_count), (Offset(0), 3));
    let r2 = conn.call(&produce(&["d"])).await.unwrap();
    assert_eq!(r2.base_offset, Offset(3));

    // Fetch from the middle of the first batch: that batch comes back whole.
    let f = conn
        .call(&FetchRequest {
            topic: "t1".into(),
            partition: PartitionIndex(1),
            offset: Offset(1),
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(f.high_watermark, Offset(4));
    assert_eq!(f.batches.len(), 2);
    assert_eq!(f.batches[0].base_offset, Offset(0));
    let values: Vec<Bytes> = f
        .batches
        .iter()
        .flat_map(|b| {
            RecordBatch::parse(b.bytes.clone())
                .unwrap()
                .records()
                .map(|r| r.unwrap().value)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(values, vec!["a", "b", "c", "d"]);

    let md = conn.call(&MetadataRequest::default()).await.unwrap();
    assert_eq!(md.topics.len(), 1);
    assert_eq!(md.topics[0].partitions[1].high_watermark, Offset(4));

    conn.call(&DeleteTopicRequest { name: "t1".into() }).await.unwrap();
    let gone = conn.call(&MetadataRequest { topics: vec!["t1".into()] }).await;
    assert_eq!(gone.unwrap_err().code(), Some(ErrorCode::UnknownTopic));
    let gone = conn.call(&produce(&["x"])).await;
    assert_eq!(gone.unwrap_err().code(), Some(ErrorCode::UnknownTopic));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_fetch_wakes_on_produce() {
    let (broker, _dir) = start().await;
    let conn = connect(&broker).await;
    conn.call(&CreateTopicRequest { name: "lp".into(), partitions: 1 }).await.unwrap();
    let fetcher = conn.clone();
    let parked = tokio::spawn(async move {
        let started = Instant::now();
        let f = fetcher
            .call_timeout(
                &FetchRequest {
                    topic: "lp".into(),
                    partition: PartitionIndex(0),
                    offset: Offset(0),
                    max_bytes: 1024,
                    max_wait_ms: 20_000,
                },
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        (f, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    conn.call(&ProduceRequest {
        topic: "lp".into(),
        partition: PartitionIndex(0),
        batch: batch(&["hi"]),
        deliver_at_ms: 0,
    })
    .await
    .unwrap();
    let (f, waited) = parked.await.unwrap();
    assert_eq!(f.batches.len(), 1);
    assert!(waited < Duration::from_secs(15), "fetch was woken by the produce, not its timeout");

    // With nothing new, the fetch returns empty after its wait.
    let f = conn
        .call(&FetchRequest {
            topic: "lp".into(),
            partition: PartitionIndex(0),
            offset: Offset(1),
            max_bytes: 1024,
            max_wait_ms: 100,
        })
        .await
        .unwrap();
    assert!(f.batches.is_empty());
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_errors() {
    let (broker, _dir) = start().await;
    let conn = connect(&broker).await;
    conn.call(&CreateTopicRequest { name: "e".into(), partitions: 1 }).await.unwrap();

    // A corrupted batch is refused before it reaches the log.
    let mut bytes = batch(&["x"]).to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let r = conn
        .call(&ProduceRequest {
            topic: "e".into(),
            partition: PartitionIndex(0),
            batch: Bytes::from(bytes),
            deliver_at_ms: 0,
        })
        .await;
    assert_eq!(r.unwrap_err().code(), Some(ErrorCode::CorruptBatch));

    let r = conn
        .call(&ProduceRequest {
            topic: "e".into(),
            partition: PartitionIndex(5),
            batch: batch(&["x"]),
            deliver_at_ms: 0,
        })
        .await;
    assert_eq!(r.unwrap_err().code(), Some(ErrorCode::UnknownPartition));

    let r = conn
        .call(&FetchRequest {
            topic: "nope".into(),
            partition: PartitionIndex(0),
            offset: Offset(0),
            max_bytes: 10,
            max_wait_ms: 0,
        })
        .await;
    assert_eq!(r.unwrap_err().code(), Some(ErrorCode::UnknownTopic));

    // A body that does not decode is Malformed, and the connection keeps working.
    let r = conn
        .call_raw(ApiKey::CreateTopic, 1, Bytes::from_static(b"\x00"), Duration::from_secs(5))
        .await;
    assert!(matches!(r, Err(ClientError::Server { code: ErrorCode::Malformed, .. })));
    conn.call(&NodeStatusRequest).await.unwrap();

    // Raft RPCs from a non-peer are refused.
    let r = conn.call_raw(ApiKey::RaftVote, 1, Bytes::new(), Duration::from_secs(5)).await;
    assert!(matches!(r, Err(ClientError::Server { code: ErrorCode::AuthFailed, .. })));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_and_metrics() {
    let (broker, _dir) = start().await;
    let conn = connect(&broker).await;
    conn.call(&CreateTopicRequest { name: "m".into(), partitions: 1 }).await.unwrap();
    conn.call(&ProduceRequest {
        topic: "m".into(),
        partition: PartitionIndex(0),
        batch: batch(&["a", "b"]),
        deliver_at_ms: 0,
    })
    .await
    .unwrap();
    let admin = broker.admin_addr().unwrap();
    assert_eq!(http_get(admin, "/livez").await.0, 200);
    let (code, body) = http_get(admin, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"is_leader\":true"));
    let (code, text) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    assert!(text.contains("ferry_messages_in_total 2"), "{text}");
    assert!(text.contains("ferry_raft_is_leader 1"));
    assert!(text.contains("ferry_request_duration_seconds_bucket{operation=\"produce\""));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_handshake_are_refused() {
    use futures_util::{SinkExt, StreamExt};
    let (broker, _dir) = start().await;
    let stream = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
    let mut framed = tokio_util::codec::Framed::new(stream, ferry_protocol::frame::codec(1 << 20));
    let mut req = bytes::BytesMut::new();
    ferry_protocol::frame::RequestHeader {
        api_key: ApiKey::Metadata,
        api_version: 1,
        correlation_id: 5,
        flags: 0,
    }
    .encode(&mut req);
    framed.send(req.freeze()).await.unwrap();
    let mut resp = framed.next().await.unwrap().unwrap().freeze();
    let header = ferry_protocol::frame::ResponseHeader::decode(&mut resp).unwrap();
    assert_eq!(header.correlation_id, 5);
    assert_eq!(header.error_code, ErrorCode::HandshakeRequired);
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_batches_and_record_ids_are_stored_once() {
    let (broker, _dir) = start().await;
    let conn = connect(&broker).await;
    conn.call(&CreateTopicRequest { name: "d".into(), partitions: 1 }).await.unwrap();
    let build = |producer_id: u64, sequence: u32, records: &[(&str, Option<&str>)]| {
        let mut b = ferry_protocol::RecordBatchBuilder::new(producer_id, sequence, 0);
        for (value, id) in records {
            let headers = id
                .map(|id| {
                    let name = ferry_protocol::record::DEDUP_ID_HEADER.to_string();
                    (name, Bytes::from(id.to_string()))
                })
                .into_iter()
                .collect();
            b.push(&ferry_protocol::Record {
                timestamp_ms: 1,
                key: None,
                headers,
                value: Bytes::from(value.to_string()),
            });
        }
        ProduceRequest {
            topic: "d".into(),
            partition: PartitionIndex(0),
            batch: b.finish(),
            deliver_at_ms: 0,
        }
    };
    // A producer retrying a batch whose answer it lost: same producer id and sequence.
    let first = build(77, 0, &[("a", None), ("b", None)]);
    let r = conn.call(&first).await.unwrap();
    assert_eq!((r.base_offset, r.record_count, r.duplicates), (Offset(0), 2, 0));
    let r = conn.call(&first).await.unwrap();
    assert_eq!((r.base_offset, r.record_count, r.duplicates), (Offset(0), 0, 2));
    // Rows of an outbox, published again by another relay with the batch cut differently.
    let r = conn.call(&build(1, 0, &[("r1", Some("ob:1")), ("r2", Some("ob:2"))])).await.unwrap();
    assert_eq!((r.base_offset, r.record_count, r.duplicates), (Offset(2), 2, 0));
    let again = build(2, 0, &[("r2", Some("ob:2")), ("r3", Some("ob:3"))]);
    let r = conn.call(&again).await.unwrap();
    assert_eq!((r.base_offset, r.record_count, r.duplicates), (Offset(4), 1, 1));
    // An id beyond the limit is refused before anything is proposed.
    let long = "x".repeat(ferry_protocol::record::DEDUP_ID_BYTES_MAX + 1);
    let refused = conn.call(&build(3, 0, &[("z", Some(long.as_str()))])).await;
    assert_eq!(refused.unwrap_err().code(), Some(ErrorCode::CorruptBatch));

    let f = conn
        .call(&FetchRequest {
            topic: "d".into(),
            partition: PartitionIndex(0),
            offset: Offset(0),
            max_bytes: 1 << 20,
            max_wait_ms: 0,
        })
        .await
        .unwrap();
    let values: Vec<Bytes> = f
        .batches
        .iter()
        .flat_map(|b| {
            RecordBatch::parse(b.bytes.clone())
                .unwrap()
                .records()
                .map(|r| r.unwrap().value)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(values, vec!["a", "b", "r1", "r2", "r3"]);
    let (_, metrics) = http_get(broker.admin_addr().unwrap(), "/metrics").await;
    assert!(metrics.contains("ferry_produce_duplicates_total 3"), "{metrics}");
    broker.shutdown().await;
}
