//! The domain decisions every storage adapter makes the same way, written once: who the
//! participants of a one-to-one conversation are, what a new group consists of, how a member
//! change turns into member and row changes, how a role change applies, what a live group is, the
//! system message that records a change, how far a read cursor moves, what a flags patch changes,
//! which conversations make up a page of a user's list, and what a contact change does to the two
//! users' rows. An adapter reads what a decision
//! needs, calls it, and encodes and persists the result; it decides nothing itself.

use std::collections::HashMap;

use crate::error::{ErrorCode, StoreError};
use crate::model::{
    group_conv_id, Body, Contact, ContactOp, ConvKind, Conversation, ConversationView, FlagsPatch, FriendRequest,
    Group, Member, Message, RequestDirection, Role, UserConvState,
};

use super::{ContactChange, MemberChange, NewGroup, NewMessage, RoleChange, StoreResult};

impl NewMessage {
    /// The participants of a one-to-one conversation the message creates if needed (sorted, one
    /// for a note to oneself); none for a group's.
    pub fn participants(&self) -> Vec<String> {
        match &self.direct_members {
            Some((a, b)) => {
                let mut p = vec![a.clone(), b.clone()];
                p.sort();
                p.dedup();
                p
            }
            None => Vec::new(),
        }
    }
}

/// A new group, whole: what [`crate::store::Store::create_group`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupPlan {
    /// The owner first, then the other members once each.
    pub members: Vec<Member>,
    pub group: Group,
    pub conv: Conversation,
    /// The first message, the system message announcing the group.
    pub message: Message,
    /// An active row for each member.
    pub row: UserConvState,
}

impl NewGroup {
    /// The group as created at version `ver`.
    pub fn plan(&self, ver: u64) -> GroupPlan {
        let mut members =
            vec![Member { user_id: self.owner.clone(), role: Role::Owner, joined_at: self.ts, muted_until: None }];
        for m in &self.members {
            if !members.iter().any(|x| &x.user_id == m) {
                members.push(Member { user_id: m.clone(), role: Role::Member, joined_at: self.ts, muted_until: None });
            }
        }
        let conv_id = group_conv_id(&self.id);
        let group = Group::new(self.id.clone(), self.name.clone(), self.owner.clone(), self.ts, members.len() as u64);
        let conv = Conversation {
            conv_id: conv_id.clone(),
            kind: ConvKind::Group,
            members: Vec::new(),
            group_id: Some(self.id.clone()),
            last_seq: 1,
            ver,
        };
        let message = Message::system(conv_id, 1, self.system_body.clone(), self.ts, ver);
        GroupPlan {
            members,
            group,
            conv,
            message,
            row: UserConvState { active: true, ver, ..UserConvState::default() },
        }
    }
}

/// What a member change does to the members and rows of the users it names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberDelta {
    /// Members to insert.
    pub insert: Vec<Member>,
    /// Members (user ids) to delete.
    pub delete: Vec<String>,
    /// Rows to write (created or changed), by user.
    pub rows: Vec<(String, UserConvState)>,
    /// The group's member count after the change.
    pub member_count: u64,
}

