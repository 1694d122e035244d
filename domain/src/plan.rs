//! Turning a submitted `data` array into batches of work.
//!
//! Rules, in order:
//! 1. every record is validated; an invalid one fails with its code;
//! 2. among valid records the first occurrence of a (normalised) key is kept and every
//!    later one is skipped with the key's `duplicate_*` code (`duplicate_email` for
//!    contacts by email). Validation comes first so that a broken record never shadows a
//!    good one with the same key;
//! 3. kept records are cut, in input order, into batches of at most `batch_size`.
//!
//! `Planner` applies them to a stream of records; `plan_action` to a slice.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::action::ActionType;
use crate::change::{RecordChange, RecordRules};
use crate::event::EventPayload;
use crate::key::MatchBy;
use crate::outcome::{OutcomeCode, RecordOutcome};
use crate::results::{SubmittedRecord, ACTION_RECORDS_MAX_BYTES};
use crate::text;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedRecord {
    pub index: u32,
    pub change: RecordChange,
}

impl PlannedRecord {
    /// The normalised key its action matches it by.
    pub fn key(&self) -> &str {
        &self.change.key
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub number: u32,
    pub records: Vec<PlannedRecord>,
    /// The key its records find their documents by (absent in batches staged before
    /// `matchBy`: the natural key).
    #[serde(default, skip_serializing_if = "MatchBy::is_natural")]
    pub match_by: MatchBy,
}

impl Batch {
    /// The same outcome for every record of the batch: a batch settled without being
    /// applied record by record (dead-lettered, or cancelled before it ran).
    pub fn outcomes_all(&self, code: OutcomeCode, message: &str) -> Vec<RecordOutcome> {
        self.records
            .iter()
            .map(|record| {
                RecordOutcome::new(
                    record.index,
                    Some(record.key().to_owned()),
                    code,
                    Some(message),
                )
            })
            .collect()
    }
}

/// A batch that failed every attempt, as it is recorded: the error once, for operators
/// (the dead-letter entry and the `BatchDeadLettered` event), and a `dead_lettered`
/// outcome per record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLettered {
    /// The last error, bounded by `text::ERROR_MAX_BYTES`.
    pub error: String,
    pub outcomes: Vec<RecordOutcome>,
}

/// How much of the error each record's message quotes: a batch of 10,000 records repeats
/// it 10,000 times in its event.
pub const DEAD_LETTER_EXCERPT_BYTES: usize = 160;

/// Whether the store was looked at before a batch was dead-lettered (see the consumer's
/// `reconcile`): then a `dead_lettered` record is one whose change the store did not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreCheck {
    Checked,
    Unchecked,
}

