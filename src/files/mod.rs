//! Files users upload (images, voice notes, videos, any file): their bytes ([`Blobs`]: on local
//! disk next to the store, or in S3-compatible object storage), their records in the store
//! (`FileMeta`), what they are (from their content: [`sniff`]), and the signed, expiring links
//! they are downloaded with.

pub mod sniff;
pub mod thumb;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use object_store::ObjectStore;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use confab_actors::error::{Error, ErrorCode};

/// Where file bytes live: `<root>/<first two characters of the id>/<id>`, written to a temporary
/// file first and renamed once complete and synced, so a file either exists whole or not at all.
pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    pub fn new(root: PathBuf) -> std::io::Result<LocalBlobs> {
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(LocalBlobs { root })
    }

    /// A new temporary file's path (under `tmp/`, on the same file system as the blobs).
    pub fn temp_path(&self, id: &str) -> PathBuf {
        self.root.join("tmp").join(format!("{id}.part"))
    }

    pub fn path(&self, id: &str) -> PathBuf {
        self.root.join(&id[..2.min(id.len())]).join(id)
    }

    /// Moves a complete, synced temporary file into place and syncs its directory: once this
    /// returns, the file survives a crash.
    pub async fn commit(&self, temp: &Path, id: &str) -> std::io::Result<()> {
        let dest = self.path(id);
        let dir = dest.parent().map(Path::to_path_buf).unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::rename(temp, &dest).await?;
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?
    }
}

/// Where file bytes are kept. Uploads are staged in a local temporary directory first (whatever
/// the backend), then moved into place whole: a file either exists complete or not at all.
pub enum Blobs {
    Local(LocalBlobs),
    /// S3-compatible object storage; `staging` holds uploads until they are complete.
    S3 {
        store: Arc<dyn ObjectStore>,
        prefix: String,
        staging: LocalBlobs,
    },
}

/// Bytes of an upload sent to object storage per part.
const PART_BYTES: usize = 8 << 20;

impl Blobs {
    /// Object storage through `object_store` (tested against an S3 API server).
    pub fn s3(store: Arc<dyn ObjectStore>, prefix: &str, staging: PathBuf) -> std::io::Result<Blobs> {
        Ok(Blobs::S3 { store, prefix: prefix.trim_matches('/').to_owned(), staging: LocalBlobs::new(staging)? })
    }

    pub fn temp_path(&self, id: &str) -> PathBuf {
        match self {
            Blobs::Local(l) => l.temp_path(id),
            Blobs::S3 { staging, .. } => staging.temp_path(id),
        }
    }

    fn key(prefix: &str, id: &str) -> object_store::path::Path {
        if prefix.is_empty() {
            object_store::path::Path::from(id)
        } else {
            object_store::path::Path::from(format!("{prefix}/{id}"))
        }
    }

    /// Moves a complete, synced temporary file into place: renamed and its directory synced on
    /// disk; uploaded (in parts when large) and the temporary file removed for object storage.
    /// Once this returns, the file survives a crash of the node.
    pub async fn commit(&self, temp: &Path, id: &str) -> std::io::Result<()> {
        match self {
            Blobs::Local(l) => l.commit(temp, id).await,
            Blobs::S3 { store, prefix, .. } => {
                let key = Self::key(prefix, id);
                let mut file = tokio::fs::File::open(temp).await?;
                let size = file.metadata().await?.len();
                if size <= PART_BYTES as u64 {
                    let mut buf = Vec::with_capacity(size as usize);
                    file.read_to_end(&mut buf).await?;
                    store.put(&key, Bytes::from(buf).into()).await.map_err(std::io::Error::other)?;
                } else {
                    let upload = store.put_multipart(&key).await.map_err(std::io::Error::other)?;
                    let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                    let mut buf = vec![0u8; PART_BYTES];
                    loop {
                        let n = file.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        w.wait_for_capacity(4).await.map_err(std::io::Error::other)?;
                        w.write(&buf[..n]);
                    }
                    w.finish().await.map_err(std::io::Error::other)?;
                }
                tokio::fs::remove_file(temp).await
            }
        }
    }

