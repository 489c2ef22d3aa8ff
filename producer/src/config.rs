//! Producer settings with their defaults, and the checks `Producer::connect` runs on them.

use std::time::Duration;

use ferry_protocol::frame::FRAME_BYTES_MAX_DEFAULT;
use ferry_protocol::record::BATCH_HEADER_BYTES;

use crate::error::ProducerError;

/// Default time a batch waits for more records before it is sent.
pub const LINGER_DEFAULT: Duration = Duration::from_millis(5);
/// Default size at which a batch is closed and sent, in bytes. With one request in flight per
/// partition, the batch size bounds a partition's throughput per commit round trip: on a
/// 3-node cluster 1 MiB batches gave ~130k msgs/s of 1 KiB against ~105k with 256 KiB
/// (`ferry-bench produce --partitions 4 --concurrency 4`). Under light load `linger` sends
/// batches long before they fill, so latency does not change.
pub const BATCH_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
/// Default bound on bytes sent but not yet acknowledged (back-pressure).
pub const BUFFER_BYTES_MAX_DEFAULT: usize = 64 * 1024 * 1024;
/// Default largest single message (key, headers and value encoded), in bytes.
pub const MESSAGE_BYTES_MAX_DEFAULT: usize = 4 * 1024 * 1024;
/// Default time allowed for one request attempt.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);
/// Default time a request is retried before the cluster is reported unreachable.
pub const RETRY_DEADLINE_DEFAULT: Duration = Duration::from_secs(30);

/// Room left in a frame for the request header and the produce request's own fields (topic
/// name up to 249 bytes, partition, length prefix).
const FRAME_OVERHEAD_BYTES: usize = 4 * 1024;

/// Largest batch the wire can carry in one default-sized frame.
pub const BATCH_BYTES_LIMIT: usize = FRAME_BYTES_MAX_DEFAULT - FRAME_OVERHEAD_BYTES;

/// How a [`crate::Producer`] connects, batches and bounds its memory.
///
/// Build it with [`ProducerConfig::new`] and change the fields you need; `Producer::connect`
/// validates it.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Brokers to start from, `host:port[,host:port...]`; any member of the cluster will do.
    pub bootstrap: String,
    /// Identity sent in the handshake (logs and metrics on the broker).
    pub client_id: String,
    /// How long a batch waits for more records after its first one before it is sent.
    pub linger: Duration,
    /// A batch is closed and sent once it reaches this many bytes. A single message larger
    /// than this travels alone in its own batch (up to `message_bytes_max`).
    pub batch_bytes_max: usize,
    /// Bound on the bytes of messages accepted by `send` but not yet acknowledged or failed;
    /// `send` waits while it is reached (back-pressure). A message larger than the whole
    /// buffer waits until the buffer is empty and then takes all of it. Below
    /// `batch_bytes_max`, batches go out by `linger` before they are full.
    pub buffer_bytes_max: usize,
    /// Largest message accepted by `send` (key, headers and value as encoded in the batch, plus
    /// the batch header). Keep it at or below the broker's `produce_batch_bytes_max`
    /// (default 8 MiB).
    pub message_bytes_max: usize,
    /// Time allowed for one request attempt.
    pub request_timeout: Duration,
    /// How long a failing request is retried (leader changes, lost connections) before the
    /// messages in it fail with an unreachable-cluster error. Also bounds `connect`.
    pub retry_deadline: Duration,
}

impl ProducerConfig {
    /// Defaults for the cluster at `bootstrap` (`host:port[,host:port...]`).
    pub fn new(bootstrap: impl Into<String>) -> Self {
        ProducerConfig {
            bootstrap: bootstrap.into(),
            client_id: "ferry-producer".into(),
            linger: LINGER_DEFAULT,
            batch_bytes_max: BATCH_BYTES_MAX_DEFAULT,
            buffer_bytes_max: BUFFER_BYTES_MAX_DEFAULT,
            message_bytes_max: MESSAGE_BYTES_MAX_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            retry_deadline: RETRY_DEADLINE_DEFAULT,
        }
    }

    /// Checks every field; the error names the field and the allowed range.
    ///
    /// # Errors
    /// [`ProducerError::Config`] for the first field out of range.
    pub fn validate(&self) -> Result<(), ProducerError> {
        let fail = |detail: String| Err(ProducerError::Config(detail));
        if let Err(detail) = ferry_protocol::cluster::parse_bootstrap(&self.bootstrap) {
            return fail(detail);
        }
        if self.client_id.is_empty() {
            return fail("client_id is empty".into());
        }
        let batch_min = BATCH_HEADER_BYTES + 64;
        if !(batch_min..=BATCH_BYTES_LIMIT).contains(&self.batch_bytes_max) {
            return fail(format!(
                "batch_bytes_max is {}; allowed {batch_min}..={BATCH_BYTES_LIMIT}",
                self.batch_bytes_max
            ));
        }
        // Permits are taken per message as a u32 from the buffer semaphore.
        let message_limit = BATCH_BYTES_LIMIT.min(u32::MAX as usize);
        if !(batch_min..=message_limit).contains(&self.message_bytes_max) {
            return fail(format!(
                "message_bytes_max is {}; allowed {batch_min}..={message_limit}",
                self.message_bytes_max
            ));
        }
        let buffer_limit = tokio::sync::Semaphore::MAX_PERMITS;
        if !(1..=buffer_limit).contains(&self.buffer_bytes_max) {
            return fail(format!(
                "buffer_bytes_max is {}; allowed 1..={buffer_limit}",
                self.buffer_bytes_max
            ));
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
        let c = ProducerConfig::new("127.0.0.1:7400,localhost:7401");
        c.validate().unwrap();
        assert_eq!(c.linger, Duration::from_millis(5));
        assert_eq!(c.batch_bytes_max, 1024 * 1024);
        assert_eq!(c.buffer_bytes_max, 64 * 1024 * 1024);
    }

    #[test]
    fn bad_values_are_refused() {
        let base = ProducerConfig::new("127.0.0.1:7400");
        let cases: Vec<fn(&mut ProducerConfig)> = vec![
            |c| c.bootstrap = " , ".into(),
            |c| c.bootstrap = "nohost".into(),
            |c| c.bootstrap = "h:notaport".into(),
            |c| c.client_id = String::new(),
            |c| c.batch_bytes_max = 10,
            |c| c.batch_bytes_max = BATCH_BYTES_LIMIT + 1,
            |c| c.buffer_bytes_max = 0,
            |c| c.message_bytes_max = 0,
            |c| c.request_timeout = Duration::ZERO,
            |c| c.retry_deadline = Duration::ZERO,
        ];
        for (i, change) in cases.iter().enumerate() {
            let mut c = base.clone();
            change(&mut c);
            assert!(matches!(c.validate(), Err(ProducerError::Config(_))), "case {i}");
        }
    }
}
