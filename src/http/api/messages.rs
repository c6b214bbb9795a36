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
use super::{caller, de_safe_int_opt, in_order, ok, path, resources, scope, ApiResult, Signed};
use crate::http::AppState;

resources! {
    Messages:
    "/messages" => post send;
    "/messages/batch" => post batch;
    "/conversations/{conv_id}/messages" => get history;
    "/conversations/{conv_id}/messages/{seq}/recall" => post recall;
}

operation_errors! {
    BatchErrors: InvalidRequest("no recipients or more than 1000, a client_msg_id over 47 characters, a bad body"),
        InvalidBody, UserDisabled("from"), Unavailable;
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

/// Most recipients of one batch.
const MAX_BATCH: usize = 1000;
/// Sends of a batch in flight at once.
const BATCH_PARALLEL: usize = 32;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The sending user, or null for the system (required).
    #[serde(deserialize_with = "required_nullable")]
    #[schema(required = true, value_type = Option<Id>)]
    from: Option<String>,
    /// 1 to 1000 recipients: each gets the message in their one-to-one conversation with `from`.
    #[schema(value_type = Vec<Id>, min_items = 1, max_items = 1000)]
    to: Vec<String>,
    /// At most 47 characters; each recipient's message is keyed `<client_msg_id>.<16 hex digits
    /// of SHA-256 of the recipient>`, so a retried batch stores nothing twice.
    #[schema(value_type = Id)]
    client_msg_id: String,
    #[schema(value_type = Object)]
    body: Value,
}

#[serde_with::skip_serializing_none]
#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchItem {
    to: String,
    ok: bool,
    conv_id: Option<String>,
    seq: Option<u64>,
    /// Why this recipient failed (an error code: `blocked`, `not_friends`, …), when it did.
    error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchRes {
    results: Vec<BatchItem>,
}

/// The key of a batch's message to `to`.
fn batch_key(client_msg_id: &str, to: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(to.as_bytes());
    let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{client_msg_id}.{hex}")
}

/// Sends one message to many users, each in their one-to-one conversation with `from` (a user,
/// with every rule a send of theirs has, or the system), up to 32 at a time; one result per
/// recipient, in order. A failed recipient does not stop the others.
#[utoipa::path(post, path = "/messages/batch",
    request_body = BatchBody,
    responses((status = 200, description = "A result per recipient, in order", body = BatchRes), BatchErrors))]
async fn batch(s: Signed<scope::Messages>, state: web::Data<AppState>) -> ApiResult {
    let r: BatchBody = s.json()?;
    if r.to.is_empty() || r.to.len() > MAX_BATCH {
        return Err(Error::invalid(format!("to: 1 to {MAX_BATCH} user ids")).into());
    }
    if r.client_msg_id.chars().count() > 47 {
        return Err(Error::invalid("client_msg_id: at most 47 characters in a batch").into());
    }
    model::validate_id("client_msg_id", &r.client_msg_id)?;
    if let Some(from) = &r.from {
        state.engine.check_access(from, None).await?;
    }
    let sender = match &r.from {
        Some(from) => caller(from)?,
        None => caller(&state.api.system_user)?,
    };
    let system = r.from.is_none();
    let engine = state.engine.clone();
    let results = in_order(r.to, BATCH_PARALLEL, |to| {
        let (engine, sender) = (engine.clone(), sender.clone());
        let v = json!({ "to": to, "client_msg_id": batch_key(&r.client_msg_id, &to), "body": r.body });
        async move {
            let sent = match serde_json::from_value::<SendReq>(v) {
                Err(e) => Err(Error::invalid(format!("invalid message: {e}"))),
                Ok(req) if system => engine.send_system_to_user(&sender, req).await,
                Ok(req) => engine.send(&sender, req, None).await,
            };
            match sent {
                Ok(m) => BatchItem { to, ok: true, conv_id: Some(m.conv_id), seq: Some(m.seq), error: None },
                Err(e) => {
                    BatchItem { to, ok: false, conv_id: None, seq: None, error: Some(e.code.as_str().to_owned()) }
                }
            }
        }
    })
    .await;
    ok(&BatchRes { results })
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
