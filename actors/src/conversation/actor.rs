//! The actor's life and its requests: loading the membership, sends, recalls and group changes
//! (checked by [`crate::rules`], written through the store in submission order).

use super::*;
use crate::rules::DirectVerdict;

impl ConversationActor {
    pub fn new(core: Arc<Core>, directory: Arc<Directory>, conv_id: Arc<str>, kind: ConvKind, init: Init) -> Self {
        let span = tracing::info_span!(parent: &core.span(), "conversation", conv = %conv_id);
        Self {
            span,
            core,
            directory,
            conv_id,
            kind,
            init,
            state: State::Loading,
            roles: HashMap::new(),
            muted: HashMap::new(),
            mute_all: false,
            join_mode: JoinMode::Closed,
            invite_mode: InviteMode::Admins,
            members: Arc::new(Vec::new()),
            members_seq: 0,
            next_fanout: 1,
            inflight: 0,
            ready: BTreeMap::new(),
            fresh: true,
            gap_fill: false,
            gap_misses: 0,
            last_peer_release: None,
            peer_release_scheduled: false,
            peer_members: Arc::new(Vec::new()),
            reloading: false,
            jobs: VecDeque::new(),
            tick_scheduled: false,
            recipients: RecipientCache::default(),
            last_active: Instant::now(),
            handed_over: None,
            relation: None,
        }
    }

    pub(super) fn group_id(&self) -> &str {
        self.conv_id.strip_prefix("g_").unwrap_or("")
    }

    pub(super) fn set_members(&mut self, roles: HashMap<Arc<str>, Role>) {
        self.members = Arc::new(roles.keys().cloned().collect());
        self.muted.retain(|u, _| roles.contains_key(u));
        self.roles = roles;
    }

    /// Sets the cached settings of the group as loaded or changed.
    pub(super) fn set_group(&mut self, g: &Group) {
        self.mute_all = g.mute_all;
        self.join_mode = g.join_mode;
        self.invite_mode = g.invite_mode;
    }

    /// Sets the cached mutes from members as loaded (`mute_all` comes with the group: `set_group`).
    pub(super) fn set_mutes(&mut self, members: &[Member]) {
        self.muted =
            members.iter().filter_map(|m| m.muted_until.map(|t| (Arc::<str>::from(m.user_id.as_str()), t))).collect();
    }

    /// Refuses a group message from a muted member (nothing to look at in most groups).
    pub(super) fn check_not_muted(&self, sender: &str, role: Role) -> Result<()> {
        if !self.mute_all && self.muted.is_empty() {
            return Ok(());
        }
        rules::check_not_muted(role, self.muted.get(sender).copied(), self.mute_all, now_ms())
    }

    pub(super) fn check_ready(&self) -> Result<()> {
        match &self.state {
            State::Ready => Ok(()),
            State::Failed(e) => Err(e.clone()),
            State::Loading => Err(Error::new(ErrorCode::Unavailable, "conversation is loading")),
        }
    }

