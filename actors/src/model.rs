//! Domain types: ids, message bodies and their validation, conversations, groups.
//!
//! These are plain serde types with no I/O. The same structs are stored by the storage adapters and
//! sent on the wire, so their JSON shape is part of the protocol (`docs/protocol.md`).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest user id, device id, group id or `client_msg_id`.
pub const MAX_ID_LEN: usize = 64;
/// Longest URL in a media body.
pub const MAX_URL_LEN: usize = 2048;
/// Longest file name, group name, language tag and similar short strings.
pub const MAX_NAME_LEN: usize = 256;
/// Largest encoded `custom` payload.
pub const MAX_CUSTOM_BYTES: usize = 16 * 1024;
/// Largest page of history or of conversations.
pub const MAX_PAGE: usize = 100;
/// Characters kept in a reply's quote.
pub const QUOTE_CHARS: usize = 80;

/// Checks an id: 1..=64 characters from `[A-Za-z0-9_.@:-]`, and not `.` or `..` (ids appear in
/// HTTP API paths, where clients and proxies normalise those segments away).
pub fn validate_id(kind: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Error::invalid(format!("{kind} must be 1 to {MAX_ID_LEN} characters")));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b':')) {
        return Err(Error::invalid(format!("{kind} may only contain letters, digits and _ - . @ :")));
    }
    if id == "." || id == ".." {
        return Err(Error::invalid(format!("{kind} must not be . or ..")));
    }
    Ok(())
}

/// The largest integer JSON clients in JavaScript, PHP and Java (as a double) hold exactly:
/// cursors and seqs a client sends are refused above it, so none is ever echoed back.
pub const MAX_SAFE_INT: u64 = (1 << 53) - 1;

/// Checks a cursor or seq a client sent (see [`MAX_SAFE_INT`]).
pub fn validate_cursor(kind: &str, v: u64) -> Result<()> {
    if v > MAX_SAFE_INT {
        return Err(Error::invalid(format!("{kind} must be at most {MAX_SAFE_INT}")));
    }
    Ok(())
}

/// The kind of a conversation, visible in its id prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    /// One-to-one; id `d_<32 hex>` derived from the two user ids.
    Direct,
    /// A group's conversation; id `g_<group id>`.
    Group,
}

/// The conversation id of a one-to-one chat: `d_` + the first 32 hex digits of the FNV-1a-128 hash
/// of the two user ids, sorted and joined with a NUL byte. The same pair always gives the same id.
pub fn direct_conv_id(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    // FNV-1a 128-bit: stable across versions and platforms, no dependency needed.
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for byte in x.bytes().chain(std::iter::once(0u8)).chain(y.bytes()) {
        h ^= u128::from(byte);
        h = h.wrapping_mul(PRIME);
    }
    format!("d_{h:032x}")
}

/// The conversation id of a group.
pub fn group_conv_id(group_id: &str) -> String {
    format!("g_{group_id}")
}

/// The kind of a conversation id, or an error if it is not one.
pub fn conv_kind(conv_id: &str) -> Result<ConvKind> {
    if let Some(hex) = conv_id.strip_prefix("d_") {
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(ConvKind::Direct);
        }
    } else if let Some(g) = conv_id.strip_prefix("g_") {
        if validate_id("group id", g).is_ok() {
            return Ok(ConvKind::Group);
        }
    }
    Err(Error::invalid("conv_id is not a conversation id"))
}

/// Every body `type` (including the server-only ones).
pub const BODY_TYPES: &[&str] =
    &["text", "image", "audio", "video", "file", "code", "location", "custom", "system", "recalled"];

