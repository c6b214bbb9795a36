//! The node bus: one Redis pub/sub channel per node, one channel for the whole cluster, and the
//! wire format on both.
//!
//! # Channels
//!
//! - `confab:node:<node_id>`: batches for the users of one node.
//! - `confab:all`: [`Broadcast`] events every node receives (a node ignores its own).
//!
//! # Wire format (version 2)
//!
//! One pub/sub message is a binary header, then (for a batch) the raw frames back to back (UTF-8,
//! the already-encoded WebSocket text frames). Integers are little-endian; a string is a `u16`
//! length in bytes, then UTF-8:
//!
//! ```text
//! u8 version (2) | u8 kind (1 batch, 2 broadcast) | str from
//! batch:     u8 flags (1: ord, 2: skip, 4: mc)
//!            [str conv_id | u64 seq]        when ord
//!            [str user | u64 conn_id]       when skip
//!            u32 users | users x str
//!            u32 frames | frames x u32 length | the frames, to the end of the message
//! broadcast: the event as JSON, to the end of the message:
//!            {"type":"close_user","user":"bob","disabled":true}
//! ```
//!
//! `ord` is the conversation and `seq` of the message the frames carry; `skip` names one
//! connection (user and `conn_id` on the destination node) that must not get the frames (the
//! sender's own device, which gets an acknowledgement instead); `mc` says the message changed the
//! conversation's membership. A message of another version (version 1 was a JSON header: its first
//! byte is `{`), with flags this version does not know, or that does not parse exactly (lengths
//! that do not add up, bytes left over, strings that are not UTF-8) is dropped and counted
//! (`confab_cluster_incoming_dropped_total`).
//!
//! # Receiving
//!
//! The subscriber owns a dedicated connection (pub/sub takes a connection over, so it is never a
//! pooled one). It pings Redis every heartbeat; when the connection ends or a ping goes
//! unanswered it reconnects and resubscribes by itself (100 ms, doubling to 2 s between
//! attempts). Messages published while it was not subscribed are lost: their recipients get them
//! with sync, as after any reconnect. Decoded messages go to a bounded queue; when it is full a
//! message is dropped and counted, never waited for. A conversation's messages usually go to the
//! same users: the [`Decoder`] reuses the user list it decoded last for a conversation when the
//! bytes listing them are the same, so they are not allocated again (and compare equal by
//! pointer downstream).

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::Inner;

/// The wire format's version; messages of another version are dropped.
pub const WIRE_VERSION: u8 = 2;

const KIND_BATCH: u8 = 1;
const KIND_BROADCAST: u8 = 2;

const FLAG_ORD: u8 = 1;
const FLAG_SKIP: u8 = 2;
const FLAG_MC: u8 = 4;
const FLAGS_KNOWN: u8 = FLAG_ORD | FLAG_SKIP | FLAG_MC;

/// The channel every node subscribes to.
pub const BROADCAST_CHANNEL: &str = "confab:all";

/// The channel of one node.
pub fn node_channel(node: &str) -> String {
    format!("confab:node:{node}")
}

/// Frames for some users of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The node that published it (filled in on receipt; ignored when publishing).
    pub from: String,
    /// The encoded frames, queued as they are, in this order, on every recipient's sessions.
    pub frames: Vec<ByteString>,
    /// The users whose sessions on the destination node get the frames.
    pub users: Vec<Arc<str>>,
    /// A connection (user, `conn_id` on the destination node) that must not get them.
    pub skip: Option<(Arc<str>, u64)>,
    /// The conversation and `seq` of the message the frames carry, when they are ordered.
    pub ordered: Option<(Arc<str>, u64)>,
    /// The message changed the conversation's membership or roles.
    pub membership_changed: bool,
}

impl Batch {
    /// A batch of one frame for `users`.
    pub fn new(frame: ByteString, users: Vec<Arc<str>>) -> Batch {
        Batch { frames: vec![frame], users, ..Batch::default() }
    }
}

/// A cluster-wide event, sent to every other node.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Broadcast {
    /// Close the sessions of a user that lost access: it was disabled, or its tokens were
    /// revoked (those issued before `tokens_before_ms`; absent: every one, as older nodes meant).
    CloseUser {
        user: String,
        #[serde(default)]
        disabled: bool,
        tokens_before_ms: Option<u64>,
        /// Only this device's sessions (with `tokens_before_ms`). A node older than the field
        /// reads the event as the revocation of every token before the bound: it closes more
        /// sessions than asked, never fewer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// A conversation's membership changed: drop what is cached about it.
    MembershipChanged {
        conv_id: String,
        /// The `seq` of the system message that recorded the change (0 when unknown).
        #[serde(default)]
        seq: u64,
    },
    /// The contacts of a one-to-one conversation's users changed: reload what is cached of them.
    ContactsChanged { conv_id: String },
    /// An event this version does not know (sent by a newer node).
    #[serde(other)]
    Unknown,
}