    /// Loads membership and the last `seq`; blocks the mailbox until done.
    pub(super) fn load(&mut self, ctx: &mut Context<Self>) {
        let store = self.core.store.clone();
        let conv_id = self.conv_id.clone();
        let kind = self.kind;
        let init = self.init.clone();
        let policy = self.core.limits.who_may_message;
        let fut = async move {
            let conv = store.conversation(&conv_id).await?;
            let last_seq = conv.as_ref().map(|c| c.last_seq).unwrap_or(0);
            let mut roles = HashMap::new();
            let mut mutes = (Vec::new(), None);
            match kind {
                ConvKind::Group => {
                    let gid = conv_id.strip_prefix("g_").unwrap_or("");
                    match store.group(gid).await? {
                        None => return Err(Error::not_found("no such group")),
                        Some(g) if g.dismissed => return Err(dismissed()),
                        Some(g) => mutes.1 = Some(g),
                    }
                    let members = store.members(gid).await?;
                    for m in &members {
                        roles.insert(Arc::<str>::from(m.user_id.as_str()), m.role);
                    }
                    mutes.0 = members.into_iter().filter(|m| m.muted_until.is_some()).collect();
                }
                ConvKind::Direct => {
                    let users = match (&conv, init) {
                        (Some(c), _) => c.members.clone(),
                        (None, Init::Direct(a, b)) => vec![a, b],
                        (None, Init::Load) => return Err(Error::not_found("no such conversation")),
                    };
                    for u in users {
                        roles.insert(Arc::<str>::from(u), Role::Member);
                    }
                }
            }
            let relation = match roles.keys().cloned().collect::<Vec<_>>().as_slice() {
                [a, b] if kind == ConvKind::Direct => Some(relation::load(store, policy, a.clone(), b.clone()).await?),
                _ => None,
            };
            Ok::<_, Error>((last_seq, roles, relation, mutes))
        };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((last_seq, roles, relation, (muted, group))) => {
                act.next_fanout = last_seq + 1;
                act.members_seq = last_seq;
                act.set_members(roles);
                if let Some(g) = &group {
                    act.set_group(g);
                }
                act.set_mutes(&muted);
                act.relation = relation;
                act.state = State::Ready;
            }
            Err(e) => {
                if e.code != ErrorCode::NotFound && e.code != ErrorCode::GroupDismissed {
                    tracing::warn!(parent: &act.span, error = %e, "conversation load failed");
                }
                act.state = State::Failed(e);
                // Answer what is already queued with this error, then make room for a fresh
                // attempt (the group may be created, or the store may come back).
                ctx.run_later(Duration::from_millis(500), |_, ctx| ctx.stop());
            }
        }));
    }

    /// Runs a store write that assigns a `seq` (an append, a membership change) on a task of its
    /// own, handing it to the store only after every such write started before it. The store
    /// assigns `seq`s in the order it is handed appends, and actix polls a context's spawned
    /// futures in no fixed order, so without this chain pipelined sends could be stored out of
    /// the order they were made. Handing over is the write future's first poll.
    pub(super) fn store_write<T: Send + 'static>(
        &mut self,
        write: StoreFuture<T>,
    ) -> oneshot::Receiver<StoreResult<T>> {
        let (out_tx, out_rx) = oneshot::channel();
        self.store_write_then(write, move |out| {
            let _ = out_tx.send(out);
        });
        out_rx
    }

    /// [`Self::store_write`], calling `done` with the result on the write's task.
    pub(super) fn store_write_then<T: Send + 'static>(
        &mut self,
        write: StoreFuture<T>,
        done: impl FnOnce(StoreResult<T>) + 'static,
    ) {
        let (handed_tx, handed_rx) = oneshot::channel();
        let prev = self.handed_over.replace(handed_rx);
        actix::spawn(async move {
            if let Some(prev) = prev {
                let _ = prev.await;
            }
            let mut write = write;
            let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
            let _ = handed_tx.send(());
            let out = match first {
                Poll::Ready(out) => out,
                Poll::Pending => write.await,
            };
            done(out);
        });
    }

    /// Sends an append to the store and routes its result into the ordered fan-out.
    pub(super) fn append(
        &mut self,
        ctx: &mut Context<Self>,
        msg: NewMessage,
        origin: Option<Origin>,
        members: Arc<Vec<Arc<str>>>,
        reply: oneshot::Sender<Result<Message>>,
    ) {
        self.inflight += 1;
        let members_seq = self.members_seq;
        let store = self.core.store.clone();
        // The result comes back as a message, not as a future spawned on this context: actix
        // polls every future of a context each time the context wakes, so thousands of appends
        // in flight (a busy conversation under overload) would cost thousands of polls per wake.
        // Each append in flight sends exactly one `AppendDone`, so the mailbox holds at most as
        // many of them as there are appends in flight.
        let addr = ctx.address();
        self.store_write_then(Box::pin(async move { store.append(msg).await }), move |res| {
            addr.do_send(AppendDone { res, origin, members, reply, members_seq });
        });
    }

    pub(super) fn check_member(&self, user: &str) -> Result<Role> {
        self.roles.get(user).copied().ok_or_else(Error::not_member)
    }
}

