//! Customers on Cosmos: the customer document, unique-value lookups, idempotency records, the
//! outbox, and the pending side effects that make a multi-document write repairable.
//!
//! What one `write_customer` does, in order (Cosmos has no transaction across partitions):
//!
//! 1. Claims the unique values it introduces (lower-cased email, externalId) by *creating* a
//!    lookup document per value in `uniques` (id = hash of the value, pk = id). A 409 means
//!    another customer holds it → `Conflict` with that customer's id (a lookup older than
//!    `STALE_CLAIM` whose owner does not hold the value is a leftover of a crashed write and
//!    is taken over with If-Match).
//! 2. Claims the idempotency key the same way (`idempotency` container, TTL 24 h).
//! 3. Writes the customer document — create, or replace with `If-Match: <expected etag>`
//!    (412 → `PreconditionFailed`). **This single-document write is the commit point**, and it
//!    is atomic: the document carries the customer, its whole stage history (`stageHistory`,
//!    so stage changes are atomic with the customer) and a `pending` record naming the side
//!    effects still to apply (outbox events, rollup deltas, counter delta, lookups to
//!    release).
//!    If it fails, the claims of steps 1–2 are deleted again.
//! 4. Applies `pending`: creates the outbox events (fixed ids, so a repeat is a 409 no-op),
//!    applies the rollup/counter deltas in one transactional batch guarded by a marker document
//!    (`insights.rs`: exactly once), and deletes lookups of values the customer gave up.
//! 5. Clears `pending` (replace with If-Match) and returns the new etag.
//!
//! A crash between 3 and 5 leaves `pending` on the document. The next write to that customer
//! applies it before its own (every step of 4 is idempotent), and `repair_pending` applies it
//! for every such document (run it from a timer). Until then, the customer is visible but its
//! events, rollups and counter lag behind — they are never lost nor applied twice.
use super::{hashed_id, internal, CallError, CosmosStore};
use crate::domain::{Customer, LifecycleStage, RollupDelta, StageChange};
use crate::store::{
    CustomerPage, CustomerStore, CustomerWrite, IdempotencyRecord, ListQuery, Order, OutboxEvent, SortField, Start,
    StoreError, StoreResult, WriteKind,
};
use azure_data_cosmos::options::{ItemWriteOptions, Precondition};
use azure_data_cosmos::{FeedScope, Query};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How old an unconfirmed claim (lookup or idempotency record) must be before another write may
/// treat it as the leftover of a crashed write. Far longer than any write takes.
const STALE_CLAIM: Duration = Duration::minutes(5);
const IDEMPOTENCY_TTL_HOURS: i64 = 24;

/// Where a simulated crash stops a write (failure tests only).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The customer document is committed; no side effect is applied.
    AfterCommit,
    /// Side effects applied, `pending` not cleared.
    BeforeClear,
}

/// A stage change as stored inside the customer document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StageRec {
    from: Option<LifecycleStage>,
    to: LifecycleStage,
    at_us: i64,
}

/// Side effects of the last write, still to apply (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Pending {
    pub write_id: String,
    /// Commit time of the write, for outbox ordering.
    pub at_us: i64,
    pub events: Vec<OutboxEvent>,
    pub rollups: Vec<RollupDelta>,
    pub new_customers: i64,
    /// Lookup ids of unique values this customer gave up.
    pub release: Vec<String>,
}

/// A lookup document in `uniques`: value → customer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Lookup {
    id: String,
    field: String,
    value: String,
    customer_id: String,
    claimed_at_us: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdemDoc {
    id: String,
    scope: String,
    key: String,
    request_hash: String,
    status: u16,
    body: String,
    location: Option<String>,
    created_at_us: i64,
    /// The customer whose write this record answers; the record counts only once it exists.
    customer_id: String,
}

pub(super) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(super) fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or_default()
}

fn email_lookup(email: &str) -> String {
    hashed_id("email", &email.to_lowercase())
}

fn ext_lookup(ext: &str) -> String {
    hashed_id("ext", &ext.to_lowercase())
}

