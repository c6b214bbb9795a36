//! `[api]`: the signed HTTP integration API and its keys.

use serde::Deserialize;

use super::{json_list, keyed_list, only_known, range, ConfigError};

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
    /// The fastest a broadcast may send, in messages per second (and its default rate).
    pub broadcast_max_rate: u32,
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
pub const API_SCOPES: &[&str] = &["users", "messages", "conversations", "groups", "webhooks", "stats", "admin"];

/// `api.keys` is a list of tables in a file, or a JSON array in one environment variable
/// (`CONFAB__API__KEYS='[{"id":"…","secret":"…","scopes":["admin"]}]'`).
fn api_keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ApiKey>, D::Error> {
    json_list(d, "api.keys", "keys")
}

impl ApiKey {
    /// Checks one key of `api.keys` but its id (see [`Api::validate`]).
    fn validate(&self) -> Result<(), ConfigError> {
        if self.secret.len() < 16 {
            return Err(ConfigError(format!("api.keys: the secret of key {:?} must be at least 16 bytes", self.id)));
        }
        only_known(&self.scopes, API_SCOPES, || format!("api.keys: key {:?} has unknown scope", self.id))
    }
}

impl Api {
    /// Checks `[api]`, naming the setting at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        keyed_list("api.keys", "id", &self.keys, |k| &k.id, ApiKey::validate)?;
        if confab_actors::model::validate_id("user", &self.system_user).is_err() {
            return Err(ConfigError(format!("api.system_user = {:?} is not a valid user id", self.system_user)));
        }
        range("api.max_body_bytes", self.max_body_bytes, 1024, 64 << 20)?;
        range("api.nonce_cache_size", self.nonce_cache_size, 100, 10_000_000)?;
        range("api.broadcast_max_rate", self.broadcast_max_rate, 1, 10_000)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_refused, env};
    use crate::config::*;

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
        assert_refused(&[("CONFAB__API__KEYS", r#"[{"id":"x","secret":"short","scopes":[]}]"#)], "api.keys");
        assert_refused(
            &[("CONFAB__API__KEYS", r#"[{"id":"x","secret":"0123456789abcdef0123","scopes":["root"]}]"#)],
            "unknown scope",
        );
        assert_refused(&[("CONFAB__API__KEYS", "not json")], "api.keys");
    }
}
