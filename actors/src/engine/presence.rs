//! Online and offline: a user's first and last connection, and their webhook events.

use super::*;

impl Engine {
    /// A connection of `user` opened on this node (`first_here`: its first one here). On a single
    /// node that is `user.online` when it is the first; in a cluster the transport decides, for
    /// the whole cluster.
    pub fn session_opened(&self, user: &Arc<str>, device: &Arc<str>, conn_id: u64, first_here: bool) {
        self.note_active(user);
        match self.core.cluster() {
            Some(cluster) => cluster.session_opened(user, device, conn_id, first_here),
            None if first_here => self.presence(user, true),
            None => {}
        }
    }

    /// A connection of `user` on this node closed (`last_here`: its last one here); see
    /// [`Engine::session_opened`].
    pub fn session_closed(&self, user: &Arc<str>, device: &Arc<str>, conn_id: u64, last_here: bool) {
        match self.core.cluster() {
            Some(cluster) => cluster.session_closed(user, device, conn_id, last_here),
            None if last_here => self.presence(user, false),
            None => {}
        }
    }

    /// `user` came online (its first connection) or went offline (its last one closed): writes
    /// `user.online` / `user.offline` to the outbox when webhooks are on. Events are written one
    /// at a time, in the order of these calls, by one task; never fails the caller (a failed
    /// write is logged, and beyond [`PRESENCE_QUEUE`] waiting events new ones are dropped).
    pub fn presence(&self, user: &str, online: bool) {
        let Some(outbox) = self.core.hooks.get().and_then(|h| h.outbox.clone()) else {
            return;
        };
        let event = crate::outbox::NewEvent::presence(user, online, crate::clock::now_ms());
        {
            let mut q = self.core.presence.lock().unwrap_or_else(|p| p.into_inner());
            if q.events.len() >= crate::core::PRESENCE_QUEUE {
                tracing::warn!(%user, online, "too many presence events waiting for the outbox; dropped");
                return;
            }
            q.events.push_back(event);
            if q.draining {
                return;
            }
            q.draining = true;
        }
        let core = self.core.clone();
        let drain = async move {
            loop {
                let next = {
                    let mut q = core.presence.lock().unwrap_or_else(|p| p.into_inner());
                    match q.events.pop_front() {
                        Some(e) => e,
                        None => {
                            q.draining = false;
                            return;
                        }
                    }
                };
                if let Err(e) = outbox.push_event(next).await {
                    tracing::warn!(error = %e, "could not record a presence event for webhooks");
                }
            }
        };
        spawn_on_main(drain);
    }

    /// Waits (at most `within`) until every presence event queued so far was written (or failed).
    pub async fn presence_written(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            {
                let q = self.core.presence.lock().unwrap_or_else(|p| p.into_inner());
                if q.events.is_empty() && !q.draining {
                    return true;
                }
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}
