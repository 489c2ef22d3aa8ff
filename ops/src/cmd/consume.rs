//! `ferryctl consume TOPIC`: reads through [`ferry_consumer::Consumer`] and prints each message
//! (its value, or a JSON object per line) until `--count`, `--idle-timeout`, Ctrl-C, or a
//! closed stdout.
//!
//! With `--group` it reads through [`ferry_consumer::GroupConsumer`] as a member of the group
//! and settles each message only once stdout took it (after the flush): ack, or nack with
//! `--nack`. A message not printed is left unsettled, so the group gets it again.

use std::io::{BufWriter, Write};
use std::time::Duration;

use bytes::Bytes;
use ferry_consumer::{
    ConsumedMessage, Consumer, ConsumerConfig, ConsumerError, Delivery, GroupConfig, GroupConsumer,
};
use ferry_protocol::{Offset, PartitionIndex};
use futures_util::{FutureExt, StreamExt};
use serde::Serialize;

use crate::cli::ConsumeArgs;
use crate::cmd::{Context, CLIENT_ID};
use crate::output::{text_or_base64, Format};

/// One message as a JSON line. Byte strings are text when valid UTF-8, else base64; the
/// `*encoding` fields say which (`utf8` or `base64`).
#[derive(Debug, Serialize)]
struct JsonMessage<'a> {
    topic: &'a str,
    partition: u32,
    offset: u64,
    timestamp_ms: u64,
    key: Option<String>,
    key_encoding: Option<&'static str>,
    headers: Vec<JsonHeader<'a>>,
    value: String,
    value_encoding: &'static str,
    /// Delivery attempt (with `--group` only): 1 for a first delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
}

#[derive(Debug, Serialize)]
struct JsonHeader<'a> {
    name: &'a str,
    value: String,
    encoding: &'static str,
}

impl<'a> JsonMessage<'a> {
    fn new(m: &'a ConsumedMessage) -> Self {
        Self::of(
            &m.topic,
            m.partition,
            m.offset,
            m.timestamp_ms,
            m.key.as_deref(),
            &m.headers,
            &m.value,
        )
    }

    /// A group delivery: where the message was first produced, and its attempt.
    fn of_delivery(d: &'a Delivery) -> Self {
        let mut json = Self::of(
            &d.topic,
            d.partition,
            d.offset,
            d.timestamp_ms,
            d.key.as_deref(),
            &d.headers,
            &d.value,
        );
        json.attempt = Some(d.attempt);
        json
    }

    fn of(
        topic: &'a str,
        partition: PartitionIndex,
        offset: Offset,
        timestamp_ms: u64,
        key: Option<&[u8]>,
        headers: &'a [(String, Bytes)],
        value: &[u8],
    ) -> Self {
        let key = key.map(text_or_base64);
        let (value, value_encoding) = text_or_base64(value);
        JsonMessage {
            topic,
            partition: partition.0,
            offset: offset.0,
            timestamp_ms,
            key_encoding: key.as_ref().map(|(_, e)| *e),
            key: key.map(|(k, _)| k),
            headers: headers
                .iter()
                .map(|(name, v)| {
                    let (value, encoding) = text_or_base64(v);
                    JsonHeader { name, value, encoding }
                })
                .collect(),
            value,
            value_encoding,
            attempt: None,
        }
    }
}

/// Runs `consume`.
///
/// # Errors
/// When the topic, partition or offset does not exist, the cluster stays unreachable, or
/// stdout fails (a closed pipe is a normal end, not an error).
pub async fn run(ctx: &Context, args: ConsumeArgs) -> anyhow::Result<()> {
    if let Some(group) = args.group.clone() {
        return run_group(ctx, &args, group).await;
    }
    let mut config = ConsumerConfig::new(ctx.bootstrap.clone(), args.topic.clone());
    config.client_id = CLIENT_ID.into();
    config.retry_deadline = ctx.timeout;
    config.start = args.from;
    config.partitions = args.partition.map(|p| vec![PartitionIndex(p)]);
    let json = args.json || ctx.format == Format::Json;
    let mut consumer = Consumer::connect(config).await?;

    let mut out = BufWriter::new(std::io::stdout());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut printed: u64 = 0;
    let outcome = loop {
        if args.count.is_some_and(|count| printed >= count) {
            break Ok(());
        }
        // Flush only when nothing is ready, so a burst is written in large chunks while a
        // trickle still shows up at once.
        let item = match consumer.next().now_or_never() {
            Some(item) => item,
            None => {
                if let Err(e) = out.flush() {
                    break stdout_failure(e);
                }
                tokio::select! {
                    _ = &mut ctrl_c => break Ok(()),
                    () = idle(args.idle_timeout) => break Ok(()),
                    item = consumer.next() => item,
                }
            }
        };
        match item {
            None => break Ok(()),
            Some(Err(e)) => break Err(anyhow::Error::new(e)),
            Some(Ok(message)) => {
                if let Err(e) = write_message(&mut out, &message, json) {
                    break stdout_failure(e);
                }
                printed += 1;
            }
        }
    };
    let flushed = out.flush().or_else(stdout_failure);
    consumer.close().await;
    outcome.and(flushed)
}

