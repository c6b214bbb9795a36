//! A WebSocket text frame, as the session parses it (`proto::parse_request`).
//!
//! Invariants: parsing never panics; a parsed request's id is a JSON string or number that the
//! reply frames echo; the frame re-encoded (a JSON value written back out) parses to the same
//! operation; a refused frame carries one of the parse error codes of the error table, and its
//! error reply is valid JSON with that code.
#![no_main]

use confab_actors::error::{ErrorCode, ERROR_TABLE};
use confab_actors::proto::{encode_error, encode_result, parse_request, OP_NAMES};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;

/// An id as a JSON value: a string or a number. `None` for an id that is JSON text but no value
/// serde_json can hold (a lone UTF-16 surrogate escape, a number past `f64`): the server echoes
/// such an id verbatim, as the client wrote it.
fn id_value(raw: &str) -> Option<Value> {
    assert!(raw.starts_with('"') || raw.starts_with(|c: char| c == '-' || c.is_ascii_digit()), "id {raw}");
    let id: Value = serde_json::from_str(raw).ok()?;
    assert!(id.is_string() || id.is_number(), "id {raw} is neither a string nor a number");
    Some(id)
}

/// A reply frame: JSON echoing the id (`null` when there was none), unless the id is one that
/// only the client's own JSON can hold.
fn reply(frame: &str, id: Option<&RawValue>) -> Option<Value> {
    assert!(frame.starts_with(&format!("{{\"id\":{}", id.map_or("null", RawValue::get))), "{frame}");
    let expected = match id {
        Some(raw) => id_value(raw.get())?,
        None => Value::Null,
    };
    let value: Value = serde_json::from_str(frame).expect("a reply frame is JSON");
    assert_eq!(value["id"], expected, "the reply echoes the id");
    Some(value)
}

fuzz_target!(|data: &[u8]| {
    // The WebSocket layer hands the session text frames only once they are valid UTF-8.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_request(text) {
        Ok(req) => {
            let id = id_value(req.id.get());
            assert!(OP_NAMES.contains(&req.op.name()));
            if let Some(reply) = reply(&encode_result(&req.id, &serde_json::json!({ "ok": true })), Some(&req.id)) {
                assert_eq!(reply["result"]["ok"], true);
            }

            // The frame written back out from its JSON value is the same request (nothing to
            // compare when the frame holds text no JSON value can: see `id_value`).
            let Ok(value) = serde_json::from_str::<Value>(text) else { return };
            let reencoded = serde_json::to_string(&value).expect("a JSON value encodes");
            let again = match parse_request(&reencoded) {
                Ok(again) => again,
                Err(bad) => panic!("re-encoded frame {reencoded} refused: {:?}", bad.error),
            };
            assert_eq!(id_value(again.id.get()), id);
            assert_eq!(format!("{:?}", again.op), format!("{:?}", req.op), "re-encoded: {reencoded}");
        }
        Err(bad) => {
            let code = bad.error.code;
            assert!(ERROR_TABLE.iter().any(|r| r.code == code));
            assert!(
                matches!(code, ErrorCode::MalformedFrame | ErrorCode::UnknownOp | ErrorCode::InvalidRequest),
                "parse error with code {code:?}"
            );
            if let Some(frame) = reply(&encode_error(bad.id.as_deref(), &bad.error), bad.id.as_deref()) {
                assert_eq!(frame["error"]["code"], code.as_str());
                assert_eq!(frame["error"]["message"], bad.error.message.as_str());
            }
        }
    }
});
