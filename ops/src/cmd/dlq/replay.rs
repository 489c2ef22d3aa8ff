//! `dlq replay`: reads the chosen dead letters and produces rewritten copies (see
//! [`super::letter`]) to their destinations, one produce request per destination partition and
//! page, with a progress bar and a count per destination. Nothing is deleted from the
//! dead-letter topic.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::{bail, Context as _};
use ferry_protocol::group::dead_letter_topic;
use ferry_protocol::messages::{CreateTopicRequest, ProduceRequest, TopicMetadata};
use ferry_protocol::{ClusterClient, ErrorCode, Offset, Record, RecordBatchBuilder};
use indicatif::ProgressBar;
use serde::Serialize;

use super::letter::{replay_record, replay_target, DeadLetter, Target};
use super::{letters, plural, progress_bar, DlqLog, DlqReplayArgs};
use crate::cmd::group::topic_metadata;
use crate::cmd::Context;
use crate::output::{print_json, print_text, Format, Table};

/// Record bytes in one replay produce request (a record larger than this travels alone).
const REPLAY_BATCH_BYTES_MAX: usize = 1 << 20;

/// What a replay did.
#[derive(Debug, Default, Serialize)]
struct ReplaySummary<'a> {
    group: &'a str,
    to_origin: bool,
    replayed: u64,
    /// Messages per destination.
    targets: Vec<TargetCount>,
    /// Retry topics this command created.
    created_topics: Vec<String>,
    /// Dead letters not replayed, with why.
    skipped: Vec<Skipped>,
}

#[derive(Debug, Serialize)]
struct TargetCount {
    topic: String,
    partition: u32,
    messages: u64,
}

#[derive(Debug, Serialize)]
struct Skipped {
    offset: u64,
    reason: String,
}

/// Sends dead letters to their destinations, one produce request per destination partition
/// and page, creating retry topics as needed.
struct Replayer<'a> {
    client: &'a ClusterClient,
    group: &'a str,
    to_origin: bool,
    /// Partition counts of destination topics (`Err`: cannot be used, and why).
    topics: HashMap<String, Result<u32, String>>,
    counts: BTreeMap<(String, u32), u64>,
    created: Vec<String>,
    skipped: Vec<Skipped>,
    replayed: u64,
    progress: Option<ProgressBar>,
}

impl<'a> Replayer<'a> {
    fn new(client: &'a ClusterClient, group: &'a str, to_origin: bool, total: u64) -> Self {
        Replayer {
            client,
            group,
            to_origin,
            topics: HashMap::new(),
            counts: BTreeMap::new(),
            created: Vec::new(),
            skipped: Vec::new(),
            replayed: 0,
            progress: progress_bar(total, "replayed"),
        }
    }

    fn skip(&mut self, offset: Offset, reason: String) {
        let warning = format!("warning: dead letter at offset {offset} skipped: {reason}");
        match &self.progress {
            // Above the bar, not through it.
            Some(bar) => {
                bar.suspend(|| eprintln!("{warning}"));
                bar.inc(1);
            }
            None => eprintln!("{warning}"),
        }
        self.skipped.push(Skipped { offset: offset.0, reason });
    }

    /// The partition count of destination `target.topic`, creating a missing retry topic with
    /// the partition count of its origin topic.
    async fn destination_partitions(
        &mut self,
        target: &Target,
    ) -> anyhow::Result<Result<u32, String>> {
        if let Some(known) = self.topics.get(&target.topic) {
            return Ok(known.clone());
        }
        let count = |t: &TopicMetadata| u32::try_from(t.partitions.len()).unwrap_or(u32::MAX);
        let found = match topic_metadata(self.client, &target.topic).await? {
            Some(t) => Ok(count(&t)),
            None if self.to_origin => {
                Err(format!("origin topic {:?} does not exist", target.topic))
            }
            None => match topic_metadata(self.client, &target.origin_topic).await? {
                None => Err(format!(
                    "origin topic {:?} does not exist, so its retry topic cannot be created",
                    target.origin_topic
                )),
                Some(origin) => {
                    let partitions = count(&origin);
                    let request = CreateTopicRequest { name: target.topic.clone(), partitions };
                    match self.client.call(&request).await {
                        Ok(t) => {
                            self.created.push(target.topic.clone());
                            Ok(count(&t))
                        }
                        // Created by a consumer meanwhile: use it as it is.
                        Err(e) if e.code() == Some(ErrorCode::TopicExists) => {
                            match topic_metadata(self.client, &target.topic).await? {
                                Some(t) => Ok(count(&t)),
                                None => {
                                    Err(format!("{} vanished while being created", target.topic))
                                }
                            }
                        }
                        Err(e) => {
                            return Err(anyhow::Error::new(e)
                                .context(format!("cannot create retry topic {}", target.topic)))
                        }
                    }
                }
            },
        };
        self.topics.insert(target.topic.clone(), found.clone());
        Ok(found)
    }

