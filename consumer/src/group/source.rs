//! One source of deliveries: a partition of the subscribed topic or the same partition of the
//! group's retry topic. Its task fetches, hands messages out as [`Delivery`]s (one window
//! permit each) and, in ordered mode, settles them one at a time; its tracker knows which
//! offsets are still unsettled, which gives the position to commit.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::group::headers;
use ferry_protocol::messages::{CreateTopicRequest, FetchRequest, ProduceRequest};
use ferry_protocol::{ErrorCode, Offset, PartitionIndex, Record, RecordBatchBuilder};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::delivery::Delivery;
use super::Shared;
use crate::error::{ConsumerError, Result};
use crate::fetcher::BatchMessages;

/// First pause after a retriable failure.
const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest pause between retries.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Where a message was first produced.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: PartitionIndex,
    pub(crate) offset: Offset,
}

/// How the application settled a delivery (ordered mode hands it to the source task).
#[derive(Debug)]
pub(crate) enum Outcome {
    Ack,
    Nack { delay: Option<Duration>, reason: String },
    Term { reason: String },
}

/// A message handed out (or queued to be) and not yet finished.
pub(crate) struct InFlight {
    /// Offset in the fetched topic (the retry topic for redeliveries).
    pub(crate) position: u64,
    pub(crate) attempt: u32,
    pub(crate) origin: Origin,
    pub(crate) timestamp_ms: u64,
    pub(crate) key: Option<Bytes>,
    /// Application headers (ours removed).
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) value: Bytes,
    settled: AtomicBool,
    handed_at: Mutex<Option<Instant>>,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    outcome: Mutex<Option<oneshot::Sender<Outcome>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl InFlight {
    /// Claims the right to settle; false when it was settled (or given up) already.
    pub(crate) fn try_settle(&self) -> bool {
        !self.settled.swap(true, Ordering::AcqRel)
    }

    /// Undoes a claim whose settling failed: the ack timeout will try again.
    pub(crate) fn unsettle(&self) {
        self.settled.store(false, Ordering::Release);
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }

    /// Marks the delivery as handed to the application now (its ack timeout starts).
    pub(crate) fn hand_out(&self) {
        *lock(&self.handed_at) = Some(Instant::now());
    }

    fn handed_at(&self) -> Option<Instant> {
        *lock(&self.handed_at)
    }

    /// In ordered mode: passes the outcome to the source task. False in unordered mode, and
    /// when the source task is gone (its partition was revoked): the caller then settles the
    /// delivery itself.
    pub(crate) fn send_outcome(&self, outcome: Outcome) -> bool {
        match lock(&self.outcome).take() {
            Some(tx) => tx.send(outcome).is_ok(),
            None => false,
        }
    }
}

struct Tracker {
    outstanding: BTreeMap<u64, Arc<InFlight>>,
    /// Next offset to fetch and hand out.
    next: u64,
    /// Last position committed (None: never by this member).
    committed: Option<u64>,
    /// Revoked or closed: hand nothing more out, finish nothing more.
    given_up: bool,
}

/// A partition of the topic or of its retry topic, as this member reads it.
pub(crate) struct Source {
    pub(crate) shared: Arc<Shared>,
    pub(crate) fetch_topic: Arc<str>,
    pub(crate) partition: PartitionIndex,
    pub(crate) is_retry: bool,
    tracker: Mutex<Tracker>,
    /// Woken when an outstanding delivery finishes.
    pub(crate) changed: Notify,
}

impl Source {
    pub(crate) fn new(
        shared: Arc<Shared>,
        fetch_topic: Arc<str>,
        partition: PartitionIndex,
        is_retry: bool,
        start: u64,
    ) -> Arc<Source> {
        Arc::new(Source {
            shared,
            fetch_topic,
            partition,
            is_retry,
            tracker: Mutex::new(Tracker {
                outstanding: BTreeMap::new(),
                next: start,
                committed: None,
                given_up: false,
            }),
            changed: Notify::new(),
        })
    }

    /// The position to commit: the first unfinished offset, or the next to fetch.
    pub(crate) fn commit_point(&self) -> u64 {
        let t = lock(&self.tracker);
        t.outstanding.keys().next().copied().unwrap_or(t.next)
    }

    /// The position to commit if it moved since the last commit.
    pub(crate) fn uncommitted(&self) -> Option<u64> {
        let t = lock(&self.tracker);
        let point = t.outstanding.keys().next().copied().unwrap_or(t.next);
        (t.committed != Some(point)).then_some(point)
    }

    pub(crate) fn mark_committed(&self, point: u64) {
        lock(&self.tracker).committed = Some(point);
    }

