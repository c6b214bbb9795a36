//! The documents stored in MongoDB, their conversions to and from the model types, and the
//! indexes. `docs/storage.md` describes the same layout for operators; keep the two in step.
//!
//! Numbers are stored as BSON `int64` (`u64` values are checked into `i64`). Decoding goes through
//! serde, which also accepts `int32` for the same fields.

use confab_actors::error::StoreError;
use confab_actors::model::{
    Body, ConvKind, Conversation, Group, GroupBan, InviteMode, JoinMode, JoinRequest, Member, Message,
    NoticeConfirmation, ReplyRef, RequestKind, Role, UserConvState,
};
use confab_actors::store::StoreResult;
use mongodb::bson::{doc, Document};
use mongodb::options::IndexOptions;
use mongodb::IndexModel;
use serde::{Deserialize, Serialize};

pub(crate) const MESSAGES: &str = "messages";
pub(crate) const CONVERSATIONS: &str = "conversations";
pub(crate) const USER_CONVS: &str = "user_convs";
pub(crate) const DELETIONS: &str = "deletions";
pub(crate) const GROUPS: &str = "groups";
pub(crate) const MEMBERS: &str = "members";
pub(crate) const META: &str = "meta";
pub(crate) const USERS: &str = "users";
pub(crate) const DEVICE_REVOCATIONS: &str = "device_revocations";
pub(crate) const BROADCASTS: &str = "broadcasts";
/// Push registrations and the push job queue (`push.rs`).
pub(crate) const PUSH_TOKENS: &str = "push_tokens";
pub(crate) const PUSH_JOBS: &str = "push_jobs";
/// `{_id, owner, data}`: an uploaded file's record, `data` the `FileMeta` as JSON text.
pub(crate) const FILES: &str = "files";
/// Daily counts: `{_id: "messages/<day>/<node clock id>", kind, day, n}`, one document per node and
/// day so that nodes never write the same one.
pub(crate) const DAILY: &str = "daily_counts";
/// `{_id: "<day>/<user>", day}`: the user was active that day.
pub(crate) const ACTIVE_USERS: &str = "active_users";
pub(crate) const CONTACTS: &str = "contacts";
pub(crate) const GROUP_BANS: &str = "group_bans";
pub(crate) const GROUP_REQUESTS: &str = "group_requests";
pub(crate) const NOTICE_CONFIRMATIONS: &str = "notice_confirmations";

/// `_id` of the retired store-wide version counter in `meta` (see `conn::RETIRED_COUNTER`).
pub(crate) const VER_ID: &str = "ver";

/// Webhooks: events, delivery attempts, dispatcher leases and cursors.
pub(crate) const OUTBOX: &str = "outbox";
pub(crate) const DELIVERIES: &str = "webhook_deliveries";
pub(crate) const WEBHOOK_META: &str = "webhook_meta";

/// A `u64` as stored (`int64`).
pub(crate) fn i(v: u64) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| StoreError::Unavailable(format!("{v} does not fit in a MongoDB int64")))
}

/// A `u64` bound for a query: values past `i64::MAX` clamp (nothing stored is that large).
pub(crate) fn q(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored number back to `u64` (negative values mean corrupt data).
pub(crate) fn u(v: i64) -> StoreResult<u64> {
    u64::try_from(v).map_err(|_| StoreError::Unavailable(format!("corrupt record: negative number {v}")))
}

/// `messages`: one document per message.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MessageDoc {
    pub conv_id: String,
    pub seq: i64,
    pub sender: Option<String>,
    pub client_msg_id: Option<String>,
    /// The `Body` as JSON text. App-defined JSON (`custom` data, `system` data) may hold keys with
    /// `$` or `.` or nest deeper than BSON's 100 levels; as text it can never make the server refuse
    /// an insert (which would fail a whole group-commit batch).
    pub body: String,
    pub reply_to: Option<ReplyDoc>,
    pub ts: i64,
    pub ver: i64,
    /// A system message's `client_msg_id` (unique: system sends are idempotent too).
    pub system_key: Option<String>,
    /// Set when the message was recalled: the `ver` of the recall (indexed for `changes`).
    pub recall_ver: Option<i64>,
}

