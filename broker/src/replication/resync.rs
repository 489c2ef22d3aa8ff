//! Resync of a replica whose data was found damaged at start (`crate::recovery` moved the
//! damaged database aside and kept only the vote).
//!
//! Such a node may have acknowledged entries it no longer has. If it voted, a candidate that
//! lacks those entries could win with its vote and a committed write would be lost; if it
//! campaigned, it could lead with a hole in its log. So while resyncing it neither votes nor
//! campaigns, and only follows. It is caught up once it has applied the commit index a leader
//! reached in its own term: by leader completeness that covers every entry committed before
//! the damage. Then elections are enabled again and the marker file is removed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use openraft::raft::AppendEntriesRequest;

use super::TypeConfig;

/// No target yet: no leader has told us an own-term commit index.
const TARGET_UNKNOWN: u64 = u64::MAX;

pub(crate) struct Resync {
    active: AtomicBool,
    /// Applied index at which the resync is complete.
    target: AtomicU64,
    /// Present while resyncing, so a restart in the middle resumes the resync.
    marker: PathBuf,
}

impl Resync {
    pub(crate) fn new(active: bool, marker: PathBuf) -> Resync {
        Resync { active: AtomicBool::new(active), target: AtomicU64::new(TARGET_UNKNOWN), marker }
    }

    /// Whether this node is still resyncing (not voting, not campaigning).
    pub(crate) fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Learns the catch-up target from a leader's append: its commit index, once that index
    /// was committed in the leader's own term.
    pub(crate) fn observe_append(&self, req: &AppendEntriesRequest<TypeConfig>) {
        if !self.active() {
            return;
        }
        let Some(commit) = req.leader_commit else { return };
        let leader = req.vote.leader_id;
        if commit.leader_id.term == leader.term && commit.leader_id.node_id == leader.node_id {
            // The first such index is enough; later ones are only higher.
            let _ = self.target.compare_exchange(
                TARGET_UNKNOWN,
                commit.index,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// The catch-up target, once known.
    pub(crate) fn target(&self) -> Option<u64> {
        let t = self.target.load(Ordering::Acquire);
        (t != TARGET_UNKNOWN).then_some(t)
    }

    /// Ends the resync: removes the marker (durably) and lets the node vote again.
    pub(crate) fn finish(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Some(dir) = self.marker.parent() {
            crate::recovery::sync_dir(dir)?;
        }
        self.active.store(false, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, LogId, Vote};

    fn append(vote_term: u64, commit: Option<(u64, u64)>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(vote_term, 2),
            prev_log_id: None,
            leader_commit: commit
                .map(|(term, index)| LogId::new(CommittedLeaderId::new(term, 2), index)),
            entries: Vec::new(),
        }
    }

    #[test]
    fn the_target_is_the_first_commit_index_of_the_leaders_own_term() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("RESYNC");
        std::fs::write(&marker, b"x").unwrap();
        let resync = Resync::new(true, marker.clone());
        resync.observe_append(&append(5, None));
        resync.observe_append(&append(5, Some((4, 90))));
        assert_eq!(resync.target(), None, "a commit from an earlier term is no target");
        resync.observe_append(&append(5, Some((5, 120))));
        resync.observe_append(&append(5, Some((5, 130))));
        assert_eq!(resync.target(), Some(120));
        assert!(resync.active());
        resync.finish().unwrap();
        assert!(!resync.active());
        assert!(!marker.exists());
        // Finishing twice is harmless.
        resync.finish().unwrap();
    }

    #[test]
    fn an_inactive_resync_learns_nothing() {
        let resync = Resync::new(false, PathBuf::from("/nonexistent/RESYNC"));
        resync.observe_append(&append(5, Some((5, 10))));
        assert_eq!(resync.target(), None);
    }
}
