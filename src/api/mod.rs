//! The HTTP layer. warp accepts connections and hands every request to `handle`, which owns
//! tracing, limits, authentication, rate limiting, CORS and the one error shape.
use crate::auth::{Principal, TokenError};
use crate::error::{ApiError, Code, Lang, Result};
use crate::App;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;
use warp::{Buf, Filter};

pub mod customers;
pub mod health;
pub mod idempotency;
pub mod insights;
pub mod opportunities;
pub mod sync;
pub mod token;
pub mod webhooks;

pub type Resp = http::Response<Bytes>;

pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// A client that takes longer than this to send its body is cut off (slow-client guard).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// One request, read whole, with what every handler needs.
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub client_ip: Option<IpAddr>,
    pub trace_id: String,
    pub lang: Lang,
    pub principal: Option<Principal>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The query string as pairs; a malformed one is a 400.
    pub fn query_pairs(&self) -> Result<Vec<(String, String)>> {
        serde_urlencoded::from_str::<Vec<(String, String)>>(&self.query)
            .map_err(|_| ApiError::new(Code::ValidationError, "Malformed query string", "Query string malformada"))
    }

    /// The caller must hold `scope` (any of `scopes`).
    pub fn require(&self, scopes: &[&str]) -> Result<&Principal> {
        let p = self.principal.as_ref().ok_or_else(|| unauthorized(TokenError::Missing))?;
        if scopes.iter().any(|s| p.has(s)) {
            Ok(p)
        } else {
            Err(ApiError::new(
                Code::InsufficientScope,
                format!("This call needs the scope {}", scopes.join(" or ")),
                format!("Esta chamada exige o escopo {}", scopes.join(" ou ")),
            )
            .with_oauth_error("insufficient_scope")
            .with_header(
                "www-authenticate",
                format!("Bearer error=\"insufficient_scope\", scope=\"{}\"", scopes.join(" ")),
            ))
        }
    }

    /// Parses a JSON body, insisting on a JSON content type.
    pub fn json(&self, also: &[&str]) -> Result<serde_json::Value> {
        let ct = self.header("content-type").unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if ct != "application/json" && !also.contains(&ct.as_str()) {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "Content-Type must be application/json",
                "Content-Type deve ser application/json",
            ));
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            ApiError::new(Code::InvalidJson, "The body is not valid JSON", "O corpo não é um JSON válido")
                .with_detail("position", format!("line {}, column {}", e.line(), e.column()))
        })
    }
}

pub fn unauthorized(e: TokenError) -> ApiError {
    let (en, pt, desc) = match e {
        TokenError::Missing => ("A bearer token is required", "Token Bearer obrigatório", None),
        TokenError::Invalid => ("The access token is invalid", "Token de acesso inválido", Some("invalid")),
        TokenError::Expired => ("The access token has expired", "Token de acesso expirado", Some("expired")),
        TokenError::Revoked => ("The client has been revoked", "O cliente foi revogado", Some("revoked")),
    };
    let challenge = match desc {
        None => "Bearer realm=\"customer360\"".to_string(),
        Some(d) => format!("Bearer realm=\"customer360\", error=\"invalid_token\", error_description=\"{d}\""),
    };
    let mut err = ApiError::new(Code::Unauthorized, en, pt).with_header("www-authenticate", challenge);
    if desc.is_some() {
        err = err.with_oauth_error("invalid_token");
    }
    err
}

pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    json_bytes_response(status, serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()))
}

/// A JSON body already serialised.
pub fn json_bytes_response(status: StatusCode, bytes: Vec<u8>) -> Resp {
    let mut r = http::Response::new(Bytes::from(bytes));
    *r.status_mut() = status;
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    r
}

pub fn method_not_allowed(allow: &str) -> ApiError {
    ApiError::new(Code::MethodNotAllowed, "Method not allowed on this resource", "Método não permitido neste recurso")
        .with_header("allow", allow)
}

/// The one warp filter: everything goes through `handle`.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (Resp,), Error = warp::Rejection> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::addr::remote())
        .and(warp::body::stream())
        .then(move |method, path: warp::path::FullPath, query, headers, remote, body| {
            let app = app.clone();
            async move { handle(app, method, path.as_str().to_string(), query, headers, remote, body).await }
        })
}

fn trace_id_from(headers: &HeaderMap) -> String {
    // W3C traceparent: 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|tp| {
            let parts: Vec<&str> = tp.trim().split('-').collect();
            let ok = parts.len() >= 4
                && parts[0].len() == 2
                && parts[0] != "ff"
                && parts[1].len() == 32
                && parts[2].len() == 16
                && parts[1].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                && parts[1].bytes().any(|b| b != b'0');
            ok.then(|| parts[1].to_string())
        })
        .unwrap_or_else(crate::ids::new_trace_id)
}

