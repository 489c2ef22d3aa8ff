//! How push subscriptions look: the `list` table, one subscription in full (`describe`, and
//! the answers to `create` and the alter commands), the failed-messages table, and their JSON
//! objects.
//!
//! Pure functions of the broker's answers and "now", so they are tested without a broker.

use std::time::Duration;

use ferry_protocol::push::{
    message_id, PartitionProgress, PushAction, PushDelivery, PushSubscription,
};
use serde::Serialize;

use crate::duration::{format_duration_exact, format_span};
use crate::output::{format_timestamp_ms, printable, shorten, Table};

/// Characters of the last error shown in the `failed` table (JSON has it whole).
const LAST_ERROR_CHARS_MAX: usize = 80;

/// Width of the label column of a subscription shown in full.
const LABEL_CHARS: usize = 17;

/// Printed under a secret: nothing shows it again.
pub(super) const STORE_SECRET_NOTE: &str = "store this secret now: only `push create` and \
`push rotate-secret` show it; receivers verify webhook-signature with it";

// ---------------------------------------------------------------------------------------------
// JSON

/// A subscription in JSON output. `secret` appears only when the broker sent it (create,
/// rotate); `lag` and `partitions` only with a describe answer.
#[derive(Debug, Serialize)]
pub(super) struct SubscriptionJson<'a> {
    name: &'a str,
    topic: &'a str,
    url: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    secret: &'a str,
    /// Until when the previous secret signs too (`null`: no previous secret).
    previous_secret_until_ms: Option<u64>,
    /// The delays as `--schedule` takes them (`5s`, `30m`).
    schedule: Vec<String>,
    schedule_ms: &'a [u64],
    max_attempts: u32,
    timeout_ms: u32,
    concurrency: u32,
    status: &'static str,
    status_reason: &'a str,
    status_ms: u64,
    created_ms: u64,
    created_at: String,
    retrying: u64,
    failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lag: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    partitions: Vec<PartitionJson>,
}

#[derive(Debug, Serialize)]
struct PartitionJson {
    partition: u32,
    cursor: u64,
    high_watermark: u64,
    lag: u64,
    settled_above: u32,
}

/// Messages of a partition whose first attempt is not settled yet (an upper bound: those
/// settled out of order above the cursor still count).
fn lag(p: &PartitionProgress) -> u64 {
    p.high_watermark.saturating_sub(p.cursor)
}

fn schedule_text(schedule_ms: &[u64]) -> Vec<String> {
    schedule_ms.iter().map(|ms| format_duration_exact(Duration::from_millis(*ms))).collect()
}

impl<'a> SubscriptionJson<'a> {
    pub(super) fn new(s: &'a PushSubscription) -> Self {
        SubscriptionJson {
            name: &s.name,
            topic: &s.topic,
            url: &s.url,
            secret: &s.secret,
            previous_secret_until_ms: Some(s.previous_secret_until_ms).filter(|ms| *ms != 0),
            schedule: schedule_text(&s.schedule_ms),
            schedule_ms: &s.schedule_ms,
            max_attempts: s.max_attempts,
            timeout_ms: s.timeout_ms,
            concurrency: s.concurrency,
            status: s.status.name(),
            status_reason: &s.status_reason,
            status_ms: s.status_ms,
            created_ms: s.created_ms,
            created_at: format_timestamp_ms(s.created_ms),
            retrying: s.retrying,
            failed: s.failed,
            lag: (!s.partitions.is_empty()).then(|| s.partitions.iter().map(lag).sum()),
            partitions: s
                .partitions
                .iter()
                .map(|p| PartitionJson {
                    partition: p.partition,
                    cursor: p.cursor,
                    high_watermark: p.high_watermark,
                    lag: lag(p),
                    settled_above: p.settled_above,
                })
                .collect(),
        }
    }
}

/// `push list` in JSON output.
#[derive(Debug, Serialize)]
pub(super) struct ListJson<'a> {
    subscriptions: Vec<SubscriptionJson<'a>>,
}

