//! The cluster layer: several nodes behind a load balancer, sharing one MongoDB and bridged by
//! Redis. Nothing in `confab-actors` knows about Redis; whoever delivers messages asks this module
//! where users are ([`Cluster::locate`]) and hands frames for other nodes to it
//! ([`Cluster::publish_located`]); frames for this node arrive on the [`Incoming`] queue returned
//! by [`Cluster::start`].
//!
//! - [`redis`]: the connection pool (bb8, short timeouts, fails fast while Redis is down).
//! - [`presence`]: which connections of which users are on which node, kept alive by heartbeats.
//! - [`bus`]: one pub/sub channel per node plus one for the whole cluster, and the wire format.
//!
//! # Runtime
//!
//! A `Cluster` runs its Redis connections and tasks (heartbeat, presence writer, subscriber) on a
//! small tokio runtime of its own, like the MongoDB store: its methods may be called from any
//! runtime (actix arbiters included) and hand their work over.
//!
//! # Redis down
//!
//! Every call fails at once with [`ClusterError::Unavailable`] (after the first one that times out),
//! so callers deliver to this node's users and leave the others to sync. The heartbeat keeps
//! trying every `heartbeat_ms`; when Redis answers again this node re-asserts its presence and the
//! subscriber resubscribes, without anyone's help.

pub mod bus;
pub mod link;
pub mod presence;
pub mod redis;

use crate::runtime::OwnedRuntime;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use bus::{Batch, Broadcast, Incoming};
pub use presence::Located;

use self::redis::Redis;
use presence::{Op, Table};

/// A cluster-layer failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// Redis cannot be reached (or did not answer in time); nothing was done. Retry later.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error, or with something this version does not understand.
    #[error("redis error: {0}")]
    Redis(String),
    /// The cluster settings are unusable.
    #[error("{0}")]
    Config(String),
    /// The cluster layer was shut down.
    #[error("the cluster layer is shut down")]
    Closed,
}

/// What [`Cluster::start`] needs (see `[cluster]` in config/default.toml).
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub node_id: String,
    pub redis_url: String,
    pub pool_size: u32,
    /// Longest wait for one Redis call.
    pub timeout: Duration,
    pub heartbeat: Duration,
    pub node_ttl: Duration,
    /// Capacity of the [`Incoming`] queue; messages beyond it are dropped (and counted).
    pub inbox: usize,
}

impl ClusterOptions {
    pub fn from_config(c: &crate::config::Cluster) -> ClusterOptions {
        ClusterOptions {
            node_id: c.node_id.clone(),
            redis_url: c.redis_url.clone(),
            pool_size: c.redis_pool_size,
            timeout: Duration::from_millis(c.redis_timeout_ms),
            heartbeat: Duration::from_millis(c.heartbeat_ms),
            node_ttl: Duration::from_millis(c.node_ttl_ms),
            inbox: 4096,
        }
    }
}

/// Counters of the cluster layer, rendered on `/metrics` by [`ClusterMetrics::render`].
#[derive(Default)]
pub struct ClusterMetrics {
    /// Whether the last Redis call succeeded.
    pub redis_up: AtomicBool,
    /// Failed Redis calls (timeouts, refused connections, error replies).
    pub redis_errors: AtomicU64,
    /// PUBLISH commands sent: one per destination node per batch, one per broadcast.
    pub publishes: AtomicU64,
    /// Batches received for this node's users (including any dropped because the queue was full).
    pub batches_received: AtomicU64,
    /// Broadcast events received from other nodes.
    pub broadcasts_received: AtomicU64,
    /// Received messages dropped: malformed, of another version, or the incoming queue was full.
    pub incoming_dropped: AtomicU64,
    /// `deliver`/`announce` work dropped: the queue was full or Redis was unreachable.
    pub outgoing_dropped: AtomicU64,
    /// Presence writes sent (one per register or unregister).
    pub presence_writes: AtomicU64,
    /// Times this node re-asserted its whole presence table (after an outage or a Redis restart).
    pub presence_reasserts: AtomicU64,
    /// Presence entries of dead nodes deleted.
    pub presence_cleaned: AtomicU64,
    /// Users this node announced online (their first connection in the cluster).
    pub users_online: AtomicU64,
    /// Users this node announced offline (their last connection in the cluster left or died).
    pub users_offline: AtomicU64,
    /// `locate` calls that reached Redis.
    pub locates: AtomicU64,
    /// Successful (re)subscriptions to the node bus.
    pub subscriptions: AtomicU64,
}

