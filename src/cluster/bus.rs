//! The node bus: one Redis pub/sub channel per node, one channel for the whole cluster, and the
//! wire format on both.
//!
//! # Channels
//!
//! - `confab:node:<node_id>`: batches for the users of one node.
//! - `confab:all`: [`Broadcast`] events every node receives (a node ignores its own).
//!
//! # Wire format (version 1)
//!
//! One pub/sub message is a JSON header, a newline (`\n`), then the raw frames back to back (UTF-8,
//! the already-encoded WebSocket text frames; `len` gives their sizes in bytes; nothing for a
//! broadcast):
//!
//! ```text
//! {"v":1,"from":"node-a","kind":"batch","to":["bob","carol"],"len":[41],"skip":["bob",17],"ord":["g_team",42]}\n{"event":"message",…}
//! {"v":1,"from":"node-a","kind":"broadcast","event":{"type":"close_user","user":"bob","disabled":true}}\n
//! ```
//!
//! Optional header fields: `skip` names one connection (user and `conn_id` on the destination
//! node) that must not get the frames (the sender's own device, which gets an acknowledgement
//! instead); `ord` is the conversation and `seq` of the message the frames carry; `mc: true` says
//! the message changed the conversation's membership. A message of an unknown version or that does
//! not parse is dropped and counted (`confab_cluster_incoming_dropped_total`).
//!
//! # Receiving
//!
//! The subscriber owns a dedicated connection (pub/sub takes a connection over, so it is never a
//! pooled one). It pings Redis every heartbeat; when the connection ends or a ping goes
//! unanswered it reconnects and resubscribes by itself (100 ms, doubling to 2 s between
//! attempts). Messages published while it was not subscribed are lost: their recipients get them
//! with sync, as after any reconnect. Decoded messages go to a bounded queue; when it is full a
//! message is dropped and counted, never waited for.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytestring::ByteString;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::Inner;

/// The wire format's version; messages of another version are dropped.
pub const WIRE_VERSION: u32 = 1;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Broadcast {
    /// Close every session of a user: it was disabled, or its tokens were revoked.
    CloseUser {
        user: String,
        #[serde(default)]
        disabled: bool,
    },
    /// A conversation's membership changed: drop what is cached about it.
    MembershipChanged {
        conv_id: String,
        /// The `seq` of the system message that recorded the change (0 when unknown).
        #[serde(default)]
        seq: u64,
    },
    /// An event this version does not know (sent by a newer node).
    #[serde(other)]
    Unknown,
}

/// What the subscriber hands over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Batch(Batch),
    Broadcast { from: String, event: Broadcast },
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    v: u32,
    from: &'a str,
    kind: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    to: Vec<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    len: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skip: Option<(&'a str, u64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ord: Option<(&'a str, u64)>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    mc: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a Broadcast>,
}

#[derive(Deserialize)]
struct HeaderIn {
    v: u32,
    from: String,
    kind: String,
    #[serde(default)]
    to: Vec<String>,
    #[serde(default)]
    len: Vec<usize>,
    #[serde(default)]
    skip: Option<(String, u64)>,
    #[serde(default)]
    ord: Option<(String, u64)>,
    #[serde(default)]
    mc: bool,
    #[serde(default)]
    event: Option<Broadcast>,
}

fn with_frames(header: &HeaderOut<'_>, frames: &[ByteString]) -> Vec<u8> {
    // Serializing a struct of strings and numbers cannot fail.
    let mut out = serde_json::to_vec(header).unwrap_or_default();
    out.reserve(frames.iter().map(|f| f.len()).sum::<usize>() + 1);
    out.push(b'\n');
    for f in frames {
        out.extend_from_slice(f.as_bytes());
    }
    out
}

/// Encodes `batch` (all but its `from` and `users`) from node `from` for `users`.
pub fn encode_batch(from: &str, batch: &Batch, users: &[Arc<str>]) -> Vec<u8> {
    let header = HeaderOut {
        v: WIRE_VERSION,
        from,
        kind: "batch",
        to: users.iter().map(|u| &**u).collect(),
        len: batch.frames.iter().map(|f| f.len()).collect(),
        skip: batch.skip.as_ref().map(|(u, c)| (&**u, *c)),
        ord: batch.ordered.as_ref().map(|(c, s)| (&**c, *s)),
        mc: batch.membership_changed,
        event: None,
    };
    with_frames(&header, &batch.frames)
}

