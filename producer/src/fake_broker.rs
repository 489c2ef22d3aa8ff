//! A scripted single-node broker for the transactional producer's tests (test builds only):
//! speaks the frame protocol on a loopback port, answers handshake, heartbeat, metadata,
//! send-half and end-transaction from an in-memory table, records every request, and pushes
//! check-backs when a test asks. The real broker is exercised in `broker/tests`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_protocol::frame::{
    self, ErrorBody, RequestHeader, ResponseHeader, FLAG_PUSH, FRAME_BYTES_MAX_DEFAULT,
};
use ferry_protocol::messages::{
    Empty, HandshakeRequest, HandshakeResponse, MetadataRequest, MetadataResponse,
    PartitionMetadata, TopicMetadata,
};
use ferry_protocol::txn::{
    CheckTransactionPush, EndTransactionRequest, EndTransactionResponse, SendHalfRequest,
    SendHalfResponse,
};
use ferry_protocol::{
    ApiKey, Decision, Decode, Encode, ErrorCode, NodeId, Offset, PartitionIndex, TxnId, TxnState,
};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

/// Longest a test waits for the fake to see something.
pub(crate) const WAIT_MAX: Duration = Duration::from_secs(10);

/// Everything the fake was sent, and its transaction table.
#[derive(Debug, Default)]
pub(crate) struct FakeState {
    pub(crate) handshakes: Vec<HandshakeRequest>,
    pub(crate) heartbeats: usize,
    pub(crate) metadata_requests: usize,
    pub(crate) halves: Vec<SendHalfRequest>,
    pub(crate) ends: Vec<EndTransactionRequest>,
    /// Topic name → partition count.
    pub(crate) topics: HashMap<String, u32>,
    txns: HashMap<TxnId, (TxnState, Option<Offset>)>,
    next_txn: u64,
    next_offset: u64,
}

