//! Broadcasts: one message to every user of a segment, sent in the background at a paced rate.

use serde::{Deserialize, Serialize};

use super::Body;

/// Most users an explicit segment may list.
pub const MAX_SEGMENT_USERS: usize = 10_000;
/// Longest broadcast id (its per-recipient message keys add 17 characters, within 64).
pub const MAX_BROADCAST_ID: usize = 40;

/// Who a broadcast goes to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Segment {
    /// Every user with a record (created or imported through the HTTP API), by id.
    All,
    /// The users with a record whose id starts with `prefix`.
    Prefix { prefix: String },
    /// These users (1 to 10,000; sent in id order, each once).
    Users { users: Vec<String> },
}

/// Where a broadcast is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum BroadcastState {
    Running,
    Done,
    Cancelled,
}

/// A broadcast and its progress.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Broadcast {
    pub id: String,
    /// The sender; absent: the system account (`api.system_user`).
    pub from: Option<String>,
    pub body: Body,
    pub segment: Segment,
    /// Messages per second at most.
    pub rate: u32,
    pub state: BroadcastState,
    /// The last recipient handled (recipients go in id order); `""` before the first.
    pub cursor: String,
    /// Recipients the message was stored for (a re-run counts a recipient once more only if the
    /// node stopped between storing and recording it; the message itself is never stored twice).
    pub sent: u64,
    /// Recipients refused (blocked the sender, disabled, not allowed by `chat.who_may_message`, …).
    pub failed: u64,
    /// The first few refusals, as `{"user_id", "error"}`.
    #[serde(default)]
    pub errors: Vec<BroadcastError>,
    /// Unix ms.
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// One recipient a broadcast could not reach, and the error code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BroadcastError {
    pub user_id: String,
    pub error: String,
}

/// Most refusals a broadcast keeps (`errors`); `failed` counts them all.
pub const MAX_BROADCAST_ERRORS: usize = 20;

impl Broadcast {
    /// Whether this is the same request as `other` (an idempotent re-create).
    pub fn same_request(&self, other: &Broadcast) -> bool {
        (&self.from, &self.body, &self.segment, self.rate) == (&other.from, &other.body, &other.segment, other.rate)
    }
}
