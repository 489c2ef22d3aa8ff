//! Test harness: brokers as child processes (so SIGKILL is a real crash) on loopback ports, each
//! with its own temp data dir, plus helpers that wait on conditions with deadlines.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_protocol::messages::{NodeStatusRequest, NodeStatusResponse};
use ferry_protocol::{ClientKind, ConnectOptions, Connection};

/// A record batch holding one record per value (producer id 0, timestamp 1).
pub fn batch_of(values: &[&str]) -> bytes::Bytes {
    let mut b = ferry_protocol::RecordBatchBuilder::new(0, 0, 0);
    for v in values {
        b.push(&ferry_protocol::Record {
            timestamp_ms: 1,
            key: None,
            headers: vec![],
            value: bytes::Bytes::from(v.to_string()),
        });
    }
    b.finish()
}

/// How long any single wait in a test may take before the test fails.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Picks a loopback port for a broker to listen on.
///
/// Ports come from a per-process counter below the kernel's ephemeral range (32768 and up on
/// Linux), each checked bindable: a port taken from the ephemeral range by binding port 0 and
/// releasing it can be handed out again as the source port of some outgoing connection before
/// the broker binds it, and the broker then fails to start.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Test binaries running side by side start far apart.
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = u16::try_from(LOW + n % SPAN).expect("port in range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN);
}

/// Polls `check` every 50 ms until it returns Some, or panics with `what` after `WAIT_MAX`.
pub async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Node {
    pub id: u64,
    pub addr: String,
    pub admin_addr: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

/// A cluster of `ferry-broker` processes.
pub struct Cluster {
    pub nodes: Vec<Node>,
    peers: String,
    /// A TOML config file every node starts with (`--config`), if any.
    config: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes forming one cluster and waits until a leader is elected.
    pub async fn start(n: u64) -> Cluster {
        Cluster::start_with(n, "").await
    }

    /// Starts `n` nodes that read `config_toml` as their config file (settings not covered by
    /// flags, e.g. transaction check timing).
    pub async fn start_with(n: u64, config_toml: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = (!config_toml.is_empty()).then(|| {
            let path = dir.path().join("ferry.toml");
            std::fs::write(&path, config_toml).expect("write config");
            path
        });
        let nodes: Vec<Node> = (1..=n)
            .map(|id| Node {
                id,
                addr: format!("127.0.0.1:{}", free_port()),
                admin_addr: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("node-{id}")),
                child: None,
            })
            .collect();
        let peers: Vec<String> = nodes.iter().map(|n| format!("{}={}", n.id, n.addr)).collect();
        let mut cluster = Cluster { nodes, peers: peers.join(","), config, _dir: dir };
        for id in 1..=n {
            cluster.spawn(id);
        }
        cluster.leader().await;
        cluster
    }

    /// Starts a new node with `--join` (no cluster of its own) and returns its address; add it
    /// with an `AddNodeRequest`.
    pub fn spawn_joining(&mut self, id: u64) -> String {
        let node = Node {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            admin_addr: format!("127.0.0.1:{}", free_port()),
            data_dir: self._dir.path().join(format!("node-{id}")),
            child: None,
        };
        let addr = node.addr.clone();
        self.nodes.push(node);
        self.spawn_with(id, None);
        addr
    }

    fn spawn(&mut self, id: u64) {
        let peers = self.peers.clone();
        // A node that joined later must not re-form the founding cluster on restart; with data
        // on disk it ignores --peers anyway, but say what it was started with.
        let founding = self.peers.split(',').any(|p| p.starts_with(&format!("{id}=")));
        self.spawn_with(id, founding.then_some(peers));
    }

    fn spawn_with(&mut self, id: u64, peers: Option<String>) {
        let config = self.config.clone();
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} already running");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferry-broker"));
        if let Some(path) = config {
            cmd.arg("--config").arg(path);
        }
        cmd.args(["--node-id", &id.to_string()])
            .args(["--listen", &node.addr])
            .args(["--admin-listen", &node.admin_addr])
            .arg("--data-dir")
            .arg(&node.data_dir);
        match peers {
            Some(p) => cmd.args(["--peers", &p]),
            None => cmd.arg("--join"),
        };
        // FERRY_TEST_BROKER_LOG=<filter> shows the brokers' logs (they go to stdout), for
        // debugging a test; otherwise only their stderr is shown.
        let (filter, stdout) = match std::env::var("FERRY_TEST_BROKER_LOG") {
            Ok(filter) => (filter, Stdio::inherit()),
            Err(_) => ("warn".to_string(), Stdio::null()),
        };
        let child = cmd
            .env("FERRY_LOG", filter)
            .stdout(stdout)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ferry-broker");
        node.child = Some(child);
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).expect("node id")
    }

    /// Comma-separated client addresses of every node.
    pub fn bootstrap(&self) -> String {
        self.nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>().join(",")
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            child.kill().expect("kill");
            child.wait().expect("wait");
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + WAIT_MAX;
            loop {
                if child.try_wait().expect("try_wait").is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("node {id} did not stop on SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts a stopped or killed node again with its data dir.
    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
    }

    /// One node's own status, if it answers.
    pub async fn status(&self, id: u64) -> Option<NodeStatusResponse> {
        let mut opts = ConnectOptions::new("test", ClientKind::Admin);
        opts.connect_timeout = Duration::from_millis(500);
        opts.request_timeout = Duration::from_secs(2);
        let conn = Connection::connect(&self.node(id).addr, &opts).await.ok()?;
        conn.call(&NodeStatusRequest).await.ok()
    }

    /// Waits until the running nodes agree on one leader; returns its id.
    pub async fn leader(&self) -> u64 {
        let running: Vec<u64> =
            self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect();
        wait_for("a leader all running nodes agree on", || async {
            let mut leaders = BTreeMap::new();
            for id in &running {
                let s = self.status(*id).await?;
                leaders.insert(*id, s.leader_id?);
            }
            let first = *leaders.values().next()?;
            let agreed = leaders.values().all(|l| *l == first);
            let leader_is_running = running.contains(&first.0);
            (agreed && leader_is_running).then_some(first.0)
        })
        .await
    }

    /// Waits until every running node has applied the leader's last log index.
    pub async fn wait_caught_up(&self) {
        let leader = self.leader().await;
        let running: Vec<u64> =
            self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.id).collect();
        wait_for("every node to apply the leader's log", || async {
            let target = self.status(leader).await?.last_log_index;
            for id in &running {
                if self.status(*id).await?.applied_index < target {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A GET on a fresh connection, with an optional bearer token; (status, body).
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    bearer: Option<&str>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}
