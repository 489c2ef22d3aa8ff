//! One subscription's delivery loop on the leader.
//!
//! The worker keeps up to `concurrency` requests in flight: first due retries (found in the
//! due index), then new messages, read partition by partition from the cursors. Every result
//! is collected and proposed as one `PushResults` command per round (while one proposal is in
//! flight the next results wait, so a busy worker writes few, large entries). A message stays
//! "unsettled" in memory from its dispatch until the command holding its result applied, so a
//! due retry is never sent twice by one leader.
//!
//! Only `schedule`, `Retry-After` and the jitter decide a retry's time, and the worker reads
//! the clock from [`crate::clock::Clock`] (tests move it by hand).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_protocol::push::{message_id, SubscriptionStatus};
use ferry_protocol::{Offset, PartitionIndex, Record, RecordBatch};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::sign::Signer;
use crate::handlers::Context;
use crate::replication::ReplicaError;
use crate::state::command::{Command, CommandResponse};
use crate::state::push::{
    Alteration, AttemptResult, Cursor, DueRetry, Outcome, PushCommand, SubRecord, SETTLED_AHEAD_MAX,
};
use crate::state::{PartitionHandle, StateError};

/// Most bytes of a response body read (the rest is dropped with the connection).
pub const RESPONSE_BODY_BYTES_MAX: usize = 64 * 1024;

/// Bytes of a response body kept in `last_error`.
const ERROR_BODY_BYTES: usize = 160;

/// Most results in one `PushResults` command.
const RESULTS_PER_COMMAND_MAX: usize = 2048;

/// Due retries read per scan of the due index.
const DUE_SCAN: usize = 256;

/// How often the due index is scanned while retries are pending.
const DUE_SCAN_EVERY: Duration = Duration::from_millis(50);

/// Bytes read from a partition per fetch.
const READ_BYTES: usize = 256 * 1024;

/// Longest wait between loop rounds with nothing to do (a changed subscription, a clock
/// moved by a test, a missed wake-up are noticed within this).
const IDLE_WAIT: Duration = Duration::from_millis(100);

/// Longest `Retry-After` honoured.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(24 * 3600);

/// Jitter: a scheduled delay is drawn from `[d * (1 - JITTER), d * (1 + JITTER)]`.
pub const JITTER: f64 = 0.1;

/// What one request ended with.
#[derive(Debug, Clone)]
struct Answer {
    status: Option<u16>,
    retry_after: Option<Duration>,
    error: String,
    kind: &'static str,
}

/// A message on its way.
struct Job {
    partition: u32,
    offset: u64,
    first: bool,
    expected_due_ms: u64,
    attempts_before: u32,
}

struct PartitionReader {
    handle: PartitionHandle,
    /// Next offset to read from the log.
    read_from: u64,
    /// Read and not yet dispatched.
    buffer: VecDeque<(u64, Record)>,
}

struct Worker {
    ctx: Arc<Context>,
    name: String,
    sub_id: u64,
    client: reqwest::Client,
    /// The subscription as last read, and its signer.
    sub: Arc<SubRecord>,
    signer: (Vec<String>, Signer),
    partitions: BTreeMap<u32, PartitionReader>,
    /// Local view of the cursors: settled as soon as a first attempt's result is in.
    cursors: BTreeMap<u32, Cursor>,
    /// Dispatched and not yet applied.
    unsettled: HashSet<(u32, u64)>,
    due: VecDeque<DueRetry>,
    last_due_scan: Option<Instant>,
    next_partition: usize,
}

/// Delivers subscription `name` (id `sub_id`) until `stop`, the subscription changes, or this
/// node stops leading; in-flight requests finish and their results are proposed first.
pub async fn run(ctx: Arc<Context>, name: String, sub_id: u64, stop: CancellationToken) {
    let mut worker = match Worker::new(ctx, &name, sub_id) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(subscription = %name, error = %e, "push worker cannot start");
            return;
        }
    };
    tracing::info!(subscription = %name, url = %worker.sub.url, "push worker started");
    if let Err(e) = worker.run(&stop).await {
        tracing::warn!(subscription = %name, error = %e, "push worker stopped");
    } else {
        tracing::info!(subscription = %name, "push worker stopped");
    }
}

type Flush = tokio::task::JoinHandle<(Result<CommandResponse, ReplicaError>, Vec<(u32, u64)>)>;

