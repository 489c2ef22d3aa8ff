//! The chaos runner's network: where each node of a local test cluster listens, and the
//! faults between nodes (partitions) and between a node and the runner's clients. The runner
//! (`ferry-bench chaos`) builds a [`ChaosNet`], starts every broker with
//! [`ChaosNet::command`] and the addresses it gives, and calls [`ChaosNet::partition`] and
//! [`ChaosNet::heal`] while its workload runs.
//!
//! Two implementations sit behind the one API ([`NetMode`]):
//!
//! **Namespaces** (root): every node runs in its own network namespace, the broker listening
//! on the node's own address (port [`NS_LISTEN_PORT`]). A cut drops packets in the kernel, so
//! connections hang exactly as behind a failed link.
//!
//! ```text
//!  root namespace (runner)          fm<tag>-sw (switch)                fm<tag>-n<id> (node)
//!  fm<tag> 10.77.X.1/24  ══veth══  host ┐
//!                                       ├─ br0 (bridge)
//!                                  n0 ──┤  ══veth══  eth0 10.77.X.11/24   (nodes[0])
//!                                  n1 ──┤  ══veth══  eth0 10.77.X.12/24   (nodes[1])
//!                                  n2 ──┘  ══veth══  eth0 10.77.X.13/24   (nodes[2])
//! ```
//!
//! * The bridge lives in a namespace of its own, not in the root namespace, so bridged
//!   node-to-node traffic never meets the host's firewall (with `br_netfilter` loaded, bridged
//!   frames go through the FORWARD chain of the bridge's namespace, which on Docker hosts drops
//!   them), and so deleting the namespaces removes every link: the root namespace only gains
//!   the one veth `fm<tag>`. `<tag>` and `X` are derived from the run id.
//! * A cut is an `ip rule ... blackhole` *on the receiving side*, matching the sender's
//!   address: in node B's namespace, `from <A's address> blackhole` drops every packet A sends
//!   to B, silently. A blackhole *route* to the peer (`ip route add blackhole`) would not do:
//!   the kernel refuses local sends to a blackhole route, so `connect` fails at once with
//!   EINVAL instead of hanging. For the rules to see packets addressed to the node itself,
//!   the `lookup local` rule is moved from preference 0 to 1000 in each node's namespace
//!   (nothing else uses these namespaces).
//! * [`ChaosNet::isolate_from_clients`] drops what the runner's address sends to the node,
//!   except to the admin port: the runner keeps watching every node through
//!   [`ChaosNet::admin_addr`], whatever the faults.
//!
//! **Proxy** (no root): every broker listens on a private loopback port; a TCP proxy of
//! [`super::proxy`] holds the node's advertised port and forwards, stopping bytes across a
//! cut. The admin port is not proxied, so it too is never cut.
//!
//! In both modes a cut is a blackhole and healing lets connections carry on (TCP delivers what
//! was sent during the partition, late); nothing is closed by a fault. See [`super::proxy`]
//! for why.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context};

use super::proxy::{self, Proxies};

/// Most nodes a [`ChaosNet`] holds (bounds the addresses handed out in a /24).
pub const NODES_MAX: usize = 64;

/// Port every broker listens on in Namespaces mode (each node has its own address).
pub const NS_LISTEN_PORT: u16 = 7400;

/// Admin port of every broker in Namespaces mode.
pub const NS_ADMIN_PORT: u16 = 7480;

/// Longest one `ip` command may take.
const IP_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the start-up check that the runner reaches every node may wait per node.
const REACH_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Rule preference (in each node's namespace) letting the runner reach the admin port even
/// while the node is isolated from clients.
const PREF_ADMIN_OPEN: u32 = 80;

/// Rule preference of the rule isolating a node from the runner's clients.
const PREF_CLIENTS_CUT: u32 = 90;

/// Rule preference of the rule cutting the node at index `i` off: `PREF_PEER_CUT_BASE + i`.
const PREF_PEER_CUT_BASE: u32 = 100;

/// Preference the `lookup local` rule is moved to in each node's namespace: after every cut.
const PREF_LOCAL: u32 = 1000;

/// How the network faults are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetMode {
    /// A network namespace per node, cuts dropped by the kernel (needs root and `ip netns`).
    Namespaces,
    /// A fault-injecting TCP proxy in front of every node, inside this process.
    Proxy,
}

impl NetMode {
    /// [`NetMode::Namespaces`] when running as root and `ip` can create a namespace with a
    /// bridge, a veth pair and the rules the cuts need (checked with a probe namespace, which
    /// is deleted again); [`NetMode::Proxy`] otherwise.
    pub fn detect() -> NetMode {
        if effective_uid_is_root() && namespaces_work() {
            NetMode::Namespaces
        } else {
            NetMode::Proxy
        }
    }
}

