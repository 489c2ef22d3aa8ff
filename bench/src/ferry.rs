//! The ferrymq side of the bench: topic set-up through the cluster client, one
//! [`ferry_producer::Producer`] per producer slot, one [`ferry_consumer::Consumer`] per
//! reader, one [`ferry_consumer::GroupConsumer`] per consumer-group member, and one
//! [`ferry_producer::TransactionalProducer`] per txn slot with a checker that answers commit
//! and counts what it is asked.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use ferry_consumer::{Consumer, ConsumerConfig, Delivery, GroupConfig, GroupConsumer, StartFrom};
use ferry_producer::{
    checker_fn, Message, MessageView, Producer, ProducerConfig, Resolution, Transaction,
    TransactionConfig, TransactionalProducer,
};
use ferry_protocol::group::DescribeGroupRequest;
use ferry_protocol::messages::{
    CreateTopicRequest, MetadataRequest, PartitionMetadata, TopicMetadata,
};
use ferry_protocol::{
    ClientKind, ClusterClient, ClusterOptions, ConnectOptions, ErrorCode, Offset, PartitionIndex,
};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use crate::cli::Args;
use crate::group::{GroupDelivery, MemberOutcome, MemberPlan, Processed};
use crate::txn::{HalfSendError, OpenTxn, TxnSession};
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

/// Check-backs received by the bench's checkers, shared by every txn slot of a run.
#[derive(Debug, Default)]
pub struct CheckBackTally {
    count: AtomicU64,
    first: Mutex<Option<u64>>,
}

impl CheckBackTally {
    fn note(&self, view: &MessageView) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.first.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(view.txn_id.0);
    }

    /// Check-backs received so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The transaction the first check-back was about.
    pub fn first_txn(&self) -> Option<u64> {
        *self.first.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One ferrymq transactional producer instance.
pub struct FerryTxnSession {
    producer: TransactionalProducer,
    topic: Arc<str>,
}

impl FerryTxnSession {
    /// Connects transactional producer number `index` in `args`' group. Its checker answers
    /// commit (the bench decides every transaction itself, so a check-back means a decision
    /// was lost or late) and counts the question in `tally`.
    ///
    /// # Errors
    /// When the producer cannot connect.
    pub async fn connect(
        args: &Args,
        index: u64,
        tally: Arc<CheckBackTally>,
    ) -> anyhow::Result<FerryTxnSession> {
        let mut config = TransactionConfig::new(args.bootstrap.clone(), args.txn_group());
        config.producer.client_id = format!("ferry-bench-t{index}");
        let checker = checker_fn(move |view: MessageView| {
            tally.note(&view);
            async { Resolution::Commit }
        });
        let producer = TransactionalProducer::connect(config, checker)
            .await
            .context("transactional producer cannot connect")?;
        Ok(FerryTxnSession { producer, topic: Arc::from(args.topic.as_str()) })
    }
}

impl TxnSession for FerryTxnSession {
    type Open = Transaction;

    fn send_half(
        &self,
        partition: u32,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<Transaction, HalfSendError>> {
        Box::pin(async move {
            let message = Message::new(payload).to_partition(PartitionIndex(partition));
            self.producer.send_half(&self.topic, message).await.map_err(|e| HalfSendError {
                // Not retriable: unreachable for the whole retry deadline, closed, unknown
                // topic or partition, message too large, refused by the broker.
                retriable: e.is_retriable(),
                error: e.into(),
            })
        })
    }

    fn close(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            self.producer.clone().close().await?;
            Ok(())
        })
    }
}

impl OpenTxn for Transaction {
    fn commit(self) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            Transaction::commit(self).await?;
            Ok(())
        })
    }

    fn rollback(self) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            Transaction::rollback(self).await?;
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

/// Messages of `topic` consumer group `group` has yet to read, when it committed a position in
/// any partition of it (a member resumes from there); `None` when it never did (members start
/// from the earliest offset).
///
/// # Errors
/// When the cluster cannot be reached.
pub async fn group_backlog(
    args: &Args,
    group: &str,
    topic: &TopicMetadata,
) -> anyhow::Result<Option<u64>> {
    let connect = ConnectOptions::new("ferry-bench-admin", ClientKind::Admin);
    let client = ClusterClient::new(ClusterOptions::new(&args.bootstrap, connect))
        .context("bad --bootstrap")?;
    let offsets = match client.call(&DescribeGroupRequest { group: group.to_string() }).await {
        Ok(described) => described.offsets,
        Err(e) if e.code() == Some(ErrorCode::UnknownGroup) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot describe group {group:?}")),
    };
    let committed = |p: &PartitionMetadata| {
        offsets
            .iter()
            .find(|o| o.topic == topic.name && o.partition == p.index)
            .and_then(|o| o.committed)
    };
    if topic.partitions.iter().all(|p| committed(p).is_none()) {
        return Ok(None);
    }
    let backlog = topic
        .partitions
        .iter()
        .map(|p| {
            let from = committed(p).unwrap_or(p.log_start).clamp(p.log_start, p.high_watermark);
            p.high_watermark.0 - from.0
        })
        .sum();
    Ok(Some(backlog))
}

/// Joins consumer group `group` for the topic as member number `index`.
///
/// # Errors
/// When the group name is refused, the topic is missing, or no broker answered.
pub async fn join_group(args: &Args, group: &str, index: u64) -> anyhow::Result<GroupConsumer> {
    let mut config = GroupConfig::new(args.bootstrap.clone(), group, args.topic.clone());
    config.client_id = format!("ferry-bench-g{index}");
    GroupConsumer::subscribe(config)
        .await
        .with_context(|| format!("group member {index} cannot join group {group:?}"))
}

impl GroupDelivery for Delivery {
    fn origin(&self) -> (u32, u64) {
        (self.partition.0, self.offset.0)
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn payload_len(&self) -> usize {
        self.value.len()
    }

    fn ack(self) -> bool {
        Delivery::ack(self)
    }

    fn nack(self, delay: Duration) -> BoxFuture<'static, anyhow::Result<()>> {
        Box::pin(async move {
            Delivery::nack(self, Some(delay)).await?;
            Ok(())
        })
    }
}

/// Settles `member`'s deliveries as `plan` says until told to stop, then leaves the group
/// (committing what was acked).
pub async fn read_as_member(
    mut member: GroupConsumer,
    plan: MemberPlan,
    processed: Arc<Processed>,
    progress: Arc<ReadProgress>,
) -> MemberOutcome {
    let deliveries = member.by_ref().map(|item| item.map_err(anyhow::Error::from));
    let mut outcome = crate::group::member_loop(deliveries, plan, &processed, &progress).await;
    outcome.partitions = member.partitions().into_iter().map(|p| p.0).collect();
    member.close().await;
    outcome
}