impl Actor for ConversationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.core.limits.conversation_mailbox);
        self.core.metrics.conversation_actors.fetch_add(1, Relaxed);
        self.load(ctx);
        let check = self.core.limits.idle_timeout.min(Duration::from_secs(10)).max(Duration::from_millis(100));
        ctx.run_interval(check, |act, ctx| {
            let idle = act.last_active.elapsed() >= act.core.limits.idle_timeout;
            if idle && act.inflight == 0 && act.ready.is_empty() && act.jobs.is_empty() && !act.gap_fill {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Self::Context) {
        self.core.metrics.conversation_actors.fetch_sub(1, Relaxed);
        self.core.metrics.fanout_queue_depth.fetch_sub(self.jobs.iter().filter(|j| j.delivery).count() as i64, Relaxed);
        self.directory.remove(&self.conv_id, &ctx.address());
    }
}

impl Handler<AppendDone> for ConversationActor {
    type Result = ();

    fn handle(&mut self, msg: AppendDone, ctx: &mut Context<Self>) {
        let AppendDone { res, origin, members, reply, members_seq } = msg;
        self.inflight -= 1;
        match res {
            Ok(a) if a.duplicate => {
                self.core.metrics.messages_duplicate.fetch_add(1, Relaxed);
                if let Some(o) = &origin {
                    o.reply(&self.core, &proto::encode_result(&o.req_id, &proto::SendResult { message: &a.message }));
                }
                let _ = reply.send(Ok(a.message));
            }
            Ok(a) => {
                self.core.metrics.messages_in.fetch_add(1, Relaxed);
                self.ready.insert(
                    a.message.seq,
                    Pending::Local(Ready {
                        message: a.message,
                        origin,
                        members,
                        extra: Vec::new(),
                        reply: Some(reply),
                        members_seq,
                        ack_group: None,
                    }),
                );
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
        self.release(ctx);
    }
}

impl ConversationActor {
    /// Takes a request answered once its message is stored: `start` checks it and sets it going
    /// with the sender to answer on. An error of `start` (or an actor not ready) is answered at
    /// once; an actor that stops before answering answers `internal`.
    fn answer_later(
        &mut self,
        ctx: &mut Context<Self>,
        start: impl FnOnce(&mut Self, &mut Context<Self>, oneshot::Sender<Result<Message>>) -> Result<()>,
    ) -> ResponseFuture<Result<Message>> {
        self.last_active = Instant::now();
        let (tx, rx) = oneshot::channel();
        if let Err(e) = self.check_ready().and_then(|()| start(self, ctx, tx)) {
            return Box::pin(async move { Err(e) });
        }
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(Error::internal("conversation stopped"))) })
    }

    /// Checks a message's sender and appends it (with its quote, for a reply).
    fn submit(&mut self, msg: Submit, ctx: &mut Context<Self>, tx: oneshot::Sender<Result<Message>>) -> Result<()> {
        let conn = msg.origin.as_ref().map(|o| o.conn_id);
        tracing::debug!(parent: &self.span, sender = ?msg.sender, conn, reply_to = msg.reply_to, "submit");
        if let Some(sender) = &msg.sender {
            let role = self.check_member(sender)?;
            if self.kind == ConvKind::Group {
                self.check_not_muted(sender, role)?;
            }
            if msg.body.mentions_all() {
                rules::check_mention_all(self.kind == ConvKind::Group, role)?;
            }
            match self.check_relation(sender) {
                DirectVerdict::Allow => {}
                DirectVerdict::Refuse(e) => return Err(e),
                DirectVerdict::LookUpGroups => {
                    // Rare (a refusal in sight): look again, holding the mailbox so order is kept.
                    self.reload_relation(ctx, move |act, ctx| {
                        let sender = msg.sender.clone().unwrap_or_else(|| Arc::from(""));
                        match act.check_relation(&sender) {
                            DirectVerdict::Allow => act.submit_checked(msg, ctx, tx),
                            DirectVerdict::Refuse(e) => {
                                let _ = tx.send(Err(e));
                            }
                            // The lookup just made failed.
                            DirectVerdict::LookUpGroups => {
                                let e =
                                    Error::new(ErrorCode::Unavailable, "could not check who may message whom; retry");
                                let _ = tx.send(Err(e));
                            }
                        }
                    });
                    return Ok(());
                }
            }
        }
        self.submit_checked(msg, ctx, tx);
        Ok(())
    }

    /// [`Self::submit`] once the sender passed the checks.
    fn submit_checked(&mut self, msg: Submit, ctx: &mut Context<Self>, tx: oneshot::Sender<Result<Message>>) {
        let direct_members = match self.kind {
            ConvKind::Direct => {
                let mut it = self.members.iter();
                let a = it.next().map(|s| s.to_string()).unwrap_or_default();
                let b = it.next().map(|s| s.to_string()).unwrap_or_else(|| a.clone());
                Some((a, b))
            }
            ConvKind::Group => None,
        };
        let new = NewMessage {
            conv_id: self.conv_id.to_string(),
            direct_members,
            sender: msg.sender.as_ref().map(|s| s.to_string()),
            client_msg_id: msg.client_msg_id,
            body: msg.body,
            reply_to: None,
            ts: now_ms(),
        };
        let members = self.members.clone();
        match msg.reply_to {
            None => self.append(ctx, new, msg.origin, members, tx),
            Some(seq) => {
                // Quoting needs the replied-to message: hold the mailbox so order is kept.
                let store = self.core.store.clone();
                let conv_id = self.conv_id.clone();
                let origin = msg.origin;
                let fut = async move { store.message(&conv_id, seq).await };
                ctx.wait(fut.into_actor(self).map(move |res, act, ctx| match res {
                    Ok(Some(m)) => {
                        let mut new = new;
                        new.reply_to = Some(ReplyRef::of(&m));
                        act.append(ctx, new, origin, members, tx);
                    }
                    Ok(None) => {
                        let _ = tx.send(Err(Error::not_found(format!("reply_to: no message with seq {seq}"))));
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                    }
                }));
            }
        }
    }
}

