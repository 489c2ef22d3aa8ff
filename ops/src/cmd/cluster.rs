//! `ferryctl cluster status|add-node|remove-node`: membership and per-node Raft state.
//!
//! Status talks to every member directly (not through the leader) so that a lagging or
//! partitioned node shows its own view, and a dead one shows as `unreachable`.

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use ferry_protocol::cluster::split_addrs;
use ferry_protocol::messages::{
    AddNodeRequest, NodeStatusRequest, NodeStatusResponse, RemoveNodeRequest,
};
use ferry_protocol::{ClientKind, ConnectOptions, Connection, NodeId};
use futures_util::future::join_all;
use serde::Serialize;

use crate::cmd::Context;
use crate::output::{print_json, print_text, Format, Table};

/// Longest wait for one node's status: a dead node must not stall the report.
const PROBE_TIMEOUT_MAX: Duration = Duration::from_secs(2);

/// Time allowed for a membership change: adding a node waits until it caught up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(60);

/// Role a leader reports.
const ROLE_LEADER: &str = "leader";

/// Role shown for a node that did not answer.
const ROLE_UNREACHABLE: &str = "unreachable";

/// The cluster as `cluster status` reports it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct StatusReport {
    /// The leader, when one is known.
    pub leader_id: Option<u64>,
    /// The leader's term (without a leader, the highest term seen).
    pub term: Option<u64>,
    /// Every member, by id.
    pub nodes: Vec<NodeReport>,
}

/// One member's line.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct NodeReport {
    /// Node id.
    pub id: u64,
    /// Its address.
    pub addr: String,
    /// `leader`, `follower`, `candidate`, `learner`, `shutdown` or `unreachable`.
    pub role: String,
    /// Voter (true) or learner (false), per the configuration; null if unknown.
    pub voter: Option<bool>,
    /// Its current term.
    pub term: Option<u64>,
    /// Last index in its log.
    pub last_log_index: Option<u64>,
    /// Last index it knows committed.
    pub commit_index: Option<u64>,
    /// Last index applied to its state machine.
    pub applied_index: Option<u64>,
    /// Entries it is behind the leader's log.
    pub lag: Option<u64>,
    /// Why it did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A member to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Address.
    pub addr: String,
    /// Voter or learner, if the configuration says.
    pub voter: Option<bool>,
}

/// Asks one node for its own status over a fresh connection.
async fn probe(addr: &str, options: &ConnectOptions) -> Result<NodeStatusResponse, String> {
    let conn = Connection::connect(addr, options).await.map_err(|e| e.to_string())?;
    conn.call_timeout(&NodeStatusRequest, options.request_timeout).await.map_err(|e| e.to_string())
}

/// `cluster status`.
///
/// The member list comes from the leader when one answers (a removed or partitioned node may
/// hold a stale configuration), else from the bootstrap node with the highest term.
///
/// # Errors
/// When no bootstrap node answers.
pub async fn status(ctx: &Context) -> anyhow::Result<()> {
    let mut options = ConnectOptions::new(crate::cmd::CLIENT_ID, ClientKind::Admin);
    let probe_timeout = ctx.timeout.min(PROBE_TIMEOUT_MAX);
    options.connect_timeout = probe_timeout;
    options.request_timeout = probe_timeout;

    let bootstrap = split_addrs(&ctx.bootstrap);
    let answers = join_all(bootstrap.iter().map(|addr| probe(addr, &options))).await;
    let mut seen: Vec<(String, Result<NodeStatusResponse, String>)> =
        bootstrap.into_iter().zip(answers).collect();
    let mut source = config_source(&seen).cloned().ok_or_else(|| {
        let failures: Vec<String> = seen
            .iter()
            .filter_map(|(addr, r)| r.as_ref().err().map(|e| format!("{addr}: {e}")))
            .collect();
        anyhow!("no bootstrap node answered ({})", failures.join("; "))
    })?;
    let mut members = members_of(&source);
    let mut statuses = probe_members(&members, &mut seen, &options).await;
    if source.role != ROLE_LEADER {
        // The source may hold a stale configuration (e.g. it was removed): when a member
        // leads, its member list wins.
        let leader = statuses
            .iter()
            .filter_map(|s| s.as_ref().ok())
            .filter(|s| s.role == ROLE_LEADER)
            .max_by_key(|s| s.term)
            .cloned();
        if let Some(leader) = leader {
            source = leader;
            let leader_members = members_of(&source);
            if leader_members != members {
                members = leader_members;
                statuses = probe_members(&members, &mut seen, &options).await;
            }
        }
    }
    let report = build_report(&members, statuses);
    match ctx.format {
        Format::Json => print_json(&report),
        Format::Text => print_text(&render_report(&report)),
    }
}

