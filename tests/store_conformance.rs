//! One storage suite, run against every adapter: SQLite (a temp dir) and, with the
//! `cosmos-emulator` feature, Cosmos DB on azure_data_cosmos's in-process emulator.
//! Every check compares the store's answer with an expectation computed here, so both
//! adapters are held to the same observable answers.
//!
//! Run: `cargo test --features cosmos-emulator --test store_conformance`
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use customer360::api::customers::{event, new_customer_write, update_customer_write};
use customer360::domain::{Customer, LifecycleStage, Metric};
use customer360::store::{
    Claim, Client, CustomerWrite, IdempotencyRecord, JobStatus, ListQuery, Opportunity, OpportunityQuery,
    OpportunityStage, OpportunityWrite, Order, SortField, SortKey, Start, Store, StoreError, SummaryPage, SyncEntity, SyncJob, SyncMode,
    WriteKind,
};
use serde_json::Map;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A store and whatever keeps it alive (the temp dir).
struct Backend {
    store: Arc<dyn Store>,
    _keep: Option<tempfile::TempDir>,
}

async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let store = customer360::store::sqlite::SqliteStore::open(dir.path()).unwrap();
    Backend { store, _keep: Some(dir) }
}

#[cfg(feature = "cosmos-emulator")]
async fn cosmos() -> Backend {
    let store = customer360::store::cosmos::CosmosStore::open_emulator("conformance").await.unwrap();
    Backend { store, _keep: None }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 9, 0, 0).unwrap()
}

fn customer(n: u32, name: &str, email: Option<&str>, ext: Option<&str>, at: DateTime<Utc>) -> Customer {
    Customer {
        id: format!("cstm_{:026}", n),
        external_id: ext.map(str::to_string),
        name: name.to_string(),
        email: email.map(str::to_string),
        phone: None,
        billing_address: None,
        lifecycle_stage: LifecycleStage::Lead,
        engagement_score: (n * 7 % 101) as u8,
        tags: vec![format!("t{}", n % 3)],
        custom_fields: Map::new(),
        created_at: at,
        updated_at: at,
        converted_at: None,
        etag: String::new(),
    }
}

async fn create(s: &dyn Store, c: Customer) -> Result<(Customer, CustomerWrite), StoreError> {
    let w = new_customer_write(c, t0());
    let at = w.customer.created_at;
    let w = CustomerWrite { events: vec![event("customer.created", at, serde_json::json!({"id": w.customer.id}))], ..w };
    let etag = s.write_customer(w.clone()).await?;
    let got = s.get_customer(&w.customer.id).await.unwrap().expect("created customer reads back");
    assert_eq!(got.etag, etag, "the etag returned by the write is the stored one");
    Ok((got, w))
}

async fn update(s: &dyn Store, old: &Customer, f: impl FnOnce(&mut Customer), at: DateTime<Utc>) -> Result<(Customer, CustomerWrite), StoreError> {
    let mut new = old.clone();
    f(&mut new);
    let w = update_customer_write(old, new, at).expect("a change");
    let etag = s.write_customer(w.clone()).await?;
    let got = s.get_customer(&old.id).await.unwrap().unwrap();
    assert_eq!(got.etag, etag);
    Ok((got, w))
}

fn same_data(a: &Customer, b: &Customer) {
    let strip = |c: &Customer| Customer { etag: String::new(), ..c.clone() };
    assert_eq!(strip(a), strip(b));
}

// ---------------------------------------------------------------------------------------------

async fn create_get_find(s: Arc<dyn Store>) {
    let s = s.as_ref();
    s.ready().await.unwrap();
    assert_eq!(s.get_customer("cstm_missing").await.unwrap(), None);
    let c = customer(1, "Maria Silva", Some("maria@example.com"), Some("CRM-001"), t0());
    let (got, w) = create(s, c.clone()).await.unwrap();
    same_data(&got, &w.customer);
    assert!(!got.etag.is_empty());
    // Opaque, and safe to put between the quotes of an ETag header.
    assert!(got.etag.chars().all(|ch| ch.is_ascii_graphic() && ch != '"' && ch != ','), "{:?}", got.etag);
    let found = s.find_customer_by_external_id("crm-001").await.unwrap().expect("found case-insensitively");
    assert_eq!(found.id, c.id);
    assert_eq!(found.etag, got.etag);
    assert!(s.find_customer_by_external_id("CRM-002").await.unwrap().is_none());
    let page = s.list_customers(&list(None, SortField::CreatedAt, Order::Desc, 10, Start::Offset(0))).await.unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.items.len(), 1);
    same_data(&page.items[0], &got);
    assert_eq!(page.items[0].etag, got.etag);
}

