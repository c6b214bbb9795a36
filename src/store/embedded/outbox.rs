//! The webhook outbox of the embedded store.
//!
//! | table               | key                    | value            | used for                          |
//! |---------------------|------------------------|------------------|-----------------------------------|
//! | `outbox`            | `event id`             | `OutboxEvent` JSON | the events, by id               |
//! | `webhook_deliveries`| `(endpoint, event id)` | `Delivery` JSON  | state and attempt log             |
//! | `webhook_pending`   | `(endpoint, event id)` | `()`             | the pending deliveries, in order  |
//! | `webhook_meta`      | name                   | JSON             | `next_id`, `cursor:<endpoint>`, `lease:<name>` |
//!
//! Change events are written by the operation's closure, inside the writer's batch transaction.
//! The retention ([`trim`]) removes events and their deliveries through the writer too, in bounded
//! steps (`delivery_endpoints` finds the few endpoints with deliveries by seeking, so a step costs
//! a point lookup per examined event and endpoint, never a scan of the log).

use std::ops::Bound;

use confab_actors::outbox::{Delivery, DeliveryQuery, DeliveryState, NewEvent, OutboxEvent, Replay, Trim, Trimmed};
use confab_actors::store::StoreResult;
use redb::{ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::tables::{decode, encode, get_json, put_json, unavailable};

pub(crate) const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
pub(crate) const DELIVERIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("webhook_deliveries");
pub(super) const PENDING: TableDefinition<(&str, u64), ()> = TableDefinition::new("webhook_pending");
pub(crate) const WEBHOOK_META: TableDefinition<&str, &[u8]> = TableDefinition::new("webhook_meta");

const NEXT_ID: &str = "next_id";

/// Creates the tables (at open, so reads can always open them).
pub(super) fn create_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(OUTBOX).map_err(unavailable)?;
    txn.open_table(DELIVERIES).map_err(unavailable)?;
    txn.open_table(PENDING).map_err(unavailable)?;
    txn.open_table(WEBHOOK_META).map_err(unavailable)?;
    Ok(())
}

/// Appends an event in `txn`; returns its id.
pub(super) fn push(txn: &WriteTransaction, e: NewEvent) -> StoreResult<u64> {
    let mut meta = txn.open_table(WEBHOOK_META).map_err(unavailable)?;
    let id = get_json::<&str, u64>(&meta, NEXT_ID)?.unwrap_or(0) + 1;
    put_json(&mut meta, NEXT_ID, &id)?;
    let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
    let bytes = encode(&e.with_id(id))?;
    outbox.insert(id, bytes.as_slice()).map_err(unavailable)?;
    Ok(id)
}

