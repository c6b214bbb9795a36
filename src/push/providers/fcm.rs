//! Firebase Cloud Messaging, HTTP v1 API (`[push.fcm]`).
//!
//! Authentication is OAuth2 with the service account: a JWT signed RS256 with the account's key
//! is exchanged at its `token_uri` for an access token, cached until 60 s before it expires (one
//! exchange at a time; the other sends wait for it). A 401 from the API drops the cached token:
//! that send is retried later with a new one.
//!
//! Each notification is one `messages:send` call, with the notification shown, its fields as
//! `data` (every value a string, as FCM requires), the collapse key as Android's `collapse_key`
//! and `tag`, and APNs' `apns-collapse-id` and `thread-id` for iOS apps registered with FCM.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{by_status, describe, jwt, now_secs, read_answer};
use crate::push::{Notification, Outcome};

/// The OAuth2 scope of the messaging API.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The grant type of the JWT-bearer exchange (RFC 7523).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// How long an assertion is valid (the most Google accepts).
const ASSERTION_TTL: u64 = 3600;
/// A cached access token is renewed this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// The service account's JSON key, the fields used.
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    token_uri: String,
    #[serde(default)]
    private_key_id: Option<String>,
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

struct AccessToken {
    value: String,
    refresh_at: Instant,
}

pub(super) struct Fcm {
    client: reqwest::Client,
    send_url: String,
    token_uri: String,
    client_email: String,
    key_id: Option<String>,
    key: ring::signature::RsaKeyPair,
    rng: ring::rand::SystemRandom,
    token: tokio::sync::Mutex<Option<AccessToken>>,
}

impl Fcm {
    pub(super) fn new(cfg: &crate::config::Fcm, timeout: Duration) -> anyhow::Result<Fcm> {
        let setting = "push.fcm.service_account_file";
        let path = &cfg.service_account_file;
        let text = std::fs::read_to_string(path).with_context(|| format!("{setting}: cannot read {path:?}"))?;
        let account: ServiceAccount = serde_json::from_str(&text).with_context(|| {
            format!("{setting}: {path:?} is not a service account's JSON key (client_email, private_key, token_uri)")
        })?;
        if !(account.token_uri.starts_with("https://") || account.token_uri.starts_with("http://")) {
            anyhow::bail!("{setting}: the token_uri of {path:?} is not an http(s) URL");
        }
        let der = super::pkcs8_der(setting, &account.private_key)?;
        let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
            .map_err(|e| anyhow::anyhow!("{setting}: the private_key of {path:?} is not a usable RSA key ({e})"))?;
        Ok(Fcm {
            client: super::client("push.fcm", timeout, false)?,
            send_url: format!("{}/v1/projects/{}/messages:send", cfg.endpoint.trim_end_matches('/'), cfg.project_id),
            token_uri: account.token_uri,
            client_email: account.client_email,
            key_id: account.private_key_id.filter(|k| !k.is_empty()),
            key,
            rng: ring::rand::SystemRandom::new(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    pub(super) async fn send(&self, token: &str, n: &Notification) -> Outcome {
        let access = match self.access_token().await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        let sent = self.client.post(&self.send_url).bearer_auth(&access).json(&message(token, n)).send().await;
        let outcome = super::outcome_of(sent, classify).await;
        if outcome.reason() == "auth" {
            let mut cached = self.token.lock().await;
            if cached.as_ref().is_some_and(|c| c.value == access) {
                *cached = None;
            }
        }
        outcome
    }

    /// The cached access token, or a new one. A failed exchange is `Retry(auth)`.
    async fn access_token(&self) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(t.value.clone());
        }
        let auth = |detail: String| Outcome::Retry { reason: "auth", detail, after: None };
        let assertion = self.assertion().map_err(|_| auth("signing the token request failed".into()))?;
        let form = [("grant_type", GRANT_TYPE), ("assertion", assertion.as_str())];
        let resp = self
            .client
            .post(&self.token_uri)
            .form(&form)
            .send()
            .await
            .map_err(|e| auth(format!("token endpoint: {}", super::error_chain(&e))))?;
        let (status, _, body) =
            read_answer(resp).await.map_err(|e| auth(format!("token endpoint: {}", super::error_chain(&e))))?;
        if !(200..300).contains(&status) {
            return Err(auth(format!("token endpoint: {}", describe(status, &body))));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| auth(format!("token endpoint: unexpected answer ({e}): {}", describe(status, &body))))?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(ASSERTION_TTL));
        let refresh_at = Instant::now() + lifetime.saturating_sub(REFRESH_MARGIN);
        *cached = Some(AccessToken { value: answer.access_token.clone(), refresh_at });
        Ok(answer.access_token)
    }

    /// The signed JWT the token endpoint exchanges for an access token.
    fn assertion(&self) -> Result<String, ring::error::Unspecified> {
        let now = now_secs();
        let mut header = json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = json!(kid);
        }
        let claims = json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_TTL,
        });
        jwt::rs256(&self.key, &self.rng, &header, &claims)
    }
}

