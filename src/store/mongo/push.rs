//! `push_tokens` and `push_jobs`.
//!
//! - `push_tokens`: `{_id: "<user>/<device>", user, device, provider, token, updated_at}`; a
//!   unique index on `(provider, token)` keeps a token on one device.
//! - `push_jobs`: `{_id: "<user>\0<device>\0<conv>", state, due_at, rev, ...}` (a `PushJob`),
//!   indexed by `(state, due_at)`. Jobs change by compare-and-set on `rev`, so the planner and the
//!   sender (and a planner of another node taking over) never overwrite each other's change.

use confab_actors::error::StoreError;
use confab_actors::push::{self, Finish, Finished, JobState, Planned, PushJob, PushRegistration};
use confab_actors::store::StoreResult;
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};

use super::conn::{is_duplicate_key, Conn};
use super::docs::{i, u, PUSH_JOBS, PUSH_TOKENS, WEBHOOK_META};
use super::reads::{find_all, find_limit, find_one};

/// Compare-and-set rounds before a job write gives up (another writer kept changing it).
const CAS_ROUNDS: usize = 8;

#[derive(Debug, Serialize, Deserialize)]
struct TokenDoc {
    #[serde(rename = "_id")]
    id: String,
    user: String,
    device: String,
    provider: String,
    token: String,
    updated_at: i64,
}

impl TokenDoc {
    fn into_registration(self) -> PushRegistration {
        PushRegistration {
            user: self.user,
            device: self.device,
            provider: self.provider,
            token: self.token,
            updated_at: self.updated_at,
        }
    }
}

fn token_id(user: &str, device: &str) -> String {
    format!("{user}/{device}")
}

/// `webhook_meta` `{_id: "push_tokens_ver", value}`: `$inc`-ed after every change of
/// registrations.
const VERSION_ID: &str = "push_tokens_ver";

async fn bump(c: &Conn) -> StoreResult<()> {
    c.coll::<Document>(WEBHOOK_META)
        .update_one(doc! { "_id": VERSION_ID }, doc! { "$inc": { "value": 1i64 } })
        .upsert(true)
        .await
        .map_err(|e| c.fail("moving the push registrations' version", &e))?;
    Ok(())
}

pub(crate) async fn version(c: &Conn) -> StoreResult<u64> {
    #[derive(Deserialize)]
    struct V {
        #[serde(default)]
        value: i64,
    }
    let d: Option<V> = find_one(c, WEBHOOK_META, doc! { "_id": VERSION_ID }).await?;
    Ok(d.map_or(0, |d| u64::try_from(d.value).unwrap_or(0)))
}

pub(crate) async fn set_token(c: &Conn, r: &PushRegistration) -> StoreResult<()> {
    let id = token_id(&r.user, &r.device);
    let d = TokenDoc {
        id: id.clone(),
        user: r.user.clone(),
        device: r.device.clone(),
        provider: r.provider.clone(),
        token: r.token.clone(),
        updated_at: r.updated_at,
    };
    let coll = c.coll::<TokenDoc>(PUSH_TOKENS);
    for _ in 0..CAS_ROUNDS {
        // The token moves here from whichever device held it.
        coll.delete_many(doc! { "provider": &r.provider, "token": &r.token, "_id": { "$ne": &id } })
            .await
            .map_err(|e| c.fail("moving a push token", &e))?;
        match coll.replace_one(doc! { "_id": &id }, &d).upsert(true).await {
            // A change not followed by its version (a failure here) is one a planner may miss
            // until the next change: the caller retries on the error.
            Ok(_) => return bump(c).await,
            // Registered to another device between the two commands: take it again.
            Err(e) if is_duplicate_key(&e) => continue,
            Err(e) => return Err(c.fail("storing a push token", &e)),
        }
    }
    Err(StoreError::Unavailable("the push token kept moving between devices; retry".into()))
}

pub(crate) async fn remove_token(c: &Conn, user: &str, device: &str, token: Option<&str>) -> StoreResult<bool> {
    let mut filter = doc! { "_id": token_id(user, device) };
    if let Some(t) = token {
        filter.insert("token", t);
    }
    let r =
        c.coll::<Document>(PUSH_TOKENS).delete_one(filter).await.map_err(|e| c.fail("removing a push token", &e))?;
    if r.deleted_count > 0 {
        bump(c).await?;
    }
    Ok(r.deleted_count > 0)
}

pub(crate) async fn tokens(c: &Conn, users: &[String]) -> StoreResult<Vec<PushRegistration>> {
    let found: Vec<TokenDoc> =
        find_all(c, PUSH_TOKENS, doc! { "user": { "$in": users } }, Some(doc! { "_id": 1 })).await?;
    Ok(found.into_iter().map(TokenDoc::into_registration).collect())
}

