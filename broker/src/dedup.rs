//! Idempotent produce, leader side: forgets dedup entries once `dedup_window_ms` has passed
//! (`state::dedup` holds the entries and the apply-side decision).
//!
//! Called from the transaction coordinator's loop while this node leads and has applied its
//! predecessor's entries. It reads the expiry index up to `now - window` and proposes
//! `ExpireDedup` naming what it read; apply removes an entry only if its stamp is still the one
//! read, so a late proposal (a deposed leader's) never forgets a newer entry.

use crate::handlers::Context;
use crate::state::command::{Command, CommandResponse};

/// Most entries one `ExpireDedup` names (bounds the entry and the apply work).
pub const EXPIRE_ENTRIES_PER_COMMAND_MAX: usize = 4096;

/// Commands proposed per call at most; the rest waits for the next call.
const EXPIRE_COMMANDS_PER_CALL_MAX: usize = 16;

/// Where the leader's expiry scan resumes; reset when leadership changes.
#[derive(Debug, Default)]
pub struct ExpiryCursor {
    from_ms: u64,
}

impl ExpiryCursor {
    /// Starts over (a new term: the predecessor's progress is not known).
    pub fn reset(&mut self) {
        self.from_ms = 0;
    }
}

/// Proposes the expiry of every entry stamped before `now - window`, in bounded commands.
pub async fn expire(ctx: &Context, cursor: &mut ExpiryCursor) -> Result<(), String> {
    let now = ferry_protocol::now_ms();
    let window_ms = u64::try_from(ctx.config.dedup_window.as_millis()).unwrap_or(u64::MAX);
    let before_ms = now.saturating_sub(window_ms);
    for _ in 0..EXPIRE_COMMANDS_PER_CALL_MAX {
        let state = ctx.replica.state().clone();
        let from_ms = cursor.from_ms;
        let entries = tokio::task::spawn_blocking(move || {
            state.expired_dedup_entries(from_ms, before_ms, EXPIRE_ENTRIES_PER_COMMAND_MAX)
        })
        .await
        .map_err(|e| format!("dedup expiry scan panicked: {e}"))?
        .map_err(|e| format!("dedup expiry scan failed: {e}"))?;
        let Some(&(_, last_stamp)) = entries.last() else {
            return Ok(());
        };
        let n = entries.len();
        let command = Command::ExpireDedup { entries };
        match ctx.replica.propose(command).await.map_err(|e| e.message)? {
            CommandResponse::Done => {}
            CommandResponse::Rejected { code, message } => {
                return Err(format!("dedup expiry refused: {code:?}: {message}"))
            }
            other => return Err(format!("unexpected dedup expiry result {other:?}")),
        }
        ctx.metrics.dedup_expired.inc_by(n as u64);
        // Entries sharing the last stamp may remain past the limit: resume at that stamp.
        cursor.from_ms = last_stamp;
        if n < EXPIRE_ENTRIES_PER_COMMAND_MAX {
            return Ok(());
        }
    }
    Ok(())
}
