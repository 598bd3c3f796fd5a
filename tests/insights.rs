//! Insights on a hand-built data set with known answers, through every store (issue 8).
use chrono::{DateTime, NaiveDate, Utc};
use customer360::api::customers::{new_customer_write, update_customer_write};
use customer360::api::insights::{compute, GroupBy};
use customer360::domain::{CustomerFields, LifecycleStage};
use customer360::store::Store;
use serde_json::{json, Value};
use std::sync::Arc;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

async fn create(store: &dyn Store, id: &str, at: &str, score: u8) {
    let fields = CustomerFields { name: Some(id.to_string()), engagement_score: Some(score), ..Default::default() };
    let id = format!("cstm_{}", ulid::Ulid::from_parts(t(at).timestamp_millis() as u64, id.len() as u128 * 7919 + id.as_bytes()[0] as u128));
    store.write_customer(new_customer_write(fields.into_new_customer(id, t(at)), t(at))).await.unwrap();
}

async fn change(store: &dyn Store, name: &str, at: &str, stage: Option<LifecycleStage>, score: Option<u8>) {
    let page = store
        .list_customers(&customer360::store::ListQuery {
            search: Some(name.to_lowercase()),
            sort: customer360::store::SortField::Name,
            order: customer360::store::Order::Asc,
            limit: 10,
            start: customer360::store::Start::Offset(0),
        })
        .await
        .unwrap();
    let old = page.items.into_iter().find(|c| c.name == name).unwrap();
    let mut new = old.clone();
    if let Some(s) = stage {
        new.lifecycle_stage = s;
    }
    if let Some(s) = score {
        new.engagement_score = s;
    }
    store.write_customer(update_customer_write(&old, new, t(at)).unwrap()).await.unwrap();
}

/// The data set. Names are long enough for the trigram search the helper uses to find them.
async fn load(store: &dyn Store) {
    use LifecycleStage::*;
    // Anna: Lead -> Opportunity on the leap day -> Customer across the month boundary -> Churn.
    create(store, "Anna", "2024-02-28T10:00:00Z", 20).await;
    change(store, "Anna", "2024-02-29T09:00:00Z", Some(Opportunity), None).await;
    change(store, "Anna", "2024-03-01T10:00:00Z", Some(Customer), None).await;
    change(store, "Anna", "2024-03-10T10:00:00Z", Some(Churn), None).await;
    // Bruno: skips Opportunity, converts on a Monday; score moves 51-75 -> 76-100.
    create(store, "Bruno", "2024-02-29T12:00:00Z", 60).await;
    change(store, "Bruno", "2024-03-04T12:00:00Z", Some(Customer), None).await;
    change(store, "Bruno", "2024-03-05T08:00:00Z", None, Some(80)).await;
    // Carla: created on a Sunday, score crosses the 25/26 bucket boundary, stays a Lead.
    create(store, "Carla", "2024-03-03T18:00:00Z", 25).await;
    change(store, "Carla", "2024-03-05T08:00:00Z", None, Some(26)).await;
    // Diego: created in the last minute of March, Opportunity in the first minute of April.
    create(store, "Diego", "2024-03-31T23:59:00Z", 100).await;
    change(store, "Diego", "2024-04-01T00:00:00Z", Some(Opportunity), None).await;
    // Elisa: created and converted around New Year, outside most ranges.
    create(store, "Elisa", "2023-12-31T22:00:00Z", 50).await;
    change(store, "Elisa", "2024-01-02T10:00:00Z", Some(Customer), None).await;
}

async fn insights(store: &dyn Store, from: &str, to: &str, g: GroupBy) -> Value {
    let rows = store.rollups(d(from), d(to)).await.unwrap();
    compute(d(from), d(to), g, &rows)
}

