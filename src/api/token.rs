//! `POST /api/auth/token` (OAuth 2.0 client credentials, RFC 6749 §4.4, plus the spec's JSON
//! form) and the RFC 8414 metadata.
use super::{json_response, method_not_allowed, Req, Resp};
use crate::auth::{GrantError, SCOPES};
use crate::error::{ApiError, Code, Result};
use crate::secrets::SecretString;
use crate::App;
use base64::Engine;
use http::{HeaderValue, Method, StatusCode};
use serde_json::json;

struct TokenRequest {
    client_id: String,
    client_secret: SecretString,
    scope: Option<String>,
}

fn invalid_request(en: &str, pt: &str) -> ApiError {
    ApiError::new(Code::InvalidRequest, en, pt).with_oauth_error("invalid_request")
}

fn basic_credentials(req: &Req) -> Option<(String, String)> {
    let h = req.header("authorization")?.strip_prefix("Basic ")?;
    let raw = base64::engine::general_purpose::STANDARD.decode(h.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (id, secret) = s.split_once(':')?;
    // RFC 6749 §2.3.1: both parts are form-urlencoded.
    let decode = |v: &str| serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("v={v}")).ok()?.pop().map(|p| p.1);
    Some((decode(id)?, decode(secret)?))
}

fn parse(req: &Req) -> Result<TokenRequest> {
    let ct = req.header("content-type").unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let (mut id, mut secret, scope, grant_type) = match ct.as_str() {
        "application/json" => {
            let v = req.json(&[])?;
            let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
            (s("clientId").or(s("client_id")), s("clientSecret").or(s("client_secret")), s("scope"), s("grant_type").or(s("grantType")))
        }
        "application/x-www-form-urlencoded" => {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&req.body)
                .map_err(|_| invalid_request("Malformed form body", "Corpo de formulário malformado"))?;
            let s = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            (s("client_id"), s("client_secret"), s("scope"), s("grant_type"))
        }
        _ => {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "Content-Type must be application/json or application/x-www-form-urlencoded",
                "Content-Type deve ser application/json ou application/x-www-form-urlencoded",
            ))
        }
    };
    if let Some(g) = grant_type {
        if g != "client_credentials" {
            return Err(ApiError::new(
                Code::UnsupportedGrantType,
                "Only grant_type=client_credentials is supported",
                "Apenas grant_type=client_credentials é suportado",
            )
            .with_oauth_error("unsupported_grant_type"));
        }
    } else if ct != "application/json" {
        return Err(invalid_request("grant_type is required", "grant_type é obrigatório"));
    }
    if let Some((bid, bsecret)) = basic_credentials(req) {
        if id.is_some() || secret.is_some() {
            return Err(invalid_request(
                "Send client credentials either in the body or in HTTP Basic, not both",
                "Envie as credenciais no corpo ou em HTTP Basic, não em ambos",
            ));
        }
        id = Some(bid);
        secret = Some(bsecret);
    }
    match (id, secret) {
        (Some(id), Some(secret)) if !id.is_empty() && id.len() <= 200 && secret.len() <= 500 => {
            Ok(TokenRequest { client_id: id, client_secret: SecretString::new(secret), scope })
        }
        _ => Err(invalid_request("clientId and clientSecret are required", "clientId e clientSecret são obrigatórios")),
    }
}

pub async fn handle(app: &App, req: &Req) -> Result<Resp> {
    if req.method != Method::POST {
        return Err(method_not_allowed("POST"));
    }
    let ip = req.client_ip.map(|i| i.to_string()).unwrap_or_default();
    let by_ip = app.token_limiter.check(&format!("ip:{ip}"));
    if !by_ip.allowed {
        return Err(super::rate_limited(by_ip));
    }
    let t = parse(req)?;
    let by_client = app.token_limiter.check(&format!("client:{}", t.client_id));
    if !by_client.allowed {
        return Err(super::rate_limited(by_client));
    }
    match app.auth.grant(&t.client_id, &t.client_secret, t.scope.as_deref()).await {
        Ok(issued) => {
            let mut r = json_response(
                StatusCode::OK,
                &json!({
                    "access_token": issued.access_token.expose(),
                    "token_type": "Bearer",
                    "expires_in": issued.expires_in,
                    "scope": issued.scope,
                }),
            );
            r.headers_mut().insert("cache-control", HeaderValue::from_static("no-store"));
            r.headers_mut().insert("pragma", HeaderValue::from_static("no-cache"));
            Ok(r)
        }
        Err(GrantError::InvalidClient) => Err(ApiError::new(
            Code::InvalidClient,
            "Client authentication failed",
            "Falha na autenticação do cliente",
        )
        .with_oauth_error("invalid_client")
        .with_header("www-authenticate", "Basic realm=\"customer360\"")),
        Err(GrantError::InvalidScope) => Err(ApiError::new(
            Code::InvalidScope,
            "The requested scope is unknown or not allowed for this client",
            "O escopo solicitado é desconhecido ou não permitido para este cliente",
        )
        .with_oauth_error("invalid_scope")),
        Err(GrantError::Store(e)) => Err(ApiError::unavailable(e)),
    }
}

pub fn metadata(app: &App, req: &Req) -> Result<Resp> {
    if req.method != Method::GET {
        return Err(method_not_allowed("GET"));
    }
    let issuer = app.auth.issuer();
    let mut r = json_response(
        StatusCode::OK,
        &json!({
            "issuer": issuer,
            "token_endpoint": "/api/auth/token",
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": SCOPES,
            "response_types_supported": [],
        }),
    );
    r.headers_mut().insert("cache-control", HeaderValue::from_static("public, max-age=3600"));
    Ok(r)
}