#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReplyDoc {
    pub seq: i64,
    pub sender: Option<String>,
    pub quote: String,
    /// The quoted message was recalled and `quote` scrubbed.
    #[serde(default, skip_serializing_if = "is_false", deserialize_with = "flag")]
    pub recalled: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ReplyDoc {
    pub fn from_ref(r: &ReplyRef) -> StoreResult<ReplyDoc> {
        Ok(ReplyDoc { seq: i(r.seq)?, sender: r.sender.clone(), quote: r.quote.clone(), recalled: r.recalled })
    }
}

pub(crate) fn body_json(body: &Body) -> StoreResult<String> {
    serde_json::to_string(body).map_err(|e| StoreError::Unavailable(format!("cannot encode a message body: {e}")))
}

impl MessageDoc {
    pub fn from_message(m: &Message) -> StoreResult<MessageDoc> {
        Ok(MessageDoc {
            conv_id: m.conv_id.clone(),
            seq: i(m.seq)?,
            sender: m.sender.clone(),
            client_msg_id: m.client_msg_id.clone(),
            body: body_json(&m.body)?,
            reply_to: m.reply_to.as_ref().map(ReplyDoc::from_ref).transpose()?,
            ts: m.ts,
            ver: i(m.ver)?,
            system_key: if m.sender.is_none() { m.client_msg_id.clone() } else { None },
            recall_ver: None,
        })
    }

    pub fn into_message(self) -> StoreResult<Message> {
        let body: Body = serde_json::from_str(&self.body)
            .map_err(|e| StoreError::Unavailable(format!("corrupt message {}/{}: {e}", self.conv_id, self.seq)))?;
        let reply_to = match self.reply_to {
            Some(r) => Some(ReplyRef { seq: u(r.seq)?, sender: r.sender, quote: r.quote, recalled: r.recalled }),
            None => None,
        };
        Ok(Message {
            conv_id: self.conv_id,
            seq: u(self.seq)?,
            sender: self.sender,
            client_msg_id: self.client_msg_id,
            body,
            reply_to,
            ts: self.ts,
            ver: u(self.ver)?,
        })
    }
}

/// `conversations`: `_id` is the conversation id.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConvDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub kind: ConvKind,
    #[serde(default)]
    pub members: Vec<String>,
    pub group_id: Option<String>,
    pub last_seq: i64,
    pub ver: i64,
}

impl ConvDoc {
    pub fn from_conv(c: &Conversation) -> StoreResult<ConvDoc> {
        Ok(ConvDoc {
            id: c.conv_id.clone(),
            kind: c.kind,
            members: c.members.clone(),
            group_id: c.group_id.clone(),
            last_seq: i(c.last_seq)?,
            ver: i(c.ver)?,
        })
    }

    pub fn into_conv(self) -> StoreResult<Conversation> {
        Ok(Conversation {
            conv_id: self.id,
            kind: self.kind,
            members: self.members,
            group_id: self.group_id,
            last_seq: u(self.last_seq)?,
            ver: u(self.ver)?,
        })
    }

    /// The `seq` of the conversation's next message.
    pub fn next_seq(&self) -> StoreResult<u64> {
        Ok(u(self.last_seq)? + 1)
    }
}

/// A flag: a BSON boolean, also accepted as the integers 0 and 1 (which some MongoDB-compatible
/// servers store for booleans set with `$set`).
pub(crate) fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Int(i64),
    }
    Ok(match Flag::deserialize(d)? {
        Flag::Bool(b) => b,
        Flag::Int(n) => n != 0,
    })
}

