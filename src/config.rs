//! Configuration: one typed struct, layered from the compiled-in `config/default.toml`, an
//! optional `--config FILE`, and `CONFAB__SECTION__KEY` environment variables, validated at load.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use confab_actors::engine::Limits;
use confab_actors::session::SessionConfig;

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub auth: Auth,
    pub session: Session,
    pub chat: Chat,
    pub groups: Groups,
    pub storage: Storage,
    pub api: Api,
    pub log: Log,
}

/// `[api]`: the signed HTTP integration API (`/api/v1`, docs/http-api.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// The credentials of backends. Empty: every API request is answered 401.
    #[serde(deserialize_with = "api_keys")]
    pub keys: Vec<ApiKey>,
    /// The account that sends system messages to a single user (`from: null, to: USER`).
    pub system_user: String,
    /// Largest request body accepted, in bytes (`body_too_large` beyond).
    pub max_body_bytes: usize,
    /// Most `(key, nonce)` pairs remembered for replay protection on this node.
    pub nonce_cache_size: usize,
}

/// One API credential.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub id: String,
    pub secret: String,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// The API scopes a key may hold. `admin` grants every other one.
pub const API_SCOPES: &[&str] = &["users", "messages", "conversations", "groups", "admin"];

/// `api.keys` is a list of tables in a file, or a JSON array in one environment variable
/// (`CONFAB__API__KEYS='[{"id":"…","secret":"…","scopes":["admin"]}]'`).
fn api_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ApiKey>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr {
        List(Vec<ApiKey>),
        Json(String),
    }
    match Repr::deserialize(d)? {
        Repr::List(keys) => Ok(keys),
        Repr::Json(s) if s.trim().is_empty() => Ok(Vec::new()),
        Repr::Json(s) => serde_json::from_str(&s)
            .map_err(|e| serde::de::Error::custom(format!("api.keys: not a JSON array of keys: {e}"))),
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub bind: String,
    pub workers: usize,
    pub max_frame_bytes: usize,
    pub shutdown_timeout_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub secret: String,
    pub token_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub heartbeat_interval_secs: u64,
    pub client_timeout_secs: u64,
    pub outbound_queue: usize,
    pub max_inflight_requests: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chat {
    pub max_text_chars: usize,
    pub recall_window_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Groups {
    pub max_members: usize,
    pub fanout_chunk: usize,
    pub idle_timeout_secs: u64,
    pub arbiters: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub backend: String,
    pub path: PathBuf,
    pub mongodb: MongoDb,
}

/// `[storage.mongodb]`: used when `storage.backend = "mongodb"` (and by `confab migrate`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoDb {
    pub uri: String,
    pub database: String,
    pub connect_timeout_ms: u64,
    pub server_selection_timeout_ms: u64,
    pub op_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub level: String,
}

/// A configuration problem, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

fn range<T: PartialOrd + std::fmt::Display>(name: &str, v: T, lo: T, hi: T) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(ConfigError(format!("{name} = {v} is out of range ({lo} to {hi})")));
    }
    Ok(())
}

