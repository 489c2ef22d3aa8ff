//! `ferryctl group list|describe|reset-offsets`: the operator's view of consumer groups and
//! their committed positions, through the leader.
//!
//! Membership lives in the leader's memory, committed positions in the replicated state; both
//! come back in one `DescribeGroup` answer. A group's retry topic (`__retry.<group>.<topic>`)
//! holds its redeliveries and has positions of its own: `describe` shows them in a labelled
//! table, and `reset-offsets` never changes them. How groups are rendered lives in [`view`];
//! how a reset is planned, in [`reset`].

mod reset;
mod view;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use ferry_protocol::group::{
    dead_letter_topic, retry_topic, validate_group_name, DescribeGroupRequest,
    DescribeGroupResponse, ListGroupsRequest, OffsetCommit, OffsetsForTimeRequest,
    ResetOffsetsRequest,
};
use ferry_protocol::messages::{MetadataRequest, TopicMetadata};
use ferry_protocol::{now_ms, ClusterClient, ErrorCode};
use serde::Serialize;

use self::reset::{plan, render_plan, PartitionState, PlannedReset, ResetMode};
use self::view::{render_describe, render_list, DescribeJson, ListJson};
use crate::cli::parse_topic_name;
use crate::cmd::Context;
use crate::output::{parse_timestamp_ms, print_json, print_text, Format};

// ---------------------------------------------------------------------------------------------
// Command line

const RESET_LONG_ABOUT: &str = "Move a consumer group's committed positions in one topic.

Computes the new position of every partition (or of each --partition) and prints a preview: \
partition, current committed offset (`-` when never committed), new offset, and the change \
(positive: messages skipped; negative: messages read again). Nothing is changed unless \
--execute is given.

Modes (exactly one):
  --to-earliest    the log start: read everything still stored again
  --to-latest      the high watermark: skip everything stored now
  --to-time TIME   the first message stamped at or after TIME (RFC 3339, or ms since the epoch)
  --shift-by N     N messages forward (or back, when negative) from the committed offset; a
                   partition never committed shifts from its log start
Every new position stays inside the stored log: a shift past either end stops there.

Only TOPIC itself is reset, not the group's retry topic (__retry.GROUP.TOPIC): redeliveries \
already scheduled are still delivered.

The leader refuses --execute while the group has live members, since they would commit over \
the new positions: stop the consumers first, or pass --force to apply anyway.";

/// `ferryctl group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// List consumer groups: topics, live members, lag.
    ///
    /// A group appears while it has live members or committed positions. Lag counts the
    /// messages not yet processed, summed over its topics and their retry topics. With --json
    /// (or --format json): `{"groups": [{group, topics, members, lag}]}`.
    #[command(after_help = "Examples:
  ferryctl group list
  ferryctl group list --json | jq '.groups[] | select(.lag > 1000)'")]
    List(JsonFlag),
    /// Show one group: members, and every partition's committed offset and lag.
    ///
    /// Members: member id, client id, topic, partitions assigned by the leader, partitions the
    /// member reports holding, deliveries not yet settled, time since its last heartbeat.
    /// Partitions: topic, partition, committed offset (`-` when never committed), log start,
    /// high watermark, lag, time since the last commit. The group's retry topics
    /// (__retry.GROUP.TOPIC, its redeliveries) follow in their own labelled table; their lag
    /// is work still to do too. Also shows how many dead letters the group has.
    ///
    /// A group with no live member and no committed position does not exist: exit status 1.
    #[command(after_help = "Examples:
  ferryctl group describe billing
  ferryctl group describe billing --json | jq '.partitions[] | select(.lag > 0)'")]
    Describe {
        /// Consumer group.
        #[arg(value_parser = parse_group_name)]
        group: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Preview or apply new committed positions for a group in one topic.
    #[command(long_about = RESET_LONG_ABOUT, after_help = "Examples:
  ferryctl group reset-offsets billing --topic orders --to-earliest            # preview
  ferryctl group reset-offsets billing --topic orders --to-earliest --execute
  ferryctl group reset-offsets billing --topic orders --to-time 2024-05-01T12:00:00Z
  ferryctl group reset-offsets billing --topic orders --shift-by -100 --partition 0 --partition 3
  ferryctl group reset-offsets billing --topic orders --to-latest --execute --force")]
    ResetOffsets(ResetOffsetsArgs),
}

