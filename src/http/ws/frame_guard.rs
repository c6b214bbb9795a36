//! Refuses oversized WebSocket frames from their header, before their payload is read.
//!
//! actix-ws's frame decoder waits for a whole frame before it compares its length with the
//! limit: a header announcing 128 MiB makes it buffer up to 128 MiB first. [`FrameGuard`] sits
//! between the connection's request payload and actix-ws. It follows the frame boundaries of the
//! client's byte stream (it reads only headers, never the payload bytes) and fails the stream as
//! soon as a header announces a data frame larger than the limit, or a fragmented message whose
//! fragments add up to more. The session then closes the connection with 1009 (see
//! [`FrameGuard::tripped`]); nothing beyond the header was buffered.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;

/// Where the parser is in the client's byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a frame header: the bytes of it seen so far (at most 14).
    Header { have: usize },
    /// Skipping a frame's payload: bytes left.
    Payload { left: u64 },
    /// A limit was exceeded (or the header was invalid): everything after is refused.
    Refused,
}

/// The incremental frame-boundary parser, on its own (no I/O): [`Limiter::feed`] takes the bytes
/// as they arrive, in any split.
#[derive(Debug, Clone)]
pub struct Limiter {
    limit: u64,
    state: State,
    header: [u8; 14],
    /// Length so far of the message being received in fragments (0 between messages).
    message: u64,
}

/// Why the stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A frame, or a fragmented message so far, is larger than the limit.
    TooLarge,
}

impl Limiter {
    /// A parser refusing data frames and messages over `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Limiter { limit: limit as u64, state: State::Header { have: 0 }, header: [0; 14], message: 0 }
    }

    /// Follows `bytes` (the next bytes of the client's stream). `Err` once a header announces too
    /// much; then for every later call too.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Refusal> {
        while !bytes.is_empty() {
            match self.state {
                State::Refused => return Err(Refusal::TooLarge),
                State::Payload { left } => {
                    let n = (bytes.len() as u64).min(left);
                    bytes = &bytes[n as usize..];
                    self.state = if n == left { State::Header { have: 0 } } else { State::Payload { left: left - n } };
                }
                State::Header { have } => {
                    let need = header_len(&self.header[..have]);
                    let take = (need - have).min(bytes.len());
                    self.header[have..have + take].copy_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    let have = have + take;
                    if have < need || need != header_len(&self.header[..have]) {
                        // Not all of it yet, or the length bytes just arrived and say it is longer.
                        self.state = State::Header { have };
                        continue;
                    }
                    self.state = self.frame(have)?;
                }
            }
        }
        if self.state == State::Refused {
            return Err(Refusal::TooLarge);
        }
        Ok(())
    }

    /// A whole header of `len` bytes is in `self.header`: checks it and starts its payload.
    fn frame(&mut self, len: usize) -> Result<State, Refusal> {
        let h = &self.header[..len];
        let fin = h[0] & 0x80 != 0;
        let opcode = h[0] & 0x0f;
        let payload = match h[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
            127 => u64::from_be_bytes([h[2], h[3], h[4], h[5], h[6], h[7], h[8], h[9]]),
            n => u64::from(n),
        };
        // Control frames (close, ping, pong: opcode 8 and up) are at most 125 bytes; the decoder
        // enforces that. Data frames count towards their message.
        if opcode < 8 {
            let message = if opcode == 0 { self.message.saturating_add(payload) } else { payload };
            if payload > self.limit || message > self.limit {
                self.state = State::Refused;
                return Err(Refusal::TooLarge);
            }
            self.message = if fin { 0 } else { message };
        }
        Ok(if payload == 0 { State::Header { have: 0 } } else { State::Payload { left: payload } })
    }
}

