//! The MongoDB store: several confab nodes share one MongoDB 6+ replica set (transactions are
//! required). `docs/storage.md` describes the collections, fields and indexes, how `seq` stays
//! contiguous with several writers, and what a message costs in commands.
//!
//! # Runtime
//!
//! A `mongodb::Client` belongs to the tokio runtime that created it (its connection pool and
//! monitors are tasks there), while a node calls the store from many actix threads, each with a
//! current-thread runtime of its own. So the store owns a small multi-thread runtime
//! (`confab-mongo`, 2 threads): the client, the writer task and every read run there, and the
//! [`Store`] methods, called from any runtime, hand their work over and await the answer.
//!
//! # Writes
//!
//! Every write goes through one writer task per node (group commit, see `writer`): it drains the
//! queue and commits the whole batch in one transaction (write concern majority, journaled), then
//! answers. Reads run directly, with read concern majority, and never wait for the writer.
//!
//! # When MongoDB is unreachable
//!
//! An operation waits at most `server_selection_timeout_ms` for a server (and `op_timeout_ms` in
//! all) and fails with `StoreError::Unavailable`; for the next second every operation and `ping`
//! fail at once (a breaker), then the next one tries again. Once MongoDB answers, everything works
//! again; nothing needs a restart. Start-up does not need MongoDB either: the indexes are created
//! by the first operation that reaches it, and until then writes and `ping` fail.

mod append;
mod batch;
mod broadcasts;
mod clock;
mod conn;
mod contacts;
mod docs;
mod groups;
mod migrate;
mod nodes;
mod ops;
mod outbox;
mod push;
mod reads;
mod tx;
mod users;
mod writer;

use crate::runtime::OwnedRuntime;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{writer_stopped, WriteQueue};
use async_trait::async_trait;
use confab_actors::error::StoreError;
use confab_actors::metrics::Metrics;
use confab_actors::model::{
    Broadcast, Changes, Contact, Conversation, ConversationView, FileMeta, FlagsPatch, Group, GroupBan, JoinRequest,
    Member, Message, NoticeConfirmation, User, UserConvState, UserPatch,
};
use confab_actors::push::{Finish, Planned, PushJob, PushRegistration};
use confab_actors::store::{
    Appended, ContactChange, ContactPlan, GroupDismiss, GroupUpdate, HistoryQuery, MemberChange, MuteChange, NewGroup,
    NewMessage, Recalled, RoleChange, Stats, Store, StoreResult,
};
use tokio::sync::{mpsc, oneshot};

use batch::Op;
use conn::{Conn, Reach};
use tx::Answer;
use writer::Job;

pub use migrate::{migrate_from_embedded, MigrationReport};

/// How to reach MongoDB (from `[storage.mongodb]`).
#[derive(Debug, Clone)]
pub struct MongoOptions {
    /// A `mongodb://` connection string.
    pub uri: String,
    pub database: String,
    pub connect_timeout: Duration,
    pub server_selection_timeout: Duration,
    /// Longest time for one read or one write batch.
    pub op_timeout: Duration,
    /// The node's id (`cluster.node_id`), the first part of its document in `nodes`.
    pub node: String,
    /// Sees every command the client sends (besides the metrics): for diagnostics and tests.
    pub monitor: Option<CommandMonitor>,
}

/// A function that sees every command event of the store's client.
#[derive(Clone)]
pub struct CommandMonitor(pub Arc<dyn Fn(&mongodb::event::command::CommandEvent) + Send + Sync>);

impl std::fmt::Debug for CommandMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommandMonitor")
    }
}

impl MongoOptions {
    /// Options with the default timeouts (3 s, 3 s, 10 s).
    pub fn new(uri: impl Into<String>, database: impl Into<String>) -> MongoOptions {
        MongoOptions {
            uri: uri.into(),
            database: database.into(),
            connect_timeout: Duration::from_secs(3),
            server_selection_timeout: Duration::from_secs(3),
            op_timeout: Duration::from_secs(10),
            node: String::new(),
            monitor: None,
        }
    }

