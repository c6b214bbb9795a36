//! Domain types: ids, message bodies and their validation, conversations, groups, contacts.
//!
//! These are plain serde types with no I/O. The same structs are stored by the storage adapters and
//! sent on the wire, so their JSON shape is part of the protocol (`docs/protocol.md`). The patches
//! ([`FlagsPatch`], [`GroupPatch`], [`UserPatch`]) are plain values the transports build from
//! their own request types.

mod body;
mod broadcast;
mod contact;
mod file;
mod group;
mod ids;
mod message;
mod user;

pub use body::{Body, BODY_TYPES, MAX_CUSTOM_BYTES, MAX_NAME_LEN, MAX_URL_LEN, QUOTE_CHARS};
pub use broadcast::{
    Broadcast, BroadcastError, BroadcastState, Segment, MAX_BROADCAST_ERRORS, MAX_BROADCAST_ID, MAX_SEGMENT_USERS,
};
pub use contact::{
    validate_pair, Contact, ContactOp, FriendRequest, RequestDirection, MAX_REMARK_CHARS, MAX_REQUEST_MESSAGE_CHARS,
    MAX_TAGS, MAX_TAG_CHARS,
};
pub use file::{FileKind, FileMeta, Thumbnail};
pub use group::{
    Group, GroupBan, GroupPatch, InviteMode, JoinMode, JoinRequest, Member, NoticeConfirmation, RequestKind, Role,
    MAX_MUTE_MS, MAX_NOTICE_CHARS,
};
pub use ids::{
    conv_kind, direct_conv_id, group_conv_id, validate_cursor, validate_id, ConvKind, MAX_ID_LEN, MAX_PAGE,
    MAX_SAFE_INT,
};
pub use message::{Changes, Conversation, ConversationView, FlagsPatch, Message, ReplyRef, UserConvState};
pub use user::{
    name_key, name_prefix_end, search_key, validate_ext, Profile, User, UserPatch, MAX_EXT_BYTES, MAX_NICKNAME_CHARS,
    MAX_PROFILE_LOOKUP,
};
