//! Results of a run: the latency histogram (HDR, microsecond resolution), percentile summaries
//! and the two outputs — a short human summary or one JSON object. Called by the workload
//! drivers (recording) and by [`crate::run`] (printing).

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency the histogram tracks; larger values are clamped to it (1 hour).
const LATENCY_US_MAX: u64 = 3_600_000_000;

/// Significant decimal digits kept by the histogram.
const LATENCY_SIGFIG: u8 = 3;

/// Bytes in a reported megabyte (decimal: MB/s means 10^6 bytes per second).
const BYTES_PER_MB: f64 = 1_000_000.0;

/// Per-message latencies in microseconds.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
}

impl LatencyHistogram {
    /// An empty histogram covering 1 µs ..= 1 h with 3 significant digits.
    pub fn new() -> LatencyHistogram {
        // The bounds are constants that satisfy hdrhistogram's preconditions (low >= 1,
        // high >= 2 * low, sigfig <= 5), so construction cannot fail.
        #[allow(clippy::expect_used)]
        let hist = Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
            .expect("constant histogram bounds are valid");
        LatencyHistogram { hist }
    }

    /// Records one latency (clamped into the tracked range).
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.record_us(us);
    }

    /// Records one latency given in microseconds (clamped into the tracked range).
    pub fn record_us(&mut self, us: u64) {
        self.hist.saturating_record(us.clamp(1, LATENCY_US_MAX));
    }

    /// Adds every value of `other`.
    ///
    /// # Errors
    /// Only if `other` holds values outside this histogram's range, which histograms made by
    /// [`LatencyHistogram::new`] never do.
    pub fn merge(&mut self, other: &LatencyHistogram) -> anyhow::Result<()> {
        self.hist
            .add(&other.hist)
            .map_err(|e| anyhow::anyhow!("cannot merge latency histograms: {e:?}"))
    }

    /// Number of values recorded.
    pub fn len(&self) -> u64 {
        self.hist.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// Percentiles in milliseconds, or `None` if nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            count: self.hist.len(),
            p50: ms(self.hist.value_at_quantile(0.50)),
            p90: ms(self.hist.value_at_quantile(0.90)),
            p99: ms(self.hist.value_at_quantile(0.99)),
            p99_9: ms(self.hist.value_at_quantile(0.999)),
            max: ms(self.hist.max()),
        })
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

/// Latency percentiles in milliseconds (HDR histogram values: 3 significant digits).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p99_9: f64,
    /// Largest value.
    pub max: f64,
}

/// What a latency figure measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LatencyKind {
    /// From just before `send()` to the broker's acknowledgement.
    SendToAck,
    /// From just before `send()` to the consumer yielding the message.
    SendToConsume,
    /// A whole committed transaction: from just before the half send to the commit's
    /// acknowledgement (local work included).
    HalfToCommit,
}

impl LatencyKind {
    fn label(self) -> &'static str {
        match self {
            LatencyKind::SendToAck => "send->ack",
            LatencyKind::SendToConsume => "send->consume",
            LatencyKind::HalfToCommit => "half->commit",
        }
    }
}