    pub fn from_config(c: &crate::config::MongoDb) -> MongoOptions {
        MongoOptions {
            uri: c.uri.clone(),
            database: c.database.clone(),
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            server_selection_timeout: Duration::from_millis(c.server_selection_timeout_ms),
            op_timeout: Duration::from_millis(c.op_timeout_ms),
            node: String::new(),
            monitor: None,
        }
    }
}

/// The MongoDB store. See the module documentation.
pub struct MongoStore {
    conn: Arc<Conn>,
    queue: WriteQueue<Job>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    handle: tokio::runtime::Handle,
    /// Declared last: dropped after everything that uses it.
    _rt: OwnedRuntime,
}

fn unexpected() -> StoreError {
    StoreError::Unavailable("internal: unexpected answer from the store writer".into())
}

impl MongoStore {
    /// Connects, creates the indexes if MongoDB answers (else later, on first use), and starts the
    /// writer. Fails on an unusable URI or when MongoDB refuses the set-up (authentication,
    /// conflicting indexes); an unreachable MongoDB is not an error here.
    pub async fn open(opts: MongoOptions, metrics: Arc<Metrics>) -> StoreResult<MongoStore> {
        let rt = OwnedRuntime::new("confab-mongo", 2)
            .map_err(|e| StoreError::Unavailable(format!("cannot start the MongoDB runtime: {e}")))?;
        let handle = rt.handle().ok_or_else(|| StoreError::Unavailable("the MongoDB runtime is gone".into()))?;
        let task_failed =
            |e: tokio::task::JoinError| StoreError::Unavailable(format!("MongoDB set-up task failed: {e}"));
        let conn = handle.spawn(async move { Conn::connect(&opts, metrics).await }).await.map_err(task_failed)??;
        let conn = Arc::new(conn);

        let c = conn.clone();
        let prepared = handle.spawn(async move { tokio::time::timeout(c.op_timeout, c.ensure_ready()).await }).await;
        match prepared.map_err(task_failed)? {
            Ok(Ok(())) => {}
            Ok(Err(e)) if conn.check_breaker().is_ok() => return Err(e),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "MongoDB is unreachable; starting anyway (not ready until it answers)")
            }
            Err(_) => tracing::warn!("MongoDB did not answer in time; starting anyway (not ready until it answers)"),
        }

        let (tx, rx) = mpsc::channel(writer::QUEUE_CAPACITY);
        let writer = handle.spawn(writer::run(conn.clone(), rx));
        Ok(MongoStore {
            queue: WriteQueue::new(tx, conn.metrics.clone()),
            conn,
            writer: Mutex::new(Some(writer)),
            handle,
            _rt: rt,
        })
    }

    /// Stops accepting writes and waits until the writer has committed what is queued. Later writes
    /// fail with `Unavailable`; reads keep working until the store is dropped.
    pub async fn close(&self) {
        self.queue.close();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer {
            if w.await.is_err() {
                tracing::error!("the MongoDB store writer ended abnormally");
            }
        }
    }

    /// Runs a read on the store's runtime, bounded by `op_timeout`.
    async fn read<T, F, Fut>(&self, what: &'static str, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Conn>) -> Fut,
        Fut: Future<Output = StoreResult<T>> + Send + 'static,
    {
        self.conn.check_breaker()?;
        let conn = self.conn.clone();
        let fut = f(conn.clone());
        let task = self.handle.spawn(async move {
            match tokio::time::timeout(conn.op_timeout, fut).await {
                Ok(r) => {
                    if r.is_ok() {
                        conn.observe(&r, Reach::Up);
                    }
                    r
                }
                Err(_) => Err(conn.timed_out(what)),
            }
        });
        task.await.map_err(|e| StoreError::Unavailable(format!("store read task failed: {e}")))?
    }

    /// Queues a write for the writer and waits until it is committed (or has failed).
    async fn write(&self, op: Op) -> StoreResult<Answer> {
        self.conn.check_breaker()?;
        let (reply, answer) = oneshot::channel();
        self.queue.send(Job { op, reply, enqueued: Instant::now() }).await?;
        answer.await.map_err(|_| writer_stopped())?
    }
}

