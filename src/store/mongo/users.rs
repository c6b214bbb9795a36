//! Users: one document per user in `users` (`_id` = user id). A change touches that document
//! only, so it runs outside the group-commit writer: an `insert` of the defaults when the record
//! is new, then one atomic `findAndModify` (write concern majority). Reads use read concern
//! majority like every other read.

use confab_actors::error::StoreError;
use confab_actors::model::{name_prefix_end, Group, User, UserPatch};
use confab_actors::store::{DayStats, Stats, StoreResult};
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;
use serde::{Deserialize, Serialize};

use super::conn::{is_duplicate_key, Conn};
use super::docs::{i, sort_key, u, ACTIVE_USERS, DAILY, DEVICE_REVOCATIONS, GROUPS, USERS};
use super::reads::{find_all, find_one};

/// `users`: a user's record. `ext` is stored as JSON text (app-defined keys may hold `$` or `.`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub nickname: Option<String>,
    /// The nickname's search key and the id (`docs::sort_key`).
    #[serde(default)]
    pub nickname_key: Option<String>,
    pub avatar: Option<String>,
    #[serde(default)]
    #[serialize_always]
    pub ext: Option<String>,
    #[serde(default, deserialize_with = "super::docs::flag")]
    pub disabled: bool,
    #[serde(default)]
    pub tokens_valid_after: i64,
    #[serde(default)]
    pub tokens_valid_after_ms: i64,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub updated_at: i64,
}

impl UserDoc {
    /// The document of a record (from another store: `confab migrate`).
    pub(crate) fn from_user(user: &User) -> StoreResult<UserDoc> {
        Ok(UserDoc {
            id: user.id.clone(),
            nickname: user.nickname.clone(),
            nickname_key: user.nickname.as_deref().map(|n| sort_key(n, &user.id)),
            avatar: user.avatar.clone(),
            ext: Some(
                serde_json::to_string(&user.ext)
                    .map_err(|e| StoreError::Unavailable(format!("cannot encode ext: {e}")))?,
            ),
            disabled: user.disabled,
            tokens_valid_after: i(user.tokens_valid_after)?,
            tokens_valid_after_ms: i(user.tokens_valid_after_ms)?,
            created_at: user.created_at,
            updated_at: user.updated_at,
        })
    }

