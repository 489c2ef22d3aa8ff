//! `ferryctl`'s flags and commands (clap derive). Values are checked while parsing, so a bad
//! flag is a usage error before anything connects.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ferry_consumer::StartFrom;
use ferry_protocol::{Offset, TxnId};

use crate::cmd::dlq::{DlqCommand, DLQ_LONG_ABOUT};
use crate::cmd::group::GroupCommand;
use crate::cmd::outbox::{OutboxCommand, OUTBOX_LONG_ABOUT};
use crate::cmd::push::{PushCommand, PUSH_LONG_ABOUT};
use crate::duration::parse_positive_duration;
use crate::output::{parse_timestamp_ms, Format};

/// Most partitions a topic may have (the broker's limit).
pub const PARTITIONS_MAX: u32 = 1024;

/// Longest topic name (the broker's limit).
const TOPIC_NAME_CHARS_MAX: usize = 249;

/// Most rows `txn list --limit` may ask for: they are all held in memory before printing.
pub const TXN_LIST_ROWS_MAX: u32 = 100_000;

const ABOUT: &str = "Administer and use a ferrymq cluster";

const LONG_ABOUT: &str = "Administer and use a ferrymq cluster: membership, topics, \
producing or consuming messages from the command line, resolving transactions, \
consumer groups with their dead letters, webhook push subscriptions, and the transactional \
outbox relay.

Any member of the cluster can be named with --bootstrap; requests are routed to the leader. \
Every failure prints one line starting with `error:` on stderr and exits with status 1 \
(2 for a bad command line).";

const EXAMPLES: &str = "Examples:
  ferryctl cluster status
  ferryctl topic create orders --partitions 4
  seq 1 1000 | ferryctl produce orders
  ferryctl consume orders --from earliest --count 1000
  ferryctl txn list --parked
  ferryctl group describe billing
  ferryctl push create orders-hook --topic orders --url https://example.com/hooks/orders
  ferryctl outbox relay --db sqlite://app.db
  FERRY_BOOTSTRAP=10.0.0.1:7400,10.0.0.2:7400 ferryctl --format json topic list";

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "ferryctl", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Brokers to contact, HOST:PORT[,HOST:PORT...]; any member of the cluster will do.
    #[arg(
        long,
        global = true,
        env = "FERRY_BOOTSTRAP",
        default_value = "127.0.0.1:7400",
        value_name = "HOST:PORT[,HOST:PORT]",
        value_parser = parse_bootstrap
    )]
    pub bootstrap: String,

    /// Output format: `text` for people, `json` for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Format::Text)]
    pub format: Format,

    /// How long to keep retrying while the cluster is unreachable or electing a leader,
    /// e.g. 500ms, 10s, 2m.
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    pub timeout: Duration,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Cluster membership and health: status, add-node, remove-node.
    #[command(
        subcommand,
        after_help = "Examples:
  ferryctl cluster status
  ferryctl cluster add-node 4 10.0.0.4:7400
  ferryctl cluster remove-node 3"
    )]
    Cluster(ClusterCommand),
    /// Create, list, describe and delete topics.
    #[command(
        subcommand,
        after_help = "Examples:
  ferryctl topic create orders --partitions 4
  ferryctl topic list
  ferryctl topic describe orders
  ferryctl topic delete orders"
    )]
    Topic(TopicCommand),
    /// Publish messages: one per line of stdin, or --count generated ones.
    #[command(after_help = "Examples:
  seq 1 1000 | ferryctl produce orders
  printf 'user-1:signed up\\nuser-2:signed up\\n' | ferryctl produce events --key-sep :
  ferryctl produce orders --count 100000 --size 512
  echo hello | ferryctl produce orders --partition 2
  echo reminder | ferryctl produce orders --delay 30s
  echo report | ferryctl produce orders --deliver-at 2030-01-31T09:00:00Z")]
    Produce(ProduceArgs),
    /// Read messages from a topic and print them, one per line.
    #[command(after_help = "Examples:
  ferryctl consume orders --from earliest --count 10
  ferryctl consume orders --from latest          # follow new messages until Ctrl-C
  ferryctl consume orders --partition 1 --from 500 --json
  ferryctl consume orders --idle-timeout 2s > dump.txt
  ferryctl consume orders --group billing --count 10          # acks what it prints
  ferryctl consume orders --group billing --nack --count 1    # rejects: it comes back later

