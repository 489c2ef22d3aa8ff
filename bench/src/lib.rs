//! ferry-bench: load generator for ferrymq, with the same workloads against NATS JetStream so
//! the two can be compared side by side in one run (`bench/compare-nats.sh`).
//!
//! `main` parses flags and calls [`run`]; the workload drivers in [`workload`] are shared by
//! both systems, whose adapters live in [`ferry`] and [`nats`].
//!
//! ```text
//! ferry-bench produce --partitions 4 --count 200000 --concurrency 4 --warmup 5000
//! ferry-bench produce --duration 30s --rate 20000 --linger 1ms --json   # latency at moderate load
//! ferry-bench consume --concurrency 4                    # read every stored message from earliest
//! ferry-bench consume --group g1 --concurrency 3 --nack-ratio 0.1   # as consumer group members
//! ferry-bench e2e --partitions 4 --count 100000 --rate 10000           # send -> receipt latency
//! ferry-bench txn --partitions 4 --count 20000 --transactions-in-flight 64  # half -> commit
//! ferry-bench push --messages 50000 --concurrency 64     # webhook deliveries to a local receiver
//! ferry-bench produce --system nats --nats-url nats://127.0.0.1:4222 --partitions 4 --replicas 3
//! ```
//!
//! Each `--concurrency` slot is its own client instance (connection) and task, with at most
//! `--in-flight` unacknowledged messages. Measuring starts once every slot finished its
//! `--warmup` share; `elapsed` runs to the last ack (produce) or receipt (consume, e2e).
//! Latency at full load is mostly queueing (in-flight / throughput); use `--rate` to see
//! latency at a given load. The txn workload (ferrymq only) has its own driver in [`txn`],
//! and so has consume --group (ferrymq only) in [`group`].

pub mod chaos;
pub mod cli;
pub mod ferry;
pub mod group;
pub mod nats;
pub mod outbox;
pub mod payload;
pub mod push;
pub mod report;
pub mod txn;
pub mod workload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::try_join_all;

use crate::cli::{Args, System, Workload, COUNT_DEFAULT};
use crate::group::{MemberOutcome, MemberPlan, Processed};
use crate::payload::Clock;
use crate::report::{rates, BenchResult, GroupReport, LatencyKind, MemberReport, TxnReport};
use crate::txn::TxnPlan;
use crate::workload::{
    partitions_for_reader, run_producers, watch_reads, ProduceOutcome, ProducePlan, ReadEnd,
    ReadMode, ReadOutcome, ReadProgress, Stop,
};

/// Runs the workload `args` names and returns what it measured.
///
/// # Errors
/// When the flags do not go together ([`Args::validate`]), the system cannot be reached or
/// set up, a client fails to connect, or a client becomes unusable mid-run. Individual failed
/// sends (and transactions) are counted in the result instead.
pub async fn run(args: &Args) -> anyhow::Result<BenchResult> {
    args.validate().map_err(anyhow::Error::msg)?;
    match args.workload {
        Workload::Produce => produce(args).await,
        Workload::Consume => match args.consume_group() {
            Some(group) => consume_group(args, group).await,
            None => consume(args).await,
        },
        Workload::E2e => e2e(args).await,
        Workload::Txn => txn(args).await,
    }
}

/// The topic (ferrymq) or stream (NATS) prepared for a run.
enum Target {
    Ferry(ferry_protocol::messages::TopicMetadata),
    Nats(nats::StreamSetup),
}

impl Target {
    async fn prepare(args: &Args) -> anyhow::Result<Target> {
        Ok(match args.system {
            System::Ferry => Target::Ferry(ferry::prepare_topic(args).await?),
            System::Nats => Target::Nats(nats::prepare_stream(args).await?),
        })
    }

    fn partitions(&self) -> u32 {
        match self {
            Target::Ferry(t) => u32::try_from(t.partitions.len()).unwrap_or(u32::MAX),
            Target::Nats(s) => s.partitions,
        }
    }

