//! Command-line flags of `ferry-bench`, the checks on combinations clap cannot express
//! ([`Args::validate`]), and the humane duration parser they use (`10s`, `2m`, `1m30s`,
//! `250ms`). Called by `main` and by [`crate::run`].

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Messages sent (or read, or transactions run) when neither `--count` nor `--duration` is
/// given.
pub const COUNT_DEFAULT: u64 = 100_000;

/// Transactions each producer instance keeps open at once when `--transactions-in-flight` is
/// not given (txn).
pub const TXN_IN_FLIGHT_DEFAULT: u64 = 64;

/// Largest `--transactions-in-flight`: each open transaction is a task holding its payload.
pub const TXN_IN_FLIGHT_MAX: u64 = 100_000;

/// Producer group of the bench's transactional producers when `--group` is not given.
pub const TXN_GROUP_DEFAULT: &str = "bench";

/// Longest topic name the broker takes; a consumer group's retry topic
/// (`__retry.<group>.<topic>`) must fit too.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Delay a nacked delivery asks for when `--nack-delay` is not given (consume --group).
pub const NACK_DELAY_DEFAULT: Duration = Duration::from_millis(100);

/// Load generator for ferrymq, with the same workloads against NATS JetStream for comparison.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferry-bench",
    version,
    about = "ferrymq load generator (and the same workloads against NATS JetStream)",
    long_about = "ferrymq load generator (and the same workloads against NATS JetStream).\n\n\
        produce: send messages, measure throughput and send->ack latency.\n\
        consume: read --count messages from the earliest offset (default: all present); \
        the clock starts before the readers connect. With --group G (ferrymq only): read as \
        --concurrency members of consumer group G, acking every delivery; --nack-ratio nacks \
        that fraction of first deliveries (redelivered through the group's retry topic after \
        --nack-delay) and acks the redelivery. A group resumes from its committed positions: \
        a fresh group name reads from the earliest offset, a used one only what it has not \
        read yet. Counts each message once (at its first ack) and reports deliveries, \
        redeliveries and duplicates, per member too. The leader rebalances as members join, \
        on their heartbeats (every second): a short run may be read by the first member \
        alone, as its per-member counts then show.\n\
        e2e:     produce and consume at once; latency from send to receipt.\n\
        txn:     transactions (ferrymq only): half send, --local-work (a sleep), then commit, \
        or rollback for a --rollback-ratio fraction; --transactions-in-flight open at once \
        per instance (default 64), --concurrency transactional producers in producer group \
        --group (default \"bench\"); --count and --warmup count transactions.\n\n\
        Latency is measured per message from just before the client's send() (after the \
        bench's own --in-flight window admits it; back-pressure inside send() is included) \
        to the ack, or for e2e to the moment the consumer yields it. No coordinated-omission \
        correction: with --rate, a sender that falls behind sends at once and its lateness is \
        not added.\n\n\
        txn reports transactions/s; msgs/s and MB/s of committed messages; the latency of a \
        whole committed transaction (half send to commit ack, --local-work included) and, \
        apart, of the half send, the commit and the rollback. The bench decides every \
        transaction itself, so its checker answers commit and counts the check-backs it gets: \
        any means a decision was lost or came after the broker's txn_check_timeout (6 s by \
        default), or an earlier run of the same --group left transactions open. Exit status 1 \
        when a transaction failed."
)]
pub struct Args {
    /// What to run.
    #[arg(value_enum)]
    pub workload: Workload,

    /// Which broker to drive.
    #[arg(long, value_enum, default_value_t = System::Ferry)]
    pub system: System,

    /// ferrymq brokers, `host:port[,host:port...]`.
    #[arg(long, env = "FERRY_BOOTSTRAP", default_value = "127.0.0.1:7400")]
    pub bootstrap: String,

    /// NATS server URL (with `--system nats`).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,

    /// Topic (ferrymq) or stream name (NATS; subjects are `<topic>.<partition>`).
    #[arg(long, default_value = "bench")]
    pub topic: String,

    /// Create the topic with this many partitions if it is missing. For NATS, also the number
    /// of subjects messages are spread over (default 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: Option<u32>,

    /// Create the topic if it is missing (with `--partitions`, default 1); an existing topic
    /// is fine.
    #[arg(long)]
    pub create_topic: bool,

    /// Replicas of a NATS stream created by this run (file storage).
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,

    /// Payload bytes per message (at least 8: the first 8 carry the send timestamp).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(8..=16 * 1024 * 1024))]
    pub size: u64,

