//! Access tokens: JWTs signed with HMAC-SHA256 (`alg: HS256`) using `auth.secret`.
//!
//! Claims: `sub` (user id), `dev` (device id), `iat`, `exp` (Unix seconds). Verification checks
//! the header's algorithm, the signature (constant-time), the ids' syntax and the expiry.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use confab_actors::error::{Error, ErrorCode};
use confab_actors::model::validate_id;

type HmacSha256 = Hmac<Sha256>;

/// The claims confab puts in and reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The device id; one user may be online on several devices at once.
    pub dev: String,
    pub iat: u64,
    pub exp: u64,
}

/// The device id used when a token names none.
pub const DEFAULT_DEVICE: &str = "default";

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length.
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Mints a token for `user` on `device`, valid for `ttl_secs`.
pub fn mint(secret: &str, user: &str, device: &str, ttl_secs: u64) -> Result<String, Error> {
    validate_id("user", user)?;
    validate_id("device", device)?;
    let iat = now_secs();
    // `confab token --ttl` takes any u64: a lifetime past the end of time means no expiry, not an
    // overflow (a panic in debug builds, an already expired token in release builds).
    let claims = Claims { sub: user.into(), dev: device.into(), iat, exp: iat.saturating_add(ttl_secs) };
    let payload = serde_json::to_vec(&claims).map_err(|e| Error::internal(e.to_string()))?;
    let signing_input = format!("{}.{}", B64.encode(HEADER), B64.encode(payload));
    let mut m = mac(secret.as_bytes());
    m.update(signing_input.as_bytes());
    let sig = m.finalize().into_bytes();
    Ok(format!("{signing_input}.{}", B64.encode(sig)))
}

fn unauthorized(why: &str) -> Error {
    Error::new(ErrorCode::Unauthorized, why)
}

/// Verifies a token and returns its claims.
pub fn verify(secret: &str, token: &str) -> Result<Claims, Error> {
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
    if claims.exp <= now_secs() {
        return Err(Error::new(ErrorCode::TokenExpired, "token has expired"));
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123";

    #[test]
    fn round_trip() {
        let t = mint(SECRET, "alice", "phone", 60).unwrap();
        let c = verify(SECRET, &t).unwrap();
        assert_eq!((c.sub.as_str(), c.dev.as_str()), ("alice", "phone"));
    }

    #[test]
    fn a_lifetime_past_the_end_of_time_never_expires() {
        let t = mint(SECRET, "alice", "phone", u64::MAX).unwrap();
        assert_eq!(verify(SECRET, &t).unwrap().exp, u64::MAX);
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