/// `--json`: the same as `--format json` for this command.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct JsonFlag {
    /// Print JSON (the same as --format json).
    #[arg(long)]
    pub json: bool,
}

impl JsonFlag {
    /// Whether to print JSON: `--json` or `--format json`.
    pub fn format(self, ctx: &Context) -> Format {
        if self.json {
            Format::Json
        } else {
            ctx.format
        }
    }
}

/// `ferryctl group reset-offsets ...`
#[derive(Debug, Args)]
pub struct ResetOffsetsArgs {
    /// Consumer group.
    #[arg(value_parser = parse_group_name)]
    pub group: String,

    /// The topic whose positions move (its retry topic is left alone).
    #[arg(long, value_name = "TOPIC", value_parser = parse_topic_name)]
    pub topic: String,

    #[command(flatten)]
    pub to: ResetTo,

    /// Only this partition (repeat for several); default: every partition of the topic.
    #[arg(long = "partition", value_name = "P")]
    pub partitions: Vec<u32>,

    /// Apply the new positions; without it nothing is changed.
    #[arg(long)]
    pub execute: bool,

    /// Apply even while the group has live members (they may commit over the new positions).
    #[arg(long, requires = "execute")]
    pub force: bool,

    #[command(flatten)]
    pub json: JsonFlag,
}

/// The reset mode flags; exactly one is required.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ResetTo {
    /// To the log start (everything still stored is read again).
    #[arg(long)]
    pub to_earliest: bool,

    /// To the high watermark (everything stored now is skipped).
    #[arg(long)]
    pub to_latest: bool,

    /// To the first message stamped at or after TIME: RFC 3339 (2024-05-01T12:00:00Z, or with
    /// an offset such as +02:00) or milliseconds since the Unix epoch.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to_time: Option<u64>,

    /// N messages forward, or back when negative, from the committed offset (never committed:
    /// from the log start), stopping at the ends of the log.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub shift_by: Option<i64>,
}

impl ResetTo {
    /// The chosen mode (clap guarantees exactly one flag).
    pub fn mode(&self) -> ResetMode {
        match (self.to_time, self.shift_by) {
            (Some(ms), _) => ResetMode::ToTime(ms),
            (_, Some(n)) => ResetMode::ShiftBy(n),
            _ if self.to_latest => ResetMode::Latest,
            _ => ResetMode::Earliest,
        }
    }
}

/// A consumer group name as the broker accepts it: 1-100 characters of `[A-Za-z0-9_-]`.
///
/// # Errors
/// A sentence naming what is wrong.
pub fn parse_group_name(text: &str) -> Result<String, String> {
    validate_group_name(text)?;
    Ok(text.to_string())
}

/// A point in time: milliseconds since the Unix epoch, or an RFC 3339 timestamp.
pub(crate) fn parse_time(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("{text:?} is too large for ms since the epoch"));
    }
    parse_timestamp_ms(text)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The sentence for a group the leader does not know.
fn unknown_group(group: &str) -> anyhow::Error {
    anyhow!("consumer group {group:?} does not exist (no live member and no committed position)")
}

/// Asks the leader to describe `group`; `None` when it does not know the group.
async fn describe_group(
    client: &ClusterClient,
    group: &str,
) -> anyhow::Result<Option<DescribeGroupResponse>> {
    match client.call(&DescribeGroupRequest { group: group.to_string() }).await {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.code() == Some(ErrorCode::UnknownGroup) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot describe group {group:?}"))),
    }
}

/// One topic's metadata; `None` when it does not exist.
pub(crate) async fn topic_metadata(
    client: &ClusterClient,
    topic: &str,
) -> anyhow::Result<Option<TopicMetadata>> {
    match client.call(&MetadataRequest { topics: vec![topic.to_string()] }).await {
        Ok(m) => Ok(m.topics.into_iter().find(|t| t.name == topic)),
        Err(e) if e.code() == Some(ErrorCode::UnknownTopic) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context(format!("cannot read topic {topic:?}"))),
    }
}

