//! `group reset-offsets` planning: the new position of every partition for each mode, and the
//! preview table. Pure functions of the partitions' positions and bounds, so every mode (with
//! its clamping and never-committed partitions) is tested without a broker.

use ferry_protocol::{Offset, PartitionIndex};
use serde::Serialize;

use crate::output::{format_timestamp_ms, Table};

/// Where `reset-offsets` moves the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetMode {
    /// The log start: reprocess everything still stored.
    Earliest,
    /// The high watermark: skip everything stored now.
    Latest,
    /// The first message stamped at or after this time (ms since the Unix epoch).
    ToTime(u64),
    /// This many messages forward (positive) or back (negative) from the committed position.
    ShiftBy(i64),
}

impl ResetMode {
    /// The mode as the flag that asked for it, for output.
    pub fn describe(self) -> String {
        match self {
            ResetMode::Earliest => "--to-earliest".into(),
            ResetMode::Latest => "--to-latest".into(),
            ResetMode::ToTime(ms) => format!("--to-time {}", format_timestamp_ms(ms)),
            ResetMode::ShiftBy(n) => format!("--shift-by {n}"),
        }
    }
}

/// One partition as the leader reports it: the group's position and the log's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionState {
    /// Partition index.
    pub partition: PartitionIndex,
    /// The group's committed position; `None` when it never committed here.
    pub committed: Option<Offset>,
    /// First offset stored.
    pub log_start: Offset,
    /// One past the last message.
    pub high_watermark: Offset,
}

impl PartitionState {
    /// Where the group actually reads next: the committed offset kept inside the stored log
    /// (a commit below the log start reads from the log start), or the log start when it never
    /// committed.
    pub fn effective(&self) -> Offset {
        clamp(self.committed.unwrap_or(self.log_start), self.log_start, self.high_watermark)
    }
}

/// The planned move of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedReset {
    /// Partition index.
    #[serde(serialize_with = "serialize_partition")]
    pub partition: PartitionIndex,
    /// The committed offset now (`null` in JSON when never committed).
    #[serde(serialize_with = "serialize_offset_option")]
    pub current: Option<Offset>,
    /// Where the group reads from now ([`PartitionState::effective`]).
    #[serde(serialize_with = "serialize_offset")]
    pub from: Offset,
    /// The new committed offset.
    #[serde(serialize_with = "serialize_offset")]
    pub new: Offset,
    /// `new - from`: messages skipped (positive) or to be read again (negative).
    pub change: i64,
}

fn serialize_partition<S: serde::Serializer>(p: &PartitionIndex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u32(p.0)
}

fn serialize_offset<S: serde::Serializer>(o: &Offset, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(o.0)
}

fn serialize_offset_option<S: serde::Serializer>(
    o: &Option<Offset>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match o {
        Some(o) => s.serialize_some(&o.0),
        None => s.serialize_none(),
    }
}

fn clamp(offset: Offset, low: Offset, high: Offset) -> Offset {
    // `max` first: a log whose bounds are inverted (never seen) still gets its log start.
    offset.min(high).max(low)
}

/// `to - from` as a signed count, saturating at the ends of `i64`.
fn signed_change(from: Offset, to: Offset) -> i64 {
    if to >= from {
        i64::try_from(to.0 - from.0).unwrap_or(i64::MAX)
    } else {
        i64::try_from(from.0 - to.0).map_or(i64::MIN, |d| -d)
    }
}

/// Plans the new position of every partition in `partitions`.
///
/// `time_offsets` are the leader's answer to `OffsetsForTime` (needed for
/// [`ResetMode::ToTime`] only). Every new position lies inside the stored log
/// (`log_start..=high_watermark`): a shift past either end stops there, and a partition the
/// group never committed in shifts from its log start.
///
/// # Errors
/// A sentence when the time lookup has no answer for a partition.
pub fn plan(
    partitions: &[PartitionState],
    mode: ResetMode,
    time_offsets: &[(PartitionIndex, Offset)],
) -> Result<Vec<PlannedReset>, String> {
    partitions
        .iter()
        .map(|p| {
            let from = p.effective();
            let target = match mode {
                ResetMode::Earliest => p.log_start,
                ResetMode::Latest => p.high_watermark,
                ResetMode::ToTime(_) => time_offsets
                    .iter()
                    .find(|(index, _)| *index == p.partition)
                    .map(|(_, offset)| *offset)
                    .ok_or_else(|| {
                        format!("the leader found no offset by time for partition {}", p.partition)
                    })?,
                ResetMode::ShiftBy(n) => Offset(if n >= 0 {
                    from.0.saturating_add(n.unsigned_abs())
                } else {
                    from.0.saturating_sub(n.unsigned_abs())
                }),
            };
            let new = clamp(target, p.log_start, p.high_watermark);
            Ok(PlannedReset {
                partition: p.partition,
                current: p.committed,
                from,
                new,
                change: signed_change(from, new),
            })
        })
        .collect()
}

/// `+5`, `-3`, `0`.
pub fn format_change(change: i64) -> String {
    if change > 0 {
        format!("+{change}")
    } else {
        change.to_string()
    }
}

