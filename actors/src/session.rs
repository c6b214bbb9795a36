//! The WebSocket session actor: one per connected device, and its [`Outlet`].
//!
//! Incoming frames are parsed here and handed to the [`Engine`]; replies and events reach the
//! socket through one bounded outgoing queue (`session.outbound_queue` frames) drained by the
//! connection's response body, the [`Outlet`]: each time the connection task polls it, it takes
//! everything queued, in order, and encodes it into one chunk of WebSocket frames, so frames leave
//! in the order they were queued and a burst of frames costs one socket write, with no task or
//! channel between the queue and the socket. When the queue is full the client
//! is too slow: the session closes with code 1013 ("try again later") and the client recovers with
//! sync after reconnecting. Heartbeats: the server pings every `heartbeat_interval`; a client
//! silent for `client_timeout` is disconnected.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError};
use bytes::{BufMut, Bytes, BytesMut};
use bytestring::ByteString;

use crate::engine::{Caller, Engine};
use crate::error::{Error, ErrorCode};
use crate::proto::{self, Op};
use crate::registry::{KickSignal, OutQueue, Outbound, QueueError, SessionHandle};

/// Timings and limits of a session (the `[session]` and `[server]` configuration).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub heartbeat_interval: Duration,
    pub client_timeout: Duration,
    /// Outgoing frames a session may have queued before it is dropped as a slow consumer.
    pub outbound_queue: usize,
    /// Requests a connection may have in flight at once.
    pub max_inflight: usize,
    /// Largest text frame accepted; larger frames get `frame_too_large`.
    pub max_frame_bytes: usize,
}

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A unique connection id for this process.
pub fn next_conn_id() -> u64 {
    NEXT_CONN.fetch_add(1, Relaxed)
}

pub struct WsSession {
    engine: Engine,
    caller: Caller,
    conn_id: u64,
    cfg: SessionConfig,
    stream: Option<AggregatedMessageStream>,
    out: Arc<OutQueue>,
    /// The close frame's code and reason, for the outlet once the session stops.
    closing: Arc<Mutex<Option<CloseReason>>>,
    kick: Arc<KickSignal>,
    last_heard: Instant,
    /// Requests in flight (decremented by the tasks that finish sends, see [`Self::on_text`]).
    inflight: Arc<AtomicUsize>,
    close: Option<CloseReason>,
}

impl WsSession {
    /// A session reading `stream`, and the [`Outlet`] to use as the connection's response body.
    pub fn new(
        engine: Engine,
        user: Arc<str>,
        device: Arc<str>,
        cfg: SessionConfig,
        stream: AggregatedMessageStream,
    ) -> (Self, Outlet) {
        let conn_id = next_conn_id();
        let out = Arc::new(OutQueue::new(cfg.outbound_queue));
        let closing = Arc::new(Mutex::new(None));
        let outlet =
            Outlet { queue: out.clone(), closing: closing.clone(), taken: VecDeque::new(), guard: None, done: false };
        let session = Self {
            engine,
            caller: Caller { user, device, conn_id: Some(conn_id) },
            conn_id,
            cfg,
            stream: Some(stream),
            out,
            closing,
            kick: Arc::new(KickSignal::default()),
            last_heard: Instant::now(),
            inflight: Arc::new(AtomicUsize::new(0)),
            close: None,
        };
        (session, outlet)
    }

    /// Queues a reply or event on this session; a full queue drops the client.
    fn queue(&mut self, out: Outbound, ctx: &mut Context<Self>) {
        match self.out.try_send(out) {
            Ok(()) => {}
            Err(QueueError::Full) => {
                self.engine.metrics().slow_consumers_dropped.fetch_add(1, Relaxed);
                self.close_with(ctx, CloseCode::Again, "slow consumer: outgoing queue full");
            }
            Err(QueueError::Closed) => ctx.stop(),
        }
    }

    fn reply(&mut self, frame: ByteString, ctx: &mut Context<Self>) {
        self.engine.metrics().frames_out.fetch_add(1, Relaxed);
        self.queue(Outbound::Text(frame), ctx);
    }

    fn error(&mut self, id: Option<&serde_json::value::RawValue>, e: Error, ctx: &mut Context<Self>) {
        self.engine.metrics().request_errors.fetch_add(1, Relaxed);
        self.reply(proto::encode_error(id, &e), ctx);
    }

    fn close_with(&mut self, ctx: &mut Context<Self>, code: CloseCode, why: &str) {
        if self.close.is_none() {
            self.close = Some(CloseReason { code, description: Some(why.to_string()) });
        }
        ctx.stop();
    }

