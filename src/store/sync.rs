//! The storage port for sync: jobs (with a lease so one worker runs a job at a time, and one
//! job per entity runs at a time), the incremental watermark per entity, and opportunities.
use super::{CustomerWrite, IdempotencyRecord, StoreResult};
use crate::domain::rfc3339;
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncEntity {
    Customers,
    Opportunities,
}

impl SyncEntity {
    pub const ALL: [SyncEntity; 2] = [SyncEntity::Customers, SyncEntity::Opportunities];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncEntity::Customers => "customers",
            SyncEntity::Opportunities => "opportunities",
        }
    }

    pub fn parse(s: &str) -> Option<SyncEntity> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Full,
    Incremental,
}

impl SyncMode {
    pub fn parse(s: &str) -> Option<SyncMode> {
        match s {
            "full" => Some(SyncMode::Full),
            "incremental" => Some(SyncMode::Incremental),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Completed,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Failed)
    }
}

/// One record the job could not apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncItemError {
    pub external_id: Option<String>,
    pub code: String,
    pub message: String,
}

/// At most this many item errors are kept on a job; the rest are only counted.
pub const MAX_JOB_ERRORS: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncJob {
    /// `sync_` + ULID.
    pub id: String,
    pub entity: SyncEntity,
    pub mode: SyncMode,
    /// Items updated at or after this instant (incremental); None = everything.
    pub since: Option<DateTime<Utc>>,
    pub status: JobStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub processed: u64,
    pub created: u64,
    pub updated: u64,
    pub skipped: u64,
    pub errors: Vec<SyncItemError>,
    /// Item errors beyond `MAX_JOB_ERRORS`.
    pub errors_dropped: u64,
    /// Why the job failed, when it did.
    pub reason: Option<String>,
    /// The connector cursor of the next page to fetch (checkpointed after each page).
    pub cursor: Option<String>,
    /// Pages done so far (a resumed job continues from `cursor`).
    pub pages: u64,
    /// The newest `updatedAt` seen: the entity's watermark once the job completes.
    pub high_water: Option<DateTime<Utc>>,
}

fn ts(t: &Option<DateTime<Utc>>) -> Value {
    t.map(|t| Value::String(t.to_rfc3339_opts(SecondsFormat::Millis, true))).unwrap_or(Value::Null)
}

