//! `ferryctl outbox migrate|relay|status`: the transactional outbox from the command line —
//! create the table, run a relay that publishes its rows to the cluster, and look at it.
//!
//! The relay is `ferry_producer::outbox::Relay` on a `Producer` connected to `--bootstrap`; this
//! module adds what a long-running process needs: signals, logs, and a `/metrics` endpoint
//! ([`serve`]). How the status is rendered lives in [`view`].

mod serve;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use ferry_producer::outbox::{
    self, Dialect, OutboxDb, Outgoing, PublishError, PublishErrorKind, Publisher, Relay,
    RelayConfig, TableName, BATCH_SIZE_MAX, DEFAULT_TABLE,
};
use ferry_producer::{Producer, ProducerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::view::{render_status, StatusJson};
use crate::cmd::group::JsonFlag;
use crate::cmd::Context;
use crate::duration::parse_positive_duration;
use crate::output::{print_json, print_text, Format};

/// How often the relay logs its progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// The producer's client id, as the brokers log it.
const RELAY_CLIENT_ID: &str = "ferryctl-outbox-relay";

// ---------------------------------------------------------------------------------------------
// Command line

pub const OUTBOX_LONG_ABOUT: &str = "The transactional outbox (local message table).

An application inserts its message as a row of the outbox table in the same database \
transaction as its business rows; a relay publishes every committed row to the cluster exactly \
once and marks it published. Rows with the same key are published in the order they were \
inserted (by id), however many relays run. SQLite, PostgreSQL and MySQL/MariaDB are supported.

The database is named by --db (or FERRY_OUTBOX_DB, which keeps a password out of `ps`): \
sqlite://PATH, postgres://USER:PASSWORD@HOST:PORT/DB, mysql://... or mariadb://... \
The table layout is printed by `ferryctl outbox migrate --print`.";

const RELAY_LONG_ABOUT: &str = "Publish the outbox table's rows to the cluster until SIGINT or \
SIGTERM.

Claims up to --batch-size pending rows at a time under a lease (other relays skip them), \
publishes each as a message to its topic (key = the row's key, headers = the row's headers \
plus `ferry-dedup-id: SOURCE:ROW_ID`), and marks them published once the cluster acknowledged \
them. The broker drops a record whose dedup id it already stored, so a relay killed between \
publishing and marking never duplicates a message. Run as many relays as you like, each with \
its own --relay-id: rows of one key are still published in id order.

A row the broker refuses (unknown topic, too large) or with malformed headers is retried \
with a growing backoff (1 s doubling to 5 min) and shows in `ferryctl outbox status` with its \
last error; it holds back the later rows of its key meanwhile. While the cluster is \
unreachable the relay backs off (100 ms doubling to 5 s) and tries again. Published rows are \
deleted after --retention. Logs go to stderr (FERRY_LOG filters them, e.g. FERRY_LOG=debug; \
--format json for JSON lines).";

/// `ferryctl outbox ...`
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Create the outbox table and its indexes (idempotent), or print the SQL.
    ///
    /// Safe to run again and from several places at once; an existing table is left as it is
    /// (and checked for the columns the relay needs). On PostgreSQL it also installs the insert
    /// trigger that wakes relays (NOTIFY).
    #[command(after_help = "Examples:
  ferryctl outbox migrate --db sqlite://app.db
  FERRY_OUTBOX_DB=postgres://app:secret@127.0.0.1/app ferryctl outbox migrate
  ferryctl outbox migrate --db mysql://app:secret@127.0.0.1/app --table billing_outbox
  ferryctl outbox migrate --db postgres://localhost/app --print   # SQL only, connects nowhere")]
    Migrate(MigrateArgs),
    /// Run a relay: publish pending rows to the cluster until SIGINT/SIGTERM.
    #[command(long_about = RELAY_LONG_ABOUT, after_help = "Examples:
  ferryctl --bootstrap 10.0.0.1:7400 outbox relay --db postgres://app:secret@127.0.0.1/app
  ferryctl outbox relay --db sqlite://app.db --metrics-addr 127.0.0.1:9900
  ferryctl outbox relay --db mysql://app:secret@db/app --relay-id relay-a --batch-size 500
  FERRY_LOG=debug ferryctl outbox relay --db sqlite://app.db")]
    Relay(RelayArgs),
    /// Show pending, leased, published and failed rows, and which relays hold leases.
    ///
    /// Counts: pending (not yet published), leased (a relay is publishing them), published
    /// (kept until the relay's --retention passes), failed (pending rows whose publish failed
    /// at least once), the age of the oldest pending row, live leases per relay id, and the
    /// first failed row with its last error. Reads the whole table: meant for people, not for a
    /// tight loop (scrape the relay's /metrics instead). With --json (or --format json): one
    /// object.
    #[command(after_help = "Examples:
  ferryctl outbox status --db sqlite://app.db
  ferryctl outbox status --db postgres://localhost/app --json | jq .pending")]
    Status(StatusArgs),
}