    /// Messages to send or read (default 100000; consume: every message present); txn:
    /// transactions to run.
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,

    /// Run for this long instead of a count (e.g. 10s, 2m, 1m30s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Messages sent and acknowledged before measuring starts (produce, e2e; txn:
    /// transactions decided); not reported, except that failed ones count as errors.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,

    /// Producer (and consumer) instances, each with its own connection and task (consume
    /// --group: members of the group).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,

    /// Target total send rate in messages per second (txn: transactions started per second),
    /// spread over the instances (default: as fast as possible).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,

    /// Unacknowledged messages each instance may have in flight (same bound for both systems;
    /// txn uses --transactions-in-flight instead).
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub in_flight: u64,

    /// ferrymq producer linger (e.g. 1ms); default: the producer's own.
    #[arg(long, value_parser = parse_duration)]
    pub linger: Option<Duration>,

    /// ferrymq producer batch size limit in bytes; default: the producer's own.
    #[arg(long)]
    pub batch_bytes: Option<usize>,

    /// ferrymq producer buffer limit in bytes (back-pressure); default: the producer's own.
    #[arg(long)]
    pub buffer_bytes: Option<usize>,

    /// Give up reading when no message arrives for this long.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub idle_timeout: Duration,

    /// txn: producer group the transactional producers join (default "bench"); check-backs
    /// go to any live member of the group. consume: read as members of this consumer group
    /// (ferrymq only), one per --concurrency, acking every delivery. The group resumes from
    /// its committed positions, so a fresh group name reads from the earliest offset and a
    /// used one only what it has not read yet; each group also creates its retry and
    /// dead-letter topics (`__retry.<group>.<topic>`, `__dlq.<group>`).
    #[arg(long)]
    pub group: Option<String>,

    /// Transactions each producer instance keeps open at once, from half send to decision
    /// (txn; default 64).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=TXN_IN_FLIGHT_MAX))]
    pub transactions_in_flight: Option<u64>,

    /// Simulated local work between a transaction's half send and its decision, a sleep
    /// (txn; e.g. 5ms; default 0).
    #[arg(long, value_parser = parse_duration)]
    pub local_work: Option<Duration>,

    /// Fraction of transactions rolled back instead of committed, 0..=1, spread evenly
    /// (txn; default 0).
    #[arg(long, value_parser = parse_ratio)]
    pub rollback_ratio: Option<f64>,

    /// Fraction of first deliveries nacked, 0..=1, spread evenly per member (consume --group;
    /// default 0). A nacked message comes back through the group's retry topic after
    /// --nack-delay and is acked then; it counts once, when that redelivery is acked.
    #[arg(long, value_parser = parse_ratio)]
    pub nack_ratio: Option<f64>,

    /// Delay a nack asks for before the redelivery (consume --group; e.g. 1s; default 100ms).
    /// Must be below --idle-timeout.
    #[arg(long, value_parser = parse_duration)]
    pub nack_delay: Option<Duration>,

    /// Print one JSON object with every result instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

impl Args {
    /// Checks combinations of flags clap cannot: txn runs on ferrymq only and takes no batching
    /// flags; consume --group runs on ferrymq only, with a valid group name; the txn flags and
    /// the nack flags are refused by the other workloads rather than ignored.
    ///
    /// # Errors
    /// A sentence naming the offending flag.
    pub fn validate(&self) -> Result<(), String> {
        let txn_flags = [
            ("--transactions-in-flight", self.transactions_in_flight.is_some()),
            ("--local-work", self.local_work.is_some()),
            ("--rollback-ratio", self.rollback_ratio.is_some()),
        ];
        let nack_flags = [
            ("--nack-ratio", self.nack_ratio.is_some()),
            ("--nack-delay", self.nack_delay.is_some()),
        ];
        if self.workload != Workload::Consume || self.group.is_none() {
            if let Some((flag, _)) = nack_flags.iter().find(|(_, given)| *given) {
                return Err(format!("{flag} applies to consume --group only"));
            }
        }
        if self.workload != Workload::Txn {
            if let Some((flag, _)) = txn_flags.iter().find(|(_, given)| *given) {
                return Err(format!("{flag} applies to the txn workload only"));
            }
            return match self.workload {
                Workload::Consume => self.validate_consume_group(),
                _ if self.group.is_some() => {
                    Err("--group applies to the txn and consume workloads only".into())
                }
                _ => Ok(()),
            };
        }
        if self.system == System::Nats {
            return Err("txn runs against ferrymq only (NATS JetStream has no half messages \
                        or check-back); drop --system nats"
                .into());
        }
        let batching = [
            ("--linger", self.linger.is_some()),
            ("--batch-bytes", self.batch_bytes.is_some()),
            ("--buffer-bytes", self.buffer_bytes.is_some()),
        ];
        if let Some((flag, _)) = batching.iter().find(|(_, given)| *given) {
            return Err(format!(
                "{flag} does not apply to txn: each half message travels alone, unbatched"
            ));
        }
        let group = self.txn_group();
        if group.is_empty() || group.len() > ferry_producer::GROUP_BYTES_MAX {
            return Err(format!(
                "--group is {} bytes; allowed 1..={}",
                group.len(),
                ferry_producer::GROUP_BYTES_MAX
            ));
        }
        Ok(())
    }

