//! Webhook subscriptions and deliveries on Cosmos (`webhooks` container, pk `/pk`), and the
//! per-event "dispatched" flag in the `outbox` container.
//!
//! - **Subscriptions**: one partition, pk `subscriptions`, one document per subscription (id =
//!   subscription id). Few documents: listed by a single-partition query, sorted by `seq`
//!   (creation order) client-side.
//! - **Deliveries**: pk `deliveries:<subscriptionId>`, **document id = the event id**, so a
//!   second delivery for the same (subscription, event) is a create that answers 409 — the
//!   fan-out is idempotent however many instances run it. The public delivery id (`whd_…`, the
//!   one the first fan-out gave) is the `deliveryId` field. The delivery log of a subscription
//!   (newest first by `seq`), `get_delivery` and `redeliver` are single-partition queries.
//! - **Due deliveries**: one cross-partition query on `status = 'pending' AND nextAttemptAtUs
//!   <= now AND leaseUntilUs <= now` (composite index `(status, nextAttemptAtUs)`); each candidate
//!   is then leased by a replace with If-Match on its `_etag`. A 412 means another instance
//!   leased (or changed) it first: it is skipped, so an attempt is only ever handed to one
//!   owner. `record_attempt` finds the delivery by `deliveryId` (cross-partition query on an
//!   indexed path) and replaces it with If-Match only while `leaseOwner` is the caller.
//! - **Fan-out position**: Cosmos does not commit outbox events in `ord` order across
//!   partitions, so there is no high-water mark: every outbox document is created with
//!   `dispatched: false` (`customers.rs`, the only writer of the outbox), `fan_out` sets it to
//!   true after the event's deliveries exist, and `events_to_fan_out` is the events still
//!   false, oldest (`ord`) first (composite index `(dispatched, ord)`). A crash between the two repeats the
//!   fan-out of that batch, which creates nothing new (409s).
//!
//! The SDK retries writes after ambiguous failures, so a 412 can answer our own first attempt:
//! claims and recorded attempts are re-read and recognised by the owner and lease/attempt time
//! they wrote before a 412 is believed.
use super::{internal, CallError, CosmosStore};
use crate::store::{
    AttemptResult, DeliveryStatus, OutboxEvent, StoreError, StoreResult, WebhookDelivery, WebhookStore,
    WebhookSubscription,
};
use azure_data_cosmos::options::{ItemWriteOptions, Precondition};
use azure_data_cosmos::{FeedScope, Query};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;

const SUBSCRIPTIONS_PK: &str = "subscriptions";
/// Entries kept in [`Leased`] at most (a leak guard: entries go when the attempt is recorded).
const LEASED_MAX: usize = 10_000;

/// Delivery id → (partition key, document id) of the deliveries this instance leased, so the
/// lease holder's `record_attempt` is a point read instead of a cross-partition query. Only a
/// hint: a miss (another instance's lease, a restart) falls back to the query.
#[derive(Default)]
pub(crate) struct Leased(std::sync::Mutex<std::collections::HashMap<String, (String, String)>>);

impl Leased {
    fn remember(&self, d: &DeliveryDoc) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= LEASED_MAX {
                m.clear();
            }
            m.insert(d.delivery_id.clone(), (d.pk.clone(), d.id.clone()));
        }
    }

    fn take(&self, delivery_id: &str) -> Option<(String, String)> {
        self.0.lock().ok().and_then(|mut m| m.remove(delivery_id))
    }
}
/// Parallel point writes in one fan-out or claim.
const PARALLEL: usize = 8;
/// Attempts of a read-modify-replace that keeps losing the If-Match race to non-lease changes.
const RMW_ATTEMPTS: u32 = 5;

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or_default()
}

fn deliveries_pk(subscription_id: &str) -> String {
    format!("deliveries:{subscription_id}")
}

fn if_match(etag: &str) -> ItemWriteOptions {
    ItemWriteOptions::default().with_precondition(Precondition::if_match(etag.to_string()))
}

/// Creation order across instances: commit micros, then the position in the batch.
fn seq(at_us: i64, i: usize) -> String {
    format!("{:020}:{i:06}", at_us.max(0))
}

/// A subscription as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubDoc {
    id: String,
    pk: String,
    kind: String,
    seq: String,
    #[serde(flatten)]
    sub: SubFields,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubFields {
    url: String,
    events: Vec<String>,
    description: Option<String>,
    created_at_us: i64,
}

