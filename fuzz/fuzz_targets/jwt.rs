//! Access tokens (`auth::mint`, `auth::Tokens::verify`).
//!
//! Invariants: verifying any string never panics and fails only as `unauthorized` or
//! `token_expired`, and what it accepts carries valid ids; minting succeeds exactly for valid user
//! and device ids, and a minted token verifies to its claims under its secret, and under no other
//! secret, nor with any byte of it changed.
#![no_main]

use arbitrary::Arbitrary;
use confab::auth::{mint, Claims, Tokens};
use confab_actors::error::Error;
use confab_actors::error::ErrorCode;
use confab_actors::model::validate_id;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    secret: &'a str,
    token: &'a str,
    user: &'a str,
    device: &'a str,
    ttl: u64,
    flip_at: usize,
    flip_to: u8,
}

/// Verifies with no lifetime cap (`mint` takes any lifetime) and the default clock skew.
fn verify(secret: &str, token: &str) -> Result<Claims, Error> {
    Tokens::new(secret, u64::MAX, 30).verify(token)
}

/// A token minted with a shorter lifetime may expire while the input runs.
const MIN_LIVE_TTL: u64 = 60;

fuzz_target!(|input: Input<'_>| {
    match verify(input.secret, input.token) {
        Ok(claims) => {
            assert!(validate_id("user", &claims.sub).is_ok() && validate_id("device", &claims.dev).is_ok());
        }
        Err(e) => assert!(matches!(e.code, ErrorCode::Unauthorized | ErrorCode::TokenExpired), "{e:?}"),
    }

    let ids_valid = validate_id("user", input.user).is_ok() && validate_id("device", input.device).is_ok();
    let token = match mint(input.secret, input.user, input.device, input.ttl) {
        Ok(token) => token,
        Err(e) => {
            assert!(!ids_valid, "valid ids refused: {e:?}");
            return;
        }
    };
    assert!(ids_valid, "minted for invalid ids");
    match verify(input.secret, &token) {
        Ok(claims) => {
            assert_eq!((claims.sub.as_str(), claims.dev.as_str()), (input.user, input.device));
            assert_eq!(claims.exp, claims.iat.saturating_add(input.ttl));
        }
        Err(e) if input.ttl < MIN_LIVE_TTL && e.code == ErrorCode::TokenExpired => return,
        Err(e) => panic!("a minted token does not verify: {e:?}"),
    }

    let other = format!("{}x", input.secret);
    assert_eq!(verify(&other, &token).map_err(|e| e.code).err(), Some(ErrorCode::Unauthorized));

    let mut changed = token.clone().into_bytes();
    let at = input.flip_at % changed.len();
    changed[at] =
        if input.flip_to.is_ascii() && input.flip_to != changed[at] { input.flip_to } else { changed[at] ^ 1 };
    let changed = String::from_utf8(changed).expect("still ASCII");
    assert_eq!(verify(input.secret, &changed).map_err(|e| e.code).err(), Some(ErrorCode::Unauthorized), "{changed}");
});
