//! Presence: which devices of which users are connected to which node, in Redis.
//!
//! # Keys
//!
//! | key | type | content |
//! |---|---|---|
//! | `confab:presence:<user>` | hash | field `<node_id>/<conn_id>`, value: the device id; one field per connection |
//! | `confab:alive:<node_id>` | string, expires after `node_ttl_ms` | the node's liveness key, set every `heartbeat_ms` |
//! | `confab:nodes` | set | node ids that have heartbeated (a dead one is removed by its sweep) |
//! | `confab:node-conns:<node_id>` | hash | field `<conn_id>`, value: the user; the node's connections, for its sweep |
//! | `confab:sweep:<node_id>` | string, expires after `node_ttl_ms` | claimed by the live node sweeping a dead one |
//!
//! A field per connection (not per device) means a device reconnecting to another node while its
//! old connection is still being closed never loses its new entry to the old one's removal.
//!
//! # Writes
//!
//! [`Cluster::register`](super::Cluster::register) and `unregister` update this node's own table
//! at once and queue the Redis write for one writer task, which sends everything queued as one
//! pipeline (in order, so a connection's removal never overtakes its registration). While Redis is
//! down the writes are not attempted; the node remembers that Redis is behind and re-asserts its
//! whole table (and the removals Redis missed) once Redis answers again.
//!
//! # Liveness
//!
//! The heartbeat sets `confab:alive:<node>` with `SET … PX node_ttl_ms GET` and adds the node to
//! `confab:nodes`. When the old value was missing (Redis restarted empty, or this node's key expired
//! during an outage and other nodes may have cleaned its entries), or when the node had to be
//! re-added to `confab:nodes`, it re-asserts its table, then once more at the next heartbeat (to
//! win against a cleanup that was in flight).
//!
//! # Lookups
//!
//! [`Cluster::locate`](super::Cluster::locate) reads the liveness keys of the known nodes and the
//! presence hash of every user of the chunk in ONE pipelined round trip, and keeps only entries of
//! live nodes: a node that stops heartbeating drops out of every answer within `node_ttl_ms`. (A
//! second, small round trip is needed only for entries of a node that joined since the last
//! heartbeat.) Entries of dead nodes are deleted in the background.
//!
//! # Online and offline, cluster-wide
//!
//! Every presence write is a `MULTI`/`EXEC` transaction that also reads the user's hash length
//! after the change: a registration that added the only field is the user's first connection in
//! the cluster (`user.online`), a removal that deleted the last field its last one
//! (`user.offline`). Each field is added and deleted once, so exactly one node sees each
//! transition, whichever nodes the user's devices are on. The events go on the incoming queue
//! as [`Incoming::Presence`](super::Incoming::Presence). While Redis cannot be written, this
//! node's own view decides (its first or last connection of the user), as on a single node.
//!
//! A node that dies leaves its fields behind. Every heartbeat checks the liveness keys of the
//! nodes in `confab:nodes`; for a dead one, one live node (the one that claims
//! `confab:sweep:<node>`) deletes the dead node's fields listed in its `confab:node-conns` hash,
//! announcing `user.offline` for users left without any, then removes the node from
//! `confab:nodes`. So a crashed node's users go offline within about `node_ttl_ms` plus a
//! heartbeat, unless they reconnected elsewhere first. A node restarted under the same id before
//! its liveness key expired is never swept by the others: its first heartbeat finds the previous
//! process's value in the key, and the node removes the entries of its `confab:node-conns` that
//! are not connections of its own (connection ids start from the process's start time, so the
//! two processes' ids never meet). Deliveries never wait for the sweep: a
//! lookup ignores the entries of dead nodes (and deletes them at once, the same way).
//!
//! # The presence version
//!
//! Every pipeline that changes presence hashes (writes, re-assertions, withdrawal, cleanup) ends
//! with `SET confab:presence:version <value>`, a value no other write uses (this node's id and boot,
//! and a counter). So while the version read from Redis is the one read before some presence
//! hashes, those hashes have not changed since: every change is followed by a new version, and a
//! read that follows the change's version finds it. The fan-out sender ([`LocateCache`]) relies on
//! it: it keeps the users' entries it read and re-reads them only when the version moved (or
//! after `heartbeat_ms`, whatever happens), so a fan-out to users already known costs one small
//! round trip (the version and the liveness keys) instead of one `HGETALL` per recipient.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use redis::Value;
use tokio::sync::{mpsc, oneshot, watch};

use super::{ClusterError, Inner};

/// The set of nodes that have heartbeated.
pub const NODES_KEY: &str = "confab:nodes";

