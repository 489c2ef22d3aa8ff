//! `ferry-bench chaos`: fault-injection runs with a history checker.
//!
//! A run starts a 3-node cluster as child processes in a temp dir ([`cluster`]), behind a
//! network it can cut ([`net`]: network namespaces with blackholed routes when root, a
//! fault-injecting TCP proxy otherwise). Workload clients ([`clients`]) record a history while
//! the scenario's faults ([`scenario`]) are injected on a schedule drawn from the seed. Then
//! everything is healed, drained (in-flight sends settle, check-backs resolve every silent
//! transaction, consumers catch up), every node's copy of the topic is read, and the
//! [`checker`] judges the history: nothing acknowledged lost, nothing rolled back visible, no
//! decision flipped, replicas identical, order kept.
//!
//! The seed fixes the schedule (which fault, when, for how long); what the cluster does under
//! it (who leads, which request times out) is not deterministic.

pub mod checker;
mod clients;
pub(crate) mod cluster;
pub mod history;
pub mod net;
pub mod proxy;
mod scenario;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ferry_protocol::messages::{CreateTopicRequest, ReadLocalRequest};
use ferry_protocol::txn::TransactionStatsRequest;
use ferry_protocol::{
    ClientKind, ClusterClient, ClusterOptions, ConnectOptions, Connection, ErrorCode, Offset,
    PartitionIndex, RecordBatch,
};
use tokio_util::sync::CancellationToken;

use self::checker::{CheckInput, Report};
use self::clients::{History, Intents, PARTITIONS, TOPIC};
use self::cluster::ChaosCluster;
use self::history::{Func, Op};
use self::net::{ChaosNet, NetMode};
pub use self::scenario::Scenario;

/// How long one scenario injects faults in `--short` mode.
pub const SHORT_DURATION: Duration = Duration::from_secs(12);

