//! Groups: create (with owner and members), add and remove members, members, profile, update,
//! roles, dismiss, moderation (mutes and bans), joins, invitations and their requests.

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::engine::{Caller, NoticeConfirmations};
use confab_actors::error::Error;
use confab_actors::model::{Group, GroupBan, InviteMode, JoinMode, JoinRequest, Member, Message, Role};
use confab_actors::proto::{GroupCreateReq, GroupMembersReq, GroupSetRoleReq, GroupUpdateReq};

use super::schema::{operation_errors, Id, SafeInt};
use super::{acting, caller, ok, path, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Groups:
    "/groups" => post create, get list;
    "/groups/{id}" => get info, patch update;
    "/groups/{id}/dismiss" => post dismiss;
    "/groups/{id}/members" => get members, post add;
    "/groups/{id}/members/{user}" => delete remove;
    "/groups/{id}/members/{user}/role" => put set_role;
    "/groups/{id}/moderation" => post moderate;
    "/groups/{id}/bans" => get bans;
    "/groups/{id}/join" => post join;
    "/groups/{id}/leave" => post leave;
    "/groups/{id}/invitations" => post invite;
    "/groups/{id}/requests" => get requests;
    "/groups/{id}/requests/{user}" => post answer;
    "/groups/{id}/notice/confirmations" => get confirmations, post confirm;
}

operation_errors! {
    JoinErrors: InvalidRequest("a bad id, a message over 200 characters"), Forbidden("the group is not open to joins"),
        Conflict("already a member"), Banned, UserDisabled("the user"), NotFound, GroupDismissed, Internal, Unavailable;
    LeaveErrors: InvalidRequest("a bad id"), NotMember, OwnerCannotLeave, UserDisabled("the user"), NotFound, GroupDismissed, Internal,
        Unavailable;
    InviteErrors: InvalidRequest("bad ids, 0 or over 1000 users"), Forbidden("by may not invite to this group"),
        NotMember("by"), Conflict("every user given is already a member"), Banned, UserDisabled("by"), NotFound,
        GroupDismissed, Internal, Unavailable;
    AnswerErrors: InvalidRequest("a bad id or action"), Forbidden("by is not the owner or an admin"), NotMember("by"),
        RequestNotPending, Banned, NotFound, GroupDismissed, Internal, Unavailable;
    ModerateErrors: InvalidRequest("a bad id, an unknown action, no members, until not in the next year"),
        Forbidden("by may not moderate these users"), NotMember("by"), NotFound("the group, or a user to mute is not a member"),
        GroupDismissed, Internal, Unavailable;
    CreateErrors: InvalidRequest("a bad id, name, owner or member, too many members"), Conflict("the id is taken"),
        Unavailable;
    ReadErrors: InvalidRequest("a bad group id"), NotFound, Unavailable;
    AddErrors: InvalidRequest("bad ids, 0 or over 1000 users, the group would grow too large"), Forbidden,
        NotMember("by"), NotFound, Conflict("every user given is already a member"), GroupDismissed, Internal,
        Unavailable;
    RemoveErrors: InvalidRequest("a bad id, an unknown parameter"), Forbidden("by may not remove this member"),
        NotMember("by"), NotFound("the group, or the user is not a member"), GroupDismissed, Internal, Unavailable;
    UpdateErrors: InvalidRequest("no field, a bad value"), Forbidden, NotMember("by"), NotFound, GroupDismissed,
        Internal, Unavailable;
    DismissErrors: InvalidRequest("a bad id"), Forbidden("by is not the owner"), NotMember("by"), NotFound,
        GroupDismissed, Internal, Unavailable;
    SetRoleErrors: InvalidRequest("a bad id, the owner's own role"), Forbidden("by is not the owner"), NotMember("by"),
        NotFound("the group, or the user is not a member"), Conflict("the member already has the role"), GroupDismissed,
        Internal, Unavailable;
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupsRes {
    groups: Vec<Group>,
    /// The `after` of the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

/// Groups by id (dismissed ones included): all, or those whose id starts with `prefix`, a page at
/// a time; or, with `q`, the groups not dismissed whose name starts with it (ignoring case).
#[utoipa::path(get, path = "/groups",
    params(super::users::ListQuery),
    responses((status = 200, description = "A page of groups", body = GroupsRes), ReadErrors))]