/// `user_convs`: one user's row in one conversation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RowDoc {
    pub user: String,
    pub conv_id: String,
    pub read_seq: i64,
    #[serde(default, deserialize_with = "flag")]
    pub pinned: bool,
    #[serde(default, deserialize_with = "flag")]
    pub muted: bool,
    #[serde(default, deserialize_with = "flag")]
    pub hidden: bool,
    #[serde(deserialize_with = "flag")]
    pub active: bool,
    pub ver: i64,
    /// While inactive, the seq of the message that recorded the leaving (see
    /// `UserConvState::left_seq`); absent on rows that never left or left before it was kept.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub left_seq: i64,
    /// What the user cleared (see `UserConvState::cleared_seq`); absent when never cleared.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cleared_seq: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl RowDoc {
    pub fn new(user: &str, conv_id: &str, s: &UserConvState) -> StoreResult<RowDoc> {
        Ok(RowDoc {
            user: user.to_owned(),
            conv_id: conv_id.to_owned(),
            read_seq: i(s.read_seq)?,
            pinned: s.pinned,
            muted: s.muted,
            hidden: s.hidden,
            active: s.active,
            ver: i(s.ver)?,
            left_seq: i(s.left_seq)?,
            cleared_seq: i(s.cleared_seq)?,
        })
    }

    pub fn state(&self) -> StoreResult<UserConvState> {
        Ok(UserConvState {
            read_seq: u(self.read_seq)?,
            pinned: self.pinned,
            muted: self.muted,
            hidden: self.hidden,
            active: self.active,
            ver: u(self.ver)?,
            left_seq: u(self.left_seq)?,
            cleared_seq: u(self.cleared_seq)?,
        })
    }

    /// The replacement document of an upsert (everything but `_id`).
    pub fn to_document(&self) -> StoreResult<Document> {
        mongodb::bson::to_document(self).map_err(|e| StoreError::Unavailable(format!("cannot encode a row: {e}")))
    }
}

/// `deletions`: a message one user deleted for themselves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct DeletionDoc {
    pub user: String,
    pub conv_id: String,
    pub seq: i64,
    pub ver: i64,
}

/// `groups`: `_id` is the group id.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct GroupDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    /// The name's search key and the id, `"<name_key>\0<id>"` (`sort_key`): one field in key
    /// then id order. Absent on documents written before it existed until the start-up backfill.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name_key: String,
    pub owner: String,
    pub created_at: i64,
    pub member_count: i64,
    pub avatar: Option<String>,
    pub notice: Option<String>,
    /// App-defined JSON object, as JSON text.
    pub ext: Option<String>,
    #[serde(default, deserialize_with = "flag")]
    pub dismissed: bool,
    #[serde(default, deserialize_with = "flag")]
    pub mute_all: bool,
    #[serde(default)]
    pub join_mode: JoinMode,
    #[serde(default)]
    pub invite_mode: InviteMode,
    #[serde(default)]
    pub notice_ts: Option<i64>,
    #[serde(default, deserialize_with = "flag")]
    pub notice_confirm: bool,
}

impl GroupDoc {
    pub fn from_group(g: &Group) -> StoreResult<GroupDoc> {
        let ext = match &g.ext {
            Some(e) => {
                Some(serde_json::to_string(e).map_err(|e| StoreError::Unavailable(format!("cannot encode ext: {e}")))?)
            }
            None => None,
        };
        Ok(GroupDoc {
            id: g.id.clone(),
            name: g.name.clone(),
            name_key: sort_key(&g.name, &g.id),
            owner: g.owner.clone(),
            created_at: g.created_at,
            member_count: i(g.member_count)?,
            avatar: g.avatar.clone(),
            notice: g.notice.clone(),
            ext,
            dismissed: g.dismissed,
            mute_all: g.mute_all,
            join_mode: g.join_mode,
            invite_mode: g.invite_mode,
            notice_ts: g.notice_ts,
            notice_confirm: g.notice_confirm,
        })
    }

    pub fn into_group(self) -> StoreResult<Group> {
        let ext = match self.ext.as_deref() {
            None => None,
            Some(t) => Some(
                serde_json::from_str(t)
                    .map_err(|e| StoreError::Unavailable(format!("corrupt group {}: {e}", self.id)))?,
            ),
        };
        let mut g = Group::new(self.id, self.name, self.owner, self.created_at, u(self.member_count)?);
        g.avatar = self.avatar;
        g.notice = self.notice;
        g.ext = ext;
        g.dismissed = self.dismissed;
        g.mute_all = self.mute_all;
        g.join_mode = self.join_mode;
        g.invite_mode = self.invite_mode;
        g.notice_ts = self.notice_ts;
        g.notice_confirm = self.notice_confirm;
        Ok(g)
    }
}

/// `group_bans`: a user banned from a group, `_id` `"<group>/<user>"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BanDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub group_id: String,
    pub user: String,
    pub by: String,
    pub ts: i64,
}

pub(crate) fn ban_id(group_id: &str, user: &str) -> String {
    format!("{group_id}/{user}")
}

impl BanDoc {
    pub fn new(group_id: &str, b: &GroupBan) -> BanDoc {
        BanDoc {
            id: ban_id(group_id, &b.user_id),
            group_id: group_id.to_owned(),
            user: b.user_id.clone(),
            by: b.by.clone(),
            ts: b.ts,
        }
    }

