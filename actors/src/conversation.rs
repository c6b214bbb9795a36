//! The conversation actor: one per active conversation (group or one-to-one).
//!
//! It holds the membership in memory, serialises every change to the conversation (sends,
//! recalls, membership changes) and fans each stored message out to the members' sessions.
//!
//! Ordering: appends are pipelined to the store (which assigns `seq` in submission order and
//! commits in groups). Results may come back in any order, so they wait in `ready`, keyed by `seq`,
//! and are released strictly in `seq` order into `jobs`, a FIFO of fan-outs. A job is delivered in
//! chunks of `fanout_chunk` members (500); between chunks the actor yields to its mailbox so other
//! work interleaves, and the next job starts only when the previous one is done, so every device
//! sees a conversation's messages in `seq` order. The sending device gets its acknowledgement at
//! the point in that order where the message event would have been.
//!
//! Idle actors stop after `idle_timeout` and are re-created on demand by the [`Directory`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::cluster::{PeerCommand, PeerDelivery};
use crate::engine::Core;
use crate::error::StoreError;
use crate::error::{Error, ErrorCode, Result};
use crate::inflight::Slot;
use crate::model::{self, Body, ConvKind, Group, GroupPatch, Message, ReplyRef, Role};
use crate::proto;
use crate::registry::RecipientCache;
use crate::store::{
    Appended, GroupDismiss, GroupUpdate, HistoryQuery, MemberChange, NewMessage, RoleChange, StoreResult,
};

/// A store write, boxed so the actor can hand it to [`ConversationActor::store_write`].
type StoreFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = StoreResult<T>> + Send>>;

/// Where a request came from, so its acknowledgement can be queued on that connection in order.
#[derive(Debug, Clone)]
pub struct Origin {
    pub user: Arc<str>,
    pub conn_id: u64,
    pub req_id: Box<RawValue>,
    /// The request's slot on its connection: freed just before the acknowledgement is queued.
    pub slot: Option<Arc<Slot>>,
}

impl Origin {
    /// Queues `frame` (the request's reply) on the requesting connection, freeing its slot first.
    fn reply(&self, core: &Core, frame: &ByteString) {
        if let Some(slot) = &self.slot {
            slot.free();
        }
        core.registry.send_to_conn(&self.user, self.conn_id, frame);
    }
}

/// Append a message. Replies once the message is durable and its fan-out has begun.
#[derive(Debug, Clone)]
pub struct Submit {
    /// `None` for system messages sent by the server itself.
    pub sender: Option<Arc<str>>,
    pub client_msg_id: Option<String>,
    pub body: Body,
    pub reply_to: Option<u64>,
    pub origin: Option<Origin>,
}

impl actix::Message for Submit {
    type Result = Result<Message>;
}

/// Recall a message.
#[derive(Debug, Clone)]
pub struct Recall {
    pub by: Arc<str>,
    pub seq: u64,
    /// An administrative recall (the HTTP integration API): `by` need not be a member, and
    /// neither the sender rule nor the recall window applies.
    pub admin: bool,
}

impl actix::Message for Recall {
    type Result = Result<Message>;
}

/// What a membership request does.
#[derive(Debug, Clone)]
pub enum MembershipOp {
    Add(Vec<String>),
    Remove(Vec<String>),
    Leave,
    /// Change the group's profile (owner or admins). The patch is validated by the caller.
    Update(GroupPatch),
    /// Give a member the role `Admin` or `Member` (owner only); `Owner` transfers the ownership
    /// (the previous owner becomes an admin).
    SetRole(String, Role),
    /// Dismiss the group (owner only).
    Dismiss,
}

/// The error every request to a dismissed group gets.
pub fn dismissed() -> Error {
    Error::new(ErrorCode::GroupDismissed, "the group was dismissed")
}

/// What a stored membership change did, for updating the cached membership.
enum Applied {
    Members { add: Vec<String>, remove: Vec<String> },
    Profile,
    Roles(Vec<(String, Role)>),
    Dismissed,
}

/// Change a group's membership, profile or roles, or dismiss it. Replies with the system message
/// recording it. With an `origin`, the requesting connection gets its reply (the system message,
/// and the group for profile, role and dismissal changes) queued in the conversation's order
/// instead of the `message` event, as a send's acknowledgement is.
#[derive(Debug, Clone)]
pub struct Membership {
    pub by: Arc<str>,
    pub op: MembershipOp,
    pub origin: Option<Origin>,
}

impl actix::Message for Membership {
    type Result = Result<Message>;
}

/// Internal: an append of this actor's came back from the store.
struct AppendDone {
    res: StoreResult<Appended>,
    origin: Option<Origin>,
    members: Arc<Vec<Arc<str>>>,
    reply: oneshot::Sender<Result<Message>>,
    members_seq: u64,
}