/// Messages stored in `group`'s dead-letter topic (0 when it has none); `None` when it could
/// not be read (shown as unknown: the rest of `describe` is still worth printing).
async fn dead_letter_count(client: &ClusterClient, group: &str) -> Option<u64> {
    match topic_metadata(client, &dead_letter_topic(group)).await {
        Ok(Some(t)) => Some(
            t.partitions.iter().map(|p| p.high_watermark.0.saturating_sub(p.log_start.0)).sum(),
        ),
        Ok(None) => Some(0),
        Err(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// list / describe

/// `group list`.
///
/// # Errors
/// When the cluster is unreachable.
pub async fn list(ctx: &Context, json: JsonFlag) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let mut response =
        client.call(&ListGroupsRequest).await.context("cannot list consumer groups")?;
    response.groups.sort_by(|a, b| a.group.cmp(&b.group));
    match json.format(ctx) {
        Format::Json => print_json(&ListJson::new(&response.groups)),
        Format::Text => print_text(&render_list(&response.groups)),
    }
}

/// `group describe GROUP`.
///
/// # Errors
/// When the group does not exist or the cluster is unreachable.
pub async fn describe(ctx: &Context, group: &str, json: JsonFlag) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let mut d = describe_group(&client, group).await?.ok_or_else(|| unknown_group(group))?;
    d.members.sort_by(|a, b| (&a.topic, &a.member_id).cmp(&(&b.topic, &b.member_id)));
    d.offsets.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    let dead_letters = dead_letter_count(&client, group).await;
    let now = now_ms();
    match json.format(ctx) {
        Format::Json => print_json(&DescribeJson::new(&d, dead_letters, now)),
        Format::Text => print_text(&render_describe(&d, dead_letters, now)),
    }
}

// ---------------------------------------------------------------------------------------------
// reset-offsets

/// `reset-offsets` in JSON output.
#[derive(Debug, Serialize)]
struct ResetJson<'a> {
    group: &'a str,
    topic: &'a str,
    /// The mode flag, e.g. `--to-earliest` or `--shift-by -5`.
    mode: String,
    /// False for a preview: nothing was changed.
    executed: bool,
    forced: bool,
    /// Live members when the command looked (any topic of the group).
    live_members: usize,
    partitions: &'a [PlannedReset],
}

/// The partitions of `topic` asked for, with the group's positions; every requested partition
/// must exist.
fn select_partitions(
    topic: &TopicMetadata,
    describe: Option<&DescribeGroupResponse>,
    requested: &[u32],
) -> anyhow::Result<Vec<PartitionState>> {
    let count = topic.partitions.len();
    for p in requested {
        if usize::try_from(*p).map_or(true, |p| p >= count) {
            bail!(
                "topic {:?} has no partition {p} (it has {count}: 0 to {})",
                topic.name,
                count.saturating_sub(1)
            );
        }
    }
    Ok(topic
        .partitions
        .iter()
        .filter(|p| requested.is_empty() || requested.contains(&p.index.0))
        .map(|p| PartitionState {
            partition: p.index,
            committed: describe.and_then(|d| {
                d.offsets
                    .iter()
                    .find(|o| o.topic == topic.name && o.partition == p.index)
                    .and_then(|o| o.committed)
            }),
            log_start: p.log_start,
            high_watermark: p.high_watermark,
        })
        .collect())
}

/// `1 live member`, `3 live members`; `live members` for 0 (the leader saw some this command
/// did not).
fn live_members(n: usize) -> String {
    match n {
        0 => "live members".to_string(),
        1 => "1 live member".to_string(),
        n => format!("{n} live members"),
    }
}

/// The error for a reset the leader refused because consumers are connected.
fn has_members_error(group: &str, live: usize) -> anyhow::Error {
    let who = live_members(live);
    anyhow!(
        "group {group:?} has {who}, so nothing was changed: stop its consumers first, or pass \
         --force to reset anyway (running members may then commit over the new positions)"
    )
}

