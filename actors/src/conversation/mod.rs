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
//!
//! Files: [`actor`] (its life and requests), [`ordering`] (releasing in `seq` order),
//! [`fanout`] (delivering), [`directory`] (finding or starting an actor), [`relation`] (blocks and
//! who may message whom, for one-to-one conversations). The rules it applies
//! are plain functions in [`crate::rules`].

mod actor;
mod directory;
mod fanout;
mod ordering;
mod relation;

pub use directory::Directory;
pub use relation::ReloadRelation;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytestring::ByteString;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::clock::now_ms;
use crate::cluster::{PeerCommand, PeerDelivery};
use crate::core::Core;
use crate::error::StoreError;
use crate::error::{Error, ErrorCode, Result};
use crate::inflight::Slot;
use crate::model::{
    self, Body, ConvKind, Group, GroupBan, GroupPatch, InviteMode, JoinMode, Member, Message, ReplyRef, Role,
};
use crate::proto;
use crate::registry::RecipientCache;
use crate::rules;
use crate::store::{
    Appended, GroupDismiss, GroupUpdate, HistoryQuery, MemberChange, MuteChange, NewMessage, RoleChange, StoreResult,
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
    /// Mute members until a time (unix ms), or unmute them (`None`). Owner or admins.
    Mute(Vec<String>, Option<i64>),
    /// Mute (or unmute) everyone but the owner and admins.
    MuteAll(bool),
    /// Ban users (members are removed), or lift their bans.
    Ban(Vec<String>),
    Unban(Vec<String>),
    /// The caller joins a `free` group.
    Join,
    /// A member adds users: the owner and admins always may; other members when the group's
    /// `invite_mode` is `members`.
    Invite(Vec<String>),
    /// The owner or an admin approves a pending request: the user is added.
    Approve(String),
}

/// What the engine needs to know of a group before a join, an invitation or an answer to a
/// request: the caller's role (`None`: not a member), the group's modes and its managers.
#[derive(Debug, Clone)]
pub struct GroupState {
    pub role: Option<Role>,
    pub join_mode: JoinMode,
    pub invite_mode: InviteMode,
    /// The owner and admins.
    pub managers: Vec<Arc<str>>,
}

/// Asks a group's actor for [`GroupState`] as `user` sees it.
#[derive(Debug, Clone)]
pub struct AskGroupState(pub Arc<str>);

impl actix::Message for AskGroupState {
    type Result = Result<GroupState>;
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
    Mutes { users: Vec<String>, until: Option<i64>, all: Option<bool> },
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
    /// Where this actor is listed (it removes itself when it stops).
    directory: Arc<Directory>,
    conv_id: Arc<str>,
    kind: ConvKind,
    init: Init,
    state: State,
    /// Members and their roles (one-to-one participants have role `member`).
    roles: HashMap<Arc<str>, Role>,
    /// Groups: members muted until a time (unix ms), and whether everyone but the owner and admins
    /// is muted; checked on every send without a read.
    muted: HashMap<Arc<str>, i64>,
    mute_all: bool,
    /// Groups: how users join and who invites (from the group's settings).
    join_mode: JoinMode,
    invite_mode: InviteMode,
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
    /// `conversation{conv}` under the node's span: the parent of the actor's log lines.
    span: tracing::Span,
    /// One-to-one conversations: what the two users are to each other ([`relation`]).
    relation: Option<relation::Cached>,
}
