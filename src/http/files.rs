//! File uploads and downloads (docs/protocol.md, "Files"): `POST /files` streams an upload to
//! disk with the user's access token; `GET /files/{id}/link` hands a signed, expiring link to
//! someone allowed to read it; `GET /files/{id}/content` serves it (ranges included).

use std::sync::Arc;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use confab_actors::error::{Error, ErrorCode};
use confab_actors::model::{FileKind, FileMeta, Thumbnail};

use super::{error_response, AppState};
use crate::files::{byte_range, sniff, Blobs, Links};

/// Bytes of an upload kept in memory to tell what it is (an image's header may follow up to
/// 64 KiB of metadata).
const HEAD_BYTES: usize = 256 * 1024;
/// Largest image accepted (a "decompression bomb" beyond): 64 megapixels, from its header.
const MAX_PIXELS: u64 = 64_000_000;

/// What the file endpoints share (set once at start-up).
pub struct FilesState {
    pub blobs: Blobs,
    pub links: Links,
    /// Largest upload per kind, in bytes.
    pub max_bytes: [(FileKind, u64); 4],
    /// How long an unfinished resumable upload is kept.
    pub upload_ttl_secs: u64,
    /// Thumbnails being made at once (bounded CPU and memory).
    pub thumbnails: tokio::sync::Semaphore,
    /// Resumable uploads a request is writing to (one request at a time per upload).
    pub busy: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl FilesState {
    fn max(&self, kind: FileKind) -> u64 {
        self.max_bytes.iter().find(|(k, _)| *k == kind).map_or(0, |(_, n)| *n)
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/files", web::post().to(upload))
        .route("/files/uploads/{id}", web::put().to(create_upload))
        .route("/files/uploads/{id}", web::get().to(upload_status))
        .route("/files/uploads/{id}", web::patch().to(append_upload))
        .route("/files/uploads/{id}", web::delete().to(abandon_upload))
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
    let q: UploadQuery = query(req)?;
    let (kind, name) = q.check()?;
    let max = fs.max(kind);
    // A declared length over the limit is refused before a byte is read.
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(kind, max));
    }
    // 128 bits: the id is what lets a user send the file in a message.
    let id = new_id();
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
        file.sync_all().await.map_err(io)?;
        drop(file);
        let sha256 = hex(&hash.finalize());
        finish(state, fs, Received { temp: &temp, id: &id, owner, kind, name, size, head, sha256 }).await
    }
    .await;
    let meta = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
    };
    answer(fs, meta)
}

/// A complete upload, synced in its temporary file.
struct Received<'a> {
    temp: &'a std::path::Path,
    id: &'a str,
    owner: String,
    kind: FileKind,
    name: Option<String>,
    size: u64,
    /// Its first bytes (at most [`HEAD_BYTES`]).
    head: Vec<u8>,
    sha256: String,
}

/// Tells what a complete upload is, refuses what it must, moves it into place and records it.
async fn finish(state: &AppState, fs: &FilesState, r: Received<'_>) -> Result<FileMeta, Error> {
    if r.size == 0 {
        return Err(Error::invalid("the upload is empty"));
    }
    let mime = sniff::mime(&r.head)
        .ok_or_else(|| Error::new(ErrorCode::FileTypeRefused, "executables are refused, whatever their name"))?;
    if !r.kind.accepts(mime) {
        return Err(Error::new(
            ErrorCode::FileTypeRefused,
            format!("the content is {mime}, not an {}", r.kind.as_str()),
        ));
    }
    let (mut width, mut height) = (None, None);
    if r.kind == FileKind::Image {
        if let Some((w, h)) = sniff::dimensions(mime, &r.head) {
            if u64::from(w) * u64::from(h) > MAX_PIXELS {
                return Err(Error::new(ErrorCode::FileTypeRefused, format!("{w}×{h} pixels is too large an image")));
            }
            (width, height) = (Some(w), Some(h));
        }
    }
    let thumbnail =
        if r.kind == FileKind::Image && sniff_thumb(mime) { thumbnail(fs, r.temp, r.id).await? } else { None };
    fs.blobs.commit(r.temp, r.id).await.map_err(io)?;
    let meta = FileMeta {
        id: r.id.to_owned(),
        owner: r.owner,
        kind: r.kind,
        mime: mime.to_owned(),
        size: r.size,
        name: r.name,
        width,
        height,
        sha256: r.sha256,
        thumbnail,
        created_at: confab_actors::clock::now_ms(),
    };
    state.engine.store().put_file(&meta).await?;
    Ok(meta)
}

