//! Webhooks, the contract side: the durable outbox of events (written by the store in the same
//! transaction as the change it reports), its delivery bookkeeping, and the synchronous
//! `before_send` check. The HTTP side (dispatcher, signing, the `before_send` client) lives in the
//! `confab` crate (`src/webhooks/`); storage adapters implement [`Outbox`].
//!
//! Event kinds: `message.sent`, `message.recalled`, `group.created`, `group.members_changed`,
//! `group.updated`, `group.roles_changed`, `group.dismissed`, `group.muted`,
//! `group.join_request`, `user.online`, `user.offline`, `contact.changed`. Every event has a store-wide increasing `id` (the
//! de-duplication key receivers use) and an ordering key: its conversation, or `user:<id>` for
//! presence and contact events (the acting user).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{Body, Group, Message};
use crate::store::StoreResult;

pub const MESSAGE_SENT: &str = "message.sent";
pub const MESSAGE_RECALLED: &str = "message.recalled";
pub const GROUP_CREATED: &str = "group.created";
pub const GROUP_MEMBERS_CHANGED: &str = "group.members_changed";
pub const GROUP_UPDATED: &str = "group.updated";
pub const GROUP_ROLES_CHANGED: &str = "group.roles_changed";
pub const GROUP_DISMISSED: &str = "group.dismissed";
pub const GROUP_MUTED: &str = "group.muted";
pub const GROUP_JOIN_REQUEST: &str = "group.join_request";
pub const USER_ONLINE: &str = "user.online";
pub const USER_OFFLINE: &str = "user.offline";
pub const CONTACT_CHANGED: &str = "contact.changed";

/// Every event kind, as configured in `webhooks.endpoints[].events`.
pub const EVENT_KINDS: &[&str] = &[
    MESSAGE_SENT,
    MESSAGE_RECALLED,
    GROUP_CREATED,
    GROUP_MEMBERS_CHANGED,
    GROUP_UPDATED,
    GROUP_ROLES_CHANGED,
    GROUP_DISMISSED,
    GROUP_MUTED,
    GROUP_JOIN_REQUEST,
    USER_ONLINE,
    USER_OFFLINE,
    CONTACT_CHANGED,
];

/// One event of the outbox.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OutboxEvent {
    /// Store-wide, strictly increasing in commit order; the de-duplication key.
    pub id: u64,
    /// The event kind, e.g. `message.sent`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The conversation the event belongs to (absent for presence events).
    pub conv_id: Option<String>,
    /// The message's `seq`, for message and group events.
    pub seq: Option<u64>,
    /// Server time of the change, ms since the Unix epoch.
    pub ts: i64,
    /// The event's data: `{"message": …}`, `{"group": …, "message": …}`, `{"user": …}`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: serde_json::Value,
}

impl OutboxEvent {
    /// Events with the same key are delivered to an endpoint in `id` order.
    pub fn order_key(&self) -> String {
        match &self.conv_id {
            Some(c) => c.clone(),
            None => format!("user:{}", self.data.get("user").and_then(|u| u.as_str()).unwrap_or("")),
        }
    }
}

/// An event before the store gave it an id.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: &'static str,
    pub conv_id: Option<String>,
    pub seq: Option<u64>,
    pub ts: i64,
    pub data: serde_json::Value,
}

/// A change a store wrote, as both stores name it for its webhook event: the one place that
/// decides which change emits which event (a re-send or a recall that changed nothing emits none).
pub enum Change<'a> {
    Appended(&'a crate::store::Appended),
    Recalled(&'a crate::store::Recalled),
    GroupCreated(&'a Group, &'a Message),
    MembersChanged {
        group_id: &'a str,
        message: &'a Message,
    },
    /// A profile update, role change or dismissal: `kind` is its event type.
    Group {
        kind: &'static str,
        group: &'a Group,
        message: &'a Message,
    },
    /// Join requests were made (`requested`) or one was rejected (`rejected`); an approval is a
    /// membership change.
    JoinRequests {
        group_id: &'a str,
        change: &'static str,
        requests: &'a [crate::model::JoinRequest],
        ts: i64,
    },
    /// A contact change (friend request and its answers, friendship, remark, block).
    Contact(&'a crate::store::ContactChange, &'a crate::store::ContactPlan),
}

impl Change<'_> {
    /// The change's webhook event, if it emits one.
    pub fn event(&self) -> Option<NewEvent> {
        Some(match self {
            Change::Appended(a) if a.duplicate => return None,
            Change::Appended(a) => NewEvent::sent(&a.message),
            Change::Recalled(r) if !r.changed => return None,
            Change::Recalled(r) => NewEvent::recalled(&r.message, crate::clock::now_ms()),
            Change::GroupCreated(g, m) => NewEvent::group_created(g, m),
            Change::MembersChanged { group_id, message } => NewEvent::members_changed(group_id, message),
            Change::Group { kind, group, message } => NewEvent::group(kind, group, message),
            Change::JoinRequests { requests: [], .. } => return None,
            Change::JoinRequests { group_id, change, requests, ts } => NewEvent {
                kind: GROUP_JOIN_REQUEST,
                conv_id: Some(crate::model::group_conv_id(group_id)),
                seq: None,
                ts: *ts,
                data: serde_json::json!({ "group_id": group_id, "change": change, "requests": requests }),
            },
            Change::Contact(_, plan) if !plan.changed => return None,
            Change::Contact(c, plan) => NewEvent::contact(c, plan),
        })
    }
}

