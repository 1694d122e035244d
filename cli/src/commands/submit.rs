//! `bulk submit FILE`: streams a CSV, NDJSON or JSON file to `POST /bulk-actions`, never
//! holding it whole, then optionally follows the action to its end.

use std::path::{Path, PathBuf};

use futures::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Map, Value};
use tokio::io::AsyncReadExt;
use tokio_util::bytes::Bytes;
use tokio_util::io::ReaderStream;

use super::{wait_for, Context, Outcome, Pace, WaitArgs};
use crate::error::CliError;
use crate::model::View;
use crate::progress::{Progress, UploadMeter};

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionType {
    Upsert,
    Update,
    Create,
    Delete,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Contact,
    Company,
    Lead,
    Opportunity,
    Task,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Csv,
    Ndjson,
    /// A JSON array of records: the `data` of a JSON submission.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The records: a .csv, .ndjson (.jsonl) or .json file (an array of records).
    pub file: PathBuf,
    #[arg(long, value_enum)]
    pub action: ActionType,
    #[arg(long, value_enum, default_value = "contact")]
    pub entity: Entity,
    /// The file's format, when its extension does not say.
    #[arg(long, value_enum)]
    pub format: Option<FileFormat>,
    /// Start at this time (RFC 3339, e.g. 2026-12-01T09:00:00Z) instead of now.
    #[arg(long, value_name = "TIME")]
    pub schedule: Option<String>,
    /// Drip: at most N records every S seconds (the API's `pacing`).
    #[arg(long, value_name = "N/S")]
    pub pace: Option<Pace>,
    /// At most this many records a minute (the API's `maxRecordsPerMinute`).
    #[arg(long, value_name = "N")]
    pub max_per_minute: Option<u32>,
    /// The key records are matched by: `natural` (default), `id` or `externalId:<field>`.
    #[arg(long)]
    pub match_by: Option<String>,
    /// Makes a repeated submission of the same file answer with the first action.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the action until it ends; the exit code says how it ended.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub limits: WaitArgs,
}

pub async fn run(context: &Context, args: &SubmitArgs) -> Result<Outcome, CliError> {
    let format = match args.format {
        Some(format) => format,
        None => format_of(&args.file)?,
    };
    let file = tokio::fs::File::open(&args.file)
        .await
        .map_err(CliError::file(&args.file))?;
    let size = file
        .metadata()
        .await
        .map_err(CliError::file(&args.file))?
        .len();
    let mut progress = Progress::new(context.style);
    let label = args.file.display().to_string();
    let meter = progress.upload_started(&label, size);
    let (content_type, query, body) = match format {
        FileFormat::Csv => ("text/csv", settings_query(args), file_body(file, meter)),
        FileFormat::Ndjson => (
            "application/x-ndjson",
            settings_query(args),
            file_body(file, meter),
        ),
        FileFormat::Json => (
            "application/json",
            Vec::new(),
            json_body(args, file, meter).await?,
        ),
    };
    let answer = context
        .client
        .submit(&query, content_type, body, args.idempotency_key.as_deref())
        .await;
    let view = match answer {
        Ok(view) => view,
        Err(error) => {
            progress.upload_failed();
            return Err(error);
        }
    };
    let action_id = view["actionId"]
        .as_str()
        .ok_or_else(|| CliError::Protocol("the accepted action has no actionId".into()))?
        .to_owned();
    progress.upload_finished(&action_id);
    if !args.wait {
        context.output.show(&view, || accepted(&view, &action_id));
        return Ok(Outcome::Done);
    }
    wait_for(context, &action_id, &args.limits, &mut progress).await
}

fn accepted(view: &Value, action_id: &str) -> String {
    let parsed: View = serde_json::from_value(view.clone()).unwrap_or_default();
    format!(
        "{action_id} {} ({} records)\nfollow it: bulk watch {action_id}",
        parsed.counts.status, parsed.counts.total_records
    )
}

pub fn format_of(path: &Path) -> Result<FileFormat, CliError> {
    let extension = path
        .extension()
        .and_then(|extension| extension.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("csv") => Ok(FileFormat::Csv),
        Some("ndjson" | "jsonl") => Ok(FileFormat::Ndjson),
        Some("json") => Ok(FileFormat::Json),
        _ => Err(CliError::Usage(format!(
            "{}: cannot tell the format from the file's name; give --format csv|ndjson|json",
            path.display()
        ))),
    }
}

fn action_name(action: ActionType) -> &'static str {
    match action {
        ActionType::Upsert => "upsert",
        ActionType::Update => "update",
        ActionType::Create => "create",
        ActionType::Delete => "delete",
    }
}

fn entity_name(entity: Entity) -> &'static str {
    match entity {
        Entity::Contact => "contact",
        Entity::Company => "company",
        Entity::Lead => "lead",
        Entity::Opportunity => "opportunity",
        Entity::Task => "task",
    }
}

