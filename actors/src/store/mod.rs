//! The storage contract. Actors call these traits; adapters in the `confab` crate implement them
//! (the embedded store today; MongoDB for clusters).
//!
//! Rules every implementation keeps (the conformance suite in `tests/integration/store.rs` checks them):
//! - An operation either happens whole or not at all. An `Err` means nothing was written, with
//!   one exception on networked databases: a commit whose outcome was lost (the connection died
//!   mid-commit) may have happened whole. Idempotency keys make retries safe in that case.
//! - A method returns only after its writes are durable (committed with fsync or the equivalent).
//! - `seq` is contiguous per conversation from 1. `ver` is a store-wide version, strictly increasing
//!   with every write, used for "what changed since" cursors.
//! - Reads never block writers for long; implementations must not block the async runtime
//!   (use `spawn_blocking` or a dedicated thread for synchronous engines).

mod plan;

pub use plan::{group_conversation, list_page, live_group, prefix_end, ContactPlan, GroupPlan, MemberDelta};

use async_trait::async_trait;

use crate::error::StoreError;
use crate::model::{
    Body, Broadcast, Changes, Contact, ContactOp, Conversation, ConversationView, FileMeta, FlagsPatch, Group,
    GroupBan, GroupPatch, JoinRequest, Member, Message, NoticeConfirmation, ReplyRef, Role, User, UserConvState,
    UserPatch,
};
use crate::push::{Finish, Planned, PushJob, PushRegistration};

pub type StoreResult<T> = Result<T, StoreError>;

/// A message to append.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conv_id: String,
    /// Set for one-to-one conversations: the two participants. If the conversation does not exist
    /// yet it is created, with an active row for each participant. `None` for groups, whose
    /// conversation must already exist (`NotFound` otherwise).
    pub direct_members: Option<(String, String)>,
    /// `None` for system messages.
    pub sender: Option<String>,
    /// Idempotency key, unique per sender across all conversations.
    pub client_msg_id: Option<String>,
    pub body: Body,
    pub reply_to: Option<ReplyRef>,
    /// Server time in ms, chosen by the caller.
    pub ts: i64,
}

/// The result of an append.
#[derive(Debug, Clone)]
pub struct Appended {
    /// The stored message: the new one, or the one stored earlier under the same
    /// `(sender, client_msg_id)`.
    pub message: Message,
    /// True when `(sender, client_msg_id)` was already stored: nothing new was written.
    pub duplicate: bool,
}

/// Days since the Unix epoch (UTC) of a time in unix milliseconds: the key of the daily counts.
pub fn day_of(ts_ms: i64) -> u32 {
    u32::try_from(ts_ms.div_euclid(86_400_000)).unwrap_or(0)
}

/// What [`Store::stats`] counts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Users with a record (created by the HTTP API or an import).
    pub users: u64,
    /// Groups not dismissed.
    pub groups: u64,
    /// Per day asked for, oldest first.
    pub days: Vec<DayStats>,
}

/// One day's counts (see [`Stats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayStats {
    /// Days since the Unix epoch (UTC).
    pub day: u32,
    /// Messages stored that day (sent by users or as system messages; not the notices of group
    /// changes), by their `ts`.
    pub messages: u64,
    /// Users recorded active that day ([`Store::record_active`]).
    pub active_users: u64,
}

/// The result of a recall.
#[derive(Debug, Clone)]
pub struct Recalled {
    /// The message as stored after the call (its body is `recalled`).
    pub message: Message,
    /// True when this call recalled it; false when it was recalled already (nothing written).
    /// Only a call that changed it announces the recall (events, webhooks).
    pub changed: bool,
}

/// Which page of history to read. Results are always in ascending `seq` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryQuery {
    /// The `limit` newest messages.
    Latest { limit: usize },
    /// The `limit` messages immediately before `seq` (exclusive).
    Before { seq: u64, limit: usize },
    /// The `limit` messages immediately after `seq` (exclusive). Gap fill is `After`.
    After { seq: u64, limit: usize },
}

