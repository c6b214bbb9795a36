//! The embedded store: one [redb](https://docs.rs/redb) file, `<dir>/confab.redb`, crash-safe
//! (copy-on-write B-trees, every commit fsynced with `Durability::Immediate`).
//!
//! # Table layout
//!
//! Values marked JSON are the `confab_actors::model` structs encoded with serde_json. Tuple keys
//! sort element by element, which gives the orderings the queries need.
//!
//! | table           | key                         | value                     | used for                              |
//! |-----------------|-----------------------------|---------------------------|---------------------------------------|
//! | `meta`          | `"ver"`                     | `u64`                     | store-wide version, +1 per mutation   |
//! | `conversations` | `conv_id`                   | `Conversation` JSON       | `last_seq`, `ver`                     |
//! | `messages`      | `(conv_id, seq)`            | `Message` JSON            | history ranges by `seq`               |
//! | `dedupe`        | `(sender, client_msg_id)`   | `(conv_id, seq)`          | idempotent appends                    |
//! | `user_convs`    | `(user, conv_id)`           | `UserConvState` JSON      | read cursor, flags; a user's list     |
//! | `conv_users`    | `(conv_id, user)`           | `()`                      | participants of a conversation        |
//! | `recalls`       | `(conv_id, ver)`            | `seq`                     | `changes`: recalls after a version    |
//! | `deletions`     | `(user, conv_id, seq)`      | `ver`                     | delete-for-me filter and `changes`    |
//! | `groups`        | `group_id`                  | `Group` JSON              | group profile, `member_count`         |
//! | `members`       | `(group_id, user)`          | `Member` JSON             | active members                        |
//! | `users`         | `user_id`                   | `User` JSON               | profiles, disabled, token revocation  |
//! | `replies`       | `(conv_id, quoted, seq)`    | `()`                      | a recall scrubs the quotes of replies |
//! | `contacts`      | `(owner, peer)`             | `Contact` JSON            | friends, requests, blocks             |
//! | `group_bans`    | `(group_id, user)`          | `GroupBan` JSON           | users banned from a group             |
//! | `group_requests` | `(group_id, user)`         | `JoinRequest` JSON        | pending applications and invitations  |
//! | `notice_confirmations` | `(group_id, user)`   | `NoticeConfirmation` JSON | who confirmed the group's notice      |
//! | `contacts_by_ver` | `(owner, ver)`            | `peer`                    | `contacts` sync by version            |
//!
//! With webhooks on, changes also write their event to the outbox tables of `outbox` in the same
//! transaction (`outbox`, `webhook_deliveries`, `webhook_pending`, `webhook_meta`).
//!
//! Every mutating operation takes exactly one new `ver` from `meta` and stamps it on everything it
//! changes, so `ver` is strictly increasing in commit order and usable as a "changed since" cursor.
//!
//! # Group commit
//!
//! All writes go through one dedicated writer thread (see `writer`). An async caller boxes its
//! operation (a closure over the `WriteTransaction`) with a oneshot reply channel and sends it over
//! a bounded `tokio::sync::mpsc` channel (capacity 4096). The thread takes one operation, drains
//! every queued one (up to 4096), runs them in arrival order in ONE transaction, commits, and only
//! then answers every caller: no result is sent before its data is durable, and `seq`s are assigned in the order
//! appends were submitted. An operation that fails with a domain error (`NotFound`, `Conflict`)
//! checks before writing, so it writes nothing and the batch goes on. If an operation fails with
//! `Unavailable` (I/O, corrupt data) or panics, or the commit fails, the transaction is aborted and
//! every operation of the batch gets `Unavailable`; the thread carries on with the next batch.
//!
//! If the failure was an I/O error (disk full, `EFBIG`, `EIO`), redb refuses every later
//! transaction of that database: the writer then closes it and re-opens the file by itself, with
//! growing waits, while every operation answers `Unavailable` at once and `ping` fails (see
//! `health`).
//!
//! A run of consecutive appends in a batch shares its open tables, and keeps the conversation
//! rows, the senders' cursor rows and the version counter it touches in memory, writing each
//! changed row once when the run ends (`ops::Appender`): under load a commit holds thousands of
//! appends to a few hundred conversations, and this turns ~10 B-tree operations and three JSON
//! round trips per append into ~3 and one.
//!
//! Reads run on `tokio::task::spawn_blocking` in a redb `ReadTransaction` (an MVCC snapshot of the
//! last commit) of the database open at that moment, and never wait for the writer.

