//! Opening a node's data at start, and what happens when it is damaged.
//!
//! The store is opened (a damaged WAL record fails the open) and, unless
//! `verify_data_on_start = false`, read in full with checksums verified. Damaged data is never
//! served, voted or led with. Instead:
//!
//! 1. the vote is salvaged from the damaged database (so the node never votes twice in a term);
//! 2. a fresh database holding only that vote is written beside it (`db.new`);
//! 3. the marker file `RESYNC` is written: from here on a restart resumes the resync;
//! 4. the damaged database (and snapshots) move to `damaged-<unix ms>/` for inspection (only
//!    the newest such directory is kept), and `db.new` becomes `db`.
//!
//! The replica then starts in resync mode (`replication::resync`): it follows the leader,
//! which sends it the whole log, and votes again once caught up. A crash between any two
//! steps repeats or finishes them on the next start.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use ferry_storage::rocks::RocksStore;
use ferry_storage::{LogStore, StorageError};

/// Name of the marker file present while a resync is under way.
pub const RESYNC_MARKER: &str = "RESYNC";
/// Prefix of the directory the damaged data is moved to.
pub const DAMAGED_PREFIX: &str = "damaged-";

/// The opened store and whether the replica must resync.
pub struct Opened {
    /// The store to run on.
    pub store: RocksStore,
    /// Its data was damaged (or a resync was under way): resync from the leader.
    pub resync: bool,
}

/// Path of the resync marker in `data_dir`.
pub fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(RESYNC_MARKER)
}

/// Opens `data_dir/db`, verifying it when `verify`; replaces it by an empty store that keeps
/// the vote when it is damaged and `other_replicas` can resend it. Blocking.
///
/// # Errors
/// The store cannot be opened for another reason than damage (e.g. another process holds
/// it); it is damaged and there is no other replica to resync from (nothing is moved); or
/// the damaged data cannot be moved aside.
pub fn open_store(data_dir: &Path, verify: bool, other_replicas: bool) -> anyhow::Result<Opened> {
    let db = data_dir.join("db");
    let fresh = data_dir.join("db.new");
    finish_interrupted_swap(&db, &fresh)?;
    let damage = match RocksStore::open(&db) {
        Ok(store) => match verify.then(|| verify_store(&store)) {
            Some(Err(StorageError::Corrupt { what, detail })) => format!("{what}: {detail}"),
            Some(Err(e)) => return Err(e).context("cannot verify the store"),
            None | Some(Ok(())) => {
                let resync = marker_path(data_dir).exists();
                if resync {
                    tracing::warn!("a resync from the leader was under way; resuming it");
                }
                return Ok(Opened { store, resync });
            }
        },
        Err(StorageError::Corrupt { what, detail }) => format!("{what}: {detail}"),
        Err(e) => return Err(e).with_context(|| format!("cannot open store in {}", db.display())),
    };
    if !other_replicas {
        anyhow::bail!(
            "the data in {} is damaged ({damage}) and this single-node broker has no other \
             replica to resync from; restore it from a backup, or move it away to start empty",
            db.display()
        );
    }
    tracing::error!(damage = %damage, "the data of this node is damaged; it will resync from the leader");
    let store = replace_damaged(data_dir, &db, &fresh)?;
    Ok(Opened { store, resync: true })
}

fn verify_store(store: &RocksStore) -> Result<(), StorageError> {
    let started = Instant::now();
    let report = store.verify()?;
    tracing::info!(
        keys = report.keys,
        mib = report.bytes / (1 << 20),
        seconds = started.elapsed().as_secs_f64(),
        "store verified"
    );
    Ok(())
}

/// A crash after `db` moved aside but before `db.new` took its place leaves only `db.new`;
/// one before the move may leave a stale `db.new`.
fn finish_interrupted_swap(db: &Path, fresh: &Path) -> anyhow::Result<()> {
    if !fresh.exists() {
        return Ok(());
    }
    if db.exists() {
        std::fs::remove_dir_all(fresh)
            .with_context(|| format!("cannot remove {}", fresh.display()))?;
    } else {
        std::fs::rename(fresh, db).with_context(|| format!("cannot rename {}", fresh.display()))?;
    }
    Ok(())
}

