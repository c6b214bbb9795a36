//! Users: profiles (one or many), disable/enable, token revocation, mint access tokens, online
//! devices (of one user or many), a user's groups.

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::error::Error;
use confab_actors::model::{validate_id, User, UserPatch};

use super::schema::{operation_errors, Id};
use super::{in_order, ok, path, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Users:
    "/users" => post upsert, get list;
    // Before `/users/{id}`, which would take them for ids.
    "/users/import" => post import;
    "/users/online" => post online;
    "/users/{id}" => get get;
    "/users/{id}/disable" => post disable;
    "/users/{id}/enable" => post enable;
    "/users/{id}/tokens/revoke" => post revoke_tokens;
    "/users/{id}/tokens" => post mint_token;
    "/users/{id}/devices" => get devices;
    "/users/{id}/devices/{device}/revoke" => post revoke_device;
    "/users/{id}/devices/{device}/push" => put push_register, delete push_unregister;
    "/users/{id}/push" => get push_registrations;
    "/users/{id}/groups" => get groups;
}

/// Most users one import may hold.
const MAX_IMPORT: usize = 1000;
/// Users of an import written at once.
const IMPORT_PARALLEL: usize = 32;
/// Users whose devices are looked up at once.
const ONLINE_PARALLEL: usize = 16;

operation_errors! {
    MintTokenErrors: InvalidRequest("a bad user or device id, a ttl_secs over auth.max_token_ttl_secs"), Internal,
        Unavailable("the user's record could not be read");
    DevicesErrors: InvalidRequest("a bad user id");
    RevokeDeviceErrors: InvalidRequest("a bad user or device id"), Unavailable;
    PushRegisterErrors: InvalidRequest("a bad user or device id, a token that is empty, over 4096 bytes or not printable ASCII"),
        PushProviderUnknown, UserDisabled, Unavailable;
    PushErrors: InvalidRequest("a bad user or device id"), Unavailable;
    UpsertErrors: InvalidRequest("a bad id, nickname, avatar or ext"), Unavailable;
    GetErrors: InvalidRequest("a bad user id"), NotFound, Unavailable;
    AccessErrors: InvalidRequest("a bad user id"), Unavailable;
    ImportErrors: InvalidRequest("no users or more than 1000"), Unavailable;
    OnlineErrors: InvalidRequest("no ids, more than 100, or a bad id"), Unavailable;
    GroupsErrors: InvalidRequest("a bad user id"), Unavailable;
    ListErrors: InvalidRequest("a bad prefix, after, limit or q, q with prefix or after, an unknown parameter"),
        Unavailable;
}

/// A page of a listing by id (users, groups).
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only ids starting with this (default: all).
    #[serde(default)]
    #[param(pattern = "^[A-Za-z0-9_.@:-]{0,64}$")]
    pub prefix: String,
    /// After this id: `next_after` of the previous page (default: from the start).
    #[serde(default)]
    #[param(pattern = "^[A-Za-z0-9_.@:-]{0,64}$")]
    pub after: String,
    /// 1 to 100 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<usize>,
    /// Search instead: those whose nickname (users) or name (groups) starts with this, ignoring
    /// case (1 to 64 characters), by name; `prefix` and `after` must then be empty, and there is
    /// no next page (ask with a longer `q`).
    #[serde(default)]
    #[param(pattern = "^.{1,64}$")]
    pub q: String,
}

impl ListQuery {
    /// The search key when `q` is given (see [`ListQuery::q`]).
    pub(super) fn search(&self) -> Result<Option<String>, Error> {
        if self.q.is_empty() {
            return Ok(None);
        }
        if !self.prefix.is_empty() || !self.after.is_empty() {
            return Err(Error::invalid("give q, or prefix and after, not both"));
        }
        confab_actors::model::search_key(&self.q).map(Some)
    }

