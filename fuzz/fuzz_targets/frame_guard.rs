//! The WebSocket frame-size guard (`http::ws::frame_guard::Limiter::feed`).
//!
//! Invariants: no byte stream, cut into chunks anywhere, makes `feed` panic; the verdict does not
//! depend on where the stream was cut; it is the verdict of a plain whole-buffer reading of the
//! same frames (a data frame, or a fragmented message so far, over the limit is refused as soon
//! as its header is complete); and once refused, every later chunk is refused too.
#![no_main]

use arbitrary::Arbitrary;
use confab::http::ws::frame_guard::{Limiter, Refusal};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    limit: u16,
    cuts: Vec<u8>,
    bytes: &'a [u8],
}

/// The frames of `bytes` read with the whole buffer at hand: refused at the first complete header
/// of a data frame (opcode < 8) whose payload, or whose message's fragments so far, exceed
/// `limit`.
fn whole(bytes: &[u8], limit: u64) -> Result<(), Refusal> {
    let mut at = 0usize;
    let mut message = 0u64;
    while at + 2 <= bytes.len() {
        let (b0, b1) = (bytes[at], bytes[at + 1]);
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        let header = 2 + ext + mask;
        if at + header > bytes.len() {
            break;
        }
        let len = &bytes[at + 2..at + 2 + ext];
        let payload = match ext {
            2 => u64::from(u16::from_be_bytes([len[0], len[1]])),
            8 => u64::from_be_bytes(len.try_into().expect("8 bytes")),
            _ => u64::from(b1 & 0x7f),
        };
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
        if opcode < 8 {
            let total = if opcode == 0 { message.saturating_add(payload) } else { payload };
            if payload > limit || total > limit {
                return Err(Refusal::TooLarge);
            }
            message = if fin { 0 } else { total };
        }
        let next = ((at + header) as u64).saturating_add(payload);
        if next > bytes.len() as u64 {
            break;
        }
        at = next as usize;
    }
    Ok(())
}

fuzz_target!(|input: Input<'_>| {
    let limit = usize::from(input.limit);
    let expected = whole(input.bytes, limit as u64);

    let mut at_once = Limiter::new(limit);
    assert_eq!(at_once.feed(input.bytes), expected, "in one chunk");

    let mut cut = Limiter::new(limit);
    let mut rest = input.bytes;
    let mut verdict = Ok(());
    for &n in &input.cuts {
        let n = usize::from(n).min(rest.len());
        let (chunk, after) = rest.split_at(n);
        let r = cut.feed(chunk);
        if verdict.is_err() {
            assert_eq!(r, Err(Refusal::TooLarge), "a refused stream accepted more bytes");
        }
        verdict = verdict.and(r);
        rest = after;
    }
    let r = cut.feed(rest);
    if verdict.is_err() {
        assert_eq!(r, Err(Refusal::TooLarge), "a refused stream accepted more bytes");
    }
    verdict = verdict.and(r);
    assert_eq!(verdict, expected, "cut at {:?}", input.cuts);
    if expected.is_err() {
        assert_eq!(cut.feed(b"\x81\x00"), Err(Refusal::TooLarge), "refused for good");
    }
});
