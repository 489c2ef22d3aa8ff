//! `ferryctl txn list|show|commit|rollback|stats`: the operator's view of transactional (half)
//! messages, and operator decisions, through the leader.
//!
//! A decision never flips: once a transaction is committed or rolled back it stays so. The broker
//! answers a repeated decision with `repeated = true` (nothing changed) and refuses the other
//! decision with `TransactionAlreadyResolved`, which this module turns into an error naming the
//! state, so the command exits non-zero.
//!
//! Ages and "next check" times compare the leader's clock (stamped in the transaction) with this
//! machine's clock, so they are off by any skew between the two; `--older-than` is evaluated by
//! the leader, on its own clock. How one transaction is rendered lives in [`view`].

mod view;

use anyhow::{anyhow, bail, Context as _};
use ferry_protocol::txn::{
    EndTransactionRequest, EndTransactionResponse, GroupTxnStats, ListTransactionsRequest,
    ListTransactionsResponse, TransactionStatsRequest, TransactionStatsResponse, TxnInfo,
};
use ferry_protocol::{
    now_ms, ClientError, ClusterClient, Decision, DecisionOrigin, ErrorCode, TxnId, TxnState,
};
use serde::Serialize;

use self::view::{age, render_list, render_show, TxnJson};
use crate::cli::TxnListArgs;
use crate::cmd::Context;
use crate::duration::format_span;
use crate::output::{format_timestamp_ms, print_json, print_text, Format, Table};

/// Rows asked for in one `ListTransactions` page (the broker may cap it lower).
const PAGE_ROWS_MAX: u32 = 1000;

// ---------------------------------------------------------------------------------------------
// Errors

/// The sentence for an id the broker does not know.
fn not_found(id: TxnId) -> anyhow::Error {
    anyhow!("transaction {id} not found (never existed, or purged after the retention period)")
}

/// Turns the broker's transaction errors into sentences; other errors get `what` (a verb such
/// as "commit") as context.
fn txn_error(error: ClientError, id: TxnId, what: &str) -> anyhow::Error {
    match &error {
        ClientError::Server { code: ErrorCode::UnknownTransaction, .. } => not_found(id),
        ClientError::Server { code: ErrorCode::TransactionAlreadyResolved, txn_state, .. } => {
            match txn_state {
                Some(state) => {
                    anyhow!("transaction {id} is already {state}; a decision never changes")
                }
                None => anyhow!(
                    "transaction {id} was already decided the other way; a decision never changes"
                ),
            }
        }
        _ => anyhow::Error::new(error).context(format!("cannot {what} transaction {id}")),
    }
}

// ---------------------------------------------------------------------------------------------
// list

/// Walks `ListTransactions` pages by cursor until `rows_max` rows or the last page. I/O-free:
/// the caller sends what [`Pager::next_page_rows`] asks for and feeds the answer back.
#[derive(Debug)]
struct Pager {
    rows_max: usize,
    rows: Vec<TxnInfo>,
    /// Cursor for the next page (exclusive).
    after: TxnId,
    /// Id of the last row seen, to check the broker's ordering.
    last: TxnId,
    finished: bool,
    /// More rows may match than were kept.
    more: bool,
}

impl Pager {
    fn new(rows_max: u32) -> Pager {
        Pager {
            rows_max: usize::try_from(rows_max).unwrap_or(usize::MAX),
            rows: Vec::new(),
            after: TxnId(0),
            last: TxnId(0),
            finished: false,
            more: false,
        }
    }

    /// The rows to ask for in the next page, or `None` when done.
    fn next_page_rows(&self) -> Option<u32> {
        if self.finished {
            return None;
        }
        let left = self.rows_max.saturating_sub(self.rows.len());
        Some(u32::try_from(left).unwrap_or(u32::MAX).min(PAGE_ROWS_MAX))
    }

    /// Takes one page.
    ///
    /// # Errors
    /// When the broker breaks the paging contract (rows out of id order, or a cursor that does
    /// not advance, which would loop for ever).
    fn on_page(&mut self, page: ListTransactionsResponse) -> anyhow::Result<()> {
        for txn in page.txns {
            let floor = self.last.max(self.after);
            if txn.txn_id <= floor {
                bail!(
                    "the broker listed transaction {} after {floor}: out of order; try again",
                    txn.txn_id
                );
            }
            self.last = txn.txn_id;
            if self.rows.len() < self.rows_max {
                self.rows.push(txn);
            } else {
                self.more = true;
            }
        }
        match page.next {
            None => self.finished = true,
            Some(next) if next <= self.after => {
                bail!(
                    "the broker's list cursor did not advance (after {}, next {next})",
                    self.after
                )
            }
            Some(next) => {
                self.after = next;
                if self.rows.len() >= self.rows_max {
                    self.more = true;
                    self.finished = true;
                }
            }
        }
        Ok(())
    }
}

