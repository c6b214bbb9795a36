//! `[push]`: offline push through FCM, APNs and a signed relay (docs/push.md).

use serde::Deserialize;

use super::{check_http_url, list_or_string, range, ConfigError};

/// `[push]`: notifications for devices that are not connected.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// Wait after a message before its notification goes out: a message read on another device
    /// meanwhile is not pushed, and a burst in one conversation becomes one notification.
    pub delay_ms: u64,
    /// Messages older than this when they are planned are not pushed (push turned on over an old
    /// outbox, or a long outage of the pusher), seconds.
    pub max_age_secs: u64,
    /// A muted conversation still pushes a message that mentions the user (or everyone).
    pub mentions_override_mute: bool,
    /// false: notifications say "New message" and nothing of the content.
    pub show_preview: bool,
    /// Attempts per notification before it is dropped (counted as failed).
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Longest wait for a provider's answer.
    pub timeout_ms: u64,
    /// Provider calls in flight.
    pub max_in_flight: usize,
    /// How often the pusher looks for new messages and due notifications.
    pub poll_interval_ms: u64,
    /// How long the pusher's lease lasts without renewal (one active pusher per cluster).
    pub lease_ttl_ms: u64,
    /// How long senders' profiles and groups' names are cached for notifications, seconds.
    pub profile_cache_secs: u64,
    pub fcm: Fcm,
    pub apns: Apns,
    pub relay: Relay,
}

/// `[push.fcm]`: Firebase Cloud Messaging, HTTP v1 API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fcm {
    /// The Firebase project; empty: FCM is off.
    pub project_id: String,
    /// The service account's JSON key (`client_email`, `private_key`, `token_uri`).
    pub service_account_file: String,
    /// The API's base URL.
    pub endpoint: String,
}

/// `[push.apns]`: Apple Push Notification service, token-based authentication.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apns {
    /// The Apple developer team; empty: APNs is off.
    pub team_id: String,
    /// The signing key's id (the `kid` of every token).
    pub key_id: String,
    /// The signing key, a `.p8` file (PKCS#8, P-256).
    pub key_file: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `https://api.push.apple.com`, or `https://api.sandbox.push.apple.com` for development builds.
    pub endpoint: String,
}

/// `[push.relay]`: a signed POST per notification to a backend that relays it to any other
/// vendor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relay {
    /// Empty: the relay is off.
    pub url: String,
    /// Sent as `X-Confab-Key`, as webhooks are.
    pub key_id: String,
    pub secret: String,
    /// Provider names whose tokens go to the relay (from the environment: comma-separated).
    #[serde(deserialize_with = "names")]
    pub providers: Vec<String>,
}

fn names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    list_or_string(d, |s| Ok(s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(str::to_owned).collect()))
}

impl Push {
    /// Whether any provider is configured (with none, nothing is queued).
    pub fn enabled(&self) -> bool {
        !self.fcm.project_id.is_empty() || !self.apns.team_id.is_empty() || !self.relay.url.is_empty()
    }

