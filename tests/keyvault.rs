//! The Key Vault adapter through the real `azure_security_keyvault_secrets` client. The SDK's
//! HTTP transport is replaced by `FakeVault`, an in-process server that speaks Key Vault's REST
//! protocol (401 challenge for unauthenticated calls, paged version listings, secret bundles,
//! 403 for disabled versions); nothing touches the network and it is not a real vault.
use async_trait::async_trait;
use azure_core::credentials::{AccessToken, Secret, TokenCredential, TokenRequestOptions};
use azure_core::http::headers::{Headers, HeaderName, AUTHORIZATION, WWW_AUTHENTICATE};
use azure_core::http::{AsyncRawResponse, ClientOptions, HttpClient, Method, Request, StatusCode, Transport};
use azure_core::time::{Duration as AzDuration, OffsetDateTime};
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use chrono::Utc;
use customer360::auth::{create_client, Auth, TokenError};
use customer360::clock::{ManualClock, SharedClock};
use customer360::config::Config;
use customer360::secrets::keyvault::KeyVaultSecrets;
use customer360::secrets::{KeyRing, SecretString, Secrets, SecretsError, JWT_SIGNING_KEY, WEBHOOK_HMAC_KEY};
use customer360::store::sqlite::SqliteStore;
use customer360::store::Store;
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

const VAULT: &str = "https://customer360-test.vault.azure.net";
const HOST: &str = "customer360-test.vault.azure.net";
const API_VERSION: &str = "2025-07-01";
const ACCESS_TOKEN: &str = "entra-token-for-the-vault";
const VAULT_SCOPE: &str = "https://vault.azure.net/.default";

#[derive(Debug, Clone)]
struct StoredVersion {
    id: String,
    value: String,
    enabled: bool,
    created: i64,
    not_before: Option<i64>,
    expires: Option<i64>,
}

/// One request as the vault received it.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    authorization: Option<String>,
    status: StatusCode,
}

#[derive(Debug, Default)]
struct VaultState {
    secrets: BTreeMap<String, Vec<StoredVersion>>,
    seen: Vec<Seen>,
    /// Listing page size when the client does not ask (Key Vault's default is 25).
    page_size: usize,
    /// Answers every authorised call with 403, as for an identity without a role on the vault.
    forbidden: bool,
    clock: i64,
}

#[derive(Debug, Clone)]
struct FakeVault(Arc<Mutex<VaultState>>);

impl FakeVault {
    fn new() -> FakeVault {
        FakeVault(Arc::new(Mutex::new(VaultState { page_size: 25, clock: 1_764_000_000, ..Default::default() })))
    }

    /// Adds a version the way `az keyvault secret set` does: a new id, enabled, created now.
    fn add(&self, name: &str, value: &str) -> String {
        self.add_with(name, value, None, None)
    }

    fn add_with(&self, name: &str, value: &str, not_before: Option<i64>, expires: Option<i64>) -> String {
        let mut s = self.0.lock();
        s.clock += 60;
        let id = hex::encode(rand::random::<[u8; 16]>());
        let v = StoredVersion { id: id.clone(), value: value.into(), enabled: true, created: s.clock, not_before, expires };
        s.secrets.entry(name.into()).or_default().push(v);
        id
    }

    fn set_enabled(&self, name: &str, version: &str, enabled: bool) {
        let mut s = self.0.lock();
        let v = s.secrets.get_mut(name).and_then(|vs| vs.iter_mut().find(|v| v.id == version)).expect("version");
        v.enabled = enabled;
    }

    fn seen(&self) -> Vec<Seen> {
        self.0.lock().seen.clone()
    }

    fn set_page_size(&self, n: usize) {
        self.0.lock().page_size = n;
    }

    fn set_forbidden(&self, f: bool) {
        self.0.lock().forbidden = f;
    }

    fn attributes(v: &StoredVersion) -> Value {
        let mut a = json!({
            "enabled": v.enabled,
            "created": v.created,
            "updated": v.created,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
        });
        if let Some(nbf) = v.not_before {
            a["nbf"] = json!(nbf);
        }
        if let Some(exp) = v.expires {
            a["exp"] = json!(exp);
        }
        a
    }