fn sniff_thumb(mime: &str) -> bool {
    crate::files::thumb::supported(mime)
}

/// Makes and stores the thumbnail of the image in `temp` (as the blob `<id>.thumb`), a few at a
/// time on blocking threads. An image its decoder cannot read within the limits is refused.
async fn thumbnail(fs: &FilesState, temp: &std::path::Path, id: &str) -> Result<Option<Thumbnail>, Error> {
    let _permit = fs.thumbnails.acquire().await.map_err(|_| Error::internal("no thumbnail permits"))?;
    let path = temp.to_path_buf();
    let made = tokio::task::spawn_blocking(move || crate::files::thumb::make(&path))
        .await
        .map_err(|e| Error::internal(e.to_string()))?;
    let (jpeg, width, height) = made.map_err(|why| {
        Error::new(ErrorCode::FileTypeRefused, format!("the image cannot be decoded within the limits: {why}"))
    })?;
    let thumb_id = format!("{id}.thumb");
    let thumb_temp = fs.blobs.temp_path(&thumb_id);
    let size = jpeg.len() as u64;
    let write = async {
        let mut f = tokio::fs::File::create(&thumb_temp).await?;
        f.write_all(&jpeg).await?;
        f.sync_all().await?;
        drop(f);
        fs.blobs.commit(&thumb_temp, &thumb_id).await
    };
    if let Err(e) = write.await {
        let _ = tokio::fs::remove_file(&thumb_temp).await;
        return Err(io(e));
    }
    Ok(Some(Thumbnail { width, height, size }))
}

/// Signed links to a file and, if it has one, its thumbnail.
fn links(fs: &FilesState, meta: &FileMeta) -> serde_json::Value {
    let now = now_secs();
    let (url, expires_at) = fs.links.sign(&meta.id, now);
    let mut v = serde_json::json!({ "url": url, "expires_at": expires_at });
    if meta.thumbnail.is_some() {
        v["thumbnail_url"] = fs.links.sign(&format!("{}.thumb", meta.id), now).0.into();
    }
    v
}

/// The answer to a completed upload: the record and links for the uploader.
fn answer(fs: &FilesState, meta: FileMeta) -> Result<HttpResponse, Error> {
    let mut v = links(fs, &meta);
    v["file"] = serde_json::to_value(&meta).map_err(|e| Error::internal(e.to_string()))?;
    Ok(HttpResponse::Ok().json(v))
}

fn new_id() -> String {
    format!("{}{}", confab_actors::engine::random_id(), confab_actors::engine::random_id())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn query<T: serde::de::DeserializeOwned>(req: &HttpRequest) -> Result<T, Error> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|e| Error::invalid(format!("query: {e}")))
}

impl UploadQuery {
    fn check(self) -> Result<(FileKind, Option<String>), Error> {
        let kind =
            FileKind::parse(&self.kind).ok_or_else(|| Error::invalid("kind must be image, audio, video or file"))?;
        if let Some(n) = &self.name {
            if n.trim().is_empty()
                || n.chars().count() > confab_actors::model::MAX_NAME_LEN
                || n.contains(['/', '\\', '\0'])
            {
                return Err(Error::invalid("name: 1 to 256 characters, no / \\ or NUL"));
            }
        }
        Ok((kind, self.name.map(|n| n.trim().to_owned())))
    }
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
        Ok::<_, Error>(links(fs, &meta))
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
    // `<id>.thumb`: the thumbnail of image `<id>`.
    let (base, thumb) = match id.strip_suffix(".thumb") {
        Some(base) => (base, true),
        None => (id.as_str(), false),
    };
    let mut meta = state.engine.store().file(base).await?.ok_or_else(|| Error::not_found("no such file"))?;
    if thumb {
        let t = meta.thumbnail.clone().ok_or_else(|| Error::not_found("this file has no thumbnail"))?;
        meta.mime = "image/jpeg".into();
        meta.size = t.size;
        meta.sha256.push_str("-thumb");
        meta.name = Some(format!("{}.jpg", meta.name.as_deref().unwrap_or("thumbnail")));
    }
    let range_header = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok());
    let (mut resp, start, end) = match byte_range(range_header, meta.size) {
        Ok(None) => (HttpResponse::Ok(), 0, meta.size - 1),
        Ok(Some((start, end))) => {
            let mut r = HttpResponse::PartialContent();
            r.insert_header((header::CONTENT_RANGE, format!("bytes {start}-{end}/{}", meta.size)));
            (r, start, end)
        }
        Err(_) => {
            return Ok(HttpResponse::RangeNotSatisfiable()
                .insert_header((header::CONTENT_RANGE, format!("bytes */{}", meta.size)))
                .finish());
        }
    };
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