With --json each line is an object with topic, partition, offset, timestamp_ms, key, headers
and value (with --group also attempt: 1 for a first delivery). The value (and key, header values) is the text itself when it is valid UTF-8, else
base64; `value_encoding` (`key_encoding`, `encoding`) says which: \"utf8\" or \"base64\".")]
    Consume(ConsumeArgs),
    /// Inspect and resolve transactional messages: list, show, commit, rollback, stats.
    #[command(subcommand, long_about = TXN_LONG_ABOUT, after_help = "Examples:
  ferryctl txn stats
  ferryctl txn list --parked
  ferryctl txn list --group payments --older-than 5m
  ferryctl txn show 42 --payload
  ferryctl txn commit 42
  ferryctl txn rollback 43")]
    Txn(TxnCommand),
    /// Consumer groups: list, describe, reset-offsets.
    #[command(
        subcommand,
        after_help = "Examples:
  ferryctl group list
  ferryctl group describe billing
  ferryctl group reset-offsets billing --topic orders --to-earliest --execute"
    )]
    Group(GroupCommand),
    /// A consumer group's dead letters: list, replay, purge.
    #[command(subcommand, long_about = DLQ_LONG_ABOUT, after_help = "Examples:
  ferryctl dlq list --group billing
  ferryctl dlq replay --group billing --all
  ferryctl dlq purge --group billing")]
    Dlq(DlqCommand),
    /// Webhook push subscriptions: create, list, describe, pause, resume, delete,
    /// rotate-secret, failed, replay.
    #[command(subcommand, long_about = PUSH_LONG_ABOUT, after_help = "Examples:
  ferryctl push create orders-hook --topic orders --url https://example.com/hooks/orders
  ferryctl push list
  ferryctl push describe orders-hook
  ferryctl push failed orders-hook --since 2h
  ferryctl push replay orders-hook --all")]
    Push(PushCommand),
    /// The transactional outbox: migrate the table, run a relay, show its status.
    #[command(subcommand, long_about = OUTBOX_LONG_ABOUT, after_help = "Examples:
  ferryctl outbox migrate --db postgres://app:secret@127.0.0.1/app
  ferryctl outbox relay --db postgres://app:secret@127.0.0.1/app --metrics-addr 127.0.0.1:9900
  ferryctl outbox status --db postgres://app:secret@127.0.0.1/app")]
    Outbox(OutboxCommand),
}

const TXN_LONG_ABOUT: &str = "Inspect and resolve transactional (half) messages.

A half message stays invisible to consumers until its transaction is committed; a rolled-back \
one never becomes visible. The producer decides its own transactions; when it stays silent, \
the leader asks its producer group (check-backs), and when the checks run out without an \
answer the transaction is parked until an operator decides it with `txn commit` or \
`txn rollback`.

A decision never flips: once committed or rolled back, a transaction stays so. Repeating the \
same decision changes nothing and succeeds; the other decision is refused and the command \
exits 1 naming the state.";