/// A message's content, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Body {
    Text {
        text: String,
    },
    Image {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    Audio {
        url: String,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
    },
    Video {
        url: String,
        duration_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        thumbnail_url: Option<String>,
    },
    File {
        url: String,
        name: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mime: Option<String>,
    },
    Code {
        code: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lang: Option<String>,
    },
    Location {
        lat: f64,
        lng: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// App-defined JSON; `summary` is what conversation lists and quotes show.
    Custom {
        data: serde_json::Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        summary: Option<String>,
    },
    /// Server-generated (group created, members added, ...). Clients cannot send it.
    System {
        event: String,
        #[serde(default)]
        data: serde_json::Value,
    },
    /// What a recalled message turns into, in events and in history.
    Recalled {
        by: String,
    },
}

fn check_url(field: &str, url: &str) -> Result<()> {
    if url.is_empty() || url.len() > MAX_URL_LEN {
        return Err(Error::body(format!("{field} must be 1 to {MAX_URL_LEN} bytes")));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(Error::body(format!("{field} must not contain whitespace")));
    }
    Ok(())
}

fn check_short(field: &str, s: &Option<String>) -> Result<()> {
    match s {
        Some(v) if v.chars().count() > MAX_NAME_LEN => {
            Err(Error::body(format!("{field} must be at most {MAX_NAME_LEN} characters")))
        }
        _ => Ok(()),
    }
}

fn check_text(field: &str, s: &str, max_chars: usize) -> Result<()> {
    if s.trim().is_empty() {
        return Err(Error::body(format!("{field} must not be empty")));
    }
    if s.chars().count() > max_chars {
        return Err(Error::body(format!("{field} must be at most {max_chars} characters")));
    }
    Ok(())
}

impl Body {
    /// The wire name of this body's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::Text { .. } => "text",
            Body::Image { .. } => "image",
            Body::Audio { .. } => "audio",
            Body::Video { .. } => "video",
            Body::File { .. } => "file",
            Body::Code { .. } => "code",
            Body::Location { .. } => "location",
            Body::Custom { .. } => "custom",
            Body::System { .. } => "system",
            Body::Recalled { .. } => "recalled",
        }
    }

    /// Validates a body a client wants to send. `system` and `recalled` are server-only.
    pub fn validate_client(&self, max_text_chars: usize) -> Result<()> {
        match self {
            Body::Text { text } => check_text("text", text, max_text_chars),
            Body::Image { url, .. } => check_url("url", url),
            Body::Audio { url, duration_ms, .. } => {
                check_url("url", url)?;
                if *duration_ms == 0 {
                    return Err(Error::body("duration_ms must be positive"));
                }
                Ok(())
            }
            Body::Video { url, thumbnail_url, .. } => {
                check_url("url", url)?;
                if let Some(t) = thumbnail_url {
                    check_url("thumbnail_url", t)?;
                }
                Ok(())
            }
            Body::File { url, name, mime, .. } => {
                check_url("url", url)?;
                check_text("name", name, MAX_NAME_LEN)?;
                check_short("mime", mime)
            }
            Body::Code { code, lang } => {
                check_text("code", code, max_text_chars)?;
                check_short("lang", lang)
            }
            Body::Location { lat, lng, name, address } => {
                if !lat.is_finite() || !(-90.0..=90.0).contains(lat) {
                    return Err(Error::body("lat must be between -90 and 90"));
                }
                if !lng.is_finite() || !(-180.0..=180.0).contains(lng) {
                    return Err(Error::body("lng must be between -180 and 180"));
                }
                check_short("name", name)?;
                check_short("address", address)
            }
            Body::Custom { data, summary } => {
                let encoded = serde_json::to_vec(data).map_err(|e| Error::body(e.to_string()))?;
                if encoded.len() > MAX_CUSTOM_BYTES {
                    return Err(Error::body(format!("custom data must be at most {MAX_CUSTOM_BYTES} bytes")));
                }
                check_short("summary", summary)
            }
            Body::System { .. } | Body::Recalled { .. } => {
                Err(Error::body(format!("clients cannot send {} messages", self.type_name())))
            }
        }
    }

    /// A short plain-text rendering for quotes and conversation lists.
    pub fn summary(&self) -> String {
        let s = match self {
            Body::Text { text } => text.clone(),
            Body::Code { code, .. } => code.clone(),
            Body::Image { .. } => "[image]".into(),
            Body::Audio { .. } => "[audio]".into(),
            Body::Video { .. } => "[video]".into(),
            Body::File { name, .. } => format!("[file] {name}"),
            Body::Location { name, .. } => format!("[location] {}", name.as_deref().unwrap_or("")),
            Body::Custom { summary, .. } => summary.clone().unwrap_or_else(|| "[custom]".into()),
            Body::System { event, .. } => format!("[{event}]"),
            Body::Recalled { .. } => "[recalled]".into(),
        };
        s.chars().take(QUOTE_CHARS).collect()
    }
}

