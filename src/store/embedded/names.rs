//! Search by name: `user_names` and `group_names` hold `(name key, id)` for every user with a
//! nickname and every group ([`name_key`]), kept in the transaction that writes the record, so a
//! search reads a prefix range of the key instead of every record.

use confab_actors::model::{name_key, name_prefix_end};
use confab_actors::store::StoreResult;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;

use super::tables::{decode, unavailable, GROUPS, GROUP_NAMES, META, USERS, USER_NAMES};

/// Set in `meta` once the records stored before the indexes existed are indexed.
const NAMES_INDEXED_KEY: &str = "names_indexed";

type Names = TableDefinition<'static, (&'static str, &'static str), ()>;

/// Moves `id`'s entry from the `old` name to the `new` one (`None`: no entry).
pub(super) fn reindex(
    txn: &WriteTransaction,
    names: Names,
    id: &str,
    old: Option<&str>,
    new: Option<&str>,
) -> StoreResult<()> {
    let (old, new) = (old.map(name_key), new.map(name_key));
    if old == new {
        return Ok(());
    }
    let mut table = txn.open_table(names).map_err(unavailable)?;
    if let Some(old) = &old {
        table.remove((old.as_str(), id)).map_err(unavailable)?;
    }
    if let Some(new) = &new {
        table.insert((new.as_str(), id), ()).map_err(unavailable)?;
    }
    Ok(())
}

/// Indexes the users and groups stored before the name indexes existed (once).
pub(super) fn index_names(txn: &WriteTransaction) -> StoreResult<()> {
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    if meta.get(NAMES_INDEXED_KEY).map_err(unavailable)?.is_some() {
        return Ok(());
    }
    let mut n = 0u64;
    {
        let users = txn.open_table(USERS).map_err(unavailable)?;
        let mut names = txn.open_table(USER_NAMES).map_err(unavailable)?;
        for item in users.iter().map_err(unavailable)? {
            let (k, v) = item.map_err(unavailable)?;
            let u: confab_actors::model::User = decode(v.value())?;
            if let Some(nick) = &u.nickname {
                names.insert((name_key(nick).as_str(), k.value()), ()).map_err(unavailable)?;
                n += 1;
            }
        }
        let groups = txn.open_table(GROUPS).map_err(unavailable)?;
        let mut names = txn.open_table(GROUP_NAMES).map_err(unavailable)?;
        for item in groups.iter().map_err(unavailable)? {
            let (k, v) = item.map_err(unavailable)?;
            let g: confab_actors::model::Group = decode(v.value())?;
            names.insert((name_key(&g.name).as_str(), k.value()), ()).map_err(unavailable)?;
            n += 1;
        }
    }
    meta.insert(NAMES_INDEXED_KEY, 1).map_err(unavailable)?;
    if n > 0 {
        tracing::info!(names = n, "indexed the names of the users and groups stored before this version");
    }
    Ok(())
}

/// The records whose name key starts with `key` (already a [`name_key`]), by key then id, that
/// `keep` keeps, at most `limit`.
pub(super) fn search<T: DeserializeOwned>(
    txn: &ReadTransaction,
    names: Names,
    records: TableDefinition<'static, &'static str, &'static [u8]>,
    key: &str,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> StoreResult<Vec<T>> {
    let names = txn.open_table(names).map_err(unavailable)?;
    let records = txn.open_table(records).map_err(unavailable)?;
    let end = name_prefix_end(key);
    let mut out = Vec::new();
    for item in names.range((key, "")..).map_err(unavailable)? {
        let (k, _) = item.map_err(unavailable)?;
        let (name, id) = k.value();
        if end.as_deref().is_some_and(|end| name >= end) || !name.starts_with(key) {
            break;
        }
        if let Some(v) = records.get(id).map_err(unavailable)? {
            let record: T = decode(v.value())?;
            if keep(&record) {
                out.push(record);
                if out.len() >= limit {
                    break;
                }
            }
        }
    }
    Ok(out)
}