async fn unique_conflicts(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let (a, _) = create(s, customer(1, "Ana", Some("ana@example.com"), Some("EXT-A"), t0())).await.unwrap();
    // Same email.
    let e = create(s, customer(2, "Other", Some("ana@example.com"), Some("EXT-B"), t0())).await.unwrap_err();
    assert_eq!(e, StoreError::Conflict { field: "email", existing_id: a.id.clone() });
    // Same externalId, other case.
    let e = create(s, customer(3, "Other", Some("b@example.com"), Some("ext-a"), t0())).await.unwrap_err();
    assert_eq!(e, StoreError::Conflict { field: "externalId", existing_id: a.id.clone() });
    // Both taken, by different customers: email is reported.
    let (x, _) = create(s, customer(7, "Xu", Some("x@example.com"), Some("EXT-X"), t0())).await.unwrap();
    let e = create(s, customer(8, "Both", Some("x@example.com"), Some("ext-a"), t0())).await.unwrap_err();
    assert_eq!(e, StoreError::Conflict { field: "email", existing_id: x.id.clone() });
    let e = create(s, customer(8, "Both", Some("ana@example.com"), Some("ext-x"), t0())).await.unwrap_err();
    assert_eq!(e, StoreError::Conflict { field: "email", existing_id: a.id.clone() });
    // The failed writes left nothing behind: their other values are free, and they do not count.
    assert!(s.get_customer(&customer(2, "", None, None, t0()).id).await.unwrap().is_none());
    let (b, _) = create(s, customer(4, "Bia", Some("b@example.com"), Some("EXT-B"), t0())).await.unwrap();
    let page = s.list_customers(&list(None, SortField::Name, Order::Asc, 10, Start::Offset(0))).await.unwrap();
    assert_eq!(page.total, 3);
    assert_eq!(page.items.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![a.id.clone(), b.id.clone(), x.id.clone()]);
    // An update cannot take another customer's value either.
    let e = update(s, &b, |c| c.email = Some("ana@example.com".into()), t0()).await.unwrap_err();
    assert_eq!(e, StoreError::Conflict { field: "email", existing_id: a.id.clone() });
    let e = update(s, &b, |c| c.external_id = Some("Ext-A".into()), t0()).await.unwrap_err();
    assert_eq!(e, StoreError::Conflict { field: "externalId", existing_id: a.id.clone() });
    let b_now = s.get_customer(&b.id).await.unwrap().unwrap();
    assert_eq!(b_now.etag, b.etag, "a failed update changes nothing");
    // Giving a value up frees it; keeping it is no conflict with oneself.
    let (b2, _) = update(s, &b, |c| { c.email = Some("bia@example.com".into()); c.name = "Bia B".into() }, t0()).await.unwrap();
    assert_eq!(b2.email.as_deref(), Some("bia@example.com"));
    let (c, _) = create(s, customer(5, "Cid", Some("b@example.com"), None, t0())).await.unwrap();
    assert_eq!(c.email.as_deref(), Some("b@example.com"));
    // Removing an externalId frees it too.
    let (_, _) = update(s, &b2, |c| c.external_id = None, t0()).await.unwrap();
    assert!(s.find_customer_by_external_id("EXT-B").await.unwrap().is_none());
    create(s, customer(6, "Dan", None, Some("ext-b"), t0())).await.unwrap();
    assert_eq!(s.find_customer_by_external_id("EXT-B").await.unwrap().unwrap().id, customer(6, "", None, None, t0()).id);
}

async fn update_preconditions(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let (a, _) = create(s, customer(1, "Ana", None, None, t0())).await.unwrap();
    let (a2, _) = update(s, &a, |c| c.name = "Ana Maria".into(), t0() + Duration::seconds(5)).await.unwrap();
    assert_ne!(a2.etag, a.etag);
    assert_eq!(a2.name, "Ana Maria");
    // Stale etag.
    let e = update(s, &a, |c| c.name = "Lost update".into(), t0()).await.unwrap_err();
    assert_eq!(e, StoreError::PreconditionFailed);
    assert_eq!(s.get_customer(&a.id).await.unwrap().unwrap().name, "Ana Maria");
    // Missing customer.
    let ghost = Customer { etag: a2.etag.clone(), ..customer(99, "Ghost", None, None, t0()) };
    let e = update(s, &ghost, |c| c.name = "Boo".into(), t0()).await.unwrap_err();
    assert_eq!(e, StoreError::NotFound);
}

fn list(search: Option<&str>, sort: SortField, order: Order, limit: u32, start: Start) -> ListQuery {
    ListQuery { search: search.map(str::to_string), sort, order, limit, start }
}

/// What a list must answer, computed here: matching customers in (sort key, id) order.
fn expected(all: &[Customer], search: Option<&str>, sort: SortField, order: Order) -> Vec<String> {
    let term = search.map(str::to_lowercase);
    let mut v: Vec<&Customer> = all
        .iter()
        .filter(|c| match &term {
            None => true,
            Some(t) => {
                c.name.to_lowercase().contains(t.as_str())
                    || c.email.as_deref().unwrap_or("").to_lowercase().contains(t.as_str())
                    || c.external_id.as_deref().unwrap_or("").to_lowercase().contains(t.as_str())
            }
        })
        .collect();
    v.sort_by(|a, b| {
        let ka = SortKey::of(a, sort);
        let kb = SortKey::of(b, sort);
        let ord = match sort {
            SortField::CreatedAt => ka.value.as_i64().cmp(&kb.value.as_i64()),
            SortField::Name => ka.value.as_str().cmp(&kb.value.as_str()),
        }
        .then(a.id.cmp(&b.id));
        if order == Order::Desc { ord.reverse() } else { ord }
    });
    v.into_iter().map(|c| c.id.clone()).collect()
}

const NAMES: [&str; 8] = ["maria", "João", "Ana", "ana", "Zé", "Márcia", "bruno", "Ana"];

async fn seed(s: &dyn Store, n: u32) -> Vec<Customer> {
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("{} {}", NAMES[(i % 8) as usize], ["Souza", "lima", "COSTA"][(i % 3) as usize]);
        let email = (i % 4 != 0).then(|| format!("user{i}@{}.com", ["acme", "globex", "initech"][(i % 3) as usize]));
        let ext = (i % 5 != 0).then(|| format!("ERP-{:04}", i * 13));
        // Some customers share a creation time, so the id tie-break matters.
        let at = t0() + Duration::milliseconds(((i / 2) * 1500) as i64);
        let (c, _) = create(s, customer(100 + i, &name, email.as_deref(), ext.as_deref(), at)).await.unwrap();
        out.push(c);
    }
    out
}