impl ClusterMetrics {
    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::with_capacity(2048);
        let mut line = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        line(
            "confab_cluster_redis_up",
            "1 when the last Redis call succeeded.",
            "gauge",
            self.redis_up.load(Relaxed).into(),
        );
        let counters: [(&str, &str, &AtomicU64); 13] = [
            ("confab_cluster_redis_errors_total", "Failed Redis calls.", &self.redis_errors),
            ("confab_cluster_publishes_total", "PUBLISH commands sent to the node bus.", &self.publishes),
            ("confab_cluster_batches_received_total", "Batches received from other nodes.", &self.batches_received),
            ("confab_cluster_broadcasts_received_total", "Broadcast events received.", &self.broadcasts_received),
            ("confab_cluster_incoming_dropped_total", "Node bus messages dropped.", &self.incoming_dropped),
            ("confab_cluster_outgoing_dropped_total", "Deliveries and broadcasts dropped.", &self.outgoing_dropped),
            ("confab_cluster_presence_writes_total", "Presence writes sent to Redis.", &self.presence_writes),
            ("confab_cluster_presence_reasserts_total", "Full presence re-assertions.", &self.presence_reasserts),
            (
                "confab_cluster_presence_cleaned_total",
                "Presence entries of dead nodes deleted.",
                &self.presence_cleaned,
            ),
            ("confab_cluster_users_online_total", "Users this node announced online.", &self.users_online),
            ("confab_cluster_users_offline_total", "Users this node announced offline.", &self.users_offline),
            ("confab_cluster_locates_total", "Presence lookups sent to Redis.", &self.locates),
            ("confab_cluster_subscriptions_total", "Subscriptions to the node bus.", &self.subscriptions),
        ];
        for (name, help, v) in counters {
            line(name, help, "counter", v.load(Relaxed));
        }
        out
    }
}

/// The PUBLISH pipeline for `batch` to the remote nodes of `located`, and how many it holds.
fn publishes(me: &str, located: &Located, batch: &Batch) -> (::redis::Pipeline, usize) {
    let mut p = ::redis::pipe();
    let mut n = 0;
    for (node, users) in located.remote(me) {
        p.publish(bus::node_channel(node), bus::encode_batch(me, batch, users)).ignore();
        n += 1;
    }
    (p, n)
}

async fn broadcast(inner: &Inner, event: &Broadcast) -> Result<(), ClusterError> {
    let mut p = ::redis::pipe();
    p.publish(bus::BROADCAST_CHANNEL, bus::encode_broadcast(&inner.node_id, event)).ignore();
    inner.metrics.publishes.fetch_add(1, Relaxed);
    inner.redis.pipe::<()>(&p).await
}

/// Work for the fire-and-forget sender.
enum Outgoing {
    Deliver(Batch),
    Broadcast(Broadcast),
}

/// Capacity of the fire-and-forget queue ([`Cluster::deliver`], [`Cluster::announce`]).
const OUTGOING_QUEUE: usize = 4096;

/// Most queued items the sender takes at once.
const SEND_BATCH: usize = 256;