/// Changes with every change to presence hashes (see the module documentation).
pub const VERSION_KEY: &str = "confab:presence:version";

/// The presence hash of a user.
pub fn presence_key(user: &str) -> String {
    format!("confab:presence:{user}")
}

/// The liveness key of a node.
pub fn alive_key(node: &str) -> String {
    format!("confab:alive:{node}")
}

/// The hash of a node's connections (`conn_id` -> user), read when the node is swept.
pub fn node_conns_key(node: &str) -> String {
    format!("confab:node-conns:{node}")
}

/// Claimed by the node sweeping a dead node.
fn sweep_key(node: &str) -> String {
    format!("confab:sweep:{node}")
}

fn field(node: &str, conn_id: u64) -> String {
    format!("{node}/{conn_id}")
}

/// Ends `pipe`, which changes presence hashes, with a new presence version, and makes it a
/// transaction: Redis applies the changes and the new version together or not at all, even when
/// the connection fails half-way.
fn bump_version(inner: &Inner, pipe: &mut redis::Pipeline) {
    pipe.atomic();
    let n = inner.presence_version.fetch_add(1, Relaxed);
    pipe.set(VERSION_KEY, format!("{}/{}/{n}", inner.node_id, inner.boot)).ignore();
}

/// Most queued presence writes; beyond, a write is dropped and the table re-asserted later.
pub(crate) const WRITE_QUEUE: usize = 65_536;
/// Most writes sent in one pipeline.
const WRITE_BATCH: usize = 1024;
/// Most removals remembered while Redis is unreachable (beyond, an entry of a closed connection may
/// linger: it points to this live node, which then receives batches for nobody, harmlessly).
const MAX_TOMBSTONES: usize = 100_000;

/// Where a chunk of users is connected: node id -> the users with at least one connection there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Located {
    pub nodes: BTreeMap<String, Vec<Arc<str>>>,
}

impl Located {
    /// The nodes other than `me`, with their users.
    pub fn remote<'a>(&'a self, me: &'a str) -> impl Iterator<Item = (&'a str, &'a [Arc<str>])> + 'a {
        self.nodes.iter().filter(move |(n, _)| n.as_str() != me).map(|(n, u)| (n.as_str(), u.as_slice()))
    }
}

/// This node's connections, as Redis should see them.
#[derive(Default)]
pub(crate) struct Table {
    /// conn_id -> (user, device).
    conns: HashMap<u64, (Arc<str>, Arc<str>)>,
    /// Removals that may not have reached Redis: conn_id -> user.
    tombstones: HashMap<u64, Arc<str>>,
}

impl Table {
    pub(crate) fn insert(&mut self, user: Arc<str>, device: Arc<str>, conn_id: u64) {
        self.tombstones.remove(&conn_id);
        self.conns.insert(conn_id, (user, device));
    }

    pub(crate) fn remove(&mut self, conn_id: u64) {
        self.conns.remove(&conn_id);
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }
}

pub(crate) enum Op {
    Register {
        user: Arc<str>,
        device: Arc<str>,
        conn_id: u64,
        /// The user's first connection on this node (decides `user.online` without Redis).
        first_here: bool,
    },
    Unregister {
        user: Arc<str>,
        conn_id: u64,
        /// The user's last connection on this node (decides `user.offline` without Redis).
        last_here: bool,
    },
    /// Re-assert the whole table (after an outage or a Redis restart).
    Reassert,
    /// Answers once every write queued before it was attempted.
    Flush(oneshot::Sender<Result<(), ClusterError>>),
    /// Removes this node's entries and liveness key (graceful shutdown).
    Withdraw(oneshot::Sender<()>),
}

/// Hands presence transitions to the engine (in order), waiting for room on the incoming queue.
async fn emit(inner: &Inner, events: Vec<(Arc<str>, bool)>) {
    for (user, online) in events {
        count(inner, online);
        if inner.incoming.send(super::Incoming::Presence { user, online }).await.is_err() {
            return;
        }
    }
}

/// [`emit`] for callers that cannot wait: an event that finds the incoming queue full is
/// dropped (and counted).
pub(crate) fn announce(inner: &Inner, events: Vec<(Arc<str>, bool)>) {
    for (user, online) in events {
        count(inner, online);
        if let Err(e) = inner.incoming.try_send(super::Incoming::Presence { user, online }) {
            inner.metrics.incoming_dropped.fetch_add(1, Relaxed);
            if let super::Incoming::Presence { user, .. } = e.into_inner() {
                tracing::warn!(%user, online, "dropped a presence event: the incoming queue is full");
            }
        }
    }
}

