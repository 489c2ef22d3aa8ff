//! `ferryctl push` flag values and the requests they make.
//!
//! Every value is checked while clap parses, against the broker's own limits, so a bad flag is
//! a usage error before anything connects. Building a request from the parsed flags is pure
//! (the clock comes in as an argument), so both are tested without a broker.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;

use ferry_protocol::push::{
    message_id, parse_message_id, validate_subscription_name, AlterPushRequest, CreatePushRequest,
    PushAction, ReplayPushRequest, SCHEDULE_STEPS_MAX, SECRET_PREFIX, URL_BYTES_MAX,
};

use super::{PushCreateArgs, PushReplayArgs, PushRotateArgs};
use crate::cmd::group::parse_time;
use crate::duration::{format_duration_exact, parse_duration, parse_duration_or_days};

/// Fewest key bytes in a signing secret (Standard Webhooks: 24 to 64).
pub const SECRET_KEY_BYTES_MIN: usize = 24;
/// Most key bytes in a signing secret.
pub const SECRET_KEY_BYTES_MAX: usize = 64;
/// Shortest retry delay: a faster retry would only hammer a struggling endpoint.
pub const SCHEDULE_STEP_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const SCHEDULE_STEP_MAX: Duration = Duration::from_secs(7 * 86_400);
/// Shortest per-request timeout of a delivery.
pub const HTTP_TIMEOUT_MIN: Duration = Duration::from_millis(100);
/// Longest per-request timeout of a delivery.
pub const HTTP_TIMEOUT_MAX: Duration = Duration::from_secs(5 * 60);
/// Most requests a subscription may have in flight.
pub const CONCURRENCY_MAX: u32 = 1024;
/// Most attempts per message.
pub const MAX_ATTEMPTS_MAX: u32 = 100;
/// Longest time the previous secret may keep signing after a rotation.
pub const GRACE_MAX: Duration = Duration::from_secs(7 * 86_400);
/// Most `--id`s one replay takes (one request; 12 bytes each on the wire).
pub const REPLAY_IDS_MAX: usize = 10_000;

/// `grace_ms` sent for `--grace 0`: the wire reads 0 as "the 24 h default", so "no grace" is
/// asked for as the shortest grace there is.
const GRACE_NONE_MS: u64 = 1;

// ---------------------------------------------------------------------------------------------
// Values

/// A retry schedule: the delay after attempt 1, 2, ... (the last one repeats).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(pub Vec<Duration>);

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps: Vec<String> = self.0.iter().map(|d| format_duration_exact(*d)).collect();
        f.write_str(&steps.join(","))
    }
}

/// A `--since` value: a point in time, or how long before now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    /// Milliseconds since the Unix epoch.
    At(u64),
    /// This long before the command runs.
    Ago(Duration),
}

impl Since {
    /// The point in time, in ms since the Unix epoch, seen from `now_ms`.
    pub fn resolve_ms(self, now_ms: u64) -> u64 {
        match self {
            Since::At(ms) => ms,
            Since::Ago(d) => now_ms.saturating_sub(duration_ms(d)),
        }
    }
}

/// A webhook id, `NAME.PARTITION.OFFSET`: one message of one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageId {
    /// The subscription it names.
    pub subscription: String,
    /// Partition index.
    pub partition: u32,
    /// Offset in the partition.
    pub offset: u64,
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&message_id(&self.subscription, self.partition, self.offset))
    }
}

/// Whole milliseconds of `d`, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Parsers (clap value parsers: the error is one sentence, clap adds the flag)

/// A subscription name: 1-100 characters of `[A-Za-z0-9_-]`.
///
/// # Errors
/// The protocol's sentence naming what is wrong.
pub fn parse_subscription_name(text: &str) -> Result<String, String> {
    validate_subscription_name(text)?;
    Ok(text.to_string())
}

