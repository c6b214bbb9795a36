//! Conversations: a user's conversation list (with unread counts) and their total unread (a
//! conversation's history is read with scope `messages`, in [`messages`](super::messages)).

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::engine::ConversationsResult;
use confab_actors::proto::ConversationsReq;

use super::schema::{operation_errors, SafeInt};
use super::{caller, de_safe_int, ok, path, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Conversations:
    "/users/{id}/conversations" => get list;
    "/users/{id}/unread" => get unread;
}

operation_errors! {
    ListErrors: InvalidRequest("a bad user id, since or limit, an unknown parameter"), Unavailable;
    UnreadErrors: InvalidRequest("a bad user id"), Unavailable;
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
#[utoipa::path(get, path = "/users/{id}/conversations",
    params(path::User, ListQuery),
    responses((status = 200, description = "The page of conversations", body = ConversationsResult), ListErrors))]
async fn list(s: Signed<scope::Conversations, ListQuery>, state: web::Data<AppState>) -> ApiResult {
    let path::User { id: user } = s.path()?;
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
#[utoipa::path(get, path = "/users/{id}/unread",
    params(path::User),
    responses((status = 200, description = "The user's unread totals", body = UnreadRes), UnreadErrors))]
async fn unread(s: Signed<scope::Conversations>, state: web::Data<AppState>) -> ApiResult {
    let path::User { id: user } = s.path()?;
    let (unread, conversations) = state.engine.unread_total(&user).await?;
    ok(&UnreadRes { user_id: user, unread, conversations })
}
