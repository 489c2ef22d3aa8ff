//! Consumer-group membership and partition assignment, leader side ([`GroupCoordinator`]), and
//! the loop that expires silent members and publishes group metrics ([`run_group_monitor`]).
//!
//! Membership lives in the leader's memory only: members heartbeat to the leader, and after a
//! leader change they heartbeat to the new one with the member id and the partitions they hold,
//! which rebuilds the picture within one heartbeat interval. What must survive — the committed
//! positions — goes through Raft (`CommitOffsets`).
//!
//! Assignment is sticky and balanced: every member gets `partitions / members` partitions, the
//! first `partitions % members` (by how many they hold now, then by id) one more; a member
//! keeps what it holds up to its quota and the rest is spread over the members below theirs.
//! A partition is granted to its new member only once no other member holds it (reports it
//! owned, or was granted it and has not heartbeated since): two live members never read one
//! partition at the same time, and a revoked member first settles its in-flight work and
//! commits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_protocol::group::{
    parse_retry_topic, GroupHeartbeatRequest, GroupHeartbeatResponse, MemberInfo,
};
use ferry_protocol::PartitionIndex;
use tokio_util::sync::CancellationToken;

use crate::handlers::Context;

/// Shortest session timeout a member may ask for.
pub const SESSION_TIMEOUT_MIN: Duration = Duration::from_secs(1);
/// Longest session timeout a member may ask for.
pub const SESSION_TIMEOUT_MAX: Duration = Duration::from_secs(300);
/// How often the monitor expires members and refreshes the group metrics.
pub const MONITOR_TICK: Duration = Duration::from_millis(500);

struct Member {
    client_id: String,
    session_timeout: Duration,
    last_seen: Instant,
    /// Partitions the member reported holding.
    owned: BTreeSet<u32>,
    /// Partitions granted in the last answer.
    granted: BTreeSet<u32>,
    in_flight: u32,
}

impl Member {
    fn holds(&self, p: u32) -> bool {
        self.owned.contains(&p) || self.granted.contains(&p)
    }
}

#[derive(Default)]
struct Group {
    generation: u64,
    partitions: u32,
    members: BTreeMap<String, Member>,
}

impl Group {
    /// The member each partition should go to (sticky, balanced).
    fn target(&self) -> Vec<Option<&str>> {
        let n = self.partitions as usize;
        let mut target: Vec<Option<&str>> = vec![None; n];
        let m = self.members.len();
        if m == 0 {
            return target;
        }
        // Quotas: members holding more now get the larger quotas, so fewer partitions move.
        let mut order: Vec<(&str, &Member)> =
            self.members.iter().map(|(id, mem)| (id.as_str(), mem)).collect();
        order.sort_by(|a, b| b.1.owned.len().cmp(&a.1.owned.len()).then(a.0.cmp(b.0)));
        let mut quota: HashMap<&str, usize> = order
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, n / m + usize::from(i < n % m)))
            .collect();
        // Keep what members hold, up to their quota (first holder by id wins a double claim).
        for (id, member) in &self.members {
            for &p in &member.owned {
                let Some(slot) = target.get_mut(p as usize) else { continue };
                let left = quota.get_mut(id.as_str()).expect("every member has a quota");
                if slot.is_none() && *left > 0 {
                    *slot = Some(id.as_str());
                    *left -= 1;
                }
            }
        }
        // The rest to the members below their quota, in order.
        for slot in target.iter_mut().filter(|s| s.is_none()) {
            let Some((id, _)) = order.iter().find(|(id, _)| quota[id] > 0) else { break };
            *slot = Some(*id);
            *quota.get_mut(id).expect("quota") -= 1;
        }
        target
    }

    /// Partitions `member_id` may read now.
    fn grants(&self, member_id: &str) -> BTreeSet<u32> {
        self.target()
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == Some(member_id))
            .map(|(p, _)| p as u32)
            .filter(|p| self.members.iter().all(|(id, m)| id == member_id || !m.holds(*p)))
            .collect()
    }

    /// Drops members silent past their session timeout; true when any was dropped.
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.members.len();
        self.members.retain(|id, m| {
            let alive = now.saturating_duration_since(m.last_seen) <= m.session_timeout;
            if !alive {
                tracing::info!(member = %id, "group member timed out");
            }
            alive
        });
        let dropped = self.members.len() != before;
        if dropped {
            self.generation += 1;
        }
        dropped
    }
}

/// Why a member may not commit a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHolder {
    /// The leader does not know the member.
    UnknownMember,
    /// The member does not hold the partition.
    NotAssigned,
}