impl SubDoc {
    fn new(s: &WebhookSubscription) -> SubDoc {
        SubDoc {
            id: s.id.clone(),
            pk: SUBSCRIPTIONS_PK.into(),
            kind: "subscription".into(),
            seq: seq(micros(Utc::now()), 0),
            sub: SubFields {
                url: s.url.clone(),
                events: s.events.clone(),
                description: s.description.clone(),
                created_at_us: micros(s.created_at),
            },
        }
    }

    fn model(self) -> WebhookSubscription {
        WebhookSubscription {
            id: self.id,
            url: self.sub.url,
            events: self.sub.events,
            description: self.sub.description,
            created_at: from_micros(self.sub.created_at_us),
        }
    }
}

/// A delivery as stored (id = event id, pk = `deliveries:<subscriptionId>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeliveryDoc {
    id: String,
    pk: String,
    kind: String,
    delivery_id: String,
    subscription_id: String,
    event_id: String,
    event_type: String,
    payload: Value,
    status: DeliveryStatus,
    attempts: u32,
    retry_step: u32,
    last_status_code: Option<u16>,
    last_error: Option<String>,
    last_attempt_at_us: Option<i64>,
    /// Who recorded the last attempt (recognises our own write after an ambiguous retry).
    #[serde(default)]
    last_attempt_by: Option<String>,
    next_attempt_at_us: Option<i64>,
    delivered_at_us: Option<i64>,
    created_at_us: i64,
    seq: String,
    lease_owner: Option<String>,
    /// 0 when free, so the due query is a plain comparison.
    lease_until_us: i64,
    #[serde(rename = "_etag", default, skip_serializing)]
    etag: String,
}

impl DeliveryDoc {
    fn new(d: &WebhookDelivery, seq: String) -> DeliveryDoc {
        DeliveryDoc {
            id: d.event_id.clone(),
            pk: deliveries_pk(&d.subscription_id),
            kind: "delivery".into(),
            delivery_id: d.id.clone(),
            subscription_id: d.subscription_id.clone(),
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            payload: d.payload.clone(),
            status: d.status,
            attempts: d.attempts,
            retry_step: d.retry_step,
            last_status_code: d.last_status_code,
            last_error: d.last_error.clone(),
            last_attempt_at_us: d.last_attempt_at.map(micros),
            last_attempt_by: None,
            next_attempt_at_us: d.next_attempt_at.map(micros),
            delivered_at_us: d.delivered_at.map(micros),
            created_at_us: micros(d.created_at),
            seq,
            lease_owner: None,
            lease_until_us: 0,
            etag: String::new(),
        }
    }

    fn model(&self) -> WebhookDelivery {
        WebhookDelivery {
            id: self.delivery_id.clone(),
            subscription_id: self.subscription_id.clone(),
            event_id: self.event_id.clone(),
            event_type: self.event_type.clone(),
            payload: self.payload.clone(),
            status: self.status,
            attempts: self.attempts,
            retry_step: self.retry_step,
            last_status_code: self.last_status_code,
            last_error: self.last_error.clone(),
            last_attempt_at: self.last_attempt_at_us.map(from_micros),
            next_attempt_at: self.next_attempt_at_us.map(from_micros),
            delivered_at: self.delivered_at_us.map(from_micros),
            created_at: from_micros(self.created_at_us),
        }
    }
}

fn strip_outbox(mut doc: Value) -> StoreResult<OutboxEvent> {
    if let Some(m) = doc.as_object_mut() {
        m.retain(|k, _| !k.starts_with('_'));
    }
    serde_json::from_value(doc).map_err(internal)
}

/// The outcome of one conditional replace.
enum Replaced {
    Done,
    /// 412: the document changed since it was read.
    Lost,
    /// 404: it is gone.
    Gone,
}

impl CosmosStore {
    async fn replace_delivery(&self, op: &'static str, d: &DeliveryDoc, etag: &str) -> StoreResult<Replaced> {
        let opts = if_match(etag);
        match self.call(op, || self.webhooks.replace_item(d.pk.clone(), &d.id, d, Some(opts.clone()))).await {
            Ok(_) => Ok(Replaced::Done),
            Err(CallError::PreconditionFailed) => Ok(Replaced::Lost),
            Err(CallError::NotFound) => Ok(Replaced::Gone),
            Err(e) => Err(e.into()),
        }
    }