/// Deliveries printed but not yet flushed, and so not yet settled; at this many the output is
/// flushed and they are settled (below the group consumer's in-flight window, so reading never
/// stalls waiting for them).
const PRINTED_UNSETTLED_MAX: usize = 256;

/// How long leaving the group waits for unsettled deliveries: this command settles what it
/// printed at once, so whatever is still unsettled was never printed and is given back to be
/// delivered again (from the last commit, with no attempt counted).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The last error recorded on messages rejected with `--nack`.
const NACK_REASON: &str = "rejected by ferryctl consume --nack";

/// `consume TOPIC --group G [--nack]`: the same loop as [`run`], settling printed messages
/// after each flush.
async fn run_group(ctx: &Context, args: &ConsumeArgs, group: String) -> anyhow::Result<()> {
    let mut config = GroupConfig::new(ctx.bootstrap.clone(), group, args.topic.clone());
    config.client_id = CLIENT_ID.into();
    config.retry_deadline = ctx.timeout;
    config.start = args.from;
    config.drain_timeout = DRAIN_TIMEOUT;
    let json = args.json || ctx.format == Format::Json;
    let mut consumer = GroupConsumer::subscribe(config).await?;

    let mut out = BufWriter::new(std::io::stdout());
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut printed: u64 = 0;
    let mut unsettled: Vec<Delivery> = Vec::new();
    let outcome: anyhow::Result<()> = loop {
        if args.count.is_some_and(|count| printed >= count) {
            break Ok(());
        }
        let ready = if unsettled.len() >= PRINTED_UNSETTLED_MAX {
            None
        } else {
            consumer.next().now_or_never()
        };
        let item = match ready {
            Some(item) => item,
            None => {
                match out.flush() {
                    Ok(()) => {
                        if let Err(e) = settle(&mut unsettled, args.nack).await {
                            break Err(e);
                        }
                    }
                    Err(e) => break stdout_failure(e),
                }
                tokio::select! {
                    _ = &mut ctrl_c => break Ok(()),
                    () = idle(args.idle_timeout) => break Ok(()),
                    item = consumer.next() => item,
                }
            }
        };
        match item {
            None => break Ok(()),
            Some(Err(e)) => break Err(anyhow::Error::new(e)),
            Some(Ok(delivery)) => {
                if let Err(e) = write_delivery(&mut out, &delivery, json) {
                    break stdout_failure(e);
                }
                unsettled.push(delivery);
                printed += 1;
            }
        }
    };
    // Settle only what stdout took; the rest is dropped unsettled and given back on close.
    let finished = match out.flush() {
        Ok(()) => settle(&mut unsettled, args.nack).await,
        Err(e) => stdout_failure(e),
    };
    unsettled.clear();
    consumer.close().await;
    outcome.and(finished)
}

/// Acks (or with `nack` rejects) every printed delivery. One already settled by its ack
/// timeout is left alone: the group gets it again anyway.
async fn settle(printed: &mut Vec<Delivery>, nack: bool) -> anyhow::Result<()> {
    for delivery in printed.drain(..) {
        if !nack {
            delivery.ack();
            continue;
        }
        let (offset, partition) = (delivery.offset, delivery.partition);
        match delivery.nack_because(None, NACK_REASON).await {
            Ok(()) | Err(ConsumerError::Settled) => {}
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot nack the message at {partition}@{offset}")))
            }
        }
    }
    Ok(())
}

