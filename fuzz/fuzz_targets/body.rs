//! A message body: `serde_json::from_slice::<Body>` then `validate_client`.
//!
//! Invariants: nothing panics; every body's summary is at most `QUOTE_CHARS` characters; a body
//! that validates is one clients may send (not `system`/`recalled`), reads the same through a
//! JSON value (the way `send` requests read it), survives a serialize/deserialize round trip
//! unchanged and still validates afterwards, and validates under any larger text limit.
#![no_main]

use confab_actors::model::{Body, BODY_TYPES, QUOTE_CHARS};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize as _;

/// `chat.max_text_chars` by default, and a small limit that long texts cross.
const LIMITS: [usize; 2] = [5000, 16];

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Body>(data) else { return };
    assert!(BODY_TYPES.contains(&body.type_name()));
    assert!(body.summary().chars().count() <= QUOTE_CHARS, "summary of {body:?}");
    for max in LIMITS {
        if body.validate_client(max).is_err() {
            continue;
        }
        assert!(!matches!(body, Body::System { .. } | Body::Recalled { .. }), "server-only body validated");
        assert!(body.validate_client(usize::MAX).is_ok(), "valid under {max} but not under a larger limit");

        let value: serde_json::Value = serde_json::from_slice(data).expect("a parsed body is JSON");
        let via_value = Body::deserialize(&value).expect("a parsed body parses from its JSON value");
        assert_eq!(via_value, body, "parsed directly and through a JSON value differ");

        let encoded = serde_json::to_vec(&body).expect("a body encodes");
        let back: Body = serde_json::from_slice(&encoded).expect("an encoded body parses");
        assert_eq!(back, body, "round trip through {}", String::from_utf8_lossy(&encoded));
        assert!(back.validate_client(max).is_ok(), "valid, then not after a round trip");
    }
});
