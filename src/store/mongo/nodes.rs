//! This node's document in `nodes` and the watermark every sync read stays at or below: the
//! half of the version scheme that talks to MongoDB (`clock` has the scheme and the clock).

use std::time::{Duration, Instant};

use confab_actors::clock::now_ms;
use confab_actors::store::StoreResult;
use futures_util::TryStreamExt;
use mongodb::bson::doc;
use mongodb::ClientSession;
use serde::{Deserialize, Serialize};

use super::conn::Conn;
use super::docs::{i, u};

/// The collection of node documents.
pub(crate) const NODES: &str = "nodes";
/// `_id` of the floor document in [`NODES`]: the highest `closed` of every node evicted or stopped.
const FLOOR_ID: &str = "~floor";
/// How long a node's document counts without being renewed.
pub(crate) const LEASE_MS: i64 = 5_000;
/// How often an idle node renews its lease when nothing else makes it write its document.
const RENEW_EVERY_MS: i64 = LEASE_MS / 5;
/// How long a sync read waits for the watermark to pass what it found before it leaves out the
/// newer part (which the next read returns).
pub(crate) const READ_WAIT: Duration = Duration::from_millis(250);

#[derive(Debug, Serialize, Deserialize)]
struct NodeDoc {
    #[serde(rename = "_id")]
    id: String,
    closed: i64,
    /// Lease end (this node's clock, ms since the epoch); absent on the floor document.
    until: Option<i64>,
}

/// The lease end of a renewal made now.
pub(crate) fn lease_until() -> i64 {
    now_ms().saturating_add(LEASE_MS)
}

/// What the node documents say.
struct Nodes {
    /// `min(closed)` over the live nodes; the floor when there is none.
    watermark: u64,
    /// The highest `closed` of all, the floor included.
    highest: u64,
}

async fn read_nodes(conn: &Conn, session: Option<&mut ClientSession>) -> StoreResult<Vec<NodeDoc>> {
    let coll = conn.coll::<NodeDoc>(NODES);
    let find = coll.find(doc! {});
    let failed = |e| conn.fail("find in nodes", &e);
    match session {
        None => find.await.map_err(failed)?.try_collect().await.map_err(failed),
        Some(s) => {
            let mut cursor = find.session(&mut *s).await.map_err(failed)?;
            cursor.stream(s).try_collect().await.map_err(failed)
        }
    }
}

/// Reads the node documents, evicting those whose lease ran out (their `closed` goes to the floor
/// first, then the document is deleted if it was not renewed meanwhile).
async fn nodes(conn: &Conn, session: Option<&mut ClientSession>) -> StoreResult<Nodes> {
    let docs = read_nodes(conn, session).await?;
    let now = now_ms();
    let (mut floor, mut highest, mut watermark) = (0_u64, 0_u64, u64::MAX);
    for d in &docs {
        let closed = u(d.closed)?;
        highest = highest.max(closed);
        match d.until {
            None => floor = floor.max(closed),
            Some(until) if until < now && d.id != conn.clock.id() => {
                if !evict(conn, d).await? {
                    watermark = watermark.min(closed);
                }
            }
            Some(_) => watermark = watermark.min(closed),
        }
    }
    Ok(Nodes { watermark: if watermark == u64::MAX { floor } else { watermark }, highest })
}

/// Evicts a node whose lease ran out. `true` when its document is gone (it may be left out).
async fn evict(conn: &Conn, d: &NodeDoc) -> StoreResult<bool> {
    raise_floor(conn, u(d.closed)?).await?;
    let r = conn
        .coll::<NodeDoc>(NODES)
        .delete_one(doc! { "_id": &d.id, "until": d.until })
        .await
        .map_err(|e| conn.fail("evicting a node", &e))?;
    if r.deleted_count == 1 {
        tracing::warn!(node = %d.id, "evicted a store node whose lease ran out");
        return Ok(true);
    }
    // Renewed meanwhile (alive after all) or evicted by someone else: look again.
    let still = conn
        .coll::<NodeDoc>(NODES)
        .find_one(doc! { "_id": &d.id })
        .await
        .map_err(|e| conn.fail("find in nodes", &e))?;
    Ok(still.is_none())
}

/// Raises the floor to at least `v`.
pub(crate) async fn raise_floor(conn: &Conn, v: u64) -> StoreResult<()> {
    conn.coll::<NodeDoc>(NODES)
        .update_one(doc! { "_id": FLOOR_ID }, doc! { "$max": { "closed": i(v)? } })
        .upsert(true)
        .await
        .map_err(|e| conn.fail("raising the version floor", &e))?;
    Ok(())
}

