//! Follows one action to its end over `GET /bulk-actions/{id}/events`, resuming with
//! `Last-Event-ID` when the server ends a stream (it does after `SSE_MAX_STREAM_SECONDS`)
//! or the connection drops, and reading the final statistics when the answer is `204`.

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::client::{api_error, retry_after, Client};
use crate::error::CliError;
use crate::model::{is_final, Counts, Stats};
use crate::progress::Progress;
use crate::sse::{Message, Parser};

/// Connections in a row that may fail, each after a longer pause (1 s, 2 s, … 10 s),
/// before the CLI gives up: about a minute of an unreachable api, long enough for a
/// restart or a deploy.
const RECONNECTS: u32 = 12;

/// How an action ended: its statistics as the API wrote them (for `--json`) and read.
pub struct Ended {
    pub raw: Value,
    pub stats: Stats,
}

pub async fn follow(
    client: &Client,
    action_id: &str,
    progress: &mut Progress,
) -> Result<Ended, CliError> {
    let path = format!("/bulk-actions/{action_id}/events");
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    loop {
        let mut request = client
            .request(Method::GET, &path)
            .header("accept", "text/event-stream");
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let pause = match request.send().await {
            Ok(response) if response.status() == StatusCode::NO_CONTENT => {
                // The final message was seen on an earlier connection, or the action
                // ended before a resume: the statistics say how.
                return final_stats(client, action_id).await;
            }
            Ok(response) if response.status().is_success() => {
                let mut body = response.bytes_stream();
                let mut parser = Parser::default();
                let mut read_any = false;
                let mut dropped = false;
                while let Some(chunk) = body.next().await {
                    let Ok(chunk) = chunk else {
                        dropped = true;
                        break;
                    };
                    parser.push(&chunk);
                    while let Some(message) = parser.next_message() {
                        read_any = true;
                        if let Some(id) = &message.id {
                            last_id = Some(id.clone());
                        }
                        if let Some(ended) = take(&message, action_id, progress)? {
                            return Ok(ended);
                        }
                    }
                }
                // A stream the server ended (its lifetime is up) is not a failure even if
                // it carried nothing: a quiet action sends no message between changes.
                if read_any || !dropped {
                    failures = 0;
                }
                Duration::from_millis(200)
            }
            Ok(response)
                if matches!(
                    response.status(),
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                ) =>
            {
                let wait = retry_after(response.headers()).unwrap_or(Duration::from_secs(2));
                if failures + 1 >= RECONNECTS {
                    return Err(api_error(response).await);
                }
                wait
            }
            Ok(response) => return Err(api_error(response).await),
            Err(source) => {
                if failures + 1 >= RECONNECTS {
                    return Err(CliError::Transport {
                        url: client.url(&path),
                        source,
                    });
                }
                Duration::from_millis(500)
            }
        };
        failures += 1;
        let backoff = if failures == 1 {
            pause
        } else {
            pause.max(Duration::from_secs(u64::from((failures - 1).min(10))))
        };
        if failures > 1 {
            progress.note(&format!(
                "lost the event stream; reconnecting in {:.1} s",
                backoff.as_secs_f64()
            ));
        }
        tokio::time::sleep(backoff).await;
    }
}

/// Takes one message into the display; the final one ends the follow.
fn take(
    message: &Message,
    action_id: &str,
    progress: &mut Progress,
) -> Result<Option<Ended>, CliError> {
    let data: Value = serde_json::from_str(&message.data).map_err(|error| {
        CliError::Protocol(format!(
            "a `{}` message that is not JSON: {error}",
            message.event
        ))
    })?;
    if is_final(&message.event) {
        let stats: Stats = serde_json::from_value(data.clone())
            .map_err(|error| CliError::Protocol(format!("final statistics: {error}")))?;
        progress.counts(&Counts {
            action_id: action_id.to_owned(),
            status: stats.status.clone(),
            total_records: stats.total,
            processed_records: stats.processed,
            succeeded: stats.succeeded,
            failed: stats.failed,
            skipped: stats.skipped,
            unprocessed: stats.unprocessed,
            records_per_second: stats.records_per_second,
        });
        progress.finish();
        return Ok(Some(Ended { raw: data, stats }));
    }
    // A change a resuming client is sent again carries no counts (they follow in a
    // `progress`): only its status is shown.
    if data.get("totalRecords").is_some() {
        if let Ok(mut counts) = serde_json::from_value::<Counts>(data) {
            if counts.action_id.is_empty() {
                counts.action_id = action_id.to_owned();
            }
            progress.counts(&counts);
        }
    } else if let Some(status) = crate::model::status_after(&message.event) {
        progress.status(action_id, status);
    }
    Ok(None)
}

async fn final_stats(client: &Client, action_id: &str) -> Result<Ended, CliError> {
    let raw = client
        .get_json(&format!("/bulk-actions/{action_id}/stats"), &[])
        .await?;
    let stats: Stats = serde_json::from_value(raw.clone())
        .map_err(|error| CliError::Protocol(format!("statistics: {error}")))?;
    Ok(Ended { raw, stats })
}
