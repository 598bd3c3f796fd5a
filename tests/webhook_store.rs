//! The `WebhookStore` port's contract, run here against SQLite. Each check takes any `Store`, so
//! another adapter (Cosmos) can be held to the same answers by calling them with its store.
use chrono::{DateTime, Duration, Utc};
use customer360::api::customers::new_customer_write;
use customer360::domain::parse_fields;
use customer360::store::{AttemptResult, DeliveryStatus, Store, StoreError, WebhookDelivery, WebhookSubscription};
use serde_json::json;
use std::sync::Arc;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().with_timezone(&Utc)
}

async fn write_customer(store: &dyn Store, n: u32, at: DateTime<Utc>) -> String {
    let fields = parse_fields(&json!({"name": format!("C{n}"), "email": format!("c{n}@example.com")}), false).unwrap();
    let w = new_customer_write(fields.into_new_customer(customer360::ids::new_id("cstm"), at), at);
    let event_id = w.events[0].id.clone();
    store.write_customer(w).await.unwrap();
    event_id
}

fn subscription(events: &[&str], at: DateTime<Utc>) -> WebhookSubscription {
    WebhookSubscription {
        id: customer360::ids::new_id("whk"),
        url: "https://example.com/hook".into(),
        events: events.iter().map(|e| e.to_string()).collect(),
        description: Some("d".into()),
        created_at: at,
    }
}

fn delivery(sub: &str, event: &str, due: DateTime<Utc>) -> WebhookDelivery {
    WebhookDelivery {
        id: customer360::ids::new_id("whd"),
        subscription_id: sub.into(),
        event_id: event.into(),
        event_type: "customer.created".into(),
        payload: json!({"id": event, "event": "customer.created"}),
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

fn failed_attempt(at: DateTime<Utc>, next: DateTime<Utc>) -> AttemptResult {
    AttemptResult {
        at,
        status_code: Some(500),
        error: None,
        status: DeliveryStatus::Pending,
        next_attempt_at: Some(next),
    }
}

pub async fn subscriptions_are_stored_listed_and_deleted(store: &dyn Store) {
    let a = subscription(&["customer.created"], t0());
    let b = subscription(&["sync.failed", "sync.completed"], t0());
    store.create_subscription(&a).await.unwrap();
    store.create_subscription(&b).await.unwrap();
    assert_eq!(store.get_subscription(&a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.list_subscriptions().await.unwrap(), vec![a.clone(), b.clone()]);
    store.delete_subscription(&a.id).await.unwrap();
    assert_eq!(store.delete_subscription(&a.id).await, Err(StoreError::NotFound));
    assert_eq!(store.list_subscriptions().await.unwrap(), vec![b]);
}

pub async fn fan_out_is_idempotent_and_never_goes_back(store: &dyn Store) {
    let sub = subscription(&["customer.created"], t0());
    store.create_subscription(&sub).await.unwrap();
    let e1 = write_customer(store, 1, t0()).await;
    let e2 = write_customer(store, 2, t0()).await;
    let pending: Vec<String> = store.events_to_fan_out(10).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(pending, vec![e1.clone(), e2.clone()]);
    store.fan_out(vec![delivery(&sub.id, &e1, t0()), delivery(&sub.id, &e2, t0())], &pending).await.unwrap();
    assert!(store.events_to_fan_out(10).await.unwrap().is_empty());
    // A second instance that read the same events before makes nothing new and moves nothing back.
    store.fan_out(vec![delivery(&sub.id, &e1, t0())], std::slice::from_ref(&e1)).await.unwrap();
    assert!(store.events_to_fan_out(10).await.unwrap().is_empty());
    let e3 = write_customer(store, 3, t0()).await;
    let pending: Vec<String> = store.events_to_fan_out(10).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(pending, vec![e3]);
    let list = store.list_deliveries(&sub.id, 10).await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].event_id, e2, "newest first");
}

pub async fn a_due_delivery_is_leased_to_one_owner_until_the_lease_expires(store: &dyn Store) {
    let sub = subscription(&["customer.created"], t0());
    store.create_subscription(&sub).await.unwrap();
    let e = write_customer(store, 4, t0()).await;
    let d = delivery(&sub.id, &e, t0() + Duration::minutes(1));
    store.fan_out(vec![d.clone()], std::slice::from_ref(&e)).await.unwrap();
    // Not due yet.
    assert!(store.claim_due_deliveries(t0(), t0() + Duration::minutes(2), "a", 10).await.unwrap().is_empty());
    let now = t0() + Duration::minutes(1);
    let got = store.claim_due_deliveries(now, now + Duration::minutes(2), "a", 10).await.unwrap();
    assert_eq!(got.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), vec![d.id.as_str()]);
    assert!(store.claim_due_deliveries(now, now + Duration::minutes(2), "b", 10).await.unwrap().is_empty());
    // The holder died: after the lease, another instance takes it, and the old holder's result is refused.
    let later = now + Duration::minutes(3);
    assert_eq!(store.claim_due_deliveries(later, later + Duration::minutes(2), "b", 10).await.unwrap().len(), 1);
    assert!(!store.record_attempt(&d.id, "a", &failed_attempt(later, later)).await.unwrap());
    let next = later + Duration::minutes(5);
    assert!(store.record_attempt(&d.id, "b", &failed_attempt(later, next)).await.unwrap());
    let stored = store.get_delivery(&sub.id, &d.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.attempts, stored.retry_step), (DeliveryStatus::Pending, 1, 1));
    assert_eq!((stored.last_status_code, stored.next_attempt_at), (Some(500), Some(next)));
    // The lease was freed: due again at `next`.
    assert_eq!(store.claim_due_deliveries(next, next + Duration::minutes(2), "c", 10).await.unwrap().len(), 1);
    let done = AttemptResult { at: next, status_code: Some(204), error: None, status: DeliveryStatus::Delivered, next_attempt_at: None };
    assert!(store.record_attempt(&d.id, "c", &done).await.unwrap());
    let stored = store.get_delivery(&sub.id, &d.id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.attempts, stored.delivered_at), (DeliveryStatus::Delivered, 2, Some(next)));
    let far = next + Duration::days(2);
    assert!(store.claim_due_deliveries(far, far, "d", 10).await.unwrap().is_empty(), "delivered is never sent again");
    // Redelivery: pending, due now, fresh schedule.
    let r = store.redeliver(&sub.id, &d.id, far).await.unwrap();
    assert_eq!((r.status, r.retry_step, r.next_attempt_at, r.attempts), (DeliveryStatus::Pending, 0, Some(far), 2));
    assert_eq!(store.redeliver("whk_other", &d.id, far).await.unwrap_err(), StoreError::NotFound);
    assert_eq!(store.claim_due_deliveries(far, far + Duration::minutes(2), "e", 10).await.unwrap().len(), 1);
    // Deleting the subscription takes its deliveries with it.
    store.delete_subscription(&sub.id).await.unwrap();
    assert_eq!(store.get_delivery(&sub.id, &d.id).await.unwrap(), None);
}

