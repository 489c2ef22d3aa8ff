//! A multiplexed client connection: a cheap, cloneable handle; one task writes the socket and
//! one reads it; many requests in flight, matched to responses by correlation id.
//!
//! Callers: the cluster client in this crate, the broker's Raft network (peer connections),
//! `ferryctl` (per-node status) and tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::api::{ApiKey, ErrorCode};
use crate::frame::{
    self, ErrorBody, FrameEncoder, LeaderHint, OutFrame, RequestHeader, ResponseHeader, FLAG_PUSH,
};
use crate::messages::{HandshakeRequest, HandshakeResponse, Request};
use crate::txn::Push;
use crate::types::{ClientKind, TxnState};
use crate::wire::{Decode, DecodeError, Encode};

/// Default bound on requests awaiting a response on one connection.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 1024;

/// Why a request failed, and whether trying again can help ([`ClientError::is_retriable`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not open a TCP connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The connection failed while in use.
    #[error("connection i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The connection closed before the response arrived; the outcome is unknown.
    #[error("connection closed")]
    Closed,
    /// No response within the time allowed; the outcome is unknown.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The response could not be decoded.
    #[error("malformed response: {0}")]
    Decode(#[from] DecodeError),
    /// The server answered with an error code.
    #[error("{code}: {message}")]
    Server {
        /// The code.
        code: ErrorCode,
        /// The server's detail.
        message: String,
        /// Where the leader is (with `NotLeader`).
        leader: Option<LeaderHint>,
        /// The transaction's state (with `TransactionAlreadyResolved`).
        txn_state: Option<TxnState>,
    },
    /// The handshake was refused or made no sense.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The cluster client gave up after retrying until its deadline.
    #[error("cluster unreachable after {attempts} attempts over {elapsed:?}; last error: {last}")]
    Unreachable {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last error seen.
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Whether the same request may succeed if sent again (possibly elsewhere, after a pause).
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::Io(_)
            | ClientError::Closed
            | ClientError::Timeout(_) => true,
            ClientError::Server { code, .. } => code.is_retriable(),
            ClientError::Decode(_)
            | ClientError::Handshake(_)
            | ClientError::Unreachable { .. } => false,
        }
    }

    /// The server's error code, if the server answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::Unreachable { last, .. } => last.code(),
            _ => None,
        }
    }

    /// Whether the failure says the connection itself is unusable.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. }
                | ClientError::Io(_)
                | ClientError::Closed
                | ClientError::Timeout(_)
        )
    }
}

/// How a connection is opened and bounded.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Who we are (sent in the handshake).
    pub client_id: String,
    /// What we are.
    pub kind: ClientKind,
    /// Producer group, empty if none.
    pub producer_group: String,
    /// Largest frame sent or accepted.
    pub frame_bytes_max: usize,
    /// Requests awaiting a response at once; further calls wait for a slot.
    pub in_flight_max: usize,
    /// Time allowed for TCP connect plus handshake.
    pub connect_timeout: Duration,
    /// Default time allowed for one request.
    pub request_timeout: Duration,
    /// Where broker pushes (check-backs) go. Bounded: a push that finds the sink full is
    /// dropped with a warning (the broker asks again later). `None` ignores pushes.
    pub push_sink: Option<mpsc::Sender<Push>>,
}

impl ConnectOptions {
    /// Defaults for a client of `kind` named `client_id`.
    pub fn new(client_id: impl Into<String>, kind: ClientKind) -> Self {
        ConnectOptions {
            client_id: client_id.into(),
            kind,
            producer_group: String::new(),
            frame_bytes_max: frame::FRAME_BYTES_MAX_DEFAULT,
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            push_sink: None,
        }
    }
}

type Reply = oneshot::Sender<Result<(ResponseHeader, Bytes), ClientError>>;

struct Outgoing {
    api_key: ApiKey,
    api_version: u16,
    body: Bytes,
    reply: Reply,
    _permit: OwnedSemaphorePermit,
}

struct Inner {
    tx: mpsc::Sender<Outgoing>,
    in_flight: Arc<Semaphore>,
    closed: CancellationToken,
    handshake: HandshakeResponse,
    addr: String,
    request_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop both socket tasks.
        self.closed.cancel();
    }
}

/// A handle to one multiplexed connection. Cloning is cheap; all clones share the socket.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("addr", &self.inner.addr).finish()
    }
}

