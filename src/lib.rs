//! Customer360: a CRM intelligence API. One binary, standalone on SQLite or as an Azure
//! Functions custom handler on Cosmos DB, Key Vault and Service Bus.
pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
pub mod domain;
pub mod error;
pub mod functions;
pub mod ids;
pub mod queue;
pub mod ratelimit;
pub mod secrets;
pub mod seed;
pub mod store;
pub mod webhooks;
pub mod sync;

use clock::SharedClock;
use config::{Config, StoreKind};
use secrets::{KeyRing, Secrets};
use std::sync::Arc;
use store::Store;

/// Everything a request can reach: one shared context.
pub struct App {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub clock: SharedClock,
    pub keys: KeyRing,
    pub auth: auth::Auth,
    pub limiter: ratelimit::RateLimiter,
    pub token_limiter: ratelimit::RateLimiter,
    pub queue: Arc<dyn queue::JobQueue>,
}

impl App {
    pub fn cors_allows(&self, origin: &str) -> bool {
        let o = origin.trim_end_matches('/');
        self.config.cors_allowed_origins.iter().any(|a| a == o)
    }
}

/// The local secrets file also keeps the development client created on first start.
pub const LOCAL_DEV_CLIENT: &str = "local-dev-client";

pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, String> {
    match config.store {
        StoreKind::Sqlite => {
            let s = store::sqlite::SqliteStore::open(&config.data_dir).map_err(|e| format!("cannot open the store: {e}"))?;
            Ok(s)
        }
        StoreKind::Cosmos => {
            let cfg = config.cosmos.as_ref().ok_or("STORE=cosmos: COSMOS_ENDPOINT is required")?;
            let s = store::cosmos::CosmosStore::open(cfg, config.azure_client_id.as_deref())
                .await
                .map_err(|e| format!("cannot open Cosmos DB: {e}"))?;
            Ok(s)
        }
        #[cfg(feature = "cosmos-emulator")]
        StoreKind::CosmosEmulator => {
            let db = config.cosmos.as_ref().map(|c| c.database.clone()).unwrap_or_else(|| "customer360".into());
            let s = store::cosmos::CosmosStore::open_emulator(&db).await.map_err(|e| format!("cannot start the Cosmos emulator: {e}"))?;
            Ok(s)
        }
        #[cfg(not(feature = "cosmos-emulator"))]
        StoreKind::CosmosEmulator => Err("STORE=cosmos-emulator: build with --features cosmos-emulator".into()),
    }
}

pub async fn open_secrets(config: &Config) -> Result<Arc<dyn Secrets>, String> {
    match &config.keyvault_url {
        Some(_) => Ok(Arc::new(secrets::keyvault::KeyVaultSecrets::from_config(config)?)),
        None => Ok(Arc::new(secrets::local::LocalSecrets::open(&config.data_dir).map_err(|e| e.to_string())?)),
    }
}

/// Builds the application context from configuration.
pub async fn build(config: Config, clock: SharedClock) -> Result<Arc<App>, String> {
    let store = open_store(&config).await?;
    let secrets = open_secrets(&config).await?;
    let queue = queue::open(&config, secrets.clone()).await?;
    let keys = KeyRing::load(secrets).await.map_err(|e| format!("cannot load keys: {e}"))?;
    let auth = auth::Auth::new(store.clone(), keys.clone(), clock.clone(), &config);
    Ok(Arc::new(App {
        limiter: ratelimit::RateLimiter::per_minute(config.rate_limit_per_minute, clock.clone()),
        token_limiter: ratelimit::RateLimiter::per_minute(config.token_rate_limit_per_minute, clock.clone()),
        config,
        store,
        clock,
        keys,
        auth,
        queue,
    }))
}

/// On the first standalone start with no clients, creates a development client with every
/// scope, keeps its credentials in the local secrets file and prints them once.
pub async fn ensure_dev_client(app: &App) -> Result<(), String> {
    if app.config.functions_mode || app.config.keyvault_url.is_some() {
        return Ok(());
    }
    if !app.store.list_clients().await.map_err(|e| e.to_string())?.is_empty() {
        return Ok(());
    }
    let scopes = auth::SCOPES.iter().map(|s| s.to_string()).collect();
    let (client, secret) = auth::create_client(app.store.as_ref(), "local development", scopes, app.clock.now())
        .await
        .map_err(|e| e.to_string())?;
    let local = secrets::local::LocalSecrets::open(&app.config.data_dir).map_err(|e| e.to_string())?;
    let creds = serde_json::json!({ "clientId": client.id, "clientSecret": secret.expose() }).to_string();
    local.add_version(LOCAL_DEV_CLIENT, creds).map_err(|e| e.to_string())?;
    eprintln!(
        "Created a local development client (kept in {}/secrets.json):\n  clientId:     {}\n  clientSecret: {}",
        app.config.data_dir.display(),
        client.id,
        secret.expose()
    );
    Ok(())
}

/// Serves until `shutdown` resolves, then drains requests and closes the store.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let refresh = app.keys.spawn_refresh(app.config.secrets_refresh);
    let sweeper = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                t.tick().await;
                app.limiter.sweep();
                app.token_limiter.sweep();
            }
        })
    };
    // Under Functions the WebhookDispatch timer sends webhooks instead.
    let dispatcher = if app.config.functions_mode { None } else { webhooks::spawn_dispatcher(app.clone()) };
    let sync_tasks = sync::start(app.clone());
    warp::serve(api::routes(app.clone())).incoming(listener).graceful(shutdown).run().await;
    sync_tasks.iter().for_each(|t| t.abort());
    refresh.abort();
    sweeper.abort();
    if let Some(d) = dispatcher {
        d.abort();
    }
    app.store.close().await;
}

/// JSON lines on stdout (the Functions host forwards them to Application Insights), written by
/// a background thread so a slow stdout never stalls a request. Keep the guard until exit: it
/// flushes what is queued.
pub fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .finish(std::io::stdout());
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
    guard
}
