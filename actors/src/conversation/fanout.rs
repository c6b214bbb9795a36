//! Fan-out: each released message's frames queued on its recipients' sessions, 500 members per
//! step, the requesting device's acknowledgement in its place.

use super::*;

impl ConversationActor {
    /// Queues a fan-out to this node's sessions only (of a message another node stored).
    pub(super) fn enqueue_local(&mut self, seq: u64, frames: Vec<ByteString>, members: Arc<Vec<Arc<str>>>) {
        self.jobs.push_back(Job {
            seq,
            local_only: true,
            membership_changed: false,
            frames,
            members,
            next: 0,
            skip: None,
            only_conn: None,
            slot: None,
            started: Instant::now(),
            delivery: true,
        });
        self.core.metrics.fanout_queue_depth.fetch_add(1, Relaxed);
    }

    pub(super) fn enqueue_message(&mut self, r: Ready) {
        let Ready { message, origin, members, extra, reply, members_seq, ack_group } = r;
        let seq = message.seq;
        // A membership change stored by another node before this message, but applied here
        // only after the message was submitted: the message goes to the new membership.
        let members =
            if self.members_seq > members_seq && self.members_seq < seq { self.members.clone() } else { members };
        let membership_changed = rules::reloads_group(&message);
        if membership_changed {
            if let Some(cluster) = self.core.cluster() {
                cluster.broadcast(PeerCommand::MembershipChanged { conv_id: self.conv_id.to_string(), seq });
            }
        }
        let mut frames = vec![proto::encode_event("message", &message)];
        frames.extend(extra);
        let skip = origin.map(|o| {
            // The sending device gets its ack where the event would have been: after every
            // earlier message of this conversation (jobs run in order), before later ones.
            let ack = match &ack_group {
                Some(group) => proto::encode_result(&o.req_id, &proto::GroupChangeResult { group, message: &message }),
                None => proto::encode_result(&o.req_id, &proto::SendResult { message: &message }),
            };
            self.jobs.push_back(Job {
                seq: 0,
                local_only: true,
                membership_changed: false,
                frames: vec![ack],
                members: Arc::new(vec![o.user.clone()]),
                next: 0,
                skip: None,
                only_conn: Some(o.conn_id),
                slot: o.slot,
                started: Instant::now(),
                delivery: false,
            });
            (o.user, o.conn_id)
        });
        if let Some(tx) = reply {
            let _ = tx.send(Ok(message));
        }
        self.jobs.push_back(Job {
            seq,
            local_only: false,
            membership_changed,
            frames,
            members,
            next: 0,
            skip,
            only_conn: None,
            slot: None,
            started: Instant::now(),
            delivery: true,
        });
        self.core.metrics.fanout_queue_depth.fetch_add(1, Relaxed);
    }

    /// Delivers jobs until one chunk's worth of members has been served, then yields to the
    /// mailbox (a `FanoutTick` continues).
    pub(super) fn pump(&mut self, ctx: &mut Context<Self>) {
        let mut budget = self.core.limits.fanout_chunk.max(1);
        let registry = &self.core.registry;
        let span = &self.span;
        while budget > 0 {
            let Some(job) = self.jobs.front_mut() else { break };
            let end = (job.next + budget).min(job.members.len());
            let users = &job.members[job.next..end];
            budget -= users.len().max(1).min(budget);
            if let Some(slot) = job.slot.take() {
                slot.free();
            }
            for (i, frame) in job.frames.iter().enumerate() {
                let n = match (job.only_conn, i) {
                    (Some(conn), _) => users.iter().filter(|u| registry.send_to_conn(u, conn, frame)).count(),
                    // Connection ids are unique on the node: skipping the sender's is enough.
                    (None, 0) => self.recipients.deliver(
                        registry,
                        &job.members,
                        job.next..end,
                        frame,
                        job.skip.as_ref().map(|(_, c)| *c),
                    ),
                    (None, _) => self.recipients.deliver(registry, &job.members, job.next..end, frame, None),
                };
                if i == 0 && job.delivery {
                    self.core.metrics.deliveries_out.fetch_add(n as u64, Relaxed);
                }
            }
            // Once this node's sessions have it, the recipients' sessions on other nodes: the
            // transport resolves their presence (one round trip for the deliveries queued
            // together, reading only what changed) and publishes once per node for the whole
            // message, so a node releases it to all its recipients at once.
            if !job.local_only && job.only_conn.is_none() && job.next == 0 {
                if let Some(cluster) = self.core.cluster() {
                    cluster.deliver(PeerDelivery {
                        ordered: (job.seq > 0).then(|| (self.conv_id.clone(), job.seq)),
                        users: job.members.to_vec(),
                        frames: job.frames.clone(),
                        membership_changed: job.membership_changed,
                    });
                }
            }
            job.next = end;
            if job.next >= job.members.len() {
                if job.delivery {
                    let (seq, recipients, took) = (job.seq, job.members.len(), job.started.elapsed());
                    tracing::debug!(parent: span, seq, recipients, ?took, "fan-out");
                    self.core.metrics.fanout_seconds.observe(job.started.elapsed());
                    self.core.metrics.fanout_queue_depth.fetch_sub(1, Relaxed);
                }
                self.jobs.pop_front();
            }
        }
        // Writers are woken once the fan-out queue is empty, or every few chunks: frames of
        // several messages then leave in one write per connection.
        self.recipients.end_chunk(self.jobs.is_empty());
        if !self.jobs.is_empty() && !self.tick_scheduled {
            self.tick_scheduled = true;
            ctx.notify(FanoutTick);
        }
    }
}

impl Handler<FanoutTick> for ConversationActor {
    type Result = ();
    fn handle(&mut self, _: FanoutTick, ctx: &mut Context<Self>) {
        self.tick_scheduled = false;
        self.pump(ctx);
    }
}
