//! Groups: creation, membership, profile, roles and dismissal through the group's actor, and
//! what members (and former members) may read of a group.

use super::*;
use crate::outbox::GateCheck;

/// A group change request, as the transports hand it over.
pub(super) enum GroupOp {
    Add(proto::GroupMembersReq),
    Remove(proto::GroupMembersReq),
    Leave(String),
    Update(proto::GroupUpdateReq),
    SetRole(proto::GroupSetRoleReq),
    Dismiss(String),
    Mute(proto::GroupMuteReq),
    Unmute(proto::GroupMembersReq),
    MuteAll(proto::GroupMuteAllReq),
    Ban(proto::GroupMembersReq),
    Unban(proto::GroupMembersReq),
}

impl Engine {
    pub async fn group_create(&self, caller: &Caller, req: proto::GroupCreateReq) -> Result<Group> {
        let name = req.name.trim().to_string();
        if name.is_empty() || name.chars().count() > 128 {
            return Err(Error::invalid("name must be 1 to 128 characters"));
        }
        let id = match req.group_id {
            Some(id) => {
                model::validate_id("group_id", &id)?;
                id
            }
            None => random_id(),
        };
        for m in &req.members {
            model::validate_id("members[]", m)?;
        }
        let mut members: Vec<String> = req.members.into_iter().filter(|m| **m != *caller.user).collect();
        members.sort();
        members.dedup();
        if members.len() + 1 > self.core.limits.max_group_members {
            return Err(Error::invalid(format!("a group has at most {} members", self.core.limits.max_group_members)));
        }
        if caller.conn_id.is_some() {
            // Both checked before either counts: a refused creation uses up nothing.
            let limits = &self.core.user_limits;
            let n = u32::try_from(members.len()).unwrap_or(u32::MAX);
            limits.group_creates.check(&caller.user, 1)?;
            limits.group_adds.check(&caller.user, n)?;
        }
        if caller.conn_id.is_some() {
            if let Some(gate) = self.core.hooks.get().and_then(|h| h.before_group_create.clone()) {
                let check = GateCheck::BeforeGroupCreate {
                    group_id: id.clone(),
                    name: name.clone(),
                    owner: caller.user.to_string(),
                    members: members.clone(),
                };
                gate_verdict(gate.check(&check).await?)?;
            }
        }
        let body = crate::rules::group_created(&caller.user, &name, &members);
        let new = NewGroup {
            id: id.clone(),
            name,
            owner: caller.user.to_string(),
            members: members.clone(),
            ts: crate::clock::now_ms(),
            system_body: body,
        };
        let (group, msg) = self.core.store.create_group(new).await.map_err(|e| match Error::from(e) {
            e if e.code == ErrorCode::Conflict => Error::new(ErrorCode::Conflict, "a group with this id exists"),
            e => e,
        })?;
        self.directory.evict(&model::group_conv_id(&id));
        // The creator has seen their own announcement: it must not count as unread for them.
        // (Best effort: the group exists either way.)
        if let Err(e) = self.core.store.mark_read(&caller.user, &model::group_conv_id(&id), msg.seq).await {
            tracing::warn!(error = %e, "could not move the group creator's read cursor");
        }
        // No actor exists yet for a new group: deliver the first message directly.
        let mut everyone: Vec<Arc<str>> = members.iter().map(|m| Arc::from(m.as_str())).collect();
        everyone.push(caller.user.clone());
        let frame = proto::encode_event("message", &msg);
        let conv_id = model::group_conv_id(&id);
        let membership =
            proto::encode_event("membership", &proto::MembershipEvent::new(&id, &conv_id, msg.seq, &members, &[]));
        let n = self.core.registry.fan_out(&everyone, &frame, None);
        self.core.metrics.deliveries_out.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        self.core.registry.fan_out(&everyone, &membership, None);
        if let Some(cluster) = self.core.cluster() {
            cluster.deliver(PeerDelivery {
                ordered: Some((Arc::from(conv_id.as_str()), msg.seq)),
                users: everyone,
                frames: vec![frame, membership],
                membership_changed: false,
            });
        }
        Ok(group)
    }

