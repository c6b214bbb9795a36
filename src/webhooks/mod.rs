//! Webhooks: the dispatcher that delivers the store's outbox to the configured endpoints, the
//! request signing they share with the HTTP API, and the `before_send` client (docs/webhooks.md).
//!
//! The store writes an event in the same transaction as the change it reports
//! (`confab_actors::outbox`). The dispatcher runs on every node but works only while it holds
//! the store lease `webhooks` (renewed every poll), so one node of a cluster delivers at a time.
//! Per endpoint it creates a pending delivery for each new event matching the endpoint's filter
//! (moving a cursor kept in the store), then POSTs pending deliveries: at most
//! `webhooks.max_in_flight` at once, and for each conversation (or user, for presence) only the
//! oldest undelivered event, so an endpoint sees a conversation's events in order while other
//! conversations proceed. A delivery is marked `delivered` only after a 2xx answer (at least
//! once); a failure is retried after an exponential back-off, and after `webhooks.max_attempts`
//! it is marked `failed` (the next event of its conversation then goes on; replay re-queues it).
//! Everything is in the store, so a restarted node carries on where it stopped.
//!
//! The holder also applies the retention (`webhooks.retention_hours`): every
//! `webhooks.trim_interval_ms` it walks the outbox from its oldest event and removes the events
//! that every endpoint is done with, and their deliveries (the rule is on
//! [`Trim`](confab_actors::outbox::Trim)), in steps of [`TRIM_BATCH`] events and for at most
//! [`TRIM_BUDGET`] between two rounds of deliveries, so a large backlog never stalls them.

pub mod before_send;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_actors::outbox::{Attempt, Delivery, DeliveryState, Outbox, OutboxEvent, Trim};
use tokio::sync::mpsc;

use crate::config::{Config, WebhookEndpoint};

/// The name of the store lease the dispatcher holds.
pub const LEASE: &str = "webhooks";
/// Events read per poll and endpoint; pending deliveries considered per poll and endpoint.
const BATCH: usize = 500;
/// Events examined per retention step (one store call: one writer transaction on the embedded
/// store, a few bounded commands on MongoDB).
pub const TRIM_BATCH: usize = 500;
/// Longest the retention runs between two rounds of deliveries; a pass that is not finished goes
/// on at the next round.
pub const TRIM_BUDGET: Duration = Duration::from_millis(200);

/// The signing headers of a POST (`X-Confab-Key`, `-Timestamp`, `-Nonce`, `-Signature`).
pub fn signed_headers(key_id: &str, secret: &str, url: &reqwest::Url, body: &[u8]) -> Vec<(&'static str, String)> {
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let ts = now_secs().to_string();
    let nonce = nonce();
    let sig = crate::http::api::auth::sign(secret, "POST", &path, &ts, &nonce, body);
    vec![
        ("x-confab-key", key_id.to_owned()),
        ("x-confab-timestamp", ts),
        ("x-confab-nonce", nonce),
        ("x-confab-signature", sig),
    ]
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn now_ms() -> i64 {
    confab_actors::clock::now_ms()
}

/// 32 hex digits, unique per request (time, a counter and the process's random hasher keys).
fn nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let state = std::collections::hash_map::RandomState::new();
    let mut a = state.build_hasher();
    a.write_u128(t);
    a.write_u64(n);
    let mut b = state.build_hasher();
    b.write_u64(a.finish());
    b.write_u64(n);
    format!("{:016x}{:016x}", a.finish(), b.finish())
}