/// The database and table every outbox command works on.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Database URL: sqlite://PATH (created if missing), postgres://USER:PASSWORD@HOST:PORT/DB,
    /// mysql://... or mariadb://...
    #[arg(long, env = "FERRY_OUTBOX_DB", hide_env_values = true, value_name = "URL", value_parser = parse_db_url)]
    pub db: String,

    /// The outbox table: a-z, 0-9 and _, up to 48 characters.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_TABLE, value_parser = parse_table)]
    pub table: TableName,
}

/// `ferryctl outbox migrate ...`
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// Print the SQL for the URL's database instead of running it (connects nowhere).
    #[arg(long)]
    pub print: bool,
}

/// `ferryctl outbox relay ...`
#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub db: DbArgs,

    /// This relay's name in the table's lease_owner column; unique among running relays
    /// (default: HOSTNAME-PID).
    #[arg(long, value_name = "ID")]
    pub relay_id: Option<String>,

    /// Rows claimed and published per round (1-10000).
    #[arg(long, value_name = "N", default_value_t = outbox::BATCH_SIZE_DEFAULT, value_parser = parse_batch_size)]
    pub batch_size: usize,

    /// How long claimed rows stay reserved for this relay without a renewal (renewed while
    /// publishing); a crashed relay's rows are taken over after this. At least 1s.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_lease)]
    pub lease: Duration,

    /// Wait between looks at an idle table (PostgreSQL relays are also woken by NOTIFY).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = parse_positive_duration)]
    pub poll_interval: Duration,

    /// Delete published rows older than this, e.g. 24h, 168h.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_positive_duration)]
    pub retention: Duration,

    /// SOURCE in the `ferry-dedup-id: SOURCE:ROW_ID` header (default: the table name). Give
    /// each outbox table feeding the same topics its own.
    #[arg(long, value_name = "SOURCE")]
    pub dedup_source: Option<String>,

    /// Rows of one key sent before the first is acknowledged. 1 keeps the key's order even
    /// when a publish fails; more is faster for busy keys but a failed row may then land after
    /// later rows of its key.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_batch_size)]
    pub in_flight_per_key: usize,

    /// Serve Prometheus metrics at http://ADDR/metrics (ferry_outbox_pending_rows,
    /// ferry_outbox_published_total, ...).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// `ferryctl outbox status ...`
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: DbArgs,

    #[command(flatten)]
    pub json: JsonFlag,
}

fn parse_db_url(text: &str) -> Result<String, String> {
    match Dialect::from_url(text) {
        Some(_) => Ok(text.to_string()),
        None => Err("expected sqlite://PATH, postgres://..., mysql://... or mariadb://...".into()),
    }
}

fn parse_table(text: &str) -> Result<TableName, String> {
    TableName::new(text).map_err(|e| match e {
        outbox::OutboxError::TableName { reason, .. } => reason.to_string(),
        other => other.to_string(),
    })
}

fn parse_batch_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=BATCH_SIZE_MAX).contains(&n) => Ok(n),
        _ => Err(format!("expected a number from 1 to {BATCH_SIZE_MAX}")),
    }
}

fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = parse_positive_duration(text)?;
    if lease < outbox::LEASE_MIN {
        return Err("a lease is at least 1s".into());
    }
    Ok(lease)
}

impl RelayArgs {
    /// The relay's settings; checked as `Relay::new` will check them.
    ///
    /// # Errors
    /// A setting out of range (e.g. --in-flight-per-key above --batch-size).
    pub fn relay_config(&self) -> anyhow::Result<RelayConfig> {
        let mut config = RelayConfig::for_table(self.db.table.clone());
        config.relay_id = self.relay_id.clone().unwrap_or_else(outbox::host_pid_relay_id);
        config.batch_size = self.batch_size;
        config.lease = self.lease;
        config.poll_interval = self.poll_interval;
        config.retention = self.retention;
        config.dedup_source = self.dedup_source.clone();
        config.in_flight_per_key = self.in_flight_per_key;
        config.validate()?;
        Ok(config)
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

async fn connect_db(args: &DbArgs) -> anyhow::Result<OutboxDb> {
    OutboxDb::connect(&args.db).await.context("cannot open the outbox database")
}

/// `ferryctl outbox migrate`.
///
/// # Errors
/// The database cannot be reached or refuses the DDL.
pub async fn migrate(ctx: &Context, args: &MigrateArgs) -> anyhow::Result<()> {
    let table = &args.db.table;
    if args.print {
        let Some(dialect) = Dialect::from_url(&args.db.db) else {
            bail!("cannot tell the database from the URL");
        };
        let mut sql = String::new();
        for statement in outbox::schema_statements(dialect, table) {
            sql.push_str(&statement);
            sql.push_str(";\n");
        }
        return print_text(&sql);
    }
    let db = connect_db(&args.db).await?;
    outbox::migrate(&db, table).await.with_context(|| format!("cannot create table {table}"))?;
    let dialect = db.dialect().name();
    db.close().await;
    match ctx.format {
        Format::Json => {
            print_json(&serde_json::json!({ "table": table.as_str(), "database": dialect }))
        }
        Format::Text => print_text(&format!("outbox table {table} is ready ({dialect})\n")),
    }
}

/// `ferryctl outbox status`.
///
/// # Errors
/// The database cannot be reached, or the table does not exist.
pub async fn status(ctx: &Context, args: &StatusArgs) -> anyhow::Result<()> {
    let db = connect_db(&args.db).await?;
    let table = &args.db.table;
    let status = outbox::status(&db, table).await.with_context(|| {
        format!("cannot read outbox table {table} (run `ferryctl outbox migrate`?)")
    })?;
    let dialect = db.dialect();
    db.close().await;
    match args.json.format(ctx) {
        Format::Json => print_json(&StatusJson::new(table, dialect, &status)),
        Format::Text => print_text(&render_status(table, dialect, &status)),
    }
}

/// `ferryctl outbox relay`: runs until SIGINT or SIGTERM.
///
/// # Errors
/// A bad setting, the database or the metrics address unusable at start, or the table missing.
pub async fn relay(ctx: &Context, args: &RelayArgs) -> anyhow::Result<()> {
    init_logs(ctx.format);
    let config = args.relay_config()?;
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(cancel_on_signal(cancel.clone()));
    let outcome = run_relay(ctx, args, config, &cancel, &tasks).await;
    cancel.cancel();
    tasks.close();
    tasks.wait().await;
    outcome
}

async fn run_relay(
    ctx: &Context,
    args: &RelayArgs,
    mut config: RelayConfig,
    cancel: &CancellationToken,
    tasks: &TaskTracker,
) -> anyhow::Result<()> {
    // Metrics are served before anything is connected, so a stuck start can be scraped.
    let registry = prometheus::Registry::new();
    config.registry = Some(registry.clone());
    if let Some(addr) = args.metrics_addr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        let bound = listener.local_addr().unwrap_or(addr);
        tracing::info!(addr = %bound, "serving metrics at /metrics");
        tasks.spawn(serve::serve_metrics(listener, registry, cancel.clone()));
    }
    let publisher = LazyProducer::new(ctx)?;
    let db = connect_db(&args.db).await?;
    let table = &args.db.table;
    outbox::verify_columns(&db, table).await.with_context(|| {
        format!("outbox table {table} is missing or incomplete (run `ferryctl outbox migrate`)")
    })?;
    let relay = Arc::new(Relay::new(db.clone(), publisher, config)?);
    tasks.spawn(log_progress(relay.clone(), cancel.clone()));
    let outcome = relay.run(cancel.clone()).await;
    cancel.cancel();
    relay.publisher().close().await;
    db.close().await;
    outcome.with_context(|| format!("outbox relay on table {table} stopped"))
}

/// The relay's publisher: a ferry producer connected on first use, and again after a failed
/// connect, so a relay started while the cluster is down runs (and reports its metrics) and
/// starts publishing once the cluster answers. Until then every row is `Unavailable`, which
/// makes the relay release the rows and back off.
struct LazyProducer {
    config: ProducerConfig,
    producer: tokio::sync::OnceCell<Producer>,
}

impl LazyProducer {
    fn new(ctx: &Context) -> anyhow::Result<LazyProducer> {
        let mut config = ProducerConfig::new(&ctx.bootstrap);
        config.client_id = RELAY_CLIENT_ID.into();
        config.request_timeout = ctx.timeout;
        config.retry_deadline = ctx.timeout;
        config.validate().context("bad producer settings")?;
        Ok(LazyProducer { config, producer: tokio::sync::OnceCell::new() })
    }

