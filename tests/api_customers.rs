//! The customers resource over HTTP against the real binary (issue 2).
mod common;
use common::{Api, Server};
use reqwest::Method;
use serde_json::{json, Value};

#[tokio::test]
async fn root_and_health_answer_at_once() {
    let s = Server::start(&[]).await;
    let http = reqwest::Client::new();
    assert_eq!(http.get(format!("{}/", s.base)).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{}/api/health", s.base)).send().await.unwrap().status(), 200);
    let ready: Value = http.get(format!("{}/api/health/ready", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn create_then_get_returns_the_full_customer_with_defaults_and_etag() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    let r = api
        .post("/api/customers", json!({"name": "João Pereira", "email": "Joao@Example.com", "phone": "+55 21 98888-7777", "tags": ["campaign-2025"], "customFields": {"utmSource": "meta_ads"}}))
        .await;
    assert_eq!(r.status, 201);
    let id = r.body["id"].as_str().unwrap();
    assert!(id.starts_with("cstm_") && id.len() == 31, "{id}");
    assert_eq!(r.header("location"), Some(format!("/api/customers/{id}").as_str()));
    let got = api.get(&format!("/api/customers/{id}")).await;
    assert_eq!(got.status, 200);
    assert!(got.header("etag").is_some_and(|e| e.starts_with('"')));
    let c = &got.body;
    assert_eq!(c["email"], "joao@example.com", "stored lowercased");
    assert_eq!(c["lifecycleStage"], "Lead");
    assert_eq!(c["engagementScore"], 0);
    assert_eq!(c["tags"], json!(["campaign-2025"]));
    assert_eq!(c["customFields"], json!({"utmSource": "meta_ads"}));
    assert_eq!(c["createdAt"], c["updatedAt"]);
    assert!(c["createdAt"].as_str().unwrap().ends_with('Z'));
    for k in ["id", "externalId", "name", "email", "phone", "billingAddress", "lifecycleStage", "engagementScore", "tags", "customFields", "createdAt", "updatedAt"] {
        assert!(c.get(k).is_some(), "missing {k} in {c}");
    }
    assert!(c.get("convertedAt").is_none() && c.get("etag").is_none());
}

#[tokio::test]
async fn unknown_ids_get_404_in_the_error_shape() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    for path in ["/api/customers/nope", "/api/customers/cstm_01HZZZZZZZZZZZZZZZZZZZZZZZ"] {
        let r = api.get(path).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error_code(), "NOT_FOUND");
    }
    let r = api.patch("/api/customers/cstm_01HZZZZZZZZZZZZZZZZZZZZZZZ", json!({"name": "x"})).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn every_validation_rule_gets_400_with_one_detail_per_field() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    let cases = [
        (json!({}), "name"),
        (json!({"name": ""}), "name"),
        (json!({"name": "x".repeat(201)}), "name"),
        (json!({"name": 5}), "name"),
        (json!({"name": "A", "email": "not-an-email"}), "email"),
        (json!({"name": "A", "phone": "11 99999-0000"}), "phone"),
        (json!({"name": "A", "lifecycleStage": "Prospect"}), "lifecycleStage"),
        (json!({"name": "A", "engagementScore": 101}), "engagementScore"),
        (json!({"name": "A", "engagementScore": -1}), "engagementScore"),
        (json!({"name": "A", "engagementScore": 1.5}), "engagementScore"),
        (json!({"name": "A", "engagementScore": "5"}), "engagementScore"),
        (json!({"name": "A", "tags": (0..51).map(|i| format!("t{i}")).collect::<Vec<_>>()}), "tags"),
        (json!({"name": "A", "tags": ["x".repeat(65)]}), "tags"),
        (json!({"name": "A", "tags": [""]}), "tags"),
        (json!({"name": "A", "tags": "vip"}), "tags"),
        (json!({"name": "A", "customFields": {"big": "x".repeat(17 * 1024)}}), "customFields"),
        (json!({"name": "A", "customFields": []}), "customFields"),
        (json!({"name": "A", "billingAddress": {"country": "Brazil"}}), "billingAddress.country"),
        (json!({"name": "A", "billingAddress": {"planet": "Earth"}}), "billingAddress.planet"),
        (json!({"name": "A", "billingAddress": {"city": 5}}), "billingAddress.city"),
        (json!({"name": "A", "color": "blue"}), "color"),
        (json!({"name": "A", "id": "cstm_x"}), "id"),
    ];
    for (body, field) in cases {
        let r = api.post("/api/customers", body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.error_code(), "VALIDATION_ERROR");
        let details = r.body["details"].as_object().unwrap();
        assert_eq!(details.len(), 1, "{body}: {details:?}");
        assert!(details.contains_key(field), "{body}: {details:?}");
    }
    let r = api.post("/api/customers", json!({"email": "bad", "engagementScore": 300, "x": 1})).await;
    let keys: Vec<_> = r.body["details"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["email", "engagementScore", "name", "x"]);
    // Tags are deduplicated, not refused.
    let id = api.create(json!({"name": "A", "tags": ["vip", "vip", "b2b"]})).await;
    assert_eq!(api.get(&format!("/api/customers/{id}")).await.body["tags"], json!(["vip", "b2b"]));
}

#[tokio::test]
async fn malformed_requests_get_the_right_codes() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    let r = api.send(api.req(Method::POST, "/api/customers").header("content-type", "application/json").body("{\"name\":")).await;
    assert_eq!((r.status, r.error_code()), (400, "INVALID_JSON"));
    let r = api.send(api.req(Method::POST, "/api/customers").header("content-type", "text/plain").body("{}")).await;
    assert_eq!((r.status, r.error_code()), (415, "UNSUPPORTED_MEDIA_TYPE"));
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(1024 * 1024 + 10));
    let r = api.send(api.req(Method::POST, "/api/customers").header("content-type", "application/json").body(big)).await;
    assert_eq!((r.status, r.error_code()), (413, "PAYLOAD_TOO_LARGE"));
    let r = api.send(api.req(Method::DELETE, "/api/customers")).await;
    assert_eq!((r.status, r.error_code()), (405, "METHOD_NOT_ALLOWED"));
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let r = api.send(api.req(Method::PUT, "/api/customers/cstm_x")).await;
    assert_eq!(r.status, 405);
    let r = api.get("/api/nothing-here").await;
    assert_eq!((r.status, r.error_code()), (404, "NOT_FOUND"));
    let r = api.send(api.req(Method::POST, "/api/customers").json(&json!([1, 2]))).await;
    assert_eq!((r.status, r.error_code()), (400, "VALIDATION_ERROR"));
}

