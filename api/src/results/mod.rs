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
/// Long enough for a laptop's lid or a paused browser download to come back.
const STALL: Duration = Duration::from_secs(300);

/// What the reading task hands the response body.
enum Piece {
    Bytes(Bytes),
    /// Every row was written: only after this does the body end as a whole file.
    End,
}

/// The body of a result file, produced by a task that reads the rows as the client takes
/// them, holding `slot` (one of its account's downloads) until it ends. A CSV has the
/// columns of `upload_columns` its rows hold (those an upload of the action takes). The CSV columns are
/// learnt first, so a failure to read them is still an error answer. A failure later, or a
/// client that takes nothing for `STALL`, aborts the body (no terminating chunk): the client
/// sees a failed download, never a shorter file that parses as complete.
pub async fn file_body(
    database: &Database,
    action: ActionId,
    status: OutcomeStatus,
    format: Format,
    upload_columns: &[String],
    slot: Slot,
) -> Result<Body, ReadError> {
    // Only columns an upload takes: a refused record's unknown field (`emial`) would make
    // the whole file refused. A row holding another field says `kept_in_ndjson`.
    let fields = match format {
        Format::Csv => rows::field_names(database, action, status)
            .await?
            .into_iter()
            .filter(|name| upload_columns.contains(name))
            .collect(),
        Format::Ndjson => Vec::new(),
    };
    let mut reader = RowReader::open(database, action, status).await?;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Piece>(CHUNKS_IN_FLIGHT);
    tokio::spawn(async move {
        let _slot = slot;
        let send = |piece: Piece| {
            let sender = sender.clone();
            async move {
                match tokio::time::timeout(STALL, sender.send(piece)).await {
                    Ok(Ok(())) => Sent::Taken,
                    Ok(Err(_)) => Sent::Gone,
                    Err(_) => {
                        tracing::info!(%action, "a result file was cut: its client took nothing for five minutes");
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
                    // Returning without `End` aborts the body.
                    tracing::error!(%action, %error, "a result file was cut short");
                    return;
                }
            };
            let last = rows.is_empty();
            for row in &rows {
                writer.row(row);
                if writer.buffered() >= CHUNK_BYTES
                    && send(Piece::Bytes(Bytes::from(writer.take()))).await == Sent::Gone
                {
                    return;
                }
            }
            if last {
                let rest = writer.take();
                if !rest.is_empty() && send(Piece::Bytes(Bytes::from(rest))).await == Sent::Gone {
                    return;
                }
                send(Piece::End).await;
                return;
            }
        }
    });
    let stream = futures::stream::unfold(Some(receiver), |receiver| async move {
        let mut receiver = receiver?;
        match receiver.recv().await {
            Some(Piece::Bytes(bytes)) => Some((Ok(bytes), Some(receiver))),
            Some(Piece::End) => None,
            // The task ended before the last row: an error makes hyper abort the body.
            None => Some((
                Err(std::io::Error::other("the result file was cut short")),
                None,
            )),
        }
    });
    Ok(Body::from_stream(stream))
}

#[derive(Debug, PartialEq, Eq)]
enum Sent {
    Taken,
    /// The client went away, or stopped taking chunks.
    Gone,
}