/// The unique values a customer holds: (field, lookup id, lower-cased value).
fn unique_values(c: &Customer) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    if let Some(e) = &c.email {
        out.push(("email", email_lookup(e), e.to_lowercase()));
    }
    if let Some(x) = &c.external_id {
        out.push(("externalId", ext_lookup(x), x.to_lowercase()));
    }
    out
}

/// The stored document: the customer plus sort/search keys, stage history and pending work.
fn to_doc(c: &Customer, history: &[StageRec], pending: Option<&Pending>) -> StoreResult<Value> {
    let mut v = serde_json::to_value(c).map_err(internal)?;
    let m = v.as_object_mut().ok_or_else(|| internal("customer is not an object"))?;
    m.insert("nameKey".into(), c.name_key().into());
    // At the precision `createdAt` is stored and returned with (ms; see `rfc3339`), so a keyset
    // cursor built from a returned customer matches its own document exactly.
    m.insert("createdAtUs".into(), (c.created_at.timestamp_millis() * 1000).into());
    m.insert("extKey".into(), c.external_id.as_ref().map(|x| x.to_lowercase()).into());
    m.insert("stageHistory".into(), serde_json::to_value(history).map_err(internal)?);
    if let Some(p) = pending {
        m.insert("pending".into(), serde_json::to_value(p).map_err(internal)?);
    }
    Ok(v)
}

/// The customer's etag as the port hands it out: Cosmos's `_etag` without its quotes, so the
/// API can quote it in an `ETag` header like any other store's.
fn public_etag(raw: &str) -> String {
    raw.trim_matches('"').to_string()
}

fn from_doc(v: Value) -> StoreResult<Customer> {
    let etag = public_etag(v.get("_etag").and_then(Value::as_str).unwrap_or_default());
    let mut c: Customer = serde_json::from_value(v).map_err(internal)?;
    c.etag = etag;
    Ok(c)
}

fn history_of(doc: &Value) -> StoreResult<Vec<StageRec>> {
    match doc.get("stageHistory") {
        Some(h) => serde_json::from_value(h.clone()).map_err(internal),
        None => Ok(Vec::new()),
    }
}

fn pending_of(doc: &Value) -> StoreResult<Option<Pending>> {
    match doc.get("pending") {
        Some(p) if !p.is_null() => Ok(Some(serde_json::from_value(p.clone()).map_err(internal)?)),
        _ => Ok(None),
    }
}

fn strip_system(mut doc: Value) -> Value {
    if let Some(m) = doc.as_object_mut() {
        m.retain(|k, _| !k.starts_with('_'));
        m.remove("pending");
    }
    doc
}

pub(super) fn if_match(etag: &str) -> ItemWriteOptions {
    ItemWriteOptions::default().with_precondition(Precondition::if_match(etag.to_string()))
}

fn etag_of(resp: &azure_data_cosmos::models::ItemResponse) -> String {
    resp.headers().etag().map(|e| e.to_string()).unwrap_or_default()
}

impl CosmosStore {
    async fn read_customer_doc(&self, id: &str) -> StoreResult<Option<Value>> {
        Ok(self.read_doc::<Value>(&self.customers, "customer.read", id, id).await?.map(|(v, _)| v))
    }