impl<'a> ListJson<'a> {
    pub(super) fn new(subscriptions: &'a [PushSubscription]) -> Self {
        ListJson { subscriptions: subscriptions.iter().map(SubscriptionJson::new).collect() }
    }
}

/// The past participle of an alter action, for output.
pub(super) fn action_done(action: PushAction) -> &'static str {
    match action {
        PushAction::Pause => "paused",
        PushAction::Resume => "resumed",
        PushAction::Delete => "deleted",
        PushAction::RotateSecret => "rotated",
    }
}

/// `push pause|resume|delete|rotate-secret` in JSON output.
#[derive(Debug, Serialize)]
pub(super) struct AlterJson<'a> {
    action: &'static str,
    subscription: SubscriptionJson<'a>,
}

impl<'a> AlterJson<'a> {
    pub(super) fn new(action: PushAction, s: &'a PushSubscription) -> Self {
        AlterJson { action: action_done(action), subscription: SubscriptionJson::new(s) }
    }
}

/// One failed message in JSON output.
#[derive(Debug, Serialize)]
struct FailedMessageJson<'a> {
    /// The webhook id (`webhook-id` header), as `push replay --id` takes it.
    id: String,
    partition: u32,
    offset: u64,
    attempts: u32,
    /// HTTP status of the last answer (`null`: none, a timeout or connection error).
    last_status: Option<u16>,
    failed_ms: u64,
    failed_at: String,
    last_error: &'a str,
}

/// `push failed` in JSON output.
#[derive(Debug, Serialize)]
pub(super) struct FailedJson<'a> {
    subscription: &'a str,
    since_ms: u64,
    /// More failed messages follow the ones listed (raise --limit).
    more: bool,
    failed: Vec<FailedMessageJson<'a>>,
}

