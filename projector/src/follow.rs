//! Following the feeds: read (or take over) feed entries, project the actions they name,
//! acknowledge them.
//!
//! Two things keep one bad apple from stopping the rest. An action whose views the store
//! refuses is quarantined (recorded in Redis and on its view) and skipped from then on,
//! instead of failing the round forever. And feed entries left unacknowledged by a
//! projector that died, whatever its name was, are taken over after `claim_idle_ms`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use domain::{ActionId, ProjectionError};
use infra::keys::PROJECTOR_GROUP;
use infra::metrics::names;
use infra::mongo::ACTION_VIEWS;
use infra::redis_conn::Blocking;
use infra::work::{self, ReadFrom};
use infra::Projection;
use mongodb::bson::{doc, Document};
use mongodb::Database;
use redis::streams::StreamId;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{project_action, ProjectorConfig, ProjectorError};

pub(crate) struct Projector {
    pub(crate) store: Projection,
    pub(crate) database: Database,
    pub(crate) feeds: Vec<String>,
    pub(crate) config: ProjectorConfig,
}

impl Projector {
    pub(crate) async fn follow(&self, shutdown: &CancellationToken) -> Result<(), ProjectorError> {
        let block = Duration::from_millis(self.config.block_ms);
        let mut conn = infra::redis_conn::blocking(&self.config.store.redis_url, block).await?;
        work::ensure_groups(&mut conn, &self.feeds, PROJECTOR_GROUP).await?;
        let mut from = ReadFrom::OwnPending;
        let mut last_claim: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            let entries = match self.claim_if_due(&mut conn, &mut last_claim).await? {
                Some(claimed) => claimed,
                None => {
                    let entries = work::read_group(
                        &mut conn,
                        &self.feeds,
                        PROJECTOR_GROUP,
                        &self.config.name,
                        from,
                        self.config.feed_batch,
                        block,
                    )
                    .await?;
                    if entries.is_empty() {
                        from = ReadFrom::New;
                        continue;
                    }
                    entries
                }
            };
            let round = tracing::info_span!("projection_round", entries = entries.len());
            let started = Instant::now();
            self.project_round(&mut conn, &entries)
                .instrument(round)
                .await?;
            metrics::histogram!(names::PROJECTOR_ROUND_DURATION)
                .record(started.elapsed().as_secs_f64());
            if entries.len() < self.config.feed_batch && self.config.gather_ms > 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_millis(self.config.gather_ms)) => {}
                }
            }
        }
        Ok(())
    }

    /// Every half idle time, takes over the feed entries another projector read and never
    /// acknowledged for `claim_idle_ms`. While there are some, keeps taking them.
    async fn claim_if_due(
        &self,
        conn: &mut Blocking,
        last_claim: &mut Option<Instant>,
    ) -> Result<Option<Vec<(String, StreamId)>>, ProjectorError> {
        let idle = Duration::from_millis(self.config.claim_idle_ms);
        if last_claim.is_some_and(|at| at.elapsed() < idle / 2) {
            return Ok(None);
        }
        *last_claim = Some(Instant::now());
        let mut claimed = Vec::new();
        for feed in &self.feeds {
            let entries = work::claim_idle(
                conn,
                feed,
                PROJECTOR_GROUP,
                &self.config.name,
                idle,
                self.config.feed_batch,
            )
            .await?;
            claimed.extend(entries.into_iter().map(|entry| (feed.clone(), entry)));
        }
        if claimed.is_empty() {
            return Ok(None);
        }
        tracing::info!(name = %self.config.name, entries = claimed.len(), "took over abandoned feed entries");
        *last_claim = None;
        Ok(Some(claimed))
    }

    /// Projects every action the entries name, except quarantined ones, then acknowledges
    /// the entries.
    async fn project_round(
        &self,
        conn: &mut Blocking,
        entries: &[(String, StreamId)],
    ) -> Result<(), ProjectorError> {
        let actions: BTreeSet<ActionId> = entries
            .iter()
            .filter_map(|(_, entry)| entry.get::<String>("action"))
            .filter_map(|id| ActionId::parse(&id))
            .collect();
        let quarantined = self.store.quarantined_among(&actions).await?;
        for action in actions.difference(&quarantined) {
            let projected = project_action(&self.store, &self.database, *action)
                .instrument(tracing::info_span!("project", %action))
                .await?;
            match projected {
                Some(error) => quarantine(&self.store, &self.database, *action, &error).await?,
                None => metrics::counter!(names::PROJECTOR_ACTIONS_PROJECTED).increment(1),
            }
        }
        for feed in &self.feeds {
            let ids: Vec<String> = entries
                .iter()
                .filter(|(stream, _)| stream == feed)
                .map(|(_, entry)| entry.id.clone())
                .collect();
            work::discard(conn, feed, PROJECTOR_GROUP, &ids).await?;
        }
        Ok(())
    }
}

/// Records that `action`'s views cannot be projected: in Redis (what the projector and the
/// api go by, and what operators list), in the log, and on the stored view if the store
/// takes that much.
pub(crate) async fn quarantine(
    store: &Projection,
    database: &Database,
    action: ActionId,
    error: &ProjectionError,
) -> Result<(), ProjectorError> {
    store.quarantine(action, error).await?;
    metrics::counter!(names::PROJECTOR_QUARANTINED).increment(1);
    tracing::error!(
        %action,
        code = %error.code,
        seq = error.seq,
        message = %error.message,
        "quarantined: the views of this action cannot be projected; others go on. Fix the cause, then run `projector replay`"
    );
    let marked = async {
        let error = mongodb::bson::to_bson(error)?;
        database
            .collection::<Document>(ACTION_VIEWS)
            .update_one(
                doc! { "_id": action.to_string() },
                doc! { "$set": { "projectionError": error } },
            )
            .await?;
        Ok::<_, ProjectorError>(())
    };
    if let Err(error) = marked.await {
        tracing::warn!(%action, %error, "the quarantine could not be marked on the stored view; the api reads it from Redis");
    }
    Ok(())
}
