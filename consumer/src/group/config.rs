//! Group consumer settings, their defaults and checks.

use std::time::Duration;

use crate::config::{
    StartFrom, FETCH_MAX_BYTES_DEFAULT, FETCH_MAX_WAIT_DEFAULT, FETCH_MAX_WAIT_LIMIT,
};
use crate::error::ConsumerError;

/// Default redelivery schedule: the delay before attempt `n + 1` after attempt `n` failed is
/// entry `n - 1` (RocketMQ's retry levels); the last entry repeats.
pub const RETRY_SCHEDULE_DEFAULT: [Duration; 16] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(2 * 60),
    Duration::from_secs(3 * 60),
    Duration::from_secs(4 * 60),
    Duration::from_secs(5 * 60),
    Duration::from_secs(6 * 60),
    Duration::from_secs(7 * 60),
    Duration::from_secs(8 * 60),
    Duration::from_secs(9 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(20 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(60 * 60),
    Duration::from_secs(2 * 60 * 60),
];

/// Default number of delivery attempts before a message goes to the dead-letter topic.
pub const MAX_ATTEMPTS_DEFAULT: u32 = 16;
/// Default bound on deliveries handed out (or queued for the reader) and not yet settled.
pub const MAX_IN_FLIGHT_DEFAULT: usize = 1000;
/// Default time a delivery may stay unsettled before it counts as failed.
pub const ACK_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5 * 60);
/// Default session timeout: the leader drops a member silent for this long.
pub const SESSION_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default heartbeat interval.
pub const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Default interval between offset commits.
pub const COMMIT_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
/// Default time a revoked partition (or `close`) waits for in-flight deliveries to settle.
pub const DRAIN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// What a [`crate::GroupConsumer`] reads, as which group, and how it retries.
///
/// Every member of a group should use the same retry settings (`retry_schedule`,
/// `max_attempts`, `ordered`): they are applied by whichever member holds the partition.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Brokers to start from, `host:port[,host:port...]`.
    pub bootstrap: String,
    /// Identity sent in the handshake and shown by `ferryctl group describe`.
    pub client_id: String,
    /// Consumer group: 1..=100 chars of `[A-Za-z0-9_-]`.
    pub group: String,
    /// The topic to read.
    pub topic: String,
    /// Where to start in a partition the group never committed in. Default `Earliest`.
    pub start: StartFrom,
    /// Deliveries handed out or queued and not yet settled, over all partitions; fetching
    /// pauses at this bound (back-pressure).
    pub max_in_flight: usize,
    /// A delivery not settled this long after it was handed out counts as nacked
    /// ("ack timeout"); a later `ack` of it does nothing.
    pub ack_timeout: Duration,
    /// Delays between attempts; see [`RETRY_SCHEDULE_DEFAULT`].
    pub retry_schedule: Vec<Duration>,
    /// Attempts (first delivery included) before a failing message is dead-lettered.
    pub max_attempts: u32,
    /// Ordered mode: one delivery at a time per partition, and a failed message is retried
    /// in place (blocking its partition, and only it) instead of through the retry topic.
    pub ordered: bool,
    /// The leader drops this member when no heartbeat arrives for this long (1 s ..= 300 s).
    pub session_timeout: Duration,
    /// Time between heartbeats (less than a third of `session_timeout`).
    pub heartbeat_interval: Duration,
    /// Time between offset commits.
    pub commit_interval: Duration,
    /// How long a revoked partition, or `close`, waits for in-flight deliveries before giving
    /// them up (they are then redelivered from the last commit).
    pub drain_timeout: Duration,
    /// Soft cap on the bytes one fetch returns.
    pub fetch_max_bytes: u32,
    /// Long-poll time of a fetch with nothing new.
    pub fetch_max_wait: Duration,
    /// Time allowed for one request attempt (beyond the long-poll time for fetches).
    pub request_timeout: Duration,
    /// How long failing requests are retried before the stream yields an error.
    pub retry_deadline: Duration,
}

impl GroupConfig {
    /// Defaults for reading `topic` as `group` from the cluster at `bootstrap`.
    pub fn new(
        bootstrap: impl Into<String>,
        group: impl Into<String>,
        topic: impl Into<String>,
    ) -> Self {
        GroupConfig {
            bootstrap: bootstrap.into(),
            client_id: "ferry-consumer".into(),
            group: group.into(),
            topic: topic.into(),
            start: StartFrom::Earliest,
            max_in_flight: MAX_IN_FLIGHT_DEFAULT,
            ack_timeout: ACK_TIMEOUT_DEFAULT,
            retry_schedule: RETRY_SCHEDULE_DEFAULT.to_vec(),
            max_attempts: MAX_ATTEMPTS_DEFAULT,
            ordered: false,
            session_timeout: SESSION_TIMEOUT_DEFAULT,
            heartbeat_interval: HEARTBEAT_INTERVAL_DEFAULT,
            commit_interval: COMMIT_INTERVAL_DEFAULT,
            drain_timeout: DRAIN_TIMEOUT_DEFAULT,
            fetch_max_bytes: FETCH_MAX_BYTES_DEFAULT,
            fetch_max_wait: FETCH_MAX_WAIT_DEFAULT,
            request_timeout: crate::config::REQUEST_TIMEOUT_DEFAULT,
            retry_deadline: crate::config::RETRY_DEADLINE_DEFAULT,
        }
    }

