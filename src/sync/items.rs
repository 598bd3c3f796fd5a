//! Applying one synced record: customers upsert by externalId through the same writes as the
//! API (events, stage history, rollups) at the source's times; opportunities are stored and
//! move their customer's lifecycle.
use crate::api::customers::{new_customer_write, update_customer_write};
use crate::domain::{self, validate, LifecycleStage};
use crate::error::FieldError;
use crate::store::{Opportunity, OpportunityStage, OpportunityWrite, StoreError, SyncItemError};
use crate::App;
use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Created,
    Updated,
    /// Nothing changed, or the stored record is newer than the source's.
    Skipped,
    Invalid(SyncItemError),
}

/// A store failure that stops the job (as opposed to a bad record).
#[derive(Debug)]
pub struct Stop(pub StoreError);

/// How far in the future a source `updatedAt` may be (clock skew) before the record is refused.
const MAX_SKEW_MINUTES: i64 = 5;
/// Attempts at a write that lost a race with an API change of the same customer.
const WRITE_ATTEMPTS: usize = 5;

fn item_error(external_id: Option<&str>, code: &str, message: impl Into<String>) -> Outcome {
    Outcome::Invalid(SyncItemError { external_id: external_id.map(str::to_string), code: code.into(), message: message.into() })
}

fn invalid(external_id: Option<&str>, errors: &[FieldError]) -> Outcome {
    let msg = errors.iter().map(|e| format!("{}: {}", e.field, e.msg.en)).collect::<Vec<_>>().join("; ");
    item_error(external_id, "VALIDATION_ERROR", msg)
}

fn time_field(obj: &Map<String, Value>, key: &str, errors: &mut Vec<FieldError>) -> Option<DateTime<Utc>> {
    match obj.get(key) {
        None | Some(Value::Null) => None,
        Some(v) => {
            let t = v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc));
            if t.is_none() {
                errors.push(FieldError::new(key, "Expected an RFC 3339 date-time", "Esperado data-hora RFC 3339"));
            }
            t
        }
    }
}

/// The record's `updatedAt`, if it has a valid one (for the watermark).
pub fn updated_at(item: &Value) -> Option<DateTime<Utc>> {
    item.get("updatedAt").and_then(Value::as_str).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

/// A record's fields, its externalId and its updatedAt.
type Envelope<'a> = (&'a Map<String, Value>, String, DateTime<Utc>);

/// Reads the fields every record has: externalId and updatedAt (required, not in the future).
fn envelope<'a>(app: &App, item: &'a Value) -> Result<Envelope<'a>, Outcome> {
    let Some(obj) = item.as_object() else {
        return Err(item_error(None, "MALFORMED_ITEM", "The record is not a JSON object"));
    };
    let ext = obj.get("externalId").and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty());
    let mut errors = Vec::new();
    if ext.is_none() {
        errors.push(FieldError::new("externalId", "Required", "Obrigatório"));
    }
    let updated = time_field(obj, "updatedAt", &mut errors);
    match updated {
        None if !errors.iter().any(|e| e.field == "updatedAt") => errors.push(FieldError::new("updatedAt", "Required", "Obrigatório")),
        Some(t) if t > app.clock.now() + Duration::minutes(MAX_SKEW_MINUTES) => {
            errors.push(FieldError::new("updatedAt", "Must not be in the future", "Não pode estar no futuro"))
        }
        _ => {}
    }
    match (ext, updated, errors.is_empty()) {
        (Some(e), Some(u), true) => Ok((obj, e.to_string(), u)),
        _ => Err(invalid(ext, &errors)),
    }
}

fn conflict_error(ext: &str, e: StoreError) -> Result<Outcome, Stop> {
    match e {
        StoreError::Conflict { field, existing_id } => {
            Ok(item_error(Some(ext), "CONFLICT", format!("{field} is already used by customer {existing_id}")))
        }
        other => Err(Stop(other)),
    }
}