    /// consume --group: ferrymq only, a group name the broker takes, and a retry topic name
    /// (`__retry.<group>.<topic>`) that fits; nacks must come back before the idle timeout.
    fn validate_consume_group(&self) -> Result<(), String> {
        let Some(group) = self.consume_group() else { return Ok(()) };
        if self.system == System::Nats {
            return Err("consume --group runs against ferrymq only (its consumer groups); \
                        drop --system nats or --group"
                .into());
        }
        ferry_protocol::group::validate_group_name(group)
            .map_err(|detail| format!("--group {group:?}: {detail}"))?;
        let retry = ferry_protocol::group::retry_topic(group, &self.topic);
        if retry.len() > TOPIC_NAME_BYTES_MAX {
            return Err(format!(
                "--group and --topic are too long together: the group's retry topic {retry:?} \
                 would be {} bytes; at most {TOPIC_NAME_BYTES_MAX}",
                retry.len()
            ));
        }
        if self.nack_delay() >= self.idle_timeout {
            return Err(format!(
                "--nack-delay {:?} is not below --idle-timeout {:?}: the run would end idle \
                 before the redeliveries come",
                self.nack_delay(),
                self.idle_timeout
            ));
        }
        Ok(())
    }

    /// The consumer group to read as (consume --group), if any.
    pub fn consume_group(&self) -> Option<&str> {
        match self.workload {
            Workload::Consume => self.group.as_deref(),
            _ => None,
        }
    }

    /// Fraction of first deliveries nacked (consume --group).
    pub fn nack_ratio(&self) -> f64 {
        self.nack_ratio.unwrap_or(0.0)
    }

    /// Delay asked for by each nack (consume --group).
    pub fn nack_delay(&self) -> Duration {
        self.nack_delay.unwrap_or(NACK_DELAY_DEFAULT)
    }

    /// The producer group (txn).
    pub fn txn_group(&self) -> &str {
        self.group.as_deref().unwrap_or(TXN_GROUP_DEFAULT)
    }

    /// Transactions each instance keeps open at once (txn).
    pub fn txn_in_flight(&self) -> u64 {
        self.transactions_in_flight.unwrap_or(TXN_IN_FLIGHT_DEFAULT)
    }

    /// Simulated local work per transaction (txn).
    pub fn local_work(&self) -> Duration {
        self.local_work.unwrap_or(Duration::ZERO)
    }

    /// Fraction of transactions rolled back (txn).
    pub fn rollback_ratio(&self) -> f64 {
        self.rollback_ratio.unwrap_or(0.0)
    }
}

/// The workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Send messages; throughput and send→ack latency.
    Produce,
    /// Read messages from the earliest offset, or as a consumer group (--group); throughput.
    Consume,
    /// Produce and consume at once; send→receipt latency.
    E2e,
    /// Transactions: half send, local work, commit or rollback; transaction latency.
    Txn,
}

impl Workload {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Produce => "produce",
            Workload::Consume => "consume",
            Workload::E2e => "e2e",
            Workload::Txn => "txn",
        }
    }
}

/// The broker being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// ferrymq.
    Ferry,
    /// NATS JetStream.
    Nats,
}

impl System {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            System::Ferry => "ferry",
            System::Nats => "nats",
        }
    }
}

/// Parses a humane duration: one or more `<integer><unit>` parts with units `ms`, `s`, `m`,
/// `h` (`10s`, `2m`, `1m30s`, `250ms`); a bare integer means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = text.parse().map_err(|e| format!("{text:?}: {e}"))?;
        return Ok(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("{text:?}: expected a number before {rest:?}"));
        }
        let (number, tail) = rest.split_at(digits);
        let value: u64 = number.parse().map_err(|e| format!("{text:?}: {e}"))?;
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "" => return Err(format!("{text:?}: missing unit after {number} (ms, s, m, h)")),
            other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h)")),
        };
        total = total.saturating_add(part);
        rest = tail;
    }
    Ok(total)
}

