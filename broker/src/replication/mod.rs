//! Replication: the openraft glue. Every openraft type stays inside this module; the rest of the
//! broker sees [`Replica`], which proposes [`Command`]s, answers Raft RPCs arriving as frames,
//! and reports leadership and membership.
//!
//! One Raft group carries everything today. Handlers reach it through [`Replica::group_for`], the
//! seam where partitions can later be spread over several groups.

// openraft's StorageError is large, and its traits fix it as the error type: boxing is not ours
// to choose here.
#![allow(clippy::result_large_err)]

pub mod codec;
pub mod log_store;
pub mod network;
pub mod proposer;
mod resync;
pub mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::messages::{MemberStatus, NodeAddr, NodeStatusResponse};
use ferry_protocol::{ErrorCode, LeaderHint, NodeId};
use ferry_storage::{LogStore, StateStore};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};

use self::log_store::RaftLog;
use self::network::Network;
use self::proposer::Proposer;
use self::resync::Resync;
use self::state_machine::StateMachine;
use crate::state::command::{Command, CommandResponse};
use crate::state::SharedState;

openraft::declare_raft_types!(
    /// The Raft type configuration of a ferrymq broker.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = tokio::fs::File,
);

/// Raft timing, from the broker config.
#[derive(Debug, Clone)]
pub struct RaftTiming {
    /// Leader heartbeat period.
    pub heartbeat: Duration,
    /// Election timeout lower bound (the upper bound is twice this).
    pub election_timeout: Duration,
}

/// Why a proposal or admin call failed, mapped to a wire error.
#[derive(Debug, Clone)]
pub struct ReplicaError {
    /// Wire code.
    pub code: ErrorCode,
    /// Detail.
    pub message: String,
    /// Leader hint with `NotLeader`.
    pub leader: Option<LeaderHint>,
    /// The transaction's state with `TransactionAlreadyResolved`.
    pub txn_state: Option<ferry_protocol::TxnState>,
}

impl ReplicaError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ReplicaError { code, message: message.into(), leader: None, txn_state: None }
    }
}

/// This node's Raft replica and the state it applies to.
#[derive(Clone)]
pub struct Replica {
    node_id: u64,
    raft: Raft<TypeConfig>,
    shared: Arc<SharedState>,
    proposer: Proposer,
    resync: Arc<Resync>,
    tasks: tokio_util::task::TaskTracker,
    cancel: tokio_util::sync::CancellationToken,
}

/// How a replica starts.
#[derive(Debug, Clone)]
pub struct StartMode {
    /// Its data was found damaged and replaced by an empty store holding only the vote (or a
    /// resync was under way): it neither votes nor campaigns until caught up with a leader.
    pub resync: bool,
    /// The file whose presence marks a resync in progress; removed when it completes.
    pub resync_marker: std::path::PathBuf,
}

impl Replica {
    /// Opens the stores and starts Raft. Does not form a cluster; see [`Replica::initialize`].
    pub async fn start(
        node_id: u64,
        log: Arc<dyn LogStore>,
        state: Arc<dyn StateStore>,
        snapshot_dir: &std::path::Path,
        timing: &RaftTiming,
        frame_bytes_max: usize,
        mode: StartMode,
    ) -> anyhow::Result<Replica> {
        let heartbeat_ms = u64::try_from(timing.heartbeat.as_millis()).unwrap_or(u64::MAX);
        let election_ms = u64::try_from(timing.election_timeout.as_millis()).unwrap_or(u64::MAX);
        let config = Config {
            cluster_name: "ferrymq".into(),
            heartbeat_interval: heartbeat_ms,
            election_timeout_min: election_ms,
            election_timeout_max: election_ms.saturating_mul(2),
            // Entries are whole producer batches; the network layer also caps bytes per RPC.
            max_payload_entries: 256,
            // The messages family points into the Raft log (state::MessageValue), so the log
            // must not be purged below an applied produce: snapshots are never triggered, and
            // the log is kept in full. Compaction behind snapshots needs the batches moved out
            // of the log first (segment files, see ARCHITECTURE.md, Storage).
            snapshot_policy: SnapshotPolicy::Never,
            // A resyncing replica never campaigns (see `resync`); enabled once caught up.
            enable_elect: !mode.resync,
            ..Config::default()
        };
        let config = Arc::new(config.validate()?);
        let sm = StateMachine::open(state, log.clone(), snapshot_dir)?;
        let shared = sm.shared();
        let network = Network::new(node_id, frame_bytes_max);
        let raft = Raft::new(node_id, config, network, RaftLog::new(log), sm).await?;
        let tasks = tokio_util::task::TaskTracker::new();
        let cancel = tokio_util::sync::CancellationToken::new();
        let proposer = Proposer::start(raft.clone(), node_id, &tasks, cancel.clone());
        let resync = Arc::new(Resync::new(mode.resync, mode.resync_marker));
        if mode.resync {
            tracing::warn!("resyncing from the leader: not voting or campaigning until caught up");
            tasks.spawn(watch_resync(raft.clone(), resync.clone(), cancel.clone()));
        }
        Ok(Replica { node_id, raft, shared, proposer, resync, tasks, cancel })
    }