/// Registers this node (again): inserts its document, then moves its clock past every `closed`
/// and the floor, read after the insert.
pub(crate) async fn register(conn: &Conn) -> StoreResult<()> {
    let before = nodes(conn, None).await?;
    conn.clock.observe(before.highest);
    let closed = conn.clock.last();
    conn.coll::<NodeDoc>(NODES)
        .update_one(doc! { "_id": conn.clock.id() }, doc! { "$set": { "closed": i(closed)?, "until": lease_until() } })
        .upsert(true)
        .await
        .map_err(|e| conn.fail("registering the node", &e))?;
    conn.clock.published(closed);
    let after = nodes(conn, None).await?;
    conn.clock.observe(after.highest);
    conn.clock.registered();
    tracing::debug!(node = conn.clock.id(), "store node registered");
    Ok(())
}

/// Work of the writer every `clock::HEARTBEAT`: reads the others' `closed` and moves its clock
/// past them. An idle one (`busy` false; a busy one's batches publish) then publishes the highest
/// `closed` seen when another node's passed its own (it would hold the watermark back), and renews
/// its lease every [`RENEW_EVERY_MS`]: idle nodes write once a second, not at every beat.
pub(crate) async fn heartbeat(conn: &Conn, busy: bool) -> StoreResult<()> {
    if !conn.is_ready() {
        return Ok(());
    }
    if !conn.clock.is_registered() {
        return register(conn).await;
    }
    let seen = nodes(conn, None).await?;
    conn.clock.observe(seen.highest);
    if busy || !conn.clock.must_publish(seen.highest, RENEW_EVERY_MS) {
        return Ok(());
    }
    // The highest `closed` seen (the clock is past it): every node then holds the same value, and
    // no node writes again until one commits something.
    let closed = conn.clock.last();
    let r = conn
        .coll::<NodeDoc>(NODES)
        .update_one(doc! { "_id": conn.clock.id() }, doc! { "$set": { "closed": i(closed)?, "until": lease_until() } })
        .await
        .map_err(|e| conn.fail("renewing the node lease", &e))?;
    if r.matched_count == 0 {
        tracing::warn!(node = conn.clock.id(), "this store node was evicted (lease ran out); registering again");
        conn.clock.lost();
    } else {
        conn.clock.published(closed);
    }
    Ok(())
}

/// Leaves the cluster after the writer stopped: the node's `closed` goes to the floor and its
/// document is deleted, so it does not hold the watermark back until its lease runs out.
pub(crate) async fn unregister(conn: &Conn) -> StoreResult<()> {
    if !conn.clock.is_registered() {
        return Ok(());
    }
    conn.clock.lost();
    raise_floor(conn, conn.clock.last()).await?;
    conn.coll::<NodeDoc>(NODES)
        .delete_one(doc! { "_id": conn.clock.id() })
        .await
        .map_err(|e| conn.fail("unregistering the node", &e))?;
    Ok(())
}

/// A sync read under the watermark `W`. `W` is read first, in a causally consistent session the
/// read then uses: a node publishes its `closed` in the transaction that commits the versions
/// below it, so every version at or below `W` is visible to the read (read the other way round,
/// a change committed between the two could be below `W` and missing; outside one session, a
/// read after a failover could see less than the one before it). When the read found versions
/// above `W`, [`Watermarked::catch_up`] waits for `W` to pass them (for at most [`READ_WAIT`]) and
/// the read runs once more; the caller shows only what is at or below [`Watermarked::until`].
pub(crate) struct Watermarked {
    session: ClientSession,
    w: u64,
}

impl Watermarked {
    pub async fn begin(conn: &Conn) -> StoreResult<Watermarked> {
        let mut session = conn
            .client
            .start_session()
            .causal_consistency(true)
            .await
            .map_err(|e| conn.fail("starting a session", &e))?;
        let w = nodes(conn, Some(&mut session)).await?.watermark;
        Ok(Watermarked { session, w })
    }

    pub fn session(&mut self) -> &mut ClientSession {
        &mut self.session
    }

    pub fn until(&self) -> u64 {
        self.w
    }

    /// After a read that found `newest`: `true` when `W` was below it and has passed it now
    /// (read again); `false` when there is nothing to wait for, or it did not pass in time.
    pub async fn catch_up(&mut self, conn: &Conn, newest: Option<u64>) -> StoreResult<bool> {
        let Some(newest) = newest.filter(|&n| n > self.w) else { return Ok(false) };
        let start = Instant::now();
        loop {
            if start.elapsed() >= READ_WAIT {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            let w = nodes(conn, Some(&mut self.session)).await?.watermark;
            if w >= newest {
                self.w = w;
                return Ok(true);
            }
        }
    }
}
