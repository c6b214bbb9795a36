//! Push registrations and the push job queue.
//!
//! | table | key | value |
//! |---|---|---|
//! | `push_tokens` | (user, device) | `PushRegistration` JSON |
//! | `push_token_owners` | (provider, token) | (user, device) |
//! | `push_jobs` | `user\0device\0conv` | `PushJob` JSON |
//! | `push_due` | (due_at, job key) | `()`, pending jobs only |

use confab_actors::push::{self, Finish, Finished, JobState, Planned, PushJob, PushRegistration};
use confab_actors::store::StoreResult;
use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};

use super::tables::{get_json, put_json, unavailable};

pub(crate) const PUSH_TOKENS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("push_tokens");
pub(crate) const PUSH_TOKEN_OWNERS: TableDefinition<(&str, &str), (&str, &str)> =
    TableDefinition::new("push_token_owners");
pub(crate) const PUSH_JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("push_jobs");
pub(crate) const PUSH_DUE: TableDefinition<(i64, &str), ()> = TableDefinition::new("push_due");

pub(super) fn create_tables(txn: &WriteTransaction) -> StoreResult<()> {
    txn.open_table(PUSH_TOKENS).map_err(unavailable)?;
    txn.open_table(PUSH_TOKEN_OWNERS).map_err(unavailable)?;
    txn.open_table(PUSH_JOBS).map_err(unavailable)?;
    txn.open_table(PUSH_DUE).map_err(unavailable)?;
    Ok(())
}

fn remove_device(
    tokens: &mut Table<'_, (&'static str, &'static str), &'static [u8]>,
    owners: &mut Table<'_, (&'static str, &'static str), (&'static str, &'static str)>,
    user: &str,
    device: &str,
) -> StoreResult<Option<PushRegistration>> {
    let old: Option<PushRegistration> = get_json(tokens, (user, device))?;
    if let Some(o) = &old {
        tokens.remove((user, device)).map_err(unavailable)?;
        owners.remove((o.provider.as_str(), o.token.as_str())).map_err(unavailable)?;
    }
    Ok(old)
}

/// The `meta` key of the registrations' version.
const VERSION_KEY: &str = "push_tokens_ver";

fn bump(txn: &WriteTransaction) -> StoreResult<()> {
    let mut meta = txn.open_table(super::tables::META).map_err(unavailable)?;
    let v = meta.get(VERSION_KEY).map_err(unavailable)?.map_or(0, |g| g.value());
    meta.insert(VERSION_KEY, v + 1).map_err(unavailable)?;
    Ok(())
}

pub(super) fn version(txn: &ReadTransaction) -> StoreResult<u64> {
    let meta = txn.open_table(super::tables::META).map_err(unavailable)?;
    Ok(meta.get(VERSION_KEY).map_err(unavailable)?.map_or(0, |g| g.value()))
}

pub(super) fn set_token(txn: &WriteTransaction, r: &PushRegistration) -> StoreResult<()> {
    bump(txn)?;
    let mut tokens = txn.open_table(PUSH_TOKENS).map_err(unavailable)?;
    let mut owners = txn.open_table(PUSH_TOKEN_OWNERS).map_err(unavailable)?;
    remove_device(&mut tokens, &mut owners, &r.user, &r.device)?;
    let holder = owners
        .get((r.provider.as_str(), r.token.as_str()))
        .map_err(unavailable)?
        .map(|g| (g.value().0.to_owned(), g.value().1.to_owned()));
    if let Some((u, d)) = holder {
        remove_device(&mut tokens, &mut owners, &u, &d)?;
    }
    put_json(&mut tokens, (r.user.as_str(), r.device.as_str()), r)?;
    owners
        .insert((r.provider.as_str(), r.token.as_str()), (r.user.as_str(), r.device.as_str()))
        .map_err(unavailable)?;
    Ok(())
}

