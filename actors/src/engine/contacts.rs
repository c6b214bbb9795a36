//! Contacts: friend requests and their answers, friendships with remarks and tags, blocks, and
//! the sync of a user's contact rows. Each change is one store transaction
//! ([`Store::change_contact`](crate::store::Store::change_contact)), then a `contact` event to the
//! devices of each user whose row changed (but the requesting one, which gets the reply), and a reload of the one-to-one conversation's cached
//! relation on every node (so a block holds at once).

use super::*;
use crate::model::{Contact, ContactOp};
use crate::store::{ContactChange, ContactPlan};

/// The reply to a contact change: the caller's row after it.
#[derive(Debug, Serialize)]
pub struct ContactResult {
    pub contact: Contact,
}

/// The reply to `contact`.
#[derive(Debug, Serialize)]
pub struct ContactLookup {
    /// `null` when the two never had anything to do with each other.
    pub contact: Option<Contact>,
}

/// The reply to `contacts`.
#[derive(Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContactsResult {
    pub contacts: Vec<Contact>,
    /// Pass as `since` next time (the largest `ver` returned, or `since` when none).
    pub next_since: u64,
    pub has_more: bool,
}

/// The `contact` event: a row of the receiving user changed.
#[derive(Serialize)]
struct ContactEvent<'a> {
    /// The change, as the user who made it named it (`friend_request`, `friend_accept`, …).
    change: &'static str,
    /// The user who made it.
    by: &'a str,
    contact: &'a Contact,
}

impl Engine {
    /// `user` changes their contact with `peer` (over WebSocket as themselves, from connection
    /// `conn`, which gets the reply instead of the event; or through the HTTP API on their behalf).
    /// Refusals come back with their code and change nothing.
    pub async fn change_contact(&self, user: &str, peer: &str, op: ContactOp, conn: Option<u64>) -> Result<Contact> {
        model::validate_pair(user, peer)?;
        op.validate()?;
        if conn.is_some() && matches!(op, ContactOp::Request { .. }) {
            self.core.user_limits.asks.check(&Arc::from(user), 1)?;
        }
        let change = ContactChange { user: user.to_owned(), peer: peer.to_owned(), op, ts: crate::clock::now_ms() };
        let plan = self.core.store.change_contact(change.clone()).await?;
        if plan.changed {
            self.contact_changed(&change, &plan, conn);
        }
        Ok(plan.user)
    }

    /// Tells the devices whose rows changed, and every node's actor of the pair's conversation.
    fn contact_changed(&self, c: &ContactChange, plan: &ContactPlan, conn: Option<u64>) {
        let kind = c.op.kind();
        let rows = [(&plan.user, conn), (plan.peer.as_ref().unwrap_or(&plan.user), None)];
        for (row, except) in rows.into_iter().take(1 + usize::from(plan.peer.is_some())) {
            let frame = proto::encode_event("contact", &ContactEvent { change: kind, by: &c.user, contact: row });
            self.core.notify_user(&Arc::from(row.owner.as_str()), &frame, except);
        }
        let conv_id = model::direct_conv_id(&c.user, &c.peer);
        if let Some(addr) = self.directory.peek(&conv_id) {
            addr.do_send(ReloadRelation);
        }
        if let Some(cluster) = self.core.cluster() {
            cluster.broadcast(PeerCommand::ContactsChanged { conv_id });
        }
    }

    /// The caller's rows changed after `since`, oldest change first.
    pub async fn contacts(&self, user: &str, since: u64, limit: Option<usize>) -> Result<ContactsResult> {
        model::validate_id("user", user)?;
        model::validate_cursor("since", since)?;
        let limit = page(limit)?;
        let mut rows = self.core.store.list_contacts(user, since, limit + 1).await?;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let next_since = rows.iter().map(|r| r.ver).max().unwrap_or(since);
        Ok(ContactsResult { contacts: rows, next_since, has_more })
    }

    /// `user`'s row about `peer`.
    pub async fn contact(&self, user: &str, peer: &str) -> Result<ContactLookup> {
        model::validate_pair(user, peer)?;
        Ok(ContactLookup { contact: self.core.store.contact(user, peer).await? })
    }
}
