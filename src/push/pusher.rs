//! The pusher: one node of a cluster (the holder of the store lease `push`) turns stored
//! messages into notifications for the devices that are not connected, and sends them.
//!
//! **Planning.** The pusher reads the outbox's `message.sent` events after its cursor
//! ([`push::CURSOR`], kept beside the webhook endpoints' cursors, so the outbox retention keeps
//! every event it has not planned yet). For each message it finds the recipients (a group's
//! members, cached until the outbox says the membership changed; a one-to-one conversation's
//! other user), their registrations (cached while the store's registrations version stays the
//! same) and which of their devices are connected anywhere (one Redis round trip for the step),
//! and folds the message into a job per device that is not connected ([`push::merge`]): one job
//! per user, device and conversation, so a burst is one notification. The cursor is stored with
//! the step's last job write; planning an event again adds nothing.
//!
//! **Sending.** A job is due `push.delay_ms` after its first message. Then the pusher looks
//! again, at that moment: the device connected meanwhile, the user read the conversation on
//! another device, muted it, left it, the device's access was revoked, or the message was
//! recalled: not sent ([`push::skip_reason`]). Otherwise it builds the notification (the sender's nickname and
//! avatar and the group's name from caches that expire after `push.profile_cache_secs`; the badge
//! is the user's total unread) and sends it through the registration's provider. A token the
//! provider calls invalid is removed (if it is still the device's), a failure worth retrying is
//! tried again with back-off up to `push.max_attempts`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_actors::engine::Engine;
use confab_actors::model::{self, Body, ConvKind, Message};
use confab_actors::outbox::{Outbox, OutboxEvent};
use confab_actors::push::{self, Finish, Planned, PushJob, PushRegistration};
use confab_actors::store::Store;
use futures_util::FutureExt as _;
use tokio::sync::mpsc;

use super::metrics::PushMetrics;
use super::providers::Providers;
use super::{Notification, Outcome, Target};
use crate::config::Config;

/// The store lease the active pusher holds.
pub const LEASE: &str = "push";
/// Outbox events read per planning step.
const BATCH: usize = 500;
/// Recipients one planning step takes in at most (a step always takes a whole event).
const PLAN_RECIPIENTS: usize = 5000;
/// Jobs written per store call.
const PLAN_WRITE: usize = 500;
/// Longest registrations are taken from the cache without reading them again.
const REGS_MAX_AGE: Duration = Duration::from_secs(60);
/// How often a stored cursor moves when planning finds nothing to plan.
const CURSOR_EVERY: Duration = Duration::from_secs(1);
/// Longest the pusher plans in one round before it sends what is due.
const PLAN_BUDGET: Duration = Duration::from_millis(250);
/// Most cached recipient lists, profiles and group names each (cleared whole when full).
const CACHE_MAX: usize = 50_000;

/// The pusher's settings (`[push]`).
#[derive(Clone)]
pub struct Settings {
    pub delay_ms: i64,
    pub max_age_ms: i64,
    pub mentions_override_mute: bool,
    pub show_preview: bool,
    pub max_attempts: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_in_flight: usize,
    pub poll: Duration,
    pub lease_ttl: Duration,
    pub profile_ttl: Duration,
    pub owner: String,
}

