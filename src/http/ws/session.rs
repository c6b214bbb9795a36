//! The WebSocket session actor: one per connected device, and how it reads.
//!
//! The actor owns its connection's `actix_ws::Session` and reads actix-ws's stream of incoming
//! frames. Incoming frames are parsed here and handed to the [`Engine`]. Control frames (the
//! heartbeat's pings, pongs answering the client's pings, the close frame) are sent through the
//! `actix_ws::Session`. Replies and events, the data frames, take a faster path: one bounded
//! outgoing queue (`session.outbound_queue` frames) drained by the connection's response body,
//! the [`Outlet`](super::outlet::Outlet): each time the connection task polls it, it takes everything queued, in order,
//! and encodes it into one chunk of WebSocket frames, so frames leave in the order they were
//! queued and a burst of frames costs one socket write, with no task or channel between the queue
//! and the socket. The outlet also carries actix-ws's own body (the `Session`'s frames), and
//! holds the close frame back until every data frame queued before it is written. When the queue
//! is full the client is too slow: the session closes with code 1013 ("try again later") and the
//! client recovers with sync after reconnecting. Heartbeats: the server pings every
//! `heartbeat_interval`; a client silent for `client_timeout` is disconnected.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use tracing::Instrument;

use confab_actors::engine::{Caller, Engine};
use confab_actors::error::{Error, ErrorCode};
use confab_actors::inflight::Slot;
use confab_actors::limits::ConnLimits;
use confab_actors::proto::{self, Op};
use confab_actors::registry::{KickSignal, OutQueue, Outbound, QueueError, SessionHandle};

use super::config::{SessionAuth, SessionConfig, Transport, EXPIRY_NOTICE, RECHECK_EVERY};
use super::outlet::Outlet;

static NEXT_CONN: AtomicU64 = AtomicU64::new(0);

/// Control frames (pongs, pings) a session may have waiting for actix-ws's channel; a client
/// that keeps pinging without reading is dropped beyond it.
const CONTROL_BACKLOG: usize = 64;

/// A connection id unique to this process, and to this node across restarts: the process's
/// start time in milliseconds, shifted by 12 bits, plus a counter (a restarted node's ids never
/// meet its previous process's, whose entries it may still find in the cluster's presence). It
/// stays below 2^53, so JavaScript clients read it exactly.
pub fn next_conn_id() -> u64 {
    static BASE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        u64::try_from(ms).unwrap_or(0) << 12
    });
    base + 1 + NEXT_CONN.fetch_add(1, Relaxed)
}

pub struct WsSession {
    engine: Engine,
    caller: Caller,
    conn_id: u64,
    cfg: SessionConfig,
    auth: SessionAuth,
    limits: ConnLimits,
    stream: Option<AggregatedMessageStream>,
    /// See [`Transport::frame_too_large`].
    frame_too_large: Arc<std::sync::atomic::AtomicBool>,
    /// See [`Transport::hold`].
    _hold: Option<Box<dyn std::any::Any>>,
    /// The connection's actix-ws session: control frames (pings, pongs, the close frame).
    ws: actix_ws::Session,
    /// Control frames handed to `ws` and not sent yet (bounded by [`CONTROL_BACKLOG`]).
    control_backlog: Arc<AtomicUsize>,
    out: Arc<OutQueue>,
    kick: Arc<KickSignal>,
    last_heard: Instant,
    /// Requests in flight; each holds a [`Slot`], freed no later than its reply is queued.
    inflight: Arc<AtomicUsize>,
    /// The expiry (`auth.expires_ms`) the client was told about with `token_expiring`.
    expiry_noticed: u64,
    close: Option<CloseReason>,
    /// `ws{user, device, conn}` under the node's span: entered while the session handles
    /// anything, the parent of its requests' spans.
    span: tracing::Span,
}