    /// Messages stored now.
    fn stored(&self) -> u64 {
        match self {
            Target::Ferry(t) => {
                t.partitions.iter().map(|p| p.high_watermark.0.saturating_sub(p.log_start.0)).sum()
            }
            Target::Nats(s) => s.messages,
        }
    }
}

fn stop_of(args: &Args) -> Stop {
    match (args.count, args.duration) {
        (_, Some(d)) => Stop::Duration(d),
        (Some(n), None) => Stop::Count(n),
        (None, None) => Stop::Count(COUNT_DEFAULT),
    }
}

fn size_of(args: &Args) -> usize {
    usize::try_from(args.size).unwrap_or(usize::MAX)
}

fn produce_plan(args: &Args, partitions: u32) -> ProducePlan {
    ProducePlan {
        stop: stop_of(args),
        warmup: args.warmup,
        rate: args.rate,
        size: size_of(args),
        partitions,
        in_flight_max: usize::try_from(args.in_flight).unwrap_or(usize::MAX),
    }
}

/// Connects `--concurrency` producers and runs the plan.
async fn run_produce_side(
    args: &Args,
    partitions: u32,
    on_start: impl FnOnce(Instant),
) -> anyhow::Result<ProduceOutcome> {
    let plan = produce_plan(args, partitions);
    let slots = 0..args.concurrency;
    match args.system {
        System::Ferry => {
            let senders = try_join_all(slots.map(|i| ferry::FerrySender::connect(args, i))).await?;
            run_producers(senders, &plan, on_start).await
        }
        System::Nats => {
            let senders =
                try_join_all(slots.map(|i| nats::NatsSender::connect(args, i, partitions))).await?;
            run_producers(senders, &plan, on_start).await
        }
    }
}

/// A result with the run's shape filled in from `args`.
fn result_for(args: &Args, partitions: u32) -> BenchResult {
    BenchResult {
        system: args.system.name(),
        workload: args.workload.name(),
        topic: args.topic.clone(),
        partitions,
        size_bytes: args.size,
        concurrency: args.concurrency,
        consumers: None,
        rate_target: args.rate,
        warmup: args.warmup,
        messages: 0,
        bytes: 0,
        elapsed_s: 0.0,
        msgs_per_s: 0.0,
        mb_per_s: 0.0,
        latency_kind: None,
        latency_ms: None,
        ack_latency_ms: None,
        errors: 0,
        first_error: None,
        incomplete: None,
        txn: None,
        group: None,
    }
}

fn set_rates(result: &mut BenchResult, messages: u64, bytes: u64, elapsed: Duration) {
    let (msgs_per_s, mb_per_s) = rates(messages, bytes, elapsed);
    result.messages = messages;
    result.bytes = bytes;
    result.elapsed_s = elapsed.as_secs_f64();
    result.msgs_per_s = msgs_per_s;
    result.mb_per_s = mb_per_s;
}

async fn produce(args: &Args) -> anyhow::Result<BenchResult> {
    let target = Target::prepare(args).await?;
    let partitions = target.partitions();
    let outcome = run_produce_side(args, partitions, |_| {}).await?;
    let mut result = result_for(args, partitions);
    set_rates(&mut result, outcome.acked, outcome.acked * args.size, outcome.elapsed);
    result.latency_kind = Some(LatencyKind::SendToAck);
    result.latency_ms = outcome.latency.summary();
    result.errors = outcome.errors;
    result.first_error = outcome.first_error;
    Ok(result)
}

/// Spawns a reading task per reader; returns their handles.
type ReadTasks = Vec<tokio::task::JoinHandle<ReadOutcome>>;

async fn join_reads(tasks: ReadTasks) -> anyhow::Result<ReadOutcome> {
    let mut total = ReadOutcome::default();
    for task in tasks {
        let outcome = task.await.map_err(|e| anyhow::anyhow!("reader task failed: {e}"))?;
        total.absorb(outcome)?;
    }
    Ok(total)
}