impl Batch {
    /// The batch failed `attempts` times, the last with `last_error` (any size: a store's
    /// error may quote whatever the batch held); `None` when no attempt recorded one.
    pub fn dead_lettered(
        &self,
        attempts: u32,
        last_error: Option<&str>,
        check: StoreCheck,
    ) -> DeadLettered {
        let recorded = match last_error {
            Some(error) if !error.is_empty() => error,
            _ => {
                "no error was recorded: the last attempts ended with their consumer (crash or kill)"
            }
        };
        let (state, note) = match check {
            StoreCheck::Checked => ("this record's change was not in the store when checked", ""),
            StoreCheck::Unchecked => (
                "the record may be partly applied: what the batch wrote could not be checked",
                " (what the batch wrote could not be checked: some records may be applied)",
            ),
        };
        let excerpt = text::bounded(recorded, DEAD_LETTER_EXCERPT_BYTES);
        let message = format!(
            "the batch failed {attempts} attempts and was moved to the dead-letter stream; \
             {state}. Last error: {excerpt}"
        );
        let room = text::ERROR_MAX_BYTES.saturating_sub(note.len());
        DeadLettered {
            outcomes: self.outcomes_all(OutcomeCode::DeadLettered, &message),
            error: format!("{}{note}", text::bounded(recorded, room)),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActionPlan {
    pub total_records: u32,
    pub batches: Vec<Batch>,
    /// Records that failed validation.
    pub rejected: Vec<RecordOutcome>,
    /// Later occurrences of an email.
    pub duplicates: Vec<RecordOutcome>,
}

/// A whole plan at once of contacts by email, for input that is already in memory.
/// `batch_size` is clamped to at least 1.
pub fn plan_action(records: &[Value], action_type: ActionType, batch_size: usize) -> ActionPlan {
    plan_with(records, RecordRules::contacts(action_type), batch_size)
}

/// `plan_action` under any rules.
pub fn plan_with(records: &[Value], rules: RecordRules, batch_size: usize) -> ActionPlan {
    let mut planner = Planner::new(rules, batch_size);
    let mut plan = ActionPlan {
        total_records: 0,
        batches: Vec::new(),
        rejected: Vec::new(),
        duplicates: Vec::new(),
    };
    let mut keep = |planned: Planned| match planned {
        Planned::Batch(batch) => plan.batches.push(batch),
        Planned::Outcomes(EventPayload::RecordSkipped { records, .. }) => {
            plan.duplicates.extend(records)
        }
        Planned::Outcomes(event) => plan
            .rejected
            .extend(event.record_outcomes().iter().cloned()),
    };
    for record in records {
        if let Some(planned) = planner.push(record) {
            keep(planned);
        }
    }
    let (rest, summary) = planner.finish();
    rest.into_iter().for_each(&mut keep);
    plan.total_records = summary.total_records;
    plan
}

/// What the planner hands out as soon as it is complete, so that an upload of any size is
/// planned in memory bounded by one batch, one chunk of outcomes and the dedup set.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// A full batch of kept records (the last one may be short).
    Batch(Batch),
    /// `RecordRejected` or `RecordSkipped` with up to one chunk of outcomes.
    Outcomes(EventPayload),
}

/// The totals of a finished plan: what `Created` says and the opening outcomes' counts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlanSummary {
    pub total_records: u32,
    pub batch_count: u32,
    pub records_in_batches: u32,
    /// Outcome events handed out (each one `Planned::Outcomes`).
    pub outcome_events: u32,
    /// Records settled at submission, per code: rejected and duplicates.
    pub opening_outcomes: BTreeMap<OutcomeCode, u32>,
    /// What the refused and skipped records kept for the result files take.
    pub kept_bytes: u64,
}

/// 128 bits of SHA-256 of a normalised key. A million of them take 16 MB where the keys
/// themselves would take several times that; an accidental collision is as likely as
/// guessing a random 128-bit key, and a crafted one needs a SHA-256 break.
type KeyDigest = [u8; 16];

/// Outcome events (`RecordRejected`, `RecordSkipped`) carry at least this many records
/// each, whatever the batch size: a drip of one-record batches must not turn half a
/// million duplicates into half a million events.
pub const MIN_OUTCOME_CHUNK: usize = 1_000;

/// Plans an action one record at a time, by the rules at the top of this module.
pub struct Planner {
    /// The entity, key and fields of the action, as defined when it was submitted.
    rules: RecordRules,
    batch_size: usize,
    outcome_chunk: usize,
    seen: HashSet<KeyDigest>,
    filling: Vec<PlannedRecord>,
    rejected: Vec<RecordOutcome>,
    /// The rejected records as they were sent (those that were objects).
    rejected_records: Vec<SubmittedRecord>,
    /// What `rejected` and its records take once stored, at most (`stored_size`).
    rejected_bytes: usize,
    duplicates: Vec<RecordOutcome>,
    duplicate_records: Vec<SubmittedRecord>,
    duplicate_bytes: usize,
    /// What the records kept so far take, all events together (`keep`).
    kept_bytes: u64,
    /// `ACTION_RECORDS_MAX_BYTES`, smaller in tests.
    kept_limit: u64,
    summary: PlanSummary,
}

/// About the most an outcome event carries in stored text: an event of rejected records is cut
/// at this size even before a full chunk of outcomes, so that no event (nor its archived
/// copy in MongoDB) approaches the store's 16 MiB document limit, whatever the records.
pub const OUTCOME_EVENT_MAX_BYTES: usize = 1 << 20;

/// An upper bound of the JSON an outcome takes in an event: every byte of its texts may
/// be escaped to two, plus the index, the code and the punctuation.
pub fn stored_size(outcome: &RecordOutcome) -> usize {
    let texts = outcome.email.as_ref().map_or(0, String::len)
        + outcome.message.as_ref().map_or(0, String::len);
    2 * texts + 64
}

impl Planner {
    /// `batch_size` is clamped to at least 1; outcome events hold `batch_size` records,
    /// or `MIN_OUTCOME_CHUNK` if that is more.
    pub fn new(rules: RecordRules, batch_size: usize) -> Self {
        let batch_size = batch_size.max(1);
        Self {
            rules,
            batch_size,
            outcome_chunk: batch_size.max(MIN_OUTCOME_CHUNK),
            seen: HashSet::new(),
            filling: Vec::with_capacity(batch_size.min(10_000)),
            rejected: Vec::new(),
            rejected_records: Vec::new(),
            rejected_bytes: 0,
            duplicates: Vec::new(),
            duplicate_records: Vec::new(),
            duplicate_bytes: 0,
            kept_bytes: 0,
            kept_limit: ACTION_RECORDS_MAX_BYTES,
            summary: PlanSummary::default(),
        }
    }