pub(super) fn events_after(txn: &ReadTransaction, after: u64, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
    let t = txn.open_table(OUTBOX).map_err(unavailable)?;
    let mut out = Vec::new();
    for row in t.range((after.saturating_add(1))..).map_err(unavailable)?.take(limit) {
        let (_, v) = row.map_err(unavailable)?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

pub(super) fn event(txn: &ReadTransaction, id: u64) -> StoreResult<Option<OutboxEvent>> {
    let t = txn.open_table(OUTBOX).map_err(unavailable)?;
    let v = t.get(id).map_err(unavailable)?;
    v.map(|g| decode(g.value())).transpose()
}

#[derive(Serialize, Deserialize)]
struct Lease {
    owner: String,
    until: i64,
}

pub(super) fn lease(txn: &WriteTransaction, name: &str, owner: &str, now: i64, ttl: i64) -> StoreResult<bool> {
    let mut meta = txn.open_table(WEBHOOK_META).map_err(unavailable)?;
    let key = format!("lease:{name}");
    if let Some(l) = get_json::<&str, Lease>(&meta, key.as_str())? {
        if l.owner != owner && l.until > now {
            return Ok(false);
        }
    }
    put_json(&mut meta, key.as_str(), &Lease { owner: owner.to_owned(), until: now + ttl })?;
    Ok(true)
}

pub(super) fn cursor(txn: &ReadTransaction, endpoint: &str) -> StoreResult<u64> {
    let meta = txn.open_table(WEBHOOK_META).map_err(unavailable)?;
    Ok(get_json::<&str, u64>(&meta, format!("cursor:{endpoint}").as_str())?.unwrap_or(0))
}

pub(super) fn enqueue(txn: &WriteTransaction, endpoint: &str, ids: &[u64], cursor: u64) -> StoreResult<()> {
    let mut deliveries = txn.open_table(DELIVERIES).map_err(unavailable)?;
    let mut pending = txn.open_table(PENDING).map_err(unavailable)?;
    for &id in ids {
        if deliveries.get((endpoint, id)).map_err(unavailable)?.is_some() {
            continue;
        }
        put_json(&mut deliveries, (endpoint, id), &Delivery::new(endpoint, id))?;
        pending.insert((endpoint, id), ()).map_err(unavailable)?;
    }
    let mut meta = txn.open_table(WEBHOOK_META).map_err(unavailable)?;
    let key = format!("cursor:{endpoint}");
    let old = get_json::<&str, u64>(&meta, key.as_str())?.unwrap_or(0);
    if cursor > old {
        put_json(&mut meta, key.as_str(), &cursor)?;
    }
    Ok(())
}

pub(super) fn pending(
    txn: &ReadTransaction,
    endpoint: &str,
    limit: usize,
) -> StoreResult<Vec<(Delivery, OutboxEvent)>> {
    let p = txn.open_table(PENDING).map_err(unavailable)?;
    let d = txn.open_table(DELIVERIES).map_err(unavailable)?;
    let o = txn.open_table(OUTBOX).map_err(unavailable)?;
    let mut out = Vec::new();
    for row in p.range((endpoint, 0)..=(endpoint, u64::MAX)).map_err(unavailable)?.take(limit) {
        let (k, _) = row.map_err(unavailable)?;
        let (_, id) = k.value();
        let (Some(delivery), Some(event)) = (get_json::<(&str, u64), Delivery>(&d, (endpoint, id))?, {
            let v = o.get(id).map_err(unavailable)?;
            v.map(|g| decode::<OutboxEvent>(g.value())).transpose()?
        }) else {
            continue;
        };
        out.push((delivery, event));
    }
    Ok(out)
}

pub(super) fn save_delivery(txn: &WriteTransaction, d: &Delivery) -> StoreResult<()> {
    let mut deliveries = txn.open_table(DELIVERIES).map_err(unavailable)?;
    let mut pending = txn.open_table(PENDING).map_err(unavailable)?;
    let key = (d.endpoint.as_str(), d.event_id);
    put_json(&mut deliveries, key, d)?;
    if d.state == DeliveryState::Pending {
        pending.insert(key, ()).map_err(unavailable)?;
    } else {
        pending.remove(key).map_err(unavailable)?;
    }
    Ok(())
}

/// Every delivery row, filtered; scans by endpoint then id.
fn scan(
    d: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    mut keep: impl FnMut(&Delivery) -> bool,
) -> StoreResult<Vec<Delivery>> {
    let mut out = Vec::new();
    for row in d.iter().map_err(unavailable)? {
        let (_, v) = row.map_err(unavailable)?;
        let delivery: Delivery = decode(v.value())?;
        if keep(&delivery) {
            out.push(delivery);
        }
    }
    Ok(out)
}

pub(super) fn deliveries(txn: &ReadTransaction, q: &DeliveryQuery) -> StoreResult<Vec<Delivery>> {
    let d = txn.open_table(DELIVERIES).map_err(unavailable)?;
    let mut out = scan(&d, |x| {
        x.event_id > q.after_id
            && q.endpoint.as_deref().is_none_or(|e| e == x.endpoint)
            && q.state.is_none_or(|s| s == x.state)
    })?;
    out.sort_by(|a, b| (a.event_id, &a.endpoint).cmp(&(b.event_id, &b.endpoint)));
    out.truncate(q.limit);
    Ok(out)
}

pub(super) fn event_deliveries(txn: &ReadTransaction, id: u64) -> StoreResult<Vec<Delivery>> {
    let d = txn.open_table(DELIVERIES).map_err(unavailable)?;
    scan(&d, |x| x.event_id == id)
}

pub(super) fn replay(txn: &WriteTransaction, r: &Replay) -> StoreResult<u64> {
    let matching = {
        let d = txn.open_table(DELIVERIES).map_err(unavailable)?;
        scan(&d, |x| {
            (r.from_id..=r.to_id).contains(&x.event_id)
                && r.endpoint.as_deref().is_none_or(|e| e == x.endpoint)
                && (!r.only_failed || x.state == DeliveryState::Failed)
        })?
    };
    let n = matching.len() as u64;
    for mut d in matching {
        d.requeue();
        save_delivery(txn, &d)?;
    }
    Ok(n)
}

/// The endpoints that have deliveries, each found by one seek past the previous one's keys.
fn delivery_endpoints(d: &impl ReadableTable<(&'static str, u64), &'static [u8]>) -> StoreResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let next = match out.last() {
            None => d.first().map_err(unavailable)?.map(|(k, _)| k.value().0.to_owned()),
            Some(last) => {
                let from: (&str, u64) = (last.as_str(), u64::MAX);
                let mut rows =
                    d.range::<(&str, u64)>((Bound::Excluded(from), Bound::Unbounded)).map_err(unavailable)?;
                match rows.next() {
                    Some(row) => Some(row.map_err(unavailable)?.0.value().0.to_owned()),
                    None => None,
                }
            }
        };
        match next {
            Some(ep) => out.push(ep),
            None => return Ok(out),
        }
    }
}

/// One bounded step of the retention, in the writer's transaction (the rule is on [`Trim`]).
pub(super) fn trim(txn: &WriteTransaction, t: &Trim) -> StoreResult<Trimmed> {
    let mut done = Trimmed::default();
    // The lowest cursor of the configured endpoints: events after it are not queued everywhere.
    let mut upto = u64::MAX;
    {
        let meta = txn.open_table(WEBHOOK_META).map_err(unavailable)?;
        for ep in &t.endpoints {
            let c = get_json::<&str, u64>(&meta, format!("cursor:{ep}").as_str())?.unwrap_or(0);
            upto = upto.min(c);
        }
    }
    let mut candidates = Vec::new();
    {
        let outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
        for row in outbox.range(t.after.saturating_add(1)..).map_err(unavailable)?.take(t.limit) {
            let (k, v) = row.map_err(unavailable)?;
            let id = k.value();
            if id > upto {
                break;
            }
            let e: OutboxEvent = decode(v.value())?;
            if e.ts >= t.before_ts {
                break;
            }
            done.examined += 1;
            done.last_id = id;
            candidates.push(id);
        }
    }
    if candidates.is_empty() {
        return Ok(done);
    }
    let mut deliveries = txn.open_table(DELIVERIES).map_err(unavailable)?;
    let mut pending = txn.open_table(PENDING).map_err(unavailable)?;
    let mut outbox = txn.open_table(OUTBOX).map_err(unavailable)?;
    let endpoints = delivery_endpoints(&deliveries)?;
    'events: for id in candidates {
        let mut keys = Vec::new();
        for ep in &endpoints {
            if let Some(d) = get_json::<(&str, u64), Delivery>(&deliveries, (ep.as_str(), id))? {
                // Still pending somewhere (or touched recently): the event and its log stay.
                if !t.done_with(&d) {
                    continue 'events;
                }
                keys.push(ep.as_str());
            }
        }
        for ep in keys {
            deliveries.remove((ep, id)).map_err(unavailable)?;
            pending.remove((ep, id)).map_err(unavailable)?;
            done.deliveries += 1;
        }
        outbox.remove(id).map_err(unavailable)?;
        done.events += 1;
    }
    Ok(done)
}

