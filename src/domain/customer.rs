//! Customer, its lifecycle, and the parsing of create and merge-patch bodies.
use super::validate;
use crate::error::FieldError;
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LifecycleStage {
    Lead,
    Opportunity,
    Customer,
    Churn,
}

impl LifecycleStage {
    pub const ALL: [LifecycleStage; 4] = [Self::Lead, Self::Opportunity, Self::Customer, Self::Churn];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lead => "Lead",
            Self::Opportunity => "Opportunity",
            Self::Customer => "Customer",
            Self::Churn => "Churn",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BillingAddress {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub street: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub zip: Option<String>,
}

pub fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The stored customer. `etag` is the store's opaque version; `converted_at` (first time in
/// stage Customer) feeds insights and is not part of the API's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Customer {
    pub id: String,
    pub external_id: Option<String>,
    pub name: String,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub billing_address: Option<BillingAddress>,
    pub lifecycle_stage: LifecycleStage,
    pub engagement_score: u8,
    pub tags: Vec<String>,
    pub custom_fields: Map<String, Value>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub etag: String,
}

impl Customer {
    /// The full API representation (`GET /customers/{id}`).
    pub fn to_api(&self) -> Value {
        serde_json::to_value(self.view()).unwrap_or(Value::Null)
    }

    /// The full API representation, borrowed, to serialise without building a `Value`.
    pub fn view(&self) -> CustomerView<'_> {
        CustomerView {
            summary: self.summary(),
            billing_address: self.billing_address.as_ref(),
            tags: &self.tags,
            custom_fields: &self.custom_fields,
        }
    }

    /// The list representation: the summary fields of the spec's list example.
    pub fn summary(&self) -> CustomerSummary<'_> {
        CustomerSummary {
            id: &self.id,
            external_id: self.external_id.as_deref(),
            name: &self.name,
            email: self.email.as_deref(),
            phone: self.phone.as_deref(),
            lifecycle_stage: self.lifecycle_stage,
            engagement_score: self.engagement_score,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }

    /// Lower-cased name: the sort key for `sort=name`, the same on every store.
    pub fn name_key(&self) -> String {
        self.name.to_lowercase()
    }
}

/// A customer as lists show it (the spec's list example).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerSummary<'a> {
    pub id: &'a str,
    pub external_id: Option<&'a str>,
    pub name: &'a str,
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub lifecycle_stage: LifecycleStage,
    pub engagement_score: u8,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
}

/// A customer as `GET /customers/{id}` shows it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomerView<'a> {
    #[serde(flatten)]
    pub summary: CustomerSummary<'a>,
    pub billing_address: Option<&'a BillingAddress>,
    pub tags: &'a [String],
    pub custom_fields: &'a Map<String, Value>,
}

pub const MAX_TAGS: usize = 50;
pub const MAX_CUSTOM_FIELDS_BYTES: usize = 16 * 1024;

/// The fields a client may set. On create every absent field takes its default; on patch
/// only present fields change (RFC 7396).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerFields {
    pub external_id: Option<Option<String>>,
    pub name: Option<String>,
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    /// `Some(None)` removes the address; `Some(Some(map))` merges key by key.
    pub billing_address: Option<Option<Map<String, Value>>>,
    pub lifecycle_stage: Option<LifecycleStage>,
    pub engagement_score: Option<u8>,
    pub tags: Option<Vec<String>>,
    /// Merge patch for custom fields: a `null` value deletes that key.
    pub custom_fields: Option<Map<String, Value>>,
}

const FIELDS: [&str; 9] = [
    "externalId", "name", "email", "phone", "billingAddress", "lifecycleStage", "engagementScore", "tags", "customFields",
];

/// Parses a create (`is_patch == false`) or merge-patch body, collecting one error per bad field.
pub fn parse_fields(body: &Value, is_patch: bool) -> Result<CustomerFields, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(obj) = body.as_object() else {
        return Err(vec![FieldError::new("body", "Expected a JSON object", "Esperado um objeto JSON")]);
    };
    let mut f = CustomerFields::default();
    for (key, value) in obj {
        if !FIELDS.contains(&key.as_str()) {
            let read_only = matches!(key.as_str(), "id" | "createdAt" | "updatedAt");
            errors.push(if read_only {
                FieldError::new(key, "Read-only field", "Campo somente leitura")
            } else {
                FieldError::new(key, "Unknown field", "Campo desconhecido")
            });
            continue;
        }
        if let Err(e) = parse_one(&mut f, key, value) {
            errors.push(e);
        }
    }
    if !is_patch && f.name.is_none() && !errors.iter().any(|e| e.field == "name") {
        errors.push(FieldError::new("name", "Required", "Obrigatório"));
    }
    if errors.is_empty() {
        Ok(f)
    } else {
        errors.sort_by(|a, b| a.field.cmp(&b.field));
        Err(errors)
    }
}

