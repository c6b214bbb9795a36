//! Reads and per-user state: history, conversation lists, read cursors and receipts,
//! deletions, changes and flags. Former members read up to their leaving.

use super::*;

#[derive(Serialize)]
pub(super) struct ReadResult {
    read_seq: u64,
}

#[derive(Serialize)]
pub(super) struct ReadCountResult {
    seq: u64,
    read: u64,
    total: u64,
}

impl Engine {
    /// The caller's active row in a conversation, or the right error.
    pub(super) async fn access(&self, user: &str, conv_id: &str) -> Result<UserConvState> {
        match self.row(user, conv_id).await? {
            s if s.active => Ok(s),
            _ => Err(Error::not_member()),
        }
    }

    /// The caller's row in a conversation, active or not (a former member's), or the right error.
    pub(super) async fn row(&self, user: &str, conv_id: &str) -> Result<UserConvState> {
        model::conv_kind(conv_id)?;
        match self.core.store.user_conv(user, conv_id).await? {
            Some(s) => Ok(s),
            None => match self.core.store.conversation(conv_id).await? {
                Some(_) => Err(Error::not_member()),
                None => Err(Error::not_found("no such conversation")),
            },
        }
    }

    /// A page of history. A former member (removed, left, or the group was dismissed) reads it up
    /// to the message that recorded their leaving, and no further.
    pub async fn history(&self, caller: &Caller, req: proto::HistoryReq) -> Result<HistoryResult> {
        page(req.limit)?;
        let state = self.row(&caller.user, &req.conv_id).await?;
        self.history_of(Some(&caller.user), req, Some(&state)).await
    }

    /// History as an administrator sees it (the HTTP integration API without `as_user`): no
    /// membership check and no per-user deletions; the conversation must exist.
    pub async fn history_admin(&self, req: proto::HistoryReq) -> Result<HistoryResult> {
        page(req.limit)?;
        model::conv_kind(&req.conv_id)?;
        if self.core.store.conversation(&req.conv_id).await?.is_none() {
            return Err(Error::not_found("no such conversation"));
        }
        self.history_of(None, req, None).await
    }

    /// History as `viewer` sees it (`None`: an administrator); `row`: the viewer's row. A former
    /// member's view ends where they left; a cleared conversation's starts after `cleared_seq`.
    pub(super) async fn history_of(
        &self,
        viewer: Option<&str>,
        req: proto::HistoryReq,
        row: Option<&UserConvState>,
    ) -> Result<HistoryResult> {
        let former = row.filter(|r| !r.active);
        let floor = row.map_or(0, |r| r.cleared_seq);
        let limit = page(req.limit)?;
        for (name, v) in [("before", req.before), ("after", req.after)] {
            if let Some(v) = v {
                model::validate_cursor(name, v)?;
            }
        }
        // A former member's view ends where they left: read that bound first.
        let cap = match former {
            Some(state) => {
                let last = self.core.store.conversation(&req.conv_id).await?.map(|c| c.last_seq).unwrap_or(0);
                Some(state.visible_upto(last))
            }
            None => None,
        };
        let q = match (req.before, req.after, cap) {
            (None, None, None) => HistoryQuery::Latest { limit },
            (None, None, Some(cap)) => HistoryQuery::Before { seq: cap + 1, limit },
            (Some(seq), None, cap) => HistoryQuery::Before { seq: cap.map_or(seq, |c| seq.min(c + 1)), limit },
            (None, Some(seq), _) => HistoryQuery::After { seq: seq.max(floor), limit },
            (Some(_), Some(_), _) => return Err(Error::invalid("give at most one of before and after")),
        };
        let mut messages = self.core.store.history(&req.conv_id, viewer, q).await?;
        messages.retain(|m| m.seq > floor);
        let last_seq = match cap {
            Some(cap) => {
                messages.retain(|m| m.seq <= cap);
                cap
            }
            None => self.core.store.conversation(&req.conv_id).await?.map(|c| c.last_seq).unwrap_or(0),
        };
        let has_more = match q {
            HistoryQuery::After { seq, .. } => messages.last().map(|m| m.seq).unwrap_or(seq) < last_seq,
            HistoryQuery::Before { seq, .. } => {
                messages.first().map(|m| m.seq).unwrap_or(seq.min(last_seq + 1)) > floor + 1
            }
            HistoryQuery::Latest { .. } => messages.first().map(|m| m.seq > floor + 1).unwrap_or(false),
        };
        Ok(HistoryResult { messages, last_seq, has_more })
    }

