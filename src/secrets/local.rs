//! Secrets in a local JSON file (standalone default), created with random keys on first start
//! and readable only by its owner (0600).
use super::{SecretString, SecretVersion, Secrets, SecretsError, JWT_SIGNING_KEY, WEBHOOK_HMAC_KEY};
use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    secrets: BTreeMap<String, Vec<Stored>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    version: String,
    value: String,
    created: DateTime<Utc>,
    enabled: bool,
}

pub struct LocalSecrets {
    path: PathBuf,
    lock: Mutex<()>,
}

pub fn random_key() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl LocalSecrets {
    /// Opens `<dir>/secrets.json`, creating it with fresh keys when absent.
    pub fn open(dir: &Path) -> Result<LocalSecrets, SecretsError> {
        std::fs::create_dir_all(dir).map_err(|e| SecretsError::Backend(e.to_string()))?;
        let s = LocalSecrets { path: dir.join("secrets.json"), lock: Mutex::new(()) };
        let mut file = s.read()?;
        let mut changed = false;
        for name in [JWT_SIGNING_KEY, WEBHOOK_HMAC_KEY] {
            if file.secrets.get(name).is_none_or(|v| v.is_empty()) {
                file.secrets.insert(name.into(), vec![new_version(random_key())]);
                changed = true;
            }
        }
        if changed {
            s.write(&file)?;
        }
        Ok(s)
    }

    fn read(&self) -> Result<File, SecretsError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| SecretsError::Backend(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
            Err(e) => Err(SecretsError::Backend(e.to_string())),
        }
    }

    fn write(&self, f: &File) -> Result<(), SecretsError> {
        let tmp = self.path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(f).map_err(|e| SecretsError::Backend(e.to_string()))?;
        {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut out = opts.open(&tmp).map_err(|e| SecretsError::Backend(e.to_string()))?;
            out.write_all(&data).and_then(|_| out.sync_all()).map_err(|e| SecretsError::Backend(e.to_string()))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| SecretsError::Backend(e.to_string()))
    }

    /// Adds a new version (the next one to sign with); older ones stay enabled until disabled.
    pub fn add_version(&self, name: &str, value: String) -> Result<String, SecretsError> {
        let _g = self.lock.lock();
        let mut f = self.read()?;
        let v = new_version(value);
        let id = v.version.clone();
        f.secrets.entry(name.into()).or_default().insert(0, v);
        self.write(&f)?;
        Ok(id)
    }

    pub fn set_enabled(&self, name: &str, version: &str, enabled: bool) -> Result<(), SecretsError> {
        let _g = self.lock.lock();
        let mut f = self.read()?;
        let found = f
            .secrets
            .get_mut(name)
            .and_then(|vs| vs.iter_mut().find(|v| v.version == version))
            .ok_or_else(|| SecretsError::NotFound(format!("{name}/{version}")))?;
        found.enabled = enabled;
        self.write(&f)
    }

    /// A plain value kept beside the keys (e.g. the local development client's credentials).
    pub fn get_value(&self, name: &str) -> Result<Option<SecretString>, SecretsError> {
        Ok(self.read()?.secrets.get(name).and_then(|v| v.first()).map(|v| SecretString::new(v.value.clone())))
    }
}

fn new_version(value: String) -> Stored {
    Stored { version: ulid::Ulid::new().to_string().to_lowercase(), value, created: Utc::now(), enabled: true }
}

#[async_trait]
impl Secrets for LocalSecrets {
    async fn versions(&self, name: &str) -> Result<Vec<SecretVersion>, SecretsError> {
        let f = self.read()?;
        let vs = f.secrets.get(name).ok_or_else(|| SecretsError::NotFound(name.into()))?;
        Ok(vs
            .iter()
            .filter(|v| v.enabled)
            .map(|v| SecretVersion { version: v.version.clone(), value: SecretString::new(v.value.clone()), created: v.created })
            .collect())
    }
}