/// `txn list`.
///
/// # Errors
/// When the cluster is unreachable or the broker refuses the request.
pub async fn list(ctx: &Context, args: &TxnListArgs) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let older_than_ms =
        args.older_than.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut pager = Pager::new(args.limit);
    while let Some(limit) = pager.next_page_rows() {
        let request = ListTransactionsRequest {
            txn_id: None,
            group: args.group.clone().unwrap_or_default(),
            parked_only: args.parked,
            include_decided: args.all,
            older_than_ms,
            after: pager.after,
            limit,
            with_payload: false,
        };
        let page = client.call(&request).await.context("cannot list transactions")?;
        pager.on_page(page)?;
    }
    let now = now_ms();
    let printed = match ctx.format {
        Format::Json => {
            let rows: Vec<TxnJson> =
                pager.rows.iter().map(|t| TxnJson::new(t, now, false)).collect();
            print_json(&rows)
        }
        Format::Text if pager.rows.is_empty() => {
            print_text(if args.all { "no transactions\n" } else { "no open transactions\n" })
        }
        Format::Text => print_text(&render_list(&pager.rows, now)),
    };
    // After the rows, so it is the last thing on a terminal; on stderr, so JSON stays clean.
    if printed.is_ok() && pager.more {
        eprintln!(
            "note: showing the first {} transactions; more may match (raise --limit)",
            pager.rows.len()
        );
    }
    printed
}

// ---------------------------------------------------------------------------------------------
// show

/// Asks the leader for one transaction, in any state.
async fn lookup(
    client: &ClusterClient,
    id: TxnId,
    with_payload: bool,
) -> Result<Option<TxnInfo>, ClientError> {
    let request = ListTransactionsRequest {
        txn_id: Some(id),
        include_decided: true,
        limit: 1,
        with_payload,
        ..ListTransactionsRequest::default()
    };
    let page = client.call(&request).await?;
    Ok(page.txns.into_iter().find(|t| t.txn_id == id))
}

/// `txn show ID [--payload]`.
///
/// # Errors
/// When the transaction is unknown or the cluster is unreachable.
pub async fn show(ctx: &Context, id: TxnId, with_payload: bool) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let info = lookup(&client, id, with_payload)
        .await
        .map_err(|e| txn_error(e, id, "look up"))?
        .ok_or_else(|| not_found(id))?;
    let now = now_ms();
    match ctx.format {
        Format::Json => print_json(&TxnJson::new(&info, now, with_payload)),
        Format::Text => print_text(&render_show(&info, now, with_payload)),
    }
}

// ---------------------------------------------------------------------------------------------
// commit / rollback

/// What an operator decision did, for output.
#[derive(Debug, Serialize, PartialEq, Eq)]
struct DecisionOutcome {
    txn_id: u64,
    /// `commit` or `rollback`.
    decision: &'static str,
    /// The state now: `committed` or `rolled_back`.
    #[serde(serialize_with = "serialize_state")]
    state: TxnState,
    /// True when the same decision had been taken before: nothing changed.
    repeated: bool,
    /// Where the message goes (when the lookup before the decision found it).
    topic: Option<String>,
    partition: Option<u32>,
    /// Base offset of the committed message's batch.
    offset: Option<u64>,
}

impl DecisionOutcome {
    /// Checks the broker's answer fits the decision.
    ///
    /// # Errors
    /// When the answer's state is not the one the decision leads to.
    fn new(
        id: TxnId,
        decision: Decision,
        response: &EndTransactionResponse,
        before: Option<&TxnInfo>,
    ) -> anyhow::Result<DecisionOutcome> {
        let (name, expected) = match decision {
            Decision::Commit => ("commit", TxnState::Committed),
            Decision::Rollback => ("rollback", TxnState::RolledBack),
            Decision::Unknown => bail!("an operator can only commit or roll back"),
        };
        if response.state != expected {
            bail!(
                "unexpected answer from the broker: transaction {id} is {} after {name}",
                response.state
            );
        }
        Ok(DecisionOutcome {
            txn_id: id.0,
            decision: name,
            state: response.state,
            repeated: response.repeated,
            topic: before.map(|t| t.topic.clone()),
            partition: before.map(|t| t.partition.0),
            offset: response.offset.map(|o| o.0),
        })
    }