#[derive(Debug, Serialize, Deserialize)]
struct JobDoc {
    #[serde(rename = "_id")]
    id: String,
    user: String,
    device: String,
    conv_id: String,
    seq: i64,
    sender: String,
    count: i64,
    mention_seq: i64,
    state: String,
    due_at: i64,
    attempts: i64,
    rev: i64,
    last_event: i64,
    first_ts: i64,
}

fn to_doc(j: &PushJob) -> StoreResult<JobDoc> {
    Ok(JobDoc {
        id: j.key(),
        user: j.user.clone(),
        device: j.device.clone(),
        conv_id: j.conv_id.clone(),
        seq: i(j.seq)?,
        sender: j.sender.clone(),
        count: i64::from(j.count),
        mention_seq: i(j.mention_seq)?,
        state: match j.state {
            JobState::Pending => "pending".into(),
            JobState::Done => "done".into(),
        },
        due_at: j.due_at,
        attempts: i64::from(j.attempts),
        rev: i(j.rev)?,
        last_event: i(j.last_event)?,
        first_ts: j.first_ts,
    })
}

fn from_doc(d: JobDoc) -> StoreResult<PushJob> {
    let small = |v: i64| u32::try_from(v).map_err(|_| StoreError::Unavailable(format!("corrupt push job {}", d.id)));
    Ok(PushJob {
        seq: u(d.seq)?,
        count: small(d.count)?,
        state: if d.state == "pending" { JobState::Pending } else { JobState::Done },
        attempts: small(d.attempts)?,
        rev: u(d.rev)?,
        last_event: u(d.last_event)?,
        user: d.user,
        device: d.device,
        conv_id: d.conv_id,
        sender: d.sender,
        mention_seq: u(d.mention_seq)?,
        due_at: d.due_at,
        first_ts: d.first_ts,
    })
}

async fn job(c: &Conn, key: &str) -> StoreResult<Option<PushJob>> {
    let d: Option<JobDoc> = find_one(c, PUSH_JOBS, doc! { "_id": key }).await?;
    d.map(from_doc).transpose()
}

/// Writes `next` over `old` (the version read) if it is still there; false when another writer
/// changed it first.
async fn swap(c: &Conn, old: Option<&PushJob>, next: &PushJob) -> StoreResult<bool> {
    let d = to_doc(next)?;
    let coll = c.coll::<JobDoc>(PUSH_JOBS);
    match old {
        Some(o) => {
            let r = coll
                .replace_one(doc! { "_id": &d.id, "rev": i(o.rev)? }, &d)
                .await
                .map_err(|e| c.fail("writing a push job", &e))?;
            Ok(r.matched_count > 0)
        }
        None => match coll.insert_one(&d).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(c.fail("writing a push job", &e)),
        },
    }
}

pub(crate) async fn plan(c: &Conn, planned: &[Planned], cursor: u64) -> StoreResult<()> {
    for p in planned {
        let key = push::job_key(&p.user, &p.device, &p.conv_id);
        let mut done = false;
        for _ in 0..CAS_ROUNDS {
            let old = job(c, &key).await?;
            let Some(next) = push::merge(old.as_ref(), p) else {
                done = true;
                break;
            };
            if swap(c, old.as_ref(), &next).await? {
                done = true;
                break;
            }
        }
        if !done {
            return Err(StoreError::Unavailable(format!("push job {key:?} kept changing; planning again")));
        }
    }
    // Jobs first, then the cursor: a crash in between plans the events again, which adds
    // nothing (each job remembers its last event).
    super::outbox::enqueue(c, push::CURSOR, &[], cursor).await
}

pub(crate) async fn due(c: &Conn, now: i64, limit: usize) -> StoreResult<Vec<PushJob>> {
    let found: Vec<JobDoc> = find_limit(
        c,
        PUSH_JOBS,
        doc! { "state": "pending", "due_at": { "$lte": now } },
        // The index's order (jobs due at the same millisecond in any order).
        doc! { "due_at": 1 },
        limit,
    )
    .await?;
    found.into_iter().map(from_doc).collect()
}

pub(crate) async fn finish(c: &Conn, read: &PushJob, f: Finish, forget_upto: u64) -> StoreResult<bool> {
    for _ in 0..CAS_ROUNDS {
        let Some(current) = job(c, &read.key()).await? else { return Ok(false) };
        let done = match push::finish(&current, read, f, forget_upto) {
            Finished::Write(next) => swap(c, Some(&current), &next).await?,
            Finished::Delete => {
                let r = c
                    .coll::<Document>(PUSH_JOBS)
                    .delete_one(doc! { "_id": current.key(), "rev": i(current.rev)? })
                    .await
                    .map_err(|e| c.fail("removing a push job", &e))?;
                r.deleted_count > 0
            }
            Finished::Unchanged => return Ok(false),
        };
        if done {
            return Ok(true);
        }
    }
    Err(StoreError::Unavailable(format!("push job {:?} kept changing; finishing again", read.key())))
}