/// Everything one run reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchResult {
    /// `ferry` or `nats`.
    pub system: &'static str,
    /// `produce`, `consume` or `e2e`.
    pub workload: &'static str,
    /// Topic or stream.
    pub topic: String,
    /// Partitions (NATS: subjects) messages were spread over or read from.
    pub partitions: u32,
    /// Payload bytes per message.
    pub size_bytes: u64,
    /// Producer (and consumer) instances.
    pub concurrency: u64,
    /// Consumer instances (consume, e2e).
    pub consumers: Option<u64>,
    /// Target send rate in messages per second, if paced.
    pub rate_target: Option<u64>,
    /// Messages sent before measuring.
    pub warmup: u64,
    /// Messages measured: acknowledged (produce) or received (consume, e2e).
    pub messages: u64,
    /// Payload bytes of those messages.
    pub bytes: u64,
    /// Seconds from the start of measuring to the last acknowledgement or receipt.
    pub elapsed_s: f64,
    /// `messages / elapsed_s`.
    pub msgs_per_s: f64,
    /// `bytes / elapsed_s / 10^6`.
    pub mb_per_s: f64,
    /// What `latency_ms` measures.
    pub latency_kind: Option<LatencyKind>,
    /// Primary latency percentiles (produce: send->ack; e2e: send->consume).
    pub latency_ms: Option<LatencySummary>,
    /// Producer send->ack latency during an e2e run.
    pub ack_latency_ms: Option<LatencySummary>,
    /// Sends that failed (no ack) or reads that failed.
    pub errors: u64,
    /// The first error seen, if any.
    pub first_error: Option<String>,
    /// Why reading stopped early, if it did (e.g. nothing arrived for the idle timeout), or
    /// why a txn run stopped starting transactions.
    pub incomplete: Option<String>,
    /// What only the txn workload measures (absent from the JSON of other workloads). For txn,
    /// `messages`, `bytes` and the rates count committed messages, `latency_ms` is the whole
    /// committed transaction and `errors` counts failed transactions (warm-up included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub txn: Option<TxnReport>,
    /// What only consume --group measures (absent from the JSON of other runs). There,
    /// `messages` counts distinct messages processed (each once, at its first ack).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupReport>,
}

/// The consume --group run's own figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupReport {
    /// Consumer group the members joined.
    pub group: String,
    /// Fraction of first deliveries nacked on purpose.
    pub nack_ratio: f64,
    /// Delay each nack asked for, in milliseconds.
    pub nack_delay_ms: f64,
    /// Messages the group had yet to read when the run began, when it had committed
    /// positions in the topic (it resumed from them); `None` for a fresh group.
    pub resumed_backlog: Option<u64>,
    /// Deliveries handed to the members: first deliveries, redeliveries and duplicates.
    pub deliveries: u64,
    /// First deliveries nacked.
    pub nacked: u64,
    /// Deliveries of attempt 2 or later (through the group's retry topic).
    pub redeliveries: u64,
    /// Acked deliveries of messages processed before (at least once: after a rebalance).
    pub duplicates: u64,
    /// Acks refused because the delivery was settled already (ack timeout, revoked).
    pub refused_acks: u64,
    /// `deliveries / elapsed_s`.
    pub deliveries_per_s: f64,
    /// Per member, by index (client id `ferry-bench-g<index>`).
    pub members: Vec<MemberReport>,
}

/// One group member's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberReport {
    /// Deliveries it was handed.
    pub deliveries: u64,
    /// Of those, redeliveries.
    pub redeliveries: u64,
    /// Messages it was the first to process.
    pub messages: u64,
    /// Partitions it held when the run ended.
    pub partitions: Vec<u32>,
}

/// The txn workload's own figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TxnReport {
    /// Producer group of the bench's producers.
    pub group: String,
    /// Transactions each producer instance kept open at once, at most.
    pub in_flight: u64,
    /// Simulated local work per transaction, in milliseconds.
    pub local_work_ms: f64,
    /// Fraction of transactions rolled back on purpose.
    pub rollback_ratio: f64,
    /// Transactions decided while measuring (committed + rolled back).
    pub transactions: u64,
    /// Of those, committed.
    pub committed: u64,
    /// Of those, rolled back.
    pub rolled_back: u64,
    /// `transactions / elapsed_s`.
    pub txn_per_s: f64,
    /// Half send to its acknowledgement (every transaction whose half was stored).
    pub half_latency_ms: Option<LatencySummary>,
    /// Commit request to its acknowledgement.
    pub commit_latency_ms: Option<LatencySummary>,
    /// Rollback request to its acknowledgement.
    pub rollback_latency_ms: Option<LatencySummary>,
    /// Check-backs the bench's checkers were asked (warm-up included), answered with commit.
    pub check_backs: u64,
    /// The transaction of the first check-back, to look up with `ferryctl txn show`.
    pub first_check_back_txn: Option<u64>,
}

