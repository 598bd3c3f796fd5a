//! The secrets port: the JWT signing key and the webhook HMAC key (and the Service Bus send key,
//! the connector API key). `local` keeps them in a 0600 file; `keyvault` reads Azure Key Vault.
//! Keys are held in a `KeyRing` refreshed in the background, never fetched on a request path.
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use parking_lot::RwLock;
use std::sync::Arc;

pub mod keyvault;
pub mod local;

pub const JWT_SIGNING_KEY: &str = "jwt-signing-key";
pub const WEBHOOK_HMAC_KEY: &str = "webhook-hmac-key";
pub const SERVICEBUS_SEND_KEY: &str = "servicebus-send-key";
pub const CONNECTOR_API_KEY: &str = "connector-api-key";

/// A secret value that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(***)")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SecretVersion {
    /// The version id; used as the JWT `kid`.
    pub version: String,
    pub value: SecretString,
    pub created: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secret {0} not found")]
    NotFound(String),
    #[error("secrets backend: {0}")]
    Backend(String),
}

#[async_trait]
pub trait Secrets: Send + Sync + 'static {
    /// The enabled versions of a secret, newest first (at most a few).
    async fn versions(&self, name: &str) -> Result<Vec<SecretVersion>, SecretsError>;
}

/// The keys in use: for each secret, the newest enabled version and the one before it.
#[derive(Debug, Default, Clone)]
pub struct Keys {
    pub jwt: Vec<SecretVersion>,
    pub webhook: Vec<SecretVersion>,
}

#[derive(Clone)]
pub struct KeyRing {
    inner: Arc<RwLock<Arc<Keys>>>,
    source: Arc<dyn Secrets>,
}

impl KeyRing {
    /// Loads the keys once; start-up fails if they cannot be read.
    pub async fn load(source: Arc<dyn Secrets>) -> Result<KeyRing, SecretsError> {
        let ring = KeyRing { inner: Arc::new(RwLock::new(Arc::new(Keys::default()))), source };
        ring.refresh().await?;
        Ok(ring)
    }

    pub async fn refresh(&self) -> Result<(), SecretsError> {
        let mut jwt = self.source.versions(JWT_SIGNING_KEY).await?;
        let mut webhook = self.source.versions(WEBHOOK_HMAC_KEY).await?;
        jwt.truncate(2);
        webhook.truncate(2);
        if jwt.is_empty() {
            return Err(SecretsError::NotFound(JWT_SIGNING_KEY.into()));
        }
        *self.inner.write() = Arc::new(Keys { jwt, webhook });
        Ok(())
    }

    pub fn current(&self) -> Arc<Keys> {
        self.inner.read().clone()
    }

    pub fn source(&self) -> &Arc<dyn Secrets> {
        &self.source
    }

    /// Re-reads the keys every `every`; a failed read keeps the last good keys.
    pub fn spawn_refresh(&self, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
        let ring = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = ring.refresh().await {
                    tracing::warn!(error = %e, "key refresh failed; keeping the last keys");
                }
            }
        })
    }
}
