//! The WebSocket ops: one `Op` in, its reply encoded.

use super::*;
use crate::model::ContactOp;

#[derive(Serialize)]
pub(super) struct GroupResult {
    group: Group,
}

#[derive(Serialize)]
pub(super) struct MembersResult {
    members: Vec<Member>,
}

#[derive(Serialize)]
pub(super) struct MessageResult {
    message: Message,
}

/// The reply to `group_update`, `group_set_role` and `group_dismiss`.
#[derive(Serialize)]
pub(super) struct GroupChangeResult {
    group: Group,
    message: Message,
}

impl From<(Group, Message)> for GroupChangeResult {
    fn from((group, message): (Group, Message)) -> Self {
        Self { group, message }
    }
}

#[derive(Serialize)]
pub(super) struct ConfirmResult {
    confirmation: model::NoticeConfirmation,
}

#[derive(Serialize)]
pub(super) struct RequestsResult {
    requests: Vec<model::JoinRequest>,
}

#[derive(Serialize)]
pub(super) struct RequestResult {
    request: model::JoinRequest,
}

#[derive(Serialize)]
pub(super) struct BansResult {
    bans: Vec<model::GroupBan>,
}

#[derive(Serialize)]
pub(super) struct UsersResult {
    users: Vec<model::Profile>,
}

#[derive(Serialize)]
pub(super) struct ProfileResult {
    user: model::Profile,
}

#[derive(Serialize)]
pub(super) struct Pong {
    ts: i64,
}

impl Engine {
    /// A contact change by the caller, as its reply.
    async fn change_contact_result(&self, caller: &Caller, peer: &str, op: ContactOp) -> Result<ContactResult> {
        self.change_contact(&caller.user, peer, op, caller.conn_id).await.map(|contact| ContactResult { contact })
    }

