//! The domain operations, shared by every transport.
//!
//! [`Engine`] is what the WebSocket session (and the HTTP API) call: one method per operation,
//! each checking the rules and then either asking the conversation actor (for anything that
//! changes a conversation's order: send, recall, membership) or the store (reads, read cursors,
//! flags). [`Engine::dispatch`] maps a parsed [`proto::Op`] to its method and encodes the reply.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, MailboxError};
use bytestring::ByteString;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::cluster::{PeerCommand, PeerDelivery};
use crate::conversation::{
    self, ConversationActor, Directory, Init, Membership, MembershipOp, Origin, PeerMessage, Recall, ReloadMembers,
    Submit,
};
use crate::error::{Error, ErrorCode, Result};
use crate::inflight::Slot;
use crate::metrics::Metrics;
use crate::model::{self, Body, ConvKind, Group, Member, Message, Role, UserConvState};
use crate::proto::{self, ConversationItem, Op};
use crate::registry::{Registry, Revocation};
use crate::store::{HistoryQuery, NewGroup, Store};

/// Limits and timings of the chat rules (from `[chat]` and `[groups]` in the configuration).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_text_chars: usize,
    pub recall_window: Duration,
    pub max_group_members: usize,
    /// Members served per fan-out step before the actor yields (500 by design).
    pub fanout_chunk: usize,
    /// An idle conversation actor stops after this long.
    pub idle_timeout: Duration,
    /// Mailbox capacity of a conversation actor; senders wait when it is full.
    pub conversation_mailbox: usize,
    /// Rate limits (`[limits]`).
    pub rates: crate::limits::RateConfig,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_chars: 5000,
            recall_window: Duration::from_secs(120),
            max_group_members: 10_000,
            fanout_chunk: 500,
            idle_timeout: Duration::from_secs(300),
            conversation_mailbox: 1024,
            rates: crate::limits::RateConfig::default(),
        }
    }
}

/// What every actor shares: the store, the local bus, metrics, limits and the actor directory.
pub struct Core {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    pub directory: Directory,
    /// Webhook hooks (outbox for presence events, `before_send`), set once at start-up.
    pub hooks: std::sync::OnceLock<crate::outbox::Hooks>,
    /// The cluster transport, set once at start-up when the node runs in a cluster.
    pub cluster: std::sync::OnceLock<Arc<dyn crate::cluster::Cluster>>,
    /// Presence events on their way to the outbox, written one at a time in order.
    presence: std::sync::Mutex<PresenceQueue>,
    /// Rate limits per user, for requests over WebSocket (see [`crate::limits`]).
    pub user_limits: crate::limits::UserLimits,
}

/// See [`Engine::presence`].
#[derive(Default)]
struct PresenceQueue {
    events: std::collections::VecDeque<crate::outbox::NewEvent>,
    /// A task is writing the queue's events.
    draining: bool,
}

/// Most presence events waiting for the outbox; beyond, new ones are dropped (and logged).
const PRESENCE_QUEUE: usize = 65_536;

impl Core {
    /// The cluster transport, if this node is part of a cluster.
    pub fn cluster(&self) -> Option<&Arc<dyn crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Queues a frame (not a message event: no order) on every session of `user`, except
    /// connection `except_conn` of this node, here and, in a cluster, on the other nodes.
    pub fn notify_user(&self, user: &Arc<str>, frame: &ByteString, except_conn: Option<u64>) {
        self.registry.send_to_user(user, frame, except_conn);
        if let Some(cluster) = self.cluster() {
            cluster.deliver(PeerDelivery {
                ordered: None,
                users: vec![user.clone()],
                frames: vec![frame.clone()],
                membership_changed: false,
            });
        }
    }

    /// Closes the sessions of `user` that lost access, on every node (disabled, or tokens
    /// revoked). Other nodes are told through the cluster; a node cut off from it re-checks its
    /// sessions' access when it is back (see [`Engine::recheck_access`]).
    pub fn close_user(&self, user: &str, r: Revocation) {
        self.registry.revoke(user, r);
        if let Some(cluster) = self.cluster() {
            cluster.broadcast(PeerCommand::CloseUser { user: user.to_owned(), revocation: r });
        }
    }
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: Arc<str>,
    pub device: Arc<str>,
    /// The WebSocket connection, when the request came over one.
    pub conn_id: Option<u64>,
}

/// The domain operations. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    core: Arc<Core>,
}

const DEFAULT_PAGE: usize = 50;

fn page(limit: Option<usize>) -> Result<usize> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=model::MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(Error::invalid(format!("limit must be 1 to {}", model::MAX_PAGE))),
    }
}

fn mailbox(e: MailboxError) -> Error {
    match e {
        MailboxError::Closed => Error::new(ErrorCode::Unavailable, "conversation actor stopped; retry"),
        MailboxError::Timeout => Error::new(ErrorCode::Unavailable, "conversation actor timed out"),
    }
}

/// How to start the actor of a conversation another node fanned a message of out: a one-to-one
/// conversation's recipients are its two participants (so the actor needs no read to know
/// them); a group is loaded.
fn peer_init(conv_id: &str, users: &[Arc<str>]) -> Init {
    match (model::conv_kind(conv_id), users) {
        (Ok(ConvKind::Direct), [a]) if model::direct_conv_id(a, a) == conv_id => {
            Init::Direct(a.to_string(), a.to_string())
        }
        (Ok(ConvKind::Direct), [a, b]) if model::direct_conv_id(a, b) == conv_id => {
            Init::Direct(a.to_string(), b.to_string())
        }
        _ => Init::Load,
    }
}