impl NewEvent {
    pub fn with_id(self, id: u64) -> OutboxEvent {
        OutboxEvent {
            id,
            kind: self.kind.to_owned(),
            conv_id: self.conv_id,
            seq: self.seq,
            ts: self.ts,
            data: self.data,
        }
    }

    fn message(kind: &'static str, m: &Message) -> NewEvent {
        NewEvent {
            kind,
            conv_id: Some(m.conv_id.clone()),
            seq: Some(m.seq),
            ts: m.ts,
            data: serde_json::json!({ "message": m }),
        }
    }

    /// A new message was stored.
    pub fn sent(m: &Message) -> NewEvent {
        Self::message(MESSAGE_SENT, m)
    }

    /// A message was recalled (its body is now `recalled`).
    pub fn recalled(m: &Message, ts: i64) -> NewEvent {
        let mut e = Self::message(MESSAGE_RECALLED, m);
        e.ts = ts;
        e
    }

    /// A group was created, with its first (system) message.
    pub fn group_created(g: &Group, m: &Message) -> NewEvent {
        Self::group(GROUP_CREATED, g, m)
    }

    /// A group change that returns the group and its system message: `group.created`,
    /// `group.updated`, `group.roles_changed`, `group.dismissed`.
    pub fn group(kind: &'static str, g: &Group, m: &Message) -> NewEvent {
        NewEvent {
            kind,
            conv_id: Some(m.conv_id.clone()),
            seq: Some(m.seq),
            ts: m.ts,
            data: serde_json::json!({ "group": g, "message": m }),
        }
    }

    /// A group's membership changed; the system message says how.
    pub fn members_changed(group_id: &str, m: &Message) -> NewEvent {
        NewEvent {
            kind: GROUP_MEMBERS_CHANGED,
            conv_id: Some(m.conv_id.clone()),
            seq: Some(m.seq),
            ts: m.ts,
            data: serde_json::json!({ "group_id": group_id, "message": m }),
        }
    }

    /// A contact change: `change` names it (`friend_request`, `friend_accept`, …), `user` made
    /// it about `peer`, `contacts` are the rows it wrote (the user's first).
    pub fn contact(c: &crate::store::ContactChange, plan: &crate::store::ContactPlan) -> NewEvent {
        let mut rows = vec![&plan.user];
        rows.extend(plan.peer.as_ref());
        NewEvent {
            kind: CONTACT_CHANGED,
            conv_id: None,
            seq: None,
            ts: c.ts,
            data: serde_json::json!({ "change": c.op.kind(), "user": c.user, "peer": c.peer, "contacts": rows }),
        }
    }

    /// The user came online (its first device connected) or went offline (its last one left).
    pub fn presence(user: &str, online: bool, ts: i64) -> NewEvent {
        NewEvent {
            kind: if online { USER_ONLINE } else { USER_OFFLINE },
            conv_id: None,
            seq: None,
            ts,
            data: serde_json::json!({ "user": user }),
        }
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet; retried with back-off.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt (`webhooks.max_attempts`) failed; replay it to try again.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

/// One POST of an event to an endpoint.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    /// When it started, ms since the Unix epoch.
    pub at: i64,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    /// Why it failed (timeout, connection refused, non-2xx).
    pub error: Option<String>,
    /// How long it took, ms.
    pub ms: u64,
}

/// Most attempts kept in a delivery's log (the newest).
pub const MAX_LOGGED_ATTEMPTS: usize = 20;

/// The delivery of one event to one endpoint: its state and attempt log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    pub endpoint: String,
    pub event_id: u64,
    pub state: DeliveryState,
    /// Attempts since the delivery was (re)queued.
    pub attempts: u32,
    /// Earliest time of the next attempt, ms since the Unix epoch (pending only).
    pub next_at: i64,
    /// The newest attempts, oldest first (at most 20).
    pub log: Vec<Attempt>,
}