    /// Claims `lookup_id` for `customer_id`. Err(Conflict) names the holder.
    async fn claim_unique(&self, field: &'static str, lookup_id: &str, value: &str, customer_id: &str) -> StoreResult<()> {
        let doc = Lookup {
            id: lookup_id.to_string(),
            field: field.to_string(),
            value: value.to_string(),
            customer_id: customer_id.to_string(),
            claimed_at_us: micros(Utc::now()),
        };
        let pk = lookup_id.to_string();
        match self.call("unique.claim", || self.uniques.create_item(pk.clone(), lookup_id, &doc, None)).await {
            Ok(_) => return Ok(()),
            Err(CallError::Conflict) => {}
            Err(e) => return Err(e.into()),
        }
        let Some((held, etag)) = self.read_doc::<Lookup>(&self.uniques, "unique.read", lookup_id, lookup_id).await? else {
            // Released in between: try once more.
            return match self.call("unique.claim", || self.uniques.create_item(pk.clone(), lookup_id, &doc, None)).await {
                Ok(_) => Ok(()),
                Err(CallError::Conflict) => Err(StoreError::Unavailable("contended unique value".into())),
                Err(e) => Err(e.into()),
            };
        };
        if held.customer_id == customer_id {
            return Ok(()); // ours (a retried create, or the customer keeps the value)
        }
        // A leftover of a crashed write? Only if old, and its owner does not hold the value.
        let old = Utc::now() - from_micros(held.claimed_at_us) > STALE_CLAIM;
        if old {
            let owner = self.read_customer_doc(&held.customer_id).await?;
            let owner_holds = owner
                .map(|d| from_doc(d).map(|c| unique_values(&c).iter().any(|(_, id, _)| id == lookup_id)))
                .transpose()?
                .unwrap_or(false);
            if !owner_holds {
                let opts = if_match(&etag);
                match self
                    .call("unique.takeover", || self.uniques.replace_item(pk.clone(), lookup_id, &doc, Some(opts.clone())))
                    .await
                {
                    Ok(_) => return Ok(()),
                    Err(CallError::PreconditionFailed) => {
                        return Err(StoreError::Unavailable("contended unique value".into()))
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(StoreError::Conflict { field, existing_id: held.customer_id })
    }

    /// Deletes a lookup if `customer_id` still holds it (best effort: a leftover is harmless,
    /// it is taken over once stale).
    async fn release_unique(&self, lookup_id: &str, customer_id: &str) -> StoreResult<()> {
        let Some((held, etag)) = self.read_doc::<Lookup>(&self.uniques, "unique.read", lookup_id, lookup_id).await? else {
            return Ok(());
        };
        if held.customer_id != customer_id {
            return Ok(());
        }
        let pk = lookup_id.to_string();
        let opts = if_match(&etag);
        match self.call("unique.release", || self.uniques.delete_item(pk.clone(), lookup_id, Some(opts.clone()))).await {
            Ok(_) | Err(CallError::NotFound) | Err(CallError::PreconditionFailed) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn release_all(&self, claims: &[String], customer_id: &str) {
        for id in claims {
            if let Err(e) = self.release_unique(id, customer_id).await {
                tracing::warn!(target: "cosmos", error = %e, "could not release a unique claim; it will be taken over once stale");
            }
        }
    }

    fn idem_id(scope: &str, key: &str) -> String {
        hashed_id("idem", &format!("{scope}\n{key}"))
    }

    pub(super) async fn claim_idempotency(&self, r: &IdempotencyRecord, customer_id: &str) -> StoreResult<String> {
        let id = Self::idem_id(&r.scope, &r.key);
        let doc = IdemDoc {
            id: id.clone(),
            scope: r.scope.clone(),
            key: r.key.clone(),
            request_hash: r.request_hash.clone(),
            status: r.status,
            body: r.body.clone(),
            location: r.location.clone(),
            created_at_us: micros(r.created_at),
            customer_id: customer_id.to_string(),
        };
        let pk = id.clone();
        match self.call("idempotency.claim", || self.idempotency.create_item(pk.clone(), &id, &doc, None)).await {
            Ok(_) => return Ok(id),
            Err(CallError::Conflict) => {}
            Err(e) => return Err(e.into()),
        }
        let conflict = || StoreError::Conflict { field: "idempotencyKey", existing_id: String::new() };
        let Some((held, etag)) = self.read_doc::<IdemDoc>(&self.idempotency, "idempotency.read", &id, &id).await? else {
            return Err(conflict());
        };
        if held.customer_id == customer_id {
            return Ok(id);
        }
        let expired = from_micros(held.created_at_us) < r.created_at - Duration::hours(IDEMPOTENCY_TTL_HOURS);
        if expired || self.orphan_idempotency(&held).await? {
            let opts = if_match(&etag);
            return match self
                .call("idempotency.takeover", || self.idempotency.replace_item(pk.clone(), &id, &doc, Some(opts.clone())))
                .await
            {
                Ok(_) => Ok(id),
                Err(CallError::PreconditionFailed) => Err(conflict()),
                Err(e) => Err(e.into()),
            };
        }
        Err(conflict())
    }

    /// A record claimed by a write that never committed (its customer does not exist), old
    /// enough that the write cannot still be in flight.
    async fn orphan_idempotency(&self, held: &IdemDoc) -> StoreResult<bool> {
        if Utc::now() - from_micros(held.created_at_us) <= STALE_CLAIM {
            return Ok(false);
        }
        Ok(!self.idempotency_owner_exists(&held.customer_id).await?)
    }

    /// Whether what an idempotency record answers was stored: the customer, or the sync job
    /// (`sync_` ids; see `sync.rs`, which claims records the same way before creating the job).
    async fn idempotency_owner_exists(&self, owner_id: &str) -> StoreResult<bool> {
        if owner_id.starts_with("sync_") {
            return self.sync_job_exists(owner_id).await;
        }
        Ok(self.read_customer_doc(owner_id).await?.is_some())
    }

    pub(super) async fn release_idempotency(&self, id: &str) {
        let pk = id.to_string();
        if let Err(e) = self.call("idempotency.release", || self.idempotency.delete_item(pk.clone(), id, None)).await {
            if !matches!(e, CallError::NotFound) {
                tracing::warn!(target: "cosmos", error = ?e, "could not release an idempotency claim");
            }
        }
    }

    /// Creates an outbox event (a fixed id, so a repeat is a 409 no-op). `at_us` and `i` order
    /// events for the dispatcher.
    pub(super) async fn publish_event(&self, e: &OutboxEvent, at_us: i64, i: usize) -> StoreResult<()> {
        let pk = format!("outbox:{}", e.timestamp.date_naive());
        let mut doc = serde_json::to_value(e).map_err(internal)?;
        doc["pk"] = pk.clone().into();
        doc["ord"] = format!("{:020}:{i:03}:{}", at_us.max(0), e.id).into();
        // Not yet fanned out to webhook subscriptions (`webhooks.rs` sets it to true).
        doc["dispatched"] = false.into();
        match self.call("outbox.create", || self.outbox.create_item(pk.clone(), &e.id, &doc, None)).await {
            Ok(_) | Err(CallError::Conflict) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Applies a committed write's side effects. Every step is idempotent.
    pub(crate) async fn apply_pending(&self, customer_id: &str, p: &Pending) -> StoreResult<()> {
        for (i, e) in p.events.iter().enumerate() {
            self.publish_event(e, p.at_us, i).await?;
        }
        self.apply_ledger(customer_id, &p.write_id, &p.rollups, p.new_customers).await?;
        self.release_all(&p.release, customer_id).await;
        Ok(())
    }

    /// Applies and clears `pending` on every customer document that still has it. Safe to run
    /// at any time and from many instances; returns how many documents it repaired.
    pub async fn repair_pending(&self) -> StoreResult<usize> {
        self.repair_pending_older_than(Duration::zero()).await
    }

    /// `repair_pending` for writes committed at least `age` ago (the background sweep leaves
    /// writes still in flight alone).
    pub async fn repair_pending_older_than(&self, age: Duration) -> StoreResult<usize> {
        let cutoff = micros(Utc::now() - age);
        let q = Query::from("SELECT * FROM c WHERE IS_DEFINED(c.pending.writeId) AND c.pending.atUs <= @cutoff")
            .with_parameter("@cutoff", cutoff)
            .map_err(internal)?;
        let docs: Vec<Value> = self.query(&self.customers, "customer.repair_scan", q, FeedScope::full_container(), None).await?;
        let mut n = 0;
        for doc in docs {
            let id = doc.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            let etag = doc.get("_etag").and_then(Value::as_str).unwrap_or_default().to_string();
            if let Some(p) = pending_of(&doc)? {
                self.apply_pending(&id, &p).await?;
                self.clear_pending(&id, strip_system(doc), &etag).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Replaces the document without `pending` if nobody wrote it since; returns the new etag.
    async fn clear_pending(&self, id: &str, clean: Value, etag: &str) -> StoreResult<Option<String>> {
        let opts = if_match(etag);
        match self.call("customer.clear_pending", || self.customers.replace_item(id.to_string(), id, &clean, Some(opts.clone()))).await {
            Ok(r) => Ok(Some(etag_of(&r))),
            Err(CallError::PreconditionFailed) | Err(CallError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives back the claims of a write that did not commit.
    async fn undo(&self, e: StoreError, claimed: &[String], customer_id: &str, idem: Option<&str>) -> StoreError {
        self.release_all(claimed, customer_id).await;
        if let Some(id) = idem {
            self.release_idempotency(id).await;
        }
        e
    }

    async fn write(&self, w: CustomerWrite) -> StoreResult<String> {
        self.write_until(w, None).await.map(|e| public_etag(&e))
    }

    /// For failure tests: performs `write_customer` but stops at `crash`, as a process that
    /// dies there would. `repair_pending` (or the next write to the customer) finishes it.
    #[doc(hidden)]
    pub async fn write_with_crash(&self, w: CustomerWrite, crash: CrashPoint) -> StoreResult<String> {
        self.write_until(w, Some(crash)).await.map(|e| public_etag(&e))
    }

    async fn write_until(&self, w: CustomerWrite, crash: Option<CrashPoint>) -> StoreResult<String> {
        let c = &w.customer;
        let write_id = ulid::Ulid::new().to_string();
        let now_us = micros(Utc::now());
        let new_recs: Vec<StageRec> =
            w.stage_changes.iter().map(|s| StageRec { from: s.from, to: s.to, at_us: micros(s.at) }).collect();
        // Read what is there (updates), repairing a previous write's leftovers first.
        let (mut history, old, expected) = match &w.kind {
            WriteKind::Insert => (Vec::new(), None, None),
            WriteKind::Update { expected_etag } => {
                let Some(doc) = self.read_customer_doc(&c.id).await? else { return Err(StoreError::NotFound) };
                let etag = doc.get("_etag").and_then(Value::as_str).unwrap_or_default().to_string();
                if public_etag(&etag) != public_etag(expected_etag) {
                    return Err(StoreError::PreconditionFailed);
                }
                if let Some(p) = pending_of(&doc)? {
                    self.apply_pending(&c.id, &p).await?;
                }
                (history_of(&doc)?, Some(from_doc(doc)?), Some(etag))
            }
        };
        // 1. Unique values new to this customer.
        let before: Vec<String> = old.as_ref().map(|o| unique_values(o).into_iter().map(|(_, id, _)| id).collect()).unwrap_or_default();
        let now_values = unique_values(c);
        let mut claimed = Vec::new();
        for (field, id, value) in &now_values {
            if before.contains(id) {
                continue;
            }
            if let Err(e) = self.claim_unique(field, id, value, &c.id).await {
                self.release_all(&claimed, &c.id).await;
                return Err(e);
            }
            claimed.push(id.clone());
        }
        // 2. The idempotency key.
        let idem = match &w.idempotency {
            Some(r) => match self.claim_idempotency(r, &c.id).await {
                Ok(id) => Some(id),
                Err(e) => {
                    self.release_all(&claimed, &c.id).await;
                    return Err(e);
                }
            },
            None => None,
        };
        // 3. The commit point: one document.
        let release: Vec<String> = before.iter().filter(|id| !now_values.iter().any(|(_, n, _)| n == *id)).cloned().collect();
        let pending = Pending {
            write_id: write_id.clone(),
            at_us: now_us,
            events: w.events.clone(),
            rollups: w.rollups.clone(),
            new_customers: if old.is_none() { 1 } else { 0 },
            release,
        };
        history.extend(new_recs);
        let doc = to_doc(c, &history, Some(&pending))?;
        let committed = match &expected {
            None => self.call("customer.create", || self.customers.create_item(c.id.clone(), &c.id, &doc, None)).await,
            Some(etag) => {
                let opts = if_match(etag);
                self.call("customer.replace", || self.customers.replace_item(c.id.clone(), &c.id, &doc, Some(opts.clone()))).await
            }
        };
        let etag = match committed {
            Ok(r) => etag_of(&r),
            Err(e @ (CallError::Conflict | CallError::PreconditionFailed | CallError::NotFound)) => {
                // The SDK retries writes after ambiguous failures: was the first attempt ours?
                let current = self.read_customer_doc(&c.id).await?;
                let ours = current.as_ref().and_then(|d| pending_of(d).ok().flatten()).is_some_and(|p| p.write_id == write_id);
                match (ours, current) {
                    (true, Some(d)) => d.get("_etag").and_then(Value::as_str).unwrap_or_default().to_string(),
                    _ => {
                        let err = match e {
                            CallError::Conflict => StoreError::Conflict { field: "id", existing_id: c.id.clone() },
                            CallError::NotFound => StoreError::NotFound,
                            _ => StoreError::PreconditionFailed,
                        };
                        return Err(self.undo(err, &claimed, &c.id, idem.as_deref()).await);
                    }
                }
            }
            Err(e) => return Err(self.undo(e.into(), &claimed, &c.id, idem.as_deref()).await),
        };
        if crash == Some(CrashPoint::AfterCommit) {
            return Ok(etag);
        }
        // 4–5. Side effects, then clear `pending`. A failure here leaves `pending` for repair;
        // the write itself is committed, so it is reported as done.
        if let Err(e) = self.apply_pending(&c.id, &pending).await {
            tracing::warn!(target: "cosmos", customer = %c.id, error = %e, "side effects left pending for repair");
            return Ok(etag);
        }
        if crash == Some(CrashPoint::BeforeClear) {
            return Ok(etag);
        }
        let clean = to_doc(c, &history, None)?;
        Ok(self.clear_pending(&c.id, clean, &etag).await?.unwrap_or(etag))
    }

    async fn list(&self, q: &ListQuery) -> StoreResult<CustomerPage> {
        let (col, dir, cmp) = match (q.sort, q.order) {
            (SortField::CreatedAt, Order::Desc) => ("createdAtUs", "DESC", "<"),
            (SortField::CreatedAt, Order::Asc) => ("createdAtUs", "ASC", ">"),
            (SortField::Name, Order::Desc) => ("nameKey", "DESC", "<"),
            (SortField::Name, Order::Asc) => ("nameKey", "ASC", ">"),
        };
        let search = q.search.as_deref().map(str::to_lowercase).filter(|s| !s.is_empty());
        let mut filters = Vec::new();
        let mut params: Vec<(&str, Value)> = Vec::new();
        if let Some(t) = &search {
            filters.push("(CONTAINS(c.nameKey, @t) OR CONTAINS(c.email, @t) OR CONTAINS(c.extKey, @t))".to_string());
            params.push(("@t", t.clone().into()));
        }
        // Exact total with a search: every match is streamed as `1` and counted (the SDK refuses
        // COUNT across partitions). Cost grows with the number of matches; see docs/cosmos.md.
        let count_query = match &search {
            None => None,
            Some(_) => {
                let mut cq = Query::from(format!("SELECT VALUE 1 FROM c WHERE {}", filters.join(" AND ")));
                for (k, v) in &params {
                    cq = cq.with_parameter(*k, v).map_err(internal)?;
                }
                Some(cq)
            }
        };
        let offset = match &q.start {
            Start::Offset(n) => *n,
            Start::After(k) => {
                filters.push(format!("(c.{col} {cmp} @v OR (c.{col} = @v AND c.id {cmp} @id))"));
                let v = match q.sort {
                    SortField::CreatedAt => Value::from(k.value.as_i64().ok_or_else(|| internal("bad cursor"))?),
                    SortField::Name => Value::from(k.value.as_str().unwrap_or_default()),
                };
                params.push(("@v", v));
                params.push(("@id", k.id.clone().into()));
                0
            }
        };
        let where_ = if filters.is_empty() { String::new() } else { format!("WHERE {}", filters.join(" AND ")) };
        let text = format!(
            "SELECT * FROM c {where_} ORDER BY c.{col} {dir}, c.id {dir} OFFSET {} LIMIT {}",
            offset.min(i64::MAX as u64),
            q.limit
        );
        let mut query = Query::from(text);
        for (k, v) in &params {
            query = query.with_parameter(*k, v).map_err(internal)?;
        }
        // The total and the page are independent: ask for both at once.
        let total = async {
            match count_query {
                None => self.customer_count().await,
                Some(cq) => {
                    let ones: Vec<Value> =
                        self.query(&self.customers, "customer.search_count", cq, FeedScope::full_container(), None).await?;
                    Ok(ones.len() as u64)
                }
            }
        };
        let page = async {
            if q.limit == 0 {
                return Ok(Vec::new());
            }
            self.query::<Value>(&self.customers, "customer.list", query, FeedScope::full_container(), Some(q.limit as usize)).await
        };
        let (total, docs) = futures::future::try_join(total, page).await?;
        let items = docs.into_iter().map(from_doc).collect::<StoreResult<Vec<_>>>()?;
        Ok(CustomerPage { items, total })
    }
}

#[async_trait::async_trait]
impl CustomerStore for CosmosStore {
    async fn get_customer(&self, id: &str) -> StoreResult<Option<Customer>> {
        self.read_customer_doc(id).await?.map(from_doc).transpose()
    }

    async fn find_customer_by_external_id(&self, external_id: &str) -> StoreResult<Option<Customer>> {
        // Point read of the lookup, then of the customer (2 point reads, no query), checked
        // against the customer so a stale lookup is never believed.
        let lid = ext_lookup(external_id);
        let Some((l, _)) = self.read_doc::<Lookup>(&self.uniques, "unique.read", &lid, &lid).await? else {
            return Ok(None);
        };
        let Some(c) = self.get_customer(&l.customer_id).await? else { return Ok(None) };
        let holds = c.external_id.as_ref().is_some_and(|x| x.to_lowercase() == external_id.to_lowercase());
        Ok(holds.then_some(c))
    }

    async fn list_customers(&self, q: &ListQuery) -> StoreResult<CustomerPage> {
        self.list(q).await
    }

    async fn write_customer(&self, w: CustomerWrite) -> StoreResult<String> {
        self.write(w).await
    }

    async fn stage_history(&self, customer_id: &str) -> StoreResult<Vec<StageChange>> {
        let Some(doc) = self.read_customer_doc(customer_id).await? else { return Ok(Vec::new()) };
        Ok(history_of(&doc)?
            .into_iter()
            .map(|r| StageChange { customer_id: customer_id.to_string(), from: r.from, to: r.to, at: from_micros(r.at_us) })
            .collect())
    }

    async fn get_idempotency(&self, scope: &str, key: &str) -> StoreResult<Option<IdempotencyRecord>> {
        let id = Self::idem_id(scope, key);
        let Some((d, _)) = self.read_doc::<IdemDoc>(&self.idempotency, "idempotency.read", &id, &id).await? else {
            return Ok(None);
        };
        if from_micros(d.created_at_us) < Utc::now() - Duration::hours(IDEMPOTENCY_TTL_HOURS) {
            return Ok(None); // TTL deletes it soon; until then it does not count
        }
        // A claim counts once its write committed, i.e. once the customer (or sync job) exists.
        if !self.idempotency_owner_exists(&d.customer_id).await? {
            return Ok(None);
        }
        Ok(Some(IdempotencyRecord {
            scope: d.scope,
            key: d.key,
            request_hash: d.request_hash,
            status: d.status,
            body: d.body,
            location: d.location,
            created_at: from_micros(d.created_at_us),
        }))
    }

    async fn outbox_events(&self, after_id: Option<&str>, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        let after_ord = match after_id {
            Some(id) => {
                let q = Query::from("SELECT VALUE c.ord FROM c WHERE c.id = @id").with_parameter("@id", id).map_err(internal)?;
                let ords: Vec<String> = self.query(&self.outbox, "outbox.cursor", q, FeedScope::full_container(), Some(1)).await?;
                ords.into_iter().next().unwrap_or_default()
            }
            None => String::new(),
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let q = Query::from(format!("SELECT * FROM c WHERE c.ord > @ord ORDER BY c.ord OFFSET 0 LIMIT {limit}"))
            .with_parameter("@ord", after_ord)
            .map_err(internal)?;
        let docs: Vec<Value> = self.query(&self.outbox, "outbox.list", q, FeedScope::full_container(), Some(limit as usize)).await?;
        docs.into_iter().map(|d| serde_json::from_value(strip_system(d)).map_err(internal)).collect()
    }
}