fn effective_uid_is_root() -> bool {
    // /proc/self/status: "Uid:\t<real>\t<effective>\t<saved>\t<fs>".
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn namespaces_work() -> bool {
    let probe = format!("fmprobe{}", std::process::id());
    let _ = ip_blocking(&format!("netns del {probe}")); // left by an earlier process of this pid
    let works = [
        format!("netns add {probe}"),
        format!("-n {probe} link add br0 type bridge"),
        format!("-n {probe} link add v0 type veth peer name v1"),
        format!("-n {probe} rule add pref 80 from 10.0.0.1/32 ipproto tcp dport 7480 lookup local"),
    ]
    .iter()
    .all(|command| ip_blocking(command));
    let _ = ip_blocking(&format!("netns del {probe}"));
    works
}

/// Runs `ip <args>` (split at whitespace) to completion without Tokio (for
/// [`NetMode::detect`] and `Drop`); true on success.
fn ip_blocking(args: &str) -> bool {
    std::process::Command::new("ip")
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `ip <args>`, the arguments split at whitespace (every name and address here is made
/// by this module and has none); returns its standard output.
///
/// # Errors
/// When `ip` cannot be started, takes longer than [`IP_COMMAND_TIMEOUT`] or fails (the error
/// holds the command and its standard error).
async fn ip(args: &str) -> anyhow::Result<String> {
    let mut command = tokio::process::Command::new("ip");
    command
        .args(args.split_whitespace())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(IP_COMMAND_TIMEOUT, command.output())
        .await
        .map_err(|_| anyhow!("`ip {args}` did not finish within {IP_COMMAND_TIMEOUT:?}"))?
        .with_context(|| format!("cannot run `ip {args}` (is iproute2 installed?)"))?;
    ensure!(
        output.status.success(),
        "`ip {args}` failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The cuts in force: a partition into sides, and the nodes the runner's clients cannot reach.
///
/// Nodes on different sides cannot exchange packets. A node on no side (not named in the
/// partition) reaches, and is reached by, every node: with sides `[1]` and `[2]` and node 3 on
/// none, 3 is a bridge between two nodes that cannot talk to each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    side_of: BTreeMap<u64, usize>,
    clients_cut: BTreeSet<u64>,
}

impl Faults {
    /// Whether nodes `a` and `b` are cut off from each other.
    pub fn peers_cut(&self, a: u64, b: u64) -> bool {
        matches!((self.side_of.get(&a), self.side_of.get(&b)), (Some(x), Some(y)) if x != y)
    }

    /// Whether the runner's clients are cut off from `node`.
    pub fn clients_cut(&self, node: u64) -> bool {
        self.clients_cut.contains(&node)
    }

    /// These faults with the partition replaced by `sides`, over cluster `nodes`.
    ///
    /// # Errors
    /// When a side names a node that is not in `nodes`, or a node is on two sides.
    pub fn with_partition(&self, nodes: &[u64], sides: &[Vec<u64>]) -> anyhow::Result<Faults> {
        let mut side_of = BTreeMap::new();
        for (side, members) in sides.iter().enumerate() {
            for &node in members {
                ensure!(nodes.contains(&node), "partition names node {node}, not in {nodes:?}");
                if side_of.insert(node, side).is_some_and(|earlier| earlier != side) {
                    bail!("partition puts node {node} on two sides: {sides:?}");
                }
            }
        }
        Ok(Faults { side_of, clients_cut: self.clients_cut.clone() })
    }

    /// These faults with `node` cut off from the runner's clients, or not.
    pub fn with_clients_cut(&self, node: u64, cut: bool) -> Faults {
        let mut faults = self.clone();
        if cut {
            faults.clients_cut.insert(node);
        } else {
            faults.clients_cut.remove(&node);
        }
        faults
    }
}

/// Where one node listens.
#[derive(Debug, Clone, Copy)]
struct NodeAddrs {
    id: u64,
    listen: SocketAddr,
    advertised: SocketAddr,
    admin: SocketAddr,
}

/// The network a chaos run's nodes talk over, and the faults on it. See the module docs.
///
/// Dropping it without [`ChaosNet::shutdown`] still removes namespaces and links (with
/// blocking `ip` commands) and stops the proxies.
#[derive(Debug)]
pub struct ChaosNet {
    mode: NetMode,
    nodes: Vec<NodeAddrs>,
    /// The faults in force; held across applying new ones, so calls apply one at a time.
    faults: tokio::sync::Mutex<Faults>,
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Namespaces(Namespaces),
    Proxy(Proxies),
}

impl ChaosNet {
    /// Builds the network for `nodes` (distinct ids, at most [`NODES_MAX`]), with no faults.
    ///
    /// `run_id` makes the names (and the subnet) of Namespaces mode unique, so runs can go on
    /// side by side; Proxy mode needs no names (its ports come from a per-process counter).
    ///
    /// # Errors
    /// Bad node ids; in Namespaces mode, when namespaces of the same run id already exist, an
    /// `ip` command fails (everything made so far is removed again) or the runner cannot
    /// reach a node's address; in Proxy mode, when no loopback port is free.
    pub async fn new(mode: NetMode, nodes: &[u64], run_id: &str) -> anyhow::Result<ChaosNet> {
        ensure!(!nodes.is_empty(), "a chaos network needs at least one node");
        ensure!(nodes.len() <= NODES_MAX, "at most {NODES_MAX} nodes, not {}", nodes.len());
        let distinct: BTreeSet<u64> = nodes.iter().copied().collect();
        ensure!(distinct.len() == nodes.len(), "node ids repeat: {nodes:?}");
        let (addrs, backend) = match mode {
            NetMode::Namespaces => {
                let (addrs, ns) = Namespaces::create(nodes, run_id).await?;
                (addrs, Backend::Namespaces(ns))
            }
            NetMode::Proxy => {
                let (addrs, proxies) = start_proxies(nodes)?;
                (addrs, Backend::Proxy(proxies))
            }
        };
        Ok(ChaosNet { mode, nodes: addrs, faults: tokio::sync::Mutex::default(), backend })
    }

    /// How the faults are made.
    pub fn mode(&self) -> NetMode {
        self.mode
    }

    /// The node ids, in the order given to [`ChaosNet::new`].
    pub fn nodes(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    fn addrs(&self, node: u64) -> &NodeAddrs {
        self.nodes
            .iter()
            .find(|n| n.id == node)
            .unwrap_or_else(|| panic!("node {node} is not in this chaos network"))
    }

    /// What the node's broker binds (`--listen`). Panics for a node not given to `new`.
    pub fn listen_addr(&self, node: u64) -> String {
        self.addrs(node).listen.to_string()
    }

    /// What peers and clients dial (`--advertise`, and the node's entry in `--peers`).
    /// Panics for a node not given to `new`.
    pub fn advertised_addr(&self, node: u64) -> String {
        self.addrs(node).advertised.to_string()
    }

    /// The broker's admin listener (`--admin-listen`), reachable from this process whatever
    /// the faults. Panics for a node not given to `new`.
    pub fn admin_addr(&self, node: u64) -> String {
        self.addrs(node).admin.to_string()
    }

    /// The `--peers` value every node gets: `1=ADDR1,2=ADDR2,...` with advertised addresses.
    pub fn peers_arg(&self) -> String {
        let entries: Vec<String> =
            self.nodes.iter().map(|n| format!("{}={}", n.id, n.advertised)).collect();
        entries.join(",")
    }

    /// The network namespace the node runs in (Namespaces mode), for poking at it by hand:
    /// `ip netns exec <name> ss -tn`.
    pub fn netns_name(&self, node: u64) -> Option<String> {
        match &self.backend {
            Backend::Namespaces(ns) => ns.node_netns(node).map(str::to_string),
            Backend::Proxy(_) => None,
        }
    }

    /// The command that starts `program` as the node's broker; the caller adds the
    /// arguments. In Namespaces mode it is `ip netns exec <namespace> <program>`: `ip`
    /// enters the namespace and then execs the program, so the child's pid is the broker's
    /// own (signals sent to it reach the broker). Panics for a node not given to `new`.
    pub fn command(&self, node: u64, program: &Path) -> tokio::process::Command {
        match &self.backend {
            Backend::Namespaces(ns) => {
                let netns = ns
                    .node_netns(node)
                    .unwrap_or_else(|| panic!("node {node} is not in this chaos network"));
                let mut command = tokio::process::Command::new("ip");
                command.args(["netns", "exec", netns]).arg(program);
                command
            }
            Backend::Proxy(_) => {
                let _ = self.addrs(node);
                tokio::process::Command::new(program)
            }
        }
    }

    /// Partitions the nodes into `sides`, replacing any earlier partition (client isolation
    /// stays as it is): nodes on different sides can no longer exchange a packet; a node on
    /// no side still reaches every node. Connections across the cut hang (nothing is
    /// delivered, nothing is closed); new ones never get an answer. In force when this
    /// returns.
    ///
    /// # Errors
    /// A side names an unknown node or a node is on two sides (nothing changes), or an `ip`
    /// command fails (the cut may then be partly in force; [`ChaosNet::heal`] clears it).
    pub async fn partition(&self, sides: &[Vec<u64>]) -> anyhow::Result<()> {
        let mut faults = self.faults.lock().await;
        let next = faults.with_partition(&self.nodes(), sides)?;
        self.apply(&mut faults, next).await
    }

    /// Ends every fault: the partition and any client isolation. Connections that hung across
    /// a cut carry on, with what was sent meanwhile delivered late.
    ///
    /// # Errors
    /// When an `ip` command fails.
    pub async fn heal(&self) -> anyhow::Result<()> {
        let mut faults = self.faults.lock().await;
        self.apply(&mut faults, Faults::default()).await
    }

    /// Cuts (or, with `isolated` false, restores) the runner's clients' access to `node`:
    /// what this process sends to the node's client port is dropped. Peers and the admin
    /// port are unaffected.
    ///
    /// # Errors
    /// An unknown node, or an `ip` command fails.
    pub async fn isolate_from_clients(&self, node: u64, isolated: bool) -> anyhow::Result<()> {
        ensure!(self.nodes.iter().any(|n| n.id == node), "node {node} is not in this network");
        let mut faults = self.faults.lock().await;
        let next = faults.with_clients_cut(node, isolated);
        self.apply(&mut faults, next).await
    }

    /// The faults in force.
    pub async fn faults(&self) -> Faults {
        self.faults.lock().await.clone()
    }

    async fn apply(&self, current: &mut Faults, next: Faults) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Namespaces(ns) => ns.apply(&next).await?,
            Backend::Proxy(proxies) => proxies.set_faults(next.clone()),
        }
        *current = next;
        Ok(())
    }

    /// Removes the namespaces and links, or stops the proxies. Brokers still running in a
    /// namespace lose their network; stop them first.
    ///
    /// # Errors
    /// When an `ip` command fails (every removal is still attempted).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        match &mut self.backend {
            Backend::Namespaces(ns) => ns.remove().await,
            Backend::Proxy(proxies) => {
                proxies.shutdown().await;
                Ok(())
            }
        }
    }
}

impl Drop for ChaosNet {
    fn drop(&mut self) {
        match &mut self.backend {
            Backend::Namespaces(ns) => ns.remove_blocking(),
            Backend::Proxy(proxies) => proxies.stop(),
        }
    }
}

/// Proxy mode: a private port and an admin port per node (released for the broker to bind),
/// and a proxy holding the advertised port.
fn start_proxies(nodes: &[u64]) -> anyhow::Result<(Vec<NodeAddrs>, Proxies)> {
    let loopback = |port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let mut addrs = Vec::with_capacity(nodes.len());
    let mut routes = Vec::with_capacity(nodes.len());
    for &id in nodes {
        let listen = loopback(proxy::free_loopback_port()?);
        let admin = loopback(proxy::free_loopback_port()?);
        let listener = proxy::bind_loopback()?;
        let advertised = listener.local_addr().context("reading a proxy's port")?;
        routes.push(proxy::Route { node: id, listener, target: listen });
        addrs.push(NodeAddrs { id, listen, advertised, admin });
    }
    Ok((addrs, Proxies::start(routes)?))
}

/// A cut rule in one node's namespace: drop everything from `from`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CutRule {
    netns: String,
    pref: u32,
    from: Ipv4Addr,
}