/// The settings of an NDJSON or CSV upload, which travel as query parameters.
pub fn settings_query(args: &SubmitArgs) -> Vec<(&'static str, String)> {
    let mut query = vec![
        ("entityType", entity_name(args.entity).to_owned()),
        ("actionType", action_name(args.action).to_owned()),
    ];
    if let Some(match_by) = &args.match_by {
        query.push(("matchBy", match_by.clone()));
    }
    if let Some(schedule) = &args.schedule {
        query.push(("scheduledFor", schedule.clone()));
    }
    if let Some(pace) = args.pace {
        query.push(("pacingBatchSize", pace.batch_size.to_string()));
        query.push(("pacingIntervalSeconds", pace.interval_seconds.to_string()));
    }
    if let Some(max) = args.max_per_minute {
        query.push(("maxRecordsPerMinute", max.to_string()));
    }
    query
}

/// The settings of a JSON body, everything but `data`.
fn settings_object(args: &SubmitArgs) -> Map<String, Value> {
    let mut settings = Map::new();
    settings.insert("entityType".into(), json!(entity_name(args.entity)));
    settings.insert("actionType".into(), json!(action_name(args.action)));
    if let Some(match_by) = &args.match_by {
        settings.insert("matchBy".into(), json!(match_by));
    }
    if let Some(schedule) = &args.schedule {
        settings.insert("scheduledFor".into(), json!(schedule));
    }
    if let Some(pace) = args.pace {
        settings.insert("pacing".into(), pace.to_json());
    }
    if let Some(max) = args.max_per_minute {
        settings.insert("maxRecordsPerMinute".into(), json!(max));
    }
    settings
}

fn file_body(file: tokio::fs::File, meter: UploadMeter) -> reqwest::Body {
    let chunks = ReaderStream::with_capacity(file, 64 * 1024)
        .inspect_ok(move |chunk| meter.add(chunk.len() as u64));
    reqwest::Body::wrap_stream(chunks)
}

/// A JSON file holds the records' array; the body wraps it between the settings and a
/// closing brace, so the file still streams. The API takes no query parameters with a JSON
/// body, hence the settings inside.
async fn json_body(
    args: &SubmitArgs,
    mut file: tokio::fs::File,
    meter: UploadMeter,
) -> Result<reqwest::Body, CliError> {
    let mut head = vec![0u8; 4096];
    let read = file
        .read(&mut head)
        .await
        .map_err(CliError::file(&args.file))?;
    head.truncate(read);
    let starts_with_array = head.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if !starts_with_array {
        return Err(CliError::Usage(format!(
            "{}: a JSON file must hold an array of records (for other JSON, use NDJSON or CSV)",
            args.file.display()
        )));
    }
    let mut opening = Value::Object(settings_object(args)).to_string();
    // `{"entityType":…}` becomes `{"entityType":…,"data":` and the file follows.
    opening.pop();
    opening.push_str(",\"data\":");
    meter.add(head.len() as u64);
    let chunks = stream::iter([Ok(Bytes::from(opening)), Ok(Bytes::from(head))])
        .chain(
            ReaderStream::with_capacity(file, 64 * 1024)
                .inspect_ok(move |chunk| meter.add(chunk.len() as u64)),
        )
        .chain(stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(
            b"}",
        ))]));
    Ok(reqwest::Body::wrap_stream(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_comes_from_the_extension() {
        assert_eq!(format_of(Path::new("a.CSV")).ok(), Some(FileFormat::Csv));
        assert_eq!(
            format_of(Path::new("a.jsonl")).ok(),
            Some(FileFormat::Ndjson)
        );
        assert_eq!(
            format_of(Path::new("a.ndjson")).ok(),
            Some(FileFormat::Ndjson)
        );
        assert_eq!(format_of(Path::new("a.json")).ok(), Some(FileFormat::Json));
        assert!(matches!(
            format_of(Path::new("records.txt")),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn a_pace_becomes_the_apis_pacing_parameters() {
        let args = SubmitArgs {
            file: "a.csv".into(),
            action: ActionType::Update,
            entity: Entity::Company,
            format: None,
            schedule: Some("2026-12-01T09:00:00Z".into()),
            pace: Some(Pace {
                batch_size: 500,
                interval_seconds: 60,
            }),
            max_per_minute: None,
            match_by: None,
            idempotency_key: None,
            wait: false,
            limits: WaitArgs { max_failures: 0 },
        };
        let query = settings_query(&args);
        assert!(query.contains(&("entityType", "company".into())));
        assert!(query.contains(&("actionType", "update".into())));
        assert!(query.contains(&("pacingBatchSize", "500".into())));
        assert!(query.contains(&("pacingIntervalSeconds", "60".into())));
        assert!(query.contains(&("scheduledFor", "2026-12-01T09:00:00Z".into())));
        let object = settings_object(&args);
        assert_eq!(
            object["pacing"],
            json!({"batchSize": 500, "intervalSeconds": 60})
        );
    }
}
