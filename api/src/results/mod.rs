//! Result files: the rows of one status of an action, read by index from the views and
//! written as CSV or NDJSON while they are read (`rows`, `write`).

pub mod rows;
pub mod write;

use axum::body::{Body, Bytes};
use domain::{ActionId, OutcomeStatus};
use mongodb::Database;
use std::time::Duration;

use crate::slots::Slot;

use rows::{ReadError, RowReader};
use write::{Format, RowWriter};

/// Bytes gathered before a chunk goes to the client.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks in flight between the reading task and the response: what the api holds of a
/// download is this, the documents being merged and one chunk being written.
const CHUNKS_IN_FLIGHT: usize = 4;

/// How long a download may leave a chunk untaken before it is cut: a client that stops
/// reading would otherwise hold its cursor and its account's slot for as long as it likes.
const STALL: Duration = Duration::from_secs(60);

/// The body of a result file, produced by a task that reads the rows as the client takes
/// them, holding `slot` (one of its account's downloads) until it ends. The CSV columns are
/// learnt first, so a failure to read them is still an error answer; a failure later, or a
/// client that takes nothing for `STALL`, cuts the body short (an incomplete download).
pub async fn file_body(
    database: &Database,
    action: ActionId,
    status: OutcomeStatus,
    format: Format,
    slot: Slot,
) -> Result<Body, ReadError> {
    let fields = match format {
        Format::Csv => rows::field_names(database, action, status).await?,
        Format::Ndjson => Vec::new(),
    };
    let mut reader = RowReader::open(database, action, status).await?;
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let _slot = slot;
        let send = |chunk: Result<Bytes, std::io::Error>| {
            let sender = sender.clone();
            async move {
                match tokio::time::timeout(STALL, sender.send(chunk)).await {
                    Ok(Ok(())) => Sent::Taken,
                    Ok(Err(_)) => Sent::Gone,
                    Err(_) => {
                        tracing::info!(%action, "a result file was cut: its client took nothing for a minute");
                        Sent::Gone
                    }
                }
            }
        };
        let mut writer = RowWriter::new(format, fields);
        loop {
            let rows = match reader.next().await {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::error!(%action, %error, "a result file was cut short");
                    send(Err(std::io::Error::other(error))).await;
                    return;
                }
            };
            let last = rows.is_empty();
            for row in &rows {
                writer.row(row);
                if writer.buffered() >= CHUNK_BYTES
                    && send(Ok(Bytes::from(writer.take()))).await == Sent::Gone
                {
                    return;
                }
            }
            if last {
                let rest = writer.take();
                if !rest.is_empty() {
                    send(Ok(Bytes::from(rest))).await;
                }
                return;
            }
        }
    });
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    Ok(Body::from_stream(stream))
}

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Taken,
    /// The client went away, or stopped taking chunks.
    Gone,
}
