//! `ferryctl consume TOPIC`: reads through [`ferry_consumer::Consumer`] and prints each message
//! (its value, or a JSON object per line) until `--count`, `--idle-timeout`, Ctrl-C, or a
//! closed stdout.

use std::io::{BufWriter, Write};
use std::time::Duration;

use ferry_consumer::{ConsumedMessage, Consumer, ConsumerConfig};
use ferry_protocol::PartitionIndex;
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
}

#[derive(Debug, Serialize)]
struct JsonHeader<'a> {
    name: &'a str,
    value: String,
    encoding: &'static str,
}

impl<'a> JsonMessage<'a> {
    fn new(m: &'a ConsumedMessage) -> Self {
        let key = m.key.as_deref().map(text_or_base64);
        let (value, value_encoding) = text_or_base64(&m.value);
        JsonMessage {
            topic: &m.topic,
            partition: m.partition.0,
            offset: m.offset.0,
            timestamp_ms: m.timestamp_ms,
            key_encoding: key.as_ref().map(|(_, e)| *e),
            key: key.map(|(k, _)| k),
            headers: m
                .headers
                .iter()
                .map(|(name, v)| {
                    let (value, encoding) = text_or_base64(v);
                    JsonHeader { name, value, encoding }
                })
                .collect(),
            value,
            value_encoding,
        }
    }
}

/// Runs `consume`.
///
/// # Errors
/// When the topic, partition or offset does not exist, the cluster stays unreachable, or
/// stdout fails (a closed pipe is a normal end, not an error).
pub async fn run(ctx: &Context, args: ConsumeArgs) -> anyhow::Result<()> {
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
    use bytes::Bytes;
    use ferry_protocol::Offset;
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
    fn broken_pipe_is_a_quiet_end() {
        assert!(stdout_failure(std::io::ErrorKind::BrokenPipe.into()).is_ok());
        assert!(stdout_failure(std::io::ErrorKind::Other.into()).is_err());
    }
}
