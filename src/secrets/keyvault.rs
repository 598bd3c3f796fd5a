//! Secrets in Azure Key Vault. Each refresh lists a secret's versions (one call, following
//! `nextLink`), keeps the enabled ones that are in their validity window, newest first, and
//! reads the value of a version only the first time it is seen: a Key Vault version's value
//! never changes, so a steady refresh costs one list call per secret.
use super::{SecretString, SecretVersion, Secrets, SecretsError};
use crate::config::{AzureCredentialKind, Config};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_core::http::StatusCode;
use azure_core::time::OffsetDateTime;
use azure_identity::{DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};
use azure_security_keyvault_secrets::models::{SecretClientGetSecretOptions, SecretProperties};
use azure_security_keyvault_secrets::{ResourceExt, SecretClient};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Versions returned per secret: the signer, the one before it, and one spare.
pub const MAX_VERSIONS: usize = 3;

/// A read that takes longer fails: start-up then reports it inside Flex Consumption's 30 s start
/// window, and a background refresh keeps the last keys.
const READ_TIMEOUT: Duration = Duration::from_secs(12);

pub struct KeyVaultSecrets {
    client: SecretClient,
    /// secret name -> version id -> value, for the versions returned by the last read.
    values: Mutex<HashMap<String, HashMap<String, SecretString>>>,
}

/// The credential the app uses for Azure: its managed identity (user-assigned when
/// AZURE_CLIENT_ID is set), or the developer's own login when AZURE_CREDENTIAL=developer.
pub fn azure_credential(config: &Config) -> Result<Arc<dyn TokenCredential>, String> {
    match config.azure_credential {
        AzureCredentialKind::ManagedIdentity => {
            let options = ManagedIdentityCredentialOptions {
                user_assigned_id: config.azure_client_id.clone().map(UserAssignedId::ClientId),
                ..Default::default()
            };
            let credential = ManagedIdentityCredential::new(Some(options)).map_err(|e| format!("managed identity: {e}"))?;
            Ok(credential)
        }
        AzureCredentialKind::Developer => {
            let credential = DeveloperToolsCredential::new(None).map_err(|e| format!("developer credential: {e}"))?;
            Ok(credential)
        }
    }
}

impl KeyVaultSecrets {
    /// Over a ready client (tests pass one with their own transport and credential).
    pub fn new(client: SecretClient) -> KeyVaultSecrets {
        KeyVaultSecrets { client, values: Mutex::new(HashMap::new()) }
    }

    /// The vault at KEYVAULT_URL with the configured Azure credential.
    pub fn from_config(config: &Config) -> Result<KeyVaultSecrets, String> {
        let url = config.keyvault_url.as_deref().ok_or("KEYVAULT_URL: required for Key Vault")?;
        let client = SecretClient::new(url, azure_credential(config)?, None).map_err(|e| format!("KEYVAULT_URL {url:?}: {e}"))?;
        Ok(KeyVaultSecrets::new(client))
    }

    /// The enabled, currently valid versions of `name`, newest first, at most `MAX_VERSIONS`.
    async fn newest_versions(&self, name: &str) -> Result<Vec<Listed>, SecretsError> {
        let mut pager = self.client.list_secret_properties_versions(name, None).map_err(|e| backend(name, e))?;
        let now = OffsetDateTime::now_utc();
        let mut listed = Vec::new();
        while let Some(p) = pager.try_next().await.map_err(|e| backend(name, e))? {
            if let Some(v) = Listed::usable(&p, now) {
                listed.push(v);
            }
        }
        // Newest first; the version id breaks ties so the order is stable.
        listed.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.version.cmp(&a.version)));
        listed.truncate(MAX_VERSIONS);
        Ok(listed)
    }

    async fn read(&self, name: &str) -> Result<Vec<SecretVersion>, SecretsError> {
        let listed = self.newest_versions(name).await?;
        let known = self.values.lock().get(name).cloned().unwrap_or_default();
        let mut out = Vec::with_capacity(listed.len());
        for v in listed {
            let value = match known.get(&v.version) {
                Some(value) => value.clone(),
                None => self.value_of(name, &v.version).await?,
            };
            out.push(SecretVersion { version: v.version, value, created: v.created });
        }
        let now_known = out.iter().map(|v| (v.version.clone(), v.value.clone())).collect();
        self.values.lock().insert(name.to_string(), now_known);
        Ok(out)
    }

    async fn value_of(&self, name: &str, version: &str) -> Result<SecretString, SecretsError> {
        let options = SecretClientGetSecretOptions { secret_version: Some(version.to_string()), ..Default::default() };
        let secret = self
            .client
            .get_secret(name, Some(options))
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| backend(name, e))?;
        secret
            .value
            .map(SecretString::new)
            .ok_or_else(|| SecretsError::Backend(format!("Key Vault secret {name}/{version} has no value")))
    }
}

#[async_trait]
impl Secrets for KeyVaultSecrets {
    async fn versions(&self, name: &str) -> Result<Vec<SecretVersion>, SecretsError> {
        match tokio::time::timeout(READ_TIMEOUT, self.read(name)).await {
            Ok(r) => r,
            Err(_) => Err(SecretsError::Backend(format!("Key Vault: reading {name} took longer than {READ_TIMEOUT:?}"))),
        }
    }
}

/// One version from the listing (the listing carries no values).
struct Listed {
    version: String,
    created: DateTime<Utc>,
}

impl Listed {
    /// Enabled, inside its not-before/expiry window, with a version id and a creation time.
    fn usable(p: &SecretProperties, now: OffsetDateTime) -> Option<Listed> {
        let a = p.attributes.as_ref()?;
        if a.enabled != Some(true) || a.not_before.is_some_and(|t| t > now) || a.expires.is_some_and(|t| t <= now) {
            return None;
        }
        let version = p.resource_id().ok()?.version.filter(|v| !v.is_empty())?;
        let created = a.created.and_then(|t| DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()))?;
        Some(Listed { version, created })
    }
}

fn backend(name: &str, e: azure_core::Error) -> SecretsError {
    if e.http_status() == Some(StatusCode::NotFound) {
        return SecretsError::NotFound(name.to_string());
    }
    // The kind names the HTTP status and Key Vault's error code; neither carries a value.
    SecretsError::Backend(format!("Key Vault ({name}): {:?}: {e}", e.kind()))
}