/// Messages per second and MB per second over `elapsed` (0 for an empty span).
pub fn rates(messages: u64, bytes: u64, elapsed: Duration) -> (f64, f64) {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return (0.0, 0.0);
    }
    (messages as f64 / secs, bytes as f64 / secs / BYTES_PER_MB)
}

/// A millisecond value with three decimals (microsecond resolution).
pub fn format_ms(ms: f64) -> String {
    format!("{ms:.3}")
}

/// `p50 1.234  p90 3.456  p99 5.678  p99.9 9.100  max 12.300 ms  (n=…)`.
pub fn format_latency(summary: &LatencySummary) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {} ms  (n={})",
        format_ms(summary.p50),
        format_ms(summary.p90),
        format_ms(summary.p99),
        format_ms(summary.p99_9),
        format_ms(summary.max),
        summary.count
    )
}

impl BenchResult {
    /// The short human summary (several lines, ending in a newline).
    pub fn to_human(&self) -> String {
        let mut out = String::new();
        let _ = write!(
            out,
            "{} {}: topic={} partitions={} size={} B concurrency={}",
            self.system,
            self.workload,
            self.topic,
            self.partitions,
            self.size_bytes,
            self.concurrency
        );
        if let Some(c) = self.consumers {
            let _ = write!(out, " consumers={c}");
        }
        if let Some(r) = self.rate_target {
            let _ = write!(out, " rate={r}/s");
        }
        if self.warmup > 0 {
            let _ = write!(out, " warmup={}", self.warmup);
        }
        if let Some(txn) = &self.txn {
            txn.write_settings(&mut out);
        }
        if let Some(group) = &self.group {
            group.write_settings(&mut out);
        }
        out.push('\n');
        match &self.txn {
            Some(txn) => txn.write_counts(&mut out, self),
            None => {
                let _ = writeln!(
                    out,
                    "  messages    {} ({:.1} MB) in {:.3} s",
                    self.messages,
                    self.bytes as f64 / BYTES_PER_MB,
                    self.elapsed_s
                );
                let _ = writeln!(
                    out,
                    "  throughput  {:.0} msgs/s, {:.2} MB/s",
                    self.msgs_per_s, self.mb_per_s
                );
            }
        }
        if let (Some(kind), Some(lat)) = (self.latency_kind, &self.latency_ms) {
            let _ = writeln!(out, "  latency     {}: {}", kind.label(), format_latency(lat));
        }
        if let Some(txn) = &self.txn {
            txn.write_latencies_and_check_backs(&mut out);
        }
        if let Some(group) = &self.group {
            group.write_deliveries(&mut out);
        }
        if let Some(lat) = &self.ack_latency_ms {
            let _ = writeln!(
                out,
                "  ack latency {}: {}",
                LatencyKind::SendToAck.label(),
                format_latency(lat)
            );
        }
        if self.errors > 0 {
            let _ = writeln!(
                out,
                "  errors      {} (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        if let Some(why) = &self.incomplete {
            let _ = writeln!(out, "  INCOMPLETE  {why}");
        }
        out
    }

    /// One JSON object on one line.
    ///
    /// # Errors
    /// Only if serialisation fails, which plain data does not.
    pub fn to_json(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string(self)?)
    }
}

impl GroupReport {
    /// ` group=…[ nack_ratio=… nack_delay=… ms]` on the heading line.
    fn write_settings(&self, out: &mut String) {
        let _ = write!(out, " group={}", self.group);
        if self.nack_ratio > 0.0 {
            let _ = write!(
                out,
                " nack_ratio={} nack_delay={} ms",
                self.nack_ratio,
                format_ms(self.nack_delay_ms)
            );
        }
    }

