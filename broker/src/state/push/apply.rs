//! Applying the push commands: deterministic, reading earlier writes of the same apply call
//! through the applier's push overlay.

use std::collections::{BTreeMap, BTreeSet};

use ferry_protocol::push::SubscriptionStatus;
use ferry_protocol::ErrorCode;
use ferry_storage::{Cf, WriteBatch};

use super::{
    delivery_key, due_key, sub_key, sub_range, Alteration, AttemptResult, Cursor, DeliveryRecord,
    Outcome, PushCommand, SubRecord, DELIVERY_PREFIX, DUE_PREFIX, LAST_ERROR_BYTES_MAX,
    NEXT_SUB_ID,
};
use crate::state::command::CommandResponse;
use crate::state::{corrupt, rejected, Applier, Changes, StateError};

impl Applier {
    fn delivery(&self, key: &[u8]) -> Result<Option<DeliveryRecord>, StateError> {
        if let Some(v) = self.push_overlay.records.get(key) {
            return Ok(v.clone());
        }
        let sub_id = key.get(1..9).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes);
        if sub_id.is_some_and(|id| self.push_overlay.forgotten.contains(&id)) {
            return Ok(None);
        }
        match self.store.get(Cf::Txn, key)? {
            Some(v) => DeliveryRecord::decode(v).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    fn put_delivery(&mut self, key: Vec<u8>, record: DeliveryRecord, batch: &mut WriteBatch) {
        batch.put(Cf::Txn, key.clone(), record.encode());
        self.push_overlay.records.insert(key, Some(record));
    }

    fn delete_delivery(&mut self, key: Vec<u8>, batch: &mut WriteBatch) {
        batch.delete(Cf::Txn, key.clone());
        self.push_overlay.records.insert(key, None);
    }

    fn save_sub(&mut self, name: &str, batch: &mut WriteBatch, changes: &mut Changes) {
        if let Some(sub) = self.meta.push.get(name) {
            batch.put(Cf::State, sub_key(name), sub.encode());
        }
        changes.push.push(name.to_string());
    }

    /// Drops every delivery record and due key of subscription `id`.
    fn forget_deliveries(&mut self, id: u64, batch: &mut WriteBatch) {
        for prefix in [DELIVERY_PREFIX, DUE_PREFIX] {
            let (start, end) = sub_range(prefix, id);
            batch.delete_range(Cf::Txn, start, end);
        }
        // Later reads in this apply call must not find the store's (still undeleted) records.
        self.push_overlay.records.retain(|k, _| k.get(1..9) != Some(&id.to_be_bytes()[..]));
        self.push_overlay.forgotten.insert(id);
    }

    /// Subscriptions of a deleted topic start over (a new topic of that name starts at 0).
    pub(in crate::state) fn reset_push_of_topic(
        &mut self,
        topic: &str,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) {
        let names: Vec<String> =
            self.meta.push.values().filter(|s| s.topic == topic).map(|s| s.name.clone()).collect();
        for name in names {
            let Some(sub) = self.meta.push.get_mut(&name) else { continue };
            sub.cursors.clear();
            sub.retrying = 0;
            sub.failed = 0;
            let id = sub.id;
            self.forget_deliveries(id, batch);
            self.save_sub(&name, batch, changes);
        }
    }

    /// Applies a push command.
    pub(in crate::state) fn apply_push(
        &mut self,
        command: &PushCommand,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        match command {
            PushCommand::Create { sub, start_at_end } => {
                self.create_push(sub, *start_at_end, batch, changes)
            }
            PushCommand::Alter { name, sub_id, stamped_ms, change } => {
                self.alter_push(name, *sub_id, *stamped_ms, change, batch, changes)
            }
            PushCommand::Results { name, sub_id, stamped_ms, results } => {
                match self.push_results(name, *sub_id, *stamped_ms, results, batch, changes) {
                    Ok(r) => r,
                    Err(e) => Applier::fail(e),
                }
            }
            PushCommand::Replay { name, sub_id, stamped_ms, messages } => {
                match self.replay_push(name, *sub_id, *stamped_ms, messages, batch, changes) {
                    Ok(r) => r,
                    Err(e) => Applier::fail(e),
                }
            }
        }
    }

    fn create_push(
        &mut self,
        sub: &SubRecord,
        start_at_end: bool,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        if self.meta.push.contains_key(&sub.name) {
            return rejected(
                ErrorCode::SubscriptionExists,
                format!("push subscription {} already exists", sub.name),
            );
        }
        let Some(topic) = self.meta.topics.get(&sub.topic) else {
            return rejected(ErrorCode::UnknownTopic, format!("unknown topic {}", sub.topic));
        };
        let mut record = sub.clone();
        record.id = self.meta.next_push_id;
        record.retrying = 0;
        record.failed = 0;
        record.cursors = BTreeMap::new();
        if start_at_end {
            for (i, id) in topic.partition_ids.iter().enumerate() {
                let next = self.meta.partitions.get(id).map_or(0, |p| p.next_offset);
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                record.cursors.insert(index, Cursor { next, settled: BTreeSet::new() });
            }
        }
        self.meta.next_push_id += 1;
        batch.put(Cf::State, NEXT_SUB_ID.to_vec(), self.meta.next_push_id.to_be_bytes().to_vec());
        let name = record.name.clone();
        self.meta.push.insert(name.clone(), record);
        self.save_sub(&name, batch, changes);
        CommandResponse::Done
    }

    fn alter_push(
        &mut self,
        name: &str,
        sub_id: u64,
        stamped_ms: u64,
        change: &Alteration,
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> CommandResponse {
        let Some(sub) = self.meta.push.get_mut(name).filter(|s| sub_id == 0 || s.id == sub_id)
        else {
            return rejected(
                ErrorCode::UnknownSubscription,
                format!("unknown push subscription {name}"),
            );
        };
        match change {
            Alteration::Pause => {
                sub.status = SubscriptionStatus::Paused;
                sub.status_reason = "paused by an operator".into();
                sub.status_ms = stamped_ms;
            }
            Alteration::Resume => {
                sub.status = SubscriptionStatus::Active;
                sub.status_reason.clear();
                sub.status_ms = stamped_ms;
            }
            Alteration::Disable { reason } => {
                // An operator's pause stays a pause.
                if sub.status == SubscriptionStatus::Active {
                    sub.status = SubscriptionStatus::Disabled;
                    sub.status_reason = reason.clone();
                    sub.status_ms = stamped_ms;
                }
            }
            Alteration::Rotate { secret, until_ms } => {
                sub.previous_secret = std::mem::replace(&mut sub.secret, secret.clone());
                sub.previous_secret_until_ms = *until_ms;
            }
            Alteration::Delete => {
                let id = sub.id;
                self.meta.push.remove(name);
                self.forget_deliveries(id, batch);
                batch.delete(Cf::State, sub_key(name));
                changes.push.push(name.to_string());
                return CommandResponse::Done;
            }
        }
        self.save_sub(name, batch, changes);
        CommandResponse::Done
    }

    fn push_results(
        &mut self,
        name: &str,
        sub_id: u64,
        stamped_ms: u64,
        results: &[AttemptResult],
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> Result<CommandResponse, StateError> {
        let Some(sub) = self.meta.push.get(name).filter(|s| s.id == sub_id) else {
            // Deleted (or recreated) since: its results no longer matter.
            return Ok(CommandResponse::Done);
        };
        let (id, max_attempts) = (sub.id, sub.max_attempts);
        let mut retrying = sub.retrying;
        let mut failed = sub.failed;
        let mut cursors = sub.cursors.clone();
        for r in results {
            let key = delivery_key(id, r.partition, r.offset);
            let error: String = truncate(&r.error, LAST_ERROR_BYTES_MAX);
            let record = |attempts: u32| DeliveryRecord {
                failed: r.outcome == Outcome::Failed,
                attempts,
                next_attempt_ms: if r.outcome == Outcome::Retry { r.next_attempt_ms } else { 0 },
                last_attempt_ms: stamped_ms,
                last_status: r.status,
                last_error: error.clone(),
            };
            if r.first {
                let cursor = cursors.entry(r.partition).or_default();
                if cursor.is_settled(r.offset) {
                    continue;
                }
                cursor.settle(r.offset);
                match r.outcome {
                    Outcome::Delivered => {}
                    Outcome::Retry if max_attempts > 1 => {
                        retrying += 1;
                        batch.put(
                            Cf::Txn,
                            due_key(id, r.next_attempt_ms, r.partition, r.offset),
                            Vec::new(),
                        );
                        self.put_delivery(key, record(1), batch);
                    }
                    Outcome::Retry | Outcome::Failed => {
                        failed += 1;
                        let mut rec = record(1);
                        rec.failed = true;
                        rec.next_attempt_ms = 0;
                        self.put_delivery(key, rec, batch);
                    }
                }
                continue;
            }
            let Some(old) = self.delivery(&key)? else { continue };
            if old.failed || old.next_attempt_ms != r.expected_due_ms {
                continue;
            }
            batch.delete(Cf::Txn, due_key(id, old.next_attempt_ms, r.partition, r.offset));
            let attempts = old.attempts.saturating_add(1);
            let outcome = match r.outcome {
                Outcome::Retry if attempts >= max_attempts => Outcome::Failed,
                other => other,
            };
            match outcome {
                Outcome::Delivered => {
                    retrying = retrying.saturating_sub(1);
                    self.delete_delivery(key, batch);
                }
                Outcome::Retry => {
                    batch.put(
                        Cf::Txn,
                        due_key(id, r.next_attempt_ms, r.partition, r.offset),
                        Vec::new(),
                    );
                    self.put_delivery(key, record(attempts), batch);
                }
                Outcome::Failed => {
                    retrying = retrying.saturating_sub(1);
                    failed += 1;
                    let mut rec = record(attempts);
                    rec.failed = true;
                    rec.next_attempt_ms = 0;
                    self.put_delivery(key, rec, batch);
                }
            }
        }
        if let Some(sub) = self.meta.push.get_mut(name) {
            sub.retrying = retrying;
            sub.failed = failed;
            sub.cursors = cursors;
        }
        self.save_sub(name, batch, changes);
        Ok(CommandResponse::Done)
    }

    fn replay_push(
        &mut self,
        name: &str,
        sub_id: u64,
        stamped_ms: u64,
        messages: &[(u32, u64)],
        batch: &mut WriteBatch,
        changes: &mut Changes,
    ) -> Result<CommandResponse, StateError> {
        let Some(sub) = self.meta.push.get(name).filter(|s| s.id == sub_id) else {
            return Ok(rejected(
                ErrorCode::UnknownSubscription,
                format!("unknown push subscription {name}"),
            ));
        };
        let id = sub.id;
        let mut replayed = 0u32;
        for (partition, offset) in messages {
            let key = delivery_key(id, *partition, *offset);
            let Some(mut rec) = self.delivery(&key)? else { continue };
            if !rec.failed {
                continue;
            }
            rec.failed = false;
            rec.attempts = 0;
            rec.next_attempt_ms = stamped_ms;
            batch.put(Cf::Txn, due_key(id, stamped_ms, *partition, *offset), Vec::new());
            self.put_delivery(key, rec, batch);
            replayed += 1;
        }
        if let Some(sub) = self.meta.push.get_mut(name) {
            sub.failed = sub.failed.saturating_sub(u64::from(replayed));
            sub.retrying += u64::from(replayed);
        }
        self.save_sub(name, batch, changes);
        Ok(CommandResponse::PushReplayed { replayed })
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}
