//! The `SyncWorker` (Service Bus) and `IncrementalSync` (timer) triggers.
use super::{invocation_response, service_bus_body, Invocation};
use crate::api::Resp;
use crate::error::{ApiError, Result};
use crate::sync::RunError;
use crate::App;
use serde_json::{json, Value};

/// How long an invocation waits for a busy job or entity before asking for a redelivery.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
const BUSY_POLL: std::time::Duration = std::time::Duration::from_secs(2);

fn delivery_count(inv: &Invocation) -> Result<u32> {
    match inv.metadata.get("DeliveryCount") {
        None | Some(Value::Null) => Ok(1),
        Some(Value::Number(n)) => n.as_u64().map(|n| n.min(u32::MAX as u64) as u32).ok_or_else(bad_count),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| bad_count()),
        Some(_) => Err(bad_count()),
    }
}

fn bad_count() -> ApiError {
    ApiError::field("Metadata.DeliveryCount", "Expected a non-negative integer", "Esperado um inteiro não negativo")
}

/// Runs the job named by the message. Non-2xx makes Service Bus deliver it again; on the last
/// delivery a failing job is marked failed and the message completed.
pub async fn run(app: &App, inv: &Invocation) -> Result<Resp> {
    let body = inv.data.get("message").and_then(service_bus_body).ok_or_else(|| {
        ApiError::field("Data.message", "Expected a JSON object {jobId} (or it as a JSON string)", "Esperado um objeto JSON {jobId} (ou como string JSON)")
    })?;
    let job_id = body
        .get("jobId")
        .and_then(Value::as_str)
        .filter(|id| crate::ids::is_id("sync", id))
        .ok_or_else(|| ApiError::field("Data.message.jobId", "Expected a sync job id", "Esperado um id de job de sincronização"))?;
    let delivery = delivery_count(inv)?;
    let message_id = inv.metadata.get("MessageId").and_then(Value::as_str).unwrap_or("");
    let last = delivery >= app.config.sync_max_delivery_count;
    // A fresh owner per invocation: a redelivery while this one still runs must not share its lease.
    let owner = crate::ids::new_id("fn");
    tracing::info!(jobId = job_id, messageId = message_id, delivery, "SyncWorker invoked");
    // Busy (the job or its entity is being worked elsewhere): wait a little here rather than
    // burn deliveries, which Service Bus would hand back at once.
    let waited_since = std::time::Instant::now();
    let outcome = loop {
        match crate::sync::run_job(app, job_id, &owner).await {
            Err(RunError::Busy(_)) if waited_since.elapsed() < BUSY_WAIT => tokio::time::sleep(BUSY_POLL).await,
            other => break other,
        }
    };
    match outcome {
        Ok(job) => Ok(invocation_response(
            vec![format!("sync job {job_id}: {}", job.status.as_str())],
            json!({ "jobId": job_id, "status": job.status, "processed": job.processed }),
        )),
        Err(RunError::NotFound) => Ok(invocation_response(vec![format!("sync job {job_id} does not exist; message dropped")], Value::Null)),
        Err(e) if last => {
            let reason = e.to_string();
            let job = app.store.fail_sync_job(job_id, &reason, app.clock.now()).await?;
            tracing::warn!(jobId = job_id, delivery, reason = %reason, "sync job failed on its last delivery");
            Ok(invocation_response(
                vec![format!("sync job {job_id} failed on delivery {delivery}: {reason}")],
                json!({ "jobId": job_id, "status": job.map(|j| j.status) }),
            ))
        }
        Err(e) => Err(ApiError::unavailable(format!("sync job {job_id}, delivery {delivery}: {e}"))),
    }
}

/// Queues an incremental job per entity that has none queued or running.
pub async fn incremental(app: &App, inv: &Invocation) -> Result<Resp> {
    if inv.data.get("timer").is_some_and(|t| !t.is_object()) {
        return Err(ApiError::field("Data.timer", "Expected an object", "Esperado um objeto"));
    }
    let jobs = crate::sync::queue_incremental(app).await?;
    let logs = jobs.iter().map(|j| format!("queued {} for {}", j.id, j.entity.as_str())).collect();
    Ok(invocation_response(logs, json!({ "queued": jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>() })))
}
