//! Conversations: a user's conversation list (with unread counts), their total unread, and
//! read cursors, flags, delete-for-me and clearing on their behalf (a
//! conversation's history is read with scope `messages`, in [`messages`](super::messages)).

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::engine::ConversationsResult;
use confab_actors::proto::{ConvReq, ConversationsReq, DeleteReq, ReadReq, SetFlagsReq};

use super::schema::{operation_errors, SafeInt};
use super::{acting, caller, de_safe_int, ok, path, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Conversations:
    "/users/{id}/conversations" => get list;
    "/users/{id}/unread" => get unread;
    "/users/{id}/conversations/{conv_id}/read" => post read;
    "/users/{id}/conversations/{conv_id}/flags" => post flags;
    "/users/{id}/conversations/{conv_id}/delete" => post delete;
    "/users/{id}/conversations/{conv_id}/clear" => post clear;
}

operation_errors! {
    ListErrors: InvalidRequest("a bad user id, since or limit, an unknown parameter"), Unavailable;
    UnreadErrors: InvalidRequest("a bad user id"), Unavailable;
    OnBehalfErrors: InvalidRequest("a bad id, seq or field"), NotMember("the user has no row in the conversation"),
        UserDisabled("the user"), NotFound, Unavailable;
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadBody {
    /// Read up to this seq.
    #[schema(value_type = SafeInt)]
    seq: u64,
}

/// Marks the conversation read up to `seq` for the user, as `read` over WebSocket does (the
/// user's devices and, one-to-one, the other participant get the `read` event).
#[utoipa::path(post, path = "/users/{id}/conversations/{conv_id}/read",
    params(path::UserConv),
    request_body = ReadBody,
    responses((status = 200, description = "The read cursor", body = Object), OnBehalfErrors))]
async fn read(s: Signed<scope::Conversations>, state: web::Data<AppState>) -> ApiResult {
    let path::UserConv { id, conv_id } = s.path()?;
    let r: ReadBody = s.json()?;
    ok(&state.engine.read(&acting(&state, &id).await?, ReadReq { conv_id, seq: r.seq }).await?)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagsBody {
    #[serde(default)]
    pinned: Option<bool>,
    #[serde(default)]
    muted: Option<bool>,
    #[serde(default)]
    hidden: Option<bool>,
}

/// Sets the user's flags on the conversation (pin, mute, hide), as `set_flags`.
#[utoipa::path(post, path = "/users/{id}/conversations/{conv_id}/flags",
    params(path::UserConv),
    request_body = FlagsBody,
    responses((status = 200, description = "The conversation item", body = Object), OnBehalfErrors))]
async fn flags(s: Signed<scope::Conversations>, state: web::Data<AppState>) -> ApiResult {
    let path::UserConv { id, conv_id } = s.path()?;
    let r: FlagsBody = s.json()?;
    let req = SetFlagsReq { conv_id, pinned: r.pinned, muted: r.muted, hidden: r.hidden };
    ok(&state.engine.set_flags(&acting(&state, &id).await?, req).await?)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    /// The messages to hide for the user (1 to 100 seqs).
    #[schema(value_type = Vec<SafeInt>)]
    seqs: Vec<u64>,
}

/// Deletes messages for the user only (delete-for-me), as `delete`.
#[utoipa::path(post, path = "/users/{id}/conversations/{conv_id}/delete",
    params(path::UserConv),
    request_body = DeleteBody,
    responses((status = 200, description = "The seqs deleted", body = Object), OnBehalfErrors))]
async fn delete(s: Signed<scope::Conversations>, state: web::Data<AppState>) -> ApiResult {
    let path::UserConv { id, conv_id } = s.path()?;
    let r: DeleteBody = s.json()?;
    ok(&state.engine.delete(&acting(&state, &id).await?, DeleteReq { conv_id, seqs: r.seqs }).await?)
}

/// Clears the conversation for the user, as `clear`: everything they may see of it now leaves
/// their history and counts as read (the item's `cleared_seq`); nobody else is affected.
#[utoipa::path(post, path = "/users/{id}/conversations/{conv_id}/clear",
    params(path::UserConv),
    responses((status = 200, description = "The conversation item", body = Object), OnBehalfErrors))]
async fn clear(s: Signed<scope::Conversations>, state: web::Data<AppState>) -> ApiResult {
    let path::UserConv { id, conv_id } = s.path()?;
    ok(&state.engine.clear(&acting(&state, &id).await?, ConvReq { conv_id }).await?)
}

/// A page of a list synced by cursor (conversations, contacts).
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// A cursor: `next_since` of the previous page (default 0).
    #[serde(default, deserialize_with = "de_safe_int")]
    #[param(value_type = Option<SafeInt>)]
    pub since: u64,
    /// 1 to 100 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
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
