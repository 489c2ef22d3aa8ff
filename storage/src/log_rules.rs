//! The rules a [`crate::LogStore::append`] must follow, shared by both implementations so they
//! accept and refuse exactly the same calls.

use bytes::Bytes;

use crate::{Result, StorageError};

/// Greatest index an entry may have. `u64::MAX` is reserved so that `last + 1` (the exclusive end
/// of a range delete of the whole tail) never overflows.
pub(crate) const INDEX_MAX: u64 = u64::MAX - 1;

/// The first and last index of a non-empty log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogSpan {
    pub(crate) first: u64,
    pub(crate) last: u64,
}

/// Checks that `entries` may be appended to a log whose current span is `span`, and returns the
/// span after the append (`span` itself for an empty slice).
///
/// Entries must be contiguous; on a non-empty log the first must be `last + 1`. An empty log
/// (never written, or emptied by a truncate or a purge) accepts any starting index: after a purge
/// past the end (snapshot installed) the next index is the snapshot's + 1, which only the caller
/// knows.
pub(crate) fn check_append(
    span: Option<LogSpan>,
    entries: &[(u64, Bytes)],
) -> Result<Option<LogSpan>> {
    let (Some(&(first_new, _)), Some(&(last_new, _))) = (entries.first(), entries.last()) else {
        return Ok(span);
    };
    if let Some(span) = span {
        if Some(first_new) != span.last.checked_add(1) {
            return Err(StorageError::Invalid(format!(
                "append at index {first_new} but the log ends at {}",
                span.last
            )));
        }
    }
    for pair in entries.windows(2) {
        if let [(a, _), (b, _)] = pair {
            if Some(*b) != a.checked_add(1) {
                return Err(StorageError::Invalid(format!(
                    "appended entries not contiguous: {a} followed by {b}"
                )));
            }
        }
    }
    if last_new > INDEX_MAX {
        return Err(StorageError::Invalid(format!("log index {last_new} is reserved")));
    }
    let first = span.map_or(first_new, |s| s.first);
    Ok(Some(LogSpan { first, last: last_new }))
}

/// The span left after deleting every index `>= index`.
pub(crate) fn span_after_truncate(span: Option<LogSpan>, index: u64) -> Option<LogSpan> {
    let span = span?;
    if index <= span.first {
        None
    } else if index > span.last {
        Some(span)
    } else {
        Some(LogSpan { first: span.first, last: index - 1 })
    }
}

/// The span left after deleting every index `<= index`.
pub(crate) fn span_after_purge(span: Option<LogSpan>, index: u64) -> Option<LogSpan> {
    let span = span?;
    if index < span.first {
        Some(span)
    } else if index >= span.last {
        None
    } else {
        Some(LogSpan { first: index + 1, last: span.last })
    }
}