async fn collect_offset(s: &dyn Store, search: Option<&str>, sort: SortField, order: Order, limit: u32) -> (Vec<String>, u64) {
    let mut ids = Vec::new();
    let mut total = None;
    loop {
        let p = s.list_customers(&list(search, sort, order, limit, Start::Offset(ids.len() as u64))).await.unwrap();
        assert!(total.is_none() || total == Some(p.total), "total is stable across pages");
        total = Some(p.total);
        let n = p.items.len();
        ids.extend(p.items.into_iter().map(|c| c.id));
        if n < limit as usize {
            break;
        }
    }
    (ids, total.unwrap_or(0))
}

async fn collect_keyset(s: &dyn Store, search: Option<&str>, sort: SortField, order: Order, limit: u32) -> (Vec<String>, u64) {
    let mut ids = Vec::new();
    let mut start = Start::Offset(0);
    let mut total = None;
    loop {
        let p = s.list_customers(&list(search, sort, order, limit, start.clone())).await.unwrap();
        assert!(total.is_none() || total == Some(p.total));
        total = Some(p.total);
        let Some(last) = p.items.last() else { break };
        start = Start::After(SortKey::of(last, sort));
        let n = p.items.len();
        ids.extend(p.items.iter().map(|c| c.id.clone()));
        if n < limit as usize {
            break;
        }
    }
    (ids, total.unwrap_or(0))
}

async fn list_sorting_paging(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let all = seed(s, 23).await;
    for sort in [SortField::CreatedAt, SortField::Name] {
        for order in [Order::Asc, Order::Desc] {
            let want = expected(&all, None, sort, order);
            let (by_offset, total) = collect_offset(s, None, sort, order, 5).await;
            assert_eq!(by_offset, want, "offset paging {sort:?} {order:?}");
            assert_eq!(total, 23);
            let (by_keyset, total) = collect_keyset(s, None, sort, order, 4).await;
            assert_eq!(by_keyset, want, "keyset paging {sort:?} {order:?}");
            assert_eq!(total, 23);
            // A page in the middle, both ways.
            let mid = s.list_customers(&list(None, sort, order, 6, Start::Offset(9))).await.unwrap();
            assert_eq!(mid.items.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), want[9..15].to_vec());
            let prev = all.iter().find(|c| c.id == want[8]).unwrap();
            let mid2 = s.list_customers(&list(None, sort, order, 6, Start::After(SortKey::of(prev, sort)))).await.unwrap();
            assert_eq!(mid2.items.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), want[9..15].to_vec());
            // Past the end.
            let end = s.list_customers(&list(None, sort, order, 6, Start::Offset(40))).await.unwrap();
            assert!(end.items.is_empty());
            assert_eq!(end.total, 23);
        }
    }
}

/// The list endpoint's rendered page is the same page as `list_customers`, item for item, with
/// the last item's sort key; and a change shows in it at once (a store that keeps the rendered
/// summary must rewrite it with every write).
async fn summaries_match_customers(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let all = seed(s, 17).await;
    let (changed, _) = update(
        s,
        &all[3],
        |c| {
            c.name = "Renamed Person".into();
            c.lifecycle_stage = LifecycleStage::Customer;
            c.engagement_score = 88;
        },
        t0() + Duration::days(1),
    )
    .await
    .unwrap();
    for sort in [SortField::CreatedAt, SortField::Name] {
        for order in [Order::Asc, Order::Desc] {
            for search in [None, Some("souza"), Some("ERP-00"), Some("renamed"), Some("nobody")] {
                let mut start = Start::Offset(0);
                for _ in 0..6 {
                    let q = list(search, sort, order, 4, start.clone());
                    let want = SummaryPage::render(&s.list_customers(&q).await.unwrap(), sort).unwrap();
                    let got = s.list_customer_summaries(&q).await.unwrap();
                    assert_eq!(got, want, "{sort:?} {order:?} {search:?} {start:?}");
                    match got.last {
                        Some(k) => start = Start::After(k),
                        None => break,
                    }
                }
            }
        }
    }
    let q = list(Some("renamed"), SortField::Name, Order::Asc, 10, Start::Offset(0));
    let page = s.list_customer_summaries(&q).await.unwrap();
    assert_eq!(page.total, 1);
    let item: serde_json::Value = serde_json::from_str(&page.items[0]).unwrap();
    assert_eq!(item, serde_json::to_value(changed.summary()).unwrap());
    assert_eq!(item["lifecycleStage"], "Customer");
    assert_eq!(item["engagementScore"], 88);
}

/// Creation times as the API makes them (`Utc::now()`, sub-millisecond digits), many within one
/// millisecond: a keyset cursor built from a returned customer must neither skip nor repeat.
async fn keyset_with_submillisecond_times(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let mut all = Vec::new();
    for i in 0..12u32 {
        let at = t0() + Duration::microseconds(123 + (i / 4) as i64 * 1000 + (i % 4) as i64 * 211);
        let (c, _) = create(s, customer(300 + (i * 7919) % 97, &format!("Same {}", i % 2), None, None, at)).await.unwrap();
        all.push(c);
    }
    for sort in [SortField::CreatedAt, SortField::Name] {
        for order in [Order::Asc, Order::Desc] {
            let (by_offset, _) = collect_offset(s, None, sort, order, 5).await;
            let (by_keyset, total) = collect_keyset(s, None, sort, order, 5).await;
            assert_eq!(total, 12);
            assert_eq!(by_keyset, by_offset, "keyset and offset paging agree ({sort:?} {order:?})");
            let mut uniq = by_keyset.clone();
            uniq.sort();
            uniq.dedup();
            assert_eq!(uniq.len(), 12, "no customer skipped or repeated ({sort:?} {order:?})");
        }
    }
}

