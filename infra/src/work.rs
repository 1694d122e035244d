//! Consumer-group plumbing shared by the work stream (consumers) and the feed (projector).

use std::time::Duration;

use domain::ActionId;
use redis::aio::ConnectionLike;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;

use crate::event_store::StoreError;
use crate::keys::Keys;
use crate::redis_conn::Blocking;

/// One batch to apply, as read from a partition's work stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    pub stream: String,
    pub entry_id: String,
    pub action_id: ActionId,
    pub batch: u32,
}

/// Which entries a group read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// Entries delivered to this consumer before and not yet acknowledged (after a restart).
    OwnPending,
    /// Entries never delivered to anyone.
    New,
}

/// Creates the group (and the stream) if missing.
pub async fn ensure_group<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream: &str,
    group: &str,
) -> Result<(), StoreError> {
    let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(stream, group, "0").await;
    match created {
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        other => Ok(other?),
    }
}

pub async fn ensure_groups<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    streams: &[String],
    group: &str,
) -> Result<(), StoreError> {
    for stream in streams {
        ensure_group(conn, stream, group).await?;
    }
    Ok(())
}

/// Reads a group's entries from several streams: one `XREADGROUP` over all of them on one
/// node. A cluster refuses a command over several slots (each partition is its own), so
/// there each stream is read in turn (from a random one, `count` each, as one node reads)
/// without waiting and, when all are empty, the wait is
/// on one of them, picked at random, for a share of `block` (at least 50 ms): an idle
/// reader notices new work on another partition within about `block`, at the cost of a
/// few reads a second.
pub async fn read_group(
    conn: &mut Blocking,
    streams: &[String],
    group: &str,
    consumer: &str,
    from: ReadFrom,
    count: usize,
    block: Duration,
) -> Result<Vec<(String, StreamId)>, StoreError> {
    if !matches!(conn, Blocking::Cluster(_)) || streams.len() < 2 {
        return read_streams(conn, streams, group, consumer, from, count, block).await;
    }
    // As on one node, `count` is per stream; the pass starts at a random stream so that a
    // busy partition is not always read first.
    let mut found = Vec::new();
    let start = rand::random_range(0..streams.len());
    for stream in streams[start..].iter().chain(&streams[..start]) {
        let single = std::slice::from_ref(stream);
        found.extend(
            read_streams(conn, single, group, consumer, from, count, Duration::ZERO).await?,
        );
    }
    if !found.is_empty() || from == ReadFrom::OwnPending || block.is_zero() {
        return Ok(found);
    }
    let slots = u32::try_from(streams.len()).unwrap_or(u32::MAX);
    let share = (block / slots).max(Duration::from_millis(50)).min(block);
    let stream = &streams[rand::random_range(0..streams.len())];
    read_streams(
        conn,
        std::slice::from_ref(stream),
        group,
        consumer,
        from,
        count,
        share,
    )
    .await
}

