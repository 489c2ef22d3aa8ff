//! The consumer: resolves start offsets from the topic metadata, runs one fetch task per
//! partition and merges their output into one bounded stream.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ferry_protocol::messages::{MetadataRequest, TopicMetadata};
use ferry_protocol::{ErrorCode, Offset, PartitionIndex};
use futures_util::stream::{FusedStream, Stream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{ConsumerConfig, StartFrom};
use crate::error::{ConsumerError, Result};
use crate::fetcher::{ConsumedMessage, FetchTask};

/// Reads one topic (all or some partitions) as a [`Stream`] of messages.
///
/// Order: messages of one partition arrive in offset order, without gaps other than those in
/// the log; partitions are interleaved as their fetches return. Fetches long-poll, so a new
/// message arrives soon after it is committed. At most `buffer_messages_max` messages are
/// buffered ahead of the reader.
///
/// Errors: a retriable fetch failure is retried (the cluster client follows leader changes
/// until `retry_deadline`); anything else is yielded once as `Err` and the stream ends.
/// The stream never ends on its own otherwise. Dropping the consumer (or [`Consumer::close`])
/// stops the fetch tasks.
pub struct Consumer {
    receiver: mpsc::Receiver<Result<ConsumedMessage>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    assignment: Vec<(PartitionIndex, Offset)>,
    ended: bool,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("assignment", &self.assignment)
            .field("ended", &self.ended)
            .finish()
    }
}

impl Consumer {
    /// Validates `config`, reads the topic's metadata, resolves where each partition starts
    /// (`Earliest` = log start, `Latest` = high watermark, `Offset` = as given) and starts
    /// fetching.
    ///
    /// # Errors
    /// `Config`, `UnknownTopic`, `UnknownPartition`, `OffsetOutOfRange` (start offset not
    /// stored), or `Connect` when no leader answered within `retry_deadline`.
    pub async fn connect(config: ConsumerConfig) -> Result<Consumer> {
        config.validate()?;
        let client = crate::config::cluster_client(
            &config.bootstrap,
            &config.client_id,
            config.request_timeout,
            config.retry_deadline,
        )?;
        let unknown_topic = || ConsumerError::UnknownTopic { topic: config.topic.clone() };
        let request = MetadataRequest { topics: vec![config.topic.clone()] };
        let metadata = match client.call(&request).await {
            Ok(m) => m,
            Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => return Err(unknown_topic()),
            Err(source) => {
                return Err(ConsumerError::Connect { bootstrap: config.bootstrap.clone(), source })
            }
        };
        let topic_metadata =
            metadata.topics.iter().find(|t| t.name == config.topic).ok_or_else(unknown_topic)?;
        let assignment =
            start_positions(topic_metadata, config.partitions.as_deref(), config.start)?;

        let (sender, receiver) = mpsc::channel(config.buffer_messages_max);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let topic: Arc<str> = Arc::from(config.topic.as_str());
        for &(partition, offset) in &assignment {
            let task = FetchTask {
                client: client.clone(),
                topic: topic.clone(),
                partition,
                offset,
                fetch_max_bytes: config.fetch_max_bytes,
                fetch_max_wait: config.fetch_max_wait,
                attempt_timeout: config.fetch_max_wait + config.request_timeout,
                sender: sender.clone(),
                cancel: cancel.clone(),
            };
            tracker.spawn(task.run());
        }
        tracker.close();
        tracing::debug!(topic = %topic, partitions = assignment.len(), "consumer connected");
        Ok(Consumer { receiver, cancel, tracker, assignment, ended: false })
    }

    /// The partitions read and the offset each started from.
    pub fn assignment(&self) -> &[(PartitionIndex, Offset)] {
        &self.assignment
    }