    /// Checks `[push]`, naming the setting at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        range("push.delay_ms", self.delay_ms, 0, 600_000)?;
        range("push.max_age_secs", self.max_age_secs, 1, 30 * 86_400)?;
        range("push.max_attempts", self.max_attempts, 1, 100)?;
        range("push.backoff_initial_ms", self.backoff_initial_ms, 10, 3_600_000)?;
        range("push.backoff_max_ms", self.backoff_max_ms, self.backoff_initial_ms, 86_400_000)?;
        range("push.timeout_ms", self.timeout_ms, 100, 120_000)?;
        range("push.max_in_flight", self.max_in_flight, 1, 1024)?;
        range("push.poll_interval_ms", self.poll_interval_ms, 10, 60_000)?;
        range("push.lease_ttl_ms", self.lease_ttl_ms, 1000, 600_000)?;
        range("push.profile_cache_secs", self.profile_cache_secs, 0, 86_400)?;
        if !self.fcm.project_id.is_empty() {
            check_http_url("push.fcm.endpoint", &self.fcm.endpoint)?;
            if self.fcm.service_account_file.is_empty() {
                return Err(ConfigError("push.fcm.service_account_file must be set with push.fcm.project_id".into()));
            }
        }
        if !self.apns.team_id.is_empty() {
            check_http_url("push.apns.endpoint", &self.apns.endpoint)?;
            if self.apns.key_id.is_empty() || self.apns.key_file.is_empty() || self.apns.topic.is_empty() {
                return Err(ConfigError("push.apns: key_id, key_file and topic must be set with team_id".into()));
            }
        }
        if !self.relay.url.is_empty() {
            check_http_url("push.relay.url", &self.relay.url)?;
            if self.relay.key_id.is_empty() || self.relay.secret.len() < 16 {
                return Err(ConfigError("push.relay: key_id must be set and secret at least 16 bytes".into()));
            }
            for p in &self.relay.providers {
                if p == "fcm" || p == "apns" || confab_actors::model::validate_id("provider", p).is_err() {
                    return Err(ConfigError(format!(
                        "push.relay.providers: {p:?} must be 1 to 64 characters of [A-Za-z0-9_.@:-], not fcm or apns"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{assert_refused, env};
    use crate::config::*;

    #[test]
    fn push_is_off_until_a_provider_is_configured() {
        let c = Config::load_with_env(None, env(&[])).expect("valid");
        assert!(!c.push.enabled());
        assert_eq!(c.push.delay_ms, 1000);
        assert!(c.push.relay.providers.contains(&"huawei".to_owned()));
        let relay = [
            ("CONFAB__PUSH__RELAY__URL", "https://push.example.com/relay"),
            ("CONFAB__PUSH__RELAY__KEY_ID", "k"),
            ("CONFAB__PUSH__RELAY__SECRET", "0123456789abcdef"),
            ("CONFAB__PUSH__RELAY__PROVIDERS", "huawei, vivo"),
        ];
        let c = Config::load_with_env(None, env(&relay)).expect("valid");
        assert!(c.push.enabled());
        assert_eq!(c.push.relay.providers, ["huawei", "vivo"]);
    }

    #[test]
    fn push_settings_are_checked() {
        assert_refused(&[("CONFAB__PUSH__DELAY_MS", "600001")], "push.delay_ms");
        assert_refused(&[("CONFAB__PUSH__MAX_ATTEMPTS", "0")], "push.max_attempts");
        assert_refused(&[("CONFAB__PUSH__FCM__PROJECT_ID", "p")], "push.fcm.service_account_file");
        assert_refused(
            &[
                ("CONFAB__PUSH__FCM__PROJECT_ID", "p"),
                ("CONFAB__PUSH__FCM__SERVICE_ACCOUNT_FILE", "f"),
                ("CONFAB__PUSH__FCM__ENDPOINT", "ftp://x"),
            ],
            "push.fcm.endpoint",
        );
        assert_refused(&[("CONFAB__PUSH__APNS__TEAM_ID", "T")], "push.apns");
        let relay = |providers: &'static str| {
            [
                ("CONFAB__PUSH__RELAY__URL", "https://push.example.com/relay"),
                ("CONFAB__PUSH__RELAY__KEY_ID", "k"),
                ("CONFAB__PUSH__RELAY__SECRET", "0123456789abcdef"),
                ("CONFAB__PUSH__RELAY__PROVIDERS", providers),
            ]
        };
        assert_refused(&relay("fcm"), "push.relay.providers");
        assert_refused(&relay("bad name"), "push.relay.providers");
        assert_refused(
            &[("CONFAB__PUSH__RELAY__URL", "https://x"), ("CONFAB__PUSH__RELAY__KEY_ID", "k")],
            "push.relay",
        );
    }
}