impl Worker {
    fn new(ctx: Arc<Context>, name: &str, sub_id: u64) -> Result<Worker, String> {
        let state = ctx.replica.state().clone();
        let sub = state
            .push_subscription(name)
            .filter(|s| s.id == sub_id)
            .ok_or_else(|| "the subscription is gone".to_string())?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(u64::from(sub.timeout_ms)))
            .connect_timeout(Duration::from_millis(u64::from(sub.timeout_ms)))
            .pool_max_idle_per_host(sub.concurrency as usize)
            .tcp_nodelay(true)
            .user_agent(concat!("ferrymq/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        let topics = state
            .topics(std::slice::from_ref(&sub.topic))
            .map_err(|e| format!("topic {}: {e}", sub.topic))?;
        let mut partitions = BTreeMap::new();
        for p in topics.into_iter().flat_map(|t| t.partitions) {
            let handle = state
                .partition(&sub.topic, PartitionIndex(p.index.0))
                .map_err(|e| format!("partition {}: {e}", p.index.0))?;
            let next = sub.cursors.get(&p.index.0).map_or(0, |c| c.next);
            let read_from = next.max(handle.log_start().0);
            partitions
                .insert(p.index.0, PartitionReader { handle, read_from, buffer: VecDeque::new() });
        }
        let now = ctx.config.clock.now_ms();
        let secrets: Vec<String> =
            sub.signing_secrets(now).into_iter().map(str::to_string).collect();
        let signer = Signer::new(secrets.iter().map(String::as_str));
        Ok(Worker {
            ctx,
            name: name.to_string(),
            sub_id,
            client,
            cursors: sub.cursors.clone(),
            sub,
            signer: (secrets, signer),
            partitions,
            unsettled: HashSet::new(),
            due: VecDeque::new(),
            last_due_scan: None,
            next_partition: 0,
        })
    }

    async fn run(&mut self, stop: &CancellationToken) -> Result<(), String> {
        let state = self.ctx.replica.state().clone();
        let mut changes = state.watch_changes();
        let mut tasks: JoinSet<(Job, Answer, Duration)> = JoinSet::new();
        let mut results: Vec<(AttemptResult, (u32, u64))> = Vec::new();
        let mut flush: Option<Flush> = None;
        let mut draining = false;
        let mut disable: Option<String> = None;
        loop {
            if !draining {
                match state.push_subscription(&self.name) {
                    Some(s) if s.id == self.sub_id && s.status == SubscriptionStatus::Active => {
                        if !Arc::ptr_eq(&s, &self.sub) {
                            self.sub = s;
                        }
                    }
                    _ => draining = true,
                }
                // A deposed leader stops starting requests at once, not at the supervisor's
                // next tick: the new leader sends from the replicated positions.
                if stop.is_cancelled() || !self.ctx.replica.is_leader() {
                    draining = true;
                }
            }
            if !draining {
                self.refresh_signer();
                let concurrency = self.sub.concurrency.max(1) as usize;
                while tasks.len() < concurrency {
                    let Some((job, record)) = self.next_job().map_err(|e| e.to_string())? else {
                        break;
                    };
                    self.unsettled.insert((job.partition, job.offset));
                    tasks.spawn(self.attempt(job, record));
                }
            }
            if flush.is_none() && !results.is_empty() {
                let take = results.len().min(RESULTS_PER_COMMAND_MAX);
                let (batch, keys): (Vec<AttemptResult>, Vec<(u32, u64)>) =
                    results.drain(..take).unzip();
                let command = Command::Push(PushCommand::Results {
                    name: self.name.clone(),
                    sub_id: self.sub_id,
                    stamped_ms: self.ctx.config.clock.now_ms(),
                    results: batch,
                });
                let replica = self.ctx.replica.clone();
                flush = Some(tokio::spawn(async move { (replica.propose(command).await, keys) }));
            }
            if let Some(reason) = disable.take() {
                let command = Command::Push(PushCommand::Alter {
                    name: self.name.clone(),
                    sub_id: self.sub_id,
                    stamped_ms: self.ctx.config.clock.now_ms(),
                    change: Alteration::Disable { reason },
                });
                if let Err(e) = self.ctx.replica.propose(command).await {
                    return Err(format!("could not disable: {}", e.message));
                }
            }
            if draining && tasks.is_empty() && results.is_empty() && flush.is_none() {
                return Ok(());
            }
            // Wake when the earliest retry falls due. One due already (held back by the scan
            // pace, or in flight) is picked up on the next scan, not by spinning.
            // With every slot busy a finished request wakes the loop first: no index read.
            let slot_free = tasks.len() < self.sub.concurrency.max(1) as usize;
            let (wait, next_due) = if self.sub.retrying > 0 && slot_free && !draining {
                let next = state.push_next_due(self.sub_id).map_err(|e| e.to_string())?;
                let now = self.ctx.config.clock.now_ms();
                (DUE_SCAN_EVERY, next.filter(|due| *due > now).unwrap_or(u64::MAX))
            } else {
                (IDLE_WAIT, u64::MAX)
            };
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    let (job, answer, took) = done.map_err(|e| format!("attempt task: {e}"))?;
                    let metrics = &self.ctx.metrics.push;
                    metrics.deliveries.with_label_values(&[answer.kind]).inc();
                    metrics.duration.observe(took.as_secs_f64());
                    if answer.status == Some(410) && disable.is_none() {
                        disable = Some("the endpoint answered 410 Gone".into());
                        draining = true;
                    }
                    let key = (job.partition, job.offset);
                    let result = self.result_of(&job, &answer);
                    if job.first {
                        self.cursors.entry(job.partition).or_default().settle(job.offset);
                    }
                    results.push((result, key));
                }
                joined = async { flush.as_mut().expect("guarded").await }, if flush.is_some() => {
                    flush = None;
                    match joined {
                        Ok((Ok(CommandResponse::Rejected { message, .. }), _)) => {
                            return Err(format!("results refused: {message}"))
                        }
                        Ok((Ok(_), keys)) => {
                            for k in keys {
                                self.unsettled.remove(&k);
                            }
                        }
                        Ok((Err(e), _)) => {
                            return Err(format!("results not stored: {}", e.message))
                        }
                        Err(e) => return Err(format!("results task: {e}")),
                    }
                }
                _ = changes.changed() => {}
                _ = self.ctx.config.clock.sleep_until(next_due, wait) => {}
                _ = stop.cancelled(), if !draining => {}
            }
        }
    }

    /// Rebuilds the signer when the secrets (or the old one's grace) changed.
    fn refresh_signer(&mut self) {
        let now = self.ctx.config.clock.now_ms();
        let secrets = self.sub.signing_secrets(now);
        if !secrets.iter().copied().eq(self.signer.0.iter().map(String::as_str)) {
            let owned: Vec<String> = secrets.into_iter().map(str::to_string).collect();
            self.signer = (owned.clone(), Signer::new(owned.iter().map(String::as_str)));
        }
    }

    /// The next message to send: a due retry first, then a new message.
    fn next_job(&mut self) -> Result<Option<(Job, Record)>, StateError> {
        if let Some(job) = self.next_retry()? {
            return Ok(Some(job));
        }
        self.next_new()
    }

    fn next_retry(&mut self) -> Result<Option<(Job, Record)>, StateError> {
        let state = self.ctx.replica.state().clone();
        let now = self.ctx.config.clock.now_ms();
        if self.due.is_empty()
            && self.sub.retrying > 0
            && self.last_due_scan.is_none_or(|t| t.elapsed() >= DUE_SCAN_EVERY)
        {
            self.last_due_scan = Some(Instant::now());
            let found = state.push_due(self.sub_id, now, DUE_SCAN + self.unsettled.len())?;
            self.due = found
                .into_iter()
                .filter(|d| !self.unsettled.contains(&(d.partition, d.offset)))
                .take(DUE_SCAN)
                .collect();
        }
        while let Some(d) = self.due.pop_front() {
            if d.due_ms > now || self.unsettled.contains(&(d.partition, d.offset)) {
                continue;
            }
            let Some(rec) = state.push_delivery(self.sub_id, d.partition, d.offset)? else {
                continue;
            };
            if rec.failed || rec.next_attempt_ms != d.due_ms {
                continue;
            }
            let Some(record) = self.read_one(d.partition, d.offset)? else {
                // Gone from the log (topic recreated): nothing to send; the record stays
                // visible to operators until the subscription is reset.
                continue;
            };
            let job = Job {
                partition: d.partition,
                offset: d.offset,
                first: false,
                expected_due_ms: d.due_ms,
                attempts_before: rec.attempts,
            };
            return Ok(Some((job, record)));
        }
        Ok(None)
    }

    fn read_one(&self, partition: u32, offset: u64) -> Result<Option<Record>, StateError> {
        let Some(reader) = self.partitions.get(&partition) else { return Ok(None) };
        let state = self.ctx.replica.state();
        for b in state.read(&reader.handle, Offset(offset), 1)? {
            let batch = RecordBatch::from_trusted(b.bytes).map_err(|e| {
                StateError::Corrupt(format!("stored batch at {}: {e}", b.base_offset.0))
            })?;
            for (o, r) in (b.base_offset.0..).zip(batch.records()) {
                if o == offset {
                    return r.map(Some).map_err(|e| StateError::Corrupt(e.to_string()));
                }
            }
        }
        Ok(None)
    }

    fn next_new(&mut self) -> Result<Option<(Job, Record)>, StateError> {
        let count = self.partitions.len();
        for _ in 0..count {
            let index = self.next_partition % count.max(1);
            self.next_partition = self.next_partition.wrapping_add(1);
            let Some((&p, _)) = self.partitions.iter().nth(index) else { continue };
            if let Some(found) = self.next_in_partition(p)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    fn next_in_partition(&mut self, p: u32) -> Result<Option<(Job, Record)>, StateError> {
        let cursor = self.cursors.entry(p).or_default();
        let Some(reader) = self.partitions.get_mut(&p) else { return Ok(None) };
        let unsettled = &self.unsettled;
        loop {
            if let Some((offset, _)) = reader.buffer.front() {
                let offset = *offset;
                if offset >= cursor.next.saturating_add(SETTLED_AHEAD_MAX as u64) {
                    return Ok(None);
                }
                let Some((_, record)) = reader.buffer.pop_front() else { return Ok(None) };
                if cursor.is_settled(offset) || unsettled.contains(&(p, offset)) {
                    continue;
                }
                let job = Job {
                    partition: p,
                    offset,
                    first: true,
                    expected_due_ms: 0,
                    attempts_before: 0,
                };
                return Ok(Some((job, record)));
            }
            if reader.read_from >= reader.handle.high_watermark().0 {
                return Ok(None);
            }
            let state = self.ctx.replica.state();
            let from = reader.read_from.max(reader.handle.log_start().0);
            let batches = state.read(&reader.handle, Offset(from), READ_BYTES)?;
            if batches.is_empty() {
                return Ok(None);
            }
            for b in batches {
                let batch = RecordBatch::from_trusted(b.bytes).map_err(|e| {
                    StateError::Corrupt(format!("stored batch at {}: {e}", b.base_offset.0))
                })?;
                for (o, r) in (b.base_offset.0..).zip(batch.records()) {
                    let r = r.map_err(|e| StateError::Corrupt(e.to_string()))?;
                    if o >= from {
                        reader.buffer.push_back((o, r));
                    }
                    reader.read_from = reader.read_from.max(o + 1);
                }
            }
        }
    }

    /// The request for one message, run on its own task.
    fn attempt(
        &self,
        job: Job,
        record: Record,
    ) -> impl std::future::Future<Output = (Job, Answer, Duration)> + Send + 'static {
        let client = self.client.clone();
        let url = self.sub.url.clone();
        let id = message_id(&self.name, job.partition, job.offset);
        let timestamp_s = self.ctx.config.clock.now_ms() / 1000;
        let signature = self.signer.1.sign(&id, timestamp_s, &record.value);
        let headers = request_headers(&self.sub.topic, &job, &id, timestamp_s, &signature, &record);
        let body = record.value;
        async move {
            let started = Instant::now();
            let answer = send(&client, &url, headers, body).await;
            (job, answer, started.elapsed())
        }
    }

    fn result_of(&self, job: &Job, answer: &Answer) -> AttemptResult {
        let now = self.ctx.config.clock.now_ms();
        let delivered = answer.status.is_some_and(|s| (200..300).contains(&s));
        let attempts = job.attempts_before.saturating_add(1);
        let outcome = if delivered {
            Outcome::Delivered
        } else if attempts >= self.sub.max_attempts {
            Outcome::Failed
        } else {
            Outcome::Retry
        };
        let delay = match answer.retry_after {
            Some(d) => u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            None => jittered(self.sub.delay_after(attempts)),
        };
        AttemptResult {
            partition: job.partition,
            offset: job.offset,
            first: job.first,
            expected_due_ms: job.expected_due_ms,
            outcome,
            next_attempt_ms: if outcome == Outcome::Retry { now.saturating_add(delay) } else { 0 },
            status: answer.status.unwrap_or(0),
            error: if delivered { String::new() } else { answer.error.clone() },
        }
    }
}

