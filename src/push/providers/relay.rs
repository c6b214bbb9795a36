//! The signed relay (`[push.relay]`): one POST per notification to a backend that hands it to
//! another vendor (Huawei, Xiaomi, ...), for the device tokens registered under the names of
//! `push.relay.providers`.
//!
//! The body is `{"provider", "token", "notification"}` (the notification as the pusher built
//! it), signed as webhooks are (`X-Confab-Key`, `-Timestamp`, `-Nonce`, `-Signature`;
//! docs/webhooks.md). The relay answers 2xx when the vendor took it, and 410 Gone when the
//! vendor said the token is invalid (the registration is then removed).

use std::time::Duration;

use anyhow::Context;
use serde_json::json;

use super::{by_status, describe};
use crate::push::{Notification, Outcome, Target};

pub(super) struct Relay {
    client: reqwest::Client,
    url: reqwest::Url,
    key_id: String,
    secret: String,
    providers: Vec<String>,
}

impl Relay {
    pub(super) fn new(cfg: &crate::config::Relay, timeout: Duration) -> anyhow::Result<Relay> {
        let url = reqwest::Url::parse(&cfg.url).with_context(|| format!("push.relay.url: {:?}", cfg.url))?;
        Ok(Relay {
            client: super::client("push.relay", timeout, false)?,
            url,
            key_id: cfg.key_id.clone(),
            secret: cfg.secret.clone(),
            providers: cfg.providers.clone(),
        })
    }

    pub(super) fn handles(&self, provider: &str) -> bool {
        self.providers.iter().any(|p| p == provider)
    }

    pub(super) fn providers(&self) -> &[String] {
        &self.providers
    }

    pub(super) async fn send(&self, target: &Target, n: &Notification) -> Outcome {
        let body = json!({"provider": target.provider, "token": target.token, "notification": n}).to_string();
        let mut req = self.client.post(self.url.clone()).header("content-type", "application/json");
        for (name, value) in crate::webhooks::signed_headers(&self.key_id, &self.secret, &self.url, body.as_bytes()) {
            req = req.header(name, value);
        }
        super::outcome_of(req.body(body).send().await, classify).await
    }
}

/// What an answer means: 2xx `Sent`; 410 `InvalidToken`; 429 `Retry(throttled)`; 5xx
/// `Retry(http_5xx)`; any other status `Failed(http_4xx)`.
pub fn classify(status: u16, after: Option<Duration>, body: &[u8]) -> Outcome {
    let detail = describe(status, body);
    if status == 410 {
        return Outcome::InvalidToken(detail);
    }
    by_status(status, after, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_answers() {
        assert_eq!(classify(204, None, b""), Outcome::Sent);
        assert!(matches!(classify(410, None, b"{\"error\":\"gone\"}"), Outcome::InvalidToken(d) if d.contains("gone")));
        let after = Some(Duration::from_secs(2));
        assert_eq!(classify(429, after, b"").reason(), "throttled");
        assert!(matches!(classify(429, after, b""), Outcome::Retry { after: a, .. } if a == after));
        assert_eq!(classify(502, None, b"").reason(), "http_5xx");
        assert_eq!(classify(401, None, b"").reason(), "http_4xx");
        assert_eq!(classify(400, None, b"").reason(), "http_4xx");
    }
}
