//! Users: one JSON record per user in `users`, written through the writer thread like every
//! other change, read in a snapshot.

use confab_actors::model::{Group, User, UserPatch};
use confab_actors::store::{DayStats, Stats, StoreResult};
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::tables::{
    decode, get_json, message_day_key, put_json, unavailable, ACTIVE_USERS, DEVICE_REVOCATIONS, GROUPS, META, USERS,
    USER_NAMES,
};

fn put(txn: &WriteTransaction, id: &str, ts: i64, change: impl FnOnce(&mut User)) -> StoreResult<User> {
    let mut users = txn.open_table(USERS).map_err(unavailable)?;
    let mut user: User = get_json(&users, id)?.unwrap_or_else(|| User::new(id, ts));
    let old_name = user.nickname.clone();
    change(&mut user);
    user.updated_at = ts;
    put_json(&mut users, id, &user)?;
    super::names::reindex(txn, USER_NAMES, id, old_name.as_deref(), user.nickname.as_deref())?;
    Ok(user)
}

pub(super) fn upsert(txn: &WriteTransaction, p: UserPatch) -> StoreResult<User> {
    let (id, ts) = (p.id.clone(), p.ts);
    put(txn, &id, ts, |u| u.apply(&p))
}

pub(super) fn set_disabled(txn: &WriteTransaction, id: &str, disabled: bool, ts: i64) -> StoreResult<User> {
    put(txn, id, ts, |u| u.disabled = disabled)
}

pub(super) fn revoke_tokens(txn: &WriteTransaction, id: &str, before_ms: u64, ts: i64) -> StoreResult<User> {
    put(txn, id, ts, |u| u.revoke_tokens(before_ms))
}

pub(super) fn revoke_device(txn: &WriteTransaction, user: &str, device: &str, before_ms: u64) -> StoreResult<u64> {
    let mut table = txn.open_table(DEVICE_REVOCATIONS).map_err(unavailable)?;
    let old = table.get((user, device)).map_err(unavailable)?.map_or(0, |v| v.value());
    let bound = old.max(before_ms);
    table.insert((user, device), bound).map_err(unavailable)?;
    Ok(bound)
}

pub(super) fn device_revocations(txn: &ReadTransaction, users: &[String]) -> StoreResult<Vec<(String, String, u64)>> {
    let table = txn.open_table(DEVICE_REVOCATIONS).map_err(unavailable)?;
    let mut out = Vec::new();
    for user in users {
        for item in table.range((user.as_str(), "")..).map_err(unavailable)? {
            let (k, v) = item.map_err(unavailable)?;
            let (u, device) = k.value();
            if u != user {
                break;
            }
            out.push((u.to_owned(), device.to_owned(), v.value()));
        }
    }
    Ok(out)
}

pub(super) fn user(txn: &ReadTransaction, id: &str) -> StoreResult<Option<User>> {
    let users = txn.open_table(USERS).map_err(unavailable)?;
    get_json(&users, id)
}

pub(super) fn users(txn: &ReadTransaction, ids: &[String]) -> StoreResult<Vec<User>> {
    let table = txn.open_table(USERS).map_err(unavailable)?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(u) = get_json(&table, id.as_str())? {
            out.push(u);
        }
    }
    Ok(out)
}

/// A page of a table keyed by id: ids starting with `prefix`, after `after`, ascending.
pub(super) fn list<T: serde::de::DeserializeOwned>(
    txn: &ReadTransaction,
    table: redb::TableDefinition<&'static str, &'static [u8]>,
    prefix: &str,
    after: &str,
    limit: usize,
) -> StoreResult<Vec<T>> {
    let t = txn.open_table(table).map_err(unavailable)?;
    let end = confab_actors::store::prefix_end(prefix);
    let mut out = Vec::new();
    let start = if after >= prefix { after } else { prefix };
    for item in t.range(start..).map_err(unavailable)? {
        let (k, v) = item.map_err(unavailable)?;
        let id = k.value();
        if id == after {
            continue;
        }
        if end.as_deref().is_some_and(|e| id >= e) || !id.starts_with(prefix) || out.len() >= limit {
            break;
        }
        out.push(super::tables::decode(v.value())?);
    }
    Ok(out)
}

pub(super) fn record_active(txn: &WriteTransaction, day: u32, users: &[String]) -> StoreResult<()> {
    let mut table = txn.open_table(ACTIVE_USERS).map_err(unavailable)?;
    for user in users {
        table.insert((day, user.as_str()), ()).map_err(unavailable)?;
    }
    Ok(())
}

/// Users and live groups are counted by reading their tables (an operator's occasional request;
/// groups are decoded to leave the dismissed out); the daily counts are kept as they happen.
pub(super) fn stats(txn: &ReadTransaction, first_day: u32, last_day: u32) -> StoreResult<Stats> {
    let users = txn.open_table(USERS).map_err(unavailable)?.len().map_err(unavailable)?;
    let mut groups = 0;
    for item in txn.open_table(GROUPS).map_err(unavailable)?.iter().map_err(unavailable)? {
        let (_, v) = item.map_err(unavailable)?;
        let g: Group = decode(v.value())?;
        groups += u64::from(!g.dismissed);
    }
    let messages = txn.open_table(META).map_err(unavailable)?;
    let active = txn.open_table(ACTIVE_USERS).map_err(unavailable)?;
    let mut days = Vec::new();
    for day in first_day..=last_day {
        let n = messages.get(message_day_key(day).as_str()).map_err(unavailable)?.map_or(0, |v| v.value());
        let mut active_users = 0;
        for item in active.range((day, "")..).map_err(unavailable)? {
            let (k, _) = item.map_err(unavailable)?;
            if k.value().0 != day {
                break;
            }
            active_users += 1;
        }
        days.push(DayStats { day, messages: n, active_users });
    }
    Ok(Stats { users, groups, days })
}
