//! `/api/customers`: list, get, create, merge-patch.
use super::idempotency::{created, Idempotency};
use super::{json_bytes_response, json_response, method_not_allowed, Req, Resp};
use crate::domain::{self, Customer, CustomerFields, StageChange};
use crate::error::{ApiError, Code, FieldError, Result};
use crate::store::{
    CustomerWrite, ListQuery, Order, OutboxEvent, SortField, SortKey, Start, StoreError, WriteKind,
};
use crate::App;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use http::{HeaderValue, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const MAX_PAGE_SIZE: u32 = 200;
pub const DEFAULT_PAGE_SIZE: u32 = 50;

pub async fn handle(app: &App, req: &Req, rest: &[&str]) -> Result<Resp> {
    match (rest, &req.method) {
        ([], &Method::GET) => list(app, req).await,
        ([], &Method::POST) => create(app, req).await,
        ([], _) => Err(method_not_allowed("GET, POST")),
        ([id], &Method::GET) => get(app, req, id).await,
        ([id], &Method::PATCH) => patch(app, req, id).await,
        ([_], _) => Err(method_not_allowed("GET, PATCH")),
        _ => Err(ApiError::not_found("Route")),
    }
}

/// The opaque `cursor`: where the last page ended, and the query it belongs to.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Cursor {
    s: SortField,
    o: Order,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    q: Option<String>,
    k: SortKey,
    /// The page number the cursor leads to.
    p: u64,
    n: u32,
}

fn encode_cursor(c: &Cursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap_or_default())
}

fn decode_cursor(s: &str) -> Option<Cursor> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()?;
    serde_json::from_slice(&bytes).ok()
}

struct ListParams {
    page: u64,
    page_size: u32,
    search: Option<String>,
    sort: SortField,
    order: Order,
    cursor: Option<Cursor>,
}

