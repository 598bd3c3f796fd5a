//! Sync jobs: pull customers or opportunities from a connector page by page, apply each record,
//! checkpoint the cursor after every page. Whatever runs a job (the embedded queue, the
//! Functions `SyncWorker` trigger) calls `run_job`; the schedule calls `queue_incremental`.
use crate::store::{Claim, JobStatus, StoreError, SyncEntity, SyncJob, SyncMode};
use crate::App;
use chrono::{DateTime, Utc};
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

pub mod connector;
pub mod items;

use connector::{Connector, FetchError};
use items::Outcome;

/// Records asked for per page.
pub const PAGE_SIZE: u32 = 100;
/// How long a claim holds a job; renewed at every page and every connector attempt.
pub const LEASE: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no such sync job")]
    NotFound,
    /// Someone else works this job, or another job of its entity: try later.
    #[error("{0}")]
    Busy(String),
    /// The job cannot go on: connector failure after retries, no connector, ...
    #[error("{0}")]
    Failed(String),
    /// Another worker took the job over (our lease expired).
    #[error("the job's lease was lost to another worker")]
    LeaseLost,
    #[error("storage: {0}")]
    Store(StoreError),
}

impl From<StoreError> for RunError {
    fn from(e: StoreError) -> Self {
        RunError::Store(e)
    }
}

fn lease_until(app: &App) -> DateTime<Utc> {
    app.clock.now() + chrono::Duration::from_std(LEASE).unwrap_or_default()
}

/// Saves progress and renews the lease.
async fn checkpoint(app: &App, job: &SyncJob, owner: &str) -> Result<(), RunError> {
    match app.store.save_sync_job(job, owner, Some(lease_until(app))).await {
        Ok(()) => Ok(()),
        Err(StoreError::PreconditionFailed) => Err(RunError::LeaseLost),
        Err(e) => Err(e.into()),
    }
}

/// Claims and works the job to its end. `Ok` holds the finished job (also for a redelivery of
/// a job already finished). On `Err(Failed)` the job is released (queued again, progress kept):
/// the caller decides whether it fails for good or is retried.
pub async fn run_job(app: &App, id: &str, owner: &str) -> Result<SyncJob, RunError> {
    let now = app.clock.now();
    let mut job = match app.store.claim_sync_job(id, owner, now, lease_until(app)).await? {
        Claim::Claimed(j) => j,
        Claim::Finished(j) => return Ok(j),
        Claim::Busy(why) => return Err(RunError::Busy(why)),
        Claim::NotFound => return Err(RunError::NotFound),
    };
    tracing::info!(jobId = %job.id, entity = job.entity.as_str(), cursor = job.cursor.as_deref().unwrap_or(""), "sync job started");
    match work(app, &mut job, owner).await {
        Ok(()) => {
            job.status = JobStatus::Completed;
            job.finished_at = Some(app.clock.now());
            job.cursor = None;
            match app.store.save_sync_job(&job, owner, None).await {
                Ok(()) => Ok(job),
                Err(StoreError::PreconditionFailed) => Err(RunError::LeaseLost),
                Err(e) => Err(e.into()),
            }
        }
        Err(e @ (RunError::Failed(_) | RunError::Store(_))) => {
            job.status = JobStatus::Queued;
            let _ = app.store.save_sync_job(&job, owner, None).await;
            Err(e)
        }
        Err(e) => Err(e),
    }
}

async fn work(app: &App, job: &mut SyncJob, owner: &str) -> Result<(), RunError> {
    let connector = connector::open(&app.config, app.keys.source()).await.map_err(RunError::Failed)?;
    loop {
        let page = fetch(app, connector.as_ref(), job, owner).await?;
        for item in &page.items {
            job.processed += 1;
            let value = match item {
                Ok(v) => v,
                Err(why) => {
                    job.push_error(crate::store::SyncItemError { external_id: None, code: "MALFORMED_ITEM".into(), message: why.clone() });
                    continue;
                }
            };
            let outcome = match job.entity {
                SyncEntity::Customers => items::apply_customer(app, value).await,
                SyncEntity::Opportunities => items::apply_opportunity(app, value).await,
            }
            .map_err(|s| RunError::Store(s.0))?;
            if !matches!(outcome, Outcome::Invalid(_)) {
                if let Some(t) = items::updated_at(value) {
                    job.high_water = Some(job.high_water.map_or(t, |h| h.max(t)));
                }
            }
            match outcome {
                Outcome::Created => job.created += 1,
                Outcome::Updated => job.updated += 1,
                Outcome::Skipped => job.skipped += 1,
                Outcome::Invalid(e) => job.push_error(e),
            }
        }
        if page.next_cursor.is_some() && page.next_cursor == job.cursor {
            return Err(RunError::Failed("the connector returned the same cursor again".into()));
        }
        job.cursor = page.next_cursor;
        job.pages += 1;
        checkpoint(app, job, owner).await?;
        if job.cursor.is_none() {
            return Ok(());
        }
    }
}

