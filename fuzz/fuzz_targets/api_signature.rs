//! HTTP API request signing (`http::api::auth::Verifier::verify`).
//!
//! Invariants: arbitrary headers, method, path and body never make `verify` panic, and it only
//! accepts a request whose signature is the HMAC of that request under the key's secret; a request
//! signed correctly with the key verifies (or, without the scope, fails on the scope alone), its
//! replay is refused, and flipping any byte of its signature, changing its body or signing it
//! with another secret makes it fail the signature check.
#![no_main]

use arbitrary::Arbitrary;
use confab::http::api::auth::{sign, Headers, Scope, Verifier, WINDOW_SECS};
use confab::config::{ApiKey, API_SCOPES};
use confab_actors::error::ErrorCode;
use libfuzzer_sys::fuzz_target;

const KEY_ID: &str = "fuzz-key";
const SECRET: &str = "fuzz-secret-0123456789abcdef";
/// Unix seconds around now: `verify` is called with the server's clock.
const EPOCH: u64 = 1_700_000_000;

const SCOPES: [Scope; 6] =
    [Scope::Users, Scope::Messages, Scope::Conversations, Scope::Groups, Scope::Webhooks, Scope::Any];

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    key: Option<&'a str>,
    timestamp: Option<&'a str>,
    nonce: Option<&'a str>,
    signature: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    body: &'a [u8],
    /// Seconds after `EPOCH` for the server's clock.
    now: u32,
    /// Seconds the signed request's timestamp is off the server's clock (kept within the window).
    skew: i8,
    /// Which of `API_SCOPES` the key holds, one bit each.
    scope_bits: u8,
    scope: u8,
    /// Where to change the signature, and the byte to put there.
    flip_at: usize,
    flip_to: u8,
}

fuzz_target!(|input: Input<'_>| {
    let scopes: Vec<String> = API_SCOPES
        .iter()
        .enumerate()
        .filter(|(i, _)| input.scope_bits >> i & 1 == 1)
        .map(|(_, s)| s.to_string())
        .collect();
    let key = ApiKey { id: KEY_ID.into(), secret: SECRET.into(), scopes: scopes.clone() };
    let scope = SCOPES[usize::from(input.scope) % SCOPES.len()];
    let now = EPOCH + u64::from(input.now);

    // 1. Anything goes in; only a correct signature gets through.
    let verifier = Verifier::new(std::slice::from_ref(&key), 100);
    let headers =
        Headers { key: input.key, timestamp: input.timestamp, nonce: input.nonce, signature: input.signature };
    match verifier.verify(&headers, input.method, input.path, input.body, scope, now) {
        Ok(()) => {
            let ts = input.timestamp.expect("accepted without a timestamp").trim();
            let nonce = input.nonce.expect("accepted without a nonce");
            assert_eq!(input.key, Some(KEY_ID));
            assert_eq!(input.signature, Some(sign(SECRET, input.method, input.path, ts, nonce, input.body).as_str()));
        }
        Err(e) => assert!(
            matches!(
                e.code,
                ErrorCode::Unauthorized
                    | ErrorCode::TimestampOutOfRange
                    | ErrorCode::SignatureInvalid
                    | ErrorCode::NonceReplayed
                    | ErrorCode::ScopeMissing
                    | ErrorCode::TooManyRequests
            ),
            "{e:?}"
        ),
    }

    // 2. A request signed as a client would: the fuzzed method, path and body, a timestamp within
    // the window and a nonce of visible ASCII made from the fuzzed one.
    let ts = now.saturating_add_signed(i64::from(input.skew).clamp(-(WINDOW_SECS as i64), WINDOW_SECS as i64));
    let ts = ts.to_string();
    let mut nonce: String = input.nonce.unwrap_or("").chars().filter(|c| c.is_ascii_graphic()).take(128).collect();
    if nonce.is_empty() {
        nonce.push('n');
    }
    let signature = sign(SECRET, input.method, input.path, &ts, &nonce, input.body);
    let granted = scope == Scope::Any || scopes.iter().any(|s| s == "admin" || s == scope.as_str());
    let verify = |verifier: &Verifier, signature: &str, body: &[u8]| {
        let headers =
            Headers { key: Some(KEY_ID), timestamp: Some(&ts), nonce: Some(&nonce), signature: Some(signature) };
        verifier.verify(&headers, input.method, input.path, body, scope, now)
    };

    let verifier = Verifier::new(std::slice::from_ref(&key), 100);
    match verify(&verifier, &signature, input.body) {
        Ok(()) => assert!(granted, "verified without the scope {scope:?}"),
        Err(e) => assert!(!granted && e.code == ErrorCode::ScopeMissing, "a correctly signed request: {e:?}"),
    }
    // The nonce was taken (by a correctly signed request, whatever its scope).
    assert_eq!(verify(&verifier, &signature, input.body).map_err(|e| e.code), Err(ErrorCode::NonceReplayed));

    // 3. Tampering, each on a fresh node (no nonce taken yet).
    let fresh = || Verifier::new(std::slice::from_ref(&key), 100);
    let at = input.flip_at % signature.len();
    let mut flipped = signature.clone().into_bytes();
    flipped[at] =
        if input.flip_to.is_ascii() && input.flip_to != flipped[at] { input.flip_to } else { flipped[at] ^ 1 };
    let flipped = String::from_utf8(flipped).expect("still ASCII");
    assert_eq!(verify(&fresh(), &flipped, input.body).map_err(|e| e.code), Err(ErrorCode::SignatureInvalid));

    let mut other_body = input.body.to_vec();
    other_body.push(input.flip_to);
    assert_eq!(verify(&fresh(), &signature, &other_body).map_err(|e| e.code), Err(ErrorCode::SignatureInvalid));

    let other_secret = sign("another-secret-0123456789", input.method, input.path, &ts, &nonce, input.body);
    assert_eq!(verify(&fresh(), &other_secret, input.body).map_err(|e| e.code), Err(ErrorCode::SignatureInvalid));
});
