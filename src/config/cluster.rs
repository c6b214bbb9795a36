//! `[cluster]`: several nodes bridged by Redis.

use serde::Deserialize;

use super::{range, Config, ConfigError};

/// `[cluster]`: several nodes sharing one MongoDB, bridged by Redis (src/cluster).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub enabled: bool,
    /// This node's id; empty in the file means generated at load (see [`Cluster::generate_node_id`]).
    pub node_id: String,
    pub redis_url: String,
    pub redis_pool_size: u32,
    /// Longest wait for one Redis call (connecting, pool checkout and reply), in milliseconds.
    pub redis_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub node_ttl_ms: u64,
}

impl Cluster {
    /// `hostname-pid-random`, reduced to the characters a node id may hold.
    pub fn generate_node_id() -> String {
        use std::hash::{BuildHasher as _, Hasher as _};
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .unwrap_or_else(|| "node".into());
        let host: String = host.trim().chars().filter(|c| is_node_id_char(*c)).take(32).collect();
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
        );
        let host = if host.is_empty() { "node".to_owned() } else { host };
        format!("{host}-{}-{:06x}", std::process::id(), h.finish() & 0xff_ffff)
    }
}

/// Node ids are used in Redis keys, channel names and presence fields.
pub fn is_node_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

impl Config {
    /// Checks `[cluster]` (and that a cluster has a store to share), naming the setting at fault.
    pub(super) fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        let id = &c.node_id;
        if !id.is_empty() && (id.len() > 64 || !id.chars().all(is_node_id_char)) {
            return Err(ConfigError(format!(
                "cluster.node_id = {id:?} must be 1 to 64 characters of [A-Za-z0-9_.-] (or empty to generate one)"
            )));
        }
        range("cluster.redis_pool_size", c.redis_pool_size, 1, 1024)?;
        range("cluster.redis_timeout_ms", c.redis_timeout_ms, 10, 60_000)?;
        range("cluster.heartbeat_ms", c.heartbeat_ms, 50, 60_000)?;
        range("cluster.node_ttl_ms", c.node_ttl_ms, 100, 600_000)?;
        if c.node_ttl_ms < 2 * c.heartbeat_ms {
            return Err(ConfigError(format!(
                "cluster.node_ttl_ms = {} must be at least twice cluster.heartbeat_ms = {}",
                c.node_ttl_ms, c.heartbeat_ms
            )));
        }
        if !c.enabled {
            return Ok(());
        }
        if !c.redis_url.starts_with("redis://") {
            return Err(ConfigError(format!(
                "cluster.redis_url = {:?} must start with redis:// (set it when cluster.enabled = true; TLS is not supported)",
                c.redis_url
            )));
        }
        if self.storage.backend != "mongodb" {
            return Err(ConfigError(format!(
                "cluster.enabled = true needs storage.backend = \"mongodb\" (the {:?} store belongs to one node)",
                self.storage.backend
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_refused, env};
    use crate::config::*;

    #[test]
    fn cluster_settings() {
        let c = Config::load_with_env(None, env(&[])).expect("valid");
        assert!(!c.cluster.enabled);
        assert!(!c.cluster.node_id.is_empty(), "a node id is generated when none is set");
        assert!(c.cluster.node_id.chars().all(is_node_id_char), "{}", c.cluster.node_id);
        assert_eq!((c.cluster.heartbeat_ms, c.cluster.node_ttl_ms), (1000, 5000));
        let mongo = [
            ("CONFAB__STORAGE__BACKEND", "mongodb"),
            ("CONFAB__STORAGE__MONGODB__URI", "mongodb://db:27017/?replicaSet=rs0"),
            ("CONFAB__CLUSTER__ENABLED", "true"),
            ("CONFAB__CLUSTER__NODE_ID", "node-1"),
            ("CONFAB__CLUSTER__REDIS_URL", "redis://redis:6379"),
            ("CONFAB__CLUSTER__REDIS_POOL_SIZE", "8"),
        ];
        let c = Config::load_with_env(None, env(&mongo)).expect("valid");
        assert_eq!((c.cluster.node_id.as_str(), c.cluster.redis_pool_size), ("node-1", 8));
        assert_refused(&mongo[2..], "storage.backend = \"mongodb\"");
        let mut bad = mongo.to_vec();
        bad.push(("CONFAB__CLUSTER__REDIS_URL", ""));
        assert_refused(&bad, "cluster.redis_url");
        assert_refused(&[("CONFAB__CLUSTER__NODE_ID", "a/b")], "cluster.node_id");
        assert_refused(&[("CONFAB__CLUSTER__NODE_TTL_MS", "1500")], "cluster.node_ttl_ms");
        assert_refused(&[("CONFAB__CLUSTER__REDIS_POOL_SIZE", "0")], "cluster.redis_pool_size");
    }
}