    fn answer(&self, req: &Request) -> (StatusCode, Headers, Value) {
        let mut s = self.0.lock();
        let url = req.url();
        let query: HashMap<String, String> = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        let authorization = req.headers().get_optional_str(&AUTHORIZATION).map(str::to_string);
        let segs: Vec<String> = url.path_segments().map(|p| p.filter(|s| !s.is_empty()).map(str::to_string).collect()).unwrap_or_default();
        let (status, headers, body) = Self::route(&s, req.method(), url.host_str(), &segs, &query, authorization.as_deref());
        s.seen.push(Seen { method: req.method(), path: url.path().to_string(), query, authorization, status });
        (status, headers, body)
    }

    fn route(
        s: &VaultState,
        method: Method,
        host: Option<&str>,
        segs: &[String],
        query: &HashMap<String, String>,
        authorization: Option<&str>,
    ) -> (StatusCode, Headers, Value) {
        let mut headers = Headers::new();
        if host != Some(HOST) {
            return (StatusCode::NotFound, headers, error("NotFound", "no such vault"));
        }
        if authorization != Some(format!("Bearer {ACCESS_TOKEN}").as_str()) {
            headers.insert(
                WWW_AUTHENTICATE,
                format!(r#"Bearer authorization="https://login.microsoftonline.com/{}", resource="https://vault.azure.net""#, "72f988bf-86f1-41af-91ab-2d7cd011db47"),
            );
            return (StatusCode::Unauthorized, headers, error("Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."));
        }
        if query.get("api-version").map(String::as_str) != Some(API_VERSION) {
            return (StatusCode::BadRequest, headers, error("BadParameter", "The api-version is missing or not supported"));
        }
        if s.forbidden {
            return (StatusCode::Forbidden, headers, error("Forbidden", "Caller is not authorized to perform action on resource."));
        }
        if method != Method::Get {
            return (StatusCode::MethodNotAllowed, headers, error("BadParameter", "method not allowed"));
        }
        let (name, rest) = match segs {
            [c, name, rest @ ..] if c == "secrets" => (name, rest),
            _ => return (StatusCode::NotFound, headers, error("NotFound", "no such path")),
        };
        let Some(versions) = s.secrets.get(name.as_str()) else {
            return (StatusCode::NotFound, headers, error("SecretNotFound", &format!("A secret with (name/id) {name} was not found in this key vault.")));
        };
        match rest {
            [v] if v == "versions" => {
                let size = query.get("maxresults").and_then(|m| m.parse().ok()).unwrap_or(s.page_size).max(1);
                let skip: usize = query.get("$skiptoken").and_then(|t| t.parse().ok()).unwrap_or(0);
                let page: Vec<Value> = versions
                    .iter()
                    .skip(skip)
                    .take(size)
                    .map(|v| json!({ "id": format!("{VAULT}/secrets/{name}/{}", v.id), "attributes": Self::attributes(v), "tags": {} }))
                    .collect();
                let next = (skip + size < versions.len())
                    .then(|| format!("{VAULT}/secrets/{name}/versions?api-version={API_VERSION}&$skiptoken={}&maxresults={size}", skip + size));
                (StatusCode::Ok, headers, json!({ "value": page, "nextLink": next }))
            }
            [version] => match versions.iter().find(|v| &v.id == version) {
                Some(v) if v.enabled => (
                    StatusCode::Ok,
                    headers,
                    json!({ "value": v.value, "id": format!("{VAULT}/secrets/{name}/{}", v.id), "attributes": Self::attributes(v), "tags": {} }),
                ),
                Some(_) => (StatusCode::Forbidden, headers, json!({"error": {"code": "Forbidden", "message": "Operation get is not allowed on a disabled secret.", "innererror": {"code": "SecretDisabled"}}})),
                None => (StatusCode::NotFound, headers, error("SecretNotFound", &format!("A secret with (name/id) {name}/{version} was not found in this key vault."))),
            },
            _ => (StatusCode::NotFound, headers, error("NotFound", "no such path")),
        }
    }
}

fn error(code: &str, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message } })
}