/// `group reset-offsets GROUP --topic T MODE [--partition P]... [--execute [--force]]`.
///
/// # Errors
/// When the topic or a partition does not exist, the group has live members (without
/// `--force`), or the cluster is unreachable.
pub async fn reset_offsets(ctx: &Context, args: &ResetOffsetsArgs) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let group = args.group.as_str();
    let mode = args.to.mode();
    let topic = topic_metadata(&client, &args.topic)
        .await?
        .ok_or_else(|| anyhow!("topic {:?} does not exist", args.topic))?;
    let describe = describe_group(&client, group).await?;
    let live = describe.as_ref().map_or(0, |d| d.members.len());
    let partitions = select_partitions(&topic, describe.as_ref(), &args.partitions)?;
    let time_offsets = match mode {
        ResetMode::ToTime(time_ms) => {
            let request = OffsetsForTimeRequest { topic: args.topic.clone(), time_ms };
            client
                .call(&request)
                .await
                .with_context(|| format!("cannot look up offsets by time in {:?}", args.topic))?
                .offsets
        }
        _ => Vec::new(),
    };
    let rows = plan(&partitions, mode, &time_offsets).map_err(|e| anyhow!(e))?;

    if args.execute {
        let request = ResetOffsetsRequest {
            group: group.to_string(),
            force: args.force,
            offsets: rows
                .iter()
                .map(|r| OffsetCommit {
                    topic: args.topic.clone(),
                    partition: r.partition,
                    offset: r.new,
                })
                .collect(),
        };
        client.call(&request).await.map_err(|e| match e.code() {
            Some(ErrorCode::GroupHasMembers) => has_members_error(group, live),
            _ => anyhow::Error::new(e).context(format!("cannot reset group {group:?}")),
        })?;
    }

    let format = args.json.format(ctx);
    if format == Format::Json {
        return print_json(&ResetJson {
            group,
            topic: &args.topic,
            mode: mode.describe(),
            executed: args.execute,
            forced: args.force,
            live_members: live,
            partitions: &rows,
        });
    }
    let retry_lag = describe.as_ref().map_or(0, |d| {
        let retry = retry_topic(group, &args.topic);
        d.offsets.iter().filter(|o| o.topic == retry).map(|o| o.lag()).sum()
    });
    print_text(&render_reset(
        group,
        &args.topic,
        mode,
        &rows,
        ResetOutcome { executed: args.execute, new_group: describe.is_none(), live, retry_lag },
    ))
}

/// What the text output of a reset needs besides the rows.
#[derive(Debug, Clone, Copy)]
struct ResetOutcome {
    executed: bool,
    /// The leader knew no such group: the reset creates its positions.
    new_group: bool,
    live: usize,
    /// Unprocessed redeliveries in the topic's retry topic (left alone).
    retry_lag: u64,
}

