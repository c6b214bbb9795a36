//! Configuration: one typed struct, layered from the compiled-in `config/default.toml`, an
//! optional `--config FILE`, and `CONFAB__SECTION__KEY` environment variables, validated at load.
//!
//! One file per group of sections: `server` (`[server]`, `[auth]`, `[session]`, `[limits]`,
//! `[chat]`, `[groups]`, `[log]`), `storage`, `api`, `webhooks` and `cluster`; each holds its
//! sections' types and checks. This module loads the whole and validates it, section by section.

mod api;
mod cluster;
mod push;
mod server;
mod storage;
mod webhooks;

use std::collections::HashSet;
use std::path::Path;

use serde::Deserialize;

pub use api::{Api, ApiKey, API_SCOPES};
pub use cluster::{is_node_id_char, Cluster};
pub use push::{Apns, Fcm, Push, Relay};
pub use server::{networks, Auth, Chat, Groups, Limits, Log, Server, Session};
pub use storage::{Files, MongoDb, Storage};
pub use webhooks::{HookConfig, WebhookEndpoint, Webhooks};

/// The defaults, compiled in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// The whole configuration, one field per section of config/default.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: Server,
    pub auth: Auth,
    pub session: Session,
    pub limits: Limits,
    pub chat: Chat,
    pub groups: Groups,
    pub storage: Storage,
    pub api: Api,
    pub log: Log,
    pub cluster: Cluster,
    pub webhooks: Webhooks,
    pub files: Files,
    pub push: Push,
}

/// Checks that setting `name` is an http:// or https:// URL.
fn check_http_url(name: &str, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.chars().any(char::is_whitespace) {
        return Err(ConfigError(format!("{name} = {url:?} must be an http:// or https:// URL")));
    }
    Ok(())
}

/// Checks list setting `list`, entry by entry: its key (its `what`, such as `id` or `name`, read
/// by `key`) is 1 to 64 characters of `[A-Za-z0-9_.@:-]` and no entry before it has the same,
/// then `check` checks the rest of it.
fn keyed_list<T>(
    list: &str,
    what: &str,
    entries: &[T],
    key: impl Fn(&T) -> &str,
    check: impl Fn(&T) -> Result<(), ConfigError>,
) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for entry in entries {
        let k = key(entry);
        if confab_actors::model::validate_id(what, k).is_err() {
            return Err(ConfigError(format!("{list}: {what} {k:?} must be 1 to 64 characters of [A-Za-z0-9_.@:-]")));
        }
        if !seen.insert(k) {
            return Err(ConfigError(format!("{list}: {what} {k:?} appears twice")));
        }
        check(entry)?;
    }
    Ok(())
}

/// Checks that every one of `values` is among `known`; the error names the first that is not,
/// after `what` (where it is and what it is), then lists the known ones.
fn only_known(values: &[String], known: &[&str], what: impl FnOnce() -> String) -> Result<(), ConfigError> {
    match values.iter().find(|v| !known.contains(&v.as_str())) {
        None => Ok(()),
        Some(v) => Err(ConfigError(format!("{} {v:?} (known: {})", what(), known.join(", ")))),
    }
}

/// A configuration problem, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Checks that setting `name` lies between `lo` and `hi` (both included).
fn range<T: PartialOrd + std::fmt::Display>(name: &str, v: T, lo: T, hi: T) -> Result<(), ConfigError> {
    if v < lo || v > hi {
        return Err(ConfigError(format!("{name} = {v} is out of range ({lo} to {hi})")));
    }
    Ok(())
}

/// A list given as a TOML array, or (from the environment, where every value is one string) as
/// a string that `parse` turns into the list.
fn list_or_string<'de, D, T>(d: D, parse: impl FnOnce(&str) -> Result<Vec<T>, String>) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Repr<T> {
        List(Vec<T>),
        Text(String),
    }
    match Repr::deserialize(d)? {
        Repr::List(v) => Ok(v),
        Repr::Text(s) => parse(&s).map_err(serde::de::Error::custom),
    }
}

/// [`list_or_string`] where the string is a JSON array of `items` (blank: none); `name` is the
/// setting, for the error.
fn json_list<'de, D, T>(d: D, name: &str, items: &str) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    list_or_string(d, |s| match s.trim().is_empty() {
        true => Ok(Vec::new()),
        false => serde_json::from_str(s).map_err(|e| format!("{name}: not a JSON array of {items}: {e}")),
    })
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
        let mut cfg: Config = raw.try_deserialize().map_err(|e| ConfigError(e.to_string()))?;
        cfg.validate()?;
        if cfg.cluster.node_id.is_empty() {
            cfg.cluster.node_id = Cluster::generate_node_id();
        }
        Ok(cfg)
    }

    /// Checks every section, naming the first setting at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server_sections()?;
        self.storage.validate()?;
        self.api.validate()?;
        self.webhooks.validate()?;
        self.files.validate()?;
        self.push.validate()?;
        self.storage.mongodb.validate()?;
        self.validate_cluster()?;
        Ok(())
    }

    /// Whether `auth.secret` is still the one in the compiled-in defaults.
    pub fn uses_default_secret(&self) -> bool {
        DEFAULT_TOML.contains(&format!("secret = \"{}\"", self.auth.secret))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    pub(super) fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Loads the defaults with `pairs` in the environment, which must fail with an error naming
    /// `named`.
    pub(super) fn assert_refused(pairs: &[(&str, &str)], named: &str) {
        let e = Config::load_with_env(None, env(pairs)).unwrap_err();
        assert!(e.to_string().contains(named), "{e}");
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
    fn invalid_settings_are_named() {
        assert_refused(&[("CONFAB__SERVER__BIND", "nope")], "server.bind");
        assert_refused(&[("CONFAB__AUTH__SECRET", "short")], "auth.secret");
        assert_refused(&[("CONFAB__SERVER__MAX_FRAME_BYTES", "abc")], "max_frame_bytes");
    }
}