impl Delivery {
    pub fn new(endpoint: &str, event_id: u64) -> Delivery {
        Delivery {
            endpoint: endpoint.to_owned(),
            event_id,
            state: DeliveryState::Pending,
            attempts: 0,
            next_at: 0,
            log: Vec::new(),
        }
    }

    /// Adds an attempt and its outcome.
    pub fn record(&mut self, attempt: Attempt, state: DeliveryState, next_at: i64) {
        self.attempts += 1;
        self.state = state;
        self.next_at = next_at;
        self.log.push(attempt);
        if self.log.len() > MAX_LOGGED_ATTEMPTS {
            let extra = self.log.len() - MAX_LOGGED_ATTEMPTS;
            self.log.drain(..extra);
        }
    }

    /// Back to pending, to be sent again as soon as possible (keeps the log).
    pub fn requeue(&mut self) {
        self.state = DeliveryState::Pending;
        self.attempts = 0;
        self.next_at = 0;
    }
}

/// Which deliveries to list.
#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    pub endpoint: Option<String>,
    pub state: Option<DeliveryState>,
    /// Only events with a greater id.
    pub after_id: u64,
    pub limit: usize,
}

/// What to queue again.
#[derive(Debug, Clone)]
pub struct Replay {
    /// One endpoint, or all.
    pub endpoint: Option<String>,
    /// Inclusive id range.
    pub from_id: u64,
    pub to_id: u64,
    /// Only deliveries in state `failed`.
    pub only_failed: bool,
}

/// One bounded step of the retention (`webhooks.retention_hours`): which events may go.
///
/// An event is removed, together with every delivery it has, when all of these hold:
/// - its `ts` is older than `before_ts`;
/// - every endpoint of `endpoints` has its cursor at or past it (the event was queued for it, or
///   passed over by its filter); with no endpoints, no cursor holds events back;
/// - every delivery it has, to any endpoint (configured or not), is `delivered` or `failed`, and
///   the newest attempt of each is older than `before_ts` too.
///
/// An event still pending for some endpoint is never removed, whatever its age, and a delivery
/// goes only with its event (the delivery log never shows half an event). Events are examined in
/// id order from `after`, at most `limit` of them, stopping at the first one that is not older
/// than `before_ts` or not yet passed by every cursor: an event whose `ts` is older than an
/// earlier one's (clocks of several nodes) simply waits for a later pass.
#[derive(Debug, Clone)]
pub struct Trim {
    pub before_ts: i64,
    pub endpoints: Vec<String>,
    /// Examine events with a greater id (0 to start a pass).
    pub after: u64,
    pub limit: usize,
}

impl Trim {
    /// Whether a delivery lets its event go: `delivered` or `failed`, with no attempt as recent
    /// as `before_ts`.
    pub fn done_with(&self, d: &Delivery) -> bool {
        d.state != DeliveryState::Pending && d.log.iter().all(|a| a.at < self.before_ts)
    }
}

/// What one [`Outbox::trim`] call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Events examined, at most the limit: fewer means the pass has reached its end.
    pub examined: usize,
    /// The id of the last event examined (0 when none): the next call starts after it.
    pub last_id: u64,
    /// Events removed.
    pub events: u64,
    /// Deliveries removed (with their events).
    pub deliveries: u64,
}