fn client_ip(app: &App, headers: &HeaderMap, remote: Option<SocketAddr>) -> Option<IpAddr> {
    // Under Functions the host is our only peer; the caller is the first X-Forwarded-For hop.
    if app.config.functions_mode {
        if let Some(ip) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse::<IpAddr>().ok().or_else(|| v.trim().parse::<SocketAddr>().ok().map(|s| s.ip())))
        {
            return Some(ip);
        }
    }
    remote.map(|r| r.ip())
}

async fn read_body<S, B>(mut body: S) -> Result<Bytes>
where
    S: futures::Stream<Item = std::result::Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut buf = BytesMut::new();
    let read = async {
        while let Some(chunk) = body.next().await {
            let mut chunk = chunk.map_err(|_| {
                ApiError::new(Code::InvalidJson, "The request body could not be read", "Não foi possível ler o corpo")
            })?;
            if buf.len() + chunk.remaining() > MAX_BODY_BYTES {
                return Err(ApiError::new(
                    Code::PayloadTooLarge,
                    "The request body is larger than 1 MiB",
                    "O corpo da requisição excede 1 MiB",
                ));
            }
            while chunk.has_remaining() {
                let part = chunk.chunk();
                buf.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(buf.freeze()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ApiError::new(Code::RequestTimeout, "The request body took too long", "O corpo demorou demais")),
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle<S, B>(
    app: Arc<App>,
    method: Method,
    path: String,
    query: String,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
    body: S,
) -> Resp
where
    S: futures::Stream<Item = std::result::Result<B, warp::Error>> + Unpin + Send,
    B: Buf + Send,
{
    let started = Instant::now();
    let trace_id = trace_id_from(&headers);
    let invocation_id = headers.get("x-azure-functions-invocationid").and_then(|v| v.to_str().ok()).map(str::to_string);
    let lang = Lang::from_accept_language(headers.get("accept-language").and_then(|v| v.to_str().ok()));
    let span = tracing::info_span!("request", traceId = %trace_id, invocationId = invocation_id.as_deref().unwrap_or(""));
    async move {
        let ip = client_ip(&app, &headers, remote);
        let origin = headers.get("origin").and_then(|v| v.to_str().ok()).map(str::to_string);
        let mut req = Req {
            method,
            path,
            query,
            headers,
            body: Bytes::new(),
            client_ip: ip,
            trace_id: trace_id.clone(),
            lang,
            principal: None,
        };
        let mut rate = None;
        let result = async {
            req.body = read_body(body).await?;
            dispatch(&app, &mut req, &mut rate).await
        }
        .await;
        let mut resp = match result {
            Ok(r) => r,
            Err(e) => render_error(&e, &req),
        };
        finish_headers(&app, &mut resp, &req, origin.as_deref(), rate);
        let status = resp.status().as_u16();
        let client = req.principal.as_ref().map(|p| p.client_id.as_str()).unwrap_or("");
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::error!(method = %req.method, path = %req.path, status, ms, client, "request");
        } else {
            tracing::info!(method = %req.method, path = %req.path, status, ms, client, "request");
        }
        resp
    }
    .instrument(span)
    .await
}

pub fn render_error(e: &ApiError, req: &Req) -> Resp {
    if let Some(cause) = &e.cause {
        tracing::error!(code = e.code.as_str(), cause = %cause, "request failed");
    }
    let mut r = json_response(e.status(), &e.body(&req.trace_id, req.lang));
    for (k, v) in &e.headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().append(*k, v);
        }
    }
    r
}

fn finish_headers(app: &App, r: &mut Resp, req: &Req, origin: Option<&str>, rate: Option<crate::ratelimit::Decision>) {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&req.trace_id) {
        h.insert("x-trace-id", v);
    }
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if !h.contains_key("cache-control") {
        h.insert("cache-control", HeaderValue::from_static("no-store"));
    }
    if let Some(d) = rate {
        h.insert("x-ratelimit-limit", HeaderValue::from(d.limit));
        h.insert("x-ratelimit-remaining", HeaderValue::from(d.remaining));
        h.insert("x-ratelimit-reset", HeaderValue::from(d.reset_in));
    }
    if let Some(o) = origin {
        if app.cors_allows(o) {
            if let Ok(v) = HeaderValue::from_str(o) {
                h.insert("access-control-allow-origin", v);
                h.insert("access-control-expose-headers", HeaderValue::from_static(
                    "etag, location, x-trace-id, x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, retry-after",
                ));
                h.append("vary", HeaderValue::from_static("Origin"));
            }
        }
    }
}