/// `delay_ms` moved by up to ±[`JITTER`], so retries of many messages spread out.
pub fn jittered(delay_ms: u64) -> u64 {
    let factor = 1.0 + JITTER * (fastrand::f64() * 2.0 - 1.0);
    (delay_ms as f64 * factor).round() as u64
}

/// Headers of one webhook request: the Standard Webhooks three, the message's own headers
/// (internal `ferry-*` ones and those HTTP owns are left out), and where it came from.
fn request_headers(
    topic: &str,
    job: &Job,
    id: &str,
    timestamp_s: u64,
    signature: &str,
    record: &Record,
) -> HeaderMap {
    const RESERVED: [&str; 8] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "expect",
    ];
    let mut h = HeaderMap::new();
    for (name, value) in &record.headers {
        let lower = name.to_ascii_lowercase();
        if ferry_protocol::group::headers::is_internal(&lower) || RESERVED.contains(&lower.as_str())
        {
            continue;
        }
        if let (Ok(n), Ok(v)) =
            (HeaderName::from_bytes(lower.as_bytes()), HeaderValue::from_bytes(value))
        {
            h.append(n, v);
        }
    }
    if !h.contains_key(CONTENT_TYPE) {
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    }
    let mut put = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(HeaderName::from_static(name), v);
        }
    };
    put("webhook-id", id);
    put("webhook-timestamp", &timestamp_s.to_string());
    put("webhook-signature", signature);
    put("ferry-topic", topic);
    put("ferry-partition", &job.partition.to_string());
    put("ferry-offset", &job.offset.to_string());
    put("ferry-attempt", &(job.attempts_before + 1).to_string());
    if let Some(key) = record.key.as_ref().and_then(|k| std::str::from_utf8(k).ok()) {
        put("ferry-key", key);
    }
    h
}

