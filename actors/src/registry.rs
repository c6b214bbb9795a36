//! Which devices of which users are connected to this node, and how to reach them.
//!
//! The registry is the in-process bus: conversation actors look recipients up here and queue an
//! already-encoded frame on each session's bounded outgoing queue. There is no hub actor in the
//! delivery path; the map is sharded so lookups from several arbiters rarely contend.
//!
//! A session whose queue is full is a slow consumer: it is flagged and told to close (its client
//! reconnects and recovers with sync) instead of letting memory grow without end.

mod queue;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::Waker;

use bytestring::ByteString;
use tokio::sync::Notify;

use crate::metrics::Metrics;

pub use queue::{OutQueue, Outbound, QueueError};

const SHARDS: usize = 32;

/// Tells a session to close because it could not keep up, the node stops, or its user lost
/// access; and carries what the registry needs to decide the last (the token's issue time).
#[derive(Default)]
pub struct KickSignal {
    kicked: AtomicBool,
    /// Set with `kicked` when the node is shutting down rather than the client being slow.
    shutdown: AtomicBool,
    /// Set with `kicked` when the user lost access: 1 disabled, 2 tokens revoked.
    revoked: std::sync::atomic::AtomicU8,
    /// When the session's token was issued (unix ms): a revocation closes the sessions whose
    /// token is older than it. Moves when the client presents a fresh token (`refresh`).
    issued_ms: AtomicU64,
    notify: Notify,
}

impl KickSignal {
    /// A signal for a session whose token was issued at `issued_ms` (unix ms).
    pub fn new(issued_ms: u64) -> Self {
        let k = Self::default();
        k.issued_ms.store(issued_ms, Ordering::Release);
        k
    }
    /// When the session's token was issued (unix ms).
    pub fn issued_ms(&self) -> u64 {
        self.issued_ms.load(Ordering::Acquire)
    }
    /// The session now holds a token issued at `issued_ms`.
    pub fn set_issued_ms(&self, issued_ms: u64) {
        self.issued_ms.store(issued_ms, Ordering::Release);
    }
    /// Tells the session the node is shutting down.
    pub fn shut_down(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.kick();
    }
    pub fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
    /// Tells the session its user lost access (`disabled`: the user was disabled, else its
    /// tokens were revoked).
    pub fn revoke(&self, disabled: bool) {
        self.revoked.store(if disabled { 1 } else { 2 }, Ordering::Release);
        self.kick();
    }
    /// The close reason when the user lost access: `user_disabled` or `token_revoked`.
    pub fn revoked_reason(&self) -> Option<&'static str> {
        match self.revoked.load(Ordering::Acquire) {
            1 => Some("user_disabled"),
            2 => Some("token_revoked"),
            _ => None,
        }
    }
    /// Raises the flag once; later calls are free.
    pub fn kick(&self) {
        if !self.kicked.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }
    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }
    /// Resolves once `kick` was called.
    pub async fn kicked(&self) {
        if self.is_kicked() {
            return;
        }
        self.notify.notified().await;
    }
}

/// How the registry reaches one connected device.
#[derive(Clone)]
pub struct SessionHandle {
    /// Unique per node for the life of the process.
    pub conn_id: u64,
    pub device: Arc<str>,
    /// The session's bounded outgoing queue.
    pub tx: Arc<OutQueue>,
    pub kick: Arc<KickSignal>,
}

/// The outcome of queueing one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    Ok,
    /// The queue was full; the session has been told to close.
    SlowConsumer,
    /// The session is gone.
    Closed,
}

impl SessionHandle {
    /// Queues a frame without waiting; a full queue kicks the session.
    pub fn push(&self, frame: &ByteString, metrics: &Metrics) -> Queued {
        let q = self.offer(frame, metrics, None);
        if q == Queued::Ok {
            metrics.frames_out.fetch_add(1, Ordering::Relaxed);
        }
        q
    }