fn render_reset(
    group: &str,
    topic: &str,
    mode: ResetMode,
    rows: &[PlannedReset],
    outcome: ResetOutcome,
) -> String {
    let mut text = if outcome.executed {
        format!("reset group {group} in topic {topic} ({}):\n", mode.describe())
    } else {
        format!("preview: group {group} in topic {topic} ({}):\n", mode.describe())
    };
    text.push_str(&render_plan(rows));
    text.push('\n');
    if outcome.new_group {
        text.push_str(&format!(
            "note: group {group} has no committed position yet; this sets its first ones\n"
        ));
    }
    if outcome.retry_lag > 0 {
        text.push_str(&format!(
            "note: {} still holds {} redeliveries for this group; they are not affected\n",
            retry_topic(group, topic),
            outcome.retry_lag
        ));
    }
    if outcome.executed {
        let n = rows.len();
        let s = if n == 1 { "" } else { "s" };
        text.push_str(&format!("{n} partition{s} of {topic} reset for group {group}\n"));
    } else {
        text.push_str(
            "dry run: nothing was changed; run the same command with --execute to apply\n",
        );
        if outcome.live > 0 {
            text.push_str(&format!(
                "note: group {group} has {}; --execute is refused while they run (stop the \
                 consumers, or add --force)\n",
                live_members(outcome.live)
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::error::ErrorKind;
    use clap::Parser;
    use ferry_protocol::group::PartitionOffset;
    use ferry_protocol::messages::PartitionMetadata;
    use ferry_protocol::{Offset, PartitionIndex};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ferryctl").chain(args.iter().copied()))
    }

    fn kind(args: &[&str]) -> ErrorKind {
        parse(args).expect_err("should be refused").kind()
    }

    fn reset_args(args: &[&str]) -> ResetOffsetsArgs {
        let mut all = vec!["group", "reset-offsets"];
        all.extend_from_slice(args);
        match parse(&all).unwrap().command {
            Command::Group(GroupCommand::ResetOffsets(a)) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn list_and_describe_parse() {
        assert!(matches!(
            parse(&["group", "list"]).unwrap().command,
            Command::Group(GroupCommand::List(JsonFlag { json: false }))
        ));
        assert!(matches!(
            parse(&["group", "list", "--json"]).unwrap().command,
            Command::Group(GroupCommand::List(JsonFlag { json: true }))
        ));
        match parse(&["group", "describe", "billing", "--json"]).unwrap().command {
            Command::Group(GroupCommand::Describe { group, json }) => {
                assert_eq!(group, "billing");
                assert!(json.json);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(kind(&["group", "describe"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["group", "describe", "a.b"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["group", "describe", ""]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["group", "frobnicate"]), ErrorKind::InvalidSubcommand);
    }

    #[test]
    fn reset_modes_parse() {
        let a = reset_args(&["billing", "--topic", "orders", "--to-earliest"]);
        assert_eq!((a.group.as_str(), a.topic.as_str()), ("billing", "orders"));
        assert_eq!(a.to.mode(), ResetMode::Earliest);
        assert!(!a.execute && !a.force && a.partitions.is_empty());
        assert_eq!(reset_args(&["g", "--topic", "t", "--to-latest"]).to.mode(), ResetMode::Latest);
        assert_eq!(
            reset_args(&["g", "--topic", "t", "--to-time", "2023-11-14T22:13:20.123Z"]).to.mode(),
            ResetMode::ToTime(1_700_000_000_123)
        );
        assert_eq!(
            reset_args(&["g", "--topic", "t", "--to-time", "1700000000123"]).to.mode(),
            ResetMode::ToTime(1_700_000_000_123)
        );
        assert_eq!(
            reset_args(&["g", "--topic", "t", "--shift-by", "-100"]).to.mode(),
            ResetMode::ShiftBy(-100)
        );
        assert_eq!(
            reset_args(&["g", "--topic", "t", "--shift-by", "7"]).to.mode(),
            ResetMode::ShiftBy(7)
        );
        let a = reset_args(&[
            "g",
            "--topic",
            "t",
            "--to-latest",
            "--partition",
            "0",
            "--partition",
            "3",
            "--execute",
            "--force",
            "--json",
        ]);
        assert_eq!(a.partitions, vec![0, 3]);
        assert!(a.execute && a.force && a.json.json);
    }

    #[test]
    fn reset_usage_errors() {
        let base = ["group", "reset-offsets", "g", "--topic", "t"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            kind(&v)
        };
        assert_eq!(with(&[]), ErrorKind::MissingRequiredArgument, "a mode is required");
        assert_eq!(with(&["--to-earliest", "--to-latest"]), ErrorKind::ArgumentConflict);
        assert_eq!(with(&["--to-latest", "--shift-by", "3"]), ErrorKind::ArgumentConflict);
        assert_eq!(with(&["--to-time", "yesterday"]), ErrorKind::ValueValidation);
        assert_eq!(with(&["--shift-by", "x"]), ErrorKind::ValueValidation);
        assert_eq!(with(&["--to-latest", "--partition", "x"]), ErrorKind::ValueValidation);
        assert_eq!(with(&["--to-latest", "--partition", "-1"]), ErrorKind::UnknownArgument);
        assert_eq!(
            with(&["--to-latest", "--force"]),
            ErrorKind::MissingRequiredArgument,
            "--force only with --execute"
        );
        assert_eq!(
            kind(&["group", "reset-offsets", "g", "--to-latest"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            kind(&["group", "reset-offsets", "g", "--topic", "bad/t", "--to-latest"]),
            ErrorKind::ValueValidation
        );
    }

    #[test]
    fn reset_help_says_what_is_not_reset() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        let help = cli
            .find_subcommand_mut("group")
            .and_then(|g| g.find_subcommand_mut("reset-offsets"))
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("Only TOPIC itself is reset, not the group's retry topic"), "{help}");
        assert!(help.contains("--force"), "{help}");
    }

    fn topic(partitions: &[(u64, u64)]) -> TopicMetadata {
        TopicMetadata {
            name: "orders".into(),
            created_ms: 0,
            partitions: partitions
                .iter()
                .enumerate()
                .map(|(i, (ls, hw))| PartitionMetadata {
                    index: PartitionIndex(u32::try_from(i).unwrap()),
                    log_start: Offset(*ls),
                    high_watermark: Offset(*hw),
                })
                .collect(),
        }
    }

    #[test]
    fn partitions_take_the_group_positions() {
        let t = topic(&[(0, 10), (2, 9), (0, 0)]);
        let d = DescribeGroupResponse {
            group: "g".into(),
            generation: 1,
            members: vec![],
            offsets: vec![
                PartitionOffset {
                    topic: "orders".into(),
                    partition: PartitionIndex(0),
                    committed: Some(Offset(4)),
                    committed_ms: 1,
                    log_start: Offset(0),
                    high_watermark: Offset(10),
                },
                // The retry topic's position must not be taken for the topic's.
                PartitionOffset {
                    topic: retry_topic("g", "orders"),
                    partition: PartitionIndex(1),
                    committed: Some(Offset(1)),
                    committed_ms: 1,
                    log_start: Offset(0),
                    high_watermark: Offset(3),
                },
            ],
        };
        let all = select_partitions(&t, Some(&d), &[]).unwrap();
        let committed: Vec<Option<u64>> = all.iter().map(|p| p.committed.map(|o| o.0)).collect();
        assert_eq!(committed, vec![Some(4), None, None]);
        let some = select_partitions(&t, None, &[2, 0]).unwrap();
        let indexes: Vec<u32> = some.iter().map(|p| p.partition.0).collect();
        assert_eq!(indexes, vec![0, 2]);
        let err = select_partitions(&t, None, &[3]).unwrap_err().to_string();
        assert_eq!(err, "topic \"orders\" has no partition 3 (it has 3: 0 to 2)");
    }

    #[test]
    fn reset_text_says_what_happened() {
        let parts = [PartitionState {
            partition: PartitionIndex(0),
            committed: Some(Offset(10)),
            log_start: Offset(5),
            high_watermark: Offset(20),
        }];
        let rows = plan(&parts, ResetMode::Earliest, &[]).unwrap();
        let outcome = ResetOutcome { executed: false, new_group: false, live: 2, retry_lag: 3 };
        let text = render_reset("billing", "orders", ResetMode::Earliest, &rows, outcome);
        assert!(text.starts_with("preview: group billing in topic orders (--to-earliest):\n"));
        assert!(text.contains("dry run: nothing was changed"), "{text}");
        assert!(text.contains("--execute to apply"), "{text}");
        assert!(text.contains("has 2 live members"), "{text}");
        assert!(text.contains("__retry.billing.orders still holds 3 redeliveries"), "{text}");
        let done = ResetOutcome { executed: true, new_group: true, live: 0, retry_lag: 0 };
        let text = render_reset("billing", "orders", ResetMode::Earliest, &rows, done);
        assert!(text.starts_with("reset group billing in topic orders"), "{text}");
        assert!(!text.contains("nothing was changed"), "{text}");
        assert!(text.contains("no committed position yet"), "{text}");
        assert!(text.ends_with("1 partition of orders reset for group billing\n"), "{text}");
    }

    #[test]
    fn refusals_read_as_sentences() {
        let e = has_members_error("billing", 2);
        let line = crate::error_line(&e);
        assert!(line.starts_with("group \"billing\" has 2 live members"), "{line}");
        assert!(line.contains("stop its consumers first, or pass --force"), "{line}");
        assert!(crate::error_line(&unknown_group("x")).contains("does not exist"));
    }
}