fn count(inner: &Inner, online: bool) {
    let m = &inner.metrics;
    match online {
        true => m.users_online.fetch_add(1, Relaxed),
        false => m.users_offline.fetch_add(1, Relaxed),
    };
}

/// A field removal that reads the hash's length after it, in a `MULTI` (two replies).
fn remove_counted(pipe: &mut redis::Pipeline, user: &str, field: &str) {
    let key = presence_key(user);
    pipe.hdel(&key, field).hlen(&key);
}

/// The users of `removed` (in order, each with its two replies from [`remove_counted`] in
/// `replies`) whose last field was removed.
fn went_offline(removed: Vec<Arc<str>>, replies: &mut impl Iterator<Item = i64>) -> Vec<(Arc<str>, bool)> {
    let mut out = Vec::new();
    for user in removed {
        let (deleted, left) = (replies.next().unwrap_or(0), replies.next().unwrap_or(1));
        if deleted == 1 && left == 0 {
            out.push((user, false));
        }
    }
    out
}

/// Registrations and removals gathered into one pipeline by the [`writer`].
#[derive(Default)]
struct Writes {
    pipe: redis::Pipeline,
    /// Per write, in order: the user, whether it registers, and this node's view of the
    /// transition (used when Redis cannot answer).
    written: Vec<(Arc<str>, bool, bool)>,
    /// Removals, to remember as tombstones if Redis may have missed them.
    removed: Vec<(u64, Arc<str>)>,
}

impl Writes {
    /// Sends the writes gathered so far as one transaction, announces the users that came
    /// online or went offline with them, and starts over. `Ok` when there was nothing to send.
    async fn send(&mut self, inner: &Inner) -> Result<(), ClusterError> {
        if self.written.is_empty() {
            return Ok(());
        }
        let Writes { mut pipe, written, removed } = std::mem::take(self);
        inner.metrics.presence_writes.fetch_add(written.len() as u64, Relaxed);
        bump_version(inner, &mut pipe);
        match inner.redis.pipe::<Vec<i64>>(&pipe).await {
            Ok(replies) => {
                // Two replies per write: HSET's or HDEL's count, then the hash's length after it.
                let mut replies = replies.into_iter();
                let mut events = Vec::new();
                for (user, registers, _) in written {
                    let (changed, len) = (replies.next().unwrap_or(0), replies.next().unwrap_or(1));
                    match registers {
                        true if changed == 1 && len == 1 => events.push((user, true)),
                        false if changed == 1 && len == 0 => events.push((user, false)),
                        _ => {}
                    }
                }
                emit(inner, events).await;
                Ok(())
            }
            Err(e) => {
                // Redis may have missed these: remember to re-assert, and which removals to
                // repeat. Whether users came or went cluster-wide is unknown: this node decides.
                inner.presence_behind.store(true, Relaxed);
                {
                    let mut t = inner.table.lock().unwrap_or_else(|p| p.into_inner());
                    for (conn_id, user) in removed {
                        if t.tombstones.len() < MAX_TOMBSTONES && !t.conns.contains_key(&conn_id) {
                            t.tombstones.insert(conn_id, user);
                        }
                    }
                }
                let mine = written.into_iter().filter(|w| w.2).map(|(user, registers, _)| (user, registers)).collect();
                emit(inner, mine).await;
                Err(e)
            }
        }
    }
}

/// Applies queued presence writes, in order, as pipelines, and announces the users that came
/// online or went offline in the cluster with them (see the module documentation). A
/// re-assertion or a withdrawal waits until the writes queued before it were sent.
pub(crate) async fn writer(inner: Arc<Inner>, mut rx: mpsc::Receiver<Op>) {
    let mut ops = Vec::with_capacity(WRITE_BATCH);
    let node_conns = node_conns_key(&inner.node_id);
    while rx.recv_many(&mut ops, WRITE_BATCH).await > 0 {
        let mut w = Writes::default();
        let mut waiting = Vec::new();
        let mut result = Ok(());
        for op in ops.drain(..) {
            match op {
                Op::Register { user, device, conn_id, first_here } => {
                    let key = presence_key(&user);
                    w.pipe.hset(&key, field(&inner.node_id, conn_id), &*device).hlen(&key);
                    w.pipe.hset(&node_conns, conn_id, &*user).ignore();
                    w.written.push((user, true, first_here));
                }
                Op::Unregister { user, conn_id, last_here } => {
                    remove_counted(&mut w.pipe, &user, &field(&inner.node_id, conn_id));
                    w.pipe.hdel(&node_conns, conn_id).ignore();
                    w.removed.push((conn_id, user.clone()));
                    w.written.push((user, false, last_here));
                }
                Op::Reassert => {
                    result = result.and(w.send(&inner).await);
                    if let Err(e) = reassert(&inner).await {
                        tracing::debug!(error = %e, "re-asserting presence failed; will retry");
                    }
                }
                Op::Flush(tx) => waiting.push(tx),
                Op::Withdraw(tx) => {
                    result = result.and(w.send(&inner).await);
                    withdraw(&inner).await;
                    let _ = tx.send(());
                }
            }
        }
        let sent = !w.written.is_empty();
        result = result.and(w.send(&inner).await);
        if result.is_ok() && !sent && inner.presence_behind.load(Relaxed) {
            result = Err(ClusterError::Unavailable("earlier presence writes did not reach redis yet".into()));
        }
        for tx in waiting {
            let _ = tx.send(result.clone());
        }
    }
}

