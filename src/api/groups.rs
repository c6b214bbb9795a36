//! Groups: create (with owner and members), add and remove members, members, profile, update,
//! roles, dismiss.

use actix_web::{web, HttpRequest};
use serde::{Deserialize, Serialize};

use confab_actors::engine::Caller;
use confab_actors::error::Error;
use confab_actors::model::{Group, Member, Message, Role};
use confab_actors::proto::{GroupCreateReq, GroupMembersReq, GroupSetRoleReq, GroupUpdateReq};

use super::{caller, ok, path_id, query, resource, ApiResult, ErrorBody, Scope, Signed};
use crate::http::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/groups").route(web::post().to(create)))
        .service(resource("/groups/{id}").route(web::get().to(info)).route(web::patch().to(update)))
        .service(resource("/groups/{id}/dismiss").route(web::post().to(dismiss)))
        .service(resource("/groups/{id}/members").route(web::get().to(members)).route(web::post().to(add)))
        .service(resource("/groups/{id}/members/{user}").route(web::delete().to(remove)))
        .service(resource("/groups/{id}/members/{user}/role").route(web::put().to(set_role)));
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// The group id; a random one when absent.
    #[serde(default)]
    id: Option<String>,
    /// 1 to 128 characters.
    name: String,
    /// The owner: the group is created as if this user created it.
    owner: String,
    /// The other members.
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupRes {
    group: Group,
}

