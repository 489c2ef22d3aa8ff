//! How consumer groups look: the `list` table, `describe`'s summary, member and partition
//! tables (retry-topic rows in their own, labelled table), and the JSON objects.
//!
//! Pure functions of the leader's answers and "now", so they are tested without a broker.

use std::time::Duration;

use ferry_protocol::group::{
    parse_retry_topic, DescribeGroupResponse, GroupSummary, MemberInfo, PartitionOffset,
};
use ferry_protocol::PartitionIndex;
use serde::Serialize;

use crate::duration::format_span;
use crate::output::Table;

/// `group list` in JSON output.
#[derive(Debug, Serialize)]
pub(super) struct ListJson<'a> {
    groups: Vec<GroupJson<'a>>,
}

#[derive(Debug, Serialize)]
struct GroupJson<'a> {
    group: &'a str,
    /// Topics the group reads or committed in (retry topics not listed).
    topics: &'a [String],
    /// Live members.
    members: u32,
    /// Messages not yet processed, retry topics included.
    lag: u64,
}

impl<'a> ListJson<'a> {
    pub(super) fn new(groups: &'a [GroupSummary]) -> Self {
        ListJson {
            groups: groups
                .iter()
                .map(|g| GroupJson {
                    group: &g.group,
                    topics: &g.topics,
                    members: g.members,
                    lag: g.lag,
                })
                .collect(),
        }
    }
}

/// The `list` table.
pub(super) fn render_list(groups: &[GroupSummary]) -> String {
    if groups.is_empty() {
        return "no consumer groups\n".into();
    }
    let mut table = Table::new(vec!["GROUP", "TOPICS", "MEMBERS", "LAG"]);
    for g in groups {
        let topics = if g.topics.is_empty() { "-".into() } else { g.topics.join(",") };
        table.row(vec![g.group.clone(), topics, g.members.to_string(), g.lag.to_string()]);
    }
    table.render()
}

/// Partition indexes as runs: `0-3,7` (`-` when none).
pub(super) fn format_partitions(partitions: &[PartitionIndex]) -> String {
    let mut sorted: Vec<u32> = partitions.iter().map(|p| p.0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        runs.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
        i += 1;
    }
    if runs.is_empty() {
        "-".into()
    } else {
        runs.join(",")
    }
}

/// The origin topic when `topic` is `group`'s retry topic.
fn retry_origin<'a>(group: &str, topic: &'a str) -> Option<&'a str> {
    parse_retry_topic(topic).and_then(|(g, origin)| (g == group).then_some(origin))
}

/// How long ago `then_ms` was (0 when in the future: clock skew).
fn ago(then_ms: u64, now_ms: u64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(then_ms))
}

/// `describe` in JSON output.
#[derive(Debug, Serialize)]
pub(super) struct DescribeJson<'a> {
    group: &'a str,
    generation: u64,
    /// Unprocessed messages in the group's topics (retry topics excluded).
    lag: u64,
    /// Unprocessed redeliveries in the group's retry topics.
    retry_lag: u64,
    /// Messages in the group's dead-letter topic (`null` when it could not be read).
    dead_letters: Option<u64>,
    members: Vec<MemberJson<'a>>,
    partitions: Vec<PartitionJson<'a>>,
}

#[derive(Debug, Serialize)]
struct MemberJson<'a> {
    member_id: &'a str,
    client_id: &'a str,
    topic: &'a str,
    assigned: Vec<u32>,
    owned: Vec<u32>,
    in_flight: u32,
    last_seen_ms_ago: u32,
}

#[derive(Debug, Serialize)]
struct PartitionJson<'a> {
    topic: &'a str,
    /// For a row of the group's retry topic: the topic whose redeliveries it holds.
    retry_of: Option<&'a str>,
    partition: u32,
    committed: Option<u64>,
    committed_ms: Option<u64>,
    committed_age_ms: Option<u64>,
    log_start: u64,
    high_watermark: u64,
    lag: u64,
}

