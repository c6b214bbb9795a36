//! File uploads and downloads (docs/protocol.md, "Files"): `POST /files` streams an upload to
//! disk with the user's access token; `GET /files/{id}/link` hands a signed, expiring link to
//! someone allowed to read it; `GET /files/{id}/content` serves it (ranges included).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use confab_actors::error::{Error, ErrorCode};
use confab_actors::model::{FileKind, FileMeta};

use super::{error_response, AppState};
use crate::files::{byte_range, sniff, Blobs, Links};

/// Bytes of an upload kept in memory to tell what it is (an image's header may follow up to
/// 64 KiB of metadata).
const HEAD_BYTES: usize = 256 * 1024;
/// Largest image the server records dimensions of (a "decompression bomb" beyond): 100 megapixels.
const MAX_PIXELS: u64 = 100_000_000;

/// What the file endpoints share (set once at start-up).
pub struct FilesState {
    pub blobs: Blobs,
    pub links: Links,
    /// Largest upload per kind, in bytes.
    pub max_bytes: [(FileKind, u64); 4],
}

impl FilesState {
    fn max(&self, kind: FileKind) -> u64 {
        self.max_bytes.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n)
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/files", web::post().to(upload))
        .route("/files/{id}/link", web::get().to(link))
        .route("/files/{id}/content", web::get().to(content));
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The caller of a file request: a valid access token of a user who may connect.
async fn caller(req: &HttpRequest, state: &AppState) -> Result<String, Error> {
    let token =
        super::ws::token(req).ok_or_else(|| Error::new(ErrorCode::Unauthorized, "an access token is required"))?;
    let claims = state.tokens.verify(&token)?;
    state.engine.check_access(&claims.sub, Some((&claims.dev, claims.issued_ms()))).await?;
    Ok(claims.sub)
}

fn files(state: &AppState) -> Result<&Arc<FilesState>, Error> {
    state.files.as_ref().ok_or_else(|| Error::new(ErrorCode::Unavailable, "file storage is not configured"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    kind: String,
    #[serde(default)]
    name: Option<String>,
}

/// `POST /files?kind=image&name=cat.jpg`, the content as the body (any `Content-Type`): stored
/// when complete, synced to disk, its type told from its content.
async fn upload(req: HttpRequest, body: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    match upload_inner(&req, body, &state).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn upload_inner(req: &HttpRequest, mut body: web::Payload, state: &AppState) -> Result<HttpResponse, Error> {
    let owner = caller(req, state).await?;
    let fs = files(state)?;
    let q = web::Query::<UploadQuery>::from_query(req.query_string())
        .map_err(|e| Error::invalid(format!("query: {e}")))?
        .into_inner();
    let kind = FileKind::parse(&q.kind).ok_or_else(|| Error::invalid("kind must be image, audio, video or file"))?;
    if let Some(n) = &q.name {
        if n.trim().is_empty()
            || n.chars().count() > confab_actors::model::MAX_NAME_LEN
            || n.contains(['/', '\\', '\0'])
        {
            return Err(Error::invalid("name: 1 to 256 characters, no / \\ or NUL"));
        }
    }
    let max = fs.max(kind);
    // A declared length over the limit is refused before a byte is read.
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(kind, max));
    }
    // 128 bits: the id is what lets a user send the file in a message.
    let id = format!("{}{}", confab_actors::engine::random_id(), confab_actors::engine::random_id());
    let temp = fs.blobs.temp_path(&id);
    let result = async {
        let mut file = tokio::fs::File::create(&temp).await.map_err(io)?;
        let (mut size, mut head, mut hash) = (0u64, Vec::new(), Sha256::new());
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| Error::invalid(format!("the upload broke off: {e}")))?;
            size += chunk.len() as u64;
            if size > max {
                return Err(too_large(kind, max));
            }
            if head.len() < HEAD_BYTES {
                head.extend_from_slice(&chunk[..chunk.len().min(HEAD_BYTES - head.len())]);
            }
            hash.update(&chunk);
            file.write_all(&chunk).await.map_err(io)?;
        }
        if size == 0 {
            return Err(Error::invalid("the upload is empty"));
        }
        let mime = sniff::mime(&head)
            .ok_or_else(|| Error::new(ErrorCode::FileTypeRefused, "executables are refused, whatever their name"))?;
        if !kind.accepts(mime) {
            return Err(Error::new(
                ErrorCode::FileTypeRefused,
                format!("the content is {mime}, not an {}", kind.as_str()),
            ));
        }
        let (mut width, mut height) = (None, None);
        if kind == FileKind::Image {
            if let Some((w, h)) = sniff::dimensions(mime, &head) {
                if u64::from(w) * u64::from(h) > MAX_PIXELS {
                    return Err(Error::new(
                        ErrorCode::FileTypeRefused,
                        format!("{w}×{h} pixels is too large an image"),
                    ));
                }
                (width, height) = (Some(w), Some(h));
            }
        }
        file.sync_all().await.map_err(io)?;
        drop(file);
        fs.blobs.commit(&temp, &id).await.map_err(io)?;
        let sha256 = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let meta = FileMeta {
            id: id.clone(),
            owner,
            kind,
            mime: mime.to_owned(),
            size,
            name: q.name.map(|n| n.trim().to_owned()),
            width,
            height,
            sha256,
            created_at: confab_actors::clock::now_ms(),
        };
        state.engine.store().put_file(&meta).await?;
        Ok(meta)
    }
    .await;
    let meta = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
    };
    let (url, expires_at) = fs.links.sign(&meta.id, now_secs());
    Ok(HttpResponse::Ok().json(serde_json::json!({ "file": meta, "url": url, "expires_at": expires_at })))
}

