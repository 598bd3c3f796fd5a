//! Deterministic synthetic customers for demos and benchmarks (`customer360 seed`).
use crate::api::customers::new_customer_write;
use crate::domain::{rollup_deltas, Customer, CustomerFields, LifecycleStage, StageChange};
use crate::store::Store;
use chrono::{DateTime, Duration, TimeZone, Utc};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::sync::Arc;

const FIRST: &[&str] = &[
    "Maria", "José", "Ana", "João", "Francisca", "Antônio", "Juliana", "Carlos", "Mariana", "Paulo", "Beatriz",
    "Lucas", "Fernanda", "Pedro", "Camila", "Rafael", "Larissa", "Gabriel", "Aline", "Marcos", "Emma", "Liam",
    "Olivia", "Noah", "Sophia", "Mateo", "Yuki", "Wei", "Aisha", "Ravi", "Ingrid", "Lars", "Chloé", "Giulia",
    "Mariana", "Rosa", "Tomás", "Marina", "Helena", "Davi",
];
const LAST: &[&str] = &[
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira", "Lima", "Gomes", "Costa",
    "Ribeiro", "Martins", "Carvalho", "Almeida", "Lopes", "Soares", "Fernandes", "Vieira", "Barbosa", "Smith",
    "Johnson", "Müller", "García", "Rossi", "Tanaka", "Chen", "Khan", "Patel", "Dubois", "Andersson", "Novak",
];
const CITIES: &[(&str, &str, &str)] = &[
    ("São Paulo", "SP", "BR"), ("Rio de Janeiro", "RJ", "BR"), ("Belo Horizonte", "MG", "BR"), ("Curitiba", "PR", "BR"),
    ("Recife", "PE", "BR"), ("Porto Alegre", "RS", "BR"), ("Lisboa", "LX", "PT"), ("New York", "NY", "US"),
    ("Berlin", "BE", "DE"), ("Buenos Aires", "BA", "AR"),
];
const UTM: &[&str] = &["meta_ads", "google", "organic", "referral"];
const TAGS: &[&str] = &["ecommerce", "vip", "newsletter", "partner-referral", "campaign-2025", "b2b", "b2c", "churn-risk"];

fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'á' | 'â' | 'ã' | 'à' => 'a',
            'é' | 'ê' => 'e',
            'í' => 'i',
            'ó' | 'ô' | 'õ' => 'o',
            'ú' | 'ü' => 'u',
            'ç' => 'c',
            c => c,
        })
        .collect::<String>()
        .to_lowercase()
}

/// Customers are created over this many seconds before the seed's end date.
const SPAN_SECONDS: i64 = 2 * 365 * 86_400;

/// Customer number `i`, created at a random time in the span before `until`.
pub fn synthetic_anytime(rng: &mut StdRng, i: u64, until: DateTime<Utc>) -> crate::store::CustomerWrite {
    let created = until - Duration::seconds(rng.gen_range(0..SPAN_SECONDS));
    synthetic(rng, i, created, until)
}

/// The i-th synthetic customer and the write that stores it, with its stage history: created
/// at `created`, its stage changes following up to `until`.
pub fn synthetic(rng: &mut StdRng, i: u64, created: DateTime<Utc>, until: DateTime<Utc>) -> crate::store::CustomerWrite {
    let first = FIRST[rng.gen_range(0..FIRST.len())];
    let last = LAST[rng.gen_range(0..LAST.len())];
    let ulid = ulid::Ulid::from_parts(created.timestamp_millis() as u64, rng.gen::<u128>());
    let id = format!("cstm_{ulid}");
    let (city, state, country) = CITIES[rng.gen_range(0..CITIES.len())];
    let mut tags: Vec<String> = Vec::new();
    for _ in 0..rng.gen_range(0..3) {
        let t = TAGS[rng.gen_range(0..TAGS.len())].to_string();
        if !tags.contains(&t) {
            tags.push(t);
        }
    }
    let fields = CustomerFields {
        external_id: Some(Some(format!("CRM-{i:07}"))),
        name: Some(format!("{first} {last}")),
        email: Some(Some(format!("{}.{}.{i}@example.com", ascii(first), ascii(last)))),
        phone: Some(Some(format!("+55 11 9{:04}-{:04}", rng.gen_range(0..10_000), rng.gen_range(0..10_000)))),
        billing_address: Some(Some(
            json!({"street": format!("Rua {} {}", LAST[rng.gen_range(0..LAST.len())], rng.gen_range(1..2000)), "city": city, "state": state, "country": country, "zip": format!("{:05}-{:03}", rng.gen_range(0..100_000), rng.gen_range(0..1000))})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        )),
        lifecycle_stage: Some(LifecycleStage::Lead),
        engagement_score: Some(rng.gen_range(0..=100)),
        tags: Some(tags),
        custom_fields: Some(json!({"utmSource": UTM[rng.gen_range(0..UTM.len())]}).as_object().cloned().unwrap_or_default()),
    };
    let mut w = new_customer_write(fields.into_new_customer(id, created), created);
    w.events.clear();
    // Walk part of the funnel: Lead -> Opportunity -> Customer (-> Churn), at later times.
    let mut at = created;
    let path: &[LifecycleStage] = match rng.gen_range(0..100) {
        0..=49 => &[],
        50..=74 => &[LifecycleStage::Opportunity],
        75..=89 => &[LifecycleStage::Opportunity, LifecycleStage::Customer],
        90..=94 => &[LifecycleStage::Customer],
        _ => &[LifecycleStage::Opportunity, LifecycleStage::Customer, LifecycleStage::Churn],
    };
    for stage in path {
        let next = at + Duration::seconds(rng.gen_range(3_600..45 * 86_400));
        if next > until {
            break;
        }
        at = next;
        let old: Customer = w.customer.clone();
        let mut new = old.clone();
        new.lifecycle_stage = *stage;
        new.updated_at = at;
        w.rollups.extend(rollup_deltas(Some(&old), &mut new, at));
        w.stage_changes.push(StageChange { customer_id: new.id.clone(), from: Some(old.lifecycle_stage), to: *stage, at });
        w.customer = new;
    }
    w
}

pub async fn seed(store: Arc<dyn Store>, count: u64, seed: u64) -> Result<(), String> {
    let until = Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).single().unwrap_or_else(Utc::now);
    let mut rng = StdRng::seed_from_u64(seed);
    // Creation times spread over the span, written oldest first as customers arrive: the
    // time-ordered indexes (id, createdAt) then grow at their ends instead of everywhere.
    let mut ages: Vec<i64> = (0..count).map(|_| rng.gen_range(0..SPAN_SECONDS)).collect();
    ages.sort_unstable_by(|a, b| b.cmp(a));
    let writes = ages
        .into_iter()
        .enumerate()
        .map(move |(i, age)| synthetic(&mut rng, i as u64, until - Duration::seconds(age), until));
    let mut results = futures::stream::iter(writes.map(|w| {
        let store = store.clone();
        async move { store.write_customer(w).await }
    }))
    .buffer_unordered(2048);
    let mut done = 0u64;
    while let Some(r) = results.next().await {
        r.map_err(|e| format!("seed write failed: {e}"))?;
        done += 1;
        if done % 100_000 == 0 {
            eprintln!("  {done} customers");
        }
    }
    Ok(())
}