/// Writes this node's whole table (and the removals Redis may have missed) to Redis.
async fn reassert(inner: &Inner) -> Result<(), ClusterError> {
    let (conns, tombstones): (Vec<_>, Vec<_>) = {
        let t = inner.table.lock().unwrap_or_else(|p| p.into_inner());
        (
            t.conns.iter().map(|(c, (u, d))| (*c, u.clone(), d.clone())).collect(),
            t.tombstones.iter().map(|(c, u)| (*c, u.clone())).collect(),
        )
    };
    inner.presence_behind.store(false, Relaxed);
    let node = &inner.node_id;
    let result = async {
        // Users this re-assertion finds absent from Redis (or whose last entry it removes) change
        // state cluster-wide: announced like any other write.
        let node_conns = node_conns_key(node);
        for chunk in tombstones.chunks(WRITE_BATCH) {
            let mut pipe = redis::pipe();
            for (conn_id, user) in chunk {
                remove_counted(&mut pipe, user, &field(node, *conn_id));
                pipe.hdel(&node_conns, *conn_id).ignore();
            }
            bump_version(inner, &mut pipe);
            let replies: Vec<i64> = inner.redis.pipe(&pipe).await?;
            let users = chunk.iter().map(|(_, u)| u.clone()).collect();
            emit(inner, went_offline(users, &mut replies.into_iter())).await;
        }
        for chunk in conns.chunks(WRITE_BATCH) {
            let mut pipe = redis::pipe();
            for (conn_id, user, device) in chunk {
                let key = presence_key(user);
                pipe.hset(&key, field(node, *conn_id), &**device).hlen(&key);
                pipe.hset(&node_conns, *conn_id, &**user).ignore();
            }
            bump_version(inner, &mut pipe);
            let replies: Vec<i64> = inner.redis.pipe(&pipe).await?;
            let mut replies = replies.into_iter();
            let mut came = Vec::new();
            for (_, user, _) in chunk {
                if (replies.next(), replies.next()) == (Some(1), Some(1)) {
                    came.push((user.clone(), true));
                }
            }
            emit(inner, came).await;
        }
        Ok(())
    }
    .await;
    match &result {
        Ok(()) => {
            let mut t = inner.table.lock().unwrap_or_else(|p| p.into_inner());
            for (conn_id, _) in &tombstones {
                t.tombstones.remove(conn_id);
            }
            inner.metrics.presence_reasserts.fetch_add(1, Relaxed);
            tracing::info!(node = %node, entries = conns.len(), "presence re-asserted in redis");
        }
        Err(_) => inner.presence_behind.store(true, Relaxed),
    }
    result
}

/// Best effort: deletes this node's entries and liveness key so other nodes stop routing here
/// at once instead of after `node_ttl_ms`, announcing the users that went offline with them.
async fn withdraw(inner: &Inner) {
    let conns: Vec<_> = {
        let t = inner.table.lock().unwrap_or_else(|p| p.into_inner());
        t.conns.iter().map(|(c, (u, _))| (*c, u.clone())).collect()
    };
    let node = &inner.node_id;
    let mut pipe = redis::pipe();
    pipe.del(alive_key(node)).ignore().srem(NODES_KEY, node).ignore().del(node_conns_key(node)).ignore();
    for (conn_id, user) in &conns {
        remove_counted(&mut pipe, user, &field(node, *conn_id));
    }
    bump_version(inner, &mut pipe);
    match inner.redis.pipe::<Vec<i64>>(&pipe).await {
        Ok(replies) => {
            let users = conns.into_iter().map(|(_, u)| u).collect();
            emit(inner, went_offline(users, &mut replies.into_iter())).await;
        }
        Err(e) => tracing::debug!(error = %e, "could not withdraw this node's presence; it expires by itself"),
    }
}