impl Drop for MongoStore {
    /// Closes the queue and lets the writer finish in the background: it commits what is queued
    /// and leaves the cluster (`nodes::unregister`), for at most the operation timeout, then the
    /// runtime (and with it the client) shuts down. Nobody waits for an answer any more: every
    /// caller holds a reference to the store.
    fn drop(&mut self) {
        self.queue.close();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (Some(writer), Some(rt)) = (writer, self._rt.take()) else { return };
        let limit = self.conn.op_timeout;
        let spawned = std::thread::Builder::new().name("confab-mongo-close".into()).spawn(move || {
            rt.block_on(async move {
                let _ = tokio::time::timeout(limit, writer).await;
            });
            drop(rt);
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot finish the MongoDB store writer in the background");
        }
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn ping(&self) -> StoreResult<()> {
        self.queue.ensure_open()?;
        self.read("ping", |c| async move {
            c.ping().await?;
            c.ensure_ready().await
        })
        .await
    }

    async fn append(&self, msg: NewMessage) -> StoreResult<Appended> {
        match self.write(Op::Append(msg)).await? {
            Answer::Appended(a) => Ok(a),
            _ => Err(unexpected()),
        }
    }

    async fn message(&self, conv_id: &str, seq: u64) -> StoreResult<Option<Message>> {
        let conv_id = conv_id.to_owned();
        self.read("message", move |c| async move { reads::message(&c, &conv_id, seq).await }).await
    }

    async fn history(&self, conv_id: &str, for_user: Option<&str>, q: HistoryQuery) -> StoreResult<Vec<Message>> {
        let conv_id = conv_id.to_owned();
        let for_user = for_user.map(str::to_owned);
        self.read("history", move |c| async move { reads::history(&c, &conv_id, for_user.as_deref(), q).await }).await
    }

    async fn recall(&self, conv_id: &str, seq: u64, by: &str) -> StoreResult<Recalled> {
        match self.write(Op::Recall { conv_id: conv_id.to_owned(), seq, by: by.to_owned() }).await? {
            Answer::Recalled(r) => Ok(r),
            _ => Err(unexpected()),
        }
    }

    async fn conversation(&self, conv_id: &str) -> StoreResult<Option<Conversation>> {
        let conv_id = conv_id.to_owned();
        self.read("conversation", move |c| async move { reads::conversation(&c, &conv_id).await }).await
    }

    async fn user_conv(&self, user: &str, conv_id: &str) -> StoreResult<Option<UserConvState>> {
        let (user, conv_id) = (user.to_owned(), conv_id.to_owned());
        self.read("user_conv", move |c| async move { reads::user_conv(&c, &user, &conv_id).await }).await
    }

    async fn conversation_view(&self, user: &str, conv_id: &str) -> StoreResult<Option<ConversationView>> {
        let (user, conv_id) = (user.to_owned(), conv_id.to_owned());
        self.read("conversation_view", move |c| async move { reads::conversation_view(&c, &user, &conv_id).await })
            .await
    }

    async fn unread(&self, user: &str) -> StoreResult<(u64, u64)> {
        let user = user.to_owned();
        self.read("unread", move |c| async move { reads::unread(&c, &user).await }).await
    }

    async fn list_conversations(&self, user: &str, since: u64, limit: usize) -> StoreResult<Vec<ConversationView>> {
        let user = user.to_owned();
        self.read(
            "list_conversations",
            move |c| async move { reads::list_conversations(&c, &user, since, limit).await },
        )
        .await
    }

    async fn mark_read(&self, user: &str, conv_id: &str, seq: u64) -> StoreResult<Option<UserConvState>> {
        match self.write(Op::MarkRead { user: user.to_owned(), conv_id: conv_id.to_owned(), seq }).await? {
            Answer::MaybeState(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    async fn set_flags(&self, user: &str, conv_id: &str, patch: FlagsPatch) -> StoreResult<UserConvState> {
        match self.write(Op::SetFlags { user: user.to_owned(), conv_id: conv_id.to_owned(), patch }).await? {
            Answer::State(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    async fn clear_for_user(&self, user: &str, conv_id: &str) -> StoreResult<UserConvState> {
        match self.write(Op::Clear { user: user.to_owned(), conv_id: conv_id.to_owned() }).await? {
            Answer::State(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    async fn delete_for_user(&self, user: &str, conv_id: &str, seqs: &[u64]) -> StoreResult<UserConvState> {
        let op = Op::Delete { user: user.to_owned(), conv_id: conv_id.to_owned(), seqs: seqs.to_vec() };
        match self.write(op).await? {
            Answer::State(s) => Ok(s),
            _ => Err(unexpected()),
        }
    }

    async fn changes(&self, user: &str, conv_id: &str, since: u64) -> StoreResult<Changes> {
        let (user, conv_id) = (user.to_owned(), conv_id.to_owned());
        self.read("changes", move |c| async move { reads::changes(&c, &user, &conv_id, since).await }).await
    }

    async fn read_cursors(&self, conv_id: &str) -> StoreResult<Vec<(String, u64)>> {
        let conv_id = conv_id.to_owned();
        self.read("read_cursors", move |c| async move { reads::read_cursors(&c, &conv_id).await }).await
    }

    async fn create_group(&self, g: NewGroup) -> StoreResult<(Group, Message)> {
        match self.write(Op::CreateGroup(g)).await? {
            Answer::Created(g, m) => Ok((*g, m)),
            _ => Err(unexpected()),
        }
    }

    async fn group(&self, group_id: &str) -> StoreResult<Option<Group>> {
        let group_id = group_id.to_owned();
        self.read("group", move |c| async move { reads::group(&c, &group_id).await }).await
    }

    async fn members(&self, group_id: &str) -> StoreResult<Vec<Member>> {
        let group_id = group_id.to_owned();
        self.read("members", move |c| async move { reads::members(&c, &group_id).await }).await
    }

    async fn groups_of(&self, user: &str) -> StoreResult<Vec<(String, Member)>> {
        let user = user.to_owned();
        self.read("groups_of", move |c| async move { contacts::groups_of(&c, &user).await }).await
    }

    async fn change_members(&self, c: MemberChange) -> StoreResult<Message> {
        match self.write(Op::ChangeMembers(c)).await? {
            Answer::Message(m) => Ok(m),
            _ => Err(unexpected()),
        }
    }

    async fn update_group(&self, u: GroupUpdate) -> StoreResult<(Group, Message)> {
        match self.write(Op::UpdateGroup(u)).await? {
            Answer::Created(g, m) => Ok((*g, m)),
            _ => Err(unexpected()),
        }
    }

    async fn set_roles(&self, c: RoleChange) -> StoreResult<(Group, Message)> {
        match self.write(Op::SetRoles(c)).await? {
            Answer::Created(g, m) => Ok((*g, m)),
            _ => Err(unexpected()),
        }
    }

    async fn mute_members(&self, c: MuteChange) -> StoreResult<(Group, Message)> {
        match self.write(Op::MuteMembers(c)).await? {
            Answer::Created(g, m) => Ok((*g, m)),
            _ => Err(unexpected()),
        }
    }

    async fn bans(&self, group_id: &str) -> StoreResult<Vec<GroupBan>> {
        let group_id = group_id.to_owned();
        self.read("bans", move |c| async move { groups::bans(&c, &group_id).await }).await
    }

    async fn put_join_requests(&self, group_id: &str, requests: Vec<JoinRequest>) -> StoreResult<()> {
        match self.write(Op::PutJoinRequests { group_id: group_id.to_owned(), requests }).await? {
            Answer::Requests(_) => Ok(()),
            _ => Err(unexpected()),
        }
    }

    async fn remove_join_request(&self, group_id: &str, user: &str) -> StoreResult<Option<JoinRequest>> {
        match self.write(Op::RemoveJoinRequest { group_id: group_id.to_owned(), user: user.to_owned() }).await? {
            Answer::Requests(mut r) => Ok(r.pop()),
            _ => Err(unexpected()),
        }
    }

    async fn join_requests(&self, group_id: &str) -> StoreResult<Vec<JoinRequest>> {
        let group_id = group_id.to_owned();
        self.read("join_requests", move |c| async move { groups::requests(&c, &group_id).await }).await
    }

    async fn confirm_notice(&self, group_id: &str, c: NoticeConfirmation) -> StoreResult<()> {
        let group_id = group_id.to_owned();
        self.read("confirm_notice", move |conn| async move { groups::confirm_notice(&conn, &group_id, &c).await }).await
    }

    async fn notice_confirmations(&self, group_id: &str) -> StoreResult<Vec<NoticeConfirmation>> {
        let group_id = group_id.to_owned();
        self.read("notice_confirmations", move |c| async move { groups::notice_confirmations(&c, &group_id).await })
            .await
    }

    async fn dismiss_group(&self, d: GroupDismiss) -> StoreResult<(Group, Message)> {
        match self.write(Op::DismissGroup(d)).await? {
            Answer::Created(g, m) => Ok((*g, m)),
            _ => Err(unexpected()),
        }
    }

    async fn change_contact(&self, c: ContactChange) -> StoreResult<ContactPlan> {
        match self.write(Op::ChangeContact(c)).await? {
            Answer::Contact(plan) => Ok(*plan),
            _ => Err(unexpected()),
        }
    }

    async fn contact(&self, owner: &str, peer: &str) -> StoreResult<Option<Contact>> {
        let (owner, peer) = (owner.to_owned(), peer.to_owned());
        self.read("contact", move |c| async move { contacts::contact(&c, &owner, &peer).await }).await
    }

    async fn list_contacts(&self, owner: &str, since: u64, limit: usize) -> StoreResult<Vec<Contact>> {
        let owner = owner.to_owned();
        self.read("list_contacts", move |c| async move { contacts::list(&c, &owner, since, limit).await }).await
    }

    async fn share_group(&self, a: &str, b: &str) -> StoreResult<bool> {
        let (a, b) = (a.to_owned(), b.to_owned());
        self.read("share_group", move |c| async move { contacts::share_group(&c, &a, &b).await }).await
    }

    async fn upsert_user(&self, p: UserPatch) -> StoreResult<User> {
        self.read("upsert_user", move |c| async move { users::upsert_user(&c, p).await }).await
    }

    async fn user(&self, id: &str) -> StoreResult<Option<User>> {
        let id = id.to_owned();
        self.read("user", move |c| async move { users::user(&c, &id).await }).await
    }

    async fn list_users(&self, prefix: &str, after: &str, limit: usize) -> StoreResult<Vec<User>> {
        let (prefix, after) = (prefix.to_owned(), after.to_owned());
        self.read("list_users", move |c| async move { users::list(&c, &prefix, &after, limit).await }).await
    }

    async fn list_groups(&self, prefix: &str, after: &str, limit: usize) -> StoreResult<Vec<Group>> {
        let (prefix, after) = (prefix.to_owned(), after.to_owned());
        self.read("list_groups", move |c| async move { groups::list(&c, &prefix, &after, limit).await }).await
    }

    async fn search_users(&self, key: &str, limit: usize) -> StoreResult<Vec<User>> {
        let key = key.to_owned();
        self.read("search_users", move |c| async move { users::search_users(&c, &key, limit).await }).await
    }

    async fn search_groups(&self, key: &str, limit: usize) -> StoreResult<Vec<Group>> {
        let key = key.to_owned();
        self.read("search_groups", move |c| async move { users::search_groups(&c, &key, limit).await }).await
    }

    async fn users(&self, ids: &[String]) -> StoreResult<Vec<User>> {
        let ids = ids.to_vec();
        self.read("users", move |c| async move { users::users(&c, &ids).await }).await
    }

    async fn set_user_disabled(&self, id: &str, disabled: bool, ts: i64) -> StoreResult<User> {
        let id = id.to_owned();
        self.read("set_user_disabled", move |c| async move { users::set_disabled(&c, &id, disabled, ts).await }).await
    }

    async fn revoke_tokens(&self, id: &str, before_ms: u64, ts: i64) -> StoreResult<User> {
        let id = id.to_owned();
        self.read("revoke_tokens", move |c| async move { users::revoke_tokens(&c, &id, before_ms, ts).await }).await
    }

    async fn put_file(&self, f: &FileMeta) -> StoreResult<()> {
        let f = f.clone();
        self.read("put_file", move |c| async move { broadcasts::put_file(&c, &f).await }).await
    }

    async fn file(&self, id: &str) -> StoreResult<Option<FileMeta>> {
        let id = id.to_owned();
        self.read("file", move |c| async move { broadcasts::file(&c, &id).await }).await
    }

    async fn delete_file(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.read("delete_file", move |c| async move { broadcasts::delete_file(&c, &id).await }).await
    }

    async fn create_broadcast(&self, b: &Broadcast) -> StoreResult<Broadcast> {
        let b = b.clone();
        self.read("create_broadcast", move |c| async move { broadcasts::create(&c, &b).await }).await
    }

    async fn broadcast(&self, id: &str) -> StoreResult<Option<Broadcast>> {
        let id = id.to_owned();
        self.read("broadcast", move |c| async move { broadcasts::get(&c, &id).await }).await
    }

    async fn save_broadcast(&self, b: &Broadcast) -> StoreResult<bool> {
        let b = b.clone();
        self.read("save_broadcast", move |c| async move { broadcasts::save(&c, &b).await }).await
    }

    async fn cancel_broadcast(&self, id: &str, ts: i64) -> StoreResult<Option<Broadcast>> {
        let id = id.to_owned();
        self.read("cancel_broadcast", move |c| async move { broadcasts::cancel(&c, &id, ts).await }).await
    }

    async fn running_broadcasts(&self) -> StoreResult<Vec<Broadcast>> {
        self.read("running_broadcasts", |c| async move { broadcasts::running(&c).await }).await
    }

    async fn record_active(&self, day: u32, users: &[String]) -> StoreResult<()> {
        let users = users.to_vec();
        self.read("record_active", move |c| async move { users::record_active(&c, day, &users).await }).await
    }

    async fn stats(&self, first_day: u32, last_day: u32) -> StoreResult<Stats> {
        self.read("stats", move |c| async move { users::stats(&c, first_day, last_day).await }).await
    }

    async fn revoke_device(&self, user: &str, device: &str, before_ms: u64) -> StoreResult<u64> {
        let (user, device) = (user.to_owned(), device.to_owned());
        self.read("revoke_device", move |c| async move { users::revoke_device(&c, &user, &device, before_ms).await })
            .await
    }

    async fn device_revocations(&self, users: &[String]) -> StoreResult<Vec<(String, String, u64)>> {
        let users = users.to_vec();
        self.read("device_revocations", move |c| async move { users::device_revocations(&c, &users).await }).await
    }

    async fn set_push_token(&self, r: &PushRegistration) -> StoreResult<()> {
        let r = r.clone();
        self.read("set_push_token", move |c| async move { push::set_token(&c, &r).await }).await
    }

    async fn remove_push_token(&self, user: &str, device: &str, token: Option<&str>) -> StoreResult<bool> {
        let (user, device, token) = (user.to_owned(), device.to_owned(), token.map(str::to_owned));
        self.read("remove_push_token", move |c| async move {
            push::remove_token(&c, &user, &device, token.as_deref()).await
        })
        .await
    }

    async fn push_tokens(&self, users: &[String]) -> StoreResult<Vec<PushRegistration>> {
        let users = users.to_vec();
        self.read("push_tokens", move |c| async move { push::tokens(&c, &users).await }).await
    }

    async fn push_tokens_version(&self) -> StoreResult<u64> {
        self.read("push_tokens_version", move |c| async move { push::version(&c).await }).await
    }

    async fn plan_pushes(&self, planned: &[Planned], cursor: u64) -> StoreResult<()> {
        let planned = planned.to_vec();
        self.read("plan_pushes", move |c| async move { push::plan(&c, &planned, cursor).await }).await
    }

    async fn due_pushes(&self, now: i64, limit: usize) -> StoreResult<Vec<PushJob>> {
        self.read("due_pushes", move |c| async move { push::due(&c, now, limit).await }).await
    }

    async fn finish_push(&self, job: &PushJob, f: Finish, forget_upto: u64) -> StoreResult<bool> {
        let job = job.clone();
        self.read("finish_push", move |c| async move { push::finish(&c, &job, f, forget_upto).await }).await
    }
}