    /// Checks the parameters; the limit.
    pub(super) fn check(&self) -> Result<usize, Error> {
        for (name, v) in [("prefix", &self.prefix), ("after", &self.after)] {
            if !v.is_empty() {
                validate_id(name, v)?;
            }
        }
        match self.limit {
            None => Ok(50),
            Some(n) if (1..=confab_actors::model::MAX_PAGE).contains(&n) => Ok(n),
            Some(_) => Err(Error::invalid("limit must be 1 to 100")),
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UsersRes {
    users: Vec<User>,
    /// The `after` of the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

/// Users with a record, by id: all, or those whose id starts with `prefix`, a page at a time; or,
/// with `q`, those whose nickname starts with it (ignoring case), by nickname.
#[utoipa::path(get, path = "/users",
    params(ListQuery),
    responses((status = 200, description = "A page of users", body = UsersRes), ListErrors))]
async fn list(s: Signed<scope::Users, ListQuery>, state: web::Data<AppState>) -> ApiResult {
    let limit = s.query.check()?;
    if let Some(key) = s.query.search()? {
        let users = state.engine.store().search_users(&key, limit).await.map_err(Error::from)?;
        return ok(&UsersRes { users, next_after: None });
    }
    let mut users =
        state.engine.store().list_users(&s.query.prefix, &s.query.after, limit + 1).await.map_err(Error::from)?;
    let more = users.len() > limit;
    users.truncate(limit);
    let next_after = if more { users.last().map(|u| u.id.clone()) } else { None };
    ok(&UsersRes { users, next_after })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// 1 to 1000 users, each as `POST /users` takes it.
    users: Vec<UpsertBody>,
}

#[serde_with::skip_serializing_none]
#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportItem {
    id: String,
    ok: bool,
    /// Why this user failed (an error code), when it did.
    error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ImportRes {
    results: Vec<ImportItem>,
}

/// Creates or updates many users at once, one result per user in order (a failed user does not
/// stop the others). Idempotent: importing the same users again changes nothing but `updated_at`.
#[utoipa::path(post, path = "/users/import",
    request_body = ImportBody,
    responses((status = 200, description = "A result per user, in order", body = ImportRes), ImportErrors))]
