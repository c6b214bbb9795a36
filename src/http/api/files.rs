//! Files for backends (scope `messages`): any file's record and a download link, without the
//! conversation check users go through. A backend uploads on a user's behalf with a token it
//! mints for them (`POST /users/{id}/tokens`, then `POST /files`, docs/protocol.md "Files").

use actix_web::web;
use serde::Serialize;

use confab_actors::error::{Error, ErrorCode};
use confab_actors::model::FileMeta;

use super::schema::{operation_errors, SafeInt};
use super::{ok, path, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Messages:
    "/files/{id}" => get get, delete delete;
}

operation_errors! {
    GetErrors: InvalidRequest("a bad file id"), NotFound, Unavailable;
    DeleteErrors: InvalidRequest("a bad file id"), NotFound, Unavailable;
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeletedRes {
    id: String,
    deleted: bool,
}

/// Deletes a file: its record first (from then on every link, and every message naming it,
/// answers `not_found`), then its bytes and thumbnail. Messages keep their bodies; a client shows
/// the file as gone.
#[utoipa::path(delete, path = "/files/{id}",
    params(path::File),
    responses((status = 200, description = "Deleted", body = DeletedRes), DeleteErrors))]
async fn delete(s: Signed<scope::Messages>, state: web::Data<AppState>) -> ApiResult {
    let path::File { id } = s.path()?;
    let fs =
        state.files.as_ref().ok_or_else(|| Error::new(ErrorCode::Unavailable, "file storage is not configured"))?;
    if !state.engine.store().delete_file(&id).await.map_err(Error::from)? {
        return Err(Error::not_found("no such file").into());
    }
    for blob in [id.clone(), format!("{id}.thumb")] {
        // The record is gone, so nothing serves these bytes any more; a failure leaves them to
        // the operator (logged).
        if let Err(e) = fs.blobs.delete(&blob).await {
            tracing::warn!(file = %blob, error = %e, "a deleted file's bytes could not be removed");
        }
    }
    ok(&DeletedRes { id, deleted: true })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct FileRes {
    file: FileMeta,
    /// A signed download link (`/files/{id}/content?expires=…&sig=…`, relative to this server).
    url: String,
    /// The thumbnail's link, for images that have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    thumbnail_url: Option<String>,
    /// Unix seconds.
    #[schema(value_type = SafeInt)]
    expires_at: u64,
}

/// A file's record and a download link (valid `files.link_ttl_secs`).
#[utoipa::path(get, path = "/files/{id}",
    params(path::File),
    responses((status = 200, description = "The file", body = FileRes), GetErrors))]
async fn get(s: Signed<scope::Messages>, state: web::Data<AppState>) -> ApiResult {
    let path::File { id } = s.path()?;
    let fs =
        state.files.as_ref().ok_or_else(|| Error::new(ErrorCode::Unavailable, "file storage is not configured"))?;
    let file =
        state.engine.store().file(&id).await.map_err(Error::from)?.ok_or_else(|| Error::not_found("no such file"))?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (url, expires_at) = fs.links.sign(&id, now);
    let thumbnail_url = file.thumbnail.as_ref().map(|_| fs.links.sign(&format!("{id}.thumb"), now).0);
    ok(&FileRes { file, url, thumbnail_url, expires_at })
}