    /// [`Self::push`] without counting the frame in `frames_out` (fan-outs count a chunk at once)
    /// and, with `wakes`, leaving the writer's wake-up to the caller.
    pub fn offer(&self, frame: &ByteString, metrics: &Metrics, wakes: Option<&mut Vec<Waker>>) -> Queued {
        if self.kick.is_kicked() {
            return Queued::SlowConsumer;
        }
        let out = Outbound::Text(frame.clone());
        let sent = match wakes {
            Some(wakes) => self.tx.try_send_deferred(out, wakes),
            None => self.tx.try_send(out),
        };
        match sent {
            Ok(()) => Queued::Ok,
            Err(QueueError::Full) => {
                self.kick.kick();
                metrics.slow_consumers_dropped.fetch_add(1, Ordering::Relaxed);
                Queued::SlowConsumer
            }
            Err(QueueError::Closed) => Queued::Closed,
        }
    }
}

/// Who loses access, for [`Registry::revoke`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// The user was disabled: every session closes.
    Disabled,
    /// The user's tokens issued before this time (unix ms) were revoked; `None`: every session's.
    TokensBefore(Option<u64>),
    /// One device's tokens issued before this time (unix ms) were revoked.
    Device { device: String, before_ms: u64 },
}

/// One shard of the registry: sessions by user, and the shard's access epoch.
#[derive(Default)]
struct ShardMap {
    users: HashMap<Arc<str>, Vec<SessionHandle>>,
    /// Bumped by every [`Registry::revoke`] of a user of this shard, under the same lock as the
    /// session lists: a session that read it before its access check and finds it moved once
    /// registered must check again (see [`Registry::register`]).
    epoch: u64,
}

type Shard = RwLock<ShardMap>;

/// Connected sessions by user id.
pub struct Registry {
    shards: Vec<Shard>,
    metrics: Arc<Metrics>,
    /// Bumped by every register and unregister: sessions resolved earlier (see
    /// [`Registry::resolve`]) are still exact while it has not moved.
    generation: AtomicU64,
}

