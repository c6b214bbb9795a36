//! Users: profiles, disable/enable, token revocation, mint access tokens, list online devices.

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::error::Error;
use confab_actors::model::{validate_id, User, UserPatch};

use super::schema::{operation_errors, Id};
use super::{ok, path, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Users:
    "/users" => post upsert;
    "/users/{id}" => get get;
    "/users/{id}/disable" => post disable;
    "/users/{id}/enable" => post enable;
    "/users/{id}/tokens/revoke" => post revoke_tokens;
    "/users/{id}/tokens" => post mint_token;
    "/users/{id}/devices" => get devices;
}

operation_errors! {
    MintTokenErrors: InvalidRequest("a bad user or device id, a ttl_secs over auth.max_token_ttl_secs"), Internal,
        Unavailable("the user's record could not be read");
    DevicesErrors: InvalidRequest("a bad user id");
    UpsertErrors: InvalidRequest("a bad id, nickname, avatar or ext"), Unavailable;
    GetErrors: InvalidRequest("a bad user id"), NotFound, Unavailable;
    AccessErrors: InvalidRequest("a bad user id"), Unavailable;
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserRes {
    user: User,
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
#[utoipa::path(post, path = "/users/{id}/tokens",
    params(path::User),
    request_body = TokenReq,
    responses((status = 200, description = "The token", body = TokenRes), MintTokenErrors))]
async fn mint_token(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let path::User { id: user } = s.path()?;
    let r: TokenReq = s.json()?;
    validate_id("device", &r.device)?;
    let ttl = r.ttl_secs.unwrap_or(state.api.token_ttl_secs);
    // Issued no earlier than the user's last revocation: a token minted right after one (even in
    // the same millisecond, or on a node whose clock is behind) must not count as revoked.
    let revoked = state.engine.store().user(&user).await.map_err(Error::from)?.map_or(0, |u| u.revoked_before_ms());
    let (token, claims) = state.tokens.mint(&user, &r.device, ttl, revoked)?;
    ok(&TokenRes { token, expires_at: claims.exp })
}

#[serde_with::skip_serializing_none]
#[derive(Serialize, utoipa::ToSchema)]
pub struct Device {
    device: String,
    /// Unique on its node.
    conn_id: u64,
    /// The node the device is connected to (its `cluster.node_id`; absent on a single node).
    node: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DevicesRes {
    user_id: String,
    devices: Vec<Device>,
}

/// The user's connected devices: on every node of a cluster, else on this node. (With Redis
/// down, a clustered node answers with its own devices only.)
#[utoipa::path(get, path = "/users/{id}/devices",
    params(path::User),
    responses((status = 200, description = "The connected devices", body = DevicesRes), DevicesErrors))]
async fn devices(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let path::User { id: user } = s.path()?;
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

/// Creates a user's record or updates its profile; absent fields are kept.
#[utoipa::path(post, path = "/users",
    request_body = UpsertBody,
    responses((status = 200, description = "The user", body = UserRes), UpsertErrors))]
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
#[utoipa::path(get, path = "/users/{id}",
    params(path::User),
    responses((status = 200, description = "The user", body = UserRes), GetErrors))]
async fn get(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let path::User { id } = s.path()?;
    let user = state.engine.store().user(&id).await.map_err(Error::from)?;
    ok(&UserRes { user: user.ok_or_else(|| Error::not_found("no such user"))? })
}

/// Declares the handlers of `POST /users/{id}/…` that change a user's access with one engine call
/// on the user id (`user_set_disabled(true)` calls `engine.user_set_disabled(&id, true)`) and
/// answer the user, with their descriptions.
macro_rules! access_changes {
    ($($(#[$doc:meta])* $name:ident: $path:literal, $answer:literal, $call:ident($($arg:expr),*);)+) => {$(
        $(#[$doc])*
        #[utoipa::path(post, path = $path,
            params(path::User),
            responses((status = 200, description = $answer, body = UserRes), AccessErrors))]
        async fn $name(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
            let path::User { id } = s.path()?;
            ok(&UserRes { user: state.engine.$call(&id $(, $arg)*).await? })
        }
    )+};
}

access_changes! {
    /// Disables a user: it cannot connect or send, and its sessions are closed (1008 `user_disabled`).
    disable: "/users/{id}/disable", "The user, disabled", user_set_disabled(true);
    /// Enables a disabled user again.
    enable: "/users/{id}/enable", "The user, enabled", user_set_disabled(false);
    /// Revokes every token issued to the user until now (their `iat` is before `tokens_valid_after`)
    /// and closes the user's sessions (1008 `token_revoked`).
    revoke_tokens: "/users/{id}/tokens/revoke", "The user, with tokens revoked", user_revoke_tokens();
}