pub async fn racing_instances_claim_each_delivery_once_and_fan_out_once(store: &dyn Store) {
    let sub = subscription(&["customer.created"], t0());
    store.create_subscription(&sub).await.unwrap();
    let mut events = Vec::new();
    for n in 0..12 {
        events.push(write_customer(store, 100 + n, t0()).await);
    }
    // Two instances fan out the same batch at once, each with its own delivery ids.
    let batch = |events: &[String]| events.iter().map(|e| delivery(&sub.id, e, t0())).collect::<Vec<_>>();
    let (a, b) = tokio::join!(store.fan_out(batch(&events), &events), store.fan_out(batch(&events), &events));
    a.unwrap();
    b.unwrap();
    assert!(store.events_to_fan_out(100).await.unwrap().is_empty());
    let list = store.list_deliveries(&sub.id, 100).await.unwrap();
    assert_eq!(list.len(), events.len(), "one delivery per (subscription, event)");
    // Three instances claim at once: every due delivery goes to exactly one of them.
    let now = t0() + Duration::minutes(1);
    let until = now + Duration::minutes(2);
    let (x, y, z) = tokio::join!(
        store.claim_due_deliveries(now, until, "x", 5),
        store.claim_due_deliveries(now, until, "y", 5),
        store.claim_due_deliveries(now, until, "z", 5),
    );
    let (x, y, z) = (x.unwrap(), y.unwrap(), z.unwrap());
    assert!(x.len() <= 5 && y.len() <= 5 && z.len() <= 5, "a claim respects its limit");
    let mut got: Vec<(String, &str)> = Vec::new();
    for (owner, claimed) in [("x", &x), ("y", &y), ("z", &z)] {
        got.extend(claimed.iter().map(|d| (d.id.clone(), owner)));
    }
    let mut ids: Vec<&String> = got.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "no delivery handed to two owners: {got:?}");
    // What is left is claimed by a later pass; nothing twice, nothing lost.
    let rest = store.claim_due_deliveries(now, until, "w", 100).await.unwrap();
    assert_eq!(got.len() + rest.len(), events.len());
    // Only the holder records; the others are refused and change nothing.
    let (id, owner) = got[0].clone();
    let other = if owner == "x" { "y" } else { "x" };
    assert!(!store.record_attempt(&id, other, &failed_attempt(now, now)).await.unwrap());
    let done = AttemptResult { at: now, status_code: Some(200), error: None, status: DeliveryStatus::Delivered, next_attempt_at: None };
    assert!(store.record_attempt(&id, owner, &done).await.unwrap());
    assert!(!store.record_attempt(&id, owner, &done).await.unwrap(), "the lease was freed by the first record");
    let stored = store.get_delivery(&sub.id, &id).await.unwrap().unwrap();
    assert_eq!((stored.status, stored.attempts), (DeliveryStatus::Delivered, 1));
}

