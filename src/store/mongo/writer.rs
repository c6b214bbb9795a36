//! The group-commit writer: one task on the store's runtime owns every write.
//!
//! Callers queue a [`Job`] on a bounded channel and wait for its answer. The task takes one job,
//! drains up to [`MAX_BATCH`] more that are already queued, and commits them all in ONE MongoDB
//! transaction (write concern majority, journaled), in arrival order; only then does it answer.
//! Each operation of the batch takes its `ver` from this node's clock (`clock`), and the
//! transaction ends by publishing the node's `closed` version in the node's own document, so a
//! batch of appends costs five commands in steady state, however many messages it holds:
//! `update` (conversations), `insert` (messages), `update` (senders' rows), `update` (the node's
//! document) and `commitTransaction`. No reads: the `last_seq` of active conversations is cached
//! here. No document is written by the transactions of two nodes unless they touch the same
//! conversation, group or user.
//!
//! An attempt that cannot commit writes nothing, and is run again when that can help: on a write
//! conflict with another node; on a stale cached `last_seq` (the conversation is re-read, and
//! advanced with `findAndModify` for a while if another node writes to it too); on a duplicate
//! `(sender, client_msg_id)` (the stored originals are looked up and answered as duplicates).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confab_actors::error::StoreError;
use confab_actors::store::{Appended, StoreResult};
use mongodb::bson::{doc, Document};
use tokio::sync::{mpsc, oneshot};

use super::append::{dedupe_filter, dedupe_key};
use super::batch::{ConvCache, Op};
use super::clock;
use super::conn::{is_unknown_commit, Conn, Reach};
use super::docs::{u, ConvDoc, MessageDoc, CONVERSATIONS, MESSAGES};
use super::nodes;
use super::reads;
use super::tx::{clone_err, Answer, AttemptError, Tx};

/// Capacity of the queue between callers and the writer.
pub(crate) const QUEUE_CAPACITY: usize = 4096;
/// Most operations committed together in one transaction.
pub(crate) const MAX_BATCH: usize = 1024;
/// Attempts at one batch (conflicts, stale caches, duplicates) before giving up.
const MAX_ATTEMPTS: u32 = 12;

pub(crate) struct Job {
    pub op: Op,
    pub reply: oneshot::Sender<StoreResult<Answer>>,
    pub enqueued: Instant,
}

/// The writer task. Ends when every sender is gone and the queue is empty, then takes the node
/// out of the cluster's watermark (`nodes::unregister`).
pub(crate) async fn run(conn: Arc<Conn>, mut rx: mpsc::Receiver<Job>) {
    let mut cache = ConvCache::default();
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut last_beat = Instant::now();
    loop {
        // Idle for a heartbeat: publish a fresh `closed` and renew the lease.
        let first = match tokio::time::timeout(clock::HEARTBEAT, rx.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => break,
            Err(_) => {
                beat(&conn, false).await;
                last_beat = Instant::now();
                continue;
            }
        };
        // Busy: still read the others' `closed` every heartbeat, so this node's clock keeps up.
        if last_beat.elapsed() >= clock::HEARTBEAT {
            beat(&conn, true).await;
            last_beat = Instant::now();
        }
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        conn.metrics.store_queue_depth.fetch_sub(batch.len() as i64, Relaxed);
        let ops: Vec<&Op> = batch.iter().map(|j| &j.op).collect();
        let (answers, committed) = commit_batch(&conn, &mut cache, &ops).await;
        if committed {
            conn.metrics.store_commits.fetch_add(1, Relaxed);
            conn.metrics.store_batch_ops.fetch_add(batch.len() as u64, Relaxed);
        }
        for (job, answer) in batch.drain(..).zip(answers) {
            conn.metrics.store_write_seconds.observe(job.enqueued.elapsed());
            // The caller may be gone (cancelled); what was committed stays committed.
            let _ = job.reply.send(answer);
        }
    }
    match tokio::time::timeout(conn.op_timeout, nodes::unregister(&conn)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "leaving the cluster's version watermark failed (its lease runs out)"),
        Err(_) => tracing::warn!("leaving the cluster's version watermark timed out (its lease runs out)"),
    }
    tracing::debug!("mongodb store writer stopped");
}

