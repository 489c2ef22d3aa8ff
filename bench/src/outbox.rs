//! `ferry-bench outbox`: the outbox relay (`ferry_producer::outbox`) measured, and checked end
//! to end under faults.
//!
//! * Throughput (default): fills an outbox table with `--rows` rows, then runs `--relays`
//!   relays in this process against a running broker and times how long they take to publish
//!   every row: rows/s.
//! * `--check`: starts its own 3-node cluster and runs `--relays` relays as `ferryctl outbox
//!   relay` processes while an application writes business rows with outbox rows in one
//!   transaction each (some rolled back). One relay is SIGKILLed while it holds a claim and
//!   started again; the broker leader is SIGKILLed and restarted. Then the topic is read back:
//!   every committed row must be there exactly once, in order per key, no rolled-back row may
//!   appear, and nothing may be left pending.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use ferry_producer::outbox::{
    self, OutboxDb, OutboxMessage, OutboxStatus, Relay, RelayConfig, TableName,
};
use ferry_producer::ProducerConfig;
use ferry_protocol::messages::{CreateTopicRequest, FetchRequest};
use ferry_protocol::record::DEDUP_ID_HEADER;
use ferry_protocol::{
    ClientKind, ClusterClient, ClusterOptions, ConnectOptions, ErrorCode, Offset, PartitionIndex,
    RecordBatch,
};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::chaos::cluster::ChaosCluster;
use crate::chaos::net::{ChaosNet, NetMode};

/// Application writers in `--check` (each owns a disjoint set of keys).
const CHECK_WRITERS: u64 = 4;

/// Lease of the relays in `--check`: short, so rows of the killed relay come back quickly.
const CHECK_LEASE: &str = "5s";

/// How long `--check` waits for the relays to publish everything once writing is done.
const DRAIN_MAX: Duration = Duration::from_secs(180);