/// What the subscriber hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Batch(Batch),
    Broadcast {
        from: String,
        event: Broadcast,
    },
    /// Not from the bus: this node's presence writes (or its sweep of a dead node) found that
    /// `user` came online (its first connection in the cluster) or went offline (its last one).
    Presence {
        user: Arc<str>,
        online: bool,
    },
    /// Not from the bus: the subscriber is subscribed again after losing its connection. What
    /// was published meanwhile is lost (pub/sub does not replay), security broadcasts included:
    /// the node re-checks its sessions' access.
    Resubscribed,
}

/// Appends a string (a `u16` length, then its bytes); longer ones are cut at a character boundary
/// (node ids, user ids and conversation ids are far shorter).
fn put_str(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(usize::from(u16::MAX));
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&(end as u16).to_le_bytes());
    out.extend_from_slice(&s.as_bytes()[..end]);
}

fn header(out: &mut Vec<u8>, kind: u8, from: &str) {
    out.push(WIRE_VERSION);
    out.push(kind);
    put_str(out, from);
}

/// Encodes `batch` (all but its `from` and `users`) from node `from` for `users`.
pub fn encode_batch(from: &str, batch: &Batch, users: &[Arc<str>]) -> Vec<u8> {
    let frames: usize = batch.frames.iter().map(|f| f.len() + 4).sum();
    let names: usize = users.iter().map(|u| u.len() + 2).sum();
    let mut out = Vec::with_capacity(64 + from.len() + names + frames);
    header(&mut out, KIND_BATCH, from);
    let mut flags = 0;
    if batch.ordered.is_some() {
        flags |= FLAG_ORD;
    }
    if batch.skip.is_some() {
        flags |= FLAG_SKIP;
    }
    if batch.membership_changed {
        flags |= FLAG_MC;
    }
    out.push(flags);
    if let Some((conv, seq)) = &batch.ordered {
        put_str(&mut out, conv);
        out.extend_from_slice(&seq.to_le_bytes());
    }
    if let Some((user, conn)) = &batch.skip {
        put_str(&mut out, user);
        out.extend_from_slice(&conn.to_le_bytes());
    }
    out.extend_from_slice(&(users.len() as u32).to_le_bytes());
    for u in users {
        put_str(&mut out, u);
    }
    out.extend_from_slice(&(batch.frames.len() as u32).to_le_bytes());
    for f in &batch.frames {
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
    }
    for f in &batch.frames {
        out.extend_from_slice(f.as_bytes());
    }
    out
}

/// Encodes a broadcast event from node `from`.
pub fn encode_broadcast(from: &str, event: &Broadcast) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    header(&mut out, KIND_BROADCAST, from);
    // Serializing an enum of strings and numbers cannot fail.
    out.extend_from_slice(&serde_json::to_vec(event).unwrap_or_default());
    out
}

/// Reads a message field by field; every read fails (`None`) past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.bytes(1)?[0])
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.bytes(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.bytes(8)?.try_into().ok()?))
    }

    fn str(&mut self) -> Option<&'a str> {
        let n = u16::from_le_bytes(self.bytes(2)?.try_into().ok()?);
        std::str::from_utf8(self.bytes(usize::from(n))?).ok()
    }
}

/// Most conversations whose last user list a [`Decoder`] keeps; beyond, it starts over.
const DECODER_CONVS: usize = 1024;

/// The users of a conversation's last batch: the bytes that listed them, and the names.
type LastUsers = (Vec<u8>, Vec<Arc<str>>);

/// Decodes messages, reusing user lists it decoded before (see the module documentation).
#[derive(Default)]
pub struct Decoder {
    /// conversation -> the users of its last batch.
    last: HashMap<Arc<str>, LastUsers>,
}

impl Decoder {
    /// Decodes one pub/sub message; `None` when it is malformed or of another version.
    pub fn decode(&mut self, payload: &[u8]) -> Option<Incoming> {
        let mut r = Reader(payload);
        if r.u8()? != WIRE_VERSION {
            return None;
        }
        let kind = r.u8()?;
        let from = r.str()?.to_owned();
        match kind {
            KIND_BATCH => self.batch(from, r).map(Incoming::Batch),
            KIND_BROADCAST => Some(Incoming::Broadcast { from, event: serde_json::from_slice(r.0).ok()? }),
            _ => None,
        }
    }