impl SyncJob {
    pub fn new(id: String, entity: SyncEntity, mode: SyncMode, since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> SyncJob {
        SyncJob {
            id,
            entity,
            mode,
            since,
            status: JobStatus::Queued,
            created_at: now,
            started_at: None,
            finished_at: None,
            processed: 0,
            created: 0,
            updated: 0,
            skipped: 0,
            errors: Vec::new(),
            errors_dropped: 0,
            reason: None,
            cursor: None,
            pages: 0,
            high_water: None,
        }
    }

    /// Records an item error, keeping at most `MAX_JOB_ERRORS`.
    pub fn push_error(&mut self, e: SyncItemError) {
        if self.errors.len() < MAX_JOB_ERRORS {
            self.errors.push(e);
        } else {
            self.errors_dropped += 1;
        }
    }

    /// The API representation (`GET /api/sync/{jobId}`).
    pub fn to_api(&self) -> Value {
        json!({
            "jobId": self.id,
            "entity": self.entity,
            "mode": self.mode,
            "since": ts(&self.since),
            "status": self.status,
            "createdAt": ts(&Some(self.created_at)),
            "startedAt": ts(&self.started_at),
            "finishedAt": ts(&self.finished_at),
            "processed": self.processed,
            "created": self.created,
            "updated": self.updated,
            "skipped": self.skipped,
            "errors": self.errors,
            "errorsNotShown": self.errors_dropped,
            "reason": self.reason,
        })
    }
}

impl SyncJob {
    /// `sync.completed` / `sync.failed` for a finished job. Its id is derived from the job's, so
    /// publishing it twice (a retry, a repair) stores it once.
    pub fn terminal_event(&self) -> Option<super::OutboxEvent> {
        let event_type = match self.status {
            JobStatus::Completed => "sync.completed",
            JobStatus::Failed => "sync.failed",
            _ => return None,
        };
        let at = self.finished_at.unwrap_or(self.created_at);
        let id = format!("evt_{}", self.id.trim_start_matches("sync_"));
        Some(super::OutboxEvent {
            payload: serde_json::json!({
                "id": id,
                "event": event_type,
                "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "data": self.to_api(),
            }),
            id,
            event_type: event_type.to_string(),
            timestamp: at,
        })
    }
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The caller holds the lease and runs the job (status is now running).
    Claimed(SyncJob),
    /// Already completed or failed: nothing to do (a redelivery).
    Finished(SyncJob),
    /// Another worker holds this job, or another job of the same entity is running.
    Busy(String),
    NotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpportunityStage {
    Open,
    Won,
    Lost,
}

impl OpportunityStage {
    pub fn parse(s: &str) -> Option<OpportunityStage> {
        match s {
            "Open" => Some(OpportunityStage::Open),
            "Won" => Some(OpportunityStage::Won),
            "Lost" => Some(OpportunityStage::Lost),
            _ => None,
        }
    }
}

/// A sales opportunity synced from the source CRM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Opportunity {
    /// `opp_` + ULID.
    pub id: String,
    pub external_id: String,
    pub customer_id: String,
    pub customer_external_id: String,
    pub name: String,
    /// Kept as the source's JSON number (no float rounding of money).
    pub amount: serde_json::Number,
    pub currency: String,
    pub stage: OpportunityStage,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
}

impl Opportunity {
    pub fn to_api(&self) -> Value {
        json!({
            "id": self.id,
            "externalId": self.external_id,
            "customerId": self.customer_id,
            "customerExternalId": self.customer_external_id,
            "name": self.name,
            "amount": self.amount,
            "currency": self.currency,
            "stage": self.stage,
            "createdAt": ts(&Some(self.created_at)),
            "closedAt": ts(&self.closed_at),
            "updatedAt": ts(&Some(self.updated_at)),
        })
    }
}

/// An opportunity upsert and the customer change it causes, stored atomically.
#[derive(Debug, Clone)]
pub struct OpportunityWrite {
    pub opportunity: Opportunity,
    pub customer: Option<CustomerWrite>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OpportunityQuery {
    pub customer_external_id: Option<String>,
    pub offset: u64,
    pub limit: u32,
}

#[async_trait]
pub trait SyncStore: Send + Sync {
    /// Stores a new queued job, with the idempotency record of the request that made it.
    /// Conflict { field: "idempotencyKey" } when the key was taken meanwhile.
    async fn insert_sync_job(&self, job: &SyncJob, idempotency: Option<IdempotencyRecord>) -> StoreResult<()>;
    async fn get_sync_job(&self, id: &str) -> StoreResult<Option<SyncJob>>;
    /// Newest first, with the total count.
    async fn list_sync_jobs(&self, offset: u64, limit: u32) -> StoreResult<(Vec<SyncJob>, u64)>;
    /// Queued or running jobs, oldest first (restart pick-up, scheduler).
    async fn unfinished_sync_jobs(&self) -> StoreResult<Vec<SyncJob>>;
    /// Takes the job's lease until `lease_until`: allowed when it is queued, or running with
    /// an expired lease or a lease held by `owner`, and no other job of its entity is running
    /// under a live lease; an opportunities job also waits while an older customers job is
    /// queued or running. Marks it running (startedAt on the first claim).
    async fn claim_sync_job(&self, id: &str, owner: &str, now: DateTime<Utc>, lease_until: DateTime<Utc>) -> StoreResult<Claim>;
    /// Saves the job while `owner` holds its lease: renews the lease to `lease_until`, or
    /// releases it (None, or a finished job). A completed job moves its entity's watermark to
    /// `high_water` in the same write. PreconditionFailed when the lease was lost.
    async fn save_sync_job(&self, job: &SyncJob, owner: &str, lease_until: Option<DateTime<Utc>>) -> StoreResult<()>;
    /// Marks an unfinished job failed whoever holds it (the last delivery gives up).
    async fn fail_sync_job(&self, id: &str, reason: &str, now: DateTime<Utc>) -> StoreResult<Option<SyncJob>>;
    /// The `updatedAt` up to which the entity is known to be in sync.
    async fn sync_watermark(&self, entity: SyncEntity) -> StoreResult<Option<DateTime<Utc>>>;

