//! OAuth 2.0 client credentials: client secrets, access tokens (HS256 JWT with `kid`), scopes,
//! and validation of every bearer token.
use crate::clock::SharedClock;
use crate::secrets::{KeyRing, SecretString};
use crate::store::{Client, Store, StoreError};
use base64::Engine;
use dashmap::DashMap;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

pub const SCOPES: [&str; 6] =
    ["customer.read", "customer.write", "insights.read", "sync.read", "sync.write", "webhooks.manage"];

/// Leeway for exp/nbf, for clocks that are slightly apart.
pub const LEEWAY_SECONDS: u64 = 30;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub scope: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// Who is calling, from a validated token.
#[derive(Debug, Clone, PartialEq)]
pub struct Principal {
    pub client_id: String,
    pub scopes: Vec<String>,
}

impl Principal {
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Missing,
    Invalid,
    Expired,
    Revoked,
}

#[derive(Debug, PartialEq, Eq)]
pub enum GrantError {
    InvalidClient,
    InvalidScope,
    Store(String),
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new client secret: 32 random bytes, base64url.
pub fn new_secret() -> SecretString {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    SecretString::new(format!("c360s_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)))
}

/// Splits a space-separated scope string, rejecting unknown scopes.
pub fn parse_scopes(s: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for sc in s.split_whitespace() {
        if !SCOPES.contains(&sc) {
            return Err(sc.to_string());
        }
        if !out.iter().any(|o| o == sc) {
            out.push(sc.to_string());
        }
    }
    Ok(out)
}

pub struct Issued {
    pub access_token: SecretString,
    pub expires_in: u64,
    pub scope: String,
}

pub struct Auth {
    store: Arc<dyn Store>,
    keys: KeyRing,
    clock: SharedClock,
    issuer: String,
    audience: String,
    ttl: Duration,
    cache_ttl: Duration,
    /// How long every instance may take to learn of a new key version.
    key_propagation: Duration,
    /// client id -> (still active?, when checked): revocation reaches validation within cache_ttl.
    active: DashMap<String, (bool, Instant)>,
    /// Compared against when the client id is unknown, so both paths cost the same.
    dummy_hash: String,
    /// Tokens whose signature and claims were verified, by the whole token.
    verified: DashMap<Box<str>, Verified>,
}

/// At most this many verified tokens are remembered; past it the cache starts again.
const MAX_VERIFIED_TOKENS: usize = 100_000;

#[derive(Debug, Clone)]
struct Verified {
    kid: String,
    exp: i64,
    nbf: i64,
    principal: Principal,
}

impl Auth {
    pub fn new(store: Arc<dyn Store>, keys: KeyRing, clock: SharedClock, cfg: &crate::config::Config) -> Auth {
        Auth {
            store,
            keys,
            clock,
            issuer: cfg.jwt_issuer.clone(),
            audience: cfg.jwt_audience.clone(),
            ttl: cfg.token_ttl,
            cache_ttl: cfg.client_cache_ttl,
            key_propagation: cfg.secrets_refresh,
            active: DashMap::new(),
            dummy_hash: hash_secret("no such client"),
            verified: DashMap::new(),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The client-credentials grant.
    pub async fn grant(&self, client_id: &str, secret: &SecretString, scope: Option<&str>) -> Result<Issued, GrantError> {
        let client = match self.store.get_client(client_id).await {
            Ok(c) => c,
            Err(e) => return Err(GrantError::Store(e.to_string())),
        };
        let presented = hash_secret(secret.expose());
        let stored = client.as_ref().map_or(self.dummy_hash.as_str(), |c| c.secret_hash.as_str());
        let matches: bool = presented.as_bytes().ct_eq(stored.as_bytes()).into();
        let client = match client {
            Some(c) if matches && c.revoked_at.is_none() => c,
            _ => return Err(GrantError::InvalidClient),
        };
        let requested = match scope.map(str::trim).filter(|s| !s.is_empty()) {
            None => client.scopes.clone(),
            Some(s) => parse_scopes(s).map_err(|_| GrantError::InvalidScope)?,
        };
        if requested.iter().any(|s| !client.scopes.contains(s)) {
            return Err(GrantError::InvalidScope);
        }
        let token = self.sign(&client.id, &requested.join(" ")).map_err(GrantError::Store)?;
        self.active.insert(client.id.clone(), (true, Instant::now()));
        Ok(Issued { access_token: token, expires_in: self.ttl.as_secs(), scope: requested.join(" ") })
    }

    /// Signs a token for `sub` with the newest key.
    pub fn sign(&self, sub: &str, scope: &str) -> Result<SecretString, String> {
        let keys = self.keys.current();
        // Sign with a new version only once every instance has had time to load it, so a token
        // from one instance always verifies on the others during a rotation.
        let settled = self.clock.now() - chrono::Duration::from_std(self.key_propagation).unwrap_or_default();
        let key = keys.jwt.iter().find(|k| k.created <= settled).or(keys.jwt.last()).ok_or("no signing key")?;
        let now = self.clock.now().timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: sub.to_string(),
            scope: scope.to_string(),
            iat: now,
            nbf: now,
            exp: now + self.ttl.as_secs() as i64,
            jti: crate::ids::new_id("tok"),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.version.clone());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(key.value.expose().as_bytes()))
            .map(SecretString::new)
            .map_err(|e| e.to_string())
    }

    /// Validates a bearer token: pinned HS256, known kid, signature, iss, aud, exp, nbf, and a
    /// client that is still active.
    pub async fn validate(&self, token: &str) -> Result<Principal, TokenError> {
        let keys = self.keys.current();
        // A token already verified skips the signature and parsing; everything that can change
        // (its key still enabled, its time window, its client) is checked again on every call.
        let cached = self.verified.get(token).map(|e| e.clone());
        let v = match cached {
            Some(v) if keys.jwt.iter().any(|k| k.version == v.kid) => v,
            _ => {
                let v = self.verify_signature(token, &keys)?;
                if self.verified.len() >= MAX_VERIFIED_TOKENS {
                    self.verified.clear();
                }
                self.verified.insert(token.into(), v.clone());
                v
            }
        };
        let now = self.clock.now().timestamp();
        if v.exp + (LEEWAY_SECONDS as i64) < now {
            return Err(TokenError::Expired);
        }
        if v.nbf - (LEEWAY_SECONDS as i64) > now {
            return Err(TokenError::Invalid);
        }
        if !self.client_active(&v.principal.client_id).await {
            return Err(TokenError::Revoked);
        }
        Ok(v.principal)
    }

    fn verify_signature(&self, token: &str, keys: &crate::secrets::Keys) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        if header.alg != Algorithm::HS256 {
            return Err(TokenError::Invalid);
        }
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        let key = keys.jwt.iter().find(|k| k.version == kid).ok_or(TokenError::Invalid)?;
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        // Time is checked by the caller against our clock, so tests can move it.
        v.validate_exp = false;
        v.validate_nbf = false;
        let c = jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key.value.expose().as_bytes()), &v)
            .map_err(|_| TokenError::Invalid)?
            .claims;
        let scopes = c.scope.split_whitespace().map(str::to_string).collect();
        Ok(Verified { kid, exp: c.exp, nbf: c.nbf.max(c.iat), principal: Principal { client_id: c.sub, scopes } })
    }

