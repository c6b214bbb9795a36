//! Assembling and running a node: the store, the bus, the actors and the HTTP server.
//!
//! [`serve`] takes an already bound listener (so tests run on `127.0.0.1:0`) and runs until the
//! server is stopped. Singletons (registry, conversation arbiters, engine) are created here once,
//! outside `HttpServer::new`, whose factory runs once per worker.

use std::net::TcpListener;
use std::sync::Arc;

use actix::Arbiter;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;

use confab_actors::conversation::Directory;
use confab_actors::engine::Engine;
use confab_actors::metrics::Metrics;
use confab_actors::outbox::Outbox;
use confab_actors::registry::Registry;
use confab_actors::store::Store;

use crate::auth::Tokens;
use crate::cluster::{Cluster, ClusterOptions};
use crate::config::Config;
use crate::http::ws::config::SessionConfig;
use crate::http::{self, AppState};
use crate::store::{EmbeddedStore, MongoOptions, MongoStore};

/// Opens the configured store (`storage.backend`). The MongoDB store runs its driver on a runtime
/// of its own, so it may be opened from any runtime (here: actix's, inside [`serve`]).
pub async fn open_store(cfg: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_stores(cfg, metrics).await?.0)
}

/// Like [`open_store`], also returning the same store as the webhook outbox.
pub async fn open_stores(cfg: &Config, metrics: Arc<Metrics>) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Outbox>)> {
    if cfg.storage.backend == "mongodb" {
        let mut opts = MongoOptions::from_config(&cfg.storage.mongodb);
        opts.node = cfg.cluster.node_id.clone();
        let store = MongoStore::open(opts, metrics)
            .await
            .with_context(|| format!("opening the MongoDB store (database {:?})", cfg.storage.mongodb.database))?;
        let store = Arc::new(store);
        return Ok((store.clone(), store));
    }
    let store = EmbeddedStore::open(&cfg.storage.path, metrics)
        .with_context(|| format!("opening the embedded store at {}", cfg.storage.path.display()))?;
    let store = Arc::new(store);
    Ok((store.clone(), store))
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs a node on `listener` until it is stopped (by SIGINT/SIGTERM when `signals` is true, or
/// through `on_start`'s handle). Must be called inside an actix `System`.
pub async fn serve(
    cfg: Config,
    listener: TcpListener,
    signals: bool,
    on_start: impl FnOnce(actix_web::dev::ServerHandle),
) -> anyhow::Result<()> {
    if signals {
        survive_file_size_limit();
    }
    let metrics = Arc::new(Metrics::default());
    let (store, outbox) = open_stores(&cfg, metrics.clone()).await?;
    let registry = Arc::new(Registry::new(metrics.clone()));
    let n_arbiters = if cfg.groups.arbiters == 0 { cores() } else { cfg.groups.arbiters };
    let arbiters: Vec<Arbiter> = (0..n_arbiters).map(|_| Arbiter::new()).collect();
    let directory = Directory::new(arbiters.iter().map(|a| a.handle()).collect());
    let engine = Engine::new(store, registry.clone(), metrics, cfg.limits(), directory);
    engine.core().set_node(&cfg.cluster.node_id);
    crate::webhooks::install(&cfg, &engine, outbox.clone())?;
    let push = crate::push::install(&cfg, &engine, outbox.clone())?;
    let cluster = start_cluster(&cfg, &engine)?;
    let api = crate::http::api::ApiState::from_config(&cfg);
    // Broadcasts: sent by the node holding the lease `broadcasts`, at their paced rate.
    let owner = format!("{}.{}", cfg.cluster.node_id, confab_actors::engine::random_id());
    actix::spawn(engine.clone().run_broadcasts(outbox.clone(), owner, cfg.api.system_user.clone()));
    let _ = api.outbox.set(outbox);
    let engine_at_exit = engine.clone();
    let socket_metrics = engine.metrics().clone();
    let proxies = crate::http::conn::TrustedProxies::parse(&cfg.server.trusted_proxies).map_err(anyhow::Error::msg)?;
    let state = web::Data::new(AppState {
        engine,
        session: SessionConfig::from_config(&cfg),
        tokens: Tokens::from_config(&cfg),
        ip_limits: crate::http::conn::IpLimits::new(&cfg.rates()),
        proxies,
        access_check_timeout: std::time::Duration::from_millis(cfg.auth.access_check_timeout_ms),
        ready_timeout: std::time::Duration::from_millis(cfg.server.ready_timeout_ms),
        api,
        files: files_state(&cfg)?,
        more_metrics: push
            .into_iter()
            .map(|p| Box::new(move || p.render()) as Box<dyn Fn() -> String + Send + Sync>)
            .collect(),
    });
    let cluster_data = cluster.clone().map(web::Data::new);
    let workers = if cfg.server.workers == 0 { cores() } else { cfg.server.workers };
    let socket_options = crate::http::conn::SocketOptions::from_config(&cfg);
    let server = HttpServer::new(move || {
        let app = App::new().app_data(state.clone()).wrap(actix_web::middleware::from_fn(http::trace_request));
        let app = match &cluster_data {
            Some(c) => app.app_data(c.clone()),
            None => app,
        };
        app.configure(http::routes)
    })
    .on_connect(move |conn, ext| crate::http::conn::on_connect(conn, ext, socket_options, &socket_metrics))
    .workers(workers)
    .shutdown_timeout(cfg.server.shutdown_timeout_secs)
    .disable_signals()
    .listen(listener)?
    .run();
    let handle = server.handle();
    // SIGINT / SIGTERM: close every WebSocket with 1001 first, so the graceful stop does not
    // wait `shutdown_timeout_secs` for connections that would never end by themselves.
    actix::spawn(async move {
        if !signals {
            return;
        }
        shutdown_signal().await;
        let n = registry.close_all();
        tracing::info!(sessions = n, "shutting down");
        handle.stop(true).await;
    });
    on_start(server.handle());
    let result = server.await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    if let Some(c) = cluster {
        c.shutdown().await;
        // The users that went offline with this node: their events reach the outbox first.
        while c.incoming_queued() > 0 && std::time::Instant::now() < deadline {
            actix_web::rt::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    if !engine_at_exit.presence_written(left).await {
        tracing::warn!("some user.offline events were not written to the outbox before exiting");
    }
    for a in arbiters {
        a.stop();
        let _ = a.join();
    }
    result.map_err(Into::into)
}

/// Starts the cluster layer when `cluster.enabled`: joins the engine to it (presence, cross-node
/// fan-out, cluster-wide commands) and hands what other nodes send to the engine.
fn start_cluster(cfg: &Config, engine: &Engine) -> anyhow::Result<Option<Cluster>> {
    if !cfg.cluster.enabled {
        return Ok(None);
    }
    let (cluster, mut incoming) =
        Cluster::start(ClusterOptions::from_config(&cfg.cluster)).context("starting the cluster layer")?;
    engine.set_cluster(Arc::new(crate::cluster::link::Link::new(cluster.clone())));
    let engine = engine.clone();
    actix::spawn(async move {
        while let Some(i) = incoming.recv().await {
            crate::cluster::link::dispatch(&engine, i);
        }
    });
    Ok(Some(cluster))
}

/// Keeps the process alive when a write would take a file past the process's file size limit
/// (`RLIMIT_FSIZE`, e.g. `ulimit -f` or systemd's `LimitFSIZE=`). The kernel then sends SIGXFSZ,
/// whose default action ends the process; once a handler is registered the write fails with
/// `EFBIG` instead, which the embedded store survives like a full disk (it answers `unavailable`
/// and re-opens its database until writes succeed again). tokio's handler stays registered for the
/// life of the process even though the stream is dropped here, and does nothing else.
fn survive_file_size_limit() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Err(e) = signal(SignalKind::from_raw(libc::SIGXFSZ)) {
            tracing::warn!(error = %e, "cannot handle SIGXFSZ: a write past the file size limit will end the process");
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A node running on its own thread with its own actix system (for tests and embedding).
pub struct RunningNode {
    pub addr: std::net::SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl RunningNode {
    /// Binds `cfg.server.bind` (port 0 is fine) and starts the node on a new thread.
    pub fn start(cfg: Config) -> anyhow::Result<RunningNode> {
        let listener = TcpListener::bind(cfg.bind_addr()?)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let sys = actix::System::new();
            let tx2 = tx.clone();
            let result = sys.block_on(serve(cfg, listener, false, move |h| {
                let _ = tx2.send(Ok(h));
            }));
            if let Err(e) = &result {
                let _ = tx.send(Err(anyhow::anyhow!("{e:#}")));
            }
            result
        });
        let handle = rx.recv().context("node thread ended before starting")??;
        Ok(RunningNode { addr, handle, thread: Some(thread) })
    }

    /// Stops the node and waits for its thread (and its store) to finish.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let handle = self.handle.clone();
        // `stop` only needs a runtime to be polled on; a tiny one will do. It runs on a thread of
        // its own because we may be called from inside an async runtime (a test dropping its
        // node), where blocking on a second runtime panics.
        let stopper = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                rt.block_on(handle.stop(false));
            }
        });
        let _ = stopper.join();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

/// The file endpoints' storage and settings (`[files]`); the directory is made if missing.
fn files_state(cfg: &Config) -> anyhow::Result<Option<Arc<crate::http::files::FilesState>>> {
    use confab_actors::model::FileKind;
    let f = &cfg.files;
    let dir = f.dir(&cfg.storage);
    let bad_dir = |e: std::io::Error| anyhow::anyhow!("files.path {}: {e}", dir.display());
    let blobs = if f.backend == "s3" {
        let s = &f.s3;
        let mut b = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_virtual_hosted_style_request(s.virtual_hosted_style);
        if !s.access_key_id.is_empty() {
            b = b.with_access_key_id(&s.access_key_id).with_secret_access_key(&s.secret_access_key);
        }
        if !s.endpoint.is_empty() {
            b = b.with_endpoint(&s.endpoint).with_allow_http(s.endpoint.starts_with("http://"));
        }
        let store = b.build().map_err(|e| anyhow::anyhow!("files.s3: {e}"))?;
        crate::files::Blobs::s3(Arc::new(store), &s.prefix, dir.clone()).map_err(bad_dir)?
    } else {
        crate::files::Blobs::Local(crate::files::LocalBlobs::new(dir.clone()).map_err(bad_dir)?)
    };
    Ok(Some(Arc::new(crate::http::files::FilesState {
        blobs,
        links: crate::files::Links::new(&cfg.auth.secret, f.link_ttl_secs),
        upload_ttl_secs: f.upload_ttl_secs,
        thumbnails: tokio::sync::Semaphore::new(2),
        busy: Default::default(),
        max_bytes: [
            (FileKind::Image, f.max_image_bytes),
            (FileKind::Audio, f.max_audio_bytes),
            (FileKind::Video, f.max_video_bytes),
            (FileKind::File, f.max_file_bytes),
        ],
    })))
}
