//! Messages in: client sends (with the `before_send` check), system messages, recalls.

use super::*;

impl Engine {
    /// Sends a message. The conversation actor is asked synchronously (before this returns), so
    /// requests from one connection reach it in the order they were made.
    pub fn send(
        &self,
        caller: &Caller,
        req: proto::SendReq,
        origin: Option<Origin>,
    ) -> impl std::future::Future<Output = Result<Message>> + 'static {
        // A client's sends count against its user's limit; the HTTP API (no connection) is trusted.
        let limited = match caller.conn_id {
            Some(_) => self.core.user_limits.sends.check(&caller.user, 1),
            None => Ok(()),
        };
        let hook = self.core.hooks.get().and_then(|h| h.before_send.clone());
        let names_file = req.body.as_ref().is_ok_and(|b| b.file_id().is_some());
        // Without a `before_send` hook or a file to look up, the actor is asked right here
        // (keeps a connection's order).
        let (prepared, checked) = match (limited, hook) {
            (Err(e), _) => (Some(Err(e)), None),
            (Ok(()), None) if !names_file => (Some(self.prepare_send(caller, req, origin)), None),
            (Ok(()), hook) => (None, Some((hook, caller.clone(), req, origin))),
        };
        let engine = self.clone();
        async move {
            let prepared = match (prepared, checked) {
                (Some(p), _) => p,
                (None, Some((hook, caller, req, origin))) => {
                    let req = engine.resolve_file(req).await?;
                    let req = match hook {
                        Some(hook) => engine.before_send(&*hook, &caller, req).await?,
                        None => req,
                    };
                    engine.prepare_send(&caller, req, origin)
                }
                (None, None) => Err(Error::internal("no send path")),
            };
            let (conv_id, init, submit, addr, first) = prepared?;
            match first.await {
                // The actor stopped (idle) between lookup and send: retry on a fresh one.
                Err(MailboxError::Closed) => {
                    engine.directory.forget(&conv_id, &addr);
                    engine.call(&conv_id, init, submit).await
                }
                other => other.map_err(mailbox)?,
            }
        }
    }

    /// Sends a message from the system account (`system` is the HTTP API's caller for
    /// `api.system_user`) to one user (`req.to`), without asking `before_send`: the backend
    /// wrote it, so there is nothing to moderate, and a hook that is down must not hold back the
    /// backend's own notifications. Otherwise exactly [`Engine::send`].
    pub async fn send_system_to_user(&self, system: &Caller, req: proto::SendReq) -> Result<Message> {
        if req.conv_id.is_some() || req.to.is_none() {
            return Err(Error::invalid("a system message to a user names the user (to), not a conversation"));
        }
        let req = self.resolve_file(req).await?;
        let (conv_id, init, submit, addr, first) = self.prepare_send(system, req, None)?;
        match first.await {
            // The actor stopped (idle) between lookup and send: retry on a fresh one.
            Err(MailboxError::Closed) => {
                self.directory.forget(&conv_id, &addr);
                self.call(&conv_id, init, submit).await
            }
            other => other.map_err(mailbox)?,
        }
    }

    /// Asks the `before_send` hook about a client message (after validating it) and applies
    /// its verdict: the request unchanged, with a rewritten (re-validated) body, or
    /// `message_rejected`.
    pub(super) async fn before_send(
        &self,
        hook: &dyn crate::outbox::BeforeSend,
        caller: &Caller,
        mut req: proto::SendReq,
    ) -> Result<proto::SendReq> {
        use crate::outbox::{SendCheck, Verdict};
        model::validate_id("client_msg_id", &req.client_msg_id)?;
        let body = req.body.clone()?;
        body.validate_client(self.core.limits.max_text_chars)?;
        let conv_id = match (&req.conv_id, &req.to) {
            (Some(c), None) => {
                model::conv_kind(c)?;
                c.clone()
            }
            (None, Some(to)) => {
                model::validate_id("to", to)?;
                model::direct_conv_id(&caller.user, to)
            }
            _ => return Err(Error::invalid("exactly one of conv_id and to is required")),
        };
        let check = SendCheck {
            conv_id,
            sender: caller.user.to_string(),
            device: caller.device.to_string(),
            client_msg_id: req.client_msg_id.clone(),
            body,
            reply_to: req.reply_to,
        };
        match hook.check(&check).await? {
            Verdict::Accept => Ok(req),
            Verdict::Reject(reason) => Err(Error::new(ErrorCode::MessageRejected, reason)),
            Verdict::Rewrite(body) => {
                body.validate_client(self.core.limits.max_text_chars)?;
                req.body = Ok(body);
                Ok(req)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    pub(super) fn prepare_send(
        &self,
        caller: &Caller,
        req: proto::SendReq,
        origin: Option<Origin>,
    ) -> Result<(String, Init, Submit, Addr<ConversationActor>, actix::dev::Request<ConversationActor, Submit>)> {
        model::validate_id("client_msg_id", &req.client_msg_id)?;
        let body = req.body?;
        body.validate_client(self.core.limits.max_text_chars)?;
        let (conv_id, init) = match (req.conv_id, req.to) {
            (Some(c), None) => {
                model::conv_kind(&c)?;
                (c, Init::Load)
            }
            (None, Some(to)) => {
                model::validate_id("to", &to)?;
                (model::direct_conv_id(&caller.user, &to), Init::Direct(caller.user.to_string(), to))
            }
            _ => return Err(Error::invalid("exactly one of conv_id and to is required")),
        };
        let submit = Submit {
            sender: Some(caller.user.clone()),
            client_msg_id: Some(req.client_msg_id),
            body,
            reply_to: req.reply_to,
            origin,
        };
        let addr = self.actor(&conv_id, init.clone())?;
        let first = addr.send(submit.clone());
        Ok((conv_id, init, submit, addr, first))
    }

    /// Sends a system message (server-generated) into a conversation.
    pub async fn send_system(&self, conv_id: &str, event: &str, data: serde_json::Value) -> Result<Message> {
        self.send_system_keyed(conv_id, event, data, None).await
    }

    /// Sends a system message with an idempotency key, unique among system messages: a re-send
    /// with the same key returns the message stored first.
    pub async fn send_system_keyed(
        &self,
        conv_id: &str,
        event: &str,
        data: serde_json::Value,
        client_msg_id: Option<String>,
    ) -> Result<Message> {
        if let Some(k) = &client_msg_id {
            model::validate_id("client_msg_id", k)?;
        }
        let submit = Submit {
            sender: None,
            client_msg_id,
            body: Body::System { event: event.into(), data },
            reply_to: None,
            origin: None,
        };
        self.call(conv_id, Init::Load, submit).await
    }

    pub async fn recall(&self, caller: &Caller, req: proto::SeqReq) -> Result<Message> {
        model::conv_kind(&req.conv_id)?;
        self.call(&req.conv_id, Init::Load, Recall { by: caller.user.clone(), seq: req.seq, admin: false }).await
    }

    /// An administrative recall (the HTTP integration API): any message, at any time, recorded
    /// as recalled by `by` (who need not be a member). Members' devices get the same `recall`
    /// event as for any recall.
    pub async fn recall_admin(&self, by: &str, conv_id: &str, seq: u64) -> Result<Message> {
        model::conv_kind(conv_id)?;
        model::validate_id("by", by)?;
        self.call(conv_id, Init::Load, Recall { by: Arc::from(by), seq, admin: true }).await
    }
}
