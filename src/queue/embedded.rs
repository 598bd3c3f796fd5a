//! The standalone queue: jobs live in the SQLite file (the store), and in-process tokio tasks
//! work them. At start every queued or running job is picked up again, so a job survives a
//! restart or a crash and resumes from its last checkpoint.
use super::{JobQueue, QueueError};
use crate::App;
use async_trait::async_trait;
use dashmap::DashSet;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Jobs worked at the same time by one process.
const WORKERS: usize = 2;
/// How long a job waits before another try when its entity is busy or the store is unavailable.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// The lease owner of embedded workers. Standalone is one process per SQLite file, so after a
/// crash the restarted process takes its own unexpired leases back at once.
pub const OWNER: &str = "embedded";

pub struct EmbeddedQueue {
    tx: mpsc::UnboundedSender<String>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    workers: bool,
}

impl EmbeddedQueue {
    /// `workers == false` (under Functions without Service Bus): jobs are only stored and wait
    /// for a `SyncWorker` invocation.
    pub fn new(workers: bool) -> EmbeddedQueue {
        let (tx, rx) = mpsc::unbounded_channel();
        EmbeddedQueue { tx, rx: Mutex::new(Some(rx)), workers }
    }
}

#[async_trait]
impl JobQueue for EmbeddedQueue {
    async fn enqueue(&self, job_id: &str) -> Result<(), QueueError> {
        if !self.workers {
            return Ok(());
        }
        self.tx.send(job_id.to_string()).map_err(|_| QueueError::Unavailable("the embedded queue has stopped".into()))
    }

    fn start(&self, app: Arc<App>) -> Vec<tokio::task::JoinHandle<()>> {
        let Some(mut rx) = self.rx.lock().take().filter(|_| self.workers) else { return Vec::new() };
        let tx = self.tx.clone();
        let dispatcher = tokio::spawn(async move {
            match app.store.unfinished_sync_jobs().await {
                Ok(jobs) => {
                    for j in jobs {
                        tracing::info!(jobId = %j.id, status = j.status.as_str(), "picking up an unfinished sync job");
                        let _ = tx.send(j.id);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot list unfinished sync jobs"),
            }
            let slots = Arc::new(tokio::sync::Semaphore::new(WORKERS));
            let in_flight: Arc<DashSet<String>> = Arc::new(DashSet::new());
            // Owned here, so stopping the dispatcher (shutdown) stops its workers too.
            let mut workers = tokio::task::JoinSet::new();
            while let Some(id) = rx.recv().await {
                while workers.try_join_next().is_some() {}
                if !in_flight.insert(id.clone()) {
                    continue;
                }
                let Ok(permit) = slots.clone().acquire_owned().await else { break };
                let (app, tx, in_flight) = (app.clone(), tx.clone(), in_flight.clone());
                workers.spawn(async move {
                    let again = work(&app, &id).await;
                    in_flight.remove(&id);
                    drop(permit);
                    if again {
                        tokio::time::sleep(RETRY_AFTER).await;
                        let _ = tx.send(id);
                    }
                });
            }
        });
        vec![dispatcher]
    }
}

/// Works one job; true when it should be tried again later.
async fn work(app: &App, id: &str) -> bool {
    use crate::sync::RunError;
    match crate::sync::run_job(app, id, OWNER).await {
        Ok(job) => {
            tracing::info!(jobId = %id, status = job.status.as_str(), processed = job.processed, "sync job done");
            false
        }
        Err(RunError::Busy(why)) => {
            tracing::debug!(jobId = %id, why = %why, "sync job waits");
            true
        }
        Err(RunError::Store(crate::store::StoreError::Unavailable(_))) => true,
        Err(RunError::NotFound | RunError::LeaseLost) => false,
        Err(e) => {
            let reason = e.to_string();
            tracing::warn!(jobId = %id, reason = %reason, "sync job failed");
            if let Err(e) = app.store.fail_sync_job(id, &reason, app.clock.now()).await {
                tracing::error!(jobId = %id, error = %e, "cannot mark the sync job failed");
                return true;
            }
            false
        }
    }
}