/// Refreshes the liveness key every `heartbeat_ms` and re-asserts presence when Redis needs it.
pub(crate) async fn heartbeat(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(inner.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ttl_ms = u64::try_from(inner.node_ttl.as_millis()).unwrap_or(u64::MAX);
    let mut again = false;
    let mut seen_outages = inner.redis.outages();
    let mut first = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(alive_key(&inner.node_id)).arg(&*inner.boot).arg("PX").arg(ttl_ms).arg("GET");
        pipe.sadd(NODES_KEY, &inner.node_id).smembers(NODES_KEY);
        let (previous, added, nodes): (Option<String>, u32, Vec<String>) = match inner.redis.probe(&pipe).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "heartbeat failed");
                continue;
            }
        };
        match previous.as_deref() {
            // This node id's previous process stopped without withdrawing (a crash, then a
            // restart within `node_ttl_ms`): nobody sweeps a live node, so it sweeps itself.
            Some(p) if first && p != &*inner.boot => {
                tracing::info!(node = %inner.node_id, "a previous process of this node left presence entries; removing them");
                tokio::spawn(sweep_previous_self(inner.clone()));
            }
            Some(p) if p != &*inner.boot => {
                tracing::warn!(node = %inner.node_id, "another process heartbeats with this node id: node ids must be unique");
            }
            _ => {}
        }
        first = false;
        let others: Vec<String> = nodes.iter().filter(|n| **n != inner.node_id).cloned().collect();
        *inner.known_nodes.write().unwrap_or_else(|p| p.into_inner()) = nodes;
        if !others.is_empty() {
            tokio::spawn(sweep_dead(inner.clone(), others));
        }
        let outages = inner.redis.outages();
        let lost = previous.is_none() || added == 1;
        let needed = lost || again || inner.presence_behind.load(Relaxed) || outages != seen_outages;
        seen_outages = outages;
        again = lost;
        if needed {
            if lost && previous.is_none() {
                tracing::info!(node = %inner.node_id, "this node's liveness key was missing in redis");
            }
            if inner.writes.try_send(Op::Reassert).is_err() {
                inner.presence_behind.store(true, Relaxed);
            }
        }
    }
}

/// Parses `MGET` of liveness keys into the set of live nodes among `nodes`.
fn live_among(nodes: &[String], v: Value) -> Result<HashSet<String>, ClusterError> {
    let alive: Vec<Option<String>> = redis::from_redis_value(v).map_err(|e| ClusterError::Redis(e.to_string()))?;
    Ok(nodes.iter().zip(alive).filter(|(_, a)| a.is_some()).map(|(n, _)| n.clone()).collect())
}

/// See [`Cluster::locate`](super::Cluster::locate).
pub(crate) async fn locate(inner: Arc<Inner>, users: Vec<Arc<str>>) -> Result<Located, ClusterError> {
    let known: Vec<String> = inner.known_nodes.read().unwrap_or_else(|p| p.into_inner()).clone();
    let mut pipe = redis::pipe();
    if !known.is_empty() {
        pipe.mget(known.iter().map(|n| alive_key(n)).collect::<Vec<_>>());
    }
    for u in &users {
        pipe.hgetall(presence_key(u));
    }
    if users.is_empty() {
        return Ok(Located::default());
    }
    inner.metrics.locates.fetch_add(1, Relaxed);
    let mut replies: std::vec::IntoIter<Value> = inner.redis.pipe::<Vec<Value>>(&pipe).await?.into_iter();
    let mut live = match known.is_empty() {
        true => HashSet::new(),
        false => live_among(&known, replies.next().unwrap_or(Value::Nil))?,
    };
    live.insert(inner.node_id.clone());
    // (user, node, field) of every entry.
    let mut entries: Vec<(Arc<str>, String, String)> = Vec::new();
    for (u, v) in users.iter().zip(replies) {
        let h: HashMap<String, String> = redis::from_redis_value(v).map_err(|e| ClusterError::Redis(e.to_string()))?;
        for f in h.into_keys() {
            if let Some((node, _conn)) = f.rsplit_once('/') {
                entries.push((u.clone(), node.to_owned(), f));
            }
        }
    }
    let known_set: HashSet<&str> = known.iter().map(String::as_str).collect();
    let unknown: Vec<String> = entries
        .iter()
        .map(|(_, n, _)| n)
        .filter(|n| !known_set.contains(n.as_str()) && !live.contains(*n))
        .collect::<HashSet<_>>()
        .into_iter()
        .cloned()
        .collect();
    if !unknown.is_empty() {
        // Nodes that joined since the last heartbeat (or long-dead ones): one more round trip.
        let mut p = redis::pipe();
        p.mget(unknown.iter().map(|n| alive_key(n)).collect::<Vec<_>>());
        let (v,): (Value,) = inner.redis.pipe(&p).await?;
        let newly = live_among(&unknown, v)?;
        if !newly.is_empty() {
            let mut k = inner.known_nodes.write().unwrap_or_else(|p| p.into_inner());
            let add: Vec<String> = newly.iter().filter(|n| !k.contains(n)).cloned().collect();
            k.extend(add);
        }
        live.extend(newly);
    }
    let mut located = Located::default();
    let mut dead: Vec<(Arc<str>, String)> = Vec::new();
    let mut dead_nodes: HashSet<String> = HashSet::new();
    for (user, node, f) in entries {
        if live.contains(&node) {
            let list = located.nodes.entry(node).or_default();
            if list.last() != Some(&user) {
                list.push(user);
            }
        } else {
            dead.push((user, f));
            dead_nodes.insert(node);
        }
    }
    if !dead.is_empty() {
        cleanup(inner, dead, dead_nodes);
    }
    Ok(located)
}