/// Fault-injection runs against a local 3-node cluster, judged by a history checker.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferry-bench chaos",
    about = "Fault-injection runs with a history checker: prove nothing acknowledged is lost",
    long_about = "Fault-injection runs with a history checker.\n\n\
        Starts a 3-node cluster of ferry-broker child processes in a temp dir, runs plain \
        producers, transactional producers (commit, roll back, or go silent for check-back) \
        and consumer-group members against it while the scenario injects faults, then heals, \
        drains, reads every node's copy of the topic and checks the history: acknowledged but \
        lost, unexpected, aborted reads, flipped decisions, duplicates, replicas that differ, \
        order violations, unresolved half messages. Exit status 1 on any violation.\n\n\
        The seed fixes the fault schedule; every run prints it. Network faults use network \
        namespaces when run as root, a fault-injecting TCP proxy otherwise.\n\n\
        Examples:\n  \
        ferry-bench chaos --scenario leader-kill --seed 7 --duration 60s\n  \
        ferry-bench chaos --scenario all --short"
)]
pub struct ChaosArgs {
    /// Scenario to run, or `all` (one after the other).
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Seed of the fault schedule (default: from the clock; printed either way).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How long faults are injected per scenario, e.g. 30s, 5m.
    #[arg(long, value_parser = crate::cli::parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Short mode for the test suite: 12 s of faults per scenario.
    #[arg(long)]
    pub short: bool,
    /// The ferry-broker binary (default: next to this program).
    #[arg(long)]
    pub broker: Option<PathBuf>,
    /// Network fault mode: auto (namespaces when root), namespaces, proxy.
    #[arg(long, default_value = "auto")]
    pub net: String,
    /// Directory for the history (JSONL) and node logs of each run (default: a temp dir,
    /// kept only when a run finds a violation).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the scenarios asked for; true when every run was clean.
pub async fn run(args: &ChaosArgs) -> anyhow::Result<bool> {
    let scenarios = if args.scenario == "all" {
        Scenario::ALL.to_vec()
    } else {
        vec![Scenario::parse(&args.scenario)?]
    };
    let broker = match &args.broker {
        Some(b) => b.clone(),
        None => {
            std::env::current_exe().context("locating this program")?.with_file_name("ferry-broker")
        }
    };
    if !broker.is_file() {
        bail!("no ferry-broker binary at {} (build it, or pass --broker)", broker.display());
    }
    let mode = match args.net.as_str() {
        "auto" => NetMode::detect(),
        "namespaces" => NetMode::Namespaces,
        "proxy" => NetMode::Proxy,
        other => bail!("--net {other:?}: use auto, namespaces or proxy"),
    };
    let duration = if args.short { SHORT_DURATION } else { args.duration };
    let base_seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let mut clean = true;
    for (i, scenario) in scenarios.iter().enumerate() {
        let seed = base_seed.wrapping_add(i as u64);
        eprintln!(
            "chaos: scenario {} seed {seed} duration {duration:?} net {mode:?}",
            scenario.name()
        );
        let started = Instant::now();
        let (report, dir) = run_one(*scenario, seed, duration, mode, &broker, args.out.as_deref())
            .await
            .with_context(|| format!("scenario {} (seed {seed})", scenario.name()))?;
        let violations = report.violations();
        if args.json {
            println!(
                "{}",
                serde_json::json!({
                    "scenario": scenario.name(), "seed": seed, "report": report,
                    "violations": violations, "dir": dir,
                })
            );
        } else {
            println!(
                "{:<17} seed {seed:<12} {:>5.1}s  acked {:>6}  lost {}  unexpected {}  aborted {}  flipped {}  duplicates {}  unresolved {}  {}",
                scenario.name(),
                started.elapsed().as_secs_f64(),
                report.acknowledged,
                report.lost.count,
                report.unexpected.count,
                report.aborted_reads.count,
                report.flipped.count,
                report.duplicates.count,
                report.unresolved,
                if violations.is_empty() { "ok".to_string() } else { format!("VIOLATIONS (history in {})", dir.display()) },
            );
            for v in &violations {
                println!("  - {v}");
            }
        }
        clean &= violations.is_empty();
    }
    Ok(clean)
}

/// One scenario run; returns the report and the directory holding its history.
async fn run_one(
    scenario: Scenario,
    seed: u64,
    duration: Duration,
    mode: NetMode,
    broker: &std::path::Path,
    out: Option<&std::path::Path>,
) -> anyhow::Result<(Report, PathBuf)> {
    let tmp = tempfile::Builder::new().prefix("ferry-chaos-").tempdir().context("temp dir")?;
    let run_id = format!("{:x}", (std::process::id() as u64) << 8 ^ seed & 0xff);
    // The membership scenario adds and removes nodes: it has a spare.
    let spares: &[u64] = if scenario == Scenario::Membership { &[4] } else { &[] };
    let all: Vec<u64> = [1, 2, 3].iter().chain(spares).copied().collect();
    let net = ChaosNet::new(mode, &all, &run_id).await.context("setting up the network")?;
    let mut cluster = ChaosCluster::start(net, broker, tmp.path(), &[1, 2, 3], spares).await?;
    let bootstrap = cluster.bootstrap();
    let admin = admin_client(&bootstrap)?;
    match admin.call(&CreateTopicRequest { name: TOPIC.into(), partitions: PARTITIONS }).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::TopicExists) => {}
        Err(e) => return Err(e).context("creating the topic"),
    }

    let history = History::new();
    let clients = Clients::start(&bootstrap, &history, seed);
    let mut faults = scenario::Faults::new(scenario, seed, clients.control.clone());
    let result = faults.run(&mut cluster, duration).await;
    let heal = heal_and_drain(&mut cluster, &history, clients).await;
    let outcome = match (result, heal) {
        (Ok(()), Ok(unresolved)) => read_every_node(&cluster, &history).await.map(|()| unresolved),
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    let dir = match out {
        Some(d) => {
            let d = d.join(format!("{}-{seed}", scenario.name()));
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            d
        }
        None => tmp.path().to_path_buf(),
    };
    write_history(&dir.join("history.jsonl"), &history)?;
    let logs = cluster.logs();
    if out.is_some() {
        for log in logs {
            if let Some(name) = log.file_name() {
                let _ = std::fs::copy(&log, dir.join(name));
            }
        }
    }
    let members = cluster.ids();
    cluster.shutdown().await?;
    let unresolved = outcome?;
    let report = checker::check(
        &history.events(),
        &CheckInput { nodes: members, unresolved_at_end: unresolved, consumers_ran: true },
    );
    if report.acknowledged == 0 {
        bail!("no message was acknowledged during the run: nothing was tested");
    }
    if !report.is_clean() && out.is_none() {
        // Keep the evidence.
        let kept = tmp.keep();
        return Ok((report, kept));
    }
    Ok((report, dir))
}