    /// One sentence for people.
    fn sentence(&self) -> String {
        let id = self.txn_id;
        let at = match (&self.topic, self.partition, self.offset) {
            (Some(topic), Some(partition), Some(offset)) => {
                format!(" at {topic}/{partition} offset {offset}")
            }
            (_, _, Some(offset)) => format!(" at offset {offset}"),
            _ => String::new(),
        };
        match (self.state == TxnState::Committed, self.repeated) {
            (true, false) => format!("transaction {id} committed{at}"),
            (true, true) => format!("transaction {id} already committed{at} (no change)"),
            (false, false) => {
                format!("transaction {id} rolled back; its message will never be visible")
            }
            (false, true) => format!("transaction {id} already rolled back (no change)"),
        }
    }
}

/// A state in JSON as its short name (`rolled_back`).
fn serialize_state<S: serde::Serializer>(state: &TxnState, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(state.name())
}

/// The warning for an operator deciding a transaction its producer may still decide.
fn pending_warning(info: &TxnInfo, decision: Decision) -> Option<String> {
    if info.state != TxnState::Pending {
        return None;
    }
    let id = info.txn_id;
    match decision {
        Decision::Rollback => Some(format!(
            "transaction {id} is pending, not parked: its producer may still decide it, and a \
             commit from it will then fail; rolling back anyway"
        )),
        Decision::Commit => Some(format!(
            "transaction {id} is pending, not parked: its producer may still decide it, and a \
             rollback from it will then fail with the message already visible; committing anyway"
        )),
        Decision::Unknown => None,
    }
}

/// `txn commit ID`.
///
/// # Errors
/// When the transaction is unknown, already rolled back, or the cluster is unreachable.
pub async fn commit(ctx: &Context, id: TxnId) -> anyhow::Result<()> {
    decide(ctx, id, Decision::Commit).await
}

/// `txn rollback ID`.
///
/// # Errors
/// When the transaction is unknown, already committed, or the cluster is unreachable.
pub async fn rollback(ctx: &Context, id: TxnId) -> anyhow::Result<()> {
    decide(ctx, id, Decision::Rollback).await
}

async fn decide(ctx: &Context, id: TxnId, decision: Decision) -> anyhow::Result<()> {
    let verb = if decision == Decision::Commit { "commit" } else { "roll back" };
    let client = ctx.cluster_client()?;
    // Looked up first only for the warning and the topic/partition in the answer, so any
    // failure here is left to the decision itself to report — except an unreachable cluster,
    // which would only make the operator wait twice.
    let before = match lookup(&client, id, false).await {
        Ok(info) => info,
        Err(e @ ClientError::Unreachable { .. }) => return Err(txn_error(e, id, verb)),
        Err(_) => None,
    };
    if let Some(warning) = before.as_ref().and_then(|info| pending_warning(info, decision)) {
        eprintln!("warning: {warning}");
    }
    let request = EndTransactionRequest { txn_id: id, decision, origin: DecisionOrigin::Operator };
    // If an attempt's answer is lost and the client retries, the retry reports `repeated`:
    // the decision is idempotent, so "no change" may then mean "done by this command".
    let response = client.call(&request).await.map_err(|e| txn_error(e, id, verb))?;
    let outcome = DecisionOutcome::new(id, decision, &response, before.as_ref())?;
    match ctx.format {
        Format::Json => print_json(&outcome),
        Format::Text => print_text(&format!("{}\n", outcome.sentence())),
    }
}

// ---------------------------------------------------------------------------------------------
// stats

/// `txn stats` in JSON output.
#[derive(Debug, Serialize)]
struct StatsJson<'a> {
    /// `created_ms` of the oldest open (pending or parked) transaction; null when none is open.
    oldest_open_ms: Option<u64>,
    /// Its age by this machine's clock.
    oldest_open_age_ms: Option<u64>,
    groups: &'a [GroupTxnStatsJson<'a>],
}

