//! Webhooks end to end: the real SQLite store, the API over HTTP, and a real HTTP receiver on
//! 127.0.0.1:0 that checks every signature by recomputing the HMAC itself. Time-dependent
//! behaviour (backoff) runs on a ManualClock; the crash test runs the real binary.
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{Duration as ChronoDuration, Utc};
use customer360::clock::{Clock, ManualClock};
use customer360::config::{Config, StoreKind};
use customer360::App;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use warp::Filter;

// ---------------------------------------------------------------- the receiver

#[derive(Debug, Clone)]
struct Received {
    headers: http::HeaderMap,
    body: bytes::Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the webhook body is JSON")
    }
}

#[derive(Debug, Clone)]
enum Reply {
    Status(u16),
    /// Answer only after this long (longer than the delivery timeout).
    Hang(Duration),
    /// 307 to another URL.
    Redirect(&'static str),
}

/// A webhook receiver: records every request and answers from a script (200 when it runs out).
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
    default: Arc<Mutex<Reply>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script: Arc<Mutex<VecDeque<Reply>>> = Arc::default();
        let default = Arc::new(Mutex::new(Reply::Status(200)));
        let (g, s, d) = (got.clone(), script.clone(), default.clone());
        let route = warp::post().and(warp::header::headers_cloned()).and(warp::body::bytes()).then(
            move |headers: http::HeaderMap, body: bytes::Bytes| {
                let (g, s, d) = (g.clone(), s.clone(), d.clone());
                async move {
                    g.lock().push(Received { headers, body });
                    let reply = s.lock().pop_front().unwrap_or_else(|| d.lock().clone());
                    let mut r = http::Response::new(bytes::Bytes::from_static(b"ok"));
                    let status = match reply {
                        Reply::Status(c) => c,
                        Reply::Hang(t) => {
                            tokio::time::sleep(t).await;
                            200
                        }
                        Reply::Redirect(to) => {
                            r.headers_mut().insert("location", http::HeaderValue::from_static(to));
                            307
                        }
                    };
                    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    r
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(warp::serve(route).incoming(listener).graceful(std::future::pending::<()>()).run());
        Receiver { url: format!("http://127.0.0.1:{port}/hooks"), got, script, default }
    }

    fn count(&self) -> usize {
        self.got.lock().len()
    }
    fn all(&self) -> Vec<Received> {
        self.got.lock().clone()
    }
    fn last(&self) -> Received {
        self.got.lock().last().cloned().expect("the receiver got a request")
    }
    fn then(&self, r: Reply) {
        self.script.lock().push_back(r);
    }
    fn always(&self, r: Reply) {
        *self.default.lock() = r;
    }
}

/// Checks both signatures the way a receiver would, with its own HMAC, not the service's code.
fn verify(r: &Received, whsec: &str) {
    let key = B64.decode(whsec.strip_prefix("whsec_").expect("a whsec_ secret")).unwrap();
    let mac = |msg: &[u8]| {
        let mut m = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        m.update(msg);
        m.finalize().into_bytes().to_vec()
    };
    // X-Signature: t=<unix>,v1=<hex>[,v1=<hex>]
    let xs = r.header("x-signature");
    let mut t = None;
    let mut v1s = Vec::new();
    for part in xs.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v.to_string()),
            Some(("v1", v)) => v1s.push(v.to_string()),
            _ => panic!("unexpected X-Signature part {part:?}"),
        }
    }
    let t = t.expect("X-Signature has t=");
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&r.body);
    let want = hex::encode(mac(&signed));
    assert!(v1s.contains(&want), "X-Signature {xs} does not verify");
    // Standard Webhooks.
    let id = r.header("webhook-id");
    let ts = r.header("webhook-timestamp");
    assert_eq!(ts, t);
    let mut content = format!("{id}.{ts}.").into_bytes();
    content.extend_from_slice(&r.body);
    let want = format!("v1,{}", B64.encode(mac(&content)));
    assert!(r.header("webhook-signature").split(' ').any(|s| s == want), "webhook-signature does not verify");
    assert_eq!(r.header("x-event-id"), id);
    let body = r.json();
    assert_eq!(body["id"], id);
    assert_eq!(r.header("x-event-type"), body["event"].as_str().unwrap());
}

