//! Access tokens: JWTs signed with HMAC-SHA256 (`alg: HS256`) using `auth.secret`.
//!
//! Claims: `sub` (user id), `dev` (device id), `iat`, `exp` (Unix seconds), and optionally `nbf`
//! (Unix seconds) and `iat_ms` (the issue time in milliseconds, which confab writes so that a
//! revocation refuses exactly the tokens issued before it). Verification checks the header's
//! algorithm, the signature (constant-time), the ids' syntax, the expiry, that the token was not
//! issued (nor made valid) in the future beyond `auth.max_clock_skew_secs`, and that its lifetime
//! (`exp - iat`) is at most `auth.max_token_ttl_secs`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use confab_actors::error::{Error, ErrorCode};
use confab_actors::model::validate_id;

type HmacSha256 = Hmac<Sha256>;

/// What a valid token says (see [`TokenVerifier`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub user: String,
    pub device: String,
    /// When it was issued, unix ms (a revocation refuses tokens issued before it).
    pub issued_ms: u64,
    /// When it expires, unix ms.
    pub expires_ms: u64,
}

/// Verifies an access token (signature, expiry, lifetime): implemented by the transport, which
/// holds the secret.
pub trait TokenVerifier: Send + Sync {
    fn verify(&self, token: &str) -> Result<TokenInfo, Error>;
}

/// The claims confab puts in and reads from a token.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The device id; one user may be online on several devices at once.
    pub dev: String,
    pub iat: u64,
    pub exp: u64,
    /// Not valid before (Unix seconds).
    pub nbf: Option<u64>,
    /// The issue time in milliseconds (`iat` is its second). Tokens without it count as issued
    /// at the start of their `iat` second.
    pub iat_ms: Option<u64>,
}

impl Claims {
    /// When the token was issued, unix ms.
    pub fn issued_ms(&self) -> u64 {
        self.iat_ms.unwrap_or(self.iat.saturating_mul(1000))
    }
}

