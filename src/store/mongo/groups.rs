//! Group changes other than membership (profile, roles, mutes, dismissal), each inside the batch's
//! transaction. Like the other operations, each checks everything that can fail with a domain
//! error before its first write.

use std::collections::HashMap;

use confab_actors::error::{ErrorCode, StoreError};
use confab_actors::model::{group_conv_id, Body, Group, GroupBan, JoinRequest, Member, Message, NoticeConfirmation};
use confab_actors::store::{live_group, GroupDismiss, GroupUpdate, MuteChange, RoleChange, StoreResult};
use mongodb::bson::{doc, Document};

use super::docs::{
    ban_id, i, BanDoc, ConfirmationDoc, ConvDoc, GroupDoc, MemberDoc, MessageDoc, RequestDoc, CONVERSATIONS, GROUPS,
    GROUP_BANS, GROUP_REQUESTS, MEMBERS, MESSAGES, NOTICE_CONFIRMATIONS, USER_CONVS,
};
use super::tx::{fatal, stmt, Answer, AttemptError, AttemptResult, Tx};

type OpResult = AttemptResult<Result<Answer, StoreError>>;

impl Tx<'_> {
    /// The group (not dismissed) and its conversation, or the domain error.
    pub(super) async fn live_group(&mut self, group_id: &str) -> AttemptResult<Result<(Group, ConvDoc), StoreError>> {
        let group = self.find_one::<GroupDoc>(GROUPS, doc! { "_id": group_id }).await?;
        let group = match live_group(group.map(GroupDoc::into_group).transpose().map_err(fatal)?, group_id) {
            Ok(g) => g,
            Err(e) => return Ok(Err(e)),
        };
        let conv_id = group_conv_id(group_id);
        let Some(conv) = self.find_one::<ConvDoc>(CONVERSATIONS, doc! { "_id": &conv_id }).await? else {
            return Ok(Err(StoreError::Unavailable(format!("group {group_id} has no conversation"))));
        };
        Ok(Ok((group, conv)))
    }

    /// The members of the group among `users`, by user.
    pub(super) async fn members_among(
        &mut self,
        group_id: &str,
        users: &[&str],
    ) -> AttemptResult<HashMap<String, Member>> {
        let found: Vec<MemberDoc> =
            self.find_all(MEMBERS, doc! { "group_id": group_id, "user": { "$in": users } }).await?;
        Ok(found.into_iter().map(|m| (m.user.clone(), m.into_member())).collect())
    }

    /// Appends the system message after `conv`'s last one: moves the conversation's `last_seq`
    /// on condition that it is still the value read (else another node appended meanwhile: the
    /// attempt is `Stale`), and inserts the message.
    pub(super) async fn append_system(
        &mut self,
        conv: &ConvDoc,
        body: &Body,
        ts: i64,
        ver: u64,
    ) -> AttemptResult<Message> {
        let seq = conv.next_seq().map_err(fatal)?;
        let moved = self
            .set_one(
                CONVERSATIONS,
                doc! { "_id": &conv.id, "last_seq": conv.last_seq },
                doc! { "last_seq": i(seq).map_err(fatal)?, "ver": i(ver).map_err(fatal)? },
            )
            .await?;
        if moved.n_modified != 1 {
            return Err(AttemptError::Stale(vec![conv.id.clone()]));
        }
        let message = Message::system(conv.id.clone(), seq, body.clone(), ts, ver);
        self.insert(MESSAGES, &[MessageDoc::from_message(&message).map_err(fatal)?]).await?;
        self.overlay.insert(conv.id.clone(), seq);
        Ok(message)
    }

    /// Appends the system message and stores the group's changed fields (`set`).
    async fn record(&mut self, group: Group, conv: ConvDoc, body: &Body, ts: i64, ver: u64, set: Document) -> OpResult {
        let message = self.append_system(&conv, body, ts, ver).await?;
        if !set.is_empty() {
            self.set_one(GROUPS, doc! { "_id": &group.id }, set).await?;
        }
        Ok(Ok(Answer::Created(Box::new(group), message)))
    }

    pub async fn update_group(&mut self, up: &GroupUpdate, ver: u64) -> OpResult {
        let (mut group, conv) = match self.live_group(&up.group_id).await? {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        up.patch.apply(&mut group, up.ts);
        let stored = GroupDoc::from_group(&group).map_err(fatal)?;
        let mut set = doc! { "name": &stored.name, "name_key": &stored.name_key };
        for (k, v) in [("avatar", &stored.avatar), ("notice", &stored.notice), ("ext", &stored.ext)] {
            match v {
                Some(v) => set.insert(k, v),
                None => set.insert(k, mongodb::bson::Bson::Null),
            };
        }
        set.insert("join_mode", to_bson(&stored.join_mode)?);
        set.insert("invite_mode", to_bson(&stored.invite_mode)?);
        set.insert("notice_ts", stored.notice_ts.map_or(mongodb::bson::Bson::Null, mongodb::bson::Bson::Int64));
        set.insert("notice_confirm", stored.notice_confirm);
        self.record(group, conv, &up.system_body, up.ts, ver, set).await
    }

    pub async fn set_roles(&mut self, c: &RoleChange, ver: u64) -> OpResult {
        let (mut group, conv) = match self.live_group(&c.group_id).await? {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        let users: Vec<&str> = c.roles.iter().map(|(u, _)| u.as_str()).collect();
        let members = self.members_among(&c.group_id, &users).await?;
        let changed = match c.apply(&mut group, &members) {
            Ok(changed) => changed,
            Err(e) => return Ok(Err(e)),
        };
        let stmts = changed
            .iter()
            .map(|m| {
                let role =
                    mongodb::bson::to_bson(&m.role).map_err(|e| fatal(StoreError::Unavailable(e.to_string())))?;
                Ok(stmt(doc! { "group_id": &c.group_id, "user": &m.user_id }, doc! { "$set": { "role": role } }, false))
            })
            .collect::<AttemptResult<Vec<_>>>()?;
        self.update(MEMBERS, stmts).await?;
        let set = doc! { "owner": &group.owner };
        self.record(group, conv, &c.system_body, c.ts, ver, set).await
    }

    pub async fn mute_members(&mut self, c: &MuteChange, ver: u64) -> OpResult {
        let (mut group, conv) = match self.live_group(&c.group_id).await? {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        let users: Vec<&str> = c.mutes.iter().map(|(u, _)| u.as_str()).collect();
        let members = self.members_among(&c.group_id, &users).await?;
        if let Some(missing) = users.iter().find(|u| !members.contains_key(**u)) {
            return Ok(Err(StoreError::NotFound(format!("{missing} is not a member"))));
        }
        let stmts: Vec<Document> = c
            .mutes
            .iter()
            .map(|(user, until)| {
                let set = match until {
                    Some(t) => doc! { "$set": { "muted_until": t } },
                    None => doc! { "$unset": { "muted_until": "" } },
                };
                stmt(doc! { "group_id": &c.group_id, "user": user }, set, false)
            })
            .collect();
        self.update(MEMBERS, stmts).await?;
        let mut set = Document::new();
        if let Some(all) = c.all {
            group.mute_all = all;
            set.insert("mute_all", all);
        }
        self.record(group, conv, &c.system_body, c.ts, ver, set).await
    }

    pub async fn put_join_requests(&mut self, group_id: &str, requests: &[JoinRequest]) -> OpResult {
        if let Err(e) = self.live_group(group_id).await? {
            return Ok(Err(e));
        }
        let ids: Vec<String> = requests.iter().map(|r| ban_id(group_id, &r.user_id)).collect();
        let banned: Vec<BanDoc> = self.find_all(GROUP_BANS, doc! { "_id": { "$in": &ids } }).await?;
        if let Some(b) = banned.first() {
            return Ok(Err(StoreError::Refused(ErrorCode::Banned, format!("{} is banned from this group", b.user))));
        }
        let mut stmts = Vec::new();
        for r in requests {
            let d = RequestDoc::new(group_id, r);
            let set = mongodb::bson::to_document(&d)
                .map_err(|e| fatal(StoreError::Unavailable(format!("cannot encode a request: {e}"))))?;
            stmts.push(stmt(doc! { "_id": &d.id }, doc! { "$set": set }, true));
        }
        self.update(GROUP_REQUESTS, stmts).await?;
        Ok(Ok(Answer::Requests(requests.to_vec())))
    }

    pub async fn remove_join_request(&mut self, group_id: &str, user: &str) -> OpResult {
        let removed: Option<RequestDoc> = self
            .conn
            .coll::<RequestDoc>(GROUP_REQUESTS)
            .find_one_and_delete(doc! { "_id": ban_id(group_id, user) })
            .session(&mut self.session)
            .await
            .map_err(|e| self.err("delete from group_requests", e))?;
        Ok(Ok(Answer::Requests(removed.map(RequestDoc::into_request).into_iter().collect())))
    }

    pub async fn dismiss_group(&mut self, d: &GroupDismiss, ver: u64) -> OpResult {
        let (mut group, conv) = match self.live_group(&d.group_id).await? {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        let v = i(ver).map_err(fatal)?;
        // `UserConvState::leave` for every active row at once; the dismissal is the next message.
        let left_seq = conv.last_seq + 1;
        self.conn
            .coll::<Document>(USER_CONVS)
            .update_many(
                doc! { "conv_id": &conv.id, "active": { "$in": [true, 1] } },
                doc! { "$set": { "active": false, "ver": v, "left_seq": left_seq, "hidden": false } },
            )
            .session(&mut self.session)
            .await
            .map_err(|e| self.err("deactivating rows", e))?;
        self.conn
            .coll::<Document>(MEMBERS)
            .delete_many(doc! { "group_id": &d.group_id })
            .session(&mut self.session)
            .await
            .map_err(|e| self.err("delete from members", e))?;
        group.dismissed = true;
        group.member_count = 0;
        let set = doc! { "dismissed": true, "member_count": 0_i64 };
        self.record(group, conv, &d.system_body, d.ts, ver, set).await
    }
}

fn to_bson<T: serde::Serialize>(v: &T) -> AttemptResult<mongodb::bson::Bson> {
    mongodb::bson::to_bson(v).map_err(|e| fatal(StoreError::Unavailable(format!("cannot encode a setting: {e}"))))
}

/// The users banned from a group (index `group`).
pub(crate) async fn bans(c: &super::conn::Conn, group_id: &str) -> StoreResult<Vec<GroupBan>> {
    let docs: Vec<BanDoc> = super::reads::find_all(c, GROUP_BANS, doc! { "group_id": group_id }, None).await?;
    Ok(docs.into_iter().map(BanDoc::into_ban).collect())
}

/// A group's pending join requests (index `group`).
pub(crate) async fn requests(c: &super::conn::Conn, group_id: &str) -> StoreResult<Vec<JoinRequest>> {
    let docs: Vec<RequestDoc> = super::reads::find_all(c, GROUP_REQUESTS, doc! { "group_id": group_id }, None).await?;
    Ok(docs.into_iter().map(RequestDoc::into_request).collect())
}

/// Records a confirmation (a single-document upsert: no version, outside the group-commit batch).
pub(crate) async fn confirm_notice(c: &super::conn::Conn, group_id: &str, n: &NoticeConfirmation) -> StoreResult<()> {
    let d = ConfirmationDoc::new(group_id, n);
    let set = mongodb::bson::to_document(&d).map_err(|e| StoreError::Unavailable(format!("cannot encode: {e}")))?;
    c.coll::<mongodb::bson::Document>(NOTICE_CONFIRMATIONS)
        .update_one(doc! { "_id": &d.id }, doc! { "$set": set })
        .upsert(true)
        .await
        .map_err(|e| c.fail("upsert into notice_confirmations", &e))?;
    Ok(())
}

pub(crate) async fn notice_confirmations(
    c: &super::conn::Conn,
    group_id: &str,
) -> StoreResult<Vec<NoticeConfirmation>> {
    let docs: Vec<ConfirmationDoc> =
        super::reads::find_all(c, NOTICE_CONFIRMATIONS, doc! { "group_id": group_id }, None).await?;
    Ok(docs.into_iter().map(ConfirmationDoc::into_confirmation).collect())
}

/// A page of groups by id.
pub(crate) async fn list(c: &super::conn::Conn, prefix: &str, after: &str, limit: usize) -> StoreResult<Vec<Group>> {
    let filter = super::users::id_page(prefix, after);
    let docs: Vec<GroupDoc> = super::reads::find_limit(c, GROUPS, filter, doc! { "_id": 1 }, limit).await?;
    docs.into_iter().map(GroupDoc::into_group).collect()
}
