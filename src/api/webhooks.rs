//! `/api/webhooks`: subscriptions, their delivery log and redelivery (scope webhooks.manage).
use super::{json_response, method_not_allowed, Req, Resp};
use crate::error::{ApiError, FieldError, Result};
use crate::store::{StoreError, WebhookDelivery, WebhookSubscription};
use crate::webhooks::{signature, subscription_secrets, target, EVENT_TYPES};
use crate::App;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderValue, Method, StatusCode};
use serde_json::{json, Value};

const SCOPE: &str = "webhooks.manage";
const MAX_DESCRIPTION: usize = 500;
const MAX_SUBSCRIPTIONS: usize = 100;
const DEFAULT_DELIVERIES: u32 = 50;
const MAX_DELIVERIES: u32 = 200;

pub async fn handle(app: &App, req: &Req, rest: &[&str]) -> Result<Resp> {
    req.require(&[SCOPE])?;
    match (rest, &req.method) {
        ([], &Method::GET) => list(app).await,
        ([], &Method::POST) => create(app, req).await,
        ([], _) => Err(method_not_allowed("GET, POST")),
        ([id], &Method::GET) => Ok(json_response(StatusCode::OK, &subscription_json(&load(app, id).await?))),
        ([id], &Method::DELETE) => delete(app, id).await,
        ([_], _) => Err(method_not_allowed("GET, DELETE")),
        ([id, "secret"], &Method::GET) => secret(app, id).await,
        ([_, "secret"], _) => Err(method_not_allowed("GET")),
        ([id, "deliveries"], &Method::GET) => deliveries(app, req, id).await,
        ([_, "deliveries"], _) => Err(method_not_allowed("GET")),
        ([id, "deliveries", did], &Method::GET) => {
            let s = load(app, id).await?;
            Ok(json_response(StatusCode::OK, &delivery_json(&load_delivery(app, &s.id, did).await?)))
        }
        ([_, "deliveries", _], _) => Err(method_not_allowed("GET")),
        ([id, "deliveries", did, "redeliver"], &Method::POST) => redeliver(app, id, did).await,
        ([_, "deliveries", _, "redeliver"], _) => Err(method_not_allowed("POST")),
        _ => Err(ApiError::not_found("Route")),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn subscription_json(s: &WebhookSubscription) -> Value {
    json!({
        "id": s.id,
        "url": s.url,
        "events": s.events,
        "description": s.description,
        "createdAt": time(s.created_at),
    })
}

fn delivery_json(d: &WebhookDelivery) -> Value {
    json!({
        "id": d.id,
        "webhookId": d.subscription_id,
        "eventId": d.event_id,
        "eventType": d.event_type,
        "status": d.status.as_str(),
        "attempts": d.attempts,
        "lastStatusCode": d.last_status_code,
        "lastError": d.last_error,
        "lastAttemptAt": d.last_attempt_at.map(time),
        "nextAttemptAt": d.next_attempt_at.map(time),
        "deliveredAt": d.delivered_at.map(time),
        "createdAt": time(d.created_at),
    })
}

/// The receiver's secrets, newest first (two while the webhook key is rotated).
fn secrets_json(app: &App, id: &str) -> Vec<String> {
    subscription_secrets(app, id).iter().map(|s| signature::whsec(s)).collect()
}

async fn load(app: &App, id: &str) -> Result<WebhookSubscription> {
    if !crate::ids::is_id("whk", id) {
        return Err(ApiError::not_found("Webhook"));
    }
    app.store.get_subscription(id).await?.ok_or_else(|| ApiError::not_found("Webhook"))
}

async fn load_delivery(app: &App, subscription_id: &str, id: &str) -> Result<WebhookDelivery> {
    if !crate::ids::is_id("whd", id) {
        return Err(ApiError::not_found("Delivery"));
    }
    app.store.get_delivery(subscription_id, id).await?.ok_or_else(|| ApiError::not_found("Delivery"))
}

async fn list(app: &App) -> Result<Resp> {
    let subs = app.store.list_subscriptions().await?;
    let data: Vec<Value> = subs.iter().map(subscription_json).collect();
    Ok(json_response(StatusCode::OK, &json!({ "data": data })))
}

/// `{url, events, description}`, every problem reported at once.
async fn parse_subscription(app: &App, body: &Value) -> Result<(String, Vec<String>, Option<String>)> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::field("body", "Expected a JSON object", "Esperado um objeto JSON"));
    };
    let mut errors = Vec::new();
    for k in obj.keys() {
        if !matches!(k.as_str(), "url" | "events" | "description") {
            errors.push(FieldError::new(k.as_str(), "Unknown field", "Campo desconhecido"));
        }
    }
    let url = match obj.get("url").and_then(Value::as_str).map(str::trim) {
        None | Some("") => {
            errors.push(FieldError::new("url", "Required: the https URL to send events to", "Obrigatório: a URL https de destino"));
            None
        }
        Some(u) => match target::check_url(u, app.config.webhook_allow_loopback).await {
            Ok((url, _)) => Some(url.to_string()),
            Err(why) => {
                errors.push(FieldError::new("url", format!("Not allowed: {why}"), format!("Não permitida: {why}")));
                None
            }
        },
    };
    let mut events: Vec<String> = Vec::new();
    match obj.get("events").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            for e in list {
                match e.as_str() {
                    Some(name) if EVENT_TYPES.contains(&name) => {
                        if !events.iter().any(|x| x == name) {
                            events.push(name.to_string());
                        }
                    }
                    _ => {
                        let known = EVENT_TYPES.join(", ");
                        errors.push(FieldError::new("events", format!("Each event must be one of {known}"), format!("Cada evento deve ser um de {known}")));
                        break;
                    }
                }
            }
        }
        _ => errors.push(FieldError::new("events", "Required: a non-empty list of event types", "Obrigatório: uma lista não vazia de tipos de evento")),
    }
    let description = match obj.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if d.chars().count() <= MAX_DESCRIPTION => Some(d.trim().to_string()).filter(|d| !d.is_empty()),
        Some(_) => {
            errors.push(FieldError::new("description", "At most 500 characters of text", "No máximo 500 caracteres de texto"));
            None
        }
    };
    match url {
        Some(url) if errors.is_empty() => Ok((url, events, description)),
        _ => Err(ApiError::validation(errors)),
    }
}