/// Encodes a broadcast event from node `from`.
pub fn encode_broadcast(from: &str, event: &Broadcast) -> Vec<u8> {
    let header = HeaderOut {
        v: WIRE_VERSION,
        from,
        kind: "broadcast",
        to: Vec::new(),
        len: Vec::new(),
        skip: None,
        ord: None,
        mc: false,
        event: Some(event),
    };
    with_frames(&header, &[])
}

/// Decodes one pub/sub message; `None` when it is malformed or of another version.
pub fn decode(payload: &[u8]) -> Option<Incoming> {
    let nl = payload.iter().position(|b| *b == b'\n')?;
    let header: HeaderIn = serde_json::from_slice(&payload[..nl]).ok()?;
    if header.v != WIRE_VERSION {
        return None;
    }
    match header.kind.as_str() {
        "batch" => {
            let mut body = &payload[nl + 1..];
            if header.len.iter().sum::<usize>() != body.len() {
                return None;
            }
            let mut frames = Vec::with_capacity(header.len.len());
            for n in header.len {
                let (frame, rest) = body.split_at(n);
                frames.push(ByteString::from(std::str::from_utf8(frame).ok()?.to_owned()));
                body = rest;
            }
            Some(Incoming::Batch(Batch {
                from: header.from,
                frames,
                users: header.to.into_iter().map(Arc::from).collect(),
                skip: header.skip.map(|(u, c)| (Arc::from(u), c)),
                ordered: header.ord.map(|(c, s)| (Arc::from(c), s)),
                membership_changed: header.mc,
            }))
        }
        "broadcast" => Some(Incoming::Broadcast { from: header.from, event: header.event? }),
        _ => None,
    }
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
                inner.metrics.subscriptions.fetch_add(1, Relaxed);
                tracing::debug!(node = %inner.node_id, "subscribed to the node bus");
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
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else {
                    tracing::debug!("the node bus connection closed");
                    return false;
                };
                hand_over(inner, msg.get_payload_bytes(), out);
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

fn hand_over(inner: &Inner, payload: &[u8], out: &mpsc::Sender<Incoming>) {
    let m = &inner.metrics;
    let incoming = match decode(payload) {
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
    };
    counter.fetch_add(1, Relaxed);
    if out.try_send(incoming).is_err() {
        m.incoming_dropped.fetch_add(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = std::str::from_utf8(&wire).expect("utf-8");
        assert!(
            text.starts_with(r#"{"v":1,"from":"node-a","kind":"batch","to":["bob","carol"],"len":[45,19],"skip":["bob",17],"ord":["g_team",42],"mc":true}"#),
            "{text}"
        );
        let want = Batch { from: "node-a".into(), users: users.clone(), ..batch };
        assert_eq!(decode(&wire), Some(Incoming::Batch(want)));

        let plain = Batch::new(ByteString::from_static("{}"), Vec::new());
        let wire = encode_batch("node-a", &plain, &users);
        assert_eq!(
            std::str::from_utf8(&wire).expect("utf-8"),
            "{\"v\":1,\"from\":\"node-a\",\"kind\":\"batch\",\"to\":[\"bob\",\"carol\"],\"len\":[2]}\n{}"
        );

        let ev = Broadcast::CloseUser { user: "bob".into(), disabled: true };
        let wire = encode_broadcast("node-b", &ev);
        assert_eq!(decode(&wire), Some(Incoming::Broadcast { from: "node-b".into(), event: ev }));
    }

    #[test]
    fn unknown_versions_and_garbage_are_dropped() {
        assert_eq!(decode(b"{\"v\":2,\"from\":\"x\",\"kind\":\"batch\",\"to\":[\"a\"],\"len\":[2]}\n{}"), None);
        assert_eq!(decode(b"no header"), None);
        assert_eq!(decode(b"{\"v\":1,\"from\":\"x\",\"kind\":\"batch\",\"len\":[1]}\n\xff"), None);
        assert_eq!(decode(b"{\"v\":1,\"from\":\"x\",\"kind\":\"batch\",\"len\":[5]}\n{}"), None, "lengths must add up");
        let newer = b"{\"v\":1,\"from\":\"x\",\"kind\":\"broadcast\",\"event\":{\"type\":\"reload\"}}\n";
        assert_eq!(decode(newer), Some(Incoming::Broadcast { from: "x".into(), event: Broadcast::Unknown }));
    }
}
