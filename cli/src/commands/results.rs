//! `bulk results ID`: a result file, streamed from the API to a file or stdout as it comes.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use reqwest::Method;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::{Context, Outcome};
use crate::error::CliError;
use crate::output::Format;

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFormat {
    Csv,
    Ndjson,
}

#[derive(clap::Args, Debug)]
pub struct ResultsArgs {
    pub id: String,
    /// Which records: succeeded, failed, skipped or unprocessed.
    #[arg(long, default_value = "failed")]
    pub status: String,
    /// CSV or NDJSON (default: from the output file's extension, else CSV).
    #[arg(long, value_enum)]
    pub format: Option<ResultFormat>,
    /// Write here instead of stdout; the file appears whole or not at all.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub async fn run(context: &Context, args: &ResultsArgs) -> Result<Outcome, CliError> {
    let id = super::action_id(&args.id)?;
    let format = args.format.unwrap_or_else(|| {
        match args
            .output
            .as_deref()
            .and_then(Path::extension)
            .and_then(|extension| extension.to_str())
        {
            Some("ndjson" | "jsonl") => ResultFormat::Ndjson,
            _ => ResultFormat::Csv,
        }
    });
    let format_name = match format {
        ResultFormat::Csv => "csv",
        ResultFormat::Ndjson => "ndjson",
    };
    let path = format!("/bulk-actions/{id}/results");
    let response = context
        .client
        .send_when_ready(|| {
            context
                .client
                .request(Method::GET, &path)
                .query(&[("status", args.status.as_str()), ("format", format_name)])
        })
        .await?;
    let mut body = response.bytes_stream();
    let cut =
        |error: reqwest::Error| CliError::Protocol(format!("the result file was cut off: {error}"));
    let Some(path) = &args.output else {
        let mut stdout = tokio::io::stdout();
        while let Some(chunk) = body.next().await {
            stdout
                .write_all(&chunk.map_err(cut)?)
                .await
                .map_err(CliError::file("stdout"))?;
        }
        stdout.flush().await.map_err(CliError::file("stdout"))?;
        return Ok(Outcome::Done);
    };
    // Into a temporary file beside the target, renamed at the end: a download cut short
    // never leaves a partial file that looks complete, nor clobbers an earlier good one.
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let temporary =
        tempfile::NamedTempFile::new_in(&directory).map_err(CliError::file(&directory))?;
    let handle = temporary
        .reopen()
        .map_err(CliError::file(temporary.path()))?;
    let mut file = tokio::fs::File::from_std(handle);
    let mut bytes = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(cut)?;
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(CliError::file(path))?;
    }
    file.flush().await.map_err(CliError::file(path))?;
    file.sync_all().await.map_err(CliError::file(path))?;
    drop(file);
    temporary.persist(path).map_err(|error| CliError::File {
        path: path.clone(),
        source: error.error,
    })?;
    // A temporary file is private to its owner; the result file is an ordinary one.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(CliError::file(path))?;
    }
    let summary = json!({
        "actionId": id,
        "status": args.status,
        "format": format_name,
        "path": path.display().to_string(),
        "bytes": bytes,
    });
    match context.output.format {
        Format::Json => println!("{summary}"),
        // The file is the data; the note about it is progress-like chatter for stderr.
        Format::Human => {
            let _ = writeln!(
                std::io::stderr(),
                "wrote {bytes} bytes of {} records to {}",
                args.status,
                path.display()
            );
        }
    }
    Ok(Outcome::Done)
}