    /// The delivery counts, then one line per member.
    fn write_deliveries(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "  deliveries  {} ({:.0}/s): {} nacked, {} redeliveries, {} duplicates",
            self.deliveries, self.deliveries_per_s, self.nacked, self.redeliveries, self.duplicates
        );
        if self.refused_acks > 0 {
            let _ = writeln!(
                out,
                "  refused acks {} (settled already: ack timeout or partition revoked)",
                self.refused_acks
            );
        }
        if let Some(backlog) = self.resumed_backlog {
            let _ = writeln!(
                out,
                "  resumed     group {} had {backlog} messages left to read (committed \
                 positions)",
                self.group
            );
        }
        for (i, m) in self.members.iter().enumerate() {
            let held = if m.partitions.is_empty() {
                "none".to_string()
            } else {
                m.partitions.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            };
            let _ = writeln!(
                out,
                "  member {i:<4} {} deliveries ({} redeliveries), {} messages; partitions {held}",
                m.deliveries, m.redeliveries, m.messages
            );
        }
    }
}

impl TxnReport {
    /// ` group=… in_flight=… local_work=… ms[ rollback_ratio=…]` on the heading line.
    fn write_settings(&self, out: &mut String) {
        let _ = write!(
            out,
            " group={} in_flight={} local_work={} ms",
            self.group,
            self.in_flight,
            format_ms(self.local_work_ms)
        );
        if self.rollback_ratio > 0.0 {
            let _ = write!(out, " rollback_ratio={}", self.rollback_ratio);
        }
    }

    /// Transactions and committed messages, with their rates.
    fn write_counts(&self, out: &mut String, result: &BenchResult) {
        let _ = writeln!(
            out,
            "  transactions {} ({} committed, {} rolled back) in {:.3} s: {:.0} txn/s",
            self.transactions, self.committed, self.rolled_back, result.elapsed_s, self.txn_per_s
        );
        let _ = writeln!(
            out,
            "  committed   {} msgs ({:.1} MB): {:.0} msgs/s, {:.2} MB/s",
            result.messages,
            result.bytes as f64 / BYTES_PER_MB,
            result.msgs_per_s,
            result.mb_per_s
        );
    }

