//! Webhook delivery. Customer writes (and sync runs) put their events in the outbox in the same
//! transaction; the dispatcher fans each event out to the subscriptions that want it (one
//! `WebhookDelivery` per subscription and event, idempotently) and sends due deliveries, each
//! claimed with a lease so two instances never send the same attempt. At-least-once: receivers
//! dedupe on the event id.
use crate::store::{AttemptResult, DeliveryStatus, StoreResult, WebhookDelivery, WebhookSubscription};
use crate::App;
use chrono::{DateTime, Duration, Utc};
use futures::StreamExt;
use rand::Rng;
use std::collections::HashMap;
use std::sync::Arc;

pub mod signature;
pub mod target;

/// The events a subscription may ask for.
pub const EVENT_TYPES: &[&str] = &["customer.created", "customer.updated", "sync.completed", "sync.failed"];

/// Waits after the 1st, 2nd, ... failed attempt; after the last one the delivery is failed.
pub const BACKOFF_MINUTES: &[i64] = &[1, 5, 30, 120, 360, 720];

/// How long a claimed delivery stays with its instance (well past the request timeout).
const LEASE: Duration = Duration::minutes(2);
const FAN_OUT_BATCH: u32 = 500;
const CLAIM_BATCH: u32 = 50;
const PARALLEL_SENDS: usize = 8;
/// A pass starts no new batch after this long, so a timer invocation ends in time.
const PASS_BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DispatchReport {
    pub fanned_out: usize,
    pub attempted: usize,
    pub delivered: usize,
    pub retrying: usize,
    pub failed: usize,
}

/// The wait before the next attempt after `failures` failed ones (±10 % jitter), or None to give up.
pub fn backoff(failures: u32) -> Option<Duration> {
    let minutes = *BACKOFF_MINUTES.get((failures as usize).checked_sub(1)?)?;
    let factor = rand::thread_rng().gen_range(0.9..1.1);
    Some(Duration::milliseconds((minutes as f64 * 60_000.0 * factor) as i64))
}

/// The secrets a receiver of this subscription may verify with, newest first (one per key version
/// in use: two while the webhook key is being rotated).
pub fn subscription_secrets(app: &App, subscription_id: &str) -> Vec<[u8; 32]> {
    app.keys.current().webhook.iter().map(|k| signature::subscription_secret(k, subscription_id)).collect()
}

/// One pass: fan out new outbox events, then send what is due.
pub async fn dispatch_once(app: &App) -> StoreResult<DispatchReport> {
    let mut report = DispatchReport { fanned_out: fan_out(app).await?, ..Default::default() };
    send_due(app, &mut report).await?;
    Ok(report)
}

/// Turns outbox events past the mark into deliveries for subscriptions that existed when the
/// event happened and want it; returns how many deliveries were made.
async fn fan_out(app: &App) -> StoreResult<usize> {
    let mut made = 0;
    let mut subs: Option<Vec<WebhookSubscription>> = None;
    loop {
        let events = app.store.events_to_fan_out(FAN_OUT_BATCH).await?;
        if events.is_empty() {
            return Ok(made);
        }
        if subs.is_none() {
            subs = Some(app.store.list_subscriptions().await?);
        }
        let now = app.clock.now();
        let mut deliveries = Vec::new();
        for e in &events {
            for s in subs.iter().flatten().filter(|s| s.wants(&e.event_type) && s.created_at <= e.timestamp) {
                deliveries.push(WebhookDelivery {
                    id: crate::ids::new_id("whd"),
                    subscription_id: s.id.clone(),
                    event_id: e.id.clone(),
                    event_type: e.event_type.clone(),
                    payload: e.payload.clone(),
                    status: DeliveryStatus::Pending,
                    attempts: 0,
                    retry_step: 0,
                    last_status_code: None,
                    last_error: None,
                    last_attempt_at: None,
                    next_attempt_at: Some(now),
                    delivered_at: None,
                    created_at: now,
                });
            }
        }
        made += deliveries.len();
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        app.store.fan_out(deliveries, &ids).await?;
        if events.len() < FAN_OUT_BATCH as usize {
            return Ok(made);
        }
    }
}

