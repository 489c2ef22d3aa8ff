//! Group consumption: [`GroupConsumer`] joins a consumer group for one topic and yields the
//! messages of the partitions the leader gives it as [`Delivery`]s to settle.
//!
//! ```text
//! conductor task ── heartbeat ──▶ leader: member id + granted partitions
//!     │  starts / drains one worker per granted partition:
//!     │     source (topic, p) ──┐
//!     │     source (retry, p) ──┼─▶ bounded window ─▶ GroupConsumer: Stream<Item = Result<Delivery>>
//!     │  commits every commit_interval: per source, the first unsettled offset
//!     └─ ack timeouts ─▶ redelivery through the retry topic / dead letter
//! ```
//!
//! Guarantees: at least once. A message is committed past only once it was acked, or a copy
//! was stored in the retry topic (nack, ack timeout) or the dead-letter topic (last attempt,
//! `term`). A crash or a lost partition redelivers everything after the last commit; per
//! partition, first deliveries come in offset order.

mod config;
mod delivery;
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use ferry_protocol::group::{
    dead_letter_topic, retry_topic, CommitOffsetsRequest, DescribeGroupRequest,
    GroupHeartbeatRequest, LeaveGroupRequest, OffsetCommit,
};
use ferry_protocol::messages::{CreateTopicRequest, MetadataRequest};
use ferry_protocol::{ClientError, ClusterClient, ErrorCode, Offset, PartitionIndex};
use futures_util::stream::{FusedStream, Stream};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{
    GroupConfig, ACK_TIMEOUT_DEFAULT, COMMIT_INTERVAL_DEFAULT, DRAIN_TIMEOUT_DEFAULT,
    HEARTBEAT_INTERVAL_DEFAULT, MAX_ATTEMPTS_DEFAULT, MAX_IN_FLIGHT_DEFAULT,
    RETRY_SCHEDULE_DEFAULT, SESSION_TIMEOUT_DEFAULT,
};
pub use delivery::Delivery;
use source::Source;

use crate::config::StartFrom;
use crate::error::{ConsumerError, Result};

/// What every task of one group consumer shares.
pub(crate) struct Shared {
    pub(crate) client: ClusterClient,
    pub(crate) config: GroupConfig,
    pub(crate) topic: Arc<str>,
    pub(crate) retry_topic: Arc<str>,
    pub(crate) dlq_topic: String,
    pub(crate) window: Arc<Semaphore>,
}

/// A member of a consumer group reading one topic, as a [`Stream`] of [`Delivery`]s.
///
/// The stream yields deliveries of the partitions this member holds, interleaved; per
/// partition in offset order (redeliveries come from the retry topic, in the order they fall
/// due). It never ends on its own; a non-retriable failure is yielded once as `Err` and then
/// the stream ends. Call [`GroupConsumer::close`] to leave the group cleanly.
pub struct GroupConsumer {
    receiver: mpsc::Receiver<Result<Delivery>>,
    closing: CancellationToken,
    stop: CancellationToken,
    conductor: Option<JoinHandle<()>>,
    status: Arc<std::sync::Mutex<Status>>,
    ended: bool,
}

#[derive(Debug, Default, Clone)]
struct Status {
    member_id: String,
    partitions: Vec<PartitionIndex>,
}

impl std::fmt::Debug for GroupConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupConsumer").field("ended", &self.ended).finish_non_exhaustive()
    }
}