    /// The per-step latencies and the check-back count (always shown: any is news).
    fn write_latencies_and_check_backs(&self, out: &mut String) {
        let steps = [
            ("half send", &self.half_latency_ms),
            ("commit", &self.commit_latency_ms),
            ("rollback", &self.rollback_latency_ms),
        ];
        for (label, summary) in steps {
            if let Some(lat) = summary {
                let _ = writeln!(out, "  {label:<11} {}", format_latency(lat));
            }
        }
        let _ = write!(out, "  check-backs {}", self.check_backs);
        if self.check_backs > 0 {
            let _ = write!(out, " (answered commit; a decision was lost or late");
            if let Some(txn) = self.first_check_back_txn {
                let _ = write!(out, "; first: transaction {txn}");
            }
            out.push(')');
        }
        out.push('\n');
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // In a test a failed unwrap is a failed test, which is the point.
mod tests {
    use super::*;

    fn sample() -> BenchResult {
        let mut h = LatencyHistogram::new();
        for us in 1..=1000u64 {
            h.record_us(us * 10); // 0.01 ms ..= 10 ms, uniform
        }
        BenchResult {
            system: "ferry",
            workload: "produce",
            topic: "bench".into(),
            partitions: 4,
            size_bytes: 1024,
            concurrency: 2,
            consumers: None,
            rate_target: None,
            warmup: 0,
            messages: 1000,
            bytes: 1_024_000,
            elapsed_s: 0.5,
            msgs_per_s: 2000.0,
            mb_per_s: 2.048,
            latency_kind: Some(LatencyKind::SendToAck),
            latency_ms: h.summary(),
            ack_latency_ms: None,
            errors: 0,
            first_error: None,
            incomplete: None,
            txn: None,
            group: None,
        }
    }

    fn summary(p50: f64) -> LatencySummary {
        LatencySummary {
            count: 10,
            p50,
            p90: p50 * 2.0,
            p99: p50 * 3.0,
            p99_9: p50 * 4.0,
            max: p50 * 5.0,
        }
    }

    fn txn_sample() -> BenchResult {
        let mut r = sample();
        r.workload = "txn";
        r.messages = 900;
        r.bytes = 921_600;
        r.msgs_per_s = 1800.0;
        r.mb_per_s = 1.8432;
        r.latency_kind = Some(LatencyKind::HalfToCommit);
        r.latency_ms = Some(summary(4.0));
        r.txn = Some(TxnReport {
            group: "bench".into(),
            in_flight: 64,
            local_work_ms: 0.0,
            rollback_ratio: 0.1,
            transactions: 1000,
            committed: 900,
            rolled_back: 100,
            txn_per_s: 2000.0,
            half_latency_ms: Some(summary(2.0)),
            commit_latency_ms: Some(summary(1.0)),
            rollback_latency_ms: Some(summary(0.5)),
            check_backs: 0,
            first_check_back_txn: None,
        });
        r
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut h = LatencyHistogram::new();
        assert!(h.summary().is_none());
        for us in 1..=1000u64 {
            h.record_us(us * 10);
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 1000);
        // 3 significant digits: values are exact to within 0.1%.
        assert!((s.p50 - 5.0).abs() <= 0.01, "p50 {}", s.p50);
        assert!((s.p99 - 9.9).abs() <= 0.01, "p99 {}", s.p99);
        assert!((s.p99_9 - 9.99).abs() <= 0.01, "p99.9 {}", s.p99_9);
        assert!((s.max - 10.0).abs() <= 0.01, "max {}", s.max);
    }

    #[test]
    fn out_of_range_values_are_clamped_and_durations_recorded() {
        let mut h = LatencyHistogram::new();
        h.record(Duration::ZERO);
        h.record(Duration::from_secs(10 * 3600));
        h.record(Duration::from_micros(1500));
        assert_eq!(h.len(), 3);
        let s = h.summary().unwrap();
        assert!(s.max >= 3_599_000.0 && s.max <= 3_601_000.0, "max {}", s.max);
        assert!((s.p50 - 1.5).abs() < 0.01);
    }

    #[test]
    fn histograms_merge() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        a.record_us(100);
        b.record_us(200);
        b.record_us(300);
        a.merge(&b).unwrap();
        assert_eq!(a.len(), 3);
        assert!((a.summary().unwrap().max - 0.3).abs() < 0.001);
    }

    #[test]
    fn rates_are_per_second_in_decimal_megabytes() {
        assert_eq!(rates(1000, 2_000_000, Duration::from_millis(500)), (2000.0, 4.0));
        assert_eq!(rates(5, 5, Duration::ZERO), (0.0, 0.0));
    }

    #[test]
    fn milliseconds_have_three_decimals() {
        assert_eq!(format_ms(1.5), "1.500");
        assert_eq!(format_ms(0.0004), "0.000");
        assert_eq!(format_ms(12.3456), "12.346");
        let s = LatencySummary { count: 9, p50: 1.0, p90: 2.0, p99: 2.5, p99_9: 3.25, max: 4.0 };
        assert_eq!(
            format_latency(&s),
            "p50 1.000  p90 2.000  p99 2.500  p99.9 3.250  max 4.000 ms  (n=9)"
        );
    }

    #[test]
    fn human_summary_has_throughput_and_latency() {
        let text = sample().to_human();
        assert!(text.starts_with("ferry produce: topic=bench partitions=4 size=1024 B"), "{text}");
        assert!(text.contains("messages    1000 (1.0 MB) in 0.500 s"), "{text}");
        assert!(text.contains("throughput  2000 msgs/s, 2.05 MB/s"), "{text}");
        // HDR reports the highest value equivalent to a bucket: 5000 µs shows as 5.003 ms.
        assert!(
            text.contains(
                "latency     send->ack: p50 5.003  p90 9.007  p99 9.903  p99.9 9.991  max 10.007 ms  \
                 (n=1000)"
            ),
            "{text}"
        );
        assert!(!text.contains("errors"));
        let mut failed = sample();
        failed.errors = 2;
        failed.first_error = Some("boom".into());
        failed.incomplete = Some("idle".into());
        let text = failed.to_human();
        assert!(text.contains("errors      2 (first: boom)"), "{text}");
        assert!(text.contains("INCOMPLETE  idle"), "{text}");
    }

    #[test]
    fn json_has_every_field() {
        let json = sample().to_json().unwrap();
        assert!(!json.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["system"], "ferry");
        assert_eq!(v["workload"], "produce");
        assert_eq!(v["messages"], 1000);
        assert_eq!(v["msgs_per_s"], 2000.0);
        assert_eq!(v["latency_kind"], "send_to_ack");
        assert_eq!(v["latency_ms"]["count"], 1000);
        assert!(v["latency_ms"]["p99_9"].as_f64().unwrap() > 9.9);
        assert!(v["ack_latency_ms"].is_null());
        assert!(v["rate_target"].is_null());
        assert!(v["latency_ms"]["p90"].as_f64().unwrap() > 8.9);
        // Other workloads' JSON is unchanged by the txn fields.
        assert!(v.get("txn").is_none());
    }

    #[test]
    fn txn_human_summary_has_transactions_steps_and_check_backs() {
        let text = txn_sample().to_human();
        assert!(
            text.starts_with(
                "ferry txn: topic=bench partitions=4 size=1024 B concurrency=2 group=bench \
                 in_flight=64 local_work=0.000 ms rollback_ratio=0.1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  transactions 1000 (900 committed, 100 rolled back) in 0.500 s: 2000 txn/s\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  committed   900 msgs (0.9 MB): 1800 msgs/s, 1.84 MB/s\n"),
            "{text}"
        );
        assert!(!text.contains("  messages"), "{text}");
        assert!(
            text.contains(
                "  latency     half->commit: p50 4.000  p90 8.000  p99 12.000  p99.9 16.000  \
                 max 20.000 ms  (n=10)\n"
            ),
            "{text}"
        );
        assert!(text.contains("  half send   p50 2.000  p90 4.000"), "{text}");
        assert!(text.contains("  commit      p50 1.000  p90 2.000"), "{text}");
        assert!(text.contains("  rollback    p50 0.500  p90 1.000"), "{text}");
        assert!(text.ends_with("  check-backs 0\n"), "{text}");

        let mut quiet = txn_sample();
        if let Some(t) = quiet.txn.as_mut() {
            t.rollback_ratio = 0.0;
            t.rollback_latency_ms = None;
            t.check_backs = 3;
            t.first_check_back_txn = Some(42);
        }
        quiet.errors = 1;
        quiet.first_error = Some("commit: boom".into());
        let text = quiet.to_human();
        assert!(!text.contains("rollback_ratio") && !text.contains("  rollback "), "{text}");
        assert!(
            text.contains(
                "  check-backs 3 (answered commit; a decision was lost or late; first: \
                 transaction 42)\n"
            ),
            "{text}"
        );
        assert!(text.contains("errors      1 (first: commit: boom)"), "{text}");
    }

    fn group_sample() -> BenchResult {
        let mut r = sample();
        r.workload = "consume";
        r.concurrency = 2;
        r.consumers = Some(2);
        r.latency_kind = None;
        r.latency_ms = None;
        r.group = Some(GroupReport {
            group: "g1".into(),
            nack_ratio: 0.1,
            nack_delay_ms: 100.0,
            resumed_backlog: None,
            deliveries: 1100,
            nacked: 100,
            redeliveries: 100,
            duplicates: 0,
            refused_acks: 0,
            deliveries_per_s: 2200.0,
            members: vec![
                MemberReport {
                    deliveries: 700,
                    redeliveries: 60,
                    messages: 640,
                    partitions: vec![0, 2],
                },
                MemberReport {
                    deliveries: 400,
                    redeliveries: 40,
                    messages: 360,
                    partitions: vec![],
                },
            ],
        });
        r
    }

    #[test]
    fn group_human_summary_has_deliveries_per_member() {
        let text = group_sample().to_human();
        assert!(
            text.starts_with(
                "ferry consume: topic=bench partitions=4 size=1024 B concurrency=2 consumers=2 \
                 group=g1 nack_ratio=0.1 nack_delay=100.000 ms\n"
            ),
            "{text}"
        );
        assert!(text.contains("  throughput  2000 msgs/s, 2.05 MB/s\n"), "{text}");
        assert!(
            text.contains(
                "  deliveries  1100 (2200/s): 100 nacked, 100 redeliveries, 0 duplicates\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  member 0    700 deliveries (60 redeliveries), 640 messages; partitions 0,2\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(
                "  member 1    400 deliveries (40 redeliveries), 360 messages; partitions none\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains("latency") && !text.contains("refused") && !text.contains("resumed")
        );

        let mut plain = group_sample();
        if let Some(g) = plain.group.as_mut() {
            g.nack_ratio = 0.0;
            g.refused_acks = 3;
            g.resumed_backlog = Some(5000);
        }
        let text = plain.to_human();
        assert!(text.lines().next().unwrap().ends_with(" group=g1"), "{text}");
        assert!(text.contains("  refused acks 3 (settled already"), "{text}");
        assert!(text.contains("  resumed     group g1 had 5000 messages left to read"), "{text}");
    }

    #[test]
    fn group_json_nests_the_group_figures() {
        let v: serde_json::Value =
            serde_json::from_str(&group_sample().to_json().unwrap()).unwrap();
        assert_eq!(v["workload"], "consume");
        assert_eq!(v["group"]["group"], "g1");
        assert_eq!(v["group"]["nack_ratio"], 0.1);
        assert_eq!(v["group"]["nack_delay_ms"], 100.0);
        assert!(v["group"]["resumed_backlog"].is_null());
        assert_eq!(v["group"]["deliveries"], 1100);
        assert_eq!(v["group"]["redeliveries"], 100);
        assert_eq!(v["group"]["members"][0]["messages"], 640);
        assert_eq!(v["group"]["members"][0]["partitions"], serde_json::json!([0, 2]));
        assert_eq!(v["group"]["members"][1]["deliveries"], 400);
        let plain: serde_json::Value = serde_json::from_str(&sample().to_json().unwrap()).unwrap();
        assert!(plain.get("group").is_none());
    }

    #[test]
    fn txn_json_nests_the_txn_figures() {
        let v: serde_json::Value = serde_json::from_str(&txn_sample().to_json().unwrap()).unwrap();
        assert_eq!(v["workload"], "txn");
        assert_eq!(v["latency_kind"], "half_to_commit");
        assert_eq!(v["messages"], 900);
        assert_eq!(v["txn"]["transactions"], 1000);
        assert_eq!(v["txn"]["committed"], 900);
        assert_eq!(v["txn"]["rolled_back"], 100);
        assert_eq!(v["txn"]["txn_per_s"], 2000.0);
        assert_eq!(v["txn"]["group"], "bench");
        assert_eq!(v["txn"]["in_flight"], 64);
        assert_eq!(v["txn"]["half_latency_ms"]["p90"], 4.0);
        assert_eq!(v["txn"]["commit_latency_ms"]["p99_9"], 4.0);
        assert_eq!(v["txn"]["rollback_latency_ms"]["max"], 2.5);
        assert_eq!(v["txn"]["check_backs"], 0);
        assert!(v["txn"]["first_check_back_txn"].is_null());
    }
}