// ---------------------------------------------------------------- the service in-process

struct Service {
    app: Arc<App>,
    clock: ManualClock,
    base: String,
    http: reqwest::Client,
    client_id: String,
    client_secret: String,
    token: Mutex<Option<String>>,
    _dir: tempfile::TempDir,
}

struct Opts {
    allow_loopback: bool,
    functions_mode: bool,
    timeout_ms: u64,
}

impl Default for Opts {
    fn default() -> Self {
        Opts { allow_loopback: true, functions_mode: false, timeout_ms: 500 }
    }
}

impl Service {
    async fn start(o: Opts) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::from_env().unwrap();
        config.data_dir = dir.path().to_path_buf();
        // `C360_TEST_STORE=cosmos-emulator` (with `--features cosmos-emulator`): the same tests on
        // the Cosmos adapter, as for the other HTTP tests.
        config.store = match std::env::var("C360_TEST_STORE").as_deref() {
            Ok("cosmos-emulator") => StoreKind::CosmosEmulator,
            _ => StoreKind::Sqlite,
        };
        config.keyvault_url = None;
        config.webhook_allow_loopback = o.allow_loopback;
        config.functions_mode = o.functions_mode;
        // The tests run each dispatch pass themselves.
        config.webhook_dispatch_interval = Duration::ZERO;
        config.webhook_timeout = Duration::from_millis(o.timeout_ms);
        let clock = ManualClock::new(Utc::now());
        let app = customer360::build(config, Arc::new(clock.clone())).await.unwrap();
        let scopes = customer360::auth::SCOPES.iter().map(|s| s.to_string()).collect();
        let (c, secret) = customer360::auth::create_client(app.store.as_ref(), "tests", scopes, clock.now()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(customer360::serve(app.clone(), listener, std::future::pending::<()>()));
        Service {
            app,
            clock,
            base,
            http: reqwest::Client::new(),
            client_id: c.id,
            client_secret: secret.expose().to_string(),
            token: Mutex::new(None),
            _dir: dir,
        }
    }

    /// Moves time on; tokens issued before may have expired.
    fn advance(&self, by: ChronoDuration) {
        self.clock.advance(by);
        *self.token.lock() = None;
    }