async fn import(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let r: ImportBody = s.json()?;
    if r.users.is_empty() || r.users.len() > MAX_IMPORT {
        return Err(Error::invalid(format!("users: 1 to {MAX_IMPORT}")).into());
    }
    let results = in_order(r.users, IMPORT_PARALLEL, |u| {
        let engine = state.engine.clone();
        async move {
            let id = u.id.clone();
            let error = engine.user_upsert(u.patch()).await.err().map(|e| e.code.as_str().to_owned());
            ImportItem { id, ok: error.is_none(), error }
        }
    })
    .await;
    ok(&ImportRes { results })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnlineBody {
    /// 1 to 100 user ids.
    #[schema(value_type = Vec<Id>, min_items = 1, max_items = 100)]
    ids: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OnlineItem {
    user_id: String,
    online: bool,
    devices: Vec<Device>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct OnlineRes {
    users: Vec<OnlineItem>,
}

/// Whether each user is connected, and on which devices (cluster-wide; see `/users/{id}/devices`).
#[utoipa::path(post, path = "/users/online",
    request_body = OnlineBody,
    responses((status = 200, description = "Each user, in the order asked", body = OnlineRes), OnlineErrors))]
async fn online(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let r: OnlineBody = s.json()?;
    if r.ids.is_empty() || r.ids.len() > confab_actors::model::MAX_PROFILE_LOOKUP {
        return Err(Error::invalid("ids: 1 to 100 user ids").into());
    }
    let users = in_order(r.ids, ONLINE_PARALLEL, |id| {
        let engine = state.engine.clone();
        async move {
            let devices: Vec<Device> = engine.devices(&id).await?.into_iter().map(Device::from).collect();
            Ok::<_, Error>(OnlineItem { user_id: id, online: !devices.is_empty(), devices })
        }
    })
    .await
    .into_iter()
    .collect::<Result<Vec<_>, _>>()?;
    ok(&OnlineRes { users })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UserGroup {
    group_id: String,
    role: confab_actors::model::Role,
    joined_at: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GroupsRes {
    groups: Vec<UserGroup>,
}

/// The groups the user is a member of, by group id.
#[utoipa::path(get, path = "/users/{id}/groups",
    params(path::User),
    responses((status = 200, description = "The user's groups", body = GroupsRes), GroupsErrors))]
async fn groups(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let path::User { id } = s.path()?;
    validate_id("user", &id)?;
    let mut groups: Vec<UserGroup> = state
        .engine
        .store()
        .groups_of(&id)
        .await
        .map_err(Error::from)?
        .into_iter()
        .map(|(group_id, m)| UserGroup { group_id, role: m.role, joined_at: m.joined_at })
        .collect();
    groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    ok(&GroupsRes { groups })
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
    let revoked = state.engine.revoked_before(&user, &r.device).await?;
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

impl From<confab_actors::cluster::RemoteDevice> for Device {
    fn from(d: confab_actors::cluster::RemoteDevice) -> Self {
        Device { device: d.device, conn_id: d.conn_id, node: (!d.node.is_empty()).then_some(d.node) }
    }
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
    let devices = state.engine.devices(&user).await?.into_iter().map(Device::from).collect();
    ok(&DevicesRes { user_id: user, devices })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RevokeDeviceRes {
    user_id: String,
    device: String,
    /// Tokens of the device issued before this time (unix ms) are refused.
    #[schema(value_type = super::schema::SafeInt)]
    revoked_before_ms: u64,
}

/// Forces one device offline: revokes the tokens issued to it so far and closes its sessions on
/// every node (1008 `token_revoked`). The user's other devices stay connected; a token minted for
/// the device afterwards works.
#[utoipa::path(post, path = "/users/{id}/devices/{device}/revoke",
    params(path::UserDevice),
    responses((status = 200, description = "The device's revocation", body = RevokeDeviceRes), RevokeDeviceErrors))]
async fn revoke_device(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let path::UserDevice { id, device } = s.path()?;
    let revoked_before_ms = state.engine.user_revoke_device(&id, &device).await?;
    ok(&RevokeDeviceRes { user_id: id, device, revoked_before_ms })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushRegisterBody {
    /// `fcm`, `apns`, or a provider name of `push.relay.providers` (`huawei`, `xiaomi`, ...).
    provider: String,
    /// The provider's token for the device.
    token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PushRegistrationRes {
    registration: confab_actors::push::PushRegistration,
}

/// Registers a device's push token (as the app would over WebSocket with `push_register`),
/// replacing the device's previous one; the same token registered to another device moves here.
#[utoipa::path(put, path = "/users/{id}/devices/{device}/push",
    params(path::UserDevice),
    request_body = PushRegisterBody,
    responses((status = 200, description = "The registration", body = PushRegistrationRes), PushRegisterErrors))]
async fn push_register(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let path::UserDevice { id, device } = s.path()?;
    let b: PushRegisterBody = s.json()?;
    let registration = state.engine.push_register(&id, &device, &b.provider, &b.token).await?;
    ok(&PushRegistrationRes { registration })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PushRemovedRes {
    /// Whether the device had a registration.
    removed: bool,
}

/// Removes a device's push registration: it gets no more notifications.
#[utoipa::path(delete, path = "/users/{id}/devices/{device}/push",
    params(path::UserDevice),
    responses((status = 200, description = "Whether there was one", body = PushRemovedRes), PushErrors))]
async fn push_unregister(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let path::UserDevice { id, device } = s.path()?;
    let removed = state.engine.push_unregister(&id, &device).await?;
    ok(&PushRemovedRes { removed })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PushRegistrationsRes {
    user_id: String,
    /// One per device, by device.
    registrations: Vec<confab_actors::push::PushRegistration>,
}

/// A user's push registrations (a token the provider called invalid is gone).
#[utoipa::path(get, path = "/users/{id}/push",
    params(path::User),
    responses((status = 200, description = "The registrations", body = PushRegistrationsRes), PushErrors))]
async fn push_registrations(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let path::User { id } = s.path()?;
    let registrations = state.engine.push_registrations(&id).await?;
    ok(&PushRegistrationsRes { user_id: id, registrations })
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

impl UpsertBody {
    /// The change it asks for, made now.
    fn patch(self) -> UserPatch {
        UserPatch {
            id: self.id,
            nickname: self.nickname.map(|n| n.trim().to_string()),
            avatar: self.avatar,
            ext: self.ext,
            ts: confab_actors::clock::now_ms(),
        }
    }
}

/// Creates a user's record or updates its profile; absent fields are kept.
#[utoipa::path(post, path = "/users",
    request_body = UpsertBody,
    responses((status = 200, description = "The user", body = UserRes), UpsertErrors))]
async fn upsert(s: Signed<scope::Users>, state: web::Data<AppState>) -> ApiResult {
    let r: UpsertBody = s.json()?;
    ok(&UserRes { user: state.engine.user_upsert(r.patch()).await? })
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