/// The wait before retry `n` (1-based): base · 2ⁿ⁻¹, capped, times a random factor in [0.5, 1.5).
pub fn backoff(base: Duration, n: u32) -> Duration {
    let exp = base.saturating_mul(2u32.saturating_pow(n.saturating_sub(1))).min(MAX_BACKOFF);
    exp.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

/// One page, retried with exponential backoff and jitter on retryable failures.
async fn fetch(app: &App, connector: &dyn Connector, job: &SyncJob, owner: &str) -> Result<connector::Page, RunError> {
    let attempts = app.config.connector_max_attempts;
    let mut last = String::new();
    for n in 1..=attempts {
        if n > 1 {
            tokio::time::sleep(backoff(app.config.connector_retry_base, n - 1)).await;
            checkpoint(app, job, owner).await?;
        }
        match connector.fetch(job.entity, job.since, job.cursor.as_deref(), PAGE_SIZE).await {
            Ok(p) => return Ok(p),
            Err(FetchError::Fatal(why)) => return Err(RunError::Failed(why)),
            Err(FetchError::Retryable(why)) => {
                tracing::warn!(jobId = %job.id, attempt = n, reason = %why, "connector page failed");
                last = why;
            }
        }
    }
    Err(RunError::Failed(format!("gave up after {attempts} attempts: {last}")))
}

/// Stores a new queued job and hands it to the queue. If the queue refuses it, the job is
/// marked failed (so it is not left queued forever) and the error returned.
pub async fn queue_job(app: &App, job: SyncJob, idempotency: Option<crate::store::IdempotencyRecord>) -> Result<SyncJob, StoreError> {
    app.store.insert_sync_job(&job, idempotency).await?;
    if let Err(e) = app.queue.enqueue(&job.id).await {
        let reason = format!("could not be queued: {e}");
        let _ = app.store.fail_sync_job(&job.id, &reason, app.clock.now()).await;
        return Err(StoreError::Unavailable(reason));
    }
    Ok(job)
}

/// One run of the incremental schedule: an incremental job per entity from its watermark,
/// unless that entity already has a job queued or running. Returns the jobs queued.
pub async fn queue_incremental(app: &App) -> Result<Vec<SyncJob>, crate::error::ApiError> {
    let unfinished = app.store.unfinished_sync_jobs().await?;
    let mut queued = Vec::new();
    for entity in SyncEntity::ALL {
        if unfinished.iter().any(|j| j.entity == entity) {
            continue;
        }
        let since = app.store.sync_watermark(entity).await?;
        let job = SyncJob::new(crate::ids::new_id("sync"), entity, SyncMode::Incremental, since, app.clock.now());
        queued.push(queue_job(app, job, None).await?);
    }
    Ok(queued)
}

/// Standalone background work: the queue's workers and, with a connector configured, the
/// incremental schedule.
pub fn start(app: Arc<App>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = app.queue.start(app.clone());
    if !app.config.functions_mode && app.config.connector_base_url.is_some() {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(app.config.incremental_sync_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match queue_incremental(&app).await {
                    Ok(jobs) => tracing::info!(jobs = jobs.len(), "incremental sync queued"),
                    Err(e) => tracing::warn!(error = ?e.cause, "incremental sync could not be queued"),
                }
            }
        }));
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let base = Duration::from_millis(100);
        for _ in 0..50 {
            let first = backoff(base, 1);
            assert!(first >= Duration::from_millis(50) && first < Duration::from_millis(150), "{first:?}");
            let fourth = backoff(base, 4);
            assert!(fourth >= Duration::from_millis(400) && fourth < Duration::from_millis(1200), "{fourth:?}");
            assert!(backoff(base, 30) < MAX_BACKOFF.mul_f64(1.5));
        }
    }
}
