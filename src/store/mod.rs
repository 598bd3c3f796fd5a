//! The storage port. The domain and the HTTP layer only see these traits; `sqlite` (standalone)
//! and `cosmos` (Azure) implement them, and `tests/store_conformance.rs` holds both to the same
//! answers. No SQL or Cosmos detail crosses this line.
use crate::domain::{Customer, Metric, RollupDelta, StageChange};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod cosmos;
pub mod sqlite;
pub mod webhooks;

pub use webhooks::{AttemptResult, DeliveryStatus, WebhookDelivery, WebhookStore, WebhookSubscription};
pub mod sync;

pub use sync::*;

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("precondition failed")]
    PreconditionFailed,
    /// A unique field (`email`, `externalId`, an idempotency key) is already taken.
    #[error("conflict on {field} with {existing_id}")]
    Conflict { field: &'static str, existing_id: String },
    /// Transient: throttled or unreachable after retries. Maps to 503 with Retry-After.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("internal: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An event stored in the same write as the change that caused it (transactional outbox).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEvent {
    /// `evt_` + ULID; receivers dedupe on it.
    pub id: String,
    pub event_type: String,
    pub timestamp: DateTime<Utc>,
    /// The whole event body as delivered: `{id, event, timestamp, data}`.
    pub payload: Value,
}

/// A stored first answer to an `Idempotency-Key`, replayed for 24 h.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdempotencyRecord {
    /// Who and what: e.g. `<clientId>:POST /api/customers`.
    pub scope: String,
    pub key: String,
    /// SHA-256 of the request body, to tell a replay from a reuse.
    pub request_hash: String,
    pub status: u16,
    pub body: String,
    pub location: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum WriteKind {
    Insert,
    /// Only if the stored etag is still this one (optimistic concurrency).
    Update { expected_etag: String },
}

/// One customer change and everything that must be stored with it, atomically.
#[derive(Debug, Clone)]
pub struct CustomerWrite {
    pub kind: WriteKind,
    pub customer: Customer,
    pub stage_changes: Vec<StageChange>,
    pub rollups: Vec<RollupDelta>,
    pub events: Vec<OutboxEvent>,
    pub idempotency: Option<IdempotencyRecord>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SortField {
    #[serde(rename = "createdAt")]
    CreatedAt,
    #[serde(rename = "name")]
    Name,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    Asc,
    Desc,
}

/// The position of the last item seen, for keyset paging: the sort value and the id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SortKey {
    /// createdAt: microseconds since the epoch; name: the lower-cased name.
    pub value: Value,
    pub id: String,
}

impl SortKey {
    pub fn of(c: &Customer, sort: SortField) -> SortKey {
        let value = match sort {
            SortField::CreatedAt => Value::from(c.created_at.timestamp_micros()),
            SortField::Name => Value::from(c.name_key()),
        };
        SortKey { value, id: c.id.clone() }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    Offset(u64),
    After(SortKey),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListQuery {
    /// Case-insensitive substring of name, email or externalId.
    pub search: Option<String>,
    pub sort: SortField,
    pub order: Order,
    pub limit: u32,
    pub start: Start,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CustomerPage {
    pub items: Vec<Customer>,
    /// Exact count of everything that matches the query (ignoring paging).
    pub total: u64,
}

/// A list page as the API sends it: each item already rendered as its JSON object (the
/// customer's summary), and the sort key of the last one for the next cursor.
#[derive(Debug, Clone, PartialEq)]
pub struct SummaryPage {
    pub items: Vec<String>,
    pub last: Option<SortKey>,
    /// Exact count of everything that matches the query (ignoring paging).
    pub total: u64,
}

impl SummaryPage {
    /// Renders a page of whole customers.
    pub fn render(page: &CustomerPage, sort: SortField) -> StoreResult<SummaryPage> {
        let items = page
            .items
            .iter()
            .map(|c| serde_json::to_string(&c.summary()).map_err(|e| StoreError::Internal(e.to_string())))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(SummaryPage { items, last: page.items.last().map(|c| SortKey::of(c, sort)), total: page.total })
    }
}

/// An OAuth client of the API (client-credentials grant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Client {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the secret (the secret has 256 bits of entropy, so no slow KDF is needed).
    pub secret_hash: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait CustomerStore: Send + Sync {
    async fn get_customer(&self, id: &str) -> StoreResult<Option<Customer>>;
    async fn find_customer_by_external_id(&self, external_id: &str) -> StoreResult<Option<Customer>>;
    async fn list_customers(&self, q: &ListQuery) -> StoreResult<CustomerPage>;
    /// The same page as `list_customers`, as the list endpoint sends it. A store that keeps the
    /// rendered summary beside each customer answers without decoding whole documents.
    async fn list_customer_summaries(&self, q: &ListQuery) -> StoreResult<SummaryPage> {
        SummaryPage::render(&self.list_customers(q).await?, q.sort)
    }
    /// Applies the write atomically; returns the new etag. Errors: Conflict (email, externalId,
    /// idempotency key), PreconditionFailed (stale etag), NotFound (update of a missing id).
    async fn write_customer(&self, w: CustomerWrite) -> StoreResult<String>;
    async fn stage_history(&self, customer_id: &str) -> StoreResult<Vec<StageChange>>;
    /// A record younger than 24 h, if any.
    async fn get_idempotency(&self, scope: &str, key: &str) -> StoreResult<Option<IdempotencyRecord>>;
    /// Events written with customer changes, oldest first (for the dispatcher and tests).
    async fn outbox_events(&self, after_id: Option<&str>, limit: u32) -> StoreResult<Vec<OutboxEvent>>;
}

#[async_trait]
pub trait ClientStore: Send + Sync {
    async fn create_client(&self, c: &Client) -> StoreResult<()>;
    async fn get_client(&self, id: &str) -> StoreResult<Option<Client>>;
    async fn list_clients(&self) -> StoreResult<Vec<Client>>;
    /// Replaces the client's mutable fields (secret hash, scopes, revocation).
    async fn update_client(&self, c: &Client) -> StoreResult<()>;
}

#[async_trait]
pub trait InsightStore: Send + Sync {
    /// Summed rollup values per (day, metric) for days in [from, to].
    async fn rollups(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<(NaiveDate, Metric, i64)>>;
}

#[async_trait]
pub trait Health: Send + Sync {
    /// Can the store answer a query right now?
    async fn ready(&self) -> StoreResult<()>;
    /// Flush and stop background work; every acknowledged write is durable before this returns.
    async fn close(&self);
}

/// Everything the service needs from storage.
pub trait Store: CustomerStore + ClientStore + InsightStore + WebhookStore + SyncStore + Health + 'static {}
impl<T: CustomerStore + ClientStore + InsightStore + WebhookStore + SyncStore + Health + 'static> Store for T {}