/// What a reply points at, with a short quote so clients can render it without a fetch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplyRef {
    pub seq: u64,
    pub sender: Option<String>,
    pub quote: String,
    /// The quoted message was recalled: `quote` no longer holds any of its text.
    #[serde(default, skip_serializing_if = "is_false")]
    pub recalled: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ReplyRef {
    /// A reference to `quoted` (message `seq` of the same conversation) with its quote.
    pub fn of(quoted: &Message) -> ReplyRef {
        ReplyRef {
            seq: quoted.seq,
            sender: quoted.sender.clone(),
            quote: quoted.body.summary(),
            recalled: quoted.is_recalled(),
        }
    }

    /// Removes the quoted text once the quoted message is recalled: nothing of a recalled
    /// message may stay readable, in the message it was quoted by either.
    pub fn scrub(&mut self) {
        self.quote = Body::Recalled { by: String::new() }.summary();
        self.recalled = true;
    }
}

/// A stored message. `seq` is contiguous per conversation, starting at 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Message {
    pub conv_id: String,
    pub seq: u64,
    /// The sending user; `None` for system messages.
    pub sender: Option<String>,
    /// The sender's idempotency key; for system messages, the key the HTTP API was given, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    pub body: Body,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyRef>,
    /// Server time of storing, milliseconds since the Unix epoch.
    pub ts: i64,
    /// Store-wide change version of the message's last change (insert or recall).
    pub ver: u64,
}

impl Message {
    pub fn is_recalled(&self) -> bool {
        matches!(self.body, Body::Recalled { .. })
    }
}

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn can_manage(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// A group's profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Group {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub created_at: i64,
    pub member_count: u64,
    /// An image URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// The group's notice (announcement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
    /// App-defined JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub ext: Option<serde_json::Value>,
    /// True once the group was dismissed: it refuses sends and changes (`group_dismissed`).
    #[serde(default)]
    pub dismissed: bool,
}

impl Group {
    /// A new group's profile (no avatar, notice or ext).
    pub fn new(id: String, name: String, owner: String, created_at: i64, member_count: u64) -> Group {
        Group { id, name, owner, created_at, member_count, avatar: None, notice: None, ext: None, dismissed: false }
    }
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Member {
    pub user_id: String,
    pub role: Role,
    pub joined_at: i64,
}

/// Shared state of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub conv_id: String,
    pub kind: ConvKind,
    /// For direct conversations, the two user ids, sorted (one id for a note-to-self).
    /// Empty for groups (see the group's members).
    pub members: Vec<String>,
    /// For group conversations, the group id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Highest `seq` stored; 0 when empty.
    pub last_seq: u64,
    /// Store-wide change version of the last change to the conversation (message or recall).
    pub ver: u64,
}