    fn on_text(&mut self, text: ByteString, ctx: &mut Context<Self>) {
        if text.len() > self.cfg.max_frame_bytes {
            let e = Error::new(
                ErrorCode::FrameTooLarge,
                format!("frames are limited to {} bytes", self.cfg.max_frame_bytes),
            );
            return self.error(None, e, ctx);
        }
        let req = match proto::parse_request(&text) {
            Ok(r) => r,
            Err(bad) => return self.error(bad.id.as_deref(), bad.error, ctx),
        };
        if self.inflight.load(Relaxed) >= self.cfg.max_inflight {
            let e = Error::new(
                ErrorCode::TooManyRequests,
                format!("at most {} requests may be in flight", self.cfg.max_inflight),
            );
            return self.error(Some(&req.id), e, ctx);
        }
        self.inflight.fetch_add(1, Relaxed);
        let engine = self.engine.clone();
        let caller = self.caller.clone();
        let id = req.id;
        match req.op {
            // Sends reach their conversation actor now, in the order the frames arrived. A
            // stored send is acknowledged by the conversation's fan-out, so only a failure has
            // an answer to queue here. It is awaited on a task of its own rather than on this
            // actor's context, which polls every future it holds each time it wakes: with
            // hundreds of sends in flight on one connection that would cost hundreds of polls
            // per incoming frame.
            Op::Send(send) => {
                let origin = crate::conversation::Origin {
                    user: caller.user.clone(),
                    conn_id: self.conn_id,
                    req_id: id.clone(),
                };
                let pending = engine.send(&caller, send, Some(origin));
                let me = SessionHandle {
                    conn_id: self.conn_id,
                    device: caller.device.clone(),
                    tx: self.out.clone(),
                    kick: self.kick.clone(),
                };
                let inflight = self.inflight.clone();
                actix::spawn(async move {
                    if let Err(e) = pending.await {
                        let metrics = engine.metrics();
                        metrics.request_errors.fetch_add(1, Relaxed);
                        // A full queue kicks the session, as for any other frame.
                        me.push(&proto::encode_error(Some(&id), &e), metrics);
                    }
                    inflight.fetch_sub(1, Relaxed);
                });
            }
            op => {
                let fut = async move { engine.dispatch(caller, id, op).await };
                ctx.spawn(fut.into_actor(self).map(|reply, act, ctx| {
                    act.inflight.fetch_sub(1, Relaxed);
                    if let Some(frame) = reply {
                        act.reply(frame, ctx);
                    }
                }));
            }
        }
    }
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let m = self.engine.metrics();
        m.connections.fetch_add(1, Relaxed);
        m.connections_total.fetch_add(1, Relaxed);
        let first = self.engine.registry().register(
            &self.caller.user,
            SessionHandle {
                conn_id: self.conn_id,
                device: self.caller.device.clone(),
                tx: self.out.clone(),
                kick: self.kick.clone(),
            },
        );
        self.engine.session_opened(&self.caller.user, &self.caller.device, self.conn_id, first);
        if let Some(stream) = self.stream.take() {
            ctx.add_stream(stream);
        }
        let kick = self.kick.clone();
        ctx.spawn(async move { kick.kicked().await }.into_actor(self).map(|_, act, ctx| {
            if let Some(why) = act.kick.revoked_reason() {
                // The user was disabled or its tokens revoked (docs/protocol.md).
                act.close_with(ctx, CloseCode::Policy, why);
            } else if act.kick.is_shutdown() {
                act.close_with(ctx, CloseCode::Away, "server shutting down");
            } else {
                act.close_with(ctx, CloseCode::Again, "slow consumer: outgoing queue full");
            }
        }));
        ctx.run_interval(self.cfg.heartbeat_interval, |act, ctx| {
            if act.last_heard.elapsed() > act.cfg.client_timeout {
                act.close_with(ctx, CloseCode::Away, "heartbeat timeout");
            } else {
                act.queue(Outbound::Ping, ctx);
            }
        });
        tracing::debug!(user = %self.caller.user, device = %self.caller.device, conn = self.conn_id, "session started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let last = self.engine.registry().unregister(&self.caller.user, self.conn_id);
        self.engine.session_closed(&self.caller.user, &self.caller.device, self.conn_id, last);
        self.engine.metrics().connections.fetch_sub(1, Relaxed);
        let reason = self.close.take().unwrap_or(CloseReason { code: CloseCode::Normal, description: None });
        *self.closing.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
        self.out.close();
        tracing::debug!(user = %self.caller.user, conn = self.conn_id, "session stopped");
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for WsSession {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match item {
            Ok(AggregatedMessage::Text(text)) => self.on_text(text, ctx),
            Ok(AggregatedMessage::Binary(_)) => self.error(
                None,
                Error::new(ErrorCode::MalformedFrame, "binary frames are not supported; send JSON text"),
                ctx,
            ),
            Ok(AggregatedMessage::Ping(p)) => self.queue(Outbound::Pong(p.to_vec()), ctx),
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(_)) => ctx.stop(),
            Err(ProtocolError::Overflow) => self.close_with(ctx, CloseCode::Size, "frame too large"),
            Err(e) => {
                let why = e.to_string();
                self.close_with(ctx, CloseCode::Protocol, &why)
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// Capacity of the outlet's spare queue kept between polls; a larger one (after a burst) is freed.
const OUTLET_KEEP: usize = 64;
/// A close frame's payload is at most 125 bytes: the code and up to 123 bytes of reason.
const MAX_CLOSE_REASON: usize = 123;

/// The response body of a WebSocket connection: the writing half of its session.
///
/// Each poll takes everything in the session's outgoing queue and returns it as one chunk of
/// encoded frames. Once the session has stopped, what is still queued is written, then the close
/// frame, and the body ends. Dropping the outlet (the connection is gone) closes the queue, so
/// senders see the session as closed.
pub struct Outlet {
    queue: Arc<OutQueue>,
    closing: Arc<Mutex<Option<CloseReason>>>,
    /// Frames taken from the queue; its storage is swapped back in on the next take.
    taken: VecDeque<Outbound>,
    /// Kept for as long as the connection writes; dropped when the body ends or the connection
    /// closes (the transport ties the end of the incoming stream to it).
    guard: Option<Box<dyn std::any::Any>>,
    done: bool,
}

impl Outlet {
    /// Keeps `guard` alive until the body ends or is dropped.
    pub fn with_guard(mut self, guard: impl std::any::Any) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }
}

/// Appends one unmasked (server-to-client) frame with FIN set.
fn put_frame(buf: &mut BytesMut, opcode: u8, payload: &[&[u8]]) {
    let len: usize = payload.iter().map(|p| p.len()).sum();
    buf.reserve(len + 10);
    buf.put_u8(0x80 | opcode);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if len <= usize::from(u16::MAX) {
        buf.put_u8(126);
        buf.put_u16(len as u16);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
    for p in payload {
        buf.put_slice(p);
    }
}

fn put_outbound(buf: &mut BytesMut, out: &Outbound) {
    match out {
        Outbound::Text(t) => put_frame(buf, 0x1, &[t.as_bytes()]),
        Outbound::Ping => put_frame(buf, 0x9, &[]),
        Outbound::Pong(p) => put_frame(buf, 0xA, &[&p[..p.len().min(125)]]),
    }
}

fn put_close(buf: &mut BytesMut, reason: Option<CloseReason>) {
    let Some(reason) = reason else { return put_frame(buf, 0x8, &[]) };
    let code = u16::from(reason.code).to_be_bytes();
    let mut why = reason.description.as_deref().unwrap_or("");
    if why.len() > MAX_CLOSE_REASON {
        let mut end = MAX_CLOSE_REASON;
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        why = &why[..end];
    }
    put_frame(buf, 0x8, &[&code, why.as_bytes()]);
}

impl futures_util::Stream for Outlet {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            this.guard = None;
            return Poll::Ready(None);
        }
        // A close is seen under the same lock as the frames queued before it: they all go first.
        let closed = this.queue.take_all(&mut this.taken, cx.waker());
        let size: usize = this
            .taken
            .iter()
            .map(|o| match o {
                Outbound::Text(t) => t.len() + 10,
                _ => 140,
            })
            .sum();
        let mut buf = BytesMut::with_capacity(size + if closed { 140 } else { 0 });
        for out in this.taken.drain(..) {
            put_outbound(&mut buf, &out);
        }
        if this.taken.capacity() > OUTLET_KEEP {
            this.taken = VecDeque::new();
        }
        if closed {
            let reason = this.closing.lock().unwrap_or_else(|p| p.into_inner()).take();
            put_close(&mut buf, reason);
            this.done = true;
        }
        if buf.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(buf.freeze())))
        }
    }
}

impl Drop for Outlet {
    fn drop(&mut self) {
        self.queue.close();
    }
}
