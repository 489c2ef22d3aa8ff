//! `ferryctl dlq list|replay|purge`: a consumer group's dead letters, read from its
//! dead-letter topic (`__dlq.<group>`, one partition) through the leader.
//!
//! The consumer library dead-letters a message after its last delivery attempt (or at once on
//! `term`), with headers saying where it came from and why it failed; [`letter`] reads them.
//! `replay` (in [`replay`]) produces copies into the group's retry topic (or the origin topic)
//! and leaves the dead-letter topic alone; `purge` deletes that topic, which the library
//! creates again when a member joins or a message is dead-lettered.

mod letter;
mod replay;

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use ferry_protocol::group::dead_letter_topic;
use ferry_protocol::messages::{DeleteTopicRequest, FetchRequest, FetchedBatch};
use ferry_protocol::{ClusterClient, ErrorCode, Offset, PartitionIndex, RecordBatch};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use self::letter::{render_list, DeadLetter, LetterJson};
pub use self::replay::replay;
use crate::cmd::group::{parse_group_name, topic_metadata, JsonFlag};
use crate::cmd::Context;
use crate::output::{print_json, print_text, Format};

/// Most rows `dlq list --limit` may ask for: they are all held in memory before printing.
pub const DLQ_LIST_ROWS_MAX: u32 = 100_000;

/// Bytes asked for in one fetch of the dead-letter topic.
const FETCH_BYTES_MAX: u32 = 1 << 20;

/// The progress bar appears only when the work lasts longer than this.
const PROGRESS_DELAY: Duration = Duration::from_millis(500);

// ---------------------------------------------------------------------------------------------
// Command line

/// The `long_about` of `ferryctl dlq`.
pub const DLQ_LONG_ABOUT: &str = "Inspect, replay and purge a consumer group's dead letters.

A message goes to its group's dead-letter topic (__dlq.GROUP) when its consumer gave up on it: \
every redelivery failed, or the consumer terminated it. Each dead letter keeps its key, value \
and application headers, plus headers saying where it came from (topic, partition, offset), \
how many attempts were made, the last error, and when it was dead-lettered.";

const REPLAY_LONG_ABOUT: &str = "Send dead letters of a group to be processed again.

By default each one goes to the group's retry topic for its origin topic \
(__retry.GROUP.TOPIC), in its origin partition, so only this group sees it again, as a first \
attempt: `ferry-attempt` starts again at 1, the origin headers are kept, and the last error and \
dead-lettered time are removed. A retry topic that does not exist yet is created with as many \
partitions as its origin topic. With --to-origin each one is produced to its origin topic \
instead, as a new message there without any ferry-* header: every group reading that topic \
sees it.

Replay does not delete anything from the dead-letter topic (run `ferryctl dlq purge` for \
that), so replaying twice sends the messages twice. A dead letter whose origin headers are \
missing, or whose origin topic is gone, is skipped with a warning, and the command then exits 1.";

const PURGE_LONG_ABOUT: &str = "Delete every dead letter of a group.

Deletes the group's dead-letter topic (__dlq.GROUP) with all its messages; the consumer library \
creates it again when a member of the group joins or the next message is dead-lettered. Shows \
how many messages will be deleted and asks for confirmation on the terminal; --yes skips the \
question (needed when stdin is not a terminal). \
A dead letter arriving between the question and the deletion is deleted too. Replay what \
should be processed again first: a purge cannot be undone.";

