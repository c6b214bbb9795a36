//! Request signing for the HTTP integration API: key lookup, timestamp window, HMAC-SHA256
//! signature (constant-time), replay protection by nonce, and scopes.
//!
//! The signed string is `METHOD "\n" path-with-query "\n" timestamp "\n" nonce "\n"
//! hex(SHA-256(body))`; `X-Confab-Signature` is the lowercase hex HMAC-SHA256 of it under the key's
//! secret. See docs/http-api.md.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use confab_actors::error::{Error, ErrorCode};

use crate::config::ApiKey;

type HmacSha256 = Hmac<Sha256>;

/// How far a request's timestamp may be from the server's clock, either way, in seconds.
pub const WINDOW_SECS: u64 = 60;

/// What an endpoint needs. `Admin` (the scope `admin`) grants every other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Users,
    Messages,
    Conversations,
    Groups,
    /// The webhook delivery log and replays.
    Webhooks,
    /// Statistics.
    Stats,
    /// Any valid key (unknown resources under `/api/v1`).
    Any,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Users => "users",
            Scope::Messages => "messages",
            Scope::Conversations => "conversations",
            Scope::Groups => "groups",
            Scope::Webhooks => "webhooks",
            Scope::Stats => "stats",
            Scope::Any => "any",
        }
    }
}

/// The signing headers of one request.
pub struct Headers<'a> {
    pub key: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// The configured keys and the node's nonce cache.
pub struct Verifier {
    keys: HashMap<String, ApiKey>,
    nonces: NonceCache,
}

impl Verifier {
    pub fn new(keys: &[ApiKey], nonce_capacity: usize) -> Self {
        Self { keys: keys.iter().map(|k| (k.id.clone(), k.clone())).collect(), nonces: NonceCache::new(nonce_capacity) }
    }

    /// Whether `key_id` names a configured key (checked before the body is read).
    pub fn key(&self, h: &Headers<'_>) -> Result<&ApiKey, Error> {
        if self.keys.is_empty() {
            return Err(Error::new(ErrorCode::Unauthorized, "the HTTP API has no keys configured (api.keys)"));
        }
        let id = h.key.ok_or_else(|| Error::new(ErrorCode::Unauthorized, "X-Confab-Key is required"))?;
        self.keys.get(id).ok_or_else(|| Error::new(ErrorCode::Unauthorized, "unknown API key"))
    }

    /// Checks a whole request; `now` is unix seconds.
    pub fn verify(
        &self,
        h: &Headers<'_>,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        scope: Scope,
        now: u64,
    ) -> Result<(), Error> {
        let key = self.key(h)?;
        let ts_err = || {
            Error::new(
                ErrorCode::TimestampOutOfRange,
                format!("X-Confab-Timestamp must be unix seconds within {WINDOW_SECS} s of the server's clock"),
            )
        };
        let ts: u64 = h.timestamp.and_then(|t| t.trim().parse().ok()).ok_or_else(ts_err)?;
        if ts.abs_diff(now) > WINDOW_SECS {
            return Err(ts_err());
        }
        let nonce = h.nonce.unwrap_or("");
        if nonce.is_empty() || nonce.len() > 128 || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::new(
                ErrorCode::Unauthorized,
                "X-Confab-Nonce must be 1 to 128 visible ASCII characters",
            ));
        }
        let sig_err = || Error::new(ErrorCode::SignatureInvalid, "X-Confab-Signature does not match the request");
        let sig = h.signature.and_then(from_hex).ok_or_else(sig_err)?;
        let mut mac = mac(key.secret.as_bytes());
        mac.update(string_to_sign(method, path_and_query, h.timestamp.unwrap_or("").trim(), nonce, body).as_bytes());
        mac.verify_slice(&sig).map_err(|_| sig_err())?;
        // Only a correctly signed request may take a nonce, so nobody else can burn one.
        self.nonces.insert(&key.id, nonce, ts + WINDOW_SECS, now)?;
        let granted = scope == Scope::Any || key.scopes.iter().any(|s| s == "admin" || s == scope.as_str());
        if !granted {
            return Err(Error::new(ErrorCode::ScopeMissing, format!("this key lacks the scope {:?}", scope.as_str())));
        }
        Ok(())
    }
}

