//! Command-line flags of `ferry-bench` and the humane duration parser they use (`10s`, `2m`,
//! `1m30s`, `250ms`). Called by `main` and by [`crate::run`].

use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Messages sent (or read) when neither `--count` nor `--duration` is given.
pub const COUNT_DEFAULT: u64 = 100_000;

/// Load generator for ferrymq, with the same workloads against NATS JetStream for comparison.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ferry-bench",
    version,
    about = "ferrymq load generator (and the same workloads against NATS JetStream)",
    long_about = "ferrymq load generator (and the same workloads against NATS JetStream).\n\n\
        produce: send messages, measure throughput and send->ack latency.\n\
        consume: read --count messages from the earliest offset (default: all present); \
        the clock starts before the readers connect.\n\
        e2e:     produce and consume at once; latency from send to receipt.\n\n\
        Latency is measured per message from just before the client's send() (after the \
        bench's own --in-flight window admits it; back-pressure inside send() is included) \
        to the ack, or for e2e to the moment the consumer yields it. No coordinated-omission \
        correction: with --rate, a sender that falls behind sends at once and its lateness is \
        not added."
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

    /// Messages to send or read (default 100000; consume: every message present).
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,

    /// Run for this long instead of a count (e.g. 10s, 2m, 1m30s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,

    /// Messages sent and acknowledged before measuring starts (produce, e2e); not reported.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,

    /// Producer (and consumer) instances, each with its own connection and task.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,

    /// Target total send rate in messages per second, spread over the instances (default:
    /// as fast as possible).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,

    /// Unacknowledged messages each instance may have in flight (same bound for both systems).
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

    /// Print one JSON object with every result instead of the human summary.
    #[arg(long)]
    pub json: bool,
}

/// The workload to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Send messages; throughput and send→ack latency.
    Produce,
    /// Read messages from the earliest offset; throughput.
    Consume,
    /// Produce and consume at once; send→receipt latency.
    E2e,
}

impl Workload {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Produce => "produce",
            Workload::Consume => "consume",
            Workload::E2e => "e2e",
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
}