impl Handler<Submit> for ConversationActor {
    type Result = ResponseFuture<Result<Message>>;

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        self.answer_later(ctx, |act, ctx, tx| act.submit(msg, ctx, tx))
    }
}

impl Handler<Recall> for ConversationActor {
    type Result = ResponseActFuture<Self, Result<Message>>;

    fn handle(&mut self, msg: Recall, _ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        tracing::debug!(parent: &self.span, by = %msg.by, seq = msg.seq, admin = msg.admin, "recall");
        let checked =
            self.check_ready().and_then(|_| if msg.admin { Ok(Role::Owner) } else { self.check_member(&msg.by) });
        let role = match checked {
            Ok(r) => r,
            Err(e) => return Box::pin(actix::fut::ready(Err(e))),
        };
        let store = self.core.store.clone();
        let conv_id = self.conv_id.clone();
        let is_group = self.kind == ConvKind::Group;
        let window = self.core.limits.recall_window;
        let by = msg.by.clone();
        let fut = async move {
            let m = store
                .message(&conv_id, msg.seq)
                .await?
                .ok_or_else(|| Error::not_found(format!("no message with seq {}", msg.seq)))?;
            if m.is_recalled() {
                return Ok((m, false));
            }
            let manager = msg.admin || (is_group && role.can_manage());
            rules::check_recall(&m, &by, manager, window, now_ms())?;
            // The store says whether this call recalled it: of two recalls racing, one announces.
            let r = store.recall(&conv_id, msg.seq, &by).await?;
            Ok((r.message, r.changed))
        };
        Box::pin(fut.into_actor(self).map(|res: Result<(Message, bool)>, act, ctx| {
            let (m, changed) = res?;
            if changed {
                act.jobs.push_back(Job {
                    seq: 0,
                    local_only: false,
                    membership_changed: false,
                    frames: vec![proto::encode_event("recall", &m)],
                    members: act.members.clone(),
                    next: 0,
                    skip: None,
                    only_conn: None,
                    slot: None,
                    started: Instant::now(),
                    delivery: false,
                });
                act.pump(ctx);
            }
            Ok(m)
        }))
    }
}