    /// A change through the group's actor. With an `origin` (a WebSocket request), the actor
    /// queues the reply on the requesting connection in the conversation's order, in place of
    /// the `message` event: the acting device gets the system message once.
    pub(super) async fn membership(
        &self,
        caller: &Caller,
        group_id: &str,
        op: MembershipOp,
        origin: Option<Origin>,
    ) -> Result<Message> {
        model::validate_id("group_id", group_id)?;
        self.ask_member_join(caller, group_id, &op).await?;
        let conv_id = model::group_conv_id(group_id);
        let leaving = matches!(op, MembershipOp::Leave | MembershipOp::Dismiss);
        let m = self.call(&conv_id, Init::Load, Membership { by: caller.user.clone(), op, origin }).await?;
        // Whoever made the change has seen its system message.
        if !leaving {
            if let Err(e) = self.core.store.mark_read(&caller.user, &conv_id, m.seq).await {
                tracing::warn!(error = %e, "could not move the manager's read cursor");
            }
        }
        Ok(m)
    }

    /// Asks `before_member_join`, when configured, about a client's request that adds members
    /// (the HTTP API's own changes are not asked about: the backend made them).
    async fn ask_member_join(&self, caller: &Caller, group_id: &str, op: &MembershipOp) -> Result<()> {
        if caller.conn_id.is_none() {
            return Ok(());
        }
        let Some(gate) = self.core.hooks.get().and_then(|h| h.before_member_join.clone()) else { return Ok(()) };
        let (users, how) = match op {
            MembershipOp::Add(users) => (users.clone(), "add"),
            MembershipOp::Invite(users) => (users.clone(), "invite"),
            MembershipOp::Approve(user) => (vec![user.clone()], "approve"),
            MembershipOp::Join => (vec![caller.user.to_string()], "join"),
            _ => return Ok(()),
        };
        let check =
            GateCheck::BeforeMemberJoin { group_id: group_id.to_owned(), users, how, by: caller.user.to_string() };
        gate_verdict(gate.check(&check).await?)
    }

    pub(super) fn check_users(users: &[String]) -> Result<()> {
        if users.is_empty() || users.len() > 1000 {
            return Err(Error::invalid("members must hold 1 to 1000 user ids"));
        }
        users.iter().try_for_each(|u| model::validate_id("members[]", u))
    }

    pub async fn group_add(&self, caller: &Caller, req: proto::GroupMembersReq) -> Result<Message> {
        self.group_op(caller, GroupOp::Add(req), None).await
    }

    pub async fn group_remove(&self, caller: &Caller, req: proto::GroupMembersReq) -> Result<Message> {
        self.group_op(caller, GroupOp::Remove(req), None).await
    }

    pub async fn group_leave(&self, caller: &Caller, group_id: &str) -> Result<Message> {
        self.group_op(caller, GroupOp::Leave(group_id.to_owned()), None).await
    }

    /// Changes a group's profile (owner or admins); returns the group and the system message.
    pub async fn group_update(&self, caller: &Caller, req: proto::GroupUpdateReq) -> Result<(Group, Message)> {
        let group_id = req.group_id.clone();
        let m = self.group_op(caller, GroupOp::Update(req), None).await?;
        Ok((self.group_info_admin(&group_id).await?, m))
    }

    /// Sets a member's role (owner only); `owner` transfers the ownership.
    pub async fn group_set_role(&self, caller: &Caller, req: proto::GroupSetRoleReq) -> Result<(Group, Message)> {
        let group_id = req.group_id.clone();
        let m = self.group_op(caller, GroupOp::SetRole(req), None).await?;
        Ok((self.group_info_admin(&group_id).await?, m))
    }

