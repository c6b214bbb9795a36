//! The test harness: in-process nodes ([`TestNode`]), node processes ([`BinaryNode`]), a WebSocket
//! [`Client`] speaking the protocol of `docs/protocol.md`, and a tiny HTTP GET.
//!
//! Everything waits with a timeout ([`TIMEOUT`]) so a broken server fails a test instead of
//! hanging it.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use confab::config::Config;
use confab::server::RunningNode;

/// The secret every test node signs tokens with.
pub const SECRET: &str = "integration-test-secret-0123456789";

/// How long a test waits for any one reply or event.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Settings that turn every rate limit off, for tests that stream requests as fast as they can
/// (durability, ordering) rather than as people do.
pub const NO_RATE_LIMITS: &[(&str, &str)] = &[
    ("CONFAB__LIMITS__REQUESTS_PER_CONN_PER_SEC", "0"),
    ("CONFAB__LIMITS__SENDS_PER_CONN_PER_SEC", "0"),
    ("CONFAB__LIMITS__SENDS_PER_USER_PER_SEC", "0"),
    ("CONFAB__LIMITS__GROUP_CREATES_PER_USER_PER_HOUR", "0"),
    ("CONFAB__LIMITS__GROUP_ADDS_PER_USER_PER_HOUR", "0"),
    ("CONFAB__LIMITS__ASKS_PER_USER_PER_HOUR", "0"),
    ("CONFAB__LIMITS__CONNECTIONS_PER_IP_PER_SEC", "0"),
    ("CONFAB__LIMITS__MAX_CONNECTIONS_PER_IP", "0"),
];

/// Skips a test whose service or tool is missing: says so on stderr, or panics when services are
/// required (`CONFAB_REQUIRE_SERVICES=1`, as `scripts/test` sets).
pub fn skip_without(what: &str) {
    if std::env::var("CONFAB_REQUIRE_SERVICES").as_deref() == Ok("1") {
        panic!("{what} but CONFAB_REQUIRE_SERVICES=1");
    }
    eprintln!("skipped: {what}");
}

/// The address of a service the environment variable `var` names, or `None` (after
/// [`skip_without`]) when it is unset or empty.
pub fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            skip_without(&format!("{var} is not set"));
            None
        }
    }
}

/// A valid token for `user` on `device` (one hour).
pub fn token(user: &str, device: &str) -> String {
    confab::auth::mint(SECRET, user, device, 3600).unwrap()
}

/// A text body.
pub fn text(s: &str) -> Value {
    json!({"type": "text", "text": s})
}

/// The one-to-one conversation id of two users, as the server derives it.
pub fn direct_id(a: &str, b: &str) -> String {
    confab_actors::model::direct_conv_id(a, b)
}

/// The `seq`s of a `messages` array (a history page), in order.
pub fn seqs(messages: &Value) -> Vec<u64> {
    messages.as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect()
}

/// The `(user_id, role)` pairs of a group's member list (a `members` answer), in order.
pub fn roles(answer: &Value) -> Vec<(&str, &str)> {
    answer["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user_id"].as_str().unwrap(), m["role"].as_str().unwrap()))
        .collect()
}

fn env_pairs(dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("CONFAB__STORAGE__PATH".to_string(), dir.display().to_string()),
        ("CONFAB__SERVER__BIND".to_string(), "127.0.0.1:0".to_string()),
        ("CONFAB__AUTH__SECRET".to_string(), SECRET.to_string()),
        ("CONFAB__SERVER__WORKERS".to_string(), "1".to_string()),
        ("CONFAB__LOG__LEVEL".to_string(), "warn".to_string()),
    ];
    // `CONFAB_TEST_BACKEND=mongodb` runs the same WebSocket tests on MongoDB (scripts/test does).
    // The database name derives from the data directory, so a restarted node finds its data.
    if std::env::var("CONFAB_TEST_BACKEND").as_deref() == Ok("mongodb") {
        use std::hash::{Hash, Hasher};
        let uri = std::env::var("CONFAB_TEST_MONGODB_URI")
            .expect("CONFAB_TEST_BACKEND=mongodb needs CONFAB_TEST_MONGODB_URI");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        dir.hash(&mut h);
        env.push(("CONFAB__STORAGE__BACKEND".into(), "mongodb".into()));
        env.push(("CONFAB__STORAGE__MONGODB__URI".into(), uri));
        env.push(("CONFAB__STORAGE__MONGODB__DATABASE".into(), format!("confab_ws_{:x}", h.finish())));
    }
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// A node running in-process on 127.0.0.1:0 with a fresh store.
pub struct TestNode {
    pub addr: SocketAddr,
    /// Stopped when dropped, before the store's directory goes.
    _node: RunningNode,
    /// Kept alive as long as the node: the store lives in it.
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub fn start() -> TestNode {
        Self::with(&[])
    }

