//! The WebSocket wire format: request envelopes, one request type per operation, replies and events.
//!
//! Frames are JSON text. A request is `{"id": <string|number>, "op": "<name>", "data": {...}}`.
//! A reply echoes the id with either `"result"` or `"error": {"code", "message"}`. A server event is
//! `{"event": "<name>", "data": {...}}`. `docs/protocol.md` is the reference for every shape here.

use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, ErrorCode};
use crate::model::{Body, ConvKind, ConversationView, FlagsPatch, Group, GroupPatch, Message, Role, BODY_TYPES};

/// The outer shape of every request frame.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    op: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// A parsed request: its id (raw JSON, echoed verbatim) and its operation.
pub struct Request {
    pub id: Box<RawValue>,
    pub op: Op,
}

/// A request that could not be parsed: the id if one was readable, and the error.
pub struct BadRequest {
    pub id: Option<Box<RawValue>>,
    pub error: Error,
}

macro_rules! ops {
    ($( $name:literal => $variant:ident($ty:ty) ),* $(,)?) => {
        /// Every operation a client can ask for, one variant per request type.
        #[derive(Debug)]
        pub enum Op { $( $variant($ty), )* }

        /// The operation names, for documentation and `unknown_op` messages.
        pub const OP_NAMES: &[&str] = &[$( $name ),*];

        impl Op {
            fn parse(op: &str, data: &str) -> Result<Op, Error> {
                match op {
                    $( $name => serde_json::from_str::<$ty>(data).map(Op::$variant).map_err(|e| Error::invalid(format!("invalid {} request: {e}", $name))), )*
                    other => Err(Error::new(ErrorCode::UnknownOp, format!("unknown op {other:?}"))),
                }
            }

            pub fn name(&self) -> &'static str {
                match self { $( Op::$variant(_) => $name, )* }
            }
        }
    };
}

ops! {
    "ping" => Ping(Empty),
    "send" => Send(SendReq),
    "history" => History(HistoryReq),
    "conversations" => Conversations(ConversationsReq),
    "conversation" => Conversation(ConvReq),
    "read" => Read(ReadReq),
    "read_count" => ReadCount(SeqReq),
    "recall" => Recall(SeqReq),
    "delete" => Delete(DeleteReq),
    "clear" => Clear(ConvReq),
    "changes" => Changes(ChangesReq),
    "set_flags" => SetFlags(SetFlagsReq),
    "group_create" => GroupCreate(GroupCreateReq),
    "group_add" => GroupAdd(GroupMembersReq),
    "group_remove" => GroupRemove(GroupMembersReq),
    "group_leave" => GroupLeave(GroupReq),
    "group_members" => GroupMembers(GroupReq),
    "group_info" => GroupInfo(GroupReq),
    "group_update" => GroupUpdate(GroupUpdateReq),
    "group_set_role" => GroupSetRole(GroupSetRoleReq),
    "group_dismiss" => GroupDismiss(GroupReq),
    "users_get" => UsersGet(UsersGetReq),
    "profile_update" => ProfileUpdate(ProfileUpdateReq),
    "refresh" => Refresh(RefreshReq),
    "group_join" => GroupJoin(GroupJoinReq),
    "group_invite" => GroupInvite(GroupInviteReq),
    "group_requests" => GroupRequests(GroupReq),
    "group_approve" => GroupApprove(GroupUserReq),
    "group_reject" => GroupReject(GroupUserReq),
    "group_notice_confirm" => GroupNoticeConfirm(GroupReq),
    "group_notice_confirmations" => GroupNoticeConfirmations(GroupReq),
    "group_mute" => GroupMute(GroupMuteReq),
    "group_unmute" => GroupUnmute(GroupMembersReq),
    "group_mute_all" => GroupMuteAll(GroupMuteAllReq),
    "group_ban" => GroupBan(GroupMembersReq),
    "group_unban" => GroupUnban(GroupMembersReq),
    "group_bans" => GroupBans(GroupReq),
    "friend_request" => FriendRequest(FriendRequestReq),
    "friend_accept" => FriendAccept(UserReq),
    "friend_reject" => FriendReject(UserReq),
    "friend_cancel" => FriendCancel(UserReq),
    "friend_delete" => FriendDelete(UserReq),
    "contact_update" => ContactUpdate(ContactUpdateReq),
    "block" => Block(UserReq),
    "unblock" => Unblock(UserReq),
    "contact" => Contact(UserReq),
    "contacts" => Contacts(ConversationsReq),
    "push_register" => PushRegister(PushRegisterReq),
    "push_unregister" => PushUnregister(Empty),
}