impl Settings {
    pub fn from_config(cfg: &Config) -> Settings {
        let p = &cfg.push;
        Settings {
            delay_ms: i64::try_from(p.delay_ms).unwrap_or(i64::MAX),
            max_age_ms: i64::try_from(p.max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            mentions_override_mute: p.mentions_override_mute,
            show_preview: p.show_preview,
            max_attempts: p.max_attempts,
            backoff_initial: Duration::from_millis(p.backoff_initial_ms),
            backoff_max: Duration::from_millis(p.backoff_max_ms),
            max_in_flight: p.max_in_flight,
            poll: Duration::from_millis(p.poll_interval_ms),
            lease_ttl: Duration::from_millis(p.lease_ttl_ms),
            profile_ttl: Duration::from_secs(p.profile_cache_secs),
            owner: cfg.cluster.node_id.clone(),
        }
    }

    /// The wait before attempt `failed + 1`: doubling from `backoff_initial`, capped.
    fn backoff(&self, failed: u32) -> Duration {
        self.backoff_initial.saturating_mul(1u32 << failed.saturating_sub(1).min(20)).min(self.backoff_max)
    }
}

/// A value cached until `at + ttl`.
struct Cached<T> {
    at: Instant,
    value: T,
}

/// A user's nickname and avatar.
type Profile = (Option<String>, Option<String>);

/// What the pusher caches: nothing here is read from the store per message.
#[derive(Default)]
struct Caches {
    /// Conversation id -> everyone who receives its messages (a group's members, a pair).
    recipients: HashMap<String, Arc<Vec<String>>>,
    /// User id -> (nickname, avatar).
    profiles: HashMap<String, Cached<Profile>>,
    /// Group id -> name.
    group_names: HashMap<String, Cached<String>>,
    /// User id -> their registrations (empty: none), as of `regs_version` of the store.
    regs: HashMap<String, Arc<Vec<PushRegistration>>>,
    regs_version: Option<u64>,
    /// When `regs` was started: it is dropped after [`REGS_MAX_AGE`] whatever the version (a
    /// version that failed to move after a change on MongoDB is not missed for longer).
    regs_since: Option<Instant>,
}

fn bounded<K, V>(map: &mut HashMap<K, V>) {
    if map.len() >= CACHE_MAX {
        map.clear();
    }
}

/// Shared by the loop and the sending tasks.
struct Ctx {
    engine: Engine,
    store: Arc<dyn Store>,
    providers: Providers,
    settings: Settings,
    metrics: Arc<PushMetrics>,
    caches: Mutex<Caches>,
}

/// A finished job, reported to the loop.
struct Done {
    job: PushJob,
    finish: Finish,
}

/// Starts the pusher on the current (actix) runtime, in `span`. It runs until the runtime stops.
pub fn spawn(
    settings: Settings,
    engine: Engine,
    outbox: Arc<dyn Outbox>,
    providers: Providers,
    metrics: Arc<PushMetrics>,
    span: tracing::Span,
) {
    let ctx = Arc::new(Ctx {
        store: engine.core().store.clone(),
        engine,
        providers,
        settings,
        metrics,
        caches: Mutex::new(Caches::default()),
    });
    actix::spawn(tracing::Instrument::instrument(run(ctx, outbox), span));
}

async fn run(ctx: Arc<Ctx>, outbox: Arc<dyn Outbox>) {
    let s = ctx.settings.clone();
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(s.max_in_flight + 1);
    let mut ticker = tokio::time::interval(s.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leader = false;
    let mut next_lease = Instant::now();
    let mut planning = PlanState::default();
    // Job keys being sent, or sent with their outcome not stored yet (not read again until it is).
    let mut in_flight: HashSet<String> = HashSet::new();
    // Outcomes the store refused: stored again before anything else is sent.
    let mut unstored: Vec<Done> = Vec::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some(d) = done_rx.recv() => {
                unstored.push(d);
                while let Ok(d) = done_rx.try_recv() {
                    unstored.push(d);
                }
            }
        }
        // The planning cursor as stored: done jobs planned before it are forgotten.
        let forget_upto = planning.stored;
        let mut failed = Vec::new();
        for d in unstored.drain(..) {
            match ctx.store.finish_push(&d.job, d.finish, forget_upto).await {
                Ok(_) => {
                    in_flight.remove(&d.job.key());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not store a push job's outcome; trying again");
                    failed.push(d);
                }
            }
        }
        unstored = failed;
        if Instant::now() >= next_lease {
            next_lease = Instant::now() + s.poll;
            let ttl = i64::try_from(s.lease_ttl.as_millis()).unwrap_or(i64::MAX);
            match outbox.lease(LEASE, &s.owner, confab_actors::clock::now_ms(), ttl).await {
                Ok(held) => {
                    if held && !leader {
                        tracing::info!(owner = %s.owner, "pusher active on this node");
                        planning = PlanState::default();
                        ctx.caches.lock().unwrap_or_else(|p| p.into_inner()).recipients.clear();
                    }
                    leader = held;
                    if held {
                        next_lease = Instant::now() + s.lease_ttl / 3;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "push lease: store unavailable");
                    leader = false;
                }
            }
        }
        if !leader || !unstored.is_empty() {
            continue;
        }
        // Plan until caught up with the outbox, for at most PLAN_BUDGET per round.
        let started = Instant::now();
        loop {
            match plan(&ctx, &*outbox, &mut planning).await {
                Ok(true) if started.elapsed() < PLAN_BUDGET => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "push planning: store unavailable");
                    planning.cursor = None;
                    break;
                }
            }
        }
        if in_flight.len() < s.max_in_flight {
            let now = confab_actors::clock::now_ms();
            match ctx.store.due_pushes(now, s.max_in_flight * 2).await {
                Ok(due) => {
                    for job in due {
                        if in_flight.len() >= s.max_in_flight {
                            break;
                        }
                        if !in_flight.insert(job.key()) {
                            continue;
                        }
                        let (ctx, done) = (ctx.clone(), done_tx.clone());
                        actix::spawn(async move {
                            // A panic in there must not keep the job's slot forever.
                            let finish = match std::panic::AssertUnwindSafe(deliver(&ctx, &job)).catch_unwind().await {
                                Ok(f) => f,
                                Err(_) => {
                                    tracing::error!(user = %job.user, conv = %job.conv_id, "push: sending panicked");
                                    retry_or_give_up(&ctx, &job, "internal", None)
                                }
                            };
                            let _ = done.send(Done { job, finish }).await;
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "push sending: store unavailable"),
            }
        }
    }
}

/// Where planning stands: the cursor in memory, and the one stored (moved with the jobs, or at
/// most every [`CURSOR_EVERY`] when a step planned none).
#[derive(Default)]
struct PlanState {
    /// `None` until read from the store (at the start, after an error, on taking the lease).
    cursor: Option<u64>,
    stored: u64,
    stored_at: Option<Instant>,
}

/// One planning step: events after the cursor, folded into jobs, at most [`PLAN_RECIPIENTS`]
/// recipients' worth (each conversation's counted once; but always one whole event). Returns
/// whether there may be more.
async fn plan(ctx: &Ctx, outbox: &dyn Outbox, st: &mut PlanState) -> confab_actors::store::StoreResult<bool> {
    let after = match st.cursor {
        Some(c) => c,
        None => {
            let c = outbox.cursor(push::CURSOR).await?;
            st.stored = c;
            st.stored_at = Some(Instant::now());
            c
        }
    };
    st.cursor = Some(after);
    let events = outbox.events_after(after, BATCH).await?;
    let mut more = events.len() == BATCH;
    let oldest = confab_actors::clock::now_ms().saturating_sub(ctx.settings.max_age_ms);
    // (event, message, its recipients) in event order; the recipients of each conversation as of
    // the step's latest membership event (a message keeps those of its time); the last event.
    let mut messages: Vec<(u64, Message, Arc<Vec<String>>)> = Vec::new();
    let mut convs: HashMap<String, Arc<Vec<String>>> = HashMap::new();
    let mut taken = 0usize;
    let mut last = after;
    for mut e in events {
        if taken >= PLAN_RECIPIENTS {
            more = true;
            break;
        }
        last = e.id;
        if let Some(conv) = membership_changed(&e) {
            ctx.caches.lock().unwrap_or_else(|p| p.into_inner()).recipients.remove(conv);
            // Later messages of the step see the new membership.
            convs.remove(conv);
            continue;
        }
        if e.kind != confab_actors::outbox::MESSAGE_SENT {
            continue;
        }
        let Some(m) = e.data.get_mut("message").and_then(|m| serde_json::from_value::<Message>(m.take()).ok()) else {
            continue;
        };
        if m.sender.is_none() || matches!(m.body, Body::System { .. } | Body::Recalled { .. }) {
            continue;
        }
        if m.ts < oldest {
            // Too old to be news (push turned on over an old outbox, or a long outage).
            ctx.metrics.skipped("stale");
            continue;
        }
        let r = match convs.get(&m.conv_id) {
            Some(r) => r.clone(),
            None => {
                let r = recipients(ctx, &m.conv_id).await?;
                taken += r.len();
                convs.insert(m.conv_id.clone(), r.clone());
                r
            }
        };
        messages.push((e.id, m, r));
    }
    if last == after {
        return Ok(false);
    }
    // Registrations of everyone concerned (one query per 1,000 users), and which of their
    // devices are connected (one round trip).
    // Each distinct recipient list once (a conversation has one per membership in the step).
    let mut lists: HashMap<usize, &Arc<Vec<String>>> = HashMap::new();
    for (_, _, r) in &messages {
        lists.entry(Arc::as_ptr(r) as usize).or_insert(r);
    }
    let mut users: Vec<&str> =
        lists.values().flat_map(|r| r.iter().map(String::as_str)).collect::<HashSet<_>>().into_iter().collect();
    users.sort_unstable();
    let regs = registrations(ctx, &users).await?;
    let with_tokens: Vec<String> = regs.iter().filter(|(_, r)| !r.is_empty()).map(|(u, _)| u.clone()).collect();
    let connected =
        if with_tokens.is_empty() { HashMap::new() } else { ctx.engine.connected_devices(&with_tokens).await };
    // Per recipient list, the devices that may get a notification: registered, not connected.
    let mut targets: HashMap<usize, Vec<&PushRegistration>> = HashMap::new();
    let mut online = 0u64;
    for (key, recipients) in &lists {
        let list = targets.entry(*key).or_default();
        for user in recipients.iter() {
            for r in regs.get(user).into_iter().flat_map(|l| l.iter()) {
                if connected.get(user).is_some_and(|d| d.contains(&r.device)) {
                    online += 1;
                } else {
                    list.push(r);
                }
            }
        }
    }
    // One entry per device and conversation: the step's messages folded together.
    let mut planned: HashMap<String, Planned> = HashMap::new();
    let mut queued = 0u64;
    for (event, m, recipients) in &messages {
        let sender = m.sender.as_deref().unwrap_or_default();
        let key = Arc::as_ptr(recipients) as usize;
        for r in targets.get(&key).into_iter().flatten().filter(|r| r.user != sender) {
            queued += 1;
            let p = Planned {
                user: r.user.clone(),
                device: r.device.clone(),
                conv_id: m.conv_id.clone(),
                seq: m.seq,
                sender: sender.to_owned(),
                count: 1,
                mention_seq: if m.body.mentions(&r.user) { m.seq } else { 0 },
                event: *event,
                ts: m.ts,
                due_at: m.ts.saturating_add(ctx.settings.delay_ms),
            };
            match planned.entry(push::job_key(&r.user, &r.device, &m.conv_id)) {
                std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().absorb(p),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(p);
                }
            }
        }
    }
    if online > 0 {
        ctx.metrics.skipped_n("online", online);
    }
    // In bounded writes; only the last moves the stored cursor (planning a part again adds
    // nothing). A step that planned nothing moves it at most every CURSOR_EVERY: planning those
    // events again after a crash finds nothing to plan either.
    let planned: Vec<Planned> = planned.into_values().collect();
    let cursor_due = st.stored_at.is_none_or(|t| t.elapsed() >= CURSOR_EVERY);
    if planned.is_empty() && cursor_due {
        ctx.store.plan_pushes(&[], last).await?;
        st.stored = last;
        st.stored_at = Some(Instant::now());
    }
    let mut chunks = planned.chunks(PLAN_WRITE).peekable();
    while let Some(chunk) = chunks.next() {
        let to = if chunks.peek().is_some() { after } else { last };
        ctx.store.plan_pushes(chunk, to).await?;
        if to == last {
            st.stored = last;
            st.stored_at = Some(Instant::now());
        }
    }
    ctx.metrics.planned(queued);
    st.cursor = Some(last);
    Ok(more)
}

