//! `bulk retry ID`: a new action of the records that failed or never ran.

use serde_json::{json, Map, Value};

use super::{wait_for, Context, Outcome, Pace, WaitArgs};
use crate::error::CliError;
use crate::progress::Progress;

#[derive(clap::Args, Debug)]
pub struct RetryArgs {
    pub id: String,
    /// Statuses of the rows to retry (repeat the flag; default: failed and unprocessed).
    #[arg(long = "status", value_name = "STATUS")]
    pub statuses: Vec<String>,
    /// Only rows with these codes (repeat the flag), e.g. dead_lettered.
    #[arg(long = "code", value_name = "CODE")]
    pub codes: Vec<String>,
    /// The retry's pace, N records every S seconds (default: the original's).
    #[arg(long, value_name = "N/S")]
    pub pace: Option<Pace>,
    /// Makes a repeated request answer with the retry it created.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the retry until it ends.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub limits: WaitArgs,
}

pub async fn run(context: &Context, args: &RetryArgs) -> Result<Outcome, CliError> {
    let id = super::action_id(&args.id)?;
    let mut body = Map::new();
    if !args.statuses.is_empty() {
        body.insert("statuses".into(), json!(args.statuses));
    }
    if !args.codes.is_empty() {
        body.insert("codes".into(), json!(args.codes));
    }
    if let Some(pace) = args.pace {
        body.insert("pacing".into(), pace.to_json());
    }
    // A retry refused as not ready yet created nothing: it is sent again as it was.
    let body = Value::Object(body);
    let path = format!("/bulk-actions/{id}/retry");
    let response = context
        .client
        .send_when_ready(|| {
            let request = context
                .client
                .request(reqwest::Method::POST, &path)
                .timeout(std::time::Duration::from_secs(120))
                .json(&body);
            match args.idempotency_key.as_deref() {
                Some(key) => request.header("idempotency-key", key),
                None => request,
            }
        })
        .await?;
    let view = crate::client::json_of(response).await?;
    let retry_id = view["actionId"]
        .as_str()
        .ok_or_else(|| CliError::Protocol("the retry has no actionId".into()))?
        .to_owned();
    if !args.wait {
        context.output.show(&view, || {
            format!(
                "{retry_id} retries {} records of {id}\nfollow it: bulk watch {retry_id}",
                view["totalRecords"].as_u64().unwrap_or_default()
            )
        });
        return Ok(Outcome::Done);
    }
    eprintln!("retry {retry_id} of {id} accepted");
    let mut progress = Progress::new(context.style);
    wait_for(context, &retry_id, &args.limits, &mut progress).await
}
