//! One fetch task per partition: long-polls `Fetch` from the leader, turns the returned
//! batches into [`ConsumedMessage`]s in offset order and feeds them to the consumer's bounded
//! channel (waiting while it is full: back-pressure reaches the broker as slower fetching).
//!
//! Spawned and cancelled by [`crate::Consumer`].

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ferry_protocol::messages::{FetchRequest, FetchedBatch};
use ferry_protocol::record::{RecordBatch, RecordIter};
use ferry_protocol::{ClusterClient, Offset, PartitionIndex};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use crate::error::ConsumerError;

/// First pause after a retriable fetch failure.
const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest pause between fetch retries.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One message read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedMessage {
    /// The topic (shared by every message of the consumer).
    pub topic: Arc<str>,
    /// The partition it was read from.
    pub partition: PartitionIndex,
    /// Its offset in the partition.
    pub offset: Offset,
    /// Creation time stamped by the producer, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The key, if it had one.
    pub key: Option<Bytes>,
    /// Application headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The payload (a slice of the fetched batch, not a copy).
    pub value: Bytes,
}

/// The messages of one fetched batch at or after `from`, in order. Record `i` of the batch has
/// offset `base_offset + i`; records before `from` (a batch may start before the offset asked
/// for) are skipped.
pub(crate) struct BatchMessages {
    topic: Arc<str>,
    partition: PartitionIndex,
    base_offset: Offset,
    next_offset: Offset,
    from: Offset,
    records: RecordIter,
}

impl BatchMessages {
    /// Opens `batch` (CRC and structure checked, records decoded lazily).
    pub(crate) fn new(
        topic: Arc<str>,
        partition: PartitionIndex,
        batch: &FetchedBatch,
        from: Offset,
    ) -> Result<BatchMessages, ConsumerError> {
        // The CRC the producer computed is checked again here, end to end: a batch damaged
        // anywhere between the producer and this consumer is an error, never wrong data.
        let parsed =
            RecordBatch::parse(batch.bytes.clone()).map_err(|source| ConsumerError::Corrupt {
                topic: topic.to_string(),
                partition,
                offset: batch.base_offset,
                source,
            })?;
        Ok(BatchMessages {
            topic,
            partition,
            base_offset: batch.base_offset,
            next_offset: batch.base_offset,
            from,
            records: parsed.records(),
        })
    }
}

impl Iterator for BatchMessages {
    type Item = Result<ConsumedMessage, ConsumerError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let record = self.records.next()?;
            let offset = self.next_offset;
            self.next_offset = offset.next();
            match record {
                Err(source) => {
                    return Some(Err(ConsumerError::Corrupt {
                        topic: self.topic.to_string(),
                        partition: self.partition,
                        offset: self.base_offset,
                        source,
                    }))
                }
                Ok(_) if offset < self.from => continue,
                Ok(r) => {
                    return Some(Ok(ConsumedMessage {
                        topic: self.topic.clone(),
                        partition: self.partition,
                        offset,
                        timestamp_ms: r.timestamp_ms,
                        key: r.key,
                        headers: r.headers,
                        value: r.value,
                    }))
                }
            }
        }
    }
}

/// The offset after the last record of `batch`, from its header (no record decoding).
fn batch_end(batch: &FetchedBatch) -> Option<Offset> {
    let count = RecordBatch::from_trusted(batch.bytes.clone()).ok()?.count();
    Some(Offset(batch.base_offset.0.saturating_add(u64::from(count))))
}

/// Everything one partition's fetch loop needs.
pub(crate) struct FetchTask {
    pub(crate) client: ClusterClient,
    pub(crate) topic: Arc<str>,
    pub(crate) partition: PartitionIndex,
    /// The next offset to deliver.
    pub(crate) offset: Offset,
    pub(crate) fetch_max_bytes: u32,
    pub(crate) fetch_max_wait: Duration,
    /// Time allowed for one fetch attempt: the long-poll time plus the request timeout.
    pub(crate) attempt_timeout: Duration,
    pub(crate) sender: mpsc::Sender<Result<ConsumedMessage, ConsumerError>>,
    pub(crate) cancel: CancellationToken,
}