/// One user's own state in one conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UserConvState {
    /// Highest `seq` the user has read; only ever moves forward.
    pub read_seq: u64,
    pub pinned: bool,
    pub muted: bool,
    /// Set by the user to hide the conversation. Stored as set; clients see it as hidden only
    /// while nothing newer happened in the conversation (`conv.ver <= state.ver`), so a new
    /// message un-hides it without a write per member.
    pub hidden: bool,
    /// False once the user left or was removed from the group.
    pub active: bool,
    /// Store-wide change version of the last change to this row.
    pub ver: u64,
    /// While inactive: the `seq` of the message that recorded the user's leaving (their removal,
    /// their leaving, the group's dismissal). A former member sees the conversation only up to
    /// it. 0 on rows that never left, and on rows that left before this was recorded (those see
    /// up to their read cursor, see [`UserConvState::visible_upto`]).
    #[serde(default)]
    pub left_seq: u64,
}

impl UserConvState {
    /// The row of a user who (re-)joins with the message `seq`: active, with its read cursor
    /// just before that message.
    pub fn join(&mut self, seq: u64, ver: u64) {
        self.active = true;
        self.left_seq = 0;
        self.read_seq = self.read_seq.max(seq.saturating_sub(1));
        self.ver = ver;
    }

    /// The row of a user who leaves (or is removed, or whose group is dismissed) with the message
    /// `seq`. A hiding set before is cleared: the leaving is news the user must see.
    /// Returns whether anything changed (an inactive row stays as it is).
    pub fn leave(&mut self, seq: u64, ver: u64) -> bool {
        if !self.active {
            return false;
        }
        self.active = false;
        self.left_seq = seq;
        self.hidden = false;
        self.ver = ver;
        true
    }

    /// The highest `seq` this user may see of a conversation whose last message is `last_seq`:
    /// all of it while active; for a former member, what was there when they left.
    pub fn visible_upto(&self, last_seq: u64) -> u64 {
        match (self.active, self.left_seq) {
            (true, _) => last_seq,
            (false, 0) => self.read_seq.min(last_seq),
            (false, left) => left.min(last_seq),
        }
    }
}
/// A row of a user's conversation list: shared state, the user's own state and the last message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationView {
    pub conv: Conversation,
    pub state: UserConvState,
    pub last_message: Option<Message>,
}

impl ConversationView {
    /// The conversation as `state`'s user may see it: a former member's stops where they left
    /// (`last_seq`, and `ver` no later than their row's), so nothing said after they left shows
    /// through the list, an item or its cursor. Stores call this before they load the last
    /// message, and load the message at the returned `last_seq`.
    pub fn visible(mut conv: Conversation, state: &UserConvState) -> Conversation {
        if !state.active {
            conv.last_seq = state.visible_upto(conv.last_seq);
            conv.ver = conv.ver.min(state.ver);
        }
        conv
    }

    /// The list cursor: the later of the conversation's and the user's row version (for a former
    /// member, their row's alone: later messages are not theirs to see).
    pub fn cursor(&self) -> u64 {
        if self.state.active {
            self.conv.ver.max(self.state.ver)
        } else {
            self.state.ver
        }
    }

    /// Whether the row shows as hidden: hidden lasts until something newer happens in the
    /// conversation than the hiding. A row change in the same write as a message (the sender's
    /// own send, a membership change) has the message's `ver`: that message ends the hiding.
    /// Nothing newer happens for a former member (their leaving cleared the flag).
    pub fn hidden(&self) -> bool {
        self.state.hidden && (!self.state.active || self.conv.ver < self.state.ver)
    }

    /// Unread count, derived from the read cursor (never a stored counter).
    pub fn unread(&self) -> u64 {
        if self.state.active {
            self.conv.last_seq.saturating_sub(self.state.read_seq)
        } else {
            0
        }
    }
}

/// Changes flags of a user's conversation row; `None` leaves a flag as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlagsPatch {
    #[serde(default)]
    pub pinned: Option<bool>,
    #[serde(default)]
    pub muted: Option<bool>,
    #[serde(default)]
    pub hidden: Option<bool>,
}

/// What changed in a conversation for one user since a version.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// Seqs of messages recalled after `since` (fetch them with history to get the marker).
    pub recalled: Vec<u64>,
    /// Seqs the user deleted for themselves after `since`.
    pub deleted: Vec<u64>,
    /// The version to pass as `since` next time.
    pub ver: u64,
}