#[tokio::test]
async fn duplicate_email_or_external_id_is_409_with_the_existing_id() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    let id = api.create(json!({"name": "Maria", "email": "maria@example.com", "externalId": "CRM-1"})).await;
    let r = api.post("/api/customers", json!({"name": "Other", "email": "MARIA@example.com"})).await;
    assert_eq!((r.status, r.error_code()), (409, "CONFLICT"));
    assert_eq!(r.body["details"]["existingId"], id.as_str());
    assert_eq!(r.body["details"]["field"], "email");
    let r = api.post("/api/customers", json!({"name": "Other", "externalId": "crm-1"})).await;
    assert_eq!((r.status, r.body["details"]["field"].as_str()), (409, Some("externalId")));
    assert_eq!(r.body["details"]["existingId"], id.as_str());
    // Patching another customer onto a taken email is a conflict too.
    let other = api.create(json!({"name": "Other", "email": "other@example.com"})).await;
    let r = api.patch(&format!("/api/customers/{other}"), json!({"email": "maria@example.com"})).await;
    assert_eq!((r.status, r.body["details"]["existingId"].as_str()), (409, Some(id.as_str())));
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer_and_refuses_another_body() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    let post = |body: Value, key: &str| api.req(Method::POST, "/api/customers").header("idempotency-key", key).json(&body);
    let first = api.send(post(json!({"name": "Ana", "email": "ana@example.com"}), "k-1")).await;
    assert_eq!(first.status, 201);
    let again = api.send(post(json!({"name": "Ana", "email": "ana@example.com"}), "k-1")).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("location"), first.header("location"));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other = api.send(post(json!({"name": "Ana Maria"}), "k-1")).await;
    assert_eq!((other.status, other.error_code()), (422, "IDEMPOTENCY_KEY_REUSED"));
    let list = api.get("/api/customers").await;
    assert_eq!(list.body["total"], 1, "the replay created nothing");
    // Concurrent requests with one key create one customer.
    let mut handles = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        handles.push(tokio::spawn(async move {
            let rb = api.req(Method::POST, "/api/customers").header("idempotency-key", "k-race").json(&json!({"name": "Race"}));
            api.send(rb).await.body["id"].as_str().unwrap().to_string()
        }));
    }
    let mut ids = Vec::new();
    for h in handles {
        ids.push(h.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[tokio::test]
async fn patch_is_a_json_merge_patch() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    let id = api
        .create(json!({"name": "Maria", "tags": ["a", "b"], "customFields": {"keep": 1, "drop": 2}, "billingAddress": {"city": "São Paulo", "country": "BR"}}))
        .await;
    let path = format!("/api/customers/{id}");
    let r = api
        .patch(&path, json!({"lifecycleStage": "Opportunity", "tags": ["partner-referral"], "customFields": {"drop": null, "new": "x"}, "billingAddress": {"zip": "01234-567"}, "phone": "+5511999990000"}))
        .await;
    assert_eq!((r.status, &r.body), (200, &json!({"updated": true})));
    let c = api.get(&path).await.body;
    assert_eq!(c["lifecycleStage"], "Opportunity");
    assert_eq!(c["tags"], json!(["partner-referral"]));
    assert_eq!(c["customFields"], json!({"keep": 1, "new": "x"}));
    assert_eq!(c["billingAddress"], json!({"city": "São Paulo", "country": "BR", "zip": "01234-567"}));
    assert_eq!(c["name"], "Maria");
    assert_ne!(c["updatedAt"], c["createdAt"]);
    // null clears a nullable field; required ones cannot be cleared.
    assert_eq!(api.patch(&path, json!({"phone": null})).await.status, 200);
    assert_eq!(api.get(&path).await.body["phone"], Value::Null);
    let r = api.patch(&path, json!({"name": null})).await;
    assert_eq!((r.status, r.error_code()), (400, "VALIDATION_ERROR"));
    // A patch that changes nothing writes nothing.
    let before = api.get(&path).await;
    let r = api.patch(&path, json!({"name": "Maria"})).await;
    assert_eq!(r.body, json!({"updated": false}));
    assert_eq!(api.get(&path).await.header("etag"), before.header("etag"));
    // merge-patch content type is accepted.
    let r = api
        .send(api.req(Method::PATCH, &path).header("content-type", "application/merge-patch+json").body("{\"engagementScore\":80}"))
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn if_match_with_a_stale_etag_is_412() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    let id = api.create(json!({"name": "Maria"})).await;
    let path = format!("/api/customers/{id}");
    let etag = api.get(&path).await.header("etag").unwrap().to_string();
    let ok = api.send(api.req(Method::PATCH, &path).header("if-match", &etag).json(&json!({"engagementScore": 10}))).await;
    assert_eq!(ok.status, 200);
    let new_etag = ok.header("etag").unwrap().to_string();
    assert_ne!(new_etag, etag);
    let stale = api.send(api.req(Method::PATCH, &path).header("if-match", &etag).json(&json!({"engagementScore": 20}))).await;
    assert_eq!((stale.status, stale.error_code()), (412, "PRECONDITION_FAILED"));
    assert_eq!(api.get(&path).await.body["engagementScore"], 10);
    let nm = api.send(api.req(Method::GET, &path).header("if-none-match", &new_etag)).await;
    assert_eq!(nm.status, 304);
}

async fn names(api: &Api, q: &str) -> (Value, Vec<String>) {
    let r = api.get(&format!("/api/customers?{q}")).await;
    assert_eq!(r.status, 200, "{q}: {}", r.body);
    let names = r.body["data"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    (r.body, names)
}

#[tokio::test]
async fn list_pages_sorts_searches_and_continues_by_cursor() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    let people = ["Maria Souza", "ana lima", "Bruno Maria", "Carla Dias", "Mário Neto", "zeca", "Elisa", "Fábio"];
    for (i, n) in people.iter().enumerate() {
        api.create(json!({"name": n, "email": format!("p{i}@example.com"), "externalId": format!("EXT-{i:03}")})).await;
    }
    // Defaults: newest first, page 1, pageSize 50.
    let (body, got) = names(&api, "").await;
    assert_eq!((body["page"].as_u64(), body["pageSize"].as_u64(), body["total"].as_u64(), body["totalPages"].as_u64()), (Some(1), Some(50), Some(8), Some(1)));
    assert_eq!(got, people.iter().rev().map(|s| s.to_string()).collect::<Vec<_>>());
    assert_eq!(body["nextCursor"], Value::Null);
    let keys: Vec<_> = body["data"][0].as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["createdAt", "email", "engagementScore", "externalId", "id", "lifecycleStage", "name", "phone", "updatedAt"]);
    // Sort by name, case-insensitively, both orders.
    let (_, asc) = names(&api, "sort=name&order=asc").await;
    assert_eq!(asc, ["ana lima", "Bruno Maria", "Carla Dias", "Elisa", "Fábio", "Maria Souza", "Mário Neto", "zeca"]);
    let (_, desc) = names(&api, "sort=name&order=desc").await;
    assert_eq!(desc, asc.iter().rev().cloned().collect::<Vec<_>>());
    // Pages, and a page past the end.
    let (b2, p2) = names(&api, "sort=name&order=asc&page=2&pageSize=3").await;
    assert_eq!((p2, b2["totalPages"].as_u64()), (vec!["Elisa".to_string(), "Fábio".into(), "Maria Souza".into()], Some(3)));
    let (b9, p9) = names(&api, "page=9&pageSize=3").await;
    assert!(p9.is_empty());
    assert_eq!((b9["total"].as_u64(), b9["totalPages"].as_u64(), &b9["nextCursor"]), (Some(8), Some(3), &Value::Null));
    // Cursor paging visits everything once, in the same order as offset paging.
    let mut seen = Vec::new();
    let (mut b, mut page) = names(&api, "sort=name&order=asc&pageSize=3").await;
    seen.extend(page);
    while let Some(c) = b["nextCursor"].as_str().map(str::to_string) {
        (b, page) = names(&api, &format!("cursor={c}&pageSize=3")).await;
        seen.extend(page);
    }
    assert_eq!(seen, asc);
    // Search: case-insensitive substring of name, email or externalId; short terms too.
    let (sb, found) = names(&api, "search=MARIA&sort=name&order=asc").await;
    assert_eq!((found, sb["total"].as_u64()), (vec!["Bruno Maria".to_string(), "Maria Souza".into()], Some(2)));
    assert_eq!(names(&api, "search=p3@EXAMPLE").await.1, ["Carla Dias"]);
    assert_eq!(names(&api, "search=ext-005").await.1, ["zeca"]);
    assert_eq!(names(&api, "search=ze").await.1, ["zeca"]);
    assert_eq!(names(&api, "search=nobody-here").await.0["total"], 0);
    // Bad parameters.
    for q in ["page=0", "pageSize=201", "pageSize=0", "sort=email", "order=up", "page=x", "cursor=garbage"] {
        let r = api.get(&format!("/api/customers?{q}")).await;
        assert_eq!((r.status, r.error_code()), (400, "VALIDATION_ERROR"), "{q}");
    }
    let c = names(&api, "pageSize=3").await.0["nextCursor"].as_str().unwrap().to_string();
    let r = api.get(&format!("/api/customers?cursor={c}&sort=name")).await;
    assert_eq!(r.status, 400, "a cursor carries its own sort");
}