/// Flags of `ferry-bench outbox`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferry-bench outbox",
    about = "Measure the outbox relay (rows/s), or check it end to end under faults (--check)",
    long_about = "Measure the outbox relay, or check it end to end under faults.\n\n\
        Default: fill a fresh outbox table in --db with --rows rows (--keys distinct keys, \
        --size byte payloads), run --relays relays in this process against the broker at \
        --bootstrap, and report rows/s from the first claim to the last row marked published.\n\n\
        --check: start a local 3-node cluster (ferry-broker next to this program), run \
        --relays `ferryctl outbox relay` processes, and write --rows business rows, each with \
        its outbox row in one transaction (--rollback-ratio of them rolled back). One relay is \
        SIGKILLed while it holds a claim and started again, the broker leader is SIGKILLed and \
        restarted. Then every committed row must be in the topic exactly once, in order per \
        key, no rolled-back row may appear, and nothing may be left pending; exit 1 otherwise.\n\n\
        Databases: sqlite:PATH, postgres://USER:PASS@HOST:PORT/DB, mysql://... or mariadb://...\n\n\
        Examples:\n  \
        ferry-bench outbox --db postgres://ferry:ferry@127.0.0.1:5432/ferry --rows 100000\n  \
        ferry-bench outbox --check --db sqlite:/tmp/outbox-check.db"
)]
pub struct OutboxArgs {
    /// Database holding the outbox table (a fresh table is created and dropped afterwards).
    #[arg(long)]
    pub db: String,
    /// Run the end-to-end check (own cluster, faults) instead of measuring.
    #[arg(long)]
    pub check: bool,
    /// Rows written.
    #[arg(long, default_value_t = 10_000)]
    pub rows: u64,
    /// Relays side by side.
    #[arg(long, default_value_t = 3)]
    pub relays: usize,
    /// Distinct ordering keys (aggregate ids).
    #[arg(long, default_value_t = 100)]
    pub keys: u64,
    /// Share of application transactions rolled back (--check).
    #[arg(long, default_value_t = 0.1)]
    pub rollback_ratio: f64,
    /// Rows a relay claims at once.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Payload bytes per row (throughput).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Broker to publish to (throughput; --check starts its own cluster).
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub bootstrap: String,
    /// Topic the rows go to (created when missing).
    #[arg(long, default_value = "outbox-bench")]
    pub topic: String,
    /// Partitions of the topic when it is created.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// The ferry-broker binary (--check; default: next to this program).
    #[arg(long)]
    pub broker: Option<PathBuf>,
    /// The ferryctl binary (--check; default: next to this program).
    #[arg(long)]
    pub ferryctl: Option<PathBuf>,
    /// Seed of the writers' choices (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Runs what the flags ask for; true when the run was clean.
pub async fn run(args: &OutboxArgs) -> anyhow::Result<bool> {
    if args.rows == 0 || args.relays == 0 || args.keys == 0 {
        bail!("--rows, --relays and --keys must be at least 1");
    }
    if !(0.0..1.0).contains(&args.rollback_ratio) {
        bail!("--rollback-ratio must be in [0, 1)");
    }
    if args.check {
        check(args).await
    } else {
        throughput(args).await.map(|()| true)
    }
}

fn admin_client(bootstrap: &str) -> anyhow::Result<ClusterClient> {
    let mut options =
        ClusterOptions::new(bootstrap, ConnectOptions::new("outbox-bench", ClientKind::Admin));
    options.retry.deadline = Duration::from_secs(60);
    ClusterClient::new(options).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn create_topic(admin: &ClusterClient, topic: &str, partitions: u32) -> anyhow::Result<()> {
    match admin.call(&CreateTopicRequest { name: topic.into(), partitions }).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(ErrorCode::TopicExists) => Ok(()),
        Err(e) => Err(e).context("creating the topic"),
    }
}

/// A table name of our own for this run.
fn run_table(prefix: &str) -> anyhow::Result<TableName> {
    let name = format!("{prefix}_{}_{:04x}", std::process::id(), fastrand::u16(..));
    TableName::new(&name).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn drop_table(db: &OutboxDb, table: &str) {
    let sql = format!("DROP TABLE IF EXISTS {table}");
    let result = match db {
        OutboxDb::Sqlite(pool) => sqlx::query(&sql).execute(pool).await.map(|_| ()),
        OutboxDb::Postgres(pool) => sqlx::query(&sql).execute(pool).await.map(|_| ()),
        OutboxDb::MySql(pool) => sqlx::query(&sql).execute(pool).await.map(|_| ()),
    };
    if let Err(e) = result {
        eprintln!("outbox: could not drop table {table}: {e}");
    }
}

async fn status(db: &OutboxDb, table: &TableName) -> anyhow::Result<OutboxStatus> {
    outbox::status(db, table).await.map_err(|e| anyhow::anyhow!("outbox status: {e}"))
}

/// Inserts `rows` outbox rows in transactions of up to 1,000 (throughput mode's fill).
async fn fill(args: &OutboxArgs, db: &OutboxDb, table: &TableName) -> anyhow::Result<()> {
    const PER_TXN: u64 = 1000;
    let payload = vec![b'x'; args.size];
    let mut next = 0u64;
    while next < args.rows {
        let end = (next + PER_TXN).min(args.rows);
        let messages: Vec<OutboxMessage> = (next..end)
            .map(|i| {
                OutboxMessage::new(args.topic.clone(), payload.clone())
                    .with_key(format!("k{}", i % args.keys))
            })
            .collect();
        macro_rules! insert_all {
            ($pool:expr) => {{
                let mut tx = $pool.begin().await.context("begin")?;
                for m in &messages {
                    outbox::enqueue_to(&mut tx, table, m).await.context("enqueue")?;
                }
                tx.commit().await.context("commit")?;
            }};
        }
        match db {
            OutboxDb::Sqlite(pool) => insert_all!(pool),
            OutboxDb::Postgres(pool) => insert_all!(pool),
            OutboxDb::MySql(pool) => insert_all!(pool),
        }
        next = end;
    }
    Ok(())
}

async fn throughput(args: &OutboxArgs) -> anyhow::Result<()> {
    let db = OutboxDb::connect(&args.db).await.context("connecting to --db")?;
    let table = run_table("ferry_outbox_bench")?;
    outbox::migrate(&db, &table).await.context("creating the outbox table")?;
    let admin = admin_client(&args.bootstrap)?;
    create_topic(&admin, &args.topic, args.partitions).await?;
    let filled = Instant::now();
    let result = async {
        fill(args, &db, &table).await?;
        eprintln!(
            "outbox: {} rows written in {:.1}s; relaying with {} relay(s)",
            args.rows,
            filled.elapsed().as_secs_f64(),
            args.relays
        );
        let cancel = CancellationToken::new();
        let mut relays = Vec::new();
        for i in 0..args.relays {
            let relay_db = OutboxDb::connect(&args.db).await.context("connecting to --db")?;
            let mut config = RelayConfig::for_table(table.clone());
            config.relay_id = format!("bench-{}-{i}", std::process::id());
            config.batch_size = args.batch_size;
            let producer = ProducerConfig::new(args.bootstrap.clone());
            let relay = Relay::connect(relay_db, producer, config)
                .await
                .map_err(|e| anyhow::anyhow!("starting relay {i}: {e}"))?;
            relays.push(Arc::new(relay));
        }
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for relay in &relays {
            let relay = relay.clone();
            let cancel = cancel.clone();
            tasks.spawn(async move { relay.run(cancel).await });
        }
        let deadline = Instant::now() + Duration::from_secs(3600);
        loop {
            let published: u64 = relays.iter().map(|r| r.published_total()).sum();
            if published >= args.rows {
                break;
            }
            if Instant::now() > deadline {
                bail!("relays published {published} of {} rows within an hour", args.rows);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed();
        cancel.cancel();
        while let Some(done) = tasks.join_next().await {
            if let Ok(Err(e)) = done {
                eprintln!("outbox: a relay ended with: {e}");
            }
        }
        let left = status(&db, &table).await?;
        let rate = args.rows as f64 / elapsed.as_secs_f64();
        println!(
            "outbox relay: {} rows ({} keys, {} B payload, batch {}) by {} relay(s) in {:.2}s: \
             {:.0} rows/s; pending afterwards {}",
            args.rows,
            args.keys,
            args.size,
            args.batch_size,
            args.relays,
            elapsed.as_secs_f64(),
            rate,
            left.pending
        );
        for (i, relay) in relays.iter().enumerate() {
            println!("  relay {i}: {} rows", relay.published_total());
        }
        Ok(())
    }
    .await;
    drop_table(&db, table.as_str()).await;
    db.close().await;
    result
}

/// What the application committed or rolled back, by row number.
#[derive(Default)]
struct Written {
    /// Committed rows: row number → (key, sequence within the key).
    committed: HashMap<u64, (String, u64)>,
    /// Rolled-back row numbers.
    rolled_back: Vec<u64>,
}

/// One business row of the application: its number, its account (the outbox key) and its
/// sequence within the account.
struct BusinessRow<'a> {
    row: u64,
    key: &'a str,
    seq: u64,
}

/// One application transaction: a business row and its outbox row, committed or rolled back.
async fn write_one(
    db: &OutboxDb,
    business: &str,
    table: &TableName,
    message: &OutboxMessage,
    row: BusinessRow<'_>,
    commit: bool,
) -> anyhow::Result<()> {
    let row_i64 = i64::try_from(row.row)?;
    let seq_i64 = i64::try_from(row.seq)?;
    let key = row.key;
    macro_rules! transaction {
        ($pool:expr, $sql:expr) => {{
            let mut tx = $pool.begin().await.context("begin")?;
            sqlx::query(&$sql)
                .bind(row_i64)
                .bind(key)
                .bind(seq_i64)
                .execute(&mut *tx)
                .await
                .context("inserting the business row")?;
            outbox::enqueue_to(&mut tx, table, message).await.context("enqueue")?;
            if commit {
                tx.commit().await.context("commit")?;
            } else {
                tx.rollback().await.context("rollback")?;
            }
        }};
    }
    match db {
        OutboxDb::Sqlite(pool) => transaction!(
            pool,
            format!("INSERT INTO {business} (id, account, seq) VALUES (?, ?, ?)")
        ),
        OutboxDb::Postgres(pool) => transaction!(
            pool,
            format!("INSERT INTO {business} (id, account, seq) VALUES ($1, $2, $3)")
        ),
        OutboxDb::MySql(pool) => transaction!(
            pool,
            format!("INSERT INTO {business} (id, account, seq) VALUES (?, ?, ?)")
        ),
    }
    Ok(())
}

/// Writer `w` of `CHECK_WRITERS`: rows `w, w + W, ...`, keys `k` with `k % W == w`.
#[allow(clippy::too_many_arguments)]
async fn writer(
    w: u64,
    args: OutboxArgs,
    seed: u64,
    db: OutboxDb,
    business: String,
    table: TableName,
    written: Arc<Mutex<Written>>,
    progress: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut rng = fastrand::Rng::with_seed(seed ^ w.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let own_keys: Vec<u64> = (0..args.keys).filter(|k| k % CHECK_WRITERS == w).collect();
    if own_keys.is_empty() {
        return Ok(());
    }
    let mut seqs: HashMap<u64, u64> = HashMap::new();
    let mut row = w;
    while row < args.rows {
        let k = own_keys[rng.usize(..own_keys.len())];
        let seq = seqs.entry(k).or_insert(0);
        *seq += 1;
        let key = format!("acct-{k}");
        let commit = rng.f64() >= args.rollback_ratio;
        let payload = serde_json::json!({ "row": row, "key": key, "seq": *seq }).to_string();
        let message = OutboxMessage::new(args.topic.clone(), payload.into_bytes())
            .with_key(key.clone())
            .with_header("origin", "ferry-bench");
        let business_row = BusinessRow { row, key: &key, seq: *seq };
        write_one(&db, &business, &table, &message, business_row, commit).await?;
        {
            let mut w = written.lock().map_err(|_| anyhow::anyhow!("writer state poisoned"))?;
            if commit {
                w.committed.insert(row, (key, *seq));
            } else {
                w.rolled_back.push(row);
            }
        }
        progress.fetch_add(1, Ordering::Relaxed);
        row += CHECK_WRITERS;
    }
    Ok(())
}

/// `ferryctl outbox relay` processes.
struct RelayProcs {
    ferryctl: PathBuf,
    bootstrap: String,
    db: String,
    table: String,
    batch_size: usize,
    dir: PathBuf,
    procs: BTreeMap<String, Child>,
}

impl RelayProcs {
    fn spawn(&mut self, relay_id: &str) -> anyhow::Result<()> {
        let log =
            std::fs::File::create(self.dir.join(format!("{relay_id}.log"))).context("relay log")?;
        let child = tokio::process::Command::new(&self.ferryctl)
            .arg("--bootstrap")
            .arg(&self.bootstrap)
            .args(["outbox", "relay", "--db", &self.db, "--table", &self.table])
            .args(["--relay-id", relay_id, "--lease", CHECK_LEASE])
            .args(["--batch-size", &self.batch_size.to_string()])
            .env("FERRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("relay log")?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.ferryctl.display()))?;
        self.procs.insert(relay_id.to_string(), child);
        Ok(())
    }

    async fn kill(&mut self, relay_id: &str) {
        if let Some(mut child) = self.procs.remove(relay_id) {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    /// Fails when a relay process exited on its own.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for (id, child) in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("relay {id} exited with {status}; see {}/{id}.log", self.dir.display());
            }
        }
        Ok(())
    }

    async fn stop_all(&mut self) {
        let ids: Vec<String> = self.procs.keys().cloned().collect();
        for id in ids {
            self.kill(&id).await;
        }
    }
}

fn binary_next_to_me(given: &Option<PathBuf>, name: &str) -> anyhow::Result<PathBuf> {
    let path = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe().context("locating this program")?.with_file_name(name),
    };
    if !path.is_file() {
        bail!("no {name} binary at {} (build it, or pass --{name})", path.display());
    }
    Ok(path)
}

async fn check(args: &OutboxArgs) -> anyhow::Result<bool> {
    let broker = binary_next_to_me(&args.broker, "ferry-broker")?;
    let ferryctl = binary_next_to_me(&args.ferryctl, "ferryctl")?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let dialect = args.db.split(':').next().unwrap_or_default().to_string();
    eprintln!("outbox check: {dialect} seed {seed} rows {} relays {}", args.rows, args.relays);
    let tmp = tempfile::Builder::new().prefix("ferry-outbox-").tempdir().context("temp dir")?;
    let run_id = format!("o{:x}", (std::process::id() as u64) << 8 ^ seed & 0xff);
    let net = ChaosNet::new(NetMode::detect(), &[1, 2, 3], &run_id).await.context("network")?;
    let mut cluster = ChaosCluster::start(net, &broker, tmp.path(), &[1, 2, 3], &[]).await?;
    let db = OutboxDb::connect(&args.db).await.context("connecting to --db")?;
    let table = run_table("ferry_outbox_check")?;
    let business = format!("{}_orders", table.as_str());
    let outcome =
        check_on(args, seed, &mut cluster, &db, &table, &business, &ferryctl, tmp.path()).await;
    drop_table(&db, table.as_str()).await;
    drop_table(&db, &business).await;
    db.close().await;
    let shutdown = cluster.shutdown().await;
    let clean = match outcome {
        Ok(clean) => clean,
        Err(e) => {
            let kept = tmp.keep();
            bail!("{e:#} (logs in {})", kept.display());
        }
    };
    shutdown?;
    if !clean {
        let kept = tmp.keep();
        println!("  logs kept in {}", kept.display());
    }
    Ok(clean)
}

#[allow(clippy::too_many_arguments)]
async fn check_on(
    args: &OutboxArgs,
    seed: u64,
    cluster: &mut ChaosCluster,
    db: &OutboxDb,
    table: &TableName,
    business: &str,
    ferryctl: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    let bootstrap = cluster.bootstrap();
    let admin = admin_client(&bootstrap)?;
    create_topic(&admin, &args.topic, args.partitions).await?;
    outbox::migrate(db, table).await.context("creating the outbox table")?;
    let create_business = format!(
        "CREATE TABLE {business} (id BIGINT PRIMARY KEY, account VARCHAR(64) NOT NULL, \
         seq BIGINT NOT NULL)"
    );
    match db {
        OutboxDb::Sqlite(pool) => sqlx::query(&create_business).execute(pool).await.map(|_| ()),
        OutboxDb::Postgres(pool) => sqlx::query(&create_business).execute(pool).await.map(|_| ()),
        OutboxDb::MySql(pool) => sqlx::query(&create_business).execute(pool).await.map(|_| ()),
    }
    .context("creating the business table")?;

    let mut relays = RelayProcs {
        ferryctl: ferryctl.to_path_buf(),
        bootstrap: bootstrap.clone(),
        db: args.db.clone(),
        table: table.as_str().to_string(),
        batch_size: args.batch_size,
        dir: dir.to_path_buf(),
        procs: BTreeMap::new(),
    };
    for i in 1..=args.relays {
        relays.spawn(&format!("relay-{i}"))?;
    }

    let written = Arc::new(Mutex::new(Written::default()));
    let progress = Arc::new(AtomicU64::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..CHECK_WRITERS {
        writers.spawn(writer(
            w,
            args.clone(),
            seed,
            db.clone(),
            business.to_string(),
            table.clone(),
            written.clone(),
            progress.clone(),
        ));
    }

    // Faults, at a quarter and at half of the rows written.
    let quarter = args.rows / 4;
    while progress.load(Ordering::Relaxed) < quarter {
        relays.check_alive()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Kill relay-1 while it holds a claim (mid-batch), then start it again under a new id
    // (a restarted process is a new relay; its old leases run out and others take them).
    let victim = "relay-1";
    let holds_claim = async {
        loop {
            if let Ok(s) = status(db, table).await {
                if s.relays.iter().any(|r| r.relay_id == victim && r.leased > 0) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let mid_batch = tokio::time::timeout(Duration::from_secs(30), holds_claim).await.is_ok();
    relays.kill(victim).await;
    let leased_at_kill = status(db, table)
        .await?
        .relays
        .iter()
        .find(|r| r.relay_id == victim)
        .map_or(0, |r| r.leased);
    eprintln!(
        "outbox check: SIGKILLed {victim} at {:.1}s ({}; {leased_at_kill} rows leased to it)",
        started.elapsed().as_secs_f64(),
        if mid_batch { "while it held a claim" } else { "it held no claim within 30 s" }
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    relays.spawn("relay-1b")?;

    let half = args.rows / 2;
    while progress.load(Ordering::Relaxed) < half {
        relays.check_alive()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leader = cluster.leader(Duration::from_secs(30)).await?;
    cluster.kill(leader).await?;
    eprintln!(
        "outbox check: SIGKILLed broker leader node {leader} at {:.1}s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(leader)?;

    while let Some(done) = writers.join_next().await {
        done.context("writer panicked")??;
    }
    eprintln!(
        "outbox check: application done at {:.1}s; draining",
        started.elapsed().as_secs_f64()
    );
    let drain_deadline = Instant::now() + DRAIN_MAX;
    let left = loop {
        relays.check_alive()?;
        let s = status(db, table).await?;
        if s.pending == 0 || Instant::now() > drain_deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    relays.stop_all().await;
    cluster.wait_caught_up(Duration::from_secs(60)).await?;

    let read = read_topic(&admin, &args.topic, args.partitions).await?;
    let written = std::mem::take(&mut *written.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let report = judge(&written, &read, &left);
    println!(
        "outbox check {dialect:<8} seed {seed:<11} {:>5.1}s  committed {}  rolled back {}  \
         in topic {}  missing {}  duplicates {}  rolled back visible {}  out of order {}  \
         pending {}  {}",
        started.elapsed().as_secs_f64(),
        written.committed.len(),
        written.rolled_back.len(),
        read.len(),
        report.missing,
        report.duplicates,
        report.rolled_back_visible,
        report.out_of_order,
        left.pending,
        if report.problems.is_empty() { "ok" } else { "VIOLATIONS" },
        dialect = args.db.split(':').next().unwrap_or_default(),
    );
    for p in report.problems.iter().take(20) {
        println!("  - {p}");
    }
    Ok(report.problems.is_empty())
}

/// One record read back: partition, offset, row, key, sequence.
struct ReadRow {
    partition: u32,
    offset: u64,
    row: u64,
    key: String,
    seq: u64,
    has_dedup_id: bool,
}

async fn read_topic(
    admin: &ClusterClient,
    topic: &str,
    partitions: u32,
) -> anyhow::Result<Vec<ReadRow>> {
    let mut out = Vec::new();
    for p in 0..partitions {
        let mut offset = 0u64;
        loop {
            let resp = admin
                .call(&FetchRequest {
                    topic: topic.into(),
                    partition: PartitionIndex(p),
                    offset: Offset(offset),
                    max_bytes: 1 << 20,
                    max_wait_ms: 0,
                })
                .await
                .context("reading the topic back")?;
            for b in &resp.batches {
                let batch = RecordBatch::parse(b.bytes.clone()).context("batch")?;
                for (o, record) in (b.base_offset.0..).zip(batch.records()) {
                    let record = record.context("record")?;
                    if o < offset {
                        continue;
                    }
                    let v: serde_json::Value =
                        serde_json::from_slice(&record.value).context("payload")?;
                    out.push(ReadRow {
                        partition: p,
                        offset: o,
                        row: v["row"].as_u64().context("row")?,
                        key: v["key"].as_str().context("key")?.to_string(),
                        seq: v["seq"].as_u64().context("seq")?,
                        has_dedup_id: record.headers.iter().any(|(n, _)| n == DEDUP_ID_HEADER),
                    });
                    offset = o + 1;
                }
            }
            if offset >= resp.high_watermark.0 || resp.batches.is_empty() {
                break;
            }
        }
    }
    Ok(out)
}

#[derive(Default)]
struct Judgement {
    missing: usize,
    duplicates: usize,
    rolled_back_visible: usize,
    out_of_order: usize,
    problems: Vec<String>,
}

fn judge(written: &Written, read: &[ReadRow], left: &OutboxStatus) -> Judgement {
    let mut j = Judgement::default();
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for r in read {
        *seen.entry(r.row).or_default() += 1;
        if !r.has_dedup_id {
            j.problems.push(format!("row {} arrived without a {DEDUP_ID_HEADER} header", r.row));
        }
        match written.committed.get(&r.row) {
            Some((key, seq)) if *key == r.key && *seq == r.seq => {}
            Some(_) => j.problems.push(format!("row {} arrived with other contents", r.row)),
            None => {}
        }
    }
    for row in written.committed.keys() {
        match seen.get(row).copied().unwrap_or(0) {
            0 => {
                j.missing += 1;
                if j.missing <= 5 {
                    j.problems.push(format!("committed row {row} never arrived"));
                }
            }
            1 => {}
            n => {
                j.duplicates += n - 1;
                j.problems.push(format!("row {row} arrived {n} times"));
            }
        }
    }
    for row in &written.rolled_back {
        if seen.contains_key(row) {
            j.rolled_back_visible += 1;
            j.problems.push(format!("rolled-back row {row} is in the topic"));
        }
    }
    // Order per key: along (partition, offset), each key's sequence only rises.
    let mut by_position: Vec<&ReadRow> = read.iter().collect();
    by_position.sort_by_key(|r| (r.partition, r.offset));
    let mut last: HashMap<&str, (u32, u64)> = HashMap::new();
    for r in by_position {
        if let Some((partition, seq)) = last.get(r.key.as_str()) {
            if *partition != r.partition {
                j.problems.push(format!(
                    "key {} is in partitions {partition} and {}",
                    r.key, r.partition
                ));
            } else if *seq >= r.seq {
                j.out_of_order += 1;
                j.problems.push(format!(
                    "key {}: sequence {} at offset {} after sequence {seq}",
                    r.key, r.seq, r.offset
                ));
            }
        }
        last.insert(r.key.as_str(), (r.partition, r.seq));
    }
    if left.pending > 0 {
        j.problems.push(format!(
            "{} rows still pending after {}s of draining",
            left.pending,
            DRAIN_MAX.as_secs()
        ));
    }
    j
}