/// Creates a group with its owner and members.
#[utoipa::path(post, path = "/api/v1/groups", tag = "groups",
    request_body = CreateBody,
    responses(
        (status = 200, body = GroupRes),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing", body = ErrorBody),
        (status = 409, description = "conflict", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn create(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    let signed = Signed::read(&req, payload, &state, Scope::Groups).await?;
    let r: CreateBody = signed.json()?;
    let owner = caller(&r.owner)?;
    let group =
        state.engine.group_create(&owner, GroupCreateReq { group_id: r.id, name: r.name, members: r.members }).await?;
    ok(&GroupRes { group })
}

/// A group's profile.
#[utoipa::path(get, path = "/api/v1/groups/{id}", tag = "groups",
    params(("id" = String, Path, description = "The group id")),
    responses(
        (status = 200, body = GroupRes),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn info(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    Signed::read(&req, payload, &state, Scope::Groups).await?;
    let id = path_id(&req, "id")?;
    ok(&GroupRes { group: state.engine.group_info_admin(&id).await? })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MembersRes {
    members: Vec<Member>,
}

/// A group's members: owner, admins, then members, each by id.
#[utoipa::path(get, path = "/api/v1/groups/{id}/members", tag = "groups",
    params(("id" = String, Path, description = "The group id")),
    responses(
        (status = 200, body = MembersRes),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn members(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    Signed::read(&req, payload, &state, Scope::Groups).await?;
    let id = path_id(&req, "id")?;
    ok(&MembersRes { members: state.engine.group_members_admin(&id).await? })
}

/// Who makes a membership change: `by` (with the group rules: owner or admin), else the owner.
async fn manager(state: &AppState, group_id: &str, by: Option<String>) -> Result<Caller, Error> {
    match by {
        Some(by) => caller(&by),
        None => caller(&state.engine.group_info_admin(group_id).await?.owner),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddBody {
    /// 1 to 1000 user ids.
    members: Vec<String>,
    /// Make the change as this user (owner or admin); the owner when absent.
    #[serde(default)]
    by: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupChangeRes {
    /// The system message recording the change.
    message: Message,
}

/// Adds members.
#[utoipa::path(post, path = "/api/v1/groups/{id}/members", tag = "groups",
    params(("id" = String, Path, description = "The group id")),
    request_body = AddBody,
    responses(
        (status = 200, body = GroupChangeRes),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing, forbidden, not_member", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn add(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    let signed = Signed::read(&req, payload, &state, Scope::Groups).await?;
    let id = path_id(&req, "id")?;
    let r: AddBody = signed.json()?;
    let by = manager(&state, &id, r.by).await?;
    let message = state.engine.group_add(&by, GroupMembersReq { group_id: id, members: r.members }).await?;
    ok(&GroupChangeRes { message })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveQuery {
    #[serde(default)]
    by: Option<String>,
}

/// Removes one member.
#[utoipa::path(delete, path = "/api/v1/groups/{id}/members/{user}", tag = "groups",
    params(
        ("id" = String, Path, description = "The group id"),
        ("user" = String, Path, description = "The member to remove"),
        ("by" = Option<String>, Query, description = "Make the change as this user (owner or admin); the owner when absent"),
    ),
    responses(
        (status = 200, body = GroupChangeRes),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing, forbidden, not_member", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn remove(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    Signed::read(&req, payload, &state, Scope::Groups).await?;
    let id = path_id(&req, "id")?;
    let user = path_id(&req, "user")?;
    let q: RemoveQuery = query(&req)?;
    let by = manager(&state, &id, q.by).await?;
    let message = state.engine.group_remove(&by, GroupMembersReq { group_id: id, members: vec![user] }).await?;
    ok(&GroupChangeRes { message })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// 1 to 128 characters.
    #[serde(default)]
    name: Option<String>,
    /// An image URL.
    #[serde(default)]
    avatar: Option<String>,
    /// At most 2048 characters; an empty string clears it.
    #[serde(default)]
    notice: Option<String>,
    /// A JSON object of at most 4096 bytes encoded.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    ext: Option<serde_json::Value>,
    /// Make the change as this user (owner or admin); the owner when absent.
    #[serde(default)]
    by: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupUpdateRes {
    /// The group after the change.
    group: Group,
    /// The system message recording the change.
    message: Message,
}

impl From<(Group, Message)> for GroupUpdateRes {
    fn from((group, message): (Group, Message)) -> Self {
        Self { group, message }
    }
}

/// Changes a group's profile (at least one field); members get a `group` event and a
/// `group_updated` system message.
#[utoipa::path(patch, path = "/api/v1/groups/{id}", tag = "groups",
    params(("id" = String, Path, description = "The group id")),
    request_body = UpdateBody,
    responses(
        (status = 200, body = GroupUpdateRes),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing, forbidden, not_member", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 410, description = "group_dismissed", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn update(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    let signed = Signed::read(&req, payload, &state, Scope::Groups).await?;
    let id = path_id(&req, "id")?;
    let r: UpdateBody = signed.json()?;
    let by = manager(&state, &id, r.by).await?;
    let change = GroupUpdateReq { group_id: id, name: r.name, avatar: r.avatar, notice: r.notice, ext: r.ext };
    ok(&GroupUpdateRes::from(state.engine.group_update(&by, change).await?))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DismissBody {
    /// Dismiss as this user (must be the owner); the owner when absent.
    #[serde(default)]
    by: Option<String>,
}

/// Dismisses a group: members get a `group` event and a last `group_dismissed` system message,
/// their conversation rows turn inactive, and the group refuses sends and changes after.
#[utoipa::path(post, path = "/api/v1/groups/{id}/dismiss", tag = "groups",
    params(("id" = String, Path, description = "The group id")),
    request_body(content = Option<DismissBody>, description = "Optional"),
    responses(
        (status = 200, body = GroupUpdateRes),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing, forbidden, not_member", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 410, description = "group_dismissed", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn dismiss(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    let signed = Signed::read(&req, payload, &state, Scope::Groups).await?;
    let id = path_id(&req, "id")?;
    let r: DismissBody = if signed.body.is_empty() { DismissBody::default() } else { signed.json()? };
    let group = state.engine.group_info_admin(&id).await?;
    if group.dismissed {
        return Err(confab_actors::conversation::dismissed().into());
    }
    let by = manager(&state, &id, r.by).await?;
    ok(&GroupUpdateRes::from(state.engine.group_dismiss(&by, &id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleBody {
    /// `admin` or `member`; `owner` transfers the ownership (the previous owner becomes an admin).
    role: Role,
    /// Make the change as this user (must be the owner); the owner when absent.
    #[serde(default)]
    by: Option<String>,
}

/// Sets a member's role; members get a `group` event and a `roles_changed` system message.
#[utoipa::path(put, path = "/api/v1/groups/{id}/members/{user}/role", tag = "groups",
    params(
        ("id" = String, Path, description = "The group id"),
        ("user" = String, Path, description = "The member"),
    ),
    request_body = RoleBody,
    responses(
        (status = 200, body = GroupUpdateRes),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing, forbidden, not_member", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 409, description = "conflict (the member already has the role)", body = ErrorBody),
        (status = 410, description = "group_dismissed", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn set_role(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    let signed = Signed::read(&req, payload, &state, Scope::Groups).await?;
    let id = path_id(&req, "id")?;
    let user = path_id(&req, "user")?;
    let r: RoleBody = signed.json()?;
    let by = manager(&state, &id, r.by).await?;
    let change = GroupSetRoleReq { group_id: id, user_id: user, role: r.role };
    ok(&GroupUpdateRes::from(state.engine.group_set_role(&by, change).await?))
}
