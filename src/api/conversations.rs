//! Conversations: a user's conversation list (with unread counts), their total unread, and a
//! conversation's history.

use actix_web::{web, HttpRequest};
use serde::{Deserialize, Serialize};

use confab_actors::proto::{ConversationsReq, HistoryReq};

use confab_actors::engine::{ConversationsResult, HistoryResult};

use super::{caller, ok, path_id, path_raw, query, resource, ApiResult, ErrorBody, Scope, Signed};
use crate::http::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/users/{id}/conversations").route(web::get().to(list)))
        .service(resource("/users/{id}/unread").route(web::get().to(unread)))
        .service(resource("/conversations/{conv_id}/messages").route(web::get().to(history)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
}

/// A user's conversation list, with unread counts (as the WebSocket `conversations` op).
#[utoipa::path(get, path = "/api/v1/users/{id}/conversations", tag = "conversations",
    params(
        ("id" = String, Path, description = "The user id"),
        ("since" = Option<u64>, Query, description = "A cursor: `next_since` of the previous page (default 0)"),
        ("limit" = Option<usize>, Query, description = "1 to 100 (default 50)"),
    ),
    responses(
        (status = 200, body = ConversationsResult),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing", body = ErrorBody)
    ),
    security(("confab_signature" = ["conversations"])))]
async fn list(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    Signed::read(&req, payload, &state, Scope::Conversations).await?;
    let user = path_id(&req, "id")?;
    let q: ListQuery = query(&req)?;
    ok(&state.engine.conversations(&caller(&user)?, ConversationsReq { since: q.since, limit: q.limit }).await?)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UnreadRes {
    user_id: String,
    /// Unread messages over all the user's conversations.
    unread: u64,
    /// Conversations with unread messages.
    conversations: u64,
}

/// A user's total unread count.
#[utoipa::path(get, path = "/api/v1/users/{id}/unread", tag = "conversations",
    params(("id" = String, Path, description = "The user id")),
    responses(
        (status = 200, body = UnreadRes),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing", body = ErrorBody)
    ),
    security(("confab_signature" = ["conversations"])))]
async fn unread(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    Signed::read(&req, payload, &state, Scope::Conversations).await?;
    let user = path_id(&req, "id")?;
    let (unread, conversations) = state.engine.unread_total(&user).await?;
    ok(&UnreadRes { user_id: user, unread, conversations })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    #[serde(default)]
    before: Option<u64>,
    #[serde(default)]
    after: Option<u64>,
    #[serde(default)]
    limit: Option<usize>,
    /// Read as this member (membership checked, their deletions hidden); else as an administrator.
    #[serde(default)]
    as_user: Option<String>,
}

/// A conversation's history, paged by `seq`.
#[utoipa::path(get, path = "/api/v1/conversations/{conv_id}/messages", tag = "messages",
    params(
        ("conv_id" = String, Path, description = "`d_…` or `g_<group id>`"),
        ("before" = Option<u64>, Query, description = "Messages before this seq (at most one of before and after)"),
        ("after" = Option<u64>, Query, description = "Messages after this seq"),
        ("limit" = Option<usize>, Query, description = "1 to 100 (default 50)"),
        ("as_user" = Option<String>, Query, description = "Read as this member; else as an administrator"),
    ),
    responses(
        (status = 200, body = HistoryResult),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody)
    ),
    security(("confab_signature" = ["messages"])))]
async fn history(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    Signed::read(&req, payload, &state, Scope::Messages).await?;
    let conv_id = path_raw(&req, "conv_id");
    let q: HistoryQuery = query(&req)?;
    let r = HistoryReq { conv_id, before: q.before, after: q.after, limit: q.limit };
    match q.as_user {
        Some(user) => ok(&state.engine.history(&caller(&user)?, r).await?),
        None => ok(&state.engine.history_admin(r).await?),
    }
}