/// Parses one text frame.
pub fn parse_request(text: &str) -> Result<Request, BadRequest> {
    let env: Envelope<'_> = serde_json::from_str(text).map_err(|e| BadRequest {
        id: None,
        error: Error::new(ErrorCode::MalformedFrame, format!("frame is not a JSON request object: {e}")),
    })?;
    let id = match env.id {
        Some(raw) if raw.get().starts_with('"') || raw.get().starts_with(|c: char| c == '-' || c.is_ascii_digit()) => {
            raw.to_owned()
        }
        _ => {
            return Err(BadRequest { id: None, error: Error::invalid("`id` (a string or a number) is required") });
        }
    };
    let Some(op) = env.op else {
        return Err(BadRequest { id: Some(id), error: Error::new(ErrorCode::MalformedFrame, "`op` is required") });
    };
    let data = env.data.map(RawValue::get).unwrap_or("{}");
    match Op::parse(&op, data) {
        Ok(op) => Ok(Request { id, op }),
        Err(error) => Err(BadRequest { id: Some(id), error }),
    }
}

// ---- request types ----

/// No fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendReq {
    /// An existing conversation. Exactly one of `conv_id` and `to` is required.
    #[serde(default)]
    pub conv_id: Option<String>,
    /// A user id: sends in the one-to-one conversation with that user, creating it if needed.
    #[serde(default)]
    pub to: Option<String>,
    /// The sender's idempotency key (1..=64 id characters).
    pub client_msg_id: String,
    /// The body, or why it is not a valid body of its type (`invalid_body`). A body that is not
    /// of any known type fails the whole request (`invalid_request`).
    #[serde(deserialize_with = "client_body")]
    pub body: Result<Body, Error>,
    /// The `seq` of a message in the same conversation this one replies to.
    #[serde(default)]
    pub reply_to: Option<u64>,
}