/// The `messages:send` body for device `token`.
pub fn message(token: &str, n: &Notification) -> Value {
    let mut notification = json!({"title": n.title, "body": n.body});
    if let Some(image) = &n.image {
        notification["image"] = json!(image);
    }
    json!({
        "message": {
            "token": token,
            "notification": notification,
            "data": {
                "conv_id": n.conv_id,
                "seq": n.seq.to_string(),
                "sender": n.sender,
                "count": n.count.to_string(),
                "badge": n.badge.to_string(),
                "mention": n.mention.to_string(),
            },
            "android": {
                "collapse_key": n.collapse_key,
                "priority": "HIGH",
                "notification": {
                    "tag": n.collapse_key,
                    // An int32 in the API.
                    "notification_count": n.badge.min(i32::MAX as u64),
                },
            },
            "apns": {
                "headers": {"apns-collapse-id": n.collapse_key},
                "payload": {"aps": {"badge": n.badge, "thread-id": n.conv_id}},
            },
        }
    })
}

/// What an answer of the send endpoint means:
/// - 2xx: `Sent`;
/// - 404, or `UNREGISTERED` (as the error's status or its FCM error code), or
///   `SENDER_ID_MISMATCH`, or a 400 `INVALID_ARGUMENT` about the registration token:
///   `InvalidToken`;
/// - 401: `Retry(auth)` (the caller drops its access token);
/// - 429: `Retry(throttled)`, 5xx: `Retry(http_5xx)`, with `Retry-After`;
/// - anything else (another 400, 403, ...): `Failed(http_4xx)`.
pub fn classify(status: u16, after: Option<Duration>, body: &[u8]) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Sent;
    }
    let detail = describe(status, body);
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &parsed["error"];
    let api_status = error["status"].as_str().unwrap_or("");
    let message = error["message"].as_str().unwrap_or("").to_ascii_lowercase();
    let codes: Vec<&str> = error["details"]
        .as_array()
        .map(|d| d.iter().filter_map(|x| x["errorCode"].as_str()).collect())
        .unwrap_or_default();
    let code = |c: &str| codes.contains(&c);
    let about_token = message.contains("registration token");
    if status == 404
        || api_status == "UNREGISTERED"
        || code("UNREGISTERED")
        || code("SENDER_ID_MISMATCH")
        || (status == 400 && (api_status == "INVALID_ARGUMENT" || code("INVALID_ARGUMENT")) && about_token)
    {
        return Outcome::InvalidToken(detail);
    }
    if status == 401 {
        return Outcome::Retry { reason: "auth", detail, after: None };
    }
    by_status(status, after, detail)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fixture, notification, push_config};
    use super::*;

    fn fcm_error(code: u16, status: &str, message: &str, error_code: Option<&str>) -> Vec<u8> {
        let details = match error_code {
            Some(c) => json!([{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": c}]),
            None => json!([]),
        };
        json!({"error": {"code": code, "message": message, "status": status, "details": details}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn classifies_answers() {
        assert_eq!(classify(200, None, br#"{"name":"projects/p/messages/1"}"#), Outcome::Sent);
        let unregistered = fcm_error(404, "NOT_FOUND", "Requested entity was not found.", Some("UNREGISTERED"));
        assert!(matches!(classify(404, None, &unregistered), Outcome::InvalidToken(d) if d.contains("UNREGISTERED")));
        assert_eq!(classify(404, None, b"").reason(), "invalid_token");
        let bad_token = fcm_error(
            400,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            Some("INVALID_ARGUMENT"),
        );
        assert_eq!(classify(400, None, &bad_token).reason(), "invalid_token");
        let bad_field = fcm_error(400, "INVALID_ARGUMENT", "Invalid value at 'message.android.ttl'", None);
        assert_eq!(classify(400, None, &bad_field).reason(), "http_4xx");
        let mismatch = fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", Some("SENDER_ID_MISMATCH"));
        assert_eq!(classify(403, None, &mismatch).reason(), "invalid_token");
        let denied = fcm_error(403, "PERMISSION_DENIED", "Permission denied", None);
        assert_eq!(classify(403, None, &denied).reason(), "http_4xx");
        let unauth = fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", None);
        assert_eq!(classify(401, None, &unauth).reason(), "auth");
        let after = Some(Duration::from_secs(30));
        let quota = fcm_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded", Some("QUOTA_EXCEEDED"));
        assert!(
            matches!(classify(429, after, &quota), Outcome::Retry { reason: "throttled", after: a, .. } if a == after)
        );
        assert_eq!(classify(503, None, b"<html>").reason(), "http_5xx");
        assert_eq!(classify(500, None, &fcm_error(500, "INTERNAL", "x", Some("INTERNAL"))).reason(), "http_5xx");
    }

    #[test]
    fn message_shape() {
        let m = message("tok", &notification());
        let m = &m["message"];
        assert_eq!(m["token"], "tok");
        assert_eq!(m["notification"], json!({"title": "Alice", "body": "hello", "image": "https://cdn.example/a.png"}));
        let data = m["data"].as_object().expect("data");
        assert!(data.values().all(Value::is_string), "{data:?}");
        assert_eq!(data["seq"], "42");
        assert_eq!(data["mention"], "true");
        assert_eq!(data["badge"], "3");
        assert_eq!(m["android"]["collapse_key"], "d:alice:bob");
        assert_eq!(m["android"]["notification"]["notification_count"], 3);
        assert_eq!(m["apns"]["payload"]["aps"]["thread-id"], "d:alice:bob");
        let mut n = notification();
        n.image = None;
        assert!(message("t", &n)["message"]["notification"].get("image").is_none());
    }

    #[test]
    fn refuses_missing_or_bad_files() {
        let e = crate::push::providers::Providers::from_config(&push_config(&[
            ("CONFAB__PUSH__FCM__PROJECT_ID", "p"),
            ("CONFAB__PUSH__FCM__SERVICE_ACCOUNT_FILE", "/nonexistent/sa.json"),
        ]))
        .err()
        .expect("refused");
        assert!(e.to_string().contains("push.fcm.service_account_file"), "{e}");
        let not_json = fixture("fcm-key.pem");
        let e = crate::push::providers::Providers::from_config(&push_config(&[
            ("CONFAB__PUSH__FCM__PROJECT_ID", "p"),
            ("CONFAB__PUSH__FCM__SERVICE_ACCOUNT_FILE", not_json.to_str().expect("utf-8")),
        ]))
        .err()
        .expect("refused");
        assert!(e.to_string().contains("push.fcm.service_account_file"), "{e}");
        let sa = fixture("service-account.json");
        let p = crate::push::providers::Providers::from_config(&push_config(&[
            ("CONFAB__PUSH__FCM__PROJECT_ID", "p"),
            ("CONFAB__PUSH__FCM__SERVICE_ACCOUNT_FILE", sa.to_str().expect("utf-8")),
        ]))
        .expect("the fixture account loads");
        assert!(p.accepts("fcm"));
    }

    #[test]
    fn assertion_claims() {
        let sa = fixture("service-account.json");
        let cfg = push_config(&[
            ("CONFAB__PUSH__FCM__PROJECT_ID", "p"),
            ("CONFAB__PUSH__FCM__SERVICE_ACCOUNT_FILE", sa.to_str().expect("utf-8")),
        ]);
        let fcm = Fcm::new(&cfg.fcm, Duration::from_secs(1)).expect("loads");
        assert_eq!(fcm.send_url, "https://fcm.googleapis.com/v1/projects/p/messages:send");
        let jwt = fcm.assertion().expect("signs");
        let public = std::fs::read(fixture("fcm-public.der")).expect("fixture");
        let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &public);
        let (h, c) = jwt::decode_verified(&jwt, |m, s| pk.verify(m, s).is_ok()).expect("verifies");
        assert_eq!(h, json!({"alg": "RS256", "typ": "JWT", "kid": "test-key-1"}));
        assert_eq!(c["iss"], "pusher@confab-test.iam.gserviceaccount.com");
        assert_eq!(c["scope"], SCOPE);
        assert_eq!(c["aud"], "https://oauth2.googleapis.com/token");
        assert_eq!(c["exp"].as_u64().expect("exp") - c["iat"].as_u64().expect("iat"), 3600);
    }
}
