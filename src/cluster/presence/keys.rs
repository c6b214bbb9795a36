//! The Redis side of presence: the keys (see the table in [the module documentation](super)),
//! the presence version, and the counted field removals shared by writes and sweeps.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::super::Inner;

/// The set of nodes that have heartbeated.
pub const NODES_KEY: &str = "confab:nodes";

/// Changes with every change to presence hashes (see the module documentation).
pub const VERSION_KEY: &str = "confab:presence:version";

/// The presence hash of a user.
pub fn presence_key(user: &str) -> String {
    format!("confab:presence:{user}")
}

/// The liveness key of a node.
pub fn alive_key(node: &str) -> String {
    format!("confab:alive:{node}")
}

/// The hash of a node's connections (`conn_id` -> user), read when the node is swept.
pub fn node_conns_key(node: &str) -> String {
    format!("confab:node-conns:{node}")
}

/// Claimed by the node sweeping a dead node.
pub(super) fn sweep_key(node: &str) -> String {
    format!("confab:sweep:{node}")
}

/// The field of connection `conn_id` of `node` in a presence hash (`<node_id>/<conn_id>`).
pub(super) fn field(node: &str, conn_id: impl std::fmt::Display) -> String {
    format!("{node}/{conn_id}")
}

/// Ends `pipe`, which changes presence hashes, with a new presence version, and makes it a
/// transaction: Redis applies the changes and the new version together or not at all, even when
/// the connection fails half-way.
pub(super) fn bump_version(inner: &Inner, pipe: &mut redis::Pipeline) {
    pipe.atomic();
    let n = inner.presence_version.fetch_add(1, Relaxed);
    pipe.set(VERSION_KEY, format!("{}/{}/{n}", inner.node_id, inner.boot)).ignore();
}

/// A field removal that reads the hash's length after it, in a `MULTI` (two replies).
pub(super) fn remove_counted(pipe: &mut redis::Pipeline, user: &str, field: &str) {
    let key = presence_key(user);
    pipe.hdel(&key, field).hlen(&key);
}

/// The users of `removed` (in order, each with its two replies from [`remove_counted`] in
/// `replies`) whose last field was removed.
pub(super) fn went_offline(removed: Vec<Arc<str>>, replies: &mut impl Iterator<Item = i64>) -> Vec<(Arc<str>, bool)> {
    let mut out = Vec::new();
    for user in removed {
        let (deleted, left) = (replies.next().unwrap_or(0), replies.next().unwrap_or(1));
        if deleted == 1 && left == 0 {
            out.push((user, false));
        }
    }
    out
}
