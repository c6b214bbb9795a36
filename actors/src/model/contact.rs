//! Contacts: one user's view of another — friendship (with a private remark and tags), a
//! pending friend request between them, and whether the user blocked the other.
//!
//! Every pair of users who ever had anything to do with each other this way has two rows, one per
//! side: `(owner, peer)` and `(peer, owner)`. A change writes one or both rows under a new `ver`,
//! so a user's devices sync their contacts with one cursor (`contacts {since}`), like the
//! conversation list. Rows are never deleted: an ex-friend's row stays with `friend: false`, so a
//! device that synced the friendship learns that it ended.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::validate_id;

/// Longest remark (a private alias for a contact), in characters.
pub const MAX_REMARK_CHARS: usize = 64;
/// Most tags on one contact.
pub const MAX_TAGS: usize = 20;
/// Longest tag, in characters.
pub const MAX_TAG_CHARS: usize = 32;
/// Longest friend request message, in characters.
pub const MAX_REQUEST_MESSAGE_CHARS: usize = 200;

/// Which way a pending friend request goes, seen from the row's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RequestDirection {
    /// The owner asked the peer.
    Outgoing,
    /// The peer asked the owner.
    Incoming,
}

/// A pending friend request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FriendRequest {
    pub direction: RequestDirection,
    /// The requester's short message (may be empty).
    pub message: String,
    /// When it was sent, unix milliseconds.
    pub ts: i64,
}

/// One user's row about another.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Contact {
    /// The row's owner.
    pub owner: String,
    /// The other user.
    pub user_id: String,
    pub friend: bool,
    /// When the friendship began, unix milliseconds (absent when not friends).
    pub friend_since: Option<i64>,
    /// The owner's private alias for the peer (friends only).
    pub remark: Option<String>,
    /// The owner's private tags for the peer (friends only).
    #[serde(default)]
    pub tags: Vec<String>,
    /// A pending friend request between the two, either way.
    pub request: Option<FriendRequest>,
    /// The owner blocked the peer: the peer's one-to-one messages and friend requests to the owner
    /// are refused (`blocked`). The peer's row does not show it.
    #[serde(default)]
    pub blocked: bool,
    /// The store-wide version of the row's last change (the `contacts` sync cursor).
    pub ver: u64,
    pub updated_at: i64,
}

impl Contact {
    /// A row with nothing in it yet.
    pub fn empty(owner: &str, peer: &str) -> Contact {
        Contact {
            owner: owner.to_owned(),
            user_id: peer.to_owned(),
            friend: false,
            friend_since: None,
            remark: None,
            tags: Vec::new(),
            request: None,
            blocked: false,
            ver: 0,
            updated_at: 0,
        }
    }
}

/// A change between two users, made by `user` about `peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactOp {
    /// Ask `peer` to be friends. If `peer` already asked `user`, this accepts that request.
    Request {
        message: String,
    },
    /// Accept `peer`'s pending request.
    Accept,
    /// Reject `peer`'s pending request.
    Reject,
    /// Withdraw `user`'s own pending request.
    Cancel,
    /// End the friendship (both rows).
    Delete,
    /// Change `user`'s remark and tags for the friend `peer` (absent: unchanged).
    Update {
        remark: Option<String>,
        tags: Option<Vec<String>>,
    },
    Block,
    Unblock,
    /// Make the two friends at once, without a request (the HTTP API's import). Idempotent.
    Befriend,
}

impl ContactOp {
    /// The name of the change, as events and webhooks spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            ContactOp::Request { .. } => "friend_request",
            ContactOp::Accept => "friend_accept",
            ContactOp::Reject => "friend_reject",
            ContactOp::Cancel => "friend_cancel",
            ContactOp::Delete => "friend_delete",
            ContactOp::Update { .. } => "contact_update",
            ContactOp::Block => "block",
            ContactOp::Unblock => "unblock",
            ContactOp::Befriend => "friend_import",
        }
    }

    /// Whether the change concerns the peer too (its row changes and its devices hear of it).
    /// A block, an unblock and a remark are the owner's alone.
    pub fn touches_peer(&self) -> bool {
        !matches!(self, ContactOp::Update { .. } | ContactOp::Block | ContactOp::Unblock)
    }

    /// Checks the op's own fields (lengths, characters).
    pub fn validate(&self) -> Result<()> {
        match self {
            ContactOp::Request { message } if message.chars().count() > MAX_REQUEST_MESSAGE_CHARS => {
                Err(Error::invalid(format!("message: at most {MAX_REQUEST_MESSAGE_CHARS} characters")))
            }
            ContactOp::Update { remark, tags } => {
                if remark.as_ref().is_some_and(|r| r.chars().count() > MAX_REMARK_CHARS) {
                    return Err(Error::invalid(format!("remark: at most {MAX_REMARK_CHARS} characters")));
                }
                if let Some(tags) = tags {
                    if tags.len() > MAX_TAGS {
                        return Err(Error::invalid(format!("tags: at most {MAX_TAGS}")));
                    }
                    for t in tags {
                        if t.is_empty() || t.chars().count() > MAX_TAG_CHARS {
                            return Err(Error::invalid(format!("a tag has 1 to {MAX_TAG_CHARS} characters")));
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Checks the two users of a contact change: valid ids, and not the same user.
pub fn validate_pair(user: &str, peer: &str) -> Result<()> {
    validate_id("user", user)?;
    validate_id("user_id", peer)?;
    if user == peer {
        return Err(Error::invalid("a user cannot be their own contact"));
    }
    Ok(())
}