/// One heartbeat, bounded by the operation timeout; a failure only waits for the next one.
async fn beat(conn: &Conn, busy: bool) {
    match tokio::time::timeout(conn.op_timeout, nodes::heartbeat(conn, busy)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "store node heartbeat failed"),
        Err(_) => tracing::debug!("store node heartbeat timed out"),
    }
}

/// Where an attempt was when it ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Writing,
    Committing,
}

struct Committed {
    answers: Vec<Option<StoreResult<Answer>>>,
    overlay: HashMap<String, u64>,
    dup_of: Vec<(usize, usize)>,
}

/// Commits a batch; returns one answer per operation and whether a transaction committed.
async fn commit_batch(conn: &Conn, cache: &mut ConvCache, ops: &[&Op]) -> (Vec<StoreResult<Answer>>, bool) {
    let n = ops.len();
    let mut settled: Vec<Option<StoreResult<Answer>>> = (0..n).map(|_| None).collect();
    let fail_all = |settled: Vec<Option<StoreResult<Answer>>>, e: &StoreError| -> Vec<StoreResult<Answer>> {
        settled.into_iter().map(|s| s.unwrap_or_else(|| Err(clone_err(e)))).collect()
    };
    if let Err(e) = conn.check_breaker() {
        return (fail_all(settled, &e), false);
    }
    let deadline = tokio::time::Instant::now() + conn.op_timeout;
    match tokio::time::timeout_at(deadline, conn.ensure_ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return (fail_all(settled, &e), false),
        Err(_) => return (fail_all(settled, &conn.timed_out("preparing the indexes")), false),
    }
    let mut last_error = StoreError::Unavailable("too many write conflicts".into());
    // Stale caches and duplicates are settled in a bounded number of attempts; write conflicts
    // (another node's transaction holds a document: the same conversation, group or row) are waited out
    // until the deadline.
    let mut attempts = 0;
    let mut conflicts: u32 = 0;
    while attempts < MAX_ATTEMPTS {
        if conflicts > 0 && tokio::time::Instant::now() >= deadline {
            break;
        }
        let mut phase = Phase::Writing;
        let outcome = tokio::time::timeout_at(deadline, attempt_once(conn, cache, ops, &settled, &mut phase)).await;
        let outcome = match outcome {
            Ok(o) => o,
            Err(_) => {
                let e = if phase == Phase::Committing {
                    cache.forget(conv_ids(ops).iter());
                    StoreError::Unavailable(format!(
                        "mongodb: no answer to the commit within {} ms; the write may have been stored (retry with the same client_msg_id)",
                        conn.op_timeout.as_millis()
                    ))
                } else {
                    conn.timed_out("write batch")
                };
                return (fail_all(settled, &e), false);
            }
        };
        match outcome {
            Ok(done) => {
                conn.observe::<()>(&Ok(()), Reach::Up);
                cache.apply(done.overlay);
                return (finish(done.answers, settled, &done.dup_of), true);
            }
            Err(AttemptError::Transient(e)) => {
                last_error = e;
                conflicts += 1;
                tokio::time::sleep(backoff(conflicts)).await;
            }
            Err(AttemptError::Stale(convs)) => {
                attempts += 1;
                tracing::debug!(?convs, "cached last_seq out of date; re-reading");
                let actual = match tokio::time::timeout_at(deadline, current_last_seqs(conn, &convs)).await {
                    Ok(Ok(a)) => a,
                    Ok(Err(e)) => return (fail_all(settled, &e), false),
                    Err(_) => return (fail_all(settled, &conn.timed_out("re-reading conversations")), false),
                };
                cache.refresh(&convs, &actual);
            }
            Err(AttemptError::DuplicateKey) => {
                attempts += 1;
                let found = tokio::time::timeout_at(deadline, settle_duplicates(conn, ops, &mut settled)).await;
                match found.unwrap_or_else(|_| Err(conn.timed_out("looking up re-sent messages"))) {
                    Ok(0) => {
                        // Not a re-send after all (or not visible yet): start from fresh values.
                        cache.forget(conv_ids(ops).iter());
                        tokio::time::sleep(backoff(attempts)).await;
                    }
                    Ok(_) => {}
                    Err(e) => return (fail_all(settled, &e), false),
                }
                if settled.iter().all(Option::is_some) {
                    return (finish((0..n).map(|_| None).collect(), settled, &[]), false);
                }
            }
            Err(AttemptError::Fatal(e)) => {
                if phase == Phase::Committing {
                    cache.forget(conv_ids(ops).iter());
                }
                tracing::warn!(ops = n, error = %e, "mongodb write batch failed");
                return (fail_all(settled, &e), false);
            }
        }
    }
    tracing::warn!(ops = n, error = %last_error, "mongodb write batch gave up");
    (fail_all(settled, &last_error), false)
}

