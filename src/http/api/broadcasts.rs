//! Broadcasts (scope `messages`): one message to every user of a segment, sent in the background
//! at a paced rate, with its progress readable and a cancel.

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::engine::NewBroadcast;
use confab_actors::model::{Body, Broadcast, Segment};

use super::schema::{operation_errors, Id};
use super::{ok, path, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Messages:
    "/broadcasts" => post create;
    "/broadcasts/{id}" => get get;
    "/broadcasts/{id}/cancel" => post cancel;
}

operation_errors! {
    CreateErrors: InvalidRequest("a bad id, from, segment or rate"), InvalidBody, UserDisabled("from"),
        Conflict("a different broadcast has this id"), Unavailable;
    GetErrors: InvalidRequest("a bad id"), NotFound, Unavailable;
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// The broadcast's id, chosen by the caller (1 to 40 id characters): creating it again is
    /// idempotent.
    #[schema(value_type = Id)]
    id: String,
    /// The sender, with every rule of their sends (blocks, `chat.who_may_message`); absent or null:
    /// the system account (`api.system_user`).
    #[serde(default)]
    #[schema(value_type = Option<Id>)]
    from: Option<String>,
    /// The message body, as a client's.
    #[schema(value_type = Object)]
    body: serde_json::Value,
    segment: Segment,
    /// Messages per second, 1 to `api.broadcast_max_rate` (default: that).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    rate: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BroadcastRes {
    broadcast: Broadcast,
}

/// Starts a broadcast: every user of the segment gets the message in their one-to-one
/// conversation with the sender, in the background, at the broadcast's rate (one node of a
/// cluster sends at a time; a restart or another node resumes where it was, storing nothing
/// twice). Answers at once with the broadcast (`state: running`).
#[utoipa::path(post, path = "/broadcasts",
    request_body = CreateBody,
    responses((status = 200, description = "The broadcast", body = BroadcastRes), CreateErrors))]
async fn create(s: Signed<scope::Messages>, state: web::Data<AppState>) -> ApiResult {
    let r: CreateBody = s.json()?;
    let body: Body =
        serde_json::from_value(r.body).map_err(|e| confab_actors::error::Error::body(format!("invalid body: {e}")))?;
    let max = state.api.broadcast_max_rate;
    let new = NewBroadcast { id: r.id, from: r.from, body, segment: r.segment, rate: r.rate.unwrap_or(max) };
    ok(&BroadcastRes { broadcast: state.engine.broadcast_create(new, max).await? })
}

/// A broadcast and its progress: `state` (`running`, `done`, `cancelled`), `cursor` (the last
/// recipient handled, by id), `sent`, `failed` and the first `errors`.
#[utoipa::path(get, path = "/broadcasts/{id}",
    params(path::Broadcast),
    responses((status = 200, description = "The broadcast", body = BroadcastRes), GetErrors))]
async fn get(s: Signed<scope::Messages>, state: web::Data<AppState>) -> ApiResult {
    let path::Broadcast { id } = s.path()?;
    ok(&BroadcastRes { broadcast: state.engine.broadcast_get(&id).await? })
}

/// Cancels a running broadcast: no message is sent after its current step (within a tenth of a
/// second of the sender seeing it). A finished broadcast is answered as it is.
#[utoipa::path(post, path = "/broadcasts/{id}/cancel",
    params(path::Broadcast),
    responses((status = 200, description = "The broadcast", body = BroadcastRes), GetErrors))]
async fn cancel(s: Signed<scope::Messages>, state: web::Data<AppState>) -> ApiResult {
    let path::Broadcast { id } = s.path()?;
    ok(&BroadcastRes { broadcast: state.engine.broadcast_cancel(&id).await? })
}