    fn into_user(self) -> StoreResult<User> {
        let ext = match self.ext.as_deref() {
            None | Some("") => serde_json::json!({}),
            Some(t) => serde_json::from_str(t)
                .map_err(|e| StoreError::Unavailable(format!("corrupt user {}: {e}", self.id)))?,
        };
        Ok(User {
            id: self.id,
            nickname: self.nickname,
            avatar: self.avatar,
            ext,
            disabled: self.disabled,
            tokens_valid_after: u(self.tokens_valid_after)?,
            tokens_valid_after_ms: u(self.tokens_valid_after_ms)?,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// Creates the record of `id` with the defaults if it has none (a duplicate key means it has),
/// then applies `set` (and `max`) to it: two single-document writes, each atomic.
async fn upsert(c: &Conn, id: &str, ts: i64, mut set: Document, max: Option<Document>) -> StoreResult<User> {
    let fresh = doc! {
        "_id": id, "ext": "{}", "disabled": false, "tokens_valid_after": 0_i64, "created_at": ts, "updated_at": ts,
    };
    if let Err(e) = c.coll::<Document>(USERS).insert_one(fresh).await {
        if !is_duplicate_key(&e) {
            return Err(c.fail("creating a user", &e));
        }
    }
    set.insert("updated_at", ts);
    let mut update = doc! { "$set": set };
    if let Some(m) = max {
        update.insert("$max", m);
    }
    let d = c
        .coll::<UserDoc>(USERS)
        .find_one_and_update(doc! { "_id": id }, update)
        .return_document(ReturnDocument::After)
        .await
        .map_err(|e| c.fail("updating a user", &e))?
        .ok_or_else(|| StoreError::Unavailable(format!("user {id} was not stored")))?;
    d.into_user()
}

pub(crate) async fn upsert_user(c: &Conn, p: UserPatch) -> StoreResult<User> {
    let mut set = Document::new();
    if let Some(n) = &p.nickname {
        set.insert("nickname", n);
        set.insert("nickname_key", sort_key(n, &p.id));
    }
    if let Some(a) = &p.avatar {
        set.insert("avatar", a);
    }
    if let Some(e) = &p.ext {
        let text = serde_json::to_string(e).map_err(|e| StoreError::Unavailable(format!("cannot encode ext: {e}")))?;
        set.insert("ext", text);
    }
    upsert(c, &p.id, p.ts, set, None).await
}

pub(crate) async fn set_disabled(c: &Conn, id: &str, disabled: bool, ts: i64) -> StoreResult<User> {
    upsert(c, id, ts, doc! { "disabled": disabled }, None).await
}

pub(crate) async fn revoke_tokens(c: &Conn, id: &str, before_ms: u64, ts: i64) -> StoreResult<User> {
    // `User::revoke_tokens` as one atomic `$max` of both fields: the bound never moves back.
    let mut bound = User::new(id, ts);
    bound.revoke_tokens(before_ms);
    let max = doc! {
        "tokens_valid_after_ms": i(bound.tokens_valid_after_ms)?,
        "tokens_valid_after": i(bound.tokens_valid_after)?,
    };
    upsert(c, id, ts, Document::new(), Some(max)).await
}

/// `device_revocations`: tokens of one device issued before `before_ms` are revoked.
#[derive(Debug, Deserialize)]
struct DeviceRevocationDoc {
    user: String,
    device: String,
    before_ms: i64,
}

pub(crate) async fn revoke_device(c: &Conn, user: &str, device: &str, before_ms: u64) -> StoreResult<u64> {
    // One atomic upsert; `$max` keeps the bound from moving back.
    let d = c
        .coll::<DeviceRevocationDoc>(DEVICE_REVOCATIONS)
        .find_one_and_update(
            doc! { "_id": format!("{user}/{device}") },
            doc! { "$set": { "user": user, "device": device }, "$max": { "before_ms": i(before_ms)? } },
        )
        .upsert(true)
        .return_document(ReturnDocument::After)
        .await
        .map_err(|e| c.fail("revoking a device", &e))?
        .ok_or_else(|| StoreError::Unavailable(format!("the revocation of {user}/{device} was not stored")))?;
    u(d.before_ms)
}

pub(crate) async fn device_revocations(c: &Conn, users: &[String]) -> StoreResult<Vec<(String, String, u64)>> {
    let found: Vec<DeviceRevocationDoc> =
        find_all(c, DEVICE_REVOCATIONS, doc! { "user": { "$in": users } }, None).await?;
    found.into_iter().map(|d| Ok((d.user, d.device, u(d.before_ms)?))).collect()
}

pub(crate) async fn user(c: &Conn, id: &str) -> StoreResult<Option<User>> {
    let d: Option<UserDoc> = find_one(c, USERS, doc! { "_id": id }).await?;
    d.map(UserDoc::into_user).transpose()
}

pub(crate) async fn users(c: &Conn, ids: &[String]) -> StoreResult<Vec<User>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let docs: Vec<UserDoc> = find_all(c, USERS, doc! { "_id": { "$in": ids } }, None).await?;
    docs.into_iter().map(UserDoc::into_user).collect()
}

/// The `_id` filter of a page: ids starting with `prefix`, after `after`.
pub(crate) fn id_page(prefix: &str, after: &str) -> mongodb::bson::Document {
    let mut range = doc! { "$gte": prefix };
    if !after.is_empty() {
        range.insert("$gt", after);
    }
    if let Some(end) = confab_actors::store::prefix_end(prefix) {
        range.insert("$lt", end);
    }
    doc! { "_id": range }
}

pub(crate) async fn list(c: &Conn, prefix: &str, after: &str, limit: usize) -> StoreResult<Vec<User>> {
    let docs: Vec<UserDoc> =
        super::reads::find_limit(c, USERS, id_page(prefix, after), doc! { "_id": 1 }, limit).await?;
    docs.into_iter().map(UserDoc::into_user).collect()
}

/// A prefix range of a name key.
fn key_range(key: &str) -> Document {
    match name_prefix_end(key) {
        Some(end) => doc! { "$gte": key, "$lt": end },
        None => doc! { "$gte": key },
    }
}

pub(crate) async fn search_users(c: &Conn, key: &str, limit: usize) -> StoreResult<Vec<User>> {
    let filter = doc! { "nickname_key": key_range(key) };
    let docs: Vec<UserDoc> = super::reads::find_limit(c, USERS, filter, doc! { "nickname_key": 1 }, limit).await?;
    docs.into_iter().map(UserDoc::into_user).collect()
}

pub(crate) async fn search_groups(c: &Conn, key: &str, limit: usize) -> StoreResult<Vec<Group>> {
    let filter = doc! { "name_key": key_range(key), "dismissed": { "$ne": true } };
    let docs: Vec<super::docs::GroupDoc> =
        super::reads::find_limit(c, GROUPS, filter, doc! { "name_key": 1 }, limit).await?;
    docs.into_iter().map(super::docs::GroupDoc::into_group).collect()
}

pub(crate) async fn record_active(c: &Conn, day: u32, users: &[String]) -> StoreResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    let docs: Vec<Document> =
        users.iter().map(|u| doc! { "_id": format!("{day}/{u}"), "day": i64::from(day) }).collect();
    // Unordered: a user already recorded (a duplicate key) does not stop the others.
    match c.coll::<Document>(ACTIVE_USERS).insert_many(docs).ordered(false).await {
        Ok(_) => Ok(()),
        Err(e) if only_duplicates(&e) => Ok(()),
        Err(e) => Err(c.fail("recording active users", &e)),
    }
}

/// Whether a bulk insert failed only on keys that exist already.
fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        mongodb::error::ErrorKind::InsertMany(f) => {
            f.write_concern_error.is_none()
                && f.write_errors.as_ref().is_some_and(|w| w.iter().all(|w| w.code == super::conn::DUPLICATE_KEY))
        }
        _ => is_duplicate_key(e),
    }
}

#[derive(Deserialize)]
struct DailyDoc {
    day: i64,
    n: i64,
}

pub(crate) async fn stats(c: &Conn, first_day: u32, last_day: u32) -> StoreResult<Stats> {
    let count = |coll: &'static str, filter: Document| async move {
        c.coll::<Document>(coll).count_documents(filter).await.map_err(|e| c.fail("counting", &e))
    };
    let users = count(USERS, doc! {}).await?;
    let groups = count(GROUPS, doc! { "dismissed": { "$ne": true } }).await?;
    let range = doc! { "$gte": i64::from(first_day), "$lte": i64::from(last_day) };
    let daily: Vec<DailyDoc> = find_all(c, DAILY, doc! { "kind": "messages", "day": range }, None).await?;
    let mut days = Vec::new();
    for day in first_day..=last_day {
        let messages = daily.iter().filter(|d| d.day == i64::from(day)).map(|d| d.n.max(0).unsigned_abs()).sum();
        let active_users = count(ACTIVE_USERS, doc! { "day": i64::from(day) }).await?;
        days.push(DayStats { day, messages, active_users });
    }
    Ok(Stats { users, groups, days })
}
