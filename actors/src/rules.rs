//! The group and message rules, as plain functions: who may change a group's members, profile
//! and roles, who may recall what and when, who may message whom one-to-one, and the system
//! messages that record changes. The
//! conversation actor and the engine call them; nothing here does I/O or holds state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorCode, Result};
use crate::model::{Body, GroupPatch, Message, Role};
use crate::proto;

/// Who may send one-to-one messages to whom (`chat.who_may_message`). Staff accounts
/// (`chat.staff`, and the HTTP API's system user) are exempt either way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhoMayMessage {
    /// Anyone may message anyone.
    #[default]
    Open,
    /// Only friends.
    Friends,
    /// Friends, or users who are both members of some group.
    FriendsOrGroups,
}

/// What two users of a one-to-one conversation are to each other, as the conversation caches it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Relation {
    pub friends: bool,
    /// The users (of the two) who blocked the other.
    pub blocked_by: Vec<Arc<str>>,
    /// Whether they share a group; `None` when not looked up.
    pub share_group: Option<bool>,
}

/// The answer of [`check_direct_send`].
#[derive(Debug, Clone)]
pub enum DirectVerdict {
    Allow,
    Refuse(Error),
    /// The answer depends on whether they share a group, which is unknown or may be stale:
    /// look it up and ask again.
    LookUpGroups,
}

/// Checks a one-to-one message from `sender` to `recipient`: refused (`blocked`) when the
/// recipient blocked the sender, then (`not_friends`) when the policy wants a relation they do not
/// have. A staff sender or recipient passes both. `groups_fresh`: `rel.share_group` was looked up
/// recently enough to refuse on it.
pub fn check_direct_send(
    policy: WhoMayMessage,
    is_staff: impl Fn(&str) -> bool,
    sender: &str,
    recipient: &str,
    rel: &Relation,
    groups_fresh: bool,
) -> DirectVerdict {
    if sender == recipient || is_staff(sender) || is_staff(recipient) {
        return DirectVerdict::Allow;
    }
    if rel.blocked_by.iter().any(|u| &**u == recipient) {
        return DirectVerdict::Refuse(Error::new(ErrorCode::Blocked, "this user does not accept your messages"));
    }
    let not_friends = || Error::new(ErrorCode::NotFriends, "you may only message your friends");
    match policy {
        WhoMayMessage::Open => DirectVerdict::Allow,
        _ if rel.friends => DirectVerdict::Allow,
        WhoMayMessage::Friends => DirectVerdict::Refuse(not_friends()),
        WhoMayMessage::FriendsOrGroups => match rel.share_group {
            Some(true) => DirectVerdict::Allow,
            Some(false) if groups_fresh => DirectVerdict::Refuse(Error::new(
                ErrorCode::NotFriends,
                "you may only message your friends and people in your groups",
            )),
            _ => DirectVerdict::LookUpGroups,
        },
    }
}

/// A change of members, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberOp {
    Add(Vec<String>),
    Remove(Vec<String>),
    Leave,
    /// `by` joins (a free group).
    Join,
}

/// A member change that passed the rules: who joins, who goes, and the system event recording it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberPlan {
    /// New members (role `member`), sorted, none already a member.
    pub add: Vec<String>,
    /// Members who go, sorted.
    pub remove: Vec<String>,
    /// `members_added`, `members_removed`, `member_left` or `member_joined`.
    pub event: &'static str,
}

