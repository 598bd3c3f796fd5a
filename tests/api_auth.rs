//! OAuth tokens, scopes, key rotation, rate limits and CORS over HTTP (issue 3).
mod common;
use base64::Engine;
use common::{cli, Api, Server};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn forge(kid: Option<&str>, key: &str, claims: Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(key.as_bytes())).unwrap()
}

fn claims(sub: &str) -> Value {
    let t = now();
    json!({"iss": "customer360", "aud": "customer360-api", "sub": sub, "scope": "customer.read", "iat": t, "nbf": t, "exp": t + 600, "jti": "tok_x"})
}

async fn call(s: &Server, token: Option<&str>) -> common::Res {
    let api = Api { base: s.base.clone(), token: String::new(), http: reqwest::Client::new() };
    let mut rb = api.http.get(format!("{}/api/customers", s.base));
    if let Some(t) = token {
        rb = rb.header("authorization", format!("Bearer {t}"));
    }
    api.send(rb).await
}

#[tokio::test]
async fn token_endpoint_speaks_the_spec_json_and_rfc6749_forms() {
    let s = Server::start(&[]).await;
    let (id, secret) = s.dev_credentials();
    let r = s.token_for(&id, &secret, Some("customer.read insights.read")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let b: Value = r.json().await.unwrap();
    assert_eq!((b["token_type"].as_str(), b["expires_in"].as_u64(), b["scope"].as_str()), (Some("Bearer"), Some(3600), Some("customer.read insights.read")));
    let http = reqwest::Client::new();
    let form = http
        .post(format!("{}/api/auth/token", s.base))
        .form(&[("grant_type", "client_credentials"), ("client_id", &id), ("client_secret", &secret)])
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 200);
    let basic = http
        .post(format!("{}/api/auth/token", s.base))
        .basic_auth(&id, Some(&secret))
        .form(&[("grant_type", "client_credentials"), ("scope", "customer.read")])
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    let t = basic.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
    // The token has a kid and the documented claims.
    let header = jsonwebtoken::decode_header(&t).unwrap();
    assert_eq!((header.alg, header.kid.is_some()), (Algorithm::HS256, true));
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t.split('.').nth(1).unwrap()).unwrap(),
    )
    .unwrap();
    for k in ["iss", "aud", "sub", "scope", "iat", "nbf", "exp", "jti"] {
        assert!(payload.get(k).is_some(), "{k} in {payload}");
    }
    assert_eq!(payload["sub"], id.as_str());
    let bad_grant = http
        .post(format!("{}/api/auth/token", s.base))
        .form(&[("grant_type", "password"), ("client_id", &id), ("client_secret", &secret)])
        .send()
        .await
        .unwrap();
    assert_eq!(bad_grant.status(), 400);
    assert_eq!(bad_grant.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn wrong_credentials_and_scopes_are_refused_alike() {
    let s = Server::start(&[]).await;
    let (id, secret) = s.dev_credentials();
    for (cid, csec) in [(id.as_str(), "wrong"), ("clt_01HZZZZZZZZZZZZZZZZZZZZZZZ", secret.as_str())] {
        let r = s.token_for(cid, csec, None).await;
        assert_eq!(r.status(), 401);
        let b: Value = r.json().await.unwrap();
        assert_eq!((b["code"].as_str(), b["error"].as_str()), (Some("INVALID_CLIENT"), Some("invalid_client")));
        assert!(b["traceId"].is_string());
        assert!(!b.to_string().contains(&secret), "never echo the secret");
    }
    let r = s.token_for(&id, &secret, Some("customer.read admin")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
    // A client limited to customer.read cannot ask for more.
    let out = cli(&s.dir, &["clients", "create", "--name", "reader", "--scopes", "customer.read"]);
    let rid = out.lines().find_map(|l| l.strip_prefix("clientId:")).unwrap().trim().to_string();
    let rsec = out.lines().find_map(|l| l.strip_prefix("clientSecret:")).unwrap().trim().to_string();
    assert_eq!(s.token_for(&rid, &rsec, Some("customer.write")).await.status(), 400);
    let t = s.token_for(&rid, &rsec, None).await.json::<Value>().await.unwrap();
    assert_eq!(t["scope"], "customer.read");
    let api = Api { base: s.base.clone(), token: t["access_token"].as_str().unwrap().into(), http: reqwest::Client::new() };
    assert_eq!(api.get("/api/customers").await.status, 200);
    let r = api.post("/api/customers", json!({"name": "x"})).await;
    assert_eq!((r.status, r.error_code()), (403, "INSUFFICIENT_SCOPE"));
    assert!(r.header("www-authenticate").unwrap().contains("insufficient_scope"));
    assert_eq!(api.get("/api/insights").await.status, 403);
}

#[tokio::test]
async fn attack_matrix_every_bad_token_is_401() {
    let s = Server::start(&[("CLIENT_CACHE_SECONDS", "0")]).await;
    let (id, secret) = s.dev_credentials();
    let (kid, key) = s.jwt_key();
    let good = forge(Some(&kid), &key, claims(&id));
    assert_eq!(call(&s, Some(&good)).await.status, 200, "the forging recipe itself is right");
    let t = now();
    let mut expired = claims(&id);
    expired["exp"] = json!(t - 3600);
    expired["iat"] = json!(t - 7200);
    expired["nbf"] = json!(t - 7200);
    let mut future = claims(&id);
    future["nbf"] = json!(t + 3600);
    let mut iss = claims(&id);
    iss["iss"] = json!("evil");
    let mut aud = claims(&id);
    aud["aud"] = json!("other-api");
    let none_alg = format!(
        "{}.{}.",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#)),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims(&id).to_string())
    );
    let hs512 = {
        let mut h = Header::new(Algorithm::HS512);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(&h, &claims(&id), &EncodingKey::from_secret(key.as_bytes())).unwrap()
    };
    let cases: Vec<(&str, Option<String>)> = vec![
        ("no token", None),
        ("malformed", Some("not.a.jwt".into())),
        ("garbage", Some("x".into())),
        ("expired", Some(forge(Some(&kid), &key, expired))),
        ("not yet valid", Some(forge(Some(&kid), &key, future))),
        ("wrong iss", Some(forge(Some(&kid), &key, iss))),
        ("wrong aud", Some(forge(Some(&kid), &key, aud))),
        ("wrong signature", Some(forge(Some(&kid), "another key", claims(&id)))),
        ("alg none", Some(none_alg)),
        ("alg swapped", Some(hs512)),
        ("unknown kid", Some(forge(Some("nope"), &key, claims(&id)))),
        ("no kid", Some(forge(None, &key, claims(&id)))),
        ("unknown client", Some(forge(Some(&kid), &key, claims("clt_01HZZZZZZZZZZZZZZZZZZZZZZZ")))),
    ];
    for (name, token) in cases {
        let r = call(&s, token.as_deref()).await;
        assert_eq!(r.status, 401, "{name}");
        assert_eq!(r.error_code(), "UNAUTHORIZED", "{name}");
        assert!(r.header("www-authenticate").unwrap().starts_with("Bearer"), "{name}");
        assert!(r.header("x-ratelimit-limit").is_some(), "{name}");
    }
    // Revoking the client stops its tokens (cache disabled in this test).
    let real = s.token().await;
    assert_eq!(call(&s, Some(&real)).await.status, 200);
    cli(&s.dir, &["clients", "revoke", &id]);
    let r = call(&s, Some(&real)).await;
    assert_eq!(r.status, 401);
    assert!(r.header("www-authenticate").unwrap().contains("revoked"));
    assert_eq!(s.token_for(&id, &secret, None).await.status(), 401);
}

#[tokio::test]
async fn rotating_the_signing_key_logs_nobody_out_until_the_old_version_is_disabled() {
    let s = Server::start(&[("SECRETS_REFRESH_SECONDS", "1")]).await;
    let old_token = s.token().await;
    let (old_kid, _) = s.jwt_key();
    cli(&s.dir, &["keys", "rotate", "jwt-signing-key"]);
    let (new_kid, _) = s.jwt_key();
    assert_ne!(old_kid, new_kid);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    let new_token = s.token().await;
    assert_eq!(jsonwebtoken::decode_header(&new_token).unwrap().kid.as_deref(), Some(new_kid.as_str()));
    assert_eq!(call(&s, Some(&old_token)).await.status, 200, "old version still verifies");
    cli(&s.dir, &["keys", "disable", "jwt-signing-key", &old_kid]);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(call(&s, Some(&old_token)).await.status, 401, "disabled version no longer verifies");
    assert_eq!(call(&s, Some(&new_token)).await.status, 200);
}

#[tokio::test]
async fn rate_limit_headers_and_429_with_retry_after() {
    let s = Server::start(&[("RATE_LIMIT_PER_MINUTE", "5")]).await;
    let api = s.client().await;
    let mut last = None;
    for i in 0..5u32 {
        let r = api.get("/api/customers").await;
        if r.status == 429 {
            // The window may have rolled over mid-test; start again from a fresh window.
            last = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit"), Some("5"));
        let remaining: u32 = r.header("x-ratelimit-remaining").unwrap().parse().unwrap();
        assert!(remaining <= 4 - i.min(4));
        let reset: u64 = r.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset));
    }
    let r = match last {
        Some(r) => r,
        None => {
            let mut r = api.get("/api/customers").await;
            while r.status == 200 {
                r = api.get("/api/customers").await;
            }
            r
        }
    };
    assert_eq!((r.status, r.error_code()), (429, "RATE_LIMITED"));
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() <= 60);
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
}