/// A group to create.
#[derive(Debug, Clone)]
pub struct NewGroup {
    pub id: String,
    pub name: String,
    pub owner: String,
    /// Other initial members (role `member`); the owner is added with role `owner`. May repeat or
    /// contain the owner: implementations de-duplicate.
    pub members: Vec<String>,
    pub ts: i64,
    /// Body of the first message (seq 1), a system message announcing the group.
    pub system_body: Body,
}

/// A change of a group's membership, recorded together with a system message.
#[derive(Debug, Clone)]
pub struct MemberChange {
    pub group_id: String,
    /// Users to add with a role. Users already active are left as they are.
    pub add: Vec<(String, Role)>,
    /// Users to remove; their conversation row turns inactive (kept, so they can see they left;
    /// [`UserConvState::leave`] with the system message's `seq`).
    pub remove: Vec<String>,
    /// (Added users' pending join requests are removed in the same transaction.)
    /// Users to ban (recorded after the removals): a ban stays until `unban`, and `add` of a
    /// banned user is refused (`Refused(Banned)`, nothing written).
    pub ban: Vec<GroupBan>,
    /// Users whose ban ends.
    pub unban: Vec<String>,
    pub ts: i64,
    /// The system message that records the change in the conversation.
    pub system_body: Body,
}

/// Mutes or unmutes members, or the whole group, recorded together with a system message.
#[derive(Debug, Clone)]
pub struct MuteChange {
    pub group_id: String,
    /// `(member, muted until)`: `None` unmutes. Each must be an active member (`NotFound`).
    pub mutes: Vec<(String, Option<i64>)>,
    /// Mute (or unmute) everyone but the owner and admins.
    pub all: Option<bool>,
    pub ts: i64,
    pub system_body: Body,
}

/// A change of a group's profile, recorded together with a system message.
#[derive(Debug, Clone)]
pub struct GroupUpdate {
    pub group_id: String,
    pub patch: GroupPatch,
    pub ts: i64,
    pub system_body: Body,
}

/// A change of members' roles, recorded together with a system message.
#[derive(Debug, Clone)]
pub struct RoleChange {
    pub group_id: String,
    /// `(user, new role)`, applied in order; each user must be an active member. Giving a user
    /// `Owner` makes them the group's `owner` (the previous owner should be in the list too).
    pub roles: Vec<(String, Role)>,
    pub ts: i64,
    pub system_body: Body,
}

/// The dismissal of a group, recorded together with a (last) system message.
#[derive(Debug, Clone)]
pub struct GroupDismiss {
    pub group_id: String,
    pub ts: i64,
    pub system_body: Body,
}

/// A change between two users' contact rows, made by `user` about `peer`.
#[derive(Debug, Clone)]
pub struct ContactChange {
    pub user: String,
    pub peer: String,
    pub op: ContactOp,
    pub ts: i64,
}

