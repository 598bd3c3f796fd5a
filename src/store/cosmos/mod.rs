//! The Azure store: Cosmos DB for NoSQL through `azure_data_cosmos`.
//!
//! Containers and partition keys come from `infra/cosmos-containers.json`, the same file Bicep
//! deploys, so code and infrastructure cannot disagree. See `docs/cosmos.md` for the data model,
//! what is atomic, and the measured request charges.
//!
//! Every call goes through [`CosmosStore::call`]: it records the request charge in a `tracing`
//! event (`ru` field) and in a running total, and retries transient failures (429, 503, 408,
//! timeouts) with exponential backoff and jitter on top of the SDK's own retries (the SDK
//! already retries 429 up to 9 times within 30 s, and 503/408/410/transport errors by failing
//! over); only then does the failure surface as `StoreError::Unavailable`.
use super::{StoreError, StoreResult};
use azure_data_cosmos::clients::ContainerClient;
use azure_data_cosmos::models::ContainerProperties;
use azure_data_cosmos::{AccountReference, CosmosClient, CosmosError, FeedScope, Query, RoutingStrategy};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod clients;
mod customers;
pub use customers::CrashPoint;
mod insights;
mod sync;
mod webhooks;

/// The container list shared with `infra/modules/cosmos.bicep`.
pub const CONTAINERS_JSON: &str = include_str!("../../../infra/cosmos-containers.json");

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub name: String,
    pub partition_key: String,
    #[serde(default)]
    pub default_ttl: Option<i64>,
    #[serde(default)]
    pub indexing_policy: Option<Value>,
    #[serde(default)]
    pub unique_keys: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContainersFile {
    pub database: String,
    pub containers: Vec<ContainerSpec>,
}

pub fn containers_file() -> StoreResult<ContainersFile> {
    serde_json::from_str(CONTAINERS_JSON).map_err(|e| StoreError::Internal(format!("cosmos-containers.json: {e}")))
}

impl ContainerSpec {
    /// The container's properties as Cosmos takes them at creation.
    pub fn properties(&self) -> StoreResult<ContainerProperties> {
        let mut v = serde_json::json!({
            "id": self.name,
            "partitionKey": { "paths": [self.partition_key], "kind": "Hash", "version": 2 },
        });
        if let Some(ttl) = self.default_ttl {
            v["defaultTtl"] = ttl.into();
        }
        if let Some(p) = &self.indexing_policy {
            v["indexingPolicy"] = p.clone();
        }
        if let Some(u) = &self.unique_keys {
            v["uniqueKeyPolicy"] = serde_json::json!({ "uniqueKeys": u });
        }
        serde_json::from_value(v).map_err(|e| StoreError::Internal(format!("container {}: {e}", self.name)))
    }
}

/// Attempts per call on top of the SDK's own retries, for transient failures.
const ATTEMPTS: u32 = 3;
/// One call (including the SDK's retries) may take this long before it counts as a timeout.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub struct CosmosStore {
    pub(crate) customers: ContainerClient,
    pub(crate) uniques: ContainerClient,
    pub(crate) meta: ContainerClient,
    pub(crate) clients: ContainerClient,
    pub(crate) outbox: ContainerClient,
    pub(crate) idempotency: ContainerClient,
    pub(crate) webhooks: ContainerClient,
    /// Where the deliveries this instance leased live (saves `record_attempt` a query).
    pub(crate) leased: webhooks::Leased,
    pub(crate) jobs: ContainerClient,
    pub(crate) opportunities: ContainerClient,
    /// Sum of request charges of every call, in milli-RU (for measurements and tests).
    ru_milli: AtomicU64,
}

/// A failed call, classified.
#[derive(Debug)]
pub(crate) enum CallError {
    NotFound,
    Conflict,
    PreconditionFailed,
    /// Still transient after every retry.
    Unavailable(String),
    Other(String),
}

