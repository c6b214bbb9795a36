//! Group changes other than membership: profile updates, roles, mutes, dismissal; the ban list. Like every write
//! operation, each checks everything that can fail with a domain error before its first write.

use std::collections::HashMap;

use confab_actors::error::{ErrorCode, StoreError};
use confab_actors::model::{
    group_conv_id, Body, Conversation, Group, JoinRequest, Member, Message, NoticeConfirmation, UserConvState,
};
use confab_actors::store::{
    group_conversation, live_group, GroupDismiss, GroupUpdate, MuteChange, RoleChange, StoreResult,
};
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use super::tables::{
    decode, get_json, next_ver, put_json, unavailable, CONVS, GROUPS, GROUP_BANS, GROUP_NAMES, GROUP_REQUESTS, MEMBERS,
    MESSAGES, META, NOTICE_CONFIRMATIONS, USER_CONVS,
};

/// The group (not dismissed) and its conversation, or the domain error.
fn load(txn: &WriteTransaction, group_id: &str) -> StoreResult<(Group, Conversation)> {
    let groups = txn.open_table(GROUPS).map_err(unavailable)?;
    let group = live_group(get_json(&groups, group_id)?, group_id)?;
    let convs = txn.open_table(CONVS).map_err(unavailable)?;
    let conv = group_conversation(get_json(&convs, group_conv_id(group_id).as_str())?, group_id)?;
    Ok((group, conv))
}

/// Appends the system message at the next seq and saves the conversation and the group.
fn finish(
    txn: &WriteTransaction,
    group: Group,
    mut conv: Conversation,
    body: Body,
    ts: i64,
    ver: u64,
) -> StoreResult<(Group, Message)> {
    let seq = conv.last_seq + 1;
    let message = Message::system(conv.conv_id.clone(), seq, body, ts, ver);
    let mut messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    put_json(&mut messages, (conv.conv_id.as_str(), seq), &message)?;
    conv.last_seq = seq;
    conv.ver = ver;
    let mut convs = txn.open_table(CONVS).map_err(unavailable)?;
    put_json(&mut convs, conv.conv_id.as_str(), &conv)?;
    let mut groups = txn.open_table(GROUPS).map_err(unavailable)?;
    let old: Option<Group> = get_json(&groups, group.id.as_str())?;
    put_json(&mut groups, group.id.as_str(), &group)?;
    drop(groups);
    let old_name = old.map(|g| g.name);
    super::names::reindex(txn, GROUP_NAMES, &group.id, old_name.as_deref(), Some(&group.name))?;
    Ok((group, message))
}

pub(super) fn update_group(txn: &WriteTransaction, u: GroupUpdate) -> StoreResult<(Group, Message)> {
    let (mut group, conv) = load(txn, &u.group_id)?;
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let ver = next_ver(&mut meta)?;
    u.patch.apply(&mut group, u.ts);
    finish(txn, group, conv, u.system_body, u.ts, ver)
}

pub(super) fn set_roles(txn: &WriteTransaction, c: RoleChange) -> StoreResult<(Group, Message)> {
    let (mut group, conv) = load(txn, &c.group_id)?;
    let gid = c.group_id.as_str();
    let mut members = txn.open_table(MEMBERS).map_err(unavailable)?;
    // The members the change names, as stored.
    let mut named = HashMap::new();
    for (user, _) in &c.roles {
        if let Some(m) = get_json::<_, Member>(&members, (gid, user.as_str()))? {
            named.insert(user.clone(), m);
        }
    }
    let changed = c.apply(&mut group, &named)?;
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let ver = next_ver(&mut meta)?;
    for m in &changed {
        put_json(&mut members, (gid, m.user_id.as_str()), m)?;
    }
    drop(members);
    finish(txn, group, conv, c.system_body, c.ts, ver)
}

