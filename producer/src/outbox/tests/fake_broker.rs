//! A single-node broker that answers handshake, metadata and produce from memory, so the
//! relay can be run with the real [`crate::Producer`] in unit tests. Records what it stored;
//! can be told to answer produce with an error code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use ferry_protocol::frame::{
    self, ErrorBody, RequestHeader, ResponseHeader, FRAME_BYTES_MAX_DEFAULT,
};
use ferry_protocol::messages::{
    HandshakeResponse, MetadataRequest, MetadataResponse, PartitionMetadata, ProduceRequest,
    ProduceResponse, TopicMetadata,
};
use ferry_protocol::{
    ApiKey, Decode, Encode, ErrorCode, NodeId, Offset, PartitionIndex, Record, RecordBatch,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// A stored record and where it went.
#[derive(Debug, Clone)]
pub struct Stored {
    pub topic: String,
    pub partition: u32,
    pub record: Record,
}

#[derive(Debug, Default)]
struct State {
    topics: HashMap<String, u32>,
    stored: Vec<Stored>,
    produce_error: Option<ErrorCode>,
}

/// The fake; stops when dropped.
pub struct ProduceBroker {
    pub addr: String,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Drop for ProduceBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ProduceBroker {
    pub async fn start(topics: &[(&str, u32)]) -> ProduceBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(State {
            topics: topics.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            ..State::default()
        }));
        let stop = CancellationToken::new();
        let (s, st) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = st.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => return,
                    },
                };
                let (s, st) = (s.clone(), st.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut frames = FramedRead::new(read, frame::codec(FRAME_BYTES_MAX_DEFAULT));
                    loop {
                        let frame = tokio::select! {
                            () = st.cancelled() => return,
                            frame = frames.next() => match frame {
                                Some(Ok(frame)) => frame.freeze(),
                                _ => return,
                            },
                        };
                        let out = answer(frame, &s);
                        let len = u32::try_from(out.len()).unwrap();
                        if write.write_u32(len).await.is_err()
                            || write.write_all(&out).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        ProduceBroker { addr, state, stop }
    }

    /// Records stored so far, in arrival order.
    pub fn stored(&self) -> Vec<Stored> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).stored.clone()
    }

    /// Answer every produce with `code` (or normally, with `None`).
    pub fn fail_produce(&self, code: Option<ErrorCode>) {
        self.state.lock().unwrap().produce_error = code;
    }
}

fn answer(mut frame: Bytes, state: &Mutex<State>) -> Bytes {
    let header = RequestHeader::decode(&mut frame).unwrap();
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let result: Result<Bytes, ErrorCode> = match header.api_key {
        ApiKey::Handshake => Ok(HandshakeResponse {
            version: frame::PROTOCOL_VERSION,
            node_id: NodeId(1),
            leader: None,
            nodes: vec![],
        }
        .to_bytes()),
        ApiKey::Metadata => {
            let request = MetadataRequest::decode_all(frame).unwrap();
            let mut topics = Vec::new();
            let mut unknown = false;
            for name in &request.topics {
                match state.topics.get(name) {
                    Some(&count) => topics.push(TopicMetadata {
                        name: name.clone(),
                        created_ms: 1,
                        partitions: (0..count)
                            .map(|i| PartitionMetadata {
                                index: PartitionIndex(i),
                                log_start: Offset(0),
                                high_watermark: Offset(0),
                            })
                            .collect(),
                    }),
                    None => unknown = true,
                }
            }
            if unknown && topics.is_empty() {
                Err(ErrorCode::UnknownTopic)
            } else {
                Ok(MetadataResponse { leader: None, topics }.to_bytes())
            }
        }
        ApiKey::Produce => match state.produce_error {
            Some(code) => Err(code),
            None => {
                let request = ProduceRequest::decode_all(frame).unwrap();
                let batch = RecordBatch::parse(request.batch).unwrap();
                let base = state.stored.len() as u64;
                for record in batch.records() {
                    state.stored.push(Stored {
                        topic: request.topic.clone(),
                        partition: request.partition.0,
                        record: record.unwrap(),
                    });
                }
                Ok(ProduceResponse {
                    base_offset: Offset(base),
                    record_count: batch.count(),
                    deliver_at_ms: 0,
                    duplicates: 0,
                }
                .to_bytes())
            }
        },
        _ => Err(ErrorCode::UnsupportedVersion),
    };
    let mut out = BytesMut::new();
    let (code, body) = match result {
        Ok(body) => (ErrorCode::None, body),
        Err(code) => {
            let body = ErrorBody { message: code.to_string(), leader: None, txn_state: None };
            (code, body.to_bytes())
        }
    };
    ResponseHeader { correlation_id: header.correlation_id, error_code: code, flags: 0 }
        .encode(&mut out);
    out.extend_from_slice(&body);
    out.freeze()
}