    fn batch(&mut self, from: String, mut r: Reader<'_>) -> Option<Batch> {
        let flags = r.u8()?;
        if flags & !FLAGS_KNOWN != 0 {
            return None;
        }
        let ordered = match flags & FLAG_ORD != 0 {
            true => Some((Arc::<str>::from(r.str()?), r.u64()?)),
            false => None,
        };
        let skip = match flags & FLAG_SKIP != 0 {
            true => Some((Arc::<str>::from(r.str()?), r.u64()?)),
            false => None,
        };
        let listed = r.0;
        let n = r.u32()? as usize;
        let mut names = Vec::with_capacity(n.min(r.0.len() / 2));
        for _ in 0..n {
            names.push(r.str()?);
        }
        let listed = &listed[..listed.len() - r.0.len()];
        let n = r.u32()? as usize;
        let mut lens = Vec::with_capacity(n.min(r.0.len() / 4));
        for _ in 0..n {
            lens.push(r.u32()? as usize);
        }
        if lens.iter().try_fold(0usize, |a, l| a.checked_add(*l)) != Some(r.0.len()) {
            return None;
        }
        let mut frames = Vec::with_capacity(lens.len());
        for n in lens {
            frames.push(ByteString::from(std::str::from_utf8(r.bytes(n)?).ok()?.to_owned()));
        }
        let users = match &ordered {
            Some((conv, _)) => match self.last.get(conv) {
                Some((bytes, users)) if bytes.as_slice() == listed => users.clone(),
                _ => {
                    let users: Vec<Arc<str>> = names.into_iter().map(Arc::from).collect();
                    if self.last.len() >= DECODER_CONVS {
                        self.last.clear();
                    }
                    self.last.insert(conv.clone(), (listed.to_vec(), users.clone()));
                    users
                }
            },
            None => names.into_iter().map(Arc::from).collect(),
        };
        Some(Batch { from, frames, users, skip, ordered, membership_changed: flags & FLAG_MC != 0 })
    }
}

/// Decodes one pub/sub message on its own; `None` when it is malformed or of another version.
pub fn decode(payload: &[u8]) -> Option<Incoming> {
    Decoder::default().decode(payload)
}

/// Subscribes to this node's channel and the broadcast channel until `stop` turns true,
/// resubscribing after every failure.
pub(crate) async fn subscriber(inner: Arc<Inner>, out: mpsc::Sender<Incoming>, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            return;
        }
        match subscribe(&inner).await {
            Ok((sink, stream)) => {
                backoff = Duration::from_millis(100);
                inner.subscribed.store(true, Relaxed);
                let before = inner.metrics.subscriptions.fetch_add(1, Relaxed);
                tracing::debug!(node = %inner.node_id, "subscribed to the node bus");
                if before > 0 {
                    // Waits for room: this one must not be dropped.
                    let _ = out.send(Incoming::Resubscribed).await;
                }
                let done = listen(&inner, sink, stream, &out, &mut stop).await;
                inner.subscribed.store(false, Relaxed);
                if done {
                    return;
                }
            }
            Err(e) => {
                inner.metrics.redis_errors.fetch_add(1, Relaxed);
                tracing::debug!(error = %e, "cannot subscribe to the node bus; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

async fn subscribe(inner: &Inner) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), String> {
    let timeout = inner.redis.timeout();
    let connect = async {
        let (mut sink, stream) = inner.redis.client().get_async_pubsub().await.map_err(|e| e.to_string())?.split();
        sink.subscribe(&[node_channel(&inner.node_id), BROADCAST_CHANNEL.to_owned()])
            .await
            .map_err(|e| e.to_string())?;
        Ok((sink, stream))
    };
    tokio::time::timeout(timeout, connect).await.map_err(|_| "subscribing timed out".to_owned())?
}

/// Hands messages over until the connection fails (`false`) or `stop` turns true (`true`).
async fn listen(
    inner: &Inner,
    mut sink: redis::aio::PubSubSink,
    mut stream: redis::aio::PubSubStream,
    out: &mpsc::Sender<Incoming>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let mut ping = tokio::time::interval(inner.heartbeat);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping.tick().await;
    let mut decoder = Decoder::default();
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    tracing::debug!("the node bus connection closed");
                    return false;
                };
                hand_over(inner, &mut decoder, msg.get_payload_bytes(), out);
            }
            _ = ping.tick() => {
                let pong = tokio::time::timeout(inner.redis.timeout(), sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    inner.metrics.redis_errors.fetch_add(1, Relaxed);
                    tracing::debug!("the node bus connection stopped answering");
                    return false;
                }
            }
            _ = stop.changed() => return true,
        }
    }
}