/// `ferryctl txn ...`
#[derive(Debug, Subcommand)]
pub enum TxnCommand {
    /// List transactions, oldest first: open ones (pending and parked) unless --all.
    ///
    /// Pages through the leader until --limit rows. Columns: id, producer group,
    /// topic/partition, state (pending, parked, committed, rolled_back), age, check-backs sent,
    /// when the next check-back is due (`in 25s`, or `overdue 3s` when past due and not sent
    /// yet) and who decided (producer, check_back, operator, checks_exhausted). Ages use this
    /// machine's clock against the leader's. With --format json: an array of objects, one per
    /// transaction.
    ///
    /// A decision never flips: a committed or rolled_back row stays so for as long as the
    /// broker retains it.
    #[command(after_help = "Examples:
  ferryctl txn list                                # open transactions
  ferryctl txn list --parked                       # waiting for an operator
  ferryctl txn list --group payments --older-than 5m
  ferryctl txn list --all --limit 1000 --format json")]
    List(TxnListArgs),
    /// Show one transaction in full, in any state; --payload adds its message.
    ///
    /// Fields: state, group, topic, partition, created, check timeout, check-backs sent, next
    /// check, when it was decided (or parked), who decided and, once committed, the offset.
    /// --payload prints the first record of the half message's batch: key, headers and value
    /// (as text when it is UTF-8, else with its bytes escaped; base64 in JSON).
    /// A transaction that is not found never existed or was purged after the retention period.
    ///
    /// A decision never flips: a committed or rolled_back transaction stays so.
    #[command(after_help = "Examples:
  ferryctl txn show 42
  ferryctl txn show 42 --payload
  ferryctl --format json txn show 42 --payload | jq .payload.value")]
    Show {
        /// Transaction id.
        #[arg(value_parser = parse_txn_id)]
        id: TxnId,
        /// Also print the message (first record of the batch).
        #[arg(long)]
        payload: bool,
    },
    /// Commit a transaction as the operator: its message becomes visible to consumers.
    ///
    /// Meant for parked transactions (check-backs ran out). A decision never flips: committing
    /// a committed transaction changes nothing and succeeds; committing a rolled-back one fails
    /// and exits 1. Committing a pending transaction prints a warning on stderr, since its
    /// producer may still roll it back.
    #[command(after_help = "Example:
  ferryctl txn commit 42")]
    Commit {
        /// Transaction id.
        #[arg(value_parser = parse_txn_id)]
        id: TxnId,
    },
    /// Roll back a transaction as the operator: its message is discarded, never visible.
    ///
    /// Meant for parked transactions (check-backs ran out). A decision never flips: rolling back
    /// a rolled-back transaction changes nothing and succeeds; rolling back a committed one
    /// fails and exits 1. Rolling back a pending transaction prints a warning on stderr, since
    /// its producer may still commit it.
    #[command(after_help = "Example:
  ferryctl txn rollback 42")]
    Rollback {
        /// Transaction id.
        #[arg(value_parser = parse_txn_id)]
        id: TxnId,
    },
    /// Counts per producer group, and the age of the oldest open transaction.
    ///
    /// Per group: pending and parked (the open transactions now), committed and rolled back
    /// (totals since the cluster was created). A decision never flips, so those two totals
    /// only grow.
    #[command(after_help = "Examples:
  ferryctl txn stats
  ferryctl --format json txn stats | jq '.groups[] | select(.parked > 0)'")]
    Stats,
}

/// `ferryctl txn list ...`
#[derive(Debug, Args)]
pub struct TxnListArgs {
    /// Only transactions of this producer group.
    #[arg(long, value_name = "GROUP", value_parser = parse_group)]
    pub group: Option<String>,

    /// Only parked transactions: check-backs ran out, waiting for an operator.
    #[arg(long, conflicts_with = "all")]
    pub parked: bool,

    /// Only transactions older than this, e.g. 30s, 5m, 1h (by the leader's clock).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub older_than: Option<Duration>,

    /// Include decided (committed and rolled back) transactions still retained.
    #[arg(long)]
    pub all: bool,

    /// Stop after N transactions (1-100000).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(TXN_LIST_ROWS_MAX)))]
    pub limit: u32,
}