    /// Records pushed so far.
    pub fn records(&self) -> u32 {
        self.summary.total_records
    }

    /// Full batches handed out so far.
    pub fn batches(&self) -> u32 {
        self.summary.batch_count
    }

    /// The next record of the input.
    pub fn push(&mut self, record: &Value) -> Option<Planned> {
        let index = self.next_index();
        match RecordChange::parse(record, &self.rules) {
            Err(error) => {
                let kept = self.keep(index, record);
                self.reject(
                    RecordOutcome::new(
                        index,
                        self.rules.raw_key(record),
                        error.code,
                        Some(&error.message),
                    ),
                    Some(kept),
                )
            }
            Ok(change) if !self.seen.insert(digest(&change.key)) => {
                let spec = self.rules.spec();
                let code = self.rules.match_by.duplicate_code(spec);
                let field = self.rules.match_by.record_field(spec);
                let outcome = RecordOutcome {
                    index,
                    email: Some(change.key),
                    code,
                    message: Some(format!(
                        "an earlier record in this action has the same {field}"
                    )),
                };
                let kept = self.keep(index, record);
                self.duplicate_bytes += stored_size(&outcome) + kept.stored_size();
                self.duplicates.push(outcome);
                self.duplicate_records.push(kept);
                self.tally(code);
                let full = self.duplicates.len() >= self.outcome_chunk
                    || self.duplicate_bytes >= OUTCOME_EVENT_MAX_BYTES;
                full.then(|| self.take_duplicates())
            }
            Ok(change) => {
                self.filling.push(PlannedRecord { index, change });
                (self.filling.len() >= self.batch_size).then(|| self.take_batch())
            }
        }
    }

    /// The next record of the input, which could not be read as one (a malformed line of
    /// a stream): it fails with `code` and takes its place in the numbering.
    pub fn push_unreadable(&mut self, code: OutcomeCode, message: String) -> Option<Planned> {
        let index = self.next_index();
        self.reject(RecordOutcome::new(index, None, code, Some(&message)), None)
    }

    /// The next record of the input, refused with `code` before it is read, under its
    /// `key`: a retried record whose fields were not kept.
    pub fn push_refused(
        &mut self,
        key: Option<String>,
        code: OutcomeCode,
        message: String,
    ) -> Option<Planned> {
        let index = self.next_index();
        self.reject(RecordOutcome::new(index, key, code, Some(&message)), None)
    }

    /// Hands out what is left and the totals.
    pub fn finish(mut self) -> (Vec<Planned>, PlanSummary) {
        let mut rest = Vec::new();
        if !self.filling.is_empty() {
            rest.push(self.take_batch());
        }
        if !self.rejected.is_empty() {
            rest.push(self.take_rejected());
        }
        if !self.duplicates.is_empty() {
            rest.push(self.take_duplicates());
        }
        (rest, self.summary)
    }

