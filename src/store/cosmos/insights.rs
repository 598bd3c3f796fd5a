//! Counters and daily rollups on Cosmos, applied exactly once per customer write.
//!
//! The `meta` container holds `SHARDS` ledger partitions (pk `ledger:<n>`); a customer's writes
//! always go to shard `hash(customerId) % SHARDS`. Each shard partition holds:
//!
//! - `counter`: `{customers}` — customers created whose write landed in this shard;
//! - `rollup:<day>`: `{day, metrics: {metric: value}}` — that shard's part of each day's rollup;
//! - `applied:<writeId>`: a marker per applied write (TTL 30 days).
//!
//! A write's deltas are applied in ONE transactional batch in its shard partition: create the
//! marker, then replace each touched document with If-Match on the etag just read (or create
//! it). The batch is atomic, so the marker exists iff the deltas were applied: a repeat (retry,
//! repair) fails on the marker with 409 and changes nothing. Concurrent writers on the same
//! shard lose the If-Match race with 412 and retry with fresh reads. Totals and insights sum
//! the shards: `SHARDS` documents for the total, one small cross-partition query for rollups
//! (no aggregate functions, which the SDK refuses across partitions).
//!
//! Patch increments were the other option; they are not available inside a transactional batch
//! in this SDK, and an increment repeated after an ambiguous failure would count twice.
use super::{internal, CosmosStore};
use crate::domain::{Metric, RollupDelta};
use crate::store::{InsightStore, StoreError, StoreResult};
use azure_data_cosmos::models::TransactionalBatch;
use azure_data_cosmos::options::{BatchReplaceOptions, Precondition};
use azure_data_cosmos::{FeedScope, Query};
use chrono::NaiveDate;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Ledger partitions: more spread the write load on the counter, fewer make reads cheaper.
pub(crate) const SHARDS: u32 = 8;
/// Markers must outlive any repair of the write they mark.
const MARKER_TTL_SECONDS: u32 = 30 * 24 * 3600;
/// Attempts when concurrent writers keep winning the If-Match race.
const LEDGER_ATTEMPTS: u32 = 20;

fn shard_of(customer_id: &str) -> u32 {
    // FNV-1a: stable across builds and platforms.
    let mut h: u32 = 0x811c9dc5;
    for b in customer_id.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    h % SHARDS
}