/// How long the header whose first bytes are `seen` is: 2, then +2 or +8 for the extended length
/// and +4 for the mask, known once the second byte is in.
fn header_len(seen: &[u8]) -> usize {
    let Some(&second) = seen.get(1) else { return 2 };
    let ext = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

/// The connection's request payload, checked by a [`Limiter`] on its way to actix-ws.
pub struct FrameGuard<S> {
    inner: S,
    limiter: Limiter,
    tripped: Arc<AtomicBool>,
}

impl<S> FrameGuard<S> {
    /// Guards `inner` with `limit` bytes per frame and per message.
    pub fn new(inner: S, limit: usize) -> Self {
        FrameGuard { inner, limiter: Limiter::new(limit), tripped: Arc::new(AtomicBool::new(false)) }
    }

    /// Set once the guard refused the stream: the session closes with 1009.
    pub fn tripped(&self) -> Arc<AtomicBool> {
        self.tripped.clone()
    }
}

impl<S> Stream for FrameGuard<S>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.tripped.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => match this.limiter.feed(&bytes) {
                // The bytes of the refused frame's header may go on: the decoder then holds at
                // most a header, and the error below ends the stream.
                Ok(()) => Poll::Ready(Some(Ok(bytes))),
                Err(Refusal::TooLarge) => {
                    this.tripped.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(PayloadError::Overflow)))
                }
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: FIN and opcode, masked, with a payload of `len` bytes (`len` written in
    /// the shortest form, payload bytes not included).
    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
        if len < 126 {
            h.push(0x80 | len as u8);
        } else if len <= u64::from(u16::MAX) {
            h.push(0x80 | 126);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            h.push(0x80 | 127);
            h.extend_from_slice(&len.to_be_bytes());
        }
        h.extend_from_slice(&[1, 2, 3, 4]);
        h
    }

    fn frame(fin: bool, opcode: u8, len: usize) -> Vec<u8> {
        let mut f = header(fin, opcode, len as u64);
        f.extend(std::iter::repeat_n(b'x', len));
        f
    }

    #[test]
    fn frames_within_the_limit_pass_in_any_split() {
        let mut stream = Vec::new();
        stream.extend(frame(true, 1, 10));
        stream.extend(frame(true, 9, 4)); // a ping
        stream.extend(frame(true, 1, 1000));
        stream.extend(frame(false, 1, 600));
        stream.extend(frame(true, 0, 400)); // a message of exactly 1000 in two fragments
        stream.extend(frame(true, 1, 0));
        for split in [1, 2, 3, 7, 13, 100, stream.len()] {
            let mut l = Limiter::new(1000);
            for chunk in stream.chunks(split) {
                assert_eq!(l.feed(chunk), Ok(()), "split {split}");
            }
            assert_eq!(l.state, State::Header { have: 0 }, "split {split}");
        }
    }

    #[test]
    fn a_header_announcing_too_much_is_refused_before_its_payload() {
        for len in [1001u64, 70_000, 128 << 20, u64::MAX >> 1] {
            let mut l = Limiter::new(1000);
            assert_eq!(l.feed(&header(true, 1, len)), Err(Refusal::TooLarge), "{len}");
            assert_eq!(l.feed(b"more"), Err(Refusal::TooLarge), "stays refused");
        }
        // Byte by byte: refused when the last header byte arrives.
        let h = header(true, 2, 128 << 20);
        let mut l = Limiter::new(1000);
        for b in &h[..h.len() - 1] {
            assert_eq!(l.feed(&[*b]), Ok(()));
        }
        assert_eq!(l.feed(&h[h.len() - 1..]), Err(Refusal::TooLarge));
    }

    #[test]
    fn fragments_adding_up_to_too_much_are_refused() {
        let mut l = Limiter::new(1000);
        assert_eq!(l.feed(&frame(false, 1, 600)), Ok(()));
        assert_eq!(l.feed(&frame(true, 9, 0)), Ok(()), "control frames between fragments do not count");
        assert_eq!(l.feed(&header(false, 0, 300)), Ok(()));
        assert_eq!(l.feed(&[b'x'; 300]), Ok(()));
        assert_eq!(l.feed(&header(true, 0, 101)), Err(Refusal::TooLarge));
    }
}