/// Checks a member change by `by` (whose role is `role`) against the current `roles` and plans
/// it. Owners and admins add and remove; only the owner removes admins; nobody removes the owner,
/// who cannot leave; a group holds at most `max_members`.
pub fn plan_member_change(
    op: MemberOp,
    by: &str,
    role: Role,
    roles: &HashMap<Arc<str>, Role>,
    max_members: usize,
) -> Result<MemberPlan> {
    match op {
        MemberOp::Add(users) => {
            if !role.can_manage() {
                return Err(Error::forbidden("only the owner or admins may add members"));
            }
            let mut add: Vec<String> = users.into_iter().filter(|u| !roles.contains_key(u.as_str())).collect();
            add.sort();
            add.dedup();
            if roles.len() + add.len() > max_members {
                return Err(Error::invalid(format!("a group has at most {max_members} members")));
            }
            if add.is_empty() {
                return Err(Error::new(ErrorCode::Conflict, "every user given is already a member"));
            }
            Ok(MemberPlan { add, remove: Vec::new(), event: "members_added" })
        }
        MemberOp::Remove(users) => {
            if !role.can_manage() {
                return Err(Error::forbidden("only the owner or admins may remove members"));
            }
            let mut remove = Vec::new();
            for u in users {
                match roles.get(u.as_str()) {
                    None => {}
                    Some(Role::Owner) => return Err(Error::forbidden("the owner cannot be removed")),
                    Some(Role::Admin) if role != Role::Owner => {
                        return Err(Error::forbidden("only the owner may remove an admin"))
                    }
                    Some(_) => remove.push(u),
                }
            }
            remove.sort();
            remove.dedup();
            if remove.is_empty() {
                return Err(Error::not_found("none of the users given is a member"));
            }
            Ok(MemberPlan { add: Vec::new(), remove, event: "members_removed" })
        }
        MemberOp::Join => {
            if roles.contains_key(by) {
                return Err(Error::new(ErrorCode::Conflict, "you are a member already"));
            }
            if roles.len() >= max_members {
                return Err(Error::invalid(format!("a group has at most {max_members} members")));
            }
            Ok(MemberPlan { add: vec![by.to_owned()], remove: Vec::new(), event: "member_joined" })
        }
        MemberOp::Leave => {
            if role == Role::Owner {
                return Err(Error::new(ErrorCode::OwnerCannotLeave, "the owner cannot leave the group"));
            }
            Ok(MemberPlan { add: Vec::new(), remove: vec![by.to_owned()], event: "member_left" })
        }
    }
}

/// Owners and admins change a group's profile.
pub fn check_profile_change(role: Role) -> Result<()> {
    if !role.can_manage() {
        return Err(Error::forbidden("only the owner or admins may change the group's profile"));
    }
    Ok(())
}

/// The owner gives `user` (now `current`, `None` if not a member) the role `new`; `owner`
/// transfers the ownership and the previous owner becomes an admin. Returns the roles to set.
pub fn plan_role_change(
    by: &str,
    by_role: Role,
    user: &str,
    current: Option<Role>,
    new: Role,
) -> Result<Vec<(String, Role)>> {
    if by_role != Role::Owner {
        return Err(Error::forbidden("only the owner may change roles"));
    }
    let Some(current) = current else {
        return Err(Error::not_found(format!("{user} is not a member of the group")));
    };
    if user == by {
        return Err(Error::invalid("the owner's role changes only by transferring the ownership"));
    }
    if current == new {
        return Err(Error::new(ErrorCode::Conflict, format!("{user} already has this role")));
    }
    let mut roles = vec![(user.to_owned(), new)];
    if new == Role::Owner {
        roles.push((by.to_owned(), Role::Admin));
    }
    Ok(roles)
}

/// Checks that `by` (role `by_role`) may mute, unmute, ban or unban each of `users` (their
/// roles in `roles`, absent when not members): owners and admins may; nobody acts on the owner,
/// only the owner on admins, and nobody on themselves. `members_only`: every user must be a member
/// (mutes). Returns the users sorted and deduplicated.
pub fn check_moderation(
    by: &str,
    by_role: Role,
    users: &[String],
    roles: &HashMap<Arc<str>, Role>,
    members_only: bool,
) -> Result<Vec<String>> {
    if !by_role.can_manage() {
        return Err(Error::forbidden("only the owner or admins may mute or ban"));
    }
    let mut out: Vec<String> = users.to_vec();
    out.sort();
    out.dedup();
    for u in &out {
        if u == by {
            return Err(Error::invalid("you cannot mute or ban yourself"));
        }
        match roles.get(u.as_str()) {
            Some(Role::Owner) => return Err(Error::forbidden("the owner cannot be muted or banned")),
            Some(Role::Admin) if by_role != Role::Owner => {
                return Err(Error::forbidden("only the owner may mute or ban an admin"))
            }
            None if members_only => return Err(Error::not_found(format!("{u} is not a member of the group"))),
            _ => {}
        }
    }
    Ok(out)
}

/// A mute's end: in the future, at most [`crate::model::MAX_MUTE_MS`] from `now`.
pub fn check_mute_until(until: i64, now: i64) -> Result<()> {
    if until <= now || until - now > crate::model::MAX_MUTE_MS {
        return Err(Error::invalid("until must be a time (unix ms) in the future, at most a year away"));
    }
    Ok(())
}

/// Refuses a group message from a member with role `role` muted until `muted_until` (or by
/// `mute_all`, which spares the owner and admins), at `now`.
pub fn check_not_muted(role: Role, muted_until: Option<i64>, mute_all: bool, now: i64) -> Result<()> {
    match muted_until.filter(|&t| t > now) {
        Some(t) => Err(Error::new(ErrorCode::Muted, format!("you are muted in this group until {t}"))),
        None if mute_all && !role.can_manage() => {
            Err(Error::new(ErrorCode::Muted, "only the owner and admins may send in this group now"))
        }
        None => Ok(()),
    }
}

