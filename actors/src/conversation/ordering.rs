//! Releasing stored messages strictly in `seq` order: this node's appends as they come back,
//! other nodes' messages as they arrive, gaps read back from the store, membership reloads.

use super::*;

impl ConversationActor {
    /// Moves stored messages, in `seq` order, from `ready` to the fan-out queue.
    ///
    /// A missing `seq` is one of this actor's appends still in flight, or (in a cluster) a
    /// message another node stored: that node's fan-out brings it here as a [`PeerMessage`], and
    /// if it does not within [`GAP_WAIT`] it is read back from the store (it is committed:
    /// the store hands out a `seq` only after every lower one is committed).
    pub(super) fn release(&mut self, ctx: &mut Context<Self>) {
        while !self.reloading {
            let Some((&head, _)) = self.ready.first_key_value() else { break };
            if head > self.next_fanout {
                if self.inflight > 0 {
                    break;
                }
                if self.core.cluster().is_some() {
                    self.schedule_gap_fill(ctx);
                    break;
                }
                // With nothing in flight, no missing seq can still arrive: don't wait for it.
                tracing::warn!(parent: &self.span, expected = self.next_fanout, got = head, "seq gap in fan-out");
            }
            let Some(p) = self.ready.remove(&head) else { break };
            if head < self.next_fanout {
                continue;
            }
            self.next_fanout = head + 1;
            self.fresh = false;
            self.last_peer_release = matches!(p, Pending::Peer { .. }).then_some(head);
            match p {
                Pending::Local(r) => self.enqueue_message(r),
                Pending::Peer { users, frames, membership_changed } => {
                    let users = self.peer_recipients(users);
                    self.enqueue_local(head, frames, users);
                    if membership_changed {
                        self.reload_members(ctx, head);
                    }
                }
                Pending::Fetched(m) => {
                    let reload = rules::reloads_group(&m);
                    let frames = vec![proto::encode_event("message", &m)];
                    self.enqueue_local(head, frames, self.members.clone());
                    if reload {
                        self.reload_members(ctx, head);
                    }
                }
            }
        }
        self.pump(ctx);
    }

    /// `users` (recipients of another node's message) as a shared list: the previous one when
    /// they are the same users (a group's messages usually are), so their sessions stay resolved.
    pub(super) fn peer_recipients(&mut self, users: Vec<Arc<str>>) -> Arc<Vec<Arc<str>>> {
        if *self.peer_members != users {
            self.peer_members = Arc::new(users);
        }
        self.peer_members.clone()
    }