impl From<CallError> for StoreError {
    fn from(e: CallError) -> StoreError {
        match e {
            CallError::NotFound => StoreError::NotFound,
            CallError::Conflict => StoreError::Internal("unexpected conflict".into()),
            CallError::PreconditionFailed => StoreError::PreconditionFailed,
            CallError::Unavailable(s) => StoreError::Unavailable(s),
            CallError::Other(s) => StoreError::Internal(s),
        }
    }
}

fn classify(e: &CosmosError) -> CallError {
    let s = e.status();
    if s.is_not_found() {
        CallError::NotFound
    } else if s.is_conflict() {
        CallError::Conflict
    } else if s.is_precondition_failed() {
        CallError::PreconditionFailed
    } else if s.is_throttled() || s.is_service_unavailable() || s.is_timeout() || s.is_transient() || s.is_gone() {
        CallError::Unavailable(format!("cosmos: {s}"))
    } else {
        CallError::Other(format!("cosmos: {e}"))
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Internal(e.to_string())
}

/// Something with a request charge.
pub(crate) trait Charged {
    fn ru(&self) -> f64;
}

impl Charged for azure_data_cosmos::models::ItemResponse {
    fn ru(&self) -> f64 {
        self.headers().request_charge().map(|c| c.value()).unwrap_or(0.0)
    }
}

impl Charged for azure_data_cosmos::models::BatchResponse {
    fn ru(&self) -> f64 {
        self.headers().request_charge().map(|c| c.value()).unwrap_or(0.0)
    }
}

impl<T> Charged for azure_data_cosmos::models::ResourceResponse<T> {
    fn ru(&self) -> f64 {
        self.headers().request_charge().map(|c| c.value()).unwrap_or(0.0)
    }
}

impl<T> Charged for (T, f64) {
    fn ru(&self) -> f64 {
        self.1
    }
}

/// Exponential backoff with full jitter: 50 ms, 100 ms, 200 ms ... plus up to the same again.
fn backoff(attempt: u32) -> Duration {
    let base = 50u64 << attempt.min(6);
    Duration::from_millis(base + rand::random::<u64>() % (base + 1))
}

impl CosmosStore {
    /// Opens the store on an existing client. `create` makes the database and containers when
    /// missing (key auth and the emulator only: in Azure, Bicep declares them and the managed
    /// identity's data-plane role cannot create them).
    pub async fn connect(client: &CosmosClient, database: &str, create: bool) -> StoreResult<Arc<CosmosStore>> {
        let file = containers_file()?;
        if create {
            match client.create_database(database, None).await {
                Ok(_) => {}
                Err(e) if e.status().is_conflict() => {}
                Err(e) => return Err(StoreError::Unavailable(format!("cannot create database {database}: {e}"))),
            }
        }
        let db = client.database_client(database);
        let mut made = std::collections::HashMap::new();
        for spec in &file.containers {
            if create {
                match db.create_container(spec.properties()?, None).await {
                    Ok(_) => {}
                    Err(e) if e.status().is_conflict() => {}
                    Err(e) => return Err(StoreError::Unavailable(format!("cannot create container {}: {e}", spec.name))),
                }
            }
            let c = db
                .container_client(spec.name.as_str(), None)
                .await
                .map_err(|e| StoreError::Unavailable(format!("container {}: {e}", spec.name)))?;
            made.insert(spec.name.clone(), c);
        }
        let mut take = |name: &str| {
            made.remove(name).ok_or_else(|| StoreError::Internal(format!("cosmos-containers.json lacks {name}")))
        };
        let store = Arc::new(CosmosStore {
            customers: take("customers")?,
            uniques: take("uniques")?,
            meta: take("meta")?,
            clients: take("clients")?,
            outbox: take("outbox")?,
            idempotency: take("idempotency")?,
            webhooks: take("webhooks")?,
            leased: Default::default(),
            jobs: take("jobs")?,
            opportunities: take("opportunities")?,
            ru_milli: AtomicU64::new(0),
        });
        spawn_repair_sweep(Arc::downgrade(&store));
        Ok(store)
    }

    /// Opens the configured Azure account: key auth when `COSMOS_KEY` is set (and then creates
    /// what is missing), else the managed identity (user-assigned when `AZURE_CLIENT_ID` is set).
    pub async fn open(
        cfg: &crate::config::CosmosConfig,
        azure_client_id: Option<&str>,
    ) -> StoreResult<Arc<CosmosStore>> {
        let endpoint: azure_data_cosmos::AccountEndpoint =
            cfg.endpoint.parse().map_err(|e| StoreError::Internal(format!("COSMOS_ENDPOINT: {e}")))?;
        let (account, create) = match &cfg.key {
            Some(key) => (
                AccountReference::with_authentication_key(
                    endpoint,
                    azure_core::credentials::Secret::new(key.expose().to_string()),
                ),
                true,
            ),
            None => {
                use azure_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};
                let options = ManagedIdentityCredentialOptions {
                    user_assigned_id: azure_client_id.map(|id| UserAssignedId::ClientId(id.to_string())),
                    ..Default::default()
                };
                let cred = ManagedIdentityCredential::new(Some(options))
                    .map_err(|e| StoreError::Internal(format!("managed identity: {e}")))?;
                (AccountReference::with_credential(endpoint, cred), false)
            }
        };
        let routing = RoutingStrategy::ProximityTo(match &cfg.region {
            Some(r) => azure_data_cosmos::options::Region::new(r.to_lowercase().replace(' ', "")),
            None => azure_data_cosmos::options::Region::EAST_US,
        });
        let client = CosmosClient::builder()
            .build(account, routing)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cosmos client: {e}")))?;
        Self::connect(&client, &cfg.database, create).await
    }

    /// An in-process emulator (azure_data_cosmos's `__internal_in_memory_emulator`): a fresh,
    /// empty account with the database and containers created. For tests and local runs.
    #[cfg(feature = "cosmos-emulator")]
    pub async fn open_emulator(database: &str) -> StoreResult<Arc<CosmosStore>> {
        use azure_data_cosmos_driver::in_memory_emulator::{
            InMemoryEmulatorHttpClient, VirtualAccountConfig, VirtualRegion,
        };
        const URL: &str = "https://eastus.emulator.local";
        let url = azure_core::http::Url::parse(URL).map_err(internal)?;
        let config = VirtualAccountConfig::new(vec![VirtualRegion::new("East US", url)]).map_err(internal)?;
        let emulator = Arc::new(InMemoryEmulatorHttpClient::new(config));
        let account = AccountReference::with_authentication_key(
            URL.parse().map_err(internal)?,
            // Any base64 key: the emulator checks the signature's shape, not a real secret.
            azure_core::credentials::Secret::new("ZW11bGF0b3Ita2V5"),
        );
        let runtime = azure_data_cosmos::CosmosRuntimeBuilder::from(emulator.runtime_builder())
            .build()
            .await
            .map_err(internal)?;
        let client = CosmosClient::builder()
            .with_runtime(runtime)
            .build(account, RoutingStrategy::ProximityTo(azure_data_cosmos::options::Region::EAST_US))
            .await
            .map_err(internal)?;
        Self::connect(&client, database, true).await
    }

    /// Total request charge of every call so far, in RU.
    pub fn request_charge_total(&self) -> f64 {
        self.ru_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    fn charge(&self, ru: f64) {
        self.ru_milli.fetch_add((ru * 1000.0).round().max(0.0) as u64, Ordering::Relaxed);
    }

    /// Runs one Cosmos call with transient retries, recording its request charge.
    pub(crate) async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, CallError>
    where
        T: Charged,
        F: Fn() -> Fut,
        Fut: Future<Output = azure_data_cosmos::Result<T>>,
    {
        let mut attempt = 0;
        loop {
            let out = match tokio::time::timeout(CALL_TIMEOUT, f()).await {
                Ok(Ok(v)) => {
                    let ru = v.ru();
                    self.charge(ru);
                    tracing::debug!(target: "cosmos", op, ru, attempt, "cosmos call");
                    return Ok(v);
                }
                Ok(Err(e)) => {
                    let ru = e.response().and_then(|r| r.headers().request_charge.map(|c| c.value())).unwrap_or(0.0);
                    self.charge(ru);
                    let c = classify(&e);
                    tracing::debug!(target: "cosmos", op, ru, attempt, status = %e.status(), "cosmos call failed");
                    c
                }
                Err(_) => CallError::Unavailable(format!("cosmos: {op} timed out")),
            };
            match out {
                CallError::Unavailable(msg) if attempt + 1 < ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(target: "cosmos", op, attempt, error = %msg, "retrying a transient cosmos failure");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                other => return Err(other),
            }
        }
    }

    /// Point read: `None` when missing. Returns the document and its `_etag`.
    pub(crate) async fn read_doc<T: DeserializeOwned>(
        &self,
        container: &ContainerClient,
        op: &'static str,
        pk: &str,
        id: &str,
    ) -> StoreResult<Option<(T, String)>> {
        let pk = pk.to_string();
        match self.call(op, || container.read_item(pk.clone(), id, None)).await {
            Ok(resp) => {
                let v: Value = resp.into_model().map_err(internal)?;
                let etag = v.get("_etag").and_then(Value::as_str).unwrap_or_default().to_string();
                Ok(Some((serde_json::from_value(v).map_err(internal)?, etag)))
            }
            Err(CallError::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a query to the end (or until `limit` items), summing the charge of every page.
    pub(crate) async fn query<T: DeserializeOwned + Send + 'static>(
        &self,
        container: &ContainerClient,
        op: &'static str,
        query: Query,
        scope: FeedScope,
        limit: Option<usize>,
    ) -> StoreResult<Vec<T>> {
        let mut attempt = 0;
        loop {
            match self.query_once(container, op, query.clone(), scope.clone(), limit).await {
                Ok((items, ru)) => {
                    tracing::debug!(target: "cosmos", op, ru, items = items.len(), "cosmos query");
                    return Ok(items);
                }
                Err(CallError::Unavailable(msg)) if attempt + 1 < ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(target: "cosmos", op, attempt, error = %msg, "retrying a transient cosmos query");
                    tokio::time::sleep(backoff(attempt)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn query_once<T: DeserializeOwned + Send + 'static>(
        &self,
        container: &ContainerClient,
        op: &'static str,
        query: Query,
        scope: FeedScope,
        limit: Option<usize>,
    ) -> Result<(Vec<T>, f64), CallError> {
        let run = async {
            let it = container.query_items::<T>(query, scope, None).await.map_err(|e| classify(&e))?;
            let mut pages = it.into_pages();
            let mut items = Vec::new();
            let mut ru = 0.0;
            while let Some(page) = pages.next().await {
                let page = page.map_err(|e| {
                    let _ = op;
                    classify(&e)
                })?;
                let charge = page.headers().request_charge().map(|c| c.value()).unwrap_or(0.0);
                ru += charge;
                self.charge(charge);
                items.extend(page.into_items());
                if limit.is_some_and(|l| items.len() >= l) {
                    break;
                }
            }
            if let Some(l) = limit {
                items.truncate(l);
            }
            Ok((items, ru))
        };
        match tokio::time::timeout(CALL_TIMEOUT, run).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Unavailable(format!("cosmos: {op} timed out"))),
        }
    }
}

/// How often each instance looks for writes whose side effects a crash left pending, and how
/// old such a write must be (so writes still in flight are left to finish themselves).
const REPAIR_EVERY: Duration = Duration::from_secs(300);
const REPAIR_AFTER: chrono::Duration = chrono::Duration::minutes(2);

/// Background repair of crashed writes (see `customers.rs`); stops when the store is dropped.
fn spawn_repair_sweep(store: std::sync::Weak<CosmosStore>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    rt.spawn(async move {
        let mut tick = tokio::time::interval(REPAIR_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(store) = store.upgrade() else { return };
            match store.repair_pending_older_than(REPAIR_AFTER).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(target: "cosmos", repaired = n, "finished writes left pending by a crash"),
                Err(e) => tracing::warn!(target: "cosmos", error = %e, "repair sweep failed"),
            }
        }
    });
}

/// Hex SHA-256: a fixed-length document id for any user value (ids cannot hold `/ \ ? #`).
pub(crate) fn hashed_id(prefix: &str, value: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("{prefix}:{}", hex::encode(Sha256::digest(value.as_bytes())))
}

#[async_trait::async_trait]
impl super::Health for CosmosStore {
    async fn ready(&self) -> StoreResult<()> {
        // A point read of a document that may or may not exist: 404 is a healthy answer.
        let _: Option<(Value, String)> = self.read_doc(&self.meta, "ready", "ready", "ready").await?;
        Ok(())
    }

    async fn close(&self) {
        // Every acknowledged write was already committed by Cosmos; nothing is buffered here.
    }
}

#[cfg(all(test, feature = "cosmos-emulator"))]
mod tests {
    use super::*;
    use azure_core::http::StatusCode;
    use azure_data_cosmos::CosmosStatus;
    use std::sync::atomic::AtomicU32;

    fn err(code: StatusCode) -> CosmosError {
        CosmosError::builder().with_status(CosmosStatus::new(code)).build()
    }

    #[tokio::test]
    async fn transient_failures_are_retried_then_surface_as_unavailable() {
        let store = CosmosStore::open_emulator("retries").await.unwrap();
        // Throttled on every attempt: retried, then Unavailable.
        let calls = AtomicU32::new(0);
        let out = store
            .call("test", || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Err::<(u8, f64), _>(err(StatusCode::TooManyRequests)) }
            })
            .await;
        assert!(matches!(out, Err(CallError::Unavailable(_))), "{out:?}");
        assert_eq!(calls.load(Ordering::SeqCst), ATTEMPTS);
        let e: StoreError = out.unwrap_err().into();
        assert!(matches!(e, StoreError::Unavailable(_)));
        // One 503, then success: the caller sees the success, and its charge is counted.
        let calls = AtomicU32::new(0);
        let before = store.request_charge_total();
        let out = store
            .call("test", || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move { if n == 0 { Err(err(StatusCode::ServiceUnavailable)) } else { Ok((7u8, 2.5)) } }
            })
            .await;
        assert_eq!(out.unwrap().0, 7);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!((store.request_charge_total() - before - 2.5).abs() < 1e-9);
        // Definitive answers are not retried.
        for (code, want) in [(StatusCode::NotFound, "NotFound"), (StatusCode::Conflict, "Conflict"), (StatusCode::PreconditionFailed, "PreconditionFailed"), (StatusCode::BadRequest, "Other")] {
            let calls = AtomicU32::new(0);
            let out = store
                .call("test", || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move { Err::<(u8, f64), _>(err(code)) }
                })
                .await;
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{code:?}");
            assert!(format!("{:?}", out.unwrap_err()).starts_with(want), "{code:?}");
        }
    }

    #[test]
    fn every_container_in_the_shared_list_is_valid() {
        let file = containers_file().unwrap();
        for name in ["customers", "uniques", "meta", "clients", "outbox", "idempotency", "webhooks", "jobs", "opportunities"] {
            let spec = file.containers.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("{name} missing"));
            spec.properties().unwrap();
        }
        let idem = file.containers.iter().find(|c| c.name == "idempotency").unwrap();
        assert_eq!(idem.default_ttl, Some(86_400), "idempotency records live 24 h");
    }
}