fn admin_client(bootstrap: &str) -> anyhow::Result<ClusterClient> {
    let mut options =
        ClusterOptions::new(bootstrap, ConnectOptions::new("chaos-admin", ClientKind::Admin));
    options.retry.deadline = Duration::from_secs(60);
    ClusterClient::new(options).map_err(|e| anyhow::anyhow!("{e}"))
}

/// The running clients and the tokens that steer them.
struct Clients {
    stop_sending: CancellationToken,
    stop: CancellationToken,
    control: scenario::ClientControl,
    tasks: tokio::task::JoinSet<()>,
}

impl Clients {
    fn start(bootstrap: &str, history: &Arc<History>, seed: u64) -> Clients {
        let stop_sending = CancellationToken::new();
        let stop = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..2 {
            tasks.spawn(clients::plain_producer(
                format!("p{i}"),
                bootstrap.to_string(),
                history.clone(),
                stop_sending.clone(),
                200,
            ));
        }
        let intents: Intents = Arc::default();
        let control = scenario::ClientControl::new(
            bootstrap.to_string(),
            history.clone(),
            intents,
            seed,
            stop_sending.clone(),
            stop.clone(),
        );
        control.start_txn_client();
        control.start_consumer();
        control.start_consumer();
        Clients { stop_sending, stop, control, tasks }
    }
}

/// Stops the faults' effects and the load, then waits until nothing is in doubt: every node
/// back and caught up, every half message decided, every acknowledged message received by a
/// consumer. Returns the half messages still open at the end.
async fn heal_and_drain(
    cluster: &mut ChaosCluster,
    history: &History,
    clients: Clients,
) -> anyhow::Result<u64> {
    cluster.net().heal().await?;
    cluster.revive_all()?;
    clients.stop_sending.cancel();
    let mut tasks = clients.tasks;
    // Producers finish their in-flight sends (bounded by their retry deadline).
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    clients.control.make_sure_a_txn_client_runs();
    cluster.leader(Duration::from_secs(60)).await?;
    let admin = admin_client(&cluster.bootstrap())?;
    // Check-backs resolve silent and abandoned transactions.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut open = u64::MAX;
    while Instant::now() < deadline {
        let stats = admin.call(&TransactionStatsRequest).await;
        if let Ok(s) = stats {
            open = s.groups.iter().map(|g| g.pending + g.parked).sum();
            if open == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Consumers catch up with everything acknowledged.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let acked = history.acknowledged();
        let received = history.received();
        if acked.iter().all(|m| received.contains(m)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    clients.stop.cancel();
    clients.control.wait().await;
    cluster.wait_caught_up(Duration::from_secs(60)).await?;
    Ok(open)
}

/// Reads every partition of the topic from every node's own state (`ReadLocal`) into the
/// history as `Read` events.
async fn read_every_node(cluster: &ChaosCluster, history: &History) -> anyhow::Result<()> {
    for node in cluster.ids() {
        let addr = cluster.net().advertised_addr(node);
        let conn =
            Connection::connect(&addr, &ConnectOptions::new("chaos-reader", ClientKind::Admin))
                .await
                .with_context(|| format!("connecting to node {node}"))?;
        for p in 0..PARTITIONS {
            let mut next = 0u64;
            loop {
                let req = ReadLocalRequest {
                    topic: TOPIC.into(),
                    partition: PartitionIndex(p),
                    offset: Offset(next),
                    max_bytes: 1 << 20,
                };
                let resp = conn.call(&req).await.with_context(|| format!("reading node {node}"))?;
                for batch in &resp.batches {
                    let parsed = RecordBatch::parse(batch.bytes.clone())
                        .with_context(|| format!("node {node} partition {p}: corrupt batch"))?;
                    for (i, record) in parsed.records().enumerate() {
                        let offset = batch.base_offset.0 + i as u64;
                        let record = record.context("corrupt record")?;
                        if offset < next {
                            continue;
                        }
                        let msg = String::from_utf8_lossy(&record.value).to_string();
                        history.record("reader", Op::Ok, Func::Read, &msg, |e| {
                            e.node = Some(node);
                            e.partition = Some(p);
                            e.offset = Some(offset);
                        });
                        next = offset + 1;
                    }
                }
                if resp.batches.is_empty() || next >= resp.high_watermark.0 {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn write_history(path: &std::path::Path, history: &History) -> anyhow::Result<()> {
    use std::io::Write;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for e in history.events() {
        serde_json::to_writer(&mut w, &e)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}