async fn sqlite() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = customer360::store::sqlite::SqliteStore::open(dir.path()).unwrap();
    (store, dir)
}

#[tokio::test]
async fn sqlite_racing_instances_claim_each_delivery_once_and_fan_out_once() {
    let (s, _d) = sqlite().await;
    racing_instances_claim_each_delivery_once_and_fan_out_once(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_subscriptions_are_stored_listed_and_deleted() {
    let (s, _d) = sqlite().await;
    subscriptions_are_stored_listed_and_deleted(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_fan_out_is_idempotent_and_never_goes_back() {
    let (s, _d) = sqlite().await;
    fan_out_is_idempotent_and_never_goes_back(s.as_ref()).await;
}

#[tokio::test]
async fn sqlite_a_due_delivery_is_leased_to_one_owner_until_the_lease_expires() {
    let (s, _d) = sqlite().await;
    a_due_delivery_is_leased_to_one_owner_until_the_lease_expires(s.as_ref()).await;
}

/// The same checks on Cosmos DB (azure_data_cosmos's in-process emulator, a fresh account each).
#[cfg(feature = "cosmos-emulator")]
async fn cosmos() -> Arc<dyn Store> {
    customer360::store::cosmos::CosmosStore::open_emulator("webhooks").await.unwrap()
}

#[cfg(feature = "cosmos-emulator")]
#[tokio::test]
async fn cosmos_racing_instances_claim_each_delivery_once_and_fan_out_once() {
    racing_instances_claim_each_delivery_once_and_fan_out_once(cosmos().await.as_ref()).await;
}

/// Cosmos only: outbox events do not commit in `ord` order (a write whose side effects a crash
/// left pending creates its event later, with an older `ord`), so the fan-out position is a flag
/// per event, and such an event is still fanned out.
#[cfg(feature = "cosmos-emulator")]
#[tokio::test]
async fn cosmos_an_event_committed_late_with_an_older_ord_is_still_fanned_out() {
    use customer360::store::cosmos::{CosmosStore, CrashPoint};
    let store = CosmosStore::open_emulator("late-event").await.unwrap();
    let s: &dyn Store = store.as_ref();
    let fields = parse_fields(&json!({"name": "Late", "email": "late@example.com"}), false).unwrap();
    let w = new_customer_write(fields.into_new_customer(customer360::ids::new_id("cstm"), t0()), t0());
    let late = w.events[0].id.clone();
    store.write_with_crash(w, CrashPoint::AfterCommit).await.unwrap();
    let early = write_customer(s, 2, t0()).await;
    let batch: Vec<String> = s.events_to_fan_out(10).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(batch, vec![early.clone()]);
    s.fan_out(Vec::new(), &batch).await.unwrap();
    assert!(s.events_to_fan_out(10).await.unwrap().is_empty());
    assert_eq!(store.repair_pending().await.unwrap(), 1);
    let all: Vec<String> = s.outbox_events(None, 10).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(all, vec![late.clone(), early], "the repaired event sorts before the one already fanned out");
    let batch: Vec<String> = s.events_to_fan_out(10).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(batch, vec![late]);
}

/// Cosmos only: a fan-out that read the subscription list before the subscription was deleted
/// may still create deliveries for it; the claim pass removes them instead of leasing them.
#[cfg(feature = "cosmos-emulator")]
#[tokio::test]
async fn cosmos_deliveries_of_a_deleted_subscription_are_never_claimed() {
    let store = cosmos().await;
    let s = store.as_ref();
    let sub = subscription(&["customer.created"], t0());
    s.create_subscription(&sub).await.unwrap();
    let e = write_customer(s, 1, t0()).await;
    s.delete_subscription(&sub.id).await.unwrap();
    let d = delivery(&sub.id, &e, t0());
    s.fan_out(vec![d.clone()], std::slice::from_ref(&e)).await.unwrap();
    assert!(s.get_delivery(&sub.id, &d.id).await.unwrap().is_some(), "the racing fan-out did create it");
    assert!(s.claim_due_deliveries(t0(), t0() + Duration::minutes(2), "a", 10).await.unwrap().is_empty());
    assert_eq!(s.get_delivery(&sub.id, &d.id).await.unwrap(), None, "and the claim pass removed it");
}

#[cfg(feature = "cosmos-emulator")]
#[tokio::test]
async fn cosmos_subscriptions_are_stored_listed_and_deleted() {
    subscriptions_are_stored_listed_and_deleted(cosmos().await.as_ref()).await;
}

#[cfg(feature = "cosmos-emulator")]
#[tokio::test]
async fn cosmos_fan_out_is_idempotent_and_never_goes_back() {
    fan_out_is_idempotent_and_never_goes_back(cosmos().await.as_ref()).await;
}

#[cfg(feature = "cosmos-emulator")]
#[tokio::test]
async fn cosmos_a_due_delivery_is_leased_to_one_owner_until_the_lease_expires() {
    a_due_delivery_is_leased_to_one_owner_until_the_lease_expires(cosmos().await.as_ref()).await;
}
