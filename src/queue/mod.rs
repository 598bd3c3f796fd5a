//! The sync job queue port. A job is stored first (the store is the truth about it); the queue
//! only carries "work on job X". `embedded` runs jobs on in-process tasks (standalone);
//! `servicebus` sends one message per job, worked by the Functions `SyncWorker` trigger.
use crate::App;
use async_trait::async_trait;
use std::sync::Arc;

pub mod embedded;
pub mod servicebus;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Asks for the stored job `job_id` to be worked. Sending the same id twice is harmless.
    async fn enqueue(&self, job_id: &str) -> Result<(), QueueError>;
    /// Starts the adapter's in-process consumers, if it has any.
    fn start(&self, _app: Arc<App>) -> Vec<tokio::task::JoinHandle<()>> {
        Vec::new()
    }
}

/// The queue for this configuration: Service Bus when SERVICEBUS_NAMESPACE is set, else the
/// embedded queue (with workers only when standalone: under Functions the trigger works jobs).
pub async fn open(config: &crate::config::Config, secrets: Arc<dyn crate::secrets::Secrets>) -> Result<Arc<dyn JobQueue>, String> {
    match &config.servicebus {
        Some(sb) => {
            let http = azure_core_legacy::new_http_client();
            let q = servicebus::ServiceBusQueue::open(http, sb, secrets).await.map_err(|e| e.to_string())?;
            Ok(Arc::new(q))
        }
        None => Ok(Arc::new(embedded::EmbeddedQueue::new(!config.functions_mode))),
    }
}