pub async fn apply_customer(app: &App, item: &Value) -> Result<Outcome, Stop> {
    let (obj, ext, at) = match envelope(app, item) {
        Ok(v) => v,
        Err(o) => return Ok(o),
    };
    let mut body = obj.clone();
    body.remove("updatedAt");
    let body = Value::Object(body);
    for _ in 0..WRITE_ATTEMPTS {
        let existing = app.store.find_customer_by_external_id(&ext).await.map_err(Stop)?;
        let result = match existing {
            None => {
                let fields = match domain::parse_fields(&body, false) {
                    Ok(f) => f,
                    Err(errs) => return Ok(invalid(Some(&ext), &errs)),
                };
                let customer = fields.into_new_customer(crate::ids::new_id("cstm"), at);
                app.store.write_customer(new_customer_write(customer, at)).await.map(|_| Outcome::Created)
            }
            Some(old) => {
                let fields = match domain::parse_fields(&body, true) {
                    Ok(f) => f,
                    Err(errs) => return Ok(invalid(Some(&ext), &errs)),
                };
                if at < old.updated_at {
                    return Ok(Outcome::Skipped);
                }
                match update_customer_write(&old, fields.apply_to(&old), at) {
                    None => return Ok(Outcome::Skipped),
                    Some(w) => app.store.write_customer(w).await.map(|_| Outcome::Updated),
                }
            }
        };
        match result {
            Ok(o) => return Ok(o),
            // Raced with an API write of the same customer: read it again.
            Err(StoreError::PreconditionFailed) => continue,
            Err(StoreError::Conflict { field: "externalId", .. }) => continue,
            Err(e) => return conflict_error(&ext, e),
        }
    }
    Ok(item_error(Some(&ext), "CONFLICT", "The customer kept changing while it was synced"))
}

const OPPORTUNITY_FIELDS: [&str; 9] =
    ["externalId", "customerExternalId", "name", "amount", "currency", "stage", "createdAt", "closedAt", "updatedAt"];

struct OpportunityFields {
    customer_external_id: String,
    name: String,
    amount: serde_json::Number,
    currency: String,
    stage: OpportunityStage,
    created_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
}

fn parse_opportunity(obj: &Map<String, Value>) -> Result<OpportunityFields, Vec<FieldError>> {
    let mut errors = Vec::new();
    for k in obj.keys() {
        if !OPPORTUNITY_FIELDS.contains(&k.as_str()) {
            errors.push(FieldError::new(k, "Unknown field", "Campo desconhecido"));
        }
    }
    let text = |key: &str, max: usize, errors: &mut Vec<FieldError>| match obj.get(key).and_then(Value::as_str) {
        Some(s) => validate::text(key, s, 1, max).map_err(|e| errors.push(e)).ok(),
        None => {
            errors.push(FieldError::new(key, "Required: a string", "Obrigatório: uma string"));
            None
        }
    };
    let customer_external_id = text("customerExternalId", 128, &mut errors);
    let name = text("name", 200, &mut errors);
    let amount = match obj.get("amount") {
        Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f.is_finite() && f >= 0.0) => Some(n.clone()),
        _ => {
            errors.push(FieldError::new("amount", "Expected a number ≥ 0", "Esperado um número ≥ 0"));
            None
        }
    };
    let currency = match obj.get("currency").and_then(Value::as_str) {
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_alphabetic()) => Some(c.to_ascii_uppercase()),
        _ => {
            errors.push(FieldError::new("currency", "Expected an ISO 4217 code, e.g. BRL", "Esperado código ISO 4217, ex.: BRL"));
            None
        }
    };
    let stage = obj.get("stage").and_then(Value::as_str).and_then(OpportunityStage::parse);
    if stage.is_none() {
        errors.push(FieldError::new("stage", "Expected one of Open, Won, Lost", "Esperado um de Open, Won, Lost"));
    }
    let created_at = time_field(obj, "createdAt", &mut errors);
    if created_at.is_none() && !errors.iter().any(|e| e.field == "createdAt") {
        errors.push(FieldError::new("createdAt", "Required", "Obrigatório"));
    }
    let closed_at = time_field(obj, "closedAt", &mut errors);
    if let (Some(c), Some(cl)) = (created_at, closed_at) {
        if cl < c {
            errors.push(FieldError::new("closedAt", "Must not be before createdAt", "Não pode ser anterior a createdAt"));
        }
    }
    match (customer_external_id, name, amount, currency, stage, created_at) {
        (Some(customer_external_id), Some(name), Some(amount), Some(currency), Some(stage), Some(created_at)) if errors.is_empty() => {
            Ok(OpportunityFields { customer_external_id, name, amount, currency, stage, created_at, closed_at })
        }
        _ => {
            errors.sort_by(|a, b| a.field.cmp(&b.field));
            Err(errors)
        }
    }
}

