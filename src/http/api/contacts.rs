//! Contacts on a user's behalf: friend requests and their answers, friendships, remarks and tags,
//! blocks, the contact rows (synced by cursor), and a bulk import of friendships.

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::engine::{ContactLookup, ContactsResult};
use confab_actors::error::Error;
use confab_actors::model::{Contact, ContactOp};

use super::conversations::ListQuery;
use super::schema::{operation_errors, Id};
use super::{acting, in_order, ok, path, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Users:
    "/users/{id}/contacts" => get list;
    "/users/{id}/contacts/{peer}" => get get, post change;
    "/contacts/import" => post import;
}

/// Most friendships one import may hold.
pub const MAX_IMPORT: usize = 1000;
/// Pairs of an import written at once.
const IMPORT_PARALLEL: usize = 32;

operation_errors! {
    ListErrors: InvalidRequest("a bad user id, since or limit, an unknown parameter"), Unavailable;
    GetErrors: InvalidRequest("a bad user id, or the same user twice"), Unavailable;
    ChangeErrors: InvalidRequest("a bad user id, the same user twice, an unknown action, a field too long"),
        Blocked("request: the other user blocked this one"), NotFriends("delete, update: not friends"),
        RequestNotPending("accept, reject, cancel: no such pending request"),
        Conflict("request: already friends"), UserDisabled("the user"), Unavailable;
    ImportErrors: InvalidRequest("no friendships, more than 1000, or a malformed pair"), Unavailable;
}

/// The user's contact rows changed after `since` (friends, pending requests both ways, blocks,
/// ex-friends), oldest change first, as the `contacts` op returns them.
#[utoipa::path(get, path = "/users/{id}/contacts",
    params(path::User, ListQuery),
    responses((status = 200, description = "A page of contact rows", body = ContactsResult), ListErrors))]
async fn list(s: Signed<scope::Users, ListQuery>, state: web::Data<AppState>) -> ApiResult {
    let path::User { id } = s.path()?;
    ok(&state.engine.contacts(&id, s.query.since, s.query.limit).await?)
}

/// The user's row about another user (`contact` is `null` when there is none).
#[utoipa::path(get, path = "/users/{id}/contacts/{peer}",
    params(path::Peer),
    responses((status = 200, description = "The row", body = ContactRes), GetErrors))]
async fn get(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let path::Peer { id, peer } = s.path()?;
    let ContactLookup { contact } = state.engine.contact(&id, &peer).await?;
    ok(&ContactRes { contact })
}

/// What a change does (see docs/http-api.md, "Contacts").
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Request,
    Accept,
    Reject,
    Cancel,
    Delete,
    Update,
    Block,
    Unblock,
    /// Friends at once, without a request (idempotent).
    Befriend,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeBody {
    action: Action,
    /// `request`: a short message (at most 200 characters).
    #[serde(default)]
    message: Option<String>,
    /// `update`: the private alias (`""` removes it); absent: unchanged.
    #[serde(default)]
    remark: Option<String>,
    /// `update`: the private tags, replacing the old ones; absent: unchanged.
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ContactRes {
    contact: Option<Contact>,
}

/// The user `{id}` changes their contact with `{peer}`, exactly as the user would over WebSocket
/// (the same rules, refusals, events and webhooks). Answers the user's row after the change.
#[utoipa::path(post, path = "/users/{id}/contacts/{peer}",
    params(path::Peer),
    request_body = ChangeBody,
    responses((status = 200, description = "The user's row after the change", body = ContactRes), ChangeErrors))]
async fn change(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let path::Peer { id, peer } = s.path()?;
    let b: ChangeBody = s.json()?;
    acting(&state, &id).await?;
    let op = match b.action {
        Action::Request => ContactOp::Request { message: b.message.unwrap_or_default() },
        Action::Accept => ContactOp::Accept,
        Action::Reject => ContactOp::Reject,
        Action::Cancel => ContactOp::Cancel,
        Action::Delete => ContactOp::Delete,
        Action::Update => ContactOp::Update { remark: b.remark, tags: b.tags },
        Action::Block => ContactOp::Block,
        Action::Unblock => ContactOp::Unblock,
        Action::Befriend => ContactOp::Befriend,
    };
    ok(&ContactRes { contact: Some(state.engine.change_contact(&id, &peer, op, None).await?) })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// Pairs of user ids to make friends (1 to 1000). Pairs already friends are left as they
    /// are, so an import can be repeated.
    #[schema(value_type = Vec<Vec<Id>>)]
    friendships: Vec<(String, String)>,
}

#[serde_with::skip_serializing_none]
#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportItem {
    user_id: String,
    peer: String,
    ok: bool,
    /// Why this pair failed (an error code), when it did.
    error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportRes {
    results: Vec<ImportItem>,
}

/// Makes pairs of users friends at once, without requests, one result per pair in order (a
/// failed pair does not stop the others), 32 at a time. Each pair is one transaction with its `contact` events and
/// `contact.changed` webhook, like `befriend`.
#[utoipa::path(post, path = "/contacts/import",
    request_body = ImportBody,
    responses((status = 200, description = "A result per pair, in order", body = ImportRes), ImportErrors))]
async fn import(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let b: ImportBody = s.json()?;
    if b.friendships.is_empty() || b.friendships.len() > MAX_IMPORT {
        return Err(Error::invalid(format!("friendships: 1 to {MAX_IMPORT} pairs")).into());
    }
    let results = in_order(b.friendships, IMPORT_PARALLEL, |(user_id, peer)| {
        let engine = state.engine.clone();
        async move {
            let r = engine.change_contact(&user_id, &peer, ContactOp::Befriend, None).await;
            let error = r.err().map(|e| e.code.as_str().to_owned());
            ImportItem { user_id, peer, ok: error.is_none(), error }
        }
    })
    .await;
    ok(&ImportRes { results })
}
