//! Offline push, the node's side: the pusher (plans notifications from the outbox's
//! `message.sent` events, sends the due ones) and the providers it sends through (FCM HTTP v1,
//! APNs, a signed relay). The decisions and the durable queue's contract live in
//! `confab_actors::push`; the queue itself in the store adapters.

use std::sync::Arc;

use confab_actors::engine::Engine;
use confab_actors::outbox::Outbox;

use crate::config::Config;

pub mod metrics;
pub mod providers;
pub mod pusher;

/// One notification, as the pusher built it for one device.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Notification {
    /// The user it is for.
    pub user: String,
    /// The device it is for.
    pub device: String,
    /// Shown as the notification's title: the sender's nickname (one-to-one) or the group's name.
    pub title: String,
    /// Shown as its text: the message's summary (with the sender's nickname in a group), or
    /// "New message" without previews.
    pub body: String,
    /// The sender's avatar URL, when their profile has one.
    pub image: Option<String>,
    /// The user's total unread count (the app icon's badge).
    pub badge: u64,
    /// The conversation and the newest message the notification is about.
    pub conv_id: String,
    pub seq: u64,
    /// Who sent that message.
    pub sender: String,
    /// How many messages it stands for (a burst in one conversation is one notification).
    pub count: u32,
    /// Notifications with the same key replace each other on the device: one per conversation.
    /// At most 64 bytes (APNs' limit).
    pub collapse_key: String,
    /// The message mentions the user (or everyone).
    pub mention: bool,
}

/// Where a notification goes: a device's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `fcm`, `apns`, or a relay provider name (`huawei`, `xiaomi`, ...).
    pub provider: String,
    pub token: String,
}

/// What a provider made of one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (2xx).
    Sent,
    /// The provider says the token is no longer valid (FCM `UNREGISTERED` / `INVALID_ARGUMENT` on
    /// the token, APNs `BadDeviceToken` / `Unregistered` / 410, the relay's 410): the
    /// registration is removed.
    InvalidToken(String),
    /// Worth trying again later (timeout, connection refused, 429, 5xx, an expired
    /// authentication token that was renewed); `after`: the provider's `Retry-After`.
    Retry { reason: &'static str, detail: String, after: Option<std::time::Duration> },
    /// Refused for good (another 4xx, a provider that is not configured): dropped.
    Failed { reason: &'static str, detail: String },
}

impl Outcome {
    /// The metrics label of a failure (`invalid_token`, `timeout`, `connect`, `http_4xx`,
    /// `http_5xx`, `throttled`, `auth`, `unconfigured`).
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Sent => "sent",
            Outcome::InvalidToken(_) => "invalid_token",
            Outcome::Retry { reason, .. } | Outcome::Failed { reason, .. } => reason,
        }
    }
}

/// Sets push up on a node when a provider is configured: registrations may name the configured
/// providers, and the pusher starts (it sends only while this node holds the lease `push`).
/// Returns its metrics. The outbox must be on (`webhooks::install` turns it on for push).
pub fn install(
    cfg: &Config,
    engine: &Engine,
    outbox: Arc<dyn Outbox>,
) -> anyhow::Result<Option<Arc<metrics::PushMetrics>>> {
    if !cfg.push.enabled() {
        return Ok(None);
    }
    let providers = providers::Providers::from_config(&cfg.push)?;
    engine.set_push_providers(providers.names());
    let metrics = Arc::new(metrics::PushMetrics::default());
    let span = tracing::info_span!(parent: &engine.core().span(), "push");
    pusher::spawn(pusher::Settings::from_config(cfg), engine.clone(), outbox, providers, metrics.clone(), span);
    Ok(Some(metrics))
}