    /// Replays one page of dead letters: grouped by destination (order kept within each), in
    /// batches of at most `REPLAY_BATCH_BYTES_MAX`.
    async fn replay(&mut self, letters: &[DeadLetter]) -> anyhow::Result<()> {
        let mut by_target: BTreeMap<Target, Vec<(Offset, Record)>> = BTreeMap::new();
        for letter in letters {
            match replay_target(letter, self.group, self.to_origin) {
                Ok(target) => by_target
                    .entry(target)
                    .or_default()
                    .push((letter.offset, replay_record(letter, self.to_origin))),
                Err(reason) => self.skip(letter.offset, reason),
            }
        }
        for (target, records) in by_target {
            match self.destination_partitions(&target).await? {
                Ok(n) if target.partition.0 < n => {}
                Ok(n) => {
                    let reason = format!(
                        "{} has no partition {} (it has {n})",
                        target.topic, target.partition
                    );
                    for (offset, _) in &records {
                        self.skip(*offset, reason.clone());
                    }
                    continue;
                }
                Err(reason) => {
                    for (offset, _) in &records {
                        self.skip(*offset, reason.clone());
                    }
                    continue;
                }
            }
            let mut rest = records.as_slice();
            while !rest.is_empty() {
                let wanted_bytes: usize = rest.iter().map(|(_, r)| r.encoded_len()).sum();
                let mut builder =
                    RecordBatchBuilder::new(0, 0, wanted_bytes.min(REPLAY_BATCH_BYTES_MAX));
                let mut taken = 0;
                for (_, record) in rest {
                    if taken > 0
                        && builder.len_bytes() + record.encoded_len() > REPLAY_BATCH_BYTES_MAX
                    {
                        break;
                    }
                    builder.push(record);
                    taken += 1;
                }
                let request = ProduceRequest {
                    topic: target.topic.clone(),
                    partition: target.partition,
                    batch: builder.finish(),
                    deliver_at_ms: 0,
                };
                self.client.call(&request).await.with_context(|| {
                    format!(
                        "cannot replay the dead letter at offset {} into {}/{}",
                        rest[0].0, target.topic, target.partition
                    )
                })?;
                let sent = taken as u64;
                self.replayed += sent;
                *self.counts.entry((target.topic.clone(), target.partition.0)).or_default() += sent;
                if let Some(bar) = &self.progress {
                    bar.inc(sent);
                }
                rest = &rest[taken..];
            }
        }
        Ok(())
    }

    fn finish(self) -> ReplaySummary<'a> {
        if let Some(bar) = &self.progress {
            bar.finish_and_clear();
        }
        ReplaySummary {
            group: self.group,
            to_origin: self.to_origin,
            replayed: self.replayed,
            targets: self
                .counts
                .into_iter()
                .map(|((topic, partition), messages)| TargetCount { topic, partition, messages })
                .collect(),
            created_topics: self.created,
            skipped: self.skipped,
        }
    }
}

/// The dead letters at `offsets`, each of which must be stored.
async fn read_offsets(
    log: &DlqLog,
    group: &str,
    offsets: &[u64],
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut wanted: BTreeSet<Offset> = offsets.iter().copied().map(Offset).collect();
    for o in &wanted {
        if *o < log.log_start || *o >= log.high_watermark {
            bail!("group {group} has no dead letter at offset {o} ({})", log.range());
        }
    }
    let mut found = Vec::with_capacity(wanted.len());
    while let Some(&first) = wanted.first() {
        let page = log.read_page(first).await?;
        let last = page.last().map_or(first, |l| l.offset);
        for letter in page {
            if wanted.remove(&letter.offset) {
                found.push(letter);
            }
        }
        if let Some(missing) = wanted.range(..=last).next() {
            bail!("the dead letter at offset {missing} of {} was not found", log.topic);
        }
    }
    Ok(found)
}