    /// Runs one request and encodes its reply. Returns `None` when the reply was already queued
    /// on the connection by the conversation actor (a successful WebSocket `send` or group
    /// change). `slot` is the request's slot on its connection: whoever queues the reply frees
    /// it first.
    pub async fn dispatch(
        &self,
        caller: Caller,
        id: Box<RawValue>,
        op: Op,
        slot: Option<Arc<Slot>>,
    ) -> Option<ByteString> {
        let metrics = self.core.metrics.clone();
        let enc = |id: &RawValue, r: Result<_>| -> Option<ByteString> {
            Some(match r {
                Ok(v) => {
                    tracing::debug!("answered");
                    v
                }
                Err(e) => {
                    tracing::debug!(code = %e.code, error = %e.message, "refused");
                    metrics.request_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if e.code == ErrorCode::RateLimited {
                        metrics.rate_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    proto::encode_error(Some(id), &e)
                }
            })
        };
        fn ok<T: Serialize>(id: &RawValue, r: Result<T>) -> Result<ByteString> {
            r.map(|v| proto::encode_result(id, &v))
        }
        let origin =
            caller.conn_id.map(|conn_id| Origin { user: caller.user.clone(), conn_id, req_id: id.clone(), slot });
        // A change through a conversation actor: with an origin, the actor queued the reply.
        let acked = |r: Result<Message>, encode: fn(Message) -> MessageResult| match (r, &origin) {
            (Ok(_), Some(_)) => None,
            (Ok(m), None) => enc(&id, ok(&id, Ok(encode(m)))),
            (Err(e), _) => enc(&id, Err(e)),
        };
        let message = |message| MessageResult { message };
        match op {
            Op::Ping(_) => enc(&id, ok(&id, Ok(Pong { ts: crate::clock::now_ms() }))),
            Op::Send(req) => acked(self.send(&caller, req, origin.clone()).await, message),
            Op::History(req) => enc(&id, ok(&id, self.history(&caller, req).await)),
            Op::Conversations(req) => enc(&id, ok(&id, self.conversations(&caller, req).await)),
            Op::Conversation(req) => enc(&id, ok(&id, self.conversation(&caller, &req.conv_id).await)),
            Op::Read(req) => enc(&id, ok(&id, self.read(&caller, req).await)),
            Op::ReadCount(req) => enc(&id, ok(&id, self.read_count(&caller, req).await)),
            Op::Recall(req) => enc(&id, ok(&id, self.recall(&caller, req).await.map(message))),
            Op::Delete(req) => enc(&id, ok(&id, self.delete(&caller, req).await)),
            Op::Clear(req) => enc(&id, ok(&id, self.clear(&caller, req).await)),
            Op::Changes(req) => enc(&id, ok(&id, self.changes(&caller, req).await)),
            Op::SetFlags(req) => enc(&id, ok(&id, self.set_flags(&caller, req).await)),
            Op::GroupCreate(req) => {
                enc(&id, ok(&id, self.group_create(&caller, req).await.map(|group| GroupResult { group })))
            }
            Op::GroupAdd(req) => acked(self.group_op(&caller, GroupOp::Add(req), origin.clone()).await, message),
            Op::GroupRemove(req) => acked(self.group_op(&caller, GroupOp::Remove(req), origin.clone()).await, message),
            Op::GroupLeave(req) => {
                acked(self.group_op(&caller, GroupOp::Leave(req.group_id), origin.clone()).await, message)
            }
            Op::GroupMembers(req) => enc(
                &id,
                ok(&id, self.group_members(&caller, &req.group_id).await.map(|members| MembersResult { members })),
            ),
            Op::GroupInfo(req) => {
                enc(&id, ok(&id, self.group_info(&caller, &req.group_id).await.map(|group| GroupResult { group })))
            }
            Op::GroupUpdate(req) => match &origin {
                Some(_) => acked(self.group_op(&caller, GroupOp::Update(req), origin.clone()).await, message),
                None => enc(&id, ok(&id, self.group_update(&caller, req).await.map(GroupChangeResult::from))),
            },
            Op::GroupSetRole(req) => match &origin {
                Some(_) => acked(self.group_op(&caller, GroupOp::SetRole(req), origin.clone()).await, message),
                None => enc(&id, ok(&id, self.group_set_role(&caller, req).await.map(GroupChangeResult::from))),
            },
            Op::GroupDismiss(req) => match &origin {
                Some(_) => acked(self.group_op(&caller, GroupOp::Dismiss(req.group_id), origin.clone()).await, message),
                None => {
                    enc(&id, ok(&id, self.group_dismiss(&caller, &req.group_id).await.map(GroupChangeResult::from)))
                }
            },
            Op::UsersGet(req) => enc(&id, ok(&id, self.users_get(&req.ids).await.map(|users| UsersResult { users }))),
            Op::ProfileUpdate(req) => {
                enc(&id, ok(&id, self.profile_update(&caller, req).await.map(|user| ProfileResult { user })))
            }
            Op::GroupJoin(req) => enc(&id, ok(&id, self.group_join(&caller, &req.group_id, req.message).await)),
            Op::GroupInvite(req) => {
                enc(&id, ok(&id, self.group_invite(&caller, &req.group_id, req.members, req.message).await))
            }
            Op::GroupRequests(req) => enc(
                &id,
                ok(
                    &id,
                    self.group_requests(Some(&caller), &req.group_id).await.map(|requests| RequestsResult { requests }),
                ),
            ),
            Op::GroupApprove(req) => {
                enc(&id, ok(&id, self.group_approve(&caller, &req.group_id, &req.user_id).await.map(message)))
            }
            Op::GroupReject(req) => enc(
                &id,
                ok(
                    &id,
                    self.group_reject(&caller, &req.group_id, &req.user_id)
                        .await
                        .map(|request| RequestResult { request }),
                ),
            ),
            Op::GroupNoticeConfirm(req) => enc(
                &id,
                ok(
                    &id,
                    self.group_notice_confirm(&caller, &req.group_id)
                        .await
                        .map(|confirmation| ConfirmResult { confirmation }),
                ),
            ),
            Op::GroupNoticeConfirmations(req) => {
                enc(&id, ok(&id, self.group_notice_confirmations(Some(&caller), &req.group_id).await))
            }
            Op::GroupMute(req) => acked(self.group_op(&caller, GroupOp::Mute(req), origin.clone()).await, message),
            Op::GroupUnmute(req) => acked(self.group_op(&caller, GroupOp::Unmute(req), origin.clone()).await, message),
            Op::GroupMuteAll(req) => {
                acked(self.group_op(&caller, GroupOp::MuteAll(req), origin.clone()).await, message)
            }
            Op::GroupBan(req) => acked(self.group_op(&caller, GroupOp::Ban(req), origin.clone()).await, message),
            Op::GroupUnban(req) => acked(self.group_op(&caller, GroupOp::Unban(req), origin.clone()).await, message),
            Op::GroupBans(req) => {
                enc(&id, ok(&id, self.group_bans(Some(&caller), &req.group_id).await.map(|bans| BansResult { bans })))
            }
            Op::FriendRequest(req) => {
                let op = ContactOp::Request { message: req.message };
                enc(&id, ok(&id, self.change_contact_result(&caller, &req.user_id, op).await))
            }
            Op::FriendAccept(req) => {
                enc(&id, ok(&id, self.change_contact_result(&caller, &req.user_id, ContactOp::Accept).await))
            }
            Op::FriendReject(req) => {
                enc(&id, ok(&id, self.change_contact_result(&caller, &req.user_id, ContactOp::Reject).await))
            }
            Op::FriendCancel(req) => {
                enc(&id, ok(&id, self.change_contact_result(&caller, &req.user_id, ContactOp::Cancel).await))
            }
            Op::FriendDelete(req) => {
                enc(&id, ok(&id, self.change_contact_result(&caller, &req.user_id, ContactOp::Delete).await))
            }
            Op::ContactUpdate(req) => {
                let op = ContactOp::Update { remark: req.remark, tags: req.tags };
                enc(&id, ok(&id, self.change_contact_result(&caller, &req.user_id, op).await))
            }
            Op::Block(req) => {
                enc(&id, ok(&id, self.change_contact_result(&caller, &req.user_id, ContactOp::Block).await))
            }
            Op::Unblock(req) => {
                enc(&id, ok(&id, self.change_contact_result(&caller, &req.user_id, ContactOp::Unblock).await))
            }
            Op::Contact(req) => enc(&id, ok(&id, self.contact(&caller.user, &req.user_id).await)),
            Op::Contacts(req) => enc(&id, ok(&id, self.contacts(&caller.user, req.since, req.limit).await)),
            Op::PushRegister(req) => enc(
                &id,
                ok(
                    &id,
                    self.push_register(&caller.user, &caller.device, &req.provider, &req.token)
                        .await
                        .map(|registration| serde_json::json!({ "registration": registration })),
                ),
            ),
            Op::PushUnregister(_) => enc(
                &id,
                ok(
                    &id,
                    self.push_unregister(&caller.user, &caller.device)
                        .await
                        .map(|removed| serde_json::json!({ "removed": removed })),
                ),
            ),
            // The session answers `refresh` itself (it changes the connection's token).
            Op::Refresh(_) => enc(&id, Err(Error::invalid("refresh is answered by the WebSocket session"))),
        }
    }
}