/// The dispatcher's settings.
#[derive(Clone)]
pub struct Settings {
    pub endpoints: Vec<WebhookEndpoint>,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
    pub max_in_flight: usize,
    pub poll: Duration,
    pub lease_ttl: Duration,
    pub owner: String,
    /// How long finished events are kept.
    pub retention: Duration,
    /// How often a retention pass starts.
    pub trim_interval: Duration,
    /// Other readers of the outbox whose cursors hold events back from the retention (the
    /// pusher's, `~push`).
    pub other_cursors: Vec<String>,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let w = &cfg.webhooks;
        Settings {
            endpoints: w.endpoints.clone(),
            max_attempts: w.max_attempts,
            backoff_initial: Duration::from_millis(w.backoff_initial_ms),
            backoff_max: Duration::from_millis(w.backoff_max_ms),
            timeout: Duration::from_millis(w.timeout_ms),
            max_in_flight: w.max_in_flight,
            poll: Duration::from_millis(w.poll_interval_ms),
            lease_ttl: Duration::from_millis(w.lease_ttl_ms),
            owner: cfg.cluster.node_id.clone(),
            retention: Duration::from_secs_f64(w.retention_hours * 3600.0),
            trim_interval: Duration::from_millis(w.trim_interval_ms),
            other_cursors: if cfg.push.enabled() { vec![confab_actors::push::CURSOR.to_owned()] } else { Vec::new() },
        }
    }

    /// The wait before attempt `n + 1` after `n` failed ones: doubling, capped, plus up to 10 %.
    pub fn backoff(&self, failed: u32) -> Duration {
        let base = self.backoff_initial.saturating_mul(1u32 << failed.saturating_sub(1).min(20)).min(self.backoff_max);
        let jitter_ms = (now_ms().unsigned_abs() % 97) * (base.as_millis() as u64 / 10).max(1) / 97;
        base + Duration::from_millis(jitter_ms)
    }
}

/// Per-endpoint state in memory: what is in flight (the store holds everything else).
struct Lane {
    ep: WebhookEndpoint,
    url: Option<reqwest::Url>,
    kinds: HashSet<String>,
    cursor: Option<u64>,
    in_flight: HashSet<u64>,
    busy_keys: HashSet<String>,
}

/// Where the retention stands: the pass under way (resuming after an event id), and when the
/// next one starts.
struct Trimmer {
    interval: Duration,
    next_pass: Instant,
    resume_after: Option<u64>,
    events: u64,
    deliveries: u64,
}

impl Trimmer {
    fn new(interval: Duration) -> Trimmer {
        Trimmer { interval, next_pass: Instant::now(), resume_after: None, events: 0, deliveries: 0 }
    }

    /// Runs the pass under way, or starts one when it is time, for at most [`TRIM_BUDGET`].
    async fn run(&mut self, s: &Settings, outbox: &Arc<dyn Outbox>) {
        if self.resume_after.is_none() && Instant::now() < self.next_pass {
            return;
        }
        let started = Instant::now();
        let retention = i64::try_from(s.retention.as_millis()).unwrap_or(i64::MAX);
        let endpoints: Vec<String> =
            s.endpoints.iter().map(|e| e.name.clone()).chain(s.other_cursors.iter().cloned()).collect();
        loop {
            let t = Trim {
                before_ts: now_ms().saturating_sub(retention),
                endpoints: endpoints.clone(),
                after: self.resume_after.unwrap_or(0),
                limit: TRIM_BATCH,
            };
            let done = match outbox.trim(&t).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook retention: store unavailable");
                    self.finish();
                    return;
                }
            };
            self.events += done.events;
            self.deliveries += done.deliveries;
            if done.examined < TRIM_BATCH {
                if self.events > 0 || self.deliveries > 0 {
                    tracing::info!(
                        events = self.events,
                        deliveries = self.deliveries,
                        "webhook retention: removed old events and their deliveries"
                    );
                } else {
                    tracing::debug!("webhook retention: nothing to remove");
                }
                self.finish();
                return;
            }
            self.resume_after = Some(done.last_id);
            if started.elapsed() >= TRIM_BUDGET {
                return;
            }
        }
    }

    fn finish(&mut self) {
        self.resume_after = None;
        self.events = 0;
        self.deliveries = 0;
        self.next_pass = Instant::now() + self.interval;
    }
}

/// A finished attempt, reported to the loop.
struct Done {
    lane: usize,
    key: String,
    /// The delivery after the attempt, stored by the loop (all dispatcher writes are made by one
    /// task, one after another).
    delivery: Delivery,
}

