//! Appends, in bulk: every run of consecutive appends of a batch is written with three commands
//! whatever its size: one `update` of `conversations` (each conversation's `last_seq` moved
//! forward, conditionally on the value cached from earlier batches), one `insert` of the messages
//! and one `update` of `user_convs` (senders' read cursors, rows of new one-to-one conversations).
//!
//! A conversation whose `last_seq` is not cached (first use on this node, or recently found
//! changed by another node) is advanced with its own `findAndModify {$inc}` instead, which returns
//! the new value: still a write, never a read.

use std::collections::HashMap;

use confab_actors::error::StoreError;
use confab_actors::model::Message;
use confab_actors::store::{Appended, NewMessage};
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;

use super::docs::{i, q, u, ConvDoc, MessageDoc, CONVERSATIONS, MESSAGES, USER_CONVS};
use serde::Deserialize;

#[derive(Deserialize)]
struct Quoted {
    conv_id: String,
    seq: i64,
}
use super::batch::Op;
use super::tx::{fatal, stmt, Answer, AttemptError, AttemptResult, Tx};

/// How a conversation's `last_seq` is advanced in this flush.
enum Plan {
    /// Known value (cached, or written earlier in this transaction): a conditional update.
    Known { base: u64, cached: bool },
    /// Advanced already by `findAndModify`; `base` is the value before.
    Incremented { base: u64 },
    /// A one-to-one conversation that does not exist yet: created by an upsert.
    Create { members: Vec<String> },
}

/// The `(sender, client_msg_id)` idempotency key of an append, if it has one. System messages
/// (no sender) have the sender `""` (user ids are never empty).
pub(crate) fn dedupe_key(m: &NewMessage) -> Option<(String, String)> {
    m.client_msg_id.as_ref().map(|c| (m.sender.clone().unwrap_or_default(), c.clone()))
}

/// The filter that finds the message stored under a [`dedupe_key`].
pub(crate) fn dedupe_filter(sender: &str, cmid: &str) -> Document {
    if sender.is_empty() {
        doc! { "system_key": cmid }
    } else {
        doc! { "sender": sender, "client_msg_id": cmid }
    }
}

/// The participants of the one-to-one conversation an append may create (none for a group).
fn participants(m: &NewMessage) -> Option<Vec<String>> {
    Some(m.participants()).filter(|p| !p.is_empty())
}

fn append_of(op: &Op) -> Option<&NewMessage> {
    match op {
        Op::Append(m) => Some(m),
        _ => None,
    }
}

