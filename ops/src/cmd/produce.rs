//! `ferryctl produce TOPIC`: publishes stdin lines (or generated messages) through
//! [`ferry_producer::Producer`] and reports how many were acknowledged and how fast.
//!
//! With `--delay` or `--deliver-at` every message carries one deliver time (a delay counts
//! from the start of the command, so the messages share batches): the broker stores them
//! invisible and appends them when due, and the report says they were scheduled and for when.
//!
//! Sending and acknowledging run side by side: the send loop hands each delivery future to a
//! collector task through a bounded channel, so up to `ACKS_PENDING_MAX` messages are in the
//! air while earlier ones are still being acknowledged.

use std::io::{BufRead, IsTerminal};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use bytes::{BufMut, Bytes, BytesMut};
use ferry_producer::{DeliveryFuture, Message, Producer, ProducerConfig, ProducerError};
use ferry_protocol::{now_ms, PartitionIndex};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::cli::ProduceArgs;
use crate::cmd::{Context, CLIENT_ID};
use crate::duration::{format_duration, format_span};
use crate::output::{format_bytes, format_timestamp_ms, print_json, print_text, Format};

/// Lines read ahead of the producer.
const LINES_QUEUED_MAX: usize = 1024;
/// Messages sent whose acknowledgement the collector has not seen yet.
const ACKS_PENDING_MAX: usize = 65_536;
/// The progress bar appears only when the run lasts longer than this.
const PROGRESS_DELAY: Duration = Duration::from_millis(500);
/// Filler of generated payloads (after the sequence number).
const FILLER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A message in the air.
struct Pending {
    delivery: DeliveryFuture,
    value_bytes: usize,
}

/// What the collector saw.
#[derive(Debug, Default)]
struct Tally {
    acked: u64,
    acked_bytes: u64,
    /// Of the acknowledged: scheduled for later rather than appended.
    scheduled: u64,
    /// The latest deliver time among the scheduled.
    deliver_at_ms: Option<u64>,
    failed: u64,
    first_error: Option<ProducerError>,
}

/// The summary in JSON output.
#[derive(Debug, Serialize)]
struct Summary<'a> {
    topic: &'a str,
    messages: u64,
    failed: u64,
    bytes: u64,
    elapsed_ms: u64,
    messages_per_sec: f64,
    bytes_per_sec: f64,
    /// Of `messages`: stored for later delivery rather than appended.
    scheduled: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliver_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deliver_at: Option<String>,
}

/// The fixed parts of every message.
struct Shape {
    key: Option<Bytes>,
    key_sep: Option<Vec<u8>>,
    partition: Option<PartitionIndex>,
    /// Deliver time of every message (ms since the Unix epoch), if delayed.
    deliver_at_ms: Option<u64>,
}

/// Runs `produce`.
///
/// # Errors
/// When the topic or partition does not exist, the cluster is unreachable, stdin cannot be
/// read, or any message failed (after the summary is printed).
pub async fn run(ctx: &Context, args: ProduceArgs) -> anyhow::Result<()> {
    let mut config = ProducerConfig::new(ctx.bootstrap.clone());
    config.client_id = CLIENT_ID.into();
    config.retry_deadline = ctx.timeout;
    let producer = Producer::connect(config).await?;
    let partitions = producer.partition_count(&args.topic).await?;
    if let Some(p) = args.partition {
        ensure!(
            p < partitions,
            "topic {:?} has no partition {p} (it has {partitions})",
            args.topic
        );
    }
    // Read once: every message of the run shares the deliver time, and so its batches.
    let delay_ms = args.delay.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let shape = Shape {
        key: args.key.clone().map(Bytes::from),
        key_sep: args.key_sep.clone().map(String::into_bytes),
        partition: args.partition.map(PartitionIndex),
        deliver_at_ms: delay_ms.map(|ms| now_ms().saturating_add(ms)).or(args.deliver_at),
    };

    let progress = progress_bar(args.count);
    let (ack_sender, ack_receiver) = mpsc::channel(ACKS_PENDING_MAX);
    let collector = tokio::spawn(collect(ack_receiver, progress.clone()));
    let started = Instant::now();
    let sending = match args.count {
        Some(count) => {
            send_generated(&producer, &args.topic, &shape, count, args.size, &ack_sender).await
        }
        None => send_stdin(&producer, &args.topic, &shape, &ack_sender).await,
    };
    drop(ack_sender);
    let tally = collector.await.context("the acknowledgement task failed")?;
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let closed = producer.close().await;
    if let Err(e) = sending {
        return Err(match tally.acked {
            0 => e,
            n => e.context(format!("stopped after {n} acknowledged messages")),
        });
    }
    closed?;
    report(ctx, &args.topic, &tally, started.elapsed())?;
    if let Some(error) = tally.first_error {
        bail!(
            "{} of {} messages failed; first error: {error}",
            tally.failed,
            tally.failed + tally.acked
        );
    }
    Ok(())
}

