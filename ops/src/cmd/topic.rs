//! `ferryctl topic create|list|describe|delete`: topic administration through the leader.

use anyhow::anyhow;
use ferry_protocol::messages::{
    CreateTopicRequest, DeleteTopicRequest, MetadataRequest, TopicMetadata,
};
use ferry_protocol::{ClientError, ErrorCode};
use serde::Serialize;

use crate::cmd::Context;
use crate::output::{format_timestamp_ms, print_json, print_text, Format, Table};

/// A topic in JSON output.
#[derive(Debug, Serialize)]
struct TopicJson {
    name: String,
    created_ms: u64,
    partition_count: usize,
    messages: u64,
    partitions: Vec<PartitionJson>,
}

/// A partition in JSON output.
#[derive(Debug, Serialize)]
struct PartitionJson {
    partition: u32,
    log_start: u64,
    high_watermark: u64,
    messages: u64,
}

impl TopicJson {
    fn new(t: &TopicMetadata) -> Self {
        let partitions: Vec<PartitionJson> = t
            .partitions
            .iter()
            .map(|p| PartitionJson {
                partition: p.index.0,
                log_start: p.log_start.0,
                high_watermark: p.high_watermark.0,
                messages: p.high_watermark.0.saturating_sub(p.log_start.0),
            })
            .collect();
        TopicJson {
            name: t.name.clone(),
            created_ms: t.created_ms,
            partition_count: partitions.len(),
            messages: partitions.iter().map(|p| p.messages).sum(),
            partitions,
        }
    }
}

/// Turns the broker's topic errors into sentences; other errors get `what` as context.
fn topic_error(error: ClientError, name: &str, what: &str) -> anyhow::Error {
    match error.code() {
        Some(ErrorCode::UnknownTopic) => anyhow!("topic {name:?} does not exist"),
        Some(ErrorCode::TopicExists) => anyhow!("topic {name:?} already exists"),
        _ => anyhow::Error::new(error).context(format!("cannot {what} topic {name:?}")),
    }
}

/// `topic create NAME --partitions N`.
///
/// # Errors
/// When the topic exists, the name or count is refused, or the cluster is unreachable.
pub async fn create(ctx: &Context, name: &str, partitions: u32) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let request = CreateTopicRequest { name: name.to_string(), partitions };
    let topic = client.call(&request).await.map_err(|e| topic_error(e, name, "create"))?;
    match ctx.format {
        Format::Json => print_json(&TopicJson::new(&topic)),
        Format::Text => print_text(&format!(
            "created topic {} with {} partition{}\n",
            topic.name,
            topic.partitions.len(),
            if topic.partitions.len() == 1 { "" } else { "s" }
        )),
    }
}

/// `topic list`.
///
/// # Errors
/// When the cluster is unreachable.
pub async fn list(ctx: &Context) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let response = client
        .call(&MetadataRequest::default())
        .await
        .map_err(|e| anyhow::Error::new(e).context("cannot list topics"))?;
    let topics: Vec<TopicJson> = response.topics.iter().map(TopicJson::new).collect();
    match ctx.format {
        Format::Json => {
            #[derive(Serialize)]
            struct List<'a> {
                topics: &'a [TopicJson],
            }
            print_json(&List { topics: &topics })
        }
        Format::Text => {
            if topics.is_empty() {
                return print_text("no topics\n");
            }
            let mut table = Table::new(vec!["NAME", "PARTITIONS", "MESSAGES", "CREATED"]);
            for t in &topics {
                table.row(vec![
                    t.name.clone(),
                    t.partition_count.to_string(),
                    t.messages.to_string(),
                    format_timestamp_ms(t.created_ms),
                ]);
            }
            print_text(&table.render())
        }
    }
}

/// `topic describe NAME`.
///
/// # Errors
/// When the topic does not exist or the cluster is unreachable.
pub async fn describe(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let request = MetadataRequest { topics: vec![name.to_string()] };
    let response = client.call(&request).await.map_err(|e| topic_error(e, name, "describe"))?;
    let topic = response
        .topics
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| anyhow!("topic {name:?} does not exist"))?;
    let topic = TopicJson::new(topic);
    match ctx.format {
        Format::Json => print_json(&topic),
        Format::Text => {
            let mut text = format!(
                "topic:       {}\npartitions:  {}\nmessages:    {}\ncreated:     {}\n\n",
                topic.name,
                topic.partition_count,
                topic.messages,
                format_timestamp_ms(topic.created_ms)
            );
            let mut table =
                Table::new(vec!["PARTITION", "LOG_START", "HIGH_WATERMARK", "MESSAGES"]);
            for p in &topic.partitions {
                table.row(vec![
                    p.partition.to_string(),
                    p.log_start.to_string(),
                    p.high_watermark.to_string(),
                    p.messages.to_string(),
                ]);
            }
            text.push_str(&table.render());
            print_text(&text)
        }
    }
}

/// `topic delete NAME`.
///
/// # Errors
/// When the topic does not exist or the cluster is unreachable.
pub async fn delete(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let request = DeleteTopicRequest { name: name.to_string() };
    client.call(&request).await.map_err(|e| topic_error(e, name, "delete"))?;
    match ctx.format {
        Format::Json => {
            #[derive(Serialize)]
            struct Deleted<'a> {
                deleted: &'a str,
            }
            print_json(&Deleted { deleted: name })
        }
        Format::Text => print_text(&format!("deleted topic {name}\n")),
    }
}
