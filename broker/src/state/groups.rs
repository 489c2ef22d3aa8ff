//! Consumer-group positions in the replicated state: the next offset each group reads in each
//! partition, written by `CommitOffsets` (members' commits and operators' resets) and read by
//! handlers (describe, lag) and the metrics loop.
//!
//! ```text
//! groups CF: group | 0x00 | topic | 0x00 | partition:u32be → offset:u64be | committed_ms:u64be
//! ```
//!
//! Group and topic names hold no 0x00 byte (both are validated), so one group's positions are
//! one key range, ordered by topic then partition.

use std::collections::BTreeMap;

use bytes::Bytes;
use ferry_storage::{Cf, WriteBatch};

use super::command::{CommandResponse, GroupOffset};
use super::{corrupt, scan_all, Applier, SharedState, StateError};

/// A stored position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// Topic name.
    pub topic: String,
    /// Partition index.
    pub partition: u32,
    /// Next offset the group reads.
    pub offset: u64,
    /// Leader clock at the commit.
    pub committed_ms: u64,
}

fn offset_key(group: &str, topic: &str, partition: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(group.len() + topic.len() + 6);
    k.extend_from_slice(group.as_bytes());
    k.push(0);
    k.extend_from_slice(topic.as_bytes());
    k.push(0);
    k.extend_from_slice(&partition.to_be_bytes());
    k
}

/// `[start, end)` of one group's keys.
fn group_range(group: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = group.as_bytes().to_vec();
    start.push(0);
    let mut end = group.as_bytes().to_vec();
    end.push(1);
    (start, end)
}

/// Splits a key into (group, topic, partition).
fn parse_key(key: &[u8]) -> Result<(String, String, u32), StateError> {
    let bad = || corrupt(format!("group offset key {key:?}"));
    if key.len() < 6 {
        return Err(bad());
    }
    let (names, partition) = key.split_at(key.len() - 4);
    let partition = u32::from_be_bytes(partition.try_into().map_err(|_| bad())?);
    let names = names.strip_suffix(&[0]).ok_or_else(bad)?;
    let split = names.iter().position(|b| *b == 0).ok_or_else(bad)?;
    let group = std::str::from_utf8(&names[..split]).map_err(|_| bad())?;
    let topic = std::str::from_utf8(&names[split + 1..]).map_err(|_| bad())?;
    Ok((group.to_string(), topic.to_string(), partition))
}

fn encode_value(offset: u64, committed_ms: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&offset.to_be_bytes());
    v.extend_from_slice(&committed_ms.to_be_bytes());
    v
}

fn decode_value(value: &Bytes) -> Result<(u64, u64), StateError> {
    if value.len() != 16 {
        return Err(corrupt(format!("group offset value of {} bytes", value.len())));
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&value[..8]);
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&value[8..]);
    Ok((u64::from_be_bytes(offset), u64::from_be_bytes(ms)))
}

impl Applier {
    /// Stores positions. Entries naming a topic or partition that does not exist (deleted
    /// since the handler checked) are skipped.
    pub(super) fn commit_offsets(
        &mut self,
        group: &str,
        committed_ms: u64,
        offsets: &[GroupOffset],
        batch: &mut WriteBatch,
    ) -> CommandResponse {
        for o in offsets {
            if self.partition_id(&o.topic, o.partition).is_err() {
                continue;
            }
            let key = offset_key(group, &o.topic, o.partition);
            batch.put(Cf::Groups, key.clone(), encode_value(o.offset, committed_ms));
            self.offsets_overlay.push(key);
        }
        CommandResponse::Done
    }

    /// Forgets every group's positions in `topic` (it is being deleted; a topic created later
    /// under the same name starts from its own beginning).
    pub(super) fn forget_offsets_of_topic(
        &self,
        topic: &str,
        batch: &mut WriteBatch,
    ) -> Result<(), StateError> {
        let stored = scan_all(self.store.as_ref(), Cf::Groups, &[], &[0xff])?;
        let keys = stored
            .iter()
            .map(|(k, _)| k.as_ref())
            .chain(self.offsets_overlay.iter().map(Vec::as_slice));
        for key in keys {
            let (_, t, _) = parse_key(key)?;
            if t == topic {
                batch.delete(Cf::Groups, key.to_vec());
            }
        }
        Ok(())
    }
}

impl SharedState {
    /// One group's positions, by topic then partition.
    pub fn committed_offsets(&self, group: &str) -> Result<Vec<CommittedOffset>, StateError> {
        let (start, end) = group_range(group);
        scan_all(self.store.as_ref(), Cf::Groups, &start, &end)?
            .into_iter()
            .map(|(k, v)| {
                let (_, topic, partition) = parse_key(&k)?;
                let (offset, committed_ms) = decode_value(&v)?;
                Ok(CommittedOffset { topic, partition, offset, committed_ms })
            })
            .collect()
    }