/// The device id used when a token names none.
pub const DEFAULT_DEVICE: &str = "default";

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Mints a token for `user` on `device`, valid for `ttl_secs` from now (no lifetime cap: the
/// node refuses what exceeds `auth.max_token_ttl_secs` when it verifies). See [`Tokens::mint`].
pub fn mint(secret: &str, user: &str, device: &str, ttl_secs: u64) -> Result<String, Error> {
    sign(secret, user, device, ttl_secs, now_ms()).map(|(t, _)| t)
}

fn sign(secret: &str, user: &str, device: &str, ttl_secs: u64, issued_ms: u64) -> Result<(String, Claims), Error> {
    validate_id("user", user)?;
    validate_id("device", device)?;
    let iat = issued_ms / 1000;
    // `confab token --ttl` takes any u64: a lifetime past the end of time means no expiry, not an
    // overflow (a panic in debug builds, an already expired token in release builds).
    let claims = Claims {
        sub: user.into(),
        dev: device.into(),
        iat,
        exp: iat.saturating_add(ttl_secs),
        nbf: None,
        iat_ms: Some(issued_ms),
    };
    let payload = serde_json::to_vec(&claims).map_err(|e| Error::internal(e.to_string()))?;
    let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
    let mut m = mac(secret.as_bytes());
    m.update(signing_input.as_bytes());
    let sig = m.finalize().into_bytes();
    Ok((format!("{signing_input}.{}", B64.encode(sig)), claims))
}

fn unauthorized(why: &str) -> Error {
    Error::new(ErrorCode::Unauthorized, why)
}

/// The node's token rules: its secret and the bounds of `[auth]`.
#[derive(Clone)]
pub struct Tokens {
    secret: String,
    /// Longest lifetime (`exp - iat`) accepted or minted, seconds.
    pub max_ttl_secs: u64,
    /// How far in the future `iat` and `nbf` may be (clocks differ), seconds.
    pub max_skew_secs: u64,
}

impl Tokens {
    /// The token rules of `[auth]`.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Tokens::new(&cfg.auth.secret, cfg.auth.max_token_ttl_secs, cfg.auth.max_clock_skew_secs)
    }

    pub fn new(secret: &str, max_ttl_secs: u64, max_skew_secs: u64) -> Self {
        Tokens { secret: secret.to_owned(), max_ttl_secs, max_skew_secs }
    }

    /// Mints a token valid for `ttl_secs` (at most `max_ttl_secs`), issued now, or at
    /// `not_before_ms` when that is later: a token minted right after a revocation must not
    /// count as issued before it (the user record's `tokens_valid_after_ms`).
    pub fn mint(&self, user: &str, device: &str, ttl_secs: u64, not_before_ms: u64) -> Result<(String, Claims), Error> {
        if ttl_secs == 0 || ttl_secs > self.max_ttl_secs {
            return Err(Error::invalid(format!(
                "a token lives 1 to {} seconds (auth.max_token_ttl_secs)",
                self.max_ttl_secs
            )));
        }
        sign(&self.secret, user, device, ttl_secs, now_ms().max(not_before_ms))
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, Error> {
        let claims = verify_signature(&self.secret, token)?;
        let now = now_ms() / 1000;
        let skew = self.max_skew_secs;
        if claims.iat_ms.is_some_and(|ms| ms / 1000 != claims.iat) {
            return Err(unauthorized("token iat_ms does not match its iat"));
        }
        if claims.iat > now.saturating_add(skew) {
            return Err(unauthorized("token is issued in the future (iat)"));
        }
        if claims.nbf.is_some_and(|nbf| nbf > now.saturating_add(skew)) {
            return Err(unauthorized("token is not valid yet (nbf)"));
        }
        if claims.exp <= now {
            return Err(Error::new(ErrorCode::TokenExpired, "token has expired"));
        }
        if claims.exp < claims.iat || claims.exp - claims.iat > self.max_ttl_secs {
            return Err(unauthorized("token lifetime exceeds auth.max_token_ttl_secs"));
        }
        Ok(claims)
    }
}

impl TokenVerifier for Tokens {
    fn verify(&self, token: &str) -> Result<TokenInfo, Error> {
        let c = Tokens::verify(self, token)?;
        Ok(TokenInfo { issued_ms: c.issued_ms(), expires_ms: c.exp.saturating_mul(1000), user: c.sub, device: c.dev })
    }
}

/// Checks a token's form and signature, and its ids; nothing about time.
fn verify_signature(secret: &str, token: &str) -> Result<Claims, Error> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(unauthorized("token is not a JWT"));
    };
    let header: Header = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| unauthorized("token header is malformed"))?;
    if header.alg != "HS256" {
        return Err(unauthorized("token algorithm must be HS256"));
    }
    let sig = B64.decode(s).map_err(|_| unauthorized("token signature is malformed"))?;
    let mut m = mac(secret.as_bytes());
    m.update(h.as_bytes());
    m.update(b".");
    m.update(p.as_bytes());
    m.verify_slice(&sig).map_err(|_| unauthorized("token signature is invalid"))?;
    let claims: Claims = B64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| unauthorized("token claims are malformed"))?;
    validate_id("user", &claims.sub).map_err(|_| unauthorized("token user id is invalid"))?;
    validate_id("device", &claims.dev).map_err(|_| unauthorized("token device id is invalid"))?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123";

    fn tokens() -> Tokens {
        Tokens::new(SECRET, 86400, 30)
    }

    fn verify(secret: &str, t: &str) -> Result<Claims, Error> {
        Tokens::new(secret, 86400, 30).verify(t)
    }

    /// A token with these claims, signed with `SECRET`.
    fn forge(claims: serde_json::Value) -> String {
        let input = format!("{}.{}", B64.encode(HEADER), B64.encode(claims.to_string()));
        let mut m = mac(SECRET.as_bytes());
        m.update(input.as_bytes());
        format!("{input}.{}", B64.encode(m.finalize().into_bytes()))
    }

    #[test]
    fn round_trip() {
        let t = mint(SECRET, "alice", "phone", 60).unwrap();
        let c = verify(SECRET, &t).unwrap();
        assert_eq!((c.sub.as_str(), c.dev.as_str()), ("alice", "phone"));
        assert_eq!(c.iat_ms.map(|ms| ms / 1000), Some(c.iat));
        let later = now_ms() + 5_000;
        let (_, c) = tokens().mint("alice", "phone", 60, later).unwrap();
        assert_eq!(c.issued_ms(), later, "minted no earlier than asked");
        assert!(tokens().mint("alice", "phone", 86401, 0).is_err(), "lifetime capped");
    }

    #[test]
    fn time_claims_are_bounded() {
        let now = now_ms() / 1000;
        let claims = |iat: u64, exp: u64| serde_json::json!({"sub": "a", "dev": "d", "iat": iat, "exp": exp});
        assert!(tokens().verify(&forge(claims(now, now + 60))).is_ok());
        assert!(tokens().verify(&forge(claims(now + 20, now + 60))).is_ok(), "within the skew");
        let future = tokens().verify(&forge(claims(now + 3600, now + 7200))).unwrap_err();
        assert_eq!(future.code, ErrorCode::Unauthorized);
        assert!(future.message.contains("future"), "{}", future.message);
        let long = tokens().verify(&forge(claims(now, now + 86401))).unwrap_err();
        assert!(long.message.contains("lifetime"), "{}", long.message);
        let nbf = serde_json::json!({"sub": "a", "dev": "d", "iat": now, "exp": now + 60, "nbf": now + 600});
        assert!(tokens().verify(&forge(nbf)).unwrap_err().message.contains("nbf"));
        let odd =
            serde_json::json!({"sub": "a", "dev": "d", "iat": now, "exp": now + 60, "iat_ms": (now + 100) * 1000});
        assert!(tokens().verify(&forge(odd)).is_err(), "iat_ms must agree with iat");
    }

    #[test]
    fn a_lifetime_past_the_end_of_time_saturates() {
        let t = mint(SECRET, "alice", "phone", u64::MAX).unwrap();
        assert_eq!(verify_signature(SECRET, &t).unwrap().exp, u64::MAX);
        // The node still refuses it: its lifetime exceeds auth.max_token_ttl_secs.
        assert!(verify(SECRET, &t).unwrap_err().message.contains("lifetime"));
    }

    #[test]
    fn rejects_bad_tokens() {
        let t = mint(SECRET, "alice", "phone", 60).unwrap();
        assert_eq!(verify("another-secret-1234", &t).unwrap_err().code, ErrorCode::Unauthorized);
        assert_eq!(verify(SECRET, "a.b").unwrap_err().code, ErrorCode::Unauthorized);
        let mut tampered = t.clone();
        tampered.insert(t.find('.').unwrap() + 3, 'x');
        assert_eq!(verify(SECRET, &tampered).unwrap_err().code, ErrorCode::Unauthorized);
        let expired = mint(SECRET, "alice", "phone", 0).unwrap();
        assert_eq!(verify(SECRET, &expired).unwrap_err().code, ErrorCode::TokenExpired);
        // alg "none" is refused.
        let none = format!("{}.{}.", B64.encode(r#"{"alg":"none"}"#), t.split('.').nth(1).unwrap());
        assert_eq!(verify(SECRET, &none).unwrap_err().code, ErrorCode::Unauthorized);
    }
}