impl Config {
    /// Loads defaults < `file` < environment (`CONFAB__…`), then validates.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut b =
            config::Config::builder().add_source(config::File::from_str(DEFAULT_TOML, config::FileFormat::Toml));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError(format!("--config {}: no such file", f.display())));
            }
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        let env: std::collections::HashMap<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with("CONFAB__")).collect();
        b = b.add_source(
            config::Environment::with_prefix("CONFAB")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let raw = b.build().map_err(|e| ConfigError(e.to_string()))?;
        let cfg: Config = raw.try_deserialize().map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bind_addr()?;
        range("server.workers", self.server.workers, 0, 1024)?;
        range("server.max_frame_bytes", self.server.max_frame_bytes, 1024, 16 << 20)?;
        if self.auth.secret.len() < 16 {
            return Err(ConfigError("auth.secret must be at least 16 bytes".into()));
        }
        range("auth.token_ttl_secs", self.auth.token_ttl_secs, 1, 10 * 365 * 86400)?;
        range("session.heartbeat_interval_secs", self.session.heartbeat_interval_secs, 1, 3600)?;
        if self.session.client_timeout_secs <= self.session.heartbeat_interval_secs {
            return Err(ConfigError(
                "session.client_timeout_secs must be greater than session.heartbeat_interval_secs".into(),
            ));
        }
        range("session.outbound_queue", self.session.outbound_queue, 16, 1 << 20)?;
        range("session.max_inflight_requests", self.session.max_inflight_requests, 1, 10_000)?;
        range("chat.max_text_chars", self.chat.max_text_chars, 1, 1 << 20)?;
        range("chat.recall_window_secs", self.chat.recall_window_secs, 0, 365 * 86400)?;
        range("groups.max_members", self.groups.max_members, 2, 1_000_000)?;
        range("groups.fanout_chunk", self.groups.fanout_chunk, 1, 100_000)?;
        range("groups.idle_timeout_secs", self.groups.idle_timeout_secs, 1, 86400)?;
        range("groups.arbiters", self.groups.arbiters, 0, 256)?;
        match self.storage.backend.as_str() {
            "embedded" => {
                if self.storage.path.as_os_str().is_empty() {
                    return Err(ConfigError("storage.path must not be empty".into()));
                }
            }
            "mongodb" => {
                let uri = &self.storage.mongodb.uri;
                if !uri.starts_with("mongodb://") {
                    return Err(ConfigError(format!(
                        "storage.mongodb.uri = {uri:?} must start with mongodb:// (set it when storage.backend = \"mongodb\")"
                    )));
                }
            }
            other => {
                return Err(ConfigError(format!(
                    "storage.backend = {other:?} is not supported (use \"embedded\" or \"mongodb\")"
                )));
            }
        }
        let mut ids = std::collections::HashSet::new();
        for k in &self.api.keys {
            if confab_actors::model::validate_id("id", &k.id).is_err() {
                return Err(ConfigError(format!(
                    "api.keys: id {:?} must be 1 to 64 characters of [A-Za-z0-9_.@:-]",
                    k.id
                )));
            }
            if !ids.insert(k.id.as_str()) {
                return Err(ConfigError(format!("api.keys: id {:?} appears twice", k.id)));
            }
            if k.secret.len() < 16 {
                return Err(ConfigError(format!("api.keys: the secret of key {:?} must be at least 16 bytes", k.id)));
            }
            if let Some(s) = k.scopes.iter().find(|s| !API_SCOPES.contains(&s.as_str())) {
                return Err(ConfigError(format!(
                    "api.keys: key {:?} has unknown scope {s:?} (known: {})",
                    k.id,
                    API_SCOPES.join(", ")
                )));
            }
        }
        if confab_actors::model::validate_id("user", &self.api.system_user).is_err() {
            return Err(ConfigError(format!("api.system_user = {:?} is not a valid user id", self.api.system_user)));
        }
        range("api.max_body_bytes", self.api.max_body_bytes, 1024, 64 << 20)?;
        range("api.nonce_cache_size", self.api.nonce_cache_size, 100, 10_000_000)?;
        let db = &self.storage.mongodb.database;
        if db.is_empty() || db.len() > 63 || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
            return Err(ConfigError(format!("storage.mongodb.database = {db:?} is not a valid MongoDB database name")));
        }
        range("storage.mongodb.connect_timeout_ms", self.storage.mongodb.connect_timeout_ms, 100, 600_000)?;
        range(
            "storage.mongodb.server_selection_timeout_ms",
            self.storage.mongodb.server_selection_timeout_ms,
            100,
            600_000,
        )?;
        range("storage.mongodb.op_timeout_ms", self.storage.mongodb.op_timeout_ms, 100, 600_000)?;
        Ok(())
    }

    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.bind.parse().map_err(|_| {
            ConfigError(format!("server.bind = {:?} is not an address like 127.0.0.1:8080", self.server.bind))
        })
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_text_chars: self.chat.max_text_chars,
            recall_window: Duration::from_secs(self.chat.recall_window_secs),
            max_group_members: self.groups.max_members,
            fanout_chunk: self.groups.fanout_chunk,
            idle_timeout: Duration::from_secs(self.groups.idle_timeout_secs),
            conversation_mailbox: 1024,
        }
    }

    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            heartbeat_interval: Duration::from_secs(self.session.heartbeat_interval_secs),
            client_timeout: Duration::from_secs(self.session.client_timeout_secs),
            outbound_queue: self.session.outbound_queue,
            max_inflight: self.session.max_inflight_requests,
            max_frame_bytes: self.server.max_frame_bytes,
        }
    }

    pub fn uses_default_secret(&self) -> bool {
        DEFAULT_TOML.contains(&format!("secret = \"{}\"", self.auth.secret))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_load() {
        let c = Config::load_with_env(None, env(&[])).expect("defaults are valid");
        assert_eq!(c.server.bind, "127.0.0.1:8080");
        assert_eq!(c.storage.path, PathBuf::from("./data"));
        assert!(c.uses_default_secret());
    }

    #[test]
    fn env_overrides() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("CONFAB__SERVER__BIND", "127.0.0.1:9000"),
                ("CONFAB__STORAGE__PATH", "/tmp/x"),
                ("CONFAB__SESSION__OUTBOUND_QUEUE", "64"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.server.bind, "127.0.0.1:9000");
        assert_eq!(c.storage.path, PathBuf::from("/tmp/x"));
        assert_eq!(c.session.outbound_queue, 64);
    }

    #[test]
    fn mongodb_backend() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("CONFAB__STORAGE__BACKEND", "mongodb"),
                ("CONFAB__STORAGE__MONGODB__URI", "mongodb://db1:27017,db2:27017/?replicaSet=rs0"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.storage.backend, "mongodb");
        assert_eq!(c.storage.mongodb.database, "confab");
        assert_eq!(c.storage.mongodb.uri, "mongodb://db1:27017,db2:27017/?replicaSet=rs0");
        let e = Config::load_with_env(
            None,
            env(&[("CONFAB__STORAGE__BACKEND", "mongodb"), ("CONFAB__STORAGE__MONGODB__URI", "")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("storage.mongodb.uri"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__STORAGE__MONGODB__DATABASE", "a.b")])).unwrap_err();
        assert!(e.to_string().contains("storage.mongodb.database"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__STORAGE__BACKEND", "sqlite")])).unwrap_err();
        assert!(e.to_string().contains("storage.backend"), "{e}");
    }

    #[test]
    fn api_keys_from_env_or_file() {
        let c = Config::load_with_env(None, env(&[])).expect("valid");
        assert!(c.api.keys.is_empty());
        assert_eq!(c.api.system_user, "system");
        let c = Config::load_with_env(
            None,
            env(&[(
                "CONFAB__API__KEYS",
                r#"[{"id":"php","secret":"0123456789abcdef0123","scopes":["messages","groups"]}]"#,
            )]),
        )
        .expect("valid");
        assert_eq!(c.api.keys.len(), 1);
        assert_eq!((c.api.keys[0].id.as_str(), c.api.keys[0].scopes.len()), ("php", 2));
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[api]\nkeys = [{ id = \"a\", secret = \"0123456789abcdef0123\", scopes = [\"admin\"] }, { id = \"b\", secret = \"0123456789abcdef0124\" }]\n").expect("write");
        let c = Config::load_with_env(Some(&f), env(&[])).expect("valid");
        assert_eq!(c.api.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let e =
            Config::load_with_env(None, env(&[("CONFAB__API__KEYS", r#"[{"id":"x","secret":"short","scopes":[]}]"#)]))
                .unwrap_err();
        assert!(e.to_string().contains("api.keys"), "{e}");
        let e = Config::load_with_env(
            None,
            env(&[("CONFAB__API__KEYS", r#"[{"id":"x","secret":"0123456789abcdef0123","scopes":["root"]}]"#)]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown scope"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__API__KEYS", "not json")])).unwrap_err();
        assert!(e.to_string().contains("api.keys"), "{e}");
    }

    #[test]
    fn invalid_settings_are_named() {
        let e = Config::load_with_env(None, env(&[("CONFAB__SERVER__BIND", "nope")])).unwrap_err();
        assert!(e.to_string().contains("server.bind"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__AUTH__SECRET", "short")])).unwrap_err();
        assert!(e.to_string().contains("auth.secret"), "{e}");
        let e = Config::load_with_env(None, env(&[("CONFAB__SERVER__MAX_FRAME_BYTES", "abc")])).unwrap_err();
        assert!(e.to_string().contains("max_frame_bytes"), "{e}");
    }
}
