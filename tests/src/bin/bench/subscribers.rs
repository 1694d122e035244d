//! Live progress subscribers during an end-to-end run: how late each message arrives
//! after the event it reports, and what they cost the run.

use std::time::Duration;

use anyhow::{bail, Result};
use bulk_tests::Deployment;
use serde_json::{json, Value};
use tokio::task::JoinSet;

/// What the subscribers saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Milliseconds from a message's `lastEventAt` (the batch settling) to its arrival, at
    /// the measuring subscribers.
    pub latencies_ms: Vec<i64>,
    pub messages: usize,
    pub finals: usize,
}

/// Opens `count` streams of `action`, each read to its final message, in tasks.
pub async fn subscribe(
    deployment: &Deployment,
    action: &str,
    count: usize,
) -> Result<JoinSet<Result<Seen>>> {
    let mut tasks = JoinSet::new();
    let path = format!("/bulk-actions/{action}/events");
    for number in 0..count {
        // Every tenth subscriber measures; the others only read to the end, so that the
        // measuring harness, on the same two cores, costs the run as little as it can.
        let measures = number % 10 == 0;
        let client = deployment.client.clone();
        let path = path.clone();
        let stream = client.events(&path, "bench", None).await?;
        if stream.status != 200 {
            bail!("a subscriber was refused: {}", stream.status);
        }
        tasks.spawn(async move {
            let mut stream = stream;
            let mut seen = Seen::default();
            while let Some(message) = stream.next(Duration::from_secs(3600)).await? {
                let arrived = infra::clock::now();
                seen.messages += 1;
                if matches!(message.event.as_str(), "completed" | "failed" | "cancelled") {
                    seen.finals += 1;
                    break;
                }
                if !measures {
                    continue;
                }
                let data = message.json()?;
                if let Some(at) = data["lastEventAt"]
                    .as_str()
                    .and_then(domain::Timestamp::parse_rfc3339)
                {
                    seen.latencies_ms.push(arrived.millis_since(at));
                }
            }
            Ok(seen)
        });
    }
    Ok(tasks)
}

/// Waits for every subscriber and sums up what they saw.
pub async fn summary(mut tasks: JoinSet<Result<Seen>>, count: usize) -> Result<Value> {
    let mut all = Seen::default();
    while let Some(joined) = tasks.join_next().await {
        let seen = joined??;
        all.latencies_ms.extend(seen.latencies_ms);
        all.messages += seen.messages;
        all.finals += seen.finals;
    }
    if all.finals != count {
        bail!(
            "{} of {count} subscribers saw the final message",
            all.finals
        );
    }
    all.latencies_ms.sort_unstable();
    let at = |quantile: f64| -> i64 {
        if all.latencies_ms.is_empty() {
            return -1;
        }
        let index = ((all.latencies_ms.len() - 1) as f64 * quantile).round() as usize;
        all.latencies_ms[index]
    };
    Ok(json!({
        "subscribers": count,
        "messages": all.messages,
        "latencyMs": {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": at(1.0)},
    }))
}