// ---- Resumable uploads ----

/// A resumable upload's settings, kept beside its temporary file (`<id>.json`); its offset is
/// the temporary file's length.
#[derive(Serialize, Deserialize)]
struct Pending {
    owner: String,
    kind: FileKind,
    name: Option<String>,
    size: u64,
    /// Unix seconds.
    created_at: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateQuery {
    kind: String,
    #[serde(default)]
    name: Option<String>,
    size: u64,
}

fn respond(r: Result<HttpResponse, Error>) -> HttpResponse {
    r.unwrap_or_else(|e| error_response(&e))
}

fn sidecar(fs: &FilesState, id: &str) -> std::path::PathBuf {
    fs.blobs.temp_path(id).with_extension("json")
}

/// `PUT /files/uploads/{id}?kind=video&name=trip.mp4&size=N`: starts a resumable upload of `N`
/// bytes under an id the client chose (so a balancer can send every request of the upload to the
/// node that stages it, by its path). Again with the same settings: where it is (idempotent).
async fn create_upload(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    let id = path.into_inner();
    respond(
        async {
            let owner = caller(&req, &state).await?;
            let fs = files(&state)?;
            if id.len() < 16 || confab_actors::model::validate_id("upload_id", &id).is_err() {
                return Err(Error::invalid(
                    "the upload id: 16 to 64 of A-Z a-z 0-9 _ . @ : - (a random one, such as a UUID)",
                ));
            }
            let q: CreateQuery = query(&req)?;
            let (kind, name) = UploadQuery { kind: q.kind, name: q.name }.check()?;
            let max = fs.max(kind);
            if q.size > max {
                return Err(too_large(kind, max));
            }
            if q.size == 0 {
                return Err(Error::invalid("size must be positive"));
            }
            sweep(fs).await;
            if let Ok(bytes) = tokio::fs::read(sidecar(fs, &id)).await {
                let p: Pending = serde_json::from_slice(&bytes).map_err(|e| Error::internal(e.to_string()))?;
                if (&p.owner, p.kind, &p.name, p.size) != (&owner, kind, &name, q.size) {
                    return Err(Error::new(ErrorCode::Conflict, "an upload with this id exists with other settings"));
                }
                let offset = tokio::fs::metadata(fs.blobs.temp_path(&id)).await.map_err(io)?.len();
                return Ok(
                    HttpResponse::Ok().json(serde_json::json!({ "upload_id": id, "offset": offset, "size": p.size }))
                );
            }
            let pending = Pending { owner, kind, name, size: q.size, created_at: now_secs() };
            tokio::fs::File::create(fs.blobs.temp_path(&id)).await.map_err(io)?;
            let json = serde_json::to_vec(&pending).map_err(|e| Error::internal(e.to_string()))?;
            tokio::fs::write(sidecar(fs, &id), json).await.map_err(io)?;
            Ok(HttpResponse::Created().json(serde_json::json!({ "upload_id": id, "offset": 0, "size": q.size })))
        }
        .await,
    )
}

/// Removes the resumable uploads older than `files.upload_ttl_secs` (best effort).
async fn sweep(fs: &FilesState) {
    let Some(dir) = fs.blobs.temp_path("x").parent().map(std::path::Path::to_path_buf) else { return };
    let Ok(mut entries) = tokio::fs::read_dir(&dir).await else { return };
    let horizon = now_secs().saturating_sub(fs.upload_ttl_secs);
    while let Ok(Some(e)) = entries.next_entry().await {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Ok(bytes) = tokio::fs::read(&path).await else { continue };
        if serde_json::from_slice::<Pending>(&bytes).is_ok_and(|p| p.created_at < horizon) {
            let _ = tokio::fs::remove_file(path.with_extension("part")).await;
            let _ = tokio::fs::remove_file(&path).await;
        }
    }
}

/// The caller's pending upload `id` and its offset (`not_found` for anyone else's).
async fn pending(req: &HttpRequest, state: &AppState, id: &str) -> Result<(Pending, u64), Error> {
    let user = caller(req, state).await?;
    let fs = files(state)?;
    confab_actors::model::validate_id("upload_id", id)?;
    let gone = || Error::not_found("no such upload (finished, abandoned or expired)");
    let bytes = tokio::fs::read(sidecar(fs, id)).await.map_err(|_| gone())?;
    let p: Pending = serde_json::from_slice(&bytes).map_err(|_| gone())?;
    if p.owner != user {
        return Err(gone());
    }
    let offset = tokio::fs::metadata(fs.blobs.temp_path(id)).await.map_err(|_| gone())?.len();
    Ok((p, offset))
}

/// `GET /files/uploads/{id}`: where to resume.
async fn upload_status(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    let id = path.into_inner();
    respond(pending(&req, &state, &id).await.map(|(p, offset)| {
        HttpResponse::Ok().json(serde_json::json!({ "upload_id": id, "offset": offset, "size": p.size }))
    }))
}

/// `DELETE /files/uploads/{id}`: abandons an upload.
async fn abandon_upload(req: HttpRequest, path: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    let id = path.into_inner();
    respond(
        async {
            pending(&req, &state, &id).await?;
            let fs = files(&state)?;
            let _ = tokio::fs::remove_file(fs.blobs.temp_path(&id)).await;
            let _ = tokio::fs::remove_file(sidecar(fs, &id)).await;
            Ok(HttpResponse::Ok().json(serde_json::json!({ "upload_id": id, "abandoned": true })))
        }
        .await,
    )
}

/// Frees an upload for the next request when the one writing it ends, however it ends.
struct Writing<'a> {
    fs: &'a FilesState,
    id: String,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.fs.busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
    }
}