fn type_error(field: &str, en: &str, pt: &str) -> FieldError {
    FieldError::new(field, format!("Expected {en}"), format!("Esperado {pt}"))
}

fn nullable_str<'a>(field: &str, v: &'a Value) -> Result<Option<&'a str>, FieldError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(type_error(field, "a string or null", "uma string ou null")),
    }
}

fn parse_one(f: &mut CustomerFields, key: &str, v: &Value) -> Result<(), FieldError> {
    match key {
        "name" => {
            let s = v.as_str().ok_or_else(|| type_error(key, "a string", "uma string"))?;
            f.name = Some(validate::text(key, s, 1, 200)?);
        }
        "externalId" => {
            f.external_id = Some(match nullable_str(key, v)? {
                Some(s) => Some(validate::text(key, s, 1, 128)?),
                None => None,
            });
        }
        "email" => {
            f.email = Some(match nullable_str(key, v)? {
                Some(s) => Some(validate::email(key, s)?),
                None => None,
            });
        }
        "phone" => {
            f.phone = Some(match nullable_str(key, v)? {
                Some(s) => Some(validate::phone(key, s)?),
                None => None,
            });
        }
        "lifecycleStage" => {
            let s = v.as_str().and_then(LifecycleStage::parse).ok_or_else(|| {
                FieldError::new(
                    key,
                    "Expected one of Lead, Opportunity, Customer, Churn",
                    "Esperado um de Lead, Opportunity, Customer, Churn",
                )
            })?;
            f.lifecycle_stage = Some(s);
        }
        "engagementScore" => {
            let n = v.as_u64().filter(|n| *n <= 100).ok_or_else(|| {
                FieldError::new(key, "Expected an integer from 0 to 100", "Esperado um inteiro de 0 a 100")
            })?;
            f.engagement_score = Some(n as u8);
        }
        "tags" => {
            let arr = v.as_array().ok_or_else(|| type_error(key, "an array of strings", "um array de strings"))?;
            if arr.len() > MAX_TAGS {
                return Err(FieldError::new(key, "At most 50 tags", "No máximo 50 tags"));
            }
            let mut tags: Vec<String> = Vec::with_capacity(arr.len());
            for t in arr {
                let s = t.as_str().ok_or_else(|| type_error(key, "an array of strings", "um array de strings"))?;
                let s = validate::text(key, s, 1, 64)
                    .map_err(|_| FieldError::new(key, "Each tag must have 1 to 64 characters", "Cada tag deve ter de 1 a 64 caracteres"))?;
                if !tags.contains(&s) {
                    tags.push(s);
                }
            }
            f.tags = Some(tags);
        }
        "customFields" => {
            let m = v.as_object().ok_or_else(|| type_error(key, "an object", "um objeto"))?;
            if serde_json::to_vec(m).map(|b| b.len()).unwrap_or(usize::MAX) > MAX_CUSTOM_FIELDS_BYTES {
                return Err(FieldError::new(key, "At most 16 KiB", "No máximo 16 KiB"));
            }
            f.custom_fields = Some(m.clone());
        }
        "billingAddress" => {
            f.billing_address = Some(match v {
                Value::Null => None,
                Value::Object(m) => Some(parse_address(m)?),
                _ => return Err(type_error(key, "an object or null", "um objeto ou null")),
            });
        }
        _ => unreachable!("checked against FIELDS"),
    }
    Ok(())
}

fn parse_address(m: &Map<String, Value>) -> Result<Map<String, Value>, FieldError> {
    let mut out = Map::new();
    for (k, v) in m {
        let field = format!("billingAddress.{k}");
        if !["street", "city", "state", "country", "zip"].contains(&k.as_str()) {
            return Err(FieldError::new(field, "Unknown field", "Campo desconhecido"));
        }
        let value = match nullable_str(&field, v)? {
            None => Value::Null,
            Some(s) if k == "country" => Value::String(validate::country(&field, s)?),
            Some(s) => Value::String(validate::text(&field, s, 1, 200)?),
        };
        out.insert(k.clone(), value);
    }
    Ok(out)
}

fn merge_address(current: Option<&BillingAddress>, patch: &Map<String, Value>) -> Option<BillingAddress> {
    let mut m = match current {
        Some(a) => serde_json::to_value(a).ok().and_then(|v| v.as_object().cloned()).unwrap_or_default(),
        None => Map::new(),
    };
    for (k, v) in patch {
        if v.is_null() {
            m.remove(k);
        } else {
            m.insert(k.clone(), v.clone());
        }
    }
    if m.is_empty() {
        None
    } else {
        serde_json::from_value(Value::Object(m)).ok()
    }
}