    /// Dismisses a group (owner only): members are told and the group refuses everything after.
    pub async fn group_dismiss(&self, caller: &Caller, group_id: &str) -> Result<(Group, Message)> {
        let m = self.group_op(caller, GroupOp::Dismiss(group_id.to_owned()), None).await?;
        Ok((self.group_info_admin(group_id).await?, m))
    }

    /// Mutes members until `until` (unix ms), or unmutes them (`None`); owner or admins.
    pub async fn group_mute(
        &self,
        caller: &Caller,
        group_id: &str,
        members: Vec<String>,
        until: Option<i64>,
    ) -> Result<Message> {
        let req = proto::GroupMembersReq { group_id: group_id.to_owned(), members };
        let op = match until {
            Some(until) => GroupOp::Mute(proto::GroupMuteReq { group_id: req.group_id, members: req.members, until }),
            None => GroupOp::Unmute(req),
        };
        self.group_op(caller, op, None).await
    }

    /// Mutes (or unmutes) everyone but the owner and admins.
    pub async fn group_mute_all(&self, caller: &Caller, group_id: &str, on: bool) -> Result<Message> {
        self.group_op(caller, GroupOp::MuteAll(proto::GroupMuteAllReq { group_id: group_id.to_owned(), on }), None)
            .await
    }

    /// Bans users (removing the members among them), or lifts their bans.
    pub async fn group_ban(&self, caller: &Caller, group_id: &str, members: Vec<String>, ban: bool) -> Result<Message> {
        let req = proto::GroupMembersReq { group_id: group_id.to_owned(), members };
        self.group_op(caller, if ban { GroupOp::Ban(req) } else { GroupOp::Unban(req) }, None).await
    }

    /// Checks a group change request and runs it through the group's actor (see
    /// [`Engine::membership`] for `origin`). Users a WebSocket client adds count against its
    /// user's limit.
    pub(super) async fn group_op(&self, caller: &Caller, op: GroupOp, origin: Option<Origin>) -> Result<Message> {
        let (group_id, op) = match op {
            GroupOp::Add(req) => {
                Self::check_users(&req.members)?;
                if caller.conn_id.is_some() {
                    let n = u32::try_from(req.members.len()).unwrap_or(u32::MAX);
                    self.core.user_limits.group_adds.check(&caller.user, n)?;
                }
                (req.group_id, MembershipOp::Add(req.members))
            }
            GroupOp::Remove(req) => {
                Self::check_users(&req.members)?;
                (req.group_id, MembershipOp::Remove(req.members))
            }
            GroupOp::Leave(group_id) => (group_id, MembershipOp::Leave),
            GroupOp::Update(req) => {
                let group_id = req.group_id.clone();
                let mut patch = req.patch();
                patch.validate()?;
                (group_id, MembershipOp::Update(patch))
            }
            GroupOp::SetRole(req) => {
                model::validate_id("user_id", &req.user_id)?;
                (req.group_id, MembershipOp::SetRole(req.user_id, req.role))
            }
            GroupOp::Dismiss(group_id) => (group_id, MembershipOp::Dismiss),
            GroupOp::Mute(req) => {
                Self::check_users(&req.members)?;
                (req.group_id, MembershipOp::Mute(req.members, Some(req.until)))
            }
            GroupOp::Unmute(req) => {
                Self::check_users(&req.members)?;
                (req.group_id, MembershipOp::Mute(req.members, None))
            }
            GroupOp::MuteAll(req) => (req.group_id, MembershipOp::MuteAll(req.on)),
            GroupOp::Ban(req) => {
                Self::check_users(&req.members)?;
                (req.group_id, MembershipOp::Ban(req.members))
            }
            GroupOp::Unban(req) => {
                Self::check_users(&req.members)?;
                (req.group_id, MembershipOp::Unban(req.members))
            }
        };
        self.membership(caller, &group_id, op, origin).await
    }