/// `dlq replay --group G (--offset N... | --all) [--to-origin]`.
///
/// # Errors
/// When an offset is not stored, the cluster is unreachable, a produce fails (after saying how
/// many were replayed), or any dead letter was skipped (after the summary).
pub async fn replay(ctx: &Context, args: &DlqReplayArgs) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let group = args.group.as_str();
    let format = args.json.format(ctx);
    // An empty dead-letter topic is no dead letters for --all; an --offset gets the range.
    let log = DlqLog::open(&client, group).await?.filter(|log| !args.all || log.count() > 0);
    let Some(log) = log else {
        if !args.all {
            bail!("group {group} has no dead letters (no topic {})", dead_letter_topic(group));
        }
        let summary =
            ReplaySummary { group, to_origin: args.to_origin, ..ReplaySummary::default() };
        return match format {
            Format::Json => print_json(&summary),
            Format::Text => {
                print_text(&format!("no dead letters for group {group}; nothing replayed\n"))
            }
        };
    };
    let mut replayer;
    if args.all {
        replayer = Replayer::new(&client, group, args.to_origin, log.count());
        let mut next = log.log_start;
        loop {
            let page = log.read_page(next).await?;
            let Some(last) = page.last() else { break };
            next = last.offset.next();
            if let Err(e) = replayer.replay(&page).await {
                return Err(stopped(e, replayer.replayed));
            }
        }
    } else {
        let letters = read_offsets(&log, group, &args.offsets).await?;
        replayer = Replayer::new(&client, group, args.to_origin, letters.len() as u64);
        if let Err(e) = replayer.replay(&letters).await {
            return Err(stopped(e, replayer.replayed));
        }
    }
    let summary = replayer.finish();
    let printed = match format {
        Format::Json => print_json(&summary),
        Format::Text => print_text(&render_replay(&summary, &log.topic)),
    };
    printed?;
    if !summary.skipped.is_empty() {
        let n = summary.skipped.len();
        bail!(
            "{n} dead letter{} not replayed (see the warnings above)",
            plural(n, " was", "s were")
        );
    }
    Ok(())
}

fn stopped(error: anyhow::Error, replayed: u64) -> anyhow::Error {
    match replayed {
        0 => error,
        n => error.context(format!("stopped after replaying {}", letters(n))),
    }
}

fn render_replay(summary: &ReplaySummary, dlq_topic: &str) -> String {
    let group = summary.group;
    let into = if summary.to_origin {
        "into their origin topics (every group reading them sees them again)"
    } else {
        "into the group's retry topics (only this group sees them again)"
    };
    let mut text = format!("replayed {} of group {group} {into}\n", letters(summary.replayed));
    for topic in &summary.created_topics {
        text.push_str(&format!("created retry topic {topic}\n"));
    }
    if !summary.targets.is_empty() {
        let mut table = Table::new(vec!["TOPIC", "PARTITION", "MESSAGES"]);
        for t in &summary.targets {
            table.row(vec![t.topic.clone(), t.partition.to_string(), t.messages.to_string()]);
        }
        text.push_str(&table.render());
    }
    if !summary.skipped.is_empty() {
        let n = summary.skipped.len();
        text.push_str(&format!("skipped {n} dead letter{}\n", plural(n, "", "s")));
    }
    if summary.replayed > 0 {
        text.push_str(&format!(
            "they are still in {dlq_topic}; `ferryctl dlq purge --group {group}` deletes them\n"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_summary_renders() {
        let summary = ReplaySummary {
            group: "billing",
            to_origin: false,
            replayed: 3,
            targets: vec![TargetCount {
                topic: "__retry.billing.orders".into(),
                partition: 2,
                messages: 3,
            }],
            created_topics: vec!["__retry.billing.orders".into()],
            skipped: vec![],
        };
        let text = render_replay(&summary, "__dlq.billing");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                "replayed 3 dead letters of group billing into the group's retry topics (only \
                 this group sees them again)",
                "created retry topic __retry.billing.orders",
                "TOPIC                   PARTITION  MESSAGES",
                "__retry.billing.orders  2          3",
                "they are still in __dlq.billing; `ferryctl dlq purge --group billing` deletes them",
            ]
        );
        let v = serde_json::to_value(&summary).unwrap();
        assert_eq!((v["replayed"].as_u64(), v["to_origin"].as_bool()), (Some(3), Some(false)));
        assert_eq!(v["targets"][0]["partition"], 2);
    }
}