/// `PATCH /files/uploads/{id}` with `Upload-Offset: K` and the next bytes as the body: appends
/// them if `K` is where the upload is (`conflict` otherwise: ask `GET` where to resume), synced
/// before the answer. The last bytes complete it: the answer is then the file, as `POST /files`.
async fn append_upload(
    req: HttpRequest,
    path: web::Path<String>,
    mut body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let id = path.into_inner();
    respond(
        async {
            let (p, offset) = pending(&req, &state, &id).await?;
            let fs = files(&state)?;
            let at: u64 = req
                .headers()
                .get("upload-offset")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .ok_or_else(|| Error::invalid("the Upload-Offset header is required"))?;
            if !fs.busy.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone()) {
                return Err(Error::new(ErrorCode::Conflict, "another request is writing this upload"));
            }
            let _writing = Writing { fs, id: id.clone() };
            if at != offset {
                return Err(Error::new(ErrorCode::Conflict, format!("the upload is at offset {offset}, not {at}")));
            }
            let temp = fs.blobs.temp_path(&id);
            let mut file = tokio::fs::OpenOptions::new().append(true).open(&temp).await.map_err(io)?;
            let mut size = offset;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| Error::invalid(format!("the upload broke off: {e}")))?;
                size += chunk.len() as u64;
                if size > p.size {
                    // Nothing of this request is kept: the upload stays where it was.
                    file.set_len(offset).await.map_err(io)?;
                    return Err(Error::invalid(format!("more than the {} bytes the upload declared", p.size)));
                }
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.sync_all().await.map_err(io)?;
            drop(file);
            if size < p.size {
                return Ok(
                    HttpResponse::Ok().json(serde_json::json!({ "upload_id": id, "offset": size, "size": p.size }))
                );
            }
            // Complete: tell what it is from its first bytes, hash it, store it.
            let (head, sha256) = {
                let temp = temp.clone();
                tokio::task::spawn_blocking(move || head_and_hash(&temp))
                    .await
                    .map_err(|e| Error::internal(e.to_string()))?
                    .map_err(io)?
            };
            let r = Received { temp: &temp, id: &id, owner: p.owner, kind: p.kind, name: p.name, size, head, sha256 };
            let result = finish(&state, fs, r).await;
            let _ = tokio::fs::remove_file(sidecar(fs, &id)).await;
            match result {
                Ok(meta) => answer(fs, meta),
                Err(e) => {
                    let _ = tokio::fs::remove_file(&temp).await;
                    Err(e)
                }
            }
        }
        .await,
    )
}

/// A file's first [`HEAD_BYTES`] and its SHA-256 (hex).
fn head_and_hash(path: &std::path::Path) -> std::io::Result<(Vec<u8>, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let (mut head, mut hash, mut buf) = (Vec::new(), Sha256::new(), vec![0u8; 1 << 20]);
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if head.len() < HEAD_BYTES {
            head.extend_from_slice(&buf[..n.min(HEAD_BYTES - head.len())]);
        }
        hash.update(&buf[..n]);
    }
    Ok((head, hex(&hash.finalize())))
}