/// Only a group's owner and admins mention everyone (`mention_all`); in a one-to-one
/// conversation it is everyone there, and allowed.
pub fn check_mention_all(group: bool, role: Role) -> Result<()> {
    if group && !role.can_manage() {
        return Err(Error::new(ErrorCode::Forbidden, "only the owner and admins may mention everyone"));
    }
    Ok(())
}

/// Only the owner dismisses a group.
pub fn check_dismiss(role: Role) -> Result<()> {
    if role != Role::Owner {
        return Err(Error::forbidden("only the owner may dismiss the group"));
    }
    Ok(())
}

/// Who may recall `m`: its sender within `window`; in a group, its owner and admins at any time;
/// an administrator (`admin`, the HTTP API) any message at any time. `now` is server ms.
pub fn check_recall(m: &Message, by: &str, manager: bool, window: Duration, now: i64) -> Result<()> {
    if manager {
        return Ok(());
    }
    if m.sender.as_deref() != Some(by) {
        return Err(Error::forbidden("only the sender, or a group's owner or admins, may recall a message"));
    }
    if now.saturating_sub(m.ts) > window.as_millis() as i64 {
        return Err(Error::new(
            ErrorCode::RecallWindowExpired,
            format!("messages can be recalled by their sender for {} seconds", window.as_secs()),
        ));
    }
    Ok(())
}

/// The system events that change a group's membership, roles or mutes.
pub fn changes_membership(m: &Message) -> bool {
    matches!(&m.body, Body::System { event, .. } if matches!(event.as_str(),
        "members_added" | "members_removed" | "member_left" | "member_joined" | "roles_changed" | "group_dismissed"
        | "members_muted" | "members_unmuted" | "group_muted" | "group_unmuted" | "members_banned"
        | "members_unbanned"))
}

/// Whether other nodes' actors of the group must reload what they cache after `m`: a membership,
/// role or mute change, or a profile update that changed `join_mode` or `invite_mode`.
pub fn reloads_group(m: &Message) -> bool {
    changes_membership(m)
        || matches!(&m.body, Body::System { event, data } if event == "group_updated"
            && (data.get("join_mode").is_some() || data.get("invite_mode").is_some()))
}

// ---- the system messages that record group changes ----

/// `group_created`: `by`, the name, and the members (cut to [`proto::LIST_INLINE`]).
pub fn group_created(by: &str, name: &str, members: &[String]) -> Body {
    let mut data = serde_json::json!({ "by": by, "name": name });
    proto::put_list(&mut data, "members", members);
    Body::System { event: "group_created".into(), data }
}

/// A member change: `by`, the users `added` and `removed` (each cut to [`proto::LIST_INLINE`]).
pub fn members_changed(plan: &MemberPlan, by: &str) -> Body {
    let mut data = serde_json::json!({ "by": by });
    proto::put_list(&mut data, "added", &plan.add);
    proto::put_list(&mut data, "removed", &plan.remove);
    Body::System { event: plan.event.into(), data }
}

/// `group_updated`: the fields that changed, and `by`.
pub fn group_updated(patch: &GroupPatch, by: &str) -> Body {
    let mut data = serde_json::to_value(patch).unwrap_or_default();
    if let Some(fields) = data.as_object_mut() {
        fields.retain(|_, v| !v.is_null());
        fields.insert("by".into(), serde_json::Value::from(by));
    }
    Body::System { event: "group_updated".into(), data }
}

/// `roles_changed`: `by`, and each user's new role.
pub fn roles_changed(roles: &[(String, Role)], by: &str) -> Body {
    let listed: Vec<serde_json::Value> =
        roles.iter().map(|(u, r)| serde_json::json!({ "user": u, "role": r })).collect();
    Body::System { event: "roles_changed".into(), data: serde_json::json!({ "by": by, "roles": listed }) }
}

/// `members_muted` (`until`: unix ms) or `members_unmuted` (`until` `None`): `by` and the
/// users (cut to [`proto::LIST_INLINE`]).
pub fn members_muted(users: &[String], until: Option<i64>, by: &str) -> Body {
    let mut data = serde_json::json!({ "by": by });
    proto::put_list(&mut data, "users", users);
    let event = match until {
        Some(t) => {
            data["until"] = serde_json::Value::from(t);
            "members_muted"
        }
        None => "members_unmuted",
    };
    Body::System { event: event.into(), data }
}

