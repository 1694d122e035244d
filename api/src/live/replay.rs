//! What a client resuming after an event seq missed: the status changes after it, read
//! back from the end of the action's stream.

use domain::live::status_change;
use domain::{ActionId, ActionStatus};
use infra::Submissions;

/// Events read per round trip.
const PAGE_EVENTS: usize = 16;

/// The answer to "what happened after seq `after`".
#[derive(Debug)]
pub enum Replay {
    /// The status changes after it, oldest first, up to the stream's end at `through`.
    /// A `Completed` is left out: the final message is sent from the folded view, which
    /// has the statistics it carries.
    Changes {
        changes: Vec<ReplayedChange>,
        through: u64,
    },
    /// More than the limit of events (or of bytes) lie after it, or the stream no longer
    /// holds them (archived, or `after` is not a seq of this stream): start again from a
    /// snapshot.
    TooFarBack,
    /// The event at `after` is `Completed`: the client has the final message.
    Finished,
}

/// Bytes of events read back for one resume, whatever the count: a batch's event carries
/// an outcome per record.
const MAX_BYTES: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct ReplayedChange {
    pub seq: u64,
    pub name: &'static str,
    pub occurred_at: domain::Timestamp,
}

/// Reads back at most `limit` events from the end of `action`'s stream looking for seq
/// `after`. Only the events after it are decoded, and only those that change the status.
pub async fn status_changes_after(
    store: &Submissions,
    action: ActionId,
    after: u64,
    limit: usize,
) -> Result<Replay, infra::StoreError> {
    let mut changes = Vec::new();
    let mut before: Option<String> = None;
    let mut through: Option<u64> = None;
    let mut read = 0;
    let mut bytes = 0;
    loop {
        let page = store
            .read_back_raw(action, before.as_deref(), PAGE_EVENTS)
            .await?;
        for raw in &page {
            through.get_or_insert(raw.seq);
            if raw.seq == after && raw.type_name == "Completed" {
                return Ok(Replay::Finished);
            }
            if raw.seq <= after {
                changes.reverse();
                return Ok(Replay::Changes {
                    changes,
                    through: through.unwrap_or(after),
                });
            }
            read += 1;
            bytes += raw.data.len();
            if read > limit || bytes > MAX_BYTES {
                return Ok(Replay::TooFarBack);
            }
            if raw.type_name == "Completed" || !changes_status(&raw.type_name) {
                continue;
            }
            let event = raw.decode(action)?;
            // Any non-final status works here: only `Completed` depends on it.
            if let Some(name) = status_change(&event.envelope.payload, ActionStatus::Running) {
                changes.push(ReplayedChange {
                    seq: raw.seq,
                    name,
                    occurred_at: event.envelope.occurred_at,
                });
            }
        }
        // A page may be cut short by its bytes: only an empty one is the start.
        match page.last() {
            Some(last) => before = Some(last.position.clone()),
            // The start of the stream: `after` is 0 (nothing seen), or not in it.
            _ if after == 0 => {
                changes.reverse();
                return Ok(Replay::Changes {
                    changes,
                    through: through.unwrap_or(0),
                });
            }
            _ => return Ok(Replay::TooFarBack),
        }
    }
}

/// Whether events of this stored type name can change the status, without decoding them:
/// the batches' events are the large ones and never do.
fn changes_status(type_name: &str) -> bool {
    !matches!(
        type_name,
        "Created"
            | "RecordRejected"
            | "RecordSkipped"
            | "BatchProcessed"
            | "BatchDeadLettered"
            | "BatchCancelled"
            // A retry is another action's start; this one's status does not move.
            | "RetryCreated"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::EventPayload;

    #[test]
    fn the_batch_events_are_the_ones_not_decoded() {
        for (payload, decoded) in [
            (EventPayload::Started {}, true),
            (EventPayload::Completed {}, true),
            (EventPayload::Released {}, true),
            (
                EventPayload::BatchCancelled {
                    batch: 0,
                    outcomes: Vec::new(),
                    submitted: Vec::new(),
                },
                false,
            ),
            (
                EventPayload::RecordSkipped {
                    records: vec![],
                    submitted: vec![],
                },
                false,
            ),
            (
                EventPayload::RetryCreated {
                    retry: domain::ActionId::from_ulid(ulid::Ulid::new()),
                    api_key_id: None,
                },
                false,
            ),
        ] {
            assert_eq!(changes_status(payload.type_name()), decoded, "{payload:?}");
        }
    }
}