/// Sets webhooks up on a node: with endpoints (or with push, which plans from the outbox), turns
/// the store's outbox on and starts the dispatcher (with no endpoints it only runs the
/// retention); with `before_send`, `before_group_create` or `before_member_join`, installs the
/// check. Does nothing when none is configured.
pub fn install(cfg: &Config, engine: &confab_actors::engine::Engine, outbox: Arc<dyn Outbox>) -> anyhow::Result<()> {
    let before_send = before_send::HttpBeforeSend::from_config(&cfg.webhooks.before_send)?;
    let mut hooks = confab_actors::outbox::Hooks::default();
    if !cfg.webhooks.endpoints.is_empty() || cfg.push.enabled() {
        outbox.enable();
        let span = tracing::info_span!(parent: &engine.core().span(), "webhooks");
        spawn(Settings::from_config(cfg), outbox.clone(), span)?;
    }
    if !cfg.webhooks.endpoints.is_empty() {
        hooks.outbox = Some(outbox);
    }
    if let Some(b) = before_send {
        hooks.before_send = Some(Arc::new(b));
    }
    let gate = |name, c| before_send::HttpGate::from_config(name, c).map(|g| g.map(|g| Arc::new(g) as Arc<_>));
    hooks.before_group_create = gate("before_group_create", &cfg.webhooks.before_group_create)?;
    hooks.before_member_join = gate("before_member_join", &cfg.webhooks.before_member_join)?;
    let any_gate = hooks.before_group_create.is_some() || hooks.before_member_join.is_some();
    if hooks.outbox.is_some() || hooks.before_send.is_some() || any_gate {
        engine.set_hooks(hooks);
    }
    Ok(())
}

/// Starts the dispatcher on the current (actix) runtime, in `span` (its log lines and each
/// delivery's span `delivery{endpoint, event, kind}` are under it). It runs until the runtime
/// stops.
pub fn spawn(settings: Settings, outbox: Arc<dyn Outbox>, span: tracing::Span) -> anyhow::Result<()> {
    // No redirects: the signature covers the configured URL's path, and a 3xx is a failure.
    let client =
        reqwest::Client::builder().timeout(settings.timeout).redirect(reqwest::redirect::Policy::none()).build()?;
    actix::spawn(tracing::Instrument::instrument(run(settings, outbox, client), span));
    Ok(())
}

async fn run(s: Settings, outbox: Arc<dyn Outbox>, client: reqwest::Client) {
    let mut lanes: Vec<Lane> = s
        .endpoints
        .iter()
        .map(|ep| Lane {
            url: reqwest::Url::parse(&ep.url).ok(),
            kinds: ep.events.iter().cloned().collect(),
            ep: ep.clone(),
            cursor: None,
            in_flight: HashSet::new(),
            busy_keys: HashSet::new(),
        })
        .collect();
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(s.max_in_flight * lanes.len().max(1) + 1);
    let mut ticker = tokio::time::interval(s.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader = false;
    let mut trimmer = Trimmer::new(s.trim_interval);
    // The holder renews every third of the lease's lifetime; the others ask every poll.
    let mut next_lease = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some(d) = done_rx.recv() => {
                let mut finished = vec![d];
                // Take what else finished too, then go on at once (the conversation's next event).
                while let Ok(d) = done_rx.try_recv() {
                    finished.push(d);
                }
                for d in finished {
                    // If this cannot be stored the delivery stays pending and is sent again.
                    if let Err(e) = outbox.save_delivery(&d.delivery).await {
                        tracing::warn!(event = d.delivery.event_id, error = %e, "could not store a webhook attempt");
                    }
                    if let Some(lane) = lanes.get_mut(d.lane) {
                        lane.in_flight.remove(&d.delivery.event_id);
                        lane.busy_keys.remove(&d.key);
                    }
                }
            }
        }
        if Instant::now() >= next_lease {
            next_lease = Instant::now() + s.poll;
            let ttl = i64::try_from(s.lease_ttl.as_millis()).unwrap_or(i64::MAX);
            match outbox.lease(LEASE, &s.owner, now_ms(), ttl).await {
                Ok(held) => {
                    if held && !leader {
                        tracing::info!(owner = %s.owner, "webhook dispatcher active on this node");
                        for lane in &mut lanes {
                            lane.cursor = None;
                        }
                    }
                    leader = held;
                    if held {
                        next_lease = Instant::now() + s.lease_ttl / 3;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook lease: store unavailable");
                    leader = false;
                }
            }
        }
        if !leader {
            continue;
        }
        for (idx, lane) in lanes.iter_mut().enumerate() {
            if let Err(e) = step(&s, &outbox, &client, idx, lane, &done_tx).await {
                tracing::warn!(endpoint = %lane.ep.name, error = %e, "webhook dispatch: store unavailable");
            }
        }
        trimmer.run(&s, &outbox).await;
    }
}