/// 2 ms doubling up to 64 ms, with jitter, so that competing nodes do not retry in lockstep.
fn backoff(n: u32) -> Duration {
    let base = 2_u64 << n.min(5);
    let jitter = u64::from(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0),
    ) % base;
    Duration::from_millis(base / 2 + jitter)
}

fn conv_ids(ops: &[&Op]) -> Vec<String> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Append(m) => Some(m.conv_id.clone()),
            Op::CreateGroup(g) => Some(confab_actors::model::group_conv_id(&g.id)),
            Op::ChangeMembers(c) => Some(confab_actors::model::group_conv_id(&c.group_id)),
            Op::UpdateGroup(c) => Some(confab_actors::model::group_conv_id(&c.group_id)),
            Op::SetRoles(c) => Some(confab_actors::model::group_conv_id(&c.group_id)),
            Op::DismissGroup(c) => Some(confab_actors::model::group_conv_id(&c.group_id)),
            _ => None,
        })
        .collect()
}

/// Merges the committed answers with those settled earlier and resolves repeats within the batch.
fn finish(
    answers: Vec<Option<StoreResult<Answer>>>,
    settled: Vec<Option<StoreResult<Answer>>>,
    dup_of: &[(usize, usize)],
) -> Vec<StoreResult<Answer>> {
    let mut out: Vec<Option<StoreResult<Answer>>> = settled.into_iter().zip(answers).map(|(s, a)| s.or(a)).collect();
    for &(idx, first) in dup_of {
        let answer = match out.get(first) {
            Some(Some(Ok(Answer::Appended(a)))) => {
                Ok(Answer::Appended(Appended { message: a.message.clone(), duplicate: true }))
            }
            Some(Some(Err(e))) => Err(clone_err(e)),
            _ => Err(StoreError::Unavailable("the repeated message was not stored".into())),
        };
        if let Some(slot) = out.get_mut(idx) {
            *slot = Some(answer);
        }
    }
    out.into_iter()
        .map(|a| a.unwrap_or_else(|| Err(StoreError::Unavailable("the operation did not run".into()))))
        .collect()
}

