//! Webhooks for operators: the delivery log and replays (scope `webhooks`, docs/webhooks.md).

use std::sync::Arc;

use actix_web::web;
use serde::{Deserialize, Serialize};

use confab_actors::error::{Error, ErrorCode};
use confab_actors::outbox::{Delivery, DeliveryQuery, DeliveryState, Outbox, OutboxEvent, Replay};

use super::schema::{operation_errors, Id, SafeInt};
use super::{de_safe_int_opt, ok, path, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Webhooks:
    "/webhooks/deliveries" => get deliveries;
    "/webhooks/events/{id}" => get event;
    "/webhooks/replay" => post replay;
}

operation_errors! {
    DeliveriesErrors: InvalidRequest("a bad parameter value, an unknown parameter"), Unavailable;
    EventErrors: InvalidRequest("a bad event id"), NotFound, Unavailable;
    ReplayErrors: InvalidRequest("a bad id range"), Unavailable;
}

fn outbox(state: &AppState) -> Result<Arc<dyn Outbox>, Error> {
    state.api.outbox.get().cloned().ok_or_else(|| Error::new(ErrorCode::Unavailable, "the outbox is not ready"))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// Only this endpoint (its configured `name`).
    #[serde(default)]
    #[param(value_type = Option<Id>)]
    endpoint: Option<String>,
    /// `pending`, `delivered` or `failed`.
    #[serde(default)]
    state: Option<DeliveryState>,
    /// Only events with a greater id (paging).
    #[serde(default, deserialize_with = "de_safe_int_opt")]
    #[param(value_type = Option<SafeInt>)]
    after_id: Option<u64>,
    /// 1 to 100 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeliveriesRes {
    /// By event id, then endpoint.
    deliveries: Vec<Delivery>,
}

/// The delivery log: deliveries with their state and attempts.
#[utoipa::path(get, path = "/webhooks/deliveries",
    params(DeliveriesQuery),
    responses((status = 200, description = "The deliveries", body = DeliveriesRes), DeliveriesErrors))]
async fn deliveries(s: Signed<scope::Webhooks, DeliveriesQuery>, state: web::Data<AppState>) -> ApiResult {
    let q = s.query;
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(Error::invalid("limit must be 1 to 100").into());
    }
    let dq = DeliveryQuery { endpoint: q.endpoint, state: q.state, after_id: q.after_id.unwrap_or(0), limit };
    let deliveries = outbox(&state)?.deliveries(&dq).await.map_err(Error::from)?;
    ok(&DeliveriesRes { deliveries })
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct EventRes {
    event: OutboxEvent,
    /// One per endpoint the event was queued for.
    deliveries: Vec<Delivery>,
}

/// One event and its deliveries.
#[utoipa::path(get, path = "/webhooks/events/{id}",
    params(path::Event),
    responses((status = 200, description = "The event and its deliveries", body = EventRes), EventErrors))]
async fn event(s: Signed<scope::Webhooks>, state: web::Data<AppState>) -> ApiResult {
    let path::Event { id } = s.path()?;
    let outbox = outbox(&state)?;
    let event = outbox.event(id).await.map_err(Error::from)?.ok_or_else(|| Error::not_found("no such event"))?;
    let deliveries = outbox.event_deliveries(id).await.map_err(Error::from)?;
    ok(&EventRes { event, deliveries })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayReq {
    /// Only this endpoint; default all.
    #[serde(default)]
    #[schema(value_type = Option<Id>)]
    endpoint: Option<String>,
    /// First event id (inclusive); default 1.
    #[serde(default, deserialize_with = "de_safe_int_opt")]
    #[schema(value_type = Option<SafeInt>)]
    from_id: Option<u64>,
    /// Last event id (inclusive); default the last one.
    #[serde(default, deserialize_with = "de_safe_int_opt")]
    #[schema(value_type = Option<SafeInt>)]
    to_id: Option<u64>,
    /// Only deliveries in state `failed` (default false: delivered ones are sent again too).
    #[serde(default)]
    only_failed: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReplayRes {
    /// Deliveries put back to `pending`.
    requeued: u64,
}

/// Queues deliveries again (by id range, or the failed ones); receivers de-duplicate by event id.
#[utoipa::path(post, path = "/webhooks/replay",
    request_body = ReplayReq,
    responses((status = 200, description = "How many deliveries were queued again", body = ReplayRes), ReplayErrors))]
async fn replay(s: Signed<scope::Webhooks>, state: web::Data<AppState>) -> ApiResult {
    let r: ReplayReq = s.json()?;
    let (from_id, to_id) = (r.from_id.unwrap_or(1), r.to_id.unwrap_or(u64::MAX));
    if from_id > to_id {
        return Err(Error::invalid("from_id must not be greater than to_id").into());
    }
    let replay = Replay { endpoint: r.endpoint, from_id, to_id, only_failed: r.only_failed };
    let requeued = outbox(&state)?.replay(&replay).await.map_err(Error::from)?;
    ok(&ReplayRes { requeued })
}