impl<'a> DescribeJson<'a> {
    pub(super) fn new(
        d: &'a DescribeGroupResponse,
        dead_letters: Option<u64>,
        now_ms: u64,
    ) -> Self {
        let (lag, retry_lag) = lags(d);
        DescribeJson {
            group: &d.group,
            generation: d.generation,
            lag,
            retry_lag,
            dead_letters,
            members: d
                .members
                .iter()
                .map(|m| MemberJson {
                    member_id: &m.member_id,
                    client_id: &m.client_id,
                    topic: &m.topic,
                    assigned: m.assigned.iter().map(|p| p.0).collect(),
                    owned: m.owned.iter().map(|p| p.0).collect(),
                    in_flight: m.in_flight,
                    last_seen_ms_ago: m.last_seen_ms_ago,
                })
                .collect(),
            partitions: d
                .offsets
                .iter()
                .map(|o| {
                    let committed_ms = o.committed.and(Some(o.committed_ms)).filter(|ms| *ms != 0);
                    PartitionJson {
                        topic: &o.topic,
                        retry_of: retry_origin(&d.group, &o.topic),
                        partition: o.partition.0,
                        committed: o.committed.map(|c| c.0),
                        committed_ms,
                        committed_age_ms: committed_ms.map(|ms| now_ms.saturating_sub(ms)),
                        log_start: o.log_start.0,
                        high_watermark: o.high_watermark.0,
                        lag: o.lag(),
                    }
                })
                .collect(),
        }
    }
}

/// (lag in the group's own topics, lag in its retry topics).
fn lags(d: &DescribeGroupResponse) -> (u64, u64) {
    d.offsets.iter().fold((0, 0), |(own, retry), o| {
        if retry_origin(&d.group, &o.topic).is_some() {
            (own, retry + o.lag())
        } else {
            (own + o.lag(), retry)
        }
    })
}

fn members_table(members: &[MemberInfo]) -> String {
    let mut table = Table::new(vec![
        "MEMBER",
        "CLIENT",
        "TOPIC",
        "ASSIGNED",
        "OWNED",
        "IN_FLIGHT",
        "LAST_SEEN",
    ]);
    for m in members {
        table.row(vec![
            m.member_id.clone(),
            m.client_id.clone(),
            m.topic.clone(),
            format_partitions(&m.assigned),
            format_partitions(&m.owned),
            m.in_flight.to_string(),
            format!("{} ago", format_span(Duration::from_millis(u64::from(m.last_seen_ms_ago)))),
        ]);
    }
    table.render()
}

fn offsets_table(rows: &[&PartitionOffset], now_ms: u64) -> String {
    let mut table = Table::new(vec![
        "TOPIC",
        "PARTITION",
        "COMMITTED",
        "LOG_START",
        "HIGH_WATERMARK",
        "LAG",
        "COMMITTED_AGO",
    ]);
    for o in rows {
        let committed_ago = match o.committed {
            Some(_) if o.committed_ms != 0 => format_span(ago(o.committed_ms, now_ms)),
            _ => "-".into(),
        };
        table.row(vec![
            o.topic.clone(),
            o.partition.to_string(),
            o.committed.map_or_else(|| "-".into(), |c| c.to_string()),
            o.log_start.to_string(),
            o.high_watermark.to_string(),
            o.lag().to_string(),
            committed_ago,
        ]);
    }
    table.render()
}

