//! The NATS JetStream side of the bench, with the same workloads as ferrymq: stream = topic,
//! subjects `<topic>.<partition>`, file storage, `--replicas` replicas. Producers publish in
//! two stages (`publish` returns a future that resolves to the PubAck); readers are ordered
//! pull consumers (ephemeral, no acks), the closest match to ferrymq's offset-based reads.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::ContextBuilder;
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::Context;
use async_nats::Subject;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use crate::cli::Args;
use crate::workload::{AckFuture, MessageSender, ReadMode, ReadOutcome, ReadProgress};

/// Time allowed for JetStream API requests (stream and consumer management).
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for one PubAck.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// The stream as this run sees it.
#[derive(Debug, Clone)]
pub struct StreamSetup {
    /// Subjects messages are spread over (`<topic>.<partition>`).
    pub partitions: u32,
    /// Messages stored when the run started.
    pub messages: u64,
}

async fn connect(args: &Args, name: String) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(args.nats_url.as_str())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats_url))
}

/// A JetStream context whose own in-flight bound never binds before the bench's window does.
fn jetstream(client: async_nats::Client, args: &Args) -> Context {
    let in_flight = usize::try_from(args.in_flight).unwrap_or(usize::MAX).saturating_add(1);
    ContextBuilder::new()
        .timeout(API_TIMEOUT)
        .ack_timeout(ACK_TIMEOUT)
        .max_ack_inflight(in_flight)
        .backpressure_on_inflight(true)
        .build(client)
}

fn subject(topic: &str, partition: u32) -> String {
    format!("{topic}.{partition}")
}

/// Creates the stream if asked to (an existing one is fine) and reads its state.
///
/// # Errors
/// When NATS cannot be reached, or the stream is missing and creation was not asked for.
pub async fn prepare_stream(args: &Args) -> anyhow::Result<StreamSetup> {
    let client = connect(args, "ferry-bench-admin".into()).await?;
    let js = jetstream(client, args);
    let partitions = args.partitions.unwrap_or(1);
    let mut stream = match js.get_stream(&args.topic).await {
        Ok(stream) => stream,
        Err(_) if args.create_topic || args.partitions.is_some() => js
            .create_stream(StreamConfig {
                name: args.topic.clone(),
                subjects: vec![format!("{}.*", args.topic)],
                storage: StorageType::File,
                num_replicas: args.replicas,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create stream {:?}", args.topic))?,
        Err(e) => {
            return Err(e).with_context(|| {
                format!("no stream {:?} (pass --partitions N to create it)", args.topic)
            })
        }
    };
    let info = stream.info().await.context("cannot read stream info")?;
    Ok(StreamSetup { partitions, messages: info.state.messages })
}

/// One NATS connection publishing to the stream.
pub struct NatsSender {
    client: async_nats::Client,
    js: Context,
    subjects: Arc<[Subject]>,
}

impl NatsSender {
    /// Connects publisher number `index`.
    ///
    /// # Errors
    /// When NATS cannot be reached.
    pub async fn connect(args: &Args, index: u64, partitions: u32) -> anyhow::Result<NatsSender> {
        let client = connect(args, format!("ferry-bench-p{index}")).await?;
        let js = jetstream(client.clone(), args);
        let subjects =
            (0..partitions.max(1)).map(|p| Subject::from(subject(&args.topic, p))).collect();
        Ok(NatsSender { client, js, subjects })
    }
}

impl MessageSender for NatsSender {
    fn send(&self, partition: u32, payload: Bytes) -> BoxFuture<'_, anyhow::Result<AckFuture>> {
        Box::pin(async move {
            let subject = usize::try_from(partition)
                .ok()
                .and_then(|p| self.subjects.get(p))
                .context("partition out of range")?
                .clone();
            let pending = self.js.publish(subject, payload).await?;
            let ack: AckFuture = Box::pin(async move {
                pending.await?;
                Ok(())
            });
            Ok(ack)
        })
    }

    fn close(self) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            self.client.flush().await?;
            drop(self.js);
            drop(self.client);
            Ok(())
        })
    }
}

/// Where an ordered consumer starts.
#[derive(Debug, Clone, Copy)]
pub enum ReadStart {
    /// The oldest stored message.
    All,
    /// Messages stored after the consumer is created.
    New,
}

/// A connected ordered consumer's message stream.
pub type Reader = futures_util::stream::BoxStream<'static, anyhow::Result<Bytes>>;

/// Opens one connection reading `partitions` of the stream: one ordered consumer on the whole
/// stream when that is all partitions, else one per partition (`filter_subject`), merged.
/// (`filter_subjects` would need nats-server 2.10+, and 2.9 silently ignores it.)
///
/// # Errors
/// When NATS cannot be reached or refuses a consumer.
pub async fn connect_reader(
    args: &Args,
    index: u64,
    partitions: &[u32],
    all_partitions: u32,
    start: ReadStart,
) -> anyhow::Result<Reader> {
    anyhow::ensure!(!partitions.is_empty(), "reader {index} has no partitions");
    let client = connect(args, format!("ferry-bench-c{index}")).await?;
    let js = jetstream(client, args);
    let stream = js.get_stream(&args.topic).await.context("cannot open stream")?;
    let whole_stream = usize::try_from(all_partitions).ok() == Some(partitions.len());
    let filters: Vec<String> = if whole_stream {
        vec![String::new()]
    } else {
        partitions.iter().map(|p| subject(&args.topic, *p)).collect()
    };
    let mut readers = Vec::with_capacity(filters.len());
    for filter_subject in filters {
        let config = OrderedConfig {
            deliver_policy: match start {
                ReadStart::All => DeliverPolicy::All,
                ReadStart::New => DeliverPolicy::New,
            },
            filter_subject,
            ..Default::default()
        };
        let consumer = stream.create_consumer(config).await.context("cannot create consumer")?;
        let messages = consumer.messages().await.context("cannot start consumer")?;
        readers.push(
            messages
                .map(|item| item.map(|m| m.message.payload).map_err(anyhow::Error::from))
                .boxed(),
        );
    }
    Ok(futures_util::stream::select_all(readers).boxed())
}

/// Reads `reader` into `progress` until told to stop.
pub async fn read(reader: Reader, progress: Arc<ReadProgress>, mode: ReadMode) -> ReadOutcome {
    crate::workload::read_loop(reader, progress, mode).await
}