    pub async fn conversations(&self, caller: &Caller, req: proto::ConversationsReq) -> Result<ConversationsResult> {
        let limit = page(req.limit)?;
        model::validate_cursor("since", req.since)?;
        // One more than asked, so `has_more` is exact.
        let mut views = self.core.store.list_conversations(&caller.user, req.since, limit + 1).await?;
        let has_more = views.len() > limit;
        views.truncate(limit);
        let next_since = views.iter().map(|v| v.cursor()).max().unwrap_or(req.since);
        Ok(ConversationsResult {
            conversations: views.into_iter().map(ConversationItem::from).collect(),
            next_since,
            has_more,
        })
    }

    /// The user's total unread count: the sum over all their conversations (one read of their
    /// rows and conversations, no messages), and how many conversations have unread messages.
    pub async fn unread_total(&self, user: &str) -> Result<(u64, u64)> {
        model::validate_id("user", user)?;
        Ok(self.core.store.unread(user).await?)
    }

    pub async fn conversation(&self, caller: &Caller, conv_id: &str) -> Result<ConversationItem> {
        model::conv_kind(conv_id)?;
        match self.core.store.conversation_view(&caller.user, conv_id).await? {
            Some(v) => Ok(v.into()),
            None => Err(Error::not_found("no such conversation")),
        }
    }

    /// Moves the caller's read cursor forward and tells their other devices and, one-to-one,
    /// the other participant (a read receipt).
    pub async fn read(&self, caller: &Caller, req: proto::ReadReq) -> Result<impl Serialize> {
        let state = self.access(&caller.user, &req.conv_id).await?;
        self.settle_hidden(&caller.user, &req.conv_id, &state).await?;
        let Some(new) = self.core.store.mark_read(&caller.user, &req.conv_id, req.seq).await? else {
            return Ok(ReadResult { read_seq: state.read_seq });
        };
        let frame = proto::encode_event(
            "read",
            &proto::ReadEvent { conv_id: &req.conv_id, user_id: &caller.user, read_seq: new.read_seq },
        );
        self.core.notify_user(&caller.user, &frame, caller.conn_id);
        if model::conv_kind(&req.conv_id)? == ConvKind::Direct {
            if let Some(conv) = self.core.store.conversation(&req.conv_id).await? {
                for peer in conv.members.iter().filter(|m| **m != *caller.user) {
                    self.core.notify_user(&Arc::from(peer.as_str()), &frame, None);
                }
            }
        }
        Ok(ReadResult { read_seq: new.read_seq })
    }

    /// Whether the row is flagged hidden but something newer than the hiding has happened in the
    /// conversation (which shows it again; see `ConversationItem`).
    pub(super) async fn hiding_ended(&self, conv_id: &str, state: &UserConvState) -> Result<bool> {
        if !state.hidden {
            return Ok(false);
        }
        Ok(self.core.store.conversation(conv_id).await?.is_some_and(|c| c.ver >= state.ver))
    }

    /// The store keeps one `ver` per row, and `hidden` holds while the row's `ver` is newer than
    /// the conversation's. Before a write that bumps the row (a read, a deletion), a hiding that a
    /// newer message already ended is cleared for good, or the bump would bring it back.
    pub(super) async fn settle_hidden(&self, user: &str, conv_id: &str, state: &UserConvState) -> Result<()> {
        if self.hiding_ended(conv_id, state).await? {
            let patch = model::FlagsPatch { hidden: Some(false), ..Default::default() };
            self.core.store.set_flags(user, conv_id, patch).await?;
        }
        Ok(())
    }