    async fn find_opportunity_by_external_id(&self, external_id: &str) -> StoreResult<Option<Opportunity>>;
    /// Upserts the opportunity (by externalId) and applies its customer write, atomically.
    async fn write_opportunity(&self, w: OpportunityWrite) -> StoreResult<()>;
    async fn list_opportunities(&self, q: &OpportunityQuery) -> StoreResult<(Vec<Opportunity>, u64)>;
}

/// The behaviour every `SyncStore` adapter must show; run by each adapter's tests.
#[doc(hidden)]
pub mod conformance {
    use super::*;
    use crate::store::{Store, StoreError};
    use chrono::Duration;

    fn job(entity: SyncEntity) -> SyncJob {
        SyncJob::new(crate::ids::new_id("sync"), entity, SyncMode::Full, None, Utc::now())
    }

    /// Stores round-trip timestamps at microsecond precision.
    fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
    }

    pub async fn leases_and_watermarks(store: &dyn Store) {
        let now = Utc::now();
        let lease = now + Duration::seconds(60);
        let other = job(SyncEntity::Opportunities);
        let (a, b) = (job(SyncEntity::Customers), job(SyncEntity::Customers));
        let after = job(SyncEntity::Opportunities);
        for j in [&other, &a, &b, &after] {
            store.insert_sync_job(j, None).await.unwrap();
        }
        assert_eq!(store.get_sync_job(&a.id).await.unwrap().as_ref(), Some(&a));
        let Claim::Claimed(mut held) = store.claim_sync_job(&a.id, "w1", now, lease).await.unwrap() else { panic!("claim") };
        assert_eq!(held.status, JobStatus::Running);
        assert!(matches!(store.claim_sync_job(&a.id, "w2", now, lease).await.unwrap(), Claim::Busy(_)));
        assert!(matches!(store.claim_sync_job(&b.id, "w2", now, lease).await.unwrap(), Claim::Busy(_)));
        assert!(matches!(store.claim_sync_job(&other.id, "w2", now, lease).await.unwrap(), Claim::Claimed(_)));
        // Opportunities queued after customers wait for them.
        assert!(matches!(store.claim_sync_job(&after.id, "w5", now, lease).await.unwrap(), Claim::Busy(_)));
        assert_eq!(store.claim_sync_job("sync_01HZ7G0000000000000000000Z", "w1", now, lease).await.unwrap(), Claim::NotFound);

        // The lease expires: another worker takes the job over, and the first one's saves fail.
        let later = now + Duration::seconds(61);
        assert!(matches!(store.claim_sync_job(&a.id, "w3", later, later + Duration::seconds(60)).await.unwrap(), Claim::Claimed(_)));
        held.processed = 7;
        assert_eq!(store.save_sync_job(&held, "w1", Some(lease)).await, Err(StoreError::PreconditionFailed));

        let mut done = held.clone();
        done.status = JobStatus::Completed;
        done.high_water = Some(now - Duration::days(1));
        store.save_sync_job(&done, "w3", None).await.unwrap();
        assert_eq!(store.sync_watermark(SyncEntity::Customers).await.unwrap(), done.high_water.map(micros));
        assert!(matches!(store.claim_sync_job(&a.id, "w4", later, later).await.unwrap(), Claim::Finished(_)));
        // A failed job leaves the watermark alone.
        let Claim::Claimed(mut fb) = store.claim_sync_job(&b.id, "w4", later, later + Duration::seconds(60)).await.unwrap() else {
            panic!("claim b")
        };
        fb.status = JobStatus::Failed;
        fb.high_water = Some(now);
        store.save_sync_job(&fb, "w4", None).await.unwrap();
        assert_eq!(store.sync_watermark(SyncEntity::Customers).await.unwrap(), done.high_water.map(micros));
        let unfinished: Vec<String> = store.unfinished_sync_jobs().await.unwrap().into_iter().map(|j| j.id).collect();
        assert_eq!(unfinished, [other.id.clone(), after.id.clone()]);
        assert!(matches!(store.claim_sync_job(&after.id, "w5", later, later + Duration::seconds(60)).await.unwrap(), Claim::Claimed(_)));
        let failed = store.fail_sync_job(&other.id, "gave up", later).await.unwrap().unwrap();
        assert_eq!((failed.status, failed.reason.as_deref()), (JobStatus::Failed, Some("gave up")));

        let (page, total) = store.list_sync_jobs(0, 2).await.unwrap();
        assert_eq!(total, 4);
        assert_eq!(page.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), [after.id.clone(), b.id.clone()], "newest first");
    }