mod broadcasts;
mod contacts;
mod groups;
mod health;
mod names;
mod ops;
pub(crate) mod outbox;
pub(crate) mod push;
mod reads;
pub(crate) mod tables;
mod users;
mod writer;

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::{writer_stopped, WriteQueue};
use async_trait::async_trait;
use confab_actors::error::StoreError;
use confab_actors::metrics::Metrics;
use confab_actors::model::{
    Broadcast, Changes, Contact, Conversation, ConversationView, FileMeta, FlagsPatch, Group, GroupBan, JoinRequest,
    Member, Message, NoticeConfirmation, User, UserConvState, UserPatch,
};
use confab_actors::outbox::Change;
use confab_actors::push::{Finish, Planned, PushJob, PushRegistration};
use confab_actors::store::{
    Appended, ContactChange, ContactPlan, GroupDismiss, GroupUpdate, HistoryQuery, MemberChange, MuteChange, NewGroup,
    NewMessage, Recalled, RoleChange, Stats, Store, StoreResult,
};
use redb::{ReadTransaction, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use tables::unavailable;
use writer::BoxedJob;

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "confab.redb";

/// The embedded, persistent store. See the module documentation for its design.
pub struct EmbeddedStore {
    /// The database, shared with the writer, which re-opens it after an I/O error (`health`).
    db: Arc<health::Handle>,
    /// The writer's queue.
    queue: WriteQueue<BoxedJob>,
    /// The writer thread; taken by `close` or `Drop` to join it.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Webhooks are on: changes also write their outbox event (see `outbox`).
    outbox: std::sync::atomic::AtomicBool,
}

impl EmbeddedStore {
    /// A group change and, with webhooks on, its `kind` event, in one transaction.
    async fn group_change<C: Send + 'static>(
        &self,
        kind: &'static str,
        change: C,
        op: fn(&WriteTransaction, C) -> StoreResult<(Group, Message)>,
    ) -> StoreResult<(Group, Message)> {
        let emit = self.outbox.load(Relaxed);
        self.write(move |txn| {
            let (group, message) = op(txn, change)?;
            emit_event(txn, emit, Change::Group { kind, group: &group, message: &message })?;
            Ok((group, message))
        })
        .await
    }

    /// Opens (or creates) the store in `dir`, creating the directory if missing, and starts the
    /// writer thread.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(DB_FILE);
        let db = Arc::new(health::Handle::new(path.clone(), health::open_database(&path)?, &metrics));
        let (tx, rx) = mpsc::channel(writer::QUEUE_CAPACITY);
        let thread = writer::spawn(db.clone(), rx, metrics.clone())
            .map_err(|e| StoreError::Unavailable(format!("cannot start the store writer: {e}")))?;
        Ok(EmbeddedStore {
            db,
            queue: WriteQueue::new(tx, metrics),
            thread: Mutex::new(Some(thread)),
            outbox: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Stops accepting writes, lets the writer finish what is queued and waits for its thread to
    /// end. Later writes fail with `Unavailable`; reads keep working until the store is dropped
    /// (which releases the file).
    pub async fn close(&self) {
        self.queue.close();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let joined = tokio::task::spawn_blocking(move || handle.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the store writer thread ended abnormally");
            }
        }
    }

    /// Queues a write operation for the writer thread and waits until it is committed.
    async fn write<T, F>(&self, op: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteTransaction) -> StoreResult<T> + Send + 'static,
    {
        self.submit(writer::job(op)).await
    }

    /// Queues a job for the writer thread and waits for its answer (after the commit).
    async fn submit<T>(&self, (job, reply): (BoxedJob, oneshot::Receiver<StoreResult<T>>)) -> StoreResult<T> {
        // Fails at once while the database is closed for recovery, without queueing.
        self.db.db()?;
        self.queue.send(job).await?;
        reply.await.map_err(|_| writer_stopped())?
    }

    /// Runs a read on a blocking thread in its own read transaction.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ReadTransaction) -> StoreResult<T> + Send + 'static,
    {
        let db = self.db.db()?;
        let result = tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(unavailable)?;
            f(&txn)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("store read task failed: {e}")))?;
        if matches!(result, Err(StoreError::Unavailable(_))) && self.db.ask_check() {
            // Perhaps an I/O error, which only a write transaction reveals: an empty write makes
            // the writer find out (and re-open the database) without waiting for the next write.
            self.queue_check();
        }
        result
    }

    /// Queues an empty write without waiting for it (nobody needs its answer).
    fn queue_check(&self) {
        let (job, _answer) = writer::job(|_txn: &WriteTransaction| Ok(()));
        self.queue.try_send(job);
    }
}