#[derive(Debug, Serialize)]
struct GroupTxnStatsJson<'a> {
    group: &'a str,
    pending: u64,
    parked: u64,
    committed: u64,
    rolled_back: u64,
}

impl<'a> GroupTxnStatsJson<'a> {
    fn new(g: &'a GroupTxnStats) -> Self {
        GroupTxnStatsJson {
            group: &g.group,
            pending: g.pending,
            parked: g.parked,
            committed: g.committed,
            rolled_back: g.rolled_back,
        }
    }
}

fn render_stats(stats: &TransactionStatsResponse, now_ms: u64) -> String {
    let mut text = if stats.oldest_open_ms == 0 {
        "oldest open transaction: none open\n".to_string()
    } else {
        format!(
            "oldest open transaction: {} old (created {})\n",
            format_span(age(stats.oldest_open_ms, now_ms)),
            format_timestamp_ms(stats.oldest_open_ms)
        )
    };
    if stats.groups.is_empty() {
        text.push_str("no producer group has sent a transaction\n");
        return text;
    }
    let mut table = Table::new(vec!["GROUP", "PENDING", "PARKED", "COMMITTED", "ROLLED_BACK"]);
    for g in &stats.groups {
        table.row(vec![
            g.group.clone(),
            g.pending.to_string(),
            g.parked.to_string(),
            g.committed.to_string(),
            g.rolled_back.to_string(),
        ]);
    }
    text.push_str(&table.render());
    text
}

/// `txn stats`.
///
/// # Errors
/// When the cluster is unreachable.
pub async fn stats(ctx: &Context) -> anyhow::Result<()> {
    let client = ctx.cluster_client()?;
    let stats = client
        .call(&TransactionStatsRequest)
        .await
        .context("cannot read transaction statistics")?;
    let now = now_ms();
    match ctx.format {
        Format::Json => {
            let groups: Vec<GroupTxnStatsJson> =
                stats.groups.iter().map(GroupTxnStatsJson::new).collect();
            let open = (stats.oldest_open_ms != 0).then_some(stats.oldest_open_ms);
            print_json(&StatsJson {
                oldest_open_ms: open,
                oldest_open_age_ms: open.map(|ms| now.saturating_sub(ms)),
                groups: &groups,
            })
        }
        Format::Text => print_text(&render_stats(&stats, now)),
    }
}

#[cfg(test)]
#[cfg(test)]
mod tests {
    use super::view::tests::{info, NOW_MS};
    use super::*;
    use ferry_protocol::Offset;

    fn server_error(code: ErrorCode, txn_state: Option<TxnState>) -> ClientError {
        ClientError::Server { code, message: "m".into(), leader: None, txn_state }
    }

    fn page(ids: &[u64], next: Option<u64>) -> ListTransactionsResponse {
        ListTransactionsResponse {
            txns: ids.iter().map(|&id| info(id, TxnState::Pending)).collect(),
            next: next.map(TxnId),
        }
    }

    #[test]
    fn errors_read_as_sentences() {
        let id = TxnId(42);
        let e = txn_error(server_error(ErrorCode::UnknownTransaction, None), id, "commit");
        assert_eq!(
            crate::error_line(&e),
            "transaction 42 not found (never existed, or purged after the retention period)"
        );
        let e = txn_error(
            server_error(ErrorCode::TransactionAlreadyResolved, Some(TxnState::RolledBack)),
            id,
            "commit",
        );
        assert_eq!(
            crate::error_line(&e),
            "transaction 42 is already rolled_back; a decision never changes"
        );
        let e = txn_error(server_error(ErrorCode::TransactionAlreadyResolved, None), id, "commit");
        assert!(crate::error_line(&e).contains("a decision never changes"));
        let e = txn_error(server_error(ErrorCode::Internal, None), id, "roll back");
        assert_eq!(
            crate::error_line(&e),
            "cannot roll back transaction 42: internal server error: m"
        );
    }