impl Connection {
    /// Connects to `addr` and performs the handshake.
    pub async fn connect(addr: &str, opts: &ConnectOptions) -> Result<Connection, ClientError> {
        let timeout = opts.connect_timeout;
        match tokio::time::timeout(timeout, Self::connect_inner(addr, opts)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Connect {
                addr: addr.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
            }),
        }
    }

    async fn connect_inner(addr: &str, opts: &ConnectOptions) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr: addr.to_string(), source })?;
        stream.set_nodelay(true).map_err(ClientError::Io)?;
        let (read_half, write_half) = stream.into_split();
        let codec = frame::codec(opts.frame_bytes_max);
        let reader = FramedRead::new(read_half, codec);
        let writer = FramedWrite::new(write_half, FrameEncoder::new(opts.frame_bytes_max));
        let in_flight_max = opts.in_flight_max.max(1);
        let (tx, rx) = mpsc::channel(in_flight_max);
        let pending: Arc<Mutex<HashMap<u32, Reply>>> = Arc::default();
        let closed = CancellationToken::new();
        tokio::spawn(write_loop(writer, rx, pending.clone(), closed.clone()));
        tokio::spawn(read_loop(reader, pending, closed.clone(), opts.push_sink.clone()));

        let hello = HandshakeRequest {
            version_min: frame::PROTOCOL_VERSION,
            version_max: frame::PROTOCOL_VERSION,
            client_id: opts.client_id.clone(),
            kind: opts.kind,
            producer_group: opts.producer_group.clone(),
            auth_mechanism: "none".into(),
            auth_payload: Bytes::new(),
        };
        let in_flight = Arc::new(Semaphore::new(in_flight_max));
        let raw = send_raw(
            &tx,
            &in_flight,
            &closed,
            ApiKey::Handshake,
            1,
            hello.to_bytes(),
            opts.connect_timeout,
        )
        .await
        .map_err(|e| match e {
            ClientError::Server { code, message, .. } => {
                ClientError::Handshake(format!("{code}: {message}"))
            }
            other => other,
        })?;
        let handshake = HandshakeResponse::decode_all(raw)?;
        if handshake.version != frame::PROTOCOL_VERSION {
            return Err(ClientError::Handshake(format!(
                "server chose protocol version {}, we speak {}",
                handshake.version,
                frame::PROTOCOL_VERSION
            )));
        }
        Ok(Connection {
            inner: Arc::new(Inner {
                tx,
                in_flight,
                closed,
                handshake,
                addr: addr.to_string(),
                request_timeout: opts.request_timeout,
            }),
        })
    }

    /// What the server said in the handshake.
    pub fn handshake(&self) -> &HandshakeResponse {
        &self.inner.handshake
    }

    /// The address this connection was opened to.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// True once the socket failed or closed; every later call fails with `Closed`.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Sends a typed request with the connection's default timeout.
    pub async fn call<R: Request>(&self, req: &R) -> Result<R::Response, ClientError> {
        self.call_timeout(req, self.inner.request_timeout).await
    }

    /// Sends a typed request, waiting at most `timeout` for its response.
    pub async fn call_timeout<R: Request>(
        &self,
        req: &R,
        timeout: Duration,
    ) -> Result<R::Response, ClientError> {
        let raw = self.call_raw(R::API_KEY, R::API_VERSION, req.to_bytes(), timeout).await?;
        Ok(R::Response::decode_all(raw)?)
    }

    /// Sends an already-encoded body; returns the response body on success.
    pub async fn call_raw(
        &self,
        api_key: ApiKey,
        api_version: u16,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let i = &self.inner;
        send_raw(&i.tx, &i.in_flight, &i.closed, api_key, api_version, body, timeout).await
    }
}

