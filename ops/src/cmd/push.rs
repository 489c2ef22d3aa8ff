//! `ferryctl push create|list|describe|pause|resume|delete|rotate-secret|failed|replay`: webhook
//! push subscriptions, administered through the leader.
//!
//! The broker POSTs every message of a subscription's topic to its URL, signed per Standard
//! Webhooks, retries on the subscription's schedule, and marks a message failed after its last
//! attempt; these commands create and steer subscriptions and list and replay failed messages.
//! Flag values are checked and requests built in [`args`]; failed messages are paged through
//! by [`pager`]; how answers look lives in [`view`].

mod args;
mod pager;
mod view;

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::{ArgGroup, Args, Subcommand};
use ferry_protocol::push::{ListPushRequest, PushAction};
use ferry_protocol::{now_ms, ClientError, ErrorCode};

use self::args::{
    alter_request, create_request, parse_grace, parse_http_timeout, parse_schedule, parse_since,
    parse_subscription_name, parse_url, parse_webhook_id, replay_request, rotate_request,
    MessageId, Schedule, SecretParser, Since, CONCURRENCY_MAX, MAX_ATTEMPTS_MAX,
};
use self::pager::FailedPager;
use self::view::{
    render_alter, render_created, render_failed, render_list, render_rotated, render_subscription,
    AlterJson, FailedJson, ListJson, SubscriptionJson, STORE_SECRET_NOTE,
};
use crate::cli::parse_topic_name;
use crate::cmd::Context;
use crate::output::{format_timestamp_ms, print_json, print_text, Format};

/// Most rows `push failed --limit` may ask for: they are all held in memory before printing.
pub const FAILED_ROWS_MAX: u32 = 100_000;

// ---------------------------------------------------------------------------------------------
// Command line

/// The `long_about` of `ferryctl push`.
pub const PUSH_LONG_ABOUT: &str = "Webhook push subscriptions: the broker POSTs every message \
of a topic to an HTTP endpoint.

A subscription reads one topic (from its start, or with --from-end only what is produced from \
then on) and POSTs each message, body as stored, to its URL, with at most --concurrency \
requests in flight; order is not kept. Each request is signed per Standard Webhooks with the \
subscription's secret (whsec_...): the headers webhook-id (NAME.PARTITION.OFFSET: the same on \
every retry and replay, so receivers can drop duplicates), webhook-timestamp and \
webhook-signature. A 2xx answer settles the message. Anything else, or no answer within the \
timeout, is tried again after the next delay of the retry schedule (default \
5s,5m,30m,2h,5h,10h,10h; the last delay repeats); after the last attempt the message is marked \
failed. An endpoint answering 410 Gone disables the subscription until `push resume`.

Failed messages are listed by `push failed` and sent again, attempts starting over, by \
`push replay`.