async fn list(s: Signed<scope::Groups, super::users::ListQuery>, state: web::Data<AppState>) -> ApiResult {
    let limit = s.query.check()?;
    if let Some(key) = s.query.search()? {
        let groups = state.engine.store().search_groups(&key, limit).await.map_err(Error::from)?;
        return ok(&GroupsRes { groups, next_after: None });
    }
    let mut groups =
        state.engine.store().list_groups(&s.query.prefix, &s.query.after, limit + 1).await.map_err(Error::from)?;
    let more = groups.len() > limit;
    groups.truncate(limit);
    let next_after = if more { groups.last().map(|g| g.id.clone()) } else { None };
    ok(&GroupsRes { groups, next_after })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupRes {
    group: Group,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupChangeRes {
    /// The system message recording the change.
    message: Message,
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

/// Creates a group with its owner and members.
#[utoipa::path(post, path = "/groups",
    request_body = CreateBody,
    responses((status = 200, description = "The group", body = GroupRes), CreateErrors))]
async fn create(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let r: CreateBody = s.json()?;
    let owner = caller(&r.owner)?;
    let group =
        state.engine.group_create(&owner, GroupCreateReq { group_id: r.id, name: r.name, members: r.members }).await?;
    ok(&GroupRes { group })
}

/// A group's profile.
#[utoipa::path(get, path = "/groups/{id}",
    params(path::Group),
    responses((status = 200, description = "The group", body = GroupRes), ReadErrors))]
async fn info(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
    ok(&GroupRes { group: state.engine.group_info_admin(&id).await? })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MembersRes {
    members: Vec<Member>,
    /// With `limit`: the `after` of the next page, absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Id>)]
    next_after: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MembersQuery {
    /// Page by user id: members after this one (with `limit`).
    #[serde(default)]
    #[param(value_type = Option<Id>)]
    after: Option<String>,
    /// 1 to 100: a page of members by user id; absent: everyone, owner, admins, then members.
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

/// A group's members: everyone (owner, admins, then members, each by id), or with `limit` a
/// page by user id (`next_after` is the cursor of the next page, absent on the last).
#[utoipa::path(get, path = "/groups/{id}/members",
    params(path::Group, MembersQuery),
    responses((status = 200, description = "The members", body = MembersRes), ReadErrors))]
async fn members(s: Signed<scope::Groups, MembersQuery>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
    let mut members = state.engine.group_members_admin(&id).await?;
    let Some(limit) = s.query.limit else {
        if s.query.after.is_some() {
            return Err(Error::invalid("after goes with limit").into());
        }
        return ok(&MembersRes { members, next_after: None });
    };
    if !(1..=confab_actors::model::MAX_PAGE).contains(&limit) {
        return Err(Error::invalid(format!("limit must be 1 to {}", confab_actors::model::MAX_PAGE)).into());
    }
    if let Some(a) = &s.query.after {
        confab_actors::model::validate_id("after", a)?;
    }
    members.sort_by(|a, b| a.user_id.cmp(&b.user_id));
    let start = match &s.query.after {
        Some(a) => members.partition_point(|m| m.user_id.as_str() <= a.as_str()),
        None => 0,
    };
    let page: Vec<Member> = members.drain(start..).take(limit + 1).collect();
    let more = page.len() > limit;
    let page: Vec<Member> = page.into_iter().take(limit).collect();
    let next_after = if more { page.last().map(|m| m.user_id.clone()) } else { None };
    ok(&MembersRes { members: page, next_after })
}

/// What `POST /groups/{id}/moderation` does.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModerationAction {
    /// Mute `members` until `until`.
    Mute,
    Unmute,
    /// Mute everyone but the owner and admins.
    MuteAll,
    UnmuteAll,
    /// Ban `members` (the members among them are removed).
    Ban,
    Unban,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModerateBody {
    action: ModerationAction,
    /// The users (1 to 1000), for every action but `mute_all` and `unmute_all`.
    #[serde(default)]
    #[schema(value_type = Vec<Id>)]
    members: Vec<String>,
    /// `mute`: until this time, unix milliseconds (at most a year away).
    #[serde(default)]
    #[schema(value_type = Option<SafeInt>)]
    until: Option<i64>,
    /// Make the change as this user (owner or admin); the owner when absent.
    #[serde(default)]
    #[schema(value_type = Option<Id>)]
    by: Option<String>,
}

/// Mutes, unmutes, bans or unbans members, or mutes the whole group, with the WebSocket rules
/// (owner or admins; only the owner acts on admins; nobody on the owner). Each is a system
/// message in the conversation.
#[utoipa::path(post, path = "/groups/{id}/moderation",
    params(path::Group),
    request_body = ModerateBody,
    responses((status = 200, description = "The change made", body = GroupChangeRes), ModerateErrors))]
