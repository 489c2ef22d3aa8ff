//! Workload clients of a chaos run. Each records every operation in the shared [`History`]:
//! plain producers, transactional producers (commit, roll back, or go silent and leave it to
//! check-back, which answers from the same intent), and group consumers that ack everything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ferry_consumer::{GroupConfig, GroupConsumer};
use ferry_producer::{
    checker_fn, Message, Producer, ProducerConfig, ProducerError, Resolution, TransactionConfig,
    TransactionalProducer,
};
use ferry_protocol::{ErrorCode, PartitionIndex};
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::history::{Event, Func, Op};

/// The topic every client uses.
pub const TOPIC: &str = "chaos";
/// Its partitions.
pub const PARTITIONS: u32 = 3;
/// The transactional producers' group.
pub const PRODUCER_GROUP: &str = "chaos-producers";
/// The consumers' group.
pub const CONSUMER_GROUP: &str = "chaos-consumers";

/// How long a client request may retry (leader changes) before its outcome counts as unknown.
const RETRY_DEADLINE: Duration = Duration::from_secs(15);

/// The run's history, in memory (written out as JSONL at the end).
pub struct History {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Arc<History> {
        Arc::new(History { start: Instant::now(), events: Mutex::new(Vec::new()) })
    }

    /// Appends one event; `fill` sets the optional fields.
    pub fn record(&self, client: &str, op: Op, f: Func, msg: &str, fill: impl FnOnce(&mut Event)) {
        let t = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut e = Event::new(t, client, op, f, msg);
        fill(&mut e);
        self.events.lock().unwrap_or_else(PoisonError::into_inner).push(e);
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Acknowledged messages so far (`Send` ok or `Commit` ok).
    pub fn acknowledged(&self) -> std::collections::HashSet<String> {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events
            .iter()
            .filter(|e| e.op == Op::Ok && matches!(e.f, Func::Send | Func::Commit))
            .map(|e| e.msg.clone())
            .collect()
    }

    /// Messages some consumer received so far.
    pub fn received(&self) -> std::collections::HashSet<String> {
        let events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        events.iter().filter(|e| e.f == Func::Receive).map(|e| e.msg.clone()).collect()
    }
}

/// Whether a failed request was certainly not carried out: the broker refused it. Anything
/// else (time-outs, lost connections, retry deadline) leaves the outcome unknown.
fn definitely_failed(e: &ProducerError) -> bool {
    match e.code() {
        Some(code) => !code.is_retriable() && code != ErrorCode::Timeout,
        None => matches!(e, ProducerError::UnknownTopic { .. } | ProducerError::Config(_)),
    }
}

fn outcome(e: &ProducerError) -> Op {
    if definitely_failed(e) {
        Op::Fail
    } else {
        Op::Info
    }
}

fn producer_config(bootstrap: &str, client: &str) -> ProducerConfig {
    let mut c = ProducerConfig::new(bootstrap);
    c.client_id = client.to_string();
    c.linger = Duration::from_millis(1);
    c.retry_deadline = RETRY_DEADLINE;
    c
}

/// Sends `"<name>-<seq>"` messages round-robin over the partitions, up to 16 in flight,
/// about `rate` per second, until `stop`.
pub async fn plain_producer(
    name: String,
    bootstrap: String,
    history: Arc<History>,
    stop: CancellationToken,
    rate: u32,
) {
    let producer = loop {
        match Producer::connect(producer_config(&bootstrap, &name)).await {
            Ok(p) => break p,
            Err(e) => {
                tracing::debug!(client = %name, error = %e, "producer connect failed; retrying");
                if stop.is_cancelled() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let pause = Duration::from_secs(1) / rate.max(1);
    let mut in_flight: FuturesUnordered<SendFuture> = FuturesUnordered::new();
    let mut seq = 0u64;
    loop {
        if stop.is_cancelled() {
            break;
        }
        if in_flight.len() >= 16 {
            if let Some((msg, result)) = in_flight.next().await {
                finish_send(&history, &name, &msg, result);
            }
            continue;
        }
        let msg = format!("{name}-{seq}");
        let partition = u32::try_from(seq % u64::from(PARTITIONS)).unwrap_or(0);
        seq += 1;
        history.record(&name, Op::Invoke, Func::Send, &msg, |e| e.partition = Some(partition));
        let message =
            Message::new(Bytes::from(msg.clone())).to_partition(PartitionIndex(partition));
        match producer.send(TOPIC, message).await {
            Ok(ack) => in_flight.push(Box::pin(async move { (msg, ack.await) })),
            Err(e) => {
                let op = outcome(&e);
                history.record(&name, op, Func::Send, &msg, |ev| ev.error = Some(e.to_string()));
            }
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
    while let Some((msg, result)) = in_flight.next().await {
        finish_send(&history, &name, &msg, result);
    }
    let _ = producer.close().await;
}

type SendFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (String, Result<ferry_producer::Delivered, ProducerError>)>
            + Send,
    >,
>;

fn finish_send(
    history: &History,
    name: &str,
    msg: &str,
    result: Result<ferry_producer::Delivered, ProducerError>,
) {
    match result {
        Ok(d) => history.record(name, Op::Ok, Func::Send, msg, |e| {
            e.partition = Some(d.partition.0);
            e.offset = Some(d.offset.0);
        }),
        Err(err) => {
            let op = outcome(&err);
            history.record(name, op, Func::Send, msg, |e| e.error = Some(err.to_string()));
        }
    }
}

/// What the application "did" in each transaction's local part; check-back answers from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Commit (the producer sends the commit, or check-back answers commit).
    Commit,
    /// Roll back.
    Rollback,
}

/// Intents by message id, shared by every instance of the producer group.
pub type Intents = Arc<Mutex<HashMap<String, Intent>>>;

/// One instance of the transactional producer group: half sends `"<name>-t<seq>"`, then per
/// the seeded intent commits, rolls back, or stays silent (one in ten), 4 transactions at a
/// time, until `stop_sending`; it stays connected (answering check-backs) until `stop`.
pub struct TxnClient {
    /// Instance name (also the message id prefix).
    pub name: String,
    /// Cluster to use.
    pub bootstrap: String,
    /// The run's history.
    pub history: Arc<History>,
    /// Shared intents.
    pub intents: Intents,
    /// Seed for intents and silences.
    pub seed: u64,
    /// Starts no more transactions once fired.
    pub stop_sending: CancellationToken,
    /// Disconnects once fired.
    pub stop: CancellationToken,
    /// Dies at once when fired (a crash): transactions in flight are abandoned and this
    /// instance answers no more check-backs.
    pub kill: CancellationToken,
}

impl TxnClient {
    /// Runs the instance.
    pub async fn run(self) {
        let TxnClient { name, bootstrap, history, intents, seed, stop_sending, stop, kill } = self;
        let make_checker = || {
            let history = history.clone();
            let intents = intents.clone();
            let name = name.clone();
            checker_fn(move |view| {
                let history = history.clone();
                let intents = intents.clone();
                let name = name.clone();
                async move {
                    let msg = String::from_utf8_lossy(&view.value).to_string();
                    let intent =
                        intents.lock().unwrap_or_else(PoisonError::into_inner).get(&msg).copied();
                    let (resolution, said) = match intent {
                        Some(Intent::Commit) => (Resolution::Commit, "commit"),
                        Some(Intent::Rollback) => (Resolution::Rollback, "rollback"),
                        None => (Resolution::Unknown, "unknown"),
                    };
                    history.record(&name, Op::Ok, Func::CheckBack, &msg, |e| {
                        e.txn = Some(view.txn_id.0);
                        e.partition = Some(view.partition.0);
                        e.decision = Some(said.into());
                    });
                    resolution
                }
            })
        };
        let mut config = TransactionConfig::new(&bootstrap, PRODUCER_GROUP);
        config.producer = producer_config(&bootstrap, &name);
        let producer = loop {
            match TransactionalProducer::connect(config.clone(), make_checker()).await {
                Ok(p) => break Arc::new(p),
                Err(e) => {
                    tracing::debug!(client = %name, error = %e, "txn producer connect failed; retrying");
                    if stop.is_cancelled() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let mut rng = fastrand::Rng::with_seed(seed);
        let slots = Arc::new(Semaphore::new(4));
        let mut tasks = tokio::task::JoinSet::new();
        let mut seq = 0u64;
        while !stop_sending.is_cancelled() && !kill.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                () = stop_sending.cancelled() => break,
                () = kill.cancelled() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let msg = format!("{name}-t{seq}");
            let partition = u32::try_from(seq % u64::from(PARTITIONS)).unwrap_or(0);
            seq += 1;
            let roll = rng.u32(0..10);
            let intent = if roll < 3 { Intent::Rollback } else { Intent::Commit };
            let silent = roll == 9 || roll == 0;
            intents.lock().unwrap_or_else(PoisonError::into_inner).insert(msg.clone(), intent);
            let (producer, history, name) = (producer.clone(), history.clone(), name.clone());
            tasks.spawn(async move {
                one_transaction(&producer, &history, &name, &msg, partition, intent, silent).await;
                drop(permit);
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if kill.is_cancelled() {
            // The instance dies with whatever it has in flight: no decisions, no more
            // check-back answers. Outcomes never learned stay as they are (unknown).
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            drop(producer);
            return;
        }
        tokio::select! {
            () = async { while tasks.join_next().await.is_some() {} } => {}
            () = stop.cancelled() => tasks.abort_all(),
            () = kill.cancelled() => tasks.abort_all(),
        }
        // Stay connected for check-backs until the run is over (or a crash).
        tokio::select! {
            () = stop.cancelled() => {}
            () = kill.cancelled() => {}
        }
        drop(producer);
    }
}

async fn one_transaction(
    producer: &TransactionalProducer,
    history: &History,
    name: &str,
    msg: &str,
    partition: u32,
    intent: Intent,
    silent: bool,
) {
    history.record(name, Op::Invoke, Func::SendHalf, msg, |e| e.partition = Some(partition));
    let message =
        Message::new(Bytes::from(msg.to_string())).to_partition(PartitionIndex(partition));
    let txn = match producer.send_half(TOPIC, message).await {
        Ok(t) => t,
        Err(err) => {
            let op = outcome(&err);
            history.record(name, op, Func::SendHalf, msg, |e| e.error = Some(err.to_string()));
            return;
        }
    };
    let txn_id = txn.id().0;
    history.record(name, Op::Ok, Func::SendHalf, msg, |e| {
        e.txn = Some(txn_id);
        e.partition = Some(partition);
    });
    if silent {
        drop(txn); // left to check-back
        return;
    }
    match intent {
        Intent::Commit => {
            history.record(name, Op::Invoke, Func::Commit, msg, |e| e.txn = Some(txn_id));
            match txn.commit().await {
                Ok(c) => history.record(name, Op::Ok, Func::Commit, msg, |e| {
                    e.txn = Some(txn_id);
                    e.partition = Some(c.partition.0);
                    e.offset = c.offset.map(|o| o.0);
                }),
                Err(err) => {
                    let op = outcome(&err);
                    history.record(name, op, Func::Commit, msg, |e| {
                        e.txn = Some(txn_id);
                        e.error = Some(err.to_string());
                    });
                }
            }
        }
        Intent::Rollback => {
            history.record(name, Op::Invoke, Func::Rollback, msg, |e| e.txn = Some(txn_id));
            match txn.rollback().await {
                Ok(_) => {
                    history.record(name, Op::Ok, Func::Rollback, msg, |e| e.txn = Some(txn_id))
                }
                Err(err) => {
                    let op = outcome(&err);
                    history.record(name, op, Func::Rollback, msg, |e| {
                        e.txn = Some(txn_id);
                        e.error = Some(err.to_string());
                    });
                }
            }
        }
    }
}

/// Joins the group, retrying until it works; `None` when told to stop first.
async fn subscribe(
    config: &GroupConfig,
    name: &str,
    stop: &CancellationToken,
    kill: &CancellationToken,
) -> Option<GroupConsumer> {
    loop {
        match GroupConsumer::subscribe(config.clone()).await {
            Ok(m) => return Some(m),
            Err(e) => {
                tracing::debug!(client = %name, error = %e, "consumer subscribe failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = kill.cancelled() => return None,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }
}

/// A member of the consumer group that records and acks every delivery until `stop` (then it
/// closes cleanly) or `kill` (then it drops as a crash would: no commit, no leave).
pub async fn consumer(
    name: String,
    bootstrap: String,
    history: Arc<History>,
    stop: CancellationToken,
    kill: CancellationToken,
) {
    let mut config = GroupConfig::new(&bootstrap, CONSUMER_GROUP, TOPIC);
    config.client_id = name.clone();
    config.session_timeout = Duration::from_secs(3);
    config.heartbeat_interval = Duration::from_millis(500);
    config.commit_interval = Duration::from_millis(300);
    config.drain_timeout = Duration::from_secs(3);
    config.retry_deadline = Duration::from_secs(60);
    let Some(mut member) = subscribe(&config, &name, &stop, &kill).await else { return };
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => break,
            () = kill.cancelled() => break,
            d = member.next() => d,
        };
        match next {
            Some(Ok(d)) => {
                let msg = String::from_utf8_lossy(&d.value).to_string();
                history.record(&name, Op::Ok, Func::Receive, &msg, |e| {
                    e.partition = Some(d.partition.0);
                    e.offset = Some(d.offset.0);
                    e.attempt = Some(d.attempt);
                });
                d.ack();
            }
            // The stream ended on an error (the cluster stayed unreachable past the retry
            // deadline): join again, as an application would.
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(client = %name, error = %e, "consumer failed; joining again");
                }
                drop(member);
                match subscribe(&config, &name, &stop, &kill).await {
                    Some(m) => member = m,
                    None => return,
                }
            }
        }
    }
    if kill.is_cancelled() {
        drop(member);
    } else {
        member.close().await;
    }
}