/// A group change request, as the transports hand it over.
enum GroupOp {
    Add(proto::GroupMembersReq),
    Remove(proto::GroupMembersReq),
    Leave(String),
    Update(proto::GroupUpdateReq),
    SetRole(proto::GroupSetRoleReq),
    Dismiss(String),
}

/// A page of history (the reply to `history`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct HistoryResult {
    pub messages: Vec<Message>,
    pub last_seq: u64,
    pub has_more: bool,
}

/// A page of the conversation list (the reply to `conversations`).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ConversationsResult {
    pub conversations: Vec<ConversationItem>,
    pub next_since: u64,
    pub has_more: bool,
}

#[derive(Serialize)]
struct ReadResult {
    read_seq: u64,
}

#[derive(Serialize)]
struct ReadCountResult {
    seq: u64,
    read: u64,
    total: u64,
}

#[derive(Serialize)]
struct GroupResult {
    group: Group,
}

#[derive(Serialize)]
struct MembersResult {
    members: Vec<Member>,
}

#[derive(Serialize)]
struct MessageResult {
    message: Message,
}

/// The reply to `group_update`, `group_set_role` and `group_dismiss`.
#[derive(Serialize)]
struct GroupChangeResult {
    group: Group,
    message: Message,
}

impl From<(Group, Message)> for GroupChangeResult {
    fn from((group, message): (Group, Message)) -> Self {
        Self { group, message }
    }
}

#[derive(Serialize)]
struct UsersResult {
    users: Vec<model::Profile>,
}

#[derive(Serialize)]
struct ProfileResult {
    user: model::Profile,
}