    /// Flushes and stops the producer, if it was ever connected.
    async fn close(&self) {
        if let Some(producer) = self.producer.get() {
            if let Err(e) = producer.clone().close().await {
                tracing::warn!(error = %e, "producer did not close cleanly");
            }
        }
    }
}

impl Publisher for LazyProducer {
    async fn publish(&self, batch: Vec<Outgoing>) -> Vec<Result<(), PublishError>> {
        let connected = self
            .producer
            .get_or_try_init(|| async {
                let producer = Producer::connect(self.config.clone()).await?;
                tracing::info!(bootstrap = %self.config.bootstrap, "connected to the cluster");
                Ok::<_, ferry_producer::ProducerError>(producer)
            })
            .await;
        match connected {
            Ok(producer) => producer.publish(batch).await,
            Err(e) => {
                let error = PublishError::new(PublishErrorKind::Unavailable, e.to_string());
                batch.iter().map(|_| Err(error.clone())).collect()
            }
        }
    }
}

/// Logs rows published and the rate every few seconds while there is work.
async fn log_progress<P: outbox::Publisher>(relay: Arc<Relay<P>>, cancel: CancellationToken) {
    let mut ticks = tokio::time::interval(PROGRESS_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = relay.published_total();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let total = relay.published_total();
        let pending = relay.pending_rows();
        let delta = total.saturating_sub(last);
        last = total;
        if delta > 0 || pending > 0 {
            let rate_per_s = delta as f64 / PROGRESS_INTERVAL.as_secs_f64();
            tracing::info!(published = total, rate_per_s, pending, "outbox relay progress");
        }
    }
}

/// Cancels `cancel` on SIGINT or SIGTERM (or when it is cancelled otherwise).
async fn cancel_on_signal(cancel: CancellationToken) {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = cancel.cancelled() => return,
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("stopping: finishing the rows in flight");
    cancel.cancel();
}

/// Logs to stderr, filtered by `FERRY_LOG` (default `info`) as the broker does; JSON lines
/// with --format json.
fn init_logs(format: Format) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _already_set = match format {
        Format::Json => builder.json().try_init(),
        Format::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::error::ErrorKind;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ferryctl").chain(args.iter().copied()))
    }