impl actix::Message for AppendDone {
    type Result = ();
}

/// Internal: deliver the next chunk of the head fan-out job.
struct FanoutTick;

impl actix::Message for FanoutTick {
    type Result = ();
}

/// Internal: release what [`PeerMessage`]s brought, once the mailbox has been drained. Messages
/// of another node arrive in bursts (one publish each, several per round trip); releasing them
/// together queues their frames before the writers are woken, so each connection writes them at
/// once instead of once per message.
struct ReleasePeers;

impl actix::Message for ReleasePeers {
    type Result = ();
}

/// A message of this conversation that another node stored and fanned out: its frames, for
/// these recipients' sessions on this node. Released in `seq` order with the local ones.
#[derive(Debug, Clone)]
pub struct PeerMessage {
    pub seq: u64,
    pub users: Vec<Arc<str>>,
    pub frames: Vec<ByteString>,
    /// The message changed the membership: reload it before releasing later messages.
    pub membership_changed: bool,
}

impl actix::Message for PeerMessage {
    type Result = ();
}

/// Another node changed this group's membership or roles with the message `seq` (0: unknown):
/// reload them from the store.
#[derive(Debug, Clone, Copy)]
pub struct ReloadMembers(pub u64);

impl actix::Message for ReloadMembers {
    type Result = ();
}

/// How long a gap in `seq` (a message another node stored) may wait for that node's fan-out
/// before the missing messages are read back from the store (not at all while the bus is down).
const GAP_WAIT: Duration = Duration::from_millis(100);

/// Gap fills that may miss before a gap is stepped over (about 5 s with [`GAP_WAIT`]).
const GAP_FILL_TRIES: u32 = 50;

/// The system events that change a group's membership or roles.
fn changes_membership(m: &Message) -> bool {
    matches!(&m.body, Body::System { event, .. } if matches!(event.as_str(),
        "members_added" | "members_removed" | "member_left" | "roles_changed" | "group_dismissed"))
}

/// How the actor knows its members before it has loaded.
#[derive(Debug, Clone)]
pub enum Init {
    /// A one-to-one conversation between these users (created on first message if needed).
    Direct(String, String),
    /// An existing conversation, loaded from the store.
    Load,
}

/// A stored message waiting for its turn to be fanned out.
struct Ready {
    message: Message,
    origin: Option<Origin>,
    /// Recipients, as of when the message was submitted.
    members: Arc<Vec<Arc<str>>>,
    /// Frames sent to the same recipients right after the message (e.g. `membership`).
    extra: Vec<ByteString>,
    reply: Option<oneshot::Sender<Result<Message>>>,
    /// `members_seq` of the actor when `members` was taken.
    members_seq: u64,
    /// For a group change, the group as changed: the origin's reply is `{group, message}`
    /// rather than `{message}`.
    ack_group: Option<Box<Group>>,
}

/// A message waiting in `ready` for its turn, by where it came from.
enum Pending {
    /// Stored by this actor: fanned out to every member, on this node and (in a cluster) others.
    Local(Ready),
    /// Stored and fanned out by another node: for this node's sessions of `users` only.
    Peer { users: Vec<Arc<str>>, frames: Vec<ByteString>, membership_changed: bool },
    /// Stored by another node whose fan-out did not arrive in time: read back from the store,
    /// for this node's sessions of the current members only.
    Fetched(Message),
}

/// A fan-out in progress.
struct Job {
    /// The message's `seq` (0 for frames that are not a message event, such as acks and recalls).
    seq: u64,
    /// Deliver on this node only (the message came from another node, or is an ack).
    local_only: bool,
    /// The message changed the membership (other nodes reload theirs).
    membership_changed: bool,
    frames: Vec<ByteString>,
    members: Arc<Vec<Arc<str>>>,
    next: usize,
    /// For the message event only: the sending device, which gets the ack instead.
    skip: Option<(Arc<str>, u64)>,
    /// Deliver only to this connection of the member(s) (acknowledgements).
    only_conn: Option<u64>,
    /// For an acknowledgement: the request's slot, freed just before the ack is queued.
    slot: Option<Arc<Slot>>,
    started: Instant,
    /// The first frame is a message event (counted as deliveries, timed as a fan-out).
    delivery: bool,
}

enum State {
    Loading,
    Ready,
    Failed(Error),
}

