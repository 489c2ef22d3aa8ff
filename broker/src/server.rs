//! The TCP listener and its sessions: one task reads a connection's frames and spawns one task
//! per request (bounded per connection), one task writes responses in bursts. A semaphore bounds
//! connections; the first request must be a handshake.
//!
//! Callers: `lib.rs` starts [`serve`]; request handling is in [`crate::handlers`].

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use ferry_protocol::frame::{
    self, ErrorBody, FrameEncoder, OutFrame, RequestHeader, ResponseHeader,
};
use ferry_protocol::{ApiKey, ClientKind, Encode, ErrorCode};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handlers::{self, Context};
use crate::replication::ReplicaError;

/// Accepts connections until `shutdown` fires, then waits for sessions to finish.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(ctx.config.connections_max));
    let sessions = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(error) => {
                // Usually EMFILE; pause briefly instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; refusing connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        sessions.spawn(async move {
            ctx.metrics.connections.inc();
            session(stream, ctx.clone(), shutdown).await;
            ctx.metrics.connections.dec();
            drop(permit);
        });
    }
    sessions.close();
    sessions.wait().await;
}

async fn session(stream: TcpStream, ctx: Arc<Context>, shutdown: CancellationToken) {
    let (read_half, write_half) = stream.into_split();
    let codec = frame::codec(ctx.config.frame_bytes_max);
    let mut reader = FramedRead::new(read_half, codec);
    let mut writer = FramedWrite::new(write_half, FrameEncoder::new(ctx.config.frame_bytes_max));
    let in_flight_max = ctx.config.requests_in_flight_per_connection_max;
    let (tx, mut rx) = mpsc::channel::<OutFrame>(in_flight_max);
    let closed = CancellationToken::new();

    let writer_closed = closed.clone();
    let write_task = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(frame) = next.take() {
                if writer.feed(frame).await.is_err() {
                    writer_closed.cancel();
                    return;
                }
                next = rx.try_recv().ok();
            }
            if SinkExt::<OutFrame>::flush(&mut writer).await.is_err() {
                writer_closed.cancel();
                return;
            }
        }
    });

    let permits = Arc::new(Semaphore::new(in_flight_max));
    let requests = TaskTracker::new();
    let mut kind: Option<ClientKind> = None;
    let mut registration = None;
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = closed.cancelled() => break,
            f = reader.next() => f,
        };
        let mut frame = match next {
            Some(Ok(f)) => f.freeze(),
            Some(Err(error)) => {
                tracing::debug!(%error, "session read failed");
                break;
            }
            None => break,
        };
        let header = match RequestHeader::decode(&mut frame) {
            Ok(h) => h,
            Err((Some(correlation_id), e)) => {
                let err = ReplicaError {
                    code: ErrorCode::Malformed,
                    message: e.to_string(),
                    leader: None,
                    txn_state: None,
                };
                if tx.send(error_frame(correlation_id, &err)).await.is_err() {
                    break;
                }
                continue;
            }
            Err((None, _)) => break,
        };
        if header.api_key == ApiKey::Handshake {
            let started = Instant::now();
            let result = handlers::handshake(&ctx, frame).map(|(hello, body)| {
                kind = Some(hello.kind);
                // A producer of a group can be asked about its transactions (check-back).
                registration = (hello.kind == ClientKind::Producer
                    && !hello.producer_group.is_empty())
                .then(|| ctx.producers.register(&hello.producer_group, tx.clone()));
                body
            });
            ctx.metrics.observe(header.api_key, started.elapsed(), result.is_err());
            if tx.send(response_frame(header.correlation_id, result)).await.is_err() {
                break;
            }
            continue;
        }
        let Some(client_kind) = kind else {
            let err = ReplicaError {
                code: ErrorCode::HandshakeRequired,
                message: "the first request must be a handshake".into(),
                leader: None,
                txn_state: None,
            };
            if tx.send(error_frame(header.correlation_id, &err)).await.is_err() {
                break;
            }
            continue;
        };
        // Back-pressure: stop reading while this connection has too many requests running.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let ctx = ctx.clone();
        let tx = tx.clone();
        requests.spawn(async move {
            let started = Instant::now();
            let result = handlers::dispatch(&ctx, client_kind, header, frame).await;
            ctx.metrics.observe(header.api_key, started.elapsed(), result.is_err());
            let _ = tx.send(response_frame(header.correlation_id, result)).await;
            drop(permit);
        });
    }
    // No more check-backs to this session; let running requests answer before the writer
    // closes.
    drop(registration);
    requests.close();
    requests.wait().await;
    drop(tx);
    let _ = write_task.await;
}

fn response_frame(correlation_id: u32, result: Result<Bytes, ReplicaError>) -> OutFrame {
    match result {
        Ok(body) => {
            let mut head = BytesMut::with_capacity(frame::RESPONSE_HEADER_BYTES);
            ResponseHeader { correlation_id, error_code: ErrorCode::None, flags: 0 }
                .encode(&mut head);
            OutFrame { head: head.freeze(), body }
        }
        Err(e) => error_frame(correlation_id, &e),
    }
}

fn error_frame(correlation_id: u32, e: &ReplicaError) -> OutFrame {
    let mut head = BytesMut::with_capacity(64 + e.message.len());
    ResponseHeader { correlation_id, error_code: e.code, flags: 0 }.encode(&mut head);
    ErrorBody { message: e.message.clone(), leader: e.leader.clone(), txn_state: e.txn_state }
        .encode(&mut head);
    OutFrame { head: head.freeze(), body: Bytes::new() }
}