/// An endpoint URL: `http://` or `https://`, a host, no credentials, at most `URL_BYTES_MAX`
/// bytes, no spaces or control characters.
///
/// # Errors
/// A sentence naming what is wrong.
pub fn parse_url(text: &str) -> Result<String, String> {
    if text.len() > URL_BYTES_MAX {
        return Err(format!("the URL has {} bytes; at most {URL_BYTES_MAX}", text.len()));
    }
    let Some(rest) = text.strip_prefix("https://").or_else(|| text.strip_prefix("http://")) else {
        return Err(format!("{text:?} does not start with http:// or https://"));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("{text:?} has no host"));
    }
    if authority.contains('@') {
        // The broker refuses them too: requests are signed instead, and a password in the URL
        // would show in every listing.
        return Err("the URL may not carry credentials (user:password@)".into());
    }
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("the URL holds {c:?}; percent-encode it"));
    }
    Ok(text.to_string())
}

/// A signing secret: `whsec_` and the standard base64 (padded) of 24 to 64 key bytes.
///
/// The errors never repeat the text: it is a secret, and error lines end up in logs.
///
/// # Errors
/// A sentence naming what is wrong.
pub fn parse_secret(text: &str) -> Result<String, String> {
    let Some(key) = text.strip_prefix(SECRET_PREFIX) else {
        return Err(format!("a signing secret starts with {SECRET_PREFIX}"));
    };
    // The broker decodes with the same engine: strict padding, canonical trailing bits.
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(key) else {
        return Err(format!(
            "the part after {SECRET_PREFIX} is not standard base64 (A-Z a-z 0-9 + /, padded \
             with = to a multiple of 4 characters)"
        ));
    };
    if !(SECRET_KEY_BYTES_MIN..=SECRET_KEY_BYTES_MAX).contains(&bytes.len()) {
        return Err(format!(
            "the key is {} bytes; it must be {SECRET_KEY_BYTES_MIN} to {SECRET_KEY_BYTES_MAX} \
             (e.g. {SECRET_PREFIX}$(openssl rand -base64 32))",
            bytes.len()
        ));
    }
    Ok(text.to_string())
}

/// A retry schedule: a comma list of 1 to `SCHEDULE_STEPS_MAX` durations, each 1s to 7d
/// (`5s,5m,30m,2h`).
///
/// # Errors
/// A sentence naming the step that is wrong.
pub fn parse_schedule(text: &str) -> Result<Schedule, String> {
    if text.trim().is_empty() {
        return Err("the schedule is empty; give delays such as 5s,5m,30m,2h".into());
    }
    let steps: Vec<&str> = text.split(',').map(str::trim).collect();
    if steps.len() > SCHEDULE_STEPS_MAX {
        return Err(format!("{} steps; a schedule has at most {SCHEDULE_STEPS_MAX}", steps.len()));
    }
    let mut schedule = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        if step.is_empty() {
            return Err(format!("step {n} is empty"));
        }
        let d = parse_duration_or_days(step).map_err(|e| format!("step {n}: {e}"))?;
        if d < SCHEDULE_STEP_MIN || d > SCHEDULE_STEP_MAX {
            return Err(format!("step {n} ({step}) is outside 1s to 7d"));
        }
        schedule.push(d);
    }
    Ok(Schedule(schedule))
}

/// The per-request timeout of a delivery: 100ms to 5m.
///
/// # Errors
/// A sentence when it is not a duration or out of range.
pub fn parse_http_timeout(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < HTTP_TIMEOUT_MIN || d > HTTP_TIMEOUT_MAX {
        return Err(format!("{} is outside 100ms to 5m", text.trim()));
    }
    Ok(d)
}

/// How long the previous secret keeps signing after a rotation: 0 to 7d.
///
/// # Errors
/// A sentence when it is not a duration or out of range.
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    // A bare 0 needs no unit: "no grace" reads naturally without one.
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    let d = parse_duration_or_days(text)?;
    if d > GRACE_MAX {
        return Err(format!("{} is longer than 7d", text.trim()));
    }
    Ok(d)
}