impl WsSession {
    /// A session owning `ws` and reading `stream` (both from `actix_ws::handle`), and the
    /// [`Outlet`] to use as the connection's response body, around actix-ws's own body
    /// (`control`, see [`Outlet::new`]).
    pub fn new(
        engine: Engine,
        user: Arc<str>,
        device: Arc<str>,
        cfg: SessionConfig,
        auth: SessionAuth,
        transport: Transport,
    ) -> (Self, Outlet) {
        let conn_id = next_conn_id();
        let Transport { ws, stream, control, frame_too_large, hold } = transport;
        let out = Arc::new(OutQueue::new(cfg.outbound_queue));
        let outlet = Outlet::new(out.clone(), control);
        let span =
            tracing::info_span!(parent: &engine.core().span(), "ws", user = %user, device = %device, conn = conn_id);
        let session = Self {
            engine,
            caller: Caller { user, device, conn_id: Some(conn_id) },
            conn_id,
            limits: ConnLimits::new(&cfg.rates),
            cfg,
            kick: Arc::new(KickSignal::new(auth.issued_ms)),
            auth,
            stream: Some(stream),
            frame_too_large,
            _hold: hold,
            ws,
            control_backlog: Arc::new(AtomicUsize::new(0)),
            out,
            last_heard: Instant::now(),
            inflight: Arc::new(AtomicUsize::new(0)),
            expiry_noticed: 0,
            close: None,
            span,
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
        if e.code == ErrorCode::RateLimited {
            self.engine.metrics().rate_limited.fetch_add(1, Relaxed);
        }
        self.reply(proto::encode_error(id, &e), ctx);
    }

    /// Sends a control frame through the actix-ws session, on a task of its own (its channel is
    /// small and its sends wait for room; a failure means the connection is closing anyway). A
    /// client that does not read while it keeps pinging backs these up: beyond
    /// [`CONTROL_BACKLOG`] it is dropped as a slow consumer, as when its data queue is full.
    fn control<F, Fut>(&mut self, ctx: &mut Context<Self>, send: F)
    where
        F: FnOnce(actix_ws::Session) -> Fut,
        Fut: std::future::Future<Output = Result<(), actix_ws::Closed>> + 'static,
    {
        if self.control_backlog.fetch_add(1, Relaxed) >= CONTROL_BACKLOG {
            self.control_backlog.fetch_sub(1, Relaxed);
            self.engine.metrics().slow_consumers_dropped.fetch_add(1, Relaxed);
            return self.close_with(ctx, CloseCode::Again, "slow consumer: control frames backed up");
        }
        self.spawn_control(send);
    }

    fn spawn_control<F, Fut>(&self, send: F)
    where
        F: FnOnce(actix_ws::Session) -> Fut,
        Fut: std::future::Future<Output = Result<(), actix_ws::Closed>> + 'static,
    {
        let fut = send(self.ws.clone());
        let backlog = self.control_backlog.clone();
        actix::spawn(async move {
            let _ = fut.await;
            backlog.fetch_sub(1, Relaxed);
        });
    }

    fn close_with(&mut self, ctx: &mut Context<Self>, code: CloseCode, why: &str) {
        if self.close.is_none() {
            self.close = Some(CloseReason { code, description: Some(why.to_string()) });
        }
        ctx.stop();
    }

    fn on_text(&mut self, text: ByteString, ctx: &mut Context<Self>) {
        // A user that lost access has its next request refused at once, before the close that
        // follows (the registry raised this signal synchronously).
        if let Some(why) = self.kick.revoked_reason() {
            let code = if why == "user_disabled" { ErrorCode::UserDisabled } else { ErrorCode::TokenRevoked };
            return self.error(None, Error::new(code, "this connection lost its access"), ctx);
        }
        if text.len() > self.cfg.max_frame_bytes {
            // The transport closes the connection before such a frame is read whole; this is the
            // same rule for a transport that does not.
            self.frame_too_large.store(true, Relaxed);
            return self.close_with(ctx, CloseCode::Size, "frame_too_large");
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
        let checked = match &req.op {
            Op::Send(_) => self.limits.request().and_then(|()| self.limits.send()),
            _ => self.limits.request(),
        };
        if let Err(e) = checked {
            return self.error(Some(&req.id), e, ctx);
        }
        let slot = Slot::take(&self.inflight);
        let engine = self.engine.clone();
        let caller = self.caller.clone();
        let id = req.id;
        // Disabled (no allocation, no formatting) unless the filter enables debug.
        let span = tracing::debug_span!(parent: &self.span, "request", op = %req.op.name(), id = %id.get());
        match req.op {
            Op::Refresh(r) => span.in_scope(|| self.refresh(id, r, slot, ctx)),
            // Sends reach their conversation actor now, in the order the frames arrived. A
            // stored send is acknowledged by the conversation's fan-out (which frees its slot
            // first), so only a failure has an answer to queue here. It is awaited on a task of
            // its own rather than on this actor's context, which polls every future it holds each
            // time it wakes: with hundreds of sends in flight on one connection that would cost
            // hundreds of polls per incoming frame.
            Op::Send(send) => {
                let origin = confab_actors::conversation::Origin {
                    user: caller.user.clone(),
                    conn_id: self.conn_id,
                    req_id: id.clone(),
                    slot: Some(slot.clone()),
                };
                // Boxed: the send's state machine is large (it can await the `before_send` hook),
                // and unboxed it was copied into the task, into place at its first poll and over
                // again when it finished (~3.5% of the CPU of one-to-one traffic, in memmove).
                let pending = Box::pin(span.in_scope(|| engine.send(&caller, send, Some(origin))));
                let me = SessionHandle {
                    conn_id: self.conn_id,
                    device: caller.device.clone(),
                    tx: self.out.clone(),
                    kick: self.kick.clone(),
                };
                actix::spawn(
                    async move {
                        if let Err(e) = pending.await {
                            tracing::debug!(code = %e.code, error = %e.message, "refused");
                            let metrics = engine.metrics();
                            metrics.request_errors.fetch_add(1, Relaxed);
                            if e.code == ErrorCode::RateLimited {
                                metrics.rate_limited.fetch_add(1, Relaxed);
                            }
                            slot.free();
                            // A full queue kicks the session, as for any other frame.
                            me.push(&proto::encode_error(Some(&id), &e), metrics);
                        }
                    }
                    .instrument(span),
                );
            }
            op => {
                let done = slot.clone();
                let fut = async move { engine.dispatch(caller, id, op, Some(done)).await }.instrument(span);
                ctx.spawn(fut.into_actor(self).map(move |reply, act, ctx| {
                    slot.free();
                    if let Some(frame) = reply {
                        act.reply(frame, ctx);
                    }
                }));
            }
        }
    }

    /// `refresh`: a fresh token for the same user and device replaces the connection's, so the
    /// connection outlives the token it opened with.
    fn refresh(
        &mut self,
        id: Box<serde_json::value::RawValue>,
        r: proto::RefreshReq,
        slot: Arc<Slot>,
        ctx: &mut Context<Self>,
    ) {
        let info = match &self.cfg.tokens {
            Some(tokens) => tokens.verify(&r.token),
            None => Err(Error::invalid("this server does not take tokens on an open connection")),
        };
        let info = info.and_then(|i| {
            if *i.user != *self.caller.user || *i.device != *self.caller.device {
                return Err(Error::invalid("the token is for another user or device than this connection's"));
            }
            Ok(i)
        });
        let info = match info {
            Ok(i) => i,
            Err(e) => {
                slot.free();
                return self.error(Some(&id), e, ctx);
            }
        };
        let engine = self.engine.clone();
        let (user, device) = (self.caller.user.clone(), self.caller.device.clone());
        let checked = async move { engine.check_access(&user, Some((&device, info.issued_ms))).await.map(|()| info) };
        ctx.spawn(checked.into_actor(self).map(move |res, act, ctx| {
            slot.free();
            match res {
                Ok(info) => {
                    act.kick.set_issued_ms(info.issued_ms);
                    act.auth.expires_ms = info.expires_ms;
                    act.auth.verified = true;
                    let result = proto::RefreshResult { expires_at: info.expires_ms / 1000 };
                    act.reply(proto::encode_result(&id, &result), ctx);
                }
                Err(e) => act.error(Some(&id), e, ctx),
            }
        }));
    }

    /// Checks the user's access again (see [`SessionAuth`]): closes the session (1008) when it
    /// was lost, and tries again later when the store cannot answer. With `hold`, nothing else
    /// the session does runs until the answer is in.
    fn recheck(&mut self, ctx: &mut Context<Self>, hold: bool) {
        let engine = self.engine.clone();
        let (user, device) = (self.caller.user.clone(), self.caller.device.clone());
        let issued = self.kick.issued_ms();
        let fut = async move { engine.check_access(&user, Some((&device, issued))).await };
        let fut = fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(()) => act.auth.verified = true,
            Err(e) if e.code == ErrorCode::UserDisabled || e.code == ErrorCode::TokenRevoked => {
                act.kick.revoke(e.code == ErrorCode::UserDisabled);
            }
            Err(e) => {
                let _entered = act.span.enter();
                tracing::debug!(error = %e, "cannot check the session's access yet");
                act.auth.verified = false;
                ctx.run_later(RECHECK_EVERY, |act, ctx| act.recheck(ctx, false));
            }
        });
        if hold {
            ctx.wait(fut);
        } else {
            ctx.spawn(fut);
        }
    }