    async fn client_active(&self, id: &str) -> bool {
        if let Some(e) = self.active.get(id) {
            if e.1.elapsed() < self.cache_ttl {
                return e.0;
            }
        }
        let active = match self.store.get_client(id).await {
            Ok(Some(c)) => c.revoked_at.is_none(),
            Ok(None) => false,
            // Keep serving with the last answer when the store blips.
            Err(_) => return self.active.get(id).map(|e| e.0).unwrap_or(false),
        };
        self.active.insert(id.to_string(), (active, Instant::now()));
        active
    }

    /// Forgets cached client state (after a revocation made in this process).
    pub fn forget(&self, client_id: &str) {
        self.active.remove(client_id);
    }
}

/// Creates a client and returns it with its secret (shown once).
pub async fn create_client(
    store: &dyn Store,
    name: &str,
    scopes: Vec<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(Client, SecretString), StoreError> {
    let secret = new_secret();
    let client = Client {
        id: crate::ids::new_id("clt"),
        name: name.to_string(),
        secret_hash: hash_secret(secret.expose()),
        scopes,
        created_at: now,
        revoked_at: None,
    };
    store.create_client(&client).await?;
    Ok((client, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::secrets::{local::LocalSecrets, Secrets, JWT_SIGNING_KEY};

    #[tokio::test]
    async fn a_new_key_version_signs_only_after_every_instance_can_have_loaded_it() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Arc::new(LocalSecrets::open(dir.path()).unwrap());
        let keys = KeyRing::load(secrets.clone() as Arc<dyn Secrets>).await.unwrap();
        let store = crate::store::sqlite::SqliteStore::open(dir.path()).unwrap();
        let clock = ManualClock::new(chrono::Utc::now());
        let mut cfg = crate::config::Config::from_env().unwrap();
        cfg.secrets_refresh = Duration::from_secs(300);
        let auth = Auth::new(store, keys.clone(), Arc::new(clock.clone()), &cfg);
        let kid = |t: &SecretString| jsonwebtoken::decode_header(t.expose()).unwrap().kid.unwrap();
        let old = secrets.versions(JWT_SIGNING_KEY).await.unwrap()[0].version.clone();
        assert_eq!(kid(&auth.sign("c", "s").unwrap()), old, "a lone new key signs at once");
        let new = secrets.add_version(JWT_SIGNING_KEY, crate::secrets::local::random_key()).unwrap();
        keys.refresh().await.unwrap();
        assert_eq!(kid(&auth.sign("c", "s").unwrap()), old, "the new version is not settled yet");
        clock.advance(chrono::Duration::seconds(301));
        assert_eq!(kid(&auth.sign("c", "s").unwrap()), new);
    }
}
