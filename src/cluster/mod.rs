//! The cluster layer: several nodes behind a load balancer, sharing one MongoDB and bridged by
//! Redis (`cluster.enabled`). `confab-actors` knows nothing of Redis: it sees the cluster through
//! the trait `confab_actors::cluster::Cluster`, which [`link::Link`] implements on this node's
//! [`Cluster`] handle, and what other nodes send reaches the engine through [`link::dispatch`]
//! (`Engine::deliver_from_peer`, `Engine::peer_command`, `Engine::presence`).
//!
//! - [`Cluster`] (`handle`): this node's handle. [`Cluster::start`] starts the tasks below;
//!   `register` and `unregister` record this node's connections; `deliver` and `announce` hand a
//!   message for other nodes' users, or a [`Broadcast`], to the fan-out sender without waiting;
//!   `locate`, `publish_located`, `publish` and `broadcast` are the same steps awaited; `claim`
//!   (the HTTP API's nonces, one `SET NX`) and `devices` (a user's connections on live nodes)
//!   serve the HTTP API.
//! - `outgoing`: the fan-out sender, one task serving `deliver` and `announce` in order: the
//!   deliveries queued together share one presence lookup (through a cache kept exact by the
//!   presence version) and one pipeline of publishes, one per destination node; a `close_user`
//!   broadcast Redis refused is sent again every heartbeat until it takes it.
//! - [`presence`]: which connections of which users are on which node, the heartbeat and its
//!   liveness keys, the sweeps of dead nodes' entries, and each user's `user.online` and
//!   `user.offline`, decided once for the whole cluster.
//! - [`bus`]: one pub/sub channel per node plus one for the whole cluster, the wire format, and
//!   the subscriber that feeds the [`Incoming`] queue returned by [`Cluster::start`].
//! - [`redis`]: the connection pool (bb8, short timeouts, fails fast while Redis is down).
//! - [`ClusterMetrics`] (`metrics`): the counters rendered on `/metrics`.
//!
//! # Runtime
//!
//! A `Cluster` runs its Redis connections and tasks (heartbeat, presence writer, subscriber,
//! fan-out sender) on a small tokio runtime of its own, like the MongoDB store: its methods may be
//! called from any runtime (actix arbiters included) and hand their work over.
//!
//! # Redis down
//!
//! Every call fails at once with [`ClusterError::Unavailable`] (after the first one that fails or
//! times out), so the actors serve this node's users and leave the others to sync: deliveries for
//! other nodes are dropped and counted, and this node's own view decides its users' online and
//! offline events. The heartbeat keeps probing every `heartbeat_ms`; when Redis answers again
//! this node re-asserts its presence and the subscriber resubscribes (then
//! [`Incoming::Resubscribed`] makes the engine re-check its sessions' access), without anyone's
//! help.

pub mod bus;
mod handle;
pub mod link;
mod metrics;
mod outgoing;
pub mod presence;
pub mod redis;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;

pub use bus::{Batch, Broadcast, Incoming};
pub use handle::Cluster;
pub use metrics::ClusterMetrics;
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
    /// The options of `[cluster]`.
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
    pub(crate) retried_broadcasts: AtomicUsize,
}