/// `ferryctl dlq ...`
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Show a group's dead letters, oldest first.
    ///
    /// Columns: offset in the dead-letter topic, origin (topic/partition@offset), attempts,
    /// when it was dead-lettered, the last error (cut at 80 characters; whole in JSON), key,
    /// payload size, and with --payload the payload (text, control characters escaped; bytes
    /// escaped when not UTF-8). A group with no dead-letter topic has no dead letters. With
    /// --json (or --format json): `{group, topic, total, dead_letters: [...]}`, each with
    /// offset, origin_topic, origin_partition, origin_offset, attempts, last_error,
    /// dead_lettered_ms, dead_lettered_at, timestamp_ms, key, headers, value_bytes (and value
    /// with --payload; base64 when not UTF-8, as `*_encoding` says).
    #[command(after_help = "Examples:
  ferryctl dlq list --group billing
  ferryctl dlq list --group billing --from 500 --limit 20 --payload
  ferryctl dlq list --group billing --json --limit 100000 | jq '.dead_letters[].last_error'")]
    List(DlqListArgs),
    /// Send dead letters to be processed again (into the group's retry topic by default).
    #[command(long_about = REPLAY_LONG_ABOUT, after_help = "Examples:
  ferryctl dlq replay --group billing --offset 3 --offset 7
  ferryctl dlq replay --group billing --all
  ferryctl dlq replay --group billing --all --to-origin
  ferryctl dlq replay --group billing --all && ferryctl dlq purge --group billing --yes")]
    Replay(DlqReplayArgs),
    /// Delete all dead letters of a group (asks first, unless --yes).
    #[command(long_about = PURGE_LONG_ABOUT, after_help = "Examples:
  ferryctl dlq purge --group billing
  ferryctl dlq purge --group billing --yes")]
    Purge(DlqPurgeArgs),
}

/// `ferryctl dlq list ...`
#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// Consumer group.
    #[arg(long, value_name = "GROUP", value_parser = parse_group_name)]
    pub group: String,

    /// Show at most N dead letters (1-100000).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=i64::from(DLQ_LIST_ROWS_MAX)))]
    pub limit: u32,

    /// Start at this offset of the dead-letter topic (default: the oldest stored).
    #[arg(long, value_name = "OFFSET")]
    pub from: Option<u64>,

    /// Also show each payload.
    #[arg(long)]
    pub payload: bool,

    #[command(flatten)]
    pub json: JsonFlag,
}

/// `ferryctl dlq replay ...`
#[derive(Debug, Args)]
pub struct DlqReplayArgs {
    /// Consumer group.
    #[arg(long, value_name = "GROUP", value_parser = parse_group_name)]
    pub group: String,

    /// Replay the dead letter at this offset of the dead-letter topic (repeat for several).
    #[arg(long = "offset", value_name = "OFFSET", required_unless_present = "all")]
    pub offsets: Vec<u64>,

    /// Replay every dead letter stored now.
    #[arg(long, conflicts_with = "offsets")]
    pub all: bool,

    /// Produce to the origin topic (every group sees it) instead of the group's retry topic.
    #[arg(long)]
    pub to_origin: bool,

    #[command(flatten)]
    pub json: JsonFlag,
}

/// `ferryctl dlq purge ...`
#[derive(Debug, Args)]
pub struct DlqPurgeArgs {
    /// Consumer group.
    #[arg(long, value_name = "GROUP", value_parser = parse_group_name)]
    pub group: String,

    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,

    #[command(flatten)]
    pub json: JsonFlag,
}

// ---------------------------------------------------------------------------------------------
// Reading the dead-letter topic

/// A group's dead-letter topic as it was when opened: reads stop at the high watermark seen
/// then, so letters arriving meanwhile are left for the next command.
struct DlqLog {
    client: ClusterClient,
    topic: String,
    log_start: Offset,
    high_watermark: Offset,
}

impl DlqLog {
    /// `None` when the group has no dead-letter topic.
    async fn open(client: &ClusterClient, group: &str) -> anyhow::Result<Option<DlqLog>> {
        let topic = dead_letter_topic(group);
        let Some(metadata) = topic_metadata(client, &topic).await? else {
            return Ok(None);
        };
        let Some(p) = metadata.partitions.first() else {
            return Ok(None);
        };
        Ok(Some(DlqLog {
            client: client.clone(),
            topic,
            log_start: p.log_start,
            high_watermark: p.high_watermark,
        }))
    }

    /// Dead letters stored.
    fn count(&self) -> u64 {
        self.high_watermark.0.saturating_sub(self.log_start.0)
    }

    /// What the topic holds, as a sentence: `__dlq.g holds offsets 0 to 5`.
    fn range(&self) -> String {
        if self.count() == 0 {
            format!("{} is empty (next offset {})", self.topic, self.high_watermark)
        } else {
            format!(
                "{} holds offsets {} to {}",
                self.topic,
                self.log_start,
                self.high_watermark.0 - 1
            )
        }
    }