async fn search(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let all = seed(s, 23).await;
    // Name (accented, any case), email, externalId, two-letter terms, no match.
    for term in ["ana", "ANA", "márcia", "MÁRCIA", "sou", "Costa", "globex", "USER1", "erp-00", "erp-0117", "zé", "an", "@", "nobody-here", "a", "%", "_", "o'b", "\"sou\"", "a*", "ana souza", "NA SO"] {
        for (sort, order) in [(SortField::Name, Order::Asc), (SortField::CreatedAt, Order::Desc)] {
            let want = expected(&all, Some(term), sort, order);
            let (by_offset, total) = collect_offset(s, Some(term), sort, order, 4).await;
            assert_eq!(by_offset, want, "search {term:?} by offset");
            assert_eq!(total, want.len() as u64, "search {term:?} total");
            let (by_keyset, total) = collect_keyset(s, Some(term), sort, order, 3).await;
            assert_eq!(by_keyset, want, "search {term:?} by keyset");
            assert_eq!(total, want.len() as u64);
        }
    }
    // An empty term is no filter.
    let p = s.list_customers(&list(Some(""), SortField::Name, Order::Asc, 100, Start::Offset(0))).await.unwrap();
    assert_eq!(p.total, 23);
    // Search follows updates.
    let victim = all.iter().find(|c| c.name.starts_with("bruno")).unwrap();
    update(s, victim, |c| c.name = "Xavier Quintela".into(), t0()).await.unwrap();
    let p = s.list_customers(&list(Some("quintela"), SortField::Name, Order::Asc, 10, Start::Offset(0))).await.unwrap();
    assert_eq!((p.total, p.items.len()), (1, 1));
    assert_eq!(p.items[0].id, victim.id);
}

fn idem(key: &str, at: DateTime<Utc>, customer_id: &str) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: "client-1:POST /api/customers".into(),
        key: key.into(),
        request_hash: "ab".repeat(32),
        status: 201,
        body: format!("{{\"id\":\"{customer_id}\"}}"),
        location: Some(format!("/api/customers/{customer_id}")),
        created_at: at,
    }
}

async fn idempotency(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let now = Utc::now();
    let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap();
    assert_eq!(s.get_idempotency("client-1:POST /api/customers", "k1").await.unwrap(), None);
    let c = customer(1, "Ana", Some("ana@example.com"), None, t0());
    let mut w = new_customer_write(c.clone(), t0());
    w.idempotency = Some(idem("k1", now, &c.id));
    s.write_customer(w).await.unwrap();
    let rec = s.get_idempotency("client-1:POST /api/customers", "k1").await.unwrap().expect("stored with the write");
    assert_eq!(rec, idem("k1", now, &c.id));
    // Other scope, other key: nothing.
    assert_eq!(s.get_idempotency("client-2:POST /api/customers", "k1").await.unwrap(), None);
    assert_eq!(s.get_idempotency("client-1:POST /api/customers", "k2").await.unwrap(), None);
    // The same key again loses, and its write leaves nothing behind.
    let d = customer(2, "Bia", Some("bia@example.com"), Some("E-2"), t0());
    let mut w = new_customer_write(d.clone(), t0());
    w.idempotency = Some(idem("k1", now, &d.id));
    let e = s.write_customer(w).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { field: "idempotencyKey", .. }), "{e:?}");
    assert!(s.get_customer(&d.id).await.unwrap().is_none());
    assert_eq!(s.get_idempotency("client-1:POST /api/customers", "k1").await.unwrap(), Some(idem("k1", now, &c.id)));
    create(s, customer(3, "Cid", Some("bia@example.com"), Some("e-2"), t0())).await.unwrap();
    // A write that fails on a unique value does not keep its idempotency key.
    let e2 = customer(4, "Dup", Some("ana@example.com"), None, t0());
    let mut w = new_customer_write(e2.clone(), t0());
    w.idempotency = Some(idem("k3", now, &e2.id));
    assert!(matches!(s.write_customer(w).await.unwrap_err(), StoreError::Conflict { field: "email", .. }));
    assert_eq!(s.get_idempotency("client-1:POST /api/customers", "k3").await.unwrap(), None);
    // Records older than 24 h do not count.
    let old = now - Duration::hours(25);
    let f = customer(5, "Old", None, None, t0());
    let mut w = new_customer_write(f.clone(), t0());
    w.idempotency = Some(idem("k-old", old, &f.id));
    s.write_customer(w).await.unwrap();
    assert_eq!(s.get_idempotency("client-1:POST /api/customers", "k-old").await.unwrap(), None);
}

async fn stage_history(s: Arc<dyn Store>) {
    let s = s.as_ref();
    assert!(s.stage_history("cstm_nobody").await.unwrap().is_empty());
    let (a, _) = create(s, customer(1, "Ana", None, None, t0())).await.unwrap();
    let t1 = t0() + Duration::days(2);
    let t2 = t0() + Duration::days(9);
    let (a, _) = update(s, &a, |c| c.lifecycle_stage = LifecycleStage::Opportunity, t1).await.unwrap();
    let (a, _) = update(s, &a, |c| c.engagement_score = 90, t1).await.unwrap();
    update(s, &a, |c| c.lifecycle_stage = LifecycleStage::Customer, t2).await.unwrap();
    let h = s.stage_history(&a.id).await.unwrap();
    let got: Vec<_> = h.iter().map(|x| (x.customer_id.clone(), x.from, x.to, x.at)).collect();
    assert_eq!(
        got,
        vec![
            (a.id.clone(), None, LifecycleStage::Lead, t0()),
            (a.id.clone(), Some(LifecycleStage::Lead), LifecycleStage::Opportunity, t1),
            (a.id.clone(), Some(LifecycleStage::Opportunity), LifecycleStage::Customer, t2),
        ]
    );
    let (b, _) = create(s, customer(2, "Bia", None, None, t0())).await.unwrap();
    assert_eq!(s.stage_history(&b.id).await.unwrap().len(), 1);
}

