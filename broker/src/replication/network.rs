//! openraft's network over our own protocol: each peer gets one multiplexed [`Connection`]
//! (kind `Peer`), reopened on failure. Append-entries bodies are capped at a byte budget that
//! fits a frame; the entries left out are reported to openraft as a partial success and sent
//! in the next round.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::{ApiKey, ClientError, ClientKind, ConnectOptions, Connection};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use super::codec;
use super::TypeConfig;

/// Most bytes of entries in one append-entries RPC (at least one entry is always sent).
///
/// openraft 0.9 gives each append-entries RPC the heartbeat interval (100 ms by default) to
/// finish. A follower catching up on large batches with multi-megabyte RPCs missed that on a
/// loaded machine and retried the same payload forever; 1 MiB RPCs finish well within it, and
/// with one RPC per follower in flight still carry hundreds of MB/s.
const APPEND_BYTES_MAX: usize = 1024 * 1024;

/// Shared pool of peer connections.
#[derive(Clone)]
pub struct Network {
    inner: Arc<NetInner>,
}

struct NetInner {
    connect: ConnectOptions,
    append_bytes_max: usize,
    conns: Mutex<HashMap<String, Connection>>,
}

impl Network {
    /// A pool for node `self_id`, sending frames of at most `frame_bytes_max`.
    pub fn new(self_id: u64, frame_bytes_max: usize) -> Self {
        let mut connect = ConnectOptions::new(format!("node-{self_id}"), ClientKind::Peer);
        connect.frame_bytes_max = frame_bytes_max;
        connect.connect_timeout = Duration::from_millis(500);
        Network {
            inner: Arc::new(NetInner {
                connect,
                append_bytes_max: APPEND_BYTES_MAX.min(frame_bytes_max.saturating_sub(4096)),
                conns: Mutex::new(HashMap::new()),
            }),
        }
    }

    async fn connection(&self, addr: &str) -> Result<Connection, ClientError> {
        let cached = self
            .inner
            .conns
            .lock()
            .ok()
            .and_then(|m| m.get(addr).filter(|c| !c.is_closed()).cloned());
        if let Some(c) = cached {
            return Ok(c);
        }
        let conn = Connection::connect(addr, &self.inner.connect).await?;
        if let Ok(mut m) = self.inner.conns.lock() {
            m.insert(addr.to_string(), conn.clone());
        }
        Ok(conn)
    }

    async fn call(
        &self,
        addr: &str,
        key: ApiKey,
        body: Bytes,
        ttl: Duration,
    ) -> Result<Bytes, ClientError> {
        let conn = self.connection(addr).await?;
        let result = conn.call_raw(key, 1, body, ttl).await;
        if let Err(e) = &result {
            if e.is_connection_error() {
                if let Ok(mut m) = self.inner.conns.lock() {
                    m.remove(addr);
                }
            }
        }
        result
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient { target, addr: node.addr.clone(), net: self.clone() }
    }
}

/// The RPC client openraft uses for one target node.
pub struct PeerClient {
    target: u64,
    addr: String,
    net: Network,
}

fn rpc_err<E: std::error::Error>(target: u64, e: ClientError) -> RPCError<u64, BasicNode, E> {
    let _ = target;
    match &e {
        ClientError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

fn decode_err<E: std::error::Error>(e: ferry_protocol::DecodeError) -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&e))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let (body, sent) = codec::encode_append(&rpc, self.net.inner.append_bytes_max);
        let raw = self
            .net
            .call(&self.addr, ApiKey::RaftAppend, body, option.hard_ttl())
            .await
            .map_err(|e| rpc_err(self.target, e))?;
        let resp = codec::decode_append_response(raw).map_err(decode_err)?;
        if sent < rpc.entries.len() && resp == AppendEntriesResponse::Success {
            // Only a prefix went out: tell openraft how far the follower now matches.
            let last_sent = rpc.entries.get(sent.saturating_sub(1)).map(|e| e.log_id);
            return Ok(AppendEntriesResponse::PartialSuccess(last_sent.or(rpc.prev_log_id)));
        }
        Ok(resp)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let body = codec::encode_snapshot_request(&rpc);
        let raw = self
            .net
            .call(&self.addr, ApiKey::RaftSnapshot, body, option.hard_ttl())
            .await
            .map_err(|e| rpc_err(self.target, e))?;
        codec::decode_snapshot_response(raw).map_err(decode_err)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let body = codec::encode_vote_request(&rpc);
        let raw = self
            .net
            .call(&self.addr, ApiKey::RaftVote, body, option.hard_ttl())
            .await
            .map_err(|e| rpc_err(self.target, e))?;
        codec::decode_vote_response(raw).map_err(decode_err)
    }
}