/// The preview (or result) table: partition, current committed offset (`-` when never), new
/// offset, change.
pub fn render_plan(rows: &[PlannedReset]) -> String {
    let mut table = Table::new(vec!["PARTITION", "CURRENT", "NEW", "CHANGE"]);
    for r in rows {
        table.row(vec![
            r.partition.to_string(),
            r.current.map_or_else(|| "-".into(), |o| o.to_string()),
            r.new.to_string(),
            format_change(r.change),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(partition: u32, committed: Option<u64>, log_start: u64, hw: u64) -> PartitionState {
        PartitionState {
            partition: PartitionIndex(partition),
            committed: committed.map(Offset),
            log_start: Offset(log_start),
            high_watermark: Offset(hw),
        }
    }

    /// (partition, new, change) of each planned row.
    fn moves(partitions: &[PartitionState], mode: ResetMode) -> Vec<(u32, u64, i64)> {
        plan(partitions, mode, &[])
            .unwrap()
            .iter()
            .map(|r| (r.partition.0, r.new.0, r.change))
            .collect()
    }

    #[test]
    fn earliest_and_latest_go_to_the_log_bounds() {
        let parts = [p(0, Some(10), 5, 20), p(1, None, 3, 8), p(2, Some(0), 0, 0)];
        assert_eq!(moves(&parts, ResetMode::Earliest), vec![(0, 5, -5), (1, 3, 0), (2, 0, 0)]);
        assert_eq!(moves(&parts, ResetMode::Latest), vec![(0, 20, 10), (1, 8, 5), (2, 0, 0)]);
    }

    #[test]
    fn shift_moves_from_the_committed_offset_and_stops_at_the_log_bounds() {
        let parts = [p(0, Some(10), 5, 20)];
        assert_eq!(moves(&parts, ResetMode::ShiftBy(3)), vec![(0, 13, 3)]);
        assert_eq!(moves(&parts, ResetMode::ShiftBy(-4)), vec![(0, 6, -4)]);
        assert_eq!(moves(&parts, ResetMode::ShiftBy(-100)), vec![(0, 5, -5)], "clamped low");
        assert_eq!(moves(&parts, ResetMode::ShiftBy(100)), vec![(0, 20, 10)], "clamped high");
        assert_eq!(moves(&parts, ResetMode::ShiftBy(i64::MAX)), vec![(0, 20, 10)]);
        assert_eq!(moves(&parts, ResetMode::ShiftBy(i64::MIN)), vec![(0, 5, -5)]);
        assert_eq!(moves(&parts, ResetMode::ShiftBy(0)), vec![(0, 10, 0)]);
    }

    #[test]
    fn never_committed_partitions_shift_from_the_log_start() {
        let parts = [p(1, None, 3, 8)];
        assert_eq!(moves(&parts, ResetMode::ShiftBy(2)), vec![(1, 5, 2)]);
        assert_eq!(moves(&parts, ResetMode::ShiftBy(-2)), vec![(1, 3, 0)]);
        let row = plan(&parts, ResetMode::ShiftBy(2), &[]).unwrap()[0];
        assert_eq!((row.current, row.from), (None, Offset(3)));
    }

    #[test]
    fn commits_outside_the_log_count_from_where_the_group_really_reads() {
        // Messages below the commit were deleted: the group reads from the log start.
        assert_eq!(moves(&[p(0, Some(1), 5, 20)], ResetMode::ShiftBy(2)), vec![(0, 7, 2)]);
        // A commit past the high watermark (topic recreated) reads from the high watermark.
        assert_eq!(moves(&[p(0, Some(50), 5, 20)], ResetMode::ShiftBy(-5)), vec![(0, 15, -5)]);
        let row = plan(&[p(0, Some(50), 5, 20)], ResetMode::Earliest, &[]).unwrap()[0];
        assert_eq!((row.current, row.from, row.new), (Some(Offset(50)), Offset(20), Offset(5)));
    }

    #[test]
    fn to_time_uses_the_leader_answer_clamped_to_the_log() {
        let parts = [p(0, Some(10), 5, 20), p(1, None, 0, 8), p(2, Some(4), 4, 9)];
        let answer = [
            (PartitionIndex(0), Offset(12)),
            (PartitionIndex(1), Offset(8)),
            (PartitionIndex(2), Offset(2)), // below the log start: clamped
        ];
        let rows = plan(&parts, ResetMode::ToTime(1_700_000_000_000), &answer).unwrap();
        let got: Vec<(u64, i64)> = rows.iter().map(|r| (r.new.0, r.change)).collect();
        assert_eq!(got, vec![(12, 2), (8, 8), (4, 0)]);
        let err = plan(&parts, ResetMode::ToTime(1), &answer[..1]).unwrap_err();
        assert!(err.contains("partition 1"), "{err}");
    }

    #[test]
    fn preview_renders_and_serializes() {
        let rows =
            plan(&[p(0, Some(10), 5, 20), p(1, None, 3, 8)], ResetMode::Earliest, &[]).unwrap();
        assert_eq!(
            render_plan(&rows),
            "PARTITION  CURRENT  NEW  CHANGE\n0          10       5    -5\n1          -        3    0\n"
        );
        let v = serde_json::to_value(&rows).unwrap();
        assert_eq!(v[0]["partition"], 0);
        assert_eq!((v[0]["current"].as_u64(), v[0]["new"].as_u64()), (Some(10), Some(5)));
        assert_eq!(v[0]["change"], -5);
        assert!(v[1]["current"].is_null());
        assert_eq!(v[1]["from"], 3);
        assert_eq!(format_change(7), "+7");
        assert_eq!(ResetMode::ShiftBy(-3).describe(), "--shift-by -3");
        assert_eq!(ResetMode::ToTime(0).describe(), "--to-time 1970-01-01T00:00:00.000Z");
    }
}