/// Serves [`Cluster::deliver`] and [`Cluster::announce`] in order. Everything queued is taken at
/// once: the deliveries between two broadcasts share one presence lookup (one pipelined round
/// trip, with nothing to read for recipients whose presence is known and unchanged, see
/// [`presence::LocateCache`]) and one pipeline of publishes (one per destination node per
/// delivery, in queue order).
async fn sender(inner: Arc<Inner>, mut rx: mpsc::Receiver<Outgoing>) {
    let mut taken = Vec::with_capacity(SEND_BATCH);
    let mut run: Vec<Batch> = Vec::new();
    let mut cache = presence::LocateCache::default();
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
async fn send_run(inner: &Arc<Inner>, cache: &mut presence::LocateCache, run: &mut Vec<Batch>) {
    if run.is_empty() {
        return;
    }
    // Every recipient of the run, once (a group's messages share theirs: a batch for the same
    // users as the one before adds nobody).
    let users: Vec<Arc<str>> = {
        let mut seen: std::collections::HashSet<&Arc<str>> = std::collections::HashSet::new();
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
    cache: &presence::LocateCache,
    live: &std::collections::HashSet<Arc<str>>,
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

/// State shared by the handle and the tasks.
pub(crate) struct Inner {
    pub(crate) node_id: String,
    /// A value unique to this process, stored in the liveness key.
    pub(crate) boot: Arc<str>,
    pub(crate) redis: Redis,
    pub(crate) heartbeat: Duration,
    pub(crate) node_ttl: Duration,
    pub(crate) metrics: Arc<ClusterMetrics>,
    pub(crate) table: Mutex<Table>,
    /// Redis may lack some of this node's presence writes: re-assert at the next heartbeat.
    pub(crate) presence_behind: AtomicBool,
    pub(crate) writes: mpsc::Sender<Op>,
    /// Node ids from `confab:nodes`, refreshed by the heartbeat.
    pub(crate) known_nodes: RwLock<Vec<String>>,
    /// Presence versions this node wrote (see [`presence::VERSION_KEY`]).
    pub(crate) presence_version: AtomicU64,
    pub(crate) subscribed: AtomicBool,
    /// The incoming queue, for [`Incoming::Presence`].
    pub(crate) incoming: mpsc::Sender<Incoming>,
    /// Security broadcasts being sent again (see `retry_broadcast`).
    pub(crate) retried_broadcasts: std::sync::atomic::AtomicUsize,
}

struct Shared {
    inner: Arc<Inner>,
    handle: tokio::runtime::Handle,
    stop: watch::Sender<bool>,
    outgoing: mpsc::Sender<Outgoing>,
    // Last: the runtime goes after everything that may hold connections on it.
    _rt: OwnedRuntime,
}

/// This node's handle on the cluster layer. Cheap to clone. Dropping the last clone without
/// [`Cluster::shutdown`] stops everything at once, like a crash: other nodes notice through the
/// liveness key within `node_ttl`.
#[derive(Clone)]
pub struct Cluster {
    shared: Arc<Shared>,
}

impl Cluster {
    /// Starts the cluster layer: the heartbeat, the presence writer and the subscriber to this
    /// node's channel and the broadcast channel. Does not wait for Redis: a node starts while Redis
    /// is unreachable and joins once it answers. Received batches and events arrive on the
    /// returned queue (capacity `opts.inbox`).
    pub fn start(opts: ClusterOptions) -> Result<(Cluster, mpsc::Receiver<Incoming>), ClusterError> {
        let rt = OwnedRuntime::new("confab-cluster", 1)
            .map_err(|e| ClusterError::Config(format!("cannot start the cluster runtime: {e}")))?;
        let handle = match rt.handle() {
            Some(h) => h,
            None => return Err(ClusterError::Closed),
        };
        let metrics = Arc::new(ClusterMetrics::default());
        let redis = {
            let _guard = handle.enter();
            Redis::new(&opts.redis_url, opts.pool_size, opts.timeout, metrics.clone())?
        };
        let (writes, writes_rx) = mpsc::channel(presence::WRITE_QUEUE);
        let (inbox_tx, inbox_rx) = mpsc::channel(opts.inbox.max(1));
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let inner = Arc::new(Inner {
            boot: Arc::from(format!("{}-{nanos}", std::process::id())),
            node_id: opts.node_id,
            redis,
            heartbeat: opts.heartbeat,
            node_ttl: opts.node_ttl,
            metrics,
            table: Mutex::new(Table::default()),
            presence_behind: AtomicBool::new(false),
            writes,
            known_nodes: RwLock::new(Vec::new()),
            presence_version: AtomicU64::new(0),
            subscribed: AtomicBool::new(false),
            incoming: inbox_tx.clone(),
            retried_broadcasts: std::sync::atomic::AtomicUsize::new(0),
        });
        let (stop, stop_rx) = watch::channel(false);
        handle.spawn(presence::writer(inner.clone(), writes_rx));
        handle.spawn(presence::heartbeat(inner.clone(), stop_rx.clone()));
        handle.spawn(bus::subscriber(inner.clone(), inbox_tx, stop_rx));
        let (outgoing, outgoing_rx) = mpsc::channel(OUTGOING_QUEUE);
        handle.spawn(sender(inner.clone(), outgoing_rx));
        tracing::info!(node = %inner.node_id, "cluster layer started");
        Ok((Cluster { shared: Arc::new(Shared { inner, handle, stop, outgoing, _rt: rt }) }, inbox_rx))
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.shared.inner
    }

    /// Runs `f` on the cluster's runtime and waits for it.
    async fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = Result<T, ClusterError>> + Send + 'static,
    ) -> Result<T, ClusterError> {
        self.shared.handle.spawn(f).await.map_err(|_| ClusterError::Closed)?
    }

    pub fn node_id(&self) -> &str {
        &self.inner().node_id
    }

    /// Whether the last Redis call succeeded (for `/readyz` and logs).
    /// Whether other nodes' publishes reach this node now: Redis answers and the subscription
    /// is live.
    pub fn bus_up(&self) -> bool {
        self.redis_up() && self.inner().subscribed.load(Relaxed)
    }

    pub fn redis_up(&self) -> bool {
        self.inner().redis.is_up()
    }

    /// Whether the subscriber currently listens to this node's channel.
    pub fn subscribed(&self) -> bool {
        self.inner().subscribed.load(Relaxed)
    }

    pub fn metrics(&self) -> &Arc<ClusterMetrics> {
        &self.inner().metrics
    }

    /// Items waiting on the incoming queue (received batches, presence events).
    pub fn incoming_queued(&self) -> usize {
        let q = &self.inner().incoming;
        q.max_capacity() - q.capacity()
    }

    /// Connections of this node in its presence table.
    pub fn local_connections(&self) -> usize {
        self.inner().table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Records that connection `conn_id` of `user`'s `device` is on this node. Never waits: the
    /// Redis write is queued (in order with every other presence write) and sent in the background;
    /// [`Cluster::flush`] waits for it. When the write finds it is the user's only connection in
    /// the cluster, [`Incoming::Presence`] (online) follows on the incoming queue; when Redis
    /// cannot be written, `first_here` (the user's first connection on this node) decides.
    pub fn register(&self, user: &Arc<str>, device: &Arc<str>, conn_id: u64, first_here: bool) {
        let inner = self.inner();
        inner.table.lock().unwrap_or_else(|p| p.into_inner()).insert(user.clone(), device.clone(), conn_id);
        self.queue(Op::Register { user: user.clone(), device: device.clone(), conn_id, first_here });
    }

    /// Records that connection `conn_id` of `user` left this node. Never waits (see `register`):
    /// [`Incoming::Presence`] (offline) follows when it was the user's last connection in the
    /// cluster (or, when Redis cannot be written, `last_here`: its last one on this node).
    pub fn unregister(&self, user: &Arc<str>, conn_id: u64, last_here: bool) {
        let inner = self.inner();
        inner.table.lock().unwrap_or_else(|p| p.into_inner()).remove(conn_id);
        self.queue(Op::Unregister { user: user.clone(), conn_id, last_here });
    }

    fn queue(&self, op: Op) {
        let fallback = match &op {
            Op::Register { user, first_here: true, .. } => Some((user.clone(), true)),
            Op::Unregister { user, last_here: true, .. } => Some((user.clone(), false)),
            _ => None,
        };
        if self.inner().writes.try_send(op).is_err() {
            // Full (or shut down): the table already holds the truth; re-assert it later. The
            // presence event cannot be decided in Redis: this node's view decides.
            self.inner().presence_behind.store(true, Relaxed);
            if let Some((user, online)) = fallback {
                presence::announce(self.inner(), vec![(user, online)]);
            }
        }
    }

    /// Waits until every presence write queued before this call was sent to Redis; fails when
    /// Redis did not take them (they are re-asserted by themselves once it is back).
    pub async fn flush(&self) -> Result<(), ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.inner().writes.send(Op::Flush(tx)).await.map_err(|_| ClusterError::Closed)?;
        rx.await.map_err(|_| ClusterError::Closed)?
    }

    /// Where `users` (a fan-out chunk, up to a few thousand) are connected: for each live node
    /// (this one included), the users with a connection there. One pipelined round trip; entries
    /// of nodes whose liveness key expired are left out (and deleted in the background).
    pub async fn locate(&self, users: &[Arc<str>]) -> Result<Located, ClusterError> {
        let inner = self.inner().clone();
        let users = users.to_vec();
        self.run(presence::locate(inner, users)).await
    }

    /// Sends `batch` (all but its `from`) to `node` as one PUBLISH. Returns how many subscribers
    /// received it (0: the node is not listening).
    pub async fn publish(&self, node: &str, batch: &Batch) -> Result<u64, ClusterError> {
        let payload = bus::encode_batch(self.node_id(), batch, &batch.users);
        let channel = bus::node_channel(node);
        let inner = self.inner().clone();
        self.run(async move {
            let mut p = ::redis::pipe();
            p.publish(channel, payload);
            inner.metrics.publishes.fetch_add(1, Relaxed);
            let (n,): (u64,) = inner.redis.pipe(&p).await?;
            Ok(n)
        })
        .await
    }

    /// Sends `batch` (its frames, skip and order; not its `users`) to the users `located` on other
    /// nodes: ONE publish per destination node, with that node's users, all of them in one
    /// pipelined round trip. This node's own users are left to the caller (the local registry).
    /// Returns how many nodes were published to.
    pub async fn publish_located(&self, located: &Located, batch: &Batch) -> Result<usize, ClusterError> {
        let inner = self.inner().clone();
        let (p, n) = publishes(&inner.node_id, located, batch);
        if n == 0 {
            return Ok(0);
        }
        self.run(async move {
            inner.metrics.publishes.fetch_add(n as u64, Relaxed);
            inner.redis.pipe::<()>(&p).await?;
            Ok(n)
        })
        .await
    }

    /// Fire-and-forget [`Cluster::locate`] + [`Cluster::publish_located`] for `batch.users`, for
    /// callers that must not wait (actors). Queued on a bounded queue served in order by one task,
    /// which resolves presence through a cache kept exact by the presence version (see
    /// [`presence`]); returns false (and counts the drop) when the queue is full. A batch that
    /// cannot reach Redis is dropped and counted too: its recipients recover with sync.
    pub fn deliver(&self, batch: Batch) -> bool {
        self.post(Outgoing::Deliver(batch))
    }

    /// Fire-and-forget [`Cluster::broadcast`], on the same queue as [`Cluster::deliver`].
    pub fn announce(&self, event: Broadcast) -> bool {
        self.post(Outgoing::Broadcast(event))
    }

    fn post(&self, o: Outgoing) -> bool {
        match self.shared.outgoing.try_send(o) {
            Ok(()) => true,
            Err(_) => {
                self.inner().metrics.outgoing_dropped.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// Sends `event` to every other node (on `confab:all`).
    pub async fn broadcast(&self, event: &Broadcast) -> Result<(), ClusterError> {
        let inner = self.inner().clone();
        let event = event.clone();
        self.run(async move { broadcast(&inner, &event).await }).await
    }

    /// Claims `key` cluster-wide for `ttl`: true when nobody had claimed it (one `SET NX PX`).
    /// Used for the HTTP API's nonces, so a signed request is accepted once by the whole cluster.
    pub async fn claim(&self, key: String, ttl: Duration) -> Result<bool, ClusterError> {
        let inner = self.inner().clone();
        self.run(async move {
            let mut c = ::redis::cmd("SET");
            c.arg(&key).arg(1).arg("NX").arg("PX").arg(ttl.as_millis() as u64);
            let set: Option<String> = inner.redis.cmd(&c).await?;
            Ok(set.is_some())
        })
        .await
    }

    /// Every connection of `user` on a live node of the cluster: `(node, conn_id, device)`. Two
    /// round trips (the user's presence hash, then the liveness keys of the nodes it names).
    pub async fn devices(&self, user: &str) -> Result<Vec<(String, u64, String)>, ClusterError> {
        let inner = self.inner().clone();
        let key = presence::presence_key(user);
        self.run(async move {
            let mut c = ::redis::cmd("HGETALL");
            c.arg(&key);
            let fields: std::collections::HashMap<String, String> = inner.redis.cmd(&c).await?;
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
            let mut c = ::redis::cmd("MGET");
            for n in &nodes {
                c.arg(presence::alive_key(n));
            }
            let alive: Vec<Option<String>> = inner.redis.cmd(&c).await?;
            let live: std::collections::HashSet<&str> =
                nodes.iter().zip(alive).filter(|(_, a)| a.is_some()).map(|(n, _)| n.as_str()).collect();
            entries.retain(|(n, _, _)| live.contains(n.as_str()));
            entries.sort();
            Ok(entries)
        })
        .await
    }

    /// Answers whether Redis answers now (a PING through the pool, bounded by the timeout).
    pub async fn ping(&self) -> Result<(), ClusterError> {
        let inner = self.inner().clone();
        self.run(async move {
            let mut p = ::redis::pipe();
            p.cmd("PING").ignore();
            inner.redis.probe::<()>(&p).await
        })
        .await
    }

    /// Graceful stop: removes this node's presence entries and liveness key (best effort, bounded
    /// by the timeout), then stops the heartbeat and the subscriber.
    pub async fn shutdown(&self) {
        let _ = self.shared.stop.send(true);
        let (tx, rx) = oneshot::channel();
        if self.inner().writes.send(Op::Withdraw(tx)).await.is_ok() {
            let _ = tokio::time::timeout(self.inner().redis.timeout() * 2, rx).await;
        }
    }
}
