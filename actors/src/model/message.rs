//! Stored messages, conversations, and each user's own state in a conversation and its list row.

use serde::{Deserialize, Serialize};

use super::{Body, ConvKind};

/// What a reply points at, with a short quote so clients can render it without a fetch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    pub conv_id: String,
    pub seq: u64,
    /// The sending user; `None` for system messages.
    #[serialize_always]
    pub sender: Option<String>,
    /// The sender's idempotency key; for system messages, the key the HTTP API was given, if any.
    pub client_msg_id: Option<String>,
    pub body: Body,
    pub reply_to: Option<ReplyRef>,
    /// Server time of storing, milliseconds since the Unix epoch.
    pub ts: i64,
    /// Store-wide change version of the message's last change (insert or recall).
    pub ver: u64,
}

impl Message {
    /// Whether the message was recalled (its body is now `recalled`).
    pub fn is_recalled(&self) -> bool {
        matches!(self.body, Body::Recalled { .. })
    }
}

/// Shared state of a conversation.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub conv_id: String,
    pub kind: ConvKind,
    /// For direct conversations, the two user ids, sorted (one id for a note-to-self).
    /// Empty for groups (see the group's members).
    pub members: Vec<String>,
    /// For group conversations, the group id.
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
    /// The user cleared the conversation up to this `seq` (`clear`): their history, list item and
    /// gap fill start after it. 0 = never cleared. Only ever moves forward.
    #[serde(default)]
    pub cleared_seq: u64,
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

    /// Clears the conversation for this user up to what they may see of it now (`last_seq` the
    /// conversation's last message): history before it is gone for them, and it counts as read.
    /// Returns the new `cleared_seq`.
    pub fn clear(&mut self, last_seq: u64, ver: u64) -> u64 {
        let upto = self.visible_upto(last_seq);
        self.cleared_seq = self.cleared_seq.max(upto);
        self.read_seq = self.read_seq.max(upto);
        self.ver = ver;
        self.cleared_seq
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlagsPatch {
    pub pinned: Option<bool>,
    pub muted: Option<bool>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