async fn outbox(s: Arc<dyn Store>) {
    let s = s.as_ref();
    assert!(s.outbox_events(None, 10).await.unwrap().is_empty());
    let mut written = Vec::new();
    let mut last = None;
    for i in 0..7u32 {
        let (c, w) = create(s, customer(i + 1, &format!("C{i}"), None, None, t0() + Duration::days(i as i64))).await.unwrap();
        written.extend(w.events.clone());
        last = Some(c);
    }
    let (_, w) = update(s, last.as_ref().unwrap(), |c| c.name = "Changed".into(), t0() + Duration::days(8)).await.unwrap();
    written.extend(w.events.clone());
    // A failed write adds no event.
    let dup = customer(1, "Again", None, None, t0());
    assert!(s.write_customer(new_customer_write(dup, t0())).await.is_err());
    let all = s.outbox_events(None, 100).await.unwrap();
    assert_eq!(all, written, "every event once, oldest first");
    let first3 = s.outbox_events(None, 3).await.unwrap();
    assert_eq!(first3, written[..3].to_vec());
    let next = s.outbox_events(Some(&first3[2].id), 4).await.unwrap();
    assert_eq!(next, written[3..7].to_vec());
    let rest = s.outbox_events(Some(&next[3].id), 4).await.unwrap();
    assert_eq!(rest, written[7..].to_vec());
    assert!(s.outbox_events(Some(&written[7].id), 4).await.unwrap().is_empty());
    // An unknown cursor starts from the beginning.
    assert_eq!(s.outbox_events(Some("evt_unknown"), 2).await.unwrap(), written[..2].to_vec());
}

async fn rollups(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let mut want: BTreeMap<(NaiveDate, Metric), i64> = BTreeMap::new();
    let mut add = |w: &CustomerWrite| {
        for d in &w.rollups {
            *want.entry((d.day, d.metric)).or_default() += d.delta;
        }
    };
    let mut cs = Vec::new();
    for i in 0..6u32 {
        let (c, w) = create(s, customer(i + 1, &format!("C{i}"), None, None, t0() + Duration::days((i % 3) as i64))).await.unwrap();
        add(&w);
        cs.push(c);
    }
    for (i, c) in cs.iter().enumerate() {
        let at = t0() + Duration::days(3 + i as i64);
        let (c, w) = update(s, c, |c| { c.lifecycle_stage = LifecycleStage::Opportunity; c.engagement_score = 80 }, at).await.unwrap();
        add(&w);
        if i % 2 == 0 {
            let (_, w) = update(s, &c, |c| c.lifecycle_stage = LifecycleStage::Customer, at + Duration::hours(30)).await.unwrap();
            add(&w);
        }
    }
    let want: Vec<(NaiveDate, Metric, i64)> = want.into_iter().map(|((d, m), v)| (d, m, v)).collect();
    let from = t0().date_naive() - Duration::days(1);
    let to = t0().date_naive() + Duration::days(30);
    let mut got = s.rollups(from, to).await.unwrap();
    got.sort_by_key(|(d, m, _)| (*d, *m));
    assert_eq!(got, want);
    // A window.
    let d1 = t0().date_naive() + Duration::days(1);
    let mut got = s.rollups(d1, d1).await.unwrap();
    got.sort_by_key(|(d, m, _)| (*d, *m));
    assert_eq!(got, want.iter().filter(|(d, _, _)| *d == d1).cloned().collect::<Vec<_>>());
    assert!(s.rollups(to + Duration::days(1), to + Duration::days(9)).await.unwrap().is_empty());
}

async fn clients(s: Arc<dyn Store>) {
    let s = s.as_ref();
    assert!(s.list_clients().await.unwrap().is_empty());
    assert_eq!(s.get_client("nobody").await.unwrap(), None);
    let mk = |id: &str, secs: i64| Client {
        id: id.into(),
        name: format!("client {id}"),
        secret_hash: "00".repeat(32),
        scopes: vec!["customer.read".into()],
        created_at: t0() + Duration::seconds(secs),
        revoked_at: None,
    };
    let (a, b, c) = (mk("cli_b", 20), mk("cli_a", 10), mk("cli_c", 20));
    for x in [&a, &b, &c] {
        s.create_client(x).await.unwrap();
    }
    assert!(matches!(s.create_client(&mk("cli_a", 99)).await.unwrap_err(), StoreError::Conflict { .. }));
    assert_eq!(s.get_client("cli_a").await.unwrap(), Some(b.clone()));
    assert_eq!(s.list_clients().await.unwrap(), vec![b.clone(), a.clone(), c.clone()]);
    let revoked = Client { revoked_at: Some(t0() + Duration::days(1)), scopes: vec![], secret_hash: "11".repeat(32), ..a.clone() };
    s.update_client(&revoked).await.unwrap();
    assert_eq!(s.get_client("cli_b").await.unwrap(), Some(revoked.clone()));
    assert_eq!(s.update_client(&mk("cli_zzz", 1)).await.unwrap_err(), StoreError::NotFound);
    assert_eq!(s.list_clients().await.unwrap(), vec![b, revoked, c]);
    s.ready().await.unwrap();
}