#[derive(Serialize)]
struct Pong {
    ts: i64,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        limits: Limits,
        directory: Directory,
    ) -> Self {
        Self {
            core: Arc::new(Core {
                store,
                registry,
                metrics,
                directory,
                hooks: Default::default(),
                cluster: Default::default(),
                presence: Default::default(),
                user_limits: crate::limits::UserLimits::new(&limits.rates),
                limits,
            }),
        }
    }

    /// Frames another node fanned out to users whose sessions are (or were) on this node.
    /// Message events go through the conversation's actor, which releases them in `seq` order
    /// with the messages stored here; everything else is queued on the sessions directly.
    pub fn deliver_from_peer(&self, d: PeerDelivery) {
        let PeerDelivery { ordered, users, frames, membership_changed } = d;
        let (users, frames) = match ordered {
            Some((conv_id, seq)) => match self.actor(&conv_id, peer_init(&conv_id, &users)) {
                Ok(addr) => match addr.try_send(PeerMessage { seq, users, frames, membership_changed }) {
                    Ok(()) => return,
                    // A full mailbox or a stopping actor: deliver now, unordered (clients
                    // recover any disorder with sync; nothing is lost).
                    Err(actix::prelude::SendError::Full(m) | actix::prelude::SendError::Closed(m)) => {
                        (m.users, m.frames)
                    }
                },
                Err(_) => (users, frames),
            },
            None => (users, frames),
        };
        for f in &frames {
            self.core.registry.fan_out(&users, f, None);
        }
    }

    /// A command another node broadcast.
    pub fn peer_command(&self, c: PeerCommand) {
        match c {
            PeerCommand::CloseUser { user, revocation } => {
                self.core.registry.revoke(&user, revocation);
            }
            PeerCommand::MembershipChanged { conv_id, seq } => {
                if let Some(addr) = self.core.directory.peek(&conv_id) {
                    addr.do_send(ReloadMembers(seq));
                }
            }
        }
    }

    /// Joins this node to a cluster (once; later calls are ignored).
    pub fn set_cluster(&self, cluster: Arc<dyn crate::cluster::Cluster>) {
        if self.core.cluster.set(cluster).is_err() {
            tracing::warn!("the cluster transport was already set");
        }
    }

    /// Installs the webhook hooks (once; later calls are ignored).
    pub fn set_hooks(&self, hooks: crate::outbox::Hooks) {
        if self.core.hooks.set(hooks).is_err() {
            tracing::warn!("webhook hooks were already set");
        }
    }

    /// A connection of `user` opened on this node (`first_here`: its first one here). On a single
    /// node that is `user.online` when it is the first; in a cluster the transport decides, for
    /// the whole cluster.
    pub fn session_opened(&self, user: &Arc<str>, device: &Arc<str>, conn_id: u64, first_here: bool) {
        match self.core.cluster() {
            Some(cluster) => cluster.session_opened(user, device, conn_id, first_here),
            None if first_here => self.presence(user, true),
            None => {}
        }
    }

    /// A connection of `user` on this node closed (`last_here`: its last one here); see
    /// [`Engine::session_opened`].
    pub fn session_closed(&self, user: &Arc<str>, device: &Arc<str>, conn_id: u64, last_here: bool) {
        match self.core.cluster() {
            Some(cluster) => cluster.session_closed(user, device, conn_id, last_here),
            None if last_here => self.presence(user, false),
            None => {}
        }
    }

    /// `user` came online (its first connection) or went offline (its last one closed): writes
    /// `user.online` / `user.offline` to the outbox when webhooks are on. Events are written one
    /// at a time, in the order of these calls, by one task; never fails the caller (a failed
    /// write is logged, and beyond [`PRESENCE_QUEUE`] waiting events new ones are dropped).
    pub fn presence(&self, user: &str, online: bool) {
        let Some(outbox) = self.core.hooks.get().and_then(|h| h.outbox.clone()) else {
            return;
        };
        let event = crate::outbox::NewEvent::presence(user, online, crate::conversation::now_ms());
        {
            let mut q = self.core.presence.lock().unwrap_or_else(|p| p.into_inner());
            if q.events.len() >= PRESENCE_QUEUE {
                tracing::warn!(%user, online, "too many presence events waiting for the outbox; dropped");
                return;
            }
            q.events.push_back(event);
            if q.draining {
                return;
            }
            q.draining = true;
        }
        let core = self.core.clone();
        let drain = async move {
            loop {
                let next = {
                    let mut q = core.presence.lock().unwrap_or_else(|p| p.into_inner());
                    match q.events.pop_front() {
                        Some(e) => e,
                        None => {
                            q.draining = false;
                            return;
                        }
                    }
                };
                if let Err(e) = outbox.push_event(next).await {
                    tracing::warn!(error = %e, "could not record a presence event for webhooks");
                }
            }
        };
        // On the main thread's runtime when there is one: a session's worker thread stops with
        // the server, before the events of its last sessions would be written.
        match actix::System::try_current() {
            Some(system) => {
                system.arbiter().spawn(drain);
            }
            None => {
                tokio::spawn(drain);
            }
        }
    }

    /// Waits (at most `within`) until every presence event queued so far was written (or failed).
    pub async fn presence_written(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            {
                let q = self.core.presence.lock().unwrap_or_else(|p| p.into_inner());
                if q.events.is_empty() && !q.draining {
                    return true;
                }
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.core.store
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.core.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.core.metrics
    }

    fn actor(&self, conv_id: &str, init: Init) -> Result<Addr<ConversationActor>> {
        self.core.directory.get(&self.core, conv_id, init)
    }

    /// The caller's active row in a conversation, or the right error.
    async fn access(&self, user: &str, conv_id: &str) -> Result<UserConvState> {
        match self.row(user, conv_id).await? {
            s if s.active => Ok(s),
            _ => Err(Error::not_member()),
        }
    }

    /// The caller's row in a conversation, active or not (a former member's), or the right error.
    async fn row(&self, user: &str, conv_id: &str) -> Result<UserConvState> {
        model::conv_kind(conv_id)?;
        match self.core.store.user_conv(user, conv_id).await? {
            Some(s) => Ok(s),
            None => match self.core.store.conversation(conv_id).await? {
                Some(_) => Err(Error::not_member()),
                None => Err(Error::not_found("no such conversation")),
            },
        }
    }

    /// Sends a message. The conversation actor is asked synchronously (before this returns), so
    /// requests from one connection reach it in the order they were made.
    pub fn send(
        &self,
        caller: &Caller,
        req: proto::SendReq,
        origin: Option<Origin>,
    ) -> impl std::future::Future<Output = Result<Message>> + 'static {
        // A client's sends count against its user's limit; the HTTP API (no connection) is trusted.
        let limited = match caller.conn_id {
            Some(_) => self.core.user_limits.sends.check(&caller.user, 1),
            None => Ok(()),
        };
        let hook = self.core.hooks.get().and_then(|h| h.before_send.clone());
        // Without a `before_send` hook the actor is asked right here (keeps a connection's order).
        let (prepared, checked) = match (limited, hook) {
            (Err(e), _) => (Some(Err(e)), None),
            (Ok(()), None) => (Some(self.prepare_send(caller, req, origin)), None),
            (Ok(()), Some(hook)) => (None, Some((hook, caller.clone(), req, origin))),
        };
        let engine = self.clone();
        async move {
            let prepared = match (prepared, checked) {
                (Some(p), _) => p,
                (None, Some((hook, caller, req, origin))) => {
                    let req = engine.before_send(&*hook, &caller, req).await?;
                    engine.prepare_send(&caller, req, origin)
                }
                (None, None) => Err(Error::internal("no send path")),
            };
            let (conv_id, init, submit, addr, first) = prepared?;
            match first.await {
                // The actor stopped (idle) between lookup and send: retry on a fresh one.
                Err(MailboxError::Closed) => {
                    engine.core.directory.forget(&conv_id, &addr);
                    engine.call(&conv_id, init, submit).await
                }
                other => other.map_err(mailbox)?,
            }
        }
    }

    /// Sends a message from the system account (`system` is the HTTP API's caller for
    /// `api.system_user`) to one user (`req.to`), without asking `before_send`: the backend
    /// wrote it, so there is nothing to moderate, and a hook that is down must not hold back the
    /// backend's own notifications. Otherwise exactly [`Engine::send`].
    pub async fn send_system_to_user(&self, system: &Caller, req: proto::SendReq) -> Result<Message> {
        if req.conv_id.is_some() || req.to.is_none() {
            return Err(Error::invalid("a system message to a user names the user (to), not a conversation"));
        }
        let (conv_id, init, submit, addr, first) = self.prepare_send(system, req, None)?;
        match first.await {
            // The actor stopped (idle) between lookup and send: retry on a fresh one.
            Err(MailboxError::Closed) => {
                self.core.directory.forget(&conv_id, &addr);
                self.call(&conv_id, init, submit).await
            }
            other => other.map_err(mailbox)?,
        }
    }

    /// Asks the `before_send` hook about a client message (after validating it) and applies
    /// its verdict: the request unchanged, with a rewritten (re-validated) body, or
    /// `message_rejected`.
    async fn before_send(
        &self,
        hook: &dyn crate::outbox::BeforeSend,
        caller: &Caller,
        mut req: proto::SendReq,
    ) -> Result<proto::SendReq> {
        use crate::outbox::{SendCheck, Verdict};
        model::validate_id("client_msg_id", &req.client_msg_id)?;
        let body = req.body.clone()?;
        body.validate_client(self.core.limits.max_text_chars)?;
        let conv_id = match (&req.conv_id, &req.to) {
            (Some(c), None) => {
                model::conv_kind(c)?;
                c.clone()
            }
            (None, Some(to)) => {
                model::validate_id("to", to)?;
                model::direct_conv_id(&caller.user, to)
            }
            _ => return Err(Error::invalid("exactly one of conv_id and to is required")),
        };
        let check = SendCheck {
            conv_id,
            sender: caller.user.to_string(),
            device: caller.device.to_string(),
            client_msg_id: req.client_msg_id.clone(),
            body,
            reply_to: req.reply_to,
        };
        match hook.check(&check).await? {
            Verdict::Accept => Ok(req),
            Verdict::Reject(reason) => Err(Error::new(ErrorCode::MessageRejected, reason)),
            Verdict::Rewrite(body) => {
                body.validate_client(self.core.limits.max_text_chars)?;
                req.body = Ok(body);
                Ok(req)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn prepare_send(
        &self,
        caller: &Caller,
        req: proto::SendReq,
        origin: Option<Origin>,
    ) -> Result<(String, Init, Submit, Addr<ConversationActor>, actix::dev::Request<ConversationActor, Submit>)> {
        model::validate_id("client_msg_id", &req.client_msg_id)?;
        let body = req.body?;
        body.validate_client(self.core.limits.max_text_chars)?;
        let (conv_id, init) = match (req.conv_id, req.to) {
            (Some(c), None) => {
                model::conv_kind(&c)?;
                (c, Init::Load)
            }
            (None, Some(to)) => {
                model::validate_id("to", &to)?;
                (model::direct_conv_id(&caller.user, &to), Init::Direct(caller.user.to_string(), to))
            }
            _ => return Err(Error::invalid("exactly one of conv_id and to is required")),
        };
        let submit = Submit {
            sender: Some(caller.user.clone()),
            client_msg_id: Some(req.client_msg_id),
            body,
            reply_to: req.reply_to,
            origin,
        };
        let addr = self.actor(&conv_id, init.clone())?;
        let first = addr.send(submit.clone());
        Ok((conv_id, init, submit, addr, first))
    }

    /// Sends a system message (server-generated) into a conversation.
    pub async fn send_system(&self, conv_id: &str, event: &str, data: serde_json::Value) -> Result<Message> {
        self.send_system_keyed(conv_id, event, data, None).await
    }

    /// Sends a system message with an idempotency key, unique among system messages: a re-send
    /// with the same key returns the message stored first.
    pub async fn send_system_keyed(
        &self,
        conv_id: &str,
        event: &str,
        data: serde_json::Value,
        client_msg_id: Option<String>,
    ) -> Result<Message> {
        if let Some(k) = &client_msg_id {
            model::validate_id("client_msg_id", k)?;
        }
        let submit = Submit {
            sender: None,
            client_msg_id,
            body: Body::System { event: event.into(), data },
            reply_to: None,
            origin: None,
        };
        self.call(conv_id, Init::Load, submit).await
    }

    /// Asks a conversation actor, retrying on a fresh actor if the one found was stopping.
    async fn call<M>(&self, conv_id: &str, init: Init, msg: M) -> Result<Message>
    where
        M: actix::Message<Result = Result<Message>> + Clone + Send + 'static,
        ConversationActor: actix::Handler<M>,
    {
        for _ in 0..4 {
            let addr = self.actor(conv_id, init.clone())?;
            match addr.send(msg.clone()).await {
                Ok(r) => return r,
                Err(MailboxError::Closed) => self.core.directory.forget(conv_id, &addr),
                Err(e) => return Err(mailbox(e)),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(mailbox(MailboxError::Closed))
    }

    /// A page of history. A former member (removed, left, or the group was dismissed) reads it up
    /// to the message that recorded their leaving, and no further.
    pub async fn history(&self, caller: &Caller, req: proto::HistoryReq) -> Result<HistoryResult> {
        page(req.limit)?;
        let state = self.row(&caller.user, &req.conv_id).await?;
        let former = (!state.active).then_some(&state);
        self.history_of(Some(&caller.user), req, former).await
    }

    /// History as an administrator sees it (the HTTP integration API without `as_user`): no
    /// membership check and no per-user deletions; the conversation must exist.
    pub async fn history_admin(&self, req: proto::HistoryReq) -> Result<HistoryResult> {
        page(req.limit)?;
        model::conv_kind(&req.conv_id)?;
        if self.core.store.conversation(&req.conv_id).await?.is_none() {
            return Err(Error::not_found("no such conversation"));
        }
        self.history_of(None, req, None).await
    }

    /// History as `viewer` sees it (`None`: an administrator); `former`: the viewer's row when
    /// they are no longer a member, which caps what they see.
    async fn history_of(
        &self,
        viewer: Option<&str>,
        req: proto::HistoryReq,
        former: Option<&UserConvState>,
    ) -> Result<HistoryResult> {
        let limit = page(req.limit)?;
        for (name, v) in [("before", req.before), ("after", req.after)] {
            if let Some(v) = v {
                model::validate_cursor(name, v)?;
            }
        }
        // A former member's view ends where they left: read that bound first.
        let cap = match former {
            Some(state) => {
                let last = self.core.store.conversation(&req.conv_id).await?.map(|c| c.last_seq).unwrap_or(0);
                Some(state.visible_upto(last))
            }
            None => None,
        };
        let q = match (req.before, req.after, cap) {
            (None, None, None) => HistoryQuery::Latest { limit },
            (None, None, Some(cap)) => HistoryQuery::Before { seq: cap + 1, limit },
            (Some(seq), None, cap) => HistoryQuery::Before { seq: cap.map_or(seq, |c| seq.min(c + 1)), limit },
            (None, Some(seq), _) => HistoryQuery::After { seq, limit },
            (Some(_), Some(_), _) => return Err(Error::invalid("give at most one of before and after")),
        };
        let mut messages = self.core.store.history(&req.conv_id, viewer, q).await?;
        let last_seq = match cap {
            Some(cap) => {
                messages.retain(|m| m.seq <= cap);
                cap
            }
            None => self.core.store.conversation(&req.conv_id).await?.map(|c| c.last_seq).unwrap_or(0),
        };
        let has_more = match q {
            HistoryQuery::After { seq, .. } => messages.last().map(|m| m.seq).unwrap_or(seq) < last_seq,
            HistoryQuery::Before { seq, .. } => messages.first().map(|m| m.seq).unwrap_or(seq.min(last_seq + 1)) > 1,
            HistoryQuery::Latest { .. } => messages.first().map(|m| m.seq > 1).unwrap_or(false),
        };
        Ok(HistoryResult { messages, last_seq, has_more })
    }

    pub async fn conversations(&self, caller: &Caller, req: proto::ConversationsReq) -> Result<ConversationsResult> {
        let limit = page(req.limit)?;
        model::validate_cursor("since", req.since)?;
        // One more than asked, so `has_more` is exact.
        let mut views = self.core.store.list_conversations(&caller.user, req.since, limit + 1).await?;
        let has_more = views.len() > limit;
        views.truncate(limit);
        let next_since = views.iter().map(|v| v.cursor()).max().unwrap_or(req.since);
        Ok(ConversationsResult {
            conversations: views.into_iter().map(ConversationItem::from).collect(),
            next_since,
            has_more,
        })
    }

    /// The user's total unread count: the sum over all their conversations (paging through the
    /// whole list), and how many conversations have unread messages.
    pub async fn unread_total(&self, user: &str) -> Result<(u64, u64)> {
        model::validate_id("user", user)?;
        let (mut total, mut conversations, mut since) = (0u64, 0u64, 0u64);
        loop {
            let views = self.core.store.list_conversations(user, since, model::MAX_PAGE).await?;
            for v in &views {
                let n = v.unread();
                total += n;
                conversations += u64::from(n > 0);
            }
            let next = views.iter().map(|v| v.cursor()).max().unwrap_or(since);
            if views.len() < model::MAX_PAGE || next <= since {
                return Ok((total, conversations));
            }
            since = next;
        }
    }

    pub async fn conversation(&self, caller: &Caller, conv_id: &str) -> Result<ConversationItem> {
        model::conv_kind(conv_id)?;
        match self.core.store.conversation_view(&caller.user, conv_id).await? {
            Some(v) => Ok(v.into()),
            None => Err(Error::not_found("no such conversation")),
        }
    }

    /// Moves the caller's read cursor forward and tells their other devices and, one-to-one,
    /// the other participant (a read receipt).
    pub async fn read(&self, caller: &Caller, req: proto::ReadReq) -> Result<impl Serialize> {
        let state = self.access(&caller.user, &req.conv_id).await?;
        self.settle_hidden(&caller.user, &req.conv_id, &state).await?;
        let Some(new) = self.core.store.mark_read(&caller.user, &req.conv_id, req.seq).await? else {
            return Ok(ReadResult { read_seq: state.read_seq });
        };
        let frame = proto::encode_event(
            "read",
            &proto::ReadEvent { conv_id: &req.conv_id, user_id: &caller.user, read_seq: new.read_seq },
        );
        self.core.notify_user(&caller.user, &frame, caller.conn_id);
        if model::conv_kind(&req.conv_id)? == ConvKind::Direct {
            if let Some(conv) = self.core.store.conversation(&req.conv_id).await? {
                for peer in conv.members.iter().filter(|m| **m != *caller.user) {
                    self.core.notify_user(&Arc::from(peer.as_str()), &frame, None);
                }
            }
        }
        Ok(ReadResult { read_seq: new.read_seq })
    }

    /// Whether the row is flagged hidden but something newer than the hiding has happened in the
    /// conversation (which shows it again; see `ConversationItem`).
    async fn hiding_ended(&self, conv_id: &str, state: &UserConvState) -> Result<bool> {
        if !state.hidden {
            return Ok(false);
        }
        Ok(self.core.store.conversation(conv_id).await?.is_some_and(|c| c.ver >= state.ver))
    }

    /// The store keeps one `ver` per row, and `hidden` holds while the row's `ver` is newer than
    /// the conversation's. Before a write that bumps the row (a read, a deletion), a hiding that a
    /// newer message already ended is cleared for good, or the bump would bring it back.
    async fn settle_hidden(&self, user: &str, conv_id: &str, state: &UserConvState) -> Result<()> {
        if self.hiding_ended(conv_id, state).await? {
            let patch = model::FlagsPatch { hidden: Some(false), ..Default::default() };
            self.core.store.set_flags(user, conv_id, patch).await?;
        }
        Ok(())
    }

    /// How many members other than the sender have read up to `seq`.
    pub async fn read_count(&self, caller: &Caller, req: proto::SeqReq) -> Result<impl Serialize> {
        self.access(&caller.user, &req.conv_id).await?;
        let msg =
            self.core.store.message(&req.conv_id, req.seq).await?.ok_or_else(|| Error::not_found("no such message"))?;
        let cursors = self.core.store.read_cursors(&req.conv_id).await?;
        let others = cursors.iter().filter(|(u, _)| Some(u.as_str()) != msg.sender.as_deref());
        let (mut read, mut total) = (0, 0);
        for (_, r) in others {
            total += 1;
            if *r >= req.seq {
                read += 1;
            }
        }
        Ok(ReadCountResult { seq: req.seq, read, total })
    }

    pub async fn recall(&self, caller: &Caller, req: proto::SeqReq) -> Result<Message> {
        model::conv_kind(&req.conv_id)?;
        self.call(&req.conv_id, Init::Load, Recall { by: caller.user.clone(), seq: req.seq, admin: false }).await
    }

    /// An administrative recall (the HTTP integration API): any message, at any time, recorded
    /// as recalled by `by` (who need not be a member). Members' devices get the same `recall`
    /// event as for any recall.
    pub async fn recall_admin(&self, by: &str, conv_id: &str, seq: u64) -> Result<Message> {
        model::conv_kind(conv_id)?;
        model::validate_id("by", by)?;
        self.call(conv_id, Init::Load, Recall { by: Arc::from(by), seq, admin: true }).await
    }

    pub async fn delete(&self, caller: &Caller, req: proto::DeleteReq) -> Result<impl Serialize> {
        if req.seqs.is_empty() || req.seqs.len() > model::MAX_PAGE {
            return Err(Error::invalid(format!("seqs must hold 1 to {} entries", model::MAX_PAGE)));
        }
        let state = self.access(&caller.user, &req.conv_id).await?;
        // Count and announce each existing message once (seqs are contiguous from 1).
        let last_seq = self.core.store.conversation(&req.conv_id).await?.map(|c| c.last_seq).unwrap_or(0);
        let mut seqs = req.seqs;
        seqs.sort_unstable();
        seqs.dedup();
        seqs.retain(|s| (1..=last_seq).contains(s));
        if !seqs.is_empty() {
            self.settle_hidden(&caller.user, &req.conv_id, &state).await?;
            self.core.store.delete_for_user(&caller.user, &req.conv_id, &seqs).await?;
            let frame = proto::encode_event("deleted", &proto::DeletedEvent { conv_id: &req.conv_id, seqs: &seqs });
            self.core.notify_user(&caller.user, &frame, caller.conn_id);
        }
        Ok(serde_json::json!({ "deleted": seqs.len() }))
    }

    /// Recalls and the caller's deletions since a version. A former member hears only of what
    /// they could see (messages up to their leaving).
    pub async fn changes(&self, caller: &Caller, req: proto::ChangesReq) -> Result<impl Serialize> {
        model::validate_cursor("since", req.since)?;
        let state = self.row(&caller.user, &req.conv_id).await?;
        let mut changes = self.core.store.changes(&caller.user, &req.conv_id, req.since).await?;
        if !state.active {
            let last = self.core.store.conversation(&req.conv_id).await?.map(|c| c.last_seq).unwrap_or(0);
            let cap = state.visible_upto(last);
            changes.recalled.retain(|&seq| seq <= cap);
        }
        Ok(changes)
    }

    pub async fn set_flags(&self, caller: &Caller, req: proto::SetFlagsReq) -> Result<ConversationItem> {
        model::conv_kind(&req.conv_id)?;
        let mut patch = req.patch();
        if patch.pinned.is_none() && patch.muted.is_none() && patch.hidden.is_none() {
            return Err(Error::invalid("give at least one of pinned, muted, hidden"));
        }
        let Some(state) = self.core.store.user_conv(&caller.user, &req.conv_id).await? else {
            return Err(Error::not_found("no such conversation"));
        };
        if patch.hidden.is_none() && self.hiding_ended(&req.conv_id, &state).await? {
            patch.hidden = Some(false);
        }
        self.core.store.set_flags(&caller.user, &req.conv_id, patch).await?;
        let item = self.conversation(caller, &req.conv_id).await?;
        let frame = proto::encode_event("conversation", &item);
        self.core.notify_user(&caller.user, &frame, caller.conn_id);
        Ok(item)
    }

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
        let mut data = serde_json::json!({ "by": &*caller.user, "name": name });
        proto::put_list(&mut data, "members", &members);
        let body = Body::System { event: "group_created".into(), data };
        let new = NewGroup {
            id: id.clone(),
            name,
            owner: caller.user.to_string(),
            members: members.clone(),
            ts: conversation::now_ms(),
            system_body: body,
        };
        let (group, msg) = self.core.store.create_group(new).await.map_err(|e| match Error::from(e) {
            e if e.code == ErrorCode::Conflict => Error::new(ErrorCode::Conflict, "a group with this id exists"),
            e => e,
        })?;
        self.core.directory.evict(&model::group_conv_id(&id));
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
    async fn membership(
        &self,
        caller: &Caller,
        group_id: &str,
        op: MembershipOp,
        origin: Option<Origin>,
    ) -> Result<Message> {
        model::validate_id("group_id", group_id)?;
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

    fn check_users(users: &[String]) -> Result<()> {
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

    /// Checks a group change request and runs it through the group's actor (see
    /// [`Engine::membership`] for `origin`). Users a WebSocket client adds count against its
    /// user's limit.
    async fn group_op(&self, caller: &Caller, op: GroupOp, origin: Option<Origin>) -> Result<Message> {
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
        };
        self.membership(caller, &group_id, op, origin).await
    }

    // ---- users ----

    /// Refuses a user who was disabled, or a token issued (`issued_ms`, unix ms) before the
    /// user's tokens were revoked. Users without a record pass.
    pub async fn check_access(&self, user: &str, issued_ms: Option<u64>) -> Result<()> {
        let u = self.core.store.user(user).await?;
        access_of(u.as_ref(), issued_ms)
    }

    /// Re-reads the access of every user with a session on this node and closes the sessions
    /// that lost it. A node runs this when its cluster bus comes back after being cut off: a
    /// disable or revocation broadcast meanwhile may never have reached it. Reads 100 users at a
    /// time; a read that fails is logged and the users it covered are left as they are.
    pub async fn recheck_access(&self) -> usize {
        let users = self.core.registry.users();
        let mut closed = 0;
        for chunk in users.chunks(model::MAX_PROFILE_LOOKUP) {
            let ids: Vec<String> = chunk.iter().map(|u| u.to_string()).collect();
            match self.core.store.users(&ids).await {
                Ok(records) => {
                    for u in records {
                        let r = if u.disabled {
                            Revocation::Disabled
                        } else {
                            match u.revoked_before_ms() {
                                0 => continue,
                                before => Revocation::TokensBefore(Some(before)),
                            }
                        };
                        closed += self.core.registry.revoke(&u.id, r);
                    }
                }
                Err(e) => tracing::warn!(error = %e, users = ids.len(), "could not re-check users' access"),
            }
        }
        if closed > 0 {
            tracing::info!(sessions = closed, "closed sessions that lost access while this node was cut off");
        }
        closed
    }

    /// Profiles of up to 100 users; users without a profile are left out.
    pub async fn users_get(&self, ids: &[String]) -> Result<Vec<model::Profile>> {
        if ids.is_empty() || ids.len() > model::MAX_PROFILE_LOOKUP {
            return Err(Error::invalid(format!("ids must hold 1 to {} user ids", model::MAX_PROFILE_LOOKUP)));
        }
        ids.iter().try_for_each(|u| model::validate_id("ids[]", u))?;
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        let mut users = self.core.store.users(&ids).await?;
        users.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(users.iter().map(model::User::profile).collect())
    }

    /// Creates a user's record or changes its profile (validated).
    pub async fn user_upsert(&self, patch: model::UserPatch) -> Result<model::User> {
        patch.validate()?;
        Ok(self.core.store.upsert_user(patch).await?)
    }

    /// The caller changes their own profile.
    pub async fn profile_update(&self, caller: &Caller, req: proto::ProfileUpdateReq) -> Result<model::Profile> {
        if req.nickname.is_none() && req.avatar.is_none() && req.ext.is_none() {
            return Err(Error::invalid("give at least one of nickname, avatar, ext"));
        }
        let patch = model::UserPatch {
            id: caller.user.to_string(),
            nickname: req.nickname.map(|n| n.trim().to_string()),
            avatar: req.avatar,
            ext: req.ext,
            ts: conversation::now_ms(),
        };
        Ok(self.user_upsert(patch).await?.profile())
    }

    /// Disables or enables a user. Disabling closes the user's sessions on every node.
    pub async fn user_set_disabled(&self, user: &str, disabled: bool) -> Result<model::User> {
        model::validate_id("user", user)?;
        let u = self.core.store.set_user_disabled(user, disabled, conversation::now_ms()).await?;
        if disabled {
            self.core.close_user(user, Revocation::Disabled);
        }
        Ok(u)
    }

    /// Revokes every token issued to the user so far (to the millisecond: a token issued in the
    /// same millisecond as the revocation is revoked too) and closes the sessions that hold one,
    /// on every node.
    pub async fn user_revoke_tokens(&self, user: &str) -> Result<model::User> {
        model::validate_id("user", user)?;
        let now = conversation::now_ms();
        let before = u64::try_from(now).unwrap_or(0) + 1;
        let u = self.core.store.revoke_tokens(user, before, now).await?;
        self.core.close_user(user, Revocation::TokensBefore(Some(u.revoked_before_ms())));
        Ok(u)
    }

    async fn group_access(&self, caller: &Caller, group_id: &str) -> Result<()> {
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
    async fn former_member_of_dismissed(&self, caller: &Caller, group_id: &str) -> Result<Option<Group>> {
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

    /// Runs one request and encodes its reply. Returns `None` when the reply was already queued
    /// on the connection by the conversation actor (a successful WebSocket `send` or group
    /// change). `slot` is the request's slot on its connection: whoever queues the reply frees
    /// it first.
    pub async fn dispatch(
        &self,
        caller: Caller,
        id: Box<RawValue>,
        op: Op,
        slot: Option<Arc<Slot>>,
    ) -> Option<ByteString> {
        let metrics = self.core.metrics.clone();
        let enc = |id: &RawValue, r: Result<_>| -> Option<ByteString> {
            Some(match r {
                Ok(v) => v,
                Err(e) => {
                    metrics.request_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if e.code == ErrorCode::RateLimited {
                        metrics.rate_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    proto::encode_error(Some(id), &e)
                }
            })
        };
        fn ok<T: Serialize>(id: &RawValue, r: Result<T>) -> Result<ByteString> {
            r.map(|v| proto::encode_result(id, &v))
        }
        let origin =
            caller.conn_id.map(|conn_id| Origin { user: caller.user.clone(), conn_id, req_id: id.clone(), slot });
        // A change through a conversation actor: with an origin, the actor queued the reply.
        let acked = |r: Result<Message>, encode: fn(Message) -> MessageResult| match (r, &origin) {
            (Ok(_), Some(_)) => None,
            (Ok(m), None) => enc(&id, ok(&id, Ok(encode(m)))),
            (Err(e), _) => enc(&id, Err(e)),
        };
        let message = |message| MessageResult { message };
        match op {
            Op::Ping(_) => enc(&id, ok(&id, Ok(Pong { ts: conversation::now_ms() }))),
            Op::Send(req) => acked(self.send(&caller, req, origin.clone()).await, message),
            Op::History(req) => enc(&id, ok(&id, self.history(&caller, req).await)),
            Op::Conversations(req) => enc(&id, ok(&id, self.conversations(&caller, req).await)),
            Op::Conversation(req) => enc(&id, ok(&id, self.conversation(&caller, &req.conv_id).await)),
            Op::Read(req) => enc(&id, ok(&id, self.read(&caller, req).await)),
            Op::ReadCount(req) => enc(&id, ok(&id, self.read_count(&caller, req).await)),
            Op::Recall(req) => enc(&id, ok(&id, self.recall(&caller, req).await.map(message))),
            Op::Delete(req) => enc(&id, ok(&id, self.delete(&caller, req).await)),
            Op::Changes(req) => enc(&id, ok(&id, self.changes(&caller, req).await)),
            Op::SetFlags(req) => enc(&id, ok(&id, self.set_flags(&caller, req).await)),
            Op::GroupCreate(req) => {
                enc(&id, ok(&id, self.group_create(&caller, req).await.map(|group| GroupResult { group })))
            }
            Op::GroupAdd(req) => acked(self.group_op(&caller, GroupOp::Add(req), origin.clone()).await, message),
            Op::GroupRemove(req) => acked(self.group_op(&caller, GroupOp::Remove(req), origin.clone()).await, message),
            Op::GroupLeave(req) => {
                acked(self.group_op(&caller, GroupOp::Leave(req.group_id), origin.clone()).await, message)
            }
            Op::GroupMembers(req) => enc(
                &id,
                ok(&id, self.group_members(&caller, &req.group_id).await.map(|members| MembersResult { members })),
            ),
            Op::GroupInfo(req) => {
                enc(&id, ok(&id, self.group_info(&caller, &req.group_id).await.map(|group| GroupResult { group })))
            }
            Op::GroupUpdate(req) => match &origin {
                Some(_) => acked(self.group_op(&caller, GroupOp::Update(req), origin.clone()).await, message),
                None => enc(&id, ok(&id, self.group_update(&caller, req).await.map(GroupChangeResult::from))),
            },
            Op::GroupSetRole(req) => match &origin {
                Some(_) => acked(self.group_op(&caller, GroupOp::SetRole(req), origin.clone()).await, message),
                None => enc(&id, ok(&id, self.group_set_role(&caller, req).await.map(GroupChangeResult::from))),
            },
            Op::GroupDismiss(req) => match &origin {
                Some(_) => acked(self.group_op(&caller, GroupOp::Dismiss(req.group_id), origin.clone()).await, message),
                None => {
                    enc(&id, ok(&id, self.group_dismiss(&caller, &req.group_id).await.map(GroupChangeResult::from)))
                }
            },
            Op::UsersGet(req) => enc(&id, ok(&id, self.users_get(&req.ids).await.map(|users| UsersResult { users }))),
            Op::ProfileUpdate(req) => {
                enc(&id, ok(&id, self.profile_update(&caller, req).await.map(|user| ProfileResult { user })))
            }
            // The session answers `refresh` itself (it changes the connection's token).
            Op::Refresh(_) => enc(&id, Err(Error::invalid("refresh is answered by the WebSocket session"))),
        }
    }
}

/// Whether a user with record `u` may use a token issued at `issued_ms` (unix ms; `None`: only
/// whether the user is enabled).
pub fn access_of(u: Option<&model::User>, issued_ms: Option<u64>) -> Result<()> {
    let Some(u) = u else { return Ok(()) };
    if u.disabled {
        return Err(Error::new(ErrorCode::UserDisabled, "this user is disabled"));
    }
    if issued_ms.is_some_and(|t| t < u.revoked_before_ms()) {
        return Err(Error::new(ErrorCode::TokenRevoked, "this token was revoked; get a new one"));
    }
    Ok(())
}

fn role_rank(r: Role) -> u8 {
    match r {
        Role::Owner => 0,
        Role::Admin => 1,
        Role::Member => 2,
    }
}

/// A random 16-hex-digit id (from the standard library's randomly seeded hasher).
pub fn random_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(conversation::now_ms());
    format!("{:016x}", h.finish())
}
