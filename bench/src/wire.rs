//! The three wire protocols the generator speaks, reduced to what the scenarios need: where to
//! connect, how to send to a group/room or to one user, and how to tell a delivery from an
//! acknowledgement, an error or a keep-alive.
//!
//! - **confab** (`docs/protocol.md`): `GET /ws?token=<HS256 JWT>`, `send` requests with a text
//!   body, `message` events; replies `{"id":…,"result"|"error":…}`.
//! - **relay** (`confab-relay`): `GET /ws?user=<id>&room=<room>`; a frame `r:<room>\n<payload>` or
//!   `u:<user>\n<payload>` is forwarded verbatim to the room's or the user's other connections.
//! - **socket.io** (Engine.IO v4 over a raw WebSocket): `GET /socket.io/?EIO=4&transport=websocket`,
//!   the `0{…}` open packet, `40` to join the default namespace, pings `2` answered `3`, events
//!   `42["g",{"r":room,"p":payload}]` (room) and `42["d",{"to":user,"p":payload}]` (one user),
//!   delivered as `42["m",{…}]` (see `bench/peers/socketio/server.js`).
//!
//! Every message carries the same 100-byte ASCII payload: `#<send time, ns, 16 hex>#<message
//! number, 8 hex>#<sender index, 8 hex>#` padded with `x`. The send time is read from the
//! generator's one monotonic clock, so receive time minus send time is the latency. `#` appears
//! nowhere else in any of the three protocols' frames, so a receiver finds the payload with one
//! scan whatever the envelope around it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Which protocol a system speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Confab,
    Relay,
    SocketIo,
}

/// Bytes of application payload in every message, on every system.
pub const PAYLOAD_LEN: usize = 100;

/// The payload of message `k` from sender `sender`, stamped `ts_ns`.
pub fn payload(ts_ns: u64, k: u32, sender: u32) -> String {
    let mut s = format!("#{ts_ns:016x}#{k:08x}#{sender:08x}#");
    while s.len() < PAYLOAD_LEN {
        s.push('x');
    }
    s
}

/// What a payload says about its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub ts_ns: u64,
    pub k: u32,
    pub sender: u32,
}

