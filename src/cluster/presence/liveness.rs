//! Liveness: the heartbeat that keeps this node's liveness key alive (and asks the writer to
//! re-assert presence when Redis lost some), and the sweeps that delete the entries dead nodes
//! left behind.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::watch;

use super::keys::{alive_key, bump_version, field, node_conns_key, remove_counted, sweep_key, went_offline, NODES_KEY};
use super::writer::Op;
use super::{emit, ClusterError, Inner};

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

/// Deletes entries of dead nodes in the background (lazy cleanup), announcing the users left
/// without any. The nodes themselves stay in `confab:nodes` until swept (see [`sweep_dead`]).
pub(super) fn cleanup(inner: Arc<Inner>, dead: Vec<(Arc<str>, String)>, nodes: HashSet<String>) {
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
            remove_counted(&mut pipe, user, &field(node, conn_id));
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