    /// Forms a new cluster from `members` if this node has never been part of one. Every
    /// founding node may call this with the same members; a node with state ignores it.
    pub async fn initialize(&self, members: BTreeMap<u64, String>) -> anyhow::Result<()> {
        if self.raft.is_initialized().await? {
            return Ok(());
        }
        let nodes: BTreeMap<u64, BasicNode> =
            members.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(e)) => {
                tracing::info!(error = %e, "cluster already initialized");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The Raft group serving a partition. One group today.
    pub fn group_for(&self, _partition: u32) -> &Replica {
        self
    }

    /// The read side of the applied state.
    pub fn state(&self) -> &Arc<SharedState> {
        &self.shared
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Whether this node is the leader right now (from the latest metrics) and ready to serve
    /// reads: it applied an entry of its own term, so its state holds everything committed
    /// before it was elected.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(self.node_id) && applied_own_term(&m)
    }

    /// Where the leader is, if known.
    pub fn leader_hint(&self) -> Option<LeaderHint> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?;
        Some(LeaderHint { leader_id: NodeId(leader), leader_addr: node.addr.clone() })
    }

    /// Members of the current configuration with their addresses.
    pub fn nodes(&self) -> Vec<NodeAddr> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| NodeAddr { id: NodeId(*id), addr: n.addr.clone() })
            .collect()
    }

    /// An error for a request that only the leader may serve, with the leader hint.
    pub fn not_leader(&self) -> ReplicaError {
        if self.raft.metrics().borrow().current_leader == Some(self.node_id) {
            // Elected, but not yet applied everything committed before its term: its state
            // may be behind what clients already saw (e.g. after a restart of every node).
            return ReplicaError::new(
                ErrorCode::NoLeader,
                "this node was just elected and is still applying its log; retry",
            );
        }
        match self.leader_hint() {
            Some(hint) => ReplicaError {
                code: ErrorCode::NotLeader,
                message: format!("node {} is not the leader", self.node_id),
                leader: Some(hint),
                txn_state: None,
            },
            None => ReplicaError::new(ErrorCode::NoLeader, "no leader elected yet"),
        }
    }

    /// Proposes `command`; returns once it is committed by a quorum and applied here.
    pub async fn propose(&self, command: Command) -> Result<CommandResponse, ReplicaError> {
        self.proposer.propose(command).await
    }

    fn map_write_error(&self, e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> ReplicaError {
        map_write_error(self.node_id, e)
    }
}

/// Whether this node applied an entry of its current term. A new leader appends a blank entry
/// on election; once that is applied, so is everything committed before, and reads from the
/// applied state are as new as anything a client saw from an earlier leader.
fn applied_own_term(m: &openraft::RaftMetrics<u64, BasicNode>) -> bool {
    m.last_applied.is_some_and(|l| l.leader_id.term == m.current_term)
}