/// Deletes entries of dead nodes in the background (lazy cleanup), announcing the users left
/// without any. The nodes themselves stay in `confab:nodes` until swept (see [`sweep_dead`]).
fn cleanup(inner: Arc<Inner>, dead: Vec<(Arc<str>, String)>, nodes: HashSet<String>) {
    {
        let mut k = inner.known_nodes.write().unwrap_or_else(|p| p.into_inner());
        k.retain(|n| !nodes.contains(n));
    }
    tokio::spawn(async move {
        let mut pipe = redis::pipe();
        for (user, f) in &dead {
            remove_counted(&mut pipe, user, f);
        }
        bump_version(&inner, &mut pipe);
        if let Ok(replies) = inner.redis.pipe::<Vec<i64>>(&pipe).await {
            inner.metrics.presence_cleaned.fetch_add(dead.len() as u64, Relaxed);
            tracing::debug!(entries = dead.len(), nodes = ?nodes, "removed presence entries of dead nodes");
            let users = dead.into_iter().map(|(u, _)| u).collect();
            emit(&inner, went_offline(users, &mut replies.into_iter())).await;
        }
    });
}

/// Removes the entries a previous process of this node left (those of its `confab:node-conns`
/// that are not connections of this process), announcing the users left without any.
async fn sweep_previous_self(inner: Arc<Inner>) {
    let mut stale = match node_conns(&inner, &inner.node_id).await {
        Ok(c) => c,
        Err(e) => return tracing::debug!(error = %e, "could not read this node's previous entries"),
    };
    {
        let t = inner.table.lock().unwrap_or_else(|p| p.into_inner());
        stale.retain(|(c, _)| c.parse::<u64>().map_or(true, |c| !t.conns.contains_key(&c)));
    }
    match remove_entries(&inner, &inner.node_id, &stale).await {
        Ok(n) => tracing::info!(entries = n, "removed the presence entries of this node's previous process"),
        Err(e) => tracing::debug!(error = %e, "could not remove this node's previous entries"),
    }
}

/// Most entries of a dead node removed per transaction by its sweep.
const SWEEP_BATCH: usize = 500;

/// Sweeps the nodes among `others` (from `confab:nodes`) whose liveness key expired: for each,
/// the live node that claims it deletes its entries and announces the users left without any
/// (see the module documentation). Failures are left to a later heartbeat.
async fn sweep_dead(inner: Arc<Inner>, others: Vec<String>) {
    let mut pipe = redis::pipe();
    pipe.mget(others.iter().map(|n| alive_key(n)).collect::<Vec<_>>());
    let Ok((alive,)) = inner.redis.pipe::<(Vec<Option<String>>,)>(&pipe).await else {
        return;
    };
    let ttl_ms = u64::try_from(inner.node_ttl.as_millis()).unwrap_or(u64::MAX);
    for (node, _) in others.into_iter().zip(alive).filter(|(_, a)| a.is_none()) {
        let mut claim = redis::cmd("SET");
        claim.arg(sweep_key(&node)).arg(&inner.node_id).arg("NX").arg("PX").arg(ttl_ms);
        match inner.redis.cmd::<Option<String>>(&claim).await {
            Ok(Some(_)) => {}
            _ => continue,
        }
        match sweep(&inner, &node).await {
            Ok(n) => tracing::info!(node = %node, entries = n, "swept the presence entries of a dead node"),
            Err(e) => tracing::debug!(node = %node, error = %e, "sweeping a dead node failed; will retry"),
        }
    }
}