    /// Starts a node with extra `CONFAB__…` overrides.
    pub fn with(extra: &[(&str, &str)]) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config::load_with_env(None, env_pairs(dir.path(), extra)).unwrap();
        let node = RunningNode::start(cfg).unwrap();
        TestNode { addr: node.addr, _node: node, _dir: dir }
    }

    /// Connects `user` on `device`.
    pub async fn connect(&self, user: &str, device: &str) -> Client {
        Client::connect(self.addr, user, device).await
    }

    /// Connects each of `devices`, written `user/device`, one after the other.
    pub async fn connect_each<const N: usize>(&self, devices: [&str; N]) -> [Client; N] {
        Client::connect_each(devices.map(|d| (self.addr, d))).await
    }

    /// `GET path`: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    /// The value of an unlabelled metric.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(self.addr, name).await
    }
}

/// The value of an unlabelled metric of the node at `addr`.
pub async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

/// A minimal HTTP/1.1 GET (no client crate): (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, body)
    };
    tokio::time::timeout(TIMEOUT, fut).await.expect("HTTP GET timed out")
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// A refused WebSocket upgrade: the HTTP status and the JSON body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

/// How a client presents its token.
pub enum Auth<'a> {
    None,
    Bearer(&'a str),
    Query(&'a str),
}

type Ws = WebSocketStream<TcpStream>;

/// A WebSocket client. Replies are matched to requests by id; events seen meanwhile are buffered
/// in arrival order. Every text frame received is also kept in `log`, in arrival order.
pub struct Client {
    ws: Ws,
    pub user: String,
    pub device: String,
    next_id: u64,
    events: VecDeque<Value>,
    replies: HashMap<String, Value>,
    /// Every text frame received, parsed, in arrival order.
    pub log: Vec<Value>,
    /// The close frame's code, once the server closed the connection (0 when it sent none).
    pub closed: Option<u16>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, user: &str, device: &str) -> Client {
        let t = token(user, device);
        let mut c = Self::try_connect(addr, Auth::Bearer(&t), None).await.unwrap();
        c.user = user.into();
        c.device = device.into();
        c
    }

    /// Connects each `(node address, "user/device")`, one after the other.
    pub async fn connect_each<const N: usize>(devices: [(SocketAddr, &str); N]) -> [Client; N] {
        let mut clients = Vec::with_capacity(N);
        for (addr, d) in devices {
            let (user, device) = d.split_once('/').unwrap_or_else(|| panic!("{d} is not user/device"));
            clients.push(Client::connect(addr, user, device).await);
        }
        clients.try_into().unwrap_or_else(|_| unreachable!("one client per device"))
    }

    /// Connects, or returns the refusal. `recv_buffer` shrinks the socket's receive buffer (for
    /// slow-consumer tests).
    pub async fn try_connect(addr: SocketAddr, auth: Auth<'_>, recv_buffer: Option<u32>) -> Result<Client, Refused> {
        let url = match auth {
            Auth::Query(t) => format!("ws://{addr}/ws?token={t}"),
            _ => format!("ws://{addr}/ws"),
        };
        let mut req = url.into_client_request().unwrap();
        if let Auth::Bearer(t) = auth {
            req.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
        }
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(n) = recv_buffer {
            socket.set_recv_buffer_size(n).unwrap();
        }
        let stream = socket.connect(addr).await.unwrap();
        // Large enough for the biggest frames tests provoke.
        let config = WebSocketConfig::default().max_message_size(Some(64 << 20)).max_frame_size(Some(64 << 20));
        let fut = tokio_tungstenite::client_async_with_config(req, stream, Some(config));
        match tokio::time::timeout(TIMEOUT, fut).await.expect("WebSocket handshake timed out") {
            Ok((ws, _)) => Ok(Client {
                ws,
                user: String::new(),
                device: String::new(),
                next_id: 1,
                events: VecDeque::new(),
                replies: HashMap::new(),
                log: Vec::new(),
                closed: None,
            }),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_deref().map(|b| serde_json::from_slice(b).unwrap()).unwrap_or(Value::Null);
                Err(Refused { status, body })
            }
            Err(e) => panic!("WebSocket connect failed: {e}"),
        }
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).await.unwrap();
    }

    /// Sends several raw text frames with one flush (so they arrive together).
    pub async fn send_batch(&mut self, frames: &[String]) {
        for f in frames {
            self.ws.feed(Message::text(f.as_str())).await.unwrap();
        }
        self.ws.flush().await.unwrap();
    }

    /// Sends `n` ping frames with `payload`, with one flush.
    pub async fn send_pings(&mut self, n: usize, payload: &[u8]) {
        for _ in 0..n {
            self.ws.feed(Message::Ping(payload.to_vec().into())).await.unwrap();
        }
        self.ws.flush().await.unwrap();
    }

    /// Sends a raw binary frame.
    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.ws.send(Message::binary(b)).await.unwrap();
    }

    /// Sends a request without waiting; returns the id key to wait on with [`Client::reply`].
    pub async fn send_req(&mut self, op: &str, data: Value) -> String {
        let id = format!("r{}", self.next_id);
        self.next_id += 1;
        let frame =
            if data.is_null() { json!({"id": id, "op": op}) } else { json!({"id": id, "op": op, "data": data}) };
        self.send_text(&frame.to_string()).await;
        serde_json::to_string(&Value::String(id)).unwrap()
    }

    /// Reads one frame (waiting at most until `deadline`). Returns false on timeout or close.
    async fn read_one(&mut self, deadline: Instant) -> bool {
        if self.closed.is_some() {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = match tokio::time::timeout(left, self.ws.next()).await {
            Err(_) => return false,
            Ok(None) => {
                self.closed.get_or_insert(0);
                return false;
            }
            Ok(Some(Err(_))) => {
                self.closed.get_or_insert(0);
                return false;
            }
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            Message::Text(t) => {
                let v: Value =
                    serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("server sent non-JSON {t}: {e}"));
                self.log.push(v.clone());
                if v.get("event").is_some() {
                    self.events.push_back(v);
                } else {
                    let key = serde_json::to_string(&v["id"]).unwrap();
                    assert!(self.replies.insert(key.clone(), v).is_none(), "two replies with id {key}");
                }
            }
            Message::Close(f) => {
                self.closed = Some(f.map(|f| u16::from(f.code)).unwrap_or(0));
                return false;
            }
            Message::Binary(b) => panic!("server sent a binary frame of {} bytes", b.len()),
            _ => {}
        }
        true
    }

    /// Waits for the reply whose id serialises to `key` (e.g. `"\"r3\""` or `null`).
    pub async fn reply(&mut self, key: &str) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(v) = self.replies.remove(key) {
                return v;
            }
            if !self.read_one(deadline).await {
                panic!("{}/{}: no reply with id {key} (closed: {:?})", self.user, self.device, self.closed);
            }
        }
    }

    /// Like [`Client::send_req`], but returns `None` instead of panicking when the connection is gone.
    pub async fn try_send_req(&mut self, op: &str, data: Value) -> Option<String> {
        let id = format!("r{}", self.next_id);
        self.next_id += 1;
        let frame = json!({"id": id, "op": op, "data": data});
        self.ws.send(Message::text(frame.to_string())).await.ok()?;
        Some(serde_json::to_string(&Value::String(id)).unwrap())
    }

    /// Like [`Client::reply`], but returns `None` when the connection ends or `timeout` passes.
    pub async fn try_reply(&mut self, key: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.replies.remove(key) {
                return Some(v);
            }
            if !self.read_one(deadline).await {
                return None;
            }
        }
    }

    /// Sends a request and returns the whole reply frame.
    pub async fn request(&mut self, op: &str, data: Value) -> Value {
        let key = self.send_req(op, data).await;
        self.reply(&key).await
    }

    /// Sends a request that must succeed; returns its `result`.
    pub async fn expect_ok(&mut self, op: &str, data: Value) -> Value {
        let r = self.request(op, data.clone()).await;
        assert!(r.get("error").is_none(), "{op} {data} failed: {r}");
        r["result"].clone()
    }

    /// Sends a request that must fail with `code`; returns its `error`.
    pub async fn expect_err(&mut self, op: &str, data: Value, code: &str) -> Value {
        let r = self.request(op, data.clone()).await;
        assert_eq!(r["error"]["code"], code, "{op} {data}: expected {code}, got {r}");
        assert!(r.get("result").is_none());
        r["error"].clone()
    }

    /// Asserts that a refused send left its `client_msg_id` unused: sent now (with `body`), it
    /// stores message `seq`.
    pub async fn assert_key_unused(&mut self, target: Value, cmid: &str, body: Value, seq: u64) {
        let m = self.send_msg(target, cmid, body).await;
        assert_eq!(m["seq"], seq, "{cmid} was consumed by a refused send: {m}");
    }

    /// Sends a text message; returns the stored message from the ack.
    pub async fn send_msg(&mut self, target: Value, cmid: &str, body: Value) -> Value {
        let mut data = target;
        data["client_msg_id"] = json!(cmid);
        data["body"] = body;
        self.expect_ok("send", data).await["message"].clone()
    }

    /// The next event named `name` (its `data`), from the buffer or the wire. Other events stay
    /// buffered in order.
    pub async fn next_event(&mut self, name: &str) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(i) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(i).unwrap()["data"].clone();
            }
            if !self.read_one(deadline).await {
                panic!(
                    "{}/{}: no {name} event (buffered: {:?}, closed: {:?})",
                    self.user, self.device, self.events, self.closed
                );
            }
        }
    }

    /// Asserts that no event is buffered or arrives within `ms`.
    pub async fn no_event_within(&mut self, ms: u64) {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while self.events.is_empty() && self.read_one(deadline).await {}
        assert!(self.events.is_empty(), "{}/{}: unexpected events {:?}", self.user, self.device, self.events);
    }

    /// Reads frames for `ms` and returns every event buffered so far (full frames), clearing them.
    pub async fn drain_events(&mut self, ms: u64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_millis(ms);
        while self.read_one(deadline).await {}
        self.events.drain(..).collect()
    }

    /// Waits until the server closes the connection; returns the close code (0 when none was
    /// given, or the connection just ended). Frames read meanwhile are buffered as usual.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = Instant::now() + timeout;
        while self.closed.is_none() && self.read_one(deadline).await {}
        self.closed
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// A `confab` process (the real binary), for restart and crash tests.
pub struct BinaryNode {
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl BinaryNode {
    /// Starts `confab serve` on 127.0.0.1:0 with its store in `dir` and learns its address from
    /// the `confab listening on ADDR` line. Its log goes to `<dir>.log`.
    pub async fn start(dir: &Path, extra: &[(&str, &str)]) -> BinaryNode {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path(dir)).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_confab"));
        cmd.arg("serve").env_clear().envs(env_pairs(dir, extra));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log).kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(a) = line.strip_prefix("confab listening on ") {
                    return a.trim().parse::<SocketAddr>().unwrap();
                }
            }
            panic!("confab exited before listening; see {}", log_path(dir).display());
        })
        .await
        .expect("confab did not start listening in time");
        // Keep reading stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        BinaryNode { addr, child }
    }

    pub async fn connect(&self, user: &str, device: &str) -> Client {
        Client::connect(self.addr, user, device).await
    }

    /// The process id (for `prlimit`, signals).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// The log (stderr) so far.
    pub fn log(dir: &Path) -> String {
        std::fs::read_to_string(log_path(dir)).unwrap_or_default()
    }

    /// SIGKILL: no shutdown of any kind.
    pub async fn kill_9(mut self) {
        self.child.kill().await.unwrap();
    }

    /// SIGTERM, then waits for the process to exit. Close clients first: open WebSocket
    /// connections hold a graceful shutdown for `server.shutdown_timeout_secs`.
    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap();
        let st = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
        assert!(st.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("confab did not stop")
            .unwrap();
        assert!(status.success() || status.code().is_none(), "confab exited with {status}");
    }
}

fn log_path(dir: &Path) -> PathBuf {
    dir.with_extension("log")
}

/// One HTTP/1.1 request, as the test receivers (webhooks, push relay, fake FCM) read it.
pub struct Http1Request {
    pub method: String,
    pub path: String,
    /// Names lower-cased.
    pub headers: std::collections::HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads the next request of a keep-alive connection (`buf` keeps what was read past it); `None`
/// when the client is gone.
pub async fn read_http1(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Http1Request> {
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_string();
    let headers: std::collections::HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    while buf.len() < head_end + 4 + len {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end + 4..head_end + 4 + len].to_vec();
    buf.drain(..head_end + 4 + len);
    let mut parts = request_line.split(' ');
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    Some(Http1Request { method, path, headers, body })
}