pub(super) fn remove_token(txn: &WriteTransaction, user: &str, device: &str, token: Option<&str>) -> StoreResult<bool> {
    let mut tokens = txn.open_table(PUSH_TOKENS).map_err(unavailable)?;
    let mut owners = txn.open_table(PUSH_TOKEN_OWNERS).map_err(unavailable)?;
    let current: Option<PushRegistration> = get_json(&tokens, (user, device))?;
    match current {
        Some(r) if token.is_none_or(|t| t == r.token) => {
            remove_device(&mut tokens, &mut owners, user, device)?;
            bump(txn)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

pub(super) fn tokens(txn: &ReadTransaction, users: &[String]) -> StoreResult<Vec<PushRegistration>> {
    let table = txn.open_table(PUSH_TOKENS).map_err(unavailable)?;
    let mut out = Vec::new();
    for user in users {
        for item in table.range((user.as_str(), "")..).map_err(unavailable)? {
            let (k, v) = item.map_err(unavailable)?;
            if k.value().0 != user {
                break;
            }
            out.push(super::tables::decode(v.value())?);
        }
    }
    Ok(out)
}

fn put_job(
    jobs: &mut Table<'_, &'static str, &'static [u8]>,
    due: &mut Table<'_, (i64, &'static str), ()>,
    old: Option<&PushJob>,
    job: &PushJob,
) -> StoreResult<()> {
    let key = job.key();
    if let Some(o) = old.filter(|o| o.state == JobState::Pending) {
        due.remove((o.due_at, key.as_str())).map_err(unavailable)?;
    }
    if job.state == JobState::Pending {
        due.insert((job.due_at, key.as_str()), ()).map_err(unavailable)?;
    }
    put_json(jobs, key.as_str(), job)
}

pub(super) fn plan(txn: &WriteTransaction, planned: &[Planned], cursor: u64) -> StoreResult<()> {
    {
        let mut jobs = txn.open_table(PUSH_JOBS).map_err(unavailable)?;
        let mut due = txn.open_table(PUSH_DUE).map_err(unavailable)?;
        for p in planned {
            let key = push::job_key(&p.user, &p.device, &p.conv_id);
            let old: Option<PushJob> = get_json(&jobs, key.as_str())?;
            if let Some(job) = push::merge(old.as_ref(), p) {
                put_job(&mut jobs, &mut due, old.as_ref(), &job)?;
            }
        }
    }
    super::outbox::enqueue(txn, push::CURSOR, &[], cursor)
}

pub(super) fn due(txn: &ReadTransaction, now: i64, limit: usize) -> StoreResult<Vec<PushJob>> {
    let due = txn.open_table(PUSH_DUE).map_err(unavailable)?;
    let jobs = txn.open_table(PUSH_JOBS).map_err(unavailable)?;
    let mut out = Vec::new();
    for item in due.range((i64::MIN, "")..=(now, "\u{10FFFF}")).map_err(unavailable)? {
        let (k, _) = item.map_err(unavailable)?;
        if let Some(j) = get_json::<&str, PushJob>(&jobs, k.value().1)? {
            out.push(j);
        }
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

pub(super) fn finish(txn: &WriteTransaction, read: &PushJob, f: Finish, forget_upto: u64) -> StoreResult<bool> {
    let mut jobs = txn.open_table(PUSH_JOBS).map_err(unavailable)?;
    let mut due = txn.open_table(PUSH_DUE).map_err(unavailable)?;
    let key = read.key();
    let Some(current) = get_json::<&str, PushJob>(&jobs, key.as_str())? else { return Ok(false) };
    match push::finish(&current, read, f, forget_upto) {
        Finished::Write(next) => {
            put_job(&mut jobs, &mut due, Some(&current), &next)?;
            Ok(true)
        }
        Finished::Delete => {
            due.remove((current.due_at, key.as_str())).map_err(unavailable)?;
            jobs.remove(key.as_str()).map_err(unavailable)?;
            Ok(true)
        }
        Finished::Unchanged => Ok(false),
    }
}