/// Deletes the entries of dead `node` listed in its `confab:node-conns` hash, then the hash and
/// the node's membership of `confab:nodes`. Returns how many entries it deleted.
async fn sweep(inner: &Arc<Inner>, node: &str) -> Result<usize, ClusterError> {
    let conns = node_conns(inner, node).await?;
    let deleted = remove_entries(inner, node, &conns).await?;
    let mut pipe = redis::pipe();
    pipe.atomic().del(node_conns_key(node)).ignore().srem(NODES_KEY, node).ignore();
    inner.redis.pipe::<()>(&pipe).await?;
    Ok(deleted)
}

/// The connections `(conn_id, user)` listed in `node`'s `confab:node-conns`.
async fn node_conns(inner: &Inner, node: &str) -> Result<Vec<(String, Arc<str>)>, ClusterError> {
    let mut read = redis::cmd("HGETALL");
    read.arg(node_conns_key(node));
    let conns: HashMap<String, String> = inner.redis.cmd(&read).await?;
    Ok(conns.into_iter().map(|(c, u)| (c, Arc::from(u))).collect())
}

/// Deletes the entries `(conn_id, user)` of `node` (and their lines in its `confab:node-conns`),
/// announcing the users left without any. Returns how many it deleted.
async fn remove_entries(inner: &Inner, node: &str, conns: &[(String, Arc<str>)]) -> Result<usize, ClusterError> {
    let key = node_conns_key(node);
    let mut deleted = 0;
    for chunk in conns.chunks(SWEEP_BATCH) {
        let mut pipe = redis::pipe();
        for (conn_id, user) in chunk {
            remove_counted(&mut pipe, user, &format!("{node}/{conn_id}"));
        }
        pipe.hdel(&key, chunk.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>()).ignore();
        bump_version(inner, &mut pipe);
        let replies: Vec<i64> = inner.redis.pipe(&pipe).await?;
        let users: Vec<Arc<str>> = chunk.iter().map(|(_, u)| u.clone()).collect();
        let mut replies = replies.into_iter();
        let gone = went_offline(users, &mut replies);
        deleted += chunk.len();
        inner.metrics.presence_cleaned.fetch_add(chunk.len() as u64, Relaxed);
        emit(inner, gone).await;
    }
    Ok(deleted)
}

/// An entry of a user's presence hash: the node, and the field (`<node>/<conn_id>`).
type Entry = (Arc<str>, Box<str>);

/// Most users a [`LocateCache`] keeps; beyond, it starts over.
const CACHE_USERS: usize = 200_000;

/// The presence entries the fan-out sender read, kept while the presence version does not move
/// (see the module documentation), and for at most `heartbeat_ms` in any case.
#[derive(Default)]
pub(crate) struct LocateCache {
    /// The presence version read before every entry kept (`None`: none is kept).
    version: Option<String>,
    /// When the cache started over.
    since: Option<std::time::Instant>,
    /// user -> `(node, field)` of each of its entries, live or not (users without any: empty).
    entries: HashMap<Arc<str>, Vec<Entry>>,
    /// The nodes named by `entries`, each once (shared by the entries).
    nodes: HashSet<Arc<str>>,
}

impl LocateCache {
    fn clear(&mut self) {
        self.version = None;
        self.since = None;
        self.entries.clear();
        self.nodes.clear();
    }

    /// The entries of `user` (it must have been resolved with [`locate_cached`]).
    pub(crate) fn entries(&self, user: &str) -> &[Entry] {
        self.entries.get(user).map(Vec::as_slice).unwrap_or(&[])
    }

    fn node(&mut self, name: &str) -> Arc<str> {
        match self.nodes.get(name) {
            Some(n) => n.clone(),
            None => {
                let n: Arc<str> = Arc::from(name);
                self.nodes.insert(n.clone());
                n
            }
        }
    }

    /// Keeps the entries read for `users` (`replies`: their `HGETALL`s, in order).
    fn keep(&mut self, users: &[Arc<str>], replies: impl Iterator<Item = Value>) -> Result<(), ClusterError> {
        for (u, v) in users.iter().zip(replies) {
            let h: HashMap<String, String> =
                redis::from_redis_value(v).map_err(|e| ClusterError::Redis(e.to_string()))?;
            let mut list = Vec::with_capacity(h.len());
            for f in h.into_keys() {
                if let Some((node, _conn)) = f.rsplit_once('/') {
                    list.push((self.node(node), f.into_boxed_str()));
                }
            }
            self.entries.insert(u.clone(), list);
        }
        Ok(())
    }
}

