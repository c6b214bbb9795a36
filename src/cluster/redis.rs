//! The Redis connection pool: a `bb8` pool of multiplexed connections with short timeouts and a
//! circuit breaker, so no caller waits on an unreachable Redis longer than `redis_timeout_ms`.
//!
//! - Every call is bounded by the timeout as a whole (pool checkout, connecting, the reply).
//! - A connection that failed with an I/O error, a dropped connection or a timeout is marked
//!   broken and leaves the pool when handed back, so a Redis restart costs no stale connections
//!   (and no `PING` on every checkout).
//! - After a failure Redis counts as down: calls fail at once with [`ClusterError::Unavailable`]
//!   instead of waiting, until a probe (the heartbeat's, or the subscriber's) succeeds.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, FromRedisValue, RedisError};

use super::{ClusterError, ClusterMetrics};

/// A pooled connection and whether it failed in a way that makes it unusable.
pub(crate) struct Conn {
    inner: MultiplexedConnection,
    broken: bool,
}

/// Creates connections for the pool.
pub(crate) struct Manager {
    client: redis::Client,
    config: AsyncConnectionConfig,
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = RedisError;

    async fn connect(&self) -> Result<Conn, RedisError> {
        let inner = self.client.get_multiplexed_async_connection_with_config(&self.config).await?;
        Ok(Conn { inner, broken: false })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), RedisError> {
        redis::cmd("PING").query_async::<()>(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// Errors after which a connection is not reused.
fn breaks_connection(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
}

/// The pool, its client (for dedicated connections) and Redis's health as last seen.
pub struct Redis {
    pool: bb8::Pool<Manager>,
    client: redis::Client,
    timeout: Duration,
    up: AtomicBool,
    /// Bumped on every transition to down; lets the heartbeat notice an outage it did not see.
    outages: AtomicU64,
    metrics: Arc<ClusterMetrics>,
}

impl Redis {
    /// Builds the pool without connecting: a node starts (and serves its own users) while Redis
    /// is unreachable. Fails only on a malformed URL.
    pub(crate) fn new(
        url: &str,
        pool_size: u32,
        timeout: Duration,
        metrics: Arc<ClusterMetrics>,
    ) -> Result<Redis, ClusterError> {
        let client = redis::Client::open(url)
            .map_err(|e| ClusterError::Config(format!("cluster.redis_url is not a Redis URL: {e}")))?;
        let config =
            AsyncConnectionConfig::new().set_connection_timeout(Some(timeout)).set_response_timeout(Some(timeout));
        let pool = bb8::Pool::builder()
            .max_size(pool_size)
            .min_idle(Some(0))
            .connection_timeout(timeout)
            .test_on_check_out(false)
            .retry_connection(false)
            .build_unchecked(Manager { client: client.clone(), config });
        Ok(Redis { pool, client, timeout, up: AtomicBool::new(false), outages: AtomicU64::new(0), metrics })
    }

    /// Whether the last call to Redis succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    pub(crate) fn outages(&self) -> u64 {
        self.outages.load(Relaxed)
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn client(&self) -> &redis::Client {
        &self.client
    }

    pub(crate) fn mark_up(&self) {
        if !self.up.swap(true, Relaxed) {
            tracing::info!("redis is reachable");
        }
        self.metrics.redis_up.store(true, Relaxed);
    }

    pub(crate) fn mark_down(&self, why: &str) {
        self.metrics.redis_errors.fetch_add(1, Relaxed);
        self.metrics.redis_up.store(false, Relaxed);
        if self.up.swap(false, Relaxed) {
            self.outages.fetch_add(1, Relaxed);
            tracing::warn!(error = why, "redis is unreachable: serving local users only until it is back");
        }
    }

    /// Runs a pipeline (or a single command via [`Redis::cmd`]), failing at once while Redis is down.
    pub async fn pipe<T: FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, ClusterError> {
        if !self.is_up() {
            return Err(ClusterError::Unavailable("redis is down".into()));
        }
        self.probe(p).await
    }

    /// Like [`Redis::pipe`] for one command.
    pub async fn cmd<T: FromRedisValue>(&self, c: &redis::Cmd) -> Result<T, ClusterError> {
        let mut p = redis::pipe();
        p.add_command(c.clone());
        let (v,): (T,) = self.pipe(&p).await?;
        Ok(v)
    }

    /// Runs a pipeline even while Redis counts as down (the heartbeat's probe); success marks it up.
    pub(crate) async fn probe<T: FromRedisValue>(&self, p: &redis::Pipeline) -> Result<T, ClusterError> {
        // Err((message, whether Redis itself is unreachable)).
        let run = async {
            let mut conn = self.pool.get().await.map_err(|e| (e.to_string(), true))?;
            match p.query_async::<T>(&mut conn.inner).await {
                Ok(v) => Ok(v),
                Err(e) => {
                    let unreachable = breaks_connection(&e);
                    conn.broken = unreachable;
                    Err((e.to_string(), unreachable))
                }
            }
        };
        let r = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r,
            Err(_) => Err((format!("no answer within {} ms", self.timeout.as_millis()), true)),
        };
        match r {
            Ok(v) => {
                self.mark_up();
                Ok(v)
            }
            Err((e, true)) => {
                self.mark_down(&e);
                Err(ClusterError::Unavailable(e))
            }
            Err((e, false)) => {
                self.metrics.redis_errors.fetch_add(1, Relaxed);
                Err(ClusterError::Redis(e))
            }
        }
    }
}