async fn attempt_once(
    conn: &Conn,
    cache: &ConvCache,
    ops: &[&Op],
    settled: &[Option<StoreResult<Answer>>],
    phase: &mut Phase,
) -> Result<Committed, AttemptError> {
    let n = ops.len();
    let todo = settled.iter().filter(|s| s.is_none()).count() as u64;
    let mut answers: Vec<Option<StoreResult<Answer>>> = (0..n).map(|_| None).collect();
    if todo == 0 {
        return Ok(Committed { answers, overlay: HashMap::new(), dup_of: Vec::new() });
    }
    if !conn.clock.is_registered() {
        nodes::register(conn).await.map_err(AttemptError::Fatal)?;
    }
    let mut tx = Tx::begin(conn, cache).await?;
    let result = async {
        // One ver per operation still to do, in batch order.
        let first = tx.reserve_vers(todo);
        let mut vers = vec![0_u64; n];
        let mut next = first;
        for (idx, s) in settled.iter().enumerate() {
            if s.is_none() {
                vers[idx] = next;
                next += 1;
            }
        }
        let mut pending: Vec<usize> = Vec::new();
        for idx in 0..n {
            if settled[idx].is_some() {
                continue;
            }
            let op = ops[idx];
            if matches!(op, Op::Append(_)) {
                pending.push(idx);
                continue;
            }
            // Appends queued before this operation are written before it.
            tx.flush(&pending, ops, &vers, &mut answers).await?;
            pending.clear();
            let ver = vers[idx];
            let answer = match op {
                Op::Append(_) => continue,
                Op::Recall { conv_id, seq, by } => tx.recall(conv_id, *seq, by, ver).await?,
                Op::MarkRead { user, conv_id, seq } => tx.mark_read(user, conv_id, *seq, ver).await?,
                Op::SetFlags { user, conv_id, patch } => tx.set_flags(user, conv_id, patch, ver).await?,
                Op::Delete { user, conv_id, seqs } => tx.delete_for_user(user, conv_id, seqs, ver).await?,
                Op::Clear { user, conv_id } => tx.clear_for_user(user, conv_id, ver).await?,
                Op::CreateGroup(g) => tx.create_group(g, ver).await?,
                Op::ChangeMembers(c) => tx.change_members(c, ver).await?,
                Op::UpdateGroup(c) => tx.update_group(c, ver).await?,
                Op::SetRoles(c) => tx.set_roles(c, ver).await?,
                Op::DismissGroup(c) => tx.dismiss_group(c, ver).await?,
                Op::ChangeContact(c) => tx.change_contact(c, ver).await?,
                Op::MuteMembers(c) => tx.mute_members(c, ver).await?,
                Op::PutJoinRequests { group_id, requests } => tx.put_join_requests(group_id, requests).await?,
                Op::RemoveJoinRequest { group_id, user } => tx.remove_join_request(group_id, user).await?,
                Op::PushEvent(_) => Ok(Answer::EventId(0)),
            };
            answers[idx] = Some(answer);
        }
        tx.flush(&pending, ops, &vers, &mut answers).await?;
        tx.count_messages(&answers).await?;
        // Webhooks: the batch's events, in the same transaction (nothing when they are off).
        super::outbox::record(&mut tx, ops, &mut answers).await?;
        // Last: this node promises never to commit at or below what the batch used.
        tx.publish_closed().await
    }
    .await;
    let closed = match result {
        Ok(closed) => closed,
        Err(e) => {
            tx.abort().await;
            return Err(e);
        }
    };
    *phase = Phase::Committing;
    let mut tries = 0;
    loop {
        match tx.commit().await {
            Ok(()) => break,
            // The driver already retried once; the outcome is still unknown: ask again (commit is
            // idempotent) until the batch's deadline.
            Err(e) if is_unknown_commit(&e) => {
                if tries >= 20 {
                    let e = conn.fail("commit", &e);
                    return Err(AttemptError::Fatal(StoreError::Unavailable(format!(
                        "{e}; the outcome is unknown: the write may have been stored (retry with the same client_msg_id)"
                    ))));
                }
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(super::tx::classify(conn, "commit", e)),
        }
    }
    conn.clock.published(closed);
    Ok(Committed { answers, overlay: std::mem::take(&mut tx.overlay), dup_of: std::mem::take(&mut tx.dup_of) })
}

/// The stored `last_seq` of `convs` (absent ones are left out). One read.
async fn current_last_seqs(conn: &Conn, convs: &[String]) -> StoreResult<HashMap<String, u64>> {
    let docs: Vec<ConvDoc> = reads::find_all(conn, CONVERSATIONS, doc! { "_id": { "$in": convs } }, None).await?;
    docs.into_iter().map(|d| Ok((d.id, u(d.last_seq)?))).collect()
}

/// Looks up, in one read, the stored originals of the batch's appends that carry an idempotency
/// key, and settles those found as duplicates. Returns how many were found.
async fn settle_duplicates(
    conn: &Conn,
    ops: &[&Op],
    settled: &mut [Option<StoreResult<Answer>>],
) -> StoreResult<usize> {
    let mut wanted: Vec<Document> = Vec::new();
    for (idx, op) in ops.iter().enumerate() {
        if let (None, Op::Append(m)) = (&settled[idx], op) {
            if let Some((s, c)) = dedupe_key(m) {
                wanted.push(dedupe_filter(&s, &c));
            }
        }
    }
    if wanted.is_empty() {
        return Ok(0);
    }
    let docs: Vec<MessageDoc> = reads::find_all(conn, MESSAGES, doc! { "$or": wanted }, None).await?;
    let mut stored: HashMap<(String, String), confab_actors::model::Message> = HashMap::new();
    for d in docs {
        let m = d.into_message()?;
        if let Some(c) = &m.client_msg_id {
            stored.insert((m.sender.clone().unwrap_or_default(), c.clone()), m);
        }
    }
    let mut found = 0;
    for (idx, op) in ops.iter().enumerate() {
        if let (None, Op::Append(m)) = (&settled[idx], op) {
            if let Some(message) = dedupe_key(m).and_then(|k| stored.get(&k)) {
                settled[idx] = Some(Ok(Answer::Appended(Appended { message: message.clone(), duplicate: true })));
                found += 1;
            }
        }
    }
    Ok(found)
}