/// A group change checked and ready: its store write (the system message, and the group when it
/// changed), and what it changes in this actor once stored.
type PlannedChange = (StoreFuture<(Message, Option<Group>)>, Applied);

impl Handler<Membership> for ConversationActor {
    type Result = ResponseFuture<Result<Message>>;

    fn handle(&mut self, msg: Membership, ctx: &mut Context<Self>) -> Self::Result {
        self.answer_later(ctx, |act, ctx, tx| act.change_membership(msg, ctx, tx))
    }
}

impl ConversationActor {
    /// Checks a group change and writes it; the mailbox waits until it is stored.
    fn change_membership(
        &mut self,
        msg: Membership,
        ctx: &mut Context<Self>,
        tx: oneshot::Sender<Result<Message>>,
    ) -> Result<()> {
        if self.kind != ConvKind::Group {
            return Err(Error::invalid("not a group conversation"));
        }
        tracing::debug!(parent: &self.span, by = %msg.by, op = ?msg.op, "group change");
        let role = match (&msg.op, self.roles.get(&*msg.by)) {
            (MembershipOp::Join, Some(_)) => return Err(Error::new(ErrorCode::Conflict, "you are a member already")),
            (MembershipOp::Join, None) if self.join_mode != JoinMode::Free => {
                return Err(Error::forbidden("this group cannot be joined freely"))
            }
            // Checked by `plan_member_change`: the joining user is not a member yet.
            (MembershipOp::Join, None) => Role::Member,
            _ => self.check_member(&msg.by)?,
        };
        let by = msg.by.to_string();
        let origin = msg.origin;
        let store = self.core.store.clone();
        let group_id = self.group_id().to_string();
        let ts = now_ms();
        let (write, applied): PlannedChange = match msg.op {
            MembershipOp::Update(patch) => {
                rules::check_profile_change(role)?;
                let u = GroupUpdate { group_id, ts, system_body: rules::group_updated(&patch, &by), patch };
                (Box::pin(async move { store.update_group(u).await.map(|(g, m)| (m, Some(g))) }), Applied::Profile)
            }
            MembershipOp::SetRole(user, new_role) => {
                let current = self.roles.get(user.as_str()).copied();
                let roles = rules::plan_role_change(&by, role, &user, current, new_role)?;
                let c =
                    RoleChange { group_id, ts, system_body: rules::roles_changed(&roles, &by), roles: roles.clone() };
                (Box::pin(async move { store.set_roles(c).await.map(|(g, m)| (m, Some(g))) }), Applied::Roles(roles))
            }
            MembershipOp::Dismiss => {
                rules::check_dismiss(role)?;
                let d = GroupDismiss { group_id, ts, system_body: rules::group_dismissed(&by) };
                (Box::pin(async move { store.dismiss_group(d).await.map(|(g, m)| (m, Some(g))) }), Applied::Dismissed)
            }
            MembershipOp::Mute(users, until) => {
                if let Some(t) = until {
                    rules::check_mute_until(t, ts)?;
                }
                let users = rules::check_moderation(&by, role, &users, &self.roles, true)?;
                let c = MuteChange {
                    group_id,
                    mutes: users.iter().map(|u| (u.clone(), until)).collect(),
                    all: None,
                    ts,
                    system_body: rules::members_muted(&users, until, &by),
                };
                let write = Box::pin(async move { store.mute_members(c).await.map(|(g, m)| (m, Some(g))) });
                (write, Applied::Mutes { users, until, all: None })
            }
            MembershipOp::MuteAll(on) => {
                rules::check_profile_change(role)?;
                let c = MuteChange {
                    group_id,
                    mutes: Vec::new(),
                    all: Some(on),
                    ts,
                    system_body: rules::group_muted(on, &by),
                };
                let write = Box::pin(async move { store.mute_members(c).await.map(|(g, m)| (m, Some(g))) });
                (write, Applied::Mutes { users: Vec::new(), until: None, all: Some(on) })
            }
            MembershipOp::Ban(users) => {
                let users = rules::check_moderation(&by, role, &users, &self.roles, false)?;
                let remove: Vec<String> =
                    users.iter().filter(|u| self.roles.contains_key(u.as_str())).cloned().collect();
                let change = MemberChange {
                    group_id,
                    add: Vec::new(),
                    remove: remove.clone(),
                    ban: users.iter().map(|u| GroupBan { user_id: u.clone(), by: by.clone(), ts }).collect(),
                    unban: Vec::new(),
                    ts,
                    system_body: rules::members_banned(&users, &remove, true, &by),
                };
                let write = Box::pin(async move { store.change_members(change).await.map(|m| (m, None)) });
                (write, Applied::Members { add: Vec::new(), remove })
            }
            MembershipOp::Unban(users) => {
                let users = rules::check_moderation(&by, role, &users, &self.roles, false)?;
                let change = MemberChange {
                    group_id,
                    add: Vec::new(),
                    remove: Vec::new(),
                    ban: Vec::new(),
                    unban: users.clone(),
                    ts,
                    system_body: rules::members_banned(&users, &[], false, &by),
                };
                let write = Box::pin(async move { store.change_members(change).await.map(|m| (m, None)) });
                (write, Applied::Members { add: Vec::new(), remove: Vec::new() })
            }
            op => self.member_change(op, by, group_id, ts, role)?,
        };
        let stored = self.store_write(write);
        let fut =
            async move { stored.await.unwrap_or_else(|_| Err(StoreError::Unavailable("store task ended".into()))) };
        self.inflight += 1;
        // Membership changes hold the mailbox: the next message is checked and fanned out
        // against the new membership.
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
            act.inflight -= 1;
            match res {
                Ok((m, group)) => act.applied(m, group, applied, tx, origin),
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                }
            }
            act.release(ctx);
        }));
        Ok(())
    }

    /// Checks an add, remove or leave and prepares its store write.
    pub(super) fn member_change(
        &self,
        op: MembershipOp,
        by: String,
        group_id: String,
        ts: i64,
        role: Role,
    ) -> Result<PlannedChange> {
        // Who may add: the owner and admins; every member for an invitation when the group says
        // so; the user themselves for a free join.
        let (op, role) = match op {
            MembershipOp::Invite(users) if self.invite_mode == InviteMode::Members => {
                (MembershipOp::Add(users), Role::Admin)
            }
            MembershipOp::Invite(users) => (MembershipOp::Add(users), role),
            MembershipOp::Approve(user) if role.can_manage() => (MembershipOp::Add(vec![user]), role),
            MembershipOp::Approve(_) => return Err(Error::forbidden("only the owner or admins answer join requests")),
            op => (op, role),
        };
        let op = match op {
            MembershipOp::Add(users) => rules::MemberOp::Add(users),
            MembershipOp::Join => rules::MemberOp::Join,
            MembershipOp::Remove(users) => rules::MemberOp::Remove(users),
            MembershipOp::Leave => rules::MemberOp::Leave,
            _ => return Err(Error::internal("not a membership change")),
        };
        let plan = rules::plan_member_change(op, &by, role, &self.roles, self.core.limits.max_group_members)?;
        let change = MemberChange {
            group_id,
            add: plan.add.iter().map(|u| (u.clone(), Role::Member)).collect(),
            remove: plan.remove.clone(),
            ban: Vec::new(),
            unban: Vec::new(),
            ts,
            system_body: rules::members_changed(&plan, &by),
        };
        let store = self.core.store.clone();
        Ok((
            Box::pin(async move { store.change_members(change).await.map(|m| (m, None)) }),
            Applied::Members { add: plan.add, remove: plan.remove },
        ))
    }

    /// Updates the cached membership after a stored change and queues its fan-out: everyone who
    /// was or is a member hears about it.
    pub(super) fn applied(
        &mut self,
        m: Message,
        group: Option<Group>,
        applied: Applied,
        tx: oneshot::Sender<Result<Message>>,
        origin: Option<Origin>,
    ) {
        let mut recipients: Vec<Arc<str>> = self.members.iter().cloned().collect();
        let group_event = |act: &Self, change: &str| {
            proto::encode_event(
                "group",
                &proto::GroupEvent {
                    group_id: act.group_id(),
                    conv_id: &act.conv_id,
                    seq: m.seq,
                    change,
                    group: &group,
                },
            )
        };
        let extra = match applied {
            Applied::Members { add, remove } => {
                let mut roles = self.roles.clone();
                for u in &add {
                    let u: Arc<str> = Arc::from(u.as_str());
                    roles.insert(u.clone(), Role::Member);
                    recipients.push(u);
                }
                for u in &remove {
                    roles.remove(u.as_str());
                }
                self.set_members(roles);
                proto::encode_event(
                    "membership",
                    &proto::MembershipEvent::new(self.group_id(), &self.conv_id, m.seq, &add, &remove),
                )
            }
            Applied::Profile => {
                if let Some(g) = &group {
                    self.set_group(g);
                }
                group_event(self, "updated")
            }
            Applied::Roles(changes) => {
                let mut roles = self.roles.clone();
                for (u, r) in changes {
                    if let Some(slot) = roles.get_mut(u.as_str()) {
                        *slot = r;
                    }
                }
                self.set_members(roles);
                group_event(self, "roles")
            }
            Applied::Mutes { users, until, all } => {
                for u in users {
                    match until {
                        Some(t) => self.muted.insert(Arc::from(u.as_str()), t),
                        None => self.muted.remove(u.as_str()),
                    };
                }
                if let Some(all) = all {
                    self.mute_all = all;
                }
                group_event(self, "muted")
            }
            Applied::Dismissed => {
                // Nobody is a member any more; every later request gets `group_dismissed`.
                self.set_members(HashMap::new());
                self.state = State::Failed(dismissed());
                group_event(self, "dismissed")
            }
        };
        self.core.metrics.messages_in.fetch_add(1, Relaxed);
        self.ready.insert(
            m.seq,
            Pending::Local(Ready {
                members_seq: m.seq,
                message: m,
                origin,
                members: Arc::new(recipients),
                extra: vec![extra],
                reply: Some(tx),
                ack_group: group.map(Box::new),
            }),
        );
    }
}

impl Handler<AskGroupState> for ConversationActor {
    type Result = Result<GroupState>;

    fn handle(&mut self, msg: AskGroupState, _ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        self.check_ready()?;
        if self.kind != ConvKind::Group {
            return Err(Error::invalid("not a group conversation"));
        }
        let managers = self.roles.iter().filter(|(_, r)| r.can_manage()).map(|(u, _)| u.clone()).collect();
        Ok(GroupState {
            role: self.roles.get(&*msg.0).copied(),
            join_mode: self.join_mode,
            invite_mode: self.invite_mode,
            managers,
        })
    }
}