impl MemberChange {
    /// Applies the change, recorded by the message `seq` at version `ver`, to what the store
    /// holds of its users: `members` (those who are members now) and `rows` (those who have a
    /// row). Adds first, then removals, each once: adding a member leaves them as they are,
    /// removing a non-member changes nothing; added users' rows turn active with their cursor
    /// just before the message ([`UserConvState::join`]), removed users' turn inactive
    /// ([`UserConvState::leave`]).
    pub fn apply(
        &self,
        seq: u64,
        ver: u64,
        members: &HashMap<String, Member>,
        rows: &HashMap<String, UserConvState>,
        member_count: u64,
    ) -> MemberDelta {
        let mut now: HashMap<&str, bool> = members.keys().map(|u| (u.as_str(), true)).collect();
        let mut changed: HashMap<String, UserConvState> = HashMap::new();
        let mut delta = MemberDelta { member_count, ..MemberDelta::default() };
        for (user, role) in &self.add {
            if now.get(user.as_str()).copied().unwrap_or(false) {
                continue;
            }
            now.insert(user, true);
            delta.insert.push(Member { user_id: user.clone(), role: *role, joined_at: self.ts, muted_until: None });
            delta.member_count += 1;
            let mut state = changed.get(user).or_else(|| rows.get(user)).cloned().unwrap_or_default();
            state.join(seq, ver);
            changed.insert(user.clone(), state);
        }
        for user in &self.remove {
            if now.get(user.as_str()).copied().unwrap_or(false) {
                now.insert(user, false);
                delta.member_count = delta.member_count.saturating_sub(1);
                match delta.insert.iter().position(|m| &m.user_id == user) {
                    Some(i) => {
                        delta.insert.remove(i);
                    }
                    None => delta.delete.push(user.clone()),
                }
            }
            if let Some(mut state) = changed.get(user).or_else(|| rows.get(user)).cloned() {
                if state.leave(seq, ver) {
                    changed.insert(user.clone(), state);
                }
            }
        }
        let mut rows: Vec<(String, UserConvState)> = changed.into_iter().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        delta.rows = rows;
        delta
    }
}

impl RoleChange {
    /// Applies the roles in order to `group` and to the members they name (`members`: those of
    /// them who are members now). Returns each changed member once, in the order of its last
    /// change, or `NotFound` for a user who is not a member. Giving a user `Owner` makes them the
    /// group's owner.
    pub fn apply(&self, group: &mut Group, members: &HashMap<String, Member>) -> StoreResult<Vec<Member>> {
        let mut changed: Vec<Member> = Vec::with_capacity(self.roles.len());
        for (user, role) in &self.roles {
            let mut m = match changed.iter().position(|m| &m.user_id == user) {
                Some(i) => changed.remove(i),
                None => members.get(user).cloned().ok_or_else(|| {
                    StoreError::NotFound(format!("{user} is not a member of group {}", self.group_id))
                })?,
            };
            m.role = *role;
            if *role == Role::Owner {
                group.owner = user.clone();
            }
            changed.push(m);
        }
        Ok(changed)
    }
}

/// The group a change applies to: it must exist (`NotFound`) and not be dismissed (`Conflict`).
pub fn live_group(group: Option<Group>, group_id: &str) -> StoreResult<Group> {
    match group {
        None => Err(StoreError::NotFound(format!("group {group_id}"))),
        Some(g) if g.dismissed => Err(StoreError::Conflict(format!("group {group_id} is dismissed"))),
        Some(g) => Ok(g),
    }
}

/// A group's conversation, which a live group always has (its absence is corrupt data).
pub fn group_conversation(conv: Option<Conversation>, group_id: &str) -> StoreResult<Conversation> {
    conv.ok_or_else(|| StoreError::Unavailable(format!("group {group_id} has no conversation")))
}

impl Message {
    /// The system message (no sender, no key) at `seq` of `conv_id`.
    pub fn system(conv_id: String, seq: u64, body: Body, ts: i64, ver: u64) -> Message {
        Message { conv_id, seq, sender: None, client_msg_id: None, body, reply_to: None, ts, ver }
    }
}

impl UserConvState {
    /// Where [`crate::store::Store::mark_read`] moves the read cursor in a conversation whose last
    /// message is `last_seq`: to `min(seq, last_seq)` if that is past the cursor; `None` when the
    /// cursor is there or beyond already.
    pub fn read_target(&self, seq: u64, last_seq: u64) -> Option<u64> {
        Some(seq.min(last_seq)).filter(|&target| target > self.read_seq)
    }
}

impl FlagsPatch {
    /// Sets the flags the patch names on `state`, leaving the others as they are.
    pub fn apply(&self, state: &mut UserConvState) {
        for (flag, patched) in
            [(&mut state.pinned, self.pinned), (&mut state.muted, self.muted), (&mut state.hidden, self.hidden)]
        {
            if let Some(v) = patched {
                *flag = v;
            }
        }
    }
}

impl ConversationView {
    /// A row of `state`'s user's list as they may see it ([`ConversationView::visible`]), its last
    /// message not loaded yet.
    pub fn unloaded(conv: Conversation, state: UserConvState) -> ConversationView {
        ConversationView { conv: ConversationView::visible(conv, &state), state, last_message: None }
    }