/// The outbox and its delivery bookkeeping. Implemented by every storage adapter. Change events
/// are written by the store itself, in the transaction of the change, once [`Outbox::enable`] was
/// called; nothing is written while it is off.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// From now on, every append, recall, group creation and membership change also writes its
    /// event, in the same transaction.
    fn enable(&self);

    /// Appends an event that has no store change of its own (presence). Returns its id.
    async fn push_event(&self, event: NewEvent) -> StoreResult<u64>;

    /// Events with an id greater than `after`, ascending, at most `limit`. Ids may have holes
    /// (the retention, and versions a store skipped), but no event with an id below one returned
    /// ever appears later: a reader may move its cursor past every id it got.
    async fn events_after(&self, after: u64, limit: usize) -> StoreResult<Vec<OutboxEvent>>;

    async fn event(&self, id: u64) -> StoreResult<Option<OutboxEvent>>;

    /// Takes or renews the lease `name` for `owner` until `now_ms + ttl_ms`. True when `owner`
    /// holds it (it was free, expired, or already `owner`'s).
    async fn lease(&self, name: &str, owner: &str, now_ms: i64, ttl_ms: i64) -> StoreResult<bool>;

    /// The id of the last event the endpoint's deliveries were created for (0 at first).
    async fn cursor(&self, endpoint: &str) -> StoreResult<u64>;

    /// Creates a pending delivery to `endpoint` for each of `event_ids` that has none, and moves
    /// the endpoint's cursor to `cursor` (never backwards).
    async fn enqueue(&self, endpoint: &str, event_ids: &[u64], cursor: u64) -> StoreResult<()>;

    /// The endpoint's pending deliveries with their events, by event id, at most `limit`.
    async fn pending(&self, endpoint: &str, limit: usize) -> StoreResult<Vec<(Delivery, OutboxEvent)>>;

    /// Stores a delivery after an attempt.
    async fn save_delivery(&self, d: &Delivery) -> StoreResult<()>;

    /// Deliveries by event id.
    async fn deliveries(&self, q: &DeliveryQuery) -> StoreResult<Vec<Delivery>>;

    /// Every delivery of one event.
    async fn event_deliveries(&self, event_id: u64) -> StoreResult<Vec<Delivery>>;

    /// Puts matching deliveries back to pending; returns how many.
    async fn replay(&self, r: &Replay) -> StoreResult<u64>;

    /// Removes old events that every endpoint is done with, and their deliveries (the rule is
    /// on [`Trim`]). Bounded: call again after `last_id` while `examined` equals the limit.
    async fn trim(&self, t: &Trim) -> StoreResult<Trimmed>;
}

/// What `before_send` is asked about.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct SendCheck {
    pub conv_id: String,
    pub sender: String,
    pub device: String,
    pub client_msg_id: String,
    pub body: Body,
    pub reply_to: Option<u64>,
}

/// The answer of `before_send`.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Accept,
    /// Refused, with a reason for the sender (`message_rejected`).
    Reject(String),
    /// Store this body instead (validated again like a client's).
    Rewrite(Body),
}

/// The synchronous check of every client message before it is stored. Failures (timeouts,
/// errors) are resolved by the implementation (fail-open or fail-closed).
#[async_trait]
pub trait BeforeSend: Send + Sync + 'static {
    async fn check(&self, c: &SendCheck) -> Result<Verdict>;
}

/// What `before_group_create` and `before_member_join` are asked about (the JSON names the hook).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "hook", rename_all = "snake_case")]
pub enum GateCheck {
    /// A client creates a group with these members (the owner not among them).
    BeforeGroupCreate { group_id: String, name: String, owner: String, members: Vec<String> },
    /// `by` adds or invites `users` (`how`: `add`, `invite`), admits one (`approve`), or joins
    /// (`join`, `users` is `[by]`).
    BeforeMemberJoin { group_id: String, users: Vec<String>, how: &'static str, by: String },
}

/// A synchronous yes/no check of a client's request (`before_group_create`,
/// `before_member_join`). `Ok(Some(reason))` refuses it (`request_rejected`); failures are
/// resolved by the implementation (fail-open or fail-closed).
#[async_trait]
pub trait Gate: Send + Sync + 'static {
    async fn check(&self, c: &GateCheck) -> Result<Option<String>>;
}

/// The webhook hooks the [`Engine`](crate::engine::Engine) calls, set once at start-up.
#[derive(Clone, Default)]
pub struct Hooks {
    /// Set when webhooks are configured: presence events are pushed here.
    pub outbox: Option<std::sync::Arc<dyn Outbox>>,
    /// Set when `webhooks.before_send` is configured.
    pub before_send: Option<std::sync::Arc<dyn BeforeSend>>,
    /// Set when `webhooks.before_group_create` is configured.
    pub before_group_create: Option<std::sync::Arc<dyn Gate>>,
    /// Set when `webhooks.before_member_join` is configured.
    pub before_member_join: Option<std::sync::Arc<dyn Gate>>,
}