    /// The delay before the attempt after `attempt` (1-based) failed.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let i = (attempt.max(1) - 1) as usize;
        self.retry_schedule.get(i).or(self.retry_schedule.last()).copied().unwrap_or_default()
    }

    /// Checks every field; the error names the field and the allowed range.
    ///
    /// # Errors
    /// [`ConsumerError::Config`] for the first field out of range.
    pub fn validate(&self) -> Result<(), ConsumerError> {
        let fail = |detail: String| Err(ConsumerError::Config(detail));
        if let Err(detail) = ferry_protocol::cluster::parse_bootstrap(&self.bootstrap) {
            return fail(detail);
        }
        if self.client_id.is_empty() {
            return fail("client_id is empty".into());
        }
        if let Err(detail) = ferry_protocol::group::validate_group_name(&self.group) {
            return fail(detail);
        }
        if self.topic.is_empty() || self.topic.starts_with("__") {
            return fail(format!("topic {:?} is empty or reserved (\"__\" prefix)", self.topic));
        }
        let retry = ferry_protocol::group::retry_topic(&self.group, &self.topic);
        if retry.len() > 249 {
            return fail(format!("group and topic names too long together: {retry} > 249 bytes"));
        }
        if self.max_in_flight == 0 || self.max_in_flight > 1_000_000 {
            return fail(format!("max_in_flight is {}; 1..=1000000", self.max_in_flight));
        }
        if self.ack_timeout < Duration::from_millis(100) {
            return fail(format!("ack_timeout is {:?}; at least 100ms", self.ack_timeout));
        }
        if self.retry_schedule.is_empty() {
            return fail("retry_schedule is empty".into());
        }
        if self.max_attempts == 0 {
            return fail("max_attempts is zero".into());
        }
        if self.session_timeout < Duration::from_secs(1)
            || self.session_timeout > Duration::from_secs(300)
        {
            return fail(format!("session_timeout is {:?}; 1s..=300s", self.session_timeout));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 3 > self.session_timeout {
            return fail(format!(
                "heartbeat_interval is {:?}; above zero and at most a third of session_timeout",
                self.heartbeat_interval
            ));
        }
        if self.commit_interval.is_zero() {
            return fail("commit_interval is zero".into());
        }
        if self.fetch_max_bytes == 0 {
            return fail("fetch_max_bytes is zero".into());
        }
        if self.fetch_max_wait > FETCH_MAX_WAIT_LIMIT {
            return fail(format!(
                "fetch_max_wait is {:?}; at most {FETCH_MAX_WAIT_LIMIT:?}",
                self.fetch_max_wait
            ));
        }
        if self.request_timeout.is_zero() || self.retry_deadline.is_zero() {
            return fail("request_timeout and retry_deadline must be above zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_schedule_is_rocketmqs() {
        let c = GroupConfig::new("127.0.0.1:7400", "g", "t");
        c.validate().unwrap();
        assert_eq!(c.delay_after(1), Duration::from_secs(10));
        assert_eq!(c.delay_after(2), Duration::from_secs(30));
        assert_eq!(c.delay_after(15), Duration::from_secs(3600));
        assert_eq!(c.delay_after(16), Duration::from_secs(7200));
        assert_eq!(c.delay_after(40), Duration::from_secs(7200), "the last entry repeats");
        assert_eq!(c.max_attempts, 16);
    }

    #[test]
    fn bad_values_are_refused() {
        let base = GroupConfig::new("127.0.0.1:7400", "g", "t");
        let cases: Vec<fn(&mut GroupConfig)> = vec![
            |c| c.group = "a.b".into(),
            |c| c.group = String::new(),
            |c| c.topic = "__dlq.g".into(),
            |c| c.max_in_flight = 0,
            |c| c.retry_schedule.clear(),
            |c| c.max_attempts = 0,
            |c| c.session_timeout = Duration::from_millis(500),
            |c| c.heartbeat_interval = Duration::from_secs(5),
            |c| c.ack_timeout = Duration::ZERO,
            |c| c.topic = "t".repeat(240),
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut c = base.clone();
            change(&mut c);
            assert!(matches!(c.validate(), Err(ConsumerError::Config(_))), "case {i}");
        }
    }
}