    /// The `seq` of the message to load as `last_message`: the last one the user may see; none
    /// while there is none (or the user cleared everything up to it).
    pub fn last_message_seq(&self) -> Option<u64> {
        Some(self.conv.last_seq).filter(|&seq| seq > self.state.cleared_seq)
    }
}

/// A page of a user's conversation list ([`crate::store::Store::list_conversations`]) out of
/// their rows, each with its conversation: those whose cursor is after `since` and at most
/// `until` (a store whose versions may commit out of order passes its watermark; else
/// `u64::MAX`), ascending by cursor (then conversation id), at most `limit`, their last messages
/// not loaded yet.
pub fn list_page(
    rows: impl IntoIterator<Item = (Conversation, UserConvState)>,
    since: u64,
    until: u64,
    limit: usize,
) -> Vec<ConversationView> {
    let mut page: Vec<ConversationView> = rows
        .into_iter()
        .map(|(conv, state)| ConversationView::unloaded(conv, state))
        .filter(|view| view.cursor() > since && view.cursor() <= until)
        .collect();
    page.sort_by(|a, b| a.cursor().cmp(&b.cursor()).then_with(|| a.conv.conv_id.cmp(&b.conv.conv_id)));
    page.truncate(limit);
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(add: &[&str], remove: &[&str]) -> MemberChange {
        MemberChange {
            group_id: "g".into(),
            add: add.iter().map(|u| ((*u).to_owned(), Role::Member)).collect(),
            remove: remove.iter().map(|u| (*u).to_owned()).collect(),
            ban: Vec::new(),
            unban: Vec::new(),
            ts: 7,
            system_body: Body::System { event: "x".into(), data: serde_json::Value::Null },
        }
    }

    fn member(u: &str) -> (String, Member) {
        (u.to_owned(), Member { user_id: u.to_owned(), role: Role::Member, joined_at: 1, muted_until: None })
    }

    #[test]
    fn a_member_change_applies_adds_then_removals_once() {
        let members: HashMap<String, Member> = [member("b"), member("c")].into();
        let rows: HashMap<String, UserConvState> = [
            ("b".to_owned(), UserConvState { active: true, read_seq: 3, ver: 5, ..Default::default() }),
            ("c".to_owned(), UserConvState { active: true, read_seq: 1, ver: 5, hidden: true, ..Default::default() }),
            ("d".to_owned(), UserConvState { active: false, read_seq: 2, left_seq: 2, ver: 4, ..Default::default() }),
        ]
        .into();
        let d = change(&["a", "b", "d"], &["c", "zed"]).apply(9, 20, &members, &rows, 2);
        assert_eq!(d.insert.iter().map(|m| m.user_id.as_str()).collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(d.delete, ["c"]);
        assert_eq!(d.member_count, 3);
        let row = |u: &str| d.rows.iter().find(|(x, _)| x == u).map(|(_, s)| s.clone());
        assert_eq!(row("a").map(|s| (s.active, s.read_seq, s.ver)), Some((true, 8, 20)));
        assert_eq!(row("d").map(|s| (s.active, s.left_seq, s.read_seq)), Some((true, 0, 8)), "re-joined");
        assert_eq!(row("c").map(|s| (s.active, s.left_seq, s.hidden)), Some((false, 9, false)));
        assert!(row("b").is_none(), "a member added again is left as is");
        assert!(row("zed").is_none(), "no row, nothing to change");
        // Added and removed in one change: neither inserted nor counted.
        let d = change(&["n"], &["n"]).apply(9, 20, &members, &rows, 2);
        assert!(d.insert.is_empty() && d.delete.is_empty() && d.member_count == 2);
        assert_eq!(d.rows.iter().map(|(_, s)| (s.active, s.left_seq)).collect::<Vec<_>>(), [(false, 9)]);
    }

    #[test]
    fn a_new_group_has_its_owner_first_and_each_member_once() {
        let g = NewGroup {
            id: "t".into(),
            name: "T".into(),
            owner: "o".into(),
            members: vec!["b".into(), "o".into(), "a".into(), "b".into()],
            ts: 3,
            system_body: Body::System { event: "group_created".into(), data: serde_json::Value::Null },
        };
        let p = g.plan(11);
        let who: Vec<(&str, Role)> = p.members.iter().map(|m| (m.user_id.as_str(), m.role)).collect();
        assert_eq!(who, [("o", Role::Owner), ("b", Role::Member), ("a", Role::Member)]);
        assert_eq!((p.group.member_count, p.conv.last_seq, p.message.seq, p.message.ver), (3, 1, 1, 11));
        assert!(live_group(None, "t").is_err());
        let mut dismissed = p.group.clone();
        dismissed.dismissed = true;
        assert!(matches!(live_group(Some(dismissed), "t"), Err(StoreError::Conflict(_))));
        assert!(live_group(Some(p.group), "t").is_ok());
    }

    #[test]
    fn a_role_change_applies_in_order_to_members_only() {
        let members: HashMap<String, Member> = [member("a"), member("b")].into();
        let mut group = Group::new("g".into(), "G".into(), "a".into(), 1, 2);
        let c = RoleChange {
            group_id: "g".into(),
            roles: vec![("b".into(), Role::Admin), ("a".into(), Role::Member), ("b".into(), Role::Owner)],
            ts: 2,
            system_body: Body::System { event: "x".into(), data: serde_json::Value::Null },
        };
        let changed = c.apply(&mut group, &members).expect("members");
        let roles: Vec<(&str, Role)> = changed.iter().map(|m| (m.user_id.as_str(), m.role)).collect();
        assert_eq!(roles, [("a", Role::Member), ("b", Role::Owner)]);
        assert_eq!(group.owner, "b");
        let stranger = RoleChange { roles: vec![("zed".into(), Role::Admin)], ..c };
        assert!(matches!(stranger.apply(&mut group, &members), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn a_list_page_keeps_rows_after_the_cursor_in_cursor_order() {
        let conv = |id: &str, last_seq: u64, ver: u64| Conversation {
            conv_id: id.into(),
            kind: ConvKind::Direct,
            members: Vec::new(),
            group_id: None,
            last_seq,
            ver,
        };
        let row = |ver: u64| UserConvState { active: true, ver, ..UserConvState::default() };
        let rows = vec![
            (conv("c", 4, 30), row(1)),
            (conv("a", 0, 5), row(2)),
            (conv("b", 2, 30), row(3)),
            (conv("d", 9, 9), UserConvState { active: false, left_seq: 3, ver: 20, ..UserConvState::default() }),
        ];
        let page = list_page(rows, 5, u64::MAX, 3);
        let ids: Vec<(&str, u64)> = page.iter().map(|v| (v.conv.conv_id.as_str(), v.cursor())).collect();
        assert_eq!(ids, [("d", 20), ("b", 30), ("c", 30)]);
        assert_eq!(page[0].last_message_seq(), Some(3), "a former member's list stops where they left");
        assert!(page.iter().all(|v| v.last_message.is_none()));
        assert_eq!(ConversationView::unloaded(conv("e", 0, 1), row(1)).last_message_seq(), None);
        let cursor = UserConvState { read_seq: 4, ..UserConvState::default() };
        assert_eq!(
            (cursor.read_target(9, 6), cursor.read_target(3, 6), cursor.read_target(9, 4)),
            (Some(6), None, None)
        );
    }
}

/// A contact change, whole: what [`crate::store::Store::change_contact`] writes.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactPlan {
    /// The acting user's row after the change.
    pub user: Contact,
    /// The peer's row after the change, when it changes.
    pub peer: Option<Contact>,
    /// Whether anything is written (false: the rows already were as asked, e.g. a second block).
    pub changed: bool,
}

impl ContactChange {
    /// Decides the change from the two rows as stored (`None`: no row yet), at version `ver`.
    /// Refuses (`Refused`, nothing written) what the rows do not allow: accepting, rejecting or
    /// cancelling a request that is not pending (a stale or duplicated answer), asking a user who
    /// blocked the asker, asking or deleting with the wrong friendship state, a remark for a
    /// non-friend. A change that would change nothing (blocking twice, importing friends who are
    /// friends) is `Ok` with `changed` false, and the adapter writes nothing.
    pub fn plan(&self, user_row: Option<Contact>, peer_row: Option<Contact>, ver: u64) -> StoreResult<ContactPlan> {
        let (user_id, peer_id, ts) = (self.user.as_str(), self.peer.as_str(), self.ts);
        let existed = (user_row.is_some(), peer_row.is_some());
        let mut mine = user_row.unwrap_or_else(|| Contact::empty(user_id, peer_id));
        let mut theirs = peer_row.unwrap_or_else(|| Contact::empty(peer_id, user_id));
        let (before_mine, before_theirs) = (mine.clone(), theirs.clone());
        let pending = |row: &Contact, d: RequestDirection| row.request.as_ref().is_some_and(|r| r.direction == d);
        let befriend = |mine: &mut Contact, theirs: &mut Contact| {
            for row in [mine, theirs] {
                row.friend = true;
                row.friend_since = Some(ts);
                row.request = None;
            }
        };
        match &self.op {
            ContactOp::Request { message } => {
                if theirs.blocked {
                    return Err(refused(ErrorCode::Blocked, "this user does not accept your requests"));
                }
                if mine.friend {
                    return Err(refused(ErrorCode::Conflict, "already friends"));
                }
                if pending(&mine, RequestDirection::Incoming) {
                    // Both asked: the second request accepts the first.
                    befriend(&mut mine, &mut theirs);
                } else {
                    mine.request =
                        Some(FriendRequest { direction: RequestDirection::Outgoing, message: message.clone(), ts });
                    theirs.request =
                        Some(FriendRequest { direction: RequestDirection::Incoming, message: message.clone(), ts });
                }
            }
            ContactOp::Accept | ContactOp::Reject => {
                if !pending(&mine, RequestDirection::Incoming) {
                    return Err(refused(ErrorCode::RequestNotPending, "no pending request from this user"));
                }
                if self.op == ContactOp::Accept {
                    befriend(&mut mine, &mut theirs);
                } else {
                    mine.request = None;
                    theirs.request = None;
                }
            }
            ContactOp::Cancel => {
                if !pending(&mine, RequestDirection::Outgoing) {
                    return Err(refused(ErrorCode::RequestNotPending, "no pending request to this user"));
                }
                mine.request = None;
                theirs.request = None;
            }
            ContactOp::Delete => {
                if !mine.friend {
                    return Err(refused(ErrorCode::NotFriends, "not friends"));
                }
                for row in [&mut mine, &mut theirs] {
                    row.friend = false;
                    row.friend_since = None;
                    row.remark = None;
                    row.tags.clear();
                }
            }
            ContactOp::Update { remark, tags } => {
                if !mine.friend {
                    return Err(refused(ErrorCode::NotFriends, "remarks and tags are for friends"));
                }
                if let Some(r) = remark {
                    mine.remark = Some(r.clone()).filter(|r| !r.is_empty());
                }
                if let Some(t) = tags {
                    mine.tags = t.clone();
                }
            }
            ContactOp::Block => mine.blocked = true,
            ContactOp::Unblock => mine.blocked = false,
            ContactOp::Befriend => {
                if !mine.friend || !theirs.friend {
                    befriend(&mut mine, &mut theirs);
                }
            }
        }
        let stamp = |row: &mut Contact| {
            row.ver = ver;
            row.updated_at = ts;
        };
        let mine_changed = mine != before_mine || !existed.0;
        if mine_changed {
            stamp(&mut mine);
        }
        let peer = if theirs != before_theirs || (!existed.1 && self.op.touches_peer()) {
            stamp(&mut theirs);
            Some(theirs)
        } else {
            None
        };
        Ok(ContactPlan { changed: mine_changed || peer.is_some(), user: mine, peer })
    }
}

fn refused(code: ErrorCode, message: &str) -> StoreError {
    StoreError::Refused(code, message.to_owned())
}

/// The first key after every key that starts with `prefix` (`None`: no bound), for a range scan
/// of a prefix. Ids are ASCII, so bumping the last byte is enough.
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0x7f {
            bytes.push(last + 1);
            return String::from_utf8(bytes).ok();
        }
    }
    None
}
