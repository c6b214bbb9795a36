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
//! | `confab:presence:version` | string | changes with every change to presence hashes (below) |
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
//! as [`Incoming::Presence`]. While Redis cannot be written, this
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
//! read that follows the change's version finds it. The fan-out sender (`LocateCache`) relies on
//! it: it keeps the users' entries it read and re-reads them only when the version moved (or
//! after `heartbeat_ms`, whatever happens), so a fan-out to users already known costs one small
//! round trip (the version and the liveness keys) instead of one `HGETALL` per recipient.
//!
//! # Modules
//!
//! - `keys`: the keys, fields and presence version, and the counted field removals.
//! - `writer`: the writer task (registrations, removals, re-assertion, withdrawal).
//! - `liveness`: the heartbeat and the sweeps of dead nodes' entries.
//! - `locate`: the lookups, and the fan-out sender's cache.
//!
//! This module keeps the node's own view: its `Table` of connections, and the online and
//! offline events handed to the engine.

mod keys;
mod liveness;
mod locate;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::{ClusterError, Incoming, Inner};

pub use keys::{alive_key, node_conns_key, presence_key, NODES_KEY, VERSION_KEY};
pub(crate) use liveness::heartbeat;
pub(crate) use locate::{devices, devices_of, locate, locate_cached, LocateCache};
pub(crate) use writer::{writer, Op, WRITE_QUEUE};

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

/// Hands presence transitions to the engine (in order), waiting for room on the incoming queue.
async fn emit(inner: &Inner, events: Vec<(Arc<str>, bool)>) {
    for (user, online) in events {
        count(inner, online);
        if inner.incoming.send(Incoming::Presence { user, online }).await.is_err() {
            return;
        }
    }
}

/// [`emit`] for callers that cannot wait: an event that finds the incoming queue full is
/// dropped (and counted).
pub(crate) fn announce(inner: &Inner, events: Vec<(Arc<str>, bool)>) {
    for (user, online) in events {
        count(inner, online);
        if let Err(e) = inner.incoming.try_send(Incoming::Presence { user, online }) {
            inner.metrics.incoming_dropped.fetch_add(1, Relaxed);
            if let Incoming::Presence { user, .. } = e.into_inner() {
                tracing::warn!(%user, online, "dropped a presence event: the incoming queue is full");
            }
        }
    }
}

/// Counts a presence transition this node announces.
fn count(inner: &Inner, online: bool) {
    let m = &inner.metrics;
    match online {
        true => m.users_online.fetch_add(1, Relaxed),
        false => m.users_offline.fetch_add(1, Relaxed),
    };
}
