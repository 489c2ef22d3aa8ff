//! Order per key, as I/O-free decisions: which claimed rows a relay may publish now, in which
//! waves it sends them, and how long a failed row waits. The relay (in `relay.rs`) feeds these
//! with what the database said and acts on the answer.
//!
//! # Why rows of one key are published in id order, with any number of relays
//!
//! Terms: a row is *pending* until `published_at` is set. Relay R *holds* a row when the row's
//! `lease_owner` is R. Relay ids are unique among running relays (the default adds the pid and
//! a random suffix), and a relay runs one round at a time. At the end of a round it has marked,
//! released or recorded every row it claimed; a round cut short by an error leaves the relay
//! "dirty", and it releases every row it still holds before it claims again. So what R holds
//! during a round is exactly what that round claimed and still works on.
//!
//! The rule. After a claim, R asks the database, for each key K it claimed, for `b(K)`: the
//! smallest id of a pending row of K that R does not hold (another relay's, or nobody's — a
//! released row, a row waiting out a failure backoff, an expired lease). R publishes its rows
//! of K with an id below `b(K)`, in id order, and releases the others untouched.
//!
//! Safety. Take a row x of key K that R publishes, and any row y of K with y < x. At the check,
//! y was either published already, or pending and held by R (every pending row of K below
//! `b(K)` is R's, and x < `b(K)`). If R holds y, R publishes y before x: a round sends a key's
//! rows in id order, one wave after another, and starts the wave holding x only once the wave
//! holding y was acknowledged (with `in_flight_per_key` = 1, the default, each wave holds at
//! most one row of a key; see below for more). If y's publish fails, R stops K for the round
//! and x is not sent. So y is in the broker before x is sent.
//!
//! What R held at the check stays R's while R works: nobody else takes a row with a live lease,
//! and R renews its leases once a third of the lease has passed since the last renewal (also
//! while it waits for acknowledgements). A wave starts only after a renewal less than a third
//! of the lease ago (counted from before the statement was sent, so the database's clock is
//! ahead of ours, never behind); a failed renewal, or one that finds a row gone, ends the
//! round before the next wave. Rows of K from `b(K)` up are not R's concern: another relay
//! holding `b(K)` publishes it under the same rule.
//!
//! Liveness. For each key, the smallest pending row m has no pending row of its key below it,
//! so whoever holds m (or claims it next, claims being in id order) finds `b(K)` > m and may
//! publish it. Rows above m wait at most until m is published. A relay that had to release
//! blocked rows holds them off for [`BLOCKED_HOLD_OFF`], so it does not claim them again at
//! once while the relay holding the head of the key works.
//!
//! Two limits, documented for applications:
//! * Ids are assigned at insert and become visible at commit. If two transactions insert rows
//!   of the same key concurrently, the later id may commit first and be published first.
//!   Serialise writers of one aggregate (they normally update the aggregate's own row first,
//!   which does), or accept that concurrent writers of one key are concurrent.
//! * With `in_flight_per_key` > 1 a relay sends up to that many rows of a key before the first
//!   is acknowledged. The producer keeps their order in the partition, but if one fails after
//!   later ones were sent (e.g. the broker was unreachable past the retry deadline), the later
//!   ones may be stored before its retry. That is the price of the higher per-key rate.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::db::OutboxId;
use super::store::ClaimedRow;

/// How long a relay leaves rows it could not publish (an earlier row of their key is another
/// relay's) before anyone claims them again.
pub const BLOCKED_HOLD_OFF: Duration = Duration::from_millis(200);

/// Wait before the first retry of a row whose publish was rejected; doubles per attempt.
pub const FAILED_ROW_RETRY_MIN: Duration = Duration::from_secs(1);

/// Longest wait between retries of a rejected row.
pub const FAILED_ROW_RETRY_MAX: Duration = Duration::from_secs(300);

/// The distinct keys among `rows`, for the order check.
pub fn distinct_keys(rows: &[ClaimedRow]) -> Vec<&str> {
    let mut seen = HashSet::new();
    rows.iter().filter_map(|r| r.key.as_deref()).filter(|k| seen.insert(*k)).collect()
}

/// Splits claimed rows (in id order) into those R may publish now and those it must release:
/// a keyed row is blocked when its key has a blocker (`b(K)`) below its id.
pub fn split_blocked(
    rows: Vec<ClaimedRow>,
    blockers: &HashMap<String, OutboxId>,
) -> (Vec<ClaimedRow>, Vec<ClaimedRow>) {
    rows.into_iter().partition(|row| match row.key.as_deref().and_then(|k| blockers.get(k)) {
        Some(blocker) => row.id < *blocker,
        None => true,
    })
}