async fn send_due(app: &App, report: &mut DispatchReport) -> StoreResult<()> {
    let owner = crate::ids::new_id("lease");
    let mut subs: HashMap<String, Option<Arc<WebhookSubscription>>> = HashMap::new();
    let started = std::time::Instant::now();
    while started.elapsed() < PASS_BUDGET {
        let now = app.clock.now();
        let claimed = app.store.claim_due_deliveries(now, now + LEASE, &owner, CLAIM_BATCH).await?;
        let n = claimed.len();
        let mut jobs = Vec::with_capacity(n);
        for d in claimed {
            if !subs.contains_key(&d.subscription_id) {
                let s = app.store.get_subscription(&d.subscription_id).await?.map(Arc::new);
                subs.insert(d.subscription_id.clone(), s);
            }
            // A subscription deleted meanwhile took its deliveries with it.
            if let Some(Some(s)) = subs.get(&d.subscription_id) {
                jobs.push((d, s.clone()));
            }
        }
        let results: Vec<StoreResult<DeliveryStatus>> = futures::stream::iter(jobs)
            .map(|(d, s)| {
                let owner = owner.clone();
                async move {
                    let r = attempt(app, &s, &d).await;
                    app.store.record_attempt(&d.id, &owner, &r).await?;
                    Ok(r.status)
                }
            })
            .buffer_unordered(PARALLEL_SENDS)
            .collect()
            .await;
        for r in results {
            report.attempted += 1;
            match r? {
                DeliveryStatus::Delivered => report.delivered += 1,
                DeliveryStatus::Pending => report.retrying += 1,
                DeliveryStatus::Failed => report.failed += 1,
            }
        }
        if n < CLAIM_BATCH as usize {
            break;
        }
    }
    Ok(())
}

/// Sends one attempt and decides what comes next.
async fn attempt(app: &App, s: &WebhookSubscription, d: &WebhookDelivery) -> AttemptResult {
    let at = app.clock.now();
    let (status_code, error) = match send(app, s, d, at).await {
        Ok(code) => (Some(code), None),
        Err(e) => (None, Some(e)),
    };
    let ok = status_code.is_some_and(|c| (200..300).contains(&c));
    let (status, next_attempt_at) = if ok {
        (DeliveryStatus::Delivered, None)
    } else {
        match backoff(d.retry_step + 1) {
            Some(wait) => (DeliveryStatus::Pending, Some(at + wait)),
            None => (DeliveryStatus::Failed, None),
        }
    };
    if !ok {
        tracing::warn!(delivery = %d.id, webhook = %s.id, event = %d.event_id, status_code, error = error.as_deref().unwrap_or(""), next = ?next_attempt_at, "webhook attempt failed");
    }
    AttemptResult { at, status_code, error, status, next_attempt_at }
}

async fn send(app: &App, s: &WebhookSubscription, d: &WebhookDelivery, at: DateTime<Utc>) -> Result<u16, String> {
    let allow_loopback = app.config.webhook_allow_loopback;
    // Checked again now: the URL's host may point elsewhere than when it was subscribed. Names
    // are checked by the client's resolver on the addresses it connects to; literals here.
    let url = url::Url::parse(&s.url).map_err(|_| "the URL no longer parses".to_string())?;
    target::check_url(url.as_str(), allow_loopback).await.map_err(|e| format!("refused: {e}"))?;
    let secrets = subscription_secrets(app, &s.id);
    if secrets.is_empty() {
        return Err("no webhook signing key is available".into());
    }
    let body = d.payload.to_string().into_bytes();
    let client = target::client(allow_loopback)?;
    let mut req = client
        .post(url)
        .timeout(app.config.webhook_timeout)
        .header("content-type", "application/json")
        .header("x-delivery-id", &d.id);
    for (k, v) in signature::headers(&secrets, &d.event_id, &d.event_type, at.timestamp(), &body) {
        req = req.header(k, v);
    }
    match req.body(body).send().await {
        Ok(resp) => Ok(resp.status().as_u16()),
        Err(e) if e.is_timeout() => Err(format!("timed out after {} ms", app.config.webhook_timeout.as_millis())),
        Err(e) if e.is_connect() => Err("could not connect".into()),
        Err(e) => Err(format!("request failed: {}", e.without_url())),
    }
}

/// The standalone dispatcher: one pass every `WEBHOOK_DISPATCH_INTERVAL_MS` (0 turns it off).
pub fn spawn_dispatcher(app: Arc<App>) -> Option<tokio::task::JoinHandle<()>> {
    let every = app.config.webhook_dispatch_interval;
    if every.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = dispatch_once(&app).await {
                tracing::warn!(error = %e, "webhook dispatch pass failed");
            }
        }
    }))
}

/// The `WebhookDispatch` timer function: one pass, its counts as the return value.
pub async fn invoke_dispatch(app: &App) -> crate::error::Result<crate::api::Resp> {
    let r = dispatch_once(app).await?;
    let log = format!(
        "webhooks: {} deliveries made, {} attempted, {} delivered, {} retrying, {} failed",
        r.fanned_out, r.attempted, r.delivered, r.retrying, r.failed
    );
    Ok(crate::functions::invocation_response(vec![log], serde_json::to_value(&r).unwrap_or_default()))
}
