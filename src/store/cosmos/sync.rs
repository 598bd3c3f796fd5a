//! Sync jobs (with their lease), watermarks and opportunities on Cosmos.
//!
//! ## Jobs: container `jobs`, pk `/pk`
//!
//! Everything about one entity lives in ONE logical partition, `sync:<entity>`:
//!
//! - `<jobId>` (kind `job`): the `SyncJob` fields plus `seq` (insertion order), `leaseOwner`,
//!   `leaseUntilUs`;
//! - `lock` (kind `lock`): the entity's run lock — `{jobId, owner, leaseUntilUs}` of the job
//!   that may run now (jobId null when free);
//! - `watermark` (kind `watermark`): `{updatedAtUs}`.
//!
//! Because they share a partition, every state change is ONE transactional batch (atomic on
//! Cosmos), each document guarded by If-Match on the `_etag` just read:
//!
//! - **claim**: replace the job (running, lease) + replace/create the lock pointing at it. Two
//!   workers claiming the same job, or two jobs of one entity, race on the same etags: exactly
//!   one batch commits, the other gets 412/409, re-reads and answers `Busy`.
//! - **save**: allowed while the job document names the caller as lease owner; a renewal (an
//!   unfinished job) also needs the entity lock to still point at the job. Replace the job +
//!   the lock (renewed, or freed when the job finishes or releases) + the watermark when the
//!   job completes (max of old and `high_water`). So the watermark moves iff the completing
//!   job's document is written — in the same atomic batch.
//! - **fail**: replace the job (failed, no lease) + free the lock if it points at the job.
//!
//! A batch the SDK retried after an ambiguous failure comes back 412 although it committed;
//! the loop re-reads, finds its own state (same owner / already finished) and converges.
//!
//! Not atomic: the "opportunities wait for an older customers job" rule reads the customers
//! partition before the batch (another partition). It cannot be broken by a race: a customers
//! job created later has a larger `seq`, and a finished job never becomes unfinished again.
//!
//! Idempotency records: claimed in `idempotency` exactly as customer writes do
//! (`claim_idempotency`, owner = the job id) BEFORE the job is created; the job create is the
//! commit point, and a failed create releases the claim. A record counts only once its job
//! exists (`get_idempotency` → `idempotency_owner_exists`), so a crash between claim and
//! create never replays an answer for a job that was not stored (the claim is taken over once
//! stale, as for customers).
//!
//! Job lookups by id read both entity partitions (2 point reads at most: there are two
//! entities). Lists are cross-partition `ORDER BY c.seq` queries; totals are streamed counts
//! (the SDK refuses `COUNT` across partitions) — jobs are few (one per schedule tick and
//! request), so this stays cheap; a TTL on finished jobs would bound it (not set).
//!
//! ## Opportunities: container `opportunities`, pk `/pk`
//!
//! One document per opportunity, id = pk = `opp:<sha256(lower(externalId))>`, holding
//! `extKey`, `customerExtKey` (lower-cased), `seq` (first insertion; kept by updates, so
//! lists order as on SQLite), the `opportunity`, and `amountText` (the exact amount: Cosmos
//! stores numbers as doubles). Find by externalId and the upsert are
//! point operations; the list by customer is a cross-partition query on `customerExtKey`.
//!
//! `write_opportunity` is NOT atomic on Cosmos (two containers). Its order makes it safe:
//! 1. the customer change goes first through `write_customer` (its own commit point, events,
//!    rollups, uniques and repair — see `customers.rs`); a `PreconditionFailed` or `Conflict`
//!    there returns before anything of the opportunity is stored, so the caller's retry sees
//!    the old state;
//! 2. then the opportunity is upserted (create, or replace If-Match keeping `seq`).
//!
//! A crash between 1 and 2 leaves the customer moved and the opportunity not (yet) stored;
//! the next delivery of the same item stores it and — the customer being already in the
//! target stage — makes no second customer change (the sync item logic only moves a customer
//! forward from a stage it is not in), so the repair is the re-sync itself and is idempotent.
use super::customers::{from_micros, if_match, micros};
use super::insights::put;
use super::{hashed_id, internal, CallError, CosmosStore};
use crate::store::{
    Claim, CustomerStore, IdempotencyRecord, JobStatus, Opportunity, OpportunityQuery, OpportunityWrite, StoreError,
    StoreResult, SyncEntity, SyncJob, SyncStore,
};
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::TransactionalBatch;
use azure_data_cosmos::{FeedScope, Query};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const LOCK_ID: &str = "lock";
const WATERMARK_ID: &str = "watermark";
/// Re-reads after losing an If-Match race before giving up as contended.
const ATTEMPTS: u32 = 5;