async fn send(client: &reqwest::Client, url: &str, headers: HeaderMap, body: Bytes) -> Answer {
    let response = match client.post(url).headers(headers).body(body).send().await {
        Ok(r) => r,
        Err(e) => {
            let (kind, what) = if e.is_timeout() {
                ("timeout", "timed out")
            } else if e.is_connect() {
                ("connect_error", "could not connect")
            } else {
                ("connect_error", "request failed")
            };
            return Answer {
                status: None,
                retry_after: None,
                error: format!("{what}: {}", error_chain(&e)),
                kind,
            };
        }
    };
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
        .map(|d| d.min(RETRY_AFTER_MAX));
    // Read the body up to the cap (so the connection can be reused), then stop.
    let mut response = response;
    let mut head = Vec::new();
    let mut read = 0usize;
    let mut timed_out = false;
    while read < RESPONSE_BODY_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                if head.len() < ERROR_BODY_BYTES {
                    let take = (ERROR_BODY_BYTES - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                }
            }
            Ok(None) => break,
            Err(e) => {
                timed_out = e.is_timeout();
                break;
            }
        }
    }
    let ok = (200..300).contains(&status);
    let kind = match status {
        _ if ok => "delivered",
        410 => "gone",
        _ => "http_error",
    };
    let error = if ok {
        String::new()
    } else {
        let text = String::from_utf8_lossy(&head);
        let text = text.trim();
        let mut e = format!("HTTP {status}");
        if (300..400).contains(&status) {
            e.push_str(" (redirects are not followed)");
        }
        if !text.is_empty() {
            e.push_str(": ");
            e.push_str(text);
        }
        if timed_out {
            e.push_str(" (body timed out)");
        }
        e
    };
    Answer { status: Some(status), retry_after, error, kind }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `Retry-After`: delay seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later = std::time::SystemTime::now() + Duration::from_secs(3600);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(d > Duration::from_secs(3590) && d <= Duration::from_secs(3600), "{d:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        for _ in 0..1000 {
            let d = jittered(10_000);
            assert!((9_000..=11_000).contains(&d), "{d}");
        }
    }

    #[test]
    fn request_headers_keep_application_headers_and_drop_reserved_ones() {
        let record = Record {
            timestamp_ms: 1,
            key: Some(Bytes::from_static(b"k1")),
            headers: vec![
                ("Content-Type".into(), Bytes::from_static(b"application/json")),
                ("x-trace".into(), Bytes::from_static(b"abc")),
                ("ferry-dedup-id".into(), Bytes::from_static(b"secret-ish")),
                ("webhook-id".into(), Bytes::from_static(b"forged")),
                ("bad header".into(), Bytes::from_static(b"v")),
            ],
            value: Bytes::from_static(b"{}"),
        };
        let job =
            Job { partition: 2, offset: 9, first: true, expected_due_ms: 0, attempts_before: 0 };
        let h = request_headers("orders", &job, "s.2.9", 77, "v1,xyz", &record);
        assert_eq!(h["content-type"], "application/json");
        assert_eq!(h["x-trace"], "abc");
        assert_eq!(h["webhook-id"], "s.2.9");
        assert_eq!(h.get_all("webhook-id").iter().count(), 1);
        assert_eq!(h["webhook-timestamp"], "77");
        assert_eq!(h["ferry-attempt"], "1");
        assert_eq!(h["ferry-key"], "k1");
        assert!(h.get("ferry-dedup-id").is_none());
    }
}