    /// Deliveries handed to the application and not settled.
    pub(crate) fn in_flight(&self) -> usize {
        let t = lock(&self.tracker);
        t.outstanding.values().filter(|f| f.handed_at().is_some() && !f.is_settled()).count()
    }

    /// True when nothing handed out is still unfinished (queued ones do not count: they were
    /// never seen and stay below the commit point).
    pub(crate) fn drained(&self) -> bool {
        lock(&self.tracker).outstanding.values().all(|f| f.handed_at().is_none())
    }

    /// Finishes `position`: it no longer holds back the commit point or a window slot.
    pub(crate) fn finish(&self, position: u64) {
        let removed = {
            let mut t = lock(&self.tracker);
            if t.given_up {
                return;
            }
            t.outstanding.remove(&position)
        };
        if let Some(f) = removed {
            lock(&f.permit).take();
        }
        self.changed.notify_waiters();
    }

    /// Stops finishing anything: every outstanding delivery is marked settled (later acks do
    /// nothing) and its window slot freed; returns the position to commit.
    pub(crate) fn give_up(&self) -> u64 {
        let mut t = lock(&self.tracker);
        let point = t.outstanding.keys().next().copied().unwrap_or(t.next);
        t.given_up = true;
        // Nothing is fetched after this: the position stays where the unsettled ones began.
        t.next = point;
        for f in std::mem::take(&mut t.outstanding).into_values() {
            f.settled.store(true, Ordering::Release);
            lock(&f.permit).take();
        }
        drop(t);
        self.changed.notify_waiters();
        point
    }

    /// Handed-out deliveries whose ack timeout passed, claimed for settling.
    pub(crate) fn take_expired(&self, now: Instant) -> Vec<Arc<InFlight>> {
        let timeout = self.shared.config.ack_timeout;
        let t = lock(&self.tracker);
        t.outstanding
            .values()
            .filter(|f| {
                f.handed_at().is_some_and(|at| now.saturating_duration_since(at) >= timeout)
            })
            .filter(|f| f.try_settle())
            .cloned()
            .collect()
    }

    /// Settles a failed delivery (nack, ack timeout or term): redelivered through the retry
    /// topic after `delay`, or dead-lettered after the last attempt or on `term`. Finishes
    /// the delivery once the broker stored the copy; on failure it stays unfinished (and
    /// unclaimed, so the ack timeout tries again).
    pub(crate) async fn fail(
        &self,
        f: &InFlight,
        delay: Option<Duration>,
        reason: &str,
        term: bool,
    ) -> Result<()> {
        let config = &self.shared.config;
        let result = if term || f.attempt >= config.max_attempts {
            self.shared.dead_letter(f, reason).await
        } else {
            let delay = delay.unwrap_or_else(|| config.delay_after(f.attempt));
            self.shared.redeliver(f, delay, reason).await
        };
        match result {
            Ok(()) => {
                self.finish(f.position);
                Ok(())
            }
            Err(e) => {
                f.unsettle();
                Err(e)
            }
        }
    }