/// `ferryctl cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Show every node's role, term, Raft log indexes and replication lag.
    ///
    /// Asks the bootstrap nodes for the cluster members, then every member directly; a node
    /// that does not answer is shown with role `unreachable`. Lag is the leader's last log
    /// index minus the node's applied index.
    #[command(after_help = "Examples:
  ferryctl cluster status
  ferryctl --format json cluster status | jq .leader_id")]
    Status,
    /// Add a node: it joins as a learner, catches up, then becomes a voter.
    ///
    /// Start the new node with `ferry-broker --join` first. Waits until the node is a voter
    /// (up to a minute).
    #[command(after_help = "Example:
  ferry-broker --node-id 4 --listen 10.0.0.4:7400 --join &
  ferryctl cluster add-node 4 10.0.0.4:7400")]
    AddNode {
        /// The new node's id (non-zero, unused in the cluster).
        #[arg(value_parser = parse_node_id)]
        id: u64,
        /// The address the new node listens on, HOST:PORT.
        #[arg(value_parser = parse_host_port)]
        addr: String,
    },
    /// Remove a node from the cluster (joint consensus); it stops receiving the Raft log.
    #[command(after_help = "Example:
  ferryctl cluster remove-node 3")]
    RemoveNode {
        /// The id of the node to remove.
        #[arg(value_parser = parse_node_id)]
        id: u64,
    },
}

/// `ferryctl topic ...`
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic with a number of partitions (order is kept per partition).
    #[command(after_help = "Example:
  ferryctl topic create orders --partitions 4")]
    Create {
        /// Topic name: 1-249 characters of A-Z a-z 0-9 . _ -
        #[arg(value_parser = parse_topic_name)]
        name: String,
        /// Number of partitions, 1-1024.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(PARTITIONS_MAX)))]
        partitions: u32,
    },
    /// List every topic with its partition and message counts.
    #[command(after_help = "Examples:
  ferryctl topic list
  ferryctl --format json topic list")]
    List,
    /// Show a topic's partitions: log start, high watermark and message count.
    #[command(after_help = "Example:
  ferryctl topic describe orders")]
    Describe {
        /// Topic name.
        #[arg(value_parser = parse_topic_name)]
        name: String,
    },
    /// Delete a topic and every message in it.
    #[command(after_help = "Example:
  ferryctl topic delete orders")]
    Delete {
        /// Topic name.
        #[arg(value_parser = parse_topic_name)]
        name: String,
    },
}

/// `ferryctl produce TOPIC ...`
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The topic to publish to.
    #[arg(value_parser = parse_topic_name)]
    pub topic: String,

    /// Key for every message (messages with one key go to one partition).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,

    /// Split each input line at the first SEP into key and value (lines without SEP get no
    /// key, or --key).
    #[arg(long, value_name = "SEP", conflicts_with = "count", value_parser = parse_separator)]
    pub key_sep: Option<String>,

    /// Send every message to this partition instead of choosing by key.
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub partition: Option<u32>,

    /// Send N generated messages instead of reading stdin.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Size of each generated message in bytes (with --count).
    #[arg(long, value_name = "BYTES", default_value_t = 100, requires = "count")]
    pub size: usize,

    /// Deliver the messages this long after the command starts (e.g. 30s, 5m, 2h): they are
    /// stored now, replicated and invisible, and appear in the partition when due.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub delay: Option<Duration>,

    /// Deliver the messages at this time: RFC 3339 (2030-01-31T09:00:00Z, or with an offset
    /// such as +02:00) or milliseconds since the Unix epoch. A time already past delivers at
    /// once.
    #[arg(long, value_name = "TIME", conflicts_with = "delay", value_parser = parse_deliver_at)]
    pub deliver_at: Option<u64>,
}

/// `ferryctl consume TOPIC ...`
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// The topic to read.
    #[arg(value_parser = parse_topic_name)]
    pub topic: String,

    /// Where to start in each partition: `earliest`, `latest` (only new messages) or an
    /// offset.
    #[arg(
        long,
        value_name = "earliest|latest|OFFSET",
        default_value = "earliest",
        allow_negative_numbers = true,
        value_parser = parse_start
    )]
    pub from: StartFrom,

    /// Read only this partition (default: every partition).
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub partition: Option<u32>,

    /// Stop after N messages (default: run until Ctrl-C).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Stop when no message arrived for this long, e.g. 2s (useful in scripts).
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub idle_timeout: Option<Duration>,

    /// Print one JSON object per message (same as --format json).
    #[arg(long)]
    pub json: bool,

    /// Read as a member of this consumer group: the leader assigns the partitions, reading
    /// starts at the group's committed positions (--from only applies where it never
    /// committed), and each message is acked once printed.
    #[arg(
        long,
        value_name = "GROUP",
        value_parser = crate::cmd::group::parse_group_name,
        conflicts_with = "partition"
    )]
    pub group: Option<String>,

    /// With --group: nack each message once printed instead of acking it, so the group gets
    /// it again on its retry schedule (and dead-letters it after the last attempt).
    #[arg(long, requires = "group")]
    pub nack: bool,
}

