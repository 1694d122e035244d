//! Reading MongoDB's answers to the writes we send as raw commands, whole.

use mongodb::bson::{Bson, Document};

use crate::apply::ApplyError;

/// The documents an `update` (or `delete`) command matched, once its whole reply says it
/// was applied.
/// `run_command` hands back the reply as the server sent it: per-statement `writeErrors`
/// and a `writeConcernError` (the write happened on the primary but was not acknowledged
/// as the deployment's write concern asks, e.g. a majority lost in a failover) arrive with
/// `ok: 1`. Either fails the attempt, so it is retried, never counted as success.
pub fn update_reply(reply: &Document) -> Result<i64, ApplyError> {
    if let Ok(errors) = reply.get_array("writeErrors") {
        if !errors.is_empty() {
            return Err(ApplyError::Refused(bounded(format!("{errors:?}"))));
        }
    }
    if let Some(concern) = reply.get("writeConcernError") {
        return Err(ApplyError::WriteConcern(bounded(concern.to_string())));
    }
    Ok(number(reply.get("n")))
}

/// A server's error text as kept in events and dead letters: a few KiB at most, whatever
/// the server echoed back (a statement can quote a whole record).
pub fn bounded(mut text: String) -> String {
    const MAX: usize = 2_048;
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

fn number(value: Option<&Bson>) -> i64 {
    match value {
        Some(Bson::Int32(n)) => i64::from(*n),
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Double(n)) => *n as i64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use mongodb::bson::doc;

    use super::*;

    #[test]
    fn an_acknowledged_update_counts_its_matches() {
        let reply = doc! { "n": 3, "nModified": 3, "ok": 1.0 };
        assert_eq!(update_reply(&reply).ok(), Some(3));
        let reply = doc! { "n": 2_i64, "writeErrors": [], "ok": 1.0 };
        assert_eq!(update_reply(&reply).ok(), Some(2));
    }

    #[test]
    fn a_write_concern_error_fails_the_attempt_although_ok_is_1() {
        // What a replica set answers when the primary applied the write but a majority
        // did not acknowledge it in time.
        let reply = doc! {
            "n": 5, "nModified": 5, "ok": 1.0,
            "writeConcernError": { "code": 64, "codeName": "WriteConcernFailed",
                "errmsg": "waiting for replication timed out" },
        };
        let error = update_reply(&reply).expect_err("not acknowledged");
        assert!(matches!(error, ApplyError::WriteConcern(_)));
        assert!(!error.is_outage(), "it counts as an attempt and is retried");
        assert!(error.to_string().contains("WriteConcernFailed"));
    }

    #[test]
    fn write_errors_fail_the_attempt_with_a_bounded_message() {
        let huge = "x".repeat(100_000);
        let reply = doc! { "n": 0, "ok": 1.0,
        "writeErrors": [{ "index": 0, "code": 2, "errmsg": huge }] };
        let error = update_reply(&reply).expect_err("refused");
        assert!(matches!(error, ApplyError::Refused(_)));
        assert!(error.to_string().len() < 2_200);
    }
}