/// Groups publishable rows (in id order) into waves sent one after another: a keyed row goes
/// to wave `rank / in_flight_per_key`, where `rank` counts the earlier rows of its key in this
/// round; keyless rows all go to the first wave. Within a wave rows keep id order.
pub fn plan_waves(rows: Vec<ClaimedRow>, in_flight_per_key: usize) -> Vec<Vec<ClaimedRow>> {
    let per_key = in_flight_per_key.max(1);
    let mut ranks: HashMap<String, usize> = HashMap::new();
    let mut waves: Vec<Vec<ClaimedRow>> = Vec::new();
    for row in rows {
        let wave = match &row.key {
            Some(key) => {
                let rank = ranks.entry(key.clone()).or_insert(0);
                let wave = *rank / per_key;
                *rank += 1;
                wave
            }
            None => 0,
        };
        if waves.len() <= wave {
            waves.resize_with(wave + 1, Vec::new);
        }
        if let Some(w) = waves.get_mut(wave) {
            w.push(row);
        }
    }
    waves
}

/// How long a row waits before its next claim after its `attempts`-th rejected publish:
/// 1 s, 2 s, 4 s ... up to 5 minutes.
pub fn failed_row_retry(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    FAILED_ROW_RETRY_MIN.saturating_mul(1 << doublings).min(FAILED_ROW_RETRY_MAX)
}

/// Exponential backoff for the relay loop while the database or the broker fails.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles per failure, stays at or below `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { min, max, next: min }
    }

    /// The wait after one more failure.
    pub fn fail(&mut self) -> Duration {
        let wait = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        wait
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, key: Option<&str>) -> ClaimedRow {
        ClaimedRow {
            id: OutboxId(id),
            topic: "t".into(),
            key: key.map(str::to_string),
            headers: None,
            payload: Vec::new(),
            attempts: 0,
        }
    }

    fn ids(rows: &[ClaimedRow]) -> Vec<i64> {
        rows.iter().map(|r| r.id.0).collect()
    }

    #[test]
    fn rows_at_or_above_a_blocker_wait() {
        let rows = vec![row(1, Some("a")), row(2, Some("b")), row(3, Some("a")), row(5, None)];
        let blockers = HashMap::from([("a".to_string(), OutboxId(3)), ("b".into(), OutboxId(1))]);
        let (go, wait) = split_blocked(rows, &blockers);
        assert_eq!(ids(&go), vec![1, 5]);
        assert_eq!(ids(&wait), vec![2, 3]);
    }

    #[test]
    fn waves_send_one_row_per_key_at_a_time() {
        let rows = vec![
            row(1, Some("a")),
            row(2, None),
            row(3, Some("a")),
            row(4, Some("b")),
            row(5, Some("a")),
            row(6, None),
        ];
        let waves = plan_waves(rows.clone(), 1);
        let shape: Vec<Vec<i64>> = waves.iter().map(|w| ids(w)).collect();
        assert_eq!(shape, vec![vec![1, 2, 4, 6], vec![3], vec![5]]);
        let waves = plan_waves(rows, 2);
        let shape: Vec<Vec<i64>> = waves.iter().map(|w| ids(w)).collect();
        assert_eq!(shape, vec![vec![1, 2, 3, 4, 6], vec![5]]);
        assert!(plan_waves(Vec::new(), 1).is_empty());
    }

    #[test]
    fn distinct_keys_keep_first_seen_order() {
        let rows = vec![row(1, Some("b")), row(2, None), row(3, Some("a")), row(4, Some("b"))];
        assert_eq!(distinct_keys(&rows), vec!["b", "a"]);
    }

    #[test]
    fn retry_waits_grow_and_stop_growing() {
        assert_eq!(failed_row_retry(1), Duration::from_secs(1));
        assert_eq!(failed_row_retry(2), Duration::from_secs(2));
        assert_eq!(failed_row_retry(4), Duration::from_secs(8));
        assert_eq!(failed_row_retry(30), FAILED_ROW_RETRY_MAX);
        assert_eq!(failed_row_retry(u32::MAX), FAILED_ROW_RETRY_MAX);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let waits: Vec<u128> = (0..8).map(|_| b.fail().as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.fail(), Duration::from_millis(100));
    }
}
