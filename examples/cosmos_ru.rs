//! Measures the request charge (RU) of each store call on the in-process Cosmos emulator over a
//! seeded data set. Numbers go to docs/cosmos.md.
//!
//! `cargo run --features cosmos-emulator --example cosmos_ru -- 10000`
use chrono::{Duration, TimeZone, Utc};
use customer360::api::customers::update_customer_write;
use customer360::domain::LifecycleStage;
use customer360::store::cosmos::CosmosStore;
use customer360::store::{ListQuery, Order, SortField, SortKey, Start, Store};
use futures::StreamExt;
use rand::{rngs::StdRng, SeedableRng};
use std::sync::Arc;
use std::time::Instant;

#[tokio::main]
async fn main() {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let store = CosmosStore::open_emulator("customer360").await.expect("emulator");
    let s: Arc<dyn Store> = store.clone();
    let until = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let writes: Vec<_> = (0..n).map(|i| customer360::seed::synthetic_anytime(&mut rng, i, until)).collect();
    let ids: Vec<String> = writes.iter().map(|w| w.customer.id.clone()).collect();
    let started = Instant::now();
    let before = store.request_charge_total();
    let mut results = futures::stream::iter(writes.into_iter().map(|w| {
        let s = s.clone();
        async move { s.write_customer(w).await }
    }))
    .buffer_unordered(32);
    while let Some(r) = results.next().await {
        r.expect("seed write");
    }
    let seeded = store.request_charge_total() - before;
    println!("seeded {n} customers in {:.1} s, {:.0} RU ({:.1} RU per create)", started.elapsed().as_secs_f64(), seeded, seeded / n as f64);

    if std::env::var("COSMOS_RU_TRACE").is_ok() {
        // Each call's `ru` as a JSON line (the store logs them at debug under target `cosmos`).
        let _ = tracing_subscriber::fmt().json().with_env_filter("cosmos=debug").with_writer(std::io::stderr).try_init();
    }
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    macro_rules! measure {
        ($label:expr, $e:expr) => {{
            let r0 = store.request_charge_total();
            let t = Instant::now();
            let out = $e;
            rows.push(($label.to_string(), store.request_charge_total() - r0, t.elapsed().as_secs_f64() * 1000.0));
            out
        }};
    }
    let id = &ids[(n / 2) as usize];
    let c = measure!("get customer (point read)", s.get_customer(id).await.unwrap().unwrap());
    measure!("find by externalId (2 point reads)", s.find_customer_by_external_id(c.external_id.as_deref().unwrap()).await.unwrap().unwrap());
    let mut new_rng = StdRng::seed_from_u64(99);
    let mut w = customer360::seed::synthetic_anytime(&mut new_rng, n + 1, until);
    w.events.push(customer360::api::customers::event("customer.created", until, serde_json::json!({"id": w.customer.id})));
    measure!("create customer (email+externalId, 1 event, rollups)", s.write_customer(w).await.unwrap());
    let mut renamed = c.clone();
    renamed.name = format!("{} Jr", c.name);
    let uw = update_customer_write(&c, renamed, until).unwrap();
    measure!("patch name (If-Match, 1 event)", s.write_customer(uw).await.unwrap());
    let c2 = s.get_customer(id).await.unwrap().unwrap();
    let mut staged = c2.clone();
    staged.lifecycle_stage = if c2.lifecycle_stage == LifecycleStage::Customer { LifecycleStage::Churn } else { LifecycleStage::Customer };
    staged.email = Some(format!("changed.{}", c2.email.clone().unwrap_or_default()));
    let uw = update_customer_write(&c2, staged, until).unwrap();
    measure!("patch stage + email (rollups, unique swap)", s.write_customer(uw).await.unwrap());
    let q = |search: Option<&str>, sort, order, start| ListQuery { search: search.map(str::to_string), sort, order, limit: 20, start };
    let p1 = measure!("list page 1, createdAt desc, limit 20 (+ total)", s.list_customers(&q(None, SortField::CreatedAt, Order::Desc, Start::Offset(0))).await.unwrap());
    assert_eq!(p1.total, n + 1);
    let last = p1.items.last().unwrap();
    measure!("list page 2 by keyset cursor", s.list_customers(&q(None, SortField::CreatedAt, Order::Desc, Start::After(SortKey::of(last, SortField::CreatedAt)))).await.unwrap());
    measure!("list page 1, name asc", s.list_customers(&q(None, SortField::Name, Order::Asc, Start::Offset(0))).await.unwrap());
    measure!("list offset 1000 (page 51)", s.list_customers(&q(None, SortField::CreatedAt, Order::Desc, Start::Offset(1000))).await.unwrap());
    let common = measure!("search \"silva\" page 1 (+ exact total)", s.list_customers(&q(Some("silva"), SortField::Name, Order::Asc, Start::Offset(0))).await.unwrap());
    let rare = measure!("search \"crm-00012\" page 1 (+ exact total)", s.list_customers(&q(Some("crm-00012"), SortField::Name, Order::Asc, Start::Offset(0))).await.unwrap());
    let d = until.date_naive();
    let r30 = measure!("insights rollups, 30 days", s.rollups(d - Duration::days(30), d).await.unwrap());
    let r365 = measure!("insights rollups, 365 days", s.rollups(d - Duration::days(365), d).await.unwrap());
    measure!("ready()", s.ready().await.unwrap());
    println!("search silva: {} matches; crm-00012: {} matches; rollup rows 30d {} / 365d {}", common.total, rare.total, r30.len(), r365.len());
    println!("| call | RU | ms (emulator, debug build) |\n|---|---:|---:|");
    for (label, ru, ms) in rows {
        println!("| {label} | {ru:.2} | {ms:.1} |");
    }
}
