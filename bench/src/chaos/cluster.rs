//! The cluster under test: `ferry-broker` child processes, one per node, each with its own data
//! directory, reachable through [`ChaosNet`] (network namespaces or fault proxies). Nodes can
//! be killed (SIGKILL), paused (SIGSTOP) and resumed, and restarted with their data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ferry_protocol::messages::{
    AddNodeRequest, NodeStatusRequest, NodeStatusResponse, RemoveNodeRequest,
};
use ferry_protocol::{
    ClientKind, ClusterClient, ClusterOptions, ConnectOptions, Connection, NodeId,
};
use tokio::process::Child;

use super::net::ChaosNet;

/// Broker settings for chaos runs: quick check-backs, so silent transactions resolve within a
/// run's drain phase.
pub const BROKER_CONFIG: &str = "\
txn_check_timeout_ms = 1000
txn_check_backoff_ms = [500, 1000]
txn_check_max = 100
";

struct Node {
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// In the cluster's membership (a spare is not, until added).
    member: bool,
    /// Starts with `--join` (waits to be added) rather than `--peers`: spares, and removed
    /// nodes whose data was wiped.
    joining: bool,
}

/// A cluster of broker processes.
pub struct ChaosCluster {
    net: ChaosNet,
    broker: PathBuf,
    config: PathBuf,
    peers: String,
    nodes: BTreeMap<u64, Node>,
}

impl ChaosCluster {
    /// Starts `ids` as one cluster under `dir` and waits for a leader. `spares` (also known
    /// to `net`) are not started; [`ChaosCluster::add_node`] brings them in.
    pub async fn start(
        net: ChaosNet,
        broker: &Path,
        dir: &Path,
        ids: &[u64],
        spares: &[u64],
    ) -> anyhow::Result<Self> {
        let config = dir.join("ferry.toml");
        std::fs::write(&config, BROKER_CONFIG).context("writing the broker config")?;
        let peers: Vec<String> =
            ids.iter().map(|id| format!("{id}={}", net.advertised_addr(*id))).collect();
        let nodes = ids
            .iter()
            .map(|id| (*id, true))
            .chain(spares.iter().map(|id| (*id, false)))
            .map(|(id, member)| {
                let node = Node {
                    data_dir: dir.join(format!("node-{id}")),
                    log: dir.join(format!("node-{id}.log")),
                    child: None,
                    paused: false,
                    member,
                    joining: !member,
                };
                (id, node)
            })
            .collect();
        let mut cluster = ChaosCluster {
            net,
            broker: broker.to_path_buf(),
            config,
            peers: peers.join(","),
            nodes,
        };
        for id in ids {
            cluster.spawn(*id)?;
        }
        cluster.leader(Duration::from_secs(30)).await?;
        Ok(cluster)
    }

    /// The network the nodes talk through.
    pub fn net(&self) -> &ChaosNet {
        &self.net
    }

