//! Users: mint access tokens, list online devices, a user's conversations and unread total.

use actix_web::{web, HttpRequest};
use serde::{Deserialize, Serialize};

use confab_actors::error::Error;
use confab_actors::model::validate_id;

use super::{ok, path_id, resource, ApiResult, ErrorBody, Scope, Signed};
use crate::auth;
use crate::http::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/users/{id}/tokens").route(web::post().to(mint_token)))
        .service(resource("/users/{id}/devices").route(web::get().to(devices)));
}

/// Longest token lifetime the API mints (a year).
const MAX_TTL_SECS: u64 = 365 * 86400;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenReq {
    /// The device id the token is for.
    device: String,
    /// Lifetime in seconds (default `auth.token_ttl_secs`, at most a year).
    #[serde(default)]
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
    params(("id" = String, Path, description = "The user id")),
    request_body = TokenReq,
    responses(
        (status = 200, body = TokenRes),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing", body = ErrorBody)
    ),
    security(("confab_signature" = ["users"])))]
async fn mint_token(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    let signed = Signed::read(&req, payload, &state, Scope::Users).await?;
    let user = path_id(&req, "id")?;
    let r: TokenReq = signed.json()?;
    validate_id("device", &r.device)?;
    let ttl = r.ttl_secs.unwrap_or(state.api.token_ttl_secs);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(Error::invalid(format!("ttl_secs must be 1 to {MAX_TTL_SECS}")).into());
    }
    let token = auth::mint(&state.api.token_secret, &user, &r.device, ttl)?;
    // The token's own claim, so the two always agree.
    let expires_at = auth::verify(&state.api.token_secret, &token)?.exp;
    ok(&TokenRes { token, expires_at })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Device {
    device: String,
    conn_id: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DevicesRes {
    user_id: String,
    devices: Vec<Device>,
}

/// The user's devices connected to this node.
#[utoipa::path(get, path = "/api/v1/users/{id}/devices", tag = "users",
    params(("id" = String, Path, description = "The user id")),
    responses(
        (status = 200, body = DevicesRes),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing", body = ErrorBody)
    ),
    security(("confab_signature" = ["users"])))]
async fn devices(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    Signed::read(&req, payload, &state, Scope::Users).await?;
    let user = path_id(&req, "id")?;
    let devices = state
        .engine
        .registry()
        .devices(&user)
        .into_iter()
        .map(|(conn_id, d)| Device { device: d.to_string(), conn_id })
        .collect();
    ok(&DevicesRes { user_id: user, devices })
}
