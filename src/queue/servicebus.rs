//! Azure Service Bus: one message per job, `MessageId` = jobId so the queue's duplicate
//! detection drops a second send of the same job. Sent with `azure_messaging_servicebus`
//! (REST, SAS auth) using a send-only policy whose key comes from the Secrets port.
use super::{JobQueue, QueueError};
use crate::config::ServiceBusConfig;
use crate::secrets::{SecretString, Secrets, SERVICEBUS_SEND_KEY};
use async_trait::async_trait;
use azure_messaging_servicebus::service_bus::{QueueClient, SendMessageOptions, SettableBrokerProperties};
use parking_lot::RwLock;
use std::sync::Arc;

pub struct ServiceBusQueue {
    http: Arc<dyn azure_core_legacy::HttpClient>,
    config: ServiceBusConfig,
    secrets: Arc<dyn Secrets>,
    /// None until the send key could be read.
    client: RwLock<Option<QueueClient>>,
}

async fn send_key(secrets: &Arc<dyn Secrets>) -> Result<SecretString, QueueError> {
    let versions = secrets
        .versions(SERVICEBUS_SEND_KEY)
        .await
        .map_err(|e| QueueError::Unavailable(format!("cannot read {SERVICEBUS_SEND_KEY}: {e}")))?;
    versions
        .into_iter()
        .next()
        .map(|v| v.value)
        .ok_or_else(|| QueueError::Unavailable(format!("{SERVICEBUS_SEND_KEY} has no enabled version")))
}

/// The crate wants the bare namespace name; SERVICEBUS_NAMESPACE holds the fully-qualified
/// `<ns>.servicebus.windows.net` (as the trigger's connection setting does). Both are accepted.
pub fn namespace_name(configured: &str) -> &str {
    let s = configured.trim().trim_start_matches("https://").trim_start_matches("sb://").trim_end_matches('/');
    s.strip_suffix(".servicebus.windows.net").unwrap_or(s)
}

fn client(http: &Arc<dyn azure_core_legacy::HttpClient>, c: &ServiceBusConfig, key: &SecretString) -> Result<QueueClient, QueueError> {
    let ns = namespace_name(&c.namespace).to_string();
    QueueClient::new(http.clone(), ns, c.queue.clone(), c.send_policy.clone(), key.expose().to_string())
        .map_err(|e| QueueError::Unavailable(e.to_string()))
}

impl ServiceBusQueue {
    /// Reads the send key once (a missing key only fails sends, not the start); it is read
    /// again when Service Bus refuses it (rotation).
    pub async fn open(
        http: Arc<dyn azure_core_legacy::HttpClient>,
        config: &ServiceBusConfig,
        secrets: Arc<dyn Secrets>,
    ) -> Result<ServiceBusQueue, QueueError> {
        let q = ServiceBusQueue { http, config: config.clone(), secrets, client: RwLock::new(None) };
        if let Err(e) = q.reload_key().await {
            tracing::warn!(error = %e, "Service Bus send key not available yet; sync jobs cannot be queued");
        }
        Ok(q)
    }

    async fn reload_key(&self) -> Result<QueueClient, QueueError> {
        let key = send_key(&self.secrets).await?;
        let c = client(&self.http, &self.config, &key)?;
        *self.client.write() = Some(c.clone());
        Ok(c)
    }

    async fn send(&self, job_id: &str) -> Result<(), SendError> {
        let body = serde_json::json!({ "jobId": job_id }).to_string();
        let options = SendMessageOptions {
            content_type: Some("application/json".into()),
            broker_properties: Some(SettableBrokerProperties { message_id: Some(job_id.to_string()), ..Default::default() }),
            custom_properties: None,
        };
        let current = self.client.read().clone();
        let client = match current {
            Some(c) => c,
            None => self.reload_key().await.map_err(SendError::Queue)?,
        };
        client.send_message(&body, Some(options)).await.map_err(SendError::Http)
    }
}

enum SendError {
    Queue(QueueError),
    Http(azure_core_legacy::Error),
}

#[async_trait]
impl JobQueue for ServiceBusQueue {
    async fn enqueue(&self, job_id: &str) -> Result<(), QueueError> {
        let unavailable = |e: SendError| match e {
            SendError::Queue(q) => q,
            SendError::Http(e) => QueueError::Unavailable(e.to_string()),
        };
        match self.send(job_id).await {
            Ok(()) => Ok(()),
            Err(SendError::Http(e))
                if matches!(
                    e.kind(),
                    azure_core_legacy::error::ErrorKind::HttpResponse { status, .. } if matches!(u16::from(*status), 401 | 403)
                ) =>
            {
                // The key may have been rotated: read it again and retry once.
                self.reload_key().await?;
                self.send(job_id).await.map_err(unavailable)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}
