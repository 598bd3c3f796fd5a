//! Webhook subscriptions, the fan-out mark and deliveries on SQLite.
use super::{internal, SqliteStore};
use crate::store::{
    AttemptResult, CustomerStore, OutboxEvent, DeliveryStatus, StoreError, StoreResult, WebhookDelivery, WebhookStore, WebhookSubscription,
};
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhook_subscriptions (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  url TEXT NOT NULL,
  events TEXT NOT NULL,
  description TEXT,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
  seq INTEGER PRIMARY KEY,
  id TEXT NOT NULL UNIQUE,
  subscription_id TEXT NOT NULL,
  event_id TEXT NOT NULL,
  event_type TEXT NOT NULL,
  payload TEXT NOT NULL,
  status TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  retry_step INTEGER NOT NULL DEFAULT 0,
  last_status_code INTEGER,
  last_error TEXT,
  last_attempt_at INTEGER,
  next_attempt_at INTEGER,
  delivered_at INTEGER,
  created_at INTEGER NOT NULL,
  lease_owner TEXT,
  lease_until INTEGER,
  UNIQUE (subscription_id, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_by_subscription ON webhook_deliveries(subscription_id, seq);
CREATE TABLE IF NOT EXISTS webhook_state (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
";

const MARK: &str = "fan_out_mark";

const DELIVERY_COLUMNS: &str = "id, subscription_id, event_id, event_type, payload, status, attempts, retry_step,
  last_status_code, last_error, last_attempt_at, next_attempt_at, delivered_at, created_at";

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(m: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(m).unwrap_or_default()
}

type RawDelivery = (String, String, String, String, String, String, u32, u32, Option<u16>, Option<String>, Option<i64>, Option<i64>, Option<i64>, i64);

fn raw_delivery(r: &Row) -> rusqlite::Result<RawDelivery> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
    ))
}

fn to_delivery(raw: RawDelivery) -> StoreResult<WebhookDelivery> {
    let (id, subscription_id, event_id, event_type, payload, status, attempts, retry_step, code, error, last, next, delivered, created) = raw;
    Ok(WebhookDelivery {
        id,
        subscription_id,
        event_id,
        event_type,
        payload: serde_json::from_str(&payload).map_err(internal)?,
        status: DeliveryStatus::parse(&status).ok_or_else(|| internal(format!("bad delivery status {status:?}")))?,
        attempts,
        retry_step,
        last_status_code: code,
        last_error: error,
        last_attempt_at: last.map(from_micros),
        next_attempt_at: next.map(from_micros),
        delivered_at: delivered.map(from_micros),
        created_at: from_micros(created),
    })
}

fn collect(rows: impl Iterator<Item = rusqlite::Result<RawDelivery>>) -> StoreResult<Vec<WebhookDelivery>> {
    rows.map(|r| to_delivery(r?)).collect()
}