/// A point in time: RFC 3339, milliseconds since the Unix epoch, or a duration meaning that
/// long ago (`2h`, `7d`).
///
/// # Errors
/// A sentence listing the accepted forms (or, for a broken timestamp, what is wrong in it).
pub fn parse_since(text: &str) -> Result<Since, String> {
    if let Ok(ms) = parse_time(text) {
        return Ok(Since::At(ms));
    }
    let trimmed = text.trim();
    // Shaped like a date: its own error says what is wrong (a 30th of February, say).
    if trimmed.len() >= 10 && trimmed.as_bytes()[4] == b'-' {
        return parse_time(trimmed).map(Since::At);
    }
    parse_duration_or_days(trimmed).map(Since::Ago).map_err(|_| {
        format!(
            "{trimmed:?} is not a time: give RFC 3339 (2024-05-01T12:00:00Z, or with an offset \
             such as +02:00), milliseconds since the Unix epoch, or how long ago (30m, 2h, 7d)"
        )
    })
}

/// A webhook id, `NAME.PARTITION.OFFSET` (as in the `webhook-id` header).
///
/// # Errors
/// A sentence when it is not one.
pub fn parse_webhook_id(text: &str) -> Result<MessageId, String> {
    let text = text.trim();
    let (name, partition, offset) = parse_message_id(text).ok_or_else(|| {
        format!("{text:?} is not a webhook id NAME.PARTITION.OFFSET (e.g. orders-hook.3.42)")
    })?;
    validate_subscription_name(name).map_err(|e| format!("{text:?}: {e}"))?;
    Ok(MessageId { subscription: name.to_string(), partition, offset })
}

/// `--secret`'s value parser: [`parse_secret`], with errors that leave the value out (clap's
/// own "invalid value '...'" would repeat the secret, and error lines end up in logs).
#[derive(Debug, Clone, Copy)]
pub struct SecretParser;