impl GroupConsumer {
    /// Validates `config`, checks the topic, creates the group's retry topic (as many
    /// partitions as the topic) and dead-letter topic when missing, and joins the group.
    /// Deliveries start once the leader grants partitions (the first heartbeat).
    ///
    /// # Errors
    /// `Config`, `UnknownTopic`, or `Connect` when no leader answered within
    /// `retry_deadline`.
    pub async fn subscribe(config: GroupConfig) -> Result<GroupConsumer> {
        config.validate()?;
        let client = crate::config::cluster_client(
            &config.bootstrap,
            &config.client_id,
            config.request_timeout,
            config.retry_deadline,
        )?;
        let connect_error =
            |source| ConsumerError::Connect { bootstrap: config.bootstrap.clone(), source };
        let metadata =
            match client.call(&MetadataRequest { topics: vec![config.topic.clone()] }).await {
                Ok(m) => m,
                Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {
                    return Err(ConsumerError::UnknownTopic { topic: config.topic.clone() })
                }
                Err(e) => return Err(connect_error(e)),
            };
        let partitions = metadata
            .topics
            .iter()
            .find(|t| t.name == config.topic)
            .map(|t| u32::try_from(t.partitions.len()).unwrap_or(u32::MAX))
            .ok_or_else(|| ConsumerError::UnknownTopic { topic: config.topic.clone() })?;
        let retry = retry_topic(&config.group, &config.topic);
        let dlq = dead_letter_topic(&config.group);
        for (name, count) in [(retry.clone(), partitions), (dlq.clone(), 1)] {
            match client.call(&CreateTopicRequest { name, partitions: count }).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(ErrorCode::TopicExists) => {}
                Err(e) => return Err(connect_error(e)),
            }
        }
        let shared = Arc::new(Shared {
            client,
            topic: Arc::from(config.topic.as_str()),
            retry_topic: Arc::from(retry.as_str()),
            dlq_topic: dlq,
            window: Arc::new(Semaphore::new(config.max_in_flight)),
            config,
        });
        let (output, receiver) = mpsc::channel(shared.config.max_in_flight.min(4096));
        let closing = CancellationToken::new();
        let stop = CancellationToken::new();
        let status = Arc::new(std::sync::Mutex::new(Status::default()));
        let conductor = Conductor {
            shared,
            output,
            closing: closing.clone(),
            stop: stop.clone(),
            status: status.clone(),
            member_id: String::new(),
            workers: BTreeMap::new(),
            wake: Arc::new(Notify::new()),
        };
        let conductor = tokio::spawn(conductor.run());
        Ok(GroupConsumer {
            receiver,
            closing,
            stop,
            conductor: Some(conductor),
            status,
            ended: false,
        })
    }

    /// The id the leader gave this member (empty until the first heartbeat answered).
    pub fn member_id(&self) -> String {
        self.status.lock().map(|s| s.member_id.clone()).unwrap_or_default()
    }

    /// The partitions this member reads now.
    pub fn partitions(&self) -> Vec<PartitionIndex> {
        self.status.lock().map(|s| s.partitions.clone()).unwrap_or_default()
    }

    /// Leaves the group cleanly: stops fetching, waits up to `drain_timeout` for deliveries
    /// already handed out to be settled (keep acking them meanwhile), commits, and leaves so
    /// the partitions move to other members at once. Deliveries not yet taken from the
    /// stream, and those still unsettled at the deadline, are redelivered later (to whichever
    /// member then holds their partition).
    pub async fn close(mut self) {
        self.closing.cancel();
        // Queued deliveries were never seen: drop them (they stay below the commit point).
        self.receiver.close();
        while self.receiver.try_recv().is_ok() {}
        if let Some(c) = self.conductor.take() {
            let _ = c.await;
        }
    }
}

/// Dropping without [`GroupConsumer::close`] stops at once, as a crash would: nothing more is
/// committed and the member does not leave; its partitions move to other members after the
/// session timeout, and everything after the last commit is delivered again.
impl Drop for GroupConsumer {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(c) = self.conductor.take() {
            c.abort();
        }
    }
}