fn parse_list_params(req: &Req) -> Result<ListParams> {
    let mut p = ListParams { page: 1, page_size: DEFAULT_PAGE_SIZE, search: None, sort: SortField::CreatedAt, order: Order::Desc, cursor: None };
    let mut errors = Vec::new();
    let (mut sort_given, mut order_given, mut page_given) = (false, false, false);
    for (k, v) in req.query_pairs()? {
        match k.as_str() {
            "page" => match v.parse::<u64>() {
                Ok(n) if (1..=10_000_000).contains(&n) => {
                    p.page = n;
                    page_given = true;
                }
                _ => errors.push(FieldError::new("page", "Expected an integer ≥ 1", "Esperado um inteiro ≥ 1")),
            },
            "pageSize" => match v.parse::<u32>() {
                Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => p.page_size = n,
                _ => errors.push(FieldError::new("pageSize", "Expected an integer from 1 to 200", "Esperado um inteiro de 1 a 200")),
            },
            "search" => {
                let t = v.trim();
                if t.chars().count() > 100 {
                    errors.push(FieldError::new("search", "At most 100 characters", "No máximo 100 caracteres"));
                } else if !t.is_empty() {
                    p.search = Some(t.to_lowercase());
                }
            }
            "sort" => {
                sort_given = true;
                match v.as_str() {
                    "createdAt" => p.sort = SortField::CreatedAt,
                    "name" => p.sort = SortField::Name,
                    _ => errors.push(FieldError::new("sort", "Expected createdAt or name", "Esperado createdAt ou name")),
                }
            }
            "order" => {
                order_given = true;
                match v.as_str() {
                    "asc" => p.order = Order::Asc,
                    "desc" => p.order = Order::Desc,
                    _ => errors.push(FieldError::new("order", "Expected asc or desc", "Esperado asc ou desc")),
                }
            }
            "cursor" => match decode_cursor(&v) {
                Some(c) => p.cursor = Some(c),
                None => errors.push(FieldError::new("cursor", "Unknown or damaged cursor", "Cursor desconhecido ou corrompido")),
            },
            _ => {}
        }
    }
    if let Some(c) = &p.cursor {
        let mismatch = (sort_given && c.s != p.sort)
            || (order_given && c.o != p.order)
            || (p.search.is_some() && c.q != p.search)
            || page_given;
        if mismatch {
            errors.push(FieldError::new(
                "cursor",
                "A cursor continues its own query: do not combine it with page or another sort, order or search",
                "Um cursor continua sua própria consulta: não o combine com page ou outro sort, order ou search",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    if let Some(c) = &p.cursor {
        p.sort = c.s;
        p.order = c.o;
        p.search = c.q.clone();
        p.page = c.p;
    }
    Ok(p)
}

async fn list(app: &App, req: &Req) -> Result<Resp> {
    req.require(&["customer.read"])?;
    let p = parse_list_params(req)?;
    let start = match &p.cursor {
        Some(c) => Start::After(c.k.clone()),
        None => Start::Offset((p.page - 1) * p.page_size as u64),
    };
    let q = ListQuery { search: p.search.clone(), sort: p.sort, order: p.order, limit: p.page_size, start };
    let page = app.store.list_customer_summaries(&q).await?;
    let total_pages = page.total.div_ceil(p.page_size as u64);
    let next_cursor = match page.last {
        Some(last) if p.page * (p.page_size as u64) < page.total => Some(encode_cursor(&Cursor {
            s: p.sort,
            o: p.order,
            q: p.search.clone(),
            k: last,
            p: p.page + 1,
            n: p.page_size,
        })),
        _ => None,
    };
    // The items come rendered from the store; only the envelope is serialised here, in the
    // spec's key order.
    let head = serde_json::to_string(&ListHead {
        page: p.page,
        page_size: p.page_size,
        total: page.total,
        total_pages,
        next_cursor,
    })
    .map_err(ApiError::internal)?;
    let mut body = Vec::with_capacity(head.len() + 16 + page.items.iter().map(|i| i.len() + 1).sum::<usize>());
    body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    body.extend_from_slice(b",\"data\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.as_bytes());
    }
    body.extend_from_slice(b"]}");
    Ok(json_bytes_response(StatusCode::OK, body))
}

/// The list answer's fields before `data`, in the spec's key order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListHead {
    page: u64,
    page_size: u32,
    total: u64,
    total_pages: u64,
    next_cursor: Option<String>,
}

fn etag_header(etag: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{etag}\"")).unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The etags named by an If-Match / If-None-Match header (`*` as itself).
fn etags_in(header: &str) -> Vec<String> {
    header
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/").trim_matches('"').to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

async fn load(app: &App, id: &str) -> Result<Customer> {
    if !crate::ids::is_id("cstm", id) {
        return Err(ApiError::not_found("Customer"));
    }
    app.store.get_customer(id).await?.ok_or_else(|| ApiError::not_found("Customer"))
}

async fn get(app: &App, req: &Req, id: &str) -> Result<Resp> {
    req.require(&["customer.read"])?;
    let c = load(app, id).await?;
    if let Some(inm) = req.header("if-none-match") {
        let tags = etags_in(inm);
        if tags.iter().any(|t| t == "*" || *t == c.etag) {
            let mut r = http::Response::new(Bytes::new());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r.headers_mut().insert("etag", etag_header(&c.etag));
            return Ok(r);
        }
    }
    let mut r = json_response(StatusCode::OK, &c.view());
    r.headers_mut().insert("etag", etag_header(&c.etag));
    Ok(r)
}

pub fn event(event_type: &str, at: DateTime<Utc>, data: Value) -> OutboxEvent {
    let id = crate::ids::new_id("evt");
    OutboxEvent {
        payload: json!({
            "id": id,
            "event": event_type,
            "timestamp": at.to_rfc3339_opts(SecondsFormat::Secs, true),
            "data": data,
        }),
        id,
        event_type: event_type.to_string(),
        timestamp: at,
    }
}

fn conflict(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { field, existing_id } if field == "email" || field == "externalId" => ApiError::new(
            Code::Conflict,
            format!("A customer with this {field} already exists"),
            format!("Já existe um cliente com este {field}"),
        )
        .with_detail("field", field)
        .with_detail("existingId", existing_id),
        other => other.into(),
    }
}

async fn create(app: &App, req: &Req) -> Result<Resp> {
    let principal = req.require(&["customer.write"])?;
    let body = req.json(&[])?;
    let idem = Idempotency::of(req, &principal.client_id, "POST /api/customers", &body)?;
    if let Some(first) = idem.replay_if_seen(app).await? {
        return Ok(first);
    }
    let fields = domain::parse_fields(&body, false).map_err(ApiError::validation)?;
    let now = app.clock.now();
    let id = crate::ids::new_id("cstm");
    let location = format!("/api/customers/{id}");
    let resp_body = json!({ "id": id }).to_string();
    let mut write = new_customer_write(fields.into_new_customer(id, now), now);
    write.idempotency = idem.record(201, &resp_body, &location, now);
    match app.store.write_customer(write).await {
        Ok(etag) => {
            let mut r = created(StatusCode::CREATED, resp_body, Some(&location));
            r.headers_mut().insert("etag", etag_header(&etag));
            Ok(r)
        }
        Err(StoreError::Conflict { field: "idempotencyKey", .. }) => idem.lost_race(app).await,
        Err(e) => Err(conflict(e)),
    }
}

/// The write for a new customer: its first stage entry, rollups and `customer.created`.
pub fn new_customer_write(mut customer: Customer, at: DateTime<Utc>) -> CustomerWrite {
    let rollups = domain::rollup_deltas(None, &mut customer, at);
    let stage = StageChange { customer_id: customer.id.clone(), from: None, to: customer.lifecycle_stage, at };
    let ev = event("customer.created", at, json!({ "id": customer.id, "customer": customer.to_api() }));
    CustomerWrite { kind: WriteKind::Insert, customer, stage_changes: vec![stage], rollups, events: vec![ev], idempotency: None }
}

/// The write that turns `old` into `new` at `at`: stage entry, rollups, `customer.updated`.
/// None when nothing changed.
pub fn update_customer_write(old: &Customer, mut new: Customer, at: DateTime<Utc>) -> Option<CustomerWrite> {
    let changes = domain::changes(old, &new);
    if changes.is_empty() {
        return None;
    }
    new.updated_at = at.max(old.updated_at);
    let rollups = domain::rollup_deltas(Some(old), &mut new, at);
    let stage_changes = if old.lifecycle_stage != new.lifecycle_stage {
        vec![StageChange { customer_id: new.id.clone(), from: Some(old.lifecycle_stage), to: new.lifecycle_stage, at }]
    } else {
        vec![]
    };
    let ev = event("customer.updated", at, json!({ "id": new.id, "changes": changes }));
    Some(CustomerWrite {
        kind: WriteKind::Update { expected_etag: old.etag.clone() },
        customer: new,
        stage_changes,
        rollups,
        events: vec![ev],
        idempotency: None,
    })
}

async fn patch(app: &App, req: &Req, id: &str) -> Result<Resp> {
    req.require(&["customer.write"])?;
    let body = req.json(&["application/merge-patch+json"])?;
    let fields: CustomerFields = domain::parse_fields(&body, true).map_err(ApiError::validation)?;
    let if_match = req.header("if-match").map(etags_in);
    // Without If-Match, a concurrent change is retried on the fresh state; with it, it is a 412.
    for _ in 0..5 {
        let current = load(app, id).await?;
        if let Some(tags) = &if_match {
            if !tags.iter().any(|t| t == "*" || *t == current.etag) {
                return Err(StoreError::PreconditionFailed.into());
            }
        }
        let new = fields.apply_to(&current);
        let Some(write) = update_customer_write(&current, new, app.clock.now()) else {
            let mut r = json_response(StatusCode::OK, &json!({ "updated": false }));
            r.headers_mut().insert("etag", etag_header(&current.etag));
            return Ok(r);
        };
        match app.store.write_customer(write).await {
            Ok(etag) => {
                let mut r = json_response(StatusCode::OK, &json!({ "updated": true }));
                r.headers_mut().insert("etag", etag_header(&etag));
                return Ok(r);
            }
            Err(StoreError::PreconditionFailed) if if_match.is_none() => continue,
            Err(StoreError::NotFound) => return Err(ApiError::not_found("Customer")),
            Err(e) => return Err(conflict(e)),
        }
    }
    Err(ApiError::new(
        Code::Conflict,
        "The customer is being changed concurrently; retry",
        "O cliente está sendo alterado simultaneamente; tente novamente",
    ))
}