    async fn read_delivery_doc(&self, pk: &str, id: &str) -> StoreResult<Option<DeliveryDoc>> {
        Ok(self.read_doc::<DeliveryDoc>(&self.webhooks, "webhook.delivery.read", pk, id).await?.map(|(mut d, etag)| {
            d.etag = etag;
            d
        }))
    }

    /// A subscription's delivery by its public id (single-partition query).
    async fn find_delivery(&self, subscription_id: &str, delivery_id: &str) -> StoreResult<Option<DeliveryDoc>> {
        let q = Query::from("SELECT * FROM c WHERE c.kind = 'delivery' AND c.deliveryId = @d")
            .with_parameter("@d", delivery_id)
            .map_err(internal)?;
        let docs: Vec<DeliveryDoc> = self
            .query(&self.webhooks, "webhook.delivery.find", q, FeedScope::partition(deliveries_pk(subscription_id)), Some(1))
            .await?;
        Ok(docs.into_iter().next())
    }

    /// A delivery by its public id alone (cross-partition query on an indexed path).
    async fn find_delivery_anywhere(&self, delivery_id: &str) -> StoreResult<Option<DeliveryDoc>> {
        let q = Query::from("SELECT * FROM c WHERE c.deliveryId = @d AND c.kind = 'delivery'")
            .with_parameter("@d", delivery_id)
            .map_err(internal)?;
        let docs: Vec<DeliveryDoc> =
            self.query(&self.webhooks, "webhook.delivery.find_any", q, FeedScope::full_container(), Some(1)).await?;
        Ok(docs.into_iter().next())
    }

    async fn subscription_ids(&self) -> StoreResult<HashSet<String>> {
        let q = Query::from("SELECT VALUE c.id FROM c WHERE c.kind = 'subscription'");
        let ids: Vec<String> =
            self.query(&self.webhooks, "webhook.subscription.ids", q, FeedScope::partition(SUBSCRIPTIONS_PK), None).await?;
        Ok(ids.into_iter().collect())
    }