async fn create(app: &App, req: &Req) -> Result<Resp> {
    let body = req.json(&[])?;
    let (url, events, description) = parse_subscription(app, &body).await?;
    if app.store.list_subscriptions().await?.len() >= MAX_SUBSCRIPTIONS {
        return Err(ApiError::new(
            crate::error::Code::Conflict,
            format!("At most {MAX_SUBSCRIPTIONS} webhooks; delete one first"),
            format!("No máximo {MAX_SUBSCRIPTIONS} webhooks; exclua um antes"),
        ));
    }
    let s = WebhookSubscription { id: crate::ids::new_id("whk"), url, events, description, created_at: app.clock.now() };
    app.store.create_subscription(&s).await?;
    let mut v = subscription_json(&s);
    // Shown here and at GET .../secret only: the receiver's key to verify signatures.
    v["secret"] = json!(secrets_json(app, &s.id).into_iter().next());
    let mut r = json_response(StatusCode::CREATED, &v);
    if let Ok(loc) = HeaderValue::from_str(&format!("/api/webhooks/{}", s.id)) {
        r.headers_mut().insert("location", loc);
    }
    Ok(r)
}

async fn delete(app: &App, id: &str) -> Result<Resp> {
    if !crate::ids::is_id("whk", id) {
        return Err(ApiError::not_found("Webhook"));
    }
    match app.store.delete_subscription(id).await {
        Ok(()) => {
            let mut r = http::Response::new(Bytes::new());
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        Err(StoreError::NotFound) => Err(ApiError::not_found("Webhook")),
        Err(e) => Err(e.into()),
    }
}

async fn secret(app: &App, id: &str) -> Result<Resp> {
    let s = load(app, id).await?;
    Ok(json_response(StatusCode::OK, &json!({ "secrets": secrets_json(app, &s.id) })))
}

async fn deliveries(app: &App, req: &Req, id: &str) -> Result<Resp> {
    let s = load(app, id).await?;
    let mut limit = DEFAULT_DELIVERIES;
    for (k, v) in req.query_pairs()? {
        if k == "limit" {
            limit = match v.parse::<u32>() {
                Ok(n) if (1..=MAX_DELIVERIES).contains(&n) => n,
                _ => return Err(ApiError::field("limit", "Expected an integer from 1 to 200", "Esperado um inteiro de 1 a 200")),
            };
        }
    }
    let list = app.store.list_deliveries(&s.id, limit).await?;
    let data: Vec<Value> = list.iter().map(delivery_json).collect();
    Ok(json_response(StatusCode::OK, &json!({ "data": data })))
}

async fn redeliver(app: &App, id: &str, delivery_id: &str) -> Result<Resp> {
    let s = load(app, id).await?;
    load_delivery(app, &s.id, delivery_id).await?;
    match app.store.redeliver(&s.id, delivery_id, app.clock.now()).await {
        Ok(d) => Ok(json_response(StatusCode::ACCEPTED, &delivery_json(&d))),
        Err(StoreError::NotFound) => Err(ApiError::not_found("Delivery")),
        Err(e) => Err(e.into()),
    }
}