fn dist(a: i64, b: i64, c: i64, e: i64) -> Value {
    json!([
        {"scoreRange": "0-25", "count": a}, {"scoreRange": "26-50", "count": b},
        {"scoreRange": "51-75", "count": c}, {"scoreRange": "76-100", "count": e},
    ])
}

async fn known_answers(store: Arc<dyn Store>) -> Vec<Value> {
    load(store.as_ref()).await;
    let mut all = Vec::new();

    let weeks = insights(store.as_ref(), "2024-02-26", "2024-03-31", GroupBy::Week).await;
    assert_eq!(weeks["period"], json!({"from": "2024-02-26", "to": "2024-03-31", "groupBy": "week"}));
    assert_eq!(weeks["kpis"], json!({"totalLeads": 4, "conversionRate": 0.5, "avgSalesCycleDays": 3.0}));
    assert_eq!(weeks["engagementDistribution"], dist(1, 1, 0, 2));
    assert_eq!(
        weeks["trend"],
        json!([
            {"date": "2024-02-26", "newLeads": 3, "opportunities": 1, "closedWon": 1},
            {"date": "2024-03-04", "newLeads": 0, "opportunities": 0, "closedWon": 1},
            {"date": "2024-03-11", "newLeads": 0, "opportunities": 0, "closedWon": 0},
            {"date": "2024-03-18", "newLeads": 0, "opportunities": 0, "closedWon": 0},
            {"date": "2024-03-25", "newLeads": 1, "opportunities": 0, "closedWon": 0},
        ])
    );
    all.push(weeks);

    let leap = insights(store.as_ref(), "2024-02-28", "2024-03-01", GroupBy::Day).await;
    assert_eq!(leap["kpis"], json!({"totalLeads": 2, "conversionRate": 1.0, "avgSalesCycleDays": 3.0}));
    assert_eq!(leap["engagementDistribution"], dist(1, 0, 0, 1));
    assert_eq!(
        leap["trend"],
        json!([
            {"date": "2024-02-28", "newLeads": 1, "opportunities": 0, "closedWon": 0},
            {"date": "2024-02-29", "newLeads": 1, "opportunities": 1, "closedWon": 0},
            {"date": "2024-03-01", "newLeads": 0, "opportunities": 0, "closedWon": 1},
        ])
    );
    all.push(leap);

    let months = insights(store.as_ref(), "2023-12-15", "2024-04-30", GroupBy::Month).await;
    assert_eq!(months["kpis"], json!({"totalLeads": 5, "conversionRate": 0.6, "avgSalesCycleDays": 2.5}));
    assert_eq!(months["engagementDistribution"], dist(1, 2, 0, 2));
    let trend: Vec<(String, i64, i64, i64)> = months["trend"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["date"].as_str().unwrap().into(), r["newLeads"].as_i64().unwrap(), r["opportunities"].as_i64().unwrap(), r["closedWon"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        trend,
        vec![
            ("2023-12-15".into(), 1, 0, 0),
            ("2024-01-01".into(), 0, 0, 1),
            ("2024-02-01".into(), 2, 1, 0),
            ("2024-03-01".into(), 2, 0, 2),
            ("2024-04-01".into(), 0, 1, 0),
        ]
    );
    all.push(months);

    let empty = insights(store.as_ref(), "2025-01-01", "2025-01-31", GroupBy::Day).await;
    assert_eq!(empty["kpis"], json!({"totalLeads": 0, "conversionRate": 0.0, "avgSalesCycleDays": null}));
    assert_eq!(empty["engagementDistribution"], dist(0, 0, 0, 0));
    assert_eq!(empty["trend"].as_array().unwrap().len(), 31);
    assert!(empty["trend"].as_array().unwrap().iter().all(|r| r["newLeads"] == 0 && r["closedWon"] == 0));
    all.push(empty);
    all
}

#[tokio::test]
async fn insights_known_answers_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let store = customer360::store::sqlite::SqliteStore::open(dir.path()).unwrap();
    known_answers(store).await;
}