fn mac(secret: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// The string a request's signature covers.
pub fn string_to_sign(method: &str, path_and_query: &str, timestamp: &str, nonce: &str, body: &[u8]) -> String {
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{}", hex(&Sha256::digest(body)))
}

/// The signature of a request (what a client computes; used by tests and examples).
pub fn sign(secret: &str, method: &str, path_and_query: &str, timestamp: &str, nonce: &str, body: &[u8]) -> String {
    let mut m = mac(secret.as_bytes());
    m.update(string_to_sign(method, path_and_query, timestamp, nonce, body).as_bytes());
    hex(&m.finalize().into_bytes())
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// Lowercase hex only (the signature's documented form).
fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// The `(key id, nonce)` pairs seen on this node, each kept until its request's timestamp leaves
/// the window (after which the timestamp check refuses a replay anyway). Bounded: when full of
/// unexpired entries, new requests are refused (`too_many_requests`) rather than forgetting a
/// nonce early. A cluster needs this shared between nodes (the cluster work will do that).
pub struct NonceCache {
    capacity: usize,
    seen: Mutex<HashMap<(String, String), u64>>,
}

impl NonceCache {
    pub fn new(capacity: usize) -> Self {
        Self { capacity, seen: Mutex::new(HashMap::new()) }
    }

    /// Records the pair until `expires` (unix seconds), or refuses a replay.
    pub fn insert(&self, key: &str, nonce: &str, expires: u64, now: u64) -> Result<(), Error> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let k = (key.to_string(), nonce.to_string());
        if seen.get(&k).is_some_and(|&exp| exp >= now) {
            return Err(Error::new(
                ErrorCode::NonceReplayed,
                "this nonce was already used; sign each request with a new one",
            ));
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, exp| *exp >= now);
            if seen.len() >= self.capacity {
                return Err(Error::new(
                    ErrorCode::TooManyRequests,
                    "too many API requests within the replay window; retry shortly",
                ));
            }
        }
        seen.insert(k, expires);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scopes: &[&str]) -> ApiKey {
        ApiKey {
            id: "k".into(),
            secret: "0123456789abcdef0123".into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn headers<'a>(ts: &'a str, nonce: &'a str, sig: &'a str) -> Headers<'a> {
        Headers { key: Some("k"), timestamp: Some(ts), nonce: Some(nonce), signature: Some(sig) }
    }

    #[test]
    fn signs_and_verifies() {
        let v = Verifier::new(&[key(&["messages"])], 100);
        let sig = sign("0123456789abcdef0123", "POST", "/api/v1/messages?x=1", "1000", "n1", b"{}");
        assert_eq!(sig.len(), 64);
        v.verify(&headers("1000", "n1", &sig), "POST", "/api/v1/messages?x=1", b"{}", Scope::Messages, 1030)
            .expect("valid");
        let e = v
            .verify(&headers("1000", "n1", &sig), "POST", "/api/v1/messages?x=1", b"{}", Scope::Messages, 1030)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NonceReplayed);
        let sig2 = sign("0123456789abcdef0123", "POST", "/api/v1/messages?x=1", "1000", "n2", b"{}");
        let e = v
            .verify(&headers("1000", "n2", &sig2), "POST", "/api/v1/messages?x=2", b"{}", Scope::Messages, 1030)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::SignatureInvalid);
        let e = v
            .verify(
                &headers("1000", "n2", &sig2.to_uppercase()),
                "POST",
                "/api/v1/messages?x=1",
                b"{}",
                Scope::Messages,
                1030,
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::SignatureInvalid);
        let e = v
            .verify(&headers("1000", "n2", &sig2), "POST", "/api/v1/messages?x=1", b"{}", Scope::Messages, 1061)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::TimestampOutOfRange);
        let e = v
            .verify(&headers("1000", "n2", &sig2), "POST", "/api/v1/messages?x=1", b"{}", Scope::Groups, 1000)
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::ScopeMissing);
        assert_eq!(Verifier::new(&[], 100).key(&headers("1", "n", "")).unwrap_err().code, ErrorCode::Unauthorized);
    }

    #[test]
    fn nonce_cache_is_bounded_and_expires() {
        let c = NonceCache::new(2);
        c.insert("k", "a", 100, 50).expect("new");
        c.insert("k", "b", 100, 50).expect("new");
        assert_eq!(c.insert("k", "c", 100, 50).unwrap_err().code, ErrorCode::TooManyRequests);
        // Once expired, entries make room and the pair may be used again (the timestamp check
        // refuses an old request by then).
        c.insert("k", "c", 200, 101).expect("room after expiry");
        c.insert("k", "a", 200, 101).expect("expired pair");
        assert_eq!(c.insert("k", "a", 200, 150).unwrap_err().code, ErrorCode::NonceReplayed);
        assert_eq!(from_hex("0aff"), Some(vec![10, 255]));
        assert_eq!(from_hex("0AFF"), None);
    }
}
