//! `[storage]`: which store, and its settings.

use std::path::PathBuf;

use serde::Deserialize;

use super::{range, ConfigError};

/// `[storage]`: the store backend (`embedded` or `mongodb`) and its settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    pub backend: String,
    pub path: PathBuf,
    pub mongodb: MongoDb,
}

/// `[files]`: uploaded files (docs/protocol.md, "Files").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Files {
    /// `local` (the directory `path`) or `s3` (`[files.s3]`).
    pub backend: String,
    /// Where file bytes are kept (`local`), or staged while uploading (`s3`); empty:
    /// `<storage.path>/files`.
    pub path: PathBuf,
    pub max_image_bytes: u64,
    pub max_audio_bytes: u64,
    pub max_video_bytes: u64,
    pub max_file_bytes: u64,
    /// How long a download link works.
    pub link_ttl_secs: u64,
    /// How long an unfinished resumable upload is kept.
    pub upload_ttl_secs: u64,
    pub s3: S3,
}

/// Empty (AWS), or an http(s) URL.
fn valid_endpoint(e: &str) -> bool {
    e.is_empty() || e.starts_with("http://") || e.starts_with("https://")
}

/// `[files.s3]`: S3-compatible object storage (AWS S3, MinIO, Aliyun OSS, Tencent COS, …).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3 {
    /// Empty: AWS for `region`; else the service's URL (`https://oss-cn-hangzhou.aliyuncs.com`).
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Keys are `<prefix>/<file id>`.
    pub prefix: String,
    /// `https://bucket.endpoint/key` rather than `https://endpoint/bucket/key` (OSS and COS need it).
    pub virtual_hosted_style: bool,
}

impl Files {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("files.max_image_bytes", self.max_image_bytes),
            ("files.max_audio_bytes", self.max_audio_bytes),
            ("files.max_video_bytes", self.max_video_bytes),
            ("files.max_file_bytes", self.max_file_bytes),
        ] {
            range(name, v, 1, 1 << 40)?;
        }
        range("files.link_ttl_secs", self.link_ttl_secs, 10, 7 * 86_400)?;
        range("files.upload_ttl_secs", self.upload_ttl_secs, 60, 30 * 86_400)?;
        match self.backend.as_str() {
            "local" => Ok(()),
            "s3" if self.s3.bucket.is_empty() => Err(ConfigError("files.s3.bucket must be set".into())),
            "s3" if !valid_endpoint(&self.s3.endpoint) => {
                Err(ConfigError(format!("files.s3.endpoint = {:?} must be an http(s) URL", self.s3.endpoint)))
            }
            "s3" => Ok(()),
            other => Err(ConfigError(format!("files.backend = {other:?} must be \"local\" or \"s3\""))),
        }
    }

    /// The directory of file bytes.
    pub fn dir(&self, storage: &Storage) -> PathBuf {
        if self.path.as_os_str().is_empty() {
            storage.path.join("files")
        } else {
            self.path.clone()
        }
    }
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

impl Storage {
    /// Checks the backend and what it needs (`[storage.mongodb]` has its own checks).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        match self.backend.as_str() {
            "embedded" => {
                if self.path.as_os_str().is_empty() {
                    return Err(ConfigError("storage.path must not be empty".into()));
                }
            }
            "mongodb" => {
                let uri = &self.mongodb.uri;
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
        Ok(())
    }
}

impl MongoDb {
    /// Checks `[storage.mongodb]`, naming the setting at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let db = &self.database;
        if db.is_empty() || db.len() > 63 || db.contains(['/', '\\', '.', ' ', '"', '$', '\0']) {
            return Err(ConfigError(format!("storage.mongodb.database = {db:?} is not a valid MongoDB database name")));
        }
        range("storage.mongodb.connect_timeout_ms", self.connect_timeout_ms, 100, 600_000)?;
        range("storage.mongodb.server_selection_timeout_ms", self.server_selection_timeout_ms, 100, 600_000)?;
        range("storage.mongodb.op_timeout_ms", self.op_timeout_ms, 100, 600_000)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_refused, env};
    use crate::config::*;

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
        assert_refused(
            &[("CONFAB__STORAGE__BACKEND", "mongodb"), ("CONFAB__STORAGE__MONGODB__URI", "")],
            "storage.mongodb.uri",
        );
        assert_refused(&[("CONFAB__STORAGE__MONGODB__DATABASE", "a.b")], "storage.mongodb.database");
        assert_refused(&[("CONFAB__STORAGE__BACKEND", "sqlite")], "storage.backend");
    }
}
