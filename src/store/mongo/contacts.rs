//! Contacts: one document per `(owner, peer)` in `contacts` (`_id` `"<owner>/<peer>"`: `/` is not
//! an id character), indexed by `{owner, ver}` for the `contacts` sync. A change reads both rows,
//! decides with `ContactChange::plan` and writes the rows that changed, inside the batch's
//! transaction like every other write.

use confab_actors::error::StoreError;
use confab_actors::model::{Contact, FriendRequest};
use confab_actors::store::{ContactChange, StoreResult};
use mongodb::bson::doc;
use serde::{Deserialize, Serialize};

use super::conn::Conn;
use super::docs::{flag, i, q, u, CONTACTS, MEMBERS};
use super::nodes;
use super::reads;
use super::tx::{fatal, stmt, Answer, AttemptResult, Tx};

/// `contacts`: one user's row about another. Every field is written on every change (absent ones
/// as `null`), so a `$set` of the whole document replaces what was there.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ContactDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub owner: String,
    pub peer: String,
    #[serde(default, deserialize_with = "flag")]
    pub friend: bool,
    #[serde(default)]
    pub friend_since: Option<i64>,
    #[serde(default)]
    pub remark: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub request: Option<FriendRequest>,
    #[serde(default, deserialize_with = "flag")]
    pub blocked: bool,
    pub ver: i64,
    pub updated_at: i64,
}

pub(crate) fn contact_id(owner: &str, peer: &str) -> String {
    format!("{owner}/{peer}")
}

impl ContactDoc {
    pub(crate) fn from_contact(c: &Contact) -> StoreResult<ContactDoc> {
        Ok(ContactDoc {
            id: contact_id(&c.owner, &c.user_id),
            owner: c.owner.clone(),
            peer: c.user_id.clone(),
            friend: c.friend,
            friend_since: c.friend_since,
            remark: c.remark.clone(),
            tags: c.tags.clone(),
            request: c.request.clone(),
            blocked: c.blocked,
            ver: i(c.ver)?,
            updated_at: c.updated_at,
        })
    }

    fn into_contact(self) -> StoreResult<Contact> {
        Ok(Contact {
            owner: self.owner,
            user_id: self.peer,
            friend: self.friend,
            friend_since: self.friend_since,
            remark: self.remark,
            tags: self.tags,
            request: self.request,
            blocked: self.blocked,
            ver: u(self.ver)?,
            updated_at: self.updated_at,
        })
    }
}

impl Tx<'_> {
    async fn contact_row(&mut self, owner: &str, peer: &str) -> AttemptResult<Option<Contact>> {
        let found: Option<ContactDoc> = self.find_one(CONTACTS, doc! { "_id": contact_id(owner, peer) }).await?;
        found.map(ContactDoc::into_contact).transpose().map_err(fatal)
    }

    /// Decides the change from both rows and writes the rows that changed (at version `ver`).
    pub async fn change_contact(&mut self, c: &ContactChange, ver: u64) -> AttemptResult<Result<Answer, StoreError>> {
        let mine = self.contact_row(&c.user, &c.peer).await?;
        let theirs = self.contact_row(&c.peer, &c.user).await?;
        let plan = match c.plan(mine, theirs, ver) {
            Ok(plan) => plan,
            Err(e) => return Ok(Err(e)),
        };
        let mut statements = Vec::new();
        for row in std::iter::once(&plan.user).chain(plan.peer.as_ref()).filter(|r| plan.changed && r.ver == ver) {
            let d = ContactDoc::from_contact(row).map_err(fatal)?;
            let set = mongodb::bson::to_document(&d)
                .map_err(|e| fatal(StoreError::Unavailable(format!("cannot encode a contact: {e}"))))?;
            statements.push(stmt(doc! { "_id": &d.id }, doc! { "$set": set }, true));
        }
        self.update(CONTACTS, statements).await?;
        Ok(Ok(Answer::Contact(Box::new(plan))))
    }
}

pub(crate) async fn contact(c: &Conn, owner: &str, peer: &str) -> StoreResult<Option<Contact>> {
    let found: Option<ContactDoc> = reads::find_one(c, CONTACTS, doc! { "_id": contact_id(owner, peer) }).await?;
    found.map(ContactDoc::into_contact).transpose()
}

/// The owner's rows changed after `since`, up to the watermark (a version above it may still be
/// committed below a row found: see `nodes::Watermarked`).
pub(crate) async fn list(c: &Conn, owner: &str, since: u64, limit: usize) -> StoreResult<Vec<Contact>> {
    let mut w = nodes::Watermarked::begin(c).await?;
    let mut rows = changed(c, &mut w, owner, since).await?;
    let newest = rows.iter().map(|r| r.ver).max();
    if w.catch_up(c, newest).await? {
        rows = changed(c, &mut w, owner, since).await?;
    }
    let until = w.until();
    rows.retain(|r| r.ver <= until);
    rows.truncate(limit);
    Ok(rows)
}

async fn changed(c: &Conn, w: &mut nodes::Watermarked, owner: &str, since: u64) -> StoreResult<Vec<Contact>> {
    let filter = doc! { "owner": owner, "ver": { "$gt": q(since) } };
    let docs: Vec<ContactDoc> = reads::find_in(c, CONTACTS, filter, Some(doc! { "ver": 1 }), w.session()).await?;
    docs.into_iter().map(ContactDoc::into_contact).collect()
}

#[derive(Deserialize)]
struct GroupOnly {
    group_id: String,
}

/// `a`'s groups, then whether `b` is a member of any of them (two queries on `members`).
pub(crate) async fn share_group(c: &Conn, a: &str, b: &str) -> StoreResult<bool> {
    let mine: Vec<GroupOnly> = reads::find_all(c, MEMBERS, doc! { "user": a }, None).await?;
    if mine.is_empty() {
        return Ok(false);
    }
    let ids: Vec<&str> = mine.iter().map(|g| g.group_id.as_str()).collect();
    let shared: Vec<GroupOnly> =
        reads::find_all(c, MEMBERS, doc! { "user": b, "group_id": { "$in": ids } }, None).await?;
    Ok(!shared.is_empty())
}

/// `user`'s groups (`members` by `{user}`).
pub(crate) async fn groups_of(c: &Conn, user: &str) -> StoreResult<Vec<(String, confab_actors::model::Member)>> {
    let docs: Vec<super::docs::MemberDoc> = reads::find_all(c, MEMBERS, doc! { "user": user }, None).await?;
    Ok(docs.into_iter().map(|d| (d.group_id.clone(), d.into_member())).collect())
}