/// The `client_msg_id` of a sender's message number `id`: shaped like a random (version 4) UUID,
/// as apps make them (`crypto.randomUUID()`, `UUID.randomUUID()`), unique per sender. Ids that
/// grow with time would be cheaper for the store's idempotency index (docs/storage.md): random
/// ones are what confab must expect, so they are what the harness sends.
pub fn client_msg_id(id: u64) -> String {
    fn mix(mut z: u64) -> u64 {
        // splitmix64's finaliser: a bijection, so distinct ids give distinct halves.
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let (a, b) = (mix(id.wrapping_add(0x9e37_79b9_7f4a_7c15)), mix(id ^ 0x5851_f42d_4c95_7f2d));
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

fn hex(s: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// Finds and decodes the payload in any frame that carries one.
pub fn parse_marker(frame: &str) -> Option<Marker> {
    let at = frame.find('#')?;
    let b = frame.as_bytes().get(at..at + 36)?;
    if b[17] != b'#' || b[26] != b'#' || b[35] != b'#' {
        return None;
    }
    Some(Marker { ts_ns: hex(&b[1..17])?, k: hex(&b[18..26])? as u32, sender: hex(&b[27..35])? as u32 })
}

/// What an incoming text frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// A message from another client (it may carry a payload).
    Delivery,
    /// A successful reply to one of our requests.
    Ack,
    /// An error reply.
    Error,
    /// A socket.io ping, to be answered `3`.
    Ping,
    /// Anything else (membership events, handshakes…).
    Other,
}

/// A protocol plus what it needs to talk (confab's token secret).
#[derive(Debug, Clone)]
pub struct Dialect {
    pub wire: Wire,
    pub secret: String,
}

/// Device id used in every bench token.
const DEVICE: &str = "bench";

/// An HS256 JWT for `user`, the same scheme as confab's `src/auth.rs`.
pub fn mint_token(secret: &str, user: &str) -> String {
    let iat = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let claims = serde_json::json!({ "sub": user, "dev": DEVICE, "iat": iat, "exp": iat + 86_400 });
    let input = format!("{}.{}", B64.encode(r#"{"alg":"HS256","typ":"JWT"}"#), B64.encode(claims.to_string()));
    let sig = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(mut m) => {
            m.update(input.as_bytes());
            B64.encode(m.finalize().into_bytes())
        }
        // HMAC takes keys of any length; an empty signature would simply be refused.
        Err(_) => String::new(),
    };
    format!("{input}.{sig}")
}

impl Dialect {
    /// The request path (and query) a client of `user`, in `room` if any, connects to.
    pub fn path(&self, user: &str, room: Option<&str>) -> String {
        let room_q = room.map(|r| format!("&room={r}")).unwrap_or_default();
        match self.wire {
            Wire::Confab => format!("/ws?token={}", mint_token(&self.secret, user)),
            Wire::Relay => format!("/ws?user={user}{room_q}"),
            Wire::SocketIo => format!("/socket.io/?EIO=4&transport=websocket&user={user}{room_q}"),
        }
    }

    /// A message to every member of `room` (confab: group `g_<room>`). `id` is unique per sender.
    pub fn group_frame(&self, room: &str, id: u64, payload: &str) -> String {
        match self.wire {
            Wire::Confab => format!(
                r#"{{"id":{id},"op":"send","data":{{"conv_id":"g_{room}","client_msg_id":"{}","body":{{"type":"text","text":"{payload}"}}}}}}"#,
                client_msg_id(id)
            ),
            Wire::Relay => format!("r:{room}\n{payload}"),
            Wire::SocketIo => format!(r#"42["g",{{"r":"{room}","p":"{payload}"}}]"#),
        }
    }

    /// A one-to-one message to `to`.
    pub fn direct_frame(&self, to: &str, id: u64, payload: &str) -> String {
        match self.wire {
            Wire::Confab => format!(
                r#"{{"id":{id},"op":"send","data":{{"to":"{to}","client_msg_id":"{}","body":{{"type":"text","text":"{payload}"}}}}}}"#,
                client_msg_id(id)
            ),
            Wire::Relay => format!("u:{to}\n{payload}"),
            Wire::SocketIo => format!(r#"42["d",{{"to":"{to}","p":"{payload}"}}]"#),
        }
    }

    /// confab only: the request creating group `room` with `members` (the sender becomes owner).
    pub fn group_create_frame(&self, room: &str, members: &[String]) -> Option<String> {
        (self.wire == Wire::Confab).then(|| {
            serde_json::json!({ "id": "setup", "op": "group_create", "data": { "group_id": room, "name": room, "members": members } })
                .to_string()
        })
    }
}

impl Wire {
    /// What an incoming text frame is.
    pub fn classify(self, text: &str) -> Incoming {
        match self {
            Wire::Confab => {
                if text.starts_with(r#"{"event":"message""#) {
                    Incoming::Delivery
                } else if text.starts_with(r#"{"id":"#) {
                    if text.contains(r#","error":{"#) {
                        Incoming::Error
                    } else {
                        Incoming::Ack
                    }
                } else {
                    Incoming::Other
                }
            }
            Wire::Relay => Incoming::Delivery,
            Wire::SocketIo => {
                if text == "2" {
                    Incoming::Ping
                } else if text.starts_with("42") {
                    Incoming::Delivery
                } else {
                    Incoming::Other
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips_in_every_envelope() {
        let p = payload(0x1234_5678_9abc, 42, 7);
        assert_eq!(p.len(), PAYLOAD_LEN);
        let want = Marker { ts_ns: 0x1234_5678_9abc, k: 42, sender: 7 };
        for wire in [Wire::Confab, Wire::Relay, Wire::SocketIo] {
            let d = Dialect { wire, secret: "0123456789abcdef".into() };
            assert_eq!(parse_marker(&d.group_frame("bench", 3, &p)), Some(want));
            assert_eq!(parse_marker(&d.direct_frame("p1", 3, &p)), Some(want));
        }
        let confab_event = format!(
            r#"{{"event":"message","data":{{"conv_id":"g_bench","seq":4,"sender":"s0","client_msg_id":"c3","body":{{"type":"text","text":"{p}"}},"ts":1,"ver":9}}}}"#
        );
        assert_eq!(parse_marker(&confab_event), Some(want));
        assert_eq!(parse_marker(r#"{"event":"membership","data":{}}"#), None);
    }

    #[test]
    fn classifies() {
        let c = Dialect { wire: Wire::Confab, secret: String::new() };
        assert_eq!(c.wire.classify(r#"{"event":"message","data":{}}"#), Incoming::Delivery);
        assert_eq!(c.wire.classify(r#"{"id":1,"result":{}}"#), Incoming::Ack);
        assert_eq!(c.wire.classify(r#"{"id":1,"error":{"code":"x"}}"#), Incoming::Error);
        let s = Dialect { wire: Wire::SocketIo, secret: String::new() };
        assert_eq!(s.wire.classify("2"), Incoming::Ping);
        assert_eq!(s.wire.classify(r#"42["m",{}]"#), Incoming::Delivery);
        assert_eq!(s.wire.classify(r#"40{"sid":"x"}"#), Incoming::Other);
    }

    #[test]
    fn client_msg_ids_are_uuid_shaped_distinct_and_accepted() {
        let ids: std::collections::HashSet<String> = (0..100_000).map(client_msg_id).collect();
        assert_eq!(ids.len(), 100_000);
        let id = client_msg_id(7);
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.as_bytes()[14], b'4', "{id}");
        // confab's id alphabet: A-Z a-z 0-9 _ - . @ : (docs/protocol.md), at most 64 characters.
        assert!(id.bytes().all(|c| c.is_ascii_alphanumeric() || b"_-.@:".contains(&c)), "{id}");
        // Not ordered by number: consecutive ids land far apart, as random ones do.
        assert!(client_msg_id(1) > client_msg_id(2) || client_msg_id(2) > client_msg_id(3));
    }

    #[test]
    fn token_has_three_parts() {
        let t = mint_token("0123456789abcdef", "alice");
        assert_eq!(t.split('.').count(), 3);
    }
}