    /// Every group's positions.
    pub fn all_committed_offsets(
        &self,
    ) -> Result<BTreeMap<String, Vec<CommittedOffset>>, StateError> {
        let mut out: BTreeMap<String, Vec<CommittedOffset>> = BTreeMap::new();
        for (k, v) in scan_all(self.store.as_ref(), Cf::Groups, &[], &[0xff])? {
            let (group, topic, partition) = parse_key(&k)?;
            let (offset, committed_ms) = decode_value(&v)?;
            out.entry(group).or_default().push(CommittedOffset {
                topic,
                partition,
                offset,
                committed_ms,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ferry_storage::mem::MemStore;
    use ferry_storage::StateStore;

    use super::*;
    use crate::state::command::Command;
    use crate::state::{BatchResolver, Changes};

    fn applier(store: &MemStore) -> Applier {
        let resolver: BatchResolver =
            Arc::new(|pos| Err(StateError::Corrupt(format!("no log in this test: {pos:?}"))));
        Applier::open(Arc::new(store.clone()), resolver).unwrap()
    }

    fn apply(store: &MemStore, a: &mut Applier, index: u64, cmd: Command) -> CommandResponse {
        let mut wb = WriteBatch::new();
        let mut changes = Changes::default();
        let resp = a.apply(index, &cmd, &mut wb, &mut changes);
        store.write(wb).unwrap();
        a.publish(&changes);
        resp
    }

    fn commit(group: &str, topic: &str, partition: u32, offset: u64, ms: u64) -> Command {
        Command::CommitOffsets {
            group: group.into(),
            committed_ms: ms,
            offsets: vec![GroupOffset { topic: topic.into(), partition, offset }],
        }
    }

    #[test]
    fn a_commit_and_its_topic_deletion_in_one_apply_call_leave_nothing() {
        let store = MemStore::new();
        let mut a = applier(&store);
        apply(
            &store,
            &mut a,
            1,
            Command::CreateTopic { name: "t".into(), partitions: 1, created_ms: 1 },
        );
        let mut wb = WriteBatch::new();
        let mut changes = Changes::default();
        a.apply(2, &commit("g", "t", 0, 4, 10), &mut wb, &mut changes);
        a.apply(3, &Command::DeleteTopic { name: "t".into() }, &mut wb, &mut changes);
        store.write(wb).unwrap();
        a.publish(&changes);
        assert!(a.shared().committed_offsets("g").unwrap().is_empty(), "same as applied apart");
    }

    #[test]
    fn keys_round_trip_and_group_ranges_do_not_overlap() {
        let k = offset_key("g", "orders.v2", 7);
        assert_eq!(parse_key(&k).unwrap(), ("g".into(), "orders.v2".into(), 7));
        let (start, end) = group_range("g");
        assert!(k.as_slice() >= start.as_slice() && k.as_slice() < end.as_slice());
        let other = offset_key("g-2", "t", 0);
        assert!(other.as_slice() >= end.as_slice(), "group g-2 is outside g's range");
        assert!(parse_key(b"xx").is_err());
    }

    #[test]
    fn commits_are_stored_replaced_and_forgotten_with_their_topic() {
        let store = MemStore::new();
        let mut a = applier(&store);
        let create =
            |name: &str| Command::CreateTopic { name: name.into(), partitions: 2, created_ms: 1 };
        apply(&store, &mut a, 1, create("t"));
        apply(&store, &mut a, 2, create("u"));
        apply(&store, &mut a, 3, commit("g", "t", 1, 10, 100));
        apply(&store, &mut a, 4, commit("g", "t", 1, 12, 200));
        apply(&store, &mut a, 5, commit("g", "u", 0, 3, 300));
        apply(&store, &mut a, 6, commit("h", "t", 0, 1, 400));
        // Unknown topic or partition: skipped, not stored.
        apply(&store, &mut a, 7, commit("g", "nope", 0, 1, 500));
        apply(&store, &mut a, 8, commit("g", "t", 9, 1, 500));
        let shared = a.shared();
        let g = shared.committed_offsets("g").unwrap();
        assert_eq!(
            g,
            vec![
                CommittedOffset { topic: "t".into(), partition: 1, offset: 12, committed_ms: 200 },
                CommittedOffset { topic: "u".into(), partition: 0, offset: 3, committed_ms: 300 },
            ]
        );
        assert_eq!(shared.all_committed_offsets().unwrap().len(), 2);

        apply(&store, &mut a, 9, Command::DeleteTopic { name: "t".into() });
        assert_eq!(shared.committed_offsets("g").unwrap().len(), 1, "u's position stays");
        assert!(shared.committed_offsets("h").unwrap().is_empty());

        // Positions survive a reopen (they are only in the store).
        let reopened = applier(&store);
        assert_eq!(reopened.shared().committed_offsets("g").unwrap()[0].offset, 3);
    }
}