fn hand_over(inner: &Inner, decoder: &mut Decoder, payload: &[u8], out: &mpsc::Sender<Incoming>) {
    let m = &inner.metrics;
    let incoming = match decoder.decode(payload) {
        Some(Incoming::Broadcast { from, .. }) if from == inner.node_id => return,
        Some(i) => i,
        None => {
            m.incoming_dropped.fetch_add(1, Relaxed);
            tracing::warn!(bytes = payload.len(), "dropped a malformed node bus message");
            return;
        }
    };
    let counter = match incoming {
        Incoming::Batch(_) => &m.batches_received,
        Incoming::Broadcast { .. } => &m.broadcasts_received,
        Incoming::Presence { .. } | Incoming::Resubscribed => return,
    };
    counter.fetch_add(1, Relaxed);
    if out.try_send(incoming).is_err() {
        m.incoming_dropped.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string as the wire has it.
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }

    /// A batch from `x` with `flags`, no extras, for user `a`, with frames of `lens` and `body`.
    fn raw_batch(version: u8, flags: u8, lens: &[u32], body: &[u8]) -> Vec<u8> {
        let mut out = vec![version, KIND_BATCH];
        s(&mut out, "x");
        out.push(flags);
        out.extend_from_slice(&1u32.to_le_bytes());
        s(&mut out, "a");
        out.extend_from_slice(&(lens.len() as u32).to_le_bytes());
        for l in lens {
            out.extend_from_slice(&l.to_le_bytes());
        }
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn batches_and_broadcasts_round_trip() {
        let users: Vec<Arc<str>> = vec![Arc::from("bob"), Arc::from("carol")];
        let frames = vec![
            ByteString::from_static("{\"event\":\"message\",\"data\":{\"text\":\"a\\nb é\"}}"),
            ByteString::from_static("{\"event\":\"receipt\"}"),
        ];
        let batch = Batch {
            from: String::new(),
            frames,
            users: Vec::new(),
            skip: Some((Arc::from("bob"), 17)),
            ordered: Some((Arc::from("g_team"), 42)),
            membership_changed: true,
        };
        let wire = encode_batch("node-a", &batch, &users);
        let mut want_wire = vec![2, KIND_BATCH];
        s(&mut want_wire, "node-a");
        want_wire.push(FLAG_ORD | FLAG_SKIP | FLAG_MC);
        s(&mut want_wire, "g_team");
        want_wire.extend_from_slice(&42u64.to_le_bytes());
        s(&mut want_wire, "bob");
        want_wire.extend_from_slice(&17u64.to_le_bytes());
        want_wire.extend_from_slice(&2u32.to_le_bytes());
        s(&mut want_wire, "bob");
        s(&mut want_wire, "carol");
        want_wire.extend_from_slice(&2u32.to_le_bytes());
        want_wire.extend_from_slice(&45u32.to_le_bytes());
        want_wire.extend_from_slice(&19u32.to_le_bytes());
        for f in &batch.frames {
            want_wire.extend_from_slice(f.as_bytes());
        }
        assert_eq!(wire, want_wire);
        let want = Batch { from: "node-a".into(), users: users.clone(), ..batch.clone() };
        assert_eq!(decode(&wire), Some(Incoming::Batch(want.clone())));

        // The same users again for the conversation: the decoder hands out the same names.
        let mut decoder = Decoder::default();
        let first = decoder.decode(&wire);
        let again = decoder.decode(&encode_batch(
            "node-a",
            &Batch { ordered: Some(("g_team".into(), 43)), ..batch.clone() },
            &users,
        ));
        match (first, again) {
            (Some(Incoming::Batch(a)), Some(Incoming::Batch(b))) => {
                assert_eq!(b.ordered, Some((Arc::from("g_team"), 43)));
                assert_eq!(a.users, b.users);
                assert!(a.users.iter().zip(&b.users).all(|(x, y)| Arc::ptr_eq(x, y)), "reused");
            }
            other => panic!("{other:?}"),
        }
        // Other users for it: decoded afresh.
        let fewer = users[..1].to_vec();
        match decoder.decode(&encode_batch("node-a", &batch, &fewer)) {
            Some(Incoming::Batch(b)) => assert_eq!(b.users, fewer),
            other => panic!("{other:?}"),
        }

        let plain = Batch::new(ByteString::from_static("{}"), Vec::new());
        let wire = encode_batch("node-a", &plain, &users);
        assert_eq!(
            decode(&wire),
            Some(Incoming::Batch(Batch { from: "node-a".into(), users: users.clone(), ..plain }))
        );
        assert!(wire.ends_with(b"\x01\x00\x00\x00\x02\x00\x00\x00{}"), "one frame of 2 bytes, last");

        let ev = Broadcast::CloseUser { user: "bob".into(), disabled: true, tokens_before_ms: None, device: None };
        let wire = encode_broadcast("node-b", &ev);
        assert!(wire.ends_with(br#"{"type":"close_user","user":"bob","disabled":true}"#));
        assert_eq!(decode(&wire), Some(Incoming::Broadcast { from: "node-b".into(), event: ev }));
        let ev = Broadcast::CloseUser { user: "bob".into(), disabled: false, tokens_before_ms: Some(7), device: None };
        let wire = encode_broadcast("node-b", &ev);
        assert!(wire.ends_with(br#"{"type":"close_user","user":"bob","disabled":false,"tokens_before_ms":7}"#));
        assert_eq!(decode(&wire), Some(Incoming::Broadcast { from: "node-b".into(), event: ev }));
        let ev = Broadcast::CloseUser {
            user: "bob".into(),
            disabled: false,
            tokens_before_ms: Some(7),
            device: Some("phone".into()),
        };
        let wire = encode_broadcast("node-b", &ev);
        assert!(wire.ends_with(br#""tokens_before_ms":7,"device":"phone"}"#));
        assert_eq!(decode(&wire), Some(Incoming::Broadcast { from: "node-b".into(), event: ev }));
        // An older node's revocation (no bound) still decodes, as "every token".
        let old = br#"{"type":"close_user","user":"bob"}"#;
        let mut wire = encode_broadcast("node-b", &Broadcast::Unknown);
        let json_at = wire.len() - br#"{"type":"unknown"}"#.len();
        wire.truncate(json_at);
        wire.extend_from_slice(old);
        let want = Broadcast::CloseUser { user: "bob".into(), disabled: false, tokens_before_ms: None, device: None };
        assert_eq!(decode(&wire), Some(Incoming::Broadcast { from: "node-b".into(), event: want }));
    }

    #[test]
    fn unknown_versions_and_garbage_are_dropped() {
        assert!(decode(&raw_batch(2, 0, &[2], b"{}")).is_some(), "the reference message is valid");
        assert_eq!(decode(&raw_batch(3, 0, &[2], b"{}")), None, "a newer version");
        assert_eq!(
            decode(b"{\"v\":1,\"from\":\"x\",\"kind\":\"batch\",\"to\":[\"a\"],\"len\":[2]}\n{}"),
            None,
            "version 1"
        );
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"no header"), None);
        assert_eq!(decode(&raw_batch(2, 8, &[2], b"{}")), None, "unknown flags");
        assert_eq!(decode(&raw_batch(2, 0, &[1], b"\xff")), None, "frames must be UTF-8");
        assert_eq!(decode(&raw_batch(2, 0, &[5], b"{}")), None, "lengths must add up");
        assert_eq!(decode(&raw_batch(2, 0, &[1], b"{}")), None, "nothing may be left over");
        assert_eq!(decode(&raw_batch(2, 0, &[u32::MAX, 3], b"{}")), None);
        assert_eq!(decode(&raw_batch(2, FLAG_ORD, &[2], b"{}")), None, "ord announced, not there");
        let wire = raw_batch(2, 0, &[2], b"{}");
        for cut in 0..wire.len() {
            assert_eq!(decode(&wire[..cut]), None, "cut at {cut}");
        }
        let mut kind = wire.clone();
        kind[1] = 9;
        assert_eq!(decode(&kind), None, "unknown kind");

        let mut newer = vec![2, KIND_BROADCAST];
        s(&mut newer, "x");
        newer.extend_from_slice(br#"{"type":"reload"}"#);
        assert_eq!(decode(&newer), Some(Incoming::Broadcast { from: "x".into(), event: Broadcast::Unknown }));
        newer.push(b'}');
        assert_eq!(decode(&newer), None, "a broadcast that is not JSON");
    }
}
