//! The seam between the actors and a cluster transport.
//!
//! The actors know nothing of Redis: when a node runs in a cluster, the `confab` crate gives the
//! [`Core`](crate::engine::Core) an implementation of [`Cluster`] that resolves which nodes hold
//! the recipients' sessions and publishes one batch per node. Frames that arrive from other nodes
//! come back in through [`Engine::deliver_from_peer`](crate::engine::Engine::deliver_from_peer).
//!
//! Every method here is fire-and-forget and must never block the caller (an actor): the
//! transport queues work on a bounded queue and drops it when full (counting the drop). Nothing
//! is lost when a cross-node delivery is dropped: the message is stored before it is fanned out,
//! and the recipients' clients recover it with sync.

use std::sync::Arc;

use bytestring::ByteString;

/// Frames for users whose sessions may be on other nodes.
#[derive(Debug, Clone)]
pub struct PeerDelivery {
    /// For a conversation's message event (and the frames that go with it): the conversation
    /// and the message's `seq`. The receiving node hands it to its conversation actor, which
    /// releases it to local sessions in `seq` order, merged with the messages stored there.
    /// `None` for frames without an order (read receipts, recalls, flags).
    pub ordered: Option<(Arc<str>, u64)>,
    /// The recipients (at most one fan-out chunk of them).
    pub users: Vec<Arc<str>>,
    /// The frames, written to each recipient's sessions in this order.
    pub frames: Vec<ByteString>,
    /// The message changed the conversation's membership or roles: receiving nodes reload the
    /// membership before releasing any later message of the conversation.
    pub membership_changed: bool,
}

/// Something every node must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerCommand {
    /// Close the sessions of this user that lost access: it was disabled, or the tokens it was
    /// issued before a time were revoked.
    CloseUser { user: String, revocation: crate::registry::Revocation },
    /// A group's membership or roles changed: a node with an actor for the conversation reloads
    /// them (its next message is checked against the new membership).
    MembershipChanged { conv_id: String, seq: u64 },
    /// The contacts of a one-to-one conversation's two users changed (a block, a friendship): a
    /// node with an actor for the conversation reloads what it caches of them.
    ContactsChanged { conv_id: String },
}

/// A connected device somewhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteDevice {
    pub node: String,
    pub conn_id: u64,
    pub device: String,
}

/// A cluster transport. Implemented by the `confab` crate on Redis.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This node's id.
    fn node_id(&self) -> &str;

    /// Sends frames to the recipients' sessions on other nodes (never to this node: the caller
    /// delivers locally itself). Never blocks.
    fn deliver(&self, d: PeerDelivery);

    /// Runs a command on every other node. Never blocks.
    fn broadcast(&self, c: PeerCommand);

    /// Whether other nodes' deliveries can reach this node now (the bus is connected). While
    /// they cannot, a conversation reads the messages other nodes stored from the store at once
    /// instead of waiting for their fan-out.
    fn bus_up(&self) -> bool {
        true
    }

    /// A device connected to this node (`first_here`: the user's first connection on this node).
    ///
    /// The transport owns the `user.online` / `user.offline` events in a cluster: it reports a
    /// user's first connection anywhere in the cluster and its last one through
    /// [`Engine::presence`](crate::engine::Engine::presence), and falls back to this node's view
    /// (`first_here`, `last_here`) when it cannot tell.
    fn session_opened(&self, user: &Arc<str>, device: &Arc<str>, conn_id: u64, first_here: bool);

    /// A device of this node disconnected (`last_here`: the user's last connection on this node).
    fn session_closed(&self, user: &Arc<str>, device: &Arc<str>, conn_id: u64, last_here: bool);

    /// Claims API key `key_id`'s `nonce` for the whole cluster for `ttl`: true when no node had
    /// (a signed request is accepted once by the cluster). `Err` when the cluster cannot tell now.
    async fn claim_nonce(&self, key_id: &str, nonce: &str, ttl: std::time::Duration) -> Result<bool, String>;

    /// Every connected device of `user` on a live node. `Err` when the cluster cannot tell now.
    async fn devices(&self, user: &str) -> Result<Vec<RemoteDevice>, String>;

    /// The devices connected on a live node, for each of `users` that has one (one round trip
    /// for all of them where the transport can). `Err` when the cluster cannot tell now.
    async fn devices_of(&self, users: &[String]) -> Result<Vec<(String, Vec<String>)>, String> {
        let mut out = Vec::new();
        for u in users {
            let list = self.devices(u).await?;
            if !list.is_empty() {
                out.push((u.clone(), list.into_iter().map(|d| d.device).collect()));
            }
        }
        Ok(out)
    }
}