/// Namespaces mode: the namespaces and links of one run.
#[derive(Debug)]
struct Namespaces {
    /// Root-namespace end of the switch's uplink (`fm<tag>`), once made.
    host_link: Option<String>,
    /// Switch namespace first, then one per node; only those this run made (removed in
    /// reverse).
    made_netns: Vec<String>,
    /// Namespace of each node, by node id.
    node_netns: BTreeMap<u64, String>,
    /// Address of each node (index order = the order given to `new`).
    node_ips: Vec<(u64, Ipv4Addr)>,
    /// The runner's address on the switch.
    host_ip: Ipv4Addr,
    /// Cut rules in force.
    installed: tokio::sync::Mutex<BTreeSet<CutRule>>,
}

/// FNV-1a: a stable hash of the run id for names and the subnet.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Namespaces {
    async fn create(nodes: &[u64], run_id: &str) -> anyhow::Result<(Vec<NodeAddrs>, Namespaces)> {
        let hash = fnv1a(run_id.as_bytes());
        // Interface names are at most 15 bytes; the only one in the root namespace is the tag.
        let tag = format!("fm{:06x}", hash & 0x00ff_ffff);
        let existing = ip("netns list").await?;
        if existing.lines().any(|line| line.starts_with(&format!("{tag}-")))
            || ip(&format!("link show {tag}")).await.is_ok()
        {
            bail!(
                "namespaces or link of run {run_id:?} ({tag}*) already exist: another run with \
                 this id is going on, or one died without cleaning up (remove with `ip netns \
                 del {tag}-...` and `ip link del {tag}`)"
            );
        }
        let subnet = free_subnet((hash >> 24) as u8).await?;
        let host_ip = Ipv4Addr::new(10, 77, subnet, 1);
        let node_ips: Vec<(u64, Ipv4Addr)> = nodes
            .iter()
            .zip(11u8..)
            .map(|(&id, host)| (id, Ipv4Addr::new(10, 77, subnet, host)))
            .collect();
        let node_netns: BTreeMap<u64, String> =
            nodes.iter().map(|&id| (id, format!("{tag}-n{id}"))).collect();
        let mut ns = Namespaces {
            host_link: None,
            made_netns: Vec::new(),
            node_netns,
            node_ips,
            host_ip,
            installed: tokio::sync::Mutex::default(),
        };
        if let Err(error) = ns.build(&tag).await {
            let _ = ns.remove().await;
            return Err(error.context(format!("setting up the network namespaces of {tag}")));
        }
        let addrs = ns
            .node_ips
            .iter()
            .map(|&(id, ip)| NodeAddrs {
                id,
                listen: SocketAddr::V4(SocketAddrV4::new(ip, NS_LISTEN_PORT)),
                advertised: SocketAddr::V4(SocketAddrV4::new(ip, NS_LISTEN_PORT)),
                admin: SocketAddr::V4(SocketAddrV4::new(ip, NS_ADMIN_PORT)),
            })
            .collect();
        Ok((addrs, ns))
    }

    fn node_netns(&self, node: u64) -> Option<&str> {
        self.node_netns.get(&node).map(String::as_str)
    }

    async fn build(&mut self, tag: &str) -> anyhow::Result<()> {
        let switch = format!("{tag}-sw");
        ip(&format!("netns add {switch}")).await?;
        self.made_netns.push(switch.clone());
        ip(&format!("-n {switch} link add br0 type bridge")).await?;
        ip(&format!("-n {switch} link set br0 up")).await?;

        ip(&format!("link add {tag} type veth peer name host netns {switch}")).await?;
        self.host_link = Some(tag.to_string());
        ip(&format!("addr add {}/24 dev {tag}", self.host_ip)).await?;
        ip(&format!("link set {tag} up")).await?;
        ip(&format!("-n {switch} link set host master br0 up")).await?;

        let host_ip = self.host_ip;
        for (index, &(id, node_ip)) in self.node_ips.clone().iter().enumerate() {
            let netns = self.node_netns.get(&id).cloned().unwrap_or_default();
            let port = format!("n{index}");
            ip(&format!("netns add {netns}")).await?;
            self.made_netns.push(netns.clone());
            ip(&format!("-n {netns} link set lo up")).await?;
            // Both ends are made straight in their namespaces: no name in the root namespace.
            ip(&format!("link add eth0 netns {netns} type veth peer name {port} netns {switch}"))
                .await?;
            ip(&format!("-n {netns} addr add {node_ip}/24 dev eth0")).await?;
            ip(&format!("-n {netns} link set eth0 up")).await?;
            ip(&format!("-n {switch} link set {port} master br0 up")).await?;
            // Cut rules must come before the local table (see the module docs): move it.
            ip(&format!("-n {netns} rule add pref {PREF_LOCAL} lookup local")).await?;
            ip(&format!("-n {netns} rule del pref 0")).await?;
            ip(&format!(
                "-n {netns} rule add pref {PREF_ADMIN_OPEN} from {host_ip}/32 ipproto tcp \
                 dport {NS_ADMIN_PORT} lookup local"
            ))
            .await?;
        }
        for &(id, node_ip) in &self.node_ips {
            check_reachable(id, SocketAddr::V4(SocketAddrV4::new(node_ip, NS_LISTEN_PORT))).await?;
        }
        Ok(())
    }

    fn rules_for(&self, faults: &Faults) -> BTreeSet<CutRule> {
        let mut rules = BTreeSet::new();
        for (id, netns) in &self.node_netns {
            if faults.clients_cut(*id) {
                rules.insert(CutRule {
                    netns: netns.clone(),
                    pref: PREF_CLIENTS_CUT,
                    from: self.host_ip,
                });
            }
            for (index, &(peer, peer_ip)) in (0u32..).zip(&self.node_ips) {
                if faults.peers_cut(peer, *id) {
                    rules.insert(CutRule {
                        netns: netns.clone(),
                        pref: PREF_PEER_CUT_BASE + index,
                        from: peer_ip,
                    });
                }
            }
        }
        rules
    }

    /// Installs the rules `faults` need and removes the others: new cuts first, so that
    /// replacing a partition never opens a gap in a cut that stays.
    async fn apply(&self, faults: &Faults) -> anyhow::Result<()> {
        let wanted = self.rules_for(faults);
        let mut installed = self.installed.lock().await;
        let adding: Vec<CutRule> = wanted.difference(&installed).cloned().collect();
        for rule in adding {
            let CutRule { netns, pref, from } = &rule;
            ip(&format!("-n {netns} rule add pref {pref} from {from}/32 blackhole")).await?;
            installed.insert(rule);
        }
        let removing: Vec<CutRule> = installed.difference(&wanted).cloned().collect();
        for rule in removing {
            ip(&format!("-n {} rule del pref {}", rule.netns, rule.pref)).await?;
            installed.remove(&rule);
        }
        Ok(())
    }

    /// Removes the uplink (which takes its switch-side end along) and the namespaces this run
    /// made (which take their links along), attempting every removal.
    async fn remove(&mut self) -> anyhow::Result<()> {
        let mut first_error = None;
        if let Some(link) = self.host_link.take() {
            if let Err(error) = ip(&format!("link del {link}")).await {
                first_error.get_or_insert(error);
            }
        }
        while let Some(netns) = self.made_netns.pop() {
            if let Err(error) = ip(&format!("netns del {netns}")).await {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// [`Namespaces::remove`] without Tokio, ignoring failures (for `Drop`).
    fn remove_blocking(&mut self) {
        if let Some(link) = self.host_link.take() {
            let _ = ip_blocking(&format!("link del {link}"));
        }
        while let Some(netns) = self.made_netns.pop() {
            let _ = ip_blocking(&format!("netns del {netns}"));
        }
    }
}

/// The third octet of a 10.77.X.0/24 no address or route of the root namespace is in,
/// trying `preferred` first. (Two runs starting at the same instant may still pick the same;
/// the second then fails to add its address.)
async fn free_subnet(preferred: u8) -> anyhow::Result<u8> {
    let addresses = ip("-4 -o addr show").await?;
    let routes = ip("-4 route show table all").await?;
    (0..=255u8)
        .map(|step| preferred.wrapping_add(step))
        .find(|x| {
            let prefix = format!("10.77.{x}.");
            !addresses.contains(&prefix) && !routes.contains(&prefix)
        })
        .ok_or_else(|| anyhow!("every subnet 10.77.X.0/24 is in use"))
}

/// Checks the runner reaches `addr` before any broker runs there: nothing listens yet, so a
/// refused connection proves packets go both ways; silence means something drops them.
async fn check_reachable(node: u64, addr: SocketAddr) -> anyhow::Result<()> {
    match tokio::time::timeout(REACH_CHECK_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Ok(Err(error)) => Err(anyhow!("the runner cannot reach node {node} at {addr}: {error}")),
        Err(_) => Err(anyhow!(
            "the runner cannot reach node {node} at {addr}: no answer within \
             {REACH_CHECK_TIMEOUT:?} (a host firewall dropping traffic on the veth?)"
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In a test a failed unwrap is a failed test, which is the point.
mod tests {
    use super::*;

    #[test]
    fn partitions_cut_across_sides_only() {
        let nodes = [1, 2, 3];
        let f = Faults::default().with_partition(&nodes, &[vec![1], vec![2, 3]]).unwrap();
        assert!(f.peers_cut(1, 2) && f.peers_cut(3, 1));
        assert!(!f.peers_cut(2, 3) && !f.peers_cut(1, 1));
        assert!(!f.clients_cut(1));

        // Node 3 on no side bridges 1 and 2.
        let bridge = Faults::default().with_partition(&nodes, &[vec![1], vec![2]]).unwrap();
        assert!(bridge.peers_cut(1, 2));
        assert!(!bridge.peers_cut(1, 3) && !bridge.peers_cut(2, 3));

        assert!(Faults::default().with_partition(&nodes, &[vec![1], vec![4]]).is_err());
        assert!(Faults::default().with_partition(&nodes, &[vec![1, 2], vec![2]]).is_err());

        // A new partition keeps client isolation and replaces the sides.
        let isolated = bridge.with_clients_cut(2, true);
        let next = isolated.with_partition(&nodes, &[vec![1, 2], vec![3]]).unwrap();
        assert!(next.clients_cut(2) && !next.peers_cut(1, 2) && next.peers_cut(2, 3));
        assert!(!next.with_clients_cut(2, false).clients_cut(2));
    }

    #[test]
    fn a_chaos_net_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync + 'static>() {}
        fn send<T: Send>(_: T) {}
        shared::<ChaosNet>();
        // Type-checked, never run: the futures the runner spawns are Send.
        let _ = |net: &'static ChaosNet| {
            send(net.partition(&[]));
            send(net.heal());
            send(net.isolate_from_clients(1, true));
        };
    }

    /// Environment variable telling [`ns_helper`] what to be.
    const HELPER_ENV: &str = "FERRY_CHAOS_NET_HELPER";
    /// Prefix of the lines [`ns_helper`] answers with (libtest prints its own lines too).
    const HELPER_SAYS: &str = "helper: ";

    /// Not a test: the program [`namespaces_partition_and_heal`] runs inside a node's
    /// namespace, by running this test binary with `--ignored --exact` and `HELPER_ENV`
    /// set. `echo:ADDR,ADDR` echoes bytes on every address; `client:ADDR` reads commands on
    /// stdin: `new` connects afresh and echoes a token, `old SECS` echoes a token on one
    /// long-lived connection, waiting up to SECS for it.
    #[test]
    #[ignore = "helper process of namespaces_partition_and_heal"]
    fn ns_helper() {
        use std::io::{BufRead, Read, Write};
        use std::net::{TcpListener, TcpStream};
        let Ok(what) = std::env::var(HELPER_ENV) else { return };
        if let Some(addrs) = what.strip_prefix("echo:") {
            let listeners: Vec<TcpListener> =
                addrs.split(',').map(|a| TcpListener::bind(a).unwrap()).collect();
            println!("{HELPER_SAYS}ready");
            let threads: Vec<_> = listeners
                .into_iter()
                .map(|listener| {
                    std::thread::spawn(move || {
                        for stream in listener.incoming() {
                            let mut stream = stream.unwrap();
                            std::thread::spawn(move || {
                                let mut reader = stream.try_clone().unwrap();
                                let _ = std::io::copy(&mut reader, &mut stream);
                            });
                        }
                    })
                })
                .collect();
            for thread in threads {
                let _ = thread.join();
            }
        } else if let Some(addr) = what.strip_prefix("client:") {
            let addr: SocketAddr = addr.parse().unwrap();
            let echo = |stream: &mut TcpStream, token: &str, wait: Duration| -> bool {
                stream.set_read_timeout(Some(wait)).unwrap();
                if stream.write_all(token.as_bytes()).is_err() {
                    return false;
                }
                // Tokens held back by an earlier cut may arrive first.
                let mut seen = String::new();
                let mut chunk = [0u8; 256];
                while !seen.contains(token) {
                    match stream.read(&mut chunk) {
                        Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&chunk[..n])),
                        _ => return false,
                    }
                }
                true
            };
            let mut old = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
            for (count, line) in std::io::stdin().lock().lines().enumerate() {
                let line = line.unwrap();
                let ok = match line.split_whitespace().collect::<Vec<_>>()[..] {
                    ["new"] => TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok_and(
                        |mut s| echo(&mut s, &format!("n{count};"), Duration::from_secs(1)),
                    ),
                    ["old", secs] => {
                        let wait = Duration::from_secs(secs.parse().unwrap());
                        echo(&mut old, &format!("o{count};"), wait)
                    }
                    _ => panic!("unknown helper command {line:?}"),
                };
                println!("{HELPER_SAYS}{}", if ok { "ok" } else { "timeout" });
            }
        }
    }

    /// A helper process running in a node's namespace.
    struct Helper {
        child: tokio::process::Child,
        stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    }

    impl Helper {
        fn spawn(net: &ChaosNet, node: u64, what: &str) -> Helper {
            let exe = std::env::current_exe().unwrap();
            // Test names leave out the crate: "ferry_bench::chaos::net::tests" -> "chaos::...".
            let module = module_path!().split_once("::").unwrap().1;
            let mut command = net.command(node, &exe);
            command
                .args(["--exact", &format!("{module}::ns_helper"), "--ignored", "--nocapture"])
                .env(HELPER_ENV, what)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true);
            let mut child = command.spawn().unwrap();
            let stdout = child.stdout.take().unwrap();
            use tokio::io::AsyncBufReadExt;
            Helper { child, stdout: tokio::io::BufReader::new(stdout).lines() }
        }

        async fn answer(&mut self) -> String {
            loop {
                let line = self.stdout.next_line().await.unwrap().expect("helper ended");
                if let Some(answer) = line.strip_prefix(HELPER_SAYS) {
                    return answer.to_string();
                }
            }
        }

        async fn ask(&mut self, command: &str) -> String {
            use tokio::io::AsyncWriteExt;
            let stdin = self.child.stdin.as_mut().unwrap();
            stdin.write_all(format!("{command}\n").as_bytes()).await.unwrap();
            self.answer().await
        }
    }

    /// Whether this process can connect to `addr` and get a token echoed within a second.
    async fn runner_echoes(addr: &str) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.write_all(b"runner").await?;
            let mut back = [0u8; 6];
            stream.read_exact(&mut back).await?;
            Ok::<bool, std::io::Error>(&back == b"runner")
        };
        matches!(tokio::time::timeout(Duration::from_secs(1), attempt).await, Ok(Ok(true)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn namespaces_partition_and_heal() {
        if NetMode::detect() != NetMode::Namespaces {
            eprintln!("note: namespaces_partition_and_heal skipped: needs root and `ip netns`");
            return;
        }
        tokio::time::timeout(Duration::from_secs(120), async {
            let run_id = format!("net-test-{}", std::process::id());
            let net = ChaosNet::new(NetMode::Namespaces, &[1, 2, 3], &run_id).await.unwrap();
            assert_eq!(net.mode(), NetMode::Namespaces);
            assert_eq!(net.listen_addr(2), net.advertised_addr(2));
            let names: Vec<String> =
                [1, 2, 3].iter().map(|&n| net.netns_name(n).unwrap()).collect();

            let what = format!("echo:{},{}", net.listen_addr(2), net.admin_addr(2));
            let mut server = Helper::spawn(&net, 2, &what);
            assert_eq!(server.answer().await, "ready");
            // `ip netns exec` execs: the child's pid is the program's own.
            let pid = server.child.id().unwrap();
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            assert_eq!(exe, std::env::current_exe().unwrap());

            let mut client = Helper::spawn(&net, 1, &format!("client:{}", net.advertised_addr(2)));
            assert_eq!(client.ask("new").await, "ok");
            assert_eq!(client.ask("old 2").await, "ok");
            assert!(runner_echoes(&net.advertised_addr(2)).await);

            net.partition(&[vec![1], vec![2, 3]]).await.unwrap();
            assert_eq!(client.ask("old 1").await, "timeout", "an open connection hangs");
            assert_eq!(client.ask("new").await, "timeout", "a new connection hangs");
            assert!(runner_echoes(&net.advertised_addr(2)).await, "the runner is not cut");

            net.isolate_from_clients(2, true).await.unwrap();
            assert!(!runner_echoes(&net.advertised_addr(2)).await);
            assert!(runner_echoes(&net.admin_addr(2)).await, "the admin port stays open");

            net.heal().await.unwrap();
            assert_eq!(net.faults().await, Faults::default());
            assert!(runner_echoes(&net.advertised_addr(2)).await);
            assert_eq!(client.ask("new").await, "ok");
            // The open connection carries on once TCP retransmits (backed off meanwhile).
            assert_eq!(client.ask("old 20").await, "ok");

            // Replacing a partition: 1 and 2 together again, 3 cut off.
            net.partition(&[vec![2], vec![1, 3]]).await.unwrap();
            assert_eq!(client.ask("new").await, "timeout");
            net.partition(&[vec![1, 2], vec![3]]).await.unwrap();
            assert_eq!(client.ask("new").await, "ok");

            client.child.kill().await.unwrap();
            server.child.kill().await.unwrap();
            net.shutdown().await.unwrap();
            let left = ip("netns list").await.unwrap();
            for name in &names {
                assert!(!left.lines().any(|l| l.split_whitespace().next() == Some(name)), "{left}");
            }
            let tag = names[0].trim_end_matches("-n1");
            assert!(!left.contains(tag), "{left}");
            assert!(ip(&format!("link show {tag}")).await.is_err(), "the uplink is gone");

            // The same run id again is refused, leaving the running one alone; dropping
            // without shutdown cleans up too.
            let first = ChaosNet::new(NetMode::Namespaces, &[1, 2], &run_id).await.unwrap();
            let refused = ChaosNet::new(NetMode::Namespaces, &[1, 2], &run_id).await.unwrap_err();
            assert!(refused.to_string().contains("already exist"), "{refused:#}");
            let running = first.netns_name(2).unwrap();
            assert!(ip("netns list").await.unwrap().contains(&running));
            drop(first);
            assert!(!ip("netns list").await.unwrap().contains(tag));
            assert!(ip(&format!("link show {tag}")).await.is_err());
        })
        .await
        .expect("namespaces test timed out");
    }
}