async fn concurrent_writes(s: Arc<dyn Store>) {
    // Twenty creates at once: all land, and the total and rollups count each exactly once.
    let mut tasks = Vec::new();
    for i in 0..20u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let c = customer(i + 1, &format!("P{i}"), Some(&format!("p{i}@example.com")), None, t0() + Duration::hours((i % 2) as i64 * 30));
            let w = new_customer_write(c, t0());
            s.write_customer(w.clone()).await.map(|_| w)
        }));
    }
    let mut want: BTreeMap<(NaiveDate, Metric), i64> = BTreeMap::new();
    for t in tasks {
        let w = t.await.unwrap().unwrap();
        for d in &w.rollups {
            *want.entry((d.day, d.metric)).or_default() += d.delta;
        }
    }
    let p = s.list_customers(&list(None, SortField::CreatedAt, Order::Asc, 50, Start::Offset(0))).await.unwrap();
    assert_eq!((p.total, p.items.len()), (20, 20));
    let mut got = s.rollups(t0().date_naive(), t0().date_naive() + Duration::days(3)).await.unwrap();
    got.sort_by_key(|(d, m, _)| (*d, *m));
    assert_eq!(got, want.into_iter().map(|((d, m), v)| (d, m, v)).collect::<Vec<_>>());
    // Ten creates racing for one email: exactly one wins, the rest name the winner.
    let mut tasks = Vec::new();
    for i in 0..10u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let c = customer(100 + i, "Racer", Some("race@example.com"), None, t0());
            let id = c.id.clone();
            (id, s.write_customer(new_customer_write(c, t0())).await)
        }));
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (id, Ok(_)) => winners.push(id),
            (_, Err(StoreError::Conflict { field: "email", existing_id })) => losers.push(existing_id),
            (_, Err(e)) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create wins the email");
    assert!(losers.iter().all(|l| *l == winners[0]), "{losers:?}");
    let p = s.list_customers(&list(Some("racer"), SortField::Name, Order::Asc, 50, Start::Offset(0))).await.unwrap();
    assert_eq!((p.total, p.items.len()), (1, 1));
    assert_eq!(s.list_customers(&list(None, SortField::Name, Order::Asc, 1, Start::Offset(0))).await.unwrap().total, 21);
}

/// Cosmos only: a write that dies after its commit point is finished by `repair_pending` or by
/// the next write to the customer, and nothing is applied twice.
#[cfg(feature = "cosmos-emulator")]
#[tokio::test]
async fn cosmos_crashed_writes_are_repaired_exactly_once() {
    use customer360::store::cosmos::{CosmosStore, CrashPoint};
    let store = CosmosStore::open_emulator("repair").await.unwrap();
    let s: Arc<dyn Store> = store.clone();
    let mut want: BTreeMap<(NaiveDate, Metric), i64> = BTreeMap::new();
    let mut events = Vec::new();
    let mut add = |w: &CustomerWrite, events: &mut Vec<_>| {
        for d in &w.rollups {
            *want.entry((d.day, d.metric)).or_default() += d.delta;
        }
        events.extend(w.events.clone());
    };
    // A: dies right after the commit. B: dies before clearing `pending`. C: normal.
    let a = customer(1, "Ana", Some("ana@example.com"), Some("A-1"), t0());
    let wa = new_customer_write(a.clone(), t0());
    store.write_with_crash(wa.clone(), CrashPoint::AfterCommit).await.unwrap();
    add(&wa, &mut events);
    let b = customer(2, "Bia", Some("bia@example.com"), None, t0());
    let wb = new_customer_write(b.clone(), t0());
    store.write_with_crash(wb.clone(), CrashPoint::BeforeClear).await.unwrap();
    add(&wb, &mut events);
    let (_, wc) = create(s.as_ref(), customer(3, "Cid", None, None, t0())).await.unwrap();
    add(&wc, &mut events);
    // Before repair A's side effects are missing (the customer itself is there).
    assert!(s.get_customer(&a.id).await.unwrap().is_some());
    assert_eq!(s.list_customers(&list(None, SortField::Name, Order::Asc, 10, Start::Offset(0))).await.unwrap().total, 2);
    // The next write to B applies B's leftovers first (already applied: a no-op), then its own.
    let b_now = s.get_customer(&b.id).await.unwrap().unwrap();
    let (_, wb2) = update(s.as_ref(), &b_now, |c| { c.email = Some("bia2@example.com".into()); c.lifecycle_stage = LifecycleStage::Customer }, t0() + Duration::days(1)).await.unwrap();
    add(&wb2, &mut events);
    // A's update also crashes after commit, giving up its externalId.
    let a_now = s.get_customer(&a.id).await.unwrap().unwrap();
    let wa2 = update_customer_write(&a_now, Customer { external_id: None, engagement_score: 99, ..a_now.clone() }, t0() + Duration::days(2)).unwrap();
    store.write_with_crash(wa2.clone(), CrashPoint::AfterCommit).await.unwrap();
    // ^ an update over a document whose own create never finished: the create's effects run first.
    add(&wa2, &mut events);
    // The background sweep leaves recent writes alone (they may still be in flight).
    assert_eq!(store.repair_pending_older_than(Duration::minutes(2)).await.unwrap(), 0);
    assert_eq!(store.repair_pending().await.unwrap(), 1);
    assert_eq!(store.repair_pending().await.unwrap(), 0);
    let page = s.list_customers(&list(None, SortField::Name, Order::Asc, 10, Start::Offset(0))).await.unwrap();
    assert_eq!(page.total, 3);
    let mut got = s.rollups(t0().date_naive(), t0().date_naive() + Duration::days(5)).await.unwrap();
    got.sort_by_key(|(d, m, _)| (*d, *m));
    assert_eq!(got, want.into_iter().map(|((d, m), v)| (d, m, v)).collect::<Vec<_>>());
    let mut got_events = s.outbox_events(None, 100).await.unwrap();
    got_events.sort_by(|x, y| x.id.cmp(&y.id));
    events.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(got_events, events, "each event exactly once");
    // Released values are free again; kept ones are not.
    create(s.as_ref(), customer(4, "Dan", Some("bia@example.com"), Some("a-1"), t0())).await.unwrap();
    let e = create(s.as_ref(), customer(5, "Eva", Some("ana@example.com"), None, t0())).await.unwrap_err();
    assert_eq!(e, StoreError::Conflict { field: "email", existing_id: a.id.clone() });
    assert!(store.request_charge_total() > 0.0);
}