/// Everything the engine stores. One trait object (`Arc<dyn Store>`) is shared by all actors.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Succeeds when the store answers; drives `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    // ---- messages ----

    /// Appends a message: de-duplicates on `(sender, client_msg_id)`, assigns the next `seq` and a
    /// new `ver`, updates the conversation's `last_seq` and `ver`, and advances the sender's read
    /// cursor to the new `seq` (sending implies having read). Durable before it returns.
    /// A reply whose quoted message is recalled by the time the append commits is stored with
    /// its quote scrubbed ([`ReplyRef::scrub`](crate::model::ReplyRef::scrub)), so a recall racing
    /// a reply cannot leave the recalled text behind.
    /// Callers do not rely on appends submitted together finishing in submission order: the
    /// conversation actor re-orders results by `seq` before fanning out.
    async fn append(&self, msg: NewMessage) -> StoreResult<Appended>;

    /// One message, or `None`.
    async fn message(&self, conv_id: &str, seq: u64) -> StoreResult<Option<Message>>;

    /// A page of history, ascending. When `for_user` is set, messages that user deleted for
    /// themselves are left out (so a page may hold fewer than `limit`).
    async fn history(&self, conv_id: &str, for_user: Option<&str>, q: HistoryQuery) -> StoreResult<Vec<Message>>;

    /// Replaces a message's body with `Body::Recalled { by }` and gives it a new `ver` (also the
    /// conversation's `ver`), and scrubs the quote of every stored reply to it, in the same
    /// transaction. Recalling an already recalled message changes nothing and returns it with
    /// `changed: false`. `NotFound` if there is no such message.
    async fn recall(&self, conv_id: &str, seq: u64, by: &str) -> StoreResult<Recalled>;

    // ---- conversations ----

    async fn conversation(&self, conv_id: &str) -> StoreResult<Option<Conversation>>;

    /// The user's row in a conversation, or `None` if they never were a participant.
    async fn user_conv(&self, user: &str, conv_id: &str) -> StoreResult<Option<UserConvState>>;

    /// One row of the user's conversation list, or `None`.
    async fn conversation_view(&self, user: &str, conv_id: &str) -> StoreResult<Option<ConversationView>>;

    /// The user's conversations whose `cursor()` is greater than `since`, ascending by cursor, at
    /// most `limit`. Includes hidden and inactive rows (clients filter).
    async fn list_conversations(&self, user: &str, since: u64, limit: usize) -> StoreResult<Vec<ConversationView>>;

    /// The user's total unread count over all their conversations, and how many have unread
    /// messages ([`ConversationView::unread`]): their rows and conversations, no messages.
    async fn unread(&self, user: &str) -> StoreResult<(u64, u64)>;

    /// Moves the user's read cursor forward to `min(seq, last_seq)`. Returns the new state, or
    /// `None` when the cursor was already there or beyond (nothing written). `NotFound` if the user
    /// has no row in the conversation.
    async fn mark_read(&self, user: &str, conv_id: &str, seq: u64) -> StoreResult<Option<UserConvState>>;

    /// Changes the user's flags (new `ver`). `NotFound` if the user has no row.
    async fn set_flags(&self, user: &str, conv_id: &str, patch: FlagsPatch) -> StoreResult<UserConvState>;

    /// Hides messages for one user (delete-for-me); seqs that do not exist are ignored. Bumps the
    /// user's row `ver` and returns the new state. `NotFound` if the user has no row.
    async fn delete_for_user(&self, user: &str, conv_id: &str, seqs: &[u64]) -> StoreResult<UserConvState>;

    /// Clears the conversation for one user up to its last message they may see
    /// ([`UserConvState::clear`]): bumps the row's `ver` and returns the new state. `NotFound` if
    /// the user has no row.
    async fn clear_for_user(&self, user: &str, conv_id: &str) -> StoreResult<UserConvState>;

    /// Recalls in the conversation and the user's own deletions with a `ver` after `since`.
    async fn changes(&self, user: &str, conv_id: &str, since: u64) -> StoreResult<Changes>;

    /// `(user, read_seq)` of every active participant.
    async fn read_cursors(&self, conv_id: &str) -> StoreResult<Vec<(String, u64)>>;

    // ---- groups ----

    /// Creates the group, its members, its conversation `g_<id>`, an active row per member and the
    /// first (system) message, atomically. `Conflict` if the id is taken. Returns the group and
    /// the system message.
    async fn create_group(&self, g: NewGroup) -> StoreResult<(Group, Message)>;

    async fn group(&self, group_id: &str) -> StoreResult<Option<Group>>;

    /// Active members, in no particular order.
    async fn members(&self, group_id: &str) -> StoreResult<Vec<Member>>;

    /// The groups `user` is an active member of, with their membership, in no particular order.
    async fn groups_of(&self, user: &str) -> StoreResult<Vec<(String, Member)>>;

    /// Applies a membership change and appends its system message atomically. Added users get an
    /// active row whose read cursor sits just before the system message. Returns the system message.
    /// `NotFound` if the group does not exist.
    async fn change_members(&self, c: MemberChange) -> StoreResult<Message>;

    /// Applies a profile change and appends its system message atomically. Returns the group as
    /// changed and the message. `NotFound` if the group does not exist, `Conflict` if dismissed.
    async fn update_group(&self, u: GroupUpdate) -> StoreResult<(Group, Message)>;

    /// Changes members' roles and appends the system message atomically. `NotFound` if the group
    /// does not exist or a user is not a member, `Conflict` if dismissed.
    async fn set_roles(&self, c: RoleChange) -> StoreResult<(Group, Message)>;

    /// Applies a mute change and appends its system message atomically. `NotFound` if the group
    /// does not exist or a user is not a member, `Conflict` if dismissed.
    async fn mute_members(&self, c: MuteChange) -> StoreResult<(Group, Message)>;

    /// The users banned from a group, in no particular order.
    async fn bans(&self, group_id: &str) -> StoreResult<Vec<GroupBan>>;

    /// Records pending join requests, one per user (a new one replaces the user's old one).
    /// `Refused(Banned)` if any of the users is banned, `NotFound` / `Conflict` for a missing or
    /// dismissed group: nothing is written. With webhooks on, writes their event. An add of the
    /// user (`change_members`) removes their request in its transaction.
    async fn put_join_requests(&self, group_id: &str, requests: Vec<JoinRequest>) -> StoreResult<()>;

    /// Removes a user's pending request (a rejection) and returns it, or `None` (nothing written).
    async fn remove_join_request(&self, group_id: &str, user: &str) -> StoreResult<Option<JoinRequest>>;

    /// A group's pending requests, in no particular order.
    async fn join_requests(&self, group_id: &str) -> StoreResult<Vec<JoinRequest>>;

    /// Records a member's confirmation of a group's notice (replacing their earlier one).
    async fn confirm_notice(&self, group_id: &str, c: NoticeConfirmation) -> StoreResult<()>;

    /// The confirmations recorded for a group, in no particular order (callers keep those of the
    /// current notice).
    async fn notice_confirmations(&self, group_id: &str) -> StoreResult<Vec<NoticeConfirmation>>;

    /// Dismisses a group: appends the system message, marks the group `dismissed`, removes every
    /// member and turns their conversation rows inactive, atomically. `NotFound` if the group
    /// does not exist, `Conflict` if already dismissed.
    async fn dismiss_group(&self, d: GroupDismiss) -> StoreResult<(Group, Message)>;

    // ---- users ----

    /// Creates the user's record (enabled, `created_at = ts`) or changes its profile; absent
    /// fields are kept. Returns the record.
    async fn upsert_user(&self, p: UserPatch) -> StoreResult<User>;

    /// The user's record, or `None` (never created: enabled, no profile).
    async fn user(&self, id: &str) -> StoreResult<Option<User>>;

    /// Users with a record whose id starts with `prefix`, after `after` (exclusive; `""` from the
    /// start), ascending by id, at most `limit`.
    async fn list_users(&self, prefix: &str, after: &str, limit: usize) -> StoreResult<Vec<User>>;

    /// Groups (dismissed ones included) whose id starts with `prefix`, after `after`, ascending by
    /// id, at most `limit`.
    async fn list_groups(&self, prefix: &str, after: &str, limit: usize) -> StoreResult<Vec<Group>>;

    /// Users whose nickname's [`name_key`](crate::model::name_key) starts with `key` (a name
    /// key), by that key then id, at most `limit`.
    async fn search_users(&self, key: &str, limit: usize) -> StoreResult<Vec<User>>;

    /// Groups not dismissed whose name's key starts with `key`, by that key then id, at most
    /// `limit`.
    async fn search_groups(&self, key: &str, limit: usize) -> StoreResult<Vec<Group>>;

    /// The records of the users given that have one, in no particular order. Callers bound `ids`.
    async fn users(&self, ids: &[String]) -> StoreResult<Vec<User>>;

    /// Disables or enables a user, creating the record if needed. Returns the record.
    async fn set_user_disabled(&self, id: &str, disabled: bool, ts: i64) -> StoreResult<User>;

    // ---- contacts ----

    /// Applies a contact change atomically: reads both users' rows, decides with
    /// [`ContactChange::plan`] (which may refuse: `Refused`, nothing written) and writes the rows
    /// that changed under one new `ver`. Returns the plan as written; a row that did not change
    /// keeps its old `ver`. With webhooks on, the change's event is written in the same
    /// transaction.
    async fn change_contact(&self, c: ContactChange) -> StoreResult<ContactPlan>;

    /// `owner`'s row about `peer`, or `None`.
    async fn contact(&self, owner: &str, peer: &str) -> StoreResult<Option<Contact>>;

    /// `owner`'s rows with a `ver` greater than `since`, ascending by `ver`, at most `limit`.
    async fn list_contacts(&self, owner: &str, since: u64, limit: usize) -> StoreResult<Vec<Contact>>;

    /// Whether `a` and `b` are both active members of some group.
    async fn share_group(&self, a: &str, b: &str) -> StoreResult<bool>;

    /// Refuses every token issued before `before_ms` (unix ms; [`User::revoke_tokens`]), creating
    /// the record if needed. Never moves the bound back. Returns the record.
    async fn revoke_tokens(&self, id: &str, before_ms: u64, ts: i64) -> StoreResult<User>;

    // ---- files ----

    /// Stores an uploaded file's record (its id is new).
    async fn put_file(&self, f: &FileMeta) -> StoreResult<()>;

    async fn file(&self, id: &str) -> StoreResult<Option<FileMeta>>;

    /// Removes a file's record; true when there was one.
    async fn delete_file(&self, id: &str) -> StoreResult<bool>;

    // ---- broadcasts ----

    /// Stores a new broadcast; when one with its id exists, changes nothing and returns that one.
    async fn create_broadcast(&self, b: &Broadcast) -> StoreResult<Broadcast>;

    async fn broadcast(&self, id: &str) -> StoreResult<Option<Broadcast>>;

    /// Saves a running broadcast's progress (or its end). Changes nothing and returns false when
    /// the stored one is no longer running (it was cancelled).
    async fn save_broadcast(&self, b: &Broadcast) -> StoreResult<bool>;

    /// Cancels a running broadcast; returns it as stored now (`None`: no such broadcast).
    async fn cancel_broadcast(&self, id: &str, ts: i64) -> StoreResult<Option<Broadcast>>;

    /// The running broadcasts, oldest first.
    async fn running_broadcasts(&self) -> StoreResult<Vec<Broadcast>>;

    /// Records that `users` were active on `day` (see [`day_of`]); idempotent.
    async fn record_active(&self, day: u32, users: &[String]) -> StoreResult<()>;

    /// The counts of [`Stats`], with one [`DayStats`] per day of `first_day..=last_day`.
    async fn stats(&self, first_day: u32, last_day: u32) -> StoreResult<Stats>;

    /// Revokes the tokens of one of a user's devices issued before `before_ms` (unix ms); the
    /// bound only moves forward. Returns the device's bound now.
    async fn revoke_device(&self, user: &str, device: &str, before_ms: u64) -> StoreResult<u64>;

    /// The devices of `users` whose tokens were revoked one by one: `(user, device, before_ms)`.
    async fn device_revocations(&self, users: &[String]) -> StoreResult<Vec<(String, String, u64)>>;

    /// Registers `r` as its device's push token, replacing the device's previous one. The same
    /// provider token registered to another user or device is removed: a token belongs to one
    /// device (a phone that changed hands).
    async fn set_push_token(&self, r: &PushRegistration) -> StoreResult<()>;

    /// Removes a device's push registration; with `token`, only while it is still that token (a
    /// provider's "invalid" answer never removes a newer one). Returns whether one was removed.
    async fn remove_push_token(&self, user: &str, device: &str, token: Option<&str>) -> StoreResult<bool>;

    /// The push registrations of these users.
    async fn push_tokens(&self, users: &[String]) -> StoreResult<Vec<PushRegistration>>;

    /// A number that changes with every change of push registrations (after the change is
    /// visible): while it stays the same, registrations read before are still current.
    async fn push_tokens_version(&self) -> StoreResult<u64>;

    /// Folds planned messages into their devices' push jobs ([`crate::push::merge`]) and moves
    /// the outbox cursor [`crate::push::CURSOR`] to `cursor` (never backwards). Planning the same
    /// events again changes nothing.
    async fn plan_pushes(&self, planned: &[Planned], cursor: u64) -> StoreResult<()>;

    /// Pending push jobs due at `now`, earliest first, at most `limit`.
    async fn due_pushes(&self, now: i64, limit: usize) -> StoreResult<Vec<PushJob>>;

    /// Finishes the push job the sender read as `job` ([`crate::push::finish`]; `forget_upto`:
    /// the planning cursor as stored, done jobs planned before it are removed). False when
    /// there was nothing to finish (it is not pending).
    async fn finish_push(&self, job: &PushJob, f: Finish, forget_upto: u64) -> StoreResult<bool>;
}