fn part(entity: SyncEntity) -> String {
    format!("sync:{}", entity.as_str())
}

/// A value usable as a Cosmos document id (ids cannot hold `/ \ ? #`).
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && !id.contains(['/', '\\', '?', '#'])
}

/// Insertion order: commit micros, then a ULID to break ties.
fn new_seq() -> String {
    format!("{:020}:{}", micros(Utc::now()).max(0), ulid::Ulid::new())
}

/// The entity's run lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LockDoc {
    id: String,
    pk: String,
    kind: String,
    job_id: Option<String>,
    owner: Option<String>,
    lease_until_us: Option<i64>,
}

impl LockDoc {
    fn new(pk: &str, held: Option<(&str, &str, i64)>) -> LockDoc {
        LockDoc {
            id: LOCK_ID.into(),
            pk: pk.into(),
            kind: "lock".into(),
            job_id: held.map(|h| h.0.to_string()),
            owner: held.map(|h| h.1.to_string()),
            lease_until_us: held.map(|h| h.2),
        }
    }
}

/// A stored job with its lease and etag.
struct StoredJob {
    job: SyncJob,
    seq: String,
    owner: Option<String>,
    until_us: Option<i64>,
    etag: String,
}

fn job_doc(job: &SyncJob, seq: &str, lease: Option<(&str, i64)>) -> StoreResult<Value> {
    let mut v = serde_json::to_value(job).map_err(internal)?;
    let m = v.as_object_mut().ok_or_else(|| internal("job is not an object"))?;
    m.insert("pk".into(), part(job.entity).into());
    m.insert("kind".into(), "job".into());
    m.insert("seq".into(), seq.into());
    m.insert("leaseOwner".into(), lease.map(|l| l.0.to_string()).into());
    m.insert("leaseUntilUs".into(), lease.map(|l| l.1).into());
    Ok(v)
}

fn stored_job(v: Value) -> StoreResult<StoredJob> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let (etag, seq, owner) = (s("_etag").unwrap_or_default(), s("seq").unwrap_or_default(), s("leaseOwner"));
    let until_us = v.get("leaseUntilUs").and_then(Value::as_i64);
    let job = serde_json::from_value(v).map_err(internal)?;
    Ok(StoredJob { job, seq, owner, until_us, etag })
}

fn opp_id(external_id: &str) -> String {
    hashed_id("opp", &external_id.to_lowercase())
}

fn replace_opts(etag: &str) -> Option<azure_data_cosmos::options::BatchReplaceOptions> {
    Some(
        azure_data_cosmos::options::BatchReplaceOptions::default()
            .with_precondition(azure_data_cosmos::options::Precondition::if_match(etag.to_string())),
    )
}

impl CosmosStore {
    /// Whether a sync job with this id exists (for idempotency records owned by jobs).
    pub(super) async fn sync_job_exists(&self, id: &str) -> StoreResult<bool> {
        Ok(self.find_job(id).await?.is_some())
    }

    /// The job, looked up in each entity's partition.
    async fn find_job(&self, id: &str) -> StoreResult<Option<StoredJob>> {
        if !valid_id(id) {
            return Ok(None);
        }
        for e in SyncEntity::ALL {
            if let Some((v, _)) = self.read_doc::<Value>(&self.jobs, "job.read", &part(e), id).await? {
                return stored_job(v).map(Some);
            }
        }
        Ok(None)
    }

