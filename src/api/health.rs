//! Liveness and readiness.
use super::{json_response, method_not_allowed, Req, Resp};
use crate::error::{ApiError, Result};
use crate::App;
use http::{Method, StatusCode};
use serde_json::json;

pub async fn handle(app: &App, req: &Req, rest: &[&str]) -> Result<Resp> {
    if req.method != Method::GET && req.method != Method::HEAD {
        return Err(method_not_allowed("GET, HEAD"));
    }
    match rest {
        [] => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        ["ready"] => match app.store.ready().await {
            Ok(()) => Ok(json_response(StatusCode::OK, &json!({"status": "ready"}))),
            Err(e) => Err(ApiError::unavailable(e)),
        },
        _ => Err(ApiError::not_found("Route")),
    }
}