    /// Ids of the current members.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.member).map(|(id, _)| *id).collect()
    }

    /// A node that is not a member (not running), if any.
    pub fn spare(&self) -> Option<u64> {
        self.nodes.iter().find(|(_, n)| !n.member).map(|(id, _)| *id)
    }

    /// An admin client over every node's address that retries for up to 60 s.
    fn admin(&self) -> anyhow::Result<ClusterClient> {
        let mut options = ClusterOptions::new(
            &self.bootstrap(),
            ConnectOptions::new("chaos-admin", ClientKind::Admin),
        );
        options.retry.deadline = Duration::from_secs(60);
        ClusterClient::new(options).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Whether every running member but `except` answers, follows one leader among them, and
    /// lists `id` as a voter (`voter`) or not at all (`!voter`). A single node's view is not
    /// enough: a deposed leader may still show a configuration that never committed, and a
    /// node wrongly taken for removed would then be wiped while it still votes.
    async fn membership_settled(&self, id: u64, voter: bool, except: Option<u64>) -> bool {
        let running: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(nid, n)| n.member && n.child.is_some() && !n.paused && Some(**nid) != except)
            .map(|(nid, _)| *nid)
            .collect();
        let mut leader = None;
        for nid in &running {
            let Some(status) = self.status(*nid).await else { return false };
            let Some(l) = status.leader_id.map(|l| l.0) else { return false };
            if leader.is_some_and(|x| x != l) {
                return false;
            }
            leader = Some(l);
            let listed = status.members.iter().find(|m| m.id == NodeId(id));
            let settled = match listed {
                Some(m) => voter && m.voter,
                None => !voter,
            };
            if !settled {
                return false;
            }
        }
        leader.is_some_and(|l| running.contains(&l))
    }

    /// Starts spare `id` waiting to join and adds it as a voter; done once every running
    /// member lists it as one. Retries (leader changes, refused concurrent changes) for up to 60 s.
    pub async fn add_node(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        if node.member {
            bail!("node {id} is a member already");
        }
        node.member = true;
        self.spawn(id)?;
        let admin = self.admin()?;
        let addr = self.net.advertised_addr(id);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let req = AddNodeRequest { node_id: NodeId(id), addr: addr.clone() };
            if let Err(e) = admin.call(&req).await {
                tracing::info!(node = id, error = %e, "adding a node failed; retrying");
            }
            if self.membership_settled(id, true, None).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {id} was not added within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Removes member `id`; once no other running member lists it, kills it and wipes its
    /// data, so it can be added again as a spare.
    pub async fn remove_node(&mut self, id: u64) -> anyhow::Result<()> {
        let admin = self.admin()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Err(e) = admin.call(&RemoveNodeRequest { node_id: NodeId(id) }).await {
                tracing::info!(node = id, error = %e, "removing a node failed; retrying");
            }
            if self.membership_settled(id, false, Some(id)).await {
                break;
            }
            if Instant::now() > deadline {
                bail!("node {id} was not removed within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.kill(id).await?;
        let node = self.nodes.get_mut(&id).context("no such node")?;
        node.member = false;
        node.joining = true;
        if node.data_dir.exists() {
            std::fs::remove_dir_all(&node.data_dir)
                .with_context(|| format!("wiping {}", node.data_dir.display()))?;
        }
        Ok(())
    }

    /// A node's data directory.
    pub fn data_dir(&self, id: u64) -> anyhow::Result<PathBuf> {
        self.nodes.get(&id).map(|n| n.data_dir.clone()).with_context(|| format!("no node {id}"))
    }

    /// Client addresses of every node, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.nodes.keys().map(|id| self.net.advertised_addr(*id)).collect::<Vec<_>>().join(",")
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        if node.child.is_some() {
            bail!("node {id} is running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .with_context(|| format!("opening {}", node.log.display()))?;
        let mut cmd = self.net.command(id, &self.broker);
        cmd.arg("--config")
            .arg(&self.config)
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &self.net.listen_addr(id)])
            .args(["--advertise", &self.net.advertised_addr(id)])
            .args(["--admin-listen", &self.net.admin_addr(id)]);
        if node.joining {
            cmd.arg("--join");
        } else {
            cmd.args(["--peers", &self.peers]);
        }
        cmd.arg("--data-dir")
            .arg(&node.data_dir)
            .env("FERRY_LOG", std::env::var("FERRY_BROKER_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().context("log file")?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting node {id}"))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref()?.id()
    }

    /// Whether the node's process runs (paused counts as running).
    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.child.is_some())
    }

    /// SIGKILL: no shutdown path runs.
    pub async fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let node = self.nodes.get_mut(&id).context("no such node")?;
        if let Some(mut child) = node.child.take() {
            if node.paused {
                signal(child.id(), "CONT");
            }
            child.start_kill().context("kill")?;
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
        node.paused = false;
        Ok(())
    }

    /// Starts a killed node again with its data.
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.spawn(id)
    }

    /// SIGSTOP: the process freezes, its sockets stay open.
    pub fn pause(&mut self, id: u64) {
        if let Some(pid) = self.pid(id) {
            signal(Some(pid), "STOP");
            if let Some(n) = self.nodes.get_mut(&id) {
                n.paused = true;
            }
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) {
        if let Some(pid) = self.pid(id) {
            signal(Some(pid), "CONT");
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            n.paused = false;
        }
    }

    /// Resumes paused nodes and restarts killed ones.
    pub fn revive_all(&mut self) -> anyhow::Result<()> {
        for id in self.ids() {
            if !self.is_running(id) {
                self.spawn(id)?;
            } else if self.nodes.get(&id).is_some_and(|n| n.paused) {
                self.resume(id);
            }
        }
        Ok(())
    }

    /// One node's own status, if it answers within a second.
    pub async fn status(&self, id: u64) -> Option<NodeStatusResponse> {
        let mut opts = ConnectOptions::new("chaos", ClientKind::Admin);
        opts.connect_timeout = Duration::from_millis(500);
        opts.request_timeout = Duration::from_secs(1);
        let addr = self.net.advertised_addr(id);
        let conn = tokio::time::timeout(Duration::from_secs(2), Connection::connect(&addr, &opts))
            .await
            .ok()?
            .ok()?;
        tokio::time::timeout(Duration::from_secs(2), conn.call(&NodeStatusRequest)).await.ok()?.ok()
    }

    /// The leader the running, unpaused nodes agree on, waiting up to `within`.
    pub async fn leader(&self, within: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.agreed_leader().await {
                return Ok(l);
            }
            if Instant::now() > deadline {
                bail!("no leader agreed on within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn agreed_leader(&self) -> Option<u64> {
        let live: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.member && n.child.is_some() && !n.paused)
            .map(|(id, _)| *id)
            .collect();
        let mut leader = None;
        for id in &live {
            let l = self.status(*id).await?.leader_id?.0;
            if leader.is_some_and(|x| x != l) {
                return None;
            }
            leader = Some(l);
        }
        leader.filter(|l| live.contains(l))
    }

    /// A leader as one node sees it now, without waiting for agreement (for fault targeting).
    pub async fn current_leader(&self) -> Option<u64> {
        for id in self.ids() {
            if let Some(l) = self.status(id).await.and_then(|s| s.leader_id) {
                return Some(l.0);
            }
        }
        None
    }

    /// Waits until every node applied the leader's last log index.
    pub async fn wait_caught_up(&self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let leader = self.leader(deadline.saturating_duration_since(Instant::now())).await?;
            let mut behind = Vec::new();
            if let Some(target) = self.status(leader).await.map(|s| s.last_log_index) {
                for id in self.ids() {
                    match self.status(id).await {
                        Some(s) if s.applied_index >= target => {}
                        Some(s) => behind.push(format!(
                            "node {id} applied {} of {target} (role {})",
                            s.applied_index, s.role
                        )),
                        None => behind.push(format!("node {id} does not answer")),
                    }
                }
                if behind.is_empty() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "nodes did not catch up with leader {leader} within {within:?}: {}",
                    behind.join("; ")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills every node and removes the network.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let all: Vec<u64> = self.nodes.keys().copied().collect();
        for id in all {
            self.kill(id).await?;
        }
        self.net.shutdown().await
    }

    /// The stderr log files of the nodes (kept for a failed run).
    pub fn logs(&self) -> Vec<PathBuf> {
        self.nodes.values().map(|n| n.log.clone()).collect()
    }
}

fn signal(pid: Option<u32>, sig: &str) {
    if let Some(pid) = pid {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status();
    }
}