impl clap::builder::TypedValueParser for SecretParser {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let flag = arg.map_or_else(|| "--secret".to_string(), ToString::to_string);
        let refuse = |reason: String| {
            clap::Error::raw(
                clap::error::ErrorKind::ValueValidation,
                format!("invalid value for '{flag}': {reason}\n"),
            )
            .with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| refuse("not UTF-8".into()))?;
        parse_secret(text).map_err(refuse)
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// `push create`: an absent flag is sent as 0 / empty, which the broker reads as its default.
pub fn create_request(args: &PushCreateArgs) -> CreatePushRequest {
    CreatePushRequest {
        name: args.name.clone(),
        topic: args.topic.clone(),
        url: args.url.clone(),
        secret: args.secret.clone().unwrap_or_default(),
        schedule_ms: args
            .schedule
            .as_ref()
            .map_or_else(Vec::new, |s| s.0.iter().map(|d| duration_ms(*d)).collect()),
        max_attempts: args.max_attempts.unwrap_or(0),
        // At most 5 minutes (checked while parsing), so it fits.
        timeout_ms: args
            .http_timeout
            .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
        concurrency: args.concurrency.unwrap_or(0),
        start_at_end: args.from_end,
    }
}

/// `push pause|resume|delete NAME`.
pub fn alter_request(name: &str, action: PushAction) -> AlterPushRequest {
    AlterPushRequest { name: name.to_string(), action, secret: String::new(), grace_ms: 0 }
}

/// `push rotate-secret`: the grace is always sent explicitly (the default too), `0` as
/// `GRACE_NONE_MS` since the wire reads 0 as "24 h".
pub fn rotate_request(args: &PushRotateArgs) -> AlterPushRequest {
    AlterPushRequest {
        name: args.name.clone(),
        action: PushAction::RotateSecret,
        secret: args.secret.clone().unwrap_or_default(),
        grace_ms: duration_ms(args.grace).max(GRACE_NONE_MS),
    }
}

/// `push replay`: `--id`s become (partition, offset) pairs, sorted and deduplicated; `--all`
/// is since 0; `--since` is resolved against `now_ms`.
///
/// # Errors
/// A sentence when an id names another subscription, or there are too many ids.
pub fn replay_request(args: &PushReplayArgs, now_ms: u64) -> Result<ReplayPushRequest, String> {
    let mut messages = BTreeSet::new();
    for id in &args.ids {
        if id.subscription != args.name {
            return Err(format!(
                "webhook id {id} belongs to subscription {:?}, not {:?}",
                id.subscription, args.name
            ));
        }
        messages.insert((id.partition, id.offset));
    }
    if messages.len() > REPLAY_IDS_MAX {
        return Err(format!(
            "{} ids; one replay takes at most {REPLAY_IDS_MAX} (use --since for more)",
            messages.len()
        ));
    }
    let since_ms = match args.since {
        Some(since) if !args.all => since.resolve_ms(now_ms),
        _ => 0,
    };
    Ok(ReplayPushRequest {
        name: args.name.clone(),
        since_ms,
        messages: messages.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::cmd::push::PushCommand;
    use crate::output::base64;
    use clap::error::ErrorKind;
    use clap::Parser;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn parse(args: &[&str]) -> Result<PushCommand, clap::Error> {
        let all = ["ferryctl", "push"].into_iter().chain(args.iter().copied());
        Cli::try_parse_from(all).map(|cli| match cli.command {
            Command::Push(p) => p,
            other => panic!("{other:?}"),
        })
    }

    fn kind(args: &[&str]) -> ErrorKind {
        parse(args).expect_err("should be refused").kind()
    }

    fn secret(key_bytes: usize) -> String {
        format!("whsec_{}", base64(&vec![7u8; key_bytes]))
    }

    #[test]
    fn urls() {
        for good in ["https://example.com/hook", "http://10.0.0.1:8080", "https://h?x=1#f"] {
            assert_eq!(parse_url(good).as_deref(), Ok(good));
        }
        let err = |t: &str| parse_url(t).unwrap_err();
        assert!(err("ftp://example.com").contains("does not start with http://"));
        assert!(err("HTTPS//example.com").contains("does not start with http://"));
        assert!(err("example.com/hook").contains("does not start with http://"));
        assert!(err("https://").contains("has no host"));
        assert!(err("https:///path").contains("has no host"));
        assert!(err("https://user:pw@example.com/").contains("credentials"));
        assert!(parse_url("https://example.com/a@b").is_ok(), "an @ in the path is fine");
        assert!(err("https://example.com/a b").contains("percent-encode"));
        assert!(err("https://example.com/\n").contains("percent-encode"));
        let long = format!("https://example.com/{}", "a".repeat(URL_BYTES_MAX));
        assert!(err(&long).contains("at most 2048"), "{}", err(&long));
        let just_fits = format!("https://h/{}", "a".repeat(URL_BYTES_MAX - 10));
        assert!(parse_url(&just_fits).is_ok());
    }

    #[test]
    fn secrets() {
        for n in [SECRET_KEY_BYTES_MIN, 32, SECRET_KEY_BYTES_MAX] {
            assert_eq!(parse_secret(&secret(n)), Ok(secret(n)), "{n} bytes");
        }
        let err = |t: &str| parse_secret(t).unwrap_err();
        assert!(err(&secret(23)).contains("the key is 23 bytes"), "{}", err(&secret(23)));
        assert!(err(&secret(65)).contains("the key is 65 bytes"));
        assert!(err("whsec_").contains("the key is 0 bytes"));
        assert!(err(&secret(32)[6..]).contains("starts with whsec_"));
        assert!(err("WHSEC_AAAA").contains("starts with whsec_"));
        // Not padded, URL-safe alphabet, junk: not standard base64.
        let unpadded = secret(32).trim_end_matches('=').to_string();
        assert!(err(&unpadded).contains("not standard base64"));
        assert!(err(&secret(32).replace('B', "-")).contains("not standard base64"));
        assert!(err("whsec_not base64!").contains("not standard base64"));
        // The secret itself is never echoed, not even in clap's usage error.
        let bad = format!("{}!", secret(32));
        assert!(!err(&bad).contains(&secret(32)[6..]));
        let e = parse(&["rotate-secret", "h", "--secret", &bad]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueValidation);
        let line = crate::usage_error_line(&e);
        assert!(
            line.starts_with("invalid value for '--secret <whsec_...>': the part after"),
            "{line}"
        );
        assert!(!line.contains(&secret(32)[6..]), "{line}");
    }

    #[test]
    fn schedules() {
        let ok = |t: &str| parse_schedule(t).unwrap();
        let secs = |v: &[u64]| Schedule(v.iter().map(|s| Duration::from_secs(*s)).collect());
        assert_eq!(
            ok("5s,5m,30m,2h,5h,10h,10h"),
            secs(&[5, 300, 1800, 7200, 18_000, 36_000, 36_000])
        );
        assert_eq!(ok(" 1s , 7d "), secs(&[1, 7 * 86_400]));
        assert_eq!(ok("1.5m"), secs(&[90]));
        assert_eq!(ok("5s,5m,30m,2h,5h,10h,10h").to_string(), "5s,5m,30m,2h,5h,10h,10h");
        assert_eq!(ok(&vec!["1s"; SCHEDULE_STEPS_MAX].join(",")).0.len(), SCHEDULE_STEPS_MAX);
        let err = |t: &str| parse_schedule(t).unwrap_err();
        assert!(err("").contains("the schedule is empty"));
        assert!(err("5s,,5m").contains("step 2 is empty"));
        assert!(err("5s,").contains("step 2 is empty"));
        assert!(err("5s,999ms").contains("step 2 (999ms) is outside 1s to 7d"));
        assert!(err("8d").contains("step 1 (8d) is outside"));
        assert!(err("5s,5").contains("step 2: \"5\" has no unit"), "{}", err("5s,5"));
        assert!(err("5x").contains("unknown unit"));
        let too_many = vec!["1s"; SCHEDULE_STEPS_MAX + 1].join(",");
        assert!(err(&too_many).contains("33 steps; a schedule has at most 32"));
    }

    #[test]
    fn timeouts_and_graces() {
        assert_eq!(parse_http_timeout("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_http_timeout("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_http_timeout("99ms").unwrap_err().contains("outside 100ms to 5m"));
        assert!(parse_http_timeout("301s").is_err());
        assert!(parse_http_timeout("1d").is_err());
        assert_eq!(parse_grace("0"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_grace("169h").unwrap_err().contains("longer than 7d"));
        assert!(parse_grace("soon").is_err());
    }

    #[test]
    fn since_takes_three_forms() {
        let at = |t: &str| parse_since(t).unwrap().resolve_ms(NOW_MS);
        assert_eq!(at("2023-11-14T22:13:20.123Z"), 1_700_000_000_123);
        assert_eq!(at("2023-11-15T00:13:20+02:00"), 1_700_000_000_000);
        assert_eq!(at("1699999999000"), 1_699_999_999_000);
        assert_eq!(at("0"), 0);
        assert_eq!(parse_since("2h"), Ok(Since::Ago(Duration::from_secs(7200))));
        assert_eq!(at("2h"), NOW_MS - 7_200_000);
        assert_eq!(at("7d"), NOW_MS - 7 * 86_400_000);
        assert_eq!(at("500ms"), NOW_MS - 500);
        assert_eq!(Since::Ago(Duration::from_secs(1)).resolve_ms(10), 0, "saturates at 1970");
        let err = parse_since("yesterday").unwrap_err();
        assert!(err.contains("RFC 3339") && err.contains("how long ago"), "{err}");
        // A broken date says what is wrong with it.
        let err = parse_since("2023-02-29T00:00:00Z").unwrap_err();
        assert!(err.contains("has no day 29"), "{err}");
        assert!(parse_since("2h ago").is_err());
        assert!(parse_since("-2h").is_err());
    }

    #[test]
    fn webhook_ids() {
        let id = parse_webhook_id("orders-hook.3.42").unwrap();
        assert_eq!(id, MessageId { subscription: "orders-hook".into(), partition: 3, offset: 42 });
        assert_eq!(id.to_string(), "orders-hook.3.42");
        for bad in
            ["orders-hook.3", "orders-hook.x.1", "orders-hook.1.-1", ".1.2", "a b.1.2", "a.b.1.2"]
        {
            assert!(parse_webhook_id(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_webhook_id("orders-hook.3").unwrap_err().contains("NAME.PARTITION.OFFSET"));
    }

    #[test]
    fn create_flags_become_the_request() {
        let PushCommand::Create(args) = parse(&[
            "create",
            "orders-hook",
            "--topic",
            "orders",
            "--url",
            "https://example.com/hook",
            "--secret",
            &secret(32),
            "--schedule",
            "5s,1m",
            "--max-attempts",
            "4",
            "--http-timeout",
            "2.5s",
            "--concurrency",
            "8",
            "--from-end",
        ])
        .unwrap() else {
            panic!("not create")
        };
        assert_eq!(
            create_request(&args),
            CreatePushRequest {
                name: "orders-hook".into(),
                topic: "orders".into(),
                url: "https://example.com/hook".into(),
                secret: secret(32),
                schedule_ms: vec![5000, 60_000],
                max_attempts: 4,
                timeout_ms: 2500,
                concurrency: 8,
                start_at_end: true,
            }
        );
        // Absent flags: zero / empty, the broker's defaults.
        let PushCommand::Create(args) =
            parse(&["create", "h", "--topic", "t", "--url", "http://x"]).unwrap()
        else {
            panic!("not create")
        };
        assert_eq!(
            create_request(&args),
            CreatePushRequest {
                name: "h".into(),
                topic: "t".into(),
                url: "http://x".into(),
                ..CreatePushRequest::default()
            }
        );
    }

    #[test]
    fn create_refuses_bad_values_before_connecting() {
        let base = ["create", "h", "--topic", "t", "--url", "https://x"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            kind(&v)
        };
        assert_eq!(
            kind(&["create", "a.b", "--topic", "t", "--url", "https://x"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["create", "h", "--topic", "t", "--url", "x.com"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["create", "h", "--topic", "t/x", "--url", "https://x"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["create", "h", "--url", "https://x"]),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(kind(&["create", "h", "--topic", "t"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(with(&["--secret", "whsec_AAAA"]), ErrorKind::ValueValidation);
        assert_eq!(with(&["--schedule", "5s,0s"]), ErrorKind::ValueValidation);
        assert_eq!(with(&["--max-attempts", "0"]), ErrorKind::ValueValidation);
        assert_eq!(with(&["--max-attempts", "101"]), ErrorKind::ValueValidation);
        assert_eq!(with(&["--concurrency", "0"]), ErrorKind::ValueValidation);
        assert_eq!(with(&["--concurrency", "1025"]), ErrorKind::ValueValidation);
        assert_eq!(with(&["--http-timeout", "10m"]), ErrorKind::ValueValidation);
        assert!(parse(&[&base[..], &["--max-attempts", "100", "--concurrency", "1024"]].concat())
            .is_ok());
    }

    #[test]
    fn simple_actions_parse() {
        for (word, action) in [
            ("pause", PushAction::Pause),
            ("resume", PushAction::Resume),
            ("delete", PushAction::Delete),
        ] {
            let name = match parse(&[word, "orders-hook"]).unwrap() {
                PushCommand::Pause { name } if action == PushAction::Pause => name,
                PushCommand::Resume { name } if action == PushAction::Resume => name,
                PushCommand::Delete { name } if action == PushAction::Delete => name,
                other => panic!("{word}: {other:?}"),
            };
            assert_eq!(name, "orders-hook");
            assert_eq!(
                alter_request("orders-hook", action),
                AlterPushRequest {
                    name: "orders-hook".into(),
                    action,
                    secret: String::new(),
                    grace_ms: 0
                }
            );
            assert_eq!(kind(&[word]), ErrorKind::MissingRequiredArgument);
            assert_eq!(kind(&[word, "a.b"]), ErrorKind::ValueValidation);
        }
        assert!(matches!(parse(&["list"]).unwrap(), PushCommand::List));
        match parse(&["describe", "h"]).unwrap() {
            PushCommand::Describe { name } => assert_eq!(name, "h"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rotate_flags_become_the_request() {
        let rotate = |extra: &[&str]| -> AlterPushRequest {
            let mut v = vec!["rotate-secret", "h"];
            v.extend_from_slice(extra);
            match parse(&v).unwrap() {
                PushCommand::RotateSecret(a) => rotate_request(&a),
                other => panic!("{other:?}"),
            }
        };
        let default = rotate(&[]);
        assert_eq!(default.action, PushAction::RotateSecret);
        assert_eq!((default.secret.as_str(), default.grace_ms), ("", 86_400_000));
        let given = rotate(&["--secret", &secret(24), "--grace", "1h"]);
        assert_eq!((given.secret, given.grace_ms), (secret(24), 3_600_000));
        // No grace: the wire's 0 would mean 24 h.
        assert_eq!(rotate(&["--grace", "0"]).grace_ms, GRACE_NONE_MS);
        assert_eq!(kind(&["rotate-secret", "h", "--grace", "8d"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["rotate-secret", "h", "--secret", "nope"]), ErrorKind::ValueValidation);
    }

    fn replay_args(extra: &[&str]) -> PushReplayArgs {
        let mut v = vec!["replay", "orders-hook"];
        v.extend_from_slice(extra);
        match parse(&v).unwrap() {
            PushCommand::Replay(a) => a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn replay_flags_become_the_request() {
        let r = replay_request(&replay_args(&["--all"]), NOW_MS).unwrap();
        assert_eq!((r.name.as_str(), r.since_ms, r.messages.len()), ("orders-hook", 0, 0));
        let r = replay_request(&replay_args(&["--since", "2h"]), NOW_MS).unwrap();
        assert_eq!((r.since_ms, r.messages.len()), (NOW_MS - 7_200_000, 0));
        let r = replay_request(&replay_args(&["--since", "1700000000123"]), NOW_MS).unwrap();
        assert_eq!(r.since_ms, 1_700_000_000_123);
        let args = replay_args(&[
            "--id",
            "orders-hook.3.42",
            "--id",
            "orders-hook.0.7,orders-hook.3.42",
            "--id",
            "orders-hook.0.10",
        ]);
        let r = replay_request(&args, NOW_MS).unwrap();
        assert_eq!((r.since_ms, r.messages), (0, vec![(0, 7), (0, 10), (3, 42)]));

        let err = replay_request(&replay_args(&["--id", "other-hook.0.1"]), NOW_MS).unwrap_err();
        assert_eq!(
            err,
            "webhook id other-hook.0.1 belongs to subscription \"other-hook\", not \"orders-hook\""
        );
    }

    #[test]
    fn replay_needs_exactly_one_selection() {
        assert_eq!(kind(&["replay", "h"]), ErrorKind::MissingRequiredArgument);
        assert_eq!(kind(&["replay", "h", "--all", "--since", "2h"]), ErrorKind::ArgumentConflict);
        assert_eq!(kind(&["replay", "h", "--all", "--id", "h.0.1"]), ErrorKind::ArgumentConflict);
        assert_eq!(
            kind(&["replay", "h", "--since", "2h", "--id", "h.0.1"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(kind(&["replay", "h", "--id", "h.0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["replay", "h", "--since", "later"]), ErrorKind::ValueValidation);
    }

    #[test]
    fn failed_flags() {
        match parse(&["failed", "h"]).unwrap() {
            PushCommand::Failed(a) => {
                assert_eq!((a.name.as_str(), a.since, a.limit), ("h", None, 1000))
            }
            other => panic!("{other:?}"),
        }
        match parse(&["failed", "h", "--since", "30m", "--limit", "5"]).unwrap() {
            PushCommand::Failed(a) => {
                assert_eq!((a.since, a.limit), (Some(Since::Ago(Duration::from_secs(1800))), 5));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(kind(&["failed", "h", "--limit", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["failed", "h", "--limit", "100001"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["failed", "h", "--since", "1d2h"]), ErrorKind::ValueValidation);
    }
}