Receivers can reconcile what they got without waiting for retries, on the admin (HTTP) \
listener of any broker: GET /push/subscriptions/NAME/messages?cursor=PARTITION:OFFSET,...&limit=N \
lists the subscription's messages with their delivery state (delivered, pending, retrying, \
failed) and the cursor to continue from; GET /push/subscriptions/NAME/messages/ID returns one \
by webhook id. Both are authenticated with the subscription's secret: \
`Authorization: Bearer <secret>` (the previous secret too, during a rotation's grace).";

const CREATE_LONG_ABOUT: &str = "Create a push subscription: POST every message of --topic to \
--url.

Every flag left out takes the broker's default: a generated secret, the schedule \
5s,5m,30m,2h,5h,10h,10h, one attempt more than the schedule has delays, a 15s timeout per \
request, and 16 requests in flight. Values are checked here first: the URL must be http:// or \
https://; a secret is whsec_ followed by the standard base64 of 24 to 64 random bytes; a \
schedule has 1 to 32 delays of 1s to 7d (units ms, s, m, h, d).

The secret is printed once, now (and again only by `push rotate-secret`): store it where the \
receiver can read it. A secret given with --secret shows in the process list and the shell \
history; leaving it out lets the broker generate one.";

const FAILED_LONG_ABOUT: &str = "List a subscription's failed messages: those whose attempts \
ran out.

Columns: the webhook id (NAME.PARTITION.OFFSET, as `push replay --id` takes it), partition, \
offset, attempts made, HTTP status of the last answer (`-`: none, a timeout or a connection \
error), when it failed, and the last error (cut at 80 characters; whole in JSON). Ordered by \
partition and offset. With --format json: `{subscription, since_ms, more, failed: [{id, \
partition, offset, attempts, last_status, failed_ms, failed_at, last_error}]}`.

--since takes an RFC 3339 time (2024-05-01T12:00:00Z, or with an offset such as +02:00), \
milliseconds since the Unix epoch, or how long ago (30m, 2h, 7d).";

const REPLAY_LONG_ABOUT: &str = "Send failed messages again; their attempts start over from \
the first delay of the schedule.

Choose exactly one of: --since TIME (the messages that failed at or after TIME: RFC 3339, \
milliseconds since the Unix epoch, or how long ago such as 2h), --id (webhook ids \
NAME.PARTITION.OFFSET as `push failed` lists them; repeat the flag or separate ids with \
commas), or --all. The receiver gets the same webhook-id as before, so it can drop what it \
already processed. Prints how many messages were replayed.";

/// `ferryctl push ...`
#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Create a subscription: POST every message of a topic to a URL.
    #[command(long_about = CREATE_LONG_ABOUT, after_help = "Examples:
  ferryctl push create orders-hook --topic orders --url https://example.com/hooks/orders
  ferryctl push create orders-hook --topic orders --url https://example.com/hooks/orders \\
      --schedule 10s,1m,10m,1h --max-attempts 8 --http-timeout 5s --concurrency 4 --from-end
  ferryctl push create audit --topic audit --url http://10.0.0.9/in \\
      --secret whsec_$(openssl rand -base64 32)")]
    Create(PushCreateArgs),
    /// List subscriptions: topic, status, URL, retrying and failed messages.
    ///
    /// Status: active (delivering), paused (by an operator), or disabled (the endpoint
    /// answered 410 Gone). Retrying: messages waiting for their next attempt; failed: messages
    /// whose attempts ran out (see `push failed`). With --format json:
    /// `{"subscriptions": [...]}` with every field `push describe` shows except the positions.
    #[command(after_help = "Examples:
  ferryctl push list
  ferryctl --format json push list | jq '.subscriptions[] | select(.failed > 0) | .name'")]
    List,
    /// Show one subscription in full, with its delivery position in every partition.
    ///
    /// Fields: topic, URL, until when the previous secret still signs (after a rotation),
    /// status with its reason and since when, created, retry schedule (the last delay repeats),
    /// max attempts, timeout per request, concurrency, retrying and failed messages, and the
    /// lag. Per partition: the cursor (every message below it had its first attempt settled),
    /// the high watermark, the lag (high watermark - cursor) and how many messages above the
    /// cursor are settled already (requests finish out of order). The secret is never shown
    /// here.
    #[command(after_help = "Examples:
  ferryctl push describe orders-hook
  ferryctl --format json push describe orders-hook | jq .lag")]
    Describe {
        /// Subscription name.
        #[arg(value_parser = parse_subscription_name)]
        name: String,
    },
    /// Stop delivering; requests in flight finish. `push resume` continues where it stopped.
    #[command(after_help = "Example:
  ferryctl push pause orders-hook")]
    Pause {
        /// Subscription name.
        #[arg(value_parser = parse_subscription_name)]
        name: String,
    },
    /// Deliver again, after `push pause` or after the endpoint answered 410 Gone.
    #[command(after_help = "Example:
  ferryctl push resume orders-hook")]
    Resume {
        /// Subscription name.
        #[arg(value_parser = parse_subscription_name)]
        name: String,
    },
    /// Delete a subscription with its delivery state (positions, retrying and failed
    /// messages); the topic is left alone. Does not ask first.
    #[command(after_help = "Example:
  ferryctl push delete orders-hook")]
    Delete {
        /// Subscription name.
        #[arg(value_parser = parse_subscription_name)]
        name: String,
    },
    /// Replace the signing secret; the previous one keeps signing too for --grace.
    ///
    /// During the grace period every request carries a signature by each secret, so receivers
    /// can switch to the new one at their pace. The new secret is printed once, now: store it.
    /// --secret is checked like `push create --secret`; without it the broker generates one.
    #[command(after_help = "Examples:
  ferryctl push rotate-secret orders-hook
  ferryctl push rotate-secret orders-hook --grace 1h
  ferryctl push rotate-secret orders-hook --grace 0      # the old secret stops signing now")]
    RotateSecret(PushRotateArgs),
    /// List failed messages (attempts ran out), by partition and offset.
    #[command(long_about = FAILED_LONG_ABOUT, after_help = "Examples:
  ferryctl push failed orders-hook
  ferryctl push failed orders-hook --since 2h
  ferryctl push failed orders-hook --since 2024-05-01T12:00:00Z --limit 100000 --format json")]
    Failed(PushFailedArgs),
    /// Send failed messages again (by time, by id, or all).
    #[command(long_about = REPLAY_LONG_ABOUT, after_help = "Examples:
  ferryctl push replay orders-hook --since 2h
  ferryctl push replay orders-hook --id orders-hook.0.7 --id orders-hook.3.42
  ferryctl push replay orders-hook --all")]
    Replay(PushReplayArgs),
}

