//! The push providers: FCM HTTP v1 ([`fcm`]), APNs with token authentication ([`apns`]) and the
//! signed relay ([`relay`]), behind one [`Providers`] that sends a notification to a device
//! through the provider of its registration.
//!
//! Every answer and transport failure becomes an [`Outcome`]: the pusher removes the
//! registration on [`Outcome::InvalidToken`], tries again later on [`Outcome::Retry`] and drops
//! the notification on [`Outcome::Failed`]. Each provider has one HTTP client, with
//! `push.timeout_ms` as the limit of a whole call and redirects not followed (a redirect is
//! answered as a refusal). The authentication tokens the providers need (FCM's OAuth2 access
//! token, APNs' provider token) are signed here with `ring` and cached.

pub mod apns;
pub mod fcm;
pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;

use crate::push::{Notification, Outcome, Target};

/// The configured providers. Cheap to clone (the state is shared), `Send + Sync`.
#[derive(Clone)]
pub struct Providers {
    inner: Arc<Inner>,
}

struct Inner {
    fcm: Option<fcm::Fcm>,
    apns: Option<apns::Apns>,
    relay: Option<relay::Relay>,
}

impl Providers {
    /// Builds the configured providers (reads the FCM service-account JSON file and the APNs .p8
    /// key file; errors name the setting). A provider whose section is off (empty `project_id`,
    /// `team_id` or `url`) is left out.
    pub fn from_config(cfg: &crate::config::Push) -> anyhow::Result<Providers> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let fcm = if cfg.fcm.project_id.is_empty() { None } else { Some(fcm::Fcm::new(&cfg.fcm, timeout)?) };
        let apns = if cfg.apns.team_id.is_empty() { None } else { Some(apns::Apns::new(&cfg.apns, timeout)?) };
        let relay = if cfg.relay.url.is_empty() { None } else { Some(relay::Relay::new(&cfg.relay, timeout)?) };
        Ok(Providers { inner: Arc::new(Inner { fcm, apns, relay }) })
    }

    /// Whether tokens of `provider` can be sent: `fcm` when FCM is configured, `apns` when APNs
    /// is, any name of `push.relay.providers` when the relay is.
    pub fn accepts(&self, provider: &str) -> bool {
        match provider {
            "fcm" => self.inner.fcm.is_some(),
            "apns" => self.inner.apns.is_some(),
            other => self.inner.relay.as_ref().is_some_and(|r| r.handles(other)),
        }
    }

    /// The provider names accepted, for error messages: `fcm`, `apns`, then the relay's.
    pub fn names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.inner.fcm.is_some() {
            names.push("fcm".to_owned());
        }
        if self.inner.apns.is_some() {
            names.push("apns".to_owned());
        }
        if let Some(r) = &self.inner.relay {
            names.extend(r.providers().iter().cloned());
        }
        names
    }

    /// Sends one notification to one device. Never panics; every failure is an [`Outcome`]
    /// (a provider that is not configured: `Failed { reason: "unconfigured" }`).
    pub async fn send(&self, target: &Target, n: &Notification) -> Outcome {
        let inner = &self.inner;
        match target.provider.as_str() {
            "fcm" => match &inner.fcm {
                Some(p) => p.send(&target.token, n).await,
                None => unconfigured(&target.provider),
            },
            "apns" => match &inner.apns {
                Some(p) => p.send(&target.token, n).await,
                None => unconfigured(&target.provider),
            },
            other => match &inner.relay {
                Some(r) if r.handles(other) => r.send(target, n).await,
                _ => unconfigured(other),
            },
        }
    }
}

fn unconfigured(provider: &str) -> Outcome {
    Outcome::Failed { reason: "unconfigured", detail: format!("push provider {provider:?} is not configured") }
}