fn shard_of(user: &str) -> usize {
    // FNV-1a: cheap and good enough to spread user ids.
    let mut h: u32 = 0x811c9dc5;
    for b in user.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x01000193);
    }
    h as usize % SHARDS
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::new(ShardMap::default())).collect(),
            metrics,
            generation: AtomicU64::new(0),
        }
    }

    /// Changes with every session registered or unregistered on this node.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Appends the sessions of `users[i]` for every `i` in `range`, as `(i, session)`, in order.
    pub fn resolve(&self, users: &[Arc<str>], range: std::ops::Range<usize>, out: &mut Vec<(u32, SessionHandle)>) {
        for i in range {
            let Some(user) = users.get(i) else { break };
            let shard = self.shards[shard_of(user)].read().unwrap_or_else(|p| p.into_inner());
            if let Some(list) = shard.users.get(user) {
                out.extend(list.iter().map(|h| (i as u32, h.clone())));
            }
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The access epoch of `user`'s shard, read before checking the user's access: see
    /// [`Registry::register`].
    pub fn access_epoch(&self, user: &str) -> u64 {
        self.shards[shard_of(user)].read().unwrap_or_else(|p| p.into_inner()).epoch
    }

    /// Adds a session whose user's access was checked after [`Registry::access_epoch`] returned
    /// `epoch`. Returns whether it is the user's first session on this node, and whether the
    /// epoch moved since: then a revocation may have been applied between the check and this
    /// registration, without seeing this session, and the caller must check access again. (A
    /// revocation either finds the session here and closes it, or moved the epoch first: both
    /// happen under the shard's lock.)
    pub fn register(&self, user: &Arc<str>, handle: SessionHandle, epoch: u64) -> (bool, bool) {
        let mut shard = self.shards[shard_of(user)].write().unwrap_or_else(|p| p.into_inner());
        let moved = shard.epoch != epoch;
        let list = shard.users.entry(user.clone()).or_default();
        list.push(handle);
        self.generation.fetch_add(1, Ordering::AcqRel);
        (list.len() == 1, moved)
    }

    /// Removes a session; true when it was the user's last one on this node.
    pub fn unregister(&self, user: &str, conn_id: u64) -> bool {
        let mut shard = self.shards[shard_of(user)].write().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = shard.users.get_mut(user) {
            let before = list.len();
            list.retain(|h| h.conn_id != conn_id);
            self.generation.fetch_add(1, Ordering::AcqRel);
            if list.is_empty() {
                shard.users.remove(user);
                return before > 0;
            }
        }
        false
    }

    /// Every user with a session here (for re-checking their access after the cluster's bus was
    /// cut off).
    pub fn users(&self) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            out.extend(shard.users.keys().cloned());
        }
        out
    }

    /// Asks every session to close (node shutdown); returns how many were asked.
    pub fn close_all(&self) -> usize {
        let mut n = 0;
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            for h in shard.users.values().flatten() {
                h.kick.shut_down();
                n += 1;
            }
        }
        n
    }

    /// Asks the sessions of `user` that lost access to close (see [`KickSignal::revoke`]), and
    /// moves the shard's access epoch; returns how many were asked. Their next requests are
    /// refused at once (the session checks its signal before each one).
    pub fn revoke(&self, user: &str, r: &Revocation) -> usize {
        let mut shard = self.shards[shard_of(user)].write().unwrap_or_else(|p| p.into_inner());
        shard.epoch += 1;
        let Some(list) = shard.users.get(user) else { return 0 };
        let mut n = 0;
        for h in list {
            let lost = match r {
                Revocation::Disabled | Revocation::TokensBefore(None) => true,
                Revocation::TokensBefore(Some(before)) => h.kick.issued_ms() < *before,
                Revocation::Device { device, before_ms } => *h.device == **device && h.kick.issued_ms() < *before_ms,
            };
            if lost {
                h.kick.revoke(*r == Revocation::Disabled);
                n += 1;
            }
        }
        n
    }

    /// Devices of a user that are online here: `(conn_id, device)`.
    pub fn devices(&self, user: &str) -> Vec<(u64, Arc<str>)> {
        let shard = self.shards[shard_of(user)].read().unwrap_or_else(|p| p.into_inner());
        shard.users.get(user).map(|l| l.iter().map(|h| (h.conn_id, h.device.clone())).collect()).unwrap_or_default()
    }

    /// Queues `frame` on every session of `user` except `skip_conn`; returns how many got it.
    pub fn send_to_user(&self, user: &str, frame: &ByteString, skip_conn: Option<u64>) -> usize {
        let shard = self.shards[shard_of(user)].read().unwrap_or_else(|p| p.into_inner());
        let Some(list) = shard.users.get(user) else { return 0 };
        let mut n = 0;
        for h in list {
            if Some(h.conn_id) != skip_conn && h.push(frame, &self.metrics) == Queued::Ok {
                n += 1;
            }
        }
        n
    }

    /// Queues `frame` on one session of `user`, if it is still connected.
    pub fn send_to_conn(&self, user: &str, conn_id: u64, frame: &ByteString) -> bool {
        let shard = self.shards[shard_of(user)].read().unwrap_or_else(|p| p.into_inner());
        shard
            .users
            .get(user)
            .and_then(|l| l.iter().find(|h| h.conn_id == conn_id))
            .map(|h| h.push(frame, &self.metrics) == Queued::Ok)
            .unwrap_or(false)
    }

    /// Queues `frame` on every session of every user in `users`, except connection `skip_conn`
    /// of user `skip_user` (the sender's device, which gets an acknowledgement instead).
    pub fn fan_out(&self, users: &[Arc<str>], frame: &ByteString, skip: Option<(&str, u64)>) -> usize {
        let mut n = 0;
        for u in users {
            let skip_conn = match skip {
                Some((su, c)) if su == &**u => Some(c),
                _ => None,
            };
            n += self.send_to_user(u, frame, skip_conn);
        }
        n
    }
}

/// Fan-out chunks whose frames may wait in the queues before their writers are woken: a bound on
/// the latency this adds (a chunk of 500 takes about 0.1-0.3 ms).
pub const WAKE_EVERY_CHUNKS: usize = 4;