/// Live group members by (group, topic), on the leader.
#[derive(Default)]
pub struct GroupCoordinator {
    groups: Mutex<HashMap<(String, String), Group>>,
    next_member: AtomicU64,
}

/// What the monitor publishes about one group.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupLive {
    /// Topics its members read.
    pub topics: BTreeSet<String>,
    /// Live members.
    pub members: u32,
    /// Unsettled deliveries they reported.
    pub in_flight: u64,
}

impl GroupCoordinator {
    fn lock(&self) -> MutexGuard<'_, HashMap<(String, String), Group>> {
        self.groups.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a heartbeat (a join when `member_id` is empty; an unknown id joins with that
    /// id, as after a leader change) and answers with the member's grants. `partitions` is
    /// the topic's partition count; `node_id` makes new member ids unique across leaders.
    pub fn heartbeat(
        &self,
        req: &GroupHeartbeatRequest,
        partitions: u32,
        node_id: u64,
        now: Instant,
    ) -> GroupHeartbeatResponse {
        let mut groups = self.lock();
        let group = groups.entry((req.group.clone(), req.topic.clone())).or_default();
        group.expire(now);
        if group.partitions != partitions {
            group.partitions = partitions;
            group.generation += 1;
        }
        let member_id = if req.member_id.is_empty() {
            let n = self.next_member.fetch_add(1, Ordering::Relaxed);
            format!("{}-{node_id}-{:x}-{n}", req.client_id, ferry_protocol::now_ms())
        } else {
            req.member_id.clone()
        };
        let session_timeout = Duration::from_millis(u64::from(req.session_timeout_ms))
            .clamp(SESSION_TIMEOUT_MIN, SESSION_TIMEOUT_MAX);
        let owned: BTreeSet<u32> = req.owned.iter().map(|p| p.0).collect();
        match group.members.get_mut(&member_id) {
            Some(m) => {
                m.last_seen = now;
                m.session_timeout = session_timeout;
                m.owned = owned;
                m.in_flight = req.in_flight;
            }
            None => {
                tracing::info!(member = %member_id, group = %req.group, topic = %req.topic, "group member joined");
                group.members.insert(
                    member_id.clone(),
                    Member {
                        client_id: req.client_id.clone(),
                        session_timeout,
                        last_seen: now,
                        owned,
                        granted: BTreeSet::new(),
                        in_flight: req.in_flight,
                    },
                );
                group.generation += 1;
            }
        }
        let grants = group.grants(&member_id);
        if let Some(m) = group.members.get_mut(&member_id) {
            m.granted = grants.clone();
        }
        GroupHeartbeatResponse {
            member_id,
            generation: group.generation,
            partitions,
            assigned: grants.into_iter().map(PartitionIndex).collect(),
        }
    }

    /// Removes a member at once; false when it was not known.
    pub fn leave(&self, group: &str, topic: &str, member_id: &str) -> bool {
        let mut groups = self.lock();
        let Some(g) = groups.get_mut(&(group.to_string(), topic.to_string())) else {
            return false;
        };
        let known = g.members.remove(member_id).is_some();
        if known {
            g.generation += 1;
            tracing::info!(member = %member_id, group, topic, "group member left");
        }
        known
    }

    /// Whether `member_id` of `group` reading `topic` holds partition `partition` of `of_topic`
    /// (the topic itself or its retry topic).
    pub fn check_holder(
        &self,
        group: &str,
        topic: &str,
        member_id: &str,
        partition: u32,
    ) -> Result<(), NotHolder> {
        let groups = self.lock();
        let member = groups
            .get(&(group.to_string(), topic.to_string()))
            .and_then(|g| g.members.get(member_id))
            .ok_or(NotHolder::UnknownMember)?;
        if member.holds(partition) {
            Ok(())
        } else {
            Err(NotHolder::NotAssigned)
        }
    }

    /// Live members of `group`, over all its topics.
    pub fn live_members(&self, group: &str, now: Instant) -> usize {
        let mut groups = self.lock();
        groups
            .iter_mut()
            .filter(|((g, _), _)| g == group)
            .map(|(_, state)| {
                state.expire(now);
                state.members.len()
            })
            .sum()
    }

    /// The live members of `group` and the highest generation among its topics.
    pub fn describe(&self, group: &str, now: Instant) -> (u64, Vec<MemberInfo>) {
        let mut groups = self.lock();
        let mut generation = 0;
        let mut members = Vec::new();
        for ((g, topic), state) in groups.iter_mut() {
            if g != group {
                continue;
            }
            state.expire(now);
            generation = generation.max(state.generation);
            for (id, m) in &state.members {
                members.push(MemberInfo {
                    member_id: id.clone(),
                    client_id: m.client_id.clone(),
                    topic: topic.clone(),
                    assigned: m.granted.iter().copied().map(PartitionIndex).collect(),
                    owned: m.owned.iter().copied().map(PartitionIndex).collect(),
                    in_flight: m.in_flight,
                    last_seen_ms_ago: u32::try_from(
                        now.saturating_duration_since(m.last_seen).as_millis(),
                    )
                    .unwrap_or(u32::MAX),
                });
            }
        }
        members.sort_by(|a, b| (&a.topic, &a.member_id).cmp(&(&b.topic, &b.member_id)));
        (generation, members)
    }

    /// Expires silent members and summarizes every group with live members.
    pub fn sweep(&self, now: Instant) -> BTreeMap<String, GroupLive> {
        let mut groups = self.lock();
        let mut out: BTreeMap<String, GroupLive> = BTreeMap::new();
        groups.retain(|(group, topic), state| {
            state.expire(now);
            if state.members.is_empty() {
                return false;
            }
            let live = out.entry(group.clone()).or_default();
            live.topics.insert(topic.clone());
            live.members += u32::try_from(state.members.len()).unwrap_or(u32::MAX);
            live.in_flight += state.members.values().map(|m| u64::from(m.in_flight)).sum::<u64>();
            true
        });
        out
    }

    /// Forgets everything (this node stopped leading; members move to the new leader).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

/// Every `MONITOR_TICK`: on the leader, expire silent members and publish members, in-flight
/// deliveries and lag per group; elsewhere, forget membership and publish nothing.
pub async fn run_group_monitor(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(MONITOR_TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut published: BTreeSet<(String, String)> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        if !ctx.replica.is_leader() {
            ctx.groups.clear();
            ctx.metrics.groups.forget(&mut published, &BTreeSet::new());
            continue;
        }
        let live = ctx.groups.sweep(Instant::now());
        let state = ctx.replica.state().clone();
        let lags = tokio::task::spawn_blocking(move || group_lags(&state)).await;
        let lags = match lags {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "group lag not computed");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "group lag task failed");
                continue;
            }
        };
        let mut now_published = BTreeSet::new();
        for (group, l) in &live {
            ctx.metrics.groups.set_live(group, l.members, l.in_flight);
            now_published.insert((group.clone(), String::new()));
        }
        for ((group, topic), lag) in &lags {
            ctx.metrics.groups.set_lag(group, topic, *lag);
            now_published.insert((group.clone(), topic.clone()));
        }
        ctx.metrics.groups.forget(&mut published, &now_published);
        published = now_published;
    }
}