pub(super) fn mute_members(txn: &WriteTransaction, c: MuteChange) -> StoreResult<(Group, Message)> {
    let (mut group, conv) = load(txn, &c.group_id)?;
    let gid = c.group_id.as_str();
    let mut members = txn.open_table(MEMBERS).map_err(unavailable)?;
    let mut changed = Vec::with_capacity(c.mutes.len());
    for (user, until) in &c.mutes {
        let Some(mut m) = get_json::<_, Member>(&members, (gid, user.as_str()))? else {
            return Err(StoreError::NotFound(format!("{user} is not a member")));
        };
        m.muted_until = *until;
        changed.push(m);
    }
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let ver = next_ver(&mut meta)?;
    for m in &changed {
        put_json(&mut members, (gid, m.user_id.as_str()), m)?;
    }
    drop(members);
    if let Some(all) = c.all {
        group.mute_all = all;
    }
    finish(txn, group, conv, c.system_body, c.ts, ver)
}

/// The JSON values of a `(group_id, user)` table for one group (bans, requests, confirmations).
pub(super) fn of_group<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    table: TableDefinition<(&'static str, &'static str), &'static [u8]>,
    group_id: &str,
) -> StoreResult<Vec<T>> {
    let table = txn.open_table(table).map_err(unavailable)?;
    let mut out = Vec::new();
    for item in table.range((group_id, "")..).map_err(unavailable)? {
        let (k, v) = item.map_err(unavailable)?;
        if k.value().0 != group_id {
            break;
        }
        out.push(decode(v.value())?);
    }
    Ok(out)
}

/// Records pending requests; refused when a user is banned or the group is not live.
pub(super) fn put_requests(txn: &WriteTransaction, group_id: &str, requests: &[JoinRequest]) -> StoreResult<()> {
    load(txn, group_id)?;
    let bans = txn.open_table(GROUP_BANS).map_err(unavailable)?;
    for r in requests {
        if bans.get((group_id, r.user_id.as_str())).map_err(unavailable)?.is_some() {
            return Err(StoreError::Refused(ErrorCode::Banned, format!("{} is banned from this group", r.user_id)));
        }
    }
    let mut table = txn.open_table(GROUP_REQUESTS).map_err(unavailable)?;
    for r in requests {
        put_json(&mut table, (group_id, r.user_id.as_str()), r)?;
    }
    Ok(())
}

pub(super) fn remove_request(txn: &WriteTransaction, group_id: &str, user: &str) -> StoreResult<Option<JoinRequest>> {
    let mut table = txn.open_table(GROUP_REQUESTS).map_err(unavailable)?;
    let removed = table.remove((group_id, user)).map_err(unavailable)?.map(|v| decode(v.value())).transpose()?;
    Ok(removed)
}

pub(super) fn confirm_notice(txn: &WriteTransaction, group_id: &str, c: &NoticeConfirmation) -> StoreResult<()> {
    let mut table = txn.open_table(NOTICE_CONFIRMATIONS).map_err(unavailable)?;
    put_json(&mut table, (group_id, c.user_id.as_str()), c)
}

pub(super) fn dismiss_group(txn: &WriteTransaction, d: GroupDismiss) -> StoreResult<(Group, Message)> {
    let (mut group, conv) = load(txn, &d.group_id)?;
    let gid = d.group_id.as_str();
    let conv_key = conv.conv_id.clone();
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let ver = next_ver(&mut meta)?;
    let mut members = txn.open_table(MEMBERS).map_err(unavailable)?;
    let mut users: Vec<String> = Vec::new();
    for item in members.range((gid, "")..).map_err(unavailable)? {
        let (k, v) = item.map_err(unavailable)?;
        if k.value().0 != gid {
            break;
        }
        let m: Member = decode(v.value())?;
        users.push(m.user_id);
    }
    let mut rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    for user in &users {
        members.remove((gid, user.as_str())).map_err(unavailable)?;
        let row: Option<UserConvState> = get_json(&rows, (user.as_str(), conv_key.as_str()))?;
        if let Some(mut state) = row {
            // `finish` stores the dismissal as the next message.
            if state.leave(conv.last_seq + 1, ver) {
                put_json(&mut rows, (user.as_str(), conv_key.as_str()), &state)?;
            }
        }
    }
    drop(members);
    drop(rows);
    group.dismissed = true;
    group.member_count = 0;
    finish(txn, group, conv, d.system_body, d.ts, ver)
}