/// The registrations of `users` (absent or empty: none): from the cache while the store's
/// registrations version has not moved, else read again (one query per 1,000 users).
async fn registrations(
    ctx: &Ctx,
    users: &[&str],
) -> confab_actors::store::StoreResult<HashMap<String, Arc<Vec<PushRegistration>>>> {
    let version = ctx.store.push_tokens_version().await?;
    let mut out = HashMap::with_capacity(users.len());
    let mut missing: Vec<String> = Vec::new();
    {
        let mut c = ctx.caches.lock().unwrap_or_else(|p| p.into_inner());
        if c.regs_version != Some(version) || c.regs_since.is_none_or(|t| t.elapsed() >= REGS_MAX_AGE) {
            c.regs.clear();
            c.regs_version = Some(version);
            c.regs_since = Some(Instant::now());
        }
        for u in users {
            match c.regs.get(*u) {
                Some(r) => {
                    out.insert((*u).to_owned(), r.clone());
                }
                None => missing.push((*u).to_owned()),
            }
        }
    }
    for chunk in missing.chunks(1000) {
        let mut found: HashMap<String, Vec<PushRegistration>> = chunk.iter().map(|u| (u.clone(), Vec::new())).collect();
        for r in ctx.store.push_tokens(chunk).await? {
            found.entry(r.user.clone()).or_default().push(r);
        }
        let mut c = ctx.caches.lock().unwrap_or_else(|p| p.into_inner());
        for (u, list) in found {
            let list = Arc::new(list);
            // Only under the version read before the query: a change since clears it anyway.
            if c.regs_version == Some(version) {
                bounded(&mut c.regs);
                c.regs.insert(u.clone(), list.clone());
            }
            out.insert(u, list);
        }
    }
    Ok(out)
}

