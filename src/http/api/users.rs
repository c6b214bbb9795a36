//! Users: profiles, disable/enable, token revocation, mint access tokens, list online devices.

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::error::Error;
use confab_actors::model::{validate_id, User, UserPatch};

use super::openapi::Id;
use super::{ok, resource, scope, ApiResult, ErrorBody, Signed};
use crate::http::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/users").route(web::post().to(upsert)))
        .service(resource("/users/{id}").route(web::get().to(get)))
        .service(resource("/users/{id}/disable").route(web::post().to(disable)))
        .service(resource("/users/{id}/enable").route(web::post().to(enable)))
        .service(resource("/users/{id}/tokens/revoke").route(web::post().to(revoke_tokens)))
        .service(resource("/users/{id}/tokens").route(web::post().to(mint_token)))
        .service(resource("/users/{id}/devices").route(web::get().to(devices)));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenReq {
    /// The device id the token is for.
    #[schema(value_type = Id)]
    device: String,
    /// Lifetime in seconds (default `auth.token_ttl_secs`, at most `auth.max_token_ttl_secs`).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315360000)]
    ttl_secs: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TokenRes {
    token: String,
    /// Unix seconds.
    expires_at: u64,
}

/// Mints an access token for the WebSocket endpoint.
#[utoipa::path(post, path = "/api/v1/users/{id}/tokens", tag = "users",
    params(("id" = Id, Path, description = "The user id")),
    request_body = TokenReq,
    responses(
        (status = 200, description = "The token", body = TokenRes),
        (status = 400, description = "invalid_request (a bad user or device id, a ttl_secs over auth.max_token_ttl_secs)", body = ErrorBody),
        (status = 500, description = "internal", body = ErrorBody),
        (status = 503, description = "unavailable (the user's record could not be read)", body = ErrorBody)
    ),
    security(("confab_signature" = ["users"])))]
async fn mint_token(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let user = s.path_id("id")?;
    let r: TokenReq = s.json()?;
    validate_id("device", &r.device)?;
    let ttl = r.ttl_secs.unwrap_or(state.api.token_ttl_secs);
    // Issued no earlier than the user's last revocation: a token minted right after one (even in
    // the same millisecond, or on a node whose clock is behind) must not count as revoked.
    let revoked = state.engine.store().user(&user).await.map_err(Error::from)?.map_or(0, |u| u.revoked_before_ms());
    let (token, claims) = state.tokens.mint(&user, &r.device, ttl, revoked)?;
    ok(&TokenRes { token, expires_at: claims.exp })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Device {
    device: String,
    /// Unique on its node.
    conn_id: u64,
    /// The node the device is connected to (its `cluster.node_id`; absent on a single node).
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DevicesRes {
    user_id: String,
    devices: Vec<Device>,
}

/// The user's connected devices: on every node of a cluster, else on this node. (With Redis
/// down, a clustered node answers with its own devices only.)
#[utoipa::path(get, path = "/api/v1/users/{id}/devices", tag = "users",
    params(("id" = Id, Path, description = "The user id")),
    responses(
        (status = 200, description = "The connected devices", body = DevicesRes),
        (status = 400, description = "invalid_request (a bad user id)", body = ErrorBody)
    ),
    security(("confab_signature" = ["users"])))]
async fn devices(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let user = s.path_id("id")?;
    let devices = state.engine.devices(&user).await?;
    let devices = devices
        .into_iter()
        .map(|d| Device { device: d.device, conn_id: d.conn_id, node: (!d.node.is_empty()).then_some(d.node) })
        .collect();
    ok(&DevicesRes { user_id: user, devices })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertBody {
    /// The user id.
    #[schema(value_type = Id)]
    id: String,
    /// 1 to 64 characters.
    #[serde(default)]
    nickname: Option<String>,
    /// An image URL (at most 2048 bytes, no whitespace).
    #[serde(default)]
    avatar: Option<String>,
    /// A JSON object of at most 4096 bytes encoded.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    ext: Option<serde_json::Value>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserRes {
    user: User,
}

/// Creates a user's record or updates its profile; absent fields are kept.
#[utoipa::path(post, path = "/api/v1/users", tag = "users",
    request_body = UpsertBody,
    responses(
        (status = 200, description = "The user", body = UserRes),
        (status = 400, description = "invalid_request (a bad id, nickname, avatar or ext)", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["users"])))]
async fn upsert(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let r: UpsertBody = s.json()?;
    let patch = UserPatch {
        id: r.id,
        nickname: r.nickname.map(|n| n.trim().to_string()),
        avatar: r.avatar,
        ext: r.ext,
        ts: confab_actors::clock::now_ms(),
    };
    ok(&UserRes { user: state.engine.user_upsert(patch).await? })
}

/// A user's record (`not_found` when the user was never created explicitly).
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users",
    params(("id" = Id, Path, description = "The user id")),
    responses(
        (status = 200, description = "The user", body = UserRes),
        (status = 400, description = "invalid_request (a bad user id)", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["users"])))]
async fn get(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let id = s.path_id("id")?;
    let user = state.engine.store().user(&id).await.map_err(Error::from)?;
    ok(&UserRes { user: user.ok_or_else(|| Error::not_found("no such user"))? })
}

/// Disables a user: it cannot connect or send, and its sessions are closed (1008 `user_disabled`).
#[utoipa::path(post, path = "/api/v1/users/{id}/disable", tag = "users",
    params(("id" = Id, Path, description = "The user id")),
    responses(
        (status = 200, description = "The user, disabled", body = UserRes),
        (status = 400, description = "invalid_request (a bad user id)", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["users"])))]
async fn disable(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let id = s.path_id("id")?;
    ok(&UserRes { user: state.engine.user_set_disabled(&id, true).await? })
}

/// Enables a disabled user again.
#[utoipa::path(post, path = "/api/v1/users/{id}/enable", tag = "users",
    params(("id" = Id, Path, description = "The user id")),
    responses(
        (status = 200, description = "The user, enabled", body = UserRes),
        (status = 400, description = "invalid_request (a bad user id)", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["users"])))]
async fn enable(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let id = s.path_id("id")?;
    ok(&UserRes { user: state.engine.user_set_disabled(&id, false).await? })
}

/// Revokes every token issued to the user until now (their `iat` is before `tokens_valid_after`)
/// and closes the user's sessions (1008 `token_revoked`).
#[utoipa::path(post, path = "/api/v1/users/{id}/tokens/revoke", tag = "users",
    params(("id" = Id, Path, description = "The user id")),
    responses(
        (status = 200, description = "The user, with tokens revoked", body = UserRes),
        (status = 400, description = "invalid_request (a bad user id)", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["users"])))]
async fn revoke_tokens(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let id = s.path_id("id")?;
    ok(&UserRes { user: state.engine.user_revoke_tokens(&id).await? })
}