    /// Closes the session when its token expires (1008, `token_expired`), after telling the
    /// client shortly before (`token_expiring`, [`EXPIRY_NOTICE`] or half the token's life
    /// ahead); a `refresh` meanwhile moves both.
    fn watch_expiry(&mut self, ctx: &mut Context<Self>) {
        let now = confab_actors::clock::now_ms().max(0) as u64;
        let expires = self.auth.expires_ms;
        if now >= expires {
            return self.close_with(ctx, CloseCode::Policy, "token_expired");
        }
        let life = expires.saturating_sub(self.kick.issued_ms());
        let notice_at = expires - (EXPIRY_NOTICE.as_millis() as u64).min(life / 2).min(expires);
        if self.expiry_noticed != expires && now >= notice_at {
            self.expiry_noticed = expires;
            let event = proto::encode_event("token_expiring", &proto::RefreshResult { expires_at: expires / 1000 });
            self.reply(event, ctx);
        }
        let next = if self.expiry_noticed == expires { expires } else { notice_at };
        ctx.run_later(Duration::from_millis(next - now), |act, ctx| act.watch_expiry(ctx));
    }
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let span = self.span.clone();
        let _entered = span.enter();
        let m = self.engine.metrics();
        m.connections.fetch_add(1, Relaxed);
        m.connections_total.fetch_add(1, Relaxed);
        let (first, epoch_moved) = self.engine.registry().register(
            &self.caller.user,
            SessionHandle {
                conn_id: self.conn_id,
                device: self.caller.device.clone(),
                tx: self.out.clone(),
                kick: self.kick.clone(),
            },
            self.auth.epoch,
        );
        self.engine.session_opened(&self.caller.user, &self.caller.device, self.conn_id, first);
        // A revocation was applied between the access check and this registration: it did not
        // see this session, so the session checks again, before it reads any request.
        if epoch_moved || !self.auth.verified {
            self.recheck(ctx, epoch_moved);
        }
        self.watch_expiry(ctx);
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
                act.control(ctx, |mut ws| async move { ws.ping(b"").await });
            }
        });
        tracing::debug!("session started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let _entered = self.span.clone().entered();
        let last = self.engine.registry().unregister(&self.caller.user, self.conn_id);
        self.engine.session_closed(&self.caller.user, &self.caller.device, self.conn_id, last);
        self.engine.metrics().connections.fetch_sub(1, Relaxed);
        let reason = self.close.take().unwrap_or(CloseReason { code: CloseCode::Normal, description: None });
        // The outlet writes what is queued before the close frame: the queue is closed first.
        self.out.close();
        self.control_backlog.fetch_add(1, Relaxed);
        let code = u16::from(reason.code);
        self.spawn_control(move |ws| ws.close(Some(reason)));
        tracing::debug!(code, "session stopped");
    }
}

