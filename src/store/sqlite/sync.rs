//! Sync jobs (with their lease), watermarks and opportunities on SQLite.
use super::customers::{apply_write, from_micros, insert_idempotency, micros};
use super::{internal, SqliteStore};
use crate::store::{
    Claim, IdempotencyRecord, JobStatus, Opportunity, OpportunityQuery, OpportunityWrite, StoreError, StoreResult,
    SyncEntity, SyncJob, SyncStore,
};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sync_jobs (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  entity TEXT NOT NULL,
  status TEXT NOT NULL,
  lease_owner TEXT,
  lease_until INTEGER,
  doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sync_jobs_by_status ON sync_jobs(status, entity);
CREATE TABLE IF NOT EXISTS sync_watermarks (
  entity TEXT PRIMARY KEY,
  updated_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS opportunities (
  seq INTEGER PRIMARY KEY,
  ext_key TEXT NOT NULL UNIQUE,
  customer_ext_key TEXT NOT NULL,
  doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS opportunities_by_customer ON opportunities(customer_ext_key, seq);
";

fn job_from(doc: &str) -> StoreResult<SyncJob> {
    serde_json::from_str(doc).map_err(internal)
}

/// A stored job with its lease owner and lease end (microseconds).
type LeasedJob = (SyncJob, Option<String>, Option<i64>);

fn get_job(conn: &Connection, id: &str) -> StoreResult<Option<LeasedJob>> {
    let row = conn
        .prepare_cached("SELECT doc, lease_owner, lease_until FROM sync_jobs WHERE id = ?1")?
        .query_row([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?, r.get::<_, Option<i64>>(2)?)))
        .optional()?;
    row.map(|(d, o, u)| Ok((job_from(&d)?, o, u))).transpose()
}

fn put_job(conn: &Connection, job: &SyncJob, lease: Option<(&str, DateTime<Utc>)>) -> StoreResult<()> {
    let doc = serde_json::to_string(job).map_err(internal)?;
    conn.prepare_cached(
        "UPDATE sync_jobs SET status = ?2, lease_owner = ?3, lease_until = ?4, doc = ?5 WHERE id = ?1",
    )?
    .execute(params![job.id, job.status.as_str(), lease.map(|l| l.0), lease.map(|l| micros(l.1)), doc])?;
    Ok(())
}

fn claim(conn: &Connection, id: &str, owner: &str, now: DateTime<Utc>, until: DateTime<Utc>) -> StoreResult<Claim> {
    let Some((mut job, lease_owner, lease_until)) = get_job(conn, id)? else { return Ok(Claim::NotFound) };
    if job.status.is_finished() {
        return Ok(Claim::Finished(job));
    }
    let live = |until: Option<i64>| until.is_some_and(|u| u > micros(now));
    if job.status == JobStatus::Running && live(lease_until) && lease_owner.as_deref() != Some(owner) {
        return Ok(Claim::Busy(format!("job {id} is being worked by another worker")));
    }
    let other: Option<String> = conn
        .prepare_cached(
            "SELECT id FROM sync_jobs WHERE entity = ?1 AND status = 'running' AND id != ?2 AND lease_until > ?3 LIMIT 1",
        )?
        .query_row(params![job.entity.as_str(), id, micros(now)], |r| r.get(0))
        .optional()?;
    if let Some(other) = other {
        return Ok(Claim::Busy(format!("job {other} is already running for {}", job.entity.as_str())));
    }
    if job.entity == SyncEntity::Opportunities {
        // Opportunities need their customers: wait for an older customers job to finish.
        let older: Option<String> = conn
            .prepare_cached(
                "SELECT id FROM sync_jobs WHERE entity = 'customers' AND status IN ('queued', 'running')
                 AND seq < (SELECT seq FROM sync_jobs WHERE id = ?1) LIMIT 1",
            )?
            .query_row([id], |r| r.get(0))
            .optional()?;
        if let Some(older) = older {
            return Ok(Claim::Busy(format!("customers job {older} goes first")));
        }
    }
    job.status = JobStatus::Running;
    job.started_at.get_or_insert(now);
    put_job(conn, &job, Some((owner, until)))?;
    Ok(Claim::Claimed(job))
}

fn save(conn: &Connection, job: &SyncJob, owner: &str, until: Option<DateTime<Utc>>) -> StoreResult<()> {
    let Some((current, lease_owner, _)) = get_job(conn, &job.id)? else { return Err(StoreError::NotFound) };
    if current.status.is_finished() || lease_owner.as_deref() != Some(owner) {
        return Err(StoreError::PreconditionFailed);
    }
    if !job.status.is_finished() {
        // A job whose lease ran out while another of its entity was claimed cannot renew: one
        // running job per entity (the Cosmos adapter refuses it through its per-entity lock).
        let other: Option<String> = conn
            .prepare_cached("SELECT id FROM sync_jobs WHERE entity = ?1 AND status = 'running' AND id != ?2 LIMIT 1")?
            .query_row(params![job.entity.as_str(), job.id], |r| r.get(0))
            .optional()?;
        if other.is_some() {
            return Err(StoreError::PreconditionFailed);
        }
    }
    let lease = if job.status.is_finished() { None } else { until.map(|u| (owner, u)) };
    put_job(conn, job, lease)?;
    // The job's end and its webhook event are one write.
    if let Some(e) = job.terminal_event() {
        super::customers::insert_outbox(conn, &e)?;
    }
    if let (JobStatus::Completed, Some(hw)) = (job.status, job.high_water) {
        conn.prepare_cached(
            "INSERT INTO sync_watermarks (entity, updated_at) VALUES (?1, ?2)
             ON CONFLICT (entity) DO UPDATE SET updated_at = max(updated_at, excluded.updated_at)",
        )?
        .execute(params![job.entity.as_str(), micros(hw)])?;
    }
    Ok(())
}

fn opportunity_from(doc: &str) -> StoreResult<Opportunity> {
    serde_json::from_str(doc).map_err(internal)
}

fn write_opportunity(conn: &Connection, w: &OpportunityWrite) -> StoreResult<()> {
    let o = &w.opportunity;
    let doc = serde_json::to_string(o).map_err(internal)?;
    conn.prepare_cached(
        "INSERT INTO opportunities (ext_key, customer_ext_key, doc) VALUES (?1, ?2, ?3)
         ON CONFLICT (ext_key) DO UPDATE SET customer_ext_key = excluded.customer_ext_key, doc = excluded.doc",
    )?
    .execute(params![o.external_id.to_lowercase(), o.customer_external_id.to_lowercase(), doc])?;
    if let Some(cw) = &w.customer {
        apply_write(conn, cw)?;
    }
    Ok(())
}

fn list_opportunities(conn: &Connection, q: &OpportunityQuery) -> StoreResult<(Vec<Opportunity>, u64)> {
    let key = q.customer_external_id.as_ref().map(|k| k.to_lowercase());
    let filter = "(?1 IS NULL OR customer_ext_key = ?1)";
    let total: u64 = conn
        .prepare_cached(&format!("SELECT count(*) FROM opportunities WHERE {filter}"))?
        .query_row(params![key], |r| r.get(0))?;
    let mut stmt =
        conn.prepare_cached(&format!("SELECT doc FROM opportunities WHERE {filter} ORDER BY seq DESC LIMIT ?2 OFFSET ?3"))?;
    let rows = stmt.query_map(params![key, q.limit, q.offset.min(i64::MAX as u64) as i64], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(opportunity_from(&row?)?);
    }
    Ok((out, total))
}

fn jobs(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> StoreResult<Vec<SyncJob>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        out.push(job_from(&row?)?);
    }
    Ok(out)
}

#[async_trait::async_trait]
impl SyncStore for SqliteStore {
    async fn insert_sync_job(&self, job: &SyncJob, idempotency: Option<IdempotencyRecord>) -> StoreResult<()> {
        let job = job.clone();
        self.write(move |conn| {
            let doc = serde_json::to_string(&job).map_err(internal)?;
            conn.prepare_cached("INSERT INTO sync_jobs (id, entity, status, doc) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![job.id, job.entity.as_str(), job.status.as_str(), doc])?;
            if let Some(r) = &idempotency {
                insert_idempotency(conn, r).map_err(|e| {
                    if e.to_string().contains("UNIQUE constraint failed") {
                        StoreError::Conflict { field: "idempotencyKey", existing_id: String::new() }
                    } else {
                        e.into()
                    }
                })?;
            }
            Ok(())
        })
        .await
    }

    async fn get_sync_job(&self, id: &str) -> StoreResult<Option<SyncJob>> {
        let id = id.to_string();
        self.read(move |conn| Ok(get_job(conn, &id)?.map(|j| j.0))).await
    }

    async fn list_sync_jobs(&self, offset: u64, limit: u32) -> StoreResult<(Vec<SyncJob>, u64)> {
        self.read(move |conn| {
            let total: u64 = conn.query_row("SELECT count(*) FROM sync_jobs", [], |r| r.get(0))?;
            let items = jobs(
                conn,
                "SELECT doc FROM sync_jobs ORDER BY seq DESC LIMIT ?1 OFFSET ?2",
                params![limit, offset.min(i64::MAX as u64) as i64],
            )?;
            Ok((items, total))
        })
        .await
    }

    async fn unfinished_sync_jobs(&self) -> StoreResult<Vec<SyncJob>> {
        self.read(|conn| jobs(conn, "SELECT doc FROM sync_jobs WHERE status IN ('queued', 'running') ORDER BY seq", []))
            .await
    }

    async fn claim_sync_job(&self, id: &str, owner: &str, now: DateTime<Utc>, lease_until: DateTime<Utc>) -> StoreResult<Claim> {
        let (id, owner) = (id.to_string(), owner.to_string());
        self.write(move |conn| claim(conn, &id, &owner, now, lease_until)).await
    }

    async fn save_sync_job(&self, job: &SyncJob, owner: &str, lease_until: Option<DateTime<Utc>>) -> StoreResult<()> {
        let (job, owner) = (job.clone(), owner.to_string());
        self.write(move |conn| save(conn, &job, &owner, lease_until)).await
    }

    async fn fail_sync_job(&self, id: &str, reason: &str, now: DateTime<Utc>) -> StoreResult<Option<SyncJob>> {
        let (id, reason) = (id.to_string(), reason.to_string());
        self.write(move |conn| {
            let Some((mut job, _, _)) = get_job(conn, &id)? else { return Ok(None) };
            if !job.status.is_finished() {
                job.status = JobStatus::Failed;
                job.reason = Some(reason);
                job.finished_at = Some(now);
                put_job(conn, &job, None)?;
                if let Some(e) = job.terminal_event() {
                    super::customers::insert_outbox(conn, &e)?;
                }
            }
            Ok(Some(job))
        })
        .await
    }

    async fn sync_watermark(&self, entity: SyncEntity) -> StoreResult<Option<DateTime<Utc>>> {
        self.read(move |conn| {
            let m: Option<i64> = conn
                .prepare_cached("SELECT updated_at FROM sync_watermarks WHERE entity = ?1")?
                .query_row([entity.as_str()], |r| r.get(0))
                .optional()?;
            Ok(m.map(from_micros))
        })
        .await
    }

    async fn find_opportunity_by_external_id(&self, external_id: &str) -> StoreResult<Option<Opportunity>> {
        let key = external_id.to_lowercase();
        self.read(move |conn| {
            let doc: Option<String> = conn
                .prepare_cached("SELECT doc FROM opportunities WHERE ext_key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()?;
            doc.map(|d| opportunity_from(&d)).transpose()
        })
        .await
    }

    async fn write_opportunity(&self, w: OpportunityWrite) -> StoreResult<()> {
        self.write(move |conn| write_opportunity(conn, &w)).await
    }

    async fn list_opportunities(&self, q: &OpportunityQuery) -> StoreResult<(Vec<Opportunity>, u64)> {
        let q = q.clone();
        self.read(move |conn| list_opportunities(conn, &q)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_meets_the_sync_store_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        crate::store::sync::conformance::leases_and_watermarks(store.as_ref()).await;
        crate::store::sync::conformance::opportunities(store.as_ref()).await;
    }
}