async fn moderate(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
    let r: ModerateBody = s.json()?;
    let by = manager(&state, &id, r.by).await?;
    let e = &state.engine;
    let message = match r.action {
        ModerationAction::Mute => {
            let until = r.until.ok_or_else(|| Error::invalid("mute needs until"))?;
            e.group_mute(&by, &id, r.members, Some(until)).await?
        }
        ModerationAction::Unmute => e.group_mute(&by, &id, r.members, None).await?,
        ModerationAction::MuteAll => e.group_mute_all(&by, &id, true).await?,
        ModerationAction::UnmuteAll => e.group_mute_all(&by, &id, false).await?,
        ModerationAction::Ban => e.group_ban(&by, &id, r.members, true).await?,
        ModerationAction::Unban => e.group_ban(&by, &id, r.members, false).await?,
    };
    ok(&GroupChangeRes { message })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BansRes {
    bans: Vec<GroupBan>,
}

/// The users banned from the group.
#[utoipa::path(get, path = "/groups/{id}/bans",
    params(path::Group),
    responses((status = 200, description = "The ban list, by user", body = BansRes), ReadErrors))]
async fn bans(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
    ok(&BansRes { bans: state.engine.group_bans(None, &id).await? })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    /// The user who joins (or applies).
    #[schema(value_type = Id)]
    user: String,
    /// For an application: a short message to the owner and admins.
    #[serde(default)]
    message: String,
}

/// The user joins the group as they would over WebSocket (`group_join`): at once when its
/// `join_mode` is `free`, as an application when it is `approval`, refused when `closed`.
#[utoipa::path(post, path = "/groups/{id}/join",
    params(path::Group),
    request_body = JoinBody,
    responses((status = 200, description = "`message` when joined, `requests` when waiting", body = Object), JoinErrors))]
async fn join(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
    let r: JoinBody = s.json()?;
    ok(&state.engine.group_join(&acting(&state, &r.user).await?, &id, r.message).await?)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaveBody {
    /// The member who leaves.
    #[schema(value_type = Id)]
    user: String,
}

/// The user leaves the group (the owner cannot: `owner_cannot_leave`).
#[utoipa::path(post, path = "/groups/{id}/leave",
    params(path::Group),
    request_body = LeaveBody,
    responses((status = 200, description = "The change made", body = GroupChangeRes), LeaveErrors))]
async fn leave(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
    let r: LeaveBody = s.json()?;
    ok(&GroupChangeRes { message: state.engine.group_leave(&acting(&state, &r.user).await?, &id).await? })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteBody {
    /// The inviting member.
    #[schema(value_type = Id)]
    by: String,
    /// 1 to 1000 user ids.
    #[schema(value_type = Vec<Id>, min_items = 1, max_items = 1000)]
    members: Vec<String>,
    #[serde(default)]
    message: String,
}

/// A member invites users, as `group_invite`: added at once by the owner and admins (or by any
/// member when the group's `invite_mode` is `members`), waiting for an answer when it is
/// `members_approved`.
#[utoipa::path(post, path = "/groups/{id}/invitations",
    params(path::Group),
    request_body = InviteBody,
    responses((status = 200, description = "`message` when added, `requests` when waiting", body = Object), InviteErrors))]
async fn invite(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
    let r: InviteBody = s.json()?;
    ok(&state.engine.group_invite(&acting(&state, &r.by).await?, &id, r.members, r.message).await?)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RequestsRes {
    requests: Vec<JoinRequest>,
}

/// The pending applications and invitations, oldest first.
#[utoipa::path(get, path = "/groups/{id}/requests",
    params(path::Group),
    responses((status = 200, description = "The pending requests", body = RequestsRes), ReadErrors))]
async fn requests(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
    ok(&RequestsRes { requests: state.engine.group_requests(None, &id).await? })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Approve,
    Reject,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerBody {
    action: Answer,
    /// Answer as this user (owner or admin); the owner when absent.
    #[serde(default)]
    #[schema(value_type = Option<Id>)]
    by: Option<String>,
}

/// Approves (the user is added: `{"message"}`) or rejects (`{"request"}`) a pending request.
#[utoipa::path(post, path = "/groups/{id}/requests/{user}",
    params(path::Member),
    request_body = AnswerBody,
    responses((status = 200, description = "`message` when approved, `request` when rejected", body = Object), AnswerErrors))]