    /// One fetch's worth of dead letters from `from` on (below the high watermark seen at
    /// open); empty when there are none.
    async fn read_page(&self, from: Offset) -> anyhow::Result<Vec<DeadLetter>> {
        if from >= self.high_watermark {
            return Ok(Vec::new());
        }
        let request = FetchRequest {
            topic: self.topic.clone(),
            partition: PartitionIndex(0),
            offset: from,
            max_bytes: FETCH_BYTES_MAX,
            max_wait_ms: 0,
        };
        let response = self.client.call(&request).await.map_err(|e| match e.code() {
            Some(ErrorCode::UnknownTopic) => anyhow!("{} was deleted meanwhile", self.topic),
            Some(ErrorCode::OffsetOutOfRange) => {
                anyhow!("dead letters at offset {from} of {} were deleted meanwhile", self.topic)
            }
            _ => anyhow::Error::new(e)
                .context(format!("cannot read {} at offset {from}", self.topic)),
        })?;
        letters_in(&self.topic, &response.batches, from, self.high_watermark)
    }
}

/// The dead letters in fetched `batches` at offsets `from..until`; a batch may start before
/// `from` (records before it are skipped) and end after `until`.
///
/// # Errors
/// When a batch fails its CRC or a record does not decode (checked end to end, as the
/// consumer does).
fn letters_in(
    topic: &str,
    batches: &[FetchedBatch],
    from: Offset,
    until: Offset,
) -> anyhow::Result<Vec<DeadLetter>> {
    let mut letters = Vec::new();
    for batch in batches {
        let parsed = RecordBatch::parse(batch.bytes.clone()).with_context(|| {
            format!("corrupt record batch in {topic} at offset {}", batch.base_offset)
        })?;
        for (i, record) in parsed.records().enumerate() {
            let offset = Offset(batch.base_offset.0.saturating_add(i as u64));
            let record =
                record.with_context(|| format!("corrupt record in {topic} at offset {offset}"))?;
            if offset >= from && offset < until {
                letters.push(DeadLetter { offset, record });
            }
        }
    }
    Ok(letters)
}

/// The sentence for a group without dead letters.
fn no_dead_letters(group: &str) -> String {
    format!("no dead letters for group {group}\n")
}

/// A progress bar of `len` steps on a terminal, shown only once the work proves long.
fn progress_bar(len: u64, what: &str) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    let template = format!(
        "{{elapsed_precise}} [{{wide_bar}}] {{human_pos}}/{{human_len}} {what} ({{eta}} left)"
    );
    if let Ok(style) = ProgressStyle::with_template(&template) {
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

// ---------------------------------------------------------------------------------------------
// list

/// `dlq list` in JSON output.
#[derive(Debug, Serialize)]
struct ListJson<'a> {
    group: &'a str,
    topic: String,
    /// Dead letters stored (not only those shown).
    total: u64,
    dead_letters: Vec<LetterJson>,
}

/// `dlq list --group G`.
///
/// # Errors
/// When the cluster is unreachable or the dead-letter topic cannot be read.
pub async fn list(ctx: &Context, args: &DlqListArgs) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let group = args.group.as_str();
    let format = args.json.format(ctx);
    let Some(log) = DlqLog::open(&client, group).await? else {
        return match format {
            Format::Json => print_json(&ListJson {
                group,
                topic: dead_letter_topic(group),
                total: 0,
                dead_letters: Vec::new(),
            }),
            Format::Text => print_text(&no_dead_letters(group)),
        };
    };
    let from = args.from.map_or(log.log_start, Offset);
    if from < log.log_start {
        eprintln!(
            "note: dead letters before offset {} were deleted; starting there",
            log.log_start
        );
    }
    let limit = usize::try_from(args.limit).unwrap_or(usize::MAX);
    let wanted =
        log.high_watermark.0.saturating_sub(from.max(log.log_start).0).min(args.limit.into());
    let progress = progress_bar(wanted, "dead letters read");
    let mut letters: Vec<DeadLetter> = Vec::new();
    let mut next = from.max(log.log_start);
    while letters.len() < limit {
        let page = log.read_page(next).await?;
        let Some(last) = page.last() else { break };
        next = last.offset.next();
        let take = page.len().min(limit - letters.len());
        if let Some(bar) = &progress {
            bar.inc(take as u64);
        }
        letters.extend(page.into_iter().take(take));
    }
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    let more_from = letters.last().map(|l| l.offset.next()).filter(|o| *o < log.high_watermark);
    let printed = match format {
        Format::Json => print_json(&ListJson {
            group,
            topic: log.topic.clone(),
            total: log.count(),
            dead_letters: letters.iter().map(|l| LetterJson::new(l, args.payload)).collect(),
        }),
        Format::Text if log.count() == 0 => print_text(&no_dead_letters(group)),
        Format::Text if letters.is_empty() => print_text(&format!(
            "no dead letters for group {group} at or after offset {from} ({})\n",
            log.range()
        )),
        Format::Text => print_text(&render_list(&letters, args.payload)),
    };
    // After the rows, so it is the last thing on a terminal; on stderr, so JSON stays clean.
    if let (Ok(()), Some(next)) = (&printed, more_from) {
        eprintln!(
            "note: showing {} of {} dead letters; continue with --from {next}, or raise --limit",
            letters.len(),
            log.count()
        );
    }
    printed
}