#[async_trait]
impl HttpClient for FakeVault {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let (status, mut headers, body) = self.answer(request);
        headers.insert(HeaderName::from_static("content-type"), "application/json; charset=utf-8");
        headers.insert(HeaderName::from_static("x-ms-keyvault-service-version"), "1.9.2719.1");
        headers.insert(HeaderName::from_static("x-ms-request-id"), uuid());
        Ok(AsyncRawResponse::from_bytes(status, headers, serde_json::to_vec(&body).unwrap_or_default()))
    }
}

fn uuid() -> String {
    let b = hex::encode(rand::random::<[u8; 16]>());
    format!("{}-{}-{}-{}-{}", &b[..8], &b[8..12], &b[12..16], &b[16..20], &b[20..])
}

/// Stands in for the managed identity: hands out one token and records the scopes asked for.
#[derive(Debug, Default)]
struct FakeCredential {
    scopes: Mutex<Vec<String>>,
}

#[async_trait]
impl TokenCredential for FakeCredential {
    async fn get_token(&self, scopes: &[&str], _: Option<TokenRequestOptions<'_>>) -> azure_core::Result<AccessToken> {
        self.scopes.lock().extend(scopes.iter().map(|s| s.to_string()));
        Ok(AccessToken::new(Secret::new(ACCESS_TOKEN), OffsetDateTime::now_utc() + AzDuration::hours(1)))
    }
}

struct Setup {
    vault: FakeVault,
    credential: Arc<FakeCredential>,
    secrets: Arc<KeyVaultSecrets>,
}

fn setup() -> Setup {
    let vault = FakeVault::new();
    let credential = Arc::new(FakeCredential::default());
    let options = SecretClientOptions {
        client_options: ClientOptions { transport: Some(Transport::new(Arc::new(vault.clone()))), ..Default::default() },
        ..Default::default()
    };
    let client = SecretClient::new(VAULT, credential.clone(), Some(options)).expect("client");
    Setup { vault, credential, secrets: Arc::new(KeyVaultSecrets::new(client)) }
}

fn versions_of(vs: &[customer360::secrets::SecretVersion]) -> Vec<String> {
    vs.iter().map(|v| v.version.clone()).collect()
}

#[tokio::test]
async fn the_first_call_is_challenged_then_resent_with_a_bearer_token_for_the_vault_scope() {
    let t = setup();
    let v1 = t.vault.add(JWT_SIGNING_KEY, "jwt-key-one");

    let got = t.secrets.versions(JWT_SIGNING_KEY).await.expect("versions");
    assert_eq!(versions_of(&got), vec![v1.clone()]);
    assert_eq!(got[0].value, SecretString::new("jwt-key-one"));

    let seen = t.vault.seen();
    let list_path = format!("/secrets/{JWT_SIGNING_KEY}/versions");
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_eq!((seen[0].path.as_str(), seen[0].authorization.as_deref(), seen[0].status), (list_path.as_str(), None, StatusCode::Unauthorized));
    assert_eq!(seen[1].path, list_path);
    assert_eq!(seen[1].status, StatusCode::Ok);
    assert_eq!(seen[2].path, format!("/secrets/{JWT_SIGNING_KEY}/{v1}"));
    assert_eq!(seen[2].status, StatusCode::Ok);
    for s in &seen {
        assert_eq!(s.method, Method::Get);
        assert_eq!(s.query.get("api-version").map(String::as_str), Some(API_VERSION));
    }
    for s in &seen[1..] {
        assert_eq!(s.authorization.as_deref(), Some(format!("Bearer {ACCESS_TOKEN}").as_str()));
    }
    assert_eq!(*t.credential.scopes.lock(), vec![VAULT_SCOPE.to_string()]);
}

