//! The ferrymq side of the bench: topic set-up through the cluster client, one
//! [`ferry_producer::Producer`] per producer slot and one [`ferry_consumer::Consumer`] per
//! reader.

use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use ferry_consumer::{Consumer, ConsumerConfig, StartFrom};
use ferry_producer::{Message, Producer, ProducerConfig};
use ferry_protocol::messages::{CreateTopicRequest, MetadataRequest, TopicMetadata};
use ferry_protocol::{
    ClientKind, ClusterClient, ClusterOptions, ConnectOptions, ErrorCode, Offset, PartitionIndex,
};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use crate::cli::Args;
use crate::workload::{AckFuture, MessageSender, ReadMode, ReadOutcome, ReadProgress};

/// Creates the topic if asked to (an existing one is fine) and returns its metadata.
///
/// # Errors
/// When the cluster cannot be reached, or the topic is missing and creation was not asked for.
pub async fn prepare_topic(args: &Args) -> anyhow::Result<TopicMetadata> {
    let connect = ConnectOptions::new("ferry-bench-admin", ClientKind::Admin);
    let client = ClusterClient::new(ClusterOptions::new(&args.bootstrap, connect))
        .context("bad --bootstrap")?;
    if args.create_topic || args.partitions.is_some() {
        let partitions = args.partitions.unwrap_or(1);
        let request = CreateTopicRequest { name: args.topic.clone(), partitions };
        match client.call(&request).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::TopicExists) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create topic {:?}", args.topic))
            }
        }
    }
    let metadata = client
        .call(&MetadataRequest { topics: vec![args.topic.clone()] })
        .await
        .with_context(|| format!("no topic {:?} (pass --partitions N to create it)", args.topic))?;
    let topic = metadata
        .topics
        .into_iter()
        .find(|t| t.name == args.topic)
        .with_context(|| format!("metadata has no topic {:?}", args.topic))?;
    if let Some(wanted) = args.partitions {
        if usize::try_from(wanted).ok() != Some(topic.partitions.len()) {
            eprintln!(
                "note: topic {:?} exists with {} partitions (asked for {wanted}); using {}",
                args.topic,
                topic.partitions.len(),
                topic.partitions.len()
            );
        }
    }
    anyhow::ensure!(!topic.partitions.is_empty(), "topic {:?} has no partitions", args.topic);
    Ok(topic)
}

/// One ferrymq producer instance.
pub struct FerrySender {
    producer: Producer,
    topic: Arc<str>,
}

impl FerrySender {
    /// Connects producer number `index` as configured by `args`.
    ///
    /// # Errors
    /// When the producer cannot connect.
    pub async fn connect(args: &Args, index: u64) -> anyhow::Result<FerrySender> {
        let mut config = ProducerConfig::new(args.bootstrap.clone());
        config.client_id = format!("ferry-bench-p{index}");
        if let Some(linger) = args.linger {
            config.linger = linger;
        }
        if let Some(bytes) = args.batch_bytes {
            config.batch_bytes_max = bytes;
        }
        if let Some(bytes) = args.buffer_bytes {
            config.buffer_bytes_max = bytes;
        }
        let producer = Producer::connect(config).await.context("producer cannot connect")?;
        Ok(FerrySender { producer, topic: Arc::from(args.topic.as_str()) })
    }
}

impl MessageSender for FerrySender {
    fn send(&self, partition: u32, payload: Bytes) -> BoxFuture<'_, anyhow::Result<AckFuture>> {
        Box::pin(async move {
            let message = Message::new(payload).to_partition(PartitionIndex(partition));
            let delivery = self.producer.send(&self.topic, message).await?;
            let ack: AckFuture = Box::pin(async move {
                delivery.await?;
                Ok(())
            });
            Ok(ack)
        })
    }

    fn close(self) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            self.producer.flush().await?;
            self.producer.close().await?;
            Ok(())
        })
    }
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy)]
pub enum ReadStart {
    /// From the first stored message.
    Earliest,
    /// From this offset (used with one partition per reader).
    At(Offset),
}

/// Connects a consumer for `partitions` of the topic.
///
/// # Errors
/// When the consumer cannot connect.
pub async fn connect_reader(
    args: &Args,
    index: u64,
    partitions: Vec<u32>,
    start: ReadStart,
) -> anyhow::Result<Consumer> {
    let mut config = ConsumerConfig::new(args.bootstrap.clone(), args.topic.clone());
    config.client_id = format!("ferry-bench-c{index}");
    config.partitions = Some(partitions.into_iter().map(PartitionIndex).collect());
    config.start = match start {
        ReadStart::Earliest => StartFrom::Earliest,
        ReadStart::At(offset) => StartFrom::Offset(offset),
    };
    Consumer::connect(config).await.context("consumer cannot connect")
}

/// Reads `consumer` into `progress` until told to stop, then closes it.
pub async fn read(
    mut consumer: Consumer,
    progress: Arc<ReadProgress>,
    mode: ReadMode,
) -> ReadOutcome {
    let payloads = consumer.by_ref().map(|item| item.map(|m| m.value).map_err(anyhow::Error::from));
    let outcome = crate::workload::read_loop(payloads, progress, mode).await;
    consumer.close().await;
    outcome
}