/// Resolves the presence of `users` (each once) into `cache` for the fan-out sender and returns
/// the live nodes among those their entries name (this one included). Reads only the entries
/// of users the cache does not know, with the presence version and the liveness keys, in one
/// pipelined round trip; when the version moved, everything is read again (a second one).
pub(crate) async fn locate_cached(
    inner: &Arc<Inner>,
    cache: &mut LocateCache,
    users: &[Arc<str>],
) -> Result<HashSet<Arc<str>>, ClusterError> {
    let mut live: HashSet<Arc<str>> = HashSet::new();
    live.insert(cache.node(&inner.node_id));
    if users.is_empty() {
        return Ok(live);
    }
    if cache.since.is_some_and(|t| t.elapsed() >= inner.heartbeat) || cache.entries.len() > CACHE_USERS {
        cache.clear();
    }
    let known: Vec<String> = inner.known_nodes.read().unwrap_or_else(|p| p.into_inner()).clone();
    for n in &known {
        cache.node(n);
    }
    // The nodes whose liveness keys were read.
    let mut checked: Vec<Arc<str>> = Vec::new();
    for attempt in 0..2 {
        let missing: Vec<Arc<str>> = users.iter().filter(|u| !cache.entries.contains_key(*u)).cloned().collect();
        let nodes: Vec<Arc<str>> = cache.nodes.iter().cloned().collect();
        let mut pipe = redis::pipe();
        pipe.get(VERSION_KEY);
        pipe.mget(nodes.iter().map(|n| alive_key(n)).collect::<Vec<_>>());
        for u in &missing {
            pipe.hgetall(presence_key(u));
        }
        inner.metrics.locates.fetch_add(1, Relaxed);
        let mut replies = inner.redis.pipe::<Vec<Value>>(&pipe).await?.into_iter();
        let version: Option<String> = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))
            .map_err(|e| ClusterError::Redis(e.to_string()))?;
        let alive: Vec<Option<String>> = redis::from_redis_value(replies.next().unwrap_or(Value::Nil))
            .map_err(|e| ClusterError::Redis(e.to_string()))?;
        let unchanged = version.is_some() && version == cache.version;
        if !unchanged {
            // Entries read under another version may be stale: keep only what was just read
            // (after this version), and read the others again.
            let everything = missing.len() == users.len();
            cache.clear();
            for n in known.iter().map(String::as_str).chain([inner.node_id.as_str()]) {
                cache.node(n);
            }
            if !everything && attempt == 0 {
                continue;
            }
            cache.version = version;
            cache.since = Some(std::time::Instant::now());
        }
        cache.keep(&missing, replies)?;
        live.extend(nodes.iter().zip(alive).filter(|(_, a)| a.is_some()).map(|(n, _)| n.clone()));
        checked = nodes;
        break;
    }
    // Nodes named by the entries just read but not checked: they joined since the last
    // heartbeat (or are long dead). One more round trip.
    let unknown: Vec<Arc<str>> = cache.nodes.iter().filter(|n| !checked.contains(*n)).cloned().collect();
    if !unknown.is_empty() {
        let mut p = redis::pipe();
        p.mget(unknown.iter().map(|n| alive_key(n)).collect::<Vec<_>>());
        let (alive,): (Vec<Option<String>>,) = inner.redis.pipe(&p).await?;
        let newly: Vec<Arc<str>> =
            unknown.iter().zip(alive).filter(|(_, a)| a.is_some()).map(|(n, _)| n.clone()).collect();
        if !newly.is_empty() {
            let mut k = inner.known_nodes.write().unwrap_or_else(|p| p.into_inner());
            for n in &newly {
                if !k.iter().any(|x| x == &**n) {
                    k.push(n.to_string());
                }
            }
        }
        live.extend(newly);
    }
    // Entries of dead nodes: deleted in the background, and forgotten here.
    if cache.nodes.iter().all(|n| live.contains(n)) {
        return Ok(live);
    }
    let mut dead: Vec<(Arc<str>, String)> = Vec::new();
    let mut dead_nodes: HashSet<String> = HashSet::new();
    for u in users {
        if let Some(list) = cache.entries.get_mut(u) {
            list.retain(|(n, f)| {
                let alive = live.contains(n);
                if !alive {
                    dead.push((u.clone(), f.to_string()));
                    dead_nodes.insert(n.to_string());
                }
                alive
            });
        }
    }
    if !dead.is_empty() {
        cleanup(inner.clone(), dead, dead_nodes);
    }
    Ok(live)
}