/// One `XREADGROUP` over `streams`. Returns (stream, entry) pairs.
async fn read_streams<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    streams: &[String],
    group: &str,
    consumer: &str,
    from: ReadFrom,
    count: usize,
    block: Duration,
) -> Result<Vec<(String, StreamId)>, StoreError> {
    let mut options = StreamReadOptions::default()
        .group(group, consumer)
        .count(count);
    let start = match from {
        ReadFrom::OwnPending => "0",
        ReadFrom::New => {
            // BLOCK 0 would wait forever: a zero `block` means "do not wait".
            if !block.is_zero() {
                options = options.block(block.as_millis() as usize);
            }
            ">"
        }
    };
    let starts = vec![start; streams.len()];
    let reply: Option<StreamReadReply> = conn.xread_options(streams, &starts, &options).await?;
    Ok(reply
        .map(|reply| {
            reply
                .keys
                .into_iter()
                .flat_map(|key| {
                    let stream = key.key;
                    key.ids
                        .into_iter()
                        .map(move |entry| (stream.clone(), entry))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// This consumer's pending entries (delivered to it before and not acknowledged), each
/// stream's read after the id `after` holds for it, which moves to the last entry returned:
/// repeated until it returns nothing, it is one pass over them, so an entry that fails
/// again is not read over and over (it is taken over once idle, as any other). One read
/// per stream (a cluster refuses one over several slots); used once, after a restart.
pub async fn read_own_pending<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    streams: &[String],
    after: &mut [String],
    group: &str,
    consumer: &str,
    count: usize,
) -> Result<Vec<(String, StreamId)>, StoreError> {
    let options = StreamReadOptions::default()
        .group(group, consumer)
        .count(count);
    let mut found = Vec::new();
    for (stream, after) in streams.iter().zip(after.iter_mut()) {
        let reply: Option<StreamReadReply> = conn
            .xread_options(std::slice::from_ref(stream), &[after.as_str()], &options)
            .await?;
        let entries: Vec<StreamId> = reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
            .collect();
        if let Some(last) = entries.last() {
            after.clone_from(&last.id);
        }
        found.extend(entries.into_iter().map(|entry| (stream.clone(), entry)));
    }
    Ok(found)
}

/// How many times an entry pending in `group` has been delivered (`XPENDING`); `None` when
/// it is not pending.
pub async fn delivery_count<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream: &str,
    group: &str,
    entry_id: &str,
) -> Result<Option<u64>, StoreError> {
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(entry_id)
        .arg(entry_id)
        .arg(1)
        .query_async(conn)
        .await?;
    Ok(pending.first().map(|(_, _, _, deliveries)| *deliveries))
}

/// Takes over entries idle for longer than `min_idle` in one stream (their consumer died).
pub async fn claim_idle<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle: Duration,
    count: usize,
) -> Result<Vec<StreamId>, StoreError> {
    let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    if !reply.deleted_ids.is_empty() {
        // Pending with a consumer that died, and trimmed (`MAXLEN`) before anyone took
        // them over: `XAUTOCLAIM` drops them from the group, and what they carried is lost.
        tracing::error!(
            stream,
            group,
            entries = ?reply.deleted_ids,
            metric = "stream_pending_entries_trimmed",
            "pending entries were trimmed from their stream before they were taken over; lost"
        );
    }
    Ok(reply.claimed)
}

/// Parses a work entry; `None` for an entry that is not one (logged and dropped by callers).
pub fn work_item(stream: String, entry: &StreamId) -> Option<WorkItem> {
    let action_id = ActionId::parse(&entry.get::<String>("action")?)?;
    let batch = entry.get::<String>("batch")?.parse().ok()?;
    Some(WorkItem {
        stream,
        entry_id: entry.id.clone(),
        action_id,
        batch,
    })
}

/// Acknowledges and deletes entries that carry nothing to do.
pub async fn discard<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream: &str,
    group: &str,
    entry_ids: &[String],
) -> Result<(), StoreError> {
    if entry_ids.is_empty() {
        return Ok(());
    }
    redis::pipe()
        .xack(stream, group, entry_ids)
        .ignore()
        .xdel(stream, entry_ids)
        .ignore()
        .exec_async(conn)
        .await?;
    Ok(())
}

/// Scheduled actions of a partition whose start time is at or before `now_ms`.
pub async fn due_actions<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    keys: &Keys,
    partition: u32,
    now_ms: i64,
    limit: isize,
) -> Result<Vec<ActionId>, StoreError> {
    let raw: Vec<String> = conn
        .zrangebyscore_limit(keys.schedule(partition), "-inf", now_ms, 0, limit)
        .await?;
    Ok(raw.iter().filter_map(|id| ActionId::parse(id)).collect())
}

/// Resets an entry's idle time while its consumer is still working on it, so a slow batch
/// is not mistaken for an abandoned one. `JUSTID` leaves the delivery count alone.
pub async fn keep_claimed<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    stream: &str,
    group: &str,
    consumer: &str,
    entry_id: &str,
) -> Result<(), StoreError> {
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(0)
        .arg(entry_id)
        .arg("JUSTID")
        .query_async(conn)
        .await?;
    Ok(())
}

/// Gives an entry back to the group before its consumer exits: its idle time is set to
/// `idle`, the claim threshold, so any live consumer's next `XAUTOCLAIM` takes it at once
/// instead of waiting for a silent consumer to look dead.
pub async fn hand_back<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    item: &WorkItem,
    group: &str,
    consumer: &str,
    idle: Duration,
) -> Result<(), StoreError> {
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&item.stream)
        .arg(group)
        .arg(consumer)
        .arg(0)
        .arg(&item.entry_id)
        .arg("IDLE")
        .arg(idle.as_millis() as u64)
        .arg("JUSTID")
        .query_async(conn)
        .await?;
    Ok(())
}

/// Gives back every entry `consumer` has pending on `streams` (see `hand_back`). At a
/// shutdown deadline a worker can be aborted while its read is in flight: Redis has
/// delivered the entry to it, but the worker never saw it, so only the group knows.
pub async fn hand_back_pending<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    streams: &[String],
    group: &str,
    consumer: &str,
    idle: Duration,
) -> Result<usize, StoreError> {
    let mut handed = 0;
    for stream in streams {
        let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(stream)
            .arg(group)
            .arg("-")
            .arg("+")
            .arg(1000)
            .arg(consumer)
            .query_async(conn)
            .await?;
        if pending.ids.is_empty() {
            continue;
        }
        let mut claim = redis::cmd("XCLAIM");
        claim.arg(stream).arg(group).arg(consumer).arg(0);
        for entry in &pending.ids {
            claim.arg(&entry.id);
        }
        claim.arg("IDLE").arg(idle.as_millis() as u64).arg("JUSTID");
        let _: redis::Value = claim.query_async(conn).await?;
        handed += pending.ids.len();
    }
    Ok(handed)
}
