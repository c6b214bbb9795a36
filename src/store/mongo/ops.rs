//! The write operations other than appends, each inside the batch's transaction. Like on the
//! embedded store, each checks everything that can fail with a domain error (`NotFound`,
//! `Conflict`) before its first write, so such an error leaves the transaction untouched and the
//! rest of the batch commits. The outer `Err` (an [`AttemptError`]) fails or retries the batch.

use std::collections::{BTreeSet, HashMap};

use confab_actors::error::{ErrorCode, StoreError};
use confab_actors::model::{group_conv_id, Body, FlagsPatch, ReplyRef, UserConvState};
use confab_actors::store::{MemberChange, NewGroup, Recalled};
use mongodb::bson::{doc, Document};
use mongodb::options::ReturnDocument;
use serde::Deserialize;

use super::docs::{
    ban_id, body_json, i, q, u, BanDoc, ConvDoc, DeletionDoc, GroupDoc, MemberDoc, MessageDoc, RowDoc, CONVERSATIONS,
    DELETIONS, GROUPS, GROUP_BANS, GROUP_REQUESTS, MEMBERS, MESSAGES, USER_CONVS,
};
use super::tx::{fatal, stmt, stmt_all, Answer, AttemptResult, Tx};

type OpResult = AttemptResult<Result<Answer, StoreError>>;

fn not_found(what: impl Into<String>) -> OpResult {
    Ok(Err(StoreError::NotFound(what.into())))
}

#[derive(Deserialize)]
struct SeqOnly {
    seq: i64,
}

