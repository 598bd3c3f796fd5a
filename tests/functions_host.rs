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