    pub fn into_ban(self) -> GroupBan {
        GroupBan { user_id: self.user, by: self.by, ts: self.ts }
    }
}

/// `group_requests`: a pending request to join a group, `_id` `"<group>/<user>"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RequestDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub group_id: String,
    pub user: String,
    pub kind: RequestKind,
    pub by: String,
    pub message: String,
    pub ts: i64,
}

impl RequestDoc {
    pub fn new(group_id: &str, r: &JoinRequest) -> RequestDoc {
        RequestDoc {
            id: ban_id(group_id, &r.user_id),
            group_id: group_id.to_owned(),
            user: r.user_id.clone(),
            kind: r.kind,
            by: r.by.clone(),
            message: r.message.clone(),
            ts: r.ts,
        }
    }

    pub fn into_request(self) -> JoinRequest {
        JoinRequest { user_id: self.user, kind: self.kind, by: self.by, message: self.message, ts: self.ts }
    }
}

/// `notice_confirmations`: a member's confirmation of a group's notice, `_id` `"<group>/<user>"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConfirmationDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub group_id: String,
    pub user: String,
    pub notice_ts: i64,
    pub ts: i64,
}

impl ConfirmationDoc {
    pub fn new(group_id: &str, c: &NoticeConfirmation) -> ConfirmationDoc {
        ConfirmationDoc {
            id: ban_id(group_id, &c.user_id),
            group_id: group_id.to_owned(),
            user: c.user_id.clone(),
            notice_ts: c.notice_ts,
            ts: c.ts,
        }
    }

    pub fn into_confirmation(self) -> NoticeConfirmation {
        NoticeConfirmation { user_id: self.user, notice_ts: self.notice_ts, ts: self.ts }
    }
}

/// `members`: one active member of a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MemberDoc {
    pub group_id: String,
    pub user: String,
    pub role: Role,
    pub joined_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<i64>,
}

impl MemberDoc {
    /// The document of `m`, a member of the group `group_id`.
    pub fn new(group_id: &str, m: &Member) -> MemberDoc {
        MemberDoc {
            group_id: group_id.to_owned(),
            user: m.user_id.clone(),
            role: m.role,
            joined_at: m.joined_at,
            muted_until: m.muted_until,
        }
    }

    pub fn into_member(self) -> Member {
        Member { user_id: self.user, role: self.role, joined_at: self.joined_at, muted_until: self.muted_until }
    }
}

/// A name's search key followed by the record's id: sorting by it sorts by name, then id, and a
/// prefix of the name key is a prefix of it.
pub(crate) fn sort_key(name: &str, id: &str) -> String {
    format!("{}\0{id}", confab_actors::model::name_key(name))
}

fn index(keys: Document, name: &str, unique: bool, partial: Option<Document>) -> IndexModel {
    let options = IndexOptions::builder()
        .name(name.to_owned())
        .unique(unique.then_some(true))
        .partial_filter_expression(partial)
        .build();
    IndexModel::builder().keys(keys).options(options).build()
}