fn replace_damaged(data_dir: &Path, db: &Path, fresh: &Path) -> anyhow::Result<RocksStore> {
    let vote = match RocksStore::salvage_vote(db) {
        Ok(vote) => vote,
        Err(e) => {
            tracing::error!(error = %e, "the vote is unreadable too; the node votes again only after catching up with a leader");
            None
        }
    };
    {
        let store = RocksStore::open(fresh)
            .with_context(|| format!("cannot create {}", fresh.display()))?;
        if let Some(vote) = &vote {
            store.save_meta(ferry_storage::MetaKey::Vote, vote)?;
        }
    }
    write_synced(&marker_path(data_dir), b"data damaged; resyncing from the leader\n")?;
    let now_ms = ferry_protocol::now_ms();
    let aside = data_dir.join(format!("{DAMAGED_PREFIX}{now_ms}"));
    std::fs::create_dir_all(&aside)?;
    std::fs::rename(db, aside.join("db"))
        .with_context(|| format!("cannot move {} aside", db.display()))?;
    let snapshots = data_dir.join("snapshots");
    if snapshots.exists() {
        std::fs::rename(&snapshots, aside.join("snapshots"))?;
    }
    std::fs::rename(fresh, db).with_context(|| format!("cannot rename {}", fresh.display()))?;
    sync_dir(data_dir)?;
    remove_older_damaged(data_dir, &aside);
    tracing::warn!(moved_to = %aside.display(), vote_kept = vote.is_some(), "damaged data moved aside");
    Ok(RocksStore::open(db)?)
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file =
        std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes renames, creations and removals in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Keeps only the newest copy of damaged data (each is a whole database).
fn remove_older_damaged(data_dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_damaged = entry.file_name().to_string_lossy().starts_with(DAMAGED_PREFIX);
        if is_damaged && path != keep {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove older damaged data");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn damage_wal(db: &Path) {
        let wal = std::fs::read_dir(db)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .unwrap();
        let mut bytes = std::fs::read(&wal).unwrap();
        let middle = bytes.len() / 2;
        for b in &mut bytes[middle..middle + 32] {
            *b ^= 0x5A;
        }
        std::fs::write(&wal, bytes).unwrap();
    }

    #[test]
    fn damaged_data_is_moved_aside_keeping_the_vote_and_a_restart_resumes_the_resync() {
        let dir = tempfile::tempdir().unwrap();
        {
            let opened = open_store(dir.path(), true, true).unwrap();
            assert!(!opened.resync);
            let entries: Vec<(u64, Bytes)> =
                (1..=300u64).map(|i| (i, Bytes::from(vec![i as u8; 300]))).collect();
            opened.store.append(&entries).unwrap();
            opened.store.save_meta(ferry_storage::MetaKey::Vote, b"vote-3").unwrap();
        }
        damage_wal(&dir.path().join("db"));
        {
            let opened = open_store(dir.path(), true, true).unwrap();
            assert!(opened.resync);
            assert_eq!(opened.store.last_index().unwrap(), None, "nothing damaged is kept");
            let vote = opened.store.read_meta(ferry_storage::MetaKey::Vote).unwrap();
            assert_eq!(vote.as_deref(), Some(&b"vote-3"[..]));
            assert!(marker_path(dir.path()).exists());
            let aside: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with(DAMAGED_PREFIX))
                .collect();
            assert_eq!(aside.len(), 1);
            assert!(aside[0].path().join("db").exists());
        }
        // A restart during the resync resumes it with the same (healthy) store.
        let opened = open_store(dir.path(), true, true).unwrap();
        assert!(opened.resync);
        let vote = opened.store.read_meta(ferry_storage::MetaKey::Vote).unwrap();
        assert_eq!(vote.as_deref(), Some(&b"vote-3"[..]));
    }

    #[test]
    fn a_single_node_with_damaged_data_refuses_to_start_and_moves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let opened = open_store(dir.path(), true, false).unwrap();
            let entries: Vec<(u64, Bytes)> =
                (1..=300u64).map(|i| (i, Bytes::from(vec![i as u8; 300]))).collect();
            opened.store.append(&entries).unwrap();
        }
        damage_wal(&dir.path().join("db"));
        let refused = open_store(dir.path(), true, false).err().expect("refused");
        assert!(refused.to_string().contains("no other replica"), "{refused}");
        assert!(!marker_path(dir.path()).exists());
        assert!(dir.path().join("db").exists(), "the damaged data stays where it is");
    }

    #[test]
    fn an_interrupted_swap_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let fresh = dir.path().join("db.new");
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::write(fresh.join("x"), b"1").unwrap();
        finish_interrupted_swap(&db, &fresh).unwrap();
        assert!(db.join("x").exists() && !fresh.exists());
        std::fs::create_dir_all(&fresh).unwrap();
        finish_interrupted_swap(&db, &fresh).unwrap();
        assert!(db.join("x").exists() && !fresh.exists(), "a stale db.new is dropped");
    }
}