fn incomplete_reason(
    end: &ReadEnd,
    received: u64,
    wanted: Option<u64>,
    idle: Duration,
) -> Option<String> {
    match end {
        ReadEnd::Idle(_) => Some(format!(
            "nothing arrived for {idle:?}; read {received} of {}",
            wanted.map_or_else(|| "?".to_string(), |w| w.to_string())
        )),
        ReadEnd::Reached(_) | ReadEnd::TimeUp(_) => None,
    }
}

/// Messages a consume run waits for: `--count`, else every one `present`; `None` with
/// `--duration`.
fn consume_target(args: &Args, present: u64) -> Option<u64> {
    match (args.duration, args.count) {
        (Some(_), _) => None,
        (None, Some(n)) => Some(n),
        (None, None) => Some(present),
    }
}

async fn consume(args: &Args) -> anyhow::Result<BenchResult> {
    let target = Target::prepare(args).await?;
    let partitions = target.partitions();
    let stored = target.stored();
    let wanted = consume_target(args, stored);
    if let Some(n) = wanted {
        anyhow::ensure!(
            n > 0,
            "topic {:?} is empty: nothing to read (run produce first)",
            args.topic
        );
        if n > stored {
            eprintln!("note: asked for {n} messages but {stored} are stored; waiting for more");
        }
    }
    let readers = u32::try_from(args.concurrency).unwrap_or(u32::MAX).min(partitions).max(1);
    let progress = ReadProgress::new(wanted.unwrap_or(u64::MAX));
    // A reader starts fetching as soon as it connects, so the clock starts before connecting:
    // the time to read N messages from scratch, connect included.
    let start = Instant::now();
    let mut tasks: ReadTasks = Vec::new();
    match args.system {
        System::Ferry => {
            let connects = (0..readers).map(|i| {
                let mine = partitions_for_reader(partitions, readers, i);
                ferry::connect_reader(args, u64::from(i), mine, ferry::ReadStart::Earliest)
            });
            for consumer in try_join_all(connects).await? {
                tasks.push(tokio::spawn(ferry::read(
                    consumer,
                    progress.clone(),
                    ReadMode::Throughput,
                )));
            }
        }
        System::Nats => {
            let connects = (0..readers).map(|i| {
                let mine = partitions_for_reader(partitions, readers, i);
                async move {
                    nats::connect_reader(
                        args,
                        u64::from(i),
                        &mine,
                        partitions,
                        nats::ReadStart::All,
                    )
                    .await
                }
            });
            for reader in try_join_all(connects).await? {
                tasks.push(tokio::spawn(nats::read(
                    reader,
                    progress.clone(),
                    ReadMode::Throughput,
                )));
            }
        }
    }
    let deadline = args.duration.map(|d| start + d);
    let end = watch_reads(&progress, deadline, args.idle_timeout).await;
    let read = join_reads(tasks).await?;
    let mut result = result_for(args, partitions);
    result.consumers = Some(u64::from(readers));
    result.warmup = 0;
    set_rates(&mut result, read.messages, read.bytes, end.at().saturating_duration_since(start));
    result.errors = read.errors;
    result.first_error = read.first_error;
    result.incomplete = incomplete_reason(&end, read.messages, wanted, args.idle_timeout);
    Ok(result)
}