/// The HTTP client of one provider: the whole call limited to `timeout`, no redirects followed.
/// `h2c`: HTTP/2 without TLS, by prior knowledge (APNs behind an `http://` endpoint).
fn client(setting: &str, timeout: Duration, h2c: bool) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::none());
    if h2c {
        b = b.http2_prior_knowledge();
    }
    b.build().with_context(|| format!("{setting}: building the HTTP client"))
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The outcome of a call that got no answer: `timeout` when the limit passed, `connect`
/// otherwise (refused, reset, DNS, TLS, a broken body), both worth retrying.
/// The outcome of a provider call: its answer classified by `classify` (status, `Retry-After`,
/// body), or the transport failure.
async fn outcome_of(
    sent: Result<reqwest::Response, reqwest::Error>,
    classify: fn(u16, Option<Duration>, &[u8]) -> Outcome,
) -> Outcome {
    match sent {
        Ok(resp) => match read_answer(resp).await {
            Ok((status, after, body)) => classify(status, after, &body),
            Err(e) => transport(&e),
        },
        Err(e) => transport(&e),
    }
}

fn transport(e: &reqwest::Error) -> Outcome {
    let reason = if e.is_timeout() { "timeout" } else { "connect" };
    Outcome::Retry { reason, detail: error_chain(e), after: None }
}

/// An error and its causes, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let more = c.to_string();
        if !s.contains(&more) {
            s.push_str(": ");
            s.push_str(&more);
        }
        cur = c.source();
    }
    s
}

/// The most of an error answer's body kept (the rest is not read).
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Reads an answer: its status, `Retry-After` (delay in seconds; an HTTP date is ignored) and
/// the first [`MAX_ERROR_BODY`] bytes of its body.
async fn read_answer(mut resp: reqwest::Response) -> Result<(u16, Option<Duration>, Vec<u8>), reqwest::Error> {
    let status = resp.status().as_u16();
    let after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_ERROR_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY {
            break;
        }
    }
    Ok((status, after, body))
}

/// An answer for a failure's detail: the status and the start of the body.
fn describe(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let cut = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", &text[..cut])
    }
}

/// The outcomes every provider gives to a status its own rules leave: 2xx `Sent`, 429
/// `Retry(throttled)`, 5xx `Retry(http_5xx)` (both with the `Retry-After` delay), any other
/// status (another 4xx, or a redirect, which is not followed) `Failed(http_4xx)`.
fn by_status(status: u16, after: Option<Duration>, detail: String) -> Outcome {
    match status {
        200..=299 => Outcome::Sent,
        429 => Outcome::Retry { reason: "throttled", detail, after },
        500..=599 => Outcome::Retry { reason: "http_5xx", detail, after },
        _ => Outcome::Failed { reason: "http_4xx", detail },
    }
}

