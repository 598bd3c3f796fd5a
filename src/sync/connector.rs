//! Connectors: where synced records come from. The contract (docs/sync.md) is HTTP + JSON,
//! paged: `GET {base}/{entity}?since=&cursor=&limit=` → `{items, nextCursor}` with an
//! `X-Api-Key` header. `file://<dir>` reads `<dir>/<entity>.ndjson` for local imports and demos.
use crate::config::Config;
use crate::secrets::{Secrets, SecretsError, CONNECTOR_API_KEY};
use crate::store::SyncEntity;
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;

/// One page: each item is a JSON value, or why its line could not be read (file connector).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Result<Value, String>>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FetchError {
    /// Worth another try: 5xx, 429, timeouts, connection errors, malformed pages.
    Retryable(String),
    /// Another try would answer the same: 4xx, a missing file, a bad cursor.
    Fatal(String),
}

#[async_trait]
pub trait Connector: Send + Sync {
    async fn fetch(&self, entity: SyncEntity, since: Option<DateTime<Utc>>, cursor: Option<&str>, limit: u32) -> Result<Page, FetchError>;
}

/// The connector for CONNECTOR_BASE_URL, with its API key read from the Secrets port.
pub async fn open(config: &Config, secrets: &Arc<dyn Secrets>) -> Result<Arc<dyn Connector>, String> {
    let base = config.connector_base_url.as_deref().ok_or("no connector configured (CONNECTOR_BASE_URL is not set)")?;
    if let Some(dir) = base.strip_prefix("file://") {
        return Ok(Arc::new(FileConnector { dir: PathBuf::from(dir) }));
    }
    let api_key = match secrets.versions(CONNECTOR_API_KEY).await {
        Ok(v) => v.into_iter().next().map(|v| v.value),
        // The local secrets file may simply not have one: then no header is sent.
        Err(SecretsError::NotFound(_)) if config.keyvault_url.is_none() => None,
        Err(e) => return Err(format!("cannot read {CONNECTOR_API_KEY}: {e}")),
    };
    let client = reqwest::Client::builder()
        .timeout(config.connector_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the connector client: {e}"))?;
    let shown = shown_url(base)?;
    Ok(Arc::new(HttpConnector { base: base.trim_end_matches('/').to_string(), shown, api_key, client }))
}

/// The base URL as job reasons may show it to API clients: without credentials or query.
fn shown_url(base: &str) -> Result<String, String> {
    let mut shown = url::Url::parse(base).map_err(|_| "CONNECTOR_BASE_URL is not a valid URL".to_string())?;
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    Ok(shown.to_string().trim_end_matches('/').to_string())
}

/// A page larger than this is refused (a limit of 100 records leaves plenty of room).
const MAX_PAGE_BYTES: usize = 32 << 20;

pub struct HttpConnector {
    base: String,
    /// `base` as it may appear in messages.
    shown: String,
    api_key: Option<crate::secrets::SecretString>,
    client: reqwest::Client,
}

/// A page body: `{items: [...], nextCursor: string|null}`.
pub fn parse_page(body: &[u8]) -> Result<Page, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("malformed page: not JSON ({e})"))?;
    let items = v.get("items").and_then(Value::as_array).ok_or("malformed page: no items array")?;
    let next_cursor = match v.get("nextCursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::String(_)) => None,
        Some(_) => return Err("malformed page: nextCursor is not a string".into()),
    };
    Ok(Page { items: items.iter().cloned().map(Ok).collect(), next_cursor })
}

#[async_trait]
impl Connector for HttpConnector {
    async fn fetch(&self, entity: SyncEntity, since: Option<DateTime<Utc>>, cursor: Option<&str>, limit: u32) -> Result<Page, FetchError> {
        let url = format!("{}/{}", self.base, entity.as_str());
        let shown = format!("{}/{}", self.shown, entity.as_str());
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(s) = since {
            query.push(("since", s.to_rfc3339_opts(SecondsFormat::Millis, true)));
        }
        if let Some(c) = cursor {
            query.push(("cursor", c.to_string()));
        }
        let mut req = self.client.get(&url).query(&query).header("accept", "application/json");
        if let Some(k) = &self.api_key {
            req = req.header("x-api-key", k.expose());
        }
        let resp = req.send().await.map_err(|e| {
            let what = if e.is_timeout() { "timed out" } else { "unreachable" };
            FetchError::Retryable(format!("connector {what}: GET {shown}"))
        })?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| {
            let what = if e.is_timeout() { "timed out" } else { "broke off" };
            FetchError::Retryable(format!("connector {what} while sending GET {shown}"))
        })?;
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
            return Err(FetchError::Retryable(format!("connector answered {status} to GET {shown}")));
        }
        if !status.is_success() {
            return Err(FetchError::Fatal(format!("connector answered {status} to GET {shown}")));
        }
        if body.len() > MAX_PAGE_BYTES {
            return Err(FetchError::Fatal(format!("connector page larger than {} MiB from GET {shown}", MAX_PAGE_BYTES >> 20)));
        }
        parse_page(&body).map_err(FetchError::Retryable)
    }
}

