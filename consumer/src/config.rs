//! Consumer settings with their defaults, and the checks `Consumer::connect` runs on them.

use std::time::Duration;

use ferry_protocol::{Offset, PartitionIndex};

use crate::error::ConsumerError;

/// Default soft cap on the bytes one fetch returns.
pub const FETCH_MAX_BYTES_DEFAULT: u32 = 1024 * 1024;
/// Default long-poll time of a fetch with nothing new.
pub const FETCH_MAX_WAIT_DEFAULT: Duration = Duration::from_millis(500);
/// Longest long-poll a consumer asks for: the broker caps parked fetches at its
/// `fetch_wait_max_ms` (default 30 s).
pub const FETCH_MAX_WAIT_LIMIT: Duration = Duration::from_secs(30);
/// Default bound on messages fetched but not yet taken from the stream.
pub const BUFFER_MESSAGES_MAX_DEFAULT: usize = 10_000;
/// Default time allowed for one request attempt, on top of the long-poll time.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default time a request is retried before the cluster is reported unreachable.
pub const RETRY_DEADLINE_DEFAULT: Duration = Duration::from_secs(30);

/// The cluster client a consumer reads through: handshakes as a consumer named `client_id`,
/// `request_timeout` per attempt, retries until `retry_deadline`.
pub(crate) fn cluster_client(
    bootstrap: &str,
    client_id: &str,
    request_timeout: Duration,
    retry_deadline: Duration,
) -> Result<ferry_protocol::ClusterClient, ConsumerError> {
    use ferry_protocol::{ClientKind, ClusterClient, ClusterOptions, ConnectOptions};
    let mut connect = ConnectOptions::new(client_id.to_string(), ClientKind::Consumer);
    connect.request_timeout = request_timeout;
    connect.connect_timeout = connect.connect_timeout.min(request_timeout);
    let mut options = ClusterOptions::new(bootstrap, connect);
    options.retry.deadline = retry_deadline;
    ClusterClient::new(options).map_err(|e| ConsumerError::Config(e.to_string()))
}

/// Where reading starts in each partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first offset still stored (the partition's log start).
    Earliest,
    /// The partition's high watermark at connect time: only messages produced afterwards.
    Latest,
    /// This offset in every partition read; it must lie between the log start and the high
    /// watermark (inclusive) when the consumer connects.
    Offset(Offset),
}

/// What a [`crate::Consumer`] reads and how it bounds its memory.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Brokers to start from, `host:port[,host:port...]`; any member of the cluster will do.
    pub bootstrap: String,
    /// Identity sent in the handshake (logs and metrics on the broker).
    pub client_id: String,
    /// The topic to read.
    pub topic: String,
    /// Partitions to read; `None` for every partition of the topic.
    pub partitions: Option<Vec<PartitionIndex>>,
    /// Where to start in each partition. Default [`StartFrom::Earliest`].
    pub start: StartFrom,
    /// Soft cap on the bytes one fetch returns (a whole batch is returned even if larger).
    pub fetch_max_bytes: u32,
    /// How long a fetch waits at the broker when there is nothing new (long-poll), at most
    /// [`FETCH_MAX_WAIT_LIMIT`].
    pub fetch_max_wait: Duration,
    /// Messages fetched ahead of the reader; fetching pauses while the buffer is full.
    pub buffer_messages_max: usize,
    /// Time allowed for one request attempt beyond `fetch_max_wait`.
    pub request_timeout: Duration,
    /// How long failing requests are retried (leader changes, lost connections) before the
    /// stream yields an unreachable-cluster error and ends. Also bounds `connect`.
    pub retry_deadline: Duration,
}

impl ConsumerConfig {
    /// Defaults for reading `topic` from the cluster at `bootstrap`, every partition from the
    /// earliest offset.
    pub fn new(bootstrap: impl Into<String>, topic: impl Into<String>) -> Self {
        ConsumerConfig {
            bootstrap: bootstrap.into(),
            client_id: "ferry-consumer".into(),
            topic: topic.into(),
            partitions: None,
            start: StartFrom::Earliest,
            fetch_max_bytes: FETCH_MAX_BYTES_DEFAULT,
            fetch_max_wait: FETCH_MAX_WAIT_DEFAULT,
            buffer_messages_max: BUFFER_MESSAGES_MAX_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            retry_deadline: RETRY_DEADLINE_DEFAULT,
        }
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
        if self.topic.is_empty() {
            return fail("topic is empty".into());
        }
        if self.partitions.as_ref().is_some_and(Vec::is_empty) {
            return fail("partitions is an empty list; use None for every partition".into());
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
        if self.buffer_messages_max == 0 {
            return fail("buffer_messages_max is zero".into());
        }
        if self.request_timeout.is_zero() {
            return fail("request_timeout is zero".into());
        }
        if self.retry_deadline.is_zero() {
            return fail("retry_deadline is zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = ConsumerConfig::new("127.0.0.1:7400", "t");
        c.validate().unwrap();
        assert_eq!(c.fetch_max_bytes, 1024 * 1024);
        assert_eq!(c.fetch_max_wait, Duration::from_millis(500));
        assert_eq!(c.buffer_messages_max, 10_000);
        assert_eq!(c.start, StartFrom::Earliest);
    }

    #[test]
    fn bad_values_are_refused() {
        let base = ConsumerConfig::new("127.0.0.1:7400", "t");
        let cases: Vec<fn(&mut ConsumerConfig)> = vec![
            |c| c.bootstrap = String::new(),
            |c| c.bootstrap = "host".into(),
            |c| c.topic = String::new(),
            |c| c.partitions = Some(vec![]),
            |c| c.fetch_max_bytes = 0,
            |c| c.fetch_max_wait = Duration::from_secs(31),
            |c| c.buffer_messages_max = 0,
            |c| c.request_timeout = Duration::ZERO,
            |c| c.retry_deadline = Duration::ZERO,
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut c = base.clone();
            change(&mut c);
            assert!(matches!(c.validate(), Err(ConsumerError::Config(_))), "case {i}");
        }
    }
}
