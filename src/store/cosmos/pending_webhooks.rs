//! TEMPORARY: the Cosmos `WebhookStore` is written on another branch (`webhooks.rs`). This
//! stand-in only lets this branch compile; the lead deletes it when merging the real one.
use super::CosmosStore;
use crate::store::{AttemptResult, OutboxEvent, StoreError, StoreResult, WebhookDelivery, WebhookStore, WebhookSubscription};
use chrono::{DateTime, Utc};

fn missing<T>() -> StoreResult<T> {
    Err(StoreError::Internal("not on this branch".into()))
}

#[async_trait::async_trait]
impl WebhookStore for CosmosStore {
    async fn create_subscription(&self, _s: &WebhookSubscription) -> StoreResult<()> {
        missing()
    }
    async fn get_subscription(&self, _id: &str) -> StoreResult<Option<WebhookSubscription>> {
        missing()
    }
    async fn list_subscriptions(&self) -> StoreResult<Vec<WebhookSubscription>> {
        missing()
    }
    async fn delete_subscription(&self, _id: &str) -> StoreResult<()> {
        missing()
    }
    async fn events_to_fan_out(&self, _limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        missing()
    }
    async fn fan_out(&self, _deliveries: Vec<WebhookDelivery>, _events: &[String]) -> StoreResult<()> {
        missing()
    }
    async fn claim_due_deliveries(
        &self,
        _now: DateTime<Utc>,
        _lease_until: DateTime<Utc>,
        _owner: &str,
        _limit: u32,
    ) -> StoreResult<Vec<WebhookDelivery>> {
        missing()
    }
    async fn record_attempt(&self, _delivery_id: &str, _owner: &str, _r: &AttemptResult) -> StoreResult<bool> {
        missing()
    }
    async fn list_deliveries(&self, _subscription_id: &str, _limit: u32) -> StoreResult<Vec<WebhookDelivery>> {
        missing()
    }
    async fn get_delivery(&self, _subscription_id: &str, _delivery_id: &str) -> StoreResult<Option<WebhookDelivery>> {
        missing()
    }
    async fn redeliver(&self, _subscription_id: &str, _delivery_id: &str, _now: DateTime<Utc>) -> StoreResult<WebhookDelivery> {
        missing()
    }
}