/// The conversation whose recipients an event changes (membership, dismissal), if any.
fn membership_changed(e: &OutboxEvent) -> Option<&str> {
    use confab_actors::outbox::{GROUP_CREATED, GROUP_DISMISSED, GROUP_MEMBERS_CHANGED};
    [GROUP_CREATED, GROUP_MEMBERS_CHANGED, GROUP_DISMISSED].contains(&e.kind.as_str()).then_some(())?;
    e.conv_id.as_deref()
}

/// Everyone who receives the messages of `conv_id` (cached until its membership changes).
async fn recipients(ctx: &Ctx, conv_id: &str) -> confab_actors::store::StoreResult<Arc<Vec<String>>> {
    if let Some(r) = ctx.caches.lock().unwrap_or_else(|p| p.into_inner()).recipients.get(conv_id) {
        return Ok(r.clone());
    }
    let list: Vec<String> = match model::conv_kind(conv_id) {
        Ok(ConvKind::Group) => {
            let group = conv_id.strip_prefix("g_").unwrap_or(conv_id);
            ctx.store.members(group).await?.into_iter().map(|m| m.user_id).collect()
        }
        Ok(ConvKind::Direct) => ctx.store.conversation(conv_id).await?.map(|c| c.members).unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let list = Arc::new(list);
    let mut c = ctx.caches.lock().unwrap_or_else(|p| p.into_inner());
    bounded(&mut c.recipients);
    c.recipients.insert(conv_id.to_owned(), list.clone());
    Ok(list)
}

/// A user's nickname and avatar, from the cache or (once per `push.profile_cache_secs`) the store.
async fn profile(ctx: &Ctx, user: &str) -> Profile {
    let ttl = ctx.settings.profile_ttl;
    if let Some(c) = ctx.caches.lock().unwrap_or_else(|p| p.into_inner()).profiles.get(user) {
        if c.at.elapsed() < ttl {
            return c.value.clone();
        }
    }
    ctx.metrics.profile_read();
    let value = match ctx.store.user(user).await {
        Ok(Some(u)) => (u.nickname, u.avatar),
        Ok(None) => (None, None),
        // Not cached: the next notification asks again.
        Err(_) => return (None, None),
    };
    let mut c = ctx.caches.lock().unwrap_or_else(|p| p.into_inner());
    bounded(&mut c.profiles);
    c.profiles.insert(user.to_owned(), Cached { at: Instant::now(), value: value.clone() });
    value
}

/// A group's name, cached like profiles.
async fn group_name(ctx: &Ctx, group: &str) -> String {
    let ttl = ctx.settings.profile_ttl;
    if let Some(c) = ctx.caches.lock().unwrap_or_else(|p| p.into_inner()).group_names.get(group) {
        if c.at.elapsed() < ttl {
            return c.value.clone();
        }
    }
    ctx.metrics.profile_read();
    let name = match ctx.store.group(group).await {
        Ok(Some(g)) => g.name,
        Ok(None) => group.to_owned(),
        Err(_) => return group.to_owned(),
    };
    let mut c = ctx.caches.lock().unwrap_or_else(|p| p.into_inner());
    bounded(&mut c.group_names);
    c.group_names.insert(group.to_owned(), Cached { at: Instant::now(), value: name.clone() });
    name
}

/// At most 64 bytes (APNs' limit), the same for every notification of a conversation.
pub fn collapse_key(conv_id: &str) -> String {
    if conv_id.len() <= 64 {
        return conv_id.to_owned();
    }
    // FNV-1a 64 of the id, after as much of it as fits.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in conv_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    let mut cut = 47;
    while !conv_id.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{h:016x}", &conv_id[..cut])
}

/// Decides, builds and sends one due job; returns how it finishes.
async fn deliver(ctx: &Ctx, job: &PushJob) -> Finish {
    match try_deliver(ctx, job).await {
        Ok(f) => f,
        Err(e) => {
            // The store could not answer: try again after the back-off, as a failed attempt.
            tracing::warn!(error = %e, user = %job.user, "push: store unavailable");
            retry_or_give_up(ctx, job, "store", None)
        }
    }
}

/// Finished: messages folded in meanwhile get a window of their own.
fn done(ctx: &Ctx) -> Finish {
    Finish::Done { requeue_at: confab_actors::clock::now_ms().saturating_add(ctx.settings.delay_ms) }
}

fn retry_or_give_up(ctx: &Ctx, job: &PushJob, reason: &'static str, after: Option<Duration>) -> Finish {
    ctx.metrics.failed(reason);
    let failed = job.attempts + 1;
    if failed >= ctx.settings.max_attempts {
        ctx.metrics.gave_up();
        tracing::warn!(user = %job.user, device = %job.device, conv = %job.conv_id, reason, "push given up");
        return done(ctx);
    }
    let wait = after.unwrap_or_else(|| ctx.settings.backoff(failed)).max(ctx.settings.backoff_initial);
    let next_at = confab_actors::clock::now_ms().saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
    Finish::Retry { next_at, attempts: failed }
}

async fn try_deliver(ctx: &Ctx, job: &PushJob) -> confab_actors::store::StoreResult<Finish> {
    let skip = |reason: &'static str| {
        ctx.metrics.skipped(reason);
        Ok(done(ctx))
    };
    let regs = ctx.store.push_tokens(std::slice::from_ref(&job.user)).await?;
    let Some(reg) = regs.into_iter().find(|r| r.device == job.device) else { return skip("no_token") };
    if !ctx.providers.accepts(&reg.provider) {
        return skip("unconfigured");
    }
    // A disabled user, or a registration older than the device's (or the user's) token
    // revocation, gets nothing (the revocation removes it too; this holds if that failed).
    match ctx.engine.push_allowed(&job.user, &job.device, reg.updated_at).await {
        Ok(true) => {}
        Ok(false) => return skip("revoked"),
        Err(e) => return Err(confab_actors::error::StoreError::Unavailable(e.message)),
    }
    let state = ctx.store.user_conv(&job.user, &job.conv_id).await?;
    let connected = ctx
        .engine
        .connected_devices(std::slice::from_ref(&job.user))
        .await
        .get(&job.user)
        .is_some_and(|d| d.contains(&job.device));
    if let Some(reason) = push::skip_reason(job, state.as_ref(), connected, ctx.settings.mentions_override_mute) {
        return skip(reason);
    }
    let read_seq = state.as_ref().map_or(0, |s| s.read_seq.max(s.cleared_seq));
    let Some(message) = newest_to_show(ctx, job, read_seq).await? else { return skip("recalled") };
    let (badge, _) = match ctx.engine.unread_total(&job.user).await {
        Ok(t) => t,
        Err(e) => return Err(confab_actors::error::StoreError::Unavailable(e.message)),
    };
    let n = notification(ctx, job, &message, badge).await;
    let target = Target { provider: reg.provider.clone(), token: reg.token.clone() };
    let started = Instant::now();
    let outcome = ctx.providers.send(&target, &n).await;
    ctx.metrics.call(started.elapsed());
    Ok(match outcome {
        Outcome::Sent => {
            ctx.metrics.sent(&reg.provider);
            let age = confab_actors::clock::now_ms().saturating_sub(job.first_ts);
            ctx.metrics.latency(Duration::from_millis(u64::try_from(age).unwrap_or(0)));
            done(ctx)
        }
        Outcome::InvalidToken(detail) => {
            ctx.metrics.failed("invalid_token");
            tracing::info!(user = %job.user, device = %job.device, provider = %reg.provider, %detail, "push token invalid; registration removed");
            // Only while it is still that token: a newer registration stays.
            ctx.store.remove_push_token(&job.user, &job.device, Some(&reg.token)).await?;
            done(ctx)
        }
        Outcome::Retry { reason, detail, after } => {
            tracing::debug!(user = %job.user, provider = %reg.provider, reason, %detail, "push failed; will retry");
            retry_or_give_up(ctx, job, reason, after)
        }
        Outcome::Failed { reason, detail } => {
            ctx.metrics.failed(reason);
            tracing::warn!(user = %job.user, device = %job.device, provider = %reg.provider, reason, %detail, "push refused");
            done(ctx)
        }
    })
}

