//! Joining groups: a free join, invitations by members, applications and invitations waiting for
//! the owner's or an admin's answer (`group_requests`, `group_approve`, `group_reject`). The group's
//! actor knows its modes and roles ([`AskGroupState`]); a pending request is a store row (not a
//! message), and an approval is an add through the actor like any other.

use super::*;
use crate::conversation::{AskGroupState, GroupState};
use crate::model::{InviteMode, JoinMode, JoinRequest, RequestKind, MAX_REQUEST_MESSAGE_CHARS};

/// The reply to `group_join` and `group_invite`: the system message when the users joined, or
/// the requests now waiting for an answer.
#[derive(Debug, Serialize)]
pub struct JoinResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub requests: Vec<JoinRequest>,
}

/// The `group_request` event.
#[derive(Serialize)]
struct RequestEvent<'a> {
    group_id: &'a str,
    /// `requested` or `rejected` (an approval is a `membership` event).
    change: &'static str,
    request: &'a JoinRequest,
}

impl Engine {
    pub(super) async fn group_state(&self, user: &Arc<str>, group_id: &str) -> Result<GroupState> {
        model::validate_id("group_id", group_id)?;
        self.call(&model::group_conv_id(group_id), Init::Load, AskGroupState(user.clone())).await
    }

    /// Refuses a caller who is not the owner or an admin (`forbidden`, or `not_member`).
    pub(super) fn require_manager(state: &GroupState, refusal: &str) -> Result<()> {
        match state.role {
            Some(r) if r.can_manage() => Ok(()),
            Some(_) => Err(Error::forbidden(refusal)),
            None => Err(Error::not_member()),
        }
    }

    fn check_message(message: &str) -> Result<()> {
        if message.chars().count() > MAX_REQUEST_MESSAGE_CHARS {
            return Err(Error::invalid(format!("message: at most {MAX_REQUEST_MESSAGE_CHARS} characters")));
        }
        Ok(())
    }

    /// Tells the group's managers, and the users the request concerns, of a request's change
    /// (the requesting connection has the reply instead).
    fn request_changed(
        &self,
        caller: &Caller,
        group_id: &str,
        change: &'static str,
        r: &JoinRequest,
        managers: &[Arc<str>],
    ) {
        let frame = proto::encode_event("group_request", &RequestEvent { group_id, change, request: r });
        let mut to: Vec<Arc<str>> = managers.to_vec();
        for u in [&r.user_id, &r.by] {
            if !to.iter().any(|m| **m == **u) {
                to.push(Arc::from(u.as_str()));
            }
        }
        for u in &to {
            let except = if *u == caller.user { caller.conn_id } else { None };
            self.core.notify_user(u, &frame, except);
        }
    }

    /// The caller joins: at once in a `free` group, as an application in an `approval` one.
    pub async fn group_join(&self, caller: &Caller, group_id: &str, message: String) -> Result<JoinResult> {
        Self::check_message(&message)?;
        let state = self.group_state(&caller.user, group_id).await?;
        if state.role.is_some() {
            return Err(Error::new(ErrorCode::Conflict, "you are a member already"));
        }
        match state.join_mode {
            JoinMode::Closed => Err(Error::forbidden("this group is joined by invitation only")),
            JoinMode::Free => {
                let m = self.membership(caller, group_id, MembershipOp::Join, None).await?;
                Ok(JoinResult { message: Some(m), requests: Vec::new() })
            }
            JoinMode::Approval => {
                if caller.conn_id.is_some() {
                    self.core.user_limits.asks.check(&caller.user, 1)?;
                }
                let r = JoinRequest {
                    user_id: caller.user.to_string(),
                    kind: RequestKind::Application,
                    by: caller.user.to_string(),
                    message,
                    ts: crate::clock::now_ms(),
                };
                self.core.store.put_join_requests(group_id, vec![r.clone()]).await?;
                self.request_changed(caller, group_id, "requested", &r, &state.managers);
                Ok(JoinResult { message: None, requests: vec![r] })
            }
        }
    }

    /// A member invites users: added at once by the owner and admins, or by anyone when the
    /// group's `invite_mode` is `members`; waiting for an answer when it is `members_approved`.
    pub async fn group_invite(
        &self,
        caller: &Caller,
        group_id: &str,
        members: Vec<String>,
        message: String,
    ) -> Result<JoinResult> {
        Self::check_users(&members)?;
        Self::check_message(&message)?;
        let state = self.group_state(&caller.user, group_id).await?;
        let Some(role) = state.role else { return Err(Error::not_member()) };
        if role.can_manage() || state.invite_mode == InviteMode::Members {
            if caller.conn_id.is_some() {
                let n = u32::try_from(members.len()).unwrap_or(u32::MAX);
                self.core.user_limits.group_adds.check(&caller.user, n)?;
            }
            let m = self.membership(caller, group_id, MembershipOp::Invite(members), None).await?;
            return Ok(JoinResult { message: Some(m), requests: Vec::new() });
        }
        if state.invite_mode == InviteMode::Admins {
            return Err(Error::forbidden("only the owner or admins may invite to this group"));
        }
        let ts = crate::clock::now_ms();
        let mut users = members;
        users.sort();
        users.dedup();
        let requests: Vec<JoinRequest> = users
            .into_iter()
            .map(|u| JoinRequest {
                user_id: u,
                kind: RequestKind::Invitation,
                by: caller.user.to_string(),
                message: message.clone(),
                ts,
            })
            .collect();
        self.core.store.put_join_requests(group_id, requests.clone()).await?;
        for r in &requests {
            self.request_changed(caller, group_id, "requested", r, &state.managers);
        }
        Ok(JoinResult { message: None, requests })
    }