#[tokio::test]
async fn token_endpoint_has_its_own_stricter_limit() {
    let s = Server::start(&[("TOKEN_RATE_LIMIT_PER_MINUTE", "3")]).await;
    let (id, _) = s.dev_credentials();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(s.token_for(&id, "guess", None).await.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.iter().take(3).all(|s| *s == 401 || *s == 429));
}

#[tokio::test]
async fn cors_only_for_configured_origins() {
    let s = Server::start(&[("CORS_ALLOWED_ORIGINS", "https://app.example.com")]).await;
    let http = reqwest::Client::new();
    let pre = |origin: &str| {
        http.request(Method::OPTIONS, format!("{}/api/customers", s.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let ok = pre("https://app.example.com").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://app.example.com");
    assert!(ok.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    let denied = pre("https://evil.example.com").await.unwrap();
    assert!(denied.headers().get("access-control-allow-origin").is_none());
    let api = s.client().await;
    let r = api.send(api.req(Method::GET, "/api/customers").header("origin", "https://app.example.com")).await;
    assert_eq!(r.header("access-control-allow-origin"), Some("https://app.example.com"));
    let r = api.send(api.req(Method::GET, "/api/customers").header("origin", "https://evil.example.com")).await;
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn oauth_metadata_and_client_cli() {
    let s = Server::start(&[]).await;
    let m: Value = reqwest::get(format!("{}/api/.well-known/oauth-authorization-server", s.base)).await.unwrap().json().await.unwrap();
    assert_eq!(m["grant_types_supported"], json!(["client_credentials"]));
    assert!(m["scopes_supported"].as_array().unwrap().contains(&json!("sync.write")));
    assert!(m["token_endpoint"].as_str().unwrap().ends_with("/api/auth/token"));
    let out = cli(&s.dir, &["clients", "create", "--name", "crm", "--scopes", "customer.read"]);
    let id = out.lines().find_map(|l| l.strip_prefix("clientId:")).unwrap().trim().to_string();
    let old = out.lines().find_map(|l| l.strip_prefix("clientSecret:")).unwrap().trim().to_string();
    assert!(cli(&s.dir, &["clients", "list"]).contains(&id));
    let rotated = cli(&s.dir, &["clients", "rotate-secret", &id]);
    let new = rotated.lines().find_map(|l| l.strip_prefix("clientSecret:")).unwrap().trim().to_string();
    assert_eq!(s.token_for(&id, &old, None).await.status(), 401);
    assert_eq!(s.token_for(&id, &new, None).await.status(), 200);
    let stored = std::fs::read(s.dir.join("customer360.db")).unwrap();
    assert!(!stored.windows(new.len()).any(|w| w == new.as_bytes()), "only a hash of the secret is stored");
}
