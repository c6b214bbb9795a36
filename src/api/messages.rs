//! Messages: send (as a user or as the system), and recall any message.

use actix_web::{web, HttpRequest};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use confab_actors::error::Error;
use confab_actors::model::{self, ConvKind, Message};
use confab_actors::proto::{SendReq, SeqReq};

use super::{caller, ok, path_raw, resource, ApiResult, ErrorBody, Scope, Signed};
use crate::http::AppState;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/messages").route(web::post().to(send)))
        .service(resource("/conversations/{conv_id}/messages/{seq}/recall").route(web::post().to(recall)));
}

/// `from` must be given: a user id, or `null` for the system (a missing field is an error, so a
/// forgotten sender never turns into a system message).
fn required_nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// The sending user, or null for the system (required).
    #[serde(deserialize_with = "required_nullable")]
    #[schema(required = true)]
    from: Option<String>,
    /// A user id: the one-to-one conversation with that user. Exactly one of `to` and `conv_id`.
    #[serde(default)]
    to: Option<String>,
    /// An existing conversation.
    #[serde(default)]
    conv_id: Option<String>,
    /// The sender's idempotency key.
    client_msg_id: String,
    /// A message body (see the WebSocket protocol); `{"type":"system","event","data"}` for a
    /// system message to a group.
    #[schema(value_type = Object)]
    body: Value,
    /// The seq of a message in the same conversation this one replies to.
    #[serde(default)]
    reply_to: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SendRes {
    conv_id: String,
    seq: u64,
    message: Message,
}

/// The WebSocket `send` request for the same fields, so the body is checked by the same rules.
fn send_req(r: &SendBody) -> Result<SendReq, Error> {
    let mut v = json!({ "client_msg_id": r.client_msg_id, "body": r.body });
    if let Some(to) = &r.to {
        v["to"] = json!(to);
    }
    if let Some(c) = &r.conv_id {
        v["conv_id"] = json!(c);
    }
    if let Some(s) = r.reply_to {
        v["reply_to"] = json!(s);
    }
    serde_json::from_value(v).map_err(|e| Error::invalid(format!("invalid message: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SystemBody {
    #[serde(rename = "type")]
    _type: String,
    event: String,
    #[serde(default)]
    data: Value,
}

/// Sends a message as a user or as the system; idempotent by `(from, client_msg_id)`.
#[utoipa::path(post, path = "/api/v1/messages", tag = "messages",
    request_body = SendBody,
    responses(
        (status = 200, body = SendRes),
        (status = 400, description = "invalid_request, invalid_body", body = ErrorBody),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing, not_member", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody),
        (status = 413, description = "body_too_large", body = ErrorBody)
    ),
    security(("confab_signature" = ["messages"])))]
async fn send(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    let signed = Signed::read(&req, payload, &state, Scope::Messages).await?;
    let r: SendBody = signed.json()?;
    let message = match (&r.from, &r.conv_id) {
        (Some(from), _) => {
            // A disabled user cannot send, over HTTP either.
            state.engine.check_access(from, None).await?;
            state.engine.send(&caller(from)?, send_req(&r)?, None).await?
        }
        // The system to a group: a `system` message (sender null) through the group's actor.
        (None, Some(conv_id)) => {
            if r.to.is_some() {
                return Err(Error::invalid("exactly one of conv_id and to is required").into());
            }
            if model::conv_kind(conv_id)? != ConvKind::Group {
                return Err(Error::invalid("a system message goes to a group (conv_id) or to a user (to)").into());
            }
            model::validate_id("client_msg_id", &r.client_msg_id)?;
            if r.reply_to.is_some() {
                return Err(Error::invalid("system messages cannot reply").into());
            }
            let b = serde_json::from_value::<SystemBody>(r.body.clone())
                .ok()
                .filter(|b| b._type == "system")
                .ok_or_else(|| {
                    Error::body("a system message to a group has the body {\"type\":\"system\",\"event\":…,\"data\":…}")
                })?;
            model::validate_id("body.event", &b.event).map_err(|e| Error::body(e.message))?;
            state.engine.send_system_keyed(conv_id, &b.event, b.data, Some(r.client_msg_id.clone())).await?
        }
        // The system to one user: the one-to-one conversation of the system account and the user,
        // without `before_send` (the backend wrote it; docs/webhooks.md).
        (None, None) => state.engine.send_system_to_user(&caller(&state.api.system_user)?, send_req(&r)?).await?,
    };
    ok(&SendRes { conv_id: message.conv_id.clone(), seq: message.seq, message })
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecallBody {
    /// Recall as this user, with the WebSocket rules (sender within the window, or a group's owner
    /// or admin). Absent: an administrative recall of any message, recorded as by the system account.
    #[serde(default)]
    by: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageRes {
    message: Message,
}

/// Recalls a message: as a user with the WebSocket rules (`by`), or administratively.
#[utoipa::path(post, path = "/api/v1/conversations/{conv_id}/messages/{seq}/recall", tag = "messages",
    params(
        ("conv_id" = String, Path, description = "`d_…` or `g_<group id>`"),
        ("seq" = u64, Path, description = "The message's seq"),
    ),
    request_body(content = Option<RecallBody>, description = "Optional; an empty body is an administrative recall"),
    responses(
        (status = 200, body = MessageRes),
        (status = 400, description = "invalid_request", body = ErrorBody),
        (status = 401, description = "unauthorized, timestamp_out_of_range, signature_invalid, nonce_replayed", body = ErrorBody),
        (status = 403, description = "scope_missing", body = ErrorBody),
        (status = 404, description = "not_found", body = ErrorBody)
    ),
    security(("confab_signature" = ["messages"])))]
async fn recall(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    let signed = Signed::read(&req, payload, &state, Scope::Messages).await?;
    let conv_id = path_raw(&req, "conv_id");
    let seq: u64 = path_raw(&req, "seq").parse().map_err(|_| Error::invalid("seq must be a positive integer"))?;
    let r: RecallBody = if signed.body.is_empty() { RecallBody::default() } else { signed.json()? };
    let message = match r.by {
        Some(by) => state.engine.recall(&caller(&by)?, SeqReq { conv_id, seq }).await?,
        None => state.engine.recall_admin(&state.api.system_user, &conv_id, seq).await?,
    };
    ok(&MessageRes { message })
}