impl CustomerFields {
    /// A new customer from a create body. Defaults: Lead, score 0, no tags, no custom fields.
    pub fn into_new_customer(self, id: String, now: DateTime<Utc>) -> Customer {
        // Times are kept to the millisecond everywhere (API, stored document, sort key), so a
        // cursor taken from a stored customer points exactly at its row.
        let now = now.trunc_subsecs(3);
        let mut custom = self.custom_fields.unwrap_or_default();
        custom.retain(|_, v| !v.is_null());
        let stage = self.lifecycle_stage.unwrap_or(LifecycleStage::Lead);
        Customer {
            id,
            external_id: self.external_id.flatten(),
            name: self.name.unwrap_or_default(),
            email: self.email.flatten(),
            phone: self.phone.flatten(),
            billing_address: self.billing_address.flatten().and_then(|m| merge_address(None, &m)),
            lifecycle_stage: stage,
            engagement_score: self.engagement_score.unwrap_or(0),
            tags: self.tags.unwrap_or_default(),
            custom_fields: custom,
            created_at: now,
            updated_at: now,
            converted_at: (stage == LifecycleStage::Customer).then_some(now),
            etag: String::new(),
        }
    }

    /// Applies this merge patch to `current`, returning the new state (updatedAt untouched).
    pub fn apply_to(&self, current: &Customer) -> Customer {
        let mut c = current.clone();
        if let Some(v) = &self.external_id {
            c.external_id = v.clone();
        }
        if let Some(v) = &self.name {
            c.name = v.clone();
        }
        if let Some(v) = &self.email {
            c.email = v.clone();
        }
        if let Some(v) = &self.phone {
            c.phone = v.clone();
        }
        match &self.billing_address {
            Some(None) => c.billing_address = None,
            Some(Some(m)) => c.billing_address = merge_address(c.billing_address.as_ref(), m),
            None => {}
        }
        if let Some(v) = self.lifecycle_stage {
            c.lifecycle_stage = v;
        }
        if let Some(v) = self.engagement_score {
            c.engagement_score = v;
        }
        if let Some(v) = &self.tags {
            c.tags = v.clone();
        }
        if let Some(patch) = &self.custom_fields {
            for (k, v) in patch {
                if v.is_null() {
                    c.custom_fields.remove(k);
                } else {
                    c.custom_fields.insert(k.clone(), v.clone());
                }
            }
        }
        c
    }
}

/// `{field: {from, to}}` for every API field that differs, for `customer.updated`.
pub fn changes(old: &Customer, new: &Customer) -> Map<String, Value> {
    let (a, b) = (old.to_api(), new.to_api());
    let mut out = Map::new();
    for key in FIELDS {
        let (from, to) = (a.get(key).cloned().unwrap_or(Value::Null), b.get(key).cloned().unwrap_or(Value::Null));
        if from != to {
            out.insert(key.to_string(), serde_json::json!({ "from": from, "to": to }));
        }
    }
    out
}

/// One entry into a lifecycle stage, with the time it happened (in the source, for synced data).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StageChange {
    pub customer_id: String,
    pub from: Option<LifecycleStage>,
    pub to: LifecycleStage,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Customer {
        CustomerFields { name: Some("Maria".into()), ..Default::default() }.into_new_customer("cstm_1".into(), Utc::now())
    }

    #[test]
    fn create_requires_name_and_reports_every_bad_field() {
        let errs = parse_fields(&json!({"email": "x", "engagementScore": 101, "foo": 1}), false).unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["email", "engagementScore", "foo", "name"]);
    }

    #[test]
    fn merge_patch_replaces_arrays_and_merges_custom_fields() {
        let mut c = base();
        c.tags = vec!["a".into(), "b".into()];
        c.custom_fields.insert("keep".into(), json!(1));
        c.custom_fields.insert("drop".into(), json!(2));
        let p = parse_fields(&json!({"tags": ["z", "z"], "customFields": {"drop": null, "new": true}}), true).unwrap();
        let n = p.apply_to(&c);
        assert_eq!(n.tags, vec!["z".to_string()]);
        assert_eq!(n.custom_fields, json!({"keep": 1, "new": true}).as_object().unwrap().clone());
    }

    #[test]
    fn billing_address_merges_and_null_removes_it() {
        let c = base();
        let p = parse_fields(&json!({"billingAddress": {"city": "São Paulo", "country": "br"}}), true).unwrap();
        let n = p.apply_to(&c);
        assert_eq!(n.billing_address.as_ref().unwrap().country.as_deref(), Some("BR"));
        let p2 = parse_fields(&json!({"billingAddress": {"city": null}}), true).unwrap();
        let n2 = p2.apply_to(&n);
        assert_eq!(n2.billing_address.as_ref().unwrap().city, None);
        let p3 = parse_fields(&json!({"billingAddress": null}), true).unwrap();
        assert_eq!(p3.apply_to(&n2).billing_address, None);
    }

    #[test]
    fn changes_lists_only_fields_that_changed() {
        let c = base();
        let p = parse_fields(&json!({"lifecycleStage": "Customer", "name": "Maria"}), true).unwrap();
        let ch = changes(&c, &p.apply_to(&c));
        assert_eq!(Value::Object(ch), json!({"lifecycleStage": {"from": "Lead", "to": "Customer"}}));
    }
}