/// Sends one line of stdin per message; the lines are read on a plain thread (stdin is
/// blocking) and handed over through a bounded channel.
async fn send_stdin(
    producer: &Producer,
    topic: &str,
    shape: &Shape,
    acks: &mpsc::Sender<Pending>,
) -> anyhow::Result<()> {
    let (line_sender, mut lines) = mpsc::channel::<std::io::Result<Vec<u8>>>(LINES_QUEUED_MAX);
    std::thread::Builder::new()
        .name("ferryctl-stdin".into())
        .spawn(move || read_lines(&line_sender))
        .context("cannot start the stdin reader")?;
    while let Some(line) = lines.recv().await {
        let line = line.context("cannot read stdin")?;
        send_one(producer, topic, line_message(Bytes::from(line), shape), acks).await?;
    }
    Ok(())
}

/// Reads stdin line by line (bytes, not necessarily UTF-8) until it ends or nobody listens.
fn read_lines(sender: &mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let mut stdin = std::io::stdin().lock();
    loop {
        let mut line = Vec::new();
        match stdin.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                strip_line_end(&mut line);
                if sender.blocking_send(Ok(line)).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                let _ = sender.blocking_send(Err(e));
                return;
            }
        }
    }
}

fn strip_line_end(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
}

/// One stdin line as a message: split at the first key separator when one is set (zero-copy
/// slices of the line), else the whole line is the value.
fn line_message(line: Bytes, shape: &Shape) -> Message {
    let split = shape
        .key_sep
        .as_deref()
        .and_then(|sep| line.windows(sep.len()).position(|w| w == sep).map(|at| (at, sep.len())));
    let mut message = match split {
        Some((at, sep_len)) => Message::new(line.slice(at + sep_len..)).with_key(line.slice(..at)),
        None => {
            let mut m = Message::new(line);
            m.key = shape.key.clone();
            m
        }
    };
    message.partition = shape.partition;
    message.deliver_at_ms = shape.deliver_at_ms;
    message
}

async fn send_generated(
    producer: &Producer,
    topic: &str,
    shape: &Shape,
    count: u64,
    size: usize,
    acks: &mpsc::Sender<Pending>,
) -> anyhow::Result<()> {
    for seq in 0..count {
        let mut message = Message::new(generated_value(seq, size));
        message.key = shape.key.clone();
        message.partition = shape.partition;
        message.deliver_at_ms = shape.deliver_at_ms;
        send_one(producer, topic, message, acks).await?;
    }
    Ok(())
}

/// Payload number `seq` of `size` bytes: the sequence number, a space, then filler letters,
/// cut at `size` — readable when consumed, and distinct per message.
fn generated_value(seq: u64, size: usize) -> Bytes {
    let mut value = BytesMut::with_capacity(size);
    let prefix = format!("{seq:010} ");
    value.put_slice(&prefix.as_bytes()[..prefix.len().min(size)]);
    while value.len() < size {
        let take = FILLER.len().min(size - value.len());
        value.put_slice(&FILLER[..take]);
    }
    value.freeze()
}

async fn send_one(
    producer: &Producer,
    topic: &str,
    message: Message,
    acks: &mpsc::Sender<Pending>,
) -> anyhow::Result<()> {
    let value_bytes = message.value.len();
    let delivery = producer.send(topic, message).await?;
    acks.send(Pending { delivery, value_bytes })
        .await
        .map_err(|_| anyhow!("the acknowledgement task ended early"))
}

/// Awaits acknowledgements in send order (per partition they complete in that order anyway).
async fn collect(mut pending: mpsc::Receiver<Pending>, progress: Option<ProgressBar>) -> Tally {
    let mut tally = Tally::default();
    while let Some(p) = pending.recv().await {
        match p.delivery.await {
            Ok(delivered) => {
                tally.acked += 1;
                tally.acked_bytes += p.value_bytes as u64;
                if let Some(at) = delivered.deliver_at_ms {
                    tally.scheduled += 1;
                    tally.deliver_at_ms = Some(tally.deliver_at_ms.map_or(at, |t| t.max(at)));
                }
            }
            Err(e) => {
                tally.failed += 1;
                tally.first_error.get_or_insert(e);
            }
        }
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    }
    tally
}

/// A progress bar for `--count` runs on a terminal, shown only once the run proves long.
fn progress_bar(count: Option<u64>) -> Option<ProgressBar> {
    let count = count?;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(count), ProgressDrawTarget::hidden());
    let template = "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} acknowledged \
                    ({per_sec:0}, {eta} left)";
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    let delayed = bar.clone();
    tokio::spawn(async move {
        tokio::time::sleep(PROGRESS_DELAY).await;
        if !delayed.is_finished() {
            delayed.set_draw_target(ProgressDrawTarget::stderr());
        }
    });
    Some(bar)
}

