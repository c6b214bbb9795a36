//! Group changes other than membership (profile, roles, dismissal), each inside the batch's
//! transaction. Like the other operations, each checks everything that can fail with a domain
//! error before its first write.

use confab_actors::error::StoreError;
use confab_actors::model::{group_conv_id, Body, Group, Message, Role};
use confab_actors::store::{live_group, GroupDismiss, GroupUpdate, RoleChange};
use mongodb::bson::{doc, Document};

use super::docs::{
    i, u, ConvDoc, GroupDoc, MemberDoc, MessageDoc, CONVERSATIONS, GROUPS, MEMBERS, MESSAGES, USER_CONVS,
};
use super::tx::{fatal, stmt, Answer, AttemptError, AttemptResult, Tx};

type OpResult = AttemptResult<Result<Answer, StoreError>>;

impl Tx<'_> {
    /// The group (not dismissed) and its conversation, or the domain error.
    async fn live_group(&mut self, group_id: &str) -> AttemptResult<Result<(Group, ConvDoc), StoreError>> {
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

    /// Appends the system message after the conversation's last one and stores the group's
    /// changed fields (`set`).
    async fn record(&mut self, group: Group, conv: ConvDoc, body: &Body, ts: i64, ver: u64, set: Document) -> OpResult {
        let seq = u(conv.last_seq).map_err(fatal)? + 1;
        let v = i(ver).map_err(fatal)?;
        let moved = self
            .update(
                CONVERSATIONS,
                vec![stmt(
                    doc! { "_id": &conv.id, "last_seq": conv.last_seq },
                    doc! { "$set": { "last_seq": i(seq).map_err(fatal)?, "ver": v } },
                    false,
                )],
            )
            .await?;
        if moved.n_modified != 1 {
            return Err(AttemptError::Stale(vec![conv.id]));
        }
        let message = Message::system(conv.id.clone(), seq, body.clone(), ts, ver);
        self.insert(MESSAGES, &[MessageDoc::from_message(&message).map_err(fatal)?]).await?;
        if !set.is_empty() {
            self.update(GROUPS, vec![stmt(doc! { "_id": &group.id }, doc! { "$set": set }, false)]).await?;
        }
        self.overlay.insert(conv.id, seq);
        Ok(Ok(Answer::Created(Box::new(group), message)))
    }

    pub async fn update_group(&mut self, up: &GroupUpdate, ver: u64) -> OpResult {
        let (mut group, conv) = match self.live_group(&up.group_id).await? {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        up.patch.apply(&mut group);
        let stored = GroupDoc::from_group(&group).map_err(fatal)?;
        let mut set = doc! { "name": &stored.name };
        for (k, v) in [("avatar", &stored.avatar), ("notice", &stored.notice), ("ext", &stored.ext)] {
            match v {
                Some(v) => set.insert(k, v),
                None => set.insert(k, mongodb::bson::Bson::Null),
            };
        }
        self.record(group, conv, &up.system_body, up.ts, ver, set).await
    }

    pub async fn set_roles(&mut self, c: &RoleChange, ver: u64) -> OpResult {
        let (mut group, conv) = match self.live_group(&c.group_id).await? {
            Ok(x) => x,
            Err(e) => return Ok(Err(e)),
        };
        let users: Vec<&str> = c.roles.iter().map(|(u, _)| u.as_str()).collect();
        let found: Vec<MemberDoc> =
            self.find_all(MEMBERS, doc! { "group_id": &c.group_id, "user": { "$in": &users } }).await?;
        let mut final_roles: Vec<(String, Role)> = Vec::new();
        for (user, role) in &c.roles {
            if !found.iter().any(|m| m.user == *user) {
                return Ok(Err(StoreError::NotFound(format!("{user} is not a member of group {}", c.group_id))));
            }
            final_roles.retain(|(x, _)| x != user);
            final_roles.push((user.clone(), *role));
            if *role == Role::Owner {
                group.owner = user.clone();
            }
        }
        let stmts = final_roles
            .iter()
            .map(|(user, role)| {
                let role = mongodb::bson::to_bson(role).map_err(|e| fatal(StoreError::Unavailable(e.to_string())))?;
                Ok(stmt(doc! { "group_id": &c.group_id, "user": user }, doc! { "$set": { "role": role } }, false))
            })
            .collect::<AttemptResult<Vec<_>>>()?;
        self.update(MEMBERS, stmts).await?;
        let set = doc! { "owner": &group.owner };
        self.record(group, conv, &c.system_body, c.ts, ver, set).await
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