    fn next_index(&mut self) -> u32 {
        let index = self.summary.total_records;
        self.summary.total_records = index.saturating_add(1);
        index
    }

    fn reject(
        &mut self,
        outcome: RecordOutcome,
        record: Option<SubmittedRecord>,
    ) -> Option<Planned> {
        self.tally(outcome.code);
        self.rejected_bytes += stored_size(&outcome);
        if let Some(record) = record {
            self.rejected_bytes += record.stored_size();
            self.rejected_records.push(record);
        }
        self.rejected.push(outcome);
        let full = self.rejected.len() >= self.outcome_chunk
            || self.rejected_bytes >= OUTCOME_EVENT_MAX_BYTES;
        full.then(|| self.take_rejected())
    }

    /// The record as sent, while the action's kept records stay within
    /// `ACTION_RECORDS_MAX_BYTES`; past it, nothing.
    fn keep(&mut self, index: u32, record: &Value) -> SubmittedRecord {
        let kept = SubmittedRecord::raw(index, record);
        let size = kept.stored_size() as u64;
        if self.kept_bytes + size > self.kept_limit {
            return SubmittedRecord::dropped(index);
        }
        self.kept_bytes += size;
        self.summary.kept_bytes = self.kept_bytes;
        kept
    }

    /// Keeps refused and skipped records only within `bytes` (what the account may still
    /// keep), as well as within `ACTION_RECORDS_MAX_BYTES`.
    pub fn limit_kept(mut self, bytes: u64) -> Self {
        self.kept_limit = self.kept_limit.min(bytes);
        self
    }

    fn tally(&mut self, code: OutcomeCode) {
        *self.summary.opening_outcomes.entry(code).or_default() += 1;
    }

    fn take_batch(&mut self) -> Planned {
        let records = std::mem::replace(
            &mut self.filling,
            Vec::with_capacity(self.batch_size.min(10_000)),
        );
        let number = self.summary.batch_count;
        self.summary.batch_count += 1;
        self.summary.records_in_batches += records.len() as u32;
        Planned::Batch(Batch {
            number,
            records,
            match_by: self.rules.match_by.clone(),
        })
    }

    fn take_rejected(&mut self) -> Planned {
        self.summary.outcome_events += 1;
        self.rejected_bytes = 0;
        Planned::Outcomes(EventPayload::RecordRejected {
            records: std::mem::take(&mut self.rejected),
            submitted: std::mem::take(&mut self.rejected_records),
        })
    }