    /// The pending requests, for the owner and admins (`caller` `None`: the HTTP API).
    pub async fn group_requests(&self, caller: Option<&Caller>, group_id: &str) -> Result<Vec<JoinRequest>> {
        if let Some(caller) = caller {
            let state = self.group_state(&caller.user, group_id).await?;
            Self::require_manager(&state, "only the owner or admins see join requests")?;
        } else {
            self.group_info_admin(group_id).await?;
        }
        let mut requests = self.core.store.join_requests(group_id).await?;
        requests.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.user_id.cmp(&b.user_id)));
        Ok(requests)
    }

    /// The owner or an admin approves `user`'s pending request: they are added.
    pub async fn group_approve(&self, caller: &Caller, group_id: &str, user: &str) -> Result<Message> {
        model::validate_id("user_id", user)?;
        let state = self.group_state(&caller.user, group_id).await?;
        Self::require_manager(&state, "only the owner or admins answer join requests")?;
        let pending = self.core.store.join_requests(group_id).await?;
        if !pending.iter().any(|r| r.user_id == user) {
            return Err(Error::new(ErrorCode::RequestNotPending, "no pending request of this user"));
        }
        self.membership(caller, group_id, MembershipOp::Approve(user.to_owned()), None).await
    }

    /// The owner or an admin rejects `user`'s pending request.
    pub async fn group_reject(&self, caller: &Caller, group_id: &str, user: &str) -> Result<JoinRequest> {
        model::validate_id("user_id", user)?;
        let state = self.group_state(&caller.user, group_id).await?;
        Self::require_manager(&state, "only the owner or admins answer join requests")?;
        let removed = self.core.store.remove_join_request(group_id, user).await?;
        let r = removed.ok_or_else(|| Error::new(ErrorCode::RequestNotPending, "no pending request of this user"))?;
        self.request_changed(caller, group_id, "rejected", &r, &state.managers);
        Ok(r)
    }
}

/// The reply to `group_notice_confirmations`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NoticeConfirmations {
    /// The current notice's `notice_ts` (absent when the group has no notice).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_ts: Option<i64>,
    pub notice_confirm: bool,
    /// Who confirmed the current notice, by user.
    pub confirmations: Vec<model::NoticeConfirmation>,
    pub member_count: u64,
}

impl Engine {
    /// A member confirms they read the group's current notice (when it asks for confirmation).
    pub async fn group_notice_confirm(&self, caller: &Caller, group_id: &str) -> Result<model::NoticeConfirmation> {
        let state = self.group_state(&caller.user, group_id).await?;
        if state.role.is_none() {
            return Err(Error::not_member());
        }
        let g = self.group_info_admin(group_id).await?;
        let Some(notice_ts) = g.notice_ts.filter(|_| g.notice_confirm) else {
            return Err(Error::new(ErrorCode::Conflict, "the group's notice asks for no confirmation"));
        };
        let c = model::NoticeConfirmation { user_id: caller.user.to_string(), notice_ts, ts: crate::clock::now_ms() };
        self.core.store.confirm_notice(group_id, c.clone()).await?;
        Ok(c)
    }

    /// Who confirmed the current notice: for the owner and admins (`caller` `None`: the HTTP API).
    pub async fn group_notice_confirmations(
        &self,
        caller: Option<&Caller>,
        group_id: &str,
    ) -> Result<NoticeConfirmations> {
        if let Some(caller) = caller {
            let state = self.group_state(&caller.user, group_id).await?;
            Self::require_manager(&state, "only the owner or admins see who confirmed")?;
        }
        let g = self.group_info_admin(group_id).await?;
        let mut confirmations: Vec<model::NoticeConfirmation> = match g.notice_ts {
            Some(ts) => self
                .core
                .store
                .notice_confirmations(group_id)
                .await?
                .into_iter()
                .filter(|c| c.notice_ts == ts)
                .collect(),
            None => Vec::new(),
        };
        confirmations.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(NoticeConfirmations {
            notice_ts: g.notice_ts,
            notice_confirm: g.notice_confirm,
            confirmations,
            member_count: g.member_count,
        })
    }
}