/// `ferryctl push create ...`
#[derive(Debug, Args)]
pub struct PushCreateArgs {
    /// Subscription name: 1-100 characters of A-Z a-z 0-9 _ - (no dot: it starts every
    /// webhook id).
    #[arg(value_parser = parse_subscription_name)]
    pub name: String,

    /// The topic whose messages are pushed.
    #[arg(long, value_name = "TOPIC", value_parser = parse_topic_name)]
    pub topic: String,

    /// The endpoint: an http:// or https:// URL.
    #[arg(long, value_name = "URL", value_parser = parse_url)]
    pub url: String,

    /// Signing secret, whsec_ + standard base64 of 24-64 bytes (default: generated).
    #[arg(long, value_name = "whsec_...", value_parser = SecretParser)]
    pub secret: Option<String>,

    /// Delays before attempt 2, 3, ..., comma separated, each 1s-7d; the last repeats
    /// (default: 5s,5m,30m,2h,5h,10h,10h).
    #[arg(long, value_name = "D1,D2,...", value_parser = parse_schedule)]
    pub schedule: Option<Schedule>,

    /// Attempts before a message is marked failed, 1-100 (default: the schedule's delays + 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_ATTEMPTS_MAX)))]
    pub max_attempts: Option<u32>,

    /// How long one POST may take, 100ms-5m (default: 15s). Not --timeout: that one is
    /// ferryctl's own, for reaching the cluster.
    #[arg(long, value_name = "DURATION", value_parser = parse_http_timeout)]
    pub http_timeout: Option<Duration>,

    /// Most POSTs in flight at once, 1-1024 (default: 16).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(CONCURRENCY_MAX)))]
    pub concurrency: Option<u32>,

    /// Push only messages produced from now on (default: from the start of the topic).
    #[arg(long)]
    pub from_end: bool,
}

/// `ferryctl push rotate-secret ...`
#[derive(Debug, Args)]
pub struct PushRotateArgs {
    /// Subscription name.
    #[arg(value_parser = parse_subscription_name)]
    pub name: String,

    /// The new secret, whsec_ + standard base64 of 24-64 bytes (default: generated).
    #[arg(long, value_name = "whsec_...", value_parser = SecretParser)]
    pub secret: Option<String>,

    /// How long the previous secret keeps signing too, 0-7d.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_grace)]
    pub grace: Duration,
}

/// `ferryctl push failed ...`
#[derive(Debug, Args)]
pub struct PushFailedArgs {
    /// Subscription name.
    #[arg(value_parser = parse_subscription_name)]
    pub name: String,

    /// Only messages that failed at or after TIME (RFC 3339, ms since the epoch, or how long
    /// ago: 2h).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<Since>,

    /// Show at most N failed messages (1-100000).
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=i64::from(FAILED_ROWS_MAX)))]
    pub limit: u32,
}

/// `ferryctl push replay ...`
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("selection").required(true).multiple(false).args(["since", "ids", "all"])
))]
pub struct PushReplayArgs {
    /// Subscription name.
    #[arg(value_parser = parse_subscription_name)]
    pub name: String,

    /// Replay the messages that failed at or after TIME (RFC 3339, ms since the epoch, or how
    /// long ago: 2h).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<Since>,

    /// Replay this message, by webhook id NAME.PARTITION.OFFSET (repeat, or separate with
    /// commas).
    #[arg(long = "id", value_name = "ID", value_delimiter = ',', value_parser = parse_webhook_id)]
    pub ids: Vec<MessageId>,

    /// Replay every failed message.
    #[arg(long)]
    pub all: bool,
}

// ---------------------------------------------------------------------------------------------
// Errors

