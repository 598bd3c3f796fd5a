//! Sync jobs end to end: the real binary, a real HTTP connector on 127.0.0.1 with injected
//! faults, a kill -9 in the middle of a job, the Functions SyncWorker invocation, and the
//! Service Bus adapter's wire format.
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use warp::Filter;

// ---------- a connector on 127.0.0.1 ----------

#[derive(Debug, Clone)]
enum Fault {
    Status500,
    Slow(Duration),
    Malformed,
}

#[derive(Debug, Clone)]
struct Seen {
    entity: String,
    since: Option<String>,
    cursor: Option<String>,
    api_key: Option<String>,
}

#[derive(Default)]
struct Source {
    items: HashMap<String, Vec<Value>>,
    page_size: usize,
    faults: VecDeque<Fault>,
    always_fail: bool,
    /// The first request for this cursor hangs (to kill the process mid-job).
    hang_cursor: Option<String>,
    /// Requests for this cursor answer 500.
    fail_cursor: Option<String>,
    requests: Vec<Seen>,
}

type Shared = Arc<Mutex<Source>>;

fn parse_time(s: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc)
}

async fn answer(src: Shared, entity: String, q: HashMap<String, String>, key: Option<String>) -> warp::reply::Response {
    use warp::Reply;
    let (fault, hang, body) = {
        let mut s = src.lock().unwrap();
        let cursor = q.get("cursor").cloned();
        s.requests.push(Seen { entity: entity.clone(), since: q.get("since").cloned(), cursor: cursor.clone(), api_key: key });
        if s.always_fail || (cursor.is_some() && s.fail_cursor == cursor) {
            return warp::reply::with_status("boom", warp::http::StatusCode::INTERNAL_SERVER_ERROR).into_response();
        }
        let fault = s.faults.pop_front();
        let hang = cursor.is_some() && s.hang_cursor == cursor;
        if hang {
            s.hang_cursor = None;
        }
        let all: Vec<Value> = s.items.get(&entity).cloned().unwrap_or_default();
        let since = q.get("since").map(|v| parse_time(v));
        let matching: Vec<Value> = all
            .into_iter()
            .filter(|i| since.is_none_or(|s| i["updatedAt"].as_str().is_none_or(|u| parse_time(u) >= s)))
            .collect();
        let limit: usize = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(100);
        let size = limit.min(s.page_size.max(1));
        let offset: usize = cursor.as_deref().map(|c| c.parse().unwrap()).unwrap_or(0);
        let page: Vec<Value> = matching.iter().skip(offset).take(size).cloned().collect();
        let next = (offset + page.len() < matching.len()).then(|| (offset + page.len()).to_string());
        (fault, hang, json!({ "items": page, "nextCursor": next }).to_string())
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    match fault {
        Some(Fault::Status500) => warp::reply::with_status("boom", warp::http::StatusCode::INTERNAL_SERVER_ERROR).into_response(),
        Some(Fault::Malformed) => warp::reply::with_status("{\"items\": [", warp::http::StatusCode::OK).into_response(),
        Some(Fault::Slow(d)) => {
            tokio::time::sleep(d).await;
            warp::reply::with_status(body, warp::http::StatusCode::OK).into_response()
        }
        None => warp::reply::with_status(body, warp::http::StatusCode::OK).into_response(),
    }
}

/// Serves the shared source on 127.0.0.1:0; returns its base URL.
async fn start_connector(src: Shared) -> String {
    let route = warp::path::param::<String>()
        .and(warp::path::end())
        .and(warp::get())
        .and(warp::query::<HashMap<String, String>>())
        .and(warp::header::optional::<String>("x-api-key"))
        .then(move |entity, q, key| answer(src.clone(), entity, q, key));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    format!("http://{addr}")
}

fn customer(i: usize) -> Value {
    let day = chrono::NaiveDate::from_ymd_opt(2025, 6, 1).unwrap() + chrono::Duration::days(i as i64);
    json!({
        "externalId": format!("c-{i:03}"),
        "name": format!("Customer {i}"),
        "email": format!("c{i}@example.com"),
        "lifecycleStage": "Lead",
        "engagementScore": (i % 100) as u64,
        "tags": ["synced"],
        "customFields": {"n": i},
        "updatedAt": format!("{day}T00:00:00Z"),
    })
}

// ---------- the binary ----------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Api {
    child: Child,
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const BASE_ENV: &[(&str, &str)] = &[
    ("RUST_LOG", "info"),
    ("CONNECTOR_TIMEOUT_MS", "1000"),
    ("CONNECTOR_RETRY_BASE_MS", "50"),
    ("CONNECTOR_MAX_ATTEMPTS", "5"),
];

/// `C360_TEST_STORE=cosmos-emulator` runs the binary on the Cosmos adapter (as in tests/common;
/// build with `--features cosmos-emulator`). The in-process emulator dies with the process and is
/// not the SQLite file the CLI writes, so tests that need either say so and stop there.
fn other_store() -> Option<String> {
    std::env::var("C360_TEST_STORE").ok().filter(|s| !s.is_empty() && s != "sqlite")
}

fn sqlite_only(why: &str) -> bool {
    if let Some(store) = other_store() {
        eprintln!("not run on {store}: {why}");
        return false;
    }
    true
}

fn spawn(dir: &Path, port: u16, env: &[(&str, String)]) -> Child {
    let log = |name: &str| Stdio::from(std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).unwrap());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_customer360"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATA_DIR", dir)
        .env("PORT", port.to_string())
        .stdout(log("stdout.log"))
        .stderr(log("stderr.log"));
    for (k, v) in BASE_ENV {
        cmd.env(k, v);
    }
    if let Some(store) = other_store() {
        cmd.env("STORE", store);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

async fn wait_up(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{base}/")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the binary did not come up at {base}");
}

