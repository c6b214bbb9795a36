//! `[webhooks]`: the webhook endpoints and the `before_send` check.

use serde::Deserialize;

use super::{check_http_url, json_list, keyed_list, only_known, range, ConfigError};

/// `[webhooks]`: signed POSTs of events to backends, and the `before_send` check (docs/webhooks.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhooks {
    /// Where events go. Empty: no outbox is written and nothing is sent.
    #[serde(deserialize_with = "webhook_endpoints")]
    pub endpoints: Vec<WebhookEndpoint>,
    /// Attempts per event and endpoint before the delivery is marked `failed` (replayable).
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Longest wait for an endpoint's answer.
    pub timeout_ms: u64,
    /// Deliveries in flight per endpoint.
    pub max_in_flight: usize,
    /// How often the dispatcher looks for new events (it also wakes when a delivery finishes).
    pub poll_interval_ms: u64,
    /// How long the dispatcher's lease lasts without renewal (one active dispatcher per cluster).
    pub lease_ttl_ms: u64,
    /// How long delivered and failed events (and their delivery log) are kept, in hours; may be
    /// fractional. Events still pending for some endpoint are kept whatever their age.
    pub retention_hours: f64,
    /// How often the dispatcher holding the lease removes what is past the retention.
    pub trim_interval_ms: u64,
    pub before_send: HookConfig,
    /// Asked before a client creates a group.
    pub before_group_create: HookConfig,
    /// Asked before a client adds, invites, admits or joins members of a group.
    pub before_member_join: HookConfig,
}

/// One webhook endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEndpoint {
    /// A stable name: the delivery log is kept under it.
    pub name: String,
    pub url: String,
    /// Event kinds to send; empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Sent as `X-Confab-Key`; the receiver looks the secret up by it.
    pub key_id: String,
    pub secret: String,
}

/// `[webhooks.before_send]`, `[webhooks.before_group_create]`, `[webhooks.before_member_join]`:
/// a synchronous check of what a client asks for.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// Empty: no check.
    pub url: String,
    pub timeout_ms: u64,
    /// When the check cannot be made (timeout, error): true accepts the request, false refuses it.
    pub fail_open: bool,
    pub key_id: String,
    pub secret: String,
}

/// Like `api.keys`: a list of tables in a file, or a JSON array in one environment variable.
fn webhook_endpoints<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<WebhookEndpoint>, D::Error> {
    json_list(d, "webhooks.endpoints", "endpoints")
}

impl WebhookEndpoint {
    /// Checks one endpoint of `webhooks.endpoints` but its name (see [`Webhooks::validate`]).
    fn validate(&self) -> Result<(), ConfigError> {
        check_http_url(&format!("webhooks.endpoints[{}].url", self.name), &self.url)?;
        if self.key_id.is_empty() || self.secret.len() < 16 {
            return Err(ConfigError(format!(
                "webhooks.endpoints[{}]: key_id must be set and secret at least 16 bytes",
                self.name
            )));
        }
        only_known(&self.events, confab_actors::outbox::EVENT_KINDS, || {
            format!("webhooks.endpoints[{}]: unknown event", self.name)
        })
    }
}

impl Webhooks {
    /// Checks `[webhooks]`, naming the setting at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        keyed_list("webhooks.endpoints", "name", &self.endpoints, |e| &e.name, WebhookEndpoint::validate)?;
        range("webhooks.max_attempts", self.max_attempts, 1, 1000)?;
        range("webhooks.backoff_initial_ms", self.backoff_initial_ms, 10, 3_600_000)?;
        range("webhooks.backoff_max_ms", self.backoff_max_ms, self.backoff_initial_ms, 86_400_000)?;
        range("webhooks.timeout_ms", self.timeout_ms, 100, 600_000)?;
        range("webhooks.max_in_flight", self.max_in_flight, 1, 1024)?;
        range("webhooks.poll_interval_ms", self.poll_interval_ms, 10, 60_000)?;
        range("webhooks.lease_ttl_ms", self.lease_ttl_ms, 1000, 600_000)?;
        // At least one second, at most ten years (fractions of an hour are allowed: 0.5 = 30 min).
        if !(self.retention_hours.is_finite() && (1.0 / 3600.0..=87_600.0).contains(&self.retention_hours)) {
            return Err(ConfigError(format!(
                "webhooks.retention_hours = {} must be between 0.0003 (one second) and 87600 (ten years)",
                self.retention_hours
            )));
        }
        range("webhooks.trim_interval_ms", self.trim_interval_ms, 100, 86_400_000)?;
        for (name, b) in [
            ("before_send", &self.before_send),
            ("before_group_create", &self.before_group_create),
            ("before_member_join", &self.before_member_join),
        ] {
            if !b.url.is_empty() {
                check_http_url(&format!("webhooks.{name}.url"), &b.url)?;
                range(&format!("webhooks.{name}.timeout_ms"), b.timeout_ms, 10, 60_000)?;
                if b.key_id.is_empty() || b.secret.len() < 16 {
                    return Err(ConfigError(format!(
                        "webhooks.{name}: key_id must be set and secret at least 16 bytes"
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
    fn webhook_retention() {
        let c = Config::load_with_env(None, env(&[])).expect("valid");
        assert_eq!(c.webhooks.retention_hours, 168.0);
        assert_eq!(c.webhooks.trim_interval_ms, 300_000);
        let c = Config::load_with_env(None, env(&[("CONFAB__WEBHOOKS__RETENTION_HOURS", "0.5")])).expect("valid");
        assert_eq!(c.webhooks.retention_hours, 0.5);
        for bad in ["0", "-1", "0.0001", "100000", "NaN"] {
            let e = Config::load_with_env(None, env(&[("CONFAB__WEBHOOKS__RETENTION_HOURS", bad)])).unwrap_err();
            assert!(e.to_string().contains("webhooks.retention_hours"), "{bad}: {e}");
        }
        assert_refused(&[("CONFAB__WEBHOOKS__TRIM_INTERVAL_MS", "0")], "webhooks.trim_interval_ms");
    }
}
