//! `/api/sync`: queue a sync job, read one, list recent ones.
use super::customers::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use super::idempotency::{created, Idempotency};
use super::{json_response, method_not_allowed, Req, Resp};
use crate::error::{ApiError, FieldError, Result};
use crate::store::{StoreError, SyncEntity, SyncJob, SyncMode};
use crate::App;
use chrono::{DateTime, Utc};
use http::{Method, StatusCode};
use serde_json::{json, Value};

pub async fn handle(app: &App, req: &Req, rest: &[&str]) -> Result<Resp> {
    match (rest, &req.method) {
        ([], &Method::GET) => list(app, req).await,
        ([], &Method::POST) => create(app, req).await,
        ([], _) => Err(method_not_allowed("GET, POST")),
        ([id], &Method::GET) => get(app, req, id).await,
        ([_], _) => Err(method_not_allowed("GET")),
        _ => Err(ApiError::not_found("Route")),
    }
}

/// `page` (≥ 1) and `pageSize` (1..=200) from the query, as on `/api/customers`.
pub(crate) fn page_params(req: &Req, extra: &mut dyn FnMut(&str, &str, &mut Vec<FieldError>)) -> Result<(u64, u32)> {
    let (mut page, mut size) = (1u64, DEFAULT_PAGE_SIZE);
    let mut errors = Vec::new();
    for (k, v) in req.query_pairs()? {
        match k.as_str() {
            "page" => match v.parse::<u64>() {
                Ok(n) if (1..=10_000_000).contains(&n) => page = n,
                _ => errors.push(FieldError::new("page", "Expected an integer ≥ 1", "Esperado um inteiro ≥ 1")),
            },
            "pageSize" => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => size = n,
                _ => errors.push(FieldError::new("pageSize", "Expected an integer from 1 to 200", "Esperado um inteiro de 1 a 200")),
            },
            other => extra(other, &v, &mut errors),
        }
    }
    if errors.is_empty() {
        Ok((page, size))
    } else {
        Err(ApiError::validation(errors))
    }
}

pub(crate) fn page_body(page: u64, size: u32, total: u64, data: Vec<Value>) -> Value {
    json!({ "page": page, "pageSize": size, "total": total, "totalPages": total.div_ceil(size as u64), "data": data })
}

async fn list(app: &App, req: &Req) -> Result<Resp> {
    req.require(&["sync.read", "sync.write"])?;
    let (page, size) = page_params(req, &mut |_, _, _| {})?;
    let (jobs, total) = app.store.list_sync_jobs((page - 1) * size as u64, size).await?;
    Ok(json_response(StatusCode::OK, &page_body(page, size, total, jobs.iter().map(SyncJob::to_api).collect())))
}

async fn get(app: &App, req: &Req, id: &str) -> Result<Resp> {
    req.require(&["sync.read", "sync.write"])?;
    if !crate::ids::is_id("sync", id) {
        return Err(ApiError::not_found("Sync job"));
    }
    let job = app.store.get_sync_job(id).await?.ok_or_else(|| ApiError::not_found("Sync job"))?;
    Ok(json_response(StatusCode::OK, &job.to_api()))
}

/// A valid `POST /api/sync` body.
#[derive(Debug)]
struct SyncRequest {
    entity: SyncEntity,
    mode: SyncMode,
    since: Option<DateTime<Utc>>,
}

fn parse_request(body: &Value, now: DateTime<Utc>) -> Result<SyncRequest> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::field("body", "Expected a JSON object", "Esperado um objeto JSON"));
    };
    let mut errors = Vec::new();
    for k in obj.keys() {
        if !["entity", "mode", "since"].contains(&k.as_str()) {
            errors.push(FieldError::new(k, "Unknown field", "Campo desconhecido"));
        }
    }
    let entity = obj.get("entity").and_then(Value::as_str).and_then(SyncEntity::parse);
    if entity.is_none() {
        errors.push(FieldError::new("entity", "Expected customers or opportunities", "Esperado customers ou opportunities"));
    }
    let mode = obj.get("mode").and_then(Value::as_str).and_then(SyncMode::parse);
    if mode.is_none() {
        errors.push(FieldError::new("mode", "Expected full or incremental", "Esperado full ou incremental"));
    }
    let since = match obj.get("since") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()) {
            Some(t) if t.with_timezone(&Utc) > now => {
                errors.push(FieldError::new("since", "Must not be in the future", "Não pode estar no futuro"));
                None
            }
            Some(t) => Some(t.with_timezone(&Utc)),
            None => {
                errors.push(FieldError::new(
                    "since",
                    "Expected an RFC 3339 date-time, e.g. 2025-10-10T00:00:00Z",
                    "Esperado data-hora RFC 3339, ex.: 2025-10-10T00:00:00Z",
                ));
                None
            }
        },
    };
    if since.is_some() && mode == Some(SyncMode::Full) {
        errors.push(FieldError::new("since", "Only an incremental sync takes since", "Apenas a sincronização incremental aceita since"));
    }
    match (entity, mode) {
        (Some(entity), Some(mode)) if errors.is_empty() => Ok(SyncRequest { entity, mode, since }),
        _ => {
            errors.sort_by(|a, b| a.field.cmp(&b.field));
            Err(ApiError::validation(errors))
        }
    }
}

async fn create(app: &App, req: &Req) -> Result<Resp> {
    let principal = req.require(&["sync.write"])?;
    let body = req.json(&[])?;
    let idem = Idempotency::of(req, &principal.client_id, "POST /api/sync", &body)?;
    if let Some(first) = idem.replay_if_seen(app).await? {
        return Ok(first);
    }
    let now = app.clock.now();
    let r = parse_request(&body, now)?;
    let since = match (r.mode, r.since) {
        (SyncMode::Incremental, None) => app.store.sync_watermark(r.entity).await?,
        (_, since) => since,
    };
    let job = SyncJob::new(crate::ids::new_id("sync"), r.entity, r.mode, since, now);
    let location = format!("/api/sync/{}", job.id);
    let resp_body = json!({ "jobId": job.id, "status": "queued" }).to_string();
    let record = idem.record(202, &resp_body, &location, now);
    match crate::sync::queue_job(app, job, record).await {
        Ok(_) => Ok(created(StatusCode::ACCEPTED, resp_body, Some(&location))),
        Err(StoreError::Conflict { field: "idempotencyKey", .. }) => idem.lost_race(app).await,
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_name_every_bad_field() {
        let now = Utc::now();
        let e = parse_request(&json!({"entity": "orders", "mode": "sometimes", "x": 1}), now).unwrap_err();
        let fields: Vec<_> = e.field_errors.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["entity", "mode", "x"]);
        let future = (now + chrono::Duration::hours(1)).to_rfc3339();
        let e = parse_request(&json!({"entity": "customers", "mode": "incremental", "since": future}), now).unwrap_err();
        assert_eq!(e.field_errors[0].field, "since");
        let ok = parse_request(&json!({"entity": "customers", "mode": "incremental", "since": "2025-10-10T00:00:00Z"}), now).unwrap();
        assert_eq!(ok.entity, SyncEntity::Customers);
        assert!(ok.since.is_some());
    }
}