impl StreamHandler<Result<AggregatedMessage, ProtocolError>> for WsSession {
    fn handle(&mut self, item: Result<AggregatedMessage, ProtocolError>, ctx: &mut Self::Context) {
        let _entered = self.span.clone().entered();
        self.last_heard = Instant::now();
        match item {
            Ok(AggregatedMessage::Text(text)) => self.on_text(text, ctx),
            Ok(AggregatedMessage::Binary(_)) => self.error(
                None,
                Error::new(ErrorCode::MalformedFrame, "binary frames are not supported; send JSON text"),
                ctx,
            ),
            Ok(AggregatedMessage::Ping(p)) => self.control(ctx, |mut ws| async move { ws.pong(&p).await }),
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(_)) => ctx.stop(),
            Err(e) => {
                let (code, why) = close_for(&e, self.frame_too_large.load(Relaxed));
                self.close_with(ctx, code, &why)
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The close code for a connection whose incoming frames failed (RFC 6455 section 7.4.1): 1009
/// for a frame or message over the size limit, 1007 for a text frame that is not UTF-8, 1002 for
/// anything else the peer got wrong.
fn close_for(e: &ProtocolError, frame_too_large: bool) -> (CloseCode, String) {
    if frame_too_large {
        return (CloseCode::Size, "frame_too_large".to_owned());
    }
    match e {
        ProtocolError::Overflow => (CloseCode::Size, "frame_too_large".to_owned()),
        ProtocolError::Io(io) => {
            let text = io.to_string();
            let utf8 = io.get_ref().is_some_and(|i| i.is::<std::str::Utf8Error>())
                || (io.kind() == std::io::ErrorKind::InvalidData && text.contains("utf-8"));
            if utf8 {
                (CloseCode::Invalid, "text frame is not valid UTF-8".to_owned())
            } else if text.contains("maximum continuation size") {
                (CloseCode::Size, "frame_too_large".to_owned())
            } else {
                (CloseCode::Protocol, text)
            }
        }
        other => (CloseCode::Protocol, other.to_string()),
    }
}
