//! The binary as the Azure Functions host sees it (issue 4): started with
//! FUNCTIONS_CUSTOMHANDLER_PORT, polled on GET /, sent forwarded API requests and trigger
//! invocations in the host's exact payload shapes, and refusing bad configuration at once.
mod common;
use common::Server;
use serde_json::{json, Value};
use std::process::Command;

#[tokio::test]
async fn forwarded_api_requests_are_served_and_logged_with_trace_and_invocation_ids() {
    let port = common::free_port().to_string();
    let s = Server::start(&[("FUNCTIONS_CUSTOMHANDLER_PORT", port.as_str()), ("PORT", "1")]).await;
    assert!(!s.dir.join("secrets.json").exists() || !std::fs::read_to_string(s.dir.join("secrets.json")).unwrap().contains("local-dev-client"), "no development client under Functions");
    let (api, secret) = s.cli_client("customer.read customer.write").await;
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let r = api
        .send(
            api.req(reqwest::Method::POST, "/api/customers?x=1")
                .header("x-azure-functions-invocationid", "inv-123")
                .header("traceparent", format!("00-{trace}-b7ad6b7169203331-01"))
                .header("x-forwarded-for", "203.0.113.7:5555")
                .json(&json!({"name": "Forwarded"})),
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("x-trace-id"), Some(trace));
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let logs = s.logs();
    let line: Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["span"]["invocationId"] == "inv-123")
        .expect("a log line with the invocation id");
    assert_eq!(line["span"]["traceId"], trace);
    assert_eq!(line["status"], 201);
    // Neither the client secret nor the token reach the logs.
    assert!(!logs.contains(&secret));
    assert!(!logs.contains(&api.token));
}

#[test]
fn bad_settings_stop_start_up_with_one_message_naming_each() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::bin())
        .arg("serve")
        .env("DATA_DIR", dir.path())
        .env("PORT", "not-a-port")
        .env("STORE", "mongo")
        .env("RATE_LIMIT_PER_MINUTE", "many")
        .env("KEYVAULT_URL", "http://vault")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for name in ["PORT", "STORE", "RATE_LIMIT_PER_MINUTE", "KEYVAULT_URL"] {
        assert!(err.contains(name), "{name} missing from: {err}");
    }
    let out = Command::new(common::bin())
        .arg("serve")
        .env("DATA_DIR", dir.path())
        .env("STORE", "cosmos")
        .env("FUNCTIONS_CUSTOMHANDLER_PORT", "7071")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("COSMOS_ENDPOINT") && err.contains("KEYVAULT_URL"), "{err}");
}

/// Function folders other than the forwarded HTTP one, read from `functions/`.
fn trigger_functions() -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/functions")).unwrap() {
        let dir = entry.unwrap().path();
        let f: Value = serde_json::from_slice(&std::fs::read(dir.join("function.json")).unwrap()).unwrap();
        let is_http = f["bindings"].as_array().unwrap().iter().any(|b| b["type"] == "httpTrigger");
        if !is_http {
            names.push(dir.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    names.sort();
    names
}

#[tokio::test]
async fn every_trigger_function_has_a_handler_that_speaks_the_invocation_protocol() {
    let port = common::free_port().to_string();
    let s = Server::start(&[("FUNCTIONS_CUSTOMHANDLER_PORT", port.as_str())]).await;
    let http = reqwest::Client::new();
    let names = trigger_functions();
    assert!(names.len() >= 3, "{names:?}");
    let timer = |past_due: bool, status: Value| {
        json!({"Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": status, "IsPastDue": past_due}},
               "Metadata": {"sys": {"MethodName": "x", "UtcNow": "2026-12-04T10:00:00Z"}}})
    };
    for name in &names {
        let url = format!("{}/{name}", s.base);
        let post = |body: String| http.post(&url).header("content-type", "application/json").header("x-azure-functions-invocationid", "inv-1").body(body).send();
        // Malformed invocations: a 4xx in the error shape, never a 5xx or a hang.
        for bad in ["", "not json", "[]", "{}", r#"{"Data": 5}"#, r#"{"Data": {"timer": 5, "message": 5}}"#] {
            let r = post(bad.to_string()).await.unwrap();
            assert!(r.status().is_client_error(), "{name} {bad:?}: {}", r.status());
            let b: Value = r.json().await.unwrap();
            assert!(b["traceId"].is_string() && b["code"].is_string(), "{name} {bad:?}: {b}");
        }
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 405, "{name}");
        if name == "SyncWorker" {
            continue; // a Service Bus trigger: tests/sync.rs drives it with real job messages
        }
        // Timer invocations as the host sends them: first run (ScheduleStatus null) and past due.
        for body in [timer(false, Value::Null), timer(true, json!({"Last": "2026-12-04T09:00:00Z", "Next": "2026-12-04T09:15:00Z", "LastUpdated": "2026-12-04T09:00:00Z"}))] {
            let r = post(body.to_string()).await.unwrap();
            assert_eq!(r.status(), 200, "{name}");
            let b: Value = r.json().await.unwrap();
            assert!(b["Outputs"].is_object() && b["Logs"].is_array() && b.get("ReturnValue").is_some(), "{name}: {b}");
        }
    }
}

#[tokio::test]
async fn trigger_routes_exist_only_under_the_functions_host() {
    let s = Server::start(&[]).await;
    for name in trigger_functions() {
        let r = reqwest::Client::new().post(format!("{}/{name}", s.base)).body("{\"Data\":{}}").send().await.unwrap();
        assert_eq!(r.status(), 404, "{name} must not be reachable on a standalone server");
    }
}