/// NDJSON files: one record a line; the cursor is the number of lines already read.
pub struct FileConnector {
    dir: PathBuf,
}

fn updated_at(v: &Value) -> Option<DateTime<Utc>> {
    v.get("updatedAt").and_then(Value::as_str).and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&Utc))
}

#[async_trait]
impl Connector for FileConnector {
    async fn fetch(&self, entity: SyncEntity, since: Option<DateTime<Utc>>, cursor: Option<&str>, limit: u32) -> Result<Page, FetchError> {
        let path = self.dir.join(format!("{}.ndjson", entity.as_str()));
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|e| FetchError::Fatal(format!("cannot read {}: {e}", path.display())))?;
        let start: usize = match cursor {
            None => 0,
            Some(c) => c.parse().map_err(|_| FetchError::Fatal(format!("bad file cursor {c:?}")))?,
        };
        let lines: Vec<&str> = text.lines().collect();
        let mut items = Vec::new();
        let mut at = start;
        while at < lines.len() && items.len() < limit as usize {
            let line = lines[at].trim();
            at += 1;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(v) => {
                    // Records without a readable updatedAt pass through to be reported.
                    if since.is_none_or(|s| updated_at(&v).is_none_or(|u| u >= s)) {
                        items.push(Ok(v));
                    }
                }
                Err(e) => items.push(Err(format!("line {at}: not JSON ({e})"))),
            }
        }
        let next_cursor = (at < lines.len()).then(|| at.to_string());
        Ok(Page { items, next_cursor })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_need_an_items_array_and_a_string_cursor() {
        let p = parse_page(br#"{"items":[{"a":1}],"nextCursor":"c2"}"#).unwrap();
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.next_cursor.as_deref(), Some("c2"));
        assert_eq!(parse_page(br#"{"items":[],"nextCursor":null}"#).unwrap().next_cursor, None);
        assert!(parse_page(b"{\"items\": [").is_err());
        assert!(parse_page(br#"{"data":[]}"#).is_err());
        assert!(parse_page(br#"{"items":[],"nextCursor":5}"#).is_err());
    }

    #[test]
    fn messages_never_show_credentials_from_the_base_url() {
        assert_eq!(shown_url("https://user:s3cret@crm.example.com/sync/?token=abc").unwrap(), "https://crm.example.com/sync");
        assert!(shown_url("http://").is_err());
    }

    #[tokio::test]
    async fn the_file_connector_pages_by_line_and_filters_by_since() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            r#"{"externalId":"a","updatedAt":"2025-01-01T00:00:00Z"}"#,
            "",
            "{not json",
            r#"{"externalId":"b","updatedAt":"2025-03-01T00:00:00Z"}"#,
            r#"{"externalId":"c","updatedAt":"2025-05-01T00:00:00Z"}"#,
        ];
        std::fs::write(dir.path().join("customers.ndjson"), lines.join("\n")).unwrap();
        let c = FileConnector { dir: dir.path().to_path_buf() };
        let p1 = c.fetch(SyncEntity::Customers, None, None, 2).await.unwrap();
        assert_eq!(p1.items.len(), 2);
        assert!(p1.items[1].is_err());
        let p2 = c.fetch(SyncEntity::Customers, None, p1.next_cursor.as_deref(), 2).await.unwrap();
        assert_eq!(p2.items.len(), 2);
        assert_eq!(p2.next_cursor, None);
        let since = DateTime::parse_from_rfc3339("2025-02-01T00:00:00Z").unwrap().with_timezone(&Utc);
        let p = c.fetch(SyncEntity::Customers, Some(since), None, 10).await.unwrap();
        let ids: Vec<_> = p.items.iter().filter_map(|i| i.as_ref().ok()).map(|v| v["externalId"].clone()).collect();
        assert_eq!(ids, ["b", "c"]);
        assert!(matches!(c.fetch(SyncEntity::Opportunities, None, None, 2).await, Err(FetchError::Fatal(_))));
    }
}