/// With webhooks on (`emit`), writes the change's event in the change's transaction.
fn emit_event(txn: &WriteTransaction, emit: bool, change: Change<'_>) -> StoreResult<()> {
    if let Some(event) = change.event().filter(|_| emit) {
        outbox::push(txn, event)?;
    }
    Ok(())
}

/// Creates every table that does not exist yet.
fn create_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(tables::META).map_err(unavailable)?;
    txn.open_table(tables::CONVS).map_err(unavailable)?;
    txn.open_table(tables::MESSAGES).map_err(unavailable)?;
    txn.open_table(tables::DEDUPE).map_err(unavailable)?;
    txn.open_table(tables::USER_CONVS).map_err(unavailable)?;
    txn.open_table(tables::CONV_USERS).map_err(unavailable)?;
    txn.open_table(tables::RECALLS).map_err(unavailable)?;
    txn.open_table(tables::DELETIONS).map_err(unavailable)?;
    txn.open_table(tables::GROUPS).map_err(unavailable)?;
    txn.open_table(tables::MEMBERS).map_err(unavailable)?;
    outbox::create_tables(txn)?;
    txn.open_table(tables::USERS).map_err(unavailable)?;
    txn.open_table(tables::REPLIES).map_err(unavailable)?;
    txn.open_table(tables::CONTACTS).map_err(unavailable)?;
    txn.open_table(tables::GROUP_BANS).map_err(unavailable)?;
    txn.open_table(tables::GROUP_REQUESTS).map_err(unavailable)?;
    txn.open_table(tables::NOTICE_CONFIRMATIONS).map_err(unavailable)?;
    txn.open_table(tables::CONTACTS_BY_VER).map_err(unavailable)?;
    txn.open_table(tables::DEVICE_REVOCATIONS).map_err(unavailable)?;
    txn.open_table(tables::ACTIVE_USERS).map_err(unavailable)?;
    txn.open_table(tables::USER_NAMES).map_err(unavailable)?;
    txn.open_table(tables::BROADCASTS).map_err(unavailable)?;
    txn.open_table(tables::FILES).map_err(unavailable)?;
    txn.open_table(tables::GROUP_NAMES).map_err(unavailable)?;
    push::create_tables(txn)?;
    ops::index_replies(txn)?;
    names::index_names(txn)?;
    Ok(())
}

