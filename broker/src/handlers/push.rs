//! Push-subscription requests from operators: create, list/describe, pause/resume/delete/
//! rotate, list failed messages, replay them. All on the leader; changes go through Raft.

use std::time::Duration;

use ferry_protocol::push::{
    validate_subscription_name, AlterPushRequest, CreatePushRequest, ListPushFailedRequest,
    ListPushFailedResponse, ListPushRequest, ListPushResponse, PushAction, PushDelivery,
    PushSubscription, ReplayPushRequest, ReplayPushResponse, SubscriptionStatus,
    DEFAULT_SCHEDULE_MS, SCHEDULE_STEPS_MAX, URL_BYTES_MAX,
};
use ferry_protocol::{Encode, ErrorCode};

use super::{err, rejected_or, Context, HandlerResult};
use crate::push::sign;
use crate::replication::ReplicaError;
use crate::state::command::{Command, CommandResponse};
use crate::state::push::{Alteration, PushCommand, SubRecord};

/// Shortest and longest retry delay accepted.
pub const SCHEDULE_STEP_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(7 * 24 * 3600);
/// Request timeouts accepted.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u32> = 100..=300_000;
/// Default request timeout.
pub const TIMEOUT_DEFAULT_MS: u32 = 15_000;
/// Concurrency accepted.
pub const CONCURRENCY_RANGE: std::ops::RangeInclusive<u32> = 1..=1024;
/// Default concurrency.
pub const CONCURRENCY_DEFAULT: u32 = 16;
/// Most attempts a subscription may ask for.
pub const ATTEMPTS_MAX: u32 = 100;
/// Longest grace period of an old secret.
pub const GRACE_MAX_MS: u64 = 7 * 24 * 3600 * 1000;
/// Default grace period of an old secret.
pub const GRACE_DEFAULT_MS: u64 = 24 * 3600 * 1000;
/// Most failed messages one listing returns.
const FAILED_PAGE_MAX: usize = 1000;
/// Failed messages replayed per command.
const REPLAY_PER_COMMAND: usize = 1000;

fn leader_only(ctx: &Context) -> Result<(), ReplicaError> {
    if ctx.replica.is_leader() {
        Ok(())
    } else {
        Err(ctx.replica.not_leader())
    }
}

fn invalid(message: impl Into<String>) -> ReplicaError {
    err(ErrorCode::InvalidArgument, message)
}

fn unknown(name: &str) -> ReplicaError {
    err(ErrorCode::UnknownSubscription, format!("unknown push subscription {name}"))
}