/// Every member's status, asking only those not asked yet (`seen` caches answers by address).
async fn probe_members(
    members: &[Member],
    seen: &mut Vec<(String, Result<NodeStatusResponse, String>)>,
    options: &ConnectOptions,
) -> Vec<Result<NodeStatusResponse, String>> {
    let missing: Vec<String> = members
        .iter()
        .filter(|m| !seen.iter().any(|(addr, _)| *addr == m.addr))
        .map(|m| m.addr.clone())
        .collect();
    let answers = join_all(missing.iter().map(|addr| probe(addr, options))).await;
    seen.extend(missing.into_iter().zip(answers));
    members
        .iter()
        .map(|m| {
            seen.iter()
                .find(|(addr, _)| *addr == m.addr)
                .map_or_else(|| Err("not asked".to_string()), |(_, r)| r.clone())
        })
        .collect()
}

/// The answer to take the member list from: a node that leads in the highest term, else the
/// node with the highest term and commit index.
fn config_source(
    answers: &[(String, Result<NodeStatusResponse, String>)],
) -> Option<&NodeStatusResponse> {
    let answered = answers.iter().filter_map(|(_, r)| r.as_ref().ok());
    answered.max_by_key(|s| (s.role == ROLE_LEADER, s.term, s.commit_index))
}

/// The configuration as `status`'s node sees it, including that node even when it is not
/// listed (e.g. not yet a member), sorted by id.
fn members_of(status: &NodeStatusResponse) -> Vec<Member> {
    let mut members: Vec<Member> = status
        .members
        .iter()
        .map(|m| Member { id: m.id.0, addr: m.addr.clone(), voter: Some(m.voter) })
        .collect();
    if !members.iter().any(|m| m.id == status.node_id.0) {
        members.push(Member { id: status.node_id.0, addr: status.addr.clone(), voter: None });
    }
    members.sort_by_key(|m| m.id);
    members
}

/// Combines each member's answer into the report: the leader is the node that says it leads
/// in the highest term (else the leader named by the node with the highest term); lag is the
/// leader's last log index minus each node's applied index (for a node that did not answer,
/// minus what the leader knows it has replicated there).
pub fn build_report(
    members: &[Member],
    statuses: Vec<Result<NodeStatusResponse, String>>,
) -> StatusReport {
    let answered: Vec<&NodeStatusResponse> =
        statuses.iter().filter_map(|s| s.as_ref().ok()).collect();
    let leader = answered.iter().filter(|s| s.role == ROLE_LEADER).max_by_key(|s| s.term).copied();
    // The leader's term; without a leader, the highest term any node reached.
    let term = leader.map(|l| l.term).or_else(|| answered.iter().map(|s| s.term).max());
    let leader_id = leader.map(|l| l.node_id.0).or_else(|| {
        answered
            .iter()
            .filter(|s| s.leader_id.is_some())
            .max_by_key(|s| s.term)
            .and_then(|s| s.leader_id.map(|id| id.0))
    });
    let leader_last = leader.map(|l| l.last_log_index);
    let matched = |id: u64| {
        leader
            .and_then(|l| l.members.iter().find(|m| m.id == NodeId(id)))
            .and_then(|m| m.matched_index)
    };
    let nodes = members
        .iter()
        .zip(&statuses)
        .map(|(member, status)| match status {
            Ok(s) => NodeReport {
                id: member.id,
                addr: member.addr.clone(),
                role: s.role.clone(),
                voter: member.voter,
                term: Some(s.term),
                last_log_index: Some(s.last_log_index),
                commit_index: Some(s.commit_index),
                applied_index: Some(s.applied_index),
                lag: leader_last.map(|last| last.saturating_sub(s.applied_index)),
                error: None,
            },
            Err(error) => NodeReport {
                id: member.id,
                addr: member.addr.clone(),
                role: ROLE_UNREACHABLE.into(),
                voter: member.voter,
                term: None,
                last_log_index: None,
                commit_index: None,
                applied_index: None,
                lag: leader_last
                    .zip(matched(member.id))
                    .map(|(last, matched)| last.saturating_sub(matched)),
                error: Some(error.clone()),
            },
        })
        .collect();
    StatusReport { leader_id, term, nodes }
}

fn render_report(report: &StatusReport) -> String {
    let dash = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    let mut text = match (report.leader_id, report.term) {
        (Some(id), Some(term)) => format!("leader: node {id} (term {term})\n"),
        (Some(id), None) => format!("leader: node {id}\n"),
        (None, _) => "leader: unknown\n".to_string(),
    };
    let mut table =
        Table::new(vec!["ID", "ADDR", "ROLE", "TERM", "LAST_LOG", "COMMIT", "APPLIED", "LAG"]);
    for n in &report.nodes {
        table.row(vec![
            n.id.to_string(),
            n.addr.clone(),
            n.role.clone(),
            dash(n.term),
            dash(n.last_log_index),
            dash(n.commit_index),
            dash(n.applied_index),
            dash(n.lag),
        ]);
    }
    text.push_str(&table.render());
    for n in &report.nodes {
        if let Some(error) = &n.error {
            text.push_str(&format!("node {} at {} did not answer: {error}\n", n.id, n.addr));
        }
    }
    text
}