/// Turns an openraft write error into the wire error a client gets.
pub(crate) fn map_write_error(
    node_id: u64,
    e: RaftError<u64, ClientWriteError<u64, BasicNode>>,
) -> ReplicaError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(fwd)) => {
            let leader = match (fwd.leader_id, fwd.leader_node) {
                (Some(id), Some(node)) => {
                    Some(LeaderHint { leader_id: NodeId(id), leader_addr: node.addr })
                }
                _ => None,
            };
            match leader {
                Some(hint) => ReplicaError {
                    code: ErrorCode::NotLeader,
                    message: format!("node {node_id} is not the leader"),
                    leader: Some(hint),
                    txn_state: None,
                },
                None => ReplicaError::new(ErrorCode::NoLeader, "no leader elected yet"),
            }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ReplicaError::new(ErrorCode::MembershipChange, e.to_string())
        }
        RaftError::Fatal(e) => ReplicaError::new(ErrorCode::ShuttingDown, e.to_string()),
    }
}

impl Replica {
    /// Waits until this node, as leader, has applied every entry committed before the call
    /// (a read barrier: confirms leadership with a quorum, then waits for apply).
    pub async fn read_barrier(&self) -> Result<(), ReplicaError> {
        self.raft
            .ensure_linearizable()
            .await
            .map(|_| ())
            .map_err(|e| ReplicaError::new(ErrorCode::NotLeader, e.to_string()))
    }