/// Longest nickname, in characters.
pub const MAX_NICKNAME_CHARS: usize = 64;
/// Longest group notice, in characters.
pub const MAX_NOTICE_CHARS: usize = 2048;
/// Largest encoded `ext` object of a user or a group.
pub const MAX_EXT_BYTES: usize = 4096;
/// Most users a profile lookup may ask for.
pub const MAX_PROFILE_LOOKUP: usize = 100;

/// A user's record. Users never created explicitly have none: they are enabled and have no profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    /// An image URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    /// App-defined JSON object (`{}` when unset).
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub ext: serde_json::Value,
    /// A disabled user cannot connect or send; their sessions are closed.
    #[serde(default)]
    pub disabled: bool,
    /// Tokens issued (`iat`) before this time, unix seconds, are refused; 0 = none. The second
    /// of [`User::tokens_valid_after_ms`], kept for clients that read seconds.
    #[serde(default)]
    pub tokens_valid_after: u64,
    /// Tokens issued before this time, unix milliseconds, are refused; 0 = none. Records written
    /// before it existed have only `tokens_valid_after` (see [`User::revoked_before_ms`]).
    #[serde(default)]
    pub tokens_valid_after_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl User {
    /// A record with no profile, enabled.
    pub fn new(id: &str, ts: i64) -> User {
        User {
            id: id.to_owned(),
            nickname: None,
            avatar: None,
            ext: empty_object(),
            disabled: false,
            tokens_valid_after: 0,
            tokens_valid_after_ms: 0,
            created_at: ts,
            updated_at: ts,
        }
    }

    /// Tokens issued before this time (unix ms) are refused.
    pub fn revoked_before_ms(&self) -> u64 {
        self.tokens_valid_after_ms.max(self.tokens_valid_after.saturating_mul(1000))
    }

    /// Revokes every token issued before `at_ms`.
    pub fn revoke_tokens(&mut self, at_ms: u64) {
        self.tokens_valid_after_ms = self.tokens_valid_after_ms.max(at_ms);
        self.tokens_valid_after = self.tokens_valid_after.max(self.tokens_valid_after_ms / 1000);
    }

    /// The public part other users see.
    pub fn profile(&self) -> Profile {
        Profile {
            id: self.id.clone(),
            nickname: self.nickname.clone(),
            avatar: self.avatar.clone(),
            ext: self.ext.clone(),
            updated_at: self.updated_at,
        }
    }

    /// Applies a profile patch (absent fields are kept).
    pub fn apply(&mut self, p: &UserPatch) {
        if let Some(n) = &p.nickname {
            self.nickname = Some(n.clone());
        }
        if let Some(a) = &p.avatar {
            self.avatar = Some(a.clone());
        }
        if let Some(e) = &p.ext {
            self.ext = e.clone();
        }
        self.updated_at = p.ts;
    }
}

/// A user's public profile (WebSocket `users_get`, `profile_update`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profile {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avatar: Option<String>,
    #[schema(value_type = Object)]
    pub ext: serde_json::Value,
    pub updated_at: i64,
}

/// Creates a user's record or changes its profile; `None` keeps a field as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct UserPatch {
    pub id: String,
    pub nickname: Option<String>,
    pub avatar: Option<String>,
    pub ext: Option<serde_json::Value>,
    /// Server time in ms.
    pub ts: i64,
}

impl UserPatch {
    /// Checks the fields: nickname 1 to 64 characters, avatar a URL, ext an object of at most 4 KiB.
    pub fn validate(&self) -> Result<()> {
        validate_id("id", &self.id)?;
        if let Some(n) = &self.nickname {
            let n = n.trim();
            if n.is_empty() || n.chars().count() > MAX_NICKNAME_CHARS {
                return Err(Error::invalid(format!("nickname must be 1 to {MAX_NICKNAME_CHARS} characters")));
            }
        }
        if let Some(a) = &self.avatar {
            check_url("avatar", a).map_err(|e| Error::invalid(e.message))?;
        }
        if let Some(e) = &self.ext {
            validate_ext(e)?;
        }
        Ok(())
    }
}

