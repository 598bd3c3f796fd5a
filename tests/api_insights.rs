//! `GET /api/insights` over HTTP: shape, defaults and refused ranges (issue 8).
mod common;
use chrono::{Duration, Utc};
use common::Server;
use serde_json::json;

#[tokio::test]
async fn insights_default_to_the_last_30_days_in_the_spec_shape() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    api.create(json!({"name": "Maria", "engagementScore": 80})).await;
    let id = api.create(json!({"name": "Ana"})).await;
    assert_eq!(api.patch(&format!("/api/customers/{id}"), json!({"lifecycleStage": "Customer"})).await.status, 200);
    let r = api.get("/api/insights").await;
    assert_eq!(r.status, 200);
    let b = &r.body;
    let today = Utc::now().date_naive();
    assert_eq!(b["period"], json!({"from": (today - Duration::days(29)).to_string(), "to": today.to_string(), "groupBy": "day"}));
    assert_eq!(b["kpis"]["totalLeads"], 2);
    assert_eq!(b["kpis"]["conversionRate"], 0.5);
    assert_eq!(b["kpis"]["avgSalesCycleDays"], 0.0);
    assert_eq!(b["engagementDistribution"][0], json!({"scoreRange": "0-25", "count": 1}));
    assert_eq!(b["engagementDistribution"][3], json!({"scoreRange": "76-100", "count": 1}));
    let trend = b["trend"].as_array().unwrap();
    assert_eq!(trend.len(), 30);
    assert_eq!(trend[29], json!({"date": today.to_string(), "newLeads": 2, "opportunities": 0, "closedWon": 1}));
}

#[tokio::test]
async fn bad_ranges_are_400() {
    let s = Server::start(&[]).await;
    let api = s.client().await;
    for q in [
        "from=2025-10-15&to=2025-10-01",
        "from=2023-01-01&to=2025-12-31",
        "from=2025-13-01",
        "from=2025-1-1",
        "to=yesterday",
        "groupBy=year",
    ] {
        let r = api.get(&format!("/api/insights?{q}")).await;
        assert_eq!((r.status, r.error_code()), (400, "VALIDATION_ERROR"), "{q}");
    }
    let ok = api.get("/api/insights?from=2024-01-01&to=2025-12-31&groupBy=month").await;
    assert_eq!(ok.status, 200, "exactly two years is allowed");
    assert_eq!(ok.body["trend"].as_array().unwrap().len(), 24);
}