    /// Fetches and hands out messages from `start` until cancelled or a non-retriable error
    /// (sent down `output` first).
    pub(crate) async fn run(
        self: Arc<Self>,
        cancel: CancellationToken,
        output: mpsc::Sender<Result<Delivery>>,
    ) {
        let config = &self.shared.config;
        let max_wait_ms = u32::try_from(config.fetch_max_wait.as_millis()).unwrap_or(u32::MAX);
        let attempt_timeout = config.fetch_max_wait + config.request_timeout;
        let mut backoff = BACKOFF_INITIAL;
        loop {
            let offset = Offset(lock(&self.tracker).next);
            let request = FetchRequest {
                topic: self.fetch_topic.to_string(),
                partition: self.partition,
                offset,
                max_bytes: config.fetch_max_bytes,
                max_wait_ms,
            };
            let response = tokio::select! {
                () = cancel.cancelled() => return,
                r = self.shared.client.call_timeout(&request, attempt_timeout) => r,
            };
            let response = match response {
                Ok(r) => r,
                Err(e) if e.is_retriable() => {
                    tracing::debug!(topic = %self.fetch_topic, partition = %self.partition, error = %e, "fetch failed; retrying");
                    if !pause(&cancel, &mut backoff).await {
                        return;
                    }
                    continue;
                }
                Err(source) => {
                    let _ = output
                        .send(Err(ConsumerError::Fetch {
                            topic: self.fetch_topic.to_string(),
                            partition: self.partition,
                            offset,
                            source,
                        }))
                        .await;
                    return;
                }
            };
            backoff = BACKOFF_INITIAL;
            for batch in &response.batches {
                let from = Offset(lock(&self.tracker).next);
                let messages =
                    match BatchMessages::new(self.fetch_topic.clone(), self.partition, batch, from)
                    {
                        Ok(m) => m,
                        Err(e) => {
                            let _ = output.send(Err(e)).await;
                            return;
                        }
                    };
                for message in messages {
                    let message = match message {
                        Ok(m) => m,
                        Err(e) => {
                            let _ = output.send(Err(e)).await;
                            return;
                        }
                    };
                    let permit = tokio::select! {
                        () = cancel.cancelled() => return,
                        p = self.shared.window.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => return,
                        },
                    };
                    let f = self.in_flight_of(message, permit);
                    {
                        let mut t = lock(&self.tracker);
                        if t.given_up {
                            return;
                        }
                        t.next = f.position + 1;
                        t.outstanding.insert(f.position, f.clone());
                    }
                    let ok = if config.ordered {
                        self.deliver_ordered(f, &cancel, &output).await
                    } else {
                        send(&cancel, &output, Delivery::new(f, self.clone())).await
                    };
                    if !ok {
                        return;
                    }
                }
            }
        }
    }

    fn in_flight_of(
        &self,
        m: crate::fetcher::ConsumedMessage,
        permit: OwnedSemaphorePermit,
    ) -> Arc<InFlight> {
        let header = |name: &str| {
            m.headers
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .map(str::to_string)
        };
        let (origin, attempt) = if self.is_retry {
            let origin = Origin {
                topic: header(headers::ORIGIN_TOPIC)
                    .map_or_else(|| self.shared.topic.clone(), Arc::from),
                partition: header(headers::ORIGIN_PARTITION)
                    .and_then(|v| v.parse().ok())
                    .map_or(self.partition, PartitionIndex),
                offset: Offset(
                    header(headers::ORIGIN_OFFSET).and_then(|v| v.parse().ok()).unwrap_or(0),
                ),
            };
            let attempt = header(headers::ATTEMPT).and_then(|v| v.parse().ok()).unwrap_or(2);
            (origin, attempt)
        } else {
            let origin =
                Origin { topic: m.topic.clone(), partition: m.partition, offset: m.offset };
            (origin, 1)
        };
        Arc::new(InFlight {
            position: m.offset.0,
            attempt,
            origin,
            timestamp_ms: m.timestamp_ms,
            key: m.key,
            headers: m.headers.into_iter().filter(|(n, _)| !headers::is_internal(n)).collect(),
            value: m.value,
            settled: AtomicBool::new(false),
            handed_at: Mutex::new(None),
            permit: Mutex::new(Some(permit)),
            outcome: Mutex::new(None),
        })
    }

    /// Ordered mode: hands `f` out and waits for its outcome; a failure is retried in place
    /// after its delay (the partition waits), and dead-lettered after the last attempt.
    async fn deliver_ordered(
        self: &Arc<Self>,
        mut f: Arc<InFlight>,
        cancel: &CancellationToken,
        output: &mpsc::Sender<Result<Delivery>>,
    ) -> bool {
        let config = &self.shared.config;
        loop {
            let (tx, mut rx) = oneshot::channel();
            *lock(&f.outcome) = Some(tx);
            if !send(cancel, output, Delivery::new(f.clone(), self.clone())).await {
                return false;
            }
            let outcome = tokio::select! {
                () = cancel.cancelled() => return false,
                o = &mut rx => o.ok(),
                () = wait_ack_timeout(&f, config.ack_timeout) => {
                    if f.try_settle() {
                        lock(&f.outcome).take();
                        Some(Outcome::Nack { delay: None, reason: "ack timeout".into() })
                    } else {
                        // Settled at the same moment: its outcome is on the way.
                        tokio::select! {
                            () = cancel.cancelled() => return false,
                            o = rx => o.ok(),
                        }
                    }
                }
            };
            let Some(outcome) = outcome else { return false };
            let (delay, reason, term) = match outcome {
                Outcome::Ack => {
                    self.finish(f.position);
                    return true;
                }
                Outcome::Nack { delay, reason } => (delay, reason, false),
                Outcome::Term { reason } => (None, reason, true),
            };
            if term || f.attempt >= config.max_attempts {
                let mut backoff = BACKOFF_INITIAL;
                loop {
                    match self.shared.dead_letter(&f, &reason).await {
                        Ok(()) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "dead-lettering failed; retrying");
                            if !pause(cancel, &mut backoff).await {
                                return false;
                            }
                        }
                    }
                }
                self.finish(f.position);
                return true;
            }
            let delay = delay.unwrap_or_else(|| config.delay_after(f.attempt));
            tokio::select! {
                () = cancel.cancelled() => return false,
                () = tokio::time::sleep(delay) => {}
            }
            let permit = lock(&f.permit).take();
            let next = Arc::new(InFlight {
                position: f.position,
                attempt: f.attempt + 1,
                origin: f.origin.clone(),
                timestamp_ms: f.timestamp_ms,
                key: f.key.clone(),
                headers: f.headers.clone(),
                value: f.value.clone(),
                settled: AtomicBool::new(false),
                handed_at: Mutex::new(None),
                permit: Mutex::new(permit),
                outcome: Mutex::new(None),
            });
            {
                let mut t = lock(&self.tracker);
                if t.given_up {
                    return false;
                }
                t.outstanding.insert(next.position, next.clone());
            }
            f = next;
        }
    }
}