impl Stream for GroupConsumer {
    type Item = Result<Delivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.receiver.poll_recv(cx) {
                Poll::Ready(Some(Ok(d))) => {
                    // Given up while queued (partition revoked): someone else delivers it.
                    if d.in_flight().is_settled() {
                        continue;
                    }
                    d.in_flight().hand_out();
                    return Poll::Ready(Some(Ok(d)));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.ended = true;
                    this.closing.cancel();
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl FusedStream for GroupConsumer {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

/// One held partition: its two sources and their fetch tasks.
struct Worker {
    sources: [Arc<Source>; 2],
    fetching: CancellationToken,
    draining: bool,
}

/// Heartbeats, starts and drains workers, commits, and enforces ack timeouts.
struct Conductor {
    shared: Arc<Shared>,
    output: mpsc::Sender<Result<Delivery>>,
    /// Fired by `close` (and by a fatal stream error): leave cleanly.
    closing: CancellationToken,
    /// Fired by drop: stop every fetch at once.
    stop: CancellationToken,
    status: Arc<std::sync::Mutex<Status>>,
    member_id: String,
    workers: BTreeMap<u32, Worker>,
    wake: Arc<Notify>,
}

impl Conductor {
    async fn run(mut self) {
        let config = self.shared.config.clone();
        let mut heartbeat = tokio::time::interval(config.heartbeat_interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut commit = tokio::time::interval(config.commit_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let reap_every = (config.ack_timeout / 4)
            .clamp(std::time::Duration::from_millis(25), std::time::Duration::from_secs(1));
        let mut reap = tokio::time::interval(reap_every);
        reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (drained_tx, mut drained_rx) = mpsc::unbounded_channel::<u32>();
        let mut last_ok = Instant::now();
        let wake = self.wake.clone();
        loop {
            tokio::select! {
                () = self.closing.cancelled() => break,
                _ = heartbeat.tick() => {
                    if !self.heartbeat(&mut last_ok, &drained_tx).await {
                        break;
                    }
                }
                () = wake.notified() => {
                    if !self.heartbeat(&mut last_ok, &drained_tx).await {
                        break;
                    }
                }
                _ = commit.tick() => self.commit(false).await,
                _ = reap.tick() => self.reap(),
                Some(p) = drained_rx.recv() => {
                    self.workers.remove(&p);
                    self.publish_status();
                    self.wake.notify_one();
                }
            }
        }
        self.shutdown().await;
    }

    fn publish_status(&self) {
        if let Ok(mut s) = self.status.lock() {
            s.member_id.clone_from(&self.member_id);
            s.partitions = self
                .workers
                .iter()
                .filter(|(_, w)| !w.draining)
                .map(|(p, _)| PartitionIndex(*p))
                .collect();
        }
    }

    fn all_sources(&self) -> impl Iterator<Item = &Arc<Source>> {
        self.workers.values().flat_map(|w| w.sources.iter())
    }

    /// One heartbeat and what follows from its answer; false when the consumer must stop.
    async fn heartbeat(
        &mut self,
        last_ok: &mut Instant,
        drained: &mpsc::UnboundedSender<u32>,
    ) -> bool {
        let config = &self.shared.config;
        let request = GroupHeartbeatRequest {
            group: config.group.clone(),
            topic: config.topic.clone(),
            member_id: self.member_id.clone(),
            client_id: config.client_id.clone(),
            session_timeout_ms: u32::try_from(config.session_timeout.as_millis())
                .unwrap_or(u32::MAX),
            owned: self.workers.keys().copied().map(PartitionIndex).collect(),
            in_flight: u32::try_from(self.all_sources().map(|s| s.in_flight()).sum::<usize>())
                .unwrap_or(u32::MAX),
        };
        // One heartbeat may not outlast the session: the client would retry until its retry
        // deadline, while the leader drops this member and gives its partitions away.
        let attempt = tokio::time::timeout(
            config.session_timeout / 2,
            self.shared.client.call_timeout(&request, config.request_timeout),
        );
        let response = tokio::select! {
            () = self.closing.cancelled() => return false,
            r = attempt => r.unwrap_or(Err(ClientError::Timeout(config.session_timeout / 2))),
        };
        let response = match response {
            Ok(r) => r,
            Err(e) if e.is_retriable() => {
                if last_ok.elapsed() > config.session_timeout && !self.workers.is_empty() {
                    // The leader has surely dropped us: others may read our partitions now.
                    tracing::warn!(error = %e, "no heartbeat answered within the session timeout; giving up every partition");
                    for (_, w) in std::mem::take(&mut self.workers) {
                        w.fetching.cancel();
                        for s in &w.sources {
                            s.give_up();
                        }
                    }
                    self.publish_status();
                }
                return true;
            }
            Err(source) => {
                let _ =
                    self.output.send(Err(ConsumerError::Group { what: "heartbeat", source })).await;
                return false;
            }
        };
        *last_ok = Instant::now();
        self.member_id = response.member_id;
        let granted: BTreeSet<u32> = response.assigned.iter().map(|p| p.0).collect();
        let new: Vec<u32> =
            granted.iter().copied().filter(|p| !self.workers.contains_key(p)).collect();
        let revoked: Vec<u32> = self
            .workers
            .iter()
            .filter(|(p, w)| !w.draining && !granted.contains(p))
            .map(|(p, _)| *p)
            .collect();
        for p in revoked {
            self.drain(p, drained.clone());
        }
        if !new.is_empty() {
            match self.start_positions(&new).await {
                Ok(starts) => {
                    for (p, main, retry) in starts {
                        self.start_worker(p, main, retry);
                    }
                }
                Err(e) if e.is_retriable() => {
                    tracing::debug!(error = %e, "could not read committed positions; next heartbeat retries");
                }
                Err(source) => {
                    let _ = self
                        .output
                        .send(Err(ConsumerError::Group {
                            what: "read committed positions",
                            source,
                        }))
                        .await;
                    return false;
                }
            }
        }
        self.publish_status();
        true
    }

    /// Where each new partition starts: the committed position (clamped to what is
    /// stored), else `start` for the topic and the beginning for the retry topic.
    async fn start_positions(
        &self,
        partitions: &[u32],
    ) -> std::result::Result<Vec<(u32, u64, u64)>, ClientError> {
        let config = &self.shared.config;
        let request = DescribeGroupRequest { group: config.group.clone() };
        let offsets = match self.shared.client.call(&request).await {
            Ok(r) => r.offsets,
            Err(e) if e.code() == Some(ErrorCode::UnknownGroup) => Vec::new(),
            Err(e) => return Err(e),
        };
        // Bounds of partitions with no commit yet: from the metadata.
        let metadata = self
            .shared
            .client
            .call(&MetadataRequest {
                topics: vec![config.topic.clone(), self.shared.retry_topic.to_string()],
            })
            .await?;
        let bounds = |topic: &str, p: u32| {
            metadata
                .topics
                .iter()
                .find(|t| t.name == topic)
                .and_then(|t| t.partitions.get(p as usize))
                .map_or((0, 0), |b| (b.log_start.0, b.high_watermark.0))
        };
        let committed = |topic: &str, p: u32| {
            offsets
                .iter()
                .find(|o| o.topic == topic && o.partition.0 == p)
                .and_then(|o| o.committed)
                .map(|c| c.0)
        };
        Ok(partitions
            .iter()
            .map(|&p| {
                let (start, hw) = bounds(&config.topic, p);
                let main = match committed(&config.topic, p) {
                    Some(c) => c.clamp(start, hw),
                    None => match config.start {
                        StartFrom::Earliest => start,
                        StartFrom::Latest => hw,
                        StartFrom::Offset(Offset(o)) => o.clamp(start, hw),
                    },
                };
                let (rstart, rhw) = bounds(&self.shared.retry_topic, p);
                let retry =
                    committed(&self.shared.retry_topic, p).unwrap_or(rstart).clamp(rstart, rhw);
                (p, main, retry)
            })
            .collect())
    }

    fn start_worker(&mut self, p: u32, main: u64, retry: u64) {
        let partition = PartitionIndex(p);
        let sources = [
            Source::new(self.shared.clone(), self.shared.topic.clone(), partition, false, main),
            Source::new(
                self.shared.clone(),
                self.shared.retry_topic.clone(),
                partition,
                true,
                retry,
            ),
        ];
        let fetching = self.stop.child_token();
        for s in &sources {
            tokio::spawn(s.clone().run(fetching.clone(), self.output.clone()));
        }
        tracing::debug!(partition = p, main, retry, "partition taken");
        self.workers.insert(p, Worker { sources, fetching, draining: false });
    }

    /// Revoked: stop fetching `p`, let handed-out deliveries settle (up to `drain_timeout`),
    /// commit, give the rest up, then report it released.
    fn drain(&mut self, p: u32, drained: mpsc::UnboundedSender<u32>) {
        let Some(w) = self.workers.get_mut(&p) else { return };
        w.draining = true;
        w.fetching.cancel();
        let sources = w.sources.clone();
        let shared = self.shared.clone();
        let member_id = self.member_id.clone();
        tokio::spawn(async move {
            wait_drained(&sources, shared.config.drain_timeout).await;
            let points: Vec<(Arc<Source>, u64)> =
                sources.iter().map(|s| (s.clone(), s.give_up())).collect();
            commit_points(&shared, &member_id, &points).await;
            tracing::debug!(partition = p, "partition released");
            let _ = drained.send(p);
        });
    }

    /// Commits every source whose position moved (`all`: every source, moved or not).
    async fn commit(&self, all: bool) {
        let points: Vec<(Arc<Source>, u64)> = self
            .workers
            .values()
            .filter(|w| !w.draining)
            .flat_map(|w| w.sources.iter())
            .filter_map(|s| {
                let point = if all { Some(s.commit_point()) } else { s.uncommitted() };
                point.map(|p| (s.clone(), p))
            })
            .collect();
        if !points.is_empty() && !commit_points(&self.shared, &self.member_id, &points).await {
            self.wake.notify_one();
        }
    }

    /// Ack timeouts (unordered mode; ordered sources time out their one delivery
    /// themselves): each expired delivery is nacked with "ack timeout".
    fn reap(&self) {
        if self.shared.config.ordered {
            return;
        }
        let now = Instant::now();
        for s in self.all_sources() {
            for f in s.take_expired(now) {
                let s = s.clone();
                tokio::spawn(async move {
                    if let Err(e) = s.fail(&f, None, "ack timeout", false).await {
                        tracing::warn!(error = %e, "could not redeliver a timed-out message; retrying at the next timeout");
                    }
                });
            }
        }
    }

    async fn shutdown(mut self) {
        for w in self.workers.values() {
            w.fetching.cancel();
        }
        let sources: Vec<Arc<Source>> = self.all_sources().cloned().collect();
        wait_drained(&sources, self.shared.config.drain_timeout).await;
        let points: Vec<(Arc<Source>, u64)> =
            sources.iter().map(|s| (s.clone(), s.give_up())).collect();
        if !self.member_id.is_empty() {
            commit_points(&self.shared, &self.member_id, &points).await;
            let leave = LeaveGroupRequest {
                group: self.shared.config.group.clone(),
                topic: self.shared.config.topic.clone(),
                member_id: self.member_id.clone(),
            };
            if let Err(e) = self.shared.client.call(&leave).await {
                tracing::debug!(error = %e, "leave failed; the session timeout will drop this member");
            }
        }
        self.workers.clear();
        self.publish_status();
    }
}

/// Waits until no handed-out delivery of `sources` is unfinished, or `timeout`.
async fn wait_drained(sources: &[Arc<Source>], timeout: std::time::Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if sources.iter().all(|s| s.drained()) {
            return;
        }
        let waits = futures_util::future::select_all(
            sources.iter().map(|s| Box::pin(s.changed.notified())),
        );
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return,
            // Notifications can race the check above; look again at least every 50 ms.
            _ = waits => {}
            () = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
        }
    }
}

/// Commits `points`; false when the leader did not know this member (heartbeat first).
async fn commit_points(shared: &Shared, member_id: &str, points: &[(Arc<Source>, u64)]) -> bool {
    if member_id.is_empty() || points.is_empty() {
        return true;
    }
    let request = CommitOffsetsRequest {
        group: shared.config.group.clone(),
        topic: shared.config.topic.clone(),
        member_id: member_id.to_string(),
        offsets: points
            .iter()
            .map(|(s, p)| OffsetCommit {
                topic: s.fetch_topic.to_string(),
                partition: s.partition,
                offset: Offset(*p),
            })
            .collect(),
    };
    match shared.client.call(&request).await {
        Ok(_) => {
            for (s, p) in points {
                s.mark_committed(*p);
            }
            true
        }
        Err(e) if e.code() == Some(ErrorCode::UnknownMember) => {
            tracing::debug!("commit refused: unknown member; rejoining");
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "commit failed; the next one retries");
            true
        }
    }
}