    async fn delete_delivery_doc(&self, pk: &str, id: &str) -> StoreResult<()> {
        match self.call("webhook.delivery.delete", || self.webhooks.delete_item(pk.to_string(), id, None)).await {
            Ok(_) | Err(CallError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Leases one candidate to `owner`; None when another instance got it first (or it is gone).
    async fn lease(&self, mut d: DeliveryDoc, owner: &str, now_us: i64, until_us: i64) -> StoreResult<Option<DeliveryDoc>> {
        let etag = std::mem::take(&mut d.etag);
        d.lease_owner = Some(owner.to_string());
        d.lease_until_us = until_us;
        match self.replace_delivery("webhook.delivery.claim", &d, &etag).await? {
            Replaced::Done => Ok(Some(d)),
            Replaced::Gone => Ok(None),
            Replaced::Lost => {
                // Lost the race — unless the SDK's retry of our own replace is what changed it.
                let now = self.read_delivery_doc(&d.pk, &d.id).await?;
                Ok(now.filter(|n| {
                    n.lease_owner.as_deref() == Some(owner)
                        && n.lease_until_us == until_us
                        && n.status == DeliveryStatus::Pending
                        && n.next_attempt_at_us.is_some_and(|t| t <= now_us)
                }))
            }
        }
    }

    /// Sets `dispatched` on the outbox documents of `ids` (one cross-partition query, then a
    /// replace per event still without it).
    async fn mark_dispatched(&self, ids: &[String]) -> StoreResult<()> {
        let q = Query::from("SELECT * FROM c WHERE ARRAY_CONTAINS(@ids, c.id)").with_parameter("@ids", ids).map_err(internal)?;
        let docs: Vec<Value> = self.query(&self.outbox, "outbox.dispatched_scan", q, FeedScope::full_container(), None).await?;
        let now = micros(Utc::now());
        let results: Vec<StoreResult<()>> = futures::stream::iter(docs)
            .filter(|d| std::future::ready(d.get("dispatched").and_then(Value::as_bool) != Some(true)))
            .map(|mut d| async move {
                let etag = d.get("_etag").and_then(Value::as_str).unwrap_or_default().to_string();
                let id = d.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
                let pk = d.get("pk").and_then(Value::as_str).unwrap_or_default().to_string();
                if let Some(m) = d.as_object_mut() {
                    m.retain(|k, _| !k.starts_with('_'));
                    m.insert("dispatched".into(), true.into());
                    m.insert("dispatchedAtUs".into(), now.into());
                }
                let opts = if_match(&etag);
                match self.call("outbox.mark_dispatched", || self.outbox.replace_item(pk.clone(), &id, &d, Some(opts.clone()))).await {
                    // 412: only marking changes an outbox document, so someone else marked it;
                    // 404: it expired (TTL).
                    Ok(_) | Err(CallError::PreconditionFailed) | Err(CallError::NotFound) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect()
    }
}

#[async_trait::async_trait]
impl WebhookStore for CosmosStore {
    async fn create_subscription(&self, s: &WebhookSubscription) -> StoreResult<()> {
        let doc = SubDoc::new(s);
        match self.call("webhook.subscription.create", || self.webhooks.create_item(SUBSCRIPTIONS_PK, &s.id, &doc, None)).await {
            Ok(_) => Ok(()),
            Err(CallError::Conflict) => match self.get_subscription(&s.id).await? {
                // A retried create that had succeeded reads back identical.
                Some(existing) if existing == *s => Ok(()),
                _ => Err(StoreError::Conflict { field: "id", existing_id: s.id.clone() }),
            },
            Err(e) => Err(e.into()),
        }
    }

    async fn get_subscription(&self, id: &str) -> StoreResult<Option<WebhookSubscription>> {
        Ok(self.read_doc::<SubDoc>(&self.webhooks, "webhook.subscription.read", SUBSCRIPTIONS_PK, id).await?.map(|(d, _)| d.model()))
    }

    async fn list_subscriptions(&self) -> StoreResult<Vec<WebhookSubscription>> {
        let q = Query::from("SELECT * FROM c WHERE c.kind = 'subscription'");
        let mut docs: Vec<SubDoc> =
            self.query(&self.webhooks, "webhook.subscription.list", q, FeedScope::partition(SUBSCRIPTIONS_PK), None).await?;
        docs.sort_by(|a, b| a.seq.cmp(&b.seq).then_with(|| a.id.cmp(&b.id)));
        Ok(docs.into_iter().map(SubDoc::model).collect())
    }

    async fn delete_subscription(&self, id: &str) -> StoreResult<()> {
        if self.get_subscription(id).await?.is_none() {
            return Err(StoreError::NotFound);
        }
        // The subscription first: from then on no instance fans out to it, and deliveries a
        // fan-out still in flight creates are removed by the claim pass (see below).
        match self.call("webhook.subscription.delete", || self.webhooks.delete_item(SUBSCRIPTIONS_PK, id, None)).await {
            Ok(_) => {}
            Err(CallError::NotFound) => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        }
        let pk = deliveries_pk(id);
        let q = Query::from("SELECT VALUE c.id FROM c");
        let ids: Vec<String> = self.query(&self.webhooks, "webhook.delivery.ids", q, FeedScope::partition(pk.clone()), None).await?;
        let results: Vec<StoreResult<()>> = futures::stream::iter(ids)
            .map(|doc_id| {
                let pk = pk.clone();
                async move { self.delete_delivery_doc(&pk, &doc_id).await }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn events_to_fan_out(&self, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let q = Query::from(format!(
            "SELECT * FROM c WHERE c.dispatched = false ORDER BY c.dispatched ASC, c.ord ASC OFFSET 0 LIMIT {limit}"
        ));
        let docs: Vec<Value> =
            self.query(&self.outbox, "outbox.to_fan_out", q, FeedScope::full_container(), Some(limit as usize)).await?;
        docs.into_iter().map(strip_outbox).collect()
    }

    async fn fan_out(&self, deliveries: Vec<WebhookDelivery>, events: &[String]) -> StoreResult<()> {
        let now = micros(Utc::now());
        let docs: Vec<DeliveryDoc> = deliveries.iter().enumerate().map(|(i, d)| DeliveryDoc::new(d, seq(now, i))).collect();
        let results: Vec<StoreResult<()>> = futures::stream::iter(docs)
            .map(|d: DeliveryDoc| async move {
                match self.call("webhook.delivery.create", || self.webhooks.create_item(d.pk.clone(), &d.id, &d, None)).await {
                    // 409: this (subscription, event) already has its delivery.
                    Ok(_) | Err(CallError::Conflict) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            })
            .buffer_unordered(PARALLEL)
            .collect()
            .await;
        results.into_iter().collect::<StoreResult<()>>()?;
        // Only once every delivery exists: a crash before this repeats the batch harmlessly.
        if events.is_empty() {
            return Ok(());
        }
        self.mark_dispatched(events).await
    }

    async fn claim_due_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: &str,
        limit: u32,
    ) -> StoreResult<Vec<WebhookDelivery>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (now_us, until_us) = (micros(now), micros(lease_until));
        // A few more than asked: some may go to a faster instance.
        let want = limit.saturating_mul(2).max(limit);
        let q = Query::from(format!(
            "SELECT * FROM c WHERE c.status = 'pending' AND c.nextAttemptAtUs <= @now AND c.leaseUntilUs <= @now \
             ORDER BY c.status ASC, c.nextAttemptAtUs ASC OFFSET 0 LIMIT {want}"
        ))
        .with_parameter("@now", now_us)
        .map_err(internal)?;
        let candidates: Vec<DeliveryDoc> =
            self.query(&self.webhooks, "webhook.delivery.due", q, FeedScope::full_container(), Some(want as usize)).await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        // Deliveries of a subscription deleted meanwhile (a fan-out racing the delete) are removed
        // here instead of being leased again after every lease.
        let subs = self.subscription_ids().await?;
        let mut live = Vec::new();
        for d in candidates {
            if subs.contains(&d.subscription_id) {
                live.push(d);
            } else {
                self.delete_delivery_doc(&d.pk, &d.id).await?;
            }
        }
        let mut claimed = Vec::new();
        let mut rest = live.into_iter();
        // Lease in parallel, in waves, until `limit` are held or the candidates run out.
        while (claimed.len() as u32) < limit {
            let wave: Vec<DeliveryDoc> = rest.by_ref().take(limit as usize - claimed.len()).collect();
            if wave.is_empty() {
                break;
            }
            let got: Vec<StoreResult<Option<DeliveryDoc>>> = futures::stream::iter(wave)
                .map(|d| self.lease(d, owner, now_us, until_us))
                .buffered(PARALLEL)
                .collect()
                .await;
            for g in got {
                if let Some(d) = g? {
                    self.leased.remember(&d);
                    claimed.push(d.model());
                }
            }
        }
        Ok(claimed)
    }

    async fn record_attempt(&self, delivery_id: &str, owner: &str, r: &AttemptResult) -> StoreResult<bool> {
        let hinted = match self.leased.take(delivery_id) {
            Some((pk, id)) => self.read_delivery_doc(&pk, &id).await?.filter(|d| d.delivery_id == delivery_id),
            None => None,
        };
        let found = match hinted {
            Some(d) => Some(d),
            None => self.find_delivery_anywhere(delivery_id).await?,
        };
        let Some(mut d) = found else { return Ok(false) };
        let mut after_412 = false;
        for _ in 0..RMW_ATTEMPTS {
            if d.lease_owner.as_deref() != Some(owner) {
                // Lost the lease — or, after a 412, this is our own replace, retried by the SDK
                // after it had landed.
                return Ok(after_412 && d.last_attempt_by.as_deref() == Some(owner) && d.last_attempt_at_us == Some(micros(r.at)));
            }
            let etag = std::mem::take(&mut d.etag);
            d.status = r.status;
            d.attempts += 1;
            if r.status == DeliveryStatus::Pending {
                d.retry_step += 1;
            }
            d.last_status_code = r.status_code;
            d.last_error = r.error.clone();
            d.last_attempt_at_us = Some(micros(r.at));
            d.last_attempt_by = Some(owner.to_string());
            d.next_attempt_at_us = r.next_attempt_at.map(micros);
            if r.status == DeliveryStatus::Delivered {
                d.delivered_at_us = Some(micros(r.at));
            }
            d.lease_owner = None;
            d.lease_until_us = 0;
            match self.replace_delivery("webhook.delivery.record", &d, &etag).await? {
                Replaced::Done => return Ok(true),
                Replaced::Gone => return Ok(false),
                Replaced::Lost => match self.read_delivery_doc(&d.pk, &d.id).await? {
                    Some(fresh) => {
                        d = fresh;
                        after_412 = true;
                    }
                    None => return Ok(false),
                },
            }
        }
        Err(StoreError::Unavailable("contended webhook delivery".into()))
    }

    async fn list_deliveries(&self, subscription_id: &str, limit: u32) -> StoreResult<Vec<WebhookDelivery>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let q = Query::from(format!(
            "SELECT * FROM c WHERE c.kind = 'delivery' ORDER BY c.seq DESC OFFSET 0 LIMIT {limit}"
        ));
        let docs: Vec<DeliveryDoc> = self
            .query(&self.webhooks, "webhook.delivery.list", q, FeedScope::partition(deliveries_pk(subscription_id)), Some(limit as usize))
            .await?;
        Ok(docs.iter().map(DeliveryDoc::model).collect())
    }

    async fn get_delivery(&self, subscription_id: &str, delivery_id: &str) -> StoreResult<Option<WebhookDelivery>> {
        Ok(self.find_delivery(subscription_id, delivery_id).await?.map(|d| d.model()))
    }

    async fn redeliver(&self, subscription_id: &str, delivery_id: &str, now: DateTime<Utc>) -> StoreResult<WebhookDelivery> {
        let Some(mut d) = self.find_delivery(subscription_id, delivery_id).await? else { return Err(StoreError::NotFound) };
        for _ in 0..RMW_ATTEMPTS {
            let etag = std::mem::take(&mut d.etag);
            d.status = DeliveryStatus::Pending;
            d.retry_step = 0;
            d.next_attempt_at_us = Some(micros(now));
            d.lease_owner = None;
            d.lease_until_us = 0;
            match self.replace_delivery("webhook.delivery.redeliver", &d, &etag).await? {
                Replaced::Done => return Ok(d.model()),
                Replaced::Gone => return Err(StoreError::NotFound),
                Replaced::Lost => match self.read_delivery_doc(&d.pk, &d.id).await? {
                    Some(fresh) => d = fresh,
                    None => return Err(StoreError::NotFound),
                },
            }
        }
        Err(StoreError::Unavailable("contended webhook delivery".into()))
    }
}

#[cfg(all(test, feature = "cosmos-emulator"))]
mod tests {
    use super::*;
    use chrono::Duration;

    fn delivery(sub: &str, event: &str, due: DateTime<Utc>) -> WebhookDelivery {
        WebhookDelivery {
            id: crate::ids::new_id("whd"),
            subscription_id: sub.into(),
            event_id: event.into(),
            event_type: "customer.created".into(),
            payload: serde_json::json!({"id": event}),
            status: DeliveryStatus::Pending,
            attempts: 0,
            retry_step: 0,
            last_status_code: None,
            last_error: None,
            last_attempt_at: None,
            next_attempt_at: Some(due),
            delivered_at: None,
            created_at: due,
        }
    }

    /// Two instances that read the same due delivery (same `_etag`) race to lease it: the If-Match
    /// lets exactly one win, and only the winner may record the attempt.
    #[tokio::test]
    async fn a_claim_from_a_stale_read_loses_and_cannot_record() {
        let store = CosmosStore::open_emulator("webhook-race").await.unwrap();
        let now = Utc::now();
        let sub = WebhookSubscription {
            id: crate::ids::new_id("whk"),
            url: "https://example.com/h".into(),
            events: vec!["customer.created".into()],
            description: None,
            created_at: now,
        };
        store.create_subscription(&sub).await.unwrap();
        let d = delivery(&sub.id, &crate::ids::new_id("evt"), now);
        store.fan_out(vec![d.clone()], &[]).await.unwrap();
        // Both instances read the delivery before either leases it.
        let seen_by_a = store.find_delivery(&sub.id, &d.id).await.unwrap().unwrap();
        let seen_by_b = store.find_delivery(&sub.id, &d.id).await.unwrap().unwrap();
        assert_eq!(seen_by_a.etag, seen_by_b.etag);
        let (now_us, until_us) = (micros(now), micros(now + Duration::minutes(2)));
        assert!(store.lease(seen_by_a, "a", now_us, until_us).await.unwrap().is_some());
        assert!(store.lease(seen_by_b, "b", now_us, until_us).await.unwrap().is_none(), "b's read was stale");
        let stored = store.find_delivery(&sub.id, &d.id).await.unwrap().unwrap();
        assert_eq!((stored.lease_owner.as_deref(), stored.lease_until_us), (Some("a"), until_us));
        // A second pass at the same time finds nothing free.
        assert!(store.claim_due_deliveries(now, now + Duration::minutes(2), "c", 10).await.unwrap().is_empty());
        let r = AttemptResult { at: now, status_code: Some(204), error: None, status: DeliveryStatus::Delivered, next_attempt_at: None };
        assert!(!store.record_attempt(&d.id, "b", &r).await.unwrap());
        assert!(store.record_attempt(&d.id, "a", &r).await.unwrap());
        let stored = store.find_delivery(&sub.id, &d.id).await.unwrap().unwrap();
        assert_eq!((stored.status, stored.attempts, stored.lease_owner), (DeliveryStatus::Delivered, 1, None));
    }
}
