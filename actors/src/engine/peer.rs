//! What other nodes of a cluster send, and joining the engine to its cluster and hooks.

use super::*;

impl Engine {
    /// Frames another node fanned out to users whose sessions are (or were) on this node.
    /// Message events go through the conversation's actor, which releases them in `seq` order
    /// with the messages stored here; everything else is queued on the sessions directly.
    pub fn deliver_from_peer(&self, d: PeerDelivery) {
        let PeerDelivery { ordered, users, frames, membership_changed } = d;
        let (users, frames) = match ordered {
            Some((conv_id, seq)) => match self.actor(&conv_id, peer_init(&conv_id, &users)) {
                Ok(addr) => match addr.try_send(PeerMessage { seq, users, frames, membership_changed }) {
                    Ok(()) => return,
                    // A full mailbox or a stopping actor: deliver now, unordered (clients
                    // recover any disorder with sync; nothing is lost).
                    Err(actix::prelude::SendError::Full(m) | actix::prelude::SendError::Closed(m)) => {
                        (m.users, m.frames)
                    }
                },
                Err(_) => (users, frames),
            },
            None => (users, frames),
        };
        for f in &frames {
            self.core.registry.fan_out(&users, f, None);
        }
    }

    /// A command another node broadcast.
    pub fn peer_command(&self, c: PeerCommand) {
        match c {
            PeerCommand::CloseUser { user, revocation } => {
                self.core.registry.revoke(&user, &revocation);
            }
            PeerCommand::MembershipChanged { conv_id, seq } => {
                if let Some(addr) = self.directory.peek(&conv_id) {
                    addr.do_send(ReloadMembers(seq));
                }
            }
            PeerCommand::ContactsChanged { conv_id } => {
                if let Some(addr) = self.directory.peek(&conv_id) {
                    addr.do_send(ReloadRelation);
                }
            }
        }
    }

    /// Joins this node to a cluster (once; later calls are ignored).
    pub fn set_cluster(&self, cluster: Arc<dyn crate::cluster::Cluster>) {
        if self.core.cluster.set(cluster).is_err() {
            tracing::warn!("the cluster transport was already set");
        }
    }

    /// Installs the webhook hooks (once; later calls are ignored).
    pub fn set_hooks(&self, hooks: crate::outbox::Hooks) {
        if self.core.hooks.set(hooks).is_err() {
            tracing::warn!("webhook hooks were already set");
        }
    }
}