/// Resolves once `f` was handed out at least `timeout` ago.
async fn wait_ack_timeout(f: &InFlight, timeout: Duration) {
    loop {
        match f.handed_at() {
            Some(at) => {
                tokio::time::sleep_until((at + timeout).into()).await;
                return;
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn send(
    cancel: &CancellationToken,
    output: &mpsc::Sender<Result<Delivery>>,
    d: Delivery,
) -> bool {
    tokio::select! {
        () = cancel.cancelled() => false,
        sent = output.send(Ok(d)) => sent.is_ok(),
    }
}

/// Sleeps a jittered backoff; false when cancelled.
async fn pause(cancel: &CancellationToken, backoff: &mut Duration) -> bool {
    let wait = *backoff / 2 + backoff.mul_f64(fastrand::f64() / 2.0);
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

impl Shared {
    /// Stores a copy of `f` in the retry topic, partition of its origin, due after `delay`,
    /// as attempt `f.attempt + 1`.
    pub(crate) async fn redeliver(
        &self,
        f: &InFlight,
        delay: Duration,
        reason: &str,
    ) -> Result<()> {
        let deliver_at_ms =
            ferry_protocol::now_ms() + u64::try_from(delay.as_millis()).unwrap_or(u64::MAX / 2);
        let mut extra = origin_headers(f);
        extra.push((headers::ATTEMPT.into(), Bytes::from((f.attempt + 1).to_string())));
        extra.push((headers::LAST_ERROR.into(), Bytes::from(reason.to_string())));
        let request = ProduceRequest {
            topic: self.retry_topic.to_string(),
            partition: f.origin.partition,
            batch: copy_batch(f, extra),
            deliver_at_ms,
        };
        self.client
            .call(&request)
            .await
            .map_err(|source| ConsumerError::Settle { what: "schedule a redelivery", source })?;
        Ok(())
    }

    /// Stores a copy of `f` in the group's dead-letter topic (created again if purged).
    pub(crate) async fn dead_letter(&self, f: &InFlight, reason: &str) -> Result<()> {
        let mut extra = origin_headers(f);
        extra.push((headers::ATTEMPT.into(), Bytes::from(f.attempt.to_string())));
        extra.push((headers::LAST_ERROR.into(), Bytes::from(reason.to_string())));
        extra.push((
            headers::DEAD_LETTERED_MS.into(),
            Bytes::from(ferry_protocol::now_ms().to_string()),
        ));
        let request = ProduceRequest {
            topic: self.dlq_topic.clone(),
            partition: PartitionIndex(0),
            batch: copy_batch(f, extra),
            deliver_at_ms: 0,
        };
        let mut created = false;
        loop {
            match self.client.call(&request).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code() == Some(ErrorCode::UnknownTopic) && !created => {
                    created = true;
                    let create = CreateTopicRequest { name: self.dlq_topic.clone(), partitions: 1 };
                    match self.client.call(&create).await {
                        Ok(_) => {}
                        Err(e) if e.code() == Some(ErrorCode::TopicExists) => {}
                        Err(source) => {
                            return Err(ConsumerError::Settle {
                                what: "create the dead-letter topic",
                                source,
                            })
                        }
                    }
                }
                Err(source) => {
                    return Err(ConsumerError::Settle { what: "dead-letter a message", source })
                }
            }
        }
    }
}

fn origin_headers(f: &InFlight) -> Vec<(String, Bytes)> {
    vec![
        (headers::ORIGIN_TOPIC.into(), Bytes::from(f.origin.topic.to_string())),
        (headers::ORIGIN_PARTITION.into(), Bytes::from(f.origin.partition.0.to_string())),
        (headers::ORIGIN_OFFSET.into(), Bytes::from(f.origin.offset.0.to_string())),
    ]
}

/// A one-record batch holding `f`'s message with its application headers plus `extra`.
fn copy_batch(f: &InFlight, extra: Vec<(String, Bytes)>) -> Bytes {
    let mut headers = f.headers.clone();
    headers.extend(extra);
    let mut b = RecordBatchBuilder::new(0, 0, 0);
    b.push(&Record {
        timestamp_ms: f.timestamp_ms,
        key: f.key.clone(),
        headers,
        value: f.value.clone(),
    });
    b.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetcher::ConsumedMessage;
    use crate::group::GroupConfig;
    use ferry_protocol::{ClientKind, ClusterClient, ClusterOptions, ConnectOptions};
    use tokio::sync::Semaphore;

    fn source(window: usize) -> Arc<Source> {
        let config = GroupConfig::new("127.0.0.1:1", "g", "t");
        let client = ClusterClient::new(ClusterOptions::new(
            &config.bootstrap,
            ConnectOptions::new("test", ClientKind::Consumer),
        ))
        .unwrap();
        let shared = Arc::new(Shared {
            client,
            topic: Arc::from("t"),
            retry_topic: Arc::from("__retry.g.t"),
            dlq_topic: "__dlq.g".into(),
            window: Arc::new(Semaphore::new(window)),
            config,
        });
        Source::new(shared, Arc::from("t"), PartitionIndex(0), false, 5)
    }

    /// Hands out offset `o` as the fetch loop would.
    fn take(s: &Arc<Source>, o: u64) -> Arc<InFlight> {
        let permit = s.shared.window.clone().try_acquire_owned().unwrap();
        let m = ConsumedMessage {
            topic: Arc::from("t"),
            partition: PartitionIndex(0),
            offset: Offset(o),
            timestamp_ms: 1,
            key: None,
            headers: vec![("ferry-attempt".into(), Bytes::from_static(b"9"))],
            value: Bytes::from_static(b"v"),
        };
        let f = s.in_flight_of(m, permit);
        let mut t = lock(&s.tracker);
        t.next = o + 1;
        t.outstanding.insert(o, f.clone());
        f
    }

    #[test]
    fn the_commit_point_is_the_first_unsettled_offset() {
        let s = source(8);
        assert_eq!(s.commit_point(), 5, "nothing taken: the start");
        let fs: Vec<_> = (5..8).map(|o| take(&s, o)).collect();
        assert_eq!(fs[0].attempt, 1, "a message of the topic itself is attempt 1");
        assert!(fs[0].headers.is_empty(), "our headers are not the application's");
        assert_eq!(s.shared.window.available_permits(), 5);
        assert_eq!(s.commit_point(), 5);
        s.finish(6);
        assert_eq!(s.commit_point(), 5, "a later ack does not move past an unsettled one");
        s.finish(5);
        assert_eq!(s.commit_point(), 7);
        assert_eq!(s.uncommitted(), Some(7));
        s.mark_committed(7);
        assert_eq!(s.uncommitted(), None);
        s.finish(7);
        assert_eq!(s.commit_point(), 8, "all settled: the next offset");
        assert_eq!(s.shared.window.available_permits(), 8, "every window slot back");
    }

    #[test]
    fn queued_deliveries_do_not_hold_a_drain_and_give_up_keeps_them_uncommitted() {
        let s = source(8);
        let a = take(&s, 5);
        let b = take(&s, 6);
        assert!(s.drained(), "nothing handed out yet");
        b.hand_out();
        assert!(!s.drained());
        assert_eq!(s.in_flight(), 1);
        assert!(b.try_settle());
        s.finish(6);
        assert!(s.drained());
        let point = s.give_up();
        assert_eq!(point, 5, "the queued message stays below the commit point");
        assert!(a.is_settled(), "given up: a late ack does nothing");
        assert!(!a.try_settle());
        assert_eq!(s.shared.window.available_permits(), 8);
        s.finish(5);
        assert_eq!(s.commit_point(), 5, "the position stays at the first one given up");
    }

    #[test]
    fn expired_deliveries_are_claimed_once() {
        let s = source(8);
        let a = take(&s, 5);
        let _queued = take(&s, 6);
        a.hand_out();
        let later = Instant::now() + s.shared.config.ack_timeout;
        let expired = s.take_expired(later);
        assert_eq!(expired.len(), 1, "only handed-out deliveries time out");
        assert_eq!(expired[0].position, 5);
        assert!(s.take_expired(later).is_empty(), "claimed: not again");
        assert!(!a.try_settle(), "an ack after the timeout does nothing");
        expired[0].unsettle();
        assert_eq!(s.take_expired(later).len(), 1, "a failed redelivery is tried again");
    }
}