/// Every index, by collection. Created idempotently at start-up (`createIndexes` is a no-op for an
/// index that exists with the same definition).
pub(crate) fn indexes() -> Vec<(&'static str, Vec<IndexModel>)> {
    vec![
        (
            MESSAGES,
            vec![
                // History ranges, and the guarantee that a seq is never stored twice.
                index(doc! { "conv_id": 1, "seq": 1 }, "conv_seq", true, None),
                // Idempotent sends: (sender, client_msg_id) is unique across conversations.
                index(
                    doc! { "sender": 1, "client_msg_id": 1 },
                    "sender_client_msg_id",
                    true,
                    Some(doc! { "sender": { "$exists": true }, "client_msg_id": { "$exists": true } }),
                ),
                // Idempotent system sends: a system message's key is unique.
                index(doc! { "system_key": 1 }, "system_key", true, Some(doc! { "system_key": { "$exists": true } })),
                // A recall scrubs the quotes of the replies to the recalled message.
                index(
                    doc! { "conv_id": 1, "reply_to.seq": 1 },
                    "conv_reply_to",
                    false,
                    Some(doc! { "reply_to": { "$exists": true } }),
                ),
                // `changes`: recalls in a conversation after a version.
                index(
                    doc! { "conv_id": 1, "recall_ver": 1 },
                    "conv_recall_ver",
                    false,
                    Some(doc! { "recall_ver": { "$exists": true } }),
                ),
            ],
        ),
        (
            USER_CONVS,
            vec![
                index(doc! { "user": 1, "conv_id": 1 }, "user_conv", true, None),
                // A user's conversations by update order (rows changed after a cursor).
                index(doc! { "user": 1, "ver": 1 }, "user_ver", false, None),
                // A conversation's participants (read cursors).
                index(doc! { "conv_id": 1, "user": 1 }, "conv_user", false, None),
            ],
        ),
        (DELETIONS, vec![index(doc! { "user": 1, "conv_id": 1, "seq": 1 }, "user_conv_seq", true, None)]),
        (
            MEMBERS,
            vec![
                index(doc! { "group_id": 1, "user": 1 }, "group_user", true, None),
                // A user's groups (`groups_of`, `share_group`).
                index(doc! { "user": 1 }, "user", false, None),
            ],
        ),
        // `_id` is `"<group>/<user>"`; a group's bans are listed by `group_id`.
        (GROUP_BANS, vec![index(doc! { "group_id": 1 }, "group", false, None)]),
        // `_id` is `"<group>/<user>"`; a group's pending requests are listed by `group_id`.
        (GROUP_REQUESTS, vec![index(doc! { "group_id": 1 }, "group", false, None)]),
        // `_id` is `"<group>/<user>"`.
        (NOTICE_CONFIRMATIONS, vec![index(doc! { "group_id": 1 }, "group", false, None)]),
        (DAILY, vec![index(doc! { "kind": 1, "day": 1 }, "kind_day", false, None)]),
        (BROADCASTS, vec![index(doc! { "state": 1, "created_at": 1 }, "state_created", false, None)]),
        // Search by name prefix.
        (USERS, vec![index(doc! { "nickname_key": 1 }, "nickname_key", false, None)]),
        (GROUPS, vec![index(doc! { "name_key": 1 }, "name_key", false, None)]),
        (ACTIVE_USERS, vec![index(doc! { "day": 1 }, "day", false, None)]),
        // `_id` is `"<user>/<device>"`; a user's revoked devices are read by `user`.
        (DEVICE_REVOCATIONS, vec![index(doc! { "user": 1 }, "user", false, None)]),
        // A token belongs to one device; a user's registrations.
        (
            PUSH_TOKENS,
            vec![
                index(doc! { "provider": 1, "token": 1 }, "provider_token", true, None),
                index(doc! { "user": 1 }, "user", false, None),
            ],
        ),
        // The due jobs, earliest first.
        (PUSH_JOBS, vec![index(doc! { "state": 1, "due_at": 1 }, "state_due", false, None)]),
        // A user's changed rows, for the `contacts` sync (`_id` is `"<owner>/<peer>"`).
        (CONTACTS, vec![index(doc! { "owner": 1, "ver": 1 }, "owner_ver", false, None)]),
        // Webhooks: an endpoint's pending deliveries in event order; the log by event.
        (
            DELIVERIES,
            vec![
                index(doc! { "endpoint": 1, "event_id": 1 }, "endpoint_event", true, None),
                index(doc! { "endpoint": 1, "state": 1, "event_id": 1 }, "endpoint_state_event", false, None),
                index(doc! { "event_id": 1, "endpoint": 1 }, "event_endpoint", false, None),
            ],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_through_bson() {
        let m = Message {
            conv_id: "g_team".into(),
            seq: 7,
            sender: Some("alice".into()),
            client_msg_id: Some("c1".into()),
            body: Body::Custom { data: serde_json::json!({"$weird.key": [1, 2.5, {"x": null}]}), summary: None },
            reply_to: Some(ReplyRef { seq: 3, sender: None, quote: "q".into(), recalled: true }),
            ts: 1_700_000_000_000,
            ver: 42,
        };
        let doc = mongodb::bson::to_document(&MessageDoc::from_message(&m).expect("encode")).expect("bson");
        let back: MessageDoc = mongodb::bson::from_document(doc).expect("decode");
        assert_eq!(back.into_message().expect("message"), m);
        assert!(i(u64::MAX).is_err());
        assert_eq!(q(u64::MAX), i64::MAX);
    }
}
