//! Broker configuration: a TOML file (`--config`), then `FERRY_*` environment variables, then
//! command-line flags, each overriding the one before. Validated once at start-up.
//! Every key is documented in `ops/deploy/ferry.example.toml`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;

/// Command-line flags (each also settable as `FERRY_<NAME>` and in the TOML file).
#[derive(Debug, Parser, Default)]
#[command(
    name = "ferry-broker",
    version,
    about = "ferrymq broker: a Raft-replicated transactional message broker",
    long_about = "Runs one ferrymq broker node.\n\n\
        With no flags it is a complete single-node broker listening on 127.0.0.1:7400 with its \
        data in ./ferry-data. Give --peers (the same list on every node) to form a cluster:\n\n  \
        ferry-broker --node-id 1 --data-dir d1 --peers 1=127.0.0.1:7401,2=127.0.0.1:7402,3=127.0.0.1:7403\n\n\
        Settings come from a TOML file (--config), then FERRY_* environment variables, then flags."
)]
pub struct Args {
    /// TOML configuration file (see ops/deploy/ferry.example.toml).
    #[arg(long, env = "FERRY_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (non-zero, unique in the cluster). Default 1.
    #[arg(long, env = "FERRY_NODE_ID")]
    pub node_id: Option<u64>,
    /// Client and peer listener, HOST:PORT. Default: this node's address in --peers, else
    /// 127.0.0.1:7400.
    #[arg(long, env = "FERRY_LISTEN")]
    pub listen: Option<String>,
    /// HTTP admin listener (/metrics, /livez, /readyz), HOST:PORT; `off` disables it.
    /// Default 127.0.0.1:7480.
    #[arg(long, env = "FERRY_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// Address other nodes and clients use to reach this node. Default: the listen address.
    #[arg(long, env = "FERRY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Directory for the Raft log, state and snapshots. Default ./ferry-data.
    #[arg(long, env = "FERRY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Founding cluster members: ID=HOST:PORT,ID=HOST:PORT,... (include this node).
    #[arg(long, env = "FERRY_PEERS")]
    pub peers: Option<String>,
    /// Start empty and wait to be added with `ferryctl cluster add-node` (no self-initialize).
    #[arg(long, env = "FERRY_JOIN")]
    pub join: bool,
    /// Log format: text or json.
    #[arg(long, env = "FERRY_LOG_FORMAT")]
    pub log_format: Option<String>,
}

/// Keys accepted in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    node_id: Option<u64>,
    listen: Option<String>,
    admin_listen: Option<String>,
    advertise: Option<String>,
    data_dir: Option<PathBuf>,
    peers: Option<BTreeMap<String, String>>,
    join: Option<bool>,
    log_format: Option<String>,
    frame_bytes_max: Option<usize>,
    produce_batch_bytes_max: Option<usize>,
    fetch_wait_max_ms: Option<u64>,
    connections_max: Option<usize>,
    requests_in_flight_per_connection_max: Option<usize>,
    raft_heartbeat_ms: Option<u64>,
    raft_election_timeout_ms: Option<u64>,
    txn_check_timeout_ms: Option<u64>,
    txn_check_backoff_ms: Option<Vec<u64>>,
    txn_check_max: Option<u32>,
    txn_check_exhausted: Option<String>,
    txn_checks_in_flight_per_producer: Option<u32>,
    verify_data_on_start: Option<bool>,
    txn_retention_ms: Option<u64>,
    delay_max_ms: Option<u64>,
    dedup_window_ms: Option<u64>,
}