    /// Removes file `id`'s bytes; nothing to remove is no error.
    pub async fn delete(&self, id: &str) -> std::io::Result<()> {
        match self {
            Blobs::Local(l) => match tokio::fs::remove_file(l.path(id)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Blobs::S3 { store, prefix, .. } => match store.delete(&Self::key(prefix, id)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(std::io::Error::other(e)),
            },
        }
    }

    /// `len` bytes of file `id` from `start`, as a stream. `NotFound` when it is gone.
    pub async fn read(
        &self,
        id: &str,
        start: u64,
        len: u64,
    ) -> std::io::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        match self {
            Blobs::Local(l) => {
                let mut file = tokio::fs::File::open(l.path(id)).await?;
                file.seek(std::io::SeekFrom::Start(start)).await?;
                let chunks = futures_util::stream::unfold(
                    (file.take(len), vec![0u8; 64 * 1024]),
                    |(mut f, mut buf)| async move {
                        match f.read(&mut buf).await {
                            Ok(0) => None,
                            Ok(n) => Some((Ok(Bytes::copy_from_slice(&buf[..n])), (f, buf))),
                            Err(e) => Some((Err(e), (f, buf))),
                        }
                    },
                );
                Ok(chunks.boxed())
            }
            Blobs::S3 { store, prefix, .. } => {
                let opts = object_store::GetOptions {
                    range: Some(object_store::GetRange::Bounded(start..start + len)),
                    ..Default::default()
                };
                let got = store.get_opts(&Self::key(prefix, id), opts).await.map_err(|e| match e {
                    object_store::Error::NotFound { .. } => std::io::Error::new(std::io::ErrorKind::NotFound, e),
                    e => std::io::Error::other(e),
                })?;
                Ok(got.into_stream().map(|r| r.map_err(std::io::Error::other)).boxed())
            }
        }
    }
}

/// Signs and checks download links: `HMAC-SHA256(auth.secret, "file\n<id>\n<expires>")`.
#[derive(Clone)]
pub struct Links {
    secret: Vec<u8>,
    pub ttl_secs: u64,
}

impl Links {
    pub fn new(secret: &str, ttl_secs: u64) -> Links {
        Links { secret: secret.as_bytes().to_vec(), ttl_secs }
    }

    fn mac(&self, id: &str, expires: u64) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("HMAC takes any key length");
        m.update(format!("file\n{id}\n{expires}").as_bytes());
        m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The path and query of a link to `id` valid until `now + ttl`, and that time (unix s).
    pub fn sign(&self, id: &str, now: u64) -> (String, u64) {
        let expires = now + self.ttl_secs;
        (format!("/files/{id}/content?expires={expires}&sig={}", self.mac(id, expires)), expires)
    }

    /// Checks a link's signature, then its expiry.
    pub fn check(&self, id: &str, expires: u64, sig: &str, now: u64) -> Result<(), Error> {
        let want = self.mac(id, expires);
        // Constant time: every byte is compared whatever the first difference.
        let same = want.len() == sig.len() && want.bytes().zip(sig.bytes()).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
        if !same {
            return Err(Error::new(ErrorCode::LinkInvalid, "this download link's signature does not match"));
        }
        if expires < now {
            return Err(Error::new(ErrorCode::LinkExpired, "this download link has expired; ask for a new one"));
        }
        Ok(())
    }
}

/// A `Range` no byte of the file satisfies (HTTP 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// One byte range of a file of `size` bytes, from a `Range` header (`bytes=a-b`, `a-`, `-n`):
/// `Ok(None)` without one (or one this server does not serve: several ranges, another unit),
/// `Err(Unsatisfiable)` when it cannot be satisfied.
pub fn byte_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, Unsatisfiable> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
            if n == 0 {
                return Err(Unsatisfiable);
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
            let end = if b.is_empty() {
                size.saturating_sub(1)
            } else {
                b.parse::<u64>().map_err(|_| Unsatisfiable)?.min(size - 1)
            };
            (start, end)
        }
        (true, true) => return Err(Unsatisfiable),
    };
    if size == 0 || start >= size || start > end {
        return Err(Unsatisfiable);
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_expire_and_cannot_be_tampered_with() {
        let l = Links::new("secret-0123456789abcdef", 60);
        let (url, exp) = l.sign("abc", 1000);
        assert_eq!(exp, 1060);
        let sig = url.split("sig=").nth(1).unwrap();
        assert!(l.check("abc", 1060, sig, 1060).is_ok());
        assert_eq!(l.check("abc", 1060, sig, 1061).unwrap_err().code, ErrorCode::LinkExpired);
        assert_eq!(l.check("abc", 1061, sig, 1000).unwrap_err().code, ErrorCode::LinkInvalid, "a longer life");
        assert_eq!(l.check("abd", 1060, sig, 1000).unwrap_err().code, ErrorCode::LinkInvalid, "another file");
        assert_eq!(l.check("abc", 1060, "00", 1000).unwrap_err().code, ErrorCode::LinkInvalid);
    }

    #[test]
    fn ranges() {
        assert_eq!(byte_range(None, 10), Ok(None));
        assert_eq!(byte_range(Some("bytes=0-3"), 10), Ok(Some((0, 3))));
        assert_eq!(byte_range(Some("bytes=4-"), 10), Ok(Some((4, 9))));
        assert_eq!(byte_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(byte_range(Some("bytes=5-100"), 10), Ok(Some((5, 9))));
        assert_eq!(byte_range(Some("bytes=10-"), 10), Err(Unsatisfiable));
        assert_eq!(byte_range(Some("bytes=3-1"), 10), Err(Unsatisfiable));
        assert_eq!(byte_range(Some("bytes=0-1,4-5"), 10), Ok(None));
        assert_eq!(byte_range(Some("items=0-1"), 10), Ok(None));
    }
}