/// Lag per (group, topic) from the committed positions: messages between each position and
/// its partition's high watermark. Retry topics are reported under the topic they retry, so
/// the lag counts redeliveries due too.
pub fn group_lags(
    state: &crate::state::SharedState,
) -> Result<BTreeMap<(String, String), u64>, crate::state::StateError> {
    let mut out = BTreeMap::new();
    for (group, offsets) in state.all_committed_offsets()? {
        let mut topics: BTreeSet<String> = offsets.iter().map(|o| o.topic.clone()).collect();
        let names: Vec<String> = std::mem::take(&mut topics).into_iter().collect();
        let metadata = state.topics(&names).unwrap_or_default();
        for o in &offsets {
            let Some(t) = metadata.iter().find(|t| t.name == o.topic) else { continue };
            let Some(p) = t.partitions.get(o.partition as usize) else { continue };
            let from = o.offset.max(p.log_start.0);
            let lag = p.high_watermark.0.saturating_sub(from);
            let label = match parse_retry_topic(&o.topic) {
                Some((g, origin)) if g == group => origin.to_string(),
                _ => o.topic.clone(),
            };
            *out.entry((group.clone(), label)).or_insert(0) += lag;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(member: &str, owned: &[u32]) -> GroupHeartbeatRequest {
        GroupHeartbeatRequest {
            group: "g".into(),
            topic: "t".into(),
            member_id: member.into(),
            client_id: "c".into(),
            session_timeout_ms: 3000,
            owned: owned.iter().copied().map(PartitionIndex).collect(),
            in_flight: 0,
        }
    }

    fn parts(r: &GroupHeartbeatResponse) -> Vec<u32> {
        r.assigned.iter().map(|p| p.0).collect()
    }

    #[test]
    fn one_member_gets_everything_then_shares_only_after_releasing() {
        let c = GroupCoordinator::default();
        let t0 = Instant::now();
        let a = c.heartbeat(&hb("", &[]), 4, 1, t0);
        assert_eq!(parts(&a), vec![0, 1, 2, 3]);
        let a_id = a.member_id.clone();
        let a = c.heartbeat(&hb(&a_id, &[0, 1, 2, 3]), 4, 1, t0);
        assert_eq!(parts(&a), vec![0, 1, 2, 3]);

        // B joins: nothing yet, A still holds everything.
        let b = c.heartbeat(&hb("", &[]), 4, 1, t0);
        let b_id = b.member_id.clone();
        assert_ne!(a_id, b_id);
        assert!(parts(&b).is_empty());
        // A is told to give up two partitions; until it reports them released, B waits.
        let a = c.heartbeat(&hb(&a_id, &[0, 1, 2, 3]), 4, 1, t0);
        assert_eq!(parts(&a).len(), 2);
        let kept: Vec<u32> = parts(&a);
        assert!(parts(&c.heartbeat(&hb(&b_id, &[]), 4, 1, t0)).is_empty());
        assert_eq!(c.check_holder("g", "t", &b_id, 3), Err(NotHolder::NotAssigned));
        // A releases.
        c.heartbeat(&hb(&a_id, &kept), 4, 1, t0);
        let b = c.heartbeat(&hb(&b_id, &[]), 4, 1, t0);
        let mut all: Vec<u32> = kept.iter().chain(parts(&b).iter()).copied().collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3], "every partition has exactly one reader");
        assert_eq!(parts(&b).len(), 2);
        assert!(c.check_holder("g", "t", &b_id, parts(&b)[0]).is_ok(), "granted counts");
        assert_eq!(c.check_holder("g", "t", "nobody", 0), Err(NotHolder::UnknownMember));
    }

    #[test]
    fn a_silent_member_times_out_and_a_leaver_is_gone_at_once() {
        let c = GroupCoordinator::default();
        let t0 = Instant::now();
        let a = c.heartbeat(&hb("a", &[]), 3, 1, t0);
        c.heartbeat(&hb("a", &parts(&a)), 3, 1, t0);
        let b = c.heartbeat(&hb("b", &[]), 3, 1, t0);
        assert!(parts(&b).is_empty());
        // A stays silent past its 3 s session: B gets everything.
        let later = t0 + Duration::from_millis(3500);
        let b = c.heartbeat(&hb("b", &[]), 3, 1, later);
        assert_eq!(parts(&b), vec![0, 1, 2]);
        assert_eq!(c.live_members("g", later), 1);
        assert!(c.leave("g", "t", "b"));
        assert!(!c.leave("g", "t", "b"));
        assert_eq!(c.live_members("g", later), 0);
        assert!(c.sweep(later).is_empty());
    }

    #[test]
    fn assignment_is_balanced_and_sticky() {
        let c = GroupCoordinator::default();
        let t0 = Instant::now();
        // Three members settle on 10 partitions.
        let ids = ["m1", "m2", "m3"];
        let mut owned: BTreeMap<&str, Vec<u32>> = ids.iter().map(|id| (*id, vec![])).collect();
        for _ in 0..4 {
            for id in ids {
                let r = c.heartbeat(&hb(id, &owned[id]), 10, 1, t0);
                owned.insert(id, parts(&r));
            }
        }
        let mut sizes: Vec<usize> = owned.values().map(Vec::len).collect();
        sizes.sort_unstable();
        assert_eq!(sizes, vec![3, 3, 4]);
        let mut all: Vec<u32> = owned.values().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        // m3 leaves: m1 and m2 keep what they had and split m3's partitions.
        let before: BTreeMap<&str, Vec<u32>> = owned.clone();
        c.leave("g", "t", "m3");
        for _ in 0..2 {
            for id in ["m1", "m2"] {
                let r = c.heartbeat(&hb(id, &owned[id]), 10, 1, t0);
                owned.insert(id, parts(&r));
            }
        }
        for id in ["m1", "m2"] {
            assert!(before[id].iter().all(|p| owned[id].contains(p)), "{id} kept its own");
            assert_eq!(owned[id].len(), 5);
        }
    }

    #[test]
    fn a_double_claim_after_failover_is_resolved_before_anyone_reads() {
        let c = GroupCoordinator::default();
        let t0 = Instant::now();
        // A new leader hears from two members that both claim partition 0.
        let a = c.heartbeat(&hb("a", &[0]), 2, 2, t0);
        let b = c.heartbeat(&hb("b", &[0, 1]), 2, 2, t0);
        assert!(!parts(&b).contains(&0), "b may not keep 0 while a claims it");
        let a_parts = parts(&a);
        assert!(
            !(a_parts.contains(&0) && parts(&b).contains(&0)),
            "never both: a {a_parts:?} b {:?}",
            parts(&b)
        );
    }
}