async fn send_raw(
    tx: &mpsc::Sender<Outgoing>,
    in_flight: &Arc<Semaphore>,
    closed: &CancellationToken,
    api_key: ApiKey,
    api_version: u16,
    body: Bytes,
    timeout: Duration,
) -> Result<Bytes, ClientError> {
    let work = async {
        let permit = in_flight.clone().acquire_owned().await.map_err(|_| ClientError::Closed)?;
        if closed.is_cancelled() {
            return Err(ClientError::Closed);
        }
        let (reply, rx) = oneshot::channel();
        tx.send(Outgoing { api_key, api_version, body, reply, _permit: permit })
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    };
    let (header, mut body) = match tokio::time::timeout(timeout, work).await {
        Ok(result) => result?,
        Err(_) => return Err(ClientError::Timeout(timeout)),
    };
    if header.error_code == ErrorCode::None {
        return Ok(body);
    }
    let detail = ErrorBody::decode(&mut body).unwrap_or(ErrorBody {
        message: String::new(),
        leader: None,
        txn_state: None,
    });
    Err(ClientError::Server {
        code: header.error_code,
        message: detail.message,
        leader: detail.leader,
        txn_state: detail.txn_state,
    })
}

type Writer = FramedWrite<tokio::net::tcp::OwnedWriteHalf, FrameEncoder>;
type Reader = FramedRead<tokio::net::tcp::OwnedReadHalf, tokio_util::codec::LengthDelimitedCodec>;

/// Owns the write half: assigns correlation ids, registers the reply slot, writes frames, and
/// flushes once per burst rather than once per request.
async fn write_loop(
    mut writer: Writer,
    mut rx: mpsc::Receiver<Outgoing>,
    pending: Arc<Mutex<HashMap<u32, Reply>>>,
    closed: CancellationToken,
) {
    let mut next_id: u32 = 1;
    loop {
        let first = tokio::select! {
            _ = closed.cancelled() => break,
            msg = rx.recv() => match msg { Some(m) => m, None => break },
        };
        let mut burst = Some(first);
        let mut failed = false;
        while let Some(out) = burst.take() {
            let id = next_id;
            next_id = next_id.wrapping_add(1).max(1);
            let mut head = BytesMut::with_capacity(frame::REQUEST_HEADER_BYTES);
            RequestHeader {
                api_key: out.api_key,
                api_version: out.api_version,
                correlation_id: id,
                flags: 0,
            }
            .encode(&mut head);
            if let Ok(mut map) = pending.lock() {
                map.insert(id, out.reply);
            }
            if writer.feed(OutFrame { head: head.freeze(), body: out.body }).await.is_err() {
                failed = true;
                break;
            }
            burst = rx.try_recv().ok();
        }
        if failed || SinkExt::<OutFrame>::flush(&mut writer).await.is_err() {
            break;
        }
    }
    closed.cancel();
    // Dropping the reply senders tells every waiter the connection closed.
    if let Ok(mut map) = pending.lock() {
        map.clear();
    }
}

/// Hands a push to the sink without waiting: the read loop must keep serving responses.
fn on_push(body: Bytes, sink: Option<&mpsc::Sender<Push>>) {
    let Some(sink) = sink else {
        tracing::debug!("ignoring broker push: no push sink");
        return;
    };
    match Push::decode_all(body) {
        Ok(push) => {
            if let Err(e) = sink.try_send(push) {
                tracing::warn!(error = %e, "push dropped (sink full or closed); the broker retries");
            }
        }
        Err(error) => tracing::warn!(%error, "undecodable push ignored"),
    }
}

/// Owns the read half: matches responses to waiting requests by correlation id.
async fn read_loop(
    mut reader: Reader,
    pending: Arc<Mutex<HashMap<u32, Reply>>>,
    closed: CancellationToken,
    push_sink: Option<mpsc::Sender<Push>>,
) {
    loop {
        let frame = tokio::select! {
            _ = closed.cancelled() => break,
            f = reader.next() => f,
        };
        let mut frame = match frame {
            Some(Ok(f)) => f.freeze(),
            Some(Err(error)) => {
                tracing::debug!(%error, "connection read failed");
                break;
            }
            None => break,
        };
        let header = match ResponseHeader::decode(&mut frame) {
            Ok(h) => h,
            Err(error) => {
                tracing::warn!(%error, "undecodable response header; closing connection");
                break;
            }
        };
        if header.flags & FLAG_PUSH != 0 {
            on_push(frame, push_sink.as_ref());
            continue;
        }
        let reply = pending.lock().ok().and_then(|mut map| map.remove(&header.correlation_id));
        match reply {
            Some(reply) => {
                let _ = reply.send(Ok((header, frame)));
            }
            None => tracing::debug!(id = header.correlation_id, "response for unknown request"),
        }
    }
    closed.cancel();
    if let Ok(mut map) = pending.lock() {
        map.clear();
    }
}