    fn take_duplicates(&mut self) -> Planned {
        self.summary.outcome_events += 1;
        self.duplicate_bytes = 0;
        Planned::Outcomes(EventPayload::RecordSkipped {
            records: std::mem::take(&mut self.duplicates),
            submitted: std::mem::take(&mut self.duplicate_records),
        })
    }
}

fn digest(key: &str) -> KeyDigest {
    let full = Sha256::digest(key.as_bytes());
    let mut short = [0u8; 16];
    short.copy_from_slice(&full[..16]);
    short
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn a_dead_lettered_batch_records_a_bounded_error() {
        let records = vec![json!({"email": "a@x.io"}), json!({"email": "b@x.io"})];
        let plan = plan_action(&records, ActionType::Upsert, 10);
        let huge = format!("write failed: {}", "\"\0x".repeat(6_000_000));
        let dead = plan.batches[0].dead_lettered(5, Some(&huge), StoreCheck::Checked);
        assert!(dead.error.len() <= text::ERROR_MAX_BYTES);
        assert!(dead.error.starts_with("write failed: \"\u{FFFD}x"));
        assert_eq!(dead.outcomes.len(), 2);
        for outcome in &dead.outcomes {
            let message = outcome.message.as_deref().unwrap_or_default();
            assert!(message.len() <= text::MESSAGE_MAX_BYTES);
            assert!(message.contains("5 attempts") && message.contains("Last error: write failed"));
        }
        let unknown = plan.batches[0].dead_lettered(3, None, StoreCheck::Unchecked);
        assert!(unknown.error.starts_with("no error was recorded"));
        assert!(unknown.error.ends_with("some records may be applied)"));
        let unchecked = plan.batches[0].dead_lettered(5, Some(&huge), StoreCheck::Unchecked);
        assert!(unchecked.error.len() <= text::ERROR_MAX_BYTES);
        assert!(unchecked.error.ends_with("some records may be applied)"));
        let message = unchecked.outcomes[0].message.as_deref().unwrap_or_default();
        assert!(message.contains("may be partly applied"), "{message}");
    }

    #[test]
    fn an_event_of_rejected_records_stays_small_whatever_they_hold() {
        // Every byte of the echoed texts needs escaping; no record is valid.
        let quotes = "\"".repeat(1_000);
        let records: Vec<Value> = (0..5_000)
            .map(|i| {
                let mut record = serde_json::Map::new();
                record.insert("email".into(), json!(format!("{quotes}{i}")));
                record.insert(quotes.clone(), json!(1));
                Value::Object(record)
            })
            .collect();
        let plan_events = {
            let mut planner = Planner::new(RecordRules::contacts(ActionType::Upsert), 10_000);
            let mut events: Vec<Planned> = records
                .iter()
                .filter_map(|record| planner.push(record))
                .collect();
            events.extend(planner.finish().0);
            events
        };
        let mut settled = 0;
        for planned in &plan_events {
            let Planned::Outcomes(event) = planned else {
                panic!("no record is valid");
            };
            let stored = event.data_json().len();
            assert!(stored <= OUTCOME_EVENT_MAX_BYTES + 4096, "{stored} bytes");
            settled += event.record_outcomes().len();
        }
        assert_eq!(settled, records.len());
    }

    #[test]
    fn an_action_keeps_its_refused_records_within_its_kept_bytes() {
        let mut planner = Planner::new(RecordRules::contacts(ActionType::Upsert), 10);
        planner.kept_limit = 2_000;
        let name = "n".repeat(180);
        let mut events: Vec<Planned> = (0..40)
            .filter_map(|i| {
                // Half refused (no valid email), half skipped as duplicates.
                let email = if i % 2 == 0 {
                    "bad".to_owned()
                } else {
                    "d@x.io".to_owned()
                };
                planner.push(&json!({"email": email, "name": format!("{name}{i}")}))
            })
            .collect();
        events.extend(planner.finish().0);
        let kept: Vec<SubmittedRecord> = events
            .iter()
            .filter_map(|planned| match planned {
                Planned::Outcomes(event) => Some(event.submitted_records().to_vec()),
                Planned::Batch(_) => None,
            })
            .flatten()
            .collect();
        assert_eq!(
            kept.len(),
            39,
            "every refused or skipped record has its row"
        );
        let whole = kept.iter().filter(|record| !record.truncated).count();
        let bytes: usize = kept.iter().map(SubmittedRecord::stored_size).sum();
        assert!((5..=10).contains(&whole), "{whole} kept whole");
        assert!(bytes <= 2_000 + 39 * 42, "{bytes}");
        assert!(kept
            .iter()
            .filter(|record| record.truncated)
            .all(|record| record.fields.is_empty()));
    }

    #[test]
    fn rejected_and_skipped_records_keep_what_was_sent() {
        let records = [
            json!({"email": "bad", "name": "=1"}),
            json!({"email": "a@x.io", "name": "first"}),
            json!({"email": "A@x.io", "name": "again"}),
        ];
        let mut planner = Planner::new(RecordRules::contacts(ActionType::Upsert), 10);
        let mut events: Vec<Planned> = records.iter().filter_map(|r| planner.push(r)).collect();
        events.extend(planner.finish().0);
        let kept: Vec<(u32, Value)> = events
            .iter()
            .filter_map(|planned| match planned {
                Planned::Outcomes(event) => Some(event.submitted_records().to_vec()),
                Planned::Batch(_) => None,
            })
            .flatten()
            .map(|record| (record.index, Value::Object(record.fields)))
            .collect();
        assert_eq!(kept, vec![(0, records[0].clone()), (2, records[2].clone())]);
    }

    #[test]
    fn first_valid_occurrence_wins() {
        let records = vec![
            json!({"email": "A@x.io", "age": 999}),
            json!({"email": " a@X.io ", "name": "first valid"}),
            json!({"email": "a@x.io", "name": "dup"}),
            json!({"email": "b@x.io", "name": "b"}),
        ];
        let plan = plan_action(&records, ActionType::Upsert, 1);
        assert_eq!(plan.rejected.len(), 1);
        assert_eq!(plan.rejected[0].index, 0);
        assert_eq!(plan.duplicates.len(), 1);
        assert_eq!(plan.duplicates[0].index, 2);
        assert_eq!(plan.duplicates[0].email.as_deref(), Some("a@x.io"));
        let kept: Vec<u32> = plan.batches.iter().map(|b| b.records[0].index).collect();
        assert_eq!(kept, vec![1, 3]);
        assert_eq!(plan.batches[1].number, 1);
    }

    fn arbitrary_record() -> impl Strategy<Value = Value> {
        let email = prop_oneof![
            "[a-c]{1,2}@[x-y]\\.io".prop_map(Value::from),
            "[A-C]{1,2}@[X-Y]\\.IO ".prop_map(Value::from),
            Just(Value::from("broken")),
            Just(Value::from(3)),
        ];
        (email, proptest::option::of(0i64..200)).prop_map(|(email, age)| {
            let mut record = json!({"email": email, "name": "n"});
            if let Some(age) = age {
                record["age"] = json!(age);
            }
            record
        })
    }

    proptest! {
        #[test]
        fn every_record_gets_exactly_one_place(
            records in proptest::collection::vec(arbitrary_record(), 0..200),
            batch_size in 1usize..50,
        ) {
            let plan = plan_action(&records, ActionType::Upsert, batch_size);
            let mut indexes: Vec<u32> = plan.rejected.iter().map(|o| o.index)
                .chain(plan.duplicates.iter().map(|o| o.index))
                .chain(plan.batches.iter().flat_map(|b| b.records.iter().map(|r| r.index)))
                .collect();
            indexes.sort_unstable();
            let expected: Vec<u32> = (0..records.len() as u32).collect();
            prop_assert_eq!(indexes, expected);

            let mut emails = HashSet::new();
            for batch in &plan.batches {
                prop_assert!(!batch.records.is_empty() && batch.records.len() <= batch_size);
                for record in &batch.records {
                    prop_assert!(emails.insert(record.change.key.clone()), "key kept twice");
                }
            }
            // The streaming planner's totals agree with what it handed out, unreadable
            // records (a malformed line) take their place in the numbering.
            let mut planner = Planner::new(RecordRules::contacts(ActionType::Upsert), batch_size);
            let mut kept = 0u32;
            let mut outcome_events = 0u32;
            let mut count = |planned: Planned| match planned {
                Planned::Batch(batch) => kept += batch.records.len() as u32,
                Planned::Outcomes(_) => outcome_events += 1,
            };
            for (position, record) in records.iter().enumerate() {
                let planned = if position % 7 == 3 {
                    planner.push_unreadable(OutcomeCode::MalformedRecord, "line".into())
                } else {
                    planner.push(record)
                };
                planned.into_iter().for_each(&mut count);
            }
            let (rest, summary) = planner.finish();
            rest.into_iter().for_each(&mut count);
            let settled: u32 = summary.opening_outcomes.values().sum();
            prop_assert_eq!(summary.total_records as usize, records.len());
            prop_assert_eq!(summary.records_in_batches, kept);
            prop_assert_eq!(summary.outcome_events, outcome_events);
            prop_assert_eq!(kept + settled, summary.total_records);

            for duplicate in &plan.duplicates {
                let email = duplicate.email.clone().unwrap_or_default();
                let first = plan.batches.iter().flat_map(|b| &b.records)
                    .find(|r| r.change.key == email);
                prop_assert!(first.is_some_and(|r| r.index < duplicate.index));
            }
        }
    }
}