/// Checks an `ext` value: a JSON object of at most [`MAX_EXT_BYTES`] encoded.
pub fn validate_ext(ext: &serde_json::Value) -> Result<()> {
    if !ext.is_object() {
        return Err(Error::invalid("ext must be a JSON object"));
    }
    let n = serde_json::to_vec(ext).map(|v| v.len()).unwrap_or(usize::MAX);
    if n > MAX_EXT_BYTES {
        return Err(Error::invalid(format!("ext must be at most {MAX_EXT_BYTES} bytes encoded")));
    }
    Ok(())
}

/// Changes a group's profile; `None` keeps a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupPatch {
    /// 1 to 128 characters.
    #[serde(default)]
    pub name: Option<String>,
    /// An image URL.
    #[serde(default)]
    pub avatar: Option<String>,
    /// At most 2048 characters; an empty string clears it.
    #[serde(default)]
    pub notice: Option<String>,
    /// A JSON object of at most 4096 bytes.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub ext: Option<serde_json::Value>,
}

impl GroupPatch {
    /// Checks the fields and that at least one is given; trims the name.
    pub fn validate(&mut self) -> Result<()> {
        if self.name.is_none() && self.avatar.is_none() && self.notice.is_none() && self.ext.is_none() {
            return Err(Error::invalid("give at least one of name, avatar, notice, ext"));
        }
        if let Some(n) = &mut self.name {
            *n = n.trim().to_string();
            if n.is_empty() || n.chars().count() > 128 {
                return Err(Error::invalid("name must be 1 to 128 characters"));
            }
        }
        if let Some(a) = &self.avatar {
            check_url("avatar", a).map_err(|e| Error::invalid(e.message))?;
        }
        if let Some(n) = &self.notice {
            if n.chars().count() > MAX_NOTICE_CHARS {
                return Err(Error::invalid(format!("notice must be at most {MAX_NOTICE_CHARS} characters")));
            }
        }
        if let Some(e) = &self.ext {
            validate_ext(e)?;
        }
        Ok(())
    }

