//! Conversations: a user's conversation list (with unread counts), their total unread, and a
//! conversation's history.

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::proto::{ConversationsReq, HistoryReq};

use confab_actors::engine::{ConversationsResult, HistoryResult};

use super::openapi::{ConvId, Id, SafeInt};
use super::{caller, de_safe_int, de_safe_int_opt, ok, resource, scope, ApiResult, ErrorBody, Signed};
use crate::http::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/users/{id}/conversations").route(web::get().to(list)))
        .service(resource("/users/{id}/unread").route(web::get().to(unread)))
        .service(resource("/conversations/{conv_id}/messages").route(web::get().to(history)));
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// A cursor: `next_since` of the previous page (default 0).
    #[serde(default, deserialize_with = "de_safe_int")]
    #[param(value_type = Option<SafeInt>)]
    since: u64,
    /// 1 to 100 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// A user's conversation list, with unread counts (as the WebSocket `conversations` op).
#[utoipa::path(get, path = "/api/v1/users/{id}/conversations", tag = "conversations",
    params(
        ("id" = Id, Path, description = "The user id"),
        ListQuery,
    ),
    responses(
        (status = 200, description = "The page of conversations", body = ConversationsResult),
        (status = 400, description = "invalid_request (a bad user id, since or limit, an unknown parameter)", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["conversations"])))]
async fn list(s: Signed<scope::Conversations, ListQuery>, state: web::Data<AppState>) -> ApiResult {
    let user = s.path_id("id")?;
    let q = s.query;
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
    params(("id" = Id, Path, description = "The user id")),
    responses(
        (status = 200, description = "The user's unread totals", body = UnreadRes),
        (status = 400, description = "invalid_request (a bad user id)", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["conversations"])))]
async fn unread(s: Signed<scope::Conversations>, state: web::Data<AppState>) -> ApiResult {
    let user = s.path_id("id")?;
    let (unread, conversations) = state.engine.unread_total(&user).await?;
    ok(&UnreadRes { user_id: user, unread, conversations })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// Messages before this seq (at most one of before and after).
    #[serde(default, deserialize_with = "de_safe_int_opt")]
    #[param(value_type = Option<SafeInt>)]
    before: Option<u64>,
    /// Messages after this seq.
    #[serde(default, deserialize_with = "de_safe_int_opt")]
    #[param(value_type = Option<SafeInt>)]
    after: Option<u64>,
    /// 1 to 100 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// Read as this member (membership checked, their deletions hidden); else as an administrator.
    #[serde(default)]
    #[param(value_type = Option<Id>)]
    as_user: Option<String>,
}

/// A conversation's history, paged by `seq`.
#[utoipa::path(get, path = "/api/v1/conversations/{conv_id}/messages", tag = "messages",
    params(
        ("conv_id" = ConvId, Path, description = "`d_…` or `g_<group id>`"),
        HistoryQuery,
    ),
    responses(
        (status = 200, description = "The page of messages", body = HistoryResult),
        (status = 400, description = "invalid_request (a bad conversation id, before, after, limit or as_user, both before and after, an unknown parameter)", body = ErrorBody),
        (status = 403, description = "not_member (as_user)", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["messages"])))]
async fn history(s: Signed<scope::Messages, HistoryQuery>, state: web::Data<AppState>) -> ApiResult {
    let conv_id = s.path_raw("conv_id");
    let q = s.query;
    let r = HistoryReq { conv_id, before: q.before, after: q.after, limit: q.limit };
    match q.as_user {
        Some(user) => ok(&state.engine.history(&caller(&user)?, r).await?),
        None => ok(&state.engine.history_admin(r).await?),
    }
}
