//! The WebSocket session actor: one per connected device. It owns its `actix_ws::Session`.
//!
//! Incoming frames are parsed here and handed to the [`Engine`]; replies and events reach the
//! socket through one bounded outgoing queue (`session.outbound_queue` frames) drained by a single
//! writer future, so frames leave in the order they were queued. When the queue is full the client
//! is too slow: the session closes with code 1013 ("try again later") and the client recovers with
//! sync after reconnecting. Heartbeats: the server pings every `heartbeat_interval`; a client
//! silent for `client_timeout` is disconnected.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, ProtocolError};
use bytestring::ByteString;
use tokio::sync::mpsc;

use crate::engine::{Caller, Engine};
use crate::error::{Error, ErrorCode};
use crate::proto::{self, Op};
use crate::registry::{KickSignal, Outbound, SessionHandle};

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
    ws: actix_ws::Session,
    stream: Option<AggregatedMessageStream>,
    out_tx: mpsc::Sender<Outbound>,
    out_rx: Option<mpsc::Receiver<Outbound>>,
    kick: Arc<KickSignal>,
    last_heard: Instant,
    inflight: usize,
    close: Option<CloseReason>,
}

impl WsSession {
    pub fn new(
        engine: Engine,
        user: Arc<str>,
        device: Arc<str>,
        cfg: SessionConfig,
        ws: actix_ws::Session,
        stream: AggregatedMessageStream,
    ) -> Self {
        let conn_id = next_conn_id();
        let (out_tx, out_rx) = mpsc::channel(cfg.outbound_queue.max(1));
        Self {
            engine,
            caller: Caller { user, device, conn_id: Some(conn_id) },
            conn_id,
            cfg,
            ws,
            stream: Some(stream),
            out_tx,
            out_rx: Some(out_rx),
            kick: Arc::new(KickSignal::default()),
            last_heard: Instant::now(),
            inflight: 0,
            close: None,
        }
    }

    /// Queues a reply or event on this session; a full queue drops the client.
    fn queue(&mut self, out: Outbound, ctx: &mut Context<Self>) {
        match self.out_tx.try_send(out) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.engine.metrics().slow_consumers_dropped.fetch_add(1, Relaxed);
                self.close_with(ctx, CloseCode::Again, "slow consumer: outgoing queue full");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => ctx.stop(),
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
        if self.inflight >= self.cfg.max_inflight {
            let e = Error::new(
                ErrorCode::TooManyRequests,
                format!("at most {} requests may be in flight", self.cfg.max_inflight),
            );
            return self.error(Some(&req.id), e, ctx);
        }
        self.inflight += 1;
        let engine = self.engine.clone();
        let caller = self.caller.clone();
        let id = req.id;
        let fut: std::pin::Pin<Box<dyn std::future::Future<Output = Option<ByteString>>>> = match req.op {
            // Sends reach their conversation actor now, in the order the frames arrived.
            Op::Send(send) => {
                let origin = crate::conversation::Origin {
                    user: caller.user.clone(),
                    conn_id: self.conn_id,
                    req_id: id.clone(),
                };
                let pending = engine.send(&caller, send, Some(origin));
                let metrics = engine.metrics().clone();
                Box::pin(async move {
                    match pending.await {
                        Ok(_) => None,
                        Err(e) => {
                            metrics.request_errors.fetch_add(1, Relaxed);
                            Some(proto::encode_error(Some(&id), &e))
                        }
                    }
                })
            }
            op => Box::pin(async move { engine.dispatch(caller, id, op).await }),
        };
        ctx.spawn(fut.into_actor(self).map(|reply, act, ctx| {
            act.inflight -= 1;
            if let Some(frame) = reply {
                act.reply(frame, ctx);
            }
        }));
    }
}

impl Actor for WsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let m = self.engine.metrics();
        m.connections.fetch_add(1, Relaxed);
        m.connections_total.fetch_add(1, Relaxed);
        self.engine.registry().register(
            &self.caller.user,
            SessionHandle {
                conn_id: self.conn_id,
                device: self.caller.device.clone(),
                tx: self.out_tx.clone(),
                kick: self.kick.clone(),
            },
        );
        if let Some(stream) = self.stream.take() {
            ctx.add_stream(stream);
        }
        // The single writer: drains the outgoing queue into the socket, in order.
        if let Some(mut rx) = self.out_rx.take() {
            let mut ws = self.ws.clone();
            let writer = async move {
                while let Some(out) = rx.recv().await {
                    let sent = match out {
                        Outbound::Text(t) => ws.text(t).await,
                        Outbound::Ping => ws.ping(b"").await,
                        Outbound::Pong(p) => ws.pong(&p).await,
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            };
            ctx.spawn(writer.into_actor(self).map(|_, _, ctx| ctx.stop()));
        }
        let kick = self.kick.clone();
        ctx.spawn(async move { kick.kicked().await }.into_actor(self).map(|_, act, ctx| {
            if act.kick.is_shutdown() {
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
        self.engine.registry().unregister(&self.caller.user, self.conn_id);
        self.engine.metrics().connections.fetch_sub(1, Relaxed);
        let ws = self.ws.clone();
        let reason = self.close.take().or(Some(CloseReason { code: CloseCode::Normal, description: None }));
        actix::spawn(async move {
            let _ = ws.close(reason).await;
        });
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