/// `host:port[,host:port...]`, each with a numeric port.
fn parse_bootstrap(text: &str) -> Result<String, String> {
    let addrs = ferry_protocol::cluster::split_addrs(text);
    if addrs.is_empty() {
        return Err("empty; expected HOST:PORT[,HOST:PORT...]".into());
    }
    for addr in &addrs {
        parse_host_port(addr)?;
    }
    Ok(addrs.join(","))
}

/// `host:port` with a numeric port.
fn parse_host_port(text: &str) -> Result<String, String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {
            Ok(text.to_string())
        }
        _ => Err(format!("{text:?} is not HOST:PORT")),
    }
}

fn parse_node_id(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("node ids start at 1".into()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!("{text:?} is not a node id (a positive integer)")),
    }
}

/// A topic name as the broker accepts it: 1-249 characters of `[A-Za-z0-9._-]`.
pub fn parse_topic_name(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > TOPIC_NAME_CHARS_MAX {
        return Err(format!("topic names have 1 to {TOPIC_NAME_CHARS_MAX} characters"));
    }
    if let Some(bad) = text.chars().find(|c| !(c.is_ascii_alphanumeric() || "._-".contains(*c))) {
        return Err(format!("{bad:?} is not allowed in a topic name (use A-Z a-z 0-9 . _ -)"));
    }
    Ok(text.to_string())
}

/// A transaction id: a positive integer.
pub fn parse_txn_id(text: &str) -> Result<TxnId, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("transaction ids start at 1".into()),
        Ok(id) => Ok(TxnId(id)),
        Err(_) => Err(format!("{text:?} is not a transaction id (a positive integer)")),
    }
}

/// A producer group name: not empty (the broker reads an empty group as "every group").
fn parse_group(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err("the group name is empty".into());
    }
    Ok(text.to_string())
}

/// A deliver time: milliseconds since the Unix epoch, or an RFC 3339 timestamp.
fn parse_deliver_at(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("{text:?} is too large for ms since the epoch"));
    }
    parse_timestamp_ms(text)
}

fn parse_separator(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the separator is empty".into());
    }
    Ok(text.to_string())
}