    async fn token(&self) -> String {
        if let Some(t) = self.token.lock().clone() {
            return t;
        }
        let r: Value = self
            .http
            .post(format!("{}/api/auth/token", self.base))
            .json(&json!({"clientId": self.client_id, "clientSecret": self.client_secret}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let t = r["access_token"].as_str().expect("a token").to_string();
        *self.token.lock() = Some(t.clone());
        t
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(self.token().await);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn subscribe(&self, url: &str, events: &[&str]) -> (String, String) {
        let (s, v) = self
            .call(reqwest::Method::POST, "/api/webhooks", Some(json!({"url": url, "events": events, "description": "test"})))
            .await;
        assert_eq!(s, 201, "{v}");
        (v["id"].as_str().unwrap().to_string(), v["secret"].as_str().unwrap().to_string())
    }

    async fn create_customer(&self, name: &str, email: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, "/api/customers", Some(json!({"name": name, "email": email}))).await
    }

    async fn dispatch(&self) -> customer360::webhooks::DispatchReport {
        customer360::webhooks::dispatch_once(&self.app).await.unwrap()
    }

    async fn deliveries(&self, webhook: &str) -> Vec<Value> {
        let (s, v) = self.call(reqwest::Method::GET, &format!("/api/webhooks/{webhook}/deliveries"), None).await;
        assert_eq!(s, 200, "{v}");
        v["data"].as_array().unwrap().clone()
    }
}

// ---------------------------------------------------------------- behaviours

#[tokio::test]
async fn a_created_customer_is_delivered_signed_with_both_signature_schemes() {
    let svc = Service::start(Opts::default()).await;
    let rx = Receiver::start().await;
    let (hook, secret) = svc.subscribe(&rx.url, &["customer.created"]).await;
    assert!(secret.starts_with("whsec_"));
    let (s, c) = svc.create_customer("Ana", "ana@example.com").await;
    assert_eq!(s, 201);
    let report = svc.dispatch().await;
    assert_eq!((report.fanned_out, report.delivered), (1, 1));
    assert_eq!(rx.count(), 1);
    let r = rx.last();
    verify(&r, &secret);
    let body = r.json();
    assert_eq!(body["event"], "customer.created");
    assert_eq!(body["data"]["id"], c["id"]);
    assert!(body["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(r.header("x-event-type"), "customer.created");
    // The timestamp is the service clock's.
    assert_eq!(r.header("webhook-timestamp"), svc.clock.now().timestamp().to_string());
    let log = svc.deliveries(&hook).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["status"], "delivered");
    assert_eq!(log[0]["attempts"], 1);
    assert_eq!(log[0]["lastStatusCode"], 200);
    assert_eq!(log[0]["nextAttemptAt"], Value::Null);
    assert_eq!(log[0]["eventId"], body["id"]);
    // Nothing more to send on the next pass.
    assert_eq!(svc.dispatch().await.attempted, 0);
    assert_eq!(rx.count(), 1);
}

#[tokio::test]
async fn customer_updated_carries_only_the_fields_that_changed() {
    let svc = Service::start(Opts::default()).await;
    let rx = Receiver::start().await;
    let (_, secret) = svc.subscribe(&rx.url, &["customer.updated"]).await;
    let (_, c) = svc.create_customer("Bia", "bia@example.com").await;
    let id = c["id"].as_str().unwrap();
    let (s, _) = svc
        .call(reqwest::Method::PATCH, &format!("/api/customers/{id}"), Some(json!({"name": "Bia", "lifecycleStage": "Customer"})))
        .await;
    assert_eq!(s, 200);
    svc.dispatch().await;
    assert_eq!(rx.count(), 1, "only customer.updated was subscribed");
    let r = rx.last();
    verify(&r, &secret);
    let body = r.json();
    assert_eq!(body["event"], "customer.updated");
    assert_eq!(body["data"]["id"], id);
    let changes = body["data"]["changes"].as_object().unwrap();
    assert_eq!(changes.keys().collect::<Vec<_>>(), vec!["lifecycleStage"]);
    assert_eq!(changes["lifecycleStage"], json!({"from": "Lead", "to": "Customer"}));
    assert!(body["timestamp"].is_string());
}

#[tokio::test]
async fn failures_are_retried_on_the_backoff_schedule_then_marked_failed() {
    let svc = Service::start(Opts::default()).await;
    let rx = Receiver::start().await;
    rx.always(Reply::Status(500));
    let (hook, secret) = svc.subscribe(&rx.url, &["customer.created"]).await;
    svc.create_customer("Caio", "caio@example.com").await;
    svc.dispatch().await;
    assert_eq!(rx.count(), 1);
    let log = svc.deliveries(&hook).await;
    assert_eq!(log[0]["status"], "pending");
    assert_eq!(log[0]["lastStatusCode"], 500);
    // Backoff 1 m, 5 m, 30 m, 2 h, 6 h, 12 h with ±10 % jitter.
    for (i, minutes) in [1i64, 5, 30, 120, 360, 720].into_iter().enumerate() {
        svc.advance(ChronoDuration::seconds(minutes * 60 * 85 / 100));
        svc.dispatch().await;
        assert_eq!(rx.count(), i + 1, "not due yet before {minutes} min");
        svc.advance(ChronoDuration::seconds(minutes * 60 * 30 / 100));
        svc.dispatch().await;
        assert_eq!(rx.count(), i + 2, "due after {minutes} min");
    }
    let log = svc.deliveries(&hook).await;
    assert_eq!(log[0]["status"], "failed");
    assert_eq!(log[0]["attempts"], 7);
    assert_eq!(log[0]["nextAttemptAt"], Value::Null);
    // Given up: no more attempts, however long we wait.
    svc.advance(ChronoDuration::days(3));
    svc.dispatch().await;
    assert_eq!(rx.count(), 7);
    // Every retry is the same event, freshly signed.
    let all = rx.all();
    for r in &all {
        verify(r, &secret);
        assert_eq!(r.header("x-event-id"), all[0].header("x-event-id"));
    }
}

#[tokio::test]
async fn a_timeout_and_a_500_are_retried_until_delivered() {
    let svc = Service::start(Opts { timeout_ms: 300, ..Opts::default() }).await;
    let rx = Receiver::start().await;
    rx.then(Reply::Hang(Duration::from_secs(2)));
    rx.then(Reply::Status(503));
    let (hook, secret) = svc.subscribe(&rx.url, &["customer.created"]).await;
    svc.create_customer("Duda", "duda@example.com").await;
    let r = svc.dispatch().await;
    assert_eq!((r.attempted, r.retrying), (1, 1));
    let log = svc.deliveries(&hook).await;
    assert_eq!(log[0]["status"], "pending");
    assert!(log[0]["lastError"].as_str().unwrap().contains("timed out"), "{}", log[0]);
    assert_eq!(log[0]["lastStatusCode"], Value::Null);
    svc.advance(ChronoDuration::seconds(70));
    svc.dispatch().await;
    let log = svc.deliveries(&hook).await;
    assert_eq!((log[0]["status"].as_str(), log[0]["lastStatusCode"].as_u64()), (Some("pending"), Some(503)));
    svc.advance(ChronoDuration::seconds(6 * 60));
    svc.dispatch().await;
    let log = svc.deliveries(&hook).await;
    assert_eq!(log[0]["status"], "delivered");
    assert_eq!(log[0]["attempts"], 3);
    assert_eq!(rx.count(), 3);
    verify(&rx.last(), &secret);
}

#[tokio::test]
async fn redelivery_sends_the_same_event_again() {
    let svc = Service::start(Opts::default()).await;
    let rx = Receiver::start().await;
    let (hook, secret) = svc.subscribe(&rx.url, &["customer.created"]).await;
    svc.create_customer("Eva", "eva@example.com").await;
    svc.dispatch().await;
    let first = rx.last();
    let log = svc.deliveries(&hook).await;
    let delivery = log[0]["id"].as_str().unwrap().to_string();
    let (s, v) = svc
        .call(reqwest::Method::POST, &format!("/api/webhooks/{hook}/deliveries/{delivery}/redeliver"), None)
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["status"], "pending");
    svc.dispatch().await;
    assert_eq!(rx.count(), 2);
    let again = rx.last();
    verify(&again, &secret);
    assert_eq!(again.header("x-event-id"), first.header("x-event-id"));
    assert_eq!(again.body, first.body);
    let log = svc.deliveries(&hook).await;
    assert_eq!((log[0]["status"].as_str(), log[0]["attempts"].as_u64()), (Some("delivered"), Some(2)));
    // Unknown deliveries and other webhooks' deliveries are 404.
    let (s, v) = svc
        .call(reqwest::Method::POST, &format!("/api/webhooks/{hook}/deliveries/whd_01J00000000000000000000000/redeliver"), None)
        .await;
    assert_eq!((s, v["code"].as_str()), (404, Some("NOT_FOUND")));
    let (other, _) = svc.subscribe(&rx.url, &["sync.failed"]).await;
    let (s, _) = svc
        .call(reqwest::Method::POST, &format!("/api/webhooks/{other}/deliveries/{delivery}/redeliver"), None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_write_that_fails_publishes_nothing() {
    let svc = Service::start(Opts::default()).await;
    let rx = Receiver::start().await;
    svc.subscribe(&rx.url, &["customer.created", "customer.updated"]).await;
    let (s, first) = svc.create_customer("Fabi", "fabi@example.com").await;
    assert_eq!(s, 201);
    let (s, v) = svc.create_customer("Fabi Two", "fabi@example.com").await;
    assert_eq!((s, v["code"].as_str()), (409, Some("CONFLICT")));
    let outbox = svc.app.store.outbox_events(None, 100).await.unwrap();
    assert_eq!(outbox.len(), 1, "the refused write left no event behind");
    svc.dispatch().await;
    assert_eq!(rx.count(), 1);
    assert_eq!(rx.last().json()["data"]["id"], first["id"]);
}

#[tokio::test]
async fn two_dispatchers_never_send_the_same_attempt() {
    let svc = Service::start(Opts::default()).await;
    let rx = Receiver::start().await;
    rx.always(Reply::Hang(Duration::from_millis(100)));
    for _ in 0..3 {
        svc.subscribe(&rx.url, &["customer.created"]).await;
    }
    for i in 0..4 {
        svc.create_customer(&format!("P{i}"), &format!("p{i}@example.com")).await;
    }
    let reports = futures::future::join_all((0..4).map(|_| customer360::webhooks::dispatch_once(&svc.app))).await;
    let attempted: usize = reports.into_iter().map(|r| r.unwrap().attempted).sum();
    assert_eq!(attempted, 12);
    assert_eq!(rx.count(), 12, "3 subscriptions × 4 events, each sent once");
    let mut pairs: Vec<(String, String)> =
        rx.all().iter().map(|r| (r.header("x-event-id").to_string(), r.header("x-delivery-id").to_string())).collect();
    pairs.sort();
    pairs.dedup();
    assert_eq!(pairs.len(), 12);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let svc = Service::start(Opts::default()).await;
    let rx = Receiver::start().await;
    let elsewhere = Receiver::start().await;
    let to: &'static str = Box::leak(elsewhere.url.clone().into_boxed_str());
    rx.then(Reply::Redirect(to));
    let (hook, _) = svc.subscribe(&rx.url, &["customer.created"]).await;
    svc.create_customer("Rui", "rui@example.com").await;
    let r = svc.dispatch().await;
    assert_eq!((r.attempted, r.retrying), (1, 1));
    assert_eq!(elsewhere.count(), 0, "the redirect was not followed");
    let log = svc.deliveries(&hook).await;
    assert_eq!((log[0]["status"].as_str(), log[0]["lastStatusCode"].as_u64()), (Some("pending"), Some(307)));
}

#[tokio::test]
async fn subscriptions_to_internal_addresses_are_refused() {
    let svc = Service::start(Opts { allow_loopback: false, ..Opts::default() }).await;
    for url in [
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/latest/meta-data/",
        "https://10.0.0.8/hook",
        "https://192.168.1.10/hook",
        "https://100.64.0.1/hook",
        "https://[fe80::1]/hook",
        "https://127.0.0.1/hook",
        "https://localhost/hook",
        "http://example.com/hook",
    ] {
        let (s, v) = svc
            .call(reqwest::Method::POST, "/api/webhooks", Some(json!({"url": url, "events": ["customer.created"]})))
            .await;
        assert_eq!((s, v["code"].as_str()), (400, Some("VALIDATION_ERROR")), "{url}: {v}");
        assert!(v["details"]["url"].is_string(), "{v}");
    }
    let (s, v) = svc.call(reqwest::Method::GET, "/api/webhooks", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["data"], json!([]));
}

#[tokio::test]
async fn loopback_is_refused_at_delivery_time_when_not_allowed() {
    // Subscribed while loopback was allowed, delivered by a service that does not allow it.
    let svc = Service::start(Opts::default()).await;
    let rx = Receiver::start().await;
    let (hook, _) = svc.subscribe(&rx.url, &["customer.created"]).await;
    svc.create_customer("Gil", "gil@example.com").await;
    let strict = {
        let mut c = svc.app.config.clone();
        c.webhook_allow_loopback = false;
        App {
            config: c,
            store: svc.app.store.clone(),
            clock: svc.app.clock.clone(),
            keys: svc.app.keys.clone(),
            auth: customer360::auth::Auth::new(svc.app.store.clone(), svc.app.keys.clone(), svc.app.clock.clone(), &svc.app.config),
            limiter: customer360::ratelimit::RateLimiter::per_minute(10, svc.app.clock.clone()),
            token_limiter: customer360::ratelimit::RateLimiter::per_minute(10, svc.app.clock.clone()),
            queue: svc.app.queue.clone(),
        }
    };
    let r = customer360::webhooks::dispatch_once(&strict).await.unwrap();
    assert_eq!((r.attempted, r.retrying), (1, 1));
    assert_eq!(rx.count(), 0, "nothing reached the loopback receiver");
    let log = svc.deliveries(&hook).await;
    assert!(log[0]["lastError"].as_str().unwrap().starts_with("refused"), "{}", log[0]);
}

#[tokio::test]
async fn webhooks_need_the_webhooks_manage_scope_and_validate_their_body() {
    let svc = Service::start(Opts::default()).await;
    let (c, secret) = customer360::auth::create_client(
        svc.app.store.as_ref(),
        "reader",
        vec!["customer.read".into()],
        svc.clock.now(),
    )
    .await
    .unwrap();
    let t: Value = svc
        .http
        .post(format!("{}/api/auth/token", svc.base))
        .json(&json!({"clientId": c.id, "clientSecret": secret.expose()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let r = svc
        .http
        .get(format!("{}/api/webhooks", svc.base))
        .bearer_auth(t["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let rx = Receiver::start().await;
    let (s, v) = svc.call(reqwest::Method::POST, "/api/webhooks", Some(json!({"url": rx.url, "events": ["customer.deleted"]}))).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("VALIDATION_ERROR")));
    assert!(v["details"]["events"].is_string());
    let (s, _) = svc.call(reqwest::Method::POST, "/api/webhooks", Some(json!({"url": rx.url, "events": []}))).await;
    assert_eq!(s, 400);
    // Listed, fetched, deleted; a deleted webhook gets nothing.
    let (hook, _) = svc.subscribe(&rx.url, &["customer.created"]).await;
    let (s, v) = svc.call(reqwest::Method::GET, "/api/webhooks", None).await;
    assert_eq!((s, v["data"][0]["id"].as_str()), (200, Some(hook.as_str())));
    assert!(v["data"][0].get("secret").is_none(), "the secret is not listed");
    let (s, v) = svc.call(reqwest::Method::GET, &format!("/api/webhooks/{hook}/secret"), None).await;
    assert_eq!(s, 200);
    assert!(v["secrets"][0].as_str().unwrap().starts_with("whsec_"));
    let (s, _) = svc.call(reqwest::Method::DELETE, &format!("/api/webhooks/{hook}"), None).await;
    assert_eq!(s, 204);
    let (s, _) = svc.call(reqwest::Method::DELETE, &format!("/api/webhooks/{hook}"), None).await;
    assert_eq!(s, 404);
    svc.create_customer("Hugo", "hugo@example.com").await;
    svc.dispatch().await;
    assert_eq!(rx.count(), 0);
}

#[tokio::test]
async fn every_active_key_signs_while_the_key_is_rotated() {
    let svc = Service::start(Opts::default()).await;
    let rx = Receiver::start().await;
    let (hook, old_secret) = svc.subscribe(&rx.url, &["customer.created"]).await;
    let local = customer360::secrets::local::LocalSecrets::open(&svc.app.config.data_dir).unwrap();
    local.add_version(customer360::secrets::WEBHOOK_HMAC_KEY, customer360::secrets::local::random_key()).unwrap();
    svc.app.keys.refresh().await.unwrap();
    let (_, v) = svc.call(reqwest::Method::GET, &format!("/api/webhooks/{hook}/secret"), None).await;
    let secrets: Vec<String> = serde_json::from_value(v["secrets"].clone()).unwrap();
    assert_eq!(secrets.len(), 2);
    assert_eq!(secrets[1], old_secret, "newest first; the old one still verifies");
    svc.create_customer("Ivo", "ivo@example.com").await;
    svc.dispatch().await;
    let r = rx.last();
    assert_eq!(r.header("x-signature").matches("v1=").count(), 2);
    verify(&r, &old_secret);
    verify(&r, &secrets[0]);
}

#[tokio::test]
async fn the_webhook_dispatch_timer_function_sends_due_deliveries() {
    let svc = Service::start(Opts { functions_mode: true, ..Opts::default() }).await;
    let rx = Receiver::start().await;
    let (_, secret) = svc.subscribe(&rx.url, &["customer.created"]).await;
    svc.create_customer("Jo", "jo@example.com").await;
    let r = svc
        .http
        .post(format!("{}/WebhookDispatch", svc.base))
        .json(&json!({"Data": {"timer": {"Schedule": {"AdjustForDST": false}, "ScheduleStatus": null, "IsPastDue": false}}, "Metadata": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["ReturnValue"]["delivered"], 1, "{v}");
    assert!(v["Logs"].is_array() && v.get("Outputs").is_some());
    assert_eq!(rx.count(), 1);
    verify(&rx.last(), &secret);
}

// ---------------------------------------------------------------- the real binary

struct Proc {
    child: std::process::Child,
    base: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_binary(dir: &std::path::Path, dispatch_ms: u64) -> Proc {
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_customer360"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", dir)
        .env("PORT", port.to_string())
        .env("WEBHOOK_ALLOW_LOOPBACK", "true")
        .env("WEBHOOK_DISPATCH_INTERVAL_MS", dispatch_ms.to_string())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}/api/health")).send().await {
            if r.status().is_success() {
                return Proc { child, base };
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the binary did not start");
}

fn dev_credentials(dir: &std::path::Path) -> (String, String) {
    let file: Value = serde_json::from_slice(&std::fs::read(dir.join("secrets.json")).unwrap()).unwrap();
    let versions = file["secrets"]["local-dev-client"].as_array().unwrap();
    let creds: Value = serde_json::from_str(versions.last().unwrap()["value"].as_str().unwrap()).unwrap();
    (creds["clientId"].as_str().unwrap().into(), creds["clientSecret"].as_str().unwrap().into())
}

#[tokio::test]
async fn nothing_is_lost_when_the_process_is_killed_before_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start().await;
    // Dispatcher off: the event can only sit in the outbox when the process dies.
    let mut p = start_binary(dir.path(), 0).await;
    let (id, secret) = dev_credentials(dir.path());
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}/api/auth/token", p.base))
        .json(&json!({"clientId": id, "clientSecret": secret}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["access_token"].as_str().unwrap().to_string();
    let hook: Value = http
        .post(format!("{}/api/webhooks", p.base))
        .bearer_auth(&token)
        .json(&json!({"url": rx.url, "events": ["customer.created"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let whsec = hook["secret"].as_str().expect("a secret").to_string();
    let created = http
        .post(format!("{}/api/customers", p.base))
        .bearer_auth(&token)
        .json(&json!({"name": "Kiko", "email": "kiko@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let customer: Value = created.json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.count(), 0);
    p.child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    p.child.wait().unwrap();

    let mut p = start_binary(dir.path(), 100).await;
    for _ in 0..100 {
        if rx.count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = p.child.kill();
    let _ = p.child.wait();
    assert_eq!(rx.count(), 1, "the event written before the kill arrives after the restart");
    let r = rx.last();
    verify(&r, &whsec);
    assert_eq!(r.json()["event"], "customer.created");
    assert_eq!(r.json()["data"]["id"], customer["id"]);
}