/// Resolves after `timeout`, or never.
async fn idle(timeout: Option<Duration>) {
    match timeout {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// A closed pipe (`| head`) ends the command quietly; other write errors are failures.
fn stdout_failure(error: std::io::Error) -> anyhow::Result<()> {
    if error.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(anyhow::Error::new(error).context("cannot write to stdout"))
    }
}

fn write_delivery(out: &mut impl Write, d: &Delivery, json: bool) -> std::io::Result<()> {
    if json {
        let line =
            serde_json::to_string(&JsonMessage::of_delivery(d)).map_err(std::io::Error::other)?;
        out.write_all(line.as_bytes())?;
    } else {
        out.write_all(&d.value)?;
    }
    out.write_all(b"\n")
}

fn write_message(out: &mut impl Write, m: &ConsumedMessage, json: bool) -> std::io::Result<()> {
    if json {
        let line = serde_json::to_string(&JsonMessage::new(m)).map_err(std::io::Error::other)?;
        out.write_all(line.as_bytes())?;
    } else {
        out.write_all(&m.value)?;
    }
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn message(key: Option<&'static [u8]>, value: &'static [u8]) -> ConsumedMessage {
        ConsumedMessage {
            topic: Arc::from("orders"),
            partition: PartitionIndex(2),
            offset: Offset(41),
            timestamp_ms: 1_700_000_000_000,
            key: key.map(Bytes::from_static),
            headers: vec![("trace".into(), Bytes::from_static(b"\xff\x00"))],
            value: Bytes::from_static(value),
        }
    }

    #[test]
    fn json_lines_carry_every_field() {
        let mut out = Vec::new();
        write_message(&mut out, &message(Some(b"k1"), b"hello"), true).unwrap();
        let line = String::from_utf8(out).unwrap();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["topic"], "orders");
        assert_eq!(v["partition"], 2);
        assert_eq!(v["offset"], 41);
        assert_eq!(v["timestamp_ms"], 1_700_000_000_000u64);
        assert_eq!((v["key"].as_str(), v["key_encoding"].as_str()), (Some("k1"), Some("utf8")));
        assert_eq!(
            (v["value"].as_str(), v["value_encoding"].as_str()),
            (Some("hello"), Some("utf8"))
        );
        assert_eq!(v["headers"][0]["name"], "trace");
        assert_eq!(v["headers"][0]["value"], "/wA=");
        assert_eq!(v["headers"][0]["encoding"], "base64");
    }

    #[test]
    fn binary_values_are_base64_and_missing_keys_null() {
        let mut out = Vec::new();
        write_message(&mut out, &message(None, b"\xfe\xff"), true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(v["key"].is_null() && v["key_encoding"].is_null());
        assert_eq!(
            (v["value"].as_str(), v["value_encoding"].as_str()),
            (Some("/v8="), Some("base64"))
        );
    }

    #[test]
    fn text_mode_prints_raw_values() {
        let mut out = Vec::new();
        write_message(&mut out, &message(None, b"a b"), false).unwrap();
        write_message(&mut out, &message(None, b""), false).unwrap();
        assert_eq!(out, b"a b\n\n");
    }

    #[test]
    fn group_flags_parse() {
        use crate::cli::{Cli, Command};
        use clap::error::ErrorKind;
        use clap::Parser;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("ferryctl").chain(args.iter().copied()))
        };
        match parse(&["consume", "t", "--group", "billing", "--nack", "--count", "1"])
            .unwrap()
            .command
        {
            Command::Consume(a) => {
                assert_eq!((a.group.as_deref(), a.nack, a.count), (Some("billing"), true, Some(1)));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["consume", "t"]).unwrap().command {
            Command::Consume(a) => assert!(a.group.is_none() && !a.nack),
            other => panic!("{other:?}"),
        }
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(kind(&["consume", "t", "--nack"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind(&["consume", "t", "--group", "g", "--partition", "1"]),
            ErrorKind::ArgumentConflict,
            "the leader assigns a member's partitions"
        );
        assert_eq!(kind(&["consume", "t", "--group", "a.b"]), ErrorKind::ValueValidation);
    }

    #[test]
    fn only_group_deliveries_carry_an_attempt() {
        let m = message(None, b"v");
        let plain = serde_json::to_value(JsonMessage::new(&m)).unwrap();
        assert!(plain.get("attempt").is_none());
        let mut json = JsonMessage::new(&m);
        json.attempt = Some(3);
        assert_eq!(serde_json::to_value(json).unwrap()["attempt"], 3);
    }

    #[test]
    fn broken_pipe_is_a_quiet_end() {
        assert!(stdout_failure(std::io::ErrorKind::BrokenPipe.into()).is_ok());
        assert!(stdout_failure(std::io::ErrorKind::Other.into()).is_err());
    }
}
