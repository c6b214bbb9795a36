//! Contacts: one JSON row per `(owner, peer)` in `contacts`, and `(owner, ver)` → `peer` in
//! `contacts_by_ver` so a user's changed rows are read in `ver` order (the `contacts` sync).

use confab_actors::model::Contact;
use confab_actors::store::{ContactChange, ContactPlan, StoreResult};
use redb::{ReadTransaction, WriteTransaction};

use super::tables::{get_json, next_ver, put_json, unavailable, CONTACTS, CONTACTS_BY_VER, MEMBERS, META, USER_CONVS};

/// Decides the change from both rows and writes the rows that changed under one new `ver`.
pub(super) fn change(txn: &WriteTransaction, c: &ContactChange) -> StoreResult<ContactPlan> {
    let mut rows = txn.open_table(CONTACTS).map_err(unavailable)?;
    let mine: Option<Contact> = get_json(&rows, (c.user.as_str(), c.peer.as_str()))?;
    let theirs: Option<Contact> = get_json(&rows, (c.peer.as_str(), c.user.as_str()))?;
    let old_vers = [mine.as_ref().map(|r| r.ver), theirs.as_ref().map(|r| r.ver)];
    // Decide first (a refusal writes nothing), then take the version.
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let ver = super::tables::current_ver(&mut meta)? + 1;
    let plan = c.plan(mine, theirs, ver)?;
    if !plan.changed {
        return Ok(plan);
    }
    next_ver(&mut meta)?;
    let mut by_ver = txn.open_table(CONTACTS_BY_VER).map_err(unavailable)?;
    for (row, old) in [(Some(&plan.user), old_vers[0]), (plan.peer.as_ref(), old_vers[1])] {
        let Some(row) = row.filter(|r| r.ver == ver) else { continue };
        if let Some(old) = old {
            by_ver.remove((row.owner.as_str(), old)).map_err(unavailable)?;
        }
        by_ver.insert((row.owner.as_str(), ver), row.user_id.as_str()).map_err(unavailable)?;
        put_json(&mut rows, (row.owner.as_str(), row.user_id.as_str()), row)?;
    }
    Ok(plan)
}

pub(super) fn contact(txn: &ReadTransaction, owner: &str, peer: &str) -> StoreResult<Option<Contact>> {
    let rows = txn.open_table(CONTACTS).map_err(unavailable)?;
    get_json(&rows, (owner, peer))
}

pub(super) fn list(txn: &ReadTransaction, owner: &str, since: u64, limit: usize) -> StoreResult<Vec<Contact>> {
    let rows = txn.open_table(CONTACTS).map_err(unavailable)?;
    let by_ver = txn.open_table(CONTACTS_BY_VER).map_err(unavailable)?;
    let mut out = Vec::new();
    if since == u64::MAX {
        return Ok(out);
    }
    for item in by_ver.range((owner, since + 1)..=(owner, u64::MAX)).map_err(unavailable)?.take(limit) {
        let (_, peer) = item.map_err(unavailable)?;
        if let Some(row) = get_json(&rows, (owner, peer.value()))? {
            out.push(row);
        }
    }
    Ok(out)
}

/// Walks `a`'s group conversations (its rows whose conversation is `g_…`) and looks `b` up among
/// each group's members.
pub(super) fn share_group(txn: &ReadTransaction, a: &str, b: &str) -> StoreResult<bool> {
    let rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let members = txn.open_table(MEMBERS).map_err(unavailable)?;
    for item in rows.range((a, "g_")..(a, "g`")).map_err(unavailable)? {
        let (k, _) = item.map_err(unavailable)?;
        let (_, conv_id) = k.value();
        let group_id = &conv_id[2..];
        if members.get((group_id, a)).map_err(unavailable)?.is_some()
            && members.get((group_id, b)).map_err(unavailable)?.is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `user`'s groups: their group conversations' rows, each checked against the group's members.
pub(super) fn groups_of(txn: &ReadTransaction, user: &str) -> StoreResult<Vec<(String, confab_actors::model::Member)>> {
    let rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let members = txn.open_table(MEMBERS).map_err(unavailable)?;
    let mut out = Vec::new();
    for item in rows.range((user, "g_")..(user, "g`")).map_err(unavailable)? {
        let (k, _) = item.map_err(unavailable)?;
        let group_id = &k.value().1[2..];
        if let Some(m) = get_json(&members, (group_id, user))? {
            out.push((group_id.to_owned(), m));
        }
    }
    Ok(out)
}
