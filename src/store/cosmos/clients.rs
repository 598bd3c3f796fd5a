//! OAuth clients on Cosmos: one document per client (pk = id).
use super::{internal, CallError, CosmosStore};
use crate::store::{Client, ClientStore, StoreError, StoreResult};
use azure_data_cosmos::{FeedScope, Query};
use serde_json::Value;

fn to_doc(c: &Client) -> StoreResult<Value> {
    let mut v = serde_json::to_value(c).map_err(internal)?;
    v["createdAtUs"] = c.created_at.timestamp_micros().into();
    Ok(v)
}

fn from_doc(mut v: Value) -> StoreResult<Client> {
    if let Some(m) = v.as_object_mut() {
        m.retain(|k, _| !k.starts_with('_'));
    }
    serde_json::from_value(v).map_err(internal)
}

#[async_trait::async_trait]
impl ClientStore for CosmosStore {
    async fn create_client(&self, c: &Client) -> StoreResult<()> {
        let doc = to_doc(c)?;
        match self.call("client.create", || self.clients.create_item(c.id.clone(), &c.id, &doc, None)).await {
            Ok(_) => Ok(()),
            Err(CallError::Conflict) => {
                // A retried create that had succeeded reads back identical.
                match self.get_client(&c.id).await? {
                    Some(existing) if existing == *c => Ok(()),
                    _ => Err(StoreError::Conflict { field: "id", existing_id: c.id.clone() }),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn get_client(&self, id: &str) -> StoreResult<Option<Client>> {
        self.read_doc::<Value>(&self.clients, "client.read", id, id).await?.map(|(v, _)| from_doc(v)).transpose()
    }

    async fn list_clients(&self) -> StoreResult<Vec<Client>> {
        let q = Query::from("SELECT * FROM c ORDER BY c.createdAtUs, c.id");
        let docs: Vec<Value> = self.query(&self.clients, "client.list", q, FeedScope::full_container(), None).await?;
        docs.into_iter().map(from_doc).collect()
    }

    async fn update_client(&self, c: &Client) -> StoreResult<()> {
        let doc = to_doc(c)?;
        match self.call("client.replace", || self.clients.replace_item(c.id.clone(), &c.id, &doc, None)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
