//! The domain operations, shared by every transport.
//!
//! [`Engine`] is what the WebSocket session (and the HTTP API) call: one method per operation,
//! each checking the rules and then either asking the conversation actor (for anything that
//! changes a conversation's order: send, recall, membership) or the store (reads, read cursors,
//! flags). [`Engine::dispatch`] maps a parsed [`proto::Op`] to its method and encodes the reply.
//!
//! One file per kind of operation, each an `impl Engine` block: [`send`] (messages and recalls),
//! [`reads`] (history, lists, cursors, flags), [`groups`], [`contacts`] (friends and blocks),
//! [`users`] (profiles and access),
//! [`presence`] (online and offline), [`peer`] (what other nodes send) and [`dispatch`] (the
//! WebSocket ops). The state they share is [`crate::core::Core`].

mod broadcasts;
mod contacts;
mod dispatch;
mod files;
mod groups;
mod joins;
mod peer;
mod presence;
mod push;
mod reads;
mod send;
mod stats;
pub use broadcasts::NewBroadcast;
pub use stats::MAX_STATS_DAYS;
mod users;

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, MailboxError};
use bytestring::ByteString;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::cluster::{PeerCommand, PeerDelivery};
use crate::conversation::{
    ConversationActor, Directory, Init, Membership, MembershipOp, Origin, PeerMessage, Recall, ReloadMembers,
    ReloadRelation, Submit,
};
use crate::error::{Error, ErrorCode, Result};
use crate::inflight::Slot;
use crate::metrics::Metrics;
use crate::model::{self, Body, ConvKind, Group, Member, Message, Role, UserConvState};
use crate::proto::{self, ConversationItem, Op};
use crate::registry::{Registry, Revocation};
use crate::store::{HistoryQuery, NewGroup, Store};

pub use crate::core::{Core, Limits};
pub use contacts::{ContactLookup, ContactResult, ContactsResult};
use groups::GroupOp;
pub use joins::{JoinResult, NoticeConfirmations};
pub use users::access_of;

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: Arc<str>,
    pub device: Arc<str>,
    /// The WebSocket connection, when the request came over one.
    pub conn_id: Option<u64>,
}

/// The domain operations. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    core: Arc<Core>,
    /// The live conversation actors.
    directory: Arc<Directory>,
}

const DEFAULT_PAGE: usize = 50;

fn page(limit: Option<usize>) -> Result<usize> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=model::MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(Error::invalid(format!("limit must be 1 to {}", model::MAX_PAGE))),
    }
}

fn mailbox(e: MailboxError) -> Error {
    match e {
        MailboxError::Closed => Error::new(ErrorCode::Unavailable, "conversation actor stopped; retry"),
        MailboxError::Timeout => Error::new(ErrorCode::Unavailable, "conversation actor timed out"),
    }
}

/// How to start the actor of a conversation another node fanned a message of out: a one-to-one
/// conversation's recipients are its two participants (so the actor needs no read to know
/// them); a group is loaded.
fn peer_init(conv_id: &str, users: &[Arc<str>]) -> Init {
    match (model::conv_kind(conv_id), users) {
        (Ok(ConvKind::Direct), [a]) if model::direct_conv_id(a, a) == conv_id => {
            Init::Direct(a.to_string(), a.to_string())
        }
        (Ok(ConvKind::Direct), [a, b]) if model::direct_conv_id(a, b) == conv_id => {
            Init::Direct(a.to_string(), b.to_string())
        }
        _ => Init::Load,
    }
}

/// A page of history (the reply to `history`).
#[derive(Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryResult {
    pub messages: Vec<Message>,
    pub last_seq: u64,
    pub has_more: bool,
}

/// A page of the conversation list (the reply to `conversations`).
#[derive(Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationsResult {
    pub conversations: Vec<ConversationItem>,
    pub next_since: u64,
    pub has_more: bool,
}

impl Engine {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        limits: Limits,
        directory: Directory,
    ) -> Self {
        Self { core: Arc::new(Core::new(store, registry, metrics, limits)), directory: Arc::new(directory) }
    }

    pub fn core(&self) -> &Arc<Core> {
        &self.core
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.core.store
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.core.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.core.metrics
    }

    fn actor(&self, conv_id: &str, init: Init) -> Result<Addr<ConversationActor>> {
        self.directory.get(&self.core, conv_id, init)
    }

    /// Asks a conversation actor, retrying on a fresh actor if the one found was stopping.
    async fn call<M, T>(&self, conv_id: &str, init: Init, msg: M) -> Result<T>
    where
        M: actix::Message<Result = Result<T>> + Clone + Send + 'static,
        T: Send + 'static,
        ConversationActor: actix::Handler<M>,
    {
        for _ in 0..4 {
            let addr = self.actor(conv_id, init.clone())?;
            match addr.send(msg.clone()).await {
                Ok(r) => return r,
                Err(MailboxError::Closed) => self.directory.forget(conv_id, &addr),
                Err(e) => return Err(mailbox(e)),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(mailbox(MailboxError::Closed))
    }
}

/// Runs a background task on the main thread's runtime when there is one (a session's worker
/// thread stops with the server, before the task would finish), else on the current one.
pub(super) fn spawn_on_main(task: impl std::future::Future<Output = ()> + Send + 'static) {
    match actix::System::try_current() {
        Some(system) => {
            system.arbiter().spawn(task);
        }
        None => {
            tokio::spawn(task);
        }
    }
}

/// A random 16-hex-digit id (from the standard library's randomly seeded hasher).
pub fn random_id() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(crate::clock::now_ms());
    format!("{:016x}", h.finish())
}
