//! The fan-out sender: one task serves [`Cluster::deliver`] and [`Cluster::announce`] in order,
//! resolving the presence of a run of deliveries at once and publishing them in one pipeline.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::presence::{self, LocateCache};
#[cfg(doc)]
use super::Cluster;
use super::{bus, Batch, Broadcast, ClusterError, Inner, Located};

/// The PUBLISH pipeline for `batch` to the remote nodes of `located`, and how many it holds.
pub(super) fn publishes(me: &str, located: &Located, batch: &Batch) -> (::redis::Pipeline, usize) {
    let mut p = ::redis::pipe();
    let mut n = 0;
    for (node, users) in located.remote(me) {
        p.publish(bus::node_channel(node), bus::encode_batch(me, batch, users)).ignore();
        n += 1;
    }
    (p, n)
}

pub(super) async fn broadcast(inner: &Inner, event: &Broadcast) -> Result<(), ClusterError> {
    let mut p = ::redis::pipe();
    p.publish(bus::BROADCAST_CHANNEL, bus::encode_broadcast(&inner.node_id, event)).ignore();
    inner.metrics.publishes.fetch_add(1, Relaxed);
    inner.redis.pipe::<()>(&p).await
}

/// Work for the fire-and-forget sender.
pub(super) enum Outgoing {
    Deliver(Batch),
    Broadcast(Broadcast),
}

/// Capacity of the fire-and-forget queue ([`Cluster::deliver`], [`Cluster::announce`]).
pub(super) const OUTGOING_QUEUE: usize = 4096;

/// Most queued items the sender takes at once.
const SEND_BATCH: usize = 256;

/// Serves [`Cluster::deliver`] and [`Cluster::announce`] in order. Everything queued is taken at
/// once: the deliveries between two broadcasts share one presence lookup (one pipelined round
/// trip, with nothing to read for recipients whose presence is known and unchanged, see
/// [`LocateCache`]) and one pipeline of publishes (one per destination node per
/// delivery, in queue order).
pub(super) async fn sender(inner: Arc<Inner>, mut rx: mpsc::Receiver<Outgoing>) {
    let mut taken = Vec::with_capacity(SEND_BATCH);
    let mut run: Vec<Batch> = Vec::new();
    let mut cache = LocateCache::default();
    while rx.recv_many(&mut taken, SEND_BATCH).await > 0 {
        for o in taken.drain(..) {
            match o {
                Outgoing::Deliver(batch) => run.push(batch),
                Outgoing::Broadcast(event) => {
                    send_run(&inner, &mut cache, &mut run).await;
                    if broadcast(&inner, &event).await.is_err() {
                        match event {
                            // A lost disable or revocation would leave sessions open on other
                            // nodes: it is sent again until Redis takes it.
                            Broadcast::CloseUser { .. } => retry_broadcast(&inner, event),
                            _ => {
                                inner.metrics.outgoing_dropped.fetch_add(1, Relaxed);
                            }
                        }
                    }
                }
            }
        }
        send_run(&inner, &mut cache, &mut run).await;
    }
}

/// Security broadcasts being sent again at most at once; beyond, one is dropped (and counted):
/// nodes still re-check their sessions' access when their own subscription comes back.
const MAX_RETRIED_BROADCASTS: usize = 10_000;

/// Sends `event` again every heartbeat until Redis takes it (see [`sender`]).
fn retry_broadcast(inner: &Arc<Inner>, event: Broadcast) {
    if inner.retried_broadcasts.fetch_add(1, Relaxed) >= MAX_RETRIED_BROADCASTS {
        inner.retried_broadcasts.fetch_sub(1, Relaxed);
        inner.metrics.outgoing_dropped.fetch_add(1, Relaxed);
        tracing::warn!("too many security broadcasts waiting for Redis; dropped one");
        return;
    }
    let inner = inner.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(inner.heartbeat).await;
            if broadcast(&inner, &event).await.is_ok() {
                break;
            }
        }
        inner.retried_broadcasts.fetch_sub(1, Relaxed);
    });
}

/// Publishes a run of deliveries (see [`sender`]) and empties it. A run that cannot reach Redis
/// is dropped and counted: its recipients recover with sync.
async fn send_run(inner: &Arc<Inner>, cache: &mut LocateCache, run: &mut Vec<Batch>) {
    if run.is_empty() {
        return;
    }
    // Every recipient of the run, once (a group's messages share theirs: a batch for the same
    // users as the one before adds nobody).
    let users: Vec<Arc<str>> = {
        let mut seen: HashSet<&Arc<str>> = HashSet::new();
        let mut users = Vec::new();
        for (i, b) in run.iter().enumerate() {
            if i > 0 && run[i - 1].users == b.users {
                continue;
            }
            users.extend(b.users.iter().filter(|u| seen.insert(*u)).cloned());
        }
        users
    };
    let done = match presence::locate_cached(inner, cache, &users).await {
        Err(e) => {
            tracing::debug!(error = %e, "cannot resolve presence; the run is left to sync");
            Err(e)
        }
        Ok(live) => {
            let me = inner.node_id.as_str();
            let mut p = ::redis::pipe();
            let mut n = 0;
            // (node, its users) for one batch, in node order; a handful of nodes at most. A
            // conversation's messages usually go to the same users: their grouping is reused.
            let mut per_node: Vec<(Arc<str>, Vec<Arc<str>>)> = Vec::new();
            let mut grouped: Option<&[Arc<str>]> = None;
            for batch in run.iter() {
                if grouped != Some(batch.users.as_slice()) {
                    per_node.clear();
                    group_by_node(cache, &live, me, &batch.users, &mut per_node);
                    grouped = Some(batch.users.as_slice());
                }
                for (node, users) in &per_node {
                    p.publish(bus::node_channel(node), bus::encode_batch(me, batch, users)).ignore();
                    n += 1;
                }
            }
            if n == 0 {
                Ok(())
            } else {
                inner.metrics.publishes.fetch_add(n as u64, Relaxed);
                inner.redis.pipe::<()>(&p).await
            }
        }
    };
    if done.is_err() {
        inner.metrics.outgoing_dropped.fetch_add(run.len() as u64, Relaxed);
    }
    run.clear();
}

/// Groups `users` by the live nodes other than `me` where `cache` has entries of theirs, into
/// `per_node` (in node order, each user once per node).
fn group_by_node(
    cache: &LocateCache,
    live: &HashSet<Arc<str>>,
    me: &str,
    users: &[Arc<str>],
    per_node: &mut Vec<(Arc<str>, Vec<Arc<str>>)>,
) {
    for u in users {
        for (node, _) in cache.entries(u) {
            if &**node == me || !live.contains(node) {
                continue;
            }
            let i = match per_node.iter().position(|(n, _)| n == node) {
                Some(i) => i,
                None => {
                    per_node.push((node.clone(), Vec::new()));
                    per_node.len() - 1
                }
            };
            let list = &mut per_node[i].1;
            // A user with several connections on the node is listed once.
            if list.last() != Some(u) {
                list.push(u.clone());
            }
        }
    }
    per_node.sort_unstable_by(|a, b| a.0.cmp(&b.0));
}
