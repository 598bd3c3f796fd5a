//! TEMPORARY: `SyncStore` is implemented on Cosmos on another branch (`sync.rs`). These stubs only
//! let this branch compile; the lead deletes this file when merging the real one.
use super::CosmosStore;
use crate::store::{
    Claim, IdempotencyRecord, Opportunity, OpportunityQuery, OpportunityWrite, StoreError, StoreResult, SyncEntity, SyncJob,
    SyncStore,
};
use chrono::{DateTime, Utc};

fn missing<T>() -> StoreResult<T> {
    Err(StoreError::Internal("not on this branch".into()))
}

#[async_trait::async_trait]
impl SyncStore for CosmosStore {
    async fn insert_sync_job(&self, _job: &SyncJob, _idempotency: Option<IdempotencyRecord>) -> StoreResult<()> {
        missing()
    }
    async fn get_sync_job(&self, _id: &str) -> StoreResult<Option<SyncJob>> {
        missing()
    }
    async fn list_sync_jobs(&self, _offset: u64, _limit: u32) -> StoreResult<(Vec<SyncJob>, u64)> {
        missing()
    }
    async fn unfinished_sync_jobs(&self) -> StoreResult<Vec<SyncJob>> {
        missing()
    }
    async fn claim_sync_job(&self, _id: &str, _owner: &str, _now: DateTime<Utc>, _lease_until: DateTime<Utc>) -> StoreResult<Claim> {
        missing()
    }
    async fn save_sync_job(&self, _job: &SyncJob, _owner: &str, _lease_until: Option<DateTime<Utc>>) -> StoreResult<()> {
        missing()
    }
    async fn fail_sync_job(&self, _id: &str, _reason: &str, _now: DateTime<Utc>) -> StoreResult<Option<SyncJob>> {
        missing()
    }
    async fn sync_watermark(&self, _entity: SyncEntity) -> StoreResult<Option<DateTime<Utc>>> {
        missing()
    }
    async fn find_opportunity_by_external_id(&self, _external_id: &str) -> StoreResult<Option<Opportunity>> {
        missing()
    }
    async fn write_opportunity(&self, _w: OpportunityWrite) -> StoreResult<()> {
        missing()
    }
    async fn list_opportunities(&self, _q: &OpportunityQuery) -> StoreResult<(Vec<Opportunity>, u64)> {
        missing()
    }
}
