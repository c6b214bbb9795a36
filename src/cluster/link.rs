//! The cluster layer as the actors see it: [`Link`] implements
//! [`confab_actors::cluster::Cluster`] on [`Cluster`], and [`dispatch`] hands what other nodes
//! send to the [`Engine`].

use std::sync::Arc;

use confab_actors::cluster::{self as seam, PeerCommand, PeerDelivery};
use confab_actors::engine::Engine;
use confab_actors::registry::Revocation;

use super::{Batch, Broadcast, Cluster, Incoming};

/// This node's cluster transport, for the actors.
pub struct Link {
    cluster: Cluster,
}

impl Link {
    pub fn new(cluster: Cluster) -> Link {
        Link { cluster }
    }
}

#[async_trait::async_trait]
impl seam::Cluster for Link {
    async fn claim_nonce(&self, key_id: &str, nonce: &str, ttl: std::time::Duration) -> Result<bool, String> {
        self.cluster.claim(format!("confab:nonce:{key_id}:{nonce}"), ttl).await.map_err(|e| e.to_string())
    }

    async fn devices(&self, user: &str) -> Result<Vec<seam::RemoteDevice>, String> {
        let list = self.cluster.devices(user).await.map_err(|e| e.to_string())?;
        Ok(list.into_iter().map(|(node, conn_id, device)| seam::RemoteDevice { node, conn_id, device }).collect())
    }

    async fn devices_of(&self, users: &[String]) -> Result<Vec<(String, Vec<String>)>, String> {
        self.cluster.devices_of(users.to_vec()).await.map_err(|e| e.to_string())
    }

    fn node_id(&self) -> &str {
        self.cluster.node_id()
    }

    fn deliver(&self, d: PeerDelivery) {
        let PeerDelivery { ordered, users, frames, membership_changed } = d;
        self.cluster.deliver(Batch { from: String::new(), frames, users, skip: None, ordered, membership_changed });
    }

    fn broadcast(&self, c: PeerCommand) {
        let event = match c {
            PeerCommand::CloseUser { user, revocation } => {
                let (disabled, tokens_before_ms, device) = match revocation {
                    Revocation::Disabled => (true, None, None),
                    Revocation::TokensBefore(before) => (false, before, None),
                    Revocation::Device { device, before_ms } => (false, Some(before_ms), Some(device)),
                };
                Broadcast::CloseUser { user, disabled, tokens_before_ms, device }
            }
            PeerCommand::MembershipChanged { conv_id, seq } => Broadcast::MembershipChanged { conv_id, seq },
            PeerCommand::ContactsChanged { conv_id } => Broadcast::ContactsChanged { conv_id },
        };
        self.cluster.announce(event);
    }

    fn bus_up(&self) -> bool {
        self.cluster.bus_up()
    }

    fn session_opened(&self, user: &Arc<str>, device: &Arc<str>, conn_id: u64, first_here: bool) {
        self.cluster.register(user, device, conn_id, first_here);
    }

    fn session_closed(&self, user: &Arc<str>, _device: &Arc<str>, conn_id: u64, last_here: bool) {
        self.cluster.unregister(user, conn_id, last_here);
    }
}

/// Hands one thing another node sent to the engine.
pub fn dispatch(engine: &Engine, incoming: Incoming) {
    let what = match &incoming {
        Incoming::Batch(_) => "batch",
        Incoming::Broadcast { .. } => "broadcast",
        Incoming::Presence { .. } => "presence",
        Incoming::Resubscribed => "resubscribed",
    };
    // Under the node's span (debug: disabled, so free, unless the filter enables it).
    let _span = tracing::debug_span!(parent: &engine.core().span(), "peer", what).entered();
    match incoming {
        Incoming::Batch(b) => engine.deliver_from_peer(PeerDelivery {
            ordered: b.ordered,
            users: b.users,
            frames: b.frames,
            membership_changed: b.membership_changed,
        }),
        Incoming::Broadcast { event, from } => match event {
            Broadcast::CloseUser { user, disabled, tokens_before_ms, device } => {
                let revocation = match (disabled, device, tokens_before_ms) {
                    (true, _, _) => Revocation::Disabled,
                    (false, Some(device), Some(before_ms)) => Revocation::Device { device, before_ms },
                    (false, _, before) => Revocation::TokensBefore(before),
                };
                engine.peer_command(PeerCommand::CloseUser { user, revocation })
            }
            Broadcast::MembershipChanged { conv_id, seq } => {
                engine.peer_command(PeerCommand::MembershipChanged { conv_id, seq })
            }
            Broadcast::ContactsChanged { conv_id } => engine.peer_command(PeerCommand::ContactsChanged { conv_id }),
            Broadcast::Unknown => tracing::debug!(%from, "ignored a cluster event this version does not know"),
        },
        Incoming::Presence { user, online } => engine.presence(&user, online),
        Incoming::Resubscribed => {
            let engine = engine.clone();
            actix::spawn(async move {
                engine.recheck_access().await;
            });
        }
    }
}
