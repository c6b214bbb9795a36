//! Apple Push Notification service, token-based authentication (`[push.apns]`).
//!
//! Requests carry a provider token: a JWT signed ES256 with the team's `.p8` key, reused for
//! 50 minutes (Apple refuses a token renewed more often than every 20 minutes and expires it
//! after 60). An answer saying the token expired or is invalid drops it: that send is retried
//! later with a new one.
//!
//! APNs speaks HTTP/2 only: over TLS the client negotiates it (ALPN); an `http://` endpoint (a
//! local proxy, tests) is spoken to in cleartext HTTP/2 by prior knowledge (h2c).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use super::{by_status, describe, jwt, now_secs};
use crate::push::{Notification, Outcome};

/// How long a provider token is reused.
const TOKEN_TTL: Duration = Duration::from_secs(50 * 60);
/// How long APNs keeps trying to deliver a notification to a device that is offline.
const EXPIRATION_SECS: u64 = 24 * 3600;
/// APNs' limit on `apns-collapse-id`, bytes.
const MAX_COLLAPSE_ID: usize = 64;

pub(super) struct Apns {
    client: reqwest::Client,
    base: String,
    team_id: String,
    key_id: String,
    topic: String,
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    /// The provider token and when it was made.
    token: Mutex<Option<(String, Instant)>>,
}

impl Apns {
    pub(super) fn new(cfg: &crate::config::Apns, timeout: Duration) -> anyhow::Result<Apns> {
        let setting = "push.apns.key_file";
        let path = &cfg.key_file;
        let pem = std::fs::read_to_string(path).with_context(|| format!("{setting}: cannot read {path:?}"))?;
        let der = super::pkcs8_der(setting, &pem)?;
        let rng = ring::rand::SystemRandom::new();
        let key =
            ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{setting}: {path:?} is not a PKCS#8 P-256 key that includes its public key ({e}); the .p8 \
                     files Apple issues are, and `openssl ec -in KEY | openssl pkcs8 -topk8 -nocrypt -out KEY.p8` \
                     adds a missing public key"
                    )
                })?;
        let base = cfg.endpoint.trim_end_matches('/').to_owned();
        Ok(Apns {
            client: super::client("push.apns", timeout, base.starts_with("http://"))?,
            base,
            team_id: cfg.team_id.clone(),
            key_id: cfg.key_id.clone(),
            topic: cfg.topic.clone(),
            key,
            rng,
            token: Mutex::new(None),
        })
    }

    pub(super) async fn send(&self, token: &str, n: &Notification) -> Outcome {
        // Device tokens are hex; anything that could change the request's path is not one.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Outcome::InvalidToken(format!("{token:?} is not an APNs device token"));
        }
        let jwt = match self.provider_token() {
            Some(t) => t,
            None => {
                return Outcome::Retry {
                    reason: "auth",
                    detail: "signing the provider token failed".into(),
                    after: None,
                }
            }
        };
        let sent = self
            .client
            .post(format!("{}/3/device/{token}", self.base))
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-collapse-id", collapse_id(&n.collapse_key))
            .header("apns-expiration", (now_secs() + EXPIRATION_SECS).to_string())
            .json(&payload(n))
            .send()
            .await;
        let outcome = super::outcome_of(sent, classify).await;
        if outcome.reason() == "auth" {
            let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
            if cached.as_ref().is_some_and(|(t, _)| *t == jwt) {
                *cached = None;
            }
        }
        outcome
    }

    /// The cached provider token, or a new one (`None`: signing failed).
    fn provider_token(&self) -> Option<String> {
        let mut cached = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, made)) = cached.as_ref() {
            if made.elapsed() < TOKEN_TTL {
                return Some(t.clone());
            }
        }
        let header = json!({"alg": "ES256", "kid": self.key_id});
        let claims = json!({"iss": self.team_id, "iat": now_secs()});
        let t = jwt::es256(&self.key, &self.rng, &header, &claims).ok()?;
        *cached = Some((t.clone(), Instant::now()));
        Some(t)
    }
}

