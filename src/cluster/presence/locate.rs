//! Lookups: where users are connected, read from Redis for
//! [`Cluster::locate`](crate::cluster::Cluster::locate) and
//! [`Cluster::devices`](crate::cluster::Cluster::devices), and through the [`LocateCache`] for
//! the fan-out sender.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use redis::Value;

use super::keys::{alive_key, presence_key, VERSION_KEY};
use super::liveness::cleanup;
use super::{ClusterError, Inner, Located};

/// Parses `MGET` of liveness keys into the set of live nodes among `nodes`.
fn live_among(nodes: &[String], v: Value) -> Result<HashSet<String>, ClusterError> {
    let alive: Vec<Option<String>> = redis::from_redis_value(v).map_err(|e| ClusterError::Redis(e.to_string()))?;
    Ok(nodes.iter().zip(alive).filter(|(_, a)| a.is_some()).map(|(n, _)| n.clone()).collect())
}

/// See [`Cluster::locate`](crate::cluster::Cluster::locate).
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

/// See [`Cluster::devices`](crate::cluster::Cluster::devices).
pub(crate) async fn devices(inner: Arc<Inner>, user: String) -> Result<Vec<(String, u64, String)>, ClusterError> {
    let mut c = redis::cmd("HGETALL");
    c.arg(presence_key(&user));
    let fields: HashMap<String, String> = inner.redis.cmd(&c).await?;
    let mut entries: Vec<(String, u64, String)> = fields
        .into_iter()
        .filter_map(|(f, device)| {
            let (node, conn) = f.rsplit_once('/')?;
            Some((node.to_owned(), conn.parse().ok()?, device))
        })
        .collect();
    let mut nodes: Vec<String> = entries.iter().map(|(n, _, _)| n.clone()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.is_empty() {
        return Ok(entries);
    }
    let mut c = redis::cmd("MGET");
    for n in &nodes {
        c.arg(alive_key(n));
    }
    let alive: Vec<Option<String>> = inner.redis.cmd(&c).await?;
    let live: HashSet<&str> = nodes.iter().zip(alive).filter(|(_, a)| a.is_some()).map(|(n, _)| n.as_str()).collect();
    entries.retain(|(n, _, _)| live.contains(n.as_str()));
    entries.sort();
    Ok(entries)
}

/// See [`Cluster::devices_of`](crate::cluster::Cluster::devices_of).
pub(crate) async fn devices_of(
    inner: Arc<Inner>,
    users: Vec<String>,
) -> Result<Vec<(String, Vec<String>)>, ClusterError> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for u in &users {
        pipe.hgetall(presence_key(u));
    }
    let replies: Vec<Value> = inner.redis.pipe(&pipe).await?;
    // (user, node, device) of every entry.
    let mut entries: Vec<(usize, String, String)> = Vec::new();
    for (idx, v) in replies.into_iter().enumerate() {
        let h: HashMap<String, String> = redis::from_redis_value(v).map_err(|e| ClusterError::Redis(e.to_string()))?;
        for (f, device) in h {
            if let Some((node, _conn)) = f.rsplit_once('/') {
                entries.push((idx, node.to_owned(), device));
            }
        }
    }
    let mut nodes: Vec<String> = entries.iter().map(|(_, n, _)| n.clone()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = redis::cmd("MGET");
    for n in &nodes {
        c.arg(alive_key(n));
    }
    let alive: Vec<Option<String>> = inner.redis.cmd(&c).await?;
    let live: HashSet<&str> = nodes.iter().zip(alive).filter(|(_, a)| a.is_some()).map(|(n, _)| n.as_str()).collect();
    let mut by_user: std::collections::BTreeMap<usize, Vec<String>> = std::collections::BTreeMap::new();
    for (idx, node, device) in entries {
        if live.contains(node.as_str()) {
            by_user.entry(idx).or_default().push(device);
        }
    }
    Ok(by_user
        .into_iter()
        .filter_map(|(idx, mut d)| {
            d.sort_unstable();
            d.dedup();
            Some((users.get(idx)?.clone(), d))
        })
        .collect())
}