    #[test]
    fn decision_outcomes() {
        let before = info(42, TxnState::Parked);
        let committed = EndTransactionResponse {
            state: TxnState::Committed,
            repeated: false,
            offset: Some(Offset(17)),
        };
        let o =
            DecisionOutcome::new(TxnId(42), Decision::Commit, &committed, Some(&before)).unwrap();
        assert_eq!(o.sentence(), "transaction 42 committed at orders/2 offset 17");
        let again = EndTransactionResponse { repeated: true, ..committed };
        let o = DecisionOutcome::new(TxnId(42), Decision::Commit, &again, None).unwrap();
        assert_eq!(o.sentence(), "transaction 42 already committed at offset 17 (no change)");
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!((v["state"].as_str(), v["repeated"].as_bool()), (Some("committed"), Some(true)));

        let rolled =
            EndTransactionResponse { state: TxnState::RolledBack, repeated: true, offset: None };
        let o = DecisionOutcome::new(TxnId(42), Decision::Rollback, &rolled, None).unwrap();
        assert_eq!(o.sentence(), "transaction 42 already rolled back (no change)");
        let o = DecisionOutcome::new(
            TxnId(42),
            Decision::Rollback,
            &EndTransactionResponse { repeated: false, ..rolled },
            None,
        )
        .unwrap();
        assert!(o.sentence().starts_with("transaction 42 rolled back"));

        // A broker answering a commit with another state breaks the contract.
        assert!(DecisionOutcome::new(TxnId(42), Decision::Commit, &rolled, None).is_err());
    }

    #[test]
    fn only_pending_transactions_warn() {
        let pending = info(5, TxnState::Pending);
        let warning = pending_warning(&pending, Decision::Rollback).unwrap();
        assert!(warning.contains("producer may still decide"), "{warning}");
        assert!(pending_warning(&pending, Decision::Commit).is_some());
        assert!(pending_warning(&info(5, TxnState::Parked), Decision::Rollback).is_none());
        assert!(pending_warning(&info(5, TxnState::Committed), Decision::Rollback).is_none());
    }

    #[test]
    fn pager_follows_the_cursor_until_the_limit() {
        let mut pager = Pager::new(5);
        assert_eq!(pager.next_page_rows(), Some(5));
        pager.on_page(page(&[1, 2, 3], Some(3))).unwrap();
        assert_eq!((pager.next_page_rows(), pager.after), (Some(2), TxnId(3)));
        // An empty page that moves the cursor is fine (the broker scanned and found nothing).
        pager.on_page(page(&[], Some(10))).unwrap();
        pager.on_page(page(&[11, 12], Some(12))).unwrap();
        assert_eq!(pager.next_page_rows(), None);
        assert!(pager.more, "a next cursor at the limit means more may match");
        let ids: Vec<u64> = pager.rows.iter().map(|t| t.txn_id.0).collect();
        assert_eq!(ids, vec![1, 2, 3, 11, 12]);

        let mut pager = Pager::new(100);
        pager.on_page(page(&[4, 8], None)).unwrap();
        assert_eq!(pager.next_page_rows(), None);
        assert!(!pager.more);

        let mut pager = Pager::new(2);
        pager.on_page(page(&[1, 2, 3], None)).unwrap();
        assert_eq!(pager.rows.len(), 2);
        assert!(pager.more, "the broker sent more than asked");

        let big = Pager::new(100_000);
        assert_eq!(big.next_page_rows(), Some(PAGE_ROWS_MAX));
    }

    #[test]
    fn pager_refuses_a_broken_cursor() {
        let mut pager = Pager::new(100);
        pager.on_page(page(&[1], Some(5))).unwrap();
        assert!(pager.on_page(page(&[], Some(5))).is_err(), "a cursor that stays would loop");
        let mut pager = Pager::new(100);
        pager.on_page(page(&[3], Some(3))).unwrap();
        assert!(pager.on_page(page(&[2], None)).is_err(), "rows out of order");
    }

    #[test]
    fn stats_render() {
        let stats = TransactionStatsResponse {
            oldest_open_ms: NOW_MS - 303_000,
            groups: vec![GroupTxnStats {
                group: "payments".into(),
                pending: 3,
                parked: 1,
                committed: 1200,
                rolled_back: 17,
            }],
        };
        assert_eq!(
            render_stats(&stats, NOW_MS),
            "oldest open transaction: 5m03s old (created 2023-11-14T22:08:17.000Z)\n\
             GROUP     PENDING  PARKED  COMMITTED  ROLLED_BACK\n\
             payments  3        1       1200       17\n"
        );
        let empty = TransactionStatsResponse::default();
        assert_eq!(
            render_stats(&empty, NOW_MS),
            "oldest open transaction: none open\nno producer group has sent a transaction\n"
        );
    }
}