async fn sync_leases_and_watermarks(s: Arc<dyn Store>) {
    customer360::store::sync::conformance::leases_and_watermarks(s.as_ref()).await;
}

async fn sync_opportunities(s: Arc<dyn Store>) {
    customer360::store::sync::conformance::opportunities(s.as_ref()).await;
}

fn sync_job(entity: SyncEntity, at: DateTime<Utc>) -> SyncJob {
    SyncJob::new(customer360::ids::new_id("sync"), entity, SyncMode::Full, None, at)
}

fn sync_idem(key: &str, job_id: &str, at: DateTime<Utc>) -> IdempotencyRecord {
    IdempotencyRecord {
        scope: "client-1:POST /api/sync".into(),
        key: key.into(),
        request_hash: "cd".repeat(32),
        status: 202,
        body: format!("{{\"jobId\":\"{job_id}\"}}"),
        location: Some(format!("/api/sync/{job_id}")),
        created_at: at,
    }
}

/// A job's idempotency record is stored with it, replayable, and a second job with the same
/// key is refused without being stored.
async fn sync_job_idempotency(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let now = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    let first = sync_job(SyncEntity::Customers, now);
    s.insert_sync_job(&first, Some(sync_idem("sk-1", &first.id, now))).await.unwrap();
    let got = s.get_idempotency("client-1:POST /api/sync", "sk-1").await.unwrap();
    assert_eq!(got, Some(sync_idem("sk-1", &first.id, now)), "the record counts once its job exists");
    let second = sync_job(SyncEntity::Customers, now);
    let e = s.insert_sync_job(&second, Some(sync_idem("sk-1", &second.id, now))).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict { field: "idempotencyKey", .. }), "{e:?}");
    assert_eq!(s.get_sync_job(&second.id).await.unwrap(), None, "the losing job is not stored");
    assert_eq!(s.get_idempotency("client-1:POST /api/sync", "sk-1").await.unwrap(), Some(sync_idem("sk-1", &first.id, now)));
    assert_eq!(s.list_sync_jobs(0, 10).await.unwrap().1, 1);
    // Unknown and malformed ids are simply absent.
    assert_eq!(s.get_sync_job("sync_01HZ7G0000000000000000000Z").await.unwrap(), None);
    assert_eq!(s.get_sync_job("a/b?c#d").await.unwrap(), None);
}

/// Many workers claim jobs of one entity at once (two per job): exactly one claim wins, and
/// after it completes (moving the watermark) the next job can be claimed.
async fn sync_concurrent_claims(s: Arc<dyn Store>) {
    let now = Utc::now();
    let lease = now + Duration::seconds(60);
    let jobs: Vec<SyncJob> = (0..5).map(|_| sync_job(SyncEntity::Customers, now)).collect();
    for j in &jobs {
        s.insert_sync_job(j, None).await.unwrap();
    }
    let mut tasks = Vec::new();
    for (i, j) in jobs.iter().enumerate() {
        for w in 0..2 {
            let (s, id, owner) = (s.clone(), j.id.clone(), format!("w{i}-{w}"));
            tasks.push(tokio::spawn(async move {
                let c = s.claim_sync_job(&id, &owner, now, lease).await.unwrap();
                (owner, c)
            }));
        }
    }
    let mut won = Vec::new();
    for t in tasks {
        if let (owner, Claim::Claimed(job)) = t.await.unwrap() {
            won.push((owner, job));
        }
    }
    assert_eq!(won.len(), 1, "one running job per entity: {:?}", won.iter().map(|w| &w.0).collect::<Vec<_>>());
    let (owner, mut job) = won.pop().unwrap();
    let running: Vec<_> = s.unfinished_sync_jobs().await.unwrap().into_iter().filter(|j| j.status == JobStatus::Running).collect();
    assert_eq!(running.iter().map(|j| j.id.clone()).collect::<Vec<_>>(), [job.id.clone()]);
    // Renew, then complete: the watermark moves with the completion only.
    job.processed = 3;
    job.high_water = Some(now - Duration::hours(1));
    s.save_sync_job(&job, &owner, Some(lease + Duration::seconds(30))).await.unwrap();
    assert_eq!(s.sync_watermark(SyncEntity::Customers).await.unwrap(), None, "a renewal leaves the watermark alone");
    assert_eq!(s.get_sync_job(&job.id).await.unwrap().unwrap().processed, 3);
    job.status = JobStatus::Completed;
    job.finished_at = Some(now);
    s.save_sync_job(&job, &owner, None).await.unwrap();
    let hw = job.high_water.map(|t| DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap());
    assert_eq!(s.sync_watermark(SyncEntity::Customers).await.unwrap(), hw);
    assert_eq!(s.save_sync_job(&job, &owner, None).await, Err(StoreError::PreconditionFailed), "finished jobs stay finished");
    let next = jobs.iter().find(|j| j.id != job.id).unwrap();
    assert!(matches!(s.claim_sync_job(&next.id, "w9", now, lease).await.unwrap(), Claim::Claimed(_)));
    // fail_sync_job frees the entity for the next job.
    s.fail_sync_job(&next.id, "gave up", now).await.unwrap().unwrap();
    let third = jobs.iter().find(|j| j.id != job.id && j.id != next.id).unwrap();
    assert!(matches!(s.claim_sync_job(&third.id, "w10", now, lease).await.unwrap(), Claim::Claimed(_)));
    // An older watermark never moves it back.
    let Claim::Claimed(mut t) = s.claim_sync_job(&third.id, "w10", now, lease).await.unwrap() else { panic!("re-claim by owner") };
    t.status = JobStatus::Completed;
    t.high_water = Some(now - Duration::days(3));
    s.save_sync_job(&t, "w10", None).await.unwrap();
    assert_eq!(s.sync_watermark(SyncEntity::Customers).await.unwrap(), hw);
}

