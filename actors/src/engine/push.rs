//! Push registrations (one token per device), and which devices are connected anywhere: what
//! the pusher (`src/push/`) asks before it plans or sends a notification.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::push::{validate_token, PushRegistration};

impl Engine {
    /// The push providers registrations may name (set once at start-up; none: push is off).
    pub fn set_push_providers(&self, names: Vec<String>) {
        let _ = self.core.push_providers.set(names);
    }

    /// Registers `device`'s push token with `provider`, replacing the device's previous one.
    pub async fn push_register(
        &self,
        user: &str,
        device: &str,
        provider: &str,
        token: &str,
    ) -> Result<PushRegistration> {
        model::validate_id("user", user)?;
        model::validate_id("device", device)?;
        let known = self.core.push_providers.get().map(Vec::as_slice).unwrap_or(&[]);
        if !known.iter().any(|p| p == provider) {
            let names = if known.is_empty() { "none: push is not configured".to_owned() } else { known.join(", ") };
            return Err(Error::new(
                ErrorCode::PushProviderUnknown,
                format!("provider {provider:?} is not one this node pushes through ({names})"),
            ));
        }
        validate_token(token)?;
        // A disabled user registers nothing (their devices cannot connect either).
        if self.core.store.user(user).await?.is_some_and(|u| u.disabled) {
            return Err(Error::new(ErrorCode::UserDisabled, "this user is disabled"));
        }
        let r = PushRegistration {
            user: user.to_owned(),
            device: device.to_owned(),
            provider: provider.to_owned(),
            token: token.to_owned(),
            updated_at: crate::clock::now_ms(),
        };
        self.core.store.set_push_token(&r).await?;
        Ok(r)
    }

    /// Removes `device`'s push registration; true when it had one.
    pub async fn push_unregister(&self, user: &str, device: &str) -> Result<bool> {
        model::validate_id("user", user)?;
        model::validate_id("device", device)?;
        Ok(self.core.store.remove_push_token(user, device, None).await?)
    }

    /// `user`'s push registrations, by device.
    pub async fn push_registrations(&self, user: &str) -> Result<Vec<PushRegistration>> {
        model::validate_id("user", user)?;
        Ok(self.core.store.push_tokens(&[user.to_owned()]).await?)
    }

    /// The devices of `users` connected now: on any live node of a cluster (one round trip), else
    /// on this node. With the cluster unable to tell (Redis down), this node's devices.
    pub async fn connected_devices(&self, users: &[String]) -> HashMap<String, HashSet<String>> {
        if let Some(c) = self.core.cluster() {
            match c.devices_of(users).await {
                Ok(list) => return list.into_iter().map(|(u, d)| (u, d.into_iter().collect())).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot tell which devices are connected cluster-wide; using this node's")
                }
            }
        }
        users
            .iter()
            .filter_map(|u| {
                let d: HashSet<String> =
                    self.core.registry.devices(u).into_iter().map(|(_, d)| d.to_string()).collect();
                (!d.is_empty()).then(|| (u.clone(), d))
            })
            .collect()
    }
}
