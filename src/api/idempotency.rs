//! `Idempotency-Key` for creating calls: the same key with the same body within 24 h replays
//! the first answer; with another body it is a 422. The record is stored in the same write as
//! what the call creates, so a replay can never point at something that was not stored.
use super::{Req, Resp};
use crate::error::{ApiError, Code, Result};
use crate::store::{IdempotencyRecord, StoreError};
use crate::App;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::{HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

pub struct Idempotency {
    scope: String,
    key: Option<String>,
    hash: String,
}

impl Idempotency {
    /// Reads the header for `route` called by `client_id` with `body`.
    pub fn of(req: &Req, client_id: &str, route: &str, body: &serde_json::Value) -> Result<Idempotency> {
        let key = match req.header("idempotency-key") {
            None => None,
            Some(k) if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x21..0x7f).contains(&b)) => Some(k.to_string()),
            Some(_) => {
                return Err(ApiError::field(
                    "Idempotency-Key",
                    "Expected 1 to 255 visible ASCII characters",
                    "Esperado de 1 a 255 caracteres ASCII visíveis",
                ))
            }
        };
        // serde_json objects are ordered by key, so the hash ignores the body's key order.
        let hash = hex::encode(Sha256::digest(body.to_string().as_bytes()));
        Ok(Idempotency { scope: format!("{client_id}:{route}"), key, hash })
    }

    /// The first answer, when this key was seen before.
    pub async fn replay_if_seen(&self, app: &App) -> Result<Option<Resp>> {
        let Some(key) = &self.key else { return Ok(None) };
        match app.store.get_idempotency(&self.scope, key).await? {
            Some(rec) => self.replay(&rec).map(Some),
            None => Ok(None),
        }
    }

    /// The record to store with the write that answers `status` with `body`.
    pub fn record(&self, status: u16, body: &str, location: &str, now: DateTime<Utc>) -> Option<IdempotencyRecord> {
        self.key.as_ref().map(|key| IdempotencyRecord {
            scope: self.scope.clone(),
            key: key.clone(),
            request_hash: self.hash.clone(),
            status,
            body: body.to_string(),
            location: Some(location.to_string()),
            created_at: now,
        })
    }

    /// Called when the write lost a race on this key: answer as the winner did.
    pub async fn lost_race(&self, app: &App) -> Result<Resp> {
        match self.replay_if_seen(app).await? {
            Some(r) => Ok(r),
            None => Err(StoreError::Internal("idempotency record vanished".into()).into()),
        }
    }

    fn replay(&self, rec: &IdempotencyRecord) -> Result<Resp> {
        if rec.request_hash != self.hash {
            return Err(ApiError::new(
                Code::IdempotencyKeyReused,
                "This Idempotency-Key was already used with a different request body",
                "Esta Idempotency-Key já foi usada com outro corpo de requisição",
            ));
        }
        let mut r = created(StatusCode::from_u16(rec.status).unwrap_or(StatusCode::OK), rec.body.clone(), rec.location.as_deref());
        r.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok(r)
    }
}

/// A JSON answer to a creating call, with its `Location`.
pub fn created(status: StatusCode, body: String, location: Option<&str>) -> Resp {
    let mut r = http::Response::new(Bytes::from(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    if let Some(v) = location.and_then(|l| HeaderValue::from_str(l).ok()) {
        h.insert("location", v);
    }
    r
}