    async fn read_lock(&self, pk: &str) -> StoreResult<Option<(LockDoc, String)>> {
        self.read_doc::<LockDoc>(&self.jobs, "job.lock_read", pk, LOCK_ID).await
    }

    /// Runs a transactional batch: Ok(true) when it committed, Ok(false) when it lost an
    /// If-Match/create race (nothing was written), Err for anything else.
    async fn run_batch(&self, op: &'static str, container: &ContainerClient, batch: TransactionalBatch) -> StoreResult<bool> {
        let resp = self.call(op, || container.execute_transactional_batch(batch.clone(), None)).await?;
        let model = resp.into_model().map_err(internal)?;
        let results = model.results();
        if results.iter().all(|r| r.is_success()) {
            return Ok(true);
        }
        if results.iter().any(|r| matches!(r.status_code(), 409 | 412 | 404)) {
            return Ok(false);
        }
        let codes: Vec<u16> = results.iter().map(|r| r.status_code()).collect();
        Err(StoreError::Internal(format!("{op} batch failed: {codes:?}")))
    }

    /// The id of a customers job queued before `seq` and not finished, if any.
    async fn older_unfinished_customers_job(&self, seq: &str) -> StoreResult<Option<String>> {
        let q = Query::from(
            "SELECT VALUE c.id FROM c WHERE c.kind = 'job' AND (c.status = 'queued' OR c.status = 'running') AND c.seq < @seq",
        )
        .with_parameter("@seq", seq)
        .map_err(internal)?;
        let ids: Vec<String> =
            self.query(&self.jobs, "job.older_customers", q, FeedScope::partition(part(SyncEntity::Customers)), Some(1)).await?;
        Ok(ids.into_iter().next())
    }