pub struct ConversationActor {
    core: Arc<Core>,
    conv_id: Arc<str>,
    kind: ConvKind,
    init: Init,
    state: State,
    /// Members and their roles (one-to-one participants have role `member`).
    roles: HashMap<Arc<str>, Role>,
    /// The same members as a list, shared with fan-out jobs; replaced, never mutated.
    members: Arc<Vec<Arc<str>>>,
    /// The `seq` as of which `members` is known (the last membership change applied, or the
    /// `last_seq` loaded).
    members_seq: u64,
    /// The next `seq` to fan out.
    next_fanout: u64,
    /// Appends sent to the store and not yet answered.
    inflight: usize,
    ready: BTreeMap<u64, Pending>,
    /// Nothing was released since the actor loaded: a message from another node older than the
    /// loaded `last_seq` is still new to this node's sessions.
    fresh: bool,
    /// A gap fill is scheduled or running.
    gap_fill: bool,
    /// Gap fills in a row that did not find every missing message.
    gap_misses: u32,
    /// The last message released was another node's (this `seq`): more chunks of its fan-out
    /// may still arrive, and go out at once.
    last_peer_release: Option<u64>,
    /// A [`ReleasePeers`] is queued.
    peer_release_scheduled: bool,
    /// The recipients of the last message of another node released here, shared by the next
    /// ones with the same recipients so [`RecipientCache`] keeps their sessions resolved.
    peer_members: Arc<Vec<Arc<str>>>,
    /// The membership is being reloaded; releasing waits for it.
    reloading: bool,
    jobs: VecDeque<Job>,
    tick_scheduled: bool,
    /// The recipients' sessions, resolved once for the fan-outs that follow.
    recipients: RecipientCache,
    last_active: Instant,
    /// Resolves once the store has been handed the latest write (see [`Self::store_write`]).
    handed_over: Option<oneshot::Receiver<()>>,
}

impl ConversationActor {
    pub fn new(core: Arc<Core>, conv_id: Arc<str>, kind: ConvKind, init: Init) -> Self {
        Self {
            core,
            conv_id,
            kind,
            init,
            state: State::Loading,
            roles: HashMap::new(),
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
        }
    }

    fn group_id(&self) -> &str {
        self.conv_id.strip_prefix("g_").unwrap_or("")
    }

    fn set_members(&mut self, roles: HashMap<Arc<str>, Role>) {
        self.members = Arc::new(roles.keys().cloned().collect());
        self.roles = roles;
    }

    fn check_ready(&self) -> Result<()> {
        match &self.state {
            State::Ready => Ok(()),
            State::Failed(e) => Err(e.clone()),
            State::Loading => Err(Error::new(ErrorCode::Unavailable, "conversation is loading")),
        }
    }