/// JSON Web Tokens (RFC 7519) in compact form, signed with `ring`.
pub mod jwt {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    /// `header.claims` base64url-encoded: what the signature covers.
    pub fn signing_input(header: &serde_json::Value, claims: &serde_json::Value) -> String {
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    /// The token: the signing input, then `.` and the base64url signature.
    pub fn assemble(signing_input: &str, signature: &[u8]) -> String {
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    /// RS256 (RSASSA-PKCS1-v1_5 with SHA-256).
    pub fn rs256(
        key: &ring::signature::RsaKeyPair,
        rng: &ring::rand::SystemRandom,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, ring::error::Unspecified> {
        let input = signing_input(header, claims);
        let mut sig = vec![0u8; key.public().modulus_len()];
        key.sign(&ring::signature::RSA_PKCS1_SHA256, rng, input.as_bytes(), &mut sig)?;
        Ok(assemble(&input, &sig))
    }

    /// ES256 (ECDSA P-256 with SHA-256), the signature as the fixed-size `r || s` JWS requires.
    /// The key must have been loaded for `ECDSA_P256_SHA256_FIXED_SIGNING`.
    pub fn es256(
        key: &ring::signature::EcdsaKeyPair,
        rng: &ring::rand::SystemRandom,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, ring::error::Unspecified> {
        let input = signing_input(header, claims);
        let sig = key.sign(rng, input.as_bytes())?;
        Ok(assemble(&input, sig.as_ref()))
    }

    /// Splits a token and checks its signature with `verify` (given the signing input and the
    /// signature); answers the decoded header and claims. For tests and fake providers.
    pub fn decode_verified(
        token: &str,
        verify: impl FnOnce(&[u8], &[u8]) -> bool,
    ) -> Result<(serde_json::Value, serde_json::Value), String> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err("not three dot-separated parts".into());
        };
        let b64 = |p: &str, what: &str| URL_SAFE_NO_PAD.decode(p).map_err(|e| format!("{what}: {e}"));
        let sig = b64(s, "signature")?;
        if !verify(&token.as_bytes()[..h.len() + 1 + c.len()], &sig) {
            return Err("bad signature".into());
        }
        let json = |p: &str, what: &str| -> Result<serde_json::Value, String> {
            serde_json::from_slice(&b64(p, what)?).map_err(|e| format!("{what}: {e}"))
        };
        Ok((json(h, "header")?, json(c, "claims")?))
    }
}

/// The DER inside a PEM `PRIVATE KEY` (PKCS#8) block. Other forms are refused with the command
/// that converts them.
fn pkcs8_der(setting: &str, pem: &str) -> anyhow::Result<Vec<u8>> {
    let begin = "-----BEGIN PRIVATE KEY-----";
    let end = "-----END PRIVATE KEY-----";
    let Some(start) = pem.find(begin) else {
        if pem.contains("-----BEGIN RSA PRIVATE KEY-----") || pem.contains("-----BEGIN EC PRIVATE KEY-----") {
            anyhow::bail!(
                "{setting}: the key is not PKCS#8 (\"BEGIN PRIVATE KEY\"); convert it with \
                 `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8`"
            );
        }
        if pem.contains("ENCRYPTED PRIVATE KEY") {
            anyhow::bail!("{setting}: the key is encrypted; give it unencrypted (`openssl pkcs8 -topk8 -nocrypt`)");
        }
        anyhow::bail!("{setting}: no \"-----BEGIN PRIVATE KEY-----\" block (a PEM PKCS#8 key)");
    };
    let body = &pem[start + begin.len()..];
    let Some(stop) = body.find(end) else {
        anyhow::bail!("{setting}: the key's PEM block has no \"{end}\" line");
    };
    let b64: String = body[..stop].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| anyhow::anyhow!("{setting}: the key's PEM block is not base64: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(super) fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/push").join(name)
    }

    pub(super) fn notification() -> Notification {
        Notification {
            user: "bob".into(),
            device: "phone".into(),
            title: "Alice".into(),
            body: "hello".into(),
            image: Some("https://cdn.example/a.png".into()),
            badge: 3,
            conv_id: "d:alice:bob".into(),
            seq: 42,
            sender: "alice".into(),
            count: 2,
            collapse_key: "d:alice:bob".into(),
            mention: true,
        }
    }

    /// The configuration with `pairs` over the defaults.
    pub(super) fn push_config(pairs: &[(&str, &str)]) -> crate::config::Push {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        crate::config::Config::load_with_env(None, env).expect("valid configuration").push
    }

    #[test]
    fn rs256_round_trip() {
        let pem = std::fs::read_to_string(fixture("fcm-key.pem")).expect("fixture");
        let key = ring::signature::RsaKeyPair::from_pkcs8(&pkcs8_der("k", &pem).expect("pem")).expect("pkcs8 rsa");
        let rng = ring::rand::SystemRandom::new();
        let token =
            jwt::rs256(&key, &rng, &json!({"alg": "RS256", "typ": "JWT"}), &json!({"iss": "me"})).expect("signs");
        let public = std::fs::read(fixture("fcm-public.der")).expect("fixture");
        let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, &public);
        let (h, c) = jwt::decode_verified(&token, |m, s| pk.verify(m, s).is_ok()).expect("verifies");
        assert_eq!(h["alg"], "RS256");
        assert_eq!(c["iss"], "me");
        let mut tampered = token.clone();
        tampered.insert(token.find('.').expect("dot") + 1, 'e');
        assert!(jwt::decode_verified(&tampered, |m, s| pk.verify(m, s).is_ok()).is_err());
    }