    pub async fn opportunities(store: &dyn Store) {
        let t = Utc::now();
        let opp = |ext: &str, customer: &str| Opportunity {
            id: crate::ids::new_id("opp"),
            external_id: ext.into(),
            customer_id: "cstm_x".into(),
            customer_external_id: customer.into(),
            name: "Deal".into(),
            amount: serde_json::Number::from_f64(10.5).unwrap_or_else(|| 10.into()),
            currency: "BRL".into(),
            stage: OpportunityStage::Open,
            created_at: micros(t),
            closed_at: None,
            updated_at: micros(t),
        };
        for (e, c) in [("o-1", "C-1"), ("o-2", "c-2"), ("o-3", "c-1")] {
            store.write_opportunity(OpportunityWrite { opportunity: opp(e, c), customer: None }).await.unwrap();
        }
        let mut won = store.find_opportunity_by_external_id("O-1").await.unwrap().unwrap();
        won.stage = OpportunityStage::Won;
        store.write_opportunity(OpportunityWrite { opportunity: won.clone(), customer: None }).await.unwrap();
        assert_eq!(store.find_opportunity_by_external_id("o-1").await.unwrap(), Some(won));
        let q = |c: Option<&str>| OpportunityQuery { customer_external_id: c.map(str::to_string), offset: 0, limit: 10 };
        let (items, total) = store.list_opportunities(&q(Some("c-1"))).await.unwrap();
        assert_eq!(total, 2);
        assert_eq!(items.iter().map(|o| o.external_id.as_str()).collect::<Vec<_>>(), ["o-3", "o-1"]);
        assert_eq!(store.list_opportunities(&q(None)).await.unwrap().1, 3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_keeps_100_item_errors_and_counts_the_rest() {
        let mut job = SyncJob::new("sync_x".into(), SyncEntity::Customers, SyncMode::Full, None, Utc::now());
        for i in 0..130 {
            job.push_error(SyncItemError { external_id: Some(format!("e{i}")), code: "VALIDATION_ERROR".into(), message: "bad".into() });
        }
        let api = job.to_api();
        assert_eq!(api["errors"].as_array().unwrap().len(), MAX_JOB_ERRORS);
        assert_eq!(api["errors"][99]["externalId"], "e99");
        assert_eq!(api["errorsNotShown"], 30);
        assert!(api.get("cursor").is_none() && api.get("highWater").is_none(), "internal fields stay inside");
    }
}
