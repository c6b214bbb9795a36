//! This node's handle on the cluster layer: [`Cluster::start`] and the calls the rest of the
//! server makes.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::outgoing::{self, Outgoing};
use super::presence::{self, Op, Table};
use super::redis::Redis;
use super::{bus, Batch, Broadcast, ClusterError, ClusterMetrics, ClusterOptions, Incoming, Inner, Located};
use crate::runtime::OwnedRuntime;

/// What the clones of a [`Cluster`] share.
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
    /// Starts the cluster layer: the heartbeat, the presence writer, the fan-out sender and the
    /// subscriber to this node's channel and the broadcast channel. Does not wait for Redis: a node starts while Redis
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
            retried_broadcasts: AtomicUsize::new(0),
        });
        let (stop, stop_rx) = watch::channel(false);
        handle.spawn(presence::writer(inner.clone(), writes_rx));
        handle.spawn(presence::heartbeat(inner.clone(), stop_rx.clone()));
        handle.spawn(bus::subscriber(inner.clone(), inbox_tx, stop_rx));
        let (outgoing, outgoing_rx) = mpsc::channel(outgoing::OUTGOING_QUEUE);
        handle.spawn(outgoing::sender(inner.clone(), outgoing_rx));
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

    /// This node's id (`cluster.node_id`).
    pub fn node_id(&self) -> &str {
        &self.inner().node_id
    }

    /// Whether other nodes' publishes reach this node now: Redis answers and the subscription
    /// is live.
    pub fn bus_up(&self) -> bool {
        self.redis_up() && self.inner().subscribed.load(Relaxed)
    }

    /// Whether the last Redis call succeeded (for `/readyz` and logs).
    pub fn redis_up(&self) -> bool {
        self.inner().redis.is_up()
    }

    /// Whether the subscriber currently listens to this node's channel.
    pub fn subscribed(&self) -> bool {
        self.inner().subscribed.load(Relaxed)
    }

    /// The cluster layer's counters.
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
        let (p, n) = outgoing::publishes(&inner.node_id, located, batch);
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
        self.run(async move { outgoing::broadcast(&inner, &event).await }).await
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
        let user = user.to_owned();
        self.run(presence::devices(inner, user)).await
    }

    /// The devices of each of `users` connected on a live node (users without one left out).
    /// Two round trips whatever the number of users: their presence hashes in one pipeline, then
    /// the liveness keys of the nodes they name.
    pub async fn devices_of(&self, users: Vec<String>) -> Result<Vec<(String, Vec<String>)>, ClusterError> {
        let inner = self.inner().clone();
        self.run(presence::devices_of(inner, users)).await
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