    /// How many members other than the sender have read up to `seq`.
    pub async fn read_count(&self, caller: &Caller, req: proto::SeqReq) -> Result<impl Serialize> {
        self.access(&caller.user, &req.conv_id).await?;
        let msg =
            self.core.store.message(&req.conv_id, req.seq).await?.ok_or_else(|| Error::not_found("no such message"))?;
        let cursors = self.core.store.read_cursors(&req.conv_id).await?;
        let others = cursors.iter().filter(|(u, _)| Some(u.as_str()) != msg.sender.as_deref());
        let (mut read, mut total) = (0, 0);
        for (_, r) in others {
            total += 1;
            if *r >= req.seq {
                read += 1;
            }
        }
        Ok(ReadCountResult { seq: req.seq, read, total })
    }

    pub async fn delete(&self, caller: &Caller, req: proto::DeleteReq) -> Result<impl Serialize> {
        if req.seqs.is_empty() || req.seqs.len() > model::MAX_PAGE {
            return Err(Error::invalid(format!("seqs must hold 1 to {} entries", model::MAX_PAGE)));
        }
        let state = self.access(&caller.user, &req.conv_id).await?;
        // Count and announce each existing message once (seqs are contiguous from 1).
        let last_seq = self.core.store.conversation(&req.conv_id).await?.map(|c| c.last_seq).unwrap_or(0);
        let mut seqs = req.seqs;
        seqs.sort_unstable();
        seqs.dedup();
        seqs.retain(|s| (1..=last_seq).contains(s));
        if !seqs.is_empty() {
            self.settle_hidden(&caller.user, &req.conv_id, &state).await?;
            self.core.store.delete_for_user(&caller.user, &req.conv_id, &seqs).await?;
            let frame = proto::encode_event("deleted", &proto::DeletedEvent { conv_id: &req.conv_id, seqs: &seqs });
            self.core.notify_user(&caller.user, &frame, caller.conn_id);
        }
        Ok(serde_json::json!({ "deleted": seqs.len() }))
    }

    /// Clears the conversation for the caller (all their devices): what they may see of it now is
    /// gone from their history and counts as read; the item's `cleared_seq` says up to where. The
    /// other participants are not affected. The caller's other devices get a `conversation`
    /// event with the item.
    pub async fn clear(&self, caller: &Caller, req: proto::ConvReq) -> Result<ConversationItem> {
        let state = self.row(&caller.user, &req.conv_id).await?;
        self.settle_hidden(&caller.user, &req.conv_id, &state).await?;
        self.core.store.clear_for_user(&caller.user, &req.conv_id).await?;
        let item = self.conversation(caller, &req.conv_id).await?;
        let frame = proto::encode_event("conversation", &item);
        self.core.notify_user(&caller.user, &frame, caller.conn_id);
        Ok(item)
    }

    /// Recalls and the caller's deletions since a version. A former member hears only of what
    /// they could see (messages up to their leaving).
    pub async fn changes(&self, caller: &Caller, req: proto::ChangesReq) -> Result<impl Serialize> {
        model::validate_cursor("since", req.since)?;
        let state = self.row(&caller.user, &req.conv_id).await?;
        let mut changes = self.core.store.changes(&caller.user, &req.conv_id, req.since).await?;
        if !state.active {
            let last = self.core.store.conversation(&req.conv_id).await?.map(|c| c.last_seq).unwrap_or(0);
            let cap = state.visible_upto(last);
            changes.recalled.retain(|&seq| seq <= cap);
        }
        Ok(changes)
    }

    pub async fn set_flags(&self, caller: &Caller, req: proto::SetFlagsReq) -> Result<ConversationItem> {
        model::conv_kind(&req.conv_id)?;
        let mut patch = req.patch();
        if patch.pinned.is_none() && patch.muted.is_none() && patch.hidden.is_none() {
            return Err(Error::invalid("give at least one of pinned, muted, hidden"));
        }
        let Some(state) = self.core.store.user_conv(&caller.user, &req.conv_id).await? else {
            return Err(Error::not_found("no such conversation"));
        };
        if patch.hidden.is_none() && self.hiding_ended(&req.conv_id, &state).await? {
            patch.hidden = Some(false);
        }
        self.core.store.set_flags(&caller.user, &req.conv_id, patch).await?;
        let item = self.conversation(caller, &req.conv_id).await?;
        let frame = proto::encode_event("conversation", &item);
        self.core.notify_user(&caller.user, &frame, caller.conn_id);
        Ok(item)
    }
}
