//! Messages: send (as a user or as the system), recall any message, and read a conversation's
//! history.

use actix_web::web;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use confab_actors::engine::HistoryResult;
use confab_actors::error::Error;
use confab_actors::model::{self, ConvKind, Message};
use confab_actors::proto::{HistoryReq, SendReq, SeqReq};

use super::schema::{operation_errors, ConvId, Id, SafeInt};
use super::{caller, de_safe_int_opt, ok, path, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Messages:
    "/messages" => post send;
    "/conversations/{conv_id}/messages" => get history;
    "/conversations/{conv_id}/messages/{seq}/recall" => post recall;
}

operation_errors! {
    SendErrors: InvalidRequest, InvalidBody, NotMember, UserDisabled("from"),
        NotFound("the conversation, group or reply_to"), GroupDismissed,
        MessageRejected("by before_send; never for system messages"), Internal, Unavailable;
    RecallErrors: InvalidRequest("a bad conversation id, seq or by"), NotMember, Forbidden,
        RecallWindowExpired("with by"), NotFound("the conversation or message"), GroupDismissed, Unavailable;
    HistoryErrors:
        InvalidRequest("a bad conversation id, before, after, limit or as_user, both before and after, an unknown parameter"),
        NotMember("as_user"), NotFound, Unavailable;
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
    #[schema(required = true, value_type = Option<Id>)]
    from: Option<String>,
    /// A user id: the one-to-one conversation with that user. Exactly one of `to` and `conv_id`.
    #[serde(default)]
    #[schema(value_type = Option<Id>)]
    to: Option<String>,
    /// An existing conversation.
    #[serde(default)]
    #[schema(value_type = Option<ConvId>)]
    conv_id: Option<String>,
    /// The sender's idempotency key.
    #[schema(value_type = Id)]
    client_msg_id: String,
    /// A message body (see the WebSocket protocol); `{"type":"system","event","data"}` for a
    /// system message to a group.
    #[schema(value_type = Object)]
    body: Value,
    /// The seq of a message in the same conversation this one replies to.
    #[serde(default, deserialize_with = "de_safe_int_opt")]
    #[schema(value_type = Option<SafeInt>)]
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
#[utoipa::path(post, path = "/messages",
    request_body = SendBody,
    responses(
        (status = 200, description = "The message stored (or, for a re-send, stored before)", body = SendRes),
        SendErrors,
    ))]
async fn send(s: Signed<scope::Messages>, state: web::Data<AppState>) -> ApiResult {
    let r: SendBody = s.json()?;
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
    #[schema(value_type = Option<Id>)]
    by: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageRes {
    message: Message,
}

/// Recalls a message: as a user with the WebSocket rules (`by`), or administratively.
#[utoipa::path(post, path = "/conversations/{conv_id}/messages/{seq}/recall",
    params(path::Message),
    request_body(content = Option<RecallBody>, description = "Optional; an empty body is an administrative recall"),
    responses((status = 200, description = "The message, recalled", body = MessageRes), RecallErrors))]
async fn recall(s: Signed<scope::Messages>, state: web::Data<AppState>) -> ApiResult {
    let path::Message { conv_id, seq } = s.path()?;
    let r: RecallBody = s.json_or_default()?;
    let message = match r.by {
        Some(by) => state.engine.recall(&caller(&by)?, SeqReq { conv_id, seq }).await?,
        None => state.engine.recall_admin(&state.api.system_user, &conv_id, seq).await?,
    };
    ok(&MessageRes { message })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// Messages before this seq (at most one of before and after).
    #[serde(default, deserialize_with = "de_safe_int_opt")]
    #[param(value_type = Option<SafeInt>)]
    before: Option<u64>,
    /// Messages after this seq.
    #[serde(default, deserialize_with = "de_safe_int_opt")]
    #[param(value_type = Option<SafeInt>)]
    after: Option<u64>,
    /// 1 to 100 (default 50).
    #[serde(default)]
    #[param(minimum = 1, maximum = 100)]
    limit: Option<usize>,
    /// Read as this member (membership checked, their deletions hidden); else as an administrator.
    #[serde(default)]
    #[param(value_type = Option<Id>)]
    as_user: Option<String>,
}

/// A conversation's history, paged by `seq`.
#[utoipa::path(get, path = "/conversations/{conv_id}/messages",
    params(path::Conv, HistoryQuery),
    responses((status = 200, description = "The page of messages", body = HistoryResult), HistoryErrors))]
async fn history(s: Signed<scope::Messages, HistoryQuery>, state: web::Data<AppState>) -> ApiResult {
    let path::Conv { conv_id } = s.path()?;
    let q = s.query;
    let r = HistoryReq { conv_id, before: q.before, after: q.after, limit: q.limit };
    match q.as_user {
        Some(user) => ok(&state.engine.history(&caller(&user)?, r).await?),
        None => ok(&state.engine.history_admin(r).await?),
    }
}
