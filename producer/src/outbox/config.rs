//! Relay settings with their defaults and bounds, and the checks `Relay::new` runs on them.

use std::time::Duration;

use ferry_protocol::record::DEDUP_ID_BYTES_MAX;

use super::db::TableName;
use super::error::{OutboxError, Result};

/// Default rows per claim.
pub const BATCH_SIZE_DEFAULT: usize = 1000;
/// Most rows per claim: a claim is held in memory and published as one round.
pub const BATCH_SIZE_MAX: usize = 10_000;
/// Default lease on claimed rows. The relay renews it while it publishes, so it only needs to
/// outlast a stall of the relay itself (a crashed relay's rows wait this long).
pub const LEASE_DEFAULT: Duration = Duration::from_secs(30);
/// Shortest lease: renewals run every third of it.
pub const LEASE_MIN: Duration = Duration::from_secs(1);
/// Default wait between polls of an idle table.
pub const POLL_INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
/// Default time published rows are kept before cleanup deletes them.
pub const RETENTION_DEFAULT: Duration = Duration::from_secs(24 * 3600);
/// Default time between cleanup passes.
pub const CLEANUP_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
/// Rows deleted per cleanup statement; a pass repeats it, between rounds, until fewer go.
pub const CLEANUP_CHUNK_ROWS: usize = 5000;
/// Default time between refreshes of the pending gauges.
pub const METRICS_INTERVAL_DEFAULT: Duration = Duration::from_secs(5);
/// Default time `run` keeps waiting for acknowledgements after it was cancelled.
pub const SHUTDOWN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Longest relay id (the `lease_owner` column is `VARCHAR(255)` in MySQL).
pub const RELAY_ID_CHARS_MAX: usize = 255;
/// Characters of a row id in a dedup id (`i64::MAX` has 19 digits; one more for the sign).
const ROW_ID_CHARS_MAX: usize = 20;
/// Longest `dedup_source`, so that `<source>:<row id>` fits the broker's dedup id limit.
pub const DEDUP_SOURCE_BYTES_MAX: usize = DEDUP_ID_BYTES_MAX - 1 - ROW_ID_CHARS_MAX;

/// How a [`super::Relay`] claims, publishes and cleans up. Build with [`RelayConfig::new`] and
/// change the fields you need; `Relay::new` validates it.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The outbox table.
    pub table: TableName,
    /// This relay's name in `lease_owner`. Must be unique among running relays of the table:
    /// the per-key order relies on it. Default: `<hostname>-<pid>-<random>`.
    pub relay_id: String,
    /// Rows claimed at once (1 to 10 000).
    pub batch_size: usize,
    /// How long claimed rows stay leased without a renewal (at least 1 s).
    pub lease: Duration,
    /// Wait between claims when the table is idle; PostgreSQL's `LISTEN` wakes the relay
    /// earlier when rows arrive. A full claim loops at once.
    pub poll_interval: Duration,
    /// Published rows older than this are deleted.
    pub retention: Duration,
    /// Time between cleanup passes.
    pub cleanup_interval: Duration,
    /// The `<source>` of `ferry-dedup-id: <source>:<row id>`. Default: the table name. Give
    /// each outbox table feeding the same topic its own source, and never reuse ids under one
    /// source (do not TRUNCATE the table or reset its sequence): the broker drops a record
    /// whose dedup id it saw within its dedup window.
    pub dedup_source: Option<String>,
    /// Rows of one key sent before the first of them is acknowledged. 1 (the default) keeps
    /// the order per key even when a publish fails; more raises the rate of a hot key but a
    /// failed row may then land after later rows of its key (see `outbox::order`).
    pub in_flight_per_key: usize,
    /// Time between refreshes of `ferry_outbox_pending_rows` and the oldest-age gauge.
    pub metrics_interval: Duration,
    /// After cancellation, how long `run` waits for acknowledgements already due before it
    /// returns and leaves the unacknowledged rows to their lease (they are published again,
    /// with the same dedup id, once it runs out).
    pub shutdown_timeout: Duration,
    /// Where the relay registers its metrics; `None`: a registry of its own
    /// (`Relay::registry`). One relay per registry.
    pub registry: Option<prometheus::Registry>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig::new()
    }
}