fn report(ctx: &Context, topic: &str, tally: &Tally, elapsed: Duration) -> anyhow::Result<()> {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let messages_per_sec = tally.acked as f64 / secs;
    let bytes_per_sec = tally.acked_bytes as f64 / secs;
    match ctx.format {
        Format::Json => print_json(&Summary {
            topic,
            messages: tally.acked,
            failed: tally.failed,
            bytes: tally.acked_bytes,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            messages_per_sec,
            bytes_per_sec,
            scheduled: tally.scheduled,
            deliver_at_ms: tally.deliver_at_ms,
            deliver_at: tally.deliver_at_ms.map(format_timestamp_ms),
        }),
        Format::Text => print_text(&text_report(
            topic,
            tally,
            elapsed,
            messages_per_sec,
            bytes_per_sec,
            now_ms(),
        )),
    }
}

/// The text summary; delayed messages are reported as scheduled, with their deliver time.
fn text_report(
    topic: &str,
    tally: &Tally,
    elapsed: Duration,
    messages_per_sec: f64,
    bytes_per_sec: f64,
    now_ms: u64,
) -> String {
    let failed = match tally.failed {
        0 => String::new(),
        n => format!(", {n} failed"),
    };
    let verb = match (tally.scheduled, tally.acked) {
        (0, _) => "produced",
        (s, a) if s == a => "scheduled",
        _ => "produced (some scheduled)",
    };
    let mut out = format!(
        "{verb} {} messages ({}) to {topic} in {}: {messages_per_sec:.0} msgs/s, {}/s{failed}\n",
        tally.acked,
        format_bytes(tally.acked_bytes),
        format_duration(elapsed),
        format_bytes(bytes_per_sec as u64),
    );
    if let Some(at) = tally.deliver_at_ms {
        let wait = Duration::from_millis(at.saturating_sub(now_ms));
        out.push_str(&format!(
            "{} messages are stored and invisible until {} (in {}), then appended to {topic}\n",
            tally.scheduled,
            format_timestamp_ms(at),
            format_span(wait),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(key: Option<&str>, sep: Option<&str>) -> Shape {
        Shape {
            key: key.map(|k| Bytes::from(k.to_string())),
            key_sep: sep.map(|s| s.as_bytes().to_vec()),
            partition: Some(PartitionIndex(1)),
            deliver_at_ms: None,
        }
    }

    #[test]
    fn messages_carry_the_deliver_time_and_the_report_says_when() {
        let mut delayed = shape(None, None);
        delayed.deliver_at_ms = Some(1_700_000_030_000);
        let m = line_message(Bytes::from_static(b"later"), &delayed);
        assert_eq!(m.deliver_at_ms, Some(1_700_000_030_000));
        assert_eq!(
            line_message(Bytes::from_static(b"now"), &shape(None, None)).deliver_at_ms,
            None
        );

        let tally = Tally {
            acked: 2,
            acked_bytes: 10,
            scheduled: 2,
            deliver_at_ms: Some(1_700_000_030_000),
            ..Tally::default()
        };
        let text = text_report(
            "orders",
            &tally,
            Duration::from_millis(20),
            100.0,
            500.0,
            1_700_000_000_000,
        );
        assert!(text.starts_with("scheduled 2 messages (10 B) to orders"), "{text}");
        assert!(text.contains("invisible until 2023-11-14T22:13:50.000Z (in 30s)"), "{text}");
        let plain = Tally { acked: 1, acked_bytes: 3, ..Tally::default() };
        let text = text_report("orders", &plain, Duration::from_millis(20), 50.0, 150.0, 0);
        assert!(text.starts_with("produced 1 messages") && !text.contains("invisible"), "{text}");
    }

    #[test]
    fn lines_split_into_key_and_value() {
        let m = line_message(Bytes::from_static(b"user-1:signed up: yes"), &shape(None, Some(":")));
        assert_eq!(m.key.as_deref(), Some(&b"user-1"[..]));
        assert_eq!(&m.value[..], b"signed up: yes");
        assert_eq!(m.partition, Some(PartitionIndex(1)));

        let m = line_message(Bytes::from_static(b"a::b"), &shape(None, Some("::")));
        assert_eq!((m.key.as_deref(), &m.value[..]), (Some(&b"a"[..]), &b"b"[..]));

        let m = line_message(Bytes::from_static(b"no separator"), &shape(Some("k"), Some(":")));
        assert_eq!((m.key.as_deref(), &m.value[..]), (Some(&b"k"[..]), &b"no separator"[..]));

        let m = line_message(Bytes::from_static(b"plain"), &shape(None, None));
        assert_eq!((m.key, &m.value[..]), (None, &b"plain"[..]));
    }

    #[test]
    fn line_ends_are_stripped() {
        for (input, expected) in
            [(&b"a\n"[..], &b"a"[..]), (b"a\r\n", b"a"), (b"a", b"a"), (b"\n", b"")]
        {
            let mut line = input.to_vec();
            strip_line_end(&mut line);
            assert_eq!(line, expected);
        }
    }

    #[test]
    fn generated_values_have_the_asked_size() {
        assert_eq!(&generated_value(7, 16)[..], b"0000000007 abcde");
        assert_eq!(&generated_value(7, 4)[..], b"0000");
        assert_eq!(generated_value(1, 0).len(), 0);
        assert_eq!(generated_value(123, 1000).len(), 1000);
    }
}
