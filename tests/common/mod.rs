//! Starts the real `customer360` binary on a free port with its own data directory and
//! speaks HTTP to it.
#![allow(dead_code)]
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub port: u16,
    pub base: String,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `C360_TEST_STORE=cosmos-emulator` runs the same HTTP tests against the binary on the Cosmos
/// adapter (the SDK's in-process emulator, which lives and dies with the process).
pub fn test_store() -> Option<String> {
    std::env::var("C360_TEST_STORE").ok().filter(|s| !s.is_empty() && s != "sqlite")
}

/// Tests about what survives a restart only mean something on a store that outlives the process.
pub fn store_survives_restart() -> bool {
    if test_store().is_some() {
        eprintln!("not run on {:?}: the in-process emulator does not outlive the process", test_store());
        return false;
    }
    true
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_customer360")
}

/// Runs a CLI subcommand against `dir` and returns stdout.
pub fn cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin()).args(args).env("DATA_DIR", dir).env_remove("STORE").output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

impl Server {
    pub async fn start(env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let mut s = Server::start_in(&dir, env).await;
        s._tmp = Some(tmp);
        s
    }

    pub async fn start_in(dir: &Path, env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut cmd = Command::new(bin());
        cmd.arg("serve")
            .env("DATA_DIR", dir)
            .env("PORT", port.to_string())
            .env("RUST_LOG", "info")
            .env_remove("FUNCTIONS_CUSTOMHANDLER_PORT")
            .env_remove("STORE")
            .envs(test_store().map(|s| ("STORE", s)))
            .stdout(std::fs::OpenOptions::new().create(true).append(true).open(dir.join("stdout.log")).unwrap())
            .stderr(Stdio::null());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let effective_port = env
            .iter()
            .find(|(k, _)| k == "FUNCTIONS_CUSTOMHANDLER_PORT")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(port);
        let child = cmd.spawn().unwrap();
        let s = Server {
            child,
            port: effective_port,
            base: format!("http://127.0.0.1:{effective_port}"),
            dir: dir.to_path_buf(),
            env,
            _tmp: None,
        };
        s.wait_ready().await;
        s
    }

    pub async fn wait_ready(&self) {
        let started = Instant::now();
        let http = reqwest::Client::new();
        loop {
            if let Ok(r) = http.get(format!("{}/", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(20), "server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process hard (SIGKILL): no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the binary again on the same data directory and settings.
    pub async fn restart(&mut self) {
        self.kill();
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut next = Server::start_in(&self.dir.clone(), &env).await;
        std::mem::swap(&mut self.child, &mut next.child);
        self.port = next.port;
        self.base = next.base.clone();
    }

    /// Everything the server logged (JSON lines on stdout) so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    /// The development client written by the first start.
    pub fn dev_credentials(&self) -> (String, String) {
        let file: Value = serde_json::from_slice(&std::fs::read(self.dir.join("secrets.json")).unwrap()).unwrap();
        let raw = file["secrets"]["local-dev-client"][0]["value"].as_str().unwrap();
        let v: Value = serde_json::from_str(raw).unwrap();
        (v["clientId"].as_str().unwrap().into(), v["clientSecret"].as_str().unwrap().into())
    }

    /// The newest JWT signing key (version, value) from the local secrets file.
    pub fn jwt_key(&self) -> (String, String) {
        let file: Value = serde_json::from_slice(&std::fs::read(self.dir.join("secrets.json")).unwrap()).unwrap();
        let k = &file["secrets"]["jwt-signing-key"][0];
        (k["version"].as_str().unwrap().into(), k["value"].as_str().unwrap().into())
    }

    pub async fn token_for(&self, id: &str, secret: &str, scope: Option<&str>) -> reqwest::Response {
        let mut body = serde_json::json!({"clientId": id, "clientSecret": secret});
        if let Some(s) = scope {
            body["scope"] = s.into();
        }
        reqwest::Client::new().post(format!("{}/api/auth/token", self.base)).json(&body).send().await.unwrap()
    }

    /// A token with every scope of the development client.
    pub async fn token(&self) -> String {
        let (id, secret) = self.dev_credentials();
        let r = self.token_for(&id, &secret, None).await;
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string()
    }

    /// A client made with the CLI (under Functions there is no development client).
    pub async fn cli_client(&self, scopes: &str) -> (Api, String) {
        let out = cli(&self.dir, &["clients", "create", "--name", "test", "--scopes", scopes]);
        let id = out.lines().find_map(|l| l.strip_prefix("clientId:")).unwrap().trim().to_string();
        let secret = out.lines().find_map(|l| l.strip_prefix("clientSecret:")).unwrap().trim().to_string();
        let r = self.token_for(&id, &secret, None).await;
        assert_eq!(r.status(), 200);
        let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_string();
        (Api { base: self.base.clone(), token, http: reqwest::Client::new() }, secret)
    }

    pub async fn client(&self) -> Api {
        Api { base: self.base.clone(), token: self.token().await, http: reqwest::Client::new() }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An authenticated HTTP client for the API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

pub struct Res {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Res {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the spec's error shape and returns the code.
    pub fn error_code(&self) -> &str {
        let b = &self.body;
        assert!(b["traceId"].as_str().is_some_and(|t| !t.is_empty()), "traceId in {b}");
        assert!(b["message"].is_string(), "message in {b}");
        assert!(b["details"].is_object(), "details in {b}");
        b["code"].as_str().unwrap()
    }
}

impl Api {
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Res {
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        Res { status, headers, body }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path)).bearer_auth(&self.token)
    }

    pub async fn get(&self, path: &str) -> Res {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Res {
        self.send(self.req(reqwest::Method::POST, path).json(&body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Res {
        self.send(self.req(reqwest::Method::PATCH, path).json(&body)).await
    }

    /// Creates a customer and returns its id.
    pub async fn create(&self, body: Value) -> String {
        let r = self.post("/api/customers", body.clone()).await;
        assert_eq!(r.status, 201, "create {body}: {}", r.body);
        r.body["id"].as_str().unwrap().to_string()
    }
}