impl FetchTask {
    /// Fetches until cancelled, the reader is gone, or a non-retriable error (which it sends
    /// down the channel first).
    pub(crate) async fn run(mut self) {
        let max_wait_ms = u32::try_from(self.fetch_max_wait.as_millis()).unwrap_or(u32::MAX);
        let mut backoff = BACKOFF_INITIAL;
        loop {
            let request = FetchRequest {
                topic: self.topic.to_string(),
                partition: self.partition,
                offset: self.offset,
                max_bytes: self.fetch_max_bytes,
                max_wait_ms,
            };
            let response = tokio::select! {
                () = self.cancel.cancelled() => return,
                r = self.client.call_timeout(&request, self.attempt_timeout) => r,
            };
            match response {
                Ok(response) => {
                    backoff = BACKOFF_INITIAL;
                    for batch in &response.batches {
                        if !self.deliver(batch).await {
                            return;
                        }
                    }
                }
                Err(error) if error.is_retriable() => {
                    tracing::debug!(
                        topic = %self.topic,
                        partition = %self.partition,
                        %error,
                        "fetch failed; retrying"
                    );
                    let pause = backoff / 2 + backoff.mul_f64(fastrand::f64() / 2.0);
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(source) => {
                    let error = ConsumerError::Fetch {
                        topic: self.topic.to_string(),
                        partition: self.partition,
                        offset: self.offset,
                        source,
                    };
                    self.emit(Err(error)).await;
                    return;
                }
            }
        }
    }

    /// Sends the messages of `batch` at or after the current offset; false when the task
    /// must end.
    async fn deliver(&mut self, batch: &FetchedBatch) -> bool {
        if batch_end(batch).is_some_and(|end| end <= self.offset) {
            return true; // entirely before the offset asked for
        }
        if batch.base_offset > self.offset {
            tracing::debug!(
                topic = %self.topic,
                partition = %self.partition,
                expected = self.offset.0,
                got = batch.base_offset.0,
                "offset gap in fetched batches"
            );
        }
        let messages =
            match BatchMessages::new(self.topic.clone(), self.partition, batch, self.offset) {
                Ok(m) => m,
                Err(e) => {
                    self.emit(Err(e)).await;
                    return false;
                }
            };
        for item in messages {
            match item {
                Ok(message) => {
                    self.offset = message.offset.next();
                    if !self.emit(Ok(message)).await {
                        return false;
                    }
                }
                Err(e) => {
                    self.emit(Err(e)).await;
                    return false;
                }
            }
        }
        true
    }

    /// Queues one item for the reader, waiting while the channel is full; false when the
    /// reader is gone or the consumer is closing.
    async fn emit(&self, item: Result<ConsumedMessage, ConsumerError>) -> bool {
        match self.sender.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(item)) => tokio::select! {
                () = self.cancel.cancelled() => false,
                sent = self.sender.send(item) => sent.is_ok(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::record::{Record, RecordBatchBuilder};

    fn batch(base: u64, count: u64) -> FetchedBatch {
        let mut b = RecordBatchBuilder::new(1, 0, 0);
        for i in 0..count {
            b.push(&Record {
                timestamp_ms: 1000 + i,
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                headers: vec![("h".into(), Bytes::from_static(b"v"))],
                value: Bytes::from(format!("v{}", base + i)),
            });
        }
        FetchedBatch { base_offset: Offset(base), bytes: b.finish() }
    }

    fn offsets(b: &FetchedBatch, from: u64) -> Vec<(u64, Bytes)> {
        BatchMessages::new(Arc::from("t"), PartitionIndex(2), b, Offset(from))
            .unwrap()
            .map(|m| {
                let m = m.unwrap();
                assert_eq!(m.partition, PartitionIndex(2));
                assert_eq!(&*m.topic, "t");
                (m.offset.0, m.value)
            })
            .collect()
    }

    #[test]
    fn records_get_base_plus_index() {
        let b = batch(10, 3);
        let got = offsets(&b, 10);
        assert_eq!(
            got,
            vec![(10, Bytes::from("v10")), (11, Bytes::from("v11")), (12, Bytes::from("v12"))]
        );
        assert_eq!(batch_end(&b), Some(Offset(13)));
    }

    #[test]
    fn records_before_the_requested_offset_are_skipped() {
        let b = batch(10, 5);
        let got: Vec<u64> = offsets(&b, 12).into_iter().map(|(o, _)| o).collect();
        assert_eq!(got, vec![12, 13, 14]);
        assert!(offsets(&b, 15).is_empty());
        // A batch after the requested offset (a gap) is delivered whole.
        assert_eq!(offsets(&b, 3).len(), 5);
    }

    #[test]
    fn message_fields_survive() {
        let b = batch(0, 2);
        let all: Vec<ConsumedMessage> =
            BatchMessages::new(Arc::from("t"), PartitionIndex(0), &b, Offset(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
        assert_eq!(all[0].key.as_deref(), Some(&b"k0"[..]));
        assert_eq!(all[1].key, None);
        assert_eq!(all[1].timestamp_ms, 1001);
        assert_eq!(all[0].headers, vec![("h".to_string(), Bytes::from_static(b"v"))]);
    }

    #[test]
    fn corrupt_batches_are_errors() {
        let bad = FetchedBatch { base_offset: Offset(0), bytes: Bytes::from_static(b"\x09xx") };
        assert!(matches!(
            BatchMessages::new(Arc::from("t"), PartitionIndex(0), &bad, Offset(0)),
            Err(ConsumerError::Corrupt { .. })
        ));
        // Header intact, records cut short: the CRC no longer matches.
        let good = batch(0, 3);
        let cut = FetchedBatch {
            base_offset: Offset(0),
            bytes: good.bytes.slice(..good.bytes.len() - 4),
        };
        assert!(matches!(
            BatchMessages::new(Arc::from("t"), PartitionIndex(0), &cut, Offset(0)),
            Err(ConsumerError::Corrupt { .. })
        ));
        // One flipped bit in a value is caught too.
        let mut flipped = good.bytes.to_vec();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        let flipped = FetchedBatch { base_offset: Offset(0), bytes: Bytes::from(flipped) };
        assert!(matches!(
            BatchMessages::new(Arc::from("t"), PartitionIndex(0), &flipped, Offset(0)),
            Err(ConsumerError::Corrupt { .. })
        ));
    }
}
