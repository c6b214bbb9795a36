//! `confab-relay`: the floor for any WebSocket server on confab's stack. A bare actix-ws relay
//! with no authentication, no storage, no ordering and no acknowledgements; it only forwards.
//!
//! Protocol:
//! - connect with `GET /ws?user=<id>&room=<name>` (both optional; `room` may repeat);
//! - a text frame `r:<room>\n<payload>` is forwarded, verbatim and whole, to every other
//!   connection in the room; `u:<user>\n<payload>` to every other connection of that user;
//!   anything else is ignored. Pings are answered.
//!
//! Like confab, each connection has a bounded outgoing queue ([`QUEUE`] frames) drained by its
//! own task, and a frame fanned out to many connections is encoded once (each queue gets a
//! reference-counted clone). A full queue drops the frame for that connection only.
//!
//! Prints `relay listening on ADDR` on stdout once it accepts connections (`--bind` with port 0
//! picks a free port).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::RwLock;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_ws::AggregatedMessage;
use bytestring::ByteString;
use clap::Parser;
use tokio::sync::mpsc;

/// Frames one connection may have waiting to be written.
const QUEUE: usize = 4096;
/// Largest frame accepted.
const MAX_FRAME: usize = 1 << 20;

/// A bare actix-ws relay: forwards frames to a room or a user (the benchmarks' baseline).
#[derive(Parser)]
#[command(name = "confab-relay", version, about, long_about = None)]
struct Cli {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8090")]
    bind: String,
    /// Worker threads; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

type Peers = Vec<(u64, mpsc::Sender<ByteString>)>;

/// Who is connected, by room and by user; shared by every worker.
#[derive(Default)]
struct Hub {
    rooms: RwLock<HashMap<String, Peers>>,
    users: RwLock<HashMap<String, Peers>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
}

fn join(map: &RwLock<HashMap<String, Peers>>, key: &str, id: u64, tx: &mpsc::Sender<ByteString>) {
    map.write().unwrap_or_else(|p| p.into_inner()).entry(key.to_string()).or_default().push((id, tx.clone()));
}

fn leave(map: &RwLock<HashMap<String, Peers>>, key: &str, id: u64) {
    let mut m = map.write().unwrap_or_else(|p| p.into_inner());
    if let Some(list) = m.get_mut(key) {
        list.retain(|(i, _)| *i != id);
        if list.is_empty() {
            m.remove(key);
        }
    }
}

impl Hub {
    /// Forwards `frame` to its destination, except connection `from`.
    fn forward(&self, from: u64, frame: ByteString) {
        let (map, rest) = if let Some(r) = frame.strip_prefix("r:") {
            (&self.rooms, r)
        } else if let Some(u) = frame.strip_prefix("u:") {
            (&self.users, u)
        } else {
            return;
        };
        let Some(key) = rest.split('\n').next() else { return };
        let map = map.read().unwrap_or_else(|p| p.into_inner());
        let Some(peers) = map.get(key) else { return };
        for (id, tx) in peers {
            if *id != from && tx.try_send(frame.clone()).is_err() {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

fn query(q: &str) -> (Option<String>, Vec<String>) {
    let mut user = None;
    let mut rooms = Vec::new();
    for kv in q.split('&') {
        match kv.split_once('=') {
            Some(("user", v)) if !v.is_empty() => user = Some(v.to_string()),
            Some(("room", v)) if !v.is_empty() => rooms.push(v.to_string()),
            _ => {}
        }
    }
    (user, rooms)
}

async fn ws(req: HttpRequest, body: web::Payload, hub: web::Data<Hub>) -> Result<HttpResponse, actix_web::Error> {
    let (user, rooms) = query(req.query_string());
    let (response, mut session, stream) = actix_ws::handle(&req, body)?;
    let mut stream = stream.max_frame_size(MAX_FRAME).aggregate_continuations().max_continuation_size(MAX_FRAME);
    let hub = hub.into_inner();
    let id = hub.next_id.fetch_add(1, Relaxed);
    let (tx, mut rx) = mpsc::channel::<ByteString>(QUEUE);
    if let Some(u) = &user {
        join(&hub.users, u, id, &tx);
    }
    for r in &rooms {
        join(&hub.rooms, r, id, &tx);
    }
    drop(tx);
    actix_web::rt::spawn(async move {
        loop {
            tokio::select! {
                biased;
                out = rx.recv() => match out {
                    Some(frame) => {
                        if session.text(frame).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
                msg = stream.recv() => match msg {
                    Some(Ok(AggregatedMessage::Text(t))) => hub.forward(id, t),
                    Some(Ok(AggregatedMessage::Ping(p))) => {
                        if session.pong(&p).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(AggregatedMessage::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        if let Some(u) = &user {
            leave(&hub.users, u, id);
        }
        for r in &rooms {
            leave(&hub.rooms, r, id);
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = std::net::TcpListener::bind(&cli.bind)?;
    let addr = listener.local_addr()?;
    let workers =
        if cli.workers == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { cli.workers };
    let hub = web::Data::new(Hub::default());
    actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new({
            let hub = hub.clone();
            move || App::new().app_data(hub.clone()).route("/ws", web::get().to(ws))
        })
        .workers(workers)
        // As confab and socket.io (Node's `ws` sets noDelay) do: frames leave when written.
        .tcp_nodelay(true)
        .backlog(4096)
        .listen(listener)?
        .run();
        println!("relay listening on {addr}");
        let _ = std::io::stdout().flush();
        let result = server.await;
        eprintln!("relay: {} frames dropped on full queues", hub.dropped.load(Relaxed));
        result
    })?;
    Ok(())
}
