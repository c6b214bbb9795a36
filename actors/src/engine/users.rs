//! Users: profiles, and access (disabled users, revoked tokens).

use super::*;

impl Engine {
    /// Every connected device of `user`: on every live node of a cluster (each with its node),
    /// else on this node. With the cluster unable to tell (Redis down), this node's devices.
    pub async fn devices(&self, user: &str) -> Result<Vec<crate::cluster::RemoteDevice>> {
        model::validate_id("user", user)?;
        let cluster = self.core.cluster();
        if let Some(c) = cluster {
            match c.devices(user).await {
                Ok(list) => return Ok(list),
                Err(e) => tracing::warn!(error = %e, "cannot list devices cluster-wide; answering with this node's"),
            }
        }
        let node = cluster.map(|c| c.node_id().to_owned()).unwrap_or_default();
        Ok(self
            .core
            .registry
            .devices(user)
            .into_iter()
            .map(|(conn_id, d)| crate::cluster::RemoteDevice { node: node.clone(), conn_id, device: d.to_string() })
            .collect())
    }

    /// Claims API key `key_id`'s `nonce` for the whole cluster for `ttl`: false when another
    /// node has seen it. On a single node, or with the cluster unable to tell, true: the node's
    /// own nonce cache, checked before, is what remains.
    pub async fn claim_nonce(&self, key_id: &str, nonce: &str, ttl: Duration) -> bool {
        let Some(c) = self.core.cluster() else { return true };
        match c.claim_nonce(key_id, nonce, ttl).await {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the nonce cluster-wide; checked on this node only");
                true
            }
        }
    }

    /// Refuses a user who was disabled, or a token (`(device, issued_ms)`, unix ms) issued before
    /// the user's tokens, or that device's, were revoked. Users without a record pass.
    pub async fn check_access(&self, user: &str, token: Option<(&str, u64)>) -> Result<()> {
        let Some((device, issued_ms)) = token else {
            return access_of(self.core.store.user(user).await?.as_ref(), None);
        };
        let (u, bound) = self.user_and_device(user, device).await?;
        access_of(u.as_ref(), Some(issued_ms))?;
        if issued_ms < bound {
            return Err(Error::new(ErrorCode::TokenRevoked, "this device's tokens were revoked; get a new one"));
        }
        Ok(())
    }

    /// The bound a token minted now for `user`'s `device` must be issued at or after: the later
    /// of the user's and the device's revocations (0: none).
    pub async fn revoked_before(&self, user: &str, device: &str) -> Result<u64> {
        let (u, device_bound) = self.user_and_device(user, device).await?;
        Ok(u.map_or(0, |u| u.revoked_before_ms()).max(device_bound))
    }

    /// Whether `user`'s `device` may get a notification through a registration made at
    /// `registered_at` (ms): the user is not disabled, and the registration is not older than a
    /// revocation of the user's tokens or the device's.
    pub async fn push_allowed(&self, user: &str, device: &str, registered_at: i64) -> Result<bool> {
        let (u, device_bound) = self.user_and_device(user, device).await?;
        if u.as_ref().is_some_and(|u| u.disabled) {
            return Ok(false);
        }
        let bound = u.map_or(0, |u| u.revoked_before_ms()).max(device_bound);
        Ok(u64::try_from(registered_at).unwrap_or(0) >= bound)
    }

    /// The user's record and their `device`'s revocation bound (0: none), read at once.
    async fn user_and_device(&self, user: &str, device: &str) -> Result<(Option<model::User>, u64)> {
        let users = [user.to_owned()];
        let (u, devices) =
            futures_util::future::join(self.core.store.user(user), self.core.store.device_revocations(&users)).await;
        let bound = devices?.into_iter().filter(|(_, d, _)| d == device).map(|(_, _, b)| b).max().unwrap_or(0);
        Ok((u?, bound))
    }

    /// Re-reads the access of every user with a session on this node and closes the sessions
    /// that lost it. A node runs this when its cluster bus comes back after being cut off: a
    /// disable or revocation broadcast meanwhile may never have reached it. Reads 100 users at a
    /// time; a read that fails is logged and the users it covered are left as they are.
    pub async fn recheck_access(&self) -> usize {
        let users = self.core.registry.users();
        let mut closed = 0;
        for chunk in users.chunks(model::MAX_PROFILE_LOOKUP) {
            let ids: Vec<String> = chunk.iter().map(|u| u.to_string()).collect();
            match self.core.store.users(&ids).await {
                Ok(records) => {
                    for u in records {
                        let r = if u.disabled {
                            Revocation::Disabled
                        } else {
                            match u.revoked_before_ms() {
                                0 => continue,
                                before => Revocation::TokensBefore(Some(before)),
                            }
                        };
                        closed += self.core.registry.revoke(&u.id, &r);
                    }
                    match self.core.store.device_revocations(&ids).await {
                        Ok(devices) => {
                            for (user, device, before_ms) in devices {
                                closed += self.core.registry.revoke(&user, &Revocation::Device { device, before_ms });
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, users = ids.len(), "could not re-check devices' access"),
                    }
                }
                Err(e) => tracing::warn!(error = %e, users = ids.len(), "could not re-check users' access"),
            }
        }
        if closed > 0 {
            tracing::info!(sessions = closed, "closed sessions that lost access while this node was cut off");
        }
        closed
    }

    /// Profiles of up to 100 users; users without a profile are left out.
    pub async fn users_get(&self, ids: &[String]) -> Result<Vec<model::Profile>> {
        if ids.is_empty() || ids.len() > model::MAX_PROFILE_LOOKUP {
            return Err(Error::invalid(format!("ids must hold 1 to {} user ids", model::MAX_PROFILE_LOOKUP)));
        }
        ids.iter().try_for_each(|u| model::validate_id("ids[]", u))?;
        let mut ids = ids.to_vec();
        ids.sort();
        ids.dedup();
        let mut users = self.core.store.users(&ids).await?;
        users.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(users.iter().map(model::User::profile).collect())
    }

    /// Creates a user's record or changes its profile (validated).
    pub async fn user_upsert(&self, patch: model::UserPatch) -> Result<model::User> {
        patch.validate()?;
        Ok(self.core.store.upsert_user(patch).await?)
    }

    /// The caller changes their own profile.
    pub async fn profile_update(&self, caller: &Caller, req: proto::ProfileUpdateReq) -> Result<model::Profile> {
        if req.nickname.is_none() && req.avatar.is_none() && req.ext.is_none() {
            return Err(Error::invalid("give at least one of nickname, avatar, ext"));
        }
        let patch = model::UserPatch {
            id: caller.user.to_string(),
            nickname: req.nickname.map(|n| n.trim().to_string()),
            avatar: req.avatar,
            ext: req.ext,
            ts: crate::clock::now_ms(),
        };
        Ok(self.user_upsert(patch).await?.profile())
    }

    /// Disables or enables a user. Disabling closes the user's sessions on every node.
    pub async fn user_set_disabled(&self, user: &str, disabled: bool) -> Result<model::User> {
        model::validate_id("user", user)?;
        let u = self.core.store.set_user_disabled(user, disabled, crate::clock::now_ms()).await?;
        if disabled {
            self.core.close_user(user, Revocation::Disabled);
            self.forget_push_tokens(user, None).await;
        }
        Ok(u)
    }

    /// Revokes every token issued to the user so far (to the millisecond: a token issued in the
    /// same millisecond as the revocation is revoked too) and closes the sessions that hold one,
    /// on every node.
    pub async fn user_revoke_tokens(&self, user: &str) -> Result<model::User> {
        model::validate_id("user", user)?;
        let now = crate::clock::now_ms();
        let before = u64::try_from(now).unwrap_or(0) + 1;
        let u = self.core.store.revoke_tokens(user, before, now).await?;
        self.core.close_user(user, Revocation::TokensBefore(Some(u.revoked_before_ms())));
        self.forget_push_tokens(user, None).await;
        Ok(u)
    }

    /// Forces one of a user's devices offline: revokes the tokens issued to that device so far
    /// (as [`Engine::user_revoke_tokens`] does for all of them) and closes its sessions on every
    /// node (1008 `token_revoked`). The user's other devices stay connected. Returns the bound.
    pub async fn user_revoke_device(&self, user: &str, device: &str) -> Result<u64> {
        model::validate_id("user", user)?;
        model::validate_id("device", device)?;
        let now = crate::clock::now_ms();
        let before = u64::try_from(now).unwrap_or(0) + 1;
        let before_ms = self.core.store.revoke_device(user, device, before).await?;
        self.core.close_user(user, Revocation::Device { device: device.to_owned(), before_ms });
        self.forget_push_tokens(user, Some(device)).await;
        Ok(before_ms)
    }

    /// Removes the push registrations of `user`'s `device` (all of the user's without one): a
    /// device that lost access gets no notifications either (their text is the conversation's).
    /// A store that cannot do it now is logged; the revocation itself stands.
    async fn forget_push_tokens(&self, user: &str, device: Option<&str>) {
        let regs = match self.core.store.push_tokens(&[user.to_owned()]).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(user, error = %e, "could not remove the push registrations of a revoked user or device");
                return;
            }
        };
        for r in regs.into_iter().filter(|r| device.is_none_or(|d| d == r.device)) {
            if let Err(e) = self.core.store.remove_push_token(&r.user, &r.device, Some(&r.token)).await {
                tracing::warn!(user, device = %r.device, error = %e, "could not remove a revoked device's push registration");
            }
        }
    }
}

/// Whether a user with record `u` may use a token issued at `issued_ms` (unix ms; `None`: only
/// whether the user is enabled).
pub fn access_of(u: Option<&model::User>, issued_ms: Option<u64>) -> Result<()> {
    let Some(u) = u else { return Ok(()) };
    if u.disabled {
        return Err(Error::new(ErrorCode::UserDisabled, "this user is disabled"));
    }
    if issued_ms.is_some_and(|t| t < u.revoked_before_ms()) {
        return Err(Error::new(ErrorCode::TokenRevoked, "this token was revoked; get a new one"));
    }
    Ok(())
}