fn to_subscription(r: &Row) -> rusqlite::Result<(String, String, String, Option<String>, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn subscription(raw: (String, String, String, Option<String>, i64)) -> StoreResult<WebhookSubscription> {
    let (id, url, events, description, created) = raw;
    Ok(WebhookSubscription {
        id,
        url,
        events: serde_json::from_str(&events).map_err(internal)?,
        description,
        created_at: from_micros(created),
    })
}

fn get_delivery(conn: &Connection, subscription_id: &str, delivery_id: &str) -> StoreResult<Option<WebhookDelivery>> {
    let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = ?1 AND subscription_id = ?2");
    conn.prepare_cached(&sql)?
        .query_row(params![delivery_id, subscription_id], raw_delivery)
        .optional()?
        .map(to_delivery)
        .transpose()
}

#[async_trait::async_trait]
impl WebhookStore for SqliteStore {
    async fn create_subscription(&self, s: &WebhookSubscription) -> StoreResult<()> {
        let s = s.clone();
        let events = serde_json::to_string(&s.events).map_err(internal)?;
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO webhook_subscriptions (id, url, events, description, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![s.id, s.url, events, s.description, micros(s.created_at)])?;
            Ok(())
        })
        .await
    }

    async fn get_subscription(&self, id: &str) -> StoreResult<Option<WebhookSubscription>> {
        let id = id.to_string();
        self.read(move |conn| {
            conn.prepare_cached("SELECT id, url, events, description, created_at FROM webhook_subscriptions WHERE id = ?1")?
                .query_row([&id], to_subscription)
                .optional()?
                .map(subscription)
                .transpose()
        })
        .await
    }

    async fn list_subscriptions(&self) -> StoreResult<Vec<WebhookSubscription>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT id, url, events, description, created_at FROM webhook_subscriptions ORDER BY seq")?;
            let rows = stmt.query_map([], to_subscription)?;
            rows.map(|r| subscription(r?)).collect()
        })
        .await
    }

    async fn delete_subscription(&self, id: &str) -> StoreResult<()> {
        let id = id.to_string();
        self.write(move |conn| {
            let n = conn.prepare_cached("DELETE FROM webhook_subscriptions WHERE id = ?1")?.execute([&id])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            conn.prepare_cached("DELETE FROM webhook_deliveries WHERE subscription_id = ?1")?.execute([&id])?;
            Ok(())
        })
        .await
    }

    async fn events_to_fan_out(&self, limit: u32) -> StoreResult<Vec<OutboxEvent>> {
        // The outbox's seq follows commit order (one writer), so a high-water mark suffices.
        let mark = self
            .read(|conn| {
                conn.prepare_cached("SELECT value FROM webhook_state WHERE name = ?1")?
                    .query_row([MARK], |r| r.get::<_, String>(0))
                    .optional()
                    .map_err(StoreError::from)
            })
            .await?;
        self.outbox_events(mark.as_deref(), limit).await
    }

    async fn fan_out(&self, deliveries: Vec<WebhookDelivery>, events: &[String]) -> StoreResult<()> {
        let Some(mark) = events.last().cloned() else { return Ok(()) };
        self.write(move |conn| {
            for d in &deliveries {
                conn.prepare_cached(
                    "INSERT INTO webhook_deliveries (id, subscription_id, event_id, event_type, payload, status,
                       attempts, retry_step, next_attempt_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (subscription_id, event_id) DO NOTHING",
                )?
                .execute(params![
                    d.id,
                    d.subscription_id,
                    d.event_id,
                    d.event_type,
                    d.payload.to_string(),
                    d.status.as_str(),
                    d.attempts,
                    d.retry_step,
                    d.next_attempt_at.map(micros),
                    micros(d.created_at),
                ])?;
            }
            // Forward only: another instance may have fanned out further already.
            conn.prepare_cached(
                "INSERT INTO webhook_state (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value
                 WHERE coalesce((SELECT seq FROM outbox WHERE id = excluded.value), 0)
                     > coalesce((SELECT seq FROM outbox WHERE id = webhook_state.value), 0)",
            )?
            .execute(params![MARK, mark])?;
            Ok(())
        })
        .await
    }

    async fn claim_due_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        owner: &str,
        limit: u32,
    ) -> StoreResult<Vec<WebhookDelivery>> {
        let owner = owner.to_string();
        // Most passes find nothing due: ask a reader first and leave the writer alone.
        let any_due = self
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT 1 FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?1
                       AND (lease_until IS NULL OR lease_until <= ?1) LIMIT 1",
                )?
                .query_row([micros(now)], |_| Ok(()))
                .optional()
                .map_err(StoreError::from)
            })
            .await?
            .is_some();
        if !any_due {
            return Ok(Vec::new());
        }
        self.write(move |conn| {
            // One statement on the single writer: a delivery is leased to one owner at a time.
            let sql = format!(
                "UPDATE webhook_deliveries SET lease_owner = ?1, lease_until = ?2
                 WHERE seq IN (SELECT seq FROM webhook_deliveries
                               WHERE status = 'pending' AND next_attempt_at <= ?3
                                 AND (lease_until IS NULL OR lease_until <= ?3)
                               ORDER BY next_attempt_at LIMIT ?4)
                 RETURNING {DELIVERY_COLUMNS}"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![owner, micros(lease_until), micros(now), limit], raw_delivery)?;
            collect(rows)
        })
        .await
    }

    async fn record_attempt(&self, delivery_id: &str, owner: &str, r: &AttemptResult) -> StoreResult<bool> {
        let (id, owner, r) = (delivery_id.to_string(), owner.to_string(), r.clone());
        self.write(move |conn| {
            let delivered = (r.status == DeliveryStatus::Delivered).then_some(micros(r.at));
            let retry_step = if r.status == DeliveryStatus::Pending { "retry_step + 1" } else { "retry_step" };
            let sql = format!(
                "UPDATE webhook_deliveries SET status = ?3, attempts = attempts + 1, retry_step = {retry_step},
                   last_status_code = ?4, last_error = ?5, last_attempt_at = ?6, next_attempt_at = ?7,
                   delivered_at = coalesce(?8, delivered_at), lease_owner = NULL, lease_until = NULL
                 WHERE id = ?1 AND lease_owner = ?2"
            );
            let n = conn.prepare_cached(&sql)?.execute(params![
                id,
                owner,
                r.status.as_str(),
                r.status_code,
                r.error,
                micros(r.at),
                r.next_attempt_at.map(micros),
                delivered,
            ])?;
            Ok(n == 1)
        })
        .await
    }

    async fn list_deliveries(&self, subscription_id: &str, limit: u32) -> StoreResult<Vec<WebhookDelivery>> {
        let id = subscription_id.to_string();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE subscription_id = ?1 ORDER BY seq DESC LIMIT ?2"
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![id, limit], raw_delivery)?;
            collect(rows)
        })
        .await
    }

    async fn get_delivery(&self, subscription_id: &str, delivery_id: &str) -> StoreResult<Option<WebhookDelivery>> {
        let (s, d) = (subscription_id.to_string(), delivery_id.to_string());
        self.read(move |conn| get_delivery(conn, &s, &d)).await
    }

    async fn redeliver(&self, subscription_id: &str, delivery_id: &str, now: DateTime<Utc>) -> StoreResult<WebhookDelivery> {
        let (s, d) = (subscription_id.to_string(), delivery_id.to_string());
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE webhook_deliveries SET status = 'pending', retry_step = 0, next_attempt_at = ?3,
                       lease_owner = NULL, lease_until = NULL
                     WHERE id = ?1 AND subscription_id = ?2",
                )?
                .execute(params![d, s, micros(now)])?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            get_delivery(conn, &s, &d)?.ok_or(StoreError::NotFound)
        })
        .await
    }
}