/// Reads a message body: a known `type` whose fields are missing, unknown or of the wrong type is
/// an invalid body; anything else is not a body at all.
fn client_body<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Result<Body, Error>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    match Body::deserialize(&v) {
        Ok(body) => Ok(Ok(body)),
        Err(e) if v.get("type").and_then(|t| t.as_str()).is_some_and(|t| BODY_TYPES.contains(&t)) => {
            Ok(Err(Error::body(format!("invalid {} body: {e}", v["type"].as_str().unwrap_or("")))))
        }
        Err(e) => Err(serde::de::Error::custom(format!("body: {e}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryReq {
    pub conv_id: String,
    #[serde(default)]
    pub before: Option<u64>,
    #[serde(default)]
    pub after: Option<u64>,
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConversationsReq {
    #[serde(default)]
    pub since: u64,
    #[serde(default)]
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvReq {
    pub conv_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadReq {
    pub conv_id: String,
    pub seq: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeqReq {
    pub conv_id: String,
    pub seq: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteReq {
    pub conv_id: String,
    pub seqs: Vec<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesReq {
    pub conv_id: String,
    #[serde(default)]
    pub since: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetFlagsReq {
    pub conv_id: String,
    #[serde(default)]
    pub pinned: Option<bool>,
    #[serde(default)]
    pub muted: Option<bool>,
    #[serde(default)]
    pub hidden: Option<bool>,
}

impl SetFlagsReq {
    /// The flags to change.
    pub fn patch(&self) -> FlagsPatch {
        FlagsPatch { pinned: self.pinned, muted: self.muted, hidden: self.hidden }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupCreateReq {
    /// Optional; a random id is generated when absent.
    #[serde(default)]
    pub group_id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub members: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMembersReq {
    pub group_id: String,
    pub members: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMuteReq {
    pub group_id: String,
    pub members: Vec<String>,
    /// Muted until this time, unix milliseconds (in the future, at most a year away).
    pub until: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMuteAllReq {
    pub group_id: String,
    /// `true`: only the owner and admins may send; `false`: everyone again.
    pub on: bool,
}

/// Names another user (contacts).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserReq {
    pub user_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendRequestReq {
    pub user_id: String,
    /// A short message to the user asked (at most 200 characters).
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactUpdateReq {
    pub user_id: String,
    /// The private alias (`""` removes it); absent: unchanged.
    #[serde(default)]
    pub remark: Option<String>,
    /// The private tags, replacing the old ones; absent: unchanged.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupReq {
    pub group_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupUpdateReq {
    pub group_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub avatar: Option<String>,
    #[serde(default)]
    pub notice: Option<String>,
    #[serde(default)]
    pub ext: Option<serde_json::Value>,
    #[serde(default)]
    pub join_mode: Option<crate::model::JoinMode>,
    #[serde(default)]
    pub invite_mode: Option<crate::model::InviteMode>,
    #[serde(default)]
    pub notice_confirm: Option<bool>,
}

impl GroupUpdateReq {
    /// The profile change.
    pub fn patch(self) -> GroupPatch {
        GroupPatch {
            name: self.name,
            avatar: self.avatar,
            notice: self.notice,
            ext: self.ext,
            join_mode: self.join_mode,
            invite_mode: self.invite_mode,
            notice_confirm: self.notice_confirm,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupJoinReq {
    pub group_id: String,
    /// For an application: a short message to the owner and admins (at most 200 characters).
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupInviteReq {
    pub group_id: String,
    pub members: Vec<String>,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupUserReq {
    pub group_id: String,
    pub user_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSetRoleReq {
    pub group_id: String,
    pub user_id: String,
    /// `admin` or `member`; `owner` transfers the ownership.
    pub role: Role,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersGetReq {
    /// 1 to 100 user ids.
    pub ids: Vec<String>,
}

/// The session's device registers its push token.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRegisterReq {
    /// `fcm`, `apns`, or a provider the relay takes (`huawei`, `xiaomi`, ...).
    pub provider: String,
    pub token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdateReq {
    #[serde(default)]
    pub nickname: Option<String>,
    #[serde(default)]
    pub avatar: Option<String>,
    #[serde(default)]
    pub ext: Option<serde_json::Value>,
}

/// A fresh token for the connection (same user and device), before the current one expires.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshReq {
    pub token: String,
}

/// The reply to `refresh`: when the connection's token now expires (unix seconds).
#[derive(Debug, Serialize)]
pub struct RefreshResult {
    pub expires_at: u64,
}

// ---- replies and events ----

/// A row of the conversation list as clients see it.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationItem {
    pub conv_id: String,
    pub kind: ConvKind,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    pub group_id: Option<String>,
    pub last_seq: u64,
    #[serialize_always]
    pub last_message: Option<Message>,
    pub read_seq: u64,
    pub unread: u64,
    pub pinned: bool,
    pub muted: bool,
    pub hidden: bool,
    pub active: bool,
    /// The user cleared the conversation up to this `seq` (0: never): drop what is at or before it.
    pub cleared_seq: u64,
    /// Pass the largest `cursor` seen as `since` to get only what changed.
    pub cursor: u64,
}

impl From<ConversationView> for ConversationItem {
    fn from(v: ConversationView) -> Self {
        let cursor = v.cursor();
        let unread = v.unread();
        let hidden = v.hidden();
        ConversationItem {
            conv_id: v.conv.conv_id,
            kind: v.conv.kind,
            members: v.conv.members,
            group_id: v.conv.group_id,
            last_seq: v.conv.last_seq,
            last_message: v.last_message,
            read_seq: v.state.read_seq,
            unread,
            pinned: v.state.pinned,
            muted: v.state.muted,
            hidden,
            active: v.state.active,
            cleared_seq: v.state.cleared_seq,
            cursor,
        }
    }
}

fn push_json<T: Serialize + ?Sized>(out: &mut String, v: &T) {
    match serde_json::to_string(v) {
        Ok(s) => out.push_str(&s),
        // Our own types always serialize; keep the frame valid JSON regardless.
        Err(_) => out.push_str("null"),
    }
}

/// `{"id":…,"result":…}`
pub fn encode_result<T: Serialize + ?Sized>(id: &RawValue, result: &T) -> ByteString {
    let mut s = String::with_capacity(128);
    s.push_str("{\"id\":");
    s.push_str(id.get());
    s.push_str(",\"result\":");
    push_json(&mut s, result);
    s.push('}');
    ByteString::from(s)
}

/// `{"id":…,"error":{"code":…,"message":…}}`; `id` is `null` when the request had none.
pub fn encode_error(id: Option<&RawValue>, err: &Error) -> ByteString {
    let mut s = String::with_capacity(128);
    s.push_str("{\"id\":");
    s.push_str(id.map(RawValue::get).unwrap_or("null"));
    s.push_str(",\"error\":");
    push_json(&mut s, err);
    s.push('}');
    ByteString::from(s)
}

/// `{"event":"<name>","data":…}`
pub fn encode_event<T: Serialize + ?Sized>(name: &str, data: &T) -> ByteString {
    let mut s = String::with_capacity(256);
    s.push_str("{\"event\":\"");
    s.push_str(name);
    s.push_str("\",\"data\":");
    push_json(&mut s, data);
    s.push('}');
    ByteString::from(s)
}

/// The reply to `send`.
#[derive(Debug, Serialize)]
pub struct SendResult<'a> {
    pub message: &'a Message,
}

/// The reply to `group_update`, `group_set_role` and `group_dismiss`: the group as changed and
/// the system message recording it.
#[derive(Serialize)]
pub struct GroupChangeResult<'a> {
    pub group: &'a Group,
    pub message: &'a Message,
}

/// Event `read`: a user's read cursor moved (sent to the reader's other devices and, in one-to-one
/// conversations, to the other participant as a read receipt).
#[derive(Debug, Serialize)]
pub struct ReadEvent<'a> {
    pub conv_id: &'a str,
    pub user_id: &'a str,
    pub read_seq: u64,
}

/// Event `deleted`: the user deleted messages for themselves (sent to all their devices).
#[derive(Debug, Serialize)]
pub struct DeletedEvent<'a> {
    pub conv_id: &'a str,
    pub seqs: &'a [u64],
}

/// Most users a list in a membership event or a membership system message holds; a longer one
/// is cut to its first `LIST_INLINE` users and its full length given beside it (`*_count`), so a
/// 5,000-member group's creation does not send 5,000 ids to each of its 5,000 members.
pub const LIST_INLINE: usize = 100;

/// `list`, cut to [`LIST_INLINE`] users, and its full length when it was cut.
pub fn inline_list(list: &[String]) -> (&[String], Option<usize>) {
    match list.len() > LIST_INLINE {
        true => (&list[..LIST_INLINE], Some(list.len())),
        false => (list, None),
    }
}

/// Sets `data[key]` to `list` cut to [`LIST_INLINE`] users, and `data[key_count]` to its full
/// length when it was cut (the shape of membership system messages).
pub fn put_list(data: &mut serde_json::Value, key: &str, list: &[String]) {
    let (listed, count) = inline_list(list);
    data[key] = serde_json::json!(listed);
    if let Some(n) = count {
        data[format!("{key}_count")] = n.into();
    }
}

/// Event `membership`: a group's membership changed.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct MembershipEvent<'a> {
    pub group_id: &'a str,
    pub conv_id: &'a str,
    /// The system message recording the change.
    pub seq: u64,
    /// The users added (at most [`LIST_INLINE`]; see `added_count`).
    pub added: &'a [String],
    pub removed: &'a [String],
    /// How many were added, when `added` was cut.
    pub added_count: Option<usize>,
    pub removed_count: Option<usize>,
}

impl<'a> MembershipEvent<'a> {
    /// The event for a change adding `added` and removing `removed` (lists cut as needed).
    pub fn new(group_id: &'a str, conv_id: &'a str, seq: u64, added: &'a [String], removed: &'a [String]) -> Self {
        let (added, added_count) = inline_list(added);
        let (removed, removed_count) = inline_list(removed);
        MembershipEvent { group_id, conv_id, seq, added, removed, added_count, removed_count }
    }
}

/// Event `group`: a group's profile or roles changed, or it was dismissed.
#[derive(Debug, Serialize)]
pub struct GroupEvent<'a> {
    pub group_id: &'a str,
    pub conv_id: &'a str,
    /// The system message recording the change.
    pub seq: u64,
    /// `updated`, `roles` or `dismissed`.
    pub change: &'a str,
    /// The group's profile after the change.
    pub group: &'a Option<Group>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(op: &str, data: serde_json::Value) -> Result<Op, Error> {
        let frame = json!({"id": 1, "op": op, "data": data}).to_string();
        parse_request(&frame).map(|r| r.op).map_err(|bad| bad.error)
    }

    #[test]
    fn absent_optional_fields_read_as_none() {
        let text = json!({"type": "text", "text": "hi"});
        let Ok(Op::Send(r)) = parse("send", json!({"to": "bob", "client_msg_id": "c", "body": text})) else {
            panic!("send")
        };
        assert_eq!((r.conv_id, r.to.as_deref(), r.reply_to), (None, Some("bob"), None));
        let Ok(Op::History(r)) = parse("history", json!({"conv_id": "g_t"})) else { panic!("history") };
        assert_eq!((r.before, r.after, r.limit), (None, None, None));
        let Ok(Op::Conversations(r)) = parse("conversations", json!({})) else { panic!("conversations") };
        assert_eq!((r.since, r.limit), (0, None));
        let Ok(Op::Changes(r)) = parse("changes", json!({"conv_id": "g_t"})) else { panic!("changes") };
        assert_eq!(r.since, 0);
        let Ok(Op::SetFlags(r)) = parse("set_flags", json!({"conv_id": "g_t"})) else { panic!("set_flags") };
        assert_eq!(r.patch(), FlagsPatch::default());
        let Ok(Op::GroupCreate(r)) = parse("group_create", json!({"name": "n"})) else { panic!("group_create") };
        assert_eq!((r.group_id, r.members.len()), (None, 0));
        let Ok(Op::GroupUpdate(r)) = parse("group_update", json!({"group_id": "t"})) else { panic!("group_update") };
        assert_eq!(r.patch(), GroupPatch::default());
        let Ok(Op::ProfileUpdate(r)) = parse("profile_update", json!({})) else { panic!("profile_update") };
        assert_eq!((r.nickname, r.avatar, r.ext), (None, None, None));
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        let text = json!({"type": "text", "text": "hi"});
        let requests = [
            ("ping", json!({})),
            ("send", json!({"conv_id": "g_t", "client_msg_id": "c", "body": text})),
            ("history", json!({"conv_id": "g_t"})),
            ("conversations", json!({})),
            ("conversation", json!({"conv_id": "g_t"})),
            ("read", json!({"conv_id": "g_t", "seq": 1})),
            ("recall", json!({"conv_id": "g_t", "seq": 1})),
            ("delete", json!({"conv_id": "g_t", "seqs": [1]})),
            ("changes", json!({"conv_id": "g_t"})),
            ("set_flags", json!({"conv_id": "g_t"})),
            ("group_create", json!({"name": "n"})),
            ("group_add", json!({"group_id": "t", "members": []})),
            ("group_info", json!({"group_id": "t"})),
            ("group_update", json!({"group_id": "t"})),
            ("group_set_role", json!({"group_id": "t", "user_id": "u", "role": "admin"})),
            ("users_get", json!({"ids": []})),
            ("profile_update", json!({})),
            ("refresh", json!({"token": "x"})),
        ];
        for (op, mut data) in requests {
            assert!(parse(op, data.clone()).is_ok(), "{op}");
            data["nickame"] = json!("typo");
            let e = parse(op, data).err().map(|e| (e.code, e.message));
            assert!(
                matches!(&e, Some((ErrorCode::InvalidRequest, m)) if m.contains("unknown field `nickame`")),
                "{op}: {e:?}"
            );
        }
    }
}