impl<'a> FailedJson<'a> {
    pub(super) fn new(
        name: &'a str,
        since_ms: u64,
        failed: &'a [PushDelivery],
        more: bool,
    ) -> Self {
        FailedJson {
            subscription: name,
            since_ms,
            more,
            failed: failed
                .iter()
                .map(|d| FailedMessageJson {
                    id: message_id(name, d.partition, d.offset),
                    partition: d.partition,
                    offset: d.offset,
                    attempts: d.attempts,
                    last_status: Some(d.last_status).filter(|s| *s != 0),
                    failed_ms: d.last_attempt_ms,
                    failed_at: format_timestamp_ms(d.last_attempt_ms),
                    last_error: &d.last_error,
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Text

/// How long ago `then_ms` was (0 when in the future: clock skew).
fn ago(then_ms: u64, now_ms: u64) -> Duration {
    Duration::from_millis(now_ms.saturating_sub(then_ms))
}

/// `2023-11-14T22:13:20.123Z (5m03s ago)`, or `-` for 0.
fn when(ms: u64, now_ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    format!("{} ({} ago)", format_timestamp_ms(ms), format_span(ago(ms, now_ms)))
}

/// When the previous secret stops signing, as a sentence fragment.
fn previous_secret(until_ms: u64, now_ms: u64) -> String {
    if until_ms > now_ms {
        let left = format_span(Duration::from_millis(until_ms - now_ms));
        format!("also signs until {} (for {left} more)", format_timestamp_ms(until_ms))
    } else {
        format!("stopped signing at {}", format_timestamp_ms(until_ms))
    }
}

/// The `list` table.
pub(super) fn render_list(subscriptions: &[PushSubscription]) -> String {
    if subscriptions.is_empty() {
        return "no push subscriptions\n".into();
    }
    let mut table =
        Table::new(vec!["NAME", "TOPIC", "STATUS", "URL", "RETRYING", "FAILED", "CREATED"]);
    for s in subscriptions {
        table.row(vec![
            s.name.clone(),
            s.topic.clone(),
            s.status.name().into(),
            s.url.clone(),
            s.retrying.to_string(),
            s.failed.to_string(),
            format_timestamp_ms(s.created_ms),
        ]);
    }
    table.render()
}

/// One subscription in full: a `label: value` line per field (the secret when the broker sent
/// it), then the per-partition positions when it sent them.
pub(super) fn render_subscription(s: &PushSubscription, now_ms: u64) -> String {
    let mut fields: Vec<(&str, String)> =
        vec![("subscription", s.name.clone()), ("topic", s.topic.clone()), ("url", s.url.clone())];
    if !s.secret.is_empty() {
        fields.push(("secret", s.secret.clone()));
    }
    if s.previous_secret_until_ms != 0 {
        fields.push(("previous secret", previous_secret(s.previous_secret_until_ms, now_ms)));
    }
    let status = if s.status_reason.is_empty() {
        s.status.name().to_string()
    } else {
        format!("{} ({})", s.status.name(), printable(s.status_reason.as_bytes()))
    };
    fields.push(("status", status));
    fields.push(("status since", when(s.status_ms, now_ms)));
    fields.push(("created", when(s.created_ms, now_ms)));
    let schedule = if s.schedule_ms.is_empty() {
        "-".to_string()
    } else {
        format!("{} (the last delay repeats)", schedule_text(&s.schedule_ms).join(","))
    };
    fields.push(("schedule", schedule));
    fields.push(("max attempts", s.max_attempts.to_string()));
    fields.push((
        "http timeout",
        format_duration_exact(Duration::from_millis(u64::from(s.timeout_ms))),
    ));
    fields.push(("concurrency", s.concurrency.to_string()));
    fields.push(("retrying", s.retrying.to_string()));
    let failed = match s.failed {
        0 => "0".to_string(),
        n => format!("{n} (ferryctl push failed {})", s.name),
    };
    fields.push(("failed", failed));
    if !s.partitions.is_empty() {
        fields.push(("lag", s.partitions.iter().map(lag).sum::<u64>().to_string()));
    }
    let mut text = String::new();
    for (name, value) in &fields {
        let label = format!("{name}:");
        text.push_str(&format!("{label:<LABEL_CHARS$} {value}\n"));
    }
    if !s.partitions.is_empty() {
        text.push('\n');
        let mut table =
            Table::new(vec!["PARTITION", "CURSOR", "HIGH_WATERMARK", "LAG", "SETTLED_ABOVE"]);
        for p in &s.partitions {
            table.row(vec![
                p.partition.to_string(),
                p.cursor.to_string(),
                p.high_watermark.to_string(),
                lag(p).to_string(),
                p.settled_above.to_string(),
            ]);
        }
        text.push_str(&table.render());
    }
    text
}

/// What `push create` made: the subscription in full, secret included, and the reminder to
/// store the secret.
pub(super) fn render_created(s: &PushSubscription, now_ms: u64) -> String {
    let mut text = format!("created push subscription {}\n", s.name);
    text.push_str(&render_subscription(s, now_ms));
    text.push_str(STORE_SECRET_NOTE);
    text.push('\n');
    text
}

/// What `push pause|resume|delete` did, as a sentence.
pub(super) fn render_alter(action: PushAction, s: &PushSubscription) -> String {
    let name = &s.name;
    match action {
        PushAction::Pause => format!(
            "paused push subscription {name}: no new deliveries start (requests in flight \
             finish); `ferryctl push resume {name}` continues where it stopped\n"
        ),
        PushAction::Resume => {
            format!("resumed push subscription {name}; its status is {}\n", s.status.name())
        }
        PushAction::Delete => format!(
            "deleted push subscription {name} (topic {} to {}); its delivery state went with \
             it: {} retrying and {} failed messages\n",
            s.topic, s.url, s.retrying, s.failed
        ),
        PushAction::RotateSecret => {
            format!("rotated the signing secret of push subscription {name}\n")
        }
    }
}

/// What `push rotate-secret` did: the new secret, until when the old one signs, and the
/// reminder to store it.
pub(super) fn render_rotated(s: &PushSubscription, now_ms: u64) -> String {
    let mut text = render_alter(PushAction::RotateSecret, s);
    text.push_str(&format!("secret: {}\n", s.secret));
    if s.previous_secret_until_ms == 0 {
        text.push_str("the previous secret no longer signs\n");
    } else {
        text.push_str(&format!(
            "the previous secret {}, so receivers can switch over\n",
            previous_secret(s.previous_secret_until_ms, now_ms)
        ));
    }
    text.push_str(STORE_SECRET_NOTE);
    text.push('\n');
    text
}

/// The `failed` table.
pub(super) fn render_failed(name: &str, failed: &[PushDelivery]) -> String {
    let mut table = Table::new(vec![
        "ID",
        "PARTITION",
        "OFFSET",
        "ATTEMPTS",
        "LAST_STATUS",
        "FAILED_AT",
        "LAST_ERROR",
    ]);
    for d in failed {
        table.row(vec![
            message_id(name, d.partition, d.offset),
            d.partition.to_string(),
            d.offset.to_string(),
            d.attempts.to_string(),
            match d.last_status {
                0 => "-".into(),
                s => s.to_string(),
            },
            match d.last_attempt_ms {
                0 => "-".into(),
                ms => format_timestamp_ms(ms),
            },
            shorten(&printable(d.last_error.as_bytes()), LAST_ERROR_CHARS_MAX),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::push::SubscriptionStatus;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn subscription() -> PushSubscription {
        PushSubscription {
            name: "orders-hook".into(),
            topic: "orders".into(),
            url: "https://example.com/hook".into(),
            secret: String::new(),
            previous_secret_until_ms: NOW_MS + 3_600_000,
            schedule_ms: vec![5_000, 300_000, 1_800_000, 7_200_000],
            max_attempts: 5,
            timeout_ms: 15_000,
            concurrency: 16,
            status: SubscriptionStatus::Disabled,
            status_reason: "endpoint answered 410 Gone".into(),
            status_ms: NOW_MS - 303_000,
            created_ms: NOW_MS - 2 * 86_400_000,
            retrying: 3,
            failed: 2,
            partitions: vec![
                PartitionProgress {
                    partition: 0,
                    cursor: 10,
                    high_watermark: 25,
                    settled_above: 4,
                },
                PartitionProgress { partition: 1, cursor: 7, high_watermark: 7, settled_above: 0 },
            ],
        }
    }

    fn failed() -> Vec<PushDelivery> {
        vec![
            PushDelivery {
                partition: 0,
                offset: 7,
                failed: true,
                attempts: 5,
                next_attempt_ms: 0,
                last_attempt_ms: 1_700_000_000_123,
                last_status: 503,
                last_error: "HTTP 503 Service Unavailable".into(),
            },
            PushDelivery {
                partition: 2,
                offset: 1234,
                failed: true,
                attempts: 5,
                next_attempt_ms: 0,
                last_attempt_ms: 1_700_000_001_000,
                last_status: 0,
                last_error: format!("timed out\n{}", "x".repeat(100)),
            },
        ]
    }

    #[test]
    fn describe_shows_every_field_and_the_partitions() {
        let text = render_subscription(&subscription(), NOW_MS);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            vec![
                "subscription:     orders-hook",
                "topic:            orders",
                "url:              https://example.com/hook",
                "previous secret:  also signs until 2023-11-14T23:13:20.000Z (for 1h00m more)",
                "status:           disabled (endpoint answered 410 Gone)",
                "status since:     2023-11-14T22:08:17.000Z (5m03s ago)",
                "created:          2023-11-12T22:13:20.000Z (2d00h ago)",
                "schedule:         5s,5m,30m,2h (the last delay repeats)",
                "max attempts:     5",
                "http timeout:     15s",
                "concurrency:      16",
                "retrying:         3",
                "failed:           2 (ferryctl push failed orders-hook)",
                "lag:              15",
                "",
                "PARTITION  CURSOR  HIGH_WATERMARK  LAG  SETTLED_ABOVE",
                "0          10      25              15   4",
                "1          7       7               0    0",
            ]
        );
        // A listing entry: no secret, no previous secret, no partitions, nothing failed.
        let mut plain = subscription();
        plain.previous_secret_until_ms = 0;
        plain.partitions.clear();
        plain.failed = 0;
        plain.status = SubscriptionStatus::Active;
        plain.status_reason.clear();
        let text = render_subscription(&plain, NOW_MS);
        assert!(text.contains("\nstatus:           active\n"), "{text}");
        assert!(text.contains("\nfailed:           0\n"), "{text}");
        for absent in ["secret", "lag:", "PARTITION"] {
            assert!(!text.contains(absent), "{absent}: {text}");
        }
    }

    #[test]
    fn create_shows_the_secret_once_with_a_reminder() {
        let mut created = subscription();
        created.secret = "whsec_c2VjcmV0".into();
        created.previous_secret_until_ms = 0;
        created.status = SubscriptionStatus::Active;
        created.status_reason.clear();
        created.status_ms = created.created_ms;
        created.retrying = 0;
        created.failed = 0;
        created.partitions.clear();
        let text = render_created(&created, NOW_MS);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "created push subscription orders-hook");
        assert_eq!(lines[4], "secret:           whsec_c2VjcmV0");
        assert_eq!(lines[5], "status:           active");
        assert_eq!(lines.last(), Some(&STORE_SECRET_NOTE));
        assert!(STORE_SECRET_NOTE.starts_with("store this secret now"));
        assert!(!text.contains("previous secret"), "{text}");
    }

    #[test]
    fn describe_json_carries_every_field() {
        let s = subscription();
        let v = serde_json::to_value(SubscriptionJson::new(&s)).unwrap();
        assert_eq!(v["name"], "orders-hook");
        assert_eq!(v["url"], "https://example.com/hook");
        assert!(v.get("secret").is_none(), "no secret in a describe answer");
        assert_eq!(v["previous_secret_until_ms"], NOW_MS + 3_600_000);
        assert_eq!(v["schedule"], serde_json::json!(["5s", "5m", "30m", "2h"]));
        assert_eq!(v["schedule_ms"], serde_json::json!([5000, 300_000, 1_800_000, 7_200_000]));
        assert_eq!((v["max_attempts"].as_u64(), v["timeout_ms"].as_u64()), (Some(5), Some(15_000)));
        assert_eq!(v["concurrency"], 16);
        assert_eq!(
            (v["status"].as_str(), v["status_reason"].as_str()),
            (Some("disabled"), Some("endpoint answered 410 Gone"))
        );
        assert_eq!(v["status_ms"], NOW_MS - 303_000);
        assert_eq!(v["created_at"], "2023-11-12T22:13:20.000Z");
        assert_eq!(
            (v["retrying"].as_u64(), v["failed"].as_u64(), v["lag"].as_u64()),
            (Some(3), Some(2), Some(15))
        );
        assert_eq!(
            v["partitions"][0],
            serde_json::json!({
                "partition": 0,
                "cursor": 10,
                "high_watermark": 25,
                "lag": 15,
                "settled_above": 4,
            })
        );
        // A created subscription carries its secret; a listing entry has no lag or partitions.
        let mut created = subscription();
        created.secret = "whsec_abc".into();
        created.previous_secret_until_ms = 0;
        created.partitions.clear();
        let v = serde_json::to_value(SubscriptionJson::new(&created)).unwrap();
        assert_eq!(v["secret"], "whsec_abc");
        assert!(v["previous_secret_until_ms"].is_null());
        assert!(v.get("lag").is_none() && v.get("partitions").is_none());
    }

    #[test]
    fn list_renders() {
        let mut paused = subscription();
        paused.name = "audit".into();
        paused.status = SubscriptionStatus::Paused;
        paused.url = "http://10.0.0.9/in".into();
        paused.retrying = 0;
        paused.failed = 0;
        let subs = vec![paused, subscription()];
        assert_eq!(
            render_list(&subs),
            "NAME         TOPIC   STATUS    URL                       RETRYING  FAILED  CREATED\n\
             audit        orders  paused    http://10.0.0.9/in        0         0       \
             2023-11-12T22:13:20.000Z\n\
             orders-hook  orders  disabled  https://example.com/hook  3         2       \
             2023-11-12T22:13:20.000Z\n"
        );
        assert_eq!(render_list(&[]), "no push subscriptions\n");
        let v = serde_json::to_value(ListJson::new(&subs)).unwrap();
        assert_eq!(v["subscriptions"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["subscriptions"][0]["status"], "paused");
        assert_eq!(v["subscriptions"][1]["failed"], 2);
    }

    #[test]
    fn failed_table_gives_replayable_ids() {
        let text = render_failed("orders-hook", &failed());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            lines[0],
            "ID                  PARTITION  OFFSET  ATTEMPTS  LAST_STATUS  \
             FAILED_AT                 LAST_ERROR"
        );
        assert_eq!(
            lines[1],
            "orders-hook.0.7     0          7       5         503          \
             2023-11-14T22:13:20.123Z  HTTP 503 Service Unavailable"
        );
        // No status (a timeout), the error escaped onto one line and cut at 80 characters.
        let cut = format!("timed out\\n{}…", "x".repeat(LAST_ERROR_CHARS_MAX - 12));
        assert_eq!(
            lines[2],
            format!(
                "orders-hook.2.1234  2          1234    5         -            \
                 2023-11-14T22:13:21.000Z  {cut}"
            )
        );
        assert_eq!(
            crate::cmd::push::args::parse_webhook_id("orders-hook.2.1234")
                .map(|id| (id.partition, id.offset)),
            Ok((2, 1234))
        );
    }

    #[test]
    fn failed_json_is_whole() {
        let rows = failed();
        let v = serde_json::to_value(FailedJson::new("orders-hook", 5, &rows, true)).unwrap();
        assert_eq!(
            (v["subscription"].as_str(), v["since_ms"].as_u64(), v["more"].as_bool()),
            (Some("orders-hook"), Some(5), Some(true))
        );
        assert_eq!(
            v["failed"][0],
            serde_json::json!({
                "id": "orders-hook.0.7",
                "partition": 0,
                "offset": 7,
                "attempts": 5,
                "last_status": 503,
                "failed_ms": 1_700_000_000_123u64,
                "failed_at": "2023-11-14T22:13:20.123Z",
                "last_error": "HTTP 503 Service Unavailable",
            })
        );
        assert!(v["failed"][1]["last_status"].is_null());
        assert_eq!(v["failed"][1]["last_error"].as_str().map(str::len), Some(110));
    }

    #[test]
    fn alter_answers_read_as_sentences() {
        let s = subscription();
        assert!(render_alter(PushAction::Pause, &s).contains("`ferryctl push resume orders-hook`"));
        assert_eq!(
            render_alter(PushAction::Resume, &s),
            "resumed push subscription orders-hook; its status is disabled\n"
        );
        assert_eq!(
            render_alter(PushAction::Delete, &s),
            "deleted push subscription orders-hook (topic orders to https://example.com/hook); \
             its delivery state went with it: 3 retrying and 2 failed messages\n"
        );
        let mut rotated = s;
        rotated.secret = "whsec_new".into();
        let text = render_rotated(&rotated, NOW_MS);
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            vec![
                "rotated the signing secret of push subscription orders-hook",
                "secret: whsec_new",
                "the previous secret also signs until 2023-11-14T23:13:20.000Z (for 1h00m more), \
                 so receivers can switch over",
                STORE_SECRET_NOTE,
            ]
        );
        rotated.previous_secret_until_ms = 0;
        assert!(render_rotated(&rotated, NOW_MS).contains("the previous secret no longer signs"));
        let v = serde_json::to_value(AlterJson::new(PushAction::RotateSecret, &rotated)).unwrap();
        assert_eq!(
            (v["action"].as_str(), v["subscription"]["secret"].as_str()),
            (Some("rotated"), Some("whsec_new"))
        );
    }
}