/// The fake broker; stops serving when dropped.
pub(crate) struct FakeBroker {
    pub(crate) addr: String,
    state: Arc<Mutex<FakeState>>,
    /// One push channel per accepted connection, newest last.
    pushers: Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>,
    stop: CancellationToken,
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeBroker {
    /// A fake serving `topics` (name, partition count) on a loopback port.
    pub(crate) async fn start(topics: &[(&str, u32)]) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(Mutex::new(FakeState {
            topics: topics.iter().map(|(n, p)| (n.to_string(), *p)).collect(),
            ..FakeState::default()
        }));
        let pushers: Arc<Mutex<Vec<mpsc::Sender<Bytes>>>> = Arc::default();
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, state.clone(), pushers.clone(), stop.clone()));
        FakeBroker { addr, state, pushers, stop }
    }

    /// The recorded state (a short lock; do not hold across `.await`).
    pub(crate) fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Polls `check` until it returns `Some`; panics naming `what` after [`WAIT_MAX`].
    pub(crate) async fn wait_for<T>(
        &self,
        what: &str,
        mut check: impl FnMut(&FakeState) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + WAIT_MAX;
        loop {
            if let Some(v) = check(&self.state()) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Pushes a check-back on the newest connection that is still open.
    pub(crate) async fn push_check(&self, push: CheckTransactionPush) {
        let mut head = BytesMut::new();
        ResponseHeader { correlation_id: 0, error_code: ErrorCode::None, flags: FLAG_PUSH }
            .encode(&mut head);
        push.encode(&mut head);
        let frame = head.freeze();
        let pushers: Vec<_> = self.pushers.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for pusher in pushers.iter().rev() {
            if pusher.send(frame.clone()).await.is_ok() {
                return;
            }
        }
        panic!("no open connection to push to");
    }

    /// A pending transaction in the table (as if a half message had been stored), with the
    /// push that asks about it.
    pub(crate) fn pending_txn(&self, group: &str, batch: Bytes) -> CheckTransactionPush {
        let mut state = self.state();
        state.next_txn += 1;
        let txn_id = TxnId(state.next_txn);
        state.txns.insert(txn_id, (TxnState::Pending, None));
        CheckTransactionPush {
            txn_id,
            group: group.to_string(),
            topic: "orders".into(),
            partition: PartitionIndex(0),
            created_ms: 5,
            check_count: 1,
            batch,
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<Mutex<FakeState>>,
    pushers: Arc<Mutex<Vec<mpsc::Sender<Bytes>>>>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
        };
        let (push_tx, push_rx) = mpsc::channel(16);
        pushers.lock().unwrap_or_else(PoisonError::into_inner).push(push_tx);
        tokio::spawn(serve(stream, state.clone(), push_rx, stop.clone()));
    }
}

/// One connection: answers requests in order and writes pushes in between.
async fn serve(
    stream: TcpStream,
    state: Arc<Mutex<FakeState>>,
    mut pushes: mpsc::Receiver<Bytes>,
    stop: CancellationToken,
) {
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = FramedRead::new(read_half, frame::codec(FRAME_BYTES_MAX_DEFAULT));
    loop {
        let out = tokio::select! {
            () = stop.cancelled() => return,
            frame = reader.next() => match frame {
                Some(Ok(frame)) => answer(frame.freeze(), &state),
                _ => return,
            },
            Some(push) = pushes.recv() => push,
        };
        let len = u32::try_from(out.len()).expect("small frame");
        if write_half.write_u32(len).await.is_err() || write_half.write_all(&out).await.is_err() {
            return;
        }
    }
}

type Answer = Result<Bytes, (ErrorCode, Option<TxnState>)>;

/// The response frame (header and body) for one request frame.
fn answer(mut frame: Bytes, state: &Mutex<FakeState>) -> Bytes {
    let header = RequestHeader::decode(&mut frame).expect("request header");
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let result = match header.api_key {
        ApiKey::Handshake => {
            state.handshakes.push(HandshakeRequest::decode_all(frame).expect("handshake"));
            let response = HandshakeResponse {
                version: frame::PROTOCOL_VERSION,
                node_id: NodeId(1),
                leader: None,
                nodes: vec![],
            };
            Ok(response.to_bytes())
        }
        ApiKey::Heartbeat => {
            state.heartbeats += 1;
            Ok(Empty.to_bytes())
        }
        ApiKey::Metadata => metadata(&mut state, MetadataRequest::decode_all(frame)),
        ApiKey::SendHalf => send_half(&mut state, SendHalfRequest::decode_all(frame)),
        ApiKey::EndTransaction => {
            end_transaction(&mut state, EndTransactionRequest::decode_all(frame))
        }
        _ => Err((ErrorCode::UnsupportedVersion, None)),
    };
    let mut out = BytesMut::new();
    let (code, body) = match result {
        Ok(body) => (ErrorCode::None, body),
        Err((code, txn_state)) => {
            let body = ErrorBody { message: code.to_string(), leader: None, txn_state };
            (code, body.to_bytes())
        }
    };
    ResponseHeader { correlation_id: header.correlation_id, error_code: code, flags: 0 }
        .encode(&mut out);
    out.extend_from_slice(&body);
    out.freeze()
}

fn metadata(
    state: &mut FakeState,
    request: Result<MetadataRequest, ferry_protocol::DecodeError>,
) -> Answer {
    state.metadata_requests += 1;
    let request = request.map_err(|_| (ErrorCode::Malformed, None))?;
    let mut topics = Vec::new();
    for name in &request.topics {
        let count = *state.topics.get(name).ok_or((ErrorCode::UnknownTopic, None))?;
        let partitions = (0..count)
            .map(|i| PartitionMetadata {
                index: PartitionIndex(i),
                log_start: Offset(0),
                high_watermark: Offset(0),
            })
            .collect();
        topics.push(TopicMetadata { name: name.clone(), created_ms: 1, partitions });
    }
    Ok(MetadataResponse { leader: None, topics }.to_bytes())
}

fn send_half(
    state: &mut FakeState,
    request: Result<SendHalfRequest, ferry_protocol::DecodeError>,
) -> Answer {
    let request = request.map_err(|_| (ErrorCode::Malformed, None))?;
    let count = *state.topics.get(&request.topic).ok_or((ErrorCode::UnknownTopic, None))?;
    if request.partition.0 >= count {
        return Err((ErrorCode::UnknownPartition, None));
    }
    state.next_txn += 1;
    let txn_id = TxnId(state.next_txn);
    state.txns.insert(txn_id, (TxnState::Pending, None));
    state.halves.push(request);
    Ok(SendHalfResponse { txn_id, created_ms: 5 }.to_bytes())
}

fn end_transaction(
    state: &mut FakeState,
    request: Result<EndTransactionRequest, ferry_protocol::DecodeError>,
) -> Answer {
    let request = request.map_err(|_| (ErrorCode::Malformed, None))?;
    state.ends.push(request);
    let (current, offset) =
        *state.txns.get(&request.txn_id).ok_or((ErrorCode::UnknownTransaction, None))?;
    let wanted = match request.decision {
        Decision::Commit => TxnState::Committed,
        Decision::Rollback => TxnState::RolledBack,
        Decision::Unknown => {
            return Ok(
                EndTransactionResponse { state: current, repeated: false, offset }.to_bytes()
            );
        }
    };
    if current == wanted {
        return Ok(EndTransactionResponse { state: current, repeated: true, offset }.to_bytes());
    }
    if current.is_decided() {
        return Err((ErrorCode::TransactionAlreadyResolved, Some(current)));
    }
    let offset = (wanted == TxnState::Committed).then(|| {
        state.next_offset += 1;
        Offset(state.next_offset - 1)
    });
    state.txns.insert(request.txn_id, (wanted, offset));
    Ok(EndTransactionResponse { state: wanted, repeated: false, offset }.to_bytes())
}
