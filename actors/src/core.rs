//! What every actor and operation shares: the store, the local bus, metrics, limits, hooks and
//! the cluster transport ([`Core`]), and the chat rules' limits ([`Limits`]).

use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;

use crate::cluster::{PeerCommand, PeerDelivery};
use crate::metrics::Metrics;
use crate::registry::{Registry, Revocation};
use crate::store::Store;

/// Limits and timings of the chat rules (from `[chat]` and `[groups]` in the configuration).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_text_chars: usize,
    pub recall_window: Duration,
    pub max_group_members: usize,
    /// Members served per fan-out step before the actor yields (500 by design).
    pub fanout_chunk: usize,
    /// An idle conversation actor stops after this long.
    pub idle_timeout: Duration,
    /// Mailbox capacity of a conversation actor; senders wait when it is full.
    pub conversation_mailbox: usize,
    /// Rate limits (`[limits]`).
    pub rates: crate::limits::RateConfig,
    /// Who may message whom one-to-one (`chat.who_may_message`).
    pub who_may_message: crate::rules::WhoMayMessage,
    /// Accounts exempt from `who_may_message` and from blocks (`chat.staff` and the HTTP API's
    /// system user).
    pub staff: Arc<std::collections::HashSet<String>>,
}

impl Limits {
    pub fn is_staff(&self, user: &str) -> bool {
        self.staff.contains(user)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_text_chars: 5000,
            recall_window: Duration::from_secs(120),
            max_group_members: 10_000,
            fanout_chunk: 500,
            idle_timeout: Duration::from_secs(300),
            conversation_mailbox: 1024,
            rates: crate::limits::RateConfig::default(),
            who_may_message: crate::rules::WhoMayMessage::Open,
            staff: Arc::default(),
        }
    }
}

/// What every actor shares: the store, the local bus, metrics, limits, hooks and the cluster.
pub struct Core {
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Webhook hooks (outbox for presence events, `before_send`), set once at start-up.
    pub hooks: std::sync::OnceLock<crate::outbox::Hooks>,
    /// The cluster transport, set once at start-up when the node runs in a cluster.
    pub cluster: std::sync::OnceLock<Arc<dyn crate::cluster::Cluster>>,
    /// Presence events on their way to the outbox, written one at a time in order.
    pub(crate) presence: std::sync::Mutex<PresenceQueue>,
    /// Users recorded active today (see [`Engine::note_active`](crate::engine::Engine::note_active)).
    pub(crate) activity: std::sync::Mutex<Activity>,
    /// Rate limits per user, for requests over WebSocket (see [`crate::limits`]).
    pub user_limits: crate::limits::UserLimits,
    /// The push providers this node sends through (`fcm`, `apns`, relay names), set once at
    /// start-up when push is configured: registrations must name one of them.
    pub push_providers: std::sync::OnceLock<Vec<String>>,
    /// The node's tracing span (`node{node=<cluster.node_id>}`), set once at start-up: the
    /// parent of every session, request and conversation span, so each log line names its node.
    node_span: std::sync::OnceLock<tracing::Span>,
}

/// Users this node recorded active today, and those on their way to the store (see
/// [`Engine::note_active`](crate::engine::Engine::note_active)).
#[derive(Default)]
pub(crate) struct Activity {
    pub(crate) day: u32,
    /// Recorded (or queued) today: a user is written once a day per node, however often they
    /// connect.
    pub(crate) seen: std::collections::HashSet<Arc<str>>,
    pub(crate) queue: Vec<(u32, Arc<str>)>,
    /// A task is writing the queue.
    pub(crate) draining: bool,
}

/// See [`Engine::presence`](crate::engine::Engine::presence).
#[derive(Default)]
pub(crate) struct PresenceQueue {
    pub(crate) events: std::collections::VecDeque<crate::outbox::NewEvent>,
    /// A task is writing the queue's events.
    pub(crate) draining: bool,
}

/// Most presence events waiting for the outbox; beyond, new ones are dropped (and logged).
pub(crate) const PRESENCE_QUEUE: usize = 65_536;

impl Core {
    pub fn new(store: Arc<dyn Store>, registry: Arc<Registry>, metrics: Arc<Metrics>, limits: Limits) -> Core {
        Core {
            store,
            registry,
            metrics,
            hooks: Default::default(),
            cluster: Default::default(),
            presence: Default::default(),
            activity: Default::default(),
            user_limits: crate::limits::UserLimits::new(&limits.rates),
            limits,
            push_providers: Default::default(),
            node_span: Default::default(),
        }
    }

    /// Names this node in every span below it (call once, after the subscriber is installed:
    /// a span made before that stays disabled).
    pub fn set_node(&self, node_id: &str) {
        let _ = self.node_span.set(tracing::info_span!("node", node = %node_id));
    }

    /// The node's span (disabled before [`Self::set_node`]), the parent of the spans of
    /// sessions, requests and conversations.
    pub fn span(&self) -> tracing::Span {
        self.node_span.get().cloned().unwrap_or_else(tracing::Span::none)
    }

    /// The cluster transport, if this node is part of a cluster.
    pub fn cluster(&self) -> Option<&Arc<dyn crate::cluster::Cluster>> {
        self.cluster.get()
    }

    /// Queues a frame (not a message event: no order) on every session of `user`, except
    /// connection `except_conn` of this node, here and, in a cluster, on the other nodes.
    pub fn notify_user(&self, user: &Arc<str>, frame: &ByteString, except_conn: Option<u64>) {
        self.registry.send_to_user(user, frame, except_conn);
        if let Some(cluster) = self.cluster() {
            cluster.deliver(PeerDelivery {
                ordered: None,
                users: vec![user.clone()],
                frames: vec![frame.clone()],
                membership_changed: false,
            });
        }
    }

    /// Closes the sessions of `user` that lost access, on every node (disabled, or tokens
    /// revoked). Other nodes are told through the cluster; a node cut off from it re-checks its
    /// sessions' access when it is back (see [`Engine::recheck_access`]).
    pub fn close_user(&self, user: &str, r: Revocation) {
        self.registry.revoke(user, &r);
        if let Some(cluster) = self.cluster() {
            cluster.broadcast(PeerCommand::CloseUser { user: user.to_owned(), revocation: r });
        }
    }
}