    /// After [`GAP_WAIT`], reads the messages missing before the head of `ready` from the store.
    pub(super) fn schedule_gap_fill(&mut self, ctx: &mut Context<Self>) {
        if self.gap_fill {
            return;
        }
        self.gap_fill = true;
        // With the bus down nothing is coming: read the gap back at once (acknowledgements of this
        // node's own messages wait behind it).
        let wait = match self.core.cluster() {
            Some(c) if !c.bus_up() => Duration::ZERO,
            _ => GAP_WAIT,
        };
        ctx.run_later(wait, |act, ctx| {
            let head = match act.ready.first_key_value() {
                Some((&head, _)) if head > act.next_fanout && act.inflight == 0 => head,
                _ => {
                    act.gap_fill = false;
                    act.release(ctx);
                    return;
                }
            };
            let from = act.next_fanout;
            let limit = ((head - from) as usize).min(model::MAX_PAGE);
            let store = act.core.store.clone();
            let conv_id = act.conv_id.clone();
            let read = async move { store.history(&conv_id, None, HistoryQuery::After { seq: from - 1, limit }).await };
            ctx.spawn(read.into_actor(act).map(move |res, act, ctx| {
                act.gap_fill = false;
                match res {
                    Ok(found) => {
                        act.core.metrics.gap_fills.fetch_add(1, Relaxed);
                        let complete = found.len() == limit;
                        for m in found {
                            if m.seq >= act.next_fanout && m.seq < head {
                                act.ready.entry(m.seq).or_insert(Pending::Fetched(m));
                            }
                        }
                        // `seq` has no holes and a higher one exists, so the missing ones are
                        // committed: a read that missed them was stale. Try again; step over
                        // them only when they stay missing (a store that broke the contract).
                        act.gap_misses = if complete { 0 } else { act.gap_misses + 1 };
                        if act.gap_misses >= GAP_FILL_TRIES
                            && act.ready.first_key_value().is_some_and(|(&h, _)| h > act.next_fanout)
                        {
                            tracing::warn!(parent: &act.span, from, head, "seq gap not in the store; skipped");
                            act.gap_misses = 0;
                            if let Some((&h, _)) = act.ready.first_key_value() {
                                act.next_fanout = h;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(parent: &act.span, error = %e, "gap fill failed; retrying");
                    }
                }
                act.release(ctx);
            }));
        });
    }

    /// Reloads a group's membership from the store; releasing waits until it is done.
    ///
    /// `seq` is the membership change that asked for it (0: unknown); messages after it that
    /// were submitted with the older membership are fanned out with the reloaded one.
    pub(super) fn reload_members(&mut self, ctx: &mut Context<Self>, seq: u64) {
        if self.kind != ConvKind::Group || self.reloading {
            return;
        }
        self.reloading = true;
        let store = self.core.store.clone();
        let gid = self.group_id().to_string();
        let fut = async move {
            let group = store.group(&gid).await?;
            let members = store.members(&gid).await?;
            Ok::<_, StoreError>((group, members))
        };
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
            act.reloading = false;
            match res {
                Ok((group, members)) => {
                    act.members_seq = act.members_seq.max(seq);
                    if group.as_ref().is_none_or(|g| g.dismissed) {
                        act.set_members(HashMap::new());
                        act.state = State::Failed(dismissed());
                    } else {
                        if let Some(g) = &group {
                            act.set_group(g);
                        }
                        act.set_members(
                            members.iter().map(|m| (Arc::<str>::from(m.user_id.as_str()), m.role)).collect(),
                        );
                        act.set_mutes(&members);
                    }
                }
                Err(e) => {
                    // Keep the old membership and try again with the next change.
                    tracing::warn!(parent: &act.span, error = %e, "membership reload failed");
                }
            }
            act.release(ctx);
        }));
    }
}

impl Handler<PeerMessage> for ConversationActor {
    type Result = ();
    fn handle(&mut self, msg: PeerMessage, ctx: &mut Context<Self>) {
        self.last_active = Instant::now();
        let PeerMessage { seq, users, frames, membership_changed } = msg;
        if seq < self.next_fanout {
            // Another chunk (other recipients) of the message released last: nothing later has
            // gone out yet, so it goes out now, still in order.
            if self.last_peer_release == Some(seq) {
                let users = self.peer_recipients(users);
                self.enqueue_local(seq, frames, users);
                self.pump(ctx);
                return;
            }
            // Already released (read back from the store, or a repeat), unless nothing was
            // released since loading: then the loaded `last_seq` included it, but this node's
            // sessions have not seen it yet (anything between it and what is ready is read back).
            if !self.fresh {
                self.core.metrics.peer_messages_stale.fetch_add(1, Relaxed);
                return;
            }
            self.next_fanout = seq;
        }
        match self.ready.entry(seq) {
            // Another chunk of a message still waiting: one fan-out for all of them.
            std::collections::btree_map::Entry::Occupied(mut e) => {
                if let Pending::Peer { users: waiting, .. } = e.get_mut() {
                    waiting.extend(users);
                }
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Pending::Peer { users, frames, membership_changed });
            }
        }
        // Released once the messages already in the mailbox (often more of this burst) are in.
        if !self.peer_release_scheduled {
            self.peer_release_scheduled = true;
            ctx.notify(ReleasePeers);
        }
    }
}

impl Handler<ReleasePeers> for ConversationActor {
    type Result = ();
    fn handle(&mut self, _: ReleasePeers, ctx: &mut Context<Self>) {
        self.peer_release_scheduled = false;
        self.release(ctx);
    }
}

impl Handler<ReloadMembers> for ConversationActor {
    type Result = ();
    fn handle(&mut self, msg: ReloadMembers, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Ready) {
            self.reload_members(ctx, msg.0);
        }
    }
}