/// Parses a fraction in `0..=1` (`0`, `0.25`, `1`).
pub fn parse_ratio(text: &str) -> Result<f64, String> {
    let value: f64 = text.trim().parse().map_err(|e| format!("{text:?}: {e}"))?;
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("{text:?}: expected a fraction from 0 to 1"));
    }
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In a test a failed unwrap is a failed test, which is the point.
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1s500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration(" 3s "), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn bad_durations_are_rejected() {
        for bad in ["", "s", "10x", "1.5s", "-1s", "10 s", "m10", "5sec", "1m30"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn flags_parse() {
        let args = Args::try_parse_from([
            "ferry-bench",
            "produce",
            "--duration",
            "2m",
            "--linger",
            "1ms",
            "--concurrency",
            "4",
            "--json",
        ])
        .unwrap();
        assert_eq!(args.workload, Workload::Produce);
        assert_eq!(args.system, System::Ferry);
        assert_eq!(args.duration, Some(Duration::from_secs(120)));
        assert_eq!(args.linger, Some(Duration::from_millis(1)));
        assert_eq!(args.concurrency, 4);
        assert_eq!(args.size, 1024);
        assert!(args.json);
        assert!(Args::try_parse_from(["ferry-bench", "e2e", "--count", "1", "--duration", "1s"])
            .is_err());
        assert!(Args::try_parse_from(["ferry-bench", "produce", "--size", "4"]).is_err());
    }

    fn parse(flags: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("ferry-bench").chain(flags.iter().copied()))
    }

    #[test]
    fn txn_flags_parse_with_defaults() {
        let args = parse(&["txn", "--count", "20000"]).unwrap();
        assert_eq!(args.workload, Workload::Txn);
        assert_eq!(args.workload.name(), "txn");
        args.validate().unwrap();
        assert_eq!(args.txn_group(), "bench");
        assert_eq!(args.txn_in_flight(), 64);
        assert_eq!(args.local_work(), Duration::ZERO);
        assert_eq!(args.rollback_ratio(), 0.0);

        let args = parse(&[
            "txn",
            "--group",
            "orders",
            "--transactions-in-flight",
            "256",
            "--local-work",
            "5ms",
            "--rollback-ratio",
            "0.1",
            "--concurrency",
            "2",
        ])
        .unwrap();
        args.validate().unwrap();
        assert_eq!(args.txn_group(), "orders");
        assert_eq!(args.txn_in_flight(), 256);
        assert_eq!(args.local_work(), Duration::from_millis(5));
        assert_eq!(args.rollback_ratio(), 0.1);
    }

    #[test]
    fn bad_txn_values_are_rejected_by_the_parser() {
        for bad in [
            &["txn", "--rollback-ratio", "1.5"][..],
            &["txn", "--rollback-ratio", "-0.1"],
            &["txn", "--rollback-ratio", "NaN"],
            &["txn", "--rollback-ratio", "half"],
            &["txn", "--transactions-in-flight", "0"],
            &["txn", "--transactions-in-flight", "100001"],
            &["txn", "--local-work", "5"],
        ] {
            // `--local-work 5` is 5 s (a bare integer is seconds) and valid.
            if bad.contains(&"--local-work") {
                assert_eq!(parse(bad).unwrap().local_work(), Duration::from_secs(5));
                continue;
            }
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(parse_ratio("0"), Ok(0.0));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        assert_eq!(parse_ratio(" 0.25 "), Ok(0.25));
        assert!(parse_ratio("inf").is_err());
    }

    #[test]
    fn txn_combinations_are_checked() {
        let refused = |flags: &[&str]| parse(flags).unwrap().validate().unwrap_err();
        let e = refused(&["txn", "--system", "nats"]);
        assert!(e.contains("ferrymq only") && e.contains("--system nats"), "{e}");
        let e = refused(&["txn", "--linger", "1ms"]);
        assert!(e.starts_with("--linger does not apply to txn"), "{e}");
        let e = refused(&["txn", "--batch-bytes", "65536"]);
        assert!(e.starts_with("--batch-bytes"), "{e}");
        let e = refused(&["txn", "--buffer-bytes", "65536"]);
        assert!(e.starts_with("--buffer-bytes"), "{e}");
        let e = refused(&["txn", "--group", ""]);
        assert!(e.contains("allowed 1..=249"), "{e}");
        let long = "g".repeat(250);
        let e = refused(&["txn", "--group", &long]);
        assert!(e.contains("250 bytes"), "{e}");
        parse(&["txn", "--group", &"g".repeat(249)]).unwrap().validate().unwrap();

        // The txn flags are refused elsewhere rather than silently ignored.
        let e = refused(&["produce", "--rollback-ratio", "0.5"]);
        assert_eq!(e, "--rollback-ratio applies to the txn workload only");
        let e = refused(&["e2e", "--group", "g"]);
        assert_eq!(e, "--group applies to the txn and consume workloads only");
        let e = refused(&["consume", "--transactions-in-flight", "8"]);
        assert_eq!(e, "--transactions-in-flight applies to the txn workload only");
        let e = refused(&["produce", "--local-work", "1ms"]);
        assert_eq!(e, "--local-work applies to the txn workload only");
        // Produce still takes the batching flags and NATS.
        parse(&["produce", "--system", "nats", "--linger", "1ms"]).unwrap().validate().unwrap();
    }

    #[test]
    fn consume_group_flags_parse_with_defaults() {
        let args = parse(&["consume", "--group", "g1", "--concurrency", "3"]).unwrap();
        args.validate().unwrap();
        assert_eq!(args.consume_group(), Some("g1"));
        assert_eq!(args.nack_ratio(), 0.0);
        assert_eq!(args.nack_delay(), Duration::from_millis(100));

        let args =
            parse(&["consume", "--group", "g-2_x", "--nack-ratio", "0.1", "--nack-delay", "250ms"])
                .unwrap();
        args.validate().unwrap();
        assert_eq!(args.nack_ratio(), 0.1);
        assert_eq!(args.nack_delay(), Duration::from_millis(250));

        // Plain consume has no group; txn's --group is a producer group, not a consumer group.
        assert_eq!(parse(&["consume"]).unwrap().consume_group(), None);
        let txn = parse(&["txn", "--group", "orders"]).unwrap();
        assert_eq!(txn.consume_group(), None);
        assert_eq!(txn.txn_group(), "orders");

        assert!(parse(&["consume", "--group", "g", "--nack-ratio", "1.5"]).is_err());
        assert!(parse(&["consume", "--group", "g", "--nack-delay", "soon"]).is_err());
    }

    #[test]
    fn consume_group_combinations_are_checked() {
        let refused = |flags: &[&str]| parse(flags).unwrap().validate().unwrap_err();
        let e = refused(&["consume", "--nack-ratio", "0.1"]);
        assert_eq!(e, "--nack-ratio applies to consume --group only");
        let e = refused(&["produce", "--nack-delay", "1s"]);
        assert_eq!(e, "--nack-delay applies to consume --group only");
        let e = refused(&["txn", "--group", "g", "--nack-ratio", "0.1"]);
        assert_eq!(e, "--nack-ratio applies to consume --group only");
        let e = refused(&["consume", "--group", "g", "--system", "nats"]);
        assert!(e.contains("ferrymq only") && e.contains("--system nats"), "{e}");
        let e = refused(&["consume", "--group", "a.b"]);
        assert!(e.starts_with("--group \"a.b\": ") && e.contains("[A-Za-z0-9_-]"), "{e}");
        let e = refused(&["consume", "--group", ""]);
        assert!(e.contains("1..=100 bytes"), "{e}");
        let e = refused(&["consume", "--group", &"g".repeat(101)]);
        assert!(e.contains("1..=100 bytes"), "{e}");
        // __retry.<group>.<topic>: 8 + 100 + 1 + 141 = 250 bytes.
        let (group, topic) = ("g".repeat(100), "t".repeat(141));
        let e = refused(&["consume", "--group", &group, "--topic", &topic]);
        assert!(e.contains("too long together") && e.contains("250 bytes"), "{e}");
        let topic = "t".repeat(140);
        parse(&["consume", "--group", &group, "--topic", &topic]).unwrap().validate().unwrap();
        let e = refused(&["consume", "--group", "g", "--nack-delay", "15s"]);
        assert!(e.starts_with("--nack-delay 15s is not below --idle-timeout 15s"), "{e}");
        let args =
            parse(&["consume", "--group", "g", "--nack-delay", "15s", "--idle-timeout", "30s"]);
        args.unwrap().validate().unwrap();
    }
}
