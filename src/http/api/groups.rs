//! Groups: create (with owner and members), add and remove members, members, profile, update,
//! roles, dismiss.

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::engine::Caller;
use confab_actors::error::Error;
use confab_actors::model::{Group, Member, Message, Role};
use confab_actors::proto::{GroupCreateReq, GroupMembersReq, GroupSetRoleReq, GroupUpdateReq};

use super::openapi::Id;
use super::{caller, ok, resource, scope, ApiResult, ErrorBody, Signed};
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
    #[schema(value_type = Option<Id>)]
    id: Option<String>,
    /// 1 to 128 characters.
    name: String,
    /// The owner: the group is created as if this user created it.
    #[schema(value_type = Id)]
    owner: String,
    /// The other members.
    #[serde(default)]
    #[schema(value_type = Vec<Id>)]
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
        (status = 200, description = "The group", body = GroupRes),
        (status = 400, description = "invalid_request (a bad id, name, owner or member, too many members)", body = ErrorBody),
        (status = 409, description = "conflict (the id is taken)", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn create(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let r: CreateBody = s.json()?;
    let owner = caller(&r.owner)?;
    let group =
        state.engine.group_create(&owner, GroupCreateReq { group_id: r.id, name: r.name, members: r.members }).await?;
    ok(&GroupRes { group })
}

/// A group's profile.
#[utoipa::path(get, path = "/api/v1/groups/{id}", tag = "groups",
    params(("id" = Id, Path, description = "The group id")),
    responses(
        (status = 200, description = "The group", body = GroupRes),
        (status = 400, description = "invalid_request (a bad group id)", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn info(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let id = s.path_id("id")?;
    ok(&GroupRes { group: state.engine.group_info_admin(&id).await? })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MembersRes {
    members: Vec<Member>,
}

/// A group's members: owner, admins, then members, each by id.
#[utoipa::path(get, path = "/api/v1/groups/{id}/members", tag = "groups",
    params(("id" = Id, Path, description = "The group id")),
    responses(
        (status = 200, description = "The members", body = MembersRes),
        (status = 400, description = "invalid_request (a bad group id)", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn members(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let id = s.path_id("id")?;
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
    #[schema(value_type = Vec<Id>, min_items = 1, max_items = 1000)]
    members: Vec<String>,
    /// Make the change as this user (owner or admin); the owner when absent.
    #[serde(default)]
    #[schema(value_type = Option<Id>)]
    by: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupChangeRes {
    /// The system message recording the change.
    message: Message,
}

/// Adds members.
#[utoipa::path(post, path = "/api/v1/groups/{id}/members", tag = "groups",
    params(("id" = Id, Path, description = "The group id")),
    request_body = AddBody,
    responses(
        (status = 200, description = "The change made", body = GroupChangeRes),
        (status = 400, description = "invalid_request (bad ids, 0 or over 1000 users, the group would grow too large)", body = ErrorBody),
        (status = 403, description = "forbidden, not_member (by)", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 409, description = "conflict (every user given is already a member)", body = ErrorBody),
        (status = 410, description = "group_dismissed", body = ErrorBody),
        (status = 500, description = "internal", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn add(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let id = s.path_id("id")?;
    let r: AddBody = s.json()?;
    let by = manager(&state, &id, r.by).await?;
    let message = state.engine.group_add(&by, GroupMembersReq { group_id: id, members: r.members }).await?;
    ok(&GroupChangeRes { message })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RemoveQuery {
    /// Make the change as this user (owner or admin); the owner when absent.
    #[serde(default)]
    #[param(value_type = Option<Id>)]
    by: Option<String>,
}

/// Removes one member.
#[utoipa::path(delete, path = "/api/v1/groups/{id}/members/{user}", tag = "groups",
    params(
        ("id" = Id, Path, description = "The group id"),
        ("user" = Id, Path, description = "The member to remove"),
        RemoveQuery,
    ),
    responses(
        (status = 200, description = "The change made", body = GroupChangeRes),
        (status = 400, description = "invalid_request (a bad id, an unknown parameter)", body = ErrorBody),
        (status = 403, description = "forbidden (by may not remove this member), not_member (by)", body = ErrorBody),
        (status = 404, description = "not_found (the group, or the user is not a member)", body = ErrorBody),
        (status = 410, description = "group_dismissed", body = ErrorBody),
        (status = 500, description = "internal", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn remove(s: Signed<scope::Groups, RemoveQuery>, state: web::Data<AppState>) -> ApiResult {
    let id = s.path_id("id")?;
    let user = s.path_id("user")?;
    let q = s.query;
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
    #[schema(value_type = Option<Id>)]
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
    params(("id" = Id, Path, description = "The group id")),
    request_body = UpdateBody,
    responses(
        (status = 200, description = "The change made", body = GroupUpdateRes),
        (status = 400, description = "invalid_request (no field, a bad value)", body = ErrorBody),
        (status = 403, description = "forbidden, not_member (by)", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 410, description = "group_dismissed", body = ErrorBody),
        (status = 500, description = "internal", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn update(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let id = s.path_id("id")?;
    let r: UpdateBody = s.json()?;
    let by = manager(&state, &id, r.by).await?;
    let change = GroupUpdateReq { group_id: id, name: r.name, avatar: r.avatar, notice: r.notice, ext: r.ext };
    ok(&GroupUpdateRes::from(state.engine.group_update(&by, change).await?))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DismissBody {
    /// Dismiss as this user (must be the owner); the owner when absent.
    #[serde(default)]
    #[schema(value_type = Option<Id>)]
    by: Option<String>,
}

/// Dismisses a group: members get a `group` event and a last `group_dismissed` system message,
/// their conversation rows turn inactive, and the group refuses sends and changes after.
#[utoipa::path(post, path = "/api/v1/groups/{id}/dismiss", tag = "groups",
    params(("id" = Id, Path, description = "The group id")),
    request_body(content = Option<DismissBody>, description = "Optional"),
    responses(
        (status = 200, description = "The group dismissed", body = GroupUpdateRes),
        (status = 400, description = "invalid_request (a bad id)", body = ErrorBody),
        (status = 403, description = "forbidden (by is not the owner), not_member (by)", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 410, description = "group_dismissed", body = ErrorBody),
        (status = 500, description = "internal", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn dismiss(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let id = s.path_id("id")?;
    let r: DismissBody = s.json_or_default()?;
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
    #[schema(value_type = Option<Id>)]
    by: Option<String>,
}

/// Sets a member's role; members get a `group` event and a `roles_changed` system message.
#[utoipa::path(put, path = "/api/v1/groups/{id}/members/{user}/role", tag = "groups",
    params(
        ("id" = Id, Path, description = "The group id"),
        ("user" = Id, Path, description = "The member"),
    ),
    request_body = RoleBody,
    responses(
        (status = 200, description = "The change made", body = GroupUpdateRes),
        (status = 400, description = "invalid_request (a bad id, the owner's own role)", body = ErrorBody),
        (status = 403, description = "forbidden (by is not the owner), not_member (by)", body = ErrorBody),
        (status = 404, description = "not_found (the group, or the user is not a member)", body = ErrorBody),
        (status = 409, description = "conflict (the member already has the role)", body = ErrorBody),
        (status = 410, description = "group_dismissed", body = ErrorBody),
        (status = 500, description = "internal", body = ErrorBody),
        (status = 503, description = "unavailable", body = ErrorBody)
    ),
    security(("confab_signature" = ["groups"])))]
async fn set_role(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let id = s.path_id("id")?;
    let user = s.path_id("user")?;
    let r: RoleBody = s.json()?;
    let by = manager(&state, &id, r.by).await?;
    let change = GroupSetRoleReq { group_id: id, user_id: user, role: r.role };
    ok(&GroupUpdateRes::from(state.engine.group_set_role(&by, change).await?))
}