/// `group_muted` (everyone but the owner and admins) or `group_unmuted`: `by`.
pub fn group_muted(on: bool, by: &str) -> Body {
    let event = if on { "group_muted" } else { "group_unmuted" };
    Body::System { event: event.into(), data: serde_json::json!({ "by": by }) }
}

/// `members_banned` (with `removed`: those of them who were members) or `members_unbanned`.
pub fn members_banned(users: &[String], removed: &[String], banned: bool, by: &str) -> Body {
    let mut data = serde_json::json!({ "by": by });
    proto::put_list(&mut data, "users", users);
    if banned {
        proto::put_list(&mut data, "removed", removed);
    }
    let event = if banned { "members_banned" } else { "members_unbanned" };
    Body::System { event: event.into(), data }
}

/// `group_dismissed`: `by`.
pub fn group_dismissed(by: &str) -> Body {
    Body::System { event: "group_dismissed".into(), data: serde_json::json!({ "by": by }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_sends_under_each_policy() {
        use WhoMayMessage::*;
        let staff = |u: &str| u == "ops";
        let verdict = |policy, sender: &str, recipient: &str, rel: &Relation, fresh| match check_direct_send(
            policy, staff, sender, recipient, rel, fresh,
        ) {
            DirectVerdict::Allow => "allow".to_owned(),
            DirectVerdict::Refuse(e) => e.code.as_str().to_owned(),
            DirectVerdict::LookUpGroups => "look".to_owned(),
        };
        let none = Relation::default();
        let friends = Relation { friends: true, ..Relation::default() };
        let blocked_by_b = Relation { friends: true, blocked_by: vec![Arc::from("b")], share_group: None };
        let grouped = Relation { share_group: Some(true), ..Relation::default() };
        let apart = Relation { share_group: Some(false), ..Relation::default() };
        assert_eq!(verdict(Open, "a", "b", &none, false), "allow");
        assert_eq!(verdict(Friends, "a", "b", &none, false), "not_friends");
        assert_eq!(verdict(Friends, "a", "b", &friends, false), "allow");
        // A block refuses whatever the policy; only the blocked side; staff pass either way.
        assert_eq!(verdict(Open, "a", "b", &blocked_by_b, false), "blocked");
        assert_eq!(verdict(Open, "b", "a", &blocked_by_b, false), "allow");
        assert_eq!(verdict(Friends, "a", "ops", &none, false), "allow");
        assert_eq!(verdict(Friends, "ops", "a", &blocked_by_b, false), "allow");
        assert_eq!(verdict(Friends, "a", "a", &none, false), "allow");
        // Groups: a stale "apart" is looked up again before refusing.
        assert_eq!(verdict(FriendsOrGroups, "a", "b", &grouped, false), "allow");
        assert_eq!(verdict(FriendsOrGroups, "a", "b", &apart, true), "not_friends");
        assert_eq!(verdict(FriendsOrGroups, "a", "b", &apart, false), "look");
        assert_eq!(verdict(FriendsOrGroups, "a", "b", &none, true), "look");
        assert_eq!(verdict(FriendsOrGroups, "a", "b", &friends, false), "allow");
    }

    fn roles(v: &[(&str, Role)]) -> HashMap<Arc<str>, Role> {
        v.iter().map(|(u, r)| (Arc::from(*u), *r)).collect()
    }

    fn group() -> HashMap<Arc<str>, Role> {
        roles(&[("own", Role::Owner), ("adm", Role::Admin), ("mem", Role::Member)])
    }

    fn users(v: &[&str]) -> Vec<String> {
        v.iter().map(|u| (*u).to_owned()).collect()
    }

    fn code(r: Result<impl std::fmt::Debug>) -> ErrorCode {
        r.expect_err("refused").code
    }

    #[test]
    fn adding_members() {
        let g = group();
        let plan = plan_member_change(MemberOp::Add(users(&["z", "mem", "a", "z"])), "adm", Role::Admin, &g, 10);
        assert_eq!(plan.unwrap(), MemberPlan { add: users(&["a", "z"]), remove: vec![], event: "members_added" });
        assert_eq!(
            code(plan_member_change(MemberOp::Add(users(&["a"])), "mem", Role::Member, &g, 10)),
            ErrorCode::Forbidden
        );
        assert_eq!(
            code(plan_member_change(MemberOp::Add(users(&["mem"])), "own", Role::Owner, &g, 10)),
            ErrorCode::Conflict
        );
        assert_eq!(
            code(plan_member_change(MemberOp::Add(users(&["a", "b"])), "own", Role::Owner, &g, 4)),
            ErrorCode::InvalidRequest,
            "over max_members"
        );
    }

    #[test]
    fn removing_and_leaving() {
        let g = group();
        let rm = |by: &str, role, who: &[&str]| plan_member_change(MemberOp::Remove(users(who)), by, role, &g, 10);
        assert_eq!(rm("adm", Role::Admin, &["mem", "nobody"]).unwrap().remove, users(&["mem"]));
        assert_eq!(code(rm("adm", Role::Admin, &["adm"])), ErrorCode::Forbidden, "only the owner removes admins");
        assert_eq!(rm("own", Role::Owner, &["adm"]).unwrap().remove, users(&["adm"]));
        assert_eq!(code(rm("own", Role::Owner, &["own"])), ErrorCode::Forbidden, "nobody removes the owner");
        assert_eq!(code(rm("mem", Role::Member, &["adm"])), ErrorCode::Forbidden);
        assert_eq!(code(rm("own", Role::Owner, &["nobody"])), ErrorCode::NotFound);
        let leave = plan_member_change(MemberOp::Leave, "mem", Role::Member, &g, 10).unwrap();
        assert_eq!((leave.remove, leave.event), (users(&["mem"]), "member_left"));
        assert_eq!(code(plan_member_change(MemberOp::Leave, "own", Role::Owner, &g, 10)), ErrorCode::OwnerCannotLeave);
    }

    #[test]
    fn roles_profile_and_dismissal() {
        assert_eq!(
            plan_role_change("own", Role::Owner, "mem", Some(Role::Member), Role::Owner).unwrap(),
            vec![("mem".to_owned(), Role::Owner), ("own".to_owned(), Role::Admin)],
            "a transfer makes the previous owner an admin"
        );
        assert_eq!(
            code(plan_role_change("adm", Role::Admin, "mem", Some(Role::Member), Role::Admin)),
            ErrorCode::Forbidden
        );
        assert_eq!(code(plan_role_change("own", Role::Owner, "x", None, Role::Admin)), ErrorCode::NotFound);
        assert_eq!(
            code(plan_role_change("own", Role::Owner, "own", Some(Role::Owner), Role::Admin)),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            code(plan_role_change("own", Role::Owner, "adm", Some(Role::Admin), Role::Admin)),
            ErrorCode::Conflict
        );
        assert!(check_profile_change(Role::Admin).is_ok());
        assert_eq!(check_profile_change(Role::Member).unwrap_err().code, ErrorCode::Forbidden);
        assert!(check_dismiss(Role::Owner).is_ok());
        assert_eq!(check_dismiss(Role::Admin).unwrap_err().code, ErrorCode::Forbidden);
    }

    fn message(body: Body) -> Message {
        Message {
            conv_id: "g_t".into(),
            seq: 1,
            sender: Some("alice".into()),
            client_msg_id: None,
            body,
            reply_to: None,
            ts: 1_000,
            ver: 1,
        }
    }

    #[test]
    fn recalls() {
        let m = message(Body::text("x"));
        let w = Duration::from_secs(120);
        assert!(check_recall(&m, "alice", false, w, 1_000 + 120_000).is_ok());
        assert_eq!(
            check_recall(&m, "alice", false, w, 1_000 + 120_001).unwrap_err().code,
            ErrorCode::RecallWindowExpired
        );
        assert_eq!(check_recall(&m, "bob", false, w, 1_001).unwrap_err().code, ErrorCode::Forbidden);
        assert!(check_recall(&m, "bob", true, w, i64::MAX).is_ok(), "managers recall anything, any time");
    }

    #[test]
    fn system_messages_name_their_change() {
        let plan = MemberPlan { add: users(&["a"]), remove: vec![], event: "members_added" };
        let Body::System { event, data } = members_changed(&plan, "own") else { panic!() };
        assert_eq!(
            (event.as_str(), data),
            ("members_added", serde_json::json!({"by": "own", "added": ["a"], "removed": []}))
        );
        let patch = GroupPatch { notice: Some("n".into()), ..GroupPatch::default() };
        let Body::System { data, .. } = group_updated(&patch, "adm") else { panic!() };
        assert_eq!(data, serde_json::json!({"notice": "n", "by": "adm"}));
        assert!(changes_membership(&message(group_dismissed("own"))));
        assert!(!changes_membership(&message(group_updated(&patch, "adm"))));
    }
}