/// The sessions of one recipient list, resolved once and reused by the fan-outs that follow
/// while neither the list (the same `Arc`) nor the registry ([`Registry::generation`]) changed.
/// Resolved chunk by chunk, as fan-outs reach them; any change starts it again.
///
/// It also holds back the writers' wake-ups (see [`Self::wake`]): frames of several chunks pile
/// up in each queue, and each writer then sends them in one write. Dropping it wakes them.
#[derive(Default)]
pub struct RecipientCache {
    /// Writers to wake, whose queues got their first frame since they last looked.
    wakes: Vec<Waker>,
    /// Chunks delivered since the writers were last woken.
    chunks: usize,
    members: Option<Arc<Vec<Arc<str>>>>,
    generation: u64,
    /// Members `from..upto` are resolved.
    from: usize,
    upto: usize,
    /// `(member index, session)`, by member index.
    sessions: Vec<(u32, SessionHandle)>,
}

impl RecipientCache {
    /// Queues `frame` on every session of `members[range]`, except connection `skip_conn`;
    /// returns how many got it.
    pub fn deliver(
        &mut self,
        registry: &Registry,
        members: &Arc<Vec<Arc<str>>>,
        range: std::ops::Range<usize>,
        frame: &ByteString,
        skip_conn: Option<u64>,
    ) -> usize {
        let generation = registry.generation();
        let same = self.generation == generation && self.members.as_ref().is_some_and(|m| Arc::ptr_eq(m, members));
        if !(same && self.from <= range.start && range.start <= self.upto) {
            self.members = Some(members.clone());
            self.generation = generation;
            self.sessions.clear();
            self.from = range.start;
            self.upto = range.start;
        }
        if range.end > self.upto {
            registry.resolve(members, self.upto..range.end, &mut self.sessions);
            self.upto = range.end;
        }
        let lo = self.sessions.partition_point(|(i, _)| (*i as usize) < range.start);
        let hi = self.sessions.partition_point(|(i, _)| (*i as usize) < range.end);
        let metrics = registry.metrics();
        let mut n = 0;
        for (_, h) in &self.sessions[lo..hi] {
            if Some(h.conn_id) != skip_conn && h.offer(frame, metrics, Some(&mut self.wakes)) == Queued::Ok {
                n += 1;
            }
        }
        metrics.frames_out.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Ends a fan-out chunk: wakes the writers when the fan-out queue is `idle` or after
    /// [`WAKE_EVERY_CHUNKS`] chunks.
    pub fn end_chunk(&mut self, idle: bool) {
        self.chunks += 1;
        if idle || self.chunks >= WAKE_EVERY_CHUNKS {
            self.wake();
        }
    }

    /// Wakes every writer that got frames since the last call.
    pub fn wake(&mut self) {
        self.chunks = 0;
        for w in self.wakes.drain(..) {
            w.wake();
        }
    }
}

impl Drop for RecipientCache {
    fn drop(&mut self) {
        self.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(conn_id: u64, issued_ms: u64) -> SessionHandle {
        SessionHandle {
            conn_id,
            device: Arc::from("d"),
            tx: Arc::new(OutQueue::new(4)),
            kick: Arc::new(KickSignal::new(issued_ms)),
        }
    }

    /// A revocation either finds a session registered and closes it, or moves the epoch the
    /// session read before its access check, so the session checks again.
    #[test]
    fn a_revocation_is_seen_by_registered_sessions_or_by_the_epoch() {
        let r = Registry::new(Arc::new(Metrics::default()));
        let user: Arc<str> = Arc::from("alice");
        let epoch = r.access_epoch(&user);
        // Applied between the check and the registration: the epoch tells.
        r.revoke(&user, &Revocation::Disabled);
        let (first, moved) = r.register(&user, handle(1, 100), epoch);
        assert!(first && moved);
        // Applied after the registration: the session is asked to close.
        let epoch = r.access_epoch(&user);
        let h2 = handle(2, 100);
        let kick = h2.kick.clone();
        assert_eq!(r.register(&user, h2, epoch), (false, false));
        assert_eq!(r.revoke(&user, &Revocation::TokensBefore(Some(50))), 0, "tokens issued after the bound stay");
        let other = Revocation::Device { device: "tablet".into(), before_ms: 1000 };
        assert_eq!(r.revoke(&user, &other), 0, "another device's sessions stay");
        assert_eq!(r.revoke(&user, &Revocation::Device { device: "d".into(), before_ms: 101 }), 2);
        assert_eq!(r.revoke(&user, &Revocation::TokensBefore(Some(101))), 2);
        assert_eq!(kick.revoked_reason(), Some("token_revoked"));
    }
}