/// The message a notification for `job` shows: its newest, or, when that was recalled, the
/// newest of the others it stands for that the user has not read and that still stands.
/// `None` when none does.
async fn newest_to_show(ctx: &Ctx, job: &PushJob, read_seq: u64) -> confab_actors::store::StoreResult<Option<Message>> {
    let shows = |m: &Message| {
        !m.is_recalled()
            && m.seq > read_seq
            && m.sender.as_deref().is_some_and(|s| s != job.user)
            && !matches!(m.body, Body::System { .. })
    };
    match ctx.store.message(&job.conv_id, job.seq).await? {
        Some(m) if shows(&m) => return Ok(Some(m)),
        _ if job.count <= 1 => return Ok(None),
        _ => {}
    }
    // Not only the job's own messages: system messages and others' may sit between them.
    let q = confab_actors::store::HistoryQuery::Before { seq: job.seq, limit: 50 };
    let earlier = ctx.store.history(&job.conv_id, Some(&job.user), q).await?;
    Ok(earlier.into_iter().rev().find(|m| shows(m)))
}

/// The notification of `job`, whose newest message is `m`.
async fn notification(ctx: &Ctx, job: &PushJob, m: &Message, badge: u64) -> Notification {
    let sender = m.sender.clone().unwrap_or_default();
    let (nickname, avatar) = profile(ctx, &sender).await;
    let who = nickname.unwrap_or_else(|| sender.clone());
    let group = m.conv_id.strip_prefix("g_").filter(|_| matches!(model::conv_kind(&m.conv_id), Ok(ConvKind::Group)));
    let title = match group {
        Some(g) => group_name(ctx, g).await,
        None => who.clone(),
    };
    let text = if ctx.settings.show_preview { m.body.summary() } else { "New message".to_owned() };
    let text = match (group, ctx.settings.show_preview) {
        (Some(_), true) => format!("{who}: {text}"),
        _ => text,
    };
    // Shown instead of a recalled newer one: how many of the rest still stand is not known.
    let count = if m.seq == job.seq { job.count.max(1) } else { 1 };
    let text = match (job.mentioned(), count) {
        (true, _) => format!("[@] {text}"),
        (false, n) if n > 1 => format!("[{n}] {text}"),
        _ => text,
    };
    Notification {
        user: job.user.clone(),
        device: job.device.clone(),
        title,
        body: text,
        image: avatar,
        badge,
        conv_id: job.conv_id.clone(),
        seq: m.seq,
        sender,
        count,
        collapse_key: collapse_key(&job.conv_id),
        mention: job.mentioned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collapse_keys_fit_apns() {
        assert_eq!(collapse_key("d_0123"), "d_0123");
        let long = format!("g_{}", "é".repeat(40));
        let k = collapse_key(&long);
        assert!(k.len() <= 64, "{k}");
        assert_eq!(k, collapse_key(&long));
        assert_ne!(k, collapse_key(&format!("g_{}x", "é".repeat(40))));
    }
}