/// Turns the broker's push errors into sentences; other errors get `what` (a verb such as
/// "create") as context. `topic` names the topic for `UnknownTopic` when the command knows it.
fn push_error(error: ClientError, name: &str, topic: Option<&str>, what: &str) -> anyhow::Error {
    match error.code() {
        Some(ErrorCode::UnknownSubscription) => {
            anyhow!("push subscription {name:?} does not exist (see ferryctl push list)")
        }
        Some(ErrorCode::SubscriptionExists) => {
            anyhow!("push subscription {name:?} already exists")
        }
        Some(ErrorCode::UnknownTopic) => match topic {
            Some(topic) => anyhow!("topic {topic:?} does not exist"),
            None => anyhow!("the topic of push subscription {name:?} does not exist"),
        },
        _ => anyhow::Error::new(error).context(format!("cannot {what} push subscription {name:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// create / list / describe

/// `push create NAME --topic T --url U ...`.
///
/// # Errors
/// When the subscription exists, the topic does not, the broker refuses a value, or the
/// cluster is unreachable.
pub async fn create(ctx: &Context, args: &PushCreateArgs) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let request = create_request(args);
    let created = client
        .call(&request)
        .await
        .map_err(|e| push_error(e, &args.name, Some(&args.topic), "create"))?;
    match ctx.format {
        Format::Json => {
            print_json(&SubscriptionJson::new(&created))?;
            // On stderr, so the JSON stays clean.
            eprintln!("note: {STORE_SECRET_NOTE}");
            Ok(())
        }
        Format::Text => print_text(&render_created(&created, now_ms())),
    }
}

/// `push list`.
///
/// # Errors
/// When the cluster is unreachable.
pub async fn list(ctx: &Context) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let mut response =
        client.call(&ListPushRequest::default()).await.context("cannot list push subscriptions")?;
    response.subscriptions.sort_by(|a, b| a.name.cmp(&b.name));
    match ctx.format {
        Format::Json => print_json(&ListJson::new(&response.subscriptions)),
        Format::Text => print_text(&render_list(&response.subscriptions)),
    }
}

/// `push describe NAME`.
///
/// # Errors
/// When the subscription does not exist or the cluster is unreachable.
pub async fn describe(ctx: &Context, name: &str) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let request = ListPushRequest { name: name.to_string() };
    let response =
        client.call(&request).await.map_err(|e| push_error(e, name, None, "describe"))?;
    let mut subscription =
        response.subscriptions.into_iter().find(|s| s.name == name).ok_or_else(|| {
            anyhow!("push subscription {name:?} does not exist (see ferryctl push list)")
        })?;
    subscription.partitions.sort_by_key(|p| p.partition);
    match ctx.format {
        Format::Json => print_json(&SubscriptionJson::new(&subscription)),
        Format::Text => print_text(&render_subscription(&subscription, now_ms())),
    }
}

// ---------------------------------------------------------------------------------------------
// pause / resume / delete / rotate-secret

/// `push pause|resume|delete NAME`.
///
/// # Errors
/// When the subscription does not exist or the cluster is unreachable.
pub async fn alter(ctx: &Context, name: &str, action: PushAction) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let verb = match action {
        PushAction::Pause => "pause",
        PushAction::Resume => "resume",
        PushAction::Delete => "delete",
        PushAction::RotateSecret => "rotate the secret of",
    };
    let answer = client
        .call(&alter_request(name, action))
        .await
        .map_err(|e| push_error(e, name, None, verb))?;
    match ctx.format {
        Format::Json => print_json(&AlterJson::new(action, &answer)),
        Format::Text => print_text(&render_alter(action, &answer)),
    }
}

/// `push rotate-secret NAME [--secret S] [--grace D]`.
///
/// # Errors
/// When the subscription does not exist, the broker refuses the secret, or the cluster is
/// unreachable.
pub async fn rotate_secret(ctx: &Context, args: &PushRotateArgs) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let answer = client
        .call(&rotate_request(args))
        .await
        .map_err(|e| push_error(e, &args.name, None, "rotate the secret of"))?;
    match ctx.format {
        Format::Json => {
            print_json(&AlterJson::new(PushAction::RotateSecret, &answer))?;
            eprintln!("note: {STORE_SECRET_NOTE}");
            Ok(())
        }
        Format::Text => print_text(&render_rotated(&answer, now_ms())),
    }
}

// ---------------------------------------------------------------------------------------------
// failed / replay