#[async_trait::async_trait]
impl confab_actors::outbox::Outbox for super::EmbeddedStore {
    fn enable(&self) {
        self.outbox.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    async fn push_event(&self, event: NewEvent) -> StoreResult<u64> {
        self.write(move |txn| push(txn, event)).await
    }

    async fn events_after(&self, after: u64, limit: usize) -> StoreResult<Vec<OutboxEvent>> {
        self.read(move |txn| events_after(txn, after, limit)).await
    }

    async fn event(&self, id: u64) -> StoreResult<Option<OutboxEvent>> {
        self.read(move |txn| event(txn, id)).await
    }

    async fn lease(&self, name: &str, owner: &str, now_ms: i64, ttl_ms: i64) -> StoreResult<bool> {
        let (name, owner) = (name.to_owned(), owner.to_owned());
        self.write(move |txn| lease(txn, &name, &owner, now_ms, ttl_ms)).await
    }

    async fn cursor(&self, endpoint: &str) -> StoreResult<u64> {
        let endpoint = endpoint.to_owned();
        self.read(move |txn| cursor(txn, &endpoint)).await
    }

    async fn enqueue(&self, endpoint: &str, event_ids: &[u64], cursor: u64) -> StoreResult<()> {
        let (endpoint, ids) = (endpoint.to_owned(), event_ids.to_vec());
        self.write(move |txn| enqueue(txn, &endpoint, &ids, cursor)).await
    }

    async fn pending(&self, endpoint: &str, limit: usize) -> StoreResult<Vec<(Delivery, OutboxEvent)>> {
        let endpoint = endpoint.to_owned();
        self.read(move |txn| pending(txn, &endpoint, limit)).await
    }

    async fn save_delivery(&self, d: &Delivery) -> StoreResult<()> {
        let d = d.clone();
        self.write(move |txn| save_delivery(txn, &d)).await
    }

    async fn deliveries(&self, q: &DeliveryQuery) -> StoreResult<Vec<Delivery>> {
        let q = q.clone();
        self.read(move |txn| deliveries(txn, &q)).await
    }

    async fn event_deliveries(&self, event_id: u64) -> StoreResult<Vec<Delivery>> {
        self.read(move |txn| event_deliveries(txn, event_id)).await
    }

    async fn replay(&self, r: &Replay) -> StoreResult<u64> {
        let r = r.clone();
        self.write(move |txn| replay(txn, &r)).await
    }

    async fn trim(&self, t: &Trim) -> StoreResult<Trimmed> {
        let t = t.clone();
        self.write(move |txn| trim(txn, &t)).await
    }
}