async fn answer(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Member { id, user } = s.path()?;
    let r: AnswerBody = s.json()?;
    let by = manager(&state, &id, r.by).await?;
    match r.action {
        Answer::Approve => ok(&GroupChangeRes { message: state.engine.group_approve(&by, &id, &user).await? }),
        Answer::Reject => ok(&serde_json::json!({ "request": state.engine.group_reject(&by, &id, &user).await? })),
    }
}

/// Who confirmed the group's current notice.
#[utoipa::path(get, path = "/groups/{id}/notice/confirmations",
    params(path::Group),
    responses((status = 200, description = "The confirmations of the current notice", body = NoticeConfirmations), ReadErrors))]
async fn confirmations(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
    ok(&state.engine.group_notice_confirmations(None, &id).await?)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    /// The member who confirms.
    #[schema(value_type = Id)]
    user: String,
}

/// A member confirms the group's current notice, on their behalf.
#[utoipa::path(post, path = "/groups/{id}/notice/confirmations",
    params(path::Group),
    request_body = ConfirmBody,
    responses((status = 200, description = "The confirmation", body = Object), LeaveErrors))]
async fn confirm(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
    let r: ConfirmBody = s.json()?;
    ok(
        &serde_json::json!({ "confirmation": state.engine.group_notice_confirm(&acting(&state, &r.user).await?, &id).await? }),
    )
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

/// Adds members.
#[utoipa::path(post, path = "/groups/{id}/members",
    params(path::Group),
    request_body = AddBody,
    responses((status = 200, description = "The change made", body = GroupChangeRes), AddErrors))]
async fn add(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
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
#[utoipa::path(delete, path = "/groups/{id}/members/{user}",
    params(path::Member, RemoveQuery),
    responses((status = 200, description = "The change made", body = GroupChangeRes), RemoveErrors))]
async fn remove(s: Signed<scope::Groups, RemoveQuery>, state: web::Data<AppState>) -> ApiResult {
    let path::Member { id, user } = s.path()?;
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
    /// How users join by themselves: `closed`, `free` or `approval`.
    #[serde(default)]
    join_mode: Option<JoinMode>,
    /// Who may invite: `admins`, `members` or `members_approved`.
    #[serde(default)]
    invite_mode: Option<InviteMode>,
    /// With a new `notice`: members are asked to confirm they read it.
    #[serde(default)]
    notice_confirm: Option<bool>,
    /// Make the change as this user (owner or admin); the owner when absent.
    #[serde(default)]
    #[schema(value_type = Option<Id>)]
    by: Option<String>,
}

/// Changes a group's profile (at least one field); members get a `group` event and a
/// `group_updated` system message.
#[utoipa::path(patch, path = "/groups/{id}",
    params(path::Group),
    request_body = UpdateBody,
    responses((status = 200, description = "The change made", body = GroupUpdateRes), UpdateErrors))]
async fn update(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
    let r: UpdateBody = s.json()?;
    let by = manager(&state, &id, r.by).await?;
    let change = GroupUpdateReq {
        group_id: id,
        name: r.name,
        avatar: r.avatar,
        notice: r.notice,
        ext: r.ext,
        join_mode: r.join_mode,
        invite_mode: r.invite_mode,
        notice_confirm: r.notice_confirm,
    };
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
#[utoipa::path(post, path = "/groups/{id}/dismiss",
    params(path::Group),
    request_body(content = Option<DismissBody>, description = "Optional"),
    responses((status = 200, description = "The group dismissed", body = GroupUpdateRes), DismissErrors))]
async fn dismiss(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Group { id } = s.path()?;
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
#[utoipa::path(put, path = "/groups/{id}/members/{user}/role",
    params(path::Member),
    request_body = RoleBody,
    responses((status = 200, description = "The change made", body = GroupUpdateRes), SetRoleErrors))]
async fn set_role(s: Signed<scope::Groups>, state: web::Data<AppState>) -> ApiResult {
    let path::Member { id, user } = s.path()?;
    let r: RoleBody = s.json()?;
    let by = manager(&state, &id, r.by).await?;
    let change = GroupSetRoleReq { group_id: id, user_id: user, role: r.role };
    ok(&GroupUpdateRes::from(state.engine.group_set_role(&by, change).await?))
}