/// The collapse key cut to APNs' 64 bytes (at a character boundary).
fn collapse_id(key: &str) -> &str {
    let mut end = key.len().min(MAX_COLLAPSE_ID);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// The request body: the alert with its badge, sound and thread, and the notification's fields
/// for the app beside `aps`.
pub fn payload(n: &Notification) -> Value {
    let mut p = json!({
        "aps": {
            "alert": {"title": n.title, "body": n.body},
            "badge": n.badge,
            "sound": "default",
            "thread-id": n.conv_id,
            "mutable-content": 1,
        },
        "conv_id": n.conv_id,
        "seq": n.seq,
        "sender": n.sender,
        "count": n.count,
        "mention": n.mention,
    });
    if let Some(image) = &n.image {
        p["image"] = json!(image);
    }
    p
}

/// What an answer means (its body: `{"reason": ...}`):
/// - 2xx: `Sent`;
/// - 410, or `BadDeviceToken` / `DeviceTokenNotForTopic` / `Unregistered`: `InvalidToken`;
/// - 403 `ExpiredProviderToken` / `InvalidProviderToken`: `Retry(auth)` (the caller drops its
///   provider token);
/// - 429: `Retry(throttled)`, 5xx: `Retry(http_5xx)`;
/// - any other status: `Failed(http_4xx)`.
pub fn classify(status: u16, after: Option<Duration>, body: &[u8]) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Sent;
    }
    let detail = describe(status, body);
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let reason = parsed["reason"].as_str().unwrap_or("");
    if status == 410 || matches!(reason, "BadDeviceToken" | "DeviceTokenNotForTopic" | "Unregistered") {
        return Outcome::InvalidToken(detail);
    }
    if status == 403 && matches!(reason, "ExpiredProviderToken" | "InvalidProviderToken") {
        return Outcome::Retry { reason: "auth", detail, after: None };
    }
    by_status(status, after, detail)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{fixture, notification, push_config};
    use super::*;

    #[test]
    fn classifies_answers() {
        assert_eq!(classify(200, None, b""), Outcome::Sent);
        assert_eq!(
            classify(410, None, br#"{"reason":"Unregistered","timestamp":1700000000000}"#).reason(),
            "invalid_token"
        );
        assert_eq!(classify(410, None, b"").reason(), "invalid_token");
        assert_eq!(classify(400, None, br#"{"reason":"BadDeviceToken"}"#).reason(), "invalid_token");
        assert_eq!(classify(400, None, br#"{"reason":"DeviceTokenNotForTopic"}"#).reason(), "invalid_token");
        assert_eq!(classify(400, None, br#"{"reason":"BadCollapseId"}"#).reason(), "http_4xx");
        assert_eq!(classify(403, None, br#"{"reason":"ExpiredProviderToken"}"#).reason(), "auth");
        assert_eq!(classify(403, None, br#"{"reason":"InvalidProviderToken"}"#).reason(), "auth");
        assert_eq!(classify(403, None, br#"{"reason":"BadCertificate"}"#).reason(), "http_4xx");
        assert_eq!(classify(429, None, br#"{"reason":"TooManyRequests"}"#).reason(), "throttled");
        assert_eq!(classify(503, None, br#"{"reason":"ServiceUnavailable"}"#).reason(), "http_5xx");
        assert_eq!(classify(500, None, b"").reason(), "http_5xx");
        assert_eq!(classify(413, None, br#"{"reason":"PayloadTooLarge"}"#).reason(), "http_4xx");
    }

    #[test]
    fn payload_and_collapse_id() {
        let p = payload(&notification());
        assert_eq!(p["aps"]["alert"], json!({"title": "Alice", "body": "hello"}));
        assert_eq!(p["aps"]["badge"], 3);
        assert_eq!(p["aps"]["thread-id"], "d:alice:bob");
        assert_eq!(p["aps"]["mutable-content"], 1);
        assert_eq!((p["seq"].as_u64(), p["mention"].as_bool()), (Some(42), Some(true)));
        assert_eq!(p["image"], "https://cdn.example/a.png");
        assert_eq!(collapse_id("short"), "short");
        let long = "é".repeat(40);
        assert_eq!(collapse_id(&long).len(), 64);
        assert_eq!(collapse_id(&format!("a{long}")).len(), 63);
    }

    fn apns_config(key: &std::path::Path) -> crate::config::Push {
        push_config(&[
            ("CONFAB__PUSH__APNS__TEAM_ID", "TEAM123456"),
            ("CONFAB__PUSH__APNS__KEY_ID", "KEY1234567"),
            ("CONFAB__PUSH__APNS__KEY_FILE", key.to_str().expect("utf-8")),
            ("CONFAB__PUSH__APNS__TOPIC", "org.example.app"),
        ])
    }

    #[test]
    fn refuses_missing_or_incomplete_keys() {
        let e = crate::push::providers::Providers::from_config(&apns_config(std::path::Path::new("/nonexistent/k.p8")))
            .err()
            .expect("refused");
        assert!(e.to_string().contains("push.apns.key_file"), "{e}");
        let e = crate::push::providers::Providers::from_config(&apns_config(&fixture("apns-key-no-public.p8")))
            .err()
            .expect("refused");
        assert!(e.to_string().contains("push.apns.key_file") && e.to_string().contains("public key"), "{e}");
        let e = crate::push::providers::Providers::from_config(&apns_config(&fixture("fcm-key.pem")))
            .err()
            .expect("an RSA key is refused");
        assert!(e.to_string().contains("push.apns.key_file"), "{e}");
    }

    #[test]
    fn provider_token_is_reused_and_verifies() {
        let cfg = apns_config(&fixture("apns-key.p8"));
        let apns = Apns::new(&cfg.apns, Duration::from_secs(1)).expect("loads");
        let t = apns.provider_token().expect("signs");
        assert_eq!(apns.provider_token().as_deref(), Some(t.as_str()), "reused");
        let public = std::fs::read(fixture("apns-public.raw")).expect("fixture");
        let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &public);
        let (h, c) = jwt::decode_verified(&t, |m, s| pk.verify(m, s).is_ok()).expect("verifies");
        assert_eq!(h, json!({"alg": "ES256", "kid": "KEY1234567"}));
        assert_eq!(c["iss"], "TEAM123456");
        assert!(c["iat"].as_u64().expect("iat").abs_diff(now_secs()) < 5);
    }

    #[tokio::test]
    async fn refuses_tokens_that_are_not_path_safe() {
        let cfg = apns_config(&fixture("apns-key.p8"));
        let apns = Apns::new(&cfg.apns, Duration::from_secs(1)).expect("loads");
        for bad in ["", "../x", "a/b", "a b"] {
            assert_eq!(apns.send(bad, &notification()).await.reason(), "invalid_token", "{bad:?}");
        }
    }
}
