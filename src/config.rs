//! The one typed configuration, read from the environment (app settings under Functions).
//! Every setting is read through `var("NAME")` so the deployment checks can list them.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Cosmos,
    /// azure_data_cosmos's in-process emulator; only with the `cosmos-emulator` feature (tests).
    CosmosEmulator,
}

#[derive(Debug, Clone)]
pub struct CosmosConfig {
    pub endpoint: String,
    pub database: String,
    /// Key auth, for local tests only; in Azure the managed identity is used.
    pub key: Option<crate::secrets::SecretString>,
    /// The app's Azure region (`REGION_NAME`, set by the Functions host), to route to the nearest
    /// Cosmos region.
    pub region: Option<String>,
}

/// How the app authenticates to Azure services (AZURE_CREDENTIAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureCredentialKind {
    /// The app's managed identity (user-assigned when AZURE_CLIENT_ID is set); the default.
    ManagedIdentity,
    /// The developer's own `az login` / `azd auth login`, for running against a personal vault.
    Developer,
}

#[derive(Debug, Clone)]
pub struct ServiceBusConfig {
    pub namespace: String,
    pub queue: String,
    pub send_policy: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: SocketAddr,
    /// Started by the Functions host (FUNCTIONS_CUSTOMHANDLER_PORT set): serves the trigger routes.
    pub functions_mode: bool,
    pub data_dir: PathBuf,
    pub store: StoreKind,
    pub cosmos: Option<CosmosConfig>,
    pub keyvault_url: Option<String>,
    pub azure_client_id: Option<String>,
    pub azure_credential: AzureCredentialKind,
    pub servicebus: Option<ServiceBusConfig>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    pub token_ttl: Duration,
    pub rate_limit_per_minute: u32,
    pub token_rate_limit_per_minute: u32,
    pub cors_allowed_origins: Vec<String>,
    pub secrets_refresh: Duration,
    /// How long a client's revocation may take to reach token validation.
    pub client_cache_ttl: Duration,
    pub webhook_allow_loopback: bool,
    /// How often the standalone dispatcher sends due webhooks; zero turns it off.
    pub webhook_dispatch_interval: Duration,
    /// How long one webhook attempt may take.
    pub webhook_timeout: Duration,
    pub connector_base_url: Option<String>,
    /// One connector request (a page) may take this long before it is retried.
    pub connector_timeout: Duration,
    /// Tries per page before the job fails (5xx, timeouts, malformed pages).
    pub connector_max_attempts: u32,
    /// The first retry waits about this long; each next one twice as long (with jitter).
    pub connector_retry_base: Duration,
    pub sync_max_delivery_count: u32,
    pub incremental_sync_interval: Duration,
    pub app_insights_connection_string: Option<String>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn parse<T: std::str::FromStr>(name: &str, default: T, problems: &mut Vec<String>) -> T {
    match var(name) {
        None => default,
        Some(v) => v.parse().unwrap_or_else(|_| {
            problems.push(format!("{name}: cannot parse {v:?}"));
            default
        }),
    }
}

fn required(name: &str, problems: &mut Vec<String>) -> String {
    var(name).unwrap_or_else(|| {
        problems.push(format!("{name}: required"));
        String::new()
    })
}

impl Config {
    /// Reads every setting; on failure, one message naming each missing or invalid one.
    pub fn from_env() -> Result<Config, String> {
        let mut p = Vec::new();
        let functions_port: Option<u16> = var("FUNCTIONS_CUSTOMHANDLER_PORT").and_then(|v| {
            v.parse().map_err(|_| p.push(format!("FUNCTIONS_CUSTOMHANDLER_PORT: not a port: {v:?}"))).ok()
        });
        let port = functions_port.unwrap_or_else(|| parse("PORT", 5000u16, &mut p));
        let bind_ip: IpAddr = parse("BIND_ADDR", IpAddr::V4(Ipv4Addr::LOCALHOST), &mut p);
        let store = match var("STORE").as_deref() {
            None | Some("sqlite") => StoreKind::Sqlite,
            Some("cosmos") => StoreKind::Cosmos,
            Some("cosmos-emulator") => StoreKind::CosmosEmulator,
            Some(other) => {
                p.push(format!("STORE: expected sqlite or cosmos, got {other:?}"));
                StoreKind::Sqlite
            }
        };
        let cosmos = match store {
            StoreKind::Cosmos => Some(CosmosConfig {
                endpoint: required("COSMOS_ENDPOINT", &mut p),
                database: var("COSMOS_DATABASE").unwrap_or_else(|| "customer360".into()),
                key: var("COSMOS_KEY").map(crate::secrets::SecretString::new),
                region: var("REGION_NAME"),
            }),
            StoreKind::CosmosEmulator => Some(CosmosConfig {
                endpoint: String::new(),
                database: var("COSMOS_DATABASE").unwrap_or_else(|| "customer360".into()),
                key: None,
                region: None,
            }),
            StoreKind::Sqlite => None,
        };
        let servicebus = var("SERVICEBUS_NAMESPACE").map(|namespace| ServiceBusConfig {
            namespace,
            queue: var("SYNC_QUEUE").unwrap_or_else(|| "sync-jobs".into()),
            send_policy: var("SERVICEBUS_SEND_POLICY").unwrap_or_else(|| "sync-send".into()),
        });
        let keyvault_url = var("KEYVAULT_URL");
        if let Some(url) = &keyvault_url {
            if !url.starts_with("https://") {
                p.push(format!("KEYVAULT_URL: must be an https URL, got {url:?}"));
            }
        }
        let azure_credential = match var("AZURE_CREDENTIAL").as_deref() {
            None | Some("managedidentity") => AzureCredentialKind::ManagedIdentity,
            Some("developer") => AzureCredentialKind::Developer,
            Some(other) => {
                p.push(format!("AZURE_CREDENTIAL: expected managedidentity or developer, got {other:?}"));
                AzureCredentialKind::ManagedIdentity
            }
        };
        if let Some(u) = var("CONNECTOR_BASE_URL") {
            if !["http://", "https://", "file://"].iter().any(|p| u.starts_with(p)) {
                p.push("CONNECTOR_BASE_URL: expected an http(s) URL or file://<dir>".into());
            }
        }
        if functions_port.is_some() && store == StoreKind::Cosmos && keyvault_url.is_none() {
            p.push("KEYVAULT_URL: required when running on Cosmos under Functions".into());
        }
        let cfg = Config {
            bind: SocketAddr::new(bind_ip, port),
            functions_mode: functions_port.is_some(),
            data_dir: PathBuf::from(var("DATA_DIR").unwrap_or_else(|| "./data".into())),
            store,
            cosmos,
            keyvault_url,
            azure_client_id: var("AZURE_CLIENT_ID"),
            azure_credential,
            servicebus,
            jwt_issuer: var("JWT_ISSUER").unwrap_or_else(|| "customer360".into()),
            jwt_audience: var("JWT_AUDIENCE").unwrap_or_else(|| "customer360-api".into()),
            token_ttl: Duration::from_secs(parse("TOKEN_TTL_SECONDS", 3600u64, &mut p).clamp(60, 86_400)),
            rate_limit_per_minute: parse("RATE_LIMIT_PER_MINUTE", 600u32, &mut p).max(1),
            token_rate_limit_per_minute: parse("TOKEN_RATE_LIMIT_PER_MINUTE", 60u32, &mut p).max(1),
            cors_allowed_origins: var("CORS_ALLOWED_ORIGINS")
                .map(|v| v.split(',').map(|o| o.trim().trim_end_matches('/').to_string()).filter(|o| !o.is_empty()).collect())
                .unwrap_or_default(),
            secrets_refresh: Duration::from_secs(parse("SECRETS_REFRESH_SECONDS", 300u64, &mut p).max(1)),
            client_cache_ttl: Duration::from_secs(parse("CLIENT_CACHE_SECONDS", 30u64, &mut p)),
            webhook_allow_loopback: parse("WEBHOOK_ALLOW_LOOPBACK", false, &mut p),
            webhook_dispatch_interval: Duration::from_millis(parse("WEBHOOK_DISPATCH_INTERVAL_MS", 1000u64, &mut p)),
            webhook_timeout: Duration::from_millis(parse("WEBHOOK_TIMEOUT_MS", 10_000u64, &mut p).clamp(100, 10_000)),
            connector_base_url: var("CONNECTOR_BASE_URL"),
            connector_timeout: Duration::from_millis(parse("CONNECTOR_TIMEOUT_MS", 30_000u64, &mut p).max(1)),
            connector_max_attempts: parse("CONNECTOR_MAX_ATTEMPTS", 5u32, &mut p).clamp(1, 20),
            connector_retry_base: Duration::from_millis(parse("CONNECTOR_RETRY_BASE_MS", 500u64, &mut p)),
            sync_max_delivery_count: parse("SYNC_MAX_DELIVERY_COUNT", 10u32, &mut p).max(1),
            incremental_sync_interval: Duration::from_secs(parse("INCREMENTAL_SYNC_INTERVAL_SECONDS", 900u64, &mut p).max(1)),
            app_insights_connection_string: var("APPLICATIONINSIGHTS_CONNECTION_STRING"),
        };
        if p.is_empty() {
            Ok(cfg)
        } else {
            Err(format!("invalid configuration:\n  - {}", p.join("\n  - ")))
        }
    }
}