#[tokio::test]
async fn versions_are_the_enabled_ones_newest_first_at_most_three_across_pages() {
    let t = setup();
    t.vault.set_page_size(2);
    let ids: Vec<String> = (1..=6).map(|i| t.vault.add(JWT_SIGNING_KEY, &format!("value-{i}"))).collect();
    t.vault.set_enabled(JWT_SIGNING_KEY, &ids[4], false);

    let got = t.secrets.versions(JWT_SIGNING_KEY).await.expect("versions");
    assert_eq!(versions_of(&got), vec![ids[5].clone(), ids[3].clone(), ids[2].clone()]);
    let values: Vec<&str> = got.iter().map(|v| v.value.expose()).collect();
    assert_eq!(values, vec!["value-6", "value-4", "value-3"]);
    assert!(got[0].created > got[1].created && got[1].created > got[2].created);

    let seen = t.vault.seen();
    let pages: Vec<&Seen> = seen.iter().filter(|s| s.path.ends_with("/versions") && s.status == StatusCode::Ok).collect();
    assert_eq!(pages.len(), 3, "six versions in pages of two: {seen:#?}");
    assert_eq!(pages[1].query.get("$skiptoken").map(String::as_str), Some("2"));
    assert_eq!(pages[2].query.get("$skiptoken").map(String::as_str), Some("4"));
    assert!(pages.iter().all(|p| p.query.get("api-version").map(String::as_str) == Some(API_VERSION)));
    let gets: Vec<&str> = seen.iter().filter(|s| !s.path.ends_with("/versions")).map(|s| s.path.as_str()).collect();
    assert_eq!(gets.len(), 3, "only the returned versions' values are read: {gets:?}");
    assert!(!gets.iter().any(|p| p.ends_with(&ids[4])), "the disabled version is never read");
}

#[tokio::test]
async fn a_version_value_is_read_once_and_later_refreshes_only_list() {
    let t = setup();
    t.vault.add(JWT_SIGNING_KEY, "one");
    t.secrets.versions(JWT_SIGNING_KEY).await.expect("first read");
    let before = t.vault.seen().len();

    let again = t.secrets.versions(JWT_SIGNING_KEY).await.expect("second read");
    let seen = t.vault.seen();
    assert_eq!(seen.len(), before + 1, "{:#?}", &seen[before..]);
    assert!(seen[before].path.ends_with("/versions"));
    assert_eq!(again[0].value.expose(), "one");

    let v2 = t.vault.add(JWT_SIGNING_KEY, "two");
    let after = t.secrets.versions(JWT_SIGNING_KEY).await.expect("third read");
    let new_calls: Vec<String> = t.vault.seen()[before + 1..].iter().map(|s| s.path.clone()).collect();
    assert_eq!(new_calls, vec![format!("/secrets/{JWT_SIGNING_KEY}/versions"), format!("/secrets/{JWT_SIGNING_KEY}/{v2}")]);
    assert_eq!(after.iter().map(|v| v.value.expose()).collect::<Vec<_>>(), vec!["two", "one"]);
}

#[tokio::test]
async fn versions_outside_their_validity_window_are_skipped() {
    let t = setup();
    let now = Utc::now().timestamp();
    let valid = t.vault.add(JWT_SIGNING_KEY, "valid");
    t.vault.add_with(JWT_SIGNING_KEY, "expired", None, Some(now - 60));
    t.vault.add_with(JWT_SIGNING_KEY, "not-yet", Some(now + 3600), None);
    let got = t.secrets.versions(JWT_SIGNING_KEY).await.expect("versions");
    assert_eq!(versions_of(&got), vec![valid]);
}

