//! Every metric's name and help text, in one place, so the three binaries and the
//! dashboard agree on them (docs/operations.md, "Metrics", explains each).

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

// api
pub const HTTP_REQUESTS: &str = "bulk_http_requests_total";
pub const HTTP_REQUEST_DURATION: &str = "bulk_http_request_duration_seconds";
pub const RATE_LIMIT_REFUSALS: &str = "bulk_rate_limit_refusals_total";
pub const SSE_SUBSCRIBERS: &str = "bulk_sse_subscribers";
pub const ACTIONS_SUBMITTED: &str = "bulk_actions_submitted_total";

// consumer: batches and records
pub const RECORDS_APPLIED: &str = "bulk_records_applied_total";
pub const BATCH_ATTEMPT_DURATION: &str = "bulk_batch_attempt_duration_seconds";
pub const BATCHES_APPLIED: &str = "bulk_batches_applied_total";
pub const BATCH_RETRIES: &str = "bulk_batch_retries_total";
pub const BATCHES_DEAD_LETTERED: &str = "bulk_batches_dead_lettered_total";

// consumer: webhooks
pub const WEBHOOK_ATTEMPTS: &str = "bulk_webhook_attempts_total";
pub const WEBHOOK_ATTEMPT_DURATION: &str = "bulk_webhook_attempt_duration_seconds";

// consumer: what Redis holds, sampled
pub const WORK_PENDING: &str = "bulk_work_pending_batches";
pub const WORK_OLDEST_AGE: &str = "bulk_work_oldest_pending_age_seconds";
pub const READY_ACCOUNTS: &str = "bulk_ready_accounts";
pub const SCHEDULED_ACTIONS: &str = "bulk_scheduled_actions";
pub const DEAD_LETTERS: &str = "bulk_dead_letters";

// projector
pub const PROJECTOR_LAG_ENTRIES: &str = "bulk_projector_lag_feed_entries";
pub const PROJECTOR_LAG_SECONDS: &str = "bulk_projector_lag_seconds";
pub const PROJECTOR_ACTIONS_PROJECTED: &str = "bulk_projector_actions_projected_total";
pub const PROJECTOR_ROUND_DURATION: &str = "bulk_projector_round_duration_seconds";
pub const PROJECTOR_QUARANTINED: &str = "bulk_projector_quarantined_total";

// both samplers
pub const SAMPLE_FAILURES: &str = "bulk_backlog_sample_failures_total";

/// Help texts, rendered as `# HELP` (promtool wants one on every metric).
pub(super) fn describe() {
    describe_counter!(
        HTTP_REQUESTS,
        "Requests answered, by method, matched route template and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time to the response head, by method, route template and status (a streamed body's transfer is not included)."
    );
    describe_counter!(
        RATE_LIMIT_REFUSALS,
        "429 answers by code: rate_limited (request budget), too_many_streams, too_many_exports."
    );
    describe_gauge!(
        SSE_SUBSCRIBERS,
        "Live event streams (SSE) open on this api process."
    );
    describe_counter!(
        ACTIONS_SUBMITTED,
        "Bulk actions accepted, by action type and entity type."
    );
    describe_counter!(
        RECORDS_APPLIED,
        "Records settled by this consumer, by action type, outcome (succeeded, failed, skipped, unprocessed) and code."
    );
    describe_histogram!(
        BATCH_ATTEMPT_DURATION,
        Unit::Seconds,
        "One attempt at a batch, MongoDB outages waited out included, by action type and result (applied, failed, interrupted)."
    );
    describe_counter!(
        BATCHES_APPLIED,
        "Batches applied and settled, by action type."
    );
    describe_counter!(
        BATCH_RETRIES,
        "Failed attempts at a batch that will be retried, by action type."
    );
    describe_counter!(
        BATCHES_DEAD_LETTERED,
        "Batches moved to the dead-letter stream after their last attempt, by action type."
    );
    describe_counter!(
        WEBHOOK_ATTEMPTS,
        "Webhook delivery attempts by result: succeeded, retrying, failed (given up), gone (410), disabled (endpoint disabled)."
    );
    describe_histogram!(
        WEBHOOK_ATTEMPT_DURATION,
        Unit::Seconds,
        "One webhook attempt, from request to answer or error."
    );
    describe_gauge!(
        WORK_PENDING,
        "Batches in a partition's work stream: handed to the consumers and not yet settled."
    );
    describe_gauge!(
        WORK_OLDEST_AGE,
        "Age of the oldest batch in a partition's work stream (0 when empty), by Redis' clock."
    );
    describe_gauge!(
        READY_ACCOUNTS,
        "Accounts with actions eligible for dispatch in a partition (work waiting behind the work stream)."
    );
    describe_gauge!(
        SCHEDULED_ACTIONS,
        "Scheduled actions waiting for their start time in a partition."
    );
    describe_gauge!(
        DEAD_LETTERS,
        "Dead-lettered batches kept in a partition's dead-letter stream (operators clear it)."
    );
    describe_gauge!(
        PROJECTOR_LAG_ENTRIES,
        "Feed entries not yet projected in a partition: each is one write of events (a batch's settlement, a change of status) the views lack."
    );
    describe_gauge!(
        PROJECTOR_LAG_SECONDS,
        "Age of the oldest feed entry not yet projected in a partition (0 when none), by Redis' clock."
    );
    describe_counter!(
        PROJECTOR_ACTIONS_PROJECTED,
        "Action views brought up to date by this projector (one per action per round)."
    );
    describe_histogram!(
        PROJECTOR_ROUND_DURATION,
        Unit::Seconds,
        "One projection round: the actions a read of the feeds named, projected and acknowledged."
    );
    describe_counter!(
        PROJECTOR_QUARANTINED,
        "Actions quarantined because the store refuses their views."
    );
    describe_counter!(
        SAMPLE_FAILURES,
        "Samples of the Redis backlog gauges that failed (Redis unreachable); the gauges keep their last value."
    );
}