/// One pass over an endpoint: queue new events, then start what may start.
async fn step(
    s: &Settings,
    outbox: &Arc<dyn Outbox>,
    client: &reqwest::Client,
    idx: usize,
    lane: &mut Lane,
    done: &mpsc::Sender<Done>,
) -> confab_actors::store::StoreResult<()> {
    let cursor = match lane.cursor {
        Some(c) => c,
        None => outbox.cursor(&lane.ep.name).await?,
    };
    lane.cursor = Some(cursor);
    // No event can appear later with an id below one read here (the store's contract: one
    // writer on the embedded store, the version watermark on MongoDB), so the cursor may pass it.
    let events = outbox.events_after(cursor, BATCH).await?;
    if let Some(last) = events.last().map(|e| e.id) {
        let ids: Vec<u64> =
            events.iter().filter(|e| lane.kinds.is_empty() || lane.kinds.contains(&e.kind)).map(|e| e.id).collect();
        outbox.enqueue(&lane.ep.name, &ids, last).await?;
        lane.cursor = Some(last);
    }
    if lane.in_flight.len() >= s.max_in_flight {
        return Ok(());
    }
    let pending = outbox.pending(&lane.ep.name, BATCH).await?;
    let now = now_ms();
    let mut seen: HashSet<String> = HashSet::new();
    for (delivery, event) in pending {
        let key = event.order_key();
        // Only the oldest pending event of a conversation may go.
        if !seen.insert(key.clone()) || lane.busy_keys.contains(&key) || lane.in_flight.contains(&event.id) {
            continue;
        }
        if delivery.next_at > now {
            continue;
        }
        if lane.in_flight.len() >= s.max_in_flight {
            break;
        }
        let Some(url) = lane.url.clone() else {
            continue;
        };
        lane.in_flight.insert(event.id);
        lane.busy_keys.insert(key.clone());
        let (client, ep, settings, done) = (client.clone(), lane.ep.clone(), s.clone(), done.clone());
        let span = tracing::debug_span!("delivery", endpoint = %ep.name, event = event.id, kind = event.kind.as_str());
        let send = async move {
            let delivery = attempt(&client, &url, &ep, &settings, delivery, &event).await;
            // The loop stores the outcome before it reads pending deliveries again.
            let _ = done.send(Done { lane: idx, key, delivery }).await;
        };
        actix::spawn(tracing::Instrument::instrument(send, span));
    }
    Ok(())
}

/// What a receiver gets: the event as JSON.
pub fn event_body(e: &OutboxEvent) -> Vec<u8> {
    serde_json::to_vec(e).unwrap_or_default()
}

/// One POST of an event; returns the delivery with the attempt recorded.
async fn attempt(
    client: &reqwest::Client,
    url: &reqwest::Url,
    ep: &WebhookEndpoint,
    s: &Settings,
    mut delivery: Delivery,
    event: &OutboxEvent,
) -> Delivery {
    let body = event_body(event);
    let started = Instant::now();
    let at = now_ms();
    let mut req = client
        .post(url.clone())
        .header("content-type", "application/json")
        .header("x-confab-event-id", event.id.to_string())
        .header("x-confab-event", event.kind.as_str());
    for (k, v) in signed_headers(&ep.key_id, &ep.secret, url, &body) {
        req = req.header(k, v);
    }
    let outcome = req.body(body).send().await;
    let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (status, error) = match outcome {
        Ok(r) if r.status().is_success() => (Some(r.status().as_u16()), None),
        Ok(r) => (Some(r.status().as_u16()), Some(format!("HTTP {}", r.status().as_u16()))),
        Err(e) if e.is_timeout() => (None, Some("timed out".to_owned())),
        Err(e) => (None, Some(format!("request failed: {e}"))),
    };
    let ok = error.is_none();
    let attempt = Attempt { at, status, error, ms };
    if ok {
        delivery.record(attempt, DeliveryState::Delivered, 0);
    } else {
        let failed = delivery.attempts + 1;
        if failed >= s.max_attempts {
            tracing::warn!(endpoint = %ep.name, event = event.id, "webhook delivery failed for good; replay it to retry");
            delivery.record(attempt, DeliveryState::Failed, 0);
        } else {
            let wait = i64::try_from(s.backoff(failed).as_millis()).unwrap_or(i64::MAX);
            delivery.record(attempt, DeliveryState::Pending, now_ms().saturating_add(wait));
        }
    }
    delivery
}