    /// A group's ban list, for its owner and admins (`admin`: the HTTP API, anyone).
    pub async fn group_bans(&self, caller: Option<&Caller>, group_id: &str) -> Result<Vec<model::GroupBan>> {
        model::validate_id("group_id", group_id)?;
        if let Some(caller) = caller {
            // The group's actor knows the caller's role: no read of the whole membership.
            let state = self.group_state(&caller.user, group_id).await?;
            Self::require_manager(&state, "only the owner or admins see the ban list")?;
        } else {
            self.group_info_admin(group_id).await?;
        }
        let mut bans = self.core.store.bans(group_id).await?;
        bans.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(bans)
    }

    // ---- users ----

    pub(super) async fn group_access(&self, caller: &Caller, group_id: &str) -> Result<()> {
        model::validate_id("group_id", group_id)?;
        let conv_id = model::group_conv_id(group_id);
        if self.core.store.group(group_id).await?.is_none() {
            return Err(Error::not_found("no such group"));
        }
        self.access(&caller.user, &conv_id).await.map(|_| ())
    }

    /// The members, for members. A dismissed group has none: its former members get an empty
    /// list.
    pub async fn group_members(&self, caller: &Caller, group_id: &str) -> Result<Vec<Member>> {
        if self.former_member_of_dismissed(caller, group_id).await?.is_some() {
            return Ok(Vec::new());
        }
        self.group_access(caller, group_id).await?;
        let mut members = self.core.store.members(group_id).await?;
        members.sort_by(|a, b| role_rank(a.role).cmp(&role_rank(b.role)).then_with(|| a.user_id.cmp(&b.user_id)));
        Ok(members)
    }

    /// The group's profile, for members, and for the former members of a dismissed group (whose
    /// profile no longer changes: it is what they saw when it ended).
    pub async fn group_info(&self, caller: &Caller, group_id: &str) -> Result<Group> {
        if let Some(g) = self.former_member_of_dismissed(caller, group_id).await? {
            return Ok(g);
        }
        self.group_access(caller, group_id).await?;
        self.core.store.group(group_id).await?.ok_or_else(|| Error::not_found("no such group"))
    }

    /// The group, when it was dismissed and the caller was a member until then.
    pub(super) async fn former_member_of_dismissed(&self, caller: &Caller, group_id: &str) -> Result<Option<Group>> {
        model::validate_id("group_id", group_id)?;
        let Some(g) = self.core.store.group(group_id).await?.filter(|g| g.dismissed) else { return Ok(None) };
        let conv_id = model::group_conv_id(group_id);
        let Some(state) = self.core.store.user_conv(&caller.user, &conv_id).await? else { return Ok(None) };
        let last = self.core.store.conversation(&conv_id).await?.map(|c| c.last_seq).unwrap_or(0);
        // Their row turned inactive with the dismissal itself (the group's last message).
        Ok((!state.active && state.left_seq == last && last > 0).then_some(g))
    }

    /// A group's profile for an administrator (the HTTP integration API): no membership check.
    pub async fn group_info_admin(&self, group_id: &str) -> Result<Group> {
        model::validate_id("group_id", group_id)?;
        self.core.store.group(group_id).await?.ok_or_else(|| Error::not_found("no such group"))
    }

    /// A group's members for an administrator (the HTTP integration API): no membership check.
    pub async fn group_members_admin(&self, group_id: &str) -> Result<Vec<Member>> {
        self.group_info_admin(group_id).await?;
        let mut members = self.core.store.members(group_id).await?;
        members.sort_by(|a, b| role_rank(a.role).cmp(&role_rank(b.role)).then_with(|| a.user_id.cmp(&b.user_id)));
        Ok(members)
    }
}

/// A check's refusal as the error the client gets.
fn gate_verdict(refused: Option<String>) -> Result<()> {
    match refused {
        None => Ok(()),
        Some(reason) => Err(Error::new(ErrorCode::RequestRejected, reason)),
    }
}

pub(super) fn role_rank(r: Role) -> u8 {
    match r {
        Role::Owner => 0,
        Role::Admin => 1,
        Role::Member => 2,
    }
}
