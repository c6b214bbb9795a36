//! Broadcasts: one message to every user of a segment, stored as a record and sent in the
//! background by one node of the cluster at a time (the holder of the lease `broadcasts`), at the
//! broadcast's rate, resuming from its cursor after a restart or on another node.

use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::*;
use crate::model::{Broadcast, BroadcastError, BroadcastState, Segment};
use crate::outbox::Outbox;

/// How long the runner's lease lasts without renewal (renewed every second while sending).
const LEASE_TTL_MS: i64 = 5_000;
/// How often the runner looks for work when idle, and renews its lease.
const IDLE: Duration = Duration::from_secs(1);
/// Each step sends what the rate allows per this long.
const STEP: Duration = Duration::from_millis(100);
/// Messages of one step in flight at once.
const PARALLEL: usize = 16;
/// Most recipients of one step.
const MAX_STEP: usize = 1_000;

/// A broadcast as the HTTP API asks for it.
#[derive(Debug, Clone)]
pub struct NewBroadcast {
    pub id: String,
    pub from: Option<String>,
    pub body: Body,
    pub segment: Segment,
    pub rate: u32,
}

impl Engine {
    /// Checks and stores a broadcast; the runner picks it up within a second. Idempotent by id:
    /// the same request again returns the stored broadcast, a different one is `conflict`.
    pub async fn broadcast_create(&self, b: NewBroadcast, max_rate: u32) -> Result<Broadcast> {
        model::validate_id("id", &b.id)?;
        if b.id.len() > model::MAX_BROADCAST_ID {
            return Err(Error::invalid(format!("id: at most {} characters", model::MAX_BROADCAST_ID)));
        }
        if !(1..=max_rate).contains(&b.rate) {
            return Err(Error::invalid(format!("rate must be 1 to {max_rate} (api.broadcast_max_rate)")));
        }
        if let Some(from) = &b.from {
            model::validate_id("from", from)?;
            self.check_access(from, None).await?;
        }
        b.body.validate_client(self.core.limits.max_text_chars)?;
        let segment = match b.segment {
            Segment::All => Segment::All,
            Segment::Prefix { prefix } => {
                model::validate_id("segment.prefix", &prefix)?;
                Segment::Prefix { prefix }
            }
            Segment::Users { mut users } => {
                if users.is_empty() || users.len() > model::MAX_SEGMENT_USERS {
                    return Err(Error::invalid(format!("segment.users: 1 to {} ids", model::MAX_SEGMENT_USERS)));
                }
                users.iter().try_for_each(|u| model::validate_id("segment.users[]", u))?;
                users.sort();
                users.dedup();
                Segment::Users { users }
            }
        };
        let now = crate::clock::now_ms();
        let new = Broadcast {
            id: b.id,
            from: b.from,
            body: b.body,
            segment,
            rate: b.rate,
            state: BroadcastState::Running,
            cursor: String::new(),
            sent: 0,
            failed: 0,
            errors: Vec::new(),
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let stored = self.core.store.create_broadcast(&new).await?;
        if !stored.same_request(&new) {
            return Err(Error::new(ErrorCode::Conflict, "a different broadcast has this id"));
        }
        Ok(stored)
    }

    pub async fn broadcast_get(&self, id: &str) -> Result<Broadcast> {
        model::validate_id("id", id)?;
        self.core.store.broadcast(id).await?.ok_or_else(|| Error::not_found("no such broadcast"))
    }

    /// Stops a running broadcast (at its next step); a finished one is returned as it is.
    pub async fn broadcast_cancel(&self, id: &str) -> Result<Broadcast> {
        model::validate_id("id", id)?;
        let b = self.core.store.cancel_broadcast(id, crate::clock::now_ms()).await?;
        b.ok_or_else(|| Error::not_found("no such broadcast"))
    }

    /// Runs broadcasts for as long as the node runs: while this node holds the lease
    /// `broadcasts` (`owner` names this process), sends the oldest running broadcast's messages.
    /// Messages come from `from` (a user, with the rules of their sends) or the system account
    /// `system_user`, each with a key derived from the broadcast and the recipient, so a step
    /// sent again (after a restart, or by another node) stores nothing twice.
    pub async fn run_broadcasts(self, outbox: Arc<dyn Outbox>, owner: String, system_user: String) {
        // A store that is down is logged when it goes and when it is back, not every second.
        let mut failing = false;
        loop {
            tokio::time::sleep(IDLE).await;
            // A read while there is nothing to send; the lease is taken only for work.
            let running = match self.core.store.running_broadcasts().await {
                Ok(r) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!("broadcasts: the store answers again");
                    }
                    r
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(error = %e, "broadcasts: could not read the running ones; trying every second");
                    }
                    continue;
                }
            };
            let Some(b) = running.into_iter().next() else { continue };
            match outbox.lease("broadcasts", &owner, crate::clock::now_ms(), LEASE_TTL_MS).await {
                Ok(true) => self.run_one(b, &*outbox, &owner, &system_user).await,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "broadcasts: could not take the lease"),
            }
        }
    }

    /// Sends `b` until it is done, cancelled, or this node loses the lease.
    async fn run_one(&self, mut b: Broadcast, outbox: &dyn Outbox, owner: &str, system_user: &str) {
        let id = b.id.clone();
        tracing::info!(broadcast = %id, cursor = %b.cursor, "broadcast: sending");
        let sender = Caller {
            user: Arc::from(b.from.as_deref().unwrap_or(system_user)),
            device: Arc::from("broadcast"),
            conn_id: None,
        };
        let mut ticker = tokio::time::interval(STEP);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewed = Instant::now();
        let mut budget = 0.0_f64;
        loop {
            ticker.tick().await;
            if renewed.elapsed() >= IDLE {
                match outbox.lease("broadcasts", owner, crate::clock::now_ms(), LEASE_TTL_MS).await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "broadcasts: could not renew the lease");
                        return;
                    }
                }
            }
            budget = (budget + f64::from(b.rate) * STEP.as_secs_f64()).min(MAX_STEP as f64);
            let n = budget.floor() as usize;
            if n == 0 {
                continue;
            }
            let recipients = match self.next_recipients(&b, n).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, broadcast = %id, "broadcasts: could not read recipients");
                    tokio::time::sleep(IDLE).await;
                    continue;
                }
            };
            budget -= recipients.len() as f64;
            let last_step = recipients.len() < n;
            let results: Vec<(String, Result<Message>)> = futures_util::stream::iter(recipients)
                .map(|to| {
                    let req = proto::SendReq {
                        conv_id: None,
                        to: Some(to.clone()),
                        client_msg_id: recipient_key(&b.id, &to),
                        body: Ok(b.body.clone()),
                        reply_to: None,
                    };
                    let sent = if b.from.is_some() {
                        futures_util::future::Either::Left(self.send(&sender, req, None))
                    } else {
                        let (engine, sender) = (self.clone(), sender.clone());
                        futures_util::future::Either::Right(
                            async move { engine.send_system_to_user(&sender, req).await },
                        )
                    };
                    async move { (to, sent.await) }
                })
                .buffered(PARALLEL)
                .collect()
                .await;
            // Progress stops before the first recipient the store could not take: it is tried
            // again next step (and those after it, whose re-sends are recognised and counted then).
            let mut unavailable = false;
            for (to, r) in results {
                match r {
                    Ok(_) => b.sent += 1,
                    Err(e) if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal) => {
                        unavailable = true;
                        break;
                    }
                    Err(e) => {
                        b.failed += 1;
                        if b.errors.len() < model::MAX_BROADCAST_ERRORS {
                            b.errors.push(BroadcastError { user_id: to.clone(), error: e.code.as_str().to_owned() });
                        }
                    }
                }
                b.cursor = to;
            }
            let now = crate::clock::now_ms();
            b.updated_at = now;
            if last_step && !unavailable {
                b.state = BroadcastState::Done;
                b.finished_at = Some(now);
            }
            match self.core.store.save_broadcast(&b).await {
                Ok(true) if b.state == BroadcastState::Done => {
                    tracing::info!(broadcast = %id, sent = b.sent, failed = b.failed, "broadcast: done");
                    return;
                }
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(broadcast = %id, "broadcast: cancelled");
                    return;
                }
                Err(e) => {
                    // Sent but not recorded: the next run re-sends from the last saved cursor
                    // (recognised, stored once).
                    tracing::warn!(error = %e, broadcast = %id, "broadcasts: could not save progress");
                    return;
                }
            }
            if unavailable {
                tokio::time::sleep(IDLE).await;
            }
        }
    }

    /// Up to `n` recipients after the broadcast's cursor, in id order.
    async fn next_recipients(&self, b: &Broadcast, n: usize) -> Result<Vec<String>> {
        Ok(match &b.segment {
            Segment::All => self.list_ids("", &b.cursor, n).await?,
            Segment::Prefix { prefix } => self.list_ids(prefix, &b.cursor, n).await?,
            Segment::Users { users } => {
                let start = users.partition_point(|u| u.as_str() <= b.cursor.as_str());
                users[start..].iter().take(n).cloned().collect()
            }
        })
    }

    async fn list_ids(&self, prefix: &str, after: &str, n: usize) -> Result<Vec<String>> {
        let mut out = Vec::with_capacity(n);
        let mut after = after.to_owned();
        while out.len() < n {
            let page = self.core.store.list_users(prefix, &after, (n - out.len()).min(model::MAX_PAGE)).await?;
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            let full = page.len() == (n - out.len()).min(model::MAX_PAGE);
            out.extend(page.into_iter().map(|u| u.id));
            if !full {
                break;
            }
        }
        Ok(out)
    }
}

/// The `client_msg_id` of broadcast `id`'s message to `to`: stable (FNV-1a of the recipient),
/// within the 64 characters of a key.
fn recipient_key(id: &str, to: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in to.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("bc.{id}.{h:016x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn recipient_keys_are_stable_distinct_and_short() {
        assert_eq!(super::recipient_key("promo", "alice"), super::recipient_key("promo", "alice"));
        assert_ne!(super::recipient_key("promo", "alice"), super::recipient_key("promo", "alicf"));
        assert_eq!(super::recipient_key("promo", ""), "bc.promo.cbf29ce484222325");
        let long = "x".repeat(crate::model::MAX_BROADCAST_ID);
        assert!(crate::model::validate_id("k", &super::recipient_key(&long, "u")).is_ok());
    }
}