async fn token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> String {
    let r = http
        .post(format!("{base}/api/auth/token"))
        .json(&json!({"clientId": id, "clientSecret": secret}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
}

fn dev_client(dir: &Path) -> (String, String) {
    let f: Value = serde_json::from_slice(&std::fs::read(dir.join("secrets.json")).unwrap()).unwrap();
    let creds: Value = serde_json::from_str(f["secrets"]["local-dev-client"][0]["value"].as_str().unwrap()).unwrap();
    (creds["clientId"].as_str().unwrap().into(), creds["clientSecret"].as_str().unwrap().into())
}

/// Adds a value to the local secrets file before the binary starts (it keeps other entries).
fn put_secret(dir: &Path, name: &str, value: &str) {
    let path = dir.join("secrets.json");
    let mut f: Value = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(json!({"secrets": {}}));
    f["secrets"][name] = json!([{ "version": "v1", "value": value, "created": "2025-01-01T00:00:00Z", "enabled": true }]);
    std::fs::write(&path, serde_json::to_vec(&f).unwrap()).unwrap();
}

async fn start_api(dir: &Path, env: &[(&str, String)]) -> Api {
    let port = free_port();
    let child = spawn(dir, port, env);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_up(&http, &base).await;
    let (id, secret) = dev_client(dir);
    let token = token(&http, &base, &id, &secret).await;
    Api { child, base, http, token }
}

impl Api {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn post_sync(&self, body: Value, key: Option<&str>) -> reqwest::Response {
        let mut req = self.http.post(format!("{}/api/sync", self.base)).bearer_auth(&self.token).json(&body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        req.send().await.unwrap()
    }

    async fn queue(&self, body: Value) -> String {
        let r = self.post_sync(body, None).await;
        assert_eq!(r.status(), 202);
        r.json::<Value>().await.unwrap()["jobId"].as_str().unwrap().to_string()
    }

    async fn job(&self, id: &str) -> Value {
        let (s, v) = self.get(&format!("/api/sync/{id}")).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    async fn finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let j = self.job(id).await;
            if j["status"] == "completed" || j["status"] == "failed" {
                return j;
            }
            assert!(Instant::now() < deadline, "job never finished: {j}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn connector_env(url: &str) -> Vec<(&'static str, String)> {
    vec![("CONNECTOR_BASE_URL", url.to_string())]
}

// ---------- tests ----------

#[tokio::test]
async fn sync_requests_are_validated_idempotent_and_a_failing_connector_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let src: Shared = Arc::new(Mutex::new(Source { always_fail: true, page_size: 10, ..Default::default() }));
    let url = start_connector(src.clone()).await;
    let mut env = connector_env(&url);
    env.push(("CONNECTOR_MAX_ATTEMPTS", "3".into()));
    let api = start_api(dir.path(), &env).await;

    for bad in [
        json!({"entity": "orders", "mode": "full"}),
        json!({"entity": "customers", "mode": "sometimes"}),
        json!({"entity": "customers", "mode": "incremental", "since": "2999-01-01T00:00:00Z"}),
        json!({"entity": "customers", "mode": "incremental", "since": "yesterday"}),
        json!({"entity": "customers", "mode": "full", "since": "2025-01-01T00:00:00Z"}),
        json!(["customers"]),
    ] {
        let r = api.post_sync(bad.clone(), None).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert_eq!(r.json::<Value>().await.unwrap()["code"], "VALIDATION_ERROR", "{bad}");
    }
    let anon = api.http.post(format!("{}/api/sync", api.base)).json(&json!({"entity": "customers", "mode": "full"})).send().await.unwrap();
    assert_eq!(anon.status(), 401);

    // Idempotency-Key: the same body replays the first answer; another body is refused.
    let body = json!({"entity": "customers", "mode": "full"});
    let first = api.post_sync(body.clone(), Some("k-1")).await;
    assert_eq!(first.status(), 202);
    let location = first.headers()["location"].to_str().unwrap().to_string();
    let v: Value = first.json().await.unwrap();
    let id = v["jobId"].as_str().unwrap().to_string();
    assert!(id.starts_with("sync_") && id.len() == 31, "{id}");
    assert_eq!(v["status"], "queued");
    assert_eq!(location, format!("/api/sync/{id}"));
    let again = api.post_sync(body.clone(), Some("k-1")).await;
    assert_eq!(again.status(), 202);
    assert_eq!(again.headers()["location"].to_str().unwrap(), location);
    assert_eq!(again.json::<Value>().await.unwrap()["jobId"], id.as_str());
    let other = api.post_sync(json!({"entity": "opportunities", "mode": "full"}), Some("k-1")).await;
    assert_eq!(other.status(), 422);
    assert_eq!(other.json::<Value>().await.unwrap()["code"], "IDEMPOTENCY_KEY_REUSED");

    // The connector answers 500 every time: retried, then failed with the reason.
    let job = api.finished(&id).await;
    assert_eq!(job["status"], "failed", "{job}");
    let reason = job["reason"].as_str().unwrap();
    assert!(reason.contains("gave up after 3 attempts") && reason.contains("500"), "{reason}");
    for k in ["jobId", "entity", "mode", "createdAt", "startedAt", "finishedAt", "processed", "created", "updated", "skipped", "errors"] {
        assert!(job.get(k).is_some(), "{k} missing in {job}");
    }
    {
        let s = src.lock().unwrap();
        assert_eq!(s.requests.len(), 3);
        assert!(s.requests.iter().all(|r| r.api_key.is_none()), "no connector-api-key secret, no header");
    }

    // A failed job does not move the watermark: the next incremental starts from nothing.
    let inc = api.queue(json!({"entity": "customers", "mode": "incremental"})).await;
    assert_eq!(api.job(&inc).await["since"], Value::Null);

    let (s, list) = api.get("/api/sync?page=1&pageSize=1").await;
    assert_eq!(s, 200);
    assert_eq!(list["total"], 2);
    assert_eq!(list["totalPages"], 2);
    assert_eq!(list["data"][0]["jobId"], inc.as_str());
    assert_eq!(api.get("/api/sync?pageSize=0").await.0, 400);
    assert_eq!(api.get("/api/sync/sync_01HZ7G0000000000000000000A").await.0, 404);
    assert_eq!(api.get("/api/sync/nope").await.0, 404);
}

#[tokio::test]
async fn a_full_sync_rides_out_faults_reports_bad_records_and_an_incremental_continues_from_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let mut items: Vec<Value> = (0..95).map(customer).collect();
    // The same record on two pages (page size 40: c-039 ends page 1 and starts page 2).
    items.insert(40, customer(39));
    items.push(json!({"externalId": "bad-email", "name": "X", "email": "nope", "updatedAt": "2025-05-01T00:00:00Z"}));
    items.push(json!({"externalId": "no-name", "email": "n@example.com", "updatedAt": "2025-05-01T00:00:00Z"}));
    items.push(json!({"externalId": "dup-email", "name": "Y", "email": "c1@example.com", "updatedAt": "2025-05-01T00:00:00Z"}));
    let src: Shared = Arc::new(Mutex::new(Source {
        items: HashMap::from([("customers".to_string(), items)]),
        page_size: 40,
        faults: VecDeque::from([Fault::Status500, Fault::Slow(Duration::from_millis(2500)), Fault::Malformed]),
        ..Default::default()
    }));
    let url = start_connector(src.clone()).await;
    put_secret(dir.path(), "connector-api-key", "ck_test_123");
    let api = start_api(dir.path(), &connector_env(&url)).await;

    let id = api.queue(json!({"entity": "customers", "mode": "full"})).await;
    let job = api.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["processed"], 99);
    assert_eq!(job["created"], 95);
    assert_eq!(job["updated"], 0);
    assert_eq!(job["skipped"], 1);
    let errs = job["errors"].as_array().unwrap();
    let bad: Vec<_> = errs.iter().map(|e| (e["externalId"].as_str().unwrap(), e["code"].as_str().unwrap())).collect();
    assert_eq!(bad, [("bad-email", "VALIDATION_ERROR"), ("no-name", "VALIDATION_ERROR"), ("dup-email", "CONFLICT")]);
    assert!(errs[1]["message"].as_str().unwrap().contains("name"));
    assert!(errs[2]["message"].as_str().unwrap().contains("email"));
    {
        let s = src.lock().unwrap();
        // 3 failed tries of page 1, then 3 pages.
        assert_eq!(s.requests.len(), 6);
        assert_eq!(s.requests.iter().filter(|r| r.cursor.is_none()).count(), 4);
        assert!(s.requests.iter().all(|r| r.api_key.as_deref() == Some("ck_test_123")));
        assert!(s.requests.iter().all(|r| r.entity == "customers" && r.since.is_none()));
    }

    let (_, list) = api.get("/api/customers?pageSize=1").await;
    assert_eq!(list["total"], 95);
    // Created at the source's time, so insights count it on the right day.
    let (_, found) = api.get("/api/customers?search=c-000").await;
    assert_eq!(found["data"][0]["createdAt"], "2025-06-01T00:00:00.000Z");
    let (s, insights) = api.get("/api/insights?from=2025-06-01&to=2025-06-02").await;
    assert_eq!(s, 200, "{insights}");
    assert_eq!(insights["trend"][0]["newLeads"], 1, "{insights}");

    // The source changes one record; an incremental without since continues from the watermark.
    {
        let mut s = src.lock().unwrap();
        s.requests.clear();
        let list = s.items.get_mut("customers").unwrap();
        let c10 = list.iter_mut().find(|c| c["externalId"] == "c-010").unwrap();
        c10["name"] = json!("Customer Ten, renamed");
        c10["updatedAt"] = json!("2025-10-01T00:00:00Z");
    }
    let inc = api.queue(json!({"entity": "customers", "mode": "incremental"})).await;
    let job = api.finished(&inc).await;
    assert_eq!(job["since"], "2025-09-03T00:00:00.000Z", "{job}");
    assert_eq!((job["created"].as_u64(), job["updated"].as_u64(), job["skipped"].as_u64()), (Some(0), Some(1), Some(1)), "{job}");
    assert_eq!(src.lock().unwrap().requests[0].since.as_deref(), Some("2025-09-03T00:00:00.000Z"));
    let (_, found) = api.get("/api/customers?search=c-010").await;
    assert_eq!(found["data"][0]["name"], "Customer Ten, renamed");

    // A second full run changes nothing.
    let again = api.finished(&api.queue(json!({"entity": "customers", "mode": "full"})).await).await;
    assert_eq!((again["created"].as_u64(), again["updated"].as_u64()), (Some(0), Some(0)), "{again}");
    assert_eq!(api.get("/api/customers?pageSize=1").await.1["total"], 95);
}

#[tokio::test]
async fn opportunities_from_the_sample_files_are_stored_listed_and_move_the_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let samples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples");
    let api = start_api(dir.path(), &connector_env(&format!("file://{}", samples.display()))).await;

    let customers = api.finished(&api.queue(json!({"entity": "customers", "mode": "full"})).await).await;
    assert_eq!(customers["status"], "completed", "{customers}");
    assert_eq!(customers["created"], 4);
    assert_eq!(customers["errors"][0]["externalId"], "crm-1005");

    let opps = api.finished(&api.queue(json!({"entity": "opportunities", "mode": "full"})).await).await;
    assert_eq!(opps["status"], "completed", "{opps}");
    assert_eq!(opps["created"], 3, "{opps}");
    assert_eq!(opps["errors"][0]["code"], "CUSTOMER_NOT_FOUND");

    let stage = |v: &Value| v["data"][0]["lifecycleStage"].as_str().unwrap().to_string();
    assert_eq!(stage(&api.get("/api/customers?search=crm-1001").await.1), "Opportunity");
    assert_eq!(stage(&api.get("/api/customers?search=crm-1002").await.1), "Customer");
    assert_eq!(stage(&api.get("/api/customers?search=crm-1004").await.1), "Lead");

    let (s, list) = api.get("/api/opportunities?customerExternalId=crm-1002").await;
    assert_eq!(s, 200);
    assert_eq!(list["total"], 1);
    let o = &list["data"][0];
    assert_eq!((o["externalId"].as_str(), o["stage"].as_str(), o["currency"].as_str()), (Some("opp-5002"), Some("Won"), Some("BRL")));
    assert_eq!(o["amount"], 4500.5);
    assert_eq!(o["closedAt"], "2025-09-20T17:00:00.000Z");
    assert_eq!(api.get("/api/opportunities?pageSize=2").await.1["totalPages"], 2);
    assert_eq!(api.get("/api/opportunities?page=0").await.0, 400);

    // The won deal counts on its close day; the open one on its creation day.
    let (_, ins) = api.get("/api/insights?from=2025-09-15&to=2025-09-20").await;
    let day = |d: &str| ins["trend"].as_array().unwrap().iter().find(|r| r["date"] == d).cloned().unwrap();
    assert_eq!(day("2025-09-20")["closedWon"], 1, "{ins}");
    assert_eq!(day("2025-09-15")["opportunities"], 1, "{ins}");

    // Doing it again changes nothing.
    let again = api.finished(&api.queue(json!({"entity": "opportunities", "mode": "full"})).await).await;
    assert_eq!((again["created"].as_u64(), again["updated"].as_u64(), again["skipped"].as_u64()), (Some(0), Some(0), Some(3)));

    // The outbox holds the same events as API changes (webhooks), at the source's times.
    drop(api);
    if !sqlite_only("the outbox is read from the SQLite file") {
        return;
    }
    use customer360::store::CustomerStore;
    let store = customer360::store::sqlite::SqliteStore::open(dir.path()).unwrap();
    let all = store.outbox_events(None, 100).await.unwrap();
    // Every finished job published sync.completed in the same write as its end.
    let done: Vec<&customer360::store::OutboxEvent> = all.iter().filter(|e| e.event_type == "sync.completed").collect();
    assert!(done.iter().any(|e| e.payload["data"]["jobId"] == again["jobId"] && e.payload["data"]["status"] == "completed"), "{done:?}");
    assert!(done.iter().all(|e| e.payload["event"] == "sync.completed" && e.payload["id"] == e.id.as_str()));
    let events: Vec<customer360::store::OutboxEvent> = all.iter().filter(|e| e.event_type.starts_with("customer.")).cloned().collect();
    let seen: Vec<(String, String)> =
        events.iter().map(|e| (e.event_type.clone(), e.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))).collect();
    assert_eq!(
        seen,
        [
            ("customer.created", "2025-09-01T12:00:00Z"),
            ("customer.created", "2025-09-03T09:30:00Z"),
            ("customer.created", "2025-09-05T15:45:00Z"),
            ("customer.created", "2025-09-10T08:00:00Z"),
            ("customer.updated", "2025-09-15T14:00:00Z"),
            ("customer.updated", "2025-09-20T17:00:00Z"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(events[5].payload["data"]["changes"]["lifecycleStage"], json!({"from": "Lead", "to": "Customer"}));
}

#[tokio::test]
async fn the_standalone_schedule_queues_incremental_jobs_one_per_entity_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let samples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples");
    let mut env = connector_env(&format!("file://{}", samples.display()));
    env.push(("INCREMENTAL_SYNC_INTERVAL_SECONDS", "1".into()));
    let api = start_api(dir.path(), &env).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let jobs = loop {
        let (_, list) = api.get("/api/sync?pageSize=200").await;
        let jobs = list["data"].as_array().unwrap().clone();
        if jobs.len() >= 4 && jobs.iter().all(|j| j["status"] == "completed") {
            break jobs;
        }
        assert!(Instant::now() < deadline, "the schedule did not run twice: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(jobs.iter().all(|j| j["mode"] == "incremental"));
    for entity in ["customers", "opportunities"] {
        assert!(jobs.iter().filter(|j| j["entity"] == entity).count() >= 2, "{entity}");
    }
    // The first opportunities job waited for the customers job queued before it.
    let first_opps = jobs.iter().rev().find(|j| j["entity"] == "opportunities").unwrap();
    assert_eq!(first_opps["created"], 3, "{first_opps}");
    // Later runs continue from the watermark, so they find nothing new.
    let last_customers = jobs.iter().find(|j| j["entity"] == "customers").unwrap();
    assert_eq!(last_customers["since"], "2025-09-10T08:00:00.000Z", "{last_customers}");
    assert_eq!(last_customers["created"], 0);
    assert_eq!(api.get("/api/customers?pageSize=1").await.1["total"], 4);
}

#[tokio::test]
async fn a_job_killed_mid_way_resumes_from_its_checkpoint_without_duplicates() {
    if !sqlite_only("the store must outlive the killed process") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src: Shared = Arc::new(Mutex::new(Source {
        items: HashMap::from([("customers".to_string(), (0..90).map(customer).collect())]),
        page_size: 30,
        hang_cursor: Some("60".into()),
        ..Default::default()
    }));
    let url = start_connector(src.clone()).await;
    let mut env = connector_env(&url);
    env.push(("CONNECTOR_TIMEOUT_MS", "60000".into()));
    let mut api = start_api(dir.path(), &env).await;
    let id = api.queue(json!({"entity": "customers", "mode": "full"})).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    while !src.lock().unwrap().requests.iter().any(|r| r.cursor.as_deref() == Some("60")) {
        assert!(Instant::now() < deadline, "the third page was never asked for");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mid = api.job(&id).await;
    assert_eq!((mid["status"].as_str(), mid["processed"].as_u64()), (Some("running"), Some(60)), "{mid}");

    api.child.kill().unwrap(); // SIGKILL
    api.child.wait().unwrap();
    src.lock().unwrap().requests.clear();

    let api = start_api(dir.path(), &env).await;
    let job = api.finished(&id).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!((job["processed"].as_u64(), job["created"].as_u64()), (Some(90), Some(90)), "{job}");
    let first = src.lock().unwrap().requests[0].clone();
    assert_eq!(first.cursor.as_deref(), Some("60"), "resumed from the checkpoint, not from the start");
    assert_eq!(api.get("/api/customers?pageSize=1").await.1["total"], 90);
}

fn cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_customer360")).args(args).env("DATA_DIR", dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn the_functions_sync_worker_runs_jobs_idempotently_and_fails_them_on_the_last_delivery() {
    if !sqlite_only("the clients are created by the CLI in the SQLite store") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src: Shared = Arc::new(Mutex::new(Source {
        items: HashMap::from([("customers".to_string(), (0..12).map(customer).collect())]),
        page_size: 5,
        ..Default::default()
    }));
    let url = start_connector(src.clone()).await;
    let out = cli(dir.path(), &["clients", "create", "--name", "fn", "--scopes", "sync.write customer.read"]);
    let field = |k: &str| out.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim().to_string();
    let (cid, csecret) = (field("clientId:"), field("clientSecret:"));
    let reader = cli(dir.path(), &["clients", "create", "--name", "reader", "--scopes", "customer.read"]);
    let rfield = |k: &str| reader.lines().find_map(|l| l.strip_prefix(k)).unwrap().trim().to_string();
    let (rid, rsecret) = (rfield("clientId:"), rfield("clientSecret:"));

    let port = free_port();
    let mut env = connector_env(&url);
    env.push(("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string()));
    env.push(("SYNC_MAX_DELIVERY_COUNT", "3".into()));
    env.push(("CONNECTOR_MAX_ATTEMPTS", "2".into()));
    let child = spawn(dir.path(), port, &env);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_up(&http, &base).await;
    let fn_token = token(&http, &base, &cid, &csecret).await;
    let api = Api { child, base: base.clone(), http: http.clone(), token: fn_token };

    // Scopes: sync.write to queue, sync.read or sync.write to read.
    let reader_token = token(&http, &base, &rid, &rsecret).await;
    let r = http.post(format!("{base}/api/sync")).bearer_auth(&reader_token).json(&json!({"entity": "customers", "mode": "full"})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(http.get(format!("{base}/api/sync")).bearer_auth(&reader_token).send().await.unwrap().status(), 403);
    assert_eq!(http.get(format!("{base}/api/opportunities")).bearer_auth(&reader_token).send().await.unwrap().status(), 200);

    let id = api.queue(json!({"entity": "customers", "mode": "full"})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.job(&id).await["status"], "queued", "under Functions only the trigger works jobs");

    let invoke = |name: &'static str, body: Value| {
        let http = http.clone();
        let url = format!("{base}/{name}");
        async move {
            let r = http.post(url).header("x-azure-functions-invocationid", "inv-1").json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let message = |id: &str, count: u32, encode_twice: bool| {
        let body = json!({"jobId": id});
        let m = if encode_twice { json!(json!(body.to_string()).to_string()) } else { body };
        json!({
            "Data": {"message": m},
            "Metadata": {"DeliveryCount": count, "MessageId": id, "EnqueuedTimeUtc": "2026-12-04T10:00:00Z", "sys": {"MethodName": "SyncWorker"}}
        })
    };

    let (s, v) = invoke("SyncWorker", message(&id, 1, true)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ReturnValue"]["status"], "completed", "{v}");
    let done = api.job(&id).await;
    assert_eq!((done["status"].as_str(), done["created"].as_u64()), (Some("completed"), Some(12)));

    // A redelivery of the same message changes nothing.
    let (s, _) = invoke("SyncWorker", message(&id, 2, false)).await;
    assert_eq!(s, 200);
    assert_eq!(api.job(&id).await, done);

    // Malformed invocations are 400s.
    let raw = http.post(format!("{base}/SyncWorker")).body("nope").send().await.unwrap();
    assert_eq!(raw.status(), 400);
    assert_eq!(invoke("SyncWorker", json!({"Metadata": {}})).await.0, 400);
    assert_eq!(invoke("SyncWorker", json!({"Data": {"message": 5}})).await.0, 400);
    assert_eq!(invoke("SyncWorker", json!({"Data": {"message": {"jobId": "x"}}})).await.0, 400);
    assert_eq!(invoke("SyncWorker", json!({"Data": {"message": {"jobId": id}}, "Metadata": {"DeliveryCount": "many"}})).await.0, 400);

    // The connector fails after the first page: the delivery fails (non-2xx, so Service Bus
    // delivers again) and the next delivery resumes from the checkpoint.
    src.lock().unwrap().fail_cursor = Some("5".into());
    let resumed = api.queue(json!({"entity": "customers", "mode": "full"})).await;
    let (s, _) = invoke("SyncWorker", message(&resumed, 1, false)).await;
    assert!(s >= 500, "{s}");
    let half = api.job(&resumed).await;
    assert_eq!((half["status"].as_str(), half["processed"].as_u64()), (Some("queued"), Some(5)), "{half}");
    {
        let mut s = src.lock().unwrap();
        s.fail_cursor = None;
        s.requests.clear();
    }
    let (s, v) = invoke("SyncWorker", message(&resumed, 2, false)).await;
    assert_eq!(s, 200, "{v}");
    let whole = api.job(&resumed).await;
    assert_eq!((whole["status"].as_str(), whole["processed"].as_u64(), whole["skipped"].as_u64()), (Some("completed"), Some(12), Some(12)));
    assert_eq!(src.lock().unwrap().requests[0].cursor.as_deref(), Some("5"), "resumed, not restarted");

    // A connector that keeps failing: the last delivery marks the job failed and answers 200.
    src.lock().unwrap().always_fail = true;
    let failing = api.queue(json!({"entity": "customers", "mode": "incremental"})).await;
    let (s, _) = invoke("SyncWorker", message(&failing, 1, false)).await;
    assert!(s >= 500, "{s}");
    assert_eq!(api.job(&failing).await["status"], "queued");
    let (s, v) = invoke("SyncWorker", message(&failing, 3, false)).await;
    assert_eq!(s, 200, "{v}");
    let failed = api.job(&failing).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["reason"].as_str().unwrap().contains("500"), "{failed}");

    // The timer: one incremental job per entity, none while one is still queued.
    let timer = json!({"Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": null, "IsPastDue": false}}, "Metadata": {}});
    let (s, v) = invoke("IncrementalSync", timer.clone()).await;
    assert_eq!(s, 200, "{v}");
    let queued = v["ReturnValue"]["queued"].as_array().unwrap().clone();
    assert_eq!(queued.len(), 2);
    let inc = api.job(queued[0].as_str().unwrap()).await;
    assert_eq!(inc["mode"], "incremental");
    assert_eq!(inc["since"], "2025-06-12T00:00:00.000Z", "from the watermark of the completed job");
    let (_, v) = invoke("IncrementalSync", timer).await;
    assert_eq!(v["ReturnValue"]["queued"], json!([]));
    assert_eq!(invoke("IncrementalSync", json!({"Data": {"timer": 5}})).await.0, 400);
    assert_eq!(http.get(format!("{base}/SyncWorker")).send().await.unwrap().status(), 405);
}

// ---------- the Service Bus adapter on the wire ----------

/// Method, URL, headers, body.
type Sent = (String, String, HashMap<String, String>, String);

#[derive(Debug, Default)]
struct Recorder {
    sent: Mutex<Vec<Sent>>,
    /// Answers to give, in order; 201 Created when empty.
    answers: Mutex<VecDeque<azure_core_legacy::StatusCode>>,
}

#[async_trait::async_trait]
impl azure_core_legacy::HttpClient for Recorder {
    async fn execute_request(&self, req: &azure_core_legacy::Request) -> azure_core_legacy::Result<azure_core_legacy::Response> {
        let headers = req.headers().iter().map(|(k, v)| (k.as_str().to_string(), v.as_str().to_string())).collect();
        let body = match req.body() {
            azure_core_legacy::Body::Bytes(b) => String::from_utf8(b.to_vec()).unwrap(),
            _ => String::new(),
        };
        self.sent.lock().unwrap().push((format!("{:?}", req.method()), req.url().to_string(), headers, body));
        let stream = futures::stream::once(async { Ok(bytes::Bytes::new()) });
        let status = self.answers.lock().unwrap().pop_front().unwrap_or(azure_core_legacy::StatusCode::Created);
        Ok(azure_core_legacy::Response::new(status, azure_core_legacy::headers::Headers::new(), Box::pin(stream)))
    }
}

/// Checks `SharedAccessSignature sr=<url-encoded resource>&sig=<url-encoded base64 HMAC>&se=<expiry>&skn=<policy>`.
fn assert_sas(header: &str, resource: &str, policy: &str, key: &[u8]) {
    use base64::Engine;
    use hmac::Mac;
    let auth = header.strip_prefix("SharedAccessSignature ").unwrap();
    let parts: HashMap<String, String> = serde_urlencoded::from_str(auth).unwrap();
    assert_eq!(parts["skn"], policy);
    assert_eq!(parts["sr"], resource);
    let se: i64 = parts["se"].parse().unwrap();
    assert!(se > chrono::Utc::now().timestamp());
    let sr_encoded: String = url::form_urlencoded::byte_serialize(resource.as_bytes()).collect();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{sr_encoded}\n{se}").as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(parts["sig"], expected, "signed with the send key from the Secrets port");
}

#[tokio::test]
async fn the_service_bus_queue_sends_one_message_per_job_with_its_id_and_a_sas_signature() {
    use customer360::queue::JobQueue;
    let dir = tempfile::tempdir().unwrap();
    put_secret(dir.path(), "servicebus-send-key", "c2VuZC1rZXktZm9yLXRlc3Rz");
    let local = Arc::new(customer360::secrets::local::LocalSecrets::open(dir.path()).unwrap());
    let secrets: Arc<dyn customer360::secrets::Secrets> = local.clone();
    let recorder = Arc::new(Recorder::default());
    let cfg = customer360::config::ServiceBusConfig { namespace: "c360-test.servicebus.windows.net".into(), queue: "sync-jobs".into(), send_policy: "sync-send".into() };
    let q = customer360::queue::servicebus::ServiceBusQueue::open(recorder.clone(), &cfg, secrets).await.unwrap();
    q.enqueue("sync_01HZ7G0000000000000000000A").await.unwrap();

    let sent = recorder.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let (method, url, headers, body) = &sent[0];
    assert_eq!(method.to_uppercase(), "POST");
    assert_eq!(url, "https://c360-test.servicebus.windows.net/sync-jobs/messages");
    let broker: Value = serde_json::from_str(&headers["brokerproperties"]).unwrap();
    assert_eq!(broker["MessageId"], "sync_01HZ7G0000000000000000000A");
    assert_eq!(serde_json::from_str::<Value>(body).unwrap(), json!({"jobId": "sync_01HZ7G0000000000000000000A"}));
    assert_eq!(headers["content-type"], "application/json");
    assert_sas(&headers["authorization"], url, "sync-send", b"c2VuZC1rZXktZm9yLXRlc3Rz");

    // The key is rotated: Service Bus refuses the old one, the adapter reads the key again and
    // sends once more, signed with the new key.
    local.add_version("servicebus-send-key", "bmV3LXNlbmQta2V5".into()).unwrap();
    recorder.answers.lock().unwrap().push_back(azure_core_legacy::StatusCode::Unauthorized);
    q.enqueue("sync_01HZ7G0000000000000000000B").await.unwrap();
    let sent = recorder.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 3);
    assert_sas(&sent[1].2["authorization"], &sent[1].1, "sync-send", b"c2VuZC1rZXktZm9yLXRlc3Rz");
    assert_sas(&sent[2].2["authorization"], &sent[2].1, "sync-send", b"bmV3LXNlbmQta2V5");
    assert_eq!(serde_json::from_str::<Value>(&sent[2].2["brokerproperties"]).unwrap()["MessageId"], "sync_01HZ7G0000000000000000000B");

    // Service Bus down: the error reaches the caller (POST /api/sync answers 503).
    recorder.answers.lock().unwrap().push_back(azure_core_legacy::StatusCode::ServiceUnavailable);
    assert!(q.enqueue("sync_01HZ7G0000000000000000000C").await.is_err());
}