    async fn claim(&self, id: &str, owner: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> StoreResult<Claim> {
        let now_us = micros(now);
        let live = |u: Option<i64>| u.is_some_and(|u| u > now_us);
        for _ in 0..ATTEMPTS {
            let Some(s) = self.find_job(id).await? else { return Ok(Claim::NotFound) };
            if s.job.status.is_finished() {
                return Ok(Claim::Finished(s.job));
            }
            if s.job.status == JobStatus::Running && live(s.until_us) && s.owner.as_deref() != Some(owner) {
                return Ok(Claim::Busy(format!("job {id} is being worked by another worker")));
            }
            let entity = s.job.entity;
            let pk = part(entity);
            let lock = self.read_lock(&pk).await?;
            if let Some((l, _)) = &lock {
                if let Some(other) = l.job_id.as_deref().filter(|j| *j != id) {
                    if live(l.lease_until_us) {
                        return Ok(Claim::Busy(format!("job {other} is already running for {}", entity.as_str())));
                    }
                }
            }
            if entity == SyncEntity::Opportunities {
                // Opportunities need their customers: wait for an older customers job to finish.
                if let Some(older) = self.older_unfinished_customers_job(&s.seq).await? {
                    return Ok(Claim::Busy(format!("customers job {older} goes first")));
                }
            }
            let mut job = s.job;
            job.status = JobStatus::Running;
            job.started_at.get_or_insert(now);
            let until_us = micros(until);
            let doc = job_doc(&job, &s.seq, Some((owner, until_us)))?;
            let lock_doc = serde_json::to_value(LockDoc::new(&pk, Some((id, owner, until_us)))).map_err(internal)?;
            let batch = TransactionalBatch::new(pk.clone()).replace_item(id.to_string(), doc, replace_opts(&s.etag)).map_err(internal)?;
            let batch = put(batch, LOCK_ID, lock_doc, lock.map(|l| l.1))?;
            if self.run_batch("job.claim", &self.jobs, batch).await? {
                return Ok(Claim::Claimed(job));
            }
            // Lost a race (or our own retried batch committed): look again.
        }
        Ok(Claim::Busy(format!("job {id} is contended")))
    }

    async fn save(&self, job: &SyncJob, owner: &str, until: Option<DateTime<Utc>>) -> StoreResult<()> {
        if !valid_id(&job.id) {
            return Err(StoreError::NotFound);
        }
        let pk = part(job.entity);
        let finished = job.status.is_finished();
        let lease = if finished { None } else { until.map(|u| (owner, micros(u))) };
        for _ in 0..ATTEMPTS {
            let Some((v, _)) = self.read_doc::<Value>(&self.jobs, "job.read", &pk, &job.id).await? else {
                return Err(StoreError::NotFound);
            };
            let s = stored_job(v)?;
            if s.job.status.is_finished() || s.owner.as_deref() != Some(owner) {
                return Err(StoreError::PreconditionFailed);
            }
            let lock = self.read_lock(&pk).await?;
            let holds_lock = lock.as_ref().is_some_and(|(l, _)| l.job_id.as_deref() == Some(job.id.as_str()));
            if !finished && lease.is_some() && !holds_lock {
                // Another job of the entity took the lock after this lease expired.
                return Err(StoreError::PreconditionFailed);
            }
            let mut batch = TransactionalBatch::new(pk.clone())
                .replace_item(job.id.clone(), job_doc(job, &s.seq, lease)?, replace_opts(&s.etag))
                .map_err(internal)?;
            if let (true, Some((_, etag))) = (holds_lock, lock) {
                let held = lease.map(|(o, u)| (job.id.as_str(), o, u));
                let doc = serde_json::to_value(LockDoc::new(&pk, held)).map_err(internal)?;
                batch = put(batch, LOCK_ID, doc, Some(etag))?;
            }
            if let (JobStatus::Completed, Some(hw)) = (job.status, job.high_water) {
                let current = self.read_doc::<Value>(&self.jobs, "job.watermark_read", &pk, WATERMARK_ID).await?;
                let old = current.as_ref().and_then(|(v, _)| v.get("updatedAtUs").and_then(Value::as_i64));
                let doc = json!({
                    "id": WATERMARK_ID, "pk": pk, "kind": "watermark",
                    "updatedAtUs": old.map_or(micros(hw), |o| o.max(micros(hw))),
                });
                batch = put(batch, WATERMARK_ID, doc, current.map(|c| c.1))?;
            }
            if self.run_batch("job.save", &self.jobs, batch).await? {
                return Ok(());
            }
        }
        Err(StoreError::Unavailable(format!("job {} is contended", job.id)))
    }

    async fn fail(&self, id: &str, reason: &str, now: DateTime<Utc>) -> StoreResult<Option<SyncJob>> {
        for _ in 0..ATTEMPTS {
            let Some(s) = self.find_job(id).await? else { return Ok(None) };
            if s.job.status.is_finished() {
                return Ok(Some(s.job));
            }
            let mut job = s.job;
            job.status = JobStatus::Failed;
            job.reason = Some(reason.to_string());
            job.finished_at = Some(now);
            let pk = part(job.entity);
            let mut batch = TransactionalBatch::new(pk.clone())
                .replace_item(id.to_string(), job_doc(&job, &s.seq, None)?, replace_opts(&s.etag))
                .map_err(internal)?;
            if let Some((l, etag)) = self.read_lock(&pk).await? {
                if l.job_id.as_deref() == Some(id) {
                    let doc = serde_json::to_value(LockDoc::new(&pk, None)).map_err(internal)?;
                    batch = put(batch, LOCK_ID, doc, Some(etag))?;
                }
            }
            if self.run_batch("job.fail", &self.jobs, batch).await? {
                return Ok(Some(job));
            }
        }
        Err(StoreError::Unavailable(format!("job {id} is contended")))
    }

    /// Streams `SELECT VALUE 1` and counts (no cross-partition COUNT in the SDK).
    async fn count(&self, container: &ContainerClient, op: &'static str, q: Query) -> StoreResult<u64> {
        let ones: Vec<Value> = self.query(container, op, q, FeedScope::full_container(), None).await?;
        Ok(ones.len() as u64)
    }

    async fn jobs_query(&self, op: &'static str, text: String, limit: Option<usize>) -> StoreResult<Vec<SyncJob>> {
        let docs: Vec<Value> = self.query(&self.jobs, op, Query::from(text), FeedScope::full_container(), limit).await?;
        docs.into_iter().map(|d| stored_job(d).map(|s| s.job)).collect()
    }

    async fn upsert_opportunity(&self, o: &Opportunity) -> StoreResult<()> {
        let id = opp_id(&o.external_id);
        for _ in 0..ATTEMPTS {
            let current = self.read_doc::<Value>(&self.opportunities, "opportunity.read", &id, &id).await?;
            let seq = current
                .as_ref()
                .and_then(|(v, _)| v.get("seq").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(new_seq);
            let doc = json!({
                "id": id, "pk": id, "kind": "opportunity",
                "extKey": o.external_id.to_lowercase(),
                "customerExtKey": o.customer_external_id.to_lowercase(),
                "seq": seq,
                // Cosmos keeps numbers as doubles: the exact amount travels as text too.
                "amountText": o.amount.to_string(),
                "opportunity": o,
            });
            let pk = id.clone();
            let out = match &current {
                None => self.call("opportunity.create", || self.opportunities.create_item(pk.clone(), &id, &doc, None)).await,
                Some((_, etag)) => {
                    let opts = if_match(etag);
                    self.call("opportunity.replace", || {
                        self.opportunities.replace_item(pk.clone(), &id, &doc, Some(opts.clone()))
                    })
                    .await
                }
            };
            match out {
                Ok(_) => return Ok(()),
                // A concurrent upsert (or our own retried attempt) won: read again, write again.
                Err(CallError::Conflict | CallError::PreconditionFailed | CallError::NotFound) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Unavailable("opportunity contended".into()))
    }
}

fn opportunity_of(doc: Value) -> StoreResult<Opportunity> {
    let o = doc.get("opportunity").cloned().ok_or_else(|| internal("opportunity document without opportunity"))?;
    let mut o: Opportunity = serde_json::from_value(o).map_err(internal)?;
    if let Some(n) = doc.get("amountText").and_then(Value::as_str).and_then(|t| t.parse::<serde_json::Number>().ok()) {
        o.amount = n;
    }
    Ok(o)
}

#[async_trait::async_trait]
impl SyncStore for CosmosStore {
    async fn insert_sync_job(&self, job: &SyncJob, idempotency: Option<IdempotencyRecord>) -> StoreResult<()> {
        if !valid_id(&job.id) {
            return Err(StoreError::Internal(format!("invalid job id {:?}", job.id)));
        }
        // Claim first, then the job create commits both (see the module docs).
        let idem = match &idempotency {
            Some(r) => Some(self.claim_idempotency(r, &job.id).await?),
            None => None,
        };
        let pk = part(job.entity);
        let doc = job_doc(job, &new_seq(), None)?;
        match self.call("job.create", || self.jobs.create_item(pk.clone(), &job.id, &doc, None)).await {
            // 409: job ids are fresh ULIDs, so an existing one is our own retried create.
            Ok(_) | Err(CallError::Conflict) => Ok(()),
            Err(e) => {
                if let Some(id) = &idem {
                    self.release_idempotency(id).await;
                }
                Err(e.into())
            }
        }
    }

    async fn get_sync_job(&self, id: &str) -> StoreResult<Option<SyncJob>> {
        Ok(self.find_job(id).await?.map(|s| s.job))
    }

    async fn list_sync_jobs(&self, offset: u64, limit: u32) -> StoreResult<(Vec<SyncJob>, u64)> {
        let total = self.count(&self.jobs, "job.count", Query::from("SELECT VALUE 1 FROM c WHERE c.kind = 'job'"));
        let page = async {
            if limit == 0 {
                return Ok(Vec::new());
            }
            let text = format!(
                "SELECT * FROM c WHERE c.kind = 'job' ORDER BY c.seq DESC OFFSET {} LIMIT {limit}",
                offset.min(i64::MAX as u64)
            );
            self.jobs_query("job.list", text, Some(limit as usize)).await
        };
        let (total, items) = futures::future::try_join(total, page).await?;
        Ok((items, total))
    }

    async fn unfinished_sync_jobs(&self) -> StoreResult<Vec<SyncJob>> {
        let text = "SELECT * FROM c WHERE c.kind = 'job' AND (c.status = 'queued' OR c.status = 'running') ORDER BY c.seq ASC";
        self.jobs_query("job.unfinished", text.to_string(), None).await
    }

    async fn claim_sync_job(&self, id: &str, owner: &str, now: DateTime<Utc>, lease_until: DateTime<Utc>) -> StoreResult<Claim> {
        self.claim(id, owner, now, lease_until).await
    }

    // On Cosmos the job and the outbox are different containers: the terminal event is published
    // right after the job's batch commits, with a fixed id, so a retry publishes it once; a crash
    // in between loses that one event (SQLite writes both in one transaction).
    async fn save_sync_job(&self, job: &SyncJob, owner: &str, lease_until: Option<DateTime<Utc>>) -> StoreResult<()> {
        self.save(job, owner, lease_until).await?;
        if let Some(e) = job.terminal_event() {
            self.publish_event(&e, e.timestamp.timestamp_micros(), 0).await?;
        }
        Ok(())
    }

    async fn fail_sync_job(&self, id: &str, reason: &str, now: DateTime<Utc>) -> StoreResult<Option<SyncJob>> {
        let job = self.fail(id, reason, now).await?;
        if let Some(e) = job.as_ref().and_then(SyncJob::terminal_event) {
            self.publish_event(&e, e.timestamp.timestamp_micros(), 0).await?;
        }
        Ok(job)
    }

    async fn sync_watermark(&self, entity: SyncEntity) -> StoreResult<Option<DateTime<Utc>>> {
        let doc = self.read_doc::<Value>(&self.jobs, "job.watermark_read", &part(entity), WATERMARK_ID).await?;
        Ok(doc.and_then(|(v, _)| v.get("updatedAtUs").and_then(Value::as_i64)).map(from_micros))
    }

    async fn find_opportunity_by_external_id(&self, external_id: &str) -> StoreResult<Option<Opportunity>> {
        let id = opp_id(external_id);
        let doc = self.read_doc::<Value>(&self.opportunities, "opportunity.read", &id, &id).await?;
        doc.map(|(v, _)| opportunity_of(v)).transpose()
    }

    async fn write_opportunity(&self, w: OpportunityWrite) -> StoreResult<()> {
        // 1. The customer change: its own commit point; a failure stores nothing of the
        //    opportunity. 2. The opportunity upsert. See the module docs for the crash window.
        if let Some(cw) = w.customer {
            self.write_customer(cw).await?;
        }
        self.upsert_opportunity(&w.opportunity).await
    }

    async fn list_opportunities(&self, q: &OpportunityQuery) -> StoreResult<(Vec<Opportunity>, u64)> {
        let key = q.customer_external_id.as_ref().map(|k| k.to_lowercase());
        let filter = if key.is_some() { "c.customerExtKey = @k" } else { "IS_DEFINED(c.seq)" };
        let with_key = |text: String| -> StoreResult<Query> {
            let query = Query::from(text);
            match &key {
                Some(k) => query.with_parameter("@k", k).map_err(internal),
                None => Ok(query),
            }
        };
        let total = self.count(&self.opportunities, "opportunity.count", with_key(format!("SELECT VALUE 1 FROM c WHERE {filter}"))?);
        let page_query = with_key(format!(
            "SELECT * FROM c WHERE {filter} ORDER BY c.seq DESC OFFSET {} LIMIT {}",
            q.offset.min(i64::MAX as u64),
            q.limit
        ))?;
        let page = async {
            if q.limit == 0 {
                return Ok(Vec::new());
            }
            let docs: Vec<Value> = self
                .query(&self.opportunities, "opportunity.list", page_query, FeedScope::full_container(), Some(q.limit as usize))
                .await?;
            docs.into_iter().map(opportunity_of).collect::<StoreResult<Vec<_>>>()
        };
        let (total, items) = futures::future::try_join(total, page).await?;
        Ok((items, total))
    }
}