impl Tx<'_> {
    async fn row(&mut self, user: &str, conv_id: &str) -> AttemptResult<Option<RowDoc>> {
        self.find_one(USER_CONVS, doc! { "user": user, "conv_id": conv_id }).await
    }

    async fn set_row(&mut self, user: &str, conv_id: &str, set: Document) -> AttemptResult<()> {
        self.set_one(USER_CONVS, doc! { "user": user, "conv_id": conv_id }, set).await?;
        Ok(())
    }

    pub async fn recall(&mut self, conv_id: &str, seq: u64, by: &str, ver: u64) -> OpResult {
        let Some(stored) = self.find_one::<MessageDoc>(MESSAGES, doc! { "conv_id": conv_id, "seq": q(seq) }).await?
        else {
            return not_found(format!("message {conv_id}/{seq}"));
        };
        let mut message = stored.into_message().map_err(fatal)?;
        if message.is_recalled() {
            return Ok(Ok(Answer::Recalled(Recalled { message, changed: false })));
        }
        let v = i(ver).map_err(fatal)?;
        // The conversation first: if it is missing, nothing has been written yet.
        let conv = self.set_one(CONVERSATIONS, doc! { "_id": conv_id }, doc! { "ver": v }).await?;
        if conv.n == 0 {
            return Ok(Err(StoreError::Unavailable(format!("message {conv_id}/{seq} has no conversation"))));
        }
        message.body = Body::Recalled { by: by.to_owned() };
        message.ver = ver;
        let body = body_json(&message.body).map_err(fatal)?;
        let set = doc! { "body": body, "ver": v, "recall_ver": v };
        self.set_one(MESSAGES, doc! { "conv_id": conv_id, "seq": q(seq) }, set).await?;
        // Replies keep their place and sender, but no longer quote the recalled text.
        let mut scrubbed = ReplyRef { seq, sender: None, quote: String::new(), recalled: false };
        scrubbed.scrub();
        self.update(
            MESSAGES,
            vec![stmt_all(
                doc! { "conv_id": conv_id, "reply_to.seq": q(seq) },
                doc! { "$set": { "reply_to.quote": scrubbed.quote, "reply_to.recalled": true } },
            )],
        )
        .await?;
        Ok(Ok(Answer::Recalled(Recalled { message, changed: true })))
    }

    pub async fn mark_read(&mut self, user: &str, conv_id: &str, seq: u64, ver: u64) -> OpResult {
        let Some(row) = self.row(user, conv_id).await? else {
            return not_found(format!("{user} has no row in {conv_id}"));
        };
        let Some(conv) = self.find_one::<ConvDoc>(CONVERSATIONS, doc! { "_id": conv_id }).await? else {
            return not_found(format!("conversation {conv_id}"));
        };
        let mut state = row.state().map_err(fatal)?;
        let Some(target) = state.read_target(seq, u(conv.last_seq).map_err(fatal)?) else {
            return Ok(Ok(Answer::MaybeState(None)));
        };
        state.read_seq = target;
        state.ver = ver;
        self.set_row(user, conv_id, doc! { "read_seq": i(target).map_err(fatal)?, "ver": i(ver).map_err(fatal)? })
            .await?;
        Ok(Ok(Answer::MaybeState(Some(state))))
    }

    pub async fn set_flags(&mut self, user: &str, conv_id: &str, patch: &FlagsPatch, ver: u64) -> OpResult {
        let mut set = doc! { "ver": i(ver).map_err(fatal)? };
        for (name, v) in [("pinned", patch.pinned), ("muted", patch.muted), ("hidden", patch.hidden)] {
            if let Some(v) = v {
                set.insert(name, v);
            }
        }
        let updated = self
            .conn
            .coll::<RowDoc>(USER_CONVS)
            .find_one_and_update(doc! { "user": user, "conv_id": conv_id }, doc! { "$set": set })
            .return_document(ReturnDocument::After)
            .session(&mut self.session)
            .await
            .map_err(|e| self.err("set_flags", e))?;
        match updated {
            Some(row) => Ok(Ok(Answer::State(row.state().map_err(fatal)?))),
            None => not_found(format!("{user} has no row in {conv_id}")),
        }
    }

    pub async fn delete_for_user(&mut self, user: &str, conv_id: &str, seqs: &[u64], ver: u64) -> OpResult {
        let Some(row) = self.row(user, conv_id).await? else {
            return not_found(format!("{user} has no row in {conv_id}"));
        };
        let wanted: Vec<i64> = seqs.iter().map(|&s| q(s)).collect::<BTreeSet<_>>().into_iter().collect();
        let v = i(ver).map_err(fatal)?;
        if !wanted.is_empty() {
            let existing: Vec<SeqOnly> =
                self.find_all(MESSAGES, doc! { "conv_id": conv_id, "seq": { "$in": &wanted } }).await?;
            let done: Vec<SeqOnly> =
                self.find_all(DELETIONS, doc! { "user": user, "conv_id": conv_id, "seq": { "$in": &wanted } }).await?;
            let done: BTreeSet<i64> = done.into_iter().map(|d| d.seq).collect();
            let new: BTreeSet<i64> = existing.into_iter().map(|m| m.seq).filter(|s| !done.contains(s)).collect();
            let docs: Vec<DeletionDoc> = new
                .into_iter()
                .map(|seq| DeletionDoc { user: user.to_owned(), conv_id: conv_id.to_owned(), seq, ver: v })
                .collect();
            self.insert(DELETIONS, &docs).await?;
        }
        self.set_row(user, conv_id, doc! { "ver": v }).await?;
        let mut state = row.state().map_err(fatal)?;
        state.ver = ver;
        Ok(Ok(Answer::State(state)))
    }

    pub async fn clear_for_user(&mut self, user: &str, conv_id: &str, ver: u64) -> OpResult {
        let Some(row) = self.row(user, conv_id).await? else {
            return not_found(format!("{user} has no row in {conv_id}"));
        };
        let last_seq = match self.find_one::<ConvDoc>(CONVERSATIONS, doc! { "_id": conv_id }).await? {
            Some(conv) => u(conv.last_seq).map_err(fatal)?,
            None => 0,
        };
        let mut state = row.state().map_err(fatal)?;
        state.clear(last_seq, ver);
        let set = doc! {
            "cleared_seq": i(state.cleared_seq).map_err(fatal)?,
            "read_seq": i(state.read_seq).map_err(fatal)?,
            "ver": i(ver).map_err(fatal)?,
        };
        self.set_row(user, conv_id, set).await?;
        Ok(Ok(Answer::State(state)))
    }

    pub async fn create_group(&mut self, g: &NewGroup, ver: u64) -> OpResult {
        let conv_id = group_conv_id(&g.id);
        if self.find_one::<GroupDoc>(GROUPS, doc! { "_id": &g.id }).await?.is_some() {
            return Ok(Err(StoreError::Conflict(format!("group {} already exists", g.id))));
        }
        if self.find_one::<ConvDoc>(CONVERSATIONS, doc! { "_id": &conv_id }).await?.is_some() {
            return Ok(Err(StoreError::Conflict(format!("conversation {conv_id} already exists"))));
        }
        let plan = g.plan(ver);
        let members: Vec<MemberDoc> = plan.members.iter().map(|m| MemberDoc::new(&g.id, m)).collect();
        let mut rows = Vec::with_capacity(plan.members.len());
        for m in &plan.members {
            let row = RowDoc::new(&m.user_id, &conv_id, &plan.row).map_err(fatal)?.to_document().map_err(fatal)?;
            rows.push(stmt(doc! { "user": &m.user_id, "conv_id": &conv_id }, row, true));
        }
        let (group, message, conv) = (plan.group, plan.message, plan.conv);
        self.insert(MEMBERS, &members).await?;
        self.update(USER_CONVS, rows).await?;
        self.insert(GROUPS, &[GroupDoc::from_group(&group).map_err(fatal)?]).await?;
        self.insert(MESSAGES, &[MessageDoc::from_message(&message).map_err(fatal)?]).await?;
        self.insert(CONVERSATIONS, &[ConvDoc::from_conv(&conv).map_err(fatal)?]).await?;
        self.overlay.insert(conv_id, 1);
        Ok(Ok(Answer::Created(Box::new(group), message)))
    }

    pub async fn change_members(&mut self, c: &MemberChange, ver: u64) -> OpResult {
        let (group, conv) = match self.live_group(&c.group_id).await? {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        // A banned user is not added (checked before anything is written).
        let adding: Vec<&str> =
            c.add.iter().map(|(u, _)| u.as_str()).filter(|u| !c.unban.iter().any(|x| x == u)).collect();
        if !adding.is_empty() {
            let ids: Vec<String> = adding.iter().map(|u| ban_id(&c.group_id, u)).collect();
            let banned: Vec<BanDoc> = self.find_all(GROUP_BANS, doc! { "_id": { "$in": ids } }).await?;
            if let Some(b) = banned.first() {
                let e = StoreError::Refused(ErrorCode::Banned, format!("{} is banned from this group", b.user));
                return Ok(Err(e));
            }
        }
        let seq = conv.next_seq().map_err(fatal)?;
        // What the store holds of the users the change names.
        let users: Vec<&str> = c
            .add
            .iter()
            .map(|(x, _)| x.as_str())
            .chain(c.remove.iter().map(String::as_str))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let before_members = self.members_among(&c.group_id, &users).await?;
        let found: Vec<RowDoc> =
            self.find_all(USER_CONVS, doc! { "conv_id": &conv.id, "user": { "$in": &users } }).await?;
        let mut before_rows: HashMap<String, UserConvState> = HashMap::new();
        for r in found {
            before_rows.insert(r.user.clone(), r.state().map_err(fatal)?);
        }
        let delta = c.apply(seq, ver, &before_members, &before_rows, group.member_count);
        let inserts: Vec<MemberDoc> = delta.insert.iter().map(|m| MemberDoc::new(&c.group_id, m)).collect();
        let deletes: Vec<&str> = delta.delete.iter().map(String::as_str).collect();
        let mut row_stmts = Vec::new();
        for (user, state) in &delta.rows {
            let row = RowDoc::new(user, &conv.id, state).map_err(fatal)?.to_document().map_err(fatal)?;
            row_stmts.push(stmt(doc! { "user": user, "conv_id": &conv.id }, row, true));
        }
        let message = self.append_system(&conv, &c.system_body, c.ts, ver).await?;
        self.insert(MEMBERS, &inserts).await?;
        if !deletes.is_empty() {
            self.conn
                .coll::<Document>(MEMBERS)
                .delete_many(doc! { "group_id": &c.group_id, "user": { "$in": &deletes } })
                .session(&mut self.session)
                .await
                .map_err(|e| self.err("delete from members", e))?;
        }
        self.update(USER_CONVS, row_stmts).await?;
        if !c.unban.is_empty() {
            let ids: Vec<String> = c.unban.iter().map(|u| ban_id(&c.group_id, u)).collect();
            self.conn
                .coll::<Document>(GROUP_BANS)
                .delete_many(doc! { "_id": { "$in": ids } })
                .session(&mut self.session)
                .await
                .map_err(|e| self.err("delete from group_bans", e))?;
        }
        if !c.add.is_empty() {
            let ids: Vec<String> = c.add.iter().map(|(u, _)| ban_id(&c.group_id, u)).collect();
            self.conn
                .coll::<Document>(GROUP_REQUESTS)
                .delete_many(doc! { "_id": { "$in": ids } })
                .session(&mut self.session)
                .await
                .map_err(|e| self.err("delete from group_requests", e))?;
        }
        let mut ban_stmts = Vec::new();
        for b in &c.ban {
            let d = BanDoc::new(&c.group_id, b);
            let set = mongodb::bson::to_document(&d)
                .map_err(|e| fatal(StoreError::Unavailable(format!("cannot encode a ban: {e}"))))?;
            ban_stmts.push(stmt(doc! { "_id": &d.id }, doc! { "$set": set }, true));
        }
        self.update(GROUP_BANS, ban_stmts).await?;
        let count = i(delta.member_count).map_err(fatal)?;
        self.set_one(GROUPS, doc! { "_id": &c.group_id }, doc! { "member_count": count }).await?;
        Ok(Ok(Answer::Message(message)))
    }
}
