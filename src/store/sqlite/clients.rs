//! OAuth clients on SQLite.
use super::{internal, SqliteStore};
use crate::store::{Client, ClientStore, StoreError, StoreResult};
use rusqlite::{params, OptionalExtension};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clients (id TEXT PRIMARY KEY, created_at TEXT NOT NULL, doc TEXT NOT NULL) WITHOUT ROWID;
";

#[async_trait::async_trait]
impl ClientStore for SqliteStore {
    async fn create_client(&self, c: &Client) -> StoreResult<()> {
        let doc = serde_json::to_string(c).map_err(internal)?;
        let (id, created) = (c.id.clone(), c.created_at.to_rfc3339());
        self.write(move |conn| {
            conn.execute("INSERT INTO clients (id, created_at, doc) VALUES (?1, ?2, ?3)", params![id, created, doc])
                .map_err(|e| match e.to_string().contains("UNIQUE") {
                    true => StoreError::Conflict { field: "id", existing_id: id.clone() },
                    false => e.into(),
                })?;
            Ok(())
        })
        .await
    }

    async fn get_client(&self, id: &str) -> StoreResult<Option<Client>> {
        let id = id.to_string();
        self.read_point(move |conn| {
            let doc: Option<String> = conn
                .prepare_cached("SELECT doc FROM clients WHERE id = ?1")?
                .query_row([id], |r| r.get(0))
                .optional()?;
            doc.map(|d| serde_json::from_str(&d).map_err(internal)).transpose()
        })
        .await
    }

    async fn list_clients(&self) -> StoreResult<Vec<Client>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached("SELECT doc FROM clients ORDER BY created_at, id")?;
            let docs = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
            docs.iter().map(|d| serde_json::from_str(d).map_err(internal)).collect()
        })
        .await
    }

    async fn update_client(&self, c: &Client) -> StoreResult<()> {
        let doc = serde_json::to_string(c).map_err(internal)?;
        let id = c.id.clone();
        self.write(move |conn| match conn.execute("UPDATE clients SET doc = ?2 WHERE id = ?1", params![id, doc])? {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        })
        .await
    }
}