    /// Applies the patch to a group's profile.
    pub fn apply(&self, g: &mut Group) {
        if let Some(n) = &self.name {
            g.name = n.clone();
        }
        if let Some(a) = &self.avatar {
            g.avatar = Some(a.clone());
        }
        if let Some(n) = &self.notice {
            g.notice = if n.is_empty() { None } else { Some(n.clone()) };
        }
        if let Some(e) = &self.ext {
            g.ext = Some(e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ids_are_symmetric_and_distinct() {
        assert_eq!(direct_conv_id("alice", "bob"), direct_conv_id("bob", "alice"));
        assert_ne!(direct_conv_id("alice", "bob"), direct_conv_id("alice", "bobb"));
        assert_ne!(direct_conv_id("ab", "c"), direct_conv_id("a", "bc"));
        assert_eq!(conv_kind(&direct_conv_id("a", "b")).ok(), Some(ConvKind::Direct));
        assert_eq!(conv_kind("g_team-1").ok(), Some(ConvKind::Group));
        assert!(conv_kind("x_1").is_err());
        assert!(conv_kind("d_zz").is_err());
    }

    #[test]
    fn bodies_validate() {
        let ok = |j: &str| {
            serde_json::from_str::<Body>(j)
                .map_err(|e| e.to_string())
                .and_then(|b| b.validate_client(10).map_err(|e| e.to_string()))
        };
        assert!(ok(r#"{"type":"text","text":"hi"}"#).is_ok());
        assert!(ok(r#"{"type":"text","text":"   "}"#).is_err());
        assert!(ok(r#"{"type":"text","text":"12345678901"}"#).is_err());
        assert!(ok(r#"{"type":"text"}"#).is_err());
        assert!(ok(r#"{"type":"text","text":"a","x":1}"#).is_err());
        assert!(ok(r#"{"type":"image","url":"https://x/y.png","width":3}"#).is_ok());
        assert!(ok(r#"{"type":"audio","url":"u","duration_ms":0}"#).is_err());
        assert!(ok(r#"{"type":"location","lat":91,"lng":0}"#).is_err());
        assert!(ok(r#"{"type":"system","event":"x"}"#).is_err());
        assert!(ok(r#"{"type":"file","url":"u","name":"a.pdf","size":3}"#).is_ok());
        assert!(ok(r#"{"type":"custom","data":{"k":[1,2]}}"#).is_ok());
        assert!(ok(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn dot_ids_are_refused() {
        assert!(validate_id("id", ".").is_err());
        assert!(validate_id("id", "..").is_err());
        assert!(validate_id("id", "...").is_ok());
        assert!(validate_id("id", ".a").is_ok());
        assert!(validate_cursor("since", MAX_SAFE_INT).is_ok());
        assert!(validate_cursor("since", MAX_SAFE_INT + 1).is_err());
    }

    #[test]
    fn a_former_member_sees_up_to_where_they_left() {
        let conv = Conversation {
            conv_id: "g_t".into(),
            kind: ConvKind::Group,
            members: Vec::new(),
            group_id: Some("t".into()),
            last_seq: 9,
            ver: 90,
        };
        let mut state = UserConvState { read_seq: 2, active: true, hidden: true, ver: 40, ..Default::default() };
        assert!(state.leave(5, 50));
        assert!(!state.leave(6, 60), "leaving twice changes nothing");
        assert_eq!((state.left_seq, state.hidden, state.ver), (5, false, 50));
        let seen = ConversationView::visible(conv.clone(), &state);
        assert_eq!((seen.last_seq, seen.ver), (5, 50));
        let v = ConversationView { conv: seen, state: state.clone(), last_message: None };
        assert_eq!((v.cursor(), v.unread(), v.hidden()), (50, 0, false));
        // Rows that left before `left_seq` was recorded see up to their read cursor.
        let legacy = UserConvState { read_seq: 3, active: false, ver: 50, ..Default::default() };
        assert_eq!(ConversationView::visible(conv.clone(), &legacy).last_seq, 3);
        state.join(8, 95);
        assert_eq!((state.active, state.left_seq, state.read_seq), (true, 0, 7));
        assert_eq!(ConversationView::visible(conv, &state).last_seq, 9);
    }

    #[test]
    fn bodies_keep_their_numbers_exactly() {
        // Found by fuzzing (fuzz/fuzz_targets/body.rs): without serde_json's `float_roundtrip`
        // this number reads back one unit in the last place off, so a location or custom body
        // changed on its way through the store.
        let json = r#"{"type":"location","lat":1.1666666666666665,"lng":0}"#;
        let body: Body = serde_json::from_str(json).unwrap();
        assert_eq!(body, Body::Location { lat: 1.1666666666666665, lng: 0.0, name: None, address: None });
        let again: Body = serde_json::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(again, body);
    }

    #[test]
    fn body_types_lists_every_type() {
        for t in BODY_TYPES {
            // A known type with its fields missing fails on a field, not on the type.
            let e = serde_json::from_value::<Body>(serde_json::json!({ "type": t, "zz": 1 })).unwrap_err().to_string();
            assert!(!e.contains("unknown variant"), "{t}: {e}");
        }
        let e = serde_json::from_value::<Body>(serde_json::json!({ "type": "nope" })).unwrap_err().to_string();
        assert!(e.contains("unknown variant"), "{e}");
        assert!(e.contains(&BODY_TYPES.join("`, `")), "BODY_TYPES is out of step with Body: {e}");
    }
}