    /// Loads membership and the last `seq`; blocks the mailbox until done.
    fn load(&mut self, ctx: &mut Context<Self>) {
        let store = self.core.store.clone();
        let conv_id = self.conv_id.clone();
        let kind = self.kind;
        let init = self.init.clone();
        let fut = async move {
            let conv = store.conversation(&conv_id).await?;
            let last_seq = conv.as_ref().map(|c| c.last_seq).unwrap_or(0);
            let mut roles = HashMap::new();
            match kind {
                ConvKind::Group => {
                    let gid = conv_id.strip_prefix("g_").unwrap_or("");
                    match store.group(gid).await? {
                        None => return Err(Error::not_found("no such group")),
                        Some(g) if g.dismissed => return Err(dismissed()),
                        Some(_) => {}
                    }
                    for m in store.members(gid).await? {
                        roles.insert(Arc::<str>::from(m.user_id), m.role);
                    }
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
            Ok::<_, Error>((last_seq, roles))
        };
        ctx.wait(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((last_seq, roles)) => {
                act.next_fanout = last_seq + 1;
                act.members_seq = last_seq;
                act.set_members(roles);
                act.state = State::Ready;
            }
            Err(e) => {
                if e.code != ErrorCode::NotFound && e.code != ErrorCode::GroupDismissed {
                    tracing::warn!(conv_id = %act.conv_id, error = %e, "conversation load failed");
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
    fn store_write<T: Send + 'static>(&mut self, write: StoreFuture<T>) -> oneshot::Receiver<StoreResult<T>> {
        let (out_tx, out_rx) = oneshot::channel();
        self.store_write_then(write, move |out| {
            let _ = out_tx.send(out);
        });
        out_rx
    }

    /// [`Self::store_write`], calling `done` with the result on the write's task.
    fn store_write_then<T: Send + 'static>(
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
    fn append(
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

    /// Moves stored messages, in `seq` order, from `ready` to the fan-out queue.
    ///
    /// A missing `seq` is one of this actor's appends still in flight, or (in a cluster) a
    /// message another node stored: that node's fan-out brings it here as a [`PeerMessage`], and
    /// if it does not within [`GAP_WAIT`] it is read back from the store (it is committed:
    /// the store hands out a `seq` only after every lower one is committed).
    fn release(&mut self, ctx: &mut Context<Self>) {
        while !self.reloading {
            let Some((&head, _)) = self.ready.first_key_value() else { break };
            if head > self.next_fanout {
                if self.inflight > 0 {
                    break;
                }
                if self.core.cluster().is_some() {
                    self.schedule_gap_fill(ctx);
                    break;
                }
                // With nothing in flight, no missing seq can still arrive: don't wait for it.
                tracing::warn!(conv_id = %self.conv_id, expected = self.next_fanout, got = head, "seq gap in fan-out");
            }
            let Some(p) = self.ready.remove(&head) else { break };
            if head < self.next_fanout {
                continue;
            }
            self.next_fanout = head + 1;
            self.fresh = false;
            self.last_peer_release = matches!(p, Pending::Peer { .. }).then_some(head);
            match p {
                Pending::Local(r) => self.enqueue_message(r),
                Pending::Peer { users, frames, membership_changed } => {
                    let users = self.peer_recipients(users);
                    self.enqueue_local(head, frames, users);
                    if membership_changed {
                        self.reload_members(ctx, head);
                    }
                }
                Pending::Fetched(m) => {
                    let reload = changes_membership(&m);
                    let frames = vec![proto::encode_event("message", &m)];
                    self.enqueue_local(head, frames, self.members.clone());
                    if reload {
                        self.reload_members(ctx, head);
                    }
                }
            }
        }
        self.pump(ctx);
    }

    /// `users` (recipients of another node's message) as a shared list: the previous one when
    /// they are the same users (a group's messages usually are), so their sessions stay resolved.
    fn peer_recipients(&mut self, users: Vec<Arc<str>>) -> Arc<Vec<Arc<str>>> {
        if *self.peer_members != users {
            self.peer_members = Arc::new(users);
        }
        self.peer_members.clone()
    }

    /// Queues a fan-out to this node's sessions only (of a message another node stored).
    fn enqueue_local(&mut self, seq: u64, frames: Vec<ByteString>, members: Arc<Vec<Arc<str>>>) {
        self.jobs.push_back(Job {
            seq,
            local_only: true,
            membership_changed: false,
            frames,
            members,
            next: 0,
            skip: None,
            only_conn: None,
            slot: None,
            started: Instant::now(),
            delivery: true,
        });
        self.core.metrics.fanout_queue_depth.fetch_add(1, Relaxed);
    }

    /// After [`GAP_WAIT`], reads the messages missing before the head of `ready` from the store.
    fn schedule_gap_fill(&mut self, ctx: &mut Context<Self>) {
        if self.gap_fill {
            return;
        }
        self.gap_fill = true;
        // With the bus down nothing is coming: read the gap back at once (acknowledgements of this
        // node's own messages wait behind it).
        let wait = match self.core.cluster() {
            Some(c) if !c.bus_up() => Duration::ZERO,
            _ => GAP_WAIT,
        };
        ctx.run_later(wait, |act, ctx| {
            let head = match act.ready.first_key_value() {
                Some((&head, _)) if head > act.next_fanout && act.inflight == 0 => head,
                _ => {
                    act.gap_fill = false;
                    act.release(ctx);
                    return;
                }
            };
            let from = act.next_fanout;
            let limit = ((head - from) as usize).min(model::MAX_PAGE);
            let store = act.core.store.clone();
            let conv_id = act.conv_id.clone();
            let read = async move { store.history(&conv_id, None, HistoryQuery::After { seq: from - 1, limit }).await };
            ctx.spawn(read.into_actor(act).map(move |res, act, ctx| {
                act.gap_fill = false;
                match res {
                    Ok(found) => {
                        act.core.metrics.gap_fills.fetch_add(1, Relaxed);
                        let complete = found.len() == limit;
                        for m in found {
                            if m.seq >= act.next_fanout && m.seq < head {
                                act.ready.entry(m.seq).or_insert(Pending::Fetched(m));
                            }
                        }
                        // `seq` has no holes and a higher one exists, so the missing ones are
                        // committed: a read that missed them was stale. Try again; step over
                        // them only when they stay missing (a store that broke the contract).
                        act.gap_misses = if complete { 0 } else { act.gap_misses + 1 };
                        if act.gap_misses >= GAP_FILL_TRIES
                            && act.ready.first_key_value().is_some_and(|(&h, _)| h > act.next_fanout)
                        {
                            tracing::warn!(conv_id = %act.conv_id, from, head, "seq gap not in the store; skipped");
                            act.gap_misses = 0;
                            if let Some((&h, _)) = act.ready.first_key_value() {
                                act.next_fanout = h;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(conv_id = %act.conv_id, error = %e, "gap fill failed; retrying");
                    }
                }
                act.release(ctx);
            }));
        });
    }

    /// Reloads a group's membership from the store; releasing waits until it is done.
    ///
    /// `seq` is the membership change that asked for it (0: unknown); messages after it that
    /// were submitted with the older membership are fanned out with the reloaded one.
    fn reload_members(&mut self, ctx: &mut Context<Self>, seq: u64) {
        if self.kind != ConvKind::Group || self.reloading {
            return;
        }
        self.reloading = true;
        let store = self.core.store.clone();
        let gid = self.group_id().to_string();
        let fut = async move {
            let group = store.group(&gid).await?;
            let members = store.members(&gid).await?;
            Ok::<_, StoreError>((group, members))
        };
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
            act.reloading = false;
            match res {
                Ok((group, members)) => {
                    act.members_seq = act.members_seq.max(seq);
                    if group.as_ref().is_none_or(|g| g.dismissed) {
                        act.set_members(HashMap::new());
                        act.state = State::Failed(dismissed());
                    } else {
                        act.set_members(members.into_iter().map(|m| (Arc::<str>::from(m.user_id), m.role)).collect());
                    }
                }
                Err(e) => {
                    // Keep the old membership and try again with the next change.
                    tracing::warn!(conv_id = %act.conv_id, error = %e, "membership reload failed");
                }
            }
            act.release(ctx);
        }));
    }

    fn enqueue_message(&mut self, r: Ready) {
        let Ready { message, origin, members, extra, reply, members_seq, ack_group } = r;
        let seq = message.seq;
        // A membership change stored by another node before this message, but applied here
        // only after the message was submitted: the message goes to the new membership.
        let members =
            if self.members_seq > members_seq && self.members_seq < seq { self.members.clone() } else { members };
        let membership_changed = changes_membership(&message);
        if membership_changed {
            if let Some(cluster) = self.core.cluster() {
                cluster.broadcast(PeerCommand::MembershipChanged { conv_id: self.conv_id.to_string(), seq });
            }
        }
        let mut frames = vec![proto::encode_event("message", &message)];
        frames.extend(extra);
        let skip = origin.map(|o| {
            // The sending device gets its ack where the event would have been: after every
            // earlier message of this conversation (jobs run in order), before later ones.
            let ack = match &ack_group {
                Some(group) => proto::encode_result(&o.req_id, &proto::GroupChangeResult { group, message: &message }),
                None => proto::encode_result(&o.req_id, &proto::SendResult { message: &message }),
            };
            self.jobs.push_back(Job {
                seq: 0,
                local_only: true,
                membership_changed: false,
                frames: vec![ack],
                members: Arc::new(vec![o.user.clone()]),
                next: 0,
                skip: None,
                only_conn: Some(o.conn_id),
                slot: o.slot,
                started: Instant::now(),
                delivery: false,
            });
            (o.user, o.conn_id)
        });
        if let Some(tx) = reply {
            let _ = tx.send(Ok(message));
        }
        self.jobs.push_back(Job {
            seq,
            local_only: false,
            membership_changed,
            frames,
            members,
            next: 0,
            skip,
            only_conn: None,
            slot: None,
            started: Instant::now(),
            delivery: true,
        });
        self.core.metrics.fanout_queue_depth.fetch_add(1, Relaxed);
    }

    /// Delivers jobs until one chunk's worth of members has been served, then yields to the
    /// mailbox (a `FanoutTick` continues).
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let mut budget = self.core.limits.fanout_chunk.max(1);
        let registry = &self.core.registry;
        while budget > 0 {
            let Some(job) = self.jobs.front_mut() else { break };
            let end = (job.next + budget).min(job.members.len());
            let users = &job.members[job.next..end];
            budget -= users.len().max(1).min(budget);
            if let Some(slot) = job.slot.take() {
                slot.free();
            }
            for (i, frame) in job.frames.iter().enumerate() {
                let n = match (job.only_conn, i) {
                    (Some(conn), _) => users.iter().filter(|u| registry.send_to_conn(u, conn, frame)).count(),
                    // Connection ids are unique on the node: skipping the sender's is enough.
                    (None, 0) => self.recipients.deliver(
                        registry,
                        &job.members,
                        job.next..end,
                        frame,
                        job.skip.as_ref().map(|(_, c)| *c),
                    ),
                    (None, _) => self.recipients.deliver(registry, &job.members, job.next..end, frame, None),
                };
                if i == 0 && job.delivery {
                    self.core.metrics.deliveries_out.fetch_add(n as u64, Relaxed);
                }
            }
            // Once this node's sessions have it, the recipients' sessions on other nodes: the
            // transport resolves their presence (one round trip for the deliveries queued
            // together, reading only what changed) and publishes once per node for the whole
            // message, so a node releases it to all its recipients at once.
            if !job.local_only && job.only_conn.is_none() && job.next == 0 {
                if let Some(cluster) = self.core.cluster() {
                    cluster.deliver(PeerDelivery {
                        ordered: (job.seq > 0).then(|| (self.conv_id.clone(), job.seq)),
                        users: job.members.to_vec(),
                        frames: job.frames.clone(),
                        membership_changed: job.membership_changed,
                    });
                }
            }
            job.next = end;
            if job.next >= job.members.len() {
                if job.delivery {
                    self.core.metrics.fanout_seconds.observe(job.started.elapsed());
                    self.core.metrics.fanout_queue_depth.fetch_sub(1, Relaxed);
                }
                self.jobs.pop_front();
            }
        }
        // Writers are woken once the fan-out queue is empty, or every few chunks: frames of
        // several messages then leave in one write per connection.
        self.recipients.end_chunk(self.jobs.is_empty());
        if !self.jobs.is_empty() && !self.tick_scheduled {
            self.tick_scheduled = true;
            ctx.notify(FanoutTick);
        }
    }

    fn check_member(&self, user: &str) -> Result<Role> {
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
        self.core.directory.remove(&self.conv_id, &ctx.address());
    }
}

impl Handler<PeerMessage> for ConversationActor {
    type Result = ();
    fn handle(&mut self, msg: PeerMessage, ctx: &mut Context<Self>) {
        self.last_active = Instant::now();
        let PeerMessage { seq, users, frames, membership_changed } = msg;
        if seq < self.next_fanout {
            // Another chunk (other recipients) of the message released last: nothing later has
            // gone out yet, so it goes out now, still in order.
            if self.last_peer_release == Some(seq) {
                let users = self.peer_recipients(users);
                self.enqueue_local(seq, frames, users);
                self.pump(ctx);
                return;
            }
            // Already released (read back from the store, or a repeat), unless nothing was
            // released since loading: then the loaded `last_seq` included it, but this node's
            // sessions have not seen it yet (anything between it and what is ready is read back).
            if !self.fresh {
                self.core.metrics.peer_messages_stale.fetch_add(1, Relaxed);
                return;
            }
            self.next_fanout = seq;
        }
        match self.ready.entry(seq) {
            // Another chunk of a message still waiting: one fan-out for all of them.
            std::collections::btree_map::Entry::Occupied(mut e) => {
                if let Pending::Peer { users: waiting, .. } = e.get_mut() {
                    waiting.extend(users);
                }
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Pending::Peer { users, frames, membership_changed });
            }
        }
        // Released once the messages already in the mailbox (often more of this burst) are in.
        if !self.peer_release_scheduled {
            self.peer_release_scheduled = true;
            ctx.notify(ReleasePeers);
        }
    }
}

impl Handler<ReleasePeers> for ConversationActor {
    type Result = ();
    fn handle(&mut self, _: ReleasePeers, ctx: &mut Context<Self>) {
        self.peer_release_scheduled = false;
        self.release(ctx);
    }
}

impl Handler<ReloadMembers> for ConversationActor {
    type Result = ();
    fn handle(&mut self, msg: ReloadMembers, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Ready) {
            self.reload_members(ctx, msg.0);
        }
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

impl Handler<FanoutTick> for ConversationActor {
    type Result = ();
    fn handle(&mut self, _: FanoutTick, ctx: &mut Context<Self>) {
        self.tick_scheduled = false;
        self.pump(ctx);
    }
}

impl Handler<Submit> for ConversationActor {
    type Result = ResponseFuture<Result<Message>>;

    fn handle(&mut self, msg: Submit, ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        let (tx, rx) = oneshot::channel();
        let respond =
            Box::pin(async move { rx.await.unwrap_or_else(|_| Err(Error::internal("conversation stopped"))) });
        if let Err(e) = self.check_ready() {
            return Box::pin(async move { Err(e) });
        }
        if let Some(sender) = &msg.sender {
            if let Err(e) = self.check_member(sender) {
                return Box::pin(async move { Err(e) });
            }
        }
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
        respond
    }
}

impl Handler<Recall> for ConversationActor {
    type Result = ResponseActFuture<Self, Result<Message>>;

    fn handle(&mut self, msg: Recall, _ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
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
            let own = m.sender.as_deref() == Some(&*by);
            let manager = msg.admin || (is_group && role.can_manage());
            if !manager {
                if !own {
                    return Err(Error::forbidden(
                        "only the sender, or a group's owner or admins, may recall a message",
                    ));
                }
                let age = now_ms().saturating_sub(m.ts);
                if age > window.as_millis() as i64 {
                    return Err(Error::new(
                        ErrorCode::RecallWindowExpired,
                        format!("messages can be recalled by their sender for {} seconds", window.as_secs()),
                    ));
                }
            }
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

impl Handler<Membership> for ConversationActor {
    type Result = ResponseFuture<Result<Message>>;

    fn handle(&mut self, msg: Membership, ctx: &mut Context<Self>) -> Self::Result {
        self.last_active = Instant::now();
        let (tx, rx) = oneshot::channel();
        let respond =
            Box::pin(async move { rx.await.unwrap_or_else(|_| Err(Error::internal("conversation stopped"))) });
        let fail = |e: Error| -> Self::Result { Box::pin(async move { Err(e) }) };
        if let Err(e) = self.check_ready() {
            return fail(e);
        }
        if self.kind != ConvKind::Group {
            return fail(Error::invalid("not a group conversation"));
        }
        let role = match self.check_member(&msg.by) {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        let by = msg.by.to_string();
        let origin = msg.origin;
        let store = self.core.store.clone();
        let group_id = self.group_id().to_string();
        let ts = now_ms();
        let (write, applied): (StoreFuture<(Message, Option<Group>)>, Applied) = match msg.op {
            MembershipOp::Update(patch) => {
                if !role.can_manage() {
                    return fail(Error::forbidden("only the owner or admins may change the group's profile"));
                }
                // The fields that changed, and who changed them.
                let mut data = serde_json::to_value(&patch).unwrap_or_default();
                if let Some(fields) = data.as_object_mut() {
                    fields.retain(|_, v| !v.is_null());
                    fields.insert("by".into(), serde_json::Value::from(by.clone()));
                }
                let u = GroupUpdate {
                    group_id,
                    patch,
                    ts,
                    system_body: Body::System { event: "group_updated".into(), data },
                };
                (Box::pin(async move { store.update_group(u).await.map(|(g, m)| (m, Some(g))) }), Applied::Profile)
            }
            MembershipOp::SetRole(user, new_role) => {
                if role != Role::Owner {
                    return fail(Error::forbidden("only the owner may change roles"));
                }
                let Some(&current) = self.roles.get(user.as_str()) else {
                    return fail(Error::not_found(format!("{user} is not a member of the group")));
                };
                if user == by {
                    return fail(Error::invalid("the owner's role changes only by transferring the ownership"));
                }
                if current == new_role {
                    return fail(Error::new(ErrorCode::Conflict, format!("{user} already has this role")));
                }
                let mut roles = vec![(user.clone(), new_role)];
                if new_role == Role::Owner {
                    roles.push((by.clone(), Role::Admin));
                }
                let listed: Vec<serde_json::Value> =
                    roles.iter().map(|(u, r)| serde_json::json!({ "user": u, "role": r })).collect();
                let c = RoleChange {
                    group_id,
                    roles: roles.clone(),
                    ts,
                    system_body: Body::System {
                        event: "roles_changed".into(),
                        data: serde_json::json!({ "by": by, "roles": listed }),
                    },
                };
                (Box::pin(async move { store.set_roles(c).await.map(|(g, m)| (m, Some(g))) }), Applied::Roles(roles))
            }
            MembershipOp::Dismiss => {
                if role != Role::Owner {
                    return fail(Error::forbidden("only the owner may dismiss the group"));
                }
                let d = GroupDismiss {
                    group_id,
                    ts,
                    system_body: Body::System {
                        event: "group_dismissed".into(),
                        data: serde_json::json!({ "by": by }),
                    },
                };
                (Box::pin(async move { store.dismiss_group(d).await.map(|(g, m)| (m, Some(g))) }), Applied::Dismissed)
            }
            op => match self.member_change(op, by, group_id, ts, role) {
                Ok(planned) => planned,
                Err(refused) => return refused,
            },
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
        respond
    }
}

impl ConversationActor {
    /// Checks an add, remove or leave and prepares its store write.
    #[allow(clippy::type_complexity)]
    fn member_change(
        &self,
        op: MembershipOp,
        by: String,
        group_id: String,
        ts: i64,
        role: Role,
    ) -> std::result::Result<(StoreFuture<(Message, Option<Group>)>, Applied), ResponseFuture<Result<Message>>> {
        let fail = |e: Error| -> ResponseFuture<Result<Message>> { Box::pin(async move { Err(e) }) };
        let (add, remove, event) = match op {
            MembershipOp::Add(users) => {
                if !role.can_manage() {
                    return Err(fail(Error::forbidden("only the owner or admins may add members")));
                }
                let mut new: Vec<String> = users.into_iter().filter(|u| !self.roles.contains_key(u.as_str())).collect();
                new.sort();
                new.dedup();
                if self.roles.len() + new.len() > self.core.limits.max_group_members {
                    return Err(fail(Error::invalid(format!(
                        "a group has at most {} members",
                        self.core.limits.max_group_members
                    ))));
                }
                if new.is_empty() {
                    return Err(fail(Error::new(ErrorCode::Conflict, "every user given is already a member")));
                }
                (new, Vec::new(), "members_added")
            }
            MembershipOp::Remove(users) => {
                if !role.can_manage() {
                    return Err(fail(Error::forbidden("only the owner or admins may remove members")));
                }
                let mut gone = Vec::new();
                for u in users {
                    match self.roles.get(u.as_str()) {
                        None => {}
                        Some(Role::Owner) => return Err(fail(Error::forbidden("the owner cannot be removed"))),
                        Some(Role::Admin) if role != Role::Owner => {
                            return Err(fail(Error::forbidden("only the owner may remove an admin")))
                        }
                        Some(_) => gone.push(u),
                    }
                }
                gone.sort();
                gone.dedup();
                if gone.is_empty() {
                    return Err(fail(Error::not_found("none of the users given is a member")));
                }
                (Vec::new(), gone, "members_removed")
            }
            MembershipOp::Leave => {
                if role == Role::Owner {
                    return Err(fail(Error::new(ErrorCode::OwnerCannotLeave, "the owner cannot leave the group")));
                }
                (Vec::new(), vec![by.clone()], "member_left")
            }
            MembershipOp::Update(_) | MembershipOp::SetRole(..) | MembershipOp::Dismiss => {
                return Err(fail(Error::internal("not a membership change")))
            }
        };
        let body = Body::System { event: event.into(), data: membership_data(&by, &add, &remove) };
        let change = MemberChange {
            group_id,
            add: add.iter().map(|u| (u.clone(), Role::Member)).collect(),
            remove: remove.clone(),
            ts,
            system_body: body,
        };
        let store = self.core.store.clone();
        Ok((
            Box::pin(async move { store.change_members(change).await.map(|m| (m, None)) }),
            Applied::Members { add, remove },
        ))
    }

    /// Updates the cached membership after a stored change and queues its fan-out: everyone who
    /// was or is a member hears about it.
    fn applied(
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
            Applied::Profile => group_event(self, "updated"),
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Live conversation actors by conversation id, and the arbiters they run on.
pub struct Directory {
    map: Mutex<HashMap<Arc<str>, Addr<ConversationActor>>>,
    arbiters: Vec<ArbiterHandle>,
}

impl Directory {
    /// `arbiters` are the threads conversation actors run on (chosen by conversation id).
    pub fn new(arbiters: Vec<ArbiterHandle>) -> Self {
        Self { map: Mutex::new(HashMap::new()), arbiters }
    }

    /// The live actor for `conv_id`, starting one if needed.
    pub fn get(&self, core: &Arc<Core>, conv_id: &str, init: Init) -> Result<Addr<ConversationActor>> {
        let kind = model::conv_kind(conv_id)?;
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(addr) = map.get(conv_id) {
            if addr.connected() {
                return Ok(addr.clone());
            }
        }
        let id: Arc<str> = Arc::from(conv_id);
        let actor = ConversationActor::new(core.clone(), id.clone(), kind, init);
        let addr = if self.arbiters.is_empty() {
            actor.start()
        } else {
            let mut h: usize = 0;
            for b in conv_id.bytes() {
                h = h.wrapping_mul(31).wrapping_add(b as usize);
            }
            let arbiter = &self.arbiters[h % self.arbiters.len()];
            ConversationActor::start_in_arbiter(arbiter, move |_| actor)
        };
        map.insert(id, addr.clone());
        Ok(addr)
    }

    /// The live actor for `conv_id`, if there is one (never starts one).
    pub fn peek(&self, conv_id: &str) -> Option<Addr<ConversationActor>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(conv_id).filter(|a| a.connected()).cloned()
    }

    /// Forgets the actor of `conv_id` (used when a conversation is created, so an actor that
    /// failed to load it a moment ago is not reused).
    pub fn evict(&self, conv_id: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(conv_id);
    }

    /// Forgets `addr` as the actor of `conv_id` if it still is (it was found stopping).
    pub fn forget(&self, conv_id: &str, addr: &Addr<ConversationActor>) {
        self.remove(conv_id, addr)
    }

    fn remove(&self, conv_id: &str, addr: &Addr<ConversationActor>) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(conv_id) == Some(addr) {
            map.remove(conv_id);
        }
    }
}

/// A membership system message's `data`: `by`, and the users `added` and `removed`, each list
/// cut to [`proto::LIST_INLINE`] users with its full length beside it (`added_count`,
/// `removed_count`) when longer.
fn membership_data(by: &str, add: &[String], remove: &[String]) -> serde_json::Value {
    let mut data = serde_json::json!({ "by": by });
    proto::put_list(&mut data, "added", add);
    proto::put_list(&mut data, "removed", remove);
    data
}