/// What happens to a transaction whose last check-back went unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckExhausted {
    /// Keep it open and parked, for an operator (and alert). Never silently discarded.
    Park,
    /// Roll it back.
    Rollback,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration a broker runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id.
    pub node_id: u64,
    /// Client/peer listener.
    pub listen: String,
    /// HTTP admin listener, if enabled.
    pub admin_listen: Option<String>,
    /// Advertised address (None: the bound listen address).
    pub advertise: Option<String>,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Founding members (empty: a single-node cluster of this node).
    pub peers: BTreeMap<u64, String>,
    /// Wait to be added instead of initializing.
    pub join: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// Largest frame accepted or sent.
    pub frame_bytes_max: usize,
    /// Largest record batch a produce may carry.
    pub produce_batch_bytes_max: usize,
    /// Longest a fetch may park waiting for data.
    pub fetch_wait_max: Duration,
    /// Most connections served at once.
    pub connections_max: usize,
    /// Most requests in flight per connection (reading pauses beyond it).
    pub requests_in_flight_per_connection_max: usize,
    /// Raft heartbeat period.
    pub raft_heartbeat: Duration,
    /// Raft election timeout (lower bound; the upper is twice this).
    pub raft_election_timeout: Duration,
    /// Delay from a half message to its first check-back (a message may set its own).
    pub txn_check_timeout: Duration,
    /// Delays between check-backs: the n-th counted check is followed by entry n (the last
    /// entry repeats).
    pub txn_check_backoff: Vec<Duration>,
    /// Check-backs (answered or not) before a transaction is parked or rolled back.
    pub txn_check_max: u32,
    /// What happens after the last check.
    pub txn_check_exhausted: CheckExhausted,
    /// Most check-backs sent and not yet answered per connected producer instance; checks
    /// beyond it stay due (not counted) for a later tick, so a burst after a failover never
    /// overflows a producer's queue and burns check attempts.
    pub txn_checks_in_flight_per_producer: u32,
    /// How long a decided transaction is remembered (for idempotent decisions and listing).
    pub txn_retention: Duration,
    /// Furthest in the future a produce may set its deliver time (leader clock).
    pub delay_max: Duration,
    /// How long a partition remembers a stored batch (producer id + sequence) or record
    /// (`ferry-dedup-id`) to drop a retry of it.
    pub dedup_window: Duration,
    /// Read the whole store at start, verifying checksums (damaged data is then replaced by
    /// a resync from the leader rather than found while serving).
    pub verify_data_on_start: bool,
    /// The wall clock push delivery reads (the system clock; tests move a manual one).
    pub clock: crate::clock::Clock,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            listen: "127.0.0.1:7400".into(),
            admin_listen: Some("127.0.0.1:7480".into()),
            advertise: None,
            data_dir: PathBuf::from("ferry-data"),
            peers: BTreeMap::new(),
            join: false,
            log_format: LogFormat::Text,
            frame_bytes_max: 16 * 1024 * 1024,
            produce_batch_bytes_max: 8 * 1024 * 1024,
            fetch_wait_max: Duration::from_secs(30),
            connections_max: 10_000,
            requests_in_flight_per_connection_max: 1024,
            raft_heartbeat: Duration::from_millis(100),
            raft_election_timeout: Duration::from_millis(500),
            txn_check_timeout: Duration::from_secs(6),
            txn_check_backoff: [5, 10, 30, 60].into_iter().map(Duration::from_secs).collect(),
            txn_check_max: 15,
            txn_check_exhausted: CheckExhausted::Park,
            txn_checks_in_flight_per_producer: 64,
            txn_retention: Duration::from_secs(24 * 3600),
            delay_max: DELAY_MAX_DEFAULT,
            dedup_window: Duration::from_secs(3600),
            verify_data_on_start: true,
            clock: crate::clock::Clock::system(),
        }
    }
}

/// Default of `delay_max_ms`: 40 days.
pub const DELAY_MAX_DEFAULT: Duration = Duration::from_secs(40 * 24 * 3600);

/// Largest `delay_max_ms` accepted: 10 years. Beyond it the value is more likely a unit slip
/// (micro- for milliseconds) than a plan.
pub const DELAY_MAX_LIMIT: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Accepted `dedup_window_ms`: 1 s to 7 days.
pub const DEDUP_WINDOW_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600);