impl RelayConfig {
    /// Defaults for the table `ferry_outbox`.
    pub fn new() -> Self {
        RelayConfig {
            table: TableName::default(),
            relay_id: format!("{}-{:04x}", host_pid_relay_id(), fastrand::u16(..)),
            batch_size: BATCH_SIZE_DEFAULT,
            lease: LEASE_DEFAULT,
            poll_interval: POLL_INTERVAL_DEFAULT,
            retention: RETENTION_DEFAULT,
            cleanup_interval: CLEANUP_INTERVAL_DEFAULT,
            dedup_source: None,
            in_flight_per_key: 1,
            metrics_interval: METRICS_INTERVAL_DEFAULT,
            shutdown_timeout: SHUTDOWN_TIMEOUT_DEFAULT,
            registry: None,
        }
    }

    /// Defaults for the table `table`.
    pub fn for_table(table: TableName) -> Self {
        RelayConfig { table, ..RelayConfig::new() }
    }

    /// The dedup source in use: `dedup_source`, else the table name.
    pub fn effective_dedup_source(&self) -> &str {
        self.dedup_source.as_deref().unwrap_or(self.table.as_str())
    }

    /// Checks every field; the error names the field and the allowed range.
    ///
    /// # Errors
    /// [`OutboxError::Config`] for the first field out of range.
    pub fn validate(&self) -> Result<()> {
        let fail = |detail: String| Err(OutboxError::Config(detail));
        let id = &self.relay_id;
        if id.trim().is_empty() || id.chars().count() > RELAY_ID_CHARS_MAX {
            return fail(format!("relay_id must have 1 to {RELAY_ID_CHARS_MAX} characters"));
        }
        if !(1..=BATCH_SIZE_MAX).contains(&self.batch_size) {
            return fail(format!(
                "batch_size is {}; allowed 1..={BATCH_SIZE_MAX}",
                self.batch_size
            ));
        }
        if self.lease < LEASE_MIN {
            return fail(format!("lease is {:?}; at least {LEASE_MIN:?}", self.lease));
        }
        for (name, d) in [
            ("poll_interval", self.poll_interval),
            ("retention", self.retention),
            ("cleanup_interval", self.cleanup_interval),
            ("metrics_interval", self.metrics_interval),
        ] {
            if d.is_zero() {
                return fail(format!("{name} is zero"));
            }
        }
        let source = self.effective_dedup_source();
        if source.is_empty() || source.len() > DEDUP_SOURCE_BYTES_MAX {
            return fail(format!("dedup_source must have 1 to {DEDUP_SOURCE_BYTES_MAX} bytes"));
        }
        if source.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return fail("dedup_source has whitespace or control characters".into());
        }
        if !(1..=self.batch_size).contains(&self.in_flight_per_key) {
            return fail(format!(
                "in_flight_per_key is {}; allowed 1..=batch_size ({})",
                self.in_flight_per_key, self.batch_size
            ));
        }
        Ok(())
    }
}

/// `<hostname>-<pid>`: `ferryctl outbox relay`'s default relay id (one relay per process).
pub fn host_pid_relay_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".to_string());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = RelayConfig::new();
        c.validate().unwrap();
        assert_eq!(c.effective_dedup_source(), "ferry_outbox");
        assert_eq!((c.batch_size, c.lease, c.in_flight_per_key), (1000, LEASE_DEFAULT, 1));
        assert!(c.relay_id.starts_with(&host_pid_relay_id()));
    }

    #[test]
    fn bad_values_are_refused() {
        let cases: Vec<fn(&mut RelayConfig)> = vec![
            |c| c.relay_id = " ".into(),
            |c| c.relay_id = "r".repeat(256),
            |c| c.batch_size = 0,
            |c| c.batch_size = BATCH_SIZE_MAX + 1,
            |c| c.lease = Duration::from_millis(999),
            |c| c.poll_interval = Duration::ZERO,
            |c| c.retention = Duration::ZERO,
            |c| c.dedup_source = Some(String::new()),
            |c| c.dedup_source = Some("a b".into()),
            |c| c.dedup_source = Some("s".repeat(DEDUP_SOURCE_BYTES_MAX + 1)),
            |c| c.in_flight_per_key = 0,
            |c| c.in_flight_per_key = c.batch_size + 1,
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut c = RelayConfig::new();
            change(&mut c);
            assert!(matches!(c.validate(), Err(OutboxError::Config(_))), "case {i}");
        }
        let mut c = RelayConfig::new();
        c.dedup_source = Some("s".repeat(DEDUP_SOURCE_BYTES_MAX));
        c.validate().unwrap();
    }
}