/// `describe` as text: a summary, the members, the positions in the group's topics, then the
/// positions in its retry topics, labelled as such.
pub(super) fn render_describe(
    d: &DescribeGroupResponse,
    dead_letters: Option<u64>,
    now_ms: u64,
) -> String {
    let (lag, retry_lag) = lags(d);
    let (retry, own): (Vec<&PartitionOffset>, Vec<&PartitionOffset>) =
        d.offsets.iter().partition(|o| retry_origin(&d.group, &o.topic).is_some());
    let dead = match dead_letters {
        Some(0) => "0".to_string(),
        Some(n) => format!("{n} (ferryctl dlq list --group {})", d.group),
        None => "unknown (the dead-letter topic could not be read)".to_string(),
    };
    let mut text = format!(
        "group:         {}\ngeneration:    {}\nmembers:       {}\nlag:           {lag}\n\
         retry lag:     {retry_lag}\ndead letters:  {dead}\n",
        d.group,
        d.generation,
        d.members.len(),
    );
    text.push('\n');
    if d.members.is_empty() {
        text.push_str("no live members\n");
    } else {
        text.push_str(&members_table(&d.members));
    }
    text.push('\n');
    if own.is_empty() {
        text.push_str("no positions in any topic\n");
    } else {
        text.push_str(&offsets_table(&own, now_ms));
    }
    if !retry.is_empty() {
        text.push_str(
            "\nretry topics (this group's redeliveries, read alongside their topic; \
             not changed by reset-offsets):\n",
        );
        text.push_str(&offsets_table(&retry, now_ms));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::Offset;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn describe_response() -> DescribeGroupResponse {
        DescribeGroupResponse {
            group: "billing".into(),
            generation: 4,
            members: vec![MemberInfo {
                member_id: "m-1".into(),
                client_id: "app-1".into(),
                topic: "orders".into(),
                assigned: vec![PartitionIndex(0), PartitionIndex(1)],
                owned: vec![PartitionIndex(0)],
                in_flight: 3,
                last_seen_ms_ago: 1200,
            }],
            offsets: vec![
                PartitionOffset {
                    topic: "orders".into(),
                    partition: PartitionIndex(0),
                    committed: Some(Offset(10)),
                    committed_ms: NOW_MS - 5_000,
                    log_start: Offset(0),
                    high_watermark: Offset(12),
                },
                PartitionOffset {
                    topic: "orders".into(),
                    partition: PartitionIndex(1),
                    committed: None,
                    committed_ms: 0,
                    log_start: Offset(2),
                    high_watermark: Offset(9),
                },
                PartitionOffset {
                    topic: "__retry.billing.orders".into(),
                    partition: PartitionIndex(0),
                    committed: Some(Offset(1)),
                    committed_ms: NOW_MS - 303_000,
                    log_start: Offset(0),
                    high_watermark: Offset(4),
                },
            ],
        }
    }

    #[test]
    fn partitions_render_as_runs() {
        let ps = |v: &[u32]| v.iter().map(|p| PartitionIndex(*p)).collect::<Vec<_>>();
        assert_eq!(format_partitions(&ps(&[])), "-");
        assert_eq!(format_partitions(&ps(&[3])), "3");
        assert_eq!(format_partitions(&ps(&[3, 0, 1, 2, 7, 9, 10])), "0-3,7,9-10");
        assert_eq!(format_partitions(&ps(&[1, 1])), "1");
    }

    #[test]
    fn list_renders() {
        let groups = vec![GroupSummary {
            group: "billing".into(),
            topics: vec!["orders".into(), "refunds".into()],
            members: 2,
            lag: 40,
        }];
        assert_eq!(
            render_list(&groups),
            "GROUP    TOPICS          MEMBERS  LAG\nbilling  orders,refunds  2        40\n"
        );
        assert_eq!(render_list(&[]), "no consumer groups\n");
        let v = serde_json::to_value(ListJson::new(&groups)).unwrap();
        assert_eq!(v["groups"][0]["group"], "billing");
        assert_eq!(v["groups"][0]["topics"][1], "refunds");
        assert_eq!(
            (v["groups"][0]["members"].as_u64(), v["groups"][0]["lag"].as_u64()),
            (Some(2), Some(40))
        );
    }

    #[test]
    fn describe_labels_retry_rows() {
        let text = render_describe(&describe_response(), Some(5), NOW_MS);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                "group:         billing",
                "generation:    4",
                "members:       1",
                "lag:           9",
                "retry lag:     3",
                "dead letters:  5 (ferryctl dlq list --group billing)",
                "",
                "MEMBER  CLIENT  TOPIC   ASSIGNED  OWNED  IN_FLIGHT  LAST_SEEN",
                "m-1     app-1   orders  0-1       0      3          1s ago",
                "",
                "TOPIC   PARTITION  COMMITTED  LOG_START  HIGH_WATERMARK  LAG  COMMITTED_AGO",
                "orders  0          10         0          12              2    5s",
                "orders  1          -          2          9               7    -",
                "",
                "retry topics (this group's redeliveries, read alongside their topic; not \
                 changed by reset-offsets):",
                "TOPIC                   PARTITION  COMMITTED  LOG_START  HIGH_WATERMARK  LAG  \
                 COMMITTED_AGO",
                "__retry.billing.orders  0          1          0          4               3    \
                 5m03s",
            ]
        );
        let mut empty = describe_response();
        empty.members.clear();
        empty.offsets.truncate(1);
        let text = render_describe(&empty, None, NOW_MS);
        assert!(text.contains("no live members"), "{text}");
        assert!(text.contains("dead letters:  unknown"), "{text}");
        assert!(!text.contains("retry topics"), "{text}");
    }

    #[test]
    fn describe_json_marks_retry_rows() {
        let d = describe_response();
        let v = serde_json::to_value(DescribeJson::new(&d, Some(0), NOW_MS)).unwrap();
        assert_eq!((v["lag"].as_u64(), v["retry_lag"].as_u64()), (Some(9), Some(3)));
        assert_eq!(v["dead_letters"], 0);
        assert_eq!(v["members"][0]["assigned"], serde_json::json!([0, 1]));
        assert_eq!(v["members"][0]["last_seen_ms_ago"], 1200);
        assert!(v["partitions"][0]["retry_of"].is_null());
        assert_eq!(v["partitions"][0]["committed_age_ms"], 5000);
        assert!(v["partitions"][1]["committed"].is_null());
        assert!(v["partitions"][1]["committed_ms"].is_null());
        assert_eq!(v["partitions"][1]["lag"], 7);
        assert_eq!(v["partitions"][2]["retry_of"], "orders");
    }
}