impl Tx<'_> {
    /// Writes the appends `pending` (indexes into `ops`, in order). Their answers go to `answers`;
    /// repeats of an earlier append of the batch are listed in `self.dup_of`.
    pub async fn flush(
        &mut self,
        pending: &[usize],
        ops: &[&Op],
        vers: &[u64],
        answers: &mut [Option<Result<Answer, StoreError>>],
    ) -> AttemptResult<()> {
        // 1. Repeats within the batch, and grouping by conversation (in order of first appearance).
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<String, usize> = HashMap::new();
        for &idx in pending {
            let Some(m) = append_of(ops[idx]) else { continue };
            if let Some(key) = dedupe_key(m) {
                if let Some(&first) = self.batch_keys.get(&key) {
                    self.dup_of.push((idx, first));
                    continue;
                }
                self.batch_keys.insert(key, idx);
            }
            let g = *group_of.entry(m.conv_id.clone()).or_insert_with(|| {
                groups.push((m.conv_id.clone(), Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(idx);
        }

        // 2. Decide how each conversation's last_seq moves.
        let mut plans: Vec<(String, Vec<usize>, Plan)> = Vec::new();
        let mut not_found: Vec<usize> = Vec::new();
        for (conv_id, idxs) in groups {
            let k = idxs.len() as u64;
            if let Some(&last) = self.overlay.get(&conv_id) {
                plans.push((conv_id, idxs, Plan::Known { base: last, cached: false }));
                continue;
            }
            if let Some(last) = self.cache.usable(&conv_id) {
                plans.push((conv_id, idxs, Plan::Known { base: last, cached: true }));
                continue;
            }
            let last_ver = idxs.last().map(|&x| vers[x]).unwrap_or(0);
            let advanced = self
                .conn
                .coll::<ConvDoc>(CONVERSATIONS)
                .find_one_and_update(
                    doc! { "_id": &conv_id },
                    doc! { "$inc": { "last_seq": i(k).map_err(fatal)? }, "$set": { "ver": i(last_ver).map_err(fatal)? } },
                )
                .return_document(ReturnDocument::After)
                .session(&mut self.session)
                .await
                .map_err(|e| self.err("advancing a conversation", e))?;
            match advanced {
                Some(d) => {
                    let last = u(d.last_seq).map_err(fatal)?;
                    plans.push((conv_id, idxs, Plan::Incremented { base: last.saturating_sub(k) }));
                }
                None => {
                    // Not there: the first append that names the participants creates it; any
                    // before it (no participants) fail with NotFound, as on the embedded store.
                    let creator = idxs.iter().position(|&x| append_of(ops[x]).and_then(participants).is_some());
                    match creator {
                        None => not_found.extend(idxs),
                        Some(p) => {
                            not_found.extend(&idxs[..p]);
                            let members = append_of(ops[idxs[p]]).and_then(participants).unwrap_or_default();
                            plans.push((conv_id, idxs[p..].to_vec(), Plan::Create { members }));
                        }
                    }
                }
            }
        }

        // 3. NotFound appends: a re-send of a stored key still answers with the original.
        for idx in not_found {
            let Some(m) = append_of(ops[idx]) else { continue };
            if let Some((sender, cmid)) = dedupe_key(m) {
                self.batch_keys.remove(&(sender.clone(), cmid.clone()));
                let stored: Option<MessageDoc> = self.find_one(MESSAGES, dedupe_filter(&sender, &cmid)).await?;
                if let Some(d) = stored {
                    let message = d.into_message().map_err(fatal)?;
                    answers[idx] = Some(Ok(Answer::Appended(Appended { message, duplicate: true })));
                    continue;
                }
            }
            answers[idx] = Some(Err(StoreError::NotFound(format!("conversation {}", m.conv_id))));
        }

        // 4. Replies whose quoted message was recalled since the quote was taken are stored with
        // the quote scrubbed: one read for the whole flush, only when it holds replies. (A recall
        // committing concurrently also writes the conversation's document, so the two
        // transactions conflict and one of them runs again, seeing the other.)
        let mut recalled: std::collections::HashSet<(String, i64)> = std::collections::HashSet::new();
        let quoted: Vec<Document> = plans
            .iter()
            .flat_map(|(conv_id, idxs, _)| {
                idxs.iter()
                    .filter_map(|&x| append_of(ops[x]))
                    .filter_map(move |m| m.reply_to.as_ref().map(|r| doc! { "conv_id": conv_id, "seq": q(r.seq) }))
            })
            .collect();
        if !quoted.is_empty() {
            let filter = doc! { "$or": quoted, "recall_ver": { "$exists": true } };
            let found: Vec<Quoted> = self.find_all(MESSAGES, filter).await?;
            recalled.extend(found.into_iter().map(|d| (d.conv_id, d.seq)));
        }

        // 5. Build the writes.
        let mut conv_stmts: Vec<Document> = Vec::new();
        let mut known = 0_i64;
        let mut created: Vec<usize> = Vec::new();
        let mut checked: Vec<String> = Vec::new();
        let mut messages: Vec<MessageDoc> = Vec::new();
        let mut row_stmts: Vec<Document> = Vec::new();
        for (conv_id, idxs, plan) in &plans {
            let base = match plan {
                Plan::Known { base, .. } | Plan::Incremented { base } => *base,
                Plan::Create { .. } => 0,
            };
            let first_ver = idxs.first().map(|&x| vers[x]).unwrap_or(0);
            let mut seq = base;
            let mut last_ver = first_ver;
            // sender → (highest seq, its ver), in order of first appearance.
            let mut senders: Vec<(String, u64, u64)> = Vec::new();
            for &idx in idxs {
                let Some(m) = append_of(ops[idx]) else { continue };
                seq += 1;
                last_ver = vers[idx];
                let mut reply_to = m.reply_to.clone();
                if let Some(r) = reply_to.as_mut().filter(|r| recalled.contains(&(conv_id.clone(), q(r.seq)))) {
                    r.scrub();
                }
                let message = Message {
                    conv_id: conv_id.clone(),
                    seq,
                    sender: m.sender.clone(),
                    client_msg_id: m.client_msg_id.clone(),
                    body: m.body.clone(),
                    reply_to,
                    ts: m.ts,
                    ver: vers[idx],
                };
                messages.push(MessageDoc::from_message(&message).map_err(fatal)?);
                if let Some(s) = &m.sender {
                    match senders.iter_mut().find(|x| &x.0 == s) {
                        Some(x) => {
                            x.1 = seq;
                            x.2 = vers[idx];
                        }
                        None => senders.push((s.clone(), seq, vers[idx])),
                    }
                }
                answers[idx] = Some(Ok(Answer::Appended(Appended { message, duplicate: false })));
            }
            let (last_seq, last_ver) = (i(seq).map_err(fatal)?, i(last_ver).map_err(fatal)?);
            match plan {
                Plan::Known { base, cached } => {
                    conv_stmts.push(stmt(
                        doc! { "_id": conv_id, "last_seq": q(*base) },
                        doc! { "$set": { "last_seq": last_seq, "ver": last_ver } },
                        false,
                    ));
                    known += 1;
                    if *cached {
                        checked.push(conv_id.clone());
                    }
                }
                Plan::Incremented { .. } => {}
                Plan::Create { members } => {
                    created.push(conv_stmts.len());
                    checked.push(conv_id.clone());
                    conv_stmts.push(stmt(
                        doc! { "_id": conv_id },
                        doc! { "$setOnInsert": {
                            "kind": "direct", "members": members, "last_seq": last_seq, "ver": last_ver,
                        } },
                        true,
                    ));
                    for user in members {
                        row_stmts.push(stmt(
                            doc! { "user": user, "conv_id": conv_id },
                            doc! { "$setOnInsert": {
                                "read_seq": 0_i64, "pinned": false, "muted": false, "hidden": false,
                                "active": true, "ver": i(first_ver).map_err(fatal)?,
                            } },
                            true,
                        ));
                    }
                }
            }
            for (user, s, v) in senders {
                row_stmts.push(stmt(
                    doc! { "user": user, "conv_id": conv_id },
                    doc! { "$max": { "read_seq": i(s).map_err(fatal)? }, "$set": { "ver": i(v).map_err(fatal)? } },
                    false,
                ));
            }
            self.overlay.insert(conv_id.clone(), seq);
        }

        // 6. Write: conversations (checked), messages, rows.
        if !conv_stmts.is_empty() {
            let reply = self.update(CONVERSATIONS, conv_stmts).await?;
            let mut upserted = reply.upserted();
            upserted.sort_unstable();
            if reply.n_modified != known || upserted != created {
                return Err(AttemptError::Stale(checked));
            }
        }
        self.insert(MESSAGES, &messages).await?;
        self.update(USER_CONVS, row_stmts).await?;
        Ok(())
    }
}
