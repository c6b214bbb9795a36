//! Which devices of which users are connected to this node, and how to reach them.
//!
//! The registry is the in-process bus: conversation actors look recipients up here and queue an
//! already-encoded frame on each session's bounded outgoing queue. There is no hub actor in the
//! delivery path; the map is sharded so lookups from several arbiters rarely contend.
//!
//! A session whose queue is full is a slow consumer: it is flagged and told to close (its client
//! reconnects and recovers with sync) instead of letting memory grow without end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytestring::ByteString;
use tokio::sync::{mpsc, Notify};

use crate::metrics::Metrics;

const SHARDS: usize = 32;

/// A frame or control action queued for one session's writer.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A JSON text frame, encoded once and shared by every recipient.
    Text(ByteString),
    /// A WebSocket ping (heartbeat).
    Ping,
    /// A WebSocket pong answering the client's ping.
    Pong(Vec<u8>),
}

/// Tells a session to close because it could not keep up.
#[derive(Default)]
pub struct KickSignal {
    kicked: AtomicBool,
    /// Set with `kicked` when the node is shutting down rather than the client being slow.
    shutdown: AtomicBool,
    notify: Notify,
}

impl KickSignal {
    /// Tells the session the node is shutting down.
    pub fn shut_down(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.kick();
    }
    pub fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
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
    pub tx: mpsc::Sender<Outbound>,
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
        if self.kick.is_kicked() {
            return Queued::SlowConsumer;
        }
        match self.tx.try_send(Outbound::Text(frame.clone())) {
            Ok(()) => {
                metrics.frames_out.fetch_add(1, Ordering::Relaxed);
                Queued::Ok
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.kick.kick();
                metrics.slow_consumers_dropped.fetch_add(1, Ordering::Relaxed);
                Queued::SlowConsumer
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Queued::Closed,
        }
    }
}

type Shard = RwLock<HashMap<Arc<str>, Vec<SessionHandle>>>;

/// Connected sessions by user id.
pub struct Registry {
    shards: Vec<Shard>,
    metrics: Arc<Metrics>,
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
        Self { shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(), metrics }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn register(&self, user: &Arc<str>, handle: SessionHandle) {
        let mut shard = self.shards[shard_of(user)].write().unwrap_or_else(|p| p.into_inner());
        shard.entry(user.clone()).or_default().push(handle);
    }

    pub fn unregister(&self, user: &str, conn_id: u64) {
        let mut shard = self.shards[shard_of(user)].write().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = shard.get_mut(user) {
            list.retain(|h| h.conn_id != conn_id);
            if list.is_empty() {
                shard.remove(user);
            }
        }
    }

    /// Asks every session to close (node shutdown); returns how many were asked.
    pub fn close_all(&self) -> usize {
        let mut n = 0;
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|p| p.into_inner());
            for h in shard.values().flatten() {
                h.kick.shut_down();
                n += 1;
            }
        }
        n
    }

    /// Devices of a user that are online here: `(conn_id, device)`.
    pub fn devices(&self, user: &str) -> Vec<(u64, Arc<str>)> {
        let shard = self.shards[shard_of(user)].read().unwrap_or_else(|p| p.into_inner());
        shard.get(user).map(|l| l.iter().map(|h| (h.conn_id, h.device.clone())).collect()).unwrap_or_default()
    }

    /// Queues `frame` on every session of `user` except `skip_conn`; returns how many got it.
    pub fn send_to_user(&self, user: &str, frame: &ByteString, skip_conn: Option<u64>) -> usize {
        let shard = self.shards[shard_of(user)].read().unwrap_or_else(|p| p.into_inner());
        let Some(list) = shard.get(user) else { return 0 };
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