impl Drop for EmbeddedStore {
    /// Closes the queue and joins the writer thread, so that the database file is released once
    /// the store is gone. The writer only has to finish what is queued, so this is short.
    fn drop(&mut self) {
        self.queue.close();
        if let Some(handle) = self.thread.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            if handle.join().is_err() {
                tracing::error!("the store writer thread panicked");
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn ping(&self) -> StoreResult<()> {
        self.queue.ensure_open()?;
        if !self.db.healthy() {
            return Err(StoreError::Unavailable("the store is recovering from an I/O error".into()));
        }
        self.read(|txn| {
            txn.open_table(tables::META).map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn append(&self, msg: NewMessage) -> StoreResult<Appended> {
        let emit = self.outbox.load(Relaxed);
        self.submit(writer::batch_job(move |batch: &mut writer::Batch<'_>| {
            let a = batch.appender()?.append(msg)?;
            // The outbox's tables are not the appender's.
            emit_event(batch.txn_beside_appender(), emit, Change::Appended(&a))?;
            Ok(a)
        }))
        .await
    }

    async fn message(&self, conv_id: &str, seq: u64) -> StoreResult<Option<Message>> {
        let conv_id = conv_id.to_owned();
        self.read(move |txn| reads::message(txn, &conv_id, seq)).await
    }

    async fn history(&self, conv_id: &str, for_user: Option<&str>, q: HistoryQuery) -> StoreResult<Vec<Message>> {
        let conv_id = conv_id.to_owned();
        let for_user = for_user.map(str::to_owned);
        self.read(move |txn| reads::history(txn, &conv_id, for_user.as_deref(), q)).await
    }

    async fn recall(&self, conv_id: &str, seq: u64, by: &str) -> StoreResult<Recalled> {
        let (conv_id, by) = (conv_id.to_owned(), by.to_owned());
        let emit = self.outbox.load(Relaxed);
        self.write(move |txn| {
            let r = ops::recall(txn, &conv_id, seq, &by)?;
            emit_event(txn, emit, Change::Recalled(&r))?;
            Ok(r)
        })
        .await
    }

    async fn conversation(&self, conv_id: &str) -> StoreResult<Option<Conversation>> {
        let conv_id = conv_id.to_owned();
        self.read(move |txn| reads::conversation(txn, &conv_id)).await
    }

    async fn user_conv(&self, user: &str, conv_id: &str) -> StoreResult<Option<UserConvState>> {
        let (user, conv_id) = (user.to_owned(), conv_id.to_owned());
        self.read(move |txn| reads::user_conv(txn, &user, &conv_id)).await
    }

    async fn conversation_view(&self, user: &str, conv_id: &str) -> StoreResult<Option<ConversationView>> {
        let (user, conv_id) = (user.to_owned(), conv_id.to_owned());
        self.read(move |txn| reads::conversation_view(txn, &user, &conv_id)).await
    }

    async fn list_conversations(&self, user: &str, since: u64, limit: usize) -> StoreResult<Vec<ConversationView>> {
        let user = user.to_owned();
        self.read(move |txn| reads::list_conversations(txn, &user, since, limit)).await
    }

    async fn unread(&self, user: &str) -> StoreResult<(u64, u64)> {
        let user = user.to_owned();
        self.read(move |txn| reads::unread(txn, &user)).await
    }

    async fn mark_read(&self, user: &str, conv_id: &str, seq: u64) -> StoreResult<Option<UserConvState>> {
        let (user, conv_id) = (user.to_owned(), conv_id.to_owned());
        self.write(move |txn| ops::mark_read(txn, &user, &conv_id, seq)).await
    }

    async fn set_flags(&self, user: &str, conv_id: &str, patch: FlagsPatch) -> StoreResult<UserConvState> {
        let (user, conv_id) = (user.to_owned(), conv_id.to_owned());
        self.write(move |txn| ops::set_flags(txn, &user, &conv_id, patch)).await
    }

    async fn delete_for_user(&self, user: &str, conv_id: &str, seqs: &[u64]) -> StoreResult<UserConvState> {
        let (user, conv_id, seqs) = (user.to_owned(), conv_id.to_owned(), seqs.to_vec());
        self.write(move |txn| ops::delete_for_user(txn, &user, &conv_id, &seqs)).await
    }

    async fn clear_for_user(&self, user: &str, conv_id: &str) -> StoreResult<UserConvState> {
        let (user, conv_id) = (user.to_owned(), conv_id.to_owned());
        self.write(move |txn| ops::clear_for_user(txn, &user, &conv_id)).await
    }

    async fn changes(&self, user: &str, conv_id: &str, since: u64) -> StoreResult<Changes> {
        let (user, conv_id) = (user.to_owned(), conv_id.to_owned());
        self.read(move |txn| reads::changes(txn, &user, &conv_id, since)).await
    }

    async fn read_cursors(&self, conv_id: &str) -> StoreResult<Vec<(String, u64)>> {
        let conv_id = conv_id.to_owned();
        self.read(move |txn| reads::read_cursors(txn, &conv_id)).await
    }

    async fn create_group(&self, g: NewGroup) -> StoreResult<(Group, Message)> {
        let emit = self.outbox.load(Relaxed);
        self.write(move |txn| {
            let (g, m) = ops::create_group(txn, g)?;
            emit_event(txn, emit, Change::GroupCreated(&g, &m))?;
            Ok((g, m))
        })
        .await
    }

    async fn group(&self, group_id: &str) -> StoreResult<Option<Group>> {
        let group_id = group_id.to_owned();
        self.read(move |txn| reads::group(txn, &group_id)).await
    }

    async fn members(&self, group_id: &str) -> StoreResult<Vec<Member>> {
        let group_id = group_id.to_owned();
        self.read(move |txn| reads::members(txn, &group_id)).await
    }

    async fn groups_of(&self, user: &str) -> StoreResult<Vec<(String, Member)>> {
        let user = user.to_owned();
        self.read(move |txn| contacts::groups_of(txn, &user)).await
    }

    async fn change_members(&self, c: MemberChange) -> StoreResult<Message> {
        let emit = self.outbox.load(Relaxed);
        let group_id = c.group_id.clone();
        self.write(move |txn| {
            let m = ops::change_members(txn, c)?;
            emit_event(txn, emit, Change::MembersChanged { group_id: &group_id, message: &m })?;
            Ok(m)
        })
        .await
    }

    async fn update_group(&self, u: GroupUpdate) -> StoreResult<(Group, Message)> {
        self.group_change(confab_actors::outbox::GROUP_UPDATED, u, groups::update_group).await
    }

    async fn set_roles(&self, c: RoleChange) -> StoreResult<(Group, Message)> {
        self.group_change(confab_actors::outbox::GROUP_ROLES_CHANGED, c, groups::set_roles).await
    }

    async fn mute_members(&self, c: MuteChange) -> StoreResult<(Group, Message)> {
        self.group_change(confab_actors::outbox::GROUP_MUTED, c, groups::mute_members).await
    }

    async fn bans(&self, group_id: &str) -> StoreResult<Vec<GroupBan>> {
        let group_id = group_id.to_owned();
        self.read(move |txn| groups::of_group(txn, tables::GROUP_BANS, &group_id)).await
    }

    async fn put_join_requests(&self, group_id: &str, requests: Vec<JoinRequest>) -> StoreResult<()> {
        let emit = self.outbox.load(Relaxed);
        let group_id = group_id.to_owned();
        self.write(move |txn| {
            groups::put_requests(txn, &group_id, &requests)?;
            let ts = requests.iter().map(|r| r.ts).max().unwrap_or(0);
            let change = Change::JoinRequests { group_id: &group_id, change: "requested", requests: &requests, ts };
            emit_event(txn, emit, change)
        })
        .await
    }

    async fn remove_join_request(&self, group_id: &str, user: &str) -> StoreResult<Option<JoinRequest>> {
        let emit = self.outbox.load(Relaxed);
        let (group_id, user) = (group_id.to_owned(), user.to_owned());
        self.write(move |txn| {
            let removed = groups::remove_request(txn, &group_id, &user)?;
            let requests: Vec<JoinRequest> = removed.iter().cloned().collect();
            let ts = confab_actors::clock::now_ms();
            emit_event(
                txn,
                emit,
                Change::JoinRequests { group_id: &group_id, change: "rejected", requests: &requests, ts },
            )?;
            Ok(removed)
        })
        .await
    }

    async fn join_requests(&self, group_id: &str) -> StoreResult<Vec<JoinRequest>> {
        let group_id = group_id.to_owned();
        self.read(move |txn| groups::of_group(txn, tables::GROUP_REQUESTS, &group_id)).await
    }

    async fn confirm_notice(&self, group_id: &str, c: NoticeConfirmation) -> StoreResult<()> {
        let group_id = group_id.to_owned();
        self.write(move |txn| groups::confirm_notice(txn, &group_id, &c)).await
    }

    async fn notice_confirmations(&self, group_id: &str) -> StoreResult<Vec<NoticeConfirmation>> {
        let group_id = group_id.to_owned();
        self.read(move |txn| groups::of_group(txn, tables::NOTICE_CONFIRMATIONS, &group_id)).await
    }

    async fn dismiss_group(&self, d: GroupDismiss) -> StoreResult<(Group, Message)> {
        self.group_change(confab_actors::outbox::GROUP_DISMISSED, d, groups::dismiss_group).await
    }

    async fn change_contact(&self, c: ContactChange) -> StoreResult<ContactPlan> {
        let emit = self.outbox.load(Relaxed);
        self.write(move |txn| {
            let plan = contacts::change(txn, &c)?;
            emit_event(txn, emit, Change::Contact(&c, &plan))?;
            Ok(plan)
        })
        .await
    }

    async fn contact(&self, owner: &str, peer: &str) -> StoreResult<Option<Contact>> {
        let (owner, peer) = (owner.to_owned(), peer.to_owned());
        self.read(move |txn| contacts::contact(txn, &owner, &peer)).await
    }

    async fn list_contacts(&self, owner: &str, since: u64, limit: usize) -> StoreResult<Vec<Contact>> {
        let owner = owner.to_owned();
        self.read(move |txn| contacts::list(txn, &owner, since, limit)).await
    }

    async fn share_group(&self, a: &str, b: &str) -> StoreResult<bool> {
        let (a, b) = (a.to_owned(), b.to_owned());
        self.read(move |txn| contacts::share_group(txn, &a, &b)).await
    }

    async fn upsert_user(&self, p: UserPatch) -> StoreResult<User> {
        self.write(move |txn| users::upsert(txn, p)).await
    }

    async fn user(&self, id: &str) -> StoreResult<Option<User>> {
        let id = id.to_owned();
        self.read(move |txn| users::user(txn, &id)).await
    }

    async fn list_users(&self, prefix: &str, after: &str, limit: usize) -> StoreResult<Vec<User>> {
        let (prefix, after) = (prefix.to_owned(), after.to_owned());
        self.read(move |txn| users::list(txn, tables::USERS, &prefix, &after, limit)).await
    }

    async fn list_groups(&self, prefix: &str, after: &str, limit: usize) -> StoreResult<Vec<Group>> {
        let (prefix, after) = (prefix.to_owned(), after.to_owned());
        self.read(move |txn| users::list(txn, tables::GROUPS, &prefix, &after, limit)).await
    }

    async fn users(&self, ids: &[String]) -> StoreResult<Vec<User>> {
        let ids = ids.to_vec();
        self.read(move |txn| users::users(txn, &ids)).await
    }

    async fn set_user_disabled(&self, id: &str, disabled: bool, ts: i64) -> StoreResult<User> {
        let id = id.to_owned();
        self.write(move |txn| users::set_disabled(txn, &id, disabled, ts)).await
    }

    async fn revoke_tokens(&self, id: &str, before_ms: u64, ts: i64) -> StoreResult<User> {
        let id = id.to_owned();
        self.write(move |txn| users::revoke_tokens(txn, &id, before_ms, ts)).await
    }

    async fn search_users(&self, key: &str, limit: usize) -> StoreResult<Vec<User>> {
        let key = key.to_owned();
        self.read(move |txn| names::search(txn, tables::USER_NAMES, tables::USERS, &key, limit, |_: &User| true)).await
    }

    async fn search_groups(&self, key: &str, limit: usize) -> StoreResult<Vec<Group>> {
        let key = key.to_owned();
        self.read(move |txn| {
            names::search(txn, tables::GROUP_NAMES, tables::GROUPS, &key, limit, |g: &Group| !g.dismissed)
        })
        .await
    }

    async fn put_file(&self, f: &FileMeta) -> StoreResult<()> {
        let f = f.clone();
        self.write(move |txn| {
            let mut files = txn.open_table(tables::FILES).map_err(unavailable)?;
            tables::put_json(&mut files, f.id.as_str(), &f)
        })
        .await
    }

    async fn file(&self, id: &str) -> StoreResult<Option<FileMeta>> {
        let id = id.to_owned();
        self.read(move |txn| tables::get_json(&txn.open_table(tables::FILES).map_err(unavailable)?, id.as_str())).await
    }

    async fn delete_file(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |txn| {
            let mut files = txn.open_table(tables::FILES).map_err(unavailable)?;
            let removed = files.remove(id.as_str()).map_err(unavailable)?.is_some();
            Ok(removed)
        })
        .await
    }

    async fn create_broadcast(&self, b: &Broadcast) -> StoreResult<Broadcast> {
        let b = b.clone();
        self.write(move |txn| broadcasts::create(txn, &b)).await
    }

    async fn broadcast(&self, id: &str) -> StoreResult<Option<Broadcast>> {
        let id = id.to_owned();
        self.read(move |txn| broadcasts::get(txn, &id)).await
    }

    async fn save_broadcast(&self, b: &Broadcast) -> StoreResult<bool> {
        let b = b.clone();
        self.write(move |txn| broadcasts::save(txn, &b)).await
    }

    async fn cancel_broadcast(&self, id: &str, ts: i64) -> StoreResult<Option<Broadcast>> {
        let id = id.to_owned();
        self.write(move |txn| broadcasts::cancel(txn, &id, ts)).await
    }

    async fn running_broadcasts(&self) -> StoreResult<Vec<Broadcast>> {
        self.read(broadcasts::running).await
    }

    async fn record_active(&self, day: u32, users: &[String]) -> StoreResult<()> {
        let users = users.to_vec();
        self.write(move |txn| users::record_active(txn, day, &users)).await
    }

    async fn stats(&self, first_day: u32, last_day: u32) -> StoreResult<Stats> {
        self.read(move |txn| users::stats(txn, first_day, last_day)).await
    }

    async fn revoke_device(&self, user: &str, device: &str, before_ms: u64) -> StoreResult<u64> {
        let (user, device) = (user.to_owned(), device.to_owned());
        self.write(move |txn| users::revoke_device(txn, &user, &device, before_ms)).await
    }

    async fn device_revocations(&self, users: &[String]) -> StoreResult<Vec<(String, String, u64)>> {
        let users = users.to_vec();
        self.read(move |txn| users::device_revocations(txn, &users)).await
    }

    async fn set_push_token(&self, r: &PushRegistration) -> StoreResult<()> {
        let r = r.clone();
        self.write(move |txn| push::set_token(txn, &r)).await
    }

    async fn remove_push_token(&self, user: &str, device: &str, token: Option<&str>) -> StoreResult<bool> {
        let (user, device, token) = (user.to_owned(), device.to_owned(), token.map(str::to_owned));
        self.write(move |txn| push::remove_token(txn, &user, &device, token.as_deref())).await
    }

    async fn push_tokens(&self, users: &[String]) -> StoreResult<Vec<PushRegistration>> {
        let users = users.to_vec();
        self.read(move |txn| push::tokens(txn, &users)).await
    }

    async fn push_tokens_version(&self) -> StoreResult<u64> {
        self.read(push::version).await
    }

    async fn plan_pushes(&self, planned: &[Planned], cursor: u64) -> StoreResult<()> {
        let planned = planned.to_vec();
        self.write(move |txn| push::plan(txn, &planned, cursor)).await
    }

    async fn due_pushes(&self, now: i64, limit: usize) -> StoreResult<Vec<PushJob>> {
        self.read(move |txn| push::due(txn, now, limit)).await
    }

    async fn finish_push(&self, job: &PushJob, f: Finish, forget_upto: u64) -> StoreResult<bool> {
        let job = job.clone();
        self.write(move |txn| push::finish(txn, &job, f, forget_upto)).await
    }
}