impl CosmosStore {
    pub(crate) async fn apply_ledger(
        &self,
        customer_id: &str,
        write_id: &str,
        deltas: &[RollupDelta],
        new_customers: i64,
    ) -> StoreResult<()> {
        if deltas.is_empty() && new_customers == 0 {
            return Ok(());
        }
        let pk = format!("ledger:{}", shard_of(customer_id));
        let mut by_day: BTreeMap<NaiveDate, BTreeMap<&'static str, i64>> = BTreeMap::new();
        for d in deltas {
            *by_day.entry(d.day).or_default().entry(d.metric.as_str()).or_default() += d.delta;
        }
        for attempt in 0..LEDGER_ATTEMPTS {
            let marker_id = format!("applied:{write_id}");
            let marker = json!({ "id": marker_id, "pk": pk, "kind": "applied", "ttl": MARKER_TTL_SECONDS });
            let mut batch = TransactionalBatch::new(pk.clone()).create_item(&marker).map_err(internal)?;
            // Read every touched document at once (point reads in the shard partition).
            let mut ids: Vec<String> = by_day.keys().map(|day| format!("rollup:{day}")).collect();
            if new_customers != 0 {
                ids.push("counter".into());
            }
            let reads = ids.iter().map(|id| self.read_doc::<Value>(&self.meta, "ledger.read", &pk, id));
            let mut current = futures::future::try_join_all(reads).await?.into_iter();
            for (day, metrics) in &by_day {
                let id = format!("rollup:{day}");
                let (mut values, etag) = match current.next().flatten() {
                    Some((v, e)) => (v.get("metrics").and_then(Value::as_object).cloned().unwrap_or_default(), Some(e)),
                    None => (Map::new(), None),
                };
                for (m, d) in metrics {
                    let old = values.get(*m).and_then(Value::as_i64).unwrap_or(0);
                    values.insert(m.to_string(), (old + d).into());
                }
                let doc = json!({ "id": id, "pk": pk, "kind": "rollup", "day": day.to_string(), "metrics": values });
                batch = put(batch, &id, doc, etag)?;
            }
            if new_customers != 0 {
                let (n, etag) = match current.next().flatten() {
                    Some((v, e)) => (v.get("customers").and_then(Value::as_i64).unwrap_or(0), Some(e)),
                    None => (0, None),
                };
                let doc = json!({ "id": "counter", "pk": pk, "kind": "counter", "customers": n + new_customers });
                batch = put(batch, "counter", doc, etag)?;
            }
            let resp = self.call("ledger.batch", || self.meta.execute_transactional_batch(batch.clone(), None)).await?;
            let results = resp.into_model().map_err(internal)?;
            let results = results.results();
            if results.iter().all(|r| r.is_success()) {
                return Ok(());
            }
            if results.first().map(|r| r.status_code()) == Some(409) {
                return Ok(()); // the marker exists: already applied
            }
            let contended = results.iter().any(|r| matches!(r.status_code(), 409 | 412));
            if !contended {
                let codes: Vec<u16> = results.iter().map(|r| r.status_code()).collect();
                return Err(StoreError::Internal(format!("ledger batch failed: {codes:?}")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5 + rand::random::<u64>() % (10 << attempt.min(5)))).await;
        }
        Err(StoreError::Unavailable("ledger contended".into()))
    }

    /// Customers created: the sum of the shard counters (`SHARDS` point reads).
    pub(crate) async fn customer_count(&self) -> StoreResult<u64> {
        let reads = (0..SHARDS).map(|s| {
            let pk = format!("ledger:{s}");
            async move { self.read_doc::<Value>(&self.meta, "ledger.count", &pk, "counter").await }
        });
        let mut total = 0i64;
        for r in futures::future::join_all(reads).await {
            if let Some((v, _)) = r? {
                total += v.get("customers").and_then(Value::as_i64).unwrap_or(0);
            }
        }
        Ok(total.max(0) as u64)
    }
}

/// Adds "replace if unchanged since read" (or "create") of `doc` to the batch.
pub(super) fn put(batch: TransactionalBatch, id: &str, doc: Value, etag: Option<String>) -> StoreResult<TransactionalBatch> {
    match etag {
        Some(e) => batch
            .replace_item(id.to_string(), doc, Some(BatchReplaceOptions::default().with_precondition(Precondition::if_match(e))))
            .map_err(internal),
        None => batch.create_item(doc).map_err(internal),
    }
}

#[async_trait::async_trait]
impl InsightStore for CosmosStore {
    async fn rollups(&self, from: NaiveDate, to: NaiveDate) -> StoreResult<Vec<(NaiveDate, Metric, i64)>> {
        let q = Query::from("SELECT c.day, c.metrics FROM c WHERE c.kind = 'rollup' AND c.day >= @from AND c.day <= @to")
            .with_parameter("@from", from.to_string())
            .map_err(internal)?
            .with_parameter("@to", to.to_string())
            .map_err(internal)?;
        let docs: Vec<Value> = self.query(&self.meta, "rollups.query", q, FeedScope::full_container(), None).await?;
        let mut sums: BTreeMap<(NaiveDate, &'static str), i64> = BTreeMap::new();
        for d in docs {
            let Some(day) = d.get("day").and_then(Value::as_str).and_then(|s| s.parse::<NaiveDate>().ok()) else { continue };
            for (m, v) in d.get("metrics").and_then(Value::as_object).into_iter().flatten() {
                if let Some(metric) = Metric::parse(m) {
                    *sums.entry((day, metric.as_str())).or_default() += v.as_i64().unwrap_or(0);
                }
            }
        }
        Ok(sums.into_iter().filter_map(|((day, m), v)| Metric::parse(m).map(|m| (day, m, v))).collect())
    }
}
