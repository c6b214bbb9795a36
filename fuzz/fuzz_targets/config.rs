//! A configuration file (`Config::load_with_env` with `--config FILE` and no environment).
//!
//! Invariants: loading never panics, and a configuration it accepts passes its own validation
//! again, has a usable bind address and node id, and yields the engine and session settings.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use confab::config::{is_node_id_char, Config};
use libfuzzer_sys::fuzz_target;

/// The loader reads a path: one file per fuzzing process, rewritten for every input.
fn path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("confab-fuzz-config-{}.toml", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let path = path();
    std::fs::write(path, data).expect("write the config file");
    let Ok(cfg) = Config::load_with_env(Some(path), std::iter::empty()) else { return };
    if let Err(e) = cfg.validate() {
        panic!("loaded, then fails its own validation: {e}");
    }
    cfg.bind_addr().expect("a loaded config has a bind address");
    let id = &cfg.cluster.node_id;
    assert!(!id.is_empty() && id.len() <= 64 && id.chars().all(is_node_id_char), "node id {id:?}");
    let limits = cfg.limits();
    assert!(limits.max_text_chars >= 1 && limits.max_group_members >= 2);
    let session = cfg.session_config();
    assert!(session.client_timeout > session.heartbeat_interval);
    assert!(cfg.auth.secret.len() >= 16);
});