    /// Stops the fetch tasks and waits for them to end. Buffered messages are dropped.
    pub async fn close(self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Stream for Consumer {
    type Item = Result<ConsumedMessage>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this.receiver.poll_recv(cx) {
            Poll::Ready(Some(Err(e))) => {
                // One error ends the stream: stop every partition, not only the failed one.
                this.ended = true;
                this.cancel.cancel();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

impl FusedStream for Consumer {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

/// The partitions to read (`wanted`, or all) with their start offsets.
fn start_positions(
    topic: &TopicMetadata,
    wanted: Option<&[PartitionIndex]>,
    start: StartFrom,
) -> Result<Vec<(PartitionIndex, Offset)>> {
    let count = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
    let indexes: Vec<PartitionIndex> = match wanted {
        None => topic.partitions.iter().map(|p| p.index).collect(),
        Some(list) => {
            let mut unique = Vec::with_capacity(list.len());
            for p in list {
                if !unique.contains(p) {
                    unique.push(*p);
                }
            }
            unique
        }
    };
    indexes
        .into_iter()
        .map(|index| {
            let p = topic.partitions.iter().find(|p| p.index == index).ok_or_else(|| {
                ConsumerError::UnknownPartition {
                    topic: topic.name.clone(),
                    partition: index,
                    partitions: count,
                }
            })?;
            let offset = match start {
                StartFrom::Earliest => p.log_start,
                StartFrom::Latest => p.high_watermark,
                StartFrom::Offset(o) if o >= p.log_start && o <= p.high_watermark => o,
                StartFrom::Offset(o) => {
                    return Err(ConsumerError::OffsetOutOfRange {
                        topic: topic.name.clone(),
                        partition: index,
                        offset: o,
                        log_start: p.log_start,
                        high_watermark: p.high_watermark,
                    })
                }
            };
            Ok((index, offset))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ferry_protocol::messages::PartitionMetadata;
    use futures_util::StreamExt;

    fn topic() -> TopicMetadata {
        TopicMetadata {
            name: "t".into(),
            created_ms: 0,
            partitions: (0..3)
                .map(|i| PartitionMetadata {
                    index: PartitionIndex(i),
                    log_start: Offset(u64::from(i)),
                    high_watermark: Offset(10 + u64::from(i)),
                })
                .collect(),
        }
    }

    #[test]
    fn start_offsets_resolve_from_metadata() {
        let t = topic();
        let earliest = start_positions(&t, None, StartFrom::Earliest).unwrap();
        assert_eq!(
            earliest,
            vec![
                (PartitionIndex(0), Offset(0)),
                (PartitionIndex(1), Offset(1)),
                (PartitionIndex(2), Offset(2))
            ]
        );
        let latest = start_positions(&t, Some(&[PartitionIndex(2)]), StartFrom::Latest).unwrap();
        assert_eq!(latest, vec![(PartitionIndex(2), Offset(12))]);
        let at = start_positions(&t, Some(&[PartitionIndex(1), PartitionIndex(1)]), {
            StartFrom::Offset(Offset(11))
        })
        .unwrap();
        assert_eq!(at, vec![(PartitionIndex(1), Offset(11))], "duplicates dropped, hw allowed");
    }

    #[test]
    fn bad_partitions_and_offsets_are_refused() {
        let t = topic();
        assert!(matches!(
            start_positions(&t, Some(&[PartitionIndex(3)]), StartFrom::Earliest),
            Err(ConsumerError::UnknownPartition { partitions: 3, .. })
        ));
        assert!(matches!(
            start_positions(&t, Some(&[PartitionIndex(1)]), StartFrom::Offset(Offset(0))),
            Err(ConsumerError::OffsetOutOfRange { .. })
        ));
        assert!(matches!(
            start_positions(&t, None, StartFrom::Offset(Offset(12))),
            Err(ConsumerError::OffsetOutOfRange { partition: PartitionIndex(0), .. })
        ));
    }

    #[tokio::test]
    async fn stream_ends_after_the_first_error() {
        let (sender, receiver) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let mut consumer = Consumer {
            receiver,
            cancel: cancel.clone(),
            tracker: TaskTracker::new(),
            assignment: vec![],
            ended: false,
        };
        let message = |offset| ConsumedMessage {
            topic: Arc::from("t"),
            partition: PartitionIndex(0),
            offset: Offset(offset),
            timestamp_ms: 0,
            key: None,
            headers: vec![],
            value: Bytes::new(),
        };
        sender.send(Ok(message(0))).await.unwrap();
        sender.send(Err(ConsumerError::Config("boom".into()))).await.unwrap();
        sender.send(Ok(message(1))).await.unwrap();
        assert_eq!(consumer.next().await.unwrap().unwrap().offset, Offset(0));
        assert!(consumer.next().await.unwrap().is_err());
        assert!(cancel.is_cancelled(), "the other fetch tasks are told to stop");
        assert!(consumer.next().await.is_none());
        assert!(consumer.is_terminated());
    }
}
