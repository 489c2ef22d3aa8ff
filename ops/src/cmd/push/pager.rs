//! Walking a subscription's failed messages page by page (`ListPushFailed`, by (partition,
//! offset) cursor), for `push failed`. I/O-free, so the paging contract is tested without a
//! broker.

use anyhow::bail;
use ferry_protocol::push::{ListPushFailedRequest, ListPushFailedResponse, PushDelivery};

/// Rows asked for in one `ListPushFailed` page (the broker may cap it lower).
const FAILED_PAGE_ROWS_MAX: u32 = 1000;

/// Walks `ListPushFailed` pages by (partition, offset) cursor until `rows_max` rows or the
/// last page. I/O-free: the caller sends what [`FailedPager::next_request`] returns and feeds
/// the answer back.
#[derive(Debug)]
pub(super) struct FailedPager {
    name: String,
    since_ms: u64,
    rows_max: usize,
    /// The failed messages taken, in (partition, offset) order.
    pub(super) rows: Vec<PushDelivery>,
    /// Position of the last row taken; `None` before the first page.
    after: Option<(u32, u64)>,
    finished: bool,
    /// More failed messages follow the rows kept.
    pub(super) more: bool,
}

impl FailedPager {
    pub(super) fn new(name: &str, since_ms: u64, rows_max: u32) -> FailedPager {
        FailedPager {
            name: name.to_string(),
            since_ms,
            rows_max: usize::try_from(rows_max).unwrap_or(usize::MAX),
            rows: Vec::new(),
            after: None,
            finished: false,
            more: false,
        }
    }

    /// The next page to ask for, or `None` when done.
    pub(super) fn next_request(&self) -> Option<ListPushFailedRequest> {
        if self.finished {
            return None;
        }
        let left = self.rows_max.saturating_sub(self.rows.len());
        Some(ListPushFailedRequest {
            name: self.name.clone(),
            since_ms: self.since_ms,
            after: self.after.unwrap_or((0, 0)),
            first: self.after.is_none(),
            limit: u32::try_from(left).unwrap_or(u32::MAX).min(FAILED_PAGE_ROWS_MAX),
        })
    }

    /// Takes one page.
    ///
    /// # Errors
    /// When the broker breaks the paging contract: rows out of (partition, offset) order, or
    /// an empty page that says more follow (asking again would loop for ever).
    pub(super) fn on_page(&mut self, page: ListPushFailedResponse) -> anyhow::Result<()> {
        if page.failed.is_empty() && page.more {
            bail!("the broker sent an empty page of failed messages but said more follow");
        }
        for d in page.failed {
            let position = (d.partition, d.offset);
            if let Some(after) = self.after.filter(|after| position <= *after) {
                bail!(
                    "the broker listed failed message {}/{} after {}/{}: out of order; try again",
                    d.partition,
                    d.offset,
                    after.0,
                    after.1
                );
            }
            if self.rows.len() >= self.rows_max {
                self.more = true;
                self.finished = true;
                return Ok(());
            }
            self.after = Some(position);
            self.rows.push(d);
        }
        if !page.more {
            self.finished = true;
        } else if self.rows.len() >= self.rows_max {
            self.more = true;
            self.finished = true;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(partition: u32, offset: u64) -> PushDelivery {
        PushDelivery {
            partition,
            offset,
            failed: true,
            attempts: 3,
            next_attempt_ms: 0,
            last_attempt_ms: 1,
            last_status: 500,
            last_error: "HTTP 500".into(),
        }
    }

    fn page(rows: &[(u32, u64)], more: bool) -> ListPushFailedResponse {
        ListPushFailedResponse {
            failed: rows.iter().map(|(p, o)| delivery(*p, *o)).collect(),
            more,
        }
    }

    fn positions(pager: &FailedPager) -> Vec<(u32, u64)> {
        pager.rows.iter().map(|d| (d.partition, d.offset)).collect()
    }

    #[test]
    fn pager_walks_pages_by_cursor() {
        let mut pager = FailedPager::new("h", 42, 1000);
        let first = pager.next_request().unwrap();
        assert_eq!(
            first,
            ListPushFailedRequest {
                name: "h".into(),
                since_ms: 42,
                after: (0, 0),
                first: true,
                limit: FAILED_PAGE_ROWS_MAX,
            }
        );
        pager.on_page(page(&[(0, 5), (0, 9), (2, 1)], true)).unwrap();
        let second = pager.next_request().unwrap();
        assert_eq!((second.after, second.first, second.since_ms), ((2, 1), false, 42));
        pager.on_page(page(&[(2, 2), (3, 0)], false)).unwrap();
        assert_eq!(pager.next_request(), None);
        assert_eq!(positions(&pager), vec![(0, 5), (0, 9), (2, 1), (2, 2), (3, 0)]);
        assert!(!pager.more);
    }

    #[test]
    fn pager_stops_at_the_limit() {
        let mut pager = FailedPager::new("h", 0, 3);
        assert_eq!(pager.next_request().unwrap().limit, 3);
        pager.on_page(page(&[(0, 1), (0, 2)], true)).unwrap();
        assert_eq!(pager.next_request().unwrap().limit, 1);
        pager.on_page(page(&[(0, 3)], true)).unwrap();
        assert_eq!(pager.next_request(), None);
        assert!(pager.more, "the broker said more follow");
        assert_eq!(positions(&pager), vec![(0, 1), (0, 2), (0, 3)]);

        // A broker sending more than asked: the rows past the limit are dropped, and counted
        // as "more".
        let mut pager = FailedPager::new("h", 0, 2);
        pager.on_page(page(&[(0, 1), (0, 2), (0, 3)], false)).unwrap();
        assert_eq!((positions(&pager).len(), pager.more, pager.next_request()), (2, true, None));

        // Exactly the limit, and nothing after it.
        let mut pager = FailedPager::new("h", 0, 2);
        pager.on_page(page(&[(0, 1), (0, 2)], false)).unwrap();
        assert_eq!((pager.more, pager.next_request()), (false, None));
    }

    #[test]
    fn pager_refuses_a_broken_contract() {
        let mut pager = FailedPager::new("h", 0, 100);
        pager.on_page(page(&[(1, 5)], true)).unwrap();
        let err = pager.on_page(page(&[(1, 5)], true)).unwrap_err().to_string();
        assert!(err.contains("out of order"), "{err}");
        let mut pager = FailedPager::new("h", 0, 100);
        let err = pager.on_page(page(&[(1, 5), (0, 9)], false)).unwrap_err().to_string();
        assert!(err.contains("failed message 0/9 after 1/5"), "{err}");
        let mut pager = FailedPager::new("h", 0, 100);
        let err = pager.on_page(page(&[], true)).unwrap_err().to_string();
        assert!(err.contains("empty page"), "{err}");
    }
}