/// `earliest`, `latest` or an offset.
pub fn parse_start(text: &str) -> Result<StartFrom, String> {
    match text {
        "earliest" => Ok(StartFrom::Earliest),
        "latest" => Ok(StartFrom::Latest),
        other => other.parse::<u64>().map(|o| StartFrom::Offset(Offset(o))).map_err(|_| {
            format!("{other:?} is not earliest, latest or an offset (a non-negative integer)")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ferryctl").chain(args.iter().copied()))
    }

    fn kind(args: &[&str]) -> ErrorKind {
        parse(args).expect_err("should be refused").kind()
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_have_defaults_and_go_anywhere() {
        // FERRY_BOOTSTRAP may be set in the environment running the tests; pass it explicitly.
        let cli = parse(&["--bootstrap", "127.0.0.1:7400", "topic", "list"]).unwrap();
        assert_eq!(cli.bootstrap, "127.0.0.1:7400");
        assert_eq!(cli.format, Format::Text);
        assert_eq!(cli.timeout, Duration::from_secs(10));
        assert!(matches!(cli.command, Command::Topic(TopicCommand::List)));

        let cli = parse(&[
            "topic",
            "list",
            "--format",
            "json",
            "--timeout",
            "500ms",
            "--bootstrap",
            "a:1, b:2",
        ])
        .unwrap();
        assert_eq!(cli.format, Format::Json);
        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert_eq!(cli.bootstrap, "a:1,b:2");
    }

    #[test]
    fn cluster_commands() {
        let cli = parse(&["cluster", "add-node", "4", "10.0.0.4:7400"]).unwrap();
        match cli.command {
            Command::Cluster(ClusterCommand::AddNode { id, addr }) => {
                assert_eq!((id, addr.as_str()), (4, "10.0.0.4:7400"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["cluster", "remove-node", "3"]).unwrap().command,
            Command::Cluster(ClusterCommand::RemoveNode { id: 3 })
        ));
        assert!(matches!(
            parse(&["cluster", "status"]).unwrap().command,
            Command::Cluster(ClusterCommand::Status)
        ));
        assert_eq!(kind(&["cluster", "add-node", "0", "h:1"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["cluster", "add-node", "4", "nohostport"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["cluster", "add-node", "4"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["cluster", "remove-node", "x"]), ErrorKind::ValueValidation);
    }

    #[test]
    fn topic_commands() {
        match parse(&["topic", "create", "orders", "--partitions", "4"]).unwrap().command {
            Command::Topic(TopicCommand::Create { name, partitions }) => {
                assert_eq!((name.as_str(), partitions), ("orders", 4));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["topic", "create", "a.b_c-1"]).unwrap().command {
            Command::Topic(TopicCommand::Create { partitions, .. }) => assert_eq!(partitions, 1),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            kind(&["topic", "create", "t", "--partitions", "0"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["topic", "create", "t", "--partitions", "1025"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["topic", "create", "t", "--partitions", "x"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(kind(&["topic", "create", "bad/name"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["topic", "describe"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["topic", "frobnicate"]), ErrorKind::InvalidSubcommand);
        assert!(matches!(
            parse(&["topic", "delete", "t"]).unwrap().command,
            Command::Topic(TopicCommand::Delete { .. })
        ));
    }

    #[test]
    fn produce_flags() {
        match parse(&["produce", "t", "--count", "10", "--size", "64", "--key", "k"])
            .unwrap()
            .command
        {
            Command::Produce(a) => {
                assert_eq!((a.count, a.size, a.key.as_deref()), (Some(10), 64, Some("k")));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["produce", "t", "--key-sep", ":", "--partition", "2"]).unwrap().command {
            Command::Produce(a) => {
                assert_eq!(
                    (a.key_sep.as_deref(), a.partition, a.count),
                    (Some(":"), Some(2), None)
                );
                assert_eq!(a.size, 100);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(kind(&["produce", "t", "--count", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["produce", "t", "--size", "10"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind(&["produce", "t", "--count", "1", "--key-sep", ":"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(kind(&["produce", "t", "--key-sep", ""]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["produce", "t", "--partition", "-1"]), ErrorKind::ValueValidation);
    }

    #[test]
    fn produce_deliver_time_flags() {
        let args = |a: &[&str]| match parse(a).unwrap().command {
            Command::Produce(a) => (a.delay, a.deliver_at),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            args(&["produce", "t", "--delay", "30s"]),
            (Some(Duration::from_secs(30)), None)
        );
        assert_eq!(
            args(&["produce", "t", "--deliver-at", "2023-11-14T22:13:20.123Z"]),
            (None, Some(1_700_000_000_123))
        );
        assert_eq!(
            args(&["produce", "t", "--deliver-at", "1700000000123"]),
            (None, Some(1_700_000_000_123))
        );
        assert_eq!(args(&["produce", "t"]), (None, None));
        assert_eq!(
            kind(&["produce", "t", "--delay", "1s", "--deliver-at", "5"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(kind(&["produce", "t", "--delay", "0s"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["produce", "t", "--deliver-at", "tomorrow"]), ErrorKind::ValueValidation);
    }

    #[test]
    fn consume_flags() {
        match parse(&["consume", "t"]).unwrap().command {
            Command::Consume(a) => {
                assert_eq!(a.from, StartFrom::Earliest);
                assert_eq!(
                    (a.count, a.partition, a.idle_timeout, a.json),
                    (None, None, None, false)
                );
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "consume",
            "t",
            "--from",
            "42",
            "--partition",
            "1",
            "--count",
            "5",
            "--idle-timeout",
            "2s",
            "--json",
        ])
        .unwrap()
        .command
        {
            Command::Consume(a) => {
                assert_eq!(a.from, StartFrom::Offset(Offset(42)));
                assert_eq!((a.partition, a.count), (Some(1), Some(5)));
                assert_eq!(a.idle_timeout, Some(Duration::from_secs(2)));
                assert!(a.json);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["consume", "t", "--from", "latest"]).unwrap().command {
            Command::Consume(a) => assert_eq!(a.from, StartFrom::Latest),
            other => panic!("{other:?}"),
        }
        assert_eq!(kind(&["consume", "t", "--from", "nonsense"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["consume", "t", "--from", "-5"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["consume", "t", "--idle-timeout", "10"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["consume", "t", "--idle-timeout", "0s"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["consume", "t", "--count", "0"]), ErrorKind::ValueValidation);
    }

    #[test]
    fn txn_commands() {
        match parse(&["txn", "list"]).unwrap().command {
            Command::Txn(TxnCommand::List(a)) => {
                assert_eq!(
                    (a.group, a.parked, a.all, a.older_than, a.limit),
                    (None, false, false, None, 100)
                );
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "txn",
            "list",
            "--group",
            "payments",
            "--parked",
            "--older-than",
            "5m",
            "--limit",
            "7",
        ])
        .unwrap()
        .command
        {
            Command::Txn(TxnCommand::List(a)) => {
                assert_eq!(a.group.as_deref(), Some("payments"));
                assert!(a.parked && !a.all);
                assert_eq!(a.older_than, Some(Duration::from_secs(300)));
                assert_eq!(a.limit, 7);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["txn", "show", "42", "--payload"]).unwrap().command,
            Command::Txn(TxnCommand::Show { id: TxnId(42), payload: true })
        ));
        assert!(matches!(
            parse(&["txn", "commit", "42"]).unwrap().command,
            Command::Txn(TxnCommand::Commit { id: TxnId(42) })
        ));
        assert!(matches!(
            parse(&["txn", "rollback", "43"]).unwrap().command,
            Command::Txn(TxnCommand::Rollback { id: TxnId(43) })
        ));
        assert!(matches!(
            parse(&["txn", "stats"]).unwrap().command,
            Command::Txn(TxnCommand::Stats)
        ));
        assert_eq!(kind(&["txn", "list", "--parked", "--all"]), ErrorKind::ArgumentConflict);
        assert_eq!(kind(&["txn", "list", "--older-than", "5"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["txn", "list", "--older-than", "1d"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["txn", "list", "--limit", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["txn", "list", "--limit", "100001"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["txn", "list", "--group", ""]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["txn", "show", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["txn", "commit", "x"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["txn", "rollback"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["txn", "commit", "42", "--payload"]), ErrorKind::UnknownArgument);
    }

    #[test]
    fn txn_help_states_the_never_flip_rule() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let txn = cli.find_subcommand_mut("txn").unwrap();
        let help = txn.render_long_help().to_string();
        assert!(help.contains("A decision never flips"), "{help}");
        for name in ["list", "show", "commit", "rollback", "stats"] {
            let help = txn.find_subcommand_mut(name).unwrap().render_long_help().to_string();
            assert!(help.contains("A decision never flips"), "{name}: {help}");
        }
    }

    #[test]
    fn bad_globals_are_refused() {
        assert_eq!(kind(&["--timeout", "soon", "topic", "list"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--timeout", "0s", "topic", "list"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--format", "xml", "topic", "list"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["--bootstrap", "nohost", "topic", "list"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--bootstrap", "h:99999", "topic", "list"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--bootstrap", " , ", "topic", "list"]), ErrorKind::ValueValidation);
    }

    #[test]
    fn help_is_not_an_error() {
        assert_eq!(kind(&["--help"]), ErrorKind::DisplayHelp);
        assert_eq!(kind(&["consume", "--help"]), ErrorKind::DisplayHelp);
        assert_eq!(kind(&[]), ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand);
    }
}
