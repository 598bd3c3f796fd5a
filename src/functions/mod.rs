//! The Azure Functions custom-handler invocation protocol for non-HTTP triggers: the host
//! POSTs `/<FunctionName>` with `{Data, Metadata}` and reads `{Outputs, Logs, ReturnValue}`.
//! A non-2xx answer fails the invocation (Service Bus then retries and dead-letters).
use crate::api::{json_response, Req, Resp};
use crate::error::{ApiError, Code, Result};
use crate::App;
use http::{Method, StatusCode};
use serde_json::{json, Value};

mod sync_worker;

/// Function names with a handler here; each has a folder under `functions/`.
pub const TRIGGERS: &[&str] = &["SyncWorker", "IncrementalSync", "WebhookDispatch"];

pub fn is_trigger(name: &str) -> bool {
    TRIGGERS.contains(&name)
}

/// The parsed invocation request.
#[derive(Debug)]
pub struct Invocation {
    pub data: serde_json::Map<String, Value>,
    pub metadata: serde_json::Map<String, Value>,
}

pub fn parse_invocation(req: &Req) -> Result<Invocation> {
    let v: Value = serde_json::from_slice(&req.body)
        .map_err(|_| ApiError::new(Code::InvalidJson, "Invocation body is not JSON", "Corpo da invocação não é JSON"))?;
    let data = v.get("Data").and_then(Value::as_object).cloned();
    let metadata = v.get("Metadata").and_then(Value::as_object).cloned().unwrap_or_default();
    match data {
        Some(data) => Ok(Invocation { data, metadata }),
        None => Err(ApiError::field("Data", "Expected an object", "Esperado um objeto")),
    }
}

/// A Service Bus body as the host passes it: an object, a JSON string, or a JSON string
/// encoded a second time.
pub fn service_bus_body(v: &Value) -> Option<Value> {
    let mut cur = v.clone();
    for _ in 0..3 {
        match cur {
            Value::Object(_) => return Some(cur),
            Value::String(s) => cur = serde_json::from_str(&s).ok()?,
            _ => return None,
        }
    }
    None
}

pub fn invocation_response(logs: Vec<String>, return_value: Value) -> Resp {
    json_response(StatusCode::OK, &json!({ "Outputs": {}, "Logs": logs, "ReturnValue": return_value }))
}

pub async fn invoke(app: &App, req: &Req, name: &str) -> Result<Resp> {
    if req.method != Method::POST {
        return Err(crate::api::method_not_allowed("POST"));
    }
    let inv = parse_invocation(req)?;
    // A timer trigger's binding is `{Schedule, ScheduleStatus, IsPastDue}`.
    if inv.data.get("timer").is_some_and(|t| !t.is_object()) {
        return Err(ApiError::field("Data.timer", "Expected an object", "Esperado um objeto"));
    }
    match name {
        "SyncWorker" => sync_worker::run(app, &inv).await,
        "IncrementalSync" => sync_worker::incremental(app, &inv).await,
        "WebhookDispatch" => crate::webhooks::invoke_dispatch(app).await,
        _ => Err(ApiError::not_found(name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_bus_bodies_in_all_three_encodings() {
        let obj = json!({"jobId": "sync_1"});
        let once = Value::String(obj.to_string());
        let twice = Value::String(once.to_string());
        for v in [&obj, &once, &twice] {
            assert_eq!(service_bus_body(v), Some(obj.clone()));
        }
        assert_eq!(service_bus_body(&json!(5)), None);
    }
}