    #[test]
    fn es256_round_trip() {
        let pem = std::fs::read_to_string(fixture("apns-key.p8")).expect("fixture");
        let rng = ring::rand::SystemRandom::new();
        let key = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &pkcs8_der("k", &pem).expect("pem"),
            &rng,
        )
        .expect("pkcs8 p-256");
        let token = jwt::es256(&key, &rng, &json!({"alg": "ES256", "kid": "K"}), &json!({"iss": "T"})).expect("signs");
        let public = std::fs::read(fixture("apns-public.raw")).expect("fixture");
        assert_eq!(public.len(), 65);
        let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &public);
        let (h, c) = jwt::decode_verified(&token, |m, s| {
            assert_eq!(s.len(), 64, "r || s");
            pk.verify(m, s).is_ok()
        })
        .expect("verifies");
        assert_eq!((h["kid"].as_str(), c["iss"].as_str()), (Some("K"), Some("T")));
    }

    #[test]
    fn pem_forms() {
        assert!(pkcs8_der("push.x", "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n")
            .unwrap_err()
            .to_string()
            .contains("openssl pkcs8 -topk8"));
        assert!(pkcs8_der("push.x", "nothing").unwrap_err().to_string().starts_with("push.x: "));
        assert!(pkcs8_der("push.x", "-----BEGIN PRIVATE KEY-----\n@@\n-----END PRIVATE KEY-----").is_err());
        assert_eq!(
            pkcs8_der("push.x", "x\n-----BEGIN PRIVATE KEY-----\nAAEC\nAw==\n-----END PRIVATE KEY-----\n").expect("ok"),
            vec![0, 1, 2, 3]
        );
    }

    #[test]
    fn shared_status_rules() {
        let after = Some(Duration::from_secs(7));
        assert_eq!(by_status(202, None, String::new()), Outcome::Sent);
        assert_eq!(
            by_status(429, after, "x".into()),
            Outcome::Retry { reason: "throttled", detail: "x".into(), after }
        );
        assert_eq!(by_status(503, None, String::new()).reason(), "http_5xx");
        assert_eq!(by_status(302, None, String::new()).reason(), "http_4xx");
        assert!(matches!(by_status(404, None, String::new()), Outcome::Failed { reason: "http_4xx", .. }));
        assert_eq!(describe(500, b""), "HTTP 500");
        assert_eq!(describe(500, "é".repeat(400).as_bytes()).chars().count(), "HTTP 500: ".len() + 300);
    }

    #[tokio::test]
    async fn names_and_unconfigured() {
        let p = Providers::from_config(&push_config(&[])).expect("nothing to read");
        assert!(p.names().is_empty());
        assert!(!p.accepts("fcm") && !p.accepts("apns") && !p.accepts("huawei"));
        let t = Target { provider: "fcm".into(), token: "t".into() };
        assert_eq!(p.send(&t, &notification()).await.reason(), "unconfigured");

        let key = fixture("apns-key.p8");
        let p = Providers::from_config(&push_config(&[
            ("CONFAB__PUSH__APNS__TEAM_ID", "T"),
            ("CONFAB__PUSH__APNS__KEY_ID", "K"),
            ("CONFAB__PUSH__APNS__KEY_FILE", key.to_str().expect("utf-8")),
            ("CONFAB__PUSH__APNS__TOPIC", "org.example.app"),
            ("CONFAB__PUSH__RELAY__URL", "http://127.0.0.1:9/relay"),
            ("CONFAB__PUSH__RELAY__KEY_ID", "relay"),
            ("CONFAB__PUSH__RELAY__SECRET", "0123456789abcdef"),
            ("CONFAB__PUSH__RELAY__PROVIDERS", "huawei,xiaomi"),
        ]))
        .expect("builds");
        assert_eq!(p.names(), ["apns", "huawei", "xiaomi"]);
        assert!(p.accepts("apns") && p.accepts("xiaomi") && !p.accepts("fcm") && !p.accepts("oppo"));
        let t = Target { provider: "oppo".into(), token: "t".into() };
        assert_eq!(p.send(&t, &notification()).await.reason(), "unconfigured");
    }
}
