//! WebSocket client connections: opening one (from a chosen 127.0.0.x source address, with the
//! socket.io handshake where needed) and the task that then owns it, reading every frame and
//! writing what the scenario's senders queue.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::stats::Stats;
use crate::wire::{Dialect, Incoming, Wire};

pub type Ws = WebSocketStream<TcpStream>;

/// Frames one connection may have queued by the generator before new ones are dropped (and
/// counted as generator overload): far more than any window, so only an open loop outrunning
/// the server reaches it.
pub const SEND_QUEUE: usize = 4096;

/// How long connecting plus the WebSocket (and socket.io) handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// The source address of the `i`-th connection: the first `per_ip` connect from 127.0.0.1 (the
/// kernel picks it, and picks ports per destination), the next `per_ip` from 127.0.0.2, and so
/// on, so that 100,000 connections do not exhaust one address's ephemeral ports.
pub fn source_ip(i: usize, per_ip: usize) -> Option<Ipv4Addr> {
    let block = i / per_ip.max(1);
    (block > 0).then(|| Ipv4Addr::new(127, 0, 0, (1 + block % 254) as u8))
}

/// Opens a WebSocket to `addr` as `user` (in `room`), from `src`.
pub async fn open(
    dialect: &Dialect,
    addr: SocketAddr,
    src: Option<Ipv4Addr>,
    user: &str,
    room: Option<&str>,
) -> anyhow::Result<Ws> {
    let path = dialect.path(user, room);
    let wire = dialect.wire;
    let fut = async move {
        let sock = TcpSocket::new_v4()?;
        // Closing resets the connection: no TIME_WAIT left on the generator's side to hold
        // ports across runs.
        sock.set_zero_linger()?;
        if let Some(src) = src {
            // No SO_REUSEADDR: with it, Linux's search for a free port slows to milliseconds
            // per bind past a few thousand sockets on one address.
            sock.bind(SocketAddr::new(src.into(), 0)).with_context(|| format!("binding {src}"))?;
        }
        let tcp = sock.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        // Small read buffers: 100,000 idle clients must not cost the generator gigabytes.
        let cfg = WebSocketConfig::default().read_buffer_size(8 * 1024);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(format!("ws://{addr}{path}"), tcp, Some(cfg))
            .await
            .context("WebSocket handshake")?;
        if wire == Wire::SocketIo {
            socketio_handshake(&mut ws).await?;
        }
        anyhow::Ok(ws)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, fut).await.context("connection timed out")?
}

/// Engine.IO `0{…}` open packet, then `40` to join the default namespace, answered `40{…}`.
async fn socketio_handshake(ws: &mut Ws) -> anyhow::Result<()> {
    while let Some(msg) = ws.next().await {
        let Message::Text(t) = msg? else { continue };
        match t.as_str() {
            s if s.starts_with("40") => return Ok(()),
            s if s.starts_with("44") => bail!("socket.io refused the connection: {s}"),
            s if s.starts_with('0') => ws.send(Message::text("40")).await?,
            "2" => ws.send(Message::text("3")).await?,
            _ => {}
        }
    }
    bail!("socket.io closed during the handshake")
}

/// Reads frames until one passes `done` (for setup replies); bounded by `timeout`.
pub async fn read_until(ws: &mut Ws, timeout: Duration, mut done: impl FnMut(&str) -> bool) -> anyhow::Result<String> {
    let fut = async {
        while let Some(msg) = ws.next().await {
            if let Message::Text(t) = msg? {
                if done(t.as_str()) {
                    return Ok(t.as_str().to_string());
                }
            }
        }
        bail!("connection closed")
    };
    tokio::time::timeout(timeout, fut).await.context("no reply in time")?
}

/// A running connection: its outgoing queue and its task.
pub struct Conn {
    pub tx: mpsc::Sender<String>,
    pub task: JoinHandle<()>,
}

impl Conn {
    /// Queues a frame; a full queue drops it and counts the overload.
    pub fn send(&self, frame: String, stats: &Stats) -> bool {
        if self.tx.try_send(frame).is_err() {
            stats.gen_dropped.fetch_add(1, Relaxed);
            return false;
        }
        true
    }
}

/// Hands `ws` to a task that reads and writes it until the run stops or the server closes it.
/// With `coalesce`, frames queued together go out in one write (a bursty client); without, each
/// frame is written and flushed on its own (one message per write, as people send).
pub fn spawn(ws: Ws, wire: Wire, stats: Arc<Stats>, coalesce: bool) -> Conn {
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let task = tokio::spawn(run(ws, wire, rx, stats, coalesce));
    Conn { tx, task }
}

async fn run(mut ws: Ws, wire: Wire, mut rx: mpsc::Receiver<String>, stats: Arc<Stats>, coalesce: bool) {
    loop {
        tokio::select! {
            biased;
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => match wire.classify(t.as_str()) {
                    Incoming::Delivery => stats.on_delivery(t.as_str()),
                    Incoming::Ack => { stats.acks.fetch_add(1, Relaxed); }
                    Incoming::Error => stats.on_error(t.as_str()),
                    Incoming::Ping => {
                        if ws.send(Message::text("3")).await.is_err() {
                            break;
                        }
                    }
                    Incoming::Other => {}
                },
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    if !stats.is_stopping() {
                        stats.disconnects.fetch_add(1, Relaxed);
                    }
                    break;
                }
                Some(Ok(_)) => {}
            },
            out = rx.recv() => {
                let Some(frame) = out else { break };
                // Bursty: write everything queued, then flush once. Otherwise one write per frame.
                let mut ok = ws.feed(Message::text(frame)).await.is_ok();
                while ok && coalesce {
                    match rx.try_recv() {
                        Ok(f) => ok = ws.feed(Message::text(f)).await.is_ok(),
                        Err(_) => break,
                    }
                }
                if !ok || ws.flush().await.is_err() {
                    if !stats.is_stopping() {
                        stats.disconnects.fetch_add(1, Relaxed);
                    }
                    break;
                }
            }
        }
    }
}
