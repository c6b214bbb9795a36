//! The presence writer: one task applies this node's registrations and removals to Redis in
//! order, as transactions, re-asserts the whole table when Redis may have missed some, and
//! withdraws the node's entries on a graceful stop.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::keys::{
    alive_key, bump_version, field, node_conns_key, presence_key, remove_counted, went_offline, NODES_KEY,
};
use super::{emit, ClusterError, Inner};

/// Most queued presence writes; beyond, a write is dropped and the table re-asserted later.
pub(crate) const WRITE_QUEUE: usize = 65_536;
/// Most writes sent in one pipeline.
const WRITE_BATCH: usize = 1024;
/// Most removals remembered while Redis is unreachable (beyond, an entry of a closed connection may
/// linger: it points to this live node, which then receives batches for nobody, harmlessly).
const MAX_TOMBSTONES: usize = 100_000;

/// Work for the [`writer`], queued by [`Cluster`](crate::cluster::Cluster) in order.
pub(crate) enum Op {
    /// A connection opened on this node.
    Register {
        user: Arc<str>,
        device: Arc<str>,
        conn_id: u64,
        /// The user's first connection on this node (decides `user.online` without Redis).
        first_here: bool,
    },
    /// A connection left this node.
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

/// Adds connection `conn_id` of `user`'s `device` on `node` to the user's presence hash, read
/// back with the hash's length after it (two replies), and to the node's `confab:node-conns`
/// (no reply).
fn add_entry(pipe: &mut redis::Pipeline, node: &str, node_conns: &str, conn_id: u64, user: &str, device: &str) {
    let key = presence_key(user);
    pipe.hset(&key, field(node, conn_id), device).hlen(&key);
    pipe.hset(node_conns, conn_id, user).ignore();
}

/// Removes connection `conn_id` of `user` on `node` from the user's presence hash (two replies,
/// see [`remove_counted`]) and from the node's `confab:node-conns` (no reply).
fn remove_entry(pipe: &mut redis::Pipeline, node: &str, node_conns: &str, conn_id: u64, user: &str) {
    remove_counted(pipe, user, &field(node, conn_id));
    pipe.hdel(node_conns, conn_id).ignore();
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
                    add_entry(&mut w.pipe, &inner.node_id, &node_conns, conn_id, &user, &device);
                    w.written.push((user, true, first_here));
                }
                Op::Unregister { user, conn_id, last_here } => {
                    remove_entry(&mut w.pipe, &inner.node_id, &node_conns, conn_id, &user);
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
                remove_entry(&mut pipe, node, &node_conns, *conn_id, user);
            }
            bump_version(inner, &mut pipe);
            let replies: Vec<i64> = inner.redis.pipe(&pipe).await?;
            let users = chunk.iter().map(|(_, u)| u.clone()).collect();
            emit(inner, went_offline(users, &mut replies.into_iter())).await;
        }
        for chunk in conns.chunks(WRITE_BATCH) {
            let mut pipe = redis::pipe();
            for (conn_id, user, device) in chunk {
                add_entry(&mut pipe, node, &node_conns, *conn_id, user, device);
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
