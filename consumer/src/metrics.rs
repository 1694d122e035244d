//! What the consumer records: records settled by outcome, batch attempts and their
//! fate, webhook attempts. Labels are closed sets (action types, outcome codes, results).

use std::collections::BTreeMap;
use std::time::Duration;

use domain::{ActionType, OutcomeCode, RecordOutcome};
use infra::metrics::names;

/// A settlement's outcomes counted by code, taken before they are handed to the store and
/// recorded once it has settled them.
pub struct OutcomeCounts(BTreeMap<OutcomeCode, u64>);

impl OutcomeCounts {
    pub fn of(outcomes: &[RecordOutcome]) -> Self {
        let mut counts = BTreeMap::new();
        for outcome in outcomes {
            *counts.entry(outcome.code).or_insert(0) += 1;
        }
        Self(counts)
    }

    pub fn record(&self, action_type: ActionType) {
        for (code, count) in &self.0 {
            metrics::counter!(
                names::RECORDS_APPLIED,
                "action_type" => action_type.as_str(),
                "outcome" => code.status().as_str(),
                "code" => code.as_str(),
            )
            .increment(*count);
        }
    }
}

pub fn attempt_took(action_type: ActionType, result: &'static str, took: Duration) {
    metrics::histogram!(
        names::BATCH_ATTEMPT_DURATION,
        "action_type" => action_type.as_str(),
        "result" => result,
    )
    .record(took.as_secs_f64());
}

pub fn batch_applied(action_type: ActionType) {
    metrics::counter!(names::BATCHES_APPLIED, "action_type" => action_type.as_str()).increment(1);
}

pub fn batch_retried(action_type: ActionType) {
    metrics::counter!(names::BATCH_RETRIES, "action_type" => action_type.as_str()).increment(1);
}

pub fn batch_dead_lettered(action_type: ActionType) {
    metrics::counter!(names::BATCHES_DEAD_LETTERED, "action_type" => action_type.as_str())
        .increment(1);
}

/// One webhook attempt: `result` is `succeeded`, `retrying`, `failed`, `gone` or `disabled`.
pub fn webhook_attempt(result: &'static str, took: Option<Duration>) {
    metrics::counter!(names::WEBHOOK_ATTEMPTS, "result" => result).increment(1);
    if let Some(took) = took {
        metrics::histogram!(names::WEBHOOK_ATTEMPT_DURATION).record(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_by_code() {
        let outcomes = [
            RecordOutcome::new(0, None, OutcomeCode::Created, None),
            RecordOutcome::new(1, None, OutcomeCode::Created, None),
            RecordOutcome::new(2, None, OutcomeCode::NotFound, None),
        ];
        let counts = OutcomeCounts::of(&outcomes);
        assert_eq!(counts.0.get(&OutcomeCode::Created), Some(&2));
        assert_eq!(counts.0.get(&OutcomeCode::NotFound), Some(&1));
        assert_eq!(counts.0.len(), 2);
    }
}
