#![cfg(feature = "cosmos-emulator")]
use azure_data_cosmos::{AccountReference, CosmosClient, CosmosRuntimeBuilder, FeedScope, Query, RoutingStrategy, options::{Region, QueryOptions}, models::ContainerProperties};
use azure_data_cosmos_driver::in_memory_emulator::{InMemoryEmulatorHttpClient, VirtualAccountConfig, VirtualRegion};
use futures::StreamExt;
use std::sync::Arc;

#[tokio::test]
async fn probe() {
    let url = "https://eastus.emulator.local";
    let config = VirtualAccountConfig::new(vec![VirtualRegion::new("East US", azure_core::http::Url::parse(url).unwrap())]).unwrap();
    let emulator = Arc::new(InMemoryEmulatorHttpClient::new(config));
    let account = AccountReference::with_authentication_key(url.parse().unwrap(), azure_core::credentials::Secret::new("dGVzdGtleQ=="));
    let client = CosmosClient::builder()
        .with_runtime(CosmosRuntimeBuilder::from(emulator.runtime_builder()).build().await.unwrap())
        .build(account, RoutingStrategy::ProximityTo(Region::EAST_US))
        .await
        .unwrap();
    client.create_database("db", None).await.unwrap();
    let db = client.database_client("db");
    let props: ContainerProperties = serde_json::from_value(serde_json::json!({
        "id": "c", "partitionKey": {"paths": ["/id"], "kind": "Hash", "version": 2},
        "indexingPolicy": {"automatic": true, "indexingMode": "consistent", "includedPaths": [{"path": "/*"}],
          "compositeIndexes": [[{"path": "/n", "order": "ascending"}, {"path": "/id", "order": "ascending"}]]},
        "defaultTtl": -1
    })).unwrap();
    let r = db.create_container(props, None).await.unwrap();
    println!("create container RU {:?}", r.headers().request_charge());
    let c = db.container_client("c", None).await.unwrap();
    for i in 0..50 {
        let id = format!("id{i:03}");
        let r = c.create_item(id.clone(), &id, serde_json::json!({"id": id, "n": i % 7, "name": format!("Name {i}")}), None).await.unwrap();
        if i == 0 { println!("create RU {:?} etag {:?}", r.headers().request_charge(), r.headers().etag()); }
    }
    let r = c.read_item("id001", "id001", None).await.unwrap();
    println!("read RU {:?}", r.headers().request_charge());
    // cross-partition order by with offset
    let q = Query::from("SELECT c.id, c.n FROM c ORDER BY c.n DESC, c.id DESC OFFSET 5 LIMIT 4");
    let mut pages = c.query_items::<serde_json::Value>(q, FeedScope::full_container(), None).await.unwrap().into_pages();
    while let Some(p) = pages.next().await {
        let p = p.unwrap();
        println!("page {:?} RU {:?}", p.items(), p.headers().request_charge());
    }
    // ranges + count
    let ranges = c.read_feed_ranges(None).await.unwrap();
    println!("ranges {}", ranges.len());
    let mut total = 0;
    for r in ranges {
        let q = Query::from("SELECT VALUE COUNT(1) FROM c WHERE CONTAINS(c.name, @t)").with_parameter("@t", "1").unwrap();
        match c.query_items::<i64>(q, FeedScope::range(r.clone()), None).await {
            Ok(it) => {
                let mut pages = it.into_pages();
                while let Some(p) = pages.next().await {
                    match p { Ok(p) => { println!("range count {:?} RU {:?}", p.items(), p.headers().request_charge()); total += p.items().iter().sum::<i64>(); }
                    Err(e) => { println!("range count err {e}"); break; } }
                }
            }
            Err(e) => println!("range count plan err {e}"),
        }
    }
    println!("total {total}");
    let q = Query::from("SELECT VALUE COUNT(1) FROM c");
    match c.query_items::<i64>(q, FeedScope::full_container(), None).await {
        Ok(it) => { let v: Vec<_> = it.collect().await; println!("full count {:?}", v); }
        Err(e) => println!("full count err {e}"),
    }
    // If-Match
    let r = c.read_item("id002", "id002", None).await.unwrap();
    let etag = r.headers().etag().unwrap().clone();
    let body: serde_json::Value = r.into_model().unwrap();
    println!("body {body}");
}