#[tokio::test]
async fn errors_carry_the_trace_id_and_speak_portuguese_when_asked() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = api
        .send(
            api.req(Method::POST, "/api/customers")
                .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
                .header("accept-language", "pt-BR,pt;q=0.9")
                .json(&json!({"name": "A", "email": "x"})),
        )
        .await;
    assert_eq!(r.body["traceId"], trace);
    assert_eq!(r.header("x-trace-id"), Some(trace));
    assert_eq!(r.body["message"], "Campo 'email' inválido");
    assert_eq!(r.body["details"]["email"], "Formato inválido");
    let en = api.post("/api/customers", json!({"name": "A", "email": "x"})).await;
    assert_eq!(en.body["message"], "Field 'email' is invalid");
    assert_eq!(en.body["traceId"].as_str(), en.header("x-trace-id"));
    assert_eq!(en.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(en.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn acknowledged_creates_survive_sigkill() {
    if !common::store_survives_restart() {
        return;
    }
    let mut s = Server::start(&[]).await;
    let api = s.client().await;
    let mut handles = Vec::new();
    for i in 0..200 {
        let api = api.clone();
        handles.push(tokio::spawn(async move {
            let r = api.post("/api/customers", json!({"name": format!("Durable {i}"), "email": format!("d{i}@example.com")})).await;
            (r.status == 201).then(|| r.body["id"].as_str().unwrap().to_string())
        }));
    }
    let mut acked = Vec::new();
    for h in handles {
        if let Some(id) = h.await.unwrap() {
            acked.push(id);
        }
    }
    assert_eq!(acked.len(), 200);
    s.kill();
    s.restart().await;
    let api = s.client().await;
    for id in &acked {
        assert_eq!(api.get(&format!("/api/customers/{id}")).await.status, 200, "{id} lost");
    }
    assert_eq!(api.get("/api/customers").await.body["total"], 200);
}

#[tokio::test]
async fn sigterm_drains_and_exits_cleanly() {
    if !common::store_survives_restart() {
        return;
    }
    let mut s = Server::start(&[]).await;
    let api = s.client().await;
    let id = api.create(json!({"name": "Before shutdown"})).await;
    let pid = s.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(started.elapsed().as_secs() < 10, "did not exit on SIGTERM");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    s.restart().await;
    assert_eq!(s.client().await.get(&format!("/api/customers/{id}")).await.status, 200);
}

#[tokio::test]
async fn functions_port_wins_over_port() {
    let fport = common::free_port().to_string();
    let s = Server::start(&[("FUNCTIONS_CUSTOMHANDLER_PORT", fport.as_str())]).await;
    assert_eq!(s.port.to_string(), fport);
    let r = reqwest::get(format!("{}/", s.base)).await.unwrap();
    assert_eq!(r.status(), 200);
}