#[tokio::test]
async fn a_missing_secret_is_not_found_and_a_refused_call_is_a_backend_error() {
    let t = setup();
    match t.secrets.versions("no-such-secret").await {
        Err(SecretsError::NotFound(name)) => assert_eq!(name, "no-such-secret"),
        other => panic!("expected NotFound, got {other:?}"),
    }

    t.vault.add(JWT_SIGNING_KEY, "super-secret-value");
    t.vault.set_forbidden(true);
    match t.secrets.versions(JWT_SIGNING_KEY).await {
        Err(SecretsError::Backend(msg)) => {
            assert!(msg.contains("403") || msg.contains("Forbidden"), "{msg}");
            assert!(!msg.contains("super-secret-value"));
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}

fn config() -> Config {
    Config::from_env().expect("config from the test environment")
}

/// An `Auth` over a SQLite store and a key ring read from the fake vault, with one client.
async fn auth_over(t: &Setup) -> (Auth, KeyRing, String, SecretString, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = SqliteStore::open(dir.path()).expect("store");
    let clock: SharedClock = Arc::new(ManualClock::new(Utc::now()));
    let ring = KeyRing::load(t.secrets.clone()).await.expect("ring");
    let (client, secret) = create_client(store.as_ref(), "rotation test", vec!["customer.read".into()], clock.now()).await.expect("client");
    let auth = Auth::new(store, ring.clone(), clock, &config());
    (auth, ring, client.id, secret, dir)
}

async fn token(auth: &Auth, client_id: &str, secret: &SecretString) -> String {
    match auth.grant(client_id, secret, None).await {
        Ok(issued) => issued.access_token.expose().to_string(),
        Err(e) => panic!("grant failed: {e:?}"),
    }
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).expect("header").kid.expect("kid")
}

#[tokio::test]
async fn rotation_old_tokens_verify_until_the_old_version_is_disabled() {
    let t = setup();
    let old = t.vault.add(JWT_SIGNING_KEY, "old-signing-key-0123456789abcdef");
    t.vault.add(WEBHOOK_HMAC_KEY, "webhook-key");
    let (auth, ring, client_id, secret, _dir) = auth_over(&t).await;

    let old_token = token(&auth, &client_id, &secret).await;
    assert_eq!(kid(&old_token), old, "the kid is the Key Vault version id");

    // Step 1: a new version is added; after the refresh it signs, and the old one still verifies.
    let new = t.vault.add(JWT_SIGNING_KEY, "new-signing-key-0123456789abcdef");
    ring.refresh().await.expect("refresh");
    let new_token = token(&auth, &client_id, &secret).await;
    assert_eq!(kid(&new_token), new);
    let requests = t.vault.seen().len();
    assert!(auth.validate(&old_token).await.is_ok(), "old token verifies while the old version is enabled");
    assert!(auth.validate(&new_token).await.is_ok());
    assert_eq!(t.vault.seen().len(), requests, "validating a token never calls the vault");

    // Step 2: the old version is disabled; after the refresh its tokens no longer verify.
    t.vault.set_enabled(JWT_SIGNING_KEY, &old, false);
    ring.refresh().await.expect("refresh");
    assert_eq!(versions_of(&ring.current().jwt), vec![new.clone()]);
    assert_eq!(auth.validate(&old_token).await, Err(TokenError::Invalid));
    assert!(auth.validate(&new_token).await.is_ok());
}

#[tokio::test]
async fn the_background_refresh_picks_up_a_new_version() {
    let t = setup();
    t.vault.add(JWT_SIGNING_KEY, "first");
    t.vault.add(WEBHOOK_HMAC_KEY, "webhook-first");
    let ring = KeyRing::load(t.secrets.clone()).await.expect("ring");
    let refresh = ring.spawn_refresh(Duration::from_millis(50));

    let newer = t.vault.add(JWT_SIGNING_KEY, "second");
    let webhook_newer = t.vault.add(WEBHOOK_HMAC_KEY, "webhook-second");
    let picked_up = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let keys = ring.current();
            if keys.jwt.first().map(|k| &k.version) == Some(&newer) && keys.webhook.first().map(|k| &k.version) == Some(&webhook_newer) {
                return keys;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    refresh.abort();
    let keys = picked_up.expect("the refresh task read the new versions");
    assert_eq!(keys.jwt.iter().map(|k| k.value.expose()).collect::<Vec<_>>(), vec!["second", "first"]);
    assert_eq!(keys.webhook.iter().map(|k| k.value.expose()).collect::<Vec<_>>(), vec!["webhook-second", "webhook-first"]);
}
