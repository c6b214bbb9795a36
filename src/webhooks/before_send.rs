//! The synchronous checks over HTTP: a signed POST of what a client asks for, answered with a
//! JSON `action`.
//!
//! - `before_send`, about a message about to be stored: `{"action": "accept"}`,
//!   `{"action": "reject", "reason": "…"}` or `{"action": "rewrite", "body": {…}}`.
//! - `before_group_create` and `before_member_join`, about a group's creation or new members:
//!   `{"action": "accept"}` or `{"action": "reject", "reason": "…"}`.
//!
//! A timeout, a non-2xx answer or an answer that cannot be read counts as "could not ask":
//! accepted when `fail_open`, refused otherwise.

use std::time::Duration;

use async_trait::async_trait;
use confab_actors::error::{Error, ErrorCode, Result};
use confab_actors::model::Body;
use confab_actors::outbox::{BeforeSend, Gate, GateCheck, SendCheck, Verdict};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::HookConfig;

/// A configured check URL and the key that signs what is posted to it.
struct HookClient {
    /// The setting's name, for the log.
    name: &'static str,
    client: reqwest::Client,
    url: reqwest::Url,
    key_id: String,
    secret: String,
    fail_open: bool,
}

impl HookClient {
    /// `None` when no URL is configured.
    fn from_config(name: &'static str, c: &HookConfig) -> anyhow::Result<Option<HookClient>> {
        if c.url.is_empty() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(c.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Some(HookClient {
            name,
            client,
            url: reqwest::Url::parse(&c.url)?,
            key_id: c.key_id.clone(),
            secret: c.secret.clone(),
            fail_open: c.fail_open,
        }))
    }

    async fn ask<Q: Serialize, A: DeserializeOwned>(&self, q: &Q) -> std::result::Result<A, String> {
        let body = serde_json::to_vec(q).map_err(|e| e.to_string())?;
        let mut req = self.client.post(self.url.clone()).header("content-type", "application/json");
        for (k, v) in super::signed_headers(&self.key_id, &self.secret, &self.url, &body) {
            req = req.header(k, v);
        }
        let r =
            req.body(body).send().await.map_err(|e| if e.is_timeout() { "timed out".into() } else { e.to_string() })?;
        if !r.status().is_success() {
            return Err(format!("HTTP {}", r.status().as_u16()));
        }
        let bytes = r.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))
    }

    /// What to do when the check could not be made: `Ok(())` to accept (fail open), else the
    /// refusal with `code`.
    fn could_not_ask(&self, why: &str, code: ErrorCode) -> Result<()> {
        if self.fail_open {
            tracing::warn!(hook = self.name, error = %why, "could not ask the check; accepting (fail_open)");
            Ok(())
        } else {
            tracing::warn!(hook = self.name, error = %why, "could not ask the check; refusing (fail_open = false)");
            Err(Error::new(code, format!("the request could not be checked: {why}")))
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Answer {
    Accept,
    Reject {
        #[serde(default)]
        reason: Option<String>,
    },
    Rewrite {
        body: Body,
    },
}

#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum GateAnswer {
    Accept,
    Reject {
        #[serde(default)]
        reason: Option<String>,
    },
}

/// `webhooks.before_send`.
pub struct HttpBeforeSend(HookClient);

impl HttpBeforeSend {
    /// `None` when no URL is configured.
    pub fn from_config(c: &HookConfig) -> anyhow::Result<Option<HttpBeforeSend>> {
        Ok(HookClient::from_config("before_send", c)?.map(HttpBeforeSend))
    }
}

#[async_trait]
impl BeforeSend for HttpBeforeSend {
    async fn check(&self, c: &SendCheck) -> Result<Verdict> {
        match self.0.ask(c).await {
            Ok(Answer::Accept) => Ok(Verdict::Accept),
            Ok(Answer::Reject { reason }) => {
                Ok(Verdict::Reject(reason.unwrap_or_else(|| "the message was refused".to_owned())))
            }
            Ok(Answer::Rewrite { body }) => Ok(Verdict::Rewrite(body)),
            Err(why) => self.0.could_not_ask(&why, ErrorCode::MessageRejected).map(|()| Verdict::Accept),
        }
    }
}

/// `webhooks.before_group_create` or `webhooks.before_member_join`.
pub struct HttpGate(HookClient);

impl HttpGate {
    /// `None` when no URL is configured; `name` is the setting's (for the log).
    pub fn from_config(name: &'static str, c: &HookConfig) -> anyhow::Result<Option<HttpGate>> {
        Ok(HookClient::from_config(name, c)?.map(HttpGate))
    }
}

#[async_trait]
impl Gate for HttpGate {
    async fn check(&self, c: &GateCheck) -> Result<Option<String>> {
        match self.0.ask(c).await {
            Ok(GateAnswer::Accept) => Ok(None),
            Ok(GateAnswer::Reject { reason }) => {
                Ok(Some(reason.unwrap_or_else(|| "the request was refused".to_owned())))
            }
            Err(why) => self.0.could_not_ask(&why, ErrorCode::RequestRejected).map(|()| None),
        }
    }
}