/// Largest `txn_checks_in_flight_per_producer` accepted.
pub const TXN_CHECKS_IN_FLIGHT_LIMIT: u32 = 65_536;

/// Parses `1=host:port,2=host:port`.
pub fn parse_peers(list: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut peers = BTreeMap::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) =
            item.split_once('=').with_context(|| format!("peer {item:?} is not ID=HOST:PORT"))?;
        let id: u64 =
            id.trim().parse().with_context(|| format!("peer id {id:?} is not a number"))?;
        let addr = addr.trim();
        if !ferry_protocol::cluster::is_host_port(addr) {
            bail!("peer {id} address {addr:?} is not HOST:PORT");
        }
        if peers.insert(id, addr.to_string()).is_some() {
            bail!("peer {id} is listed twice");
        }
    }
    Ok(peers)
}

impl Config {
    /// Builds the configuration from flags/environment (`args`) over the TOML file they name.
    pub fn from_args(args: Args) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let mut c = Config::default();
        let file_peers = match file.peers {
            Some(map) => {
                let mut peers = BTreeMap::new();
                for (id, addr) in map {
                    let id: u64 =
                        id.parse().with_context(|| format!("peers key {id:?} is not a node id"))?;
                    peers.insert(id, addr);
                }
                Some(peers)
            }
            None => None,
        };
        let peers = match &args.peers {
            Some(list) => Some(parse_peers(list)?),
            None => file_peers,
        };
        c.node_id = args.node_id.or(file.node_id).unwrap_or(c.node_id);
        if let Some(p) = peers {
            c.peers = p;
        }
        c.listen = match args.listen.or(file.listen) {
            Some(l) => l,
            None => c.peers.get(&c.node_id).cloned().unwrap_or(c.listen),
        };
        c.admin_listen = match args.admin_listen.or(file.admin_listen) {
            Some(a) if a == "off" => None,
            Some(a) => Some(a),
            None => c.admin_listen,
        };
        c.advertise =
            args.advertise.or(file.advertise).or_else(|| c.peers.get(&c.node_id).cloned());
        c.data_dir = args.data_dir.or(file.data_dir).unwrap_or(c.data_dir);
        c.join = args.join || file.join.unwrap_or(false);
        c.log_format = match args.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("log_format must be text or json, not {other:?}"),
        };
        if let Some(v) = file.frame_bytes_max {
            c.frame_bytes_max = v;
        }
        if let Some(v) = file.produce_batch_bytes_max {
            c.produce_batch_bytes_max = v;
        }
        if let Some(v) = file.fetch_wait_max_ms {
            c.fetch_wait_max = Duration::from_millis(v);
        }
        if let Some(v) = file.connections_max {
            c.connections_max = v;
        }
        if let Some(v) = file.requests_in_flight_per_connection_max {
            c.requests_in_flight_per_connection_max = v;
        }
        if let Some(v) = file.raft_heartbeat_ms {
            c.raft_heartbeat = Duration::from_millis(v);
        }
        if let Some(v) = file.raft_election_timeout_ms {
            c.raft_election_timeout = Duration::from_millis(v);
        }
        if let Some(v) = file.txn_check_timeout_ms {
            c.txn_check_timeout = Duration::from_millis(v);
        }
        if let Some(v) = file.txn_check_backoff_ms {
            c.txn_check_backoff = v.into_iter().map(Duration::from_millis).collect();
        }
        if let Some(v) = file.txn_check_max {
            c.txn_check_max = v;
        }
        if let Some(v) = file.verify_data_on_start {
            c.verify_data_on_start = v;
        }
        if let Some(v) = file.txn_checks_in_flight_per_producer {
            c.txn_checks_in_flight_per_producer = v;
        }
        c.txn_check_exhausted = match file.txn_check_exhausted.as_deref() {
            None | Some("park") => CheckExhausted::Park,
            Some("rollback") => CheckExhausted::Rollback,
            Some(other) => bail!("txn_check_exhausted must be park or rollback, not {other:?}"),
        };
        if let Some(v) = file.txn_retention_ms {
            c.txn_retention = Duration::from_millis(v);
        }
        if let Some(v) = file.delay_max_ms {
            c.delay_max = Duration::from_millis(v);
        }
        if let Some(v) = file.dedup_window_ms {
            c.dedup_window = Duration::from_millis(v);
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks the settings fit together.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.node_id == 0 {
            bail!("node_id must be non-zero");
        }
        if !self.peers.is_empty() && !self.peers.contains_key(&self.node_id) {
            bail!("peers must include this node (id {})", self.node_id);
        }
        if self.peers.contains_key(&0) {
            bail!("peer ids must be non-zero");
        }
        if self.join && !self.peers.is_empty() {
            bail!("--join and --peers exclude each other: a joining node is added by the leader");
        }
        if self.frame_bytes_max < 64 * 1024 {
            bail!("frame_bytes_max must be at least 64 KiB");
        }
        if self.produce_batch_bytes_max + 64 * 1024 > self.frame_bytes_max {
            bail!("produce_batch_bytes_max must be at least 64 KiB below frame_bytes_max");
        }
        if self.raft_heartbeat.is_zero() || self.raft_election_timeout < self.raft_heartbeat * 3 {
            bail!("raft_election_timeout_ms must be at least 3 x raft_heartbeat_ms (and both > 0)");
        }
        if self.connections_max == 0 || self.requests_in_flight_per_connection_max == 0 {
            bail!("connections_max and requests_in_flight_per_connection_max must be > 0");
        }
        let fits_u32_ms = |d: Duration| !d.is_zero() && d.as_millis() <= u128::from(u32::MAX);
        if !fits_u32_ms(self.txn_check_timeout) {
            bail!("txn_check_timeout_ms must be 1..={}", u32::MAX);
        }
        if self.txn_check_backoff.is_empty() || self.txn_check_backoff.iter().any(|d| d.is_zero()) {
            bail!("txn_check_backoff_ms must list at least one delay, each > 0");
        }
        if self.txn_check_max == 0 {
            bail!("txn_check_max must be at least 1");
        }
        if !(1..=TXN_CHECKS_IN_FLIGHT_LIMIT).contains(&self.txn_checks_in_flight_per_producer) {
            bail!("txn_checks_in_flight_per_producer must be 1..={TXN_CHECKS_IN_FLIGHT_LIMIT}");
        }
        if self.txn_retention.is_zero() {
            bail!("txn_retention_ms must be > 0");
        }
        if self.delay_max.is_zero() || self.delay_max > DELAY_MAX_LIMIT {
            bail!("delay_max_ms must be 1..={}", DELAY_MAX_LIMIT.as_millis());
        }
        if !DEDUP_WINDOW_RANGE.contains(&self.dedup_window) {
            bail!(
                "dedup_window_ms must be {}..={}",
                DEDUP_WINDOW_RANGE.start().as_millis(),
                DEDUP_WINDOW_RANGE.end().as_millis()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_reject() {
        let p = parse_peers("1=127.0.0.1:7401, 2=h:7402").unwrap();
        assert_eq!(p.get(&2).map(String::as_str), Some("h:7402"));
        assert!(parse_peers("1=nohost").is_err());
        assert!(parse_peers("x=h:1").is_err());
        assert!(parse_peers("1=h:1,1=h:2").is_err());
    }

    #[test]
    fn flags_override_file_and_listen_follows_peers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(
            &path,
            "node_id = 2\ndata_dir = \"/x\"\n[peers]\n1 = \"h:1\"\n2 = \"h:2\"\n",
        )
        .unwrap();
        let args = Args { config: Some(path.clone()), ..Args::default() };
        let c = Config::from_args(args).unwrap();
        assert_eq!(c.node_id, 2);
        assert_eq!(c.listen, "h:2");
        assert_eq!(c.data_dir, PathBuf::from("/x"));
        let args = Args { config: Some(path), data_dir: Some("/y".into()), ..Args::default() };
        assert_eq!(Config::from_args(args).unwrap().data_dir, PathBuf::from("/y"));
    }

    #[test]
    fn the_documented_example_config_is_valid() {
        // ops/deploy/ferry.example.toml documents every key; it must parse and validate as is.
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../ops/deploy/ferry.example.toml");
        let c = Config::from_args(Args { config: Some(path), ..Args::default() }).unwrap();
        let d = Config::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.frame_bytes_max, d.frame_bytes_max);
        assert_eq!(c.raft_election_timeout, d.raft_election_timeout);
        assert_eq!(c.fetch_wait_max, d.fetch_wait_max);
        assert_eq!(c.txn_check_timeout, d.txn_check_timeout);
        assert_eq!(c.txn_check_backoff, d.txn_check_backoff);
        assert_eq!(c.txn_check_max, d.txn_check_max);
        assert_eq!(c.txn_check_exhausted, d.txn_check_exhausted);
        assert_eq!(c.txn_retention, d.txn_retention);
        assert_eq!(c.delay_max, d.delay_max);
        assert_eq!(c.dedup_window, d.dedup_window);
    }

    #[test]
    fn dedup_window_parses_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::from_args(Args { config: Some(path.clone()), ..Args::default() })
        };
        assert_eq!(load("dedup_window_ms = 60000\n").unwrap().dedup_window.as_secs(), 60);
        assert!(load("dedup_window_ms = 999\n").is_err());
        assert!(load("dedup_window_ms = 604800001\n").is_err());
    }

    #[test]
    fn delay_max_parses_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::from_args(Args { config: Some(path.clone()), ..Args::default() })
        };
        assert_eq!(Config::default().delay_max, Duration::from_millis(3_456_000_000));
        assert_eq!(load("delay_max_ms = 60000\n").unwrap().delay_max, Duration::from_secs(60));
        assert!(load("delay_max_ms = 0\n").is_err());
        assert!(load("delay_max_ms = 315360000001\n").is_err());
    }

    #[test]
    fn transaction_settings_parse_and_reject() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            Config::from_args(Args { config: Some(path.clone()), ..Args::default() })
        };
        let c = load(
            "txn_check_timeout_ms = 500\ntxn_check_backoff_ms = [100, 200]\ntxn_check_max = 3\n\
             txn_check_exhausted = \"rollback\"\ntxn_checks_in_flight_per_producer = 50\n",
        )
        .unwrap();
        assert_eq!(c.txn_check_timeout, Duration::from_millis(500));
        assert_eq!(
            c.txn_check_backoff,
            vec![Duration::from_millis(100), Duration::from_millis(200)]
        );
        assert_eq!(c.txn_check_max, 3);
        assert_eq!(c.txn_check_exhausted, CheckExhausted::Rollback);
        assert_eq!(c.txn_checks_in_flight_per_producer, 50);
        assert!(load("txn_checks_in_flight_per_producer = 0\n").is_err());
        assert!(load("txn_checks_in_flight_per_producer = 65537\n").is_err());
        assert!(load("txn_check_exhausted = \"drop\"\n").is_err());
        assert!(load("txn_check_backoff_ms = []\n").is_err());
        assert!(load("txn_check_max = 0\n").is_err());
        assert!(load("txn_check_timeout_ms = 0\n").is_err());
    }

    #[test]
    fn invalid_settings_are_refused() {
        let args = Args { node_id: Some(0), ..Args::default() };
        assert!(Config::from_args(args).is_err());
        let args = Args { node_id: Some(3), peers: Some("1=h:1,2=h:2".into()), ..Args::default() };
        assert!(Config::from_args(args).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.toml");
        std::fs::write(&path, "unknown_key = 1\n").unwrap();
        assert!(Config::from_args(Args { config: Some(path), ..Args::default() }).is_err());
    }
}