/// consume --group: `--concurrency` members of consumer group `group`, each settling every
/// delivery it gets, until `--count` distinct messages (default: all the group has yet to
/// read) were processed, `--duration` passed, or nothing arrived for `--idle-timeout`. As for
/// consume, the clock starts before the members join.
async fn consume_group(args: &Args, group: &str) -> anyhow::Result<BenchResult> {
    let topic = ferry::prepare_topic(args).await?;
    let partitions = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
    let stored: u64 =
        topic.partitions.iter().map(|p| p.high_watermark.0.saturating_sub(p.log_start.0)).sum();
    let backlog = ferry::group_backlog(args, group, &topic).await?;
    if let Some(left) = backlog {
        eprintln!(
            "note: group {group:?} has committed positions in topic {:?} and resumes from them: \
             {left} of {stored} stored messages are left to read (a fresh --group reads from \
             the earliest offset)",
            args.topic
        );
    }
    let present = backlog.unwrap_or(stored);
    let wanted = consume_target(args, present);
    if let Some(n) = wanted {
        anyhow::ensure!(
            n > 0,
            "{}: nothing to read",
            match backlog {
                Some(_) => format!(
                    "group {group:?} has read everything in topic {:?} (use a fresh --group to \
                     read it again)",
                    args.topic
                ),
                None => format!("topic {:?} is empty (run produce first)", args.topic),
            }
        );
        if n > present {
            eprintln!(
                "note: asked for {n} messages but {present} are there to read; waiting for more"
            );
        }
    }
    if args.concurrency > u64::from(partitions) {
        eprintln!(
            "note: {} members for {partitions} partitions: the leader gives the extra members \
             none",
            args.concurrency
        );
    }
    let plan = MemberPlan { nack_ratio: args.nack_ratio(), nack_delay: args.nack_delay() };
    let processed = Processed::new(topic.partitions.iter().map(|p| p.log_start.0));
    let progress = ReadProgress::new(wanted.unwrap_or(u64::MAX));
    // Members fetch as soon as the leader grants them partitions, so the clock starts before
    // they join: the time to process N messages from scratch, joining and rebalancing
    // included.
    let start = Instant::now();
    let members =
        try_join_all((0..args.concurrency).map(|i| ferry::join_group(args, group, i))).await?;
    let tasks: Vec<_> = members
        .into_iter()
        .map(|member| {
            tokio::spawn(ferry::read_as_member(member, plan, processed.clone(), progress.clone()))
        })
        .collect();
    let deadline = args.duration.map(|d| start + d);
    let end = watch_reads(&progress, deadline, args.idle_timeout).await;
    let mut outcomes: Vec<MemberOutcome> = Vec::with_capacity(tasks.len());
    for task in tasks {
        outcomes.push(task.await.map_err(|e| anyhow::anyhow!("group member task failed: {e}"))?);
    }
    let elapsed = end.at().saturating_duration_since(start);
    let sum = |f: fn(&MemberOutcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let (messages, deliveries) = (sum(|m| m.messages), sum(|m| m.deliveries));
    let mut result = result_for(args, partitions);
    result.consumers = Some(args.concurrency);
    result.warmup = 0;
    set_rates(&mut result, messages, sum(|m| m.bytes), elapsed);
    result.errors = sum(|m| m.errors);
    result.first_error = outcomes.iter().find_map(|m| m.first_error.clone());
    result.incomplete = incomplete_reason(&end, messages, wanted, args.idle_timeout);
    result.group = Some(GroupReport {
        group: group.to_string(),
        nack_ratio: args.nack_ratio(),
        nack_delay_ms: args.nack_delay().as_secs_f64() * 1000.0,
        resumed_backlog: backlog,
        deliveries,
        nacked: sum(|m| m.nacked),
        redeliveries: sum(|m| m.redeliveries),
        duplicates: sum(|m| m.duplicates),
        refused_acks: sum(|m| m.refused_acks),
        deliveries_per_s: rates(deliveries, 0, elapsed).0,
        members: outcomes
            .into_iter()
            .map(|m| MemberReport {
                deliveries: m.deliveries,
                redeliveries: m.redeliveries,
                messages: m.messages,
                partitions: m.partitions,
            })
            .collect(),
    });
    Ok(result)
}

async fn e2e(args: &Args) -> anyhow::Result<BenchResult> {
    let target = Target::prepare(args).await?;
    let partitions = target.partitions();
    let stop = stop_of(args);
    let progress = ReadProgress::new(match stop {
        Stop::Count(n) => n,
        Stop::Duration(_) => u64::MAX,
    });
    // One reader per partition, each starting after what is stored now, connected before any
    // message is sent so that connecting is not part of the measured latency.
    let mut tasks: ReadTasks = Vec::new();
    match &target {
        Target::Ferry(topic) => {
            let connects = topic.partitions.iter().map(|p| {
                let start = ferry::ReadStart::At(p.high_watermark);
                ferry::connect_reader(args, u64::from(p.index.0), vec![p.index.0], start)
            });
            for consumer in try_join_all(connects).await? {
                tasks.push(tokio::spawn(ferry::read(
                    consumer,
                    progress.clone(),
                    ReadMode::EndToEnd,
                )));
            }
        }
        Target::Nats(_) => {
            let connects = (0..partitions).map(|p| async move {
                nats::connect_reader(args, u64::from(p), &[p], partitions, nats::ReadStart::New)
                    .await
            });
            for reader in try_join_all(connects).await? {
                tasks.push(tokio::spawn(nats::read(reader, progress.clone(), ReadMode::EndToEnd)));
            }
        }
    }
    let mut started = None;
    let produced = run_produce_side(args, partitions, |start| {
        started = Some(start);
        progress.measure_from(Clock::global().unix_ns(start));
    })
    .await;
    let produced = match produced {
        Ok(p) => p,
        Err(e) => {
            progress.reached().cancel();
            let _ = join_reads(tasks).await;
            return Err(e);
        }
    };
    let start = started.unwrap_or_else(Instant::now);
    progress.set_target(produced.acked);
    let end = watch_reads(&progress, None, args.idle_timeout).await;
    let read = join_reads(tasks).await?;
    let mut result = result_for(args, partitions);
    result.consumers = Some(u64::from(partitions));
    set_rates(&mut result, read.messages, read.bytes, end.at().saturating_duration_since(start));
    result.latency_kind = Some(LatencyKind::SendToConsume);
    result.latency_ms = read.latency.summary();
    result.ack_latency_ms = produced.latency.summary();
    result.errors = produced.errors + read.errors;
    result.first_error = produced.first_error.or(read.first_error);
    result.incomplete =
        incomplete_reason(&end, read.messages, Some(produced.acked), args.idle_timeout);
    Ok(result)
}

async fn txn(args: &Args) -> anyhow::Result<BenchResult> {
    let topic = ferry::prepare_topic(args).await?;
    let partitions = u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX);
    let plan = TxnPlan {
        stop: stop_of(args),
        warmup: args.warmup,
        rate: args.rate,
        size: size_of(args),
        partitions,
        in_flight_max: usize::try_from(args.txn_in_flight()).unwrap_or(usize::MAX),
        local_work: args.local_work(),
        rollback_ratio: args.rollback_ratio(),
    };
    let tally = Arc::new(ferry::CheckBackTally::default());
    let connects =
        (0..args.concurrency).map(|i| ferry::FerryTxnSession::connect(args, i, tally.clone()));
    let sessions = try_join_all(connects).await?;
    let outcome = txn::run_transactions(sessions, &plan).await?;
    let mut result = result_for(args, partitions);
    set_rates(&mut result, outcome.committed, outcome.committed_bytes, outcome.elapsed);
    result.latency_kind = Some(LatencyKind::HalfToCommit);
    result.latency_ms = outcome.whole.summary();
    result.errors = outcome.errors;
    result.first_error = outcome.first_error;
    result.incomplete = outcome.stopped_early;
    let transactions = outcome.committed + outcome.rolled_back;
    result.txn = Some(TxnReport {
        group: args.txn_group().to_string(),
        in_flight: args.txn_in_flight(),
        local_work_ms: args.local_work().as_secs_f64() * 1000.0,
        rollback_ratio: args.rollback_ratio(),
        transactions,
        committed: outcome.committed,
        rolled_back: outcome.rolled_back,
        txn_per_s: rates(transactions, 0, outcome.elapsed).0,
        half_latency_ms: outcome.half.summary(),
        commit_latency_ms: outcome.commit.summary(),
        rollback_latency_ms: outcome.rollback.summary(),
        check_backs: tally.count(),
        first_check_back_txn: tally.first_txn(),
    });
    Ok(result)
}