/// `push failed NAME [--since T] [--limit N]`.
///
/// # Errors
/// When the subscription does not exist or the cluster is unreachable.
pub async fn failed(ctx: &Context, args: &PushFailedArgs) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let name = args.name.as_str();
    let since_ms = args.since.map_or(0, |s| s.resolve_ms(now_ms()));
    let mut pager = FailedPager::new(name, since_ms, args.limit);
    while let Some(request) = pager.next_request() {
        let page = client
            .call(&request)
            .await
            .map_err(|e| push_error(e, name, None, "list the failed messages of"))?;
        pager.on_page(page)?;
    }
    let printed = match ctx.format {
        Format::Json => print_json(&FailedJson::new(name, since_ms, &pager.rows, pager.more)),
        Format::Text if pager.rows.is_empty() => {
            let since = match since_ms {
                0 => String::new(),
                ms => format!(" since {}", format_timestamp_ms(ms)),
            };
            print_text(&format!("no failed messages for push subscription {name}{since}\n"))
        }
        Format::Text => print_text(&render_failed(name, &pager.rows)),
    };
    // After the rows, so it is the last thing on a terminal; on stderr, so JSON stays clean.
    if printed.is_ok() && pager.more {
        eprintln!(
            "note: showing the first {} failed messages; more follow (raise --limit)",
            pager.rows.len()
        );
    }
    printed
}

/// `push replay NAME (--since T | --id ID... | --all)`.
///
/// # Errors
/// When an id names another subscription, the subscription does not exist, or the cluster is
/// unreachable.
pub async fn replay(ctx: &Context, args: &PushReplayArgs) -> anyhow::Result<()> {
    let request = replay_request(args, now_ms()).map_err(|e| anyhow!(e))?;
    let client = ctx.cluster_client()?;
    let name = args.name.as_str();
    let answer = client.call(&request).await.map_err(|e| push_error(e, name, None, "replay"))?;
    match ctx.format {
        Format::Json => {
            #[derive(serde::Serialize)]
            struct Replayed<'a> {
                subscription: &'a str,
                replayed: u32,
            }
            print_json(&Replayed { subscription: name, replayed: answer.replayed })
        }
        Format::Text => {
            let n = answer.replayed;
            let s = if n == 1 { "" } else { "s" };
            print_text(&format!(
                "replayed {n} failed message{s} of push subscription {name}; their attempts \
                 start over\n"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory;

    fn server_error(code: ErrorCode) -> ClientError {
        ClientError::Server { code, message: "detail".into(), leader: None, txn_state: None }
    }

    #[test]
    fn broker_errors_read_as_sentences() {
        let line = |code, topic| {
            crate::error_line(&push_error(server_error(code), "orders-hook", topic, "create"))
        };
        assert_eq!(
            line(ErrorCode::UnknownSubscription, None),
            "push subscription \"orders-hook\" does not exist (see ferryctl push list)"
        );
        assert_eq!(
            line(ErrorCode::SubscriptionExists, Some("orders")),
            "push subscription \"orders-hook\" already exists"
        );
        assert_eq!(
            line(ErrorCode::UnknownTopic, Some("orders")),
            "topic \"orders\" does not exist"
        );
        assert_eq!(
            line(ErrorCode::UnknownTopic, None),
            "the topic of push subscription \"orders-hook\" does not exist"
        );
        assert_eq!(
            line(ErrorCode::InvalidArgument, None),
            "cannot create push subscription \"orders-hook\": invalid argument: detail"
        );
    }

    #[test]
    fn help_explains_signing_retries_and_reconciliation() {
        let mut cli = Cli::command();
        let push = cli.find_subcommand_mut("push").unwrap();
        let help = push.render_long_help().to_string();
        for needle in [
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "5s,5m,30m,2h,5h,10h,10h",
            "push failed",
            "push replay",
            "GET /push/subscriptions/NAME/messages",
            "Authorization: Bearer <secret>",
        ] {
            assert!(help.contains(needle), "{needle}: {help}");
        }
        for (name, needle) in [
            ("create", "ferryctl push create orders-hook"),
            ("list", "ferryctl push list"),
            ("describe", "ferryctl push describe orders-hook"),
            ("pause", "ferryctl push pause orders-hook"),
            ("resume", "ferryctl push resume orders-hook"),
            ("delete", "ferryctl push delete orders-hook"),
            ("rotate-secret", "--grace 0"),
            ("failed", "--since 2h"),
            ("replay", "--id orders-hook.0.7"),
        ] {
            let help = push.find_subcommand_mut(name).unwrap().render_long_help().to_string();
            assert!(help.contains(needle), "{name}: {help}");
        }
    }
}
