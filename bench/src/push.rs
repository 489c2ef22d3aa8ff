//! `ferry-bench push`: webhook delivery throughput to a local receiver that answers at once.
//!
//! The run fills a fresh topic with `--messages` messages first, starts an HTTP receiver on
//! loopback (answers 204 to every POST, counts distinct `webhook-id`s), then creates a push
//! subscription to it and times from the subscription's creation until every message was
//! received, and until the broker had recorded them all (its cursors reach the end). The
//! subscription and the topic are deleted afterwards.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use clap::Parser;
use ferry_producer::{Message, Producer, ProducerConfig};
use ferry_protocol::messages::{CreateTopicRequest, DeleteTopicRequest};
use ferry_protocol::push::{AlterPushRequest, CreatePushRequest, ListPushRequest, PushAction};
use ferry_protocol::{ClientKind, ClusterClient, ClusterOptions, ConnectOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Flags of `ferry-bench push`.
#[derive(Debug, Clone, Parser)]
#[command(name = "ferry-bench push", about = "Webhook delivery throughput to a local receiver")]
pub struct PushArgs {
    /// Broker to use (its leader is found from here).
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub bootstrap: String,
    /// Messages pushed.
    #[arg(long, default_value_t = 50_000)]
    pub messages: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: u32,
    /// Requests the subscription keeps in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u32,
    /// Address the receiver listens on (port 0: any free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub receiver: SocketAddr,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Default)]
struct Seen {
    requests: u64,
    ids: HashSet<String>,
}

async fn receive(
    axum::extract::State(seen): axum::extract::State<Arc<Mutex<Seen>>>,
    headers: HeaderMap,
    _body: Bytes,
) -> StatusCode {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if let Ok(mut s) = seen.lock() {
        s.requests += 1;
        s.ids.insert(id);
    }
    StatusCode::NO_CONTENT
}

fn counts(seen: &Mutex<Seen>) -> (u64, u64) {
    seen.lock().map(|s| (s.requests, s.ids.len() as u64)).unwrap_or_default()
}

/// Runs the measurement; `Ok(false)` when not every message arrived.
pub async fn run(args: &PushArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.messages > 0, "--messages must be at least 1");
    let mut options =
        ClusterOptions::new(&args.bootstrap, ConnectOptions::new("push-bench", ClientKind::Admin));
    options.retry.deadline = Duration::from_secs(30);
    let admin = ClusterClient::new(options).map_err(|e| anyhow::anyhow!("{e}"))?;
    let tag = format!("{}-{:04x}", std::process::id(), fastrand::u16(..));
    let topic = format!("push-bench-{tag}");
    let name = format!("push-bench-{tag}");
    admin
        .call(&CreateTopicRequest { name: topic.clone(), partitions: args.partitions })
        .await
        .context("creating the topic")?;

    let fill = Instant::now();
    let producer = Producer::connect(ProducerConfig::new(args.bootstrap.clone()))
        .await
        .context("connecting the producer")?;
    let payload = Bytes::from(vec![b'x'; args.size]);
    for i in 0..args.messages {
        let message = Message::new(payload.clone()).with_key(i.to_string());
        drop(producer.send(&topic, message).await.context("producing")?);
    }
    producer.flush().await.context("flushing the producer")?;
    producer.close().await.context("closing the producer")?;
    eprintln!("filled {} messages in {:.1?}", args.messages, fill.elapsed());

    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = TcpListener::bind(args.receiver).await.context("binding the receiver")?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let stop = CancellationToken::new();
    let app = Router::new().route("/hook", post(receive)).with_state(seen.clone());
    let server = {
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await
        })
    };

    let started = Instant::now();
    admin
        .call(&CreatePushRequest {
            name: name.clone(),
            topic: topic.clone(),
            url,
            concurrency: args.concurrency,
            ..CreatePushRequest::default()
        })
        .await
        .context("creating the subscription")?;
    let deadline = started + Duration::from_secs(600);
    let mut last_print = Instant::now();
    let received_at = loop {
        let (_, distinct) = counts(&seen);
        if distinct >= args.messages {
            break Some(started.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        if last_print.elapsed() >= Duration::from_secs(2) {
            eprintln!("  {distinct}/{} received", args.messages);
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // The broker has recorded them when every cursor reached the end.
    let recorded_at = loop {
        let list = admin.call(&ListPushRequest { name: name.clone() }).await?;
        let done = list
            .subscriptions
            .first()
            .is_some_and(|s| s.partitions.iter().map(|p| p.cursor).sum::<u64>() >= args.messages);
        if done {
            break Some(started.elapsed());
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (requests, distinct) = counts(&seen);
    let delete = AlterPushRequest {
        name: name.clone(),
        action: PushAction::Delete,
        secret: String::new(),
        grace_ms: 0,
    };
    admin.call(&delete).await.context("deleting the subscription")?;
    admin.call(&DeleteTopicRequest { name: topic.clone() }).await.context("deleting the topic")?;
    stop.cancel();
    let _ = server.await;

    let rate = |d: Option<Duration>| d.map(|d| args.messages as f64 / d.as_secs_f64());
    if args.json {
        let out = serde_json::json!({
            "messages": args.messages,
            "size": args.size,
            "partitions": args.partitions,
            "concurrency": args.concurrency,
            "requests": requests,
            "distinct": distinct,
            "received_seconds": received_at.map(|d| d.as_secs_f64()),
            "recorded_seconds": recorded_at.map(|d| d.as_secs_f64()),
            "deliveries_per_second": rate(received_at),
        });
        println!("{out}");
    } else {
        println!(
            "push: {} messages of {} B, {} partitions, concurrency {}",
            args.messages, args.size, args.partitions, args.concurrency
        );
        match (received_at, rate(received_at)) {
            (Some(d), Some(r)) => println!("  all received in {d:.2?}: {r:.0} deliveries/s"),
            _ => println!("  NOT all received: {distinct} of {}", args.messages),
        }
        if let (Some(d), Some(r)) = (recorded_at, rate(recorded_at)) {
            println!("  all recorded by the broker in {d:.2?}: {r:.0} deliveries/s");
        }
        println!("  requests {requests} (distinct ids {distinct})");
    }
    Ok(received_at.is_some() && recorded_at.is_some())
}