/// An opportunity and the customer change it causes: a failed customer change stores nothing;
/// a successful one moves the customer (stage history, event) and stores the opportunity.
async fn sync_opportunity_with_customer_change(s: Arc<dyn Store>) {
    let s = s.as_ref();
    let (c, _) = create(s, customer(1, "Ana", None, Some("CRM-9"), t0())).await.unwrap();
    let mut moved = c.clone();
    moved.lifecycle_stage = LifecycleStage::Opportunity;
    let cw = update_customer_write(&c, moved, t0() + Duration::hours(1)).unwrap();
    let at = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let opp = Opportunity {
        id: customer360::ids::new_id("opp"),
        external_id: "OPP-9".into(),
        customer_id: c.id.clone(),
        customer_external_id: "CRM-9".into(),
        name: "Big deal".into(),
        amount: serde_json::Number::from(9_007_199_254_740_993u64), // 2^53 + 1: not a double
        currency: "BRL".into(),
        stage: OpportunityStage::Open,
        created_at: at,
        closed_at: None,
        updated_at: at,
    };
    let mut stale = cw.clone();
    stale.kind = WriteKind::Update { expected_etag: "stale".into() };
    let e = s.write_opportunity(OpportunityWrite { opportunity: opp.clone(), customer: Some(stale) }).await;
    assert_eq!(e, Err(StoreError::PreconditionFailed));
    assert_eq!(s.find_opportunity_by_external_id("opp-9").await.unwrap(), None, "nothing stored when the customer change fails");
    let events_before = s.outbox_events(None, 1000).await.unwrap().len();
    s.write_opportunity(OpportunityWrite { opportunity: opp.clone(), customer: Some(cw) }).await.unwrap();
    assert_eq!(s.find_opportunity_by_external_id("opp-9").await.unwrap(), Some(opp.clone()));
    assert_eq!(s.get_customer(&c.id).await.unwrap().unwrap().lifecycle_stage, LifecycleStage::Opportunity);
    assert_eq!(s.stage_history(&c.id).await.unwrap().last().map(|h| h.to), Some(LifecycleStage::Opportunity));
    assert_eq!(s.outbox_events(None, 1000).await.unwrap().len(), events_before + 1, "the customer.updated event");
    let q = OpportunityQuery { customer_external_id: Some("crm-9".into()), offset: 0, limit: 5 };
    assert_eq!(s.list_opportunities(&q).await.unwrap(), (vec![opp.clone()], 1));
    let q = OpportunityQuery { customer_external_id: Some("nobody".into()), offset: 0, limit: 5 };
    assert_eq!(s.list_opportunities(&q).await.unwrap(), (vec![], 0));
    let q = OpportunityQuery { customer_external_id: None, offset: 1, limit: 5 };
    assert_eq!(s.list_opportunities(&q).await.unwrap(), (vec![], 1), "offset past the end");
}

/// One running job per entity: once another job took the entity after this job's lease
/// expired, this job can no longer renew its lease (Cosmos: the entity lock; SQLite: a check).
async fn a_job_that_lost_its_entity_cannot_renew(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let now = Utc::now();
    let (a, c) = (sync_job(SyncEntity::Customers, now), sync_job(SyncEntity::Customers, now));
    s.insert_sync_job(&a, None).await.unwrap();
    s.insert_sync_job(&c, None).await.unwrap();
    let Claim::Claimed(held) = s.claim_sync_job(&a.id, "w1", now, now + Duration::seconds(60)).await.unwrap() else { panic!("claim a") };
    let later = now + Duration::seconds(61);
    assert!(matches!(s.claim_sync_job(&c.id, "w2", later, later + Duration::seconds(60)).await.unwrap(), Claim::Claimed(_)));
    assert_eq!(s.save_sync_job(&held, "w1", Some(later + Duration::seconds(60))).await, Err(StoreError::PreconditionFailed));
    // The job's own result can still be recorded; the entity stays with the other job.
    let mut done = held.clone();
    done.status = JobStatus::Failed;
    s.save_sync_job(&done, "w1", None).await.unwrap();
    assert!(matches!(s.claim_sync_job(&a.id, "w3", later, later).await.unwrap(), Claim::Finished(_)));
    let d = sync_job(SyncEntity::Customers, later);
    s.insert_sync_job(&d, None).await.unwrap();
    assert!(matches!(s.claim_sync_job(&d.id, "w4", later, later + Duration::seconds(60)).await.unwrap(), Claim::Busy(_)));
}

macro_rules! suite {
    ($backend:ident, $open:expr) => {
        mod $backend {
            use super::*;
            suite!(@tests $open; create_get_find, unique_conflicts, update_preconditions, list_sorting_paging,
                search, idempotency, stage_history, outbox, rollups, clients, concurrent_writes,
                keyset_with_submillisecond_times, sync_leases_and_watermarks, sync_opportunities,
                sync_job_idempotency, sync_concurrent_claims, sync_opportunity_with_customer_change,
                a_job_that_lost_its_entity_cannot_renew, summaries_match_customers);
        }
    };
    (@tests $open:expr; $($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let b: Backend = $open.await;
                super::$name(b.store.clone()).await;
                b.store.close().await;
            }
        )*
    };
}

suite!(sqlite, sqlite());
#[cfg(feature = "cosmos-emulator")]
suite!(cosmos, cosmos());