    fn relay_args(args: &[&str]) -> RelayArgs {
        let mut all = vec!["outbox", "relay", "--db", "sqlite://x.db"];
        all.extend_from_slice(args);
        match parse(&all).unwrap().command {
            Command::Outbox(OutboxCommand::Relay(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relay_flags_have_defaults_and_make_a_valid_config() {
        let a = relay_args(&[]);
        assert_eq!(a.db.table.as_str(), "ferry_outbox");
        let c = a.relay_config().unwrap();
        assert_eq!(
            (c.batch_size, c.lease, c.in_flight_per_key),
            (1000, Duration::from_secs(30), 1)
        );
        assert_eq!(
            (c.poll_interval, c.retention),
            (Duration::from_millis(100), Duration::from_secs(86_400))
        );
        assert_eq!(c.relay_id, outbox::host_pid_relay_id());
        assert_eq!(c.effective_dedup_source(), "ferry_outbox");
        let a = relay_args(&[
            "--table",
            "billing_outbox",
            "--relay-id",
            "r1",
            "--batch-size",
            "50",
            "--lease",
            "10s",
            "--poll-interval",
            "1s",
            "--retention",
            "168h",
            "--dedup-source",
            "billing",
            "--in-flight-per-key",
            "4",
            "--metrics-addr",
            "127.0.0.1:9900",
        ]);
        let c = a.relay_config().unwrap();
        assert_eq!((c.relay_id.as_str(), c.batch_size, c.in_flight_per_key), ("r1", 50, 4));
        assert_eq!(c.effective_dedup_source(), "billing");
        assert_eq!(a.metrics_addr, Some("127.0.0.1:9900".parse().unwrap()));
        assert!(relay_args(&["--batch-size", "5", "--in-flight-per-key", "6"])
            .relay_config()
            .is_err());
    }

    #[test]
    fn bad_outbox_flags_are_usage_errors() {
        let kind = |args: &[&str]| parse(args).expect_err("should be refused").kind();
        let db = ["--db", "sqlite://x.db"];
        let with = |extra: &[&'static str]| {
            let mut v = vec!["outbox", "relay"];
            v.extend_from_slice(&db);
            v.extend_from_slice(extra);
            v
        };
        assert_eq!(kind(&with(&["--table", "Bad-Name"])), ErrorKind::ValueValidation);
        assert_eq!(kind(&with(&["--batch-size", "0"])), ErrorKind::ValueValidation);
        assert_eq!(kind(&with(&["--batch-size", "10001"])), ErrorKind::ValueValidation);
        assert_eq!(kind(&with(&["--lease", "500ms"])), ErrorKind::ValueValidation);
        assert_eq!(kind(&with(&["--metrics-addr", "nowhere"])), ErrorKind::ValueValidation);
        assert_eq!(kind(&["outbox", "status", "--db", "oracle://x"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["outbox", "frobnicate"]), ErrorKind::InvalidSubcommand);
        assert!(matches!(
            parse(&["outbox", "status", "--db", "postgres://h/db", "--json"]).unwrap().command,
            Command::Outbox(OutboxCommand::Status(StatusArgs {
                json: JsonFlag { json: true },
                ..
            }))
        ));
        assert!(matches!(
            parse(&["outbox", "migrate", "--db", "mariadb://h/db", "--print"]).unwrap().command,
            Command::Outbox(OutboxCommand::Migrate(MigrateArgs { print: true, .. }))
        ));
    }

    fn ctx(format: Format) -> Context {
        Context { bootstrap: "127.0.0.1:1".into(), format, timeout: Duration::from_secs(1) }
    }

    #[tokio::test]
    async fn migrate_then_status_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("app.db").display());
        let db = DbArgs { db: url.clone(), table: TableName::default() };
        let args = MigrateArgs { db: db.clone(), print: false };
        migrate(&ctx(Format::Text), &args).await.unwrap();
        migrate(&ctx(Format::Json), &args).await.unwrap();
        let args = StatusArgs { db, json: JsonFlag { json: true } };
        status(&ctx(Format::Text), &args).await.unwrap();
        let missing = DbArgs { db: url, table: TableName::new("nothing_here").unwrap() };
        let e = status(&ctx(Format::Text), &StatusArgs { db: missing, json: JsonFlag::default() })
            .await
            .unwrap_err();
        assert!(crate::error_line(&e).contains("ferryctl outbox migrate"), "{e:#}");
    }
}
