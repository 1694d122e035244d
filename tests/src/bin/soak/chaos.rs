//! The chaos loop: storms of SIGKILLs and restarts at random (the two api instances, the
//! three consumers, the projector, redis-server, FerretDB), separated by calm windows in
//! which every process is up. Calm windows are where the fair-share bound is held.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bulk_tests::{ApiClient, Deployment};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use crate::report::Tally;

pub const CONSUMERS: [&str; 3] = ["c1", "c2", "c3"];
/// After a storm, how long processes get to find their dependencies again (their backoff
/// is capped at 5 s, a dead consumer's batches are claimable after 2 s) before the calm
/// window, and its latency bound, begins.
const RECOVERY_MARGIN: Duration = Duration::from_secs(10);

/// A span during which every process was up and had recovered.
#[derive(Debug, Clone, Copy)]
pub struct CalmWindow {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Victim {
    Api(usize),
    Consumer(usize),
    Projector,
    Redis,
    MongoDb,
}

impl Victim {
    fn kind(&self) -> &'static str {
        match self {
            Victim::Api(_) => "api",
            Victim::Consumer(_) => "consumer",
            Victim::Projector => "projector",
            Victim::Redis => "redis-server",
            Victim::MongoDb => "mongodb (FerretDB)",
        }
    }

    fn random(rng: &mut StdRng) -> Self {
        match rng.random_range(0..10) {
            0 | 1 => Victim::Api(rng.random_range(0..2)),
            2..=4 => Victim::Consumer(rng.random_range(0..CONSUMERS.len())),
            5 | 6 => Victim::Projector,
            7 | 8 => Victim::Redis,
            _ => Victim::MongoDb,
        }
    }
}

pub struct Chaos {
    pub deployment: Arc<Mutex<Deployment>>,
    /// A client of the second api instance, for its readiness.
    pub second_api: ApiClient,
    pub tally: Arc<Tally>,
    pub storm: Duration,
    pub calm: Duration,
    pub seed: u64,
}

impl Chaos {
    /// Alternates calm and storm until `stop`, then brings everything up; returns the calm
    /// windows.
    pub async fn run(self, stop: Arc<AtomicBool>) -> Result<Vec<CalmWindow>> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let started = Instant::now();
        let mut windows = Vec::new();
        loop {
            let from = Utc::now();
            sleep_unless_stopped(self.calm, &stop).await;
            windows.push(CalmWindow {
                from,
                to: Utc::now(),
            });
            if stop.load(Ordering::Relaxed) {
                return Ok(windows);
            }
            self.tally.bump("chaos", "storms");
            let end = Instant::now() + self.storm;
            while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                self.strike(&mut rng, started).await?;
            }
            self.wait_all_ready().await?;
            tokio::time::sleep(RECOVERY_MARGIN).await;
        }
    }

    /// Kills one or two processes, leaves them down a moment, starts them again.
    async fn strike(&self, rng: &mut StdRng, started: Instant) -> Result<()> {
        let mut victims = vec![Victim::random(rng)];
        if rng.random_bool(0.25) {
            let second = Victim::random(rng);
            if !victims.contains(&second) {
                victims.push(second);
            }
        }
        for victim in &victims {
            eprintln!(
                "[soak] {:>6.1}s chaos: SIGKILL {victim:?}",
                started.elapsed().as_secs_f64()
            );
            self.kill(*victim).await;
            self.tally.bump("kills (SIGKILL)", victim.kind());
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..4_000))).await;
        for victim in &victims {
            self.restart(*victim).await?;
            self.tally.bump("restarts", victim.kind());
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..3_000))).await;
        Ok(())
    }

    async fn kill(&self, victim: Victim) {
        let mut deployment = self.deployment.lock().await;
        match victim {
            Victim::Api(0) => deployment.kill_api(),
            Victim::Api(_) => deployment.kill_another_api(0),
            Victim::Consumer(i) => deployment.kill_consumer(CONSUMERS[i]),
            Victim::Projector => deployment.kill_projector(),
            Victim::Redis => deployment.services.kill_redis(),
            Victim::MongoDb => deployment.services.kill_mongodb(),
        }
    }

    /// Starts a victim again; a few attempts (a port may linger a moment after a kill).
    async fn restart(&self, victim: Victim) -> Result<()> {
        let mut last = None;
        for _ in 0..5 {
            let mut deployment = self.deployment.lock().await;
            // Starting redis-server and FerretDB waits for their port: a blocking wait.
            let started = tokio::task::block_in_place(|| match victim {
                Victim::Api(0) => deployment.start_api(),
                Victim::Api(_) => deployment.restart_another_api(0),
                Victim::Consumer(i) => deployment.start_consumer(CONSUMERS[i]),
                Victim::Projector => deployment.start_projector(),
                Victim::Redis => deployment.services.start_redis_again(),
                Victim::MongoDb => deployment.services.start_mongodb_again(),
            });
            match started {
                Ok(()) => return Ok(()),
                Err(error) => last = Some(error),
            }
            drop(deployment);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(last.context("no attempt")?).with_context(|| format!("restarting {victim:?}"))
    }

    async fn wait_all_ready(&self) -> Result<()> {
        self.deployment
            .lock()
            .await
            .wait_ready(Duration::from_secs(120))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while !matches!(self.second_api.get_json("/readyz").await, Ok((200, _))) {
            anyhow::ensure!(Instant::now() < deadline, "the second api is not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }
}

async fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) {
    let end = Instant::now() + duration;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