fn too_large(kind: FileKind, max: u64) -> Error {
    Error::new(ErrorCode::FileTooLarge, format!("an {} may be at most {max} bytes", kind.as_str()))
}

fn io(e: std::io::Error) -> Error {
    tracing::warn!(error = %e, "file storage failed");
    Error::new(ErrorCode::Unavailable, format!("file storage failed: {e}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkQuery {
    #[serde(default)]
    conv_id: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
}

/// `GET /files/{id}/link?conv_id=…&seq=…`: a signed link for the uploader, or for a user who can
/// read message `seq` of `conv_id`, which names the file.
async fn link(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    let r = async {
        let user = caller(&req, &state).await?;
        let fs = files(&state)?;
        let id = path.into_inner();
        confab_actors::model::validate_id("id", &id)?;
        let q = web::Query::<LinkQuery>::from_query(req.query_string())
            .map_err(|e| Error::invalid(format!("query: {e}")))?
            .into_inner();
        let meta = state.engine.store().file(&id).await?.ok_or_else(|| Error::not_found("no such file"))?;
        let at = match (&q.conv_id, q.seq) {
            (Some(c), Some(s)) => Some((c.as_str(), s)),
            (None, None) => None,
            _ => return Err(Error::invalid("give conv_id and seq together")),
        };
        state.engine.file_access(&user, &meta, at).await?;
        let (url, expires_at) = fs.links.sign(&id, now_secs());
        Ok::<_, Error>(serde_json::json!({ "url": url, "expires_at": expires_at }))
    }
    .await;
    match r {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => error_response(&e),
    }
}

#[derive(Deserialize)]
struct ContentQuery {
    expires: u64,
    sig: String,
}

/// `GET /files/{id}/content?expires=…&sig=…`: the file, whole or one byte range.
async fn content(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    match content_inner(&req, path.into_inner(), &state).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn content_inner(req: &HttpRequest, id: String, state: &AppState) -> Result<HttpResponse, Error> {
    let fs = files(state)?;
    confab_actors::model::validate_id("id", &id)?;
    let q = web::Query::<ContentQuery>::from_query(req.query_string())
        .map_err(|_| Error::new(ErrorCode::LinkInvalid, "a download link has expires and sig"))?
        .into_inner();
    fs.links.check(&id, q.expires, &q.sig, now_secs())?;
    let meta = state.engine.store().file(&id).await?.ok_or_else(|| Error::not_found("no such file"))?;
    let range_header = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let mut resp = match byte_range(range_header, meta.size) {
        Ok(None) => HttpResponse::Ok(),
        Ok(Some((start, end))) => {
            let mut r = HttpResponse::PartialContent();
            r.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{}", meta.size)));
            r
        }
        Err(_) => {
            return Ok(HttpResponse::RangeNotSatisfiable()
                .insert_header((header::CONTENT_RANGE, format!("bytes */{}", meta.size)))
                .finish());
        }
    };
    let (start, end) = byte_range(range_header, meta.size).ok().flatten().unwrap_or((0, meta.size - 1));
    let len = end - start + 1;
    let stream = fs.blobs.read(&id, start, len).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::not_found("the file's content is gone"),
        _ => io(e),
    })?;
    let disposition = if meta.kind == FileKind::File { "attachment" } else { "inline" };
    let name = meta.name.as_deref().unwrap_or("file");
    resp.content_type(meta.mime.as_str())
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::ETAG, format!("\"{}\"", meta.sha256)))
        .insert_header((header::CONTENT_DISPOSITION, format!("{disposition}; filename*=UTF-8''{}", encode(name))))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header((header::CACHE_CONTROL, "private, max-age=3600"))
        .no_chunking(len);
    Ok(resp.streaming(stream))
}

/// Percent-encodes a file name for `filename*=UTF-8''…` (RFC 8187): all but unreserved bytes.
fn encode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