// ---------------------------------------------------------------------------------------------
// shared wording

/// `one` when `n` is 1, else `many`.
fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

/// `1 dead letter`, `3 dead letters`.
fn letters(n: u64) -> String {
    format!("{n} dead letter{}", if n == 1 { "" } else { "s" })
}

// ---------------------------------------------------------------------------------------------
// purge

/// `dlq purge` in JSON output.
#[derive(Debug, Serialize)]
struct PurgeJson<'a> {
    group: &'a str,
    topic: &'a str,
    /// Whether the dead-letter topic was deleted.
    deleted: bool,
    /// Messages it held when counted.
    messages: u64,
}

/// Whether an answer to a y/N question is yes.
fn confirmed(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Asks `question` on the terminal and reads the answer.
async fn ask(question: String) -> anyhow::Result<bool> {
    let answer = tokio::task::spawn_blocking(move || {
        eprint!("{question} [y/N] ");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map(|_| line)
    })
    .await
    .context("the confirmation prompt failed")?
    .context("cannot read the answer from stdin")?;
    Ok(confirmed(&answer))
}

/// `dlq purge --group G [--yes]`.
///
/// # Errors
/// When confirmation is needed but stdin is not a terminal, or the cluster is unreachable.
pub async fn purge(ctx: &Context, args: &DlqPurgeArgs) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let group = args.group.as_str();
    let topic = dead_letter_topic(group);
    let format = args.json.format(ctx);
    let report = |deleted: bool, messages: u64, text: String| match format {
        Format::Json => print_json(&PurgeJson { group, topic: &topic, deleted, messages }),
        Format::Text => print_text(&text),
    };
    let Some(log) = DlqLog::open(&client, group).await? else {
        return report(false, 0, no_dead_letters(group));
    };
    let count = log.count();
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to delete {} of group {group} without confirmation: \
                 stdin is not a terminal; pass --yes",
                letters(count)
            );
        }
        let question = format!(
            "delete {} of group {group} (topic {topic})? This cannot be undone.",
            letters(count)
        );
        if !ask(question).await? {
            eprintln!("cancelled; nothing was deleted");
            return report(false, count, String::new());
        }
    }
    match client.call(&DeleteTopicRequest { name: topic.clone() }).await {
        Ok(_) => {}
        // Purged by someone else meanwhile: the outcome is the same.
        Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => {}
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot delete {topic}"))),
    }
    report(
        true,
        count,
        format!(
            "deleted {} of group {group} (topic {topic}); the consumer library creates it \
             again when needed\n",
            letters(count)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::letter::tests::letter;
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::error::ErrorKind;
    use clap::Parser;
    use ferry_protocol::RecordBatchBuilder;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ferryctl").chain(args.iter().copied()))
    }

    fn kind(args: &[&str]) -> ErrorKind {
        parse(args).expect_err("should be refused").kind()
    }

    #[test]
    fn list_flags() {
        match parse(&["dlq", "list", "--group", "billing"]).unwrap().command {
            Command::Dlq(DlqCommand::List(a)) => {
                assert_eq!(a.group, "billing");
                assert_eq!((a.limit, a.from, a.payload, a.json.json), (100, None, false, false));
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "dlq",
            "list",
            "--group",
            "g",
            "--limit",
            "5",
            "--from",
            "9",
            "--payload",
            "--json",
        ])
        .unwrap()
        .command
        {
            Command::Dlq(DlqCommand::List(a)) => {
                assert_eq!((a.limit, a.from, a.payload, a.json.json), (5, Some(9), true, true));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(kind(&["dlq", "list"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["dlq", "list", "--group", "a.b"]), ErrorKind::ValueValidation);
        assert_eq!(
            kind(&["dlq", "list", "--group", "g", "--limit", "0"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["dlq", "list", "--group", "g", "--limit", "100001"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["dlq", "list", "--group", "g", "--from", "-1"]),
            ErrorKind::UnknownArgument
        );
    }

    #[test]
    fn replay_flags() {
        match parse(&["dlq", "replay", "--group", "g", "--offset", "3", "--offset", "7"])
            .unwrap()
            .command
        {
            Command::Dlq(DlqCommand::Replay(a)) => {
                assert_eq!(a.offsets, vec![3, 7]);
                assert!(!a.all && !a.to_origin);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["dlq", "replay", "--group", "g", "--all", "--to-origin"]).unwrap().command {
            Command::Dlq(DlqCommand::Replay(a)) => {
                assert!(a.all && a.to_origin && a.offsets.is_empty())
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(kind(&["dlq", "replay", "--group", "g"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind(&["dlq", "replay", "--group", "g", "--all", "--offset", "1"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(kind(&["dlq", "replay", "--all"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(
            kind(&["dlq", "replay", "--group", "g", "--offset", "x"]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn purge_flags() {
        match parse(&["dlq", "purge", "--group", "g", "-y"]).unwrap().command {
            Command::Dlq(DlqCommand::Purge(a)) => assert!(a.yes),
            other => panic!("{other:?}"),
        }
        match parse(&["dlq", "purge", "--group", "g"]).unwrap().command {
            Command::Dlq(DlqCommand::Purge(a)) => assert!(!a.yes),
            other => panic!("{other:?}"),
        }
        assert_eq!(kind(&["dlq", "purge"]), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn help_says_replay_keeps_the_dead_letters() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let dlq = cli.find_subcommand_mut("dlq").unwrap();
        let help = dlq.find_subcommand_mut("replay").unwrap().render_long_help().to_string();
        assert!(help.contains("Replay does not delete anything"), "{help}");
        let help = dlq.find_subcommand_mut("purge").unwrap().render_long_help().to_string();
        assert!(help.contains("--yes"), "{help}");
    }

    #[test]
    fn answers_to_the_question() {
        for yes in ["y", "Y", "yes", " YES\n"] {
            assert!(confirmed(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yep", "y y"] {
            assert!(!confirmed(no), "{no:?}");
        }
    }

    #[test]
    fn letters_come_from_fetched_batches_between_the_bounds() {
        let batch = |base: u64, letters: &[DeadLetter]| {
            let mut builder = RecordBatchBuilder::new(0, 0, 0);
            for l in letters {
                builder.push(&l.record);
            }
            FetchedBatch { base_offset: Offset(base), bytes: builder.finish() }
        };
        // Offsets 3..=5 and 6..=7; asked from 4 with the high watermark (seen at open) at 7.
        let batches =
            [batch(3, &[letter(0), letter(0), letter(1)]), batch(6, &[letter(0), letter(1)])];
        let got = letters_in("__dlq.g", &batches, Offset(4), Offset(7)).unwrap();
        let offsets: Vec<u64> = got.iter().map(|l| l.offset.0).collect();
        assert_eq!(offsets, vec![4, 5, 6]);
        assert_eq!(got[1].record, letter(1).record);

        let mut bad = batches[0].bytes.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let corrupt = [FetchedBatch { base_offset: Offset(3), bytes: bad.into() }];
        let err = letters_in("__dlq.g", &corrupt, Offset(0), Offset(9)).unwrap_err();
        assert_eq!(err.to_string(), "corrupt record batch in __dlq.g at offset 3");
    }
}