pub async fn apply_opportunity(app: &App, item: &Value) -> Result<Outcome, Stop> {
    let (obj, ext, at) = match envelope(app, item) {
        Ok(v) => v,
        Err(o) => return Ok(o),
    };
    let f = match parse_opportunity(obj) {
        Ok(f) => f,
        Err(errs) => return Ok(invalid(Some(&ext), &errs)),
    };
    for _ in 0..WRITE_ATTEMPTS {
        let Some(customer) = app.store.find_customer_by_external_id(&f.customer_external_id).await.map_err(Stop)? else {
            return Ok(item_error(
                Some(&ext),
                "CUSTOMER_NOT_FOUND",
                format!("No customer with externalId {} (sync customers first)", f.customer_external_id),
            ));
        };
        let existing = app.store.find_opportunity_by_external_id(&ext).await.map_err(Stop)?;
        if existing.as_ref().is_some_and(|e| e.updated_at > at) {
            return Ok(Outcome::Skipped);
        }
        let opportunity = Opportunity {
            id: existing.as_ref().map(|e| e.id.clone()).unwrap_or_else(|| crate::ids::new_id("opp")),
            external_id: ext.clone(),
            customer_id: customer.id.clone(),
            customer_external_id: f.customer_external_id.clone(),
            name: f.name.clone(),
            amount: f.amount.clone(),
            currency: f.currency.clone(),
            stage: f.stage,
            created_at: f.created_at,
            closed_at: f.closed_at,
            updated_at: at,
        };
        if existing.as_ref() == Some(&opportunity) {
            return Ok(Outcome::Skipped);
        }
        // Only a new opportunity or a new stage moves the customer, so a re-sync of an old
        // won deal does not pull a churned customer back.
        let stage_moved = existing.as_ref().is_none_or(|e| e.stage != f.stage);
        let target = match (stage_moved, f.stage, customer.lifecycle_stage) {
            (true, OpportunityStage::Open, LifecycleStage::Lead) => Some((LifecycleStage::Opportunity, f.created_at)),
            (true, OpportunityStage::Won, s) if s != LifecycleStage::Customer => {
                Some((LifecycleStage::Customer, f.closed_at.unwrap_or(at)))
            }
            _ => None,
        };
        let customer_write = target.and_then(|(stage, when)| {
            let mut moved = customer.clone();
            moved.lifecycle_stage = stage;
            update_customer_write(&customer, moved, when)
        });
        let created = existing.is_none();
        match app.store.write_opportunity(OpportunityWrite { opportunity, customer: customer_write }).await {
            Ok(()) => return Ok(if created { Outcome::Created } else { Outcome::Updated }),
            Err(StoreError::PreconditionFailed) => continue,
            Err(e) => return conflict_error(&ext, e),
        }
    }
    Ok(item_error(Some(&ext), "CONFLICT", "The customer kept changing while the opportunity was synced"))
}