/// Paths that need no token.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/" | "/api/health" | "/api/health/ready" | "/api/auth/token" | "/api/.well-known/oauth-authorization-server" | "/api/openapi.json"
    )
}

pub(crate) fn rate_limited(d: crate::ratelimit::Decision) -> ApiError {
    ApiError::new(Code::RateLimited, "Too many requests, retry later", "Muitas requisições, tente mais tarde")
        .with_header("retry-after", d.reset_in.to_string())
}

async fn dispatch(app: &App, req: &mut Req, rate: &mut Option<crate::ratelimit::Decision>) -> Result<Resp> {
    // CORS preflight: answered before authentication (browsers send no token with it).
    if req.method == Method::OPTIONS && req.header("access-control-request-method").is_some() {
        return Ok(preflight(app, req));
    }
    let path = req.path.clone();
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    if app.config.functions_mode && segs.len() == 1 && crate::functions::is_trigger(segs[0]) {
        return crate::functions::invoke(app, req, segs[0]).await;
    }
    if !is_public(&path) && path.starts_with("/api/") {
        let token = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        match token {
            None => {
                *rate = Some(app.limiter.check(&ip_key(req)));
                return Err(unauthorized(TokenError::Missing));
            }
            Some(t) => match app.auth.validate(&t).await {
                Ok(p) => {
                    let d = app.limiter.check(&format!("client:{}", p.client_id));
                    *rate = Some(d);
                    req.principal = Some(p);
                    if !d.allowed {
                        return Err(rate_limited(d));
                    }
                }
                Err(e) => {
                    *rate = Some(app.limiter.check(&ip_key(req)));
                    return Err(unauthorized(e));
                }
            },
        }
    } else if path != "/" {
        let d = app.limiter.check(&ip_key(req));
        *rate = Some(d);
        if !d.allowed {
            return Err(rate_limited(d));
        }
    }
    match segs.as_slice() {
        [""] | [] => match req.method {
            Method::GET | Method::HEAD => Ok(json_response(StatusCode::OK, &serde_json::json!({"service": "customer360"}))),
            _ => Err(method_not_allowed("GET, HEAD")),
        },
        ["api", "health", rest @ ..] => health::handle(app, req, rest).await,
        ["api", "auth", "token"] => token::handle(app, req).await,
        ["api", ".well-known", "oauth-authorization-server"] => token::metadata(app, req),
        ["api", "customers", rest @ ..] => customers::handle(app, req, rest).await,
        ["api", "insights"] => insights::handle(app, req).await,
        ["api", "openapi.json"] => openapi(req),
        ["api", "webhooks", rest @ ..] => webhooks::handle(app, req, rest).await,
        ["api", "sync", rest @ ..] => sync::handle(app, req, rest).await,
        ["api", "opportunities"] => opportunities::handle(app, req).await,
        _ => Err(ApiError::not_found("Route")),
    }
}

/// The OpenAPI 3.1 document of this API (checked against the running binary by schemathesis).
pub const OPENAPI: &str = include_str!("openapi.json");

fn openapi(req: &Req) -> Result<Resp> {
    if req.method != Method::GET {
        return Err(method_not_allowed("GET"));
    }
    let mut r = http::Response::new(Bytes::from_static(OPENAPI.as_bytes()));
    r.headers_mut().insert("content-type", HeaderValue::from_static("application/json; charset=utf-8"));
    r.headers_mut().insert("cache-control", HeaderValue::from_static("public, max-age=300"));
    Ok(r)
}

fn ip_key(req: &Req) -> String {
    format!("ip:{}", req.client_ip.map(|i| i.to_string()).unwrap_or_default())
}

fn preflight(app: &App, req: &Req) -> Resp {
    let mut r = http::Response::new(Bytes::new());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let origin = req.header("origin").unwrap_or("");
    if app.cors_allows(origin) {
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(origin) {
            h.insert("access-control-allow-origin", v);
        }
        h.insert("access-control-allow-methods", HeaderValue::from_static("GET, POST, PATCH, DELETE, OPTIONS"));
        h.insert(
            "access-control-allow-headers",
            HeaderValue::from_static("authorization, content-type, accept, accept-language, if-match, if-none-match, idempotency-key, traceparent"),
        );
        h.insert("access-control-max-age", HeaderValue::from_static("600"));
        h.insert("vary", HeaderValue::from_static("Origin"));
    }
    r
}