/// Checks an endpoint URL: absolute http(s), with a host, no credentials.
pub fn validate_url(url: &str) -> Result<(), String> {
    if url.len() > URL_BYTES_MAX {
        return Err(format!("url must be at most {URL_BYTES_MAX} bytes"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("url must be http or https, not {}", parsed.scheme()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("url has no host".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("url may not carry credentials (the requests are signed instead)".into());
    }
    Ok(())
}

/// The operator view of a subscription (`secret` and `partitions` only when asked for).
pub fn describe(
    ctx: &Context,
    sub: &SubRecord,
    with_secret: bool,
    with_partitions: bool,
) -> PushSubscription {
    let partitions = if with_partitions { crate::push::progress(ctx, sub) } else { Vec::new() };
    PushSubscription {
        name: sub.name.clone(),
        topic: sub.topic.clone(),
        url: sub.url.clone(),
        secret: if with_secret { sub.secret.clone() } else { String::new() },
        previous_secret_until_ms: if sub.previous_secret.is_empty() {
            0
        } else {
            sub.previous_secret_until_ms
        },
        schedule_ms: sub.schedule_ms.clone(),
        max_attempts: sub.max_attempts,
        timeout_ms: sub.timeout_ms,
        concurrency: sub.concurrency,
        status: sub.status,
        status_reason: sub.status_reason.clone(),
        status_ms: sub.status_ms,
        created_ms: sub.created_ms,
        retrying: sub.retrying,
        failed: sub.failed,
        partitions,
    }
}

/// `value`, or `default` when it is 0; a value outside `range` is refused.
fn or_default(
    value: u32,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
    what: &str,
    unit: &str,
) -> Result<u32, ReplicaError> {
    match value {
        0 => Ok(default),
        v if range.contains(&v) => Ok(v),
        v => Err(invalid(format!(
            "{what} {v}{unit} is outside {}..={}{unit}",
            range.start(),
            range.end()
        ))),
    }
}

fn secret_or_generated(secret: &str) -> Result<String, ReplicaError> {
    if secret.is_empty() {
        sign::generate_secret().map_err(|e| err(ErrorCode::Internal, e))
    } else {
        sign::secret_key(secret).map_err(invalid)?;
        Ok(secret.to_string())
    }
}

pub(crate) async fn create(ctx: &Context, req: CreatePushRequest) -> HandlerResult {
    leader_only(ctx)?;
    validate_subscription_name(&req.name).map_err(invalid)?;
    validate_url(&req.url).map_err(invalid)?;
    let schedule_ms =
        if req.schedule_ms.is_empty() { DEFAULT_SCHEDULE_MS.to_vec() } else { req.schedule_ms };
    if schedule_ms.len() > SCHEDULE_STEPS_MAX {
        return Err(invalid(format!("a schedule has at most {SCHEDULE_STEPS_MAX} steps")));
    }
    if let Some(bad) =
        schedule_ms.iter().find(|d| !SCHEDULE_STEP_RANGE.contains(&Duration::from_millis(**d)))
    {
        return Err(invalid(format!(
            "schedule step {bad} ms is outside {}..={} ms",
            SCHEDULE_STEP_RANGE.start().as_millis(),
            SCHEDULE_STEP_RANGE.end().as_millis()
        )));
    }
    let max_attempts = match req.max_attempts {
        0 => u32::try_from(schedule_ms.len() + 1).unwrap_or(ATTEMPTS_MAX).min(ATTEMPTS_MAX),
        n if n <= ATTEMPTS_MAX => n,
        n => return Err(invalid(format!("max attempts {n} is above {ATTEMPTS_MAX}"))),
    };
    let timeout_ms =
        or_default(req.timeout_ms, TIMEOUT_DEFAULT_MS, TIMEOUT_RANGE, "timeout", " ms")?;
    let concurrency =
        or_default(req.concurrency, CONCURRENCY_DEFAULT, CONCURRENCY_RANGE, "concurrency", "")?;
    let state = ctx.replica.state().clone();
    state.topics(std::slice::from_ref(&req.topic))?;
    if state.push_subscription(&req.name).is_some() {
        return Err(err(
            ErrorCode::SubscriptionExists,
            format!("push subscription {} already exists", req.name),
        ));
    }
    let now = ctx.config.clock.now_ms();
    let sub = SubRecord {
        id: 0,
        name: req.name.clone(),
        topic: req.topic,
        url: req.url,
        secret: secret_or_generated(&req.secret)?,
        previous_secret: String::new(),
        previous_secret_until_ms: 0,
        schedule_ms,
        max_attempts,
        timeout_ms,
        concurrency,
        status: SubscriptionStatus::Active,
        status_reason: String::new(),
        status_ms: now,
        created_ms: now,
        retrying: 0,
        failed: 0,
        cursors: Default::default(),
    };
    let command =
        Command::Push(PushCommand::Create { sub: Box::new(sub), start_at_end: req.start_at_end });
    rejected_or(ctx.replica.propose(command).await?)?;
    let sub = state.push_subscription(&req.name).ok_or_else(|| unknown(&req.name))?;
    tracing::info!(subscription = %req.name, topic = %sub.topic, url = %sub.url, "push subscription created");
    Ok(describe(ctx, &sub, true, true).to_bytes())
}

pub(crate) fn list(ctx: &Context, req: ListPushRequest) -> HandlerResult {
    leader_only(ctx)?;
    let state = ctx.replica.state();
    let subscriptions = if req.name.is_empty() {
        state.push_subscriptions().iter().map(|s| describe(ctx, s, false, false)).collect()
    } else {
        let sub = state.push_subscription(&req.name).ok_or_else(|| unknown(&req.name))?;
        vec![describe(ctx, &sub, false, true)]
    };
    Ok(ListPushResponse { subscriptions }.to_bytes())
}

pub(crate) async fn alter(ctx: &Context, req: AlterPushRequest) -> HandlerResult {
    leader_only(ctx)?;
    let state = ctx.replica.state().clone();
    let sub = state.push_subscription(&req.name).ok_or_else(|| unknown(&req.name))?;
    let now = ctx.config.clock.now_ms();
    let change = match req.action {
        PushAction::Pause => Alteration::Pause,
        PushAction::Resume => Alteration::Resume,
        PushAction::Delete => Alteration::Delete,
        PushAction::RotateSecret => {
            let grace = if req.grace_ms == 0 { GRACE_DEFAULT_MS } else { req.grace_ms };
            if grace > GRACE_MAX_MS {
                return Err(invalid(format!("grace {grace} ms is above {GRACE_MAX_MS} ms")));
            }
            let secret = secret_or_generated(&req.secret)?;
            if secret == sub.secret {
                return Err(invalid("the new secret is the current one"));
            }
            Alteration::Rotate { secret, until_ms: now.saturating_add(grace) }
        }
    };
    let command = Command::Push(PushCommand::Alter {
        name: req.name.clone(),
        sub_id: sub.id,
        stamped_ms: now,
        change,
    });
    rejected_or(ctx.replica.propose(command).await?)?;
    tracing::info!(subscription = %req.name, action = ?req.action, "push subscription changed");
    if req.action == PushAction::Delete {
        // The last view of what was deleted.
        return Ok(describe(ctx, &sub, false, false).to_bytes());
    }
    let after = state.push_subscription(&req.name).ok_or_else(|| unknown(&req.name))?;
    Ok(describe(ctx, &after, req.action == PushAction::RotateSecret, true).to_bytes())
}

/// Failed messages of `sub` after `after` (exclusive, `None`: from the start), failed at or
/// after `since_ms`, at most `limit`; and whether more follow.
fn failed_of(
    ctx: &Context,
    sub: &SubRecord,
    after: Option<(u32, u64)>,
    since_ms: u64,
    limit: usize,
) -> Result<(Vec<PushDelivery>, bool), ReplicaError> {
    const SCAN: usize = 1024;
    let state = ctx.replica.state();
    let mut from = match after {
        None => (0, 0),
        Some((p, o)) => match o.checked_add(1) {
            Some(o) => (p, o),
            None => (p.saturating_add(1), 0),
        },
    };
    let mut out = Vec::new();
    loop {
        let rows = state.push_deliveries(sub.id, from, None, SCAN)?;
        let full = rows.len() == SCAN;
        for (p, o, rec) in rows {
            from = (p, o.saturating_add(1));
            if rec.failed && rec.last_attempt_ms >= since_ms {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(PushDelivery {
                    partition: p,
                    offset: o,
                    failed: true,
                    attempts: rec.attempts,
                    next_attempt_ms: 0,
                    last_attempt_ms: rec.last_attempt_ms,
                    last_status: rec.last_status,
                    last_error: rec.last_error,
                });
            }
        }
        if !full {
            return Ok((out, false));
        }
    }
}

pub(crate) fn list_failed(ctx: &Context, req: ListPushFailedRequest) -> HandlerResult {
    leader_only(ctx)?;
    let sub = ctx.replica.state().push_subscription(&req.name).ok_or_else(|| unknown(&req.name))?;
    let limit = (req.limit as usize).clamp(1, FAILED_PAGE_MAX);
    let after = (!req.first).then_some(req.after);
    let (failed, more) = failed_of(ctx, &sub, after, req.since_ms, limit)?;
    Ok(ListPushFailedResponse { failed, more }.to_bytes())
}

pub(crate) async fn replay(ctx: &Context, req: ReplayPushRequest) -> HandlerResult {
    leader_only(ctx)?;
    let sub = ctx.replica.state().push_subscription(&req.name).ok_or_else(|| unknown(&req.name))?;
    let mut targets: Vec<(u32, u64)> = req.messages.clone();
    if targets.is_empty() {
        let mut after = None;
        loop {
            let (page, more) = failed_of(ctx, &sub, after, req.since_ms, FAILED_PAGE_MAX)?;
            after = page.last().map(|d| (d.partition, d.offset));
            targets.extend(page.iter().map(|d| (d.partition, d.offset)));
            if !more {
                break;
            }
        }
    }
    let mut replayed = 0u32;
    for chunk in targets.chunks(REPLAY_PER_COMMAND) {
        let command = Command::Push(PushCommand::Replay {
            name: req.name.clone(),
            sub_id: sub.id,
            stamped_ms: ctx.config.clock.now_ms(),
            messages: chunk.to_vec(),
        });
        match rejected_or(ctx.replica.propose(command).await?)? {
            CommandResponse::PushReplayed { replayed: n } => replayed += n,
            other => return Err(err(ErrorCode::Internal, format!("unexpected answer {other:?}"))),
        }
    }
    tracing::info!(subscription = %req.name, replayed, "push messages replayed");
    Ok(ReplayPushResponse { replayed }.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(validate_url("http://127.0.0.1:8080/hook").is_ok());
        assert!(validate_url("https://example.com/a?b=c").is_ok());
        assert!(validate_url("ftp://example.com/").is_err());
        assert!(validate_url("example.com/hook").is_err());
        assert!(validate_url("http://user:pw@example.com/").is_err());
        assert!(validate_url(&format!("http://e.com/{}", "a".repeat(URL_BYTES_MAX))).is_err());
    }
}