    /// Adds a node: as a learner first (waiting until it caught up), then as a voter.
    pub async fn add_node(&self, id: u64, addr: String) -> Result<(), ReplicaError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        self.raft
            .add_learner(id, BasicNode { addr }, true)
            .await
            .map_err(|e| self.map_write_error(e))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.map_write_error(e))?;
        Ok(())
    }

    /// Removes a node from the voters and the cluster (joint consensus).
    pub async fn remove_node(&self, id: u64) -> Result<(), ReplicaError> {
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(ReplicaError::new(
                ErrorCode::InvalidArgument,
                format!("node {id} is not a member"),
            ));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(ReplicaError::new(
                    ErrorCode::InvalidArgument,
                    "cannot remove the last voter",
                ));
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(|e| self.map_write_error(e))?;
        }
        if self.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(|e| self.map_write_error(e))?;
        }
        Ok(())
    }

    /// This node's view, for `NodeStatus`.
    pub fn status(&self, addr: &str) -> NodeStatusResponse {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let role = match m.state {
            ServerState::Leader => "leader",
            // Following while it rebuilds damaged data: not voting, not campaigning (a
            // learner until the membership entry reaches it again).
            ServerState::Follower | ServerState::Learner if self.resync.active() => "resyncing",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let replication = m.replication.clone().unwrap_or_default();
        let members = membership
            .nodes()
            .map(|(id, n)| MemberStatus {
                id: NodeId(*id),
                addr: n.addr.clone(),
                voter: voters.contains(id),
                matched_index: if *id == self.node_id && m.state == ServerState::Leader {
                    m.last_log_index
                } else {
                    replication.get(id).and_then(|l| l.map(|l| l.index))
                },
            })
            .collect();
        let commit_index = commit_index(&m, self.node_id);
        NodeStatusResponse {
            node_id: NodeId(self.node_id),
            addr: addr.to_string(),
            role: role.to_string(),
            term: m.current_term,
            leader_id: m.current_leader.map(NodeId),
            last_log_index: m.last_log_index.unwrap_or(0),
            commit_index,
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            members,
        }
    }

    /// A snapshot of the numbers the metrics endpoint exports.
    pub fn raft_numbers(&self) -> RaftNumbers {
        let m = self.raft.metrics().borrow().clone();
        RaftNumbers {
            term: m.current_term,
            commit_index: commit_index(&m, self.node_id),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
            leader: m.current_leader,
            is_leader: m.current_leader == Some(self.node_id),
            running: m.running_state.is_ok(),
        }
    }

    /// Watches Raft metrics (for leader-change counting and readiness).
    pub fn watch_leader(
        &self,
    ) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>> {
        self.raft.metrics()
    }

    /// Handles an incoming append-entries RPC body; returns the response body.
    pub async fn on_append(&self, body: Bytes) -> Result<Bytes, ReplicaError> {
        let rpc = codec::decode_append(body)
            .map_err(|e| ReplicaError::new(ErrorCode::Malformed, e.to_string()))?;
        self.resync.observe_append(&rpc);
        let resp = self.raft.append_entries(rpc).await.map_err(raft_err)?;
        Ok(codec::encode_append_response(&resp))
    }

    /// Handles an incoming vote RPC body.
    pub async fn on_vote(&self, body: Bytes) -> Result<Bytes, ReplicaError> {
        let rpc = codec::decode_vote_request(body)
            .map_err(|e| ReplicaError::new(ErrorCode::Malformed, e.to_string()))?;
        if self.resync.active() {
            // Its log may lack entries it acknowledged before the damage: a vote could elect
            // a candidate without them.
            return Err(ReplicaError::new(
                ErrorCode::Busy,
                "resyncing damaged data from the leader; not voting until caught up",
            ));
        }
        let resp = self.raft.vote(rpc).await.map_err(raft_err)?;
        Ok(codec::encode_vote_response(&resp))
    }

    /// Handles an incoming install-snapshot chunk.
    pub async fn on_snapshot(&self, body: Bytes) -> Result<Bytes, ReplicaError> {
        let rpc = codec::decode_snapshot_request(body)
            .map_err(|e| ReplicaError::new(ErrorCode::Malformed, e.to_string()))?;
        let resp = self.raft.install_snapshot(rpc).await.map_err(raft_err)?;
        Ok(codec::encode_snapshot_response(&resp))
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        // Stop merging (queued proposals fail with ShuttingDown), stop Raft (entries in flight
        // return), then wait for the writers.
        self.cancel.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown failed");
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The commit index as this node knows it. openraft 0.9 does not export it, so the leader
/// computes it from replication progress (the highest index a quorum of voters holds), and a
/// follower reports its applied index, a lower bound.
fn commit_index(m: &openraft::RaftMetrics<u64, BasicNode>, self_id: u64) -> u64 {
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    let Some(replication) = &m.replication else { return applied };
    let membership = m.membership_config.membership();
    let mut quorum_index = u64::MAX;
    for config in membership.get_joint_config() {
        let mut matched: Vec<u64> = config
            .iter()
            .map(|id| {
                if *id == self_id {
                    m.last_log_index.unwrap_or(0)
                } else {
                    replication.get(id).and_then(|l| l.map(|l| l.index)).unwrap_or(0)
                }
            })
            .collect();
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let majority = matched.len() / 2;
        quorum_index = quorum_index.min(matched.get(majority).copied().unwrap_or(0));
    }
    if quorum_index == u64::MAX {
        applied
    } else {
        quorum_index.max(applied)
    }
}

fn raft_err<E: std::fmt::Display>(e: E) -> ReplicaError {
    ReplicaError::new(ErrorCode::Internal, e.to_string())
}

/// Raft numbers for metrics and readiness.
#[derive(Debug, Clone, Copy)]
pub struct RaftNumbers {
    /// Current term.
    pub term: u64,
    /// Commit index as known here (see `commit_index`).
    pub commit_index: u64,
    /// Last log index.
    pub last_log_index: u64,
    /// Last applied index.
    pub applied_index: u64,
    /// Known leader.
    pub leader: Option<u64>,
    /// Whether this node leads.
    pub is_leader: bool,
    /// False once Raft stopped on a fatal error.
    pub running: bool,
}

/// Ends a resync once the applied index reaches the target a leader announced.
async fn watch_resync(
    raft: Raft<TypeConfig>,
    resync: Arc<Resync>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut metrics = raft.metrics();
    loop {
        let applied = metrics.borrow().last_applied.map(|l| l.index);
        if let (Some(target), Some(applied)) = (resync.target(), applied) {
            if applied >= target {
                match resync.finish() {
                    Ok(()) => {
                        raft.runtime_config().elect(true);
                        tracing::info!(
                            applied,
                            target,
                            "resync complete: voting and campaigning again"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot remove the resync marker; still resyncing")
                    }
                }
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
}
