use clap::{Parser, Subcommand};
use customer360::{auth, clock::SystemClock, config::Config, secrets};
use std::sync::Arc;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "customer360", version, about = "Customer360 CRM intelligence API")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Manage OAuth clients.
    #[command(subcommand)]
    Clients(ClientsCmd),
    /// Fill the store with synthetic customers.
    Seed {
        #[arg(long, default_value_t = 1000)]
        count: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Rotate or disable keys in the local secrets file (Key Vault has its own tools).
    #[command(subcommand)]
    Keys(KeysCmd),
}

#[derive(Subcommand)]
enum ClientsCmd {
    /// Create a client; prints its id and secret once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "customer.read customer.write insights.read sync.write")]
        scopes: String,
    },
    List,
    Revoke { id: String },
    RotateSecret { id: String },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Add a new version of a key (jwt-signing-key or webhook-hmac-key).
    Rotate { name: String },
    /// Disable one version of a key.
    Disable { name: String, version: String },
    /// List the enabled versions (ids only).
    List { name: String },
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("customer360: {msg}");
    std::process::exit(2)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let config = Config::from_env().unwrap_or_else(|e| fail(e));
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let _log_guard = customer360::init_logging();
            // Bind first: the Functions host polls GET / while we load the rest.
            let listener = tokio::net::TcpListener::bind(config.bind).await.unwrap_or_else(|e| fail(format!("cannot listen on {}: {e}", config.bind)));
            let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            let app = customer360::build(config, Arc::new(SystemClock)).await.unwrap_or_else(|e| fail(e));
            customer360::ensure_dev_client(&app).await.unwrap_or_else(|e| fail(e));
            tracing::info!(addr = %addr, store = ?app.config.store, functions = app.config.functions_mode, "listening");
            customer360::serve(app, listener, shutdown_signal()).await;
        }
        Command::Clients(cmd) => {
            let store = customer360::open_store(&config).await.unwrap_or_else(|e| fail(e));
            let now = chrono::Utc::now();
            match cmd {
                ClientsCmd::Create { name, scopes } => {
                    let scopes = auth::parse_scopes(&scopes).unwrap_or_else(|s| fail(format!("unknown scope {s:?}")));
                    let (c, secret) = auth::create_client(store.as_ref(), &name, scopes, now).await.unwrap_or_else(|e| fail(e));
                    println!("clientId:     {}\nclientSecret: {}\nscopes:       {}", c.id, secret.expose(), c.scopes.join(" "));
                }
                ClientsCmd::List => {
                    for c in store.list_clients().await.unwrap_or_else(|e| fail(e)) {
                        let status = if c.revoked_at.is_some() { "revoked" } else { "active" };
                        println!("{}\t{}\t{}\t{}", c.id, status, c.name, c.scopes.join(" "));
                    }
                }
                ClientsCmd::Revoke { id } => {
                    let mut c = store.get_client(&id).await.unwrap_or_else(|e| fail(e)).unwrap_or_else(|| fail("no such client"));
                    c.revoked_at.get_or_insert(now);
                    store.update_client(&c).await.unwrap_or_else(|e| fail(e));
                    println!("revoked {id}");
                }
                ClientsCmd::RotateSecret { id } => {
                    let mut c = store.get_client(&id).await.unwrap_or_else(|e| fail(e)).unwrap_or_else(|| fail("no such client"));
                    let secret = auth::new_secret();
                    c.secret_hash = auth::hash_secret(secret.expose());
                    store.update_client(&c).await.unwrap_or_else(|e| fail(e));
                    println!("clientId:     {}\nclientSecret: {}", c.id, secret.expose());
                }
            }
            store.close().await;
        }
        Command::Seed { count, seed } => {
            let store = customer360::open_store(&config).await.unwrap_or_else(|e| fail(e));
            let started = std::time::Instant::now();
            customer360::seed::seed(store.clone(), count, seed).await.unwrap_or_else(|e| fail(e));
            store.close().await;
            eprintln!("seeded {count} customers in {:.1} s", started.elapsed().as_secs_f64());
        }
        Command::Keys(cmd) => {
            let local = secrets::local::LocalSecrets::open(&config.data_dir).unwrap_or_else(|e| fail(e));
            match cmd {
                KeysCmd::Rotate { name } => {
                    let v = local.add_version(&name, secrets::local::random_key()).unwrap_or_else(|e| fail(e));
                    println!("{name}: new version {v}");
                }
                KeysCmd::Disable { name, version } => {
                    local.set_enabled(&name, &version, false).unwrap_or_else(|e| fail(e));
                    println!("{name}: disabled {version}");
                }
                KeysCmd::List { name } => {
                    use secrets::Secrets;
                    for v in local.versions(&name).await.unwrap_or_else(|e| fail(e)) {
                        println!("{}\t{}", v.version, v.created.to_rfc3339());
                    }
                }
            }
        }
    }
}
