//! One-to-one conversations: what the two users are to each other (friends, who blocked whom,
//! whether they share a group), loaded with the conversation and cached while its actor lives, so
//! checking a send against blocks and `chat.who_may_message` reads nothing from the store. A
//! contact change reloads it ([`ReloadRelation`], on every node); whether they share a group is
//! looked up again when a refusal would rest on a lookup older than [`GROUPS_FRESH`] (1 s).

use super::*;
use crate::rules::{check_direct_send, DirectVerdict, Relation, WhoMayMessage};

/// How long "they share no group" may be relied on to refuse a message: a refusal after that
/// looks again (one read of `members`, only on the way to a refusal, which the sender's rate limit
/// bounds). A member who joined a group since is let through after at most this long; one who left
/// a group keeps being let through until the conversation's actor is re-created or the contacts
/// change.
pub(super) const GROUPS_FRESH: Duration = Duration::from_secs(1);

/// The contacts between the two users of this one-to-one conversation changed: reload them
/// before the next message is checked.
#[derive(Debug, Clone, Copy)]
pub struct ReloadRelation;

impl actix::Message for ReloadRelation {
    type Result = ();
}

/// The cached relation and when its group lookup was made.
#[derive(Debug, Clone)]
pub(super) struct Cached {
    pub(super) rel: Relation,
    pub(super) groups_at: Option<Instant>,
}

/// Reads the relation of `a` and `b` (two reads; a third when the policy needs groups and they
/// are not friends).
pub(super) async fn load(
    store: Arc<dyn crate::store::Store>,
    policy: WhoMayMessage,
    a: Arc<str>,
    b: Arc<str>,
) -> Result<Cached> {
    let (ab, ba) = (store.contact(&a, &b).await?, store.contact(&b, &a).await?);
    let friends = ab.as_ref().is_some_and(|c| c.friend);
    let mut blocked_by = Vec::new();
    if ab.is_some_and(|c| c.blocked) {
        blocked_by.push(a.clone());
    }
    if ba.is_some_and(|c| c.blocked) {
        blocked_by.push(b.clone());
    }
    let (share_group, groups_at) = if policy == WhoMayMessage::FriendsOrGroups && !friends {
        (Some(store.share_group(&a, &b).await?), Some(Instant::now()))
    } else {
        (None, None)
    };
    Ok(Cached { rel: Relation { friends, blocked_by, share_group }, groups_at })
}

impl ConversationActor {
    /// The two users, when this is a one-to-one conversation between two different users.
    pub(super) fn pair(&self) -> Option<(Arc<str>, Arc<str>)> {
        match (self.kind, self.members.as_slice()) {
            (ConvKind::Direct, [a, b]) if a != b => Some((a.clone(), b.clone())),
            _ => None,
        }
    }

    /// Checks a message of `sender` against the cached relation.
    pub(super) fn check_relation(&self, sender: &str) -> DirectVerdict {
        let (Some((a, b)), Some(cached)) = (self.pair(), &self.relation) else { return DirectVerdict::Allow };
        let recipient = if &*a == sender { b } else { a };
        let limits = &self.core.limits;
        let fresh = cached.groups_at.is_some_and(|t| t.elapsed() < GROUPS_FRESH);
        check_direct_send(limits.who_may_message, |u| limits.is_staff(u), sender, &recipient, &cached.rel, fresh)
    }

    /// Reloads the relation, holding the mailbox until done (so the next message is checked
    /// against it), then runs `then`.
    pub(super) fn reload_relation(
        &mut self,
        ctx: &mut Context<Self>,
        then: impl FnOnce(&mut Self, &mut Context<Self>) + 'static,
    ) {
        let Some((a, b)) = self.pair() else {
            then(self, ctx);
            return;
        };
        let fut = load(self.core.store.clone(), self.core.limits.who_may_message, a, b);
        ctx.wait(fut.into_actor(self).map(move |res, act, ctx| {
            match res {
                Ok(cached) => act.relation = Some(cached),
                Err(e) => {
                    // Keep what was cached; the next change or lookup tries again.
                    tracing::warn!(parent: &act.span, error = %e, "could not reload the contacts of a conversation");
                }
            }
            then(act, ctx);
        }));
    }
}

impl Handler<ReloadRelation> for ConversationActor {
    type Result = ();

    fn handle(&mut self, _: ReloadRelation, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Ready) {
            self.reload_relation(ctx, |_, _| {});
        }
    }
}
