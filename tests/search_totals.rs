//! Search totals stay exact when a frequent term's count is kept by the writer (SQLite).
use chrono::Utc;
use customer360::api::customers::{new_customer_write, update_customer_write};
use customer360::domain::CustomerFields;
use customer360::store::{ListQuery, Order, SortField, Start, Store};
use futures::StreamExt;
use std::sync::Arc;

fn q(term: &str, limit: u32, start: Start) -> ListQuery {
    ListQuery { search: Some(term.into()), sort: SortField::CreatedAt, order: Order::Desc, limit, start }
}

async fn create(store: &Arc<dyn Store>, name: String, email: Option<String>) -> Result<String, customer360::store::StoreError> {
    let fields = CustomerFields { name: Some(name), email: Some(email), ..Default::default() };
    let id = customer360::ids::new_id("cstm");
    store.write_customer(new_customer_write(fields.into_new_customer(id.clone(), Utc::now()), Utc::now())).await.map(|_| id)
}

/// Counts by walking every page: the ground truth.
async fn walk(store: &Arc<dyn Store>, term: &str) -> u64 {
    let mut n = 0;
    let mut start = Start::Offset(0);
    loop {
        let page = store.list_customers(&q(term, 200, start)).await.unwrap();
        n += page.items.len() as u64;
        match page.items.last() {
            Some(last) if page.items.len() == 200 => start = Start::After(customer360::store::SortKey::of(last, SortField::CreatedAt)),
            _ => return n,
        }
    }
}

#[tokio::test]
async fn a_hot_terms_total_follows_every_committed_write() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = customer360::store::sqlite::SqliteStore::open(dir.path()).unwrap();
    let names: Vec<String> = (0..1500).map(|i| if i % 3 == 0 { format!("Ana {i}") } else { format!("Maria {i}") }).collect();
    futures::stream::iter(names.into_iter().enumerate().map(|(i, n)| {
        let store = store.clone();
        async move { create(&store, n, Some(format!("p{i}@example.com"))).await.unwrap() }
    }))
    .buffer_unordered(64)
    .collect::<Vec<_>>()
    .await;
    let first = store.list_customers(&q("maria", 10, Start::Offset(0))).await.unwrap();
    assert_eq!(first.total, 1000);
    // From here the count is kept by the writer; change things in every way that matters.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let id = create(&store, "Maria Nova".into(), Some("nova@example.com".into())).await.unwrap();
    create(&store, "Outra".into(), Some("mariahelena@example.com".into())).await.unwrap();
    assert!(create(&store, "Maria Dup".into(), Some("nova@example.com".into())).await.is_err(), "conflict");
    let c = store.get_customer(&id).await.unwrap().unwrap();
    let mut renamed = c.clone();
    renamed.name = "Renata".into();
    store.write_customer(update_customer_write(&c, renamed, Utc::now()).unwrap()).await.unwrap();
    let ana = store.list_customers(&q("ana 3", 1, Start::Offset(0))).await.unwrap().items.remove(0);
    let mut to_maria = ana.clone();
    to_maria.name = "Ana Maria".into();
    store.write_customer(update_customer_write(&ana, to_maria, Utc::now()).unwrap()).await.unwrap();
    let total = store.list_customers(&q("maria", 10, Start::Offset(0))).await.unwrap().total;
    assert_eq!(total, 1002, "1000 + mariahelena + Ana Maria; Maria Nova renamed away; the conflict counted nothing");
    assert_eq!(walk(&store, "maria").await, total, "keyset pages visit every match once");
    assert_eq!(store.list_customers(&q("maria", 10, Start::Offset(0))).await.unwrap().items.len(), 10);
}

