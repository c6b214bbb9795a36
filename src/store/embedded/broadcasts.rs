//! Broadcasts: one JSON record per broadcast in `broadcasts` (a handful exist at a time).

use confab_actors::model::{Broadcast, BroadcastState};
use confab_actors::store::StoreResult;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};

use super::tables::{decode, get_json, put_json, unavailable, BROADCASTS};

pub(super) fn create(txn: &WriteTransaction, b: &Broadcast) -> StoreResult<Broadcast> {
    let mut table = txn.open_table(BROADCASTS).map_err(unavailable)?;
    if let Some(existing) = get_json::<&str, Broadcast>(&table, b.id.as_str())? {
        return Ok(existing);
    }
    put_json(&mut table, b.id.as_str(), b)?;
    Ok(b.clone())
}

pub(super) fn get(txn: &ReadTransaction, id: &str) -> StoreResult<Option<Broadcast>> {
    get_json(&txn.open_table(BROADCASTS).map_err(unavailable)?, id)
}

pub(super) fn save(txn: &WriteTransaction, b: &Broadcast) -> StoreResult<bool> {
    let mut table = txn.open_table(BROADCASTS).map_err(unavailable)?;
    match get_json::<&str, Broadcast>(&table, b.id.as_str())? {
        Some(stored) if stored.state == BroadcastState::Running => {
            put_json(&mut table, b.id.as_str(), b)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub(super) fn cancel(txn: &WriteTransaction, id: &str, ts: i64) -> StoreResult<Option<Broadcast>> {
    let mut table = txn.open_table(BROADCASTS).map_err(unavailable)?;
    let Some(mut b) = get_json::<&str, Broadcast>(&table, id)? else { return Ok(None) };
    if b.state == BroadcastState::Running {
        b.state = BroadcastState::Cancelled;
        b.updated_at = ts;
        b.finished_at = Some(ts);
        put_json(&mut table, id, &b)?;
    }
    Ok(Some(b))
}

pub(super) fn running(txn: &ReadTransaction) -> StoreResult<Vec<Broadcast>> {
    let table = txn.open_table(BROADCASTS).map_err(unavailable)?;
    let mut out: Vec<Broadcast> = Vec::new();
    for item in table.iter().map_err(unavailable)? {
        let (_, v) = item.map_err(unavailable)?;
        let b: Broadcast = decode(v.value())?;
        if b.state == BroadcastState::Running {
            out.push(b);
        }
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.id.cmp(&b.id)));
    Ok(out)
}
