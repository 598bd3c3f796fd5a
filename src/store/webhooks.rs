//! The webhook part of the storage port: subscriptions, the fan-out position in the outbox and
//! one delivery per (subscription, event), claimed with a lease so two instances never send the
//! same attempt.
use super::{OutboxEvent, StoreResult};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A receiver's registration: where to send which events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSubscription {
    /// `whk_` + ULID.
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl WebhookSubscription {
    pub fn wants(&self, event_type: &str) -> bool {
        self.events.iter().any(|e| e == event_type)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One event on its way to one subscription (`WebhookDelivery` in the delivery log).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookDelivery {
    /// `whd_` + ULID.
    pub id: String,
    pub subscription_id: String,
    pub event_id: String,
    pub event_type: String,
    /// The event body exactly as sent (`{id, event, timestamp, data}`).
    pub payload: Value,
    pub status: DeliveryStatus,
    /// Every attempt ever made, redeliveries included.
    pub attempts: u32,
    /// Failed attempts since the delivery was (re)scheduled: picks the next backoff step.
    pub retry_step: u32,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// When a pending delivery is due; None once delivered or failed.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What one attempt came to, recorded by the instance that holds the lease.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptResult {
    pub at: DateTime<Utc>,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// Delivered, Pending (retry at `next_attempt_at`) or Failed (gave up).
    pub status: DeliveryStatus,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

#[async_trait]
pub trait WebhookStore: Send + Sync {
    async fn create_subscription(&self, s: &WebhookSubscription) -> StoreResult<()>;
    async fn get_subscription(&self, id: &str) -> StoreResult<Option<WebhookSubscription>>;
    /// Oldest first.
    async fn list_subscriptions(&self) -> StoreResult<Vec<WebhookSubscription>>;
    /// Removes the subscription and its deliveries (pending ones are never sent). NotFound if absent.
    async fn delete_subscription(&self, id: &str) -> StoreResult<()>;

    /// Outbox events not yet fanned out, oldest first (the same event may come again until
    /// `fan_out` has recorded it, never after).
    async fn events_to_fan_out(&self, limit: u32) -> StoreResult<Vec<OutboxEvent>>;
    /// Stores the deliveries, skipping any (subscription, event) pair that already has one, and
    /// records `events` (a batch from `events_to_fan_out`) as fanned out, all in one write.
    /// Safe to repeat and to run on two instances at once.
    async fn fan_out(&self, deliveries: Vec<WebhookDelivery>, events: &[String]) -> StoreResult<()>;

    /// Atomically leases up to `limit` pending deliveries due at `now` whose lease is free or
    /// expired, to `owner` until `lease_until`; returns them.
    async fn claim_due_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: &str,
        limit: u32,
    ) -> StoreResult<Vec<WebhookDelivery>>;
    /// Records an attempt and frees the lease, only if `owner` still holds it (false otherwise).
    async fn record_attempt(&self, delivery_id: &str, owner: &str, r: &AttemptResult) -> StoreResult<bool>;

    /// The subscription's deliveries, newest first.
    async fn list_deliveries(&self, subscription_id: &str, limit: u32) -> StoreResult<Vec<WebhookDelivery>>;
    async fn get_delivery(&self, subscription_id: &str, delivery_id: &str) -> StoreResult<Option<WebhookDelivery>>;
    /// Makes the delivery pending and due at `now` with a fresh backoff schedule, dropping any
    /// lease. NotFound if the delivery is not the subscription's.
    async fn redeliver(&self, subscription_id: &str, delivery_id: &str, now: DateTime<Utc>) -> StoreResult<WebhookDelivery>;
}