/// A membership change in JSON output.
#[derive(Debug, Serialize)]
struct MembershipJson<'a> {
    action: &'a str,
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    addr: Option<&'a str>,
}

/// `cluster add-node ID HOST:PORT`.
///
/// # Errors
/// When the change is refused or the cluster is unreachable.
pub async fn add_node(ctx: &Context, id: u64, addr: &str) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let request = AddNodeRequest { node_id: NodeId(id), addr: addr.to_string() };
    client
        .call_timeout(&request, MEMBERSHIP_TIMEOUT.max(ctx.timeout))
        .await
        .with_context(|| format!("cannot add node {id} at {addr}"))?;
    match ctx.format {
        Format::Json => print_json(&MembershipJson { action: "added", id, addr: Some(addr) }),
        Format::Text => {
            print_text(&format!("added node {id} at {addr}: it caught up and is now a voter\n"))
        }
    }
}

/// `cluster remove-node ID`.
///
/// # Errors
/// When the change is refused or the cluster is unreachable.
pub async fn remove_node(ctx: &Context, id: u64) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let request = RemoveNodeRequest { node_id: NodeId(id) };
    client
        .call_timeout(&request, MEMBERSHIP_TIMEOUT.max(ctx.timeout))
        .await
        .with_context(|| format!("cannot remove node {id}"))?;
    match ctx.format {
        Format::Json => print_json(&MembershipJson { action: "removed", id, addr: None }),
        Format::Text => print_text(&format!("removed node {id} from the cluster\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_protocol::messages::MemberStatus;

    fn status(id: u64, role: &str, term: u64, last: u64, applied: u64) -> NodeStatusResponse {
        NodeStatusResponse {
            node_id: NodeId(id),
            addr: format!("h:{id}"),
            role: role.into(),
            term,
            leader_id: Some(NodeId(1)),
            last_log_index: last,
            commit_index: applied,
            applied_index: applied,
            members: (1..=3)
                .map(|m| MemberStatus {
                    id: NodeId(m),
                    addr: format!("h:{m}"),
                    voter: true,
                    matched_index: (role == "leader").then_some(90 + m),
                })
                .collect(),
        }
    }

    #[test]
    fn members_include_the_answering_node() {
        let mut s = status(4, "learner", 1, 0, 0);
        s.members.truncate(2);
        let ids: Vec<u64> = members_of(&s).iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![1, 2, 4]);
    }

    #[test]
    fn report_finds_leader_and_lag() {
        let leader = status(1, "leader", 5, 100, 100);
        let members = members_of(&leader);
        let report = build_report(
            &members,
            vec![Ok(leader), Ok(status(2, "follower", 5, 100, 97)), Err("refused".into())],
        );
        assert_eq!(report.leader_id, Some(1));
        assert_eq!(report.term, Some(5));
        let lags: Vec<Option<u64>> = report.nodes.iter().map(|n| n.lag).collect();
        assert_eq!(lags, vec![Some(0), Some(3), Some(7)], "node 3 from matched index 93");
        assert_eq!(report.nodes[2].role, "unreachable");
        assert_eq!(report.nodes[2].applied_index, None);

        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["leader_id"], 1);
        for field in ["id", "addr", "role", "term", "applied_index"] {
            assert!(json["nodes"][0].get(field).is_some(), "{field} missing");
        }
        let text = render_report(&report);
        assert!(text.starts_with("leader: node 1 (term 5)\nID "), "{text}");
        assert!(text.contains("did not answer: refused"));
    }

    #[test]
    fn member_list_comes_from_the_leader() {
        let answers = vec![
            ("h:1".to_string(), Ok(status(1, "candidate", 9, 10, 10))),
            ("h:2".to_string(), Ok(status(2, "leader", 5, 100, 100))),
            ("h:3".to_string(), Err("down".to_string())),
        ];
        assert_eq!(config_source(&answers).map(|s| s.node_id), Some(NodeId(2)));
        let followers = vec![
            ("h:1".to_string(), Ok(status(1, "follower", 4, 10, 10))),
            ("h:3".to_string(), Ok(status(3, "follower", 5, 10, 10))),
        ];
        assert_eq!(config_source(&followers).map(|s| s.node_id), Some(NodeId(3)));
        assert!(config_source(&[("h:1".to_string(), Err("down".to_string()))]).is_none());
    }

    #[test]
    fn report_without_a_reachable_leader() {
        let follower = status(2, "follower", 7, 50, 50);
        let members = members_of(&follower);
        let report =
            build_report(&members, vec![Err("down".into()), Ok(follower), Err("down".into())]);
        assert_eq!(report.leader_id, Some(1), "named by the follower");
        assert!(report.nodes.iter().all(|n| n.lag.is_none()));
    }
}
