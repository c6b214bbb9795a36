//! The `before_send` check over HTTP: a signed POST of the message about to be stored; the answer
//! `{"action": "accept"}`, `{"action": "reject", "reason": "…"}` or
//! `{"action": "rewrite", "body": {…}}` decides. A timeout, a non-2xx answer or an answer that
//! cannot be read counts as "could not ask": accepted when `fail_open`, refused otherwise.

use std::time::Duration;

use async_trait::async_trait;
use confab_actors::error::{Error, ErrorCode, Result};
use confab_actors::model::Body;
use confab_actors::outbox::{BeforeSend, SendCheck, Verdict};
use serde::Deserialize;

use crate::config::BeforeSendConfig;

pub struct HttpBeforeSend {
    client: reqwest::Client,
    url: reqwest::Url,
    key_id: String,
    secret: String,
    fail_open: bool,
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

impl HttpBeforeSend {
    /// `None` when no URL is configured.
    pub fn from_config(c: &BeforeSendConfig) -> anyhow::Result<Option<HttpBeforeSend>> {
        if c.url.is_empty() {
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(c.timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Some(HttpBeforeSend {
            client,
            url: reqwest::Url::parse(&c.url)?,
            key_id: c.key_id.clone(),
            secret: c.secret.clone(),
            fail_open: c.fail_open,
        }))
    }

    async fn ask(&self, c: &SendCheck) -> std::result::Result<Answer, String> {
        let body = serde_json::to_vec(c).map_err(|e| e.to_string())?;
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
}

#[async_trait]
impl BeforeSend for HttpBeforeSend {
    async fn check(&self, c: &SendCheck) -> Result<Verdict> {
        match self.ask(c).await {
            Ok(Answer::Accept) => Ok(Verdict::Accept),
            Ok(Answer::Reject { reason }) => {
                Ok(Verdict::Reject(reason.unwrap_or_else(|| "the message was refused".to_owned())))
            }
            Ok(Answer::Rewrite { body }) => Ok(Verdict::Rewrite(body)),
            Err(why) if self.fail_open => {
                tracing::warn!(error = %why, "before_send could not be asked; accepting (fail_open)");
                Ok(Verdict::Accept)
            }
            Err(why) => {
                tracing::warn!(error = %why, "before_send could not be asked; refusing (fail_open = false)");
                Err(Error::new(ErrorCode::MessageRejected, format!("the message could not be checked: {why}")))
            }
        }
    }
}
