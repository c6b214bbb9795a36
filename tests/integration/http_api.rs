//! The signed HTTP integration API (`/api/v1`, docs/http-api.md): signing and every refusal,
//! every endpoint, and that writes over HTTP reach WebSocket devices like WebSocket writes do.

use std::net::SocketAddr;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{direct_id, roles, seqs, text, Client, TestNode};

/// The secret of API key `admin`.
pub(crate) const ADMIN_SECRET: &str = "admin-secret-0123456789abcdef";
/// The secret of API key `users`.
pub(crate) const USERS_SECRET: &str = "users-secret-0123456789abcdef";

/// `api.keys` as the environment gives it: `admin` holds every scope, `users` only `users`.
pub(crate) fn keys() -> String {
    json!([
        {"id": "admin", "secret": ADMIN_SECRET, "scopes": ["admin"]},
        {"id": "users", "secret": USERS_SECRET, "scopes": ["users"]},
    ])
    .to_string()
}

/// A node with the API keys of [`keys`] and the `extra` settings.
pub(crate) fn node_with(extra: &[(&str, &str)]) -> TestNode {
    let keys = keys();
    let mut all = vec![("CONFAB__API__KEYS", keys.as_str())];
    all.extend_from_slice(extra);
    TestNode::with(&all)
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The signature as docs/http-api.md defines it, computed independently of the server's code.
pub(crate) fn signature(secret: &str, method: &str, path: &str, ts: &str, nonce: &str, body: &[u8]) -> String {
    let s = format!("{method}\n{path}\n{ts}\n{nonce}\n{}", hex(&Sha256::digest(body)));
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    m.update(s.as_bytes());
    hex(&m.finalize().into_bytes())
}

fn nonce() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("n-{}-{}", now(), N.fetch_add(1, Ordering::Relaxed))
}

/// One request, fully controllable (for the refusal tests).
pub(crate) struct Req {
    method: &'static str,
    path: String,
    body: Vec<u8>,
    key: Option<String>,
    secret: String,
    ts: String,
    nonce: String,
    /// Overrides the computed signature.
    signature: Option<String>,
}

impl Req {
    pub(crate) fn new(method: &'static str, path: &str, body: Option<Value>) -> Req {
        Req {
            method,
            path: path.into(),
            body: body.map(|b| b.to_string().into_bytes()).unwrap_or_default(),
            key: Some("admin".into()),
            secret: ADMIN_SECRET.into(),
            ts: now().to_string(),
            nonce: nonce(),
            signature: None,
        }
    }

    /// Signs with key `id` instead of `admin`.
    pub(crate) fn key(mut self, id: &str, secret: &str) -> Req {
        self.key = Some(id.into());
        self.secret = secret.into();
        self
    }

    pub(crate) async fn send(&self, addr: SocketAddr) -> (u16, Value) {
        let sig = self
            .signature
            .clone()
            .unwrap_or_else(|| signature(&self.secret, self.method, &self.path, &self.ts, &self.nonce, &self.body));
        let client = reqwest::Client::new();
        let method = reqwest::Method::from_bytes(self.method.as_bytes()).unwrap();
        let mut rb = client
            .request(method, format!("http://{addr}{}", self.path))
            .header("X-Confab-Timestamp", &self.ts)
            .header("X-Confab-Nonce", &self.nonce)
            .header("X-Confab-Signature", sig);
        if let Some(k) = &self.key {
            rb = rb.header("X-Confab-Key", k);
        }
        if !self.body.is_empty() {
            rb = rb.header("Content-Type", "application/json").body(self.body.clone());
        }
        let resp = tokio::time::timeout(crate::common::TIMEOUT, rb.send()).await.expect("HTTP timed out").unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let v = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, v)
    }
}

/// A signed request with the admin key that must succeed; returns the JSON.
pub(crate) async fn ok(node: &TestNode, method: &'static str, path: &str, body: Option<Value>) -> Value {
    ok_at(node.addr, method, path, body).await
}

/// [`ok`] to the node at `addr`.
pub(crate) async fn ok_at(addr: SocketAddr, method: &'static str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = Req::new(method, path, body.clone()).send(addr).await;
    assert_eq!(status, 200, "{method} {path} {body:?}: {v}");
    v
}

/// Creates group `id` over the API, owned by `owner` with `members`; returns the answer.
async fn create_group(node: &TestNode, id: &str, name: &str, owner: &str, members: &[&str]) -> Value {
    ok(node, "POST", "/api/v1/groups", Some(json!({"id": id, "name": name, "owner": owner, "members": members}))).await
}

/// A signed request with the admin key that must fail with `code` and `status`.
pub(crate) async fn err(
    node: &TestNode,
    method: &'static str,
    path: &str,
    body: Option<Value>,
    status: u16,
    code: &str,
) -> Value {
    refused(Req::new(method, path, body), node, status, code).await
}

async fn refused(req: Req, node: &TestNode, status: u16, code: &str) -> Value {
    let (s, v) = req.send(node.addr).await;
    assert_eq!((s, v["error"]["code"].as_str()), (status, Some(code)), "{} {}: {v}", req.method, req.path);
    assert!(v["error"]["message"].is_string(), "{v}");
    v["error"].clone()
}

#[tokio::test]
async fn without_keys_everything_is_unauthorized() {
    let node = TestNode::start();
    refused(Req::new("GET", "/api/v1/groups/team", None), &node, 401, "unauthorized").await;
    refused(Req::new("POST", "/api/v1/messages", Some(json!({}))), &node, 401, "unauthorized").await;
    refused(Req::new("GET", "/api/v1/nothing/here", None), &node, 401, "unauthorized").await;
    // The rest of the node is unaffected.
    assert_eq!(node.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn refusals_have_their_codes() {
    let node = node_with(&[]);
    let path = "/api/v1/users/alice/devices";
    // Unknown or missing key.
    refused(Req::new("GET", path, None).key("nobody", ADMIN_SECRET), &node, 401, "unauthorized").await;
    let mut r = Req::new("GET", path, None);
    r.key = None;
    refused(r, &node, 401, "unauthorized").await;
    // A signature made with another secret, a malformed one, a missing one.
    refused(Req::new("GET", path, None).key("admin", USERS_SECRET), &node, 401, "signature_invalid").await;
    let mut r = Req::new("GET", path, None);
    r.signature = Some("zz".into());
    refused(r, &node, 401, "signature_invalid").await;
    let mut r = Req::new("GET", path, None);
    r.signature = Some(String::new());
    refused(r, &node, 401, "signature_invalid").await;
    // Signed for another path, method or body.
    let mut r = Req::new("GET", path, None);
    r.signature = Some(signature(ADMIN_SECRET, "GET", "/api/v1/users/bob/devices", &r.ts, &r.nonce, b""));
    refused(r, &node, 401, "signature_invalid").await;
    let mut r = Req::new("GET", path, None);
    r.signature = Some(signature(ADMIN_SECRET, "POST", path, &r.ts, &r.nonce, b""));
    refused(r, &node, 401, "signature_invalid").await;
    let mut r = Req::new("POST", "/api/v1/users/alice/tokens", Some(json!({"device": "phone"})));
    r.signature = Some(signature(ADMIN_SECRET, "POST", &r.path, &r.ts, &r.nonce, br#"{"device":"laptop"}"#));
    refused(r, &node, 401, "signature_invalid").await;
    // The query string is signed too.
    let mut r = Req::new("GET", "/api/v1/users/alice/conversations?limit=5", None);
    r.signature = Some(signature(ADMIN_SECRET, "GET", "/api/v1/users/alice/conversations", &r.ts, &r.nonce, b""));
    refused(r, &node, 401, "signature_invalid").await;
    // Stale, future and malformed timestamps (correctly signed).
    for ts in [now() - 61, now() + 61] {
        let mut r = Req::new("GET", path, None);
        r.ts = ts.to_string();
        refused(r, &node, 401, "timestamp_out_of_range").await;
    }
    let mut r = Req::new("GET", path, None);
    r.ts = "yesterday".into();
    refused(r, &node, 401, "timestamp_out_of_range").await;
    // Slightly off clocks are fine.
    let mut r = Req::new("GET", path, None);
    r.ts = (now() - 30).to_string();
    assert_eq!(r.send(node.addr).await.0, 200);
    // A replayed request; the same nonce under another key is another pair.
    let r = Req::new("GET", path, None);
    assert_eq!(r.send(node.addr).await.0, 200);
    refused(Req { ..r }, &node, 401, "nonce_replayed").await;
    let mut r2 = Req::new("GET", path, None).key("users", USERS_SECRET);
    r2.nonce = "shared-nonce".into();
    assert_eq!(r2.send(node.addr).await.0, 200);
    let mut r3 = Req::new("GET", path, None);
    r3.nonce = "shared-nonce".into();
    assert_eq!(r3.send(node.addr).await.0, 200);
    // A bad signature does not use up the nonce.
    let mut bad = Req::new("GET", path, None);
    bad.signature = Some("00".repeat(32));
    refused(bad, &node, 401, "signature_invalid").await;
    // Missing scope: the `users` key may mint tokens and list devices, nothing else.
    let users = |m: &'static str, p: &str, b: Option<Value>| Req::new(m, p, b).key("users", USERS_SECRET);
    assert_eq!(users("GET", path, None).send(node.addr).await.0, 200);
    assert_eq!(users("POST", "/api/v1/users/alice/tokens", Some(json!({"device": "x"}))).send(node.addr).await.0, 200);
    let send = json!({"from": "alice", "to": "bob", "client_msg_id": "s1", "body": text("hi")});
    refused(users("POST", "/api/v1/messages", Some(send)), &node, 403, "scope_missing").await;
    refused(users("GET", "/api/v1/groups/team", None), &node, 403, "scope_missing").await;
    refused(users("GET", "/api/v1/users/alice/unread", None), &node, 403, "scope_missing").await;
    refused(users("GET", "/api/v1/stats", None), &node, 403, "scope_missing").await;
    // Unknown resources and methods, after a valid signature.
    err(&node, "GET", "/api/v1/nothing/here", None, 404, "not_found").await;
    err(&node, "DELETE", "/api/v1/messages", None, 404, "not_found").await;
    err(&node, "GET", "/api/v1/groups/nope", None, 404, "not_found").await;
    refused(Req::new("GET", "/api/v1/nothing/here", None).key("admin", USERS_SECRET), &node, 401, "signature_invalid")
        .await;
    // Invalid bodies.
    let mut r = Req::new("POST", "/api/v1/messages", None);
    r.body = b"{not json".to_vec();
    refused(r, &node, 400, "invalid_request").await;
    err(
        &node,
        "POST",
        "/api/v1/messages",
        Some(json!({"to": "bob", "client_msg_id": "m", "body": text("x")})),
        400,
        "invalid_request",
    )
    .await;
    let bad_body = json!({"from": "alice", "to": "bob", "client_msg_id": "m1", "body": {"type": "text"}});
    err(&node, "POST", "/api/v1/messages", Some(bad_body), 400, "invalid_body").await;
    let unknown_type = json!({"from": "alice", "to": "bob", "client_msg_id": "m1", "body": {"type": "hologram"}});
    err(&node, "POST", "/api/v1/messages", Some(unknown_type), 400, "invalid_request").await;
    let both = json!({"from": "alice", "to": "bob", "conv_id": "g_x", "client_msg_id": "m1", "body": text("x")});
    err(&node, "POST", "/api/v1/messages", Some(both), 400, "invalid_request").await;
    err(&node, "POST", "/api/v1/users/bad%20id/tokens", Some(json!({"device": "x"})), 400, "invalid_request").await;
    err(&node, "POST", "/api/v1/users/alice/tokens", Some(json!({"device": "x", "extra": 1})), 400, "invalid_request")
        .await;
    err(
        &node,
        "POST",
        "/api/v1/users/alice/tokens",
        Some(json!({"device": "x", "ttl_secs": 0})),
        400,
        "invalid_request",
    )
    .await;
    err(&node, "GET", "/api/v1/users/alice/conversations?limit=0", None, 400, "invalid_request").await;
    err(&node, "GET", "/api/v1/users/alice/conversations?limit=abc", None, 400, "invalid_request").await;
    err(&node, "POST", "/api/v1/groups", Some(json!({"name": "", "owner": "alice"})), 400, "invalid_request").await;
    // Oversized bodies, refused before the signature is checked.
    let big = json!({"from": "alice", "to": "bob", "client_msg_id": "big", "body": text(&"x".repeat(300 * 1024))});
    err(&node, "POST", "/api/v1/messages", Some(big), 413, "body_too_large").await;
    // Nothing of all that was stored.
    let l = ok(&node, "GET", "/api/v1/users/alice/conversations", None).await;
    assert_eq!(l["conversations"], json!([]));
}

/// Endpoints without query parameters refuse any query string, endpoints with parameters refuse
/// unknown ones, and only a correctly signed request (with the scope) learns it.
#[tokio::test]
async fn query_strings_are_refused_unless_the_endpoint_takes_them() {
    let node = node_with(&[]);
    let send = json!({"from": "alice", "to": "bob", "client_msg_id": "q1", "body": text("hi")});
    let ab = direct_id("alice", "bob");
    let no_query: Vec<(&'static str, String, Option<Value>)> = vec![
        ("POST", "/api/v1/users?id=alice".into(), Some(json!({"id": "alice", "nickname": "A"}))),
        ("GET", "/api/v1/users/alice?fields=all".into(), None),
        ("POST", "/api/v1/users/alice/disable?x=1".into(), None),
        ("POST", "/api/v1/users/alice/enable?x=1".into(), None),
        ("POST", "/api/v1/users/alice/tokens/revoke?x=1".into(), None),
        ("POST", "/api/v1/users/alice/tokens?ttl_secs=60".into(), Some(json!({"device": "web"}))),
        ("GET", "/api/v1/users/alice/devices?all".into(), None),
        ("POST", "/api/v1/messages?dry_run=true".into(), Some(send.clone())),
        ("POST", format!("/api/v1/conversations/{ab}/messages/1/recall?by=alice"), None),
        ("GET", "/api/v1/users/alice/unread?since=0".into(), None),
        ("POST", "/api/v1/groups?x=1".into(), Some(json!({"id": "q", "name": "Q", "owner": "alice"}))),
        ("GET", "/api/v1/groups/q?x=1".into(), None),
        ("PATCH", "/api/v1/groups/q?x=1".into(), Some(json!({"name": "Q2"}))),
        ("POST", "/api/v1/groups/q/dismiss?x=1".into(), None),
        ("POST", "/api/v1/groups/q/members?x=1".into(), Some(json!({"members": ["carol"]}))),
        ("PUT", "/api/v1/groups/q/members/bob/role?x=1".into(), Some(json!({"role": "admin"}))),
        ("GET", "/api/v1/webhooks/events/1?x=1".into(), None),
        ("POST", "/api/v1/webhooks/replay?only_failed=true".into(), Some(json!({}))),
    ];
    for (m, p, b) in no_query {
        let e = err(&node, m, &p, b, 400, "invalid_request").await;
        assert!(e["message"].as_str().unwrap().contains("no query parameters"), "{m} {p}: {e}");
    }
    // Unknown parameters next to known ones.
    for p in [
        "/api/v1/users/alice/conversations?limit=5&offset=2".to_string(),
        format!("/api/v1/conversations/{ab}/messages?befor=3"),
        "/api/v1/webhooks/deliveries?status=failed".to_string(),
        "/api/v1/groups/q/members?limit=5&offset=2".to_string(),
    ] {
        err(&node, "GET", &p, None, 400, "invalid_request").await;
    }
    err(&node, "DELETE", "/api/v1/groups/q/members/bob?by=alice&force=1", None, 400, "invalid_request").await;
    // Refused before anything happened: no user, message or group was made.
    err(&node, "GET", "/api/v1/users/alice", None, 404, "not_found").await;
    err(&node, "GET", "/api/v1/groups/q", None, 404, "not_found").await;
    assert_eq!(ok(&node, "GET", "/api/v1/users/bob/conversations", None).await["conversations"], json!([]));
    // Signature and scope come first; an unknown resource stays unknown whatever its query.
    let p = "/api/v1/users/alice/unread?x=1";
    let mut r = Req::new("GET", p, None);
    r.key = None;
    refused(r, &node, 401, "unauthorized").await;
    refused(Req::new("GET", p, None).key("admin", USERS_SECRET), &node, 401, "signature_invalid").await;
    refused(Req::new("GET", p, None).key("users", USERS_SECRET), &node, 403, "scope_missing").await;
    err(&node, "GET", "/api/v1/nothing/here?x=1", None, 404, "not_found").await;
}

/// Seqs, cursors and event ids above 2^53-1 are refused wherever the API takes them (query, path,
/// body); 2^53-1 itself is accepted.
#[tokio::test]
async fn seqs_and_cursors_above_2_pow_53_are_refused() {
    const MAX: u64 = (1 << 53) - 1;
    let node = node_with(&[]);
    let send = json!({"from": "alice", "to": "bob", "client_msg_id": "c1", "body": text("hi")});
    ok(&node, "POST", "/api/v1/messages", Some(send)).await;
    let ab = direct_id("alice", "bob");
    for n in [MAX + 1, u64::MAX] {
        for p in [
            format!("/api/v1/users/alice/conversations?since={n}"),
            format!("/api/v1/conversations/{ab}/messages?before={n}"),
            format!("/api/v1/conversations/{ab}/messages?after={n}&as_user=alice"),
            format!("/api/v1/webhooks/deliveries?after_id={n}"),
            format!("/api/v1/webhooks/events/{n}"),
        ] {
            err(&node, "GET", &p, None, 400, "invalid_request").await;
        }
        err(&node, "POST", &format!("/api/v1/conversations/{ab}/messages/{n}/recall"), None, 400, "invalid_request")
            .await;
        let reply = json!({"from": "bob", "conv_id": ab, "client_msg_id": "r", "body": text("?"), "reply_to": n});
        err(&node, "POST", "/api/v1/messages", Some(reply), 400, "invalid_request").await;
        for b in [json!({"from_id": n}), json!({"to_id": n})] {
            err(&node, "POST", "/api/v1/webhooks/replay", Some(b), 400, "invalid_request").await;
        }
    }
    // The largest safe integer is an ordinary (if empty) cursor.
    let l = ok(&node, "GET", &format!("/api/v1/users/alice/conversations?since={MAX}"), None).await;
    assert_eq!(l["conversations"], json!([]));
    let h = ok(&node, "GET", &format!("/api/v1/conversations/{ab}/messages?after={MAX}"), None).await;
    assert_eq!(h["messages"], json!([]));
    ok(&node, "GET", &format!("/api/v1/webhooks/deliveries?after_id={MAX}"), None).await;
    err(&node, "GET", &format!("/api/v1/webhooks/events/{MAX}"), None, 404, "not_found").await;
    err(&node, "POST", &format!("/api/v1/conversations/{ab}/messages/{MAX}/recall"), None, 404, "not_found").await;
    let reply = json!({"from": "bob", "conv_id": ab, "client_msg_id": "r", "body": text("?"), "reply_to": MAX});
    err(&node, "POST", "/api/v1/messages", Some(reply), 404, "not_found").await;
    ok(&node, "POST", "/api/v1/webhooks/replay", Some(json!({"from_id": MAX, "to_id": MAX}))).await;
}

#[tokio::test]
async fn tokens_and_devices() {
    let node = node_with(&[]);
    let t = ok(&node, "POST", "/api/v1/users/alice/tokens", Some(json!({"device": "laptop", "ttl_secs": 600}))).await;
    let exp = t["expires_at"].as_u64().unwrap();
    assert!((now() + 598..=now() + 601).contains(&exp), "{t}");
    let claims =
        confab::auth::Tokens::new(crate::common::SECRET, 86400, 30).verify(t["token"].as_str().unwrap()).unwrap();
    assert_eq!((claims.sub.as_str(), claims.dev.as_str(), claims.exp), ("alice", "laptop", exp));
    // The default lifetime is auth.token_ttl_secs.
    let t2 = ok(&node, "POST", "/api/v1/users/alice/tokens", Some(json!({"device": "phone"}))).await;
    assert!(t2["expires_at"].as_u64().unwrap() >= now() + 86_390);

    let d = ok(&node, "GET", "/api/v1/users/alice/devices", None).await;
    assert_eq!(d, json!({"user_id": "alice", "devices": []}));
    // The minted token opens a WebSocket session, which shows up as an online device.
    let mut c =
        Client::try_connect(node.addr, crate::common::Auth::Bearer(t["token"].as_str().unwrap()), None).await.unwrap();
    let mut phone = node.connect("alice", "phone").await;
    c.expect_ok("ping", json!({})).await;
    phone.expect_ok("ping", json!({})).await;
    let d = ok(&node, "GET", "/api/v1/users/alice/devices", None).await;
    let mut names: Vec<&str> = d["devices"].as_array().unwrap().iter().map(|x| x["device"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["laptop", "phone"]);
    assert!(d["devices"][0]["conn_id"].is_u64());
}

#[tokio::test]
async fn messages_sent_over_http_reach_websocket_devices() {
    let node = node_with(&[]);
    let [mut bob, mut bob2, mut alice] = node.connect_each(["bob/phone", "bob/tablet", "alice/phone"]).await;
    let send = json!({"from": "alice", "to": "bob", "client_msg_id": "h1", "body": text("hello from the backend")});
    let r = ok(&node, "POST", "/api/v1/messages", Some(send.clone())).await;
    let ab = direct_id("alice", "bob");
    assert_eq!((r["conv_id"].as_str(), r["seq"].as_u64()), (Some(ab.as_str()), Some(1)));
    let m = &r["message"];
    assert_eq!((m["sender"].as_str(), m["client_msg_id"].as_str()), (Some("alice"), Some("h1")));
    assert_eq!(m["body"], text("hello from the backend"));
    // Every device of both participants gets the event (the API has no connection of its own).
    for c in [&mut bob, &mut bob2, &mut alice] {
        assert_eq!(&c.next_event("message").await, m, "{}/{}", c.user, c.device);
    }
    // Idempotent: the same client_msg_id returns the same message.
    let again = ok(&node, "POST", "/api/v1/messages", Some(send)).await;
    assert_eq!((again["seq"].as_u64(), &again["message"]), (Some(1), m));
    // A reply, and a send into an existing conversation by id.
    let reply = json!({"from": "bob", "conv_id": ab, "client_msg_id": "h2", "body": text("hi"), "reply_to": 1});
    let r2 = ok(&node, "POST", "/api/v1/messages", Some(reply)).await;
    assert_eq!(r2["seq"], 2);
    assert_eq!(r2["message"]["reply_to"]["seq"], 1);
    for c in [&mut bob, &mut bob2, &mut alice] {
        assert_eq!(c.next_event("message").await, r2["message"], "{}/{}", c.user, c.device);
    }
    // The same rules as over WebSocket: outsiders may not post into a conversation.
    let intruder = json!({"from": "mallory", "conv_id": ab, "client_msg_id": "x", "body": text("hi")});
    err(&node, "POST", "/api/v1/messages", Some(intruder), 403, "not_member").await;
    let reply_missing = json!({"from": "bob", "conv_id": ab, "client_msg_id": "h3", "body": text("?"), "reply_to": 99});
    err(&node, "POST", "/api/v1/messages", Some(reply_missing), 404, "not_found").await;

    // A system message to one user: the one-to-one conversation with the system account.
    let sys = json!({"from": null, "to": "bob", "client_msg_id": "welcome-bob", "body": text("Welcome!")});
    let s = ok(&node, "POST", "/api/v1/messages", Some(sys.clone())).await;
    assert_eq!(s["conv_id"], direct_id("system", "bob"));
    assert_eq!((s["seq"].as_u64(), s["message"]["sender"].as_str()), (Some(1), Some("system")));
    assert_eq!(bob.next_event("message").await, s["message"]);
    assert_eq!(bob2.next_event("message").await, s["message"]);
    assert_eq!(ok(&node, "POST", "/api/v1/messages", Some(sys)).await["seq"], 1);
    // `from` must be given (null for the system).
    let no_from = json!({"to": "bob", "client_msg_id": "nf", "body": text("?")});
    err(&node, "POST", "/api/v1/messages", Some(no_from), 400, "invalid_request").await;

    // A system message to a group: sender null, a system body, every member's devices.
    create_group(&node, "team", "Team", "alice", &["bob"]).await;
    for c in [&mut bob, &mut bob2, &mut alice] {
        c.next_event("message").await;
        c.next_event("membership").await;
    }
    let body = json!({"type": "system", "event": "maintenance", "data": {"at": "tonight"}});
    let g = json!({"from": null, "conv_id": "g_team", "client_msg_id": "maint-1", "body": body});
    let s = ok(&node, "POST", "/api/v1/messages", Some(g)).await;
    assert_eq!((s["conv_id"].as_str(), s["seq"].as_u64()), (Some("g_team"), Some(2)));
    assert_eq!((s["message"]["sender"].clone(), s["message"]["body"].clone()), (Value::Null, body.clone()));
    for c in [&mut bob, &mut bob2, &mut alice] {
        assert_eq!(c.next_event("message").await, s["message"]);
    }
    let g_text = json!({"from": null, "conv_id": "g_team", "client_msg_id": "m", "body": text("x")});
    err(&node, "POST", "/api/v1/messages", Some(g_text), 400, "invalid_body").await;
    let g_missing = json!({"from": null, "conv_id": "g_nope", "client_msg_id": "m", "body": body});
    err(&node, "POST", "/api/v1/messages", Some(g_missing), 404, "not_found").await;
    // A user's message to the group.
    let u = json!({"from": "bob", "conv_id": "g_team", "client_msg_id": "b1", "body": text("hey team")});
    assert_eq!(ok(&node, "POST", "/api/v1/messages", Some(u)).await["seq"], 3);
    assert_eq!(alice.next_event("message").await["seq"], 3);
}

#[tokio::test]
async fn history_conversations_and_unread() {
    let node = node_with(&[]);
    let ab = direct_id("alice", "bob");
    for i in 1..=5 {
        let from = if i % 2 == 0 { "alice" } else { "bob" };
        let b = json!({"from": from, "to": if from == "alice" { "bob" } else { "alice" }, "client_msg_id": format!("m{i}"), "body": text(&format!("#{i}"))});
        ok(&node, "POST", "/api/v1/messages", Some(b)).await;
    }
    let c = json!({"from": "carol", "to": "alice", "client_msg_id": "c1", "body": text("from carol")});
    ok(&node, "POST", "/api/v1/messages", Some(c)).await;

    let h = ok(&node, "GET", &format!("/api/v1/conversations/{ab}/messages"), None).await;
    assert_eq!(
        (seqs(&h["messages"]), h["last_seq"].as_u64(), h["has_more"].as_bool()),
        (vec![1, 2, 3, 4, 5], Some(5), Some(false))
    );
    let h = ok(&node, "GET", &format!("/api/v1/conversations/{ab}/messages?before=4&limit=2"), None).await;
    assert_eq!((seqs(&h["messages"]), h["has_more"].as_bool()), (vec![2, 3], Some(true)));
    let h = ok(&node, "GET", &format!("/api/v1/conversations/{ab}/messages?after=3&as_user=alice"), None).await;
    assert_eq!(seqs(&h["messages"]), vec![4, 5]);
    err(&node, "GET", &format!("/api/v1/conversations/{ab}/messages?as_user=carol"), None, 403, "not_member").await;
    err(&node, "GET", &format!("/api/v1/conversations/{ab}/messages?before=2&after=1"), None, 400, "invalid_request")
        .await;
    err(&node, "GET", &format!("/api/v1/conversations/{}/messages", direct_id("x", "y")), None, 404, "not_found").await;
    err(&node, "GET", "/api/v1/conversations/nonsense/messages", None, 400, "invalid_request").await;

    // Alice's list carries unread counts: her own sends move her cursor (to 4), so 1 from bob;
    // 1 from carol.
    let l = ok(&node, "GET", "/api/v1/users/alice/conversations", None).await;
    let items = l["conversations"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let unread = |conv: &str| items.iter().find(|i| i["conv_id"] == conv).unwrap()["unread"].as_u64().unwrap();
    assert_eq!((unread(&ab), unread(&direct_id("alice", "carol"))), (1, 1));
    let page = ok(&node, "GET", "/api/v1/users/alice/conversations?limit=1", None).await;
    assert_eq!((page["conversations"].as_array().unwrap().len(), page["has_more"].as_bool()), (1, Some(true)));
    let next = page["next_since"].as_u64().unwrap();
    let rest = ok(&node, "GET", &format!("/api/v1/users/alice/conversations?since={next}"), None).await;
    assert_eq!((rest["conversations"].as_array().unwrap().len(), rest["has_more"].as_bool()), (1, Some(false)));

    let u = ok(&node, "GET", "/api/v1/users/alice/unread", None).await;
    assert_eq!(u, json!({"user_id": "alice", "unread": 2, "conversations": 2}));
    // Reading over WebSocket moves it.
    let mut alice = node.connect("alice", "phone").await;
    alice.expect_ok("read", json!({"conv_id": ab, "seq": 5})).await;
    let u = ok(&node, "GET", "/api/v1/users/alice/unread", None).await;
    assert_eq!((u["unread"].as_u64(), u["conversations"].as_u64()), (Some(1), Some(1)));
    assert_eq!(ok(&node, "GET", "/api/v1/users/nobody/unread", None).await["unread"], 0);
}

#[tokio::test]
async fn unread_total_pages_through_many_conversations() {
    let node = node_with(&[]);
    for i in 0..120 {
        let b = json!({"from": format!("u{i}"), "to": "alice", "client_msg_id": "m", "body": text("hi")});
        ok(&node, "POST", "/api/v1/messages", Some(b)).await;
    }
    let u = ok(&node, "GET", "/api/v1/users/alice/unread", None).await;
    assert_eq!((u["unread"].as_u64(), u["conversations"].as_u64()), (Some(120), Some(120)));
}

#[tokio::test]
async fn recall_as_a_user_or_as_the_administrator() {
    // No recall window for senders: only managers and the API may recall.
    let node = node_with(&[("CONFAB__CHAT__RECALL_WINDOW_SECS", "0")]);
    let ab = direct_id("alice", "bob");
    let mut bob = node.connect("bob", "phone").await;
    for i in 1..=2 {
        let b = json!({"from": "alice", "to": "bob", "client_msg_id": format!("m{i}"), "body": text("oops")});
        ok(&node, "POST", "/api/v1/messages", Some(b)).await;
        bob.next_event("message").await;
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    let path = format!("/api/v1/conversations/{ab}/messages/1/recall");
    err(&node, "POST", &path, Some(json!({"by": "alice"})), 403, "recall_window_expired").await;
    err(&node, "POST", &path, Some(json!({"by": "bob"})), 403, "forbidden").await;
    // The administrative recall bypasses the window and membership.
    let r = ok(&node, "POST", &path, Some(json!({}))).await;
    assert_eq!(r["message"]["body"], json!({"type": "recalled", "by": "system"}));
    assert_eq!(bob.next_event("recall").await, r["message"]);
    // An empty body works too; recalling twice is harmless.
    let r2 = ok(&node, "POST", &format!("/api/v1/conversations/{ab}/messages/2/recall"), None).await;
    assert_eq!(r2["message"]["seq"], 2);
    assert_eq!(ok(&node, "POST", &path, None).await["message"], r["message"]);
    err(&node, "POST", &format!("/api/v1/conversations/{ab}/messages/9/recall"), None, 404, "not_found").await;
    err(&node, "POST", &format!("/api/v1/conversations/{ab}/messages/x/recall"), None, 400, "invalid_request").await;
    let h = ok(&node, "GET", &format!("/api/v1/conversations/{ab}/messages"), None).await;
    assert_eq!(h["messages"][0]["body"]["type"], "recalled");
}

#[tokio::test]
async fn groups_over_http() {
    let node = node_with(&[]);
    let [mut alice, mut bob, mut dave] = node.connect_each(["alice/phone", "bob/phone", "dave/phone"]).await;
    let g = create_group(&node, "team", "Team", "alice", &["bob", "carol"]).await;
    assert_eq!(
        (g["group"]["id"].as_str(), g["group"]["owner"].as_str(), g["group"]["member_count"].as_u64()),
        (Some("team"), Some("alice"), Some(3))
    );
    for c in [&mut alice, &mut bob] {
        assert_eq!(c.next_event("message").await["body"]["event"], "group_created");
        assert_eq!(c.next_event("membership").await["added"], json!(["bob", "carol"]));
    }
    err(
        &node,
        "POST",
        "/api/v1/groups",
        Some(json!({"id": "team", "name": "Again", "owner": "dave"})),
        409,
        "conflict",
    )
    .await;
    err(&node, "POST", "/api/v1/groups", Some(json!({"name": "No owner"})), 400, "invalid_request").await;
    let random = ok(&node, "POST", "/api/v1/groups", Some(json!({"name": "Solo", "owner": "dave"}))).await;
    assert_eq!(random["group"]["id"].as_str().unwrap().len(), 16);
    dave.next_event("message").await;
    dave.next_event("membership").await;

    assert_eq!(ok(&node, "GET", "/api/v1/groups/team", None).await, g);
    let m = ok(&node, "GET", "/api/v1/groups/team/members", None).await;
    assert_eq!(roles(&m), [("alice", "owner"), ("bob", "member"), ("carol", "member")]);
    err(&node, "GET", "/api/v1/groups/nope/members", None, 404, "not_found").await;

    // Add: on behalf of the owner by default; `by` applies the group's rules.
    let a = ok(&node, "POST", "/api/v1/groups/team/members", Some(json!({"members": ["dave"]}))).await;
    assert_eq!(a["message"]["body"]["data"]["by"], "alice");
    for c in [&mut alice, &mut bob, &mut dave] {
        assert_eq!(c.next_event("membership").await["added"], json!(["dave"]), "{}", c.user);
    }
    err(
        &node,
        "POST",
        "/api/v1/groups/team/members",
        Some(json!({"members": ["erin"], "by": "bob"})),
        403,
        "forbidden",
    )
    .await;
    err(&node, "POST", "/api/v1/groups/team/members", Some(json!({"members": []})), 400, "invalid_request").await;
    err(&node, "POST", "/api/v1/groups/nope/members", Some(json!({"members": ["x"]})), 404, "not_found").await;

    // Remove.
    let r = ok(&node, "DELETE", "/api/v1/groups/team/members/carol", None).await;
    assert_eq!(r["message"]["body"]["event"], "members_removed", "{r}");
    assert_eq!(bob.next_event("membership").await["removed"], json!(["carol"]));
    err(&node, "DELETE", "/api/v1/groups/team/members/alice", None, 403, "forbidden").await;
    err(&node, "DELETE", "/api/v1/groups/team/members/dave?by=bob", None, 403, "forbidden").await;
    let m = ok(&node, "GET", "/api/v1/groups/team/members", None).await;
    assert_eq!(m["members"].as_array().unwrap().len(), 3);
    assert_eq!(ok(&node, "GET", "/api/v1/groups/team", None).await["group"]["member_count"], 3);

    // The WebSocket view agrees.
    let h = dave.expect_ok("history", json!({"conv_id": "g_team"})).await;
    assert!(h["messages"].as_array().unwrap().len() >= 2, "{h}");
}

#[tokio::test]
async fn openapi_description_is_served_and_committed() {
    let node = TestNode::start();
    let (status, body) = node.get("/api-docs/openapi.json").await;
    assert_eq!(status, 200);
    let served: Value = serde_json::from_str(&body).unwrap();
    let committed: Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    assert_eq!(served, committed, "docs/openapi.json is stale: cargo run -q -- openapi > docs/openapi.json");
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
    assert!(served["paths"]["/api/v1/messages"]["post"].is_object());
}

#[tokio::test]
async fn oversized_chunked_bodies_are_refused_while_reading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = node_with(&[]);
    let mut s = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/messages HTTP/1.1\r\nHost: {}\r\nX-Confab-Key: admin\r\nX-Confab-Timestamp: {}\r\nX-Confab-Nonce: {}\r\n\
         X-Confab-Signature: 00\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        node.addr,
        now(),
        nonce()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
    // The server may answer and close before everything is written.
    for _ in 0..5 {
        if s.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(crate::common::TIMEOUT, s.read_to_end(&mut raw)).await.expect("no answer");
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    assert!(raw.contains("\"body_too_large\""), "{raw}");
}

#[tokio::test]
async fn user_profiles_over_http_and_websocket() {
    let node = node_with(&[]);
    let u = ok(
        &node,
        "POST",
        "/api/v1/users",
        Some(json!({"id": "alice", "nickname": " Alice ", "avatar": "https://x/a.png", "ext": {"lvl": 3}})),
    )
    .await;
    let user = &u["user"];
    assert_eq!((user["id"].as_str(), user["nickname"].as_str()), (Some("alice"), Some("Alice")));
    assert_eq!((user["ext"].clone(), user["disabled"].as_bool()), (json!({"lvl": 3}), Some(false)));
    assert_eq!(user["tokens_valid_after"], 0);
    // Absent fields are kept.
    let u2 = ok(&node, "POST", "/api/v1/users", Some(json!({"id": "alice", "ext": {"lvl": 4}}))).await;
    assert_eq!((u2["user"]["nickname"].as_str(), u2["user"]["ext"].clone()), (Some("Alice"), json!({"lvl": 4})));
    assert_eq!(ok(&node, "GET", "/api/v1/users/alice", None).await, u2);
    err(&node, "GET", "/api/v1/users/nobody", None, 404, "not_found").await;
    for bad in [
        json!({"id": "alice", "ext": [1]}),
        json!({"id": "alice", "ext": {"big": "x".repeat(5000)}}),
        json!({"id": "alice", "nickname": "n".repeat(65)}),
        json!({"id": "alice", "nickname": "  "}),
        json!({"id": "alice", "avatar": "has space"}),
        json!({"id": "bad id"}),
        json!({"id": "alice", "extra": 1}),
    ] {
        err(&node, "POST", "/api/v1/users", Some(bad), 400, "invalid_request").await;
    }

    // Clients read profiles (users without one are left out) and change their own.
    let mut bob = node.connect("bob", "phone").await;
    let r = bob.expect_ok("users_get", json!({"ids": ["alice", "nobody", "alice"]})).await;
    assert_eq!(
        r["users"],
        json!([{"id": "alice", "nickname": "Alice", "avatar": "https://x/a.png", "ext": {"lvl": 4}, "updated_at": u2["user"]["updated_at"]}])
    );
    bob.expect_err("users_get", json!({"ids": []}), "invalid_request").await;
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    bob.expect_err("users_get", json!({"ids": many}), "invalid_request").await;
    let p = bob.expect_ok("profile_update", json!({"nickname": "Bob", "ext": {"k": true}})).await;
    assert_eq!((p["user"]["id"].as_str(), p["user"]["nickname"].as_str()), (Some("bob"), Some("Bob")));
    assert!(p["user"].get("disabled").is_none(), "the public profile has no admin fields: {p}");
    bob.expect_err("profile_update", json!({}), "invalid_request").await;
    bob.expect_err("profile_update", json!({"ext": "x"}), "invalid_request").await;
    let stored = ok(&node, "GET", "/api/v1/users/bob", None).await;
    assert_eq!((stored["user"]["nickname"].as_str(), stored["user"]["ext"].clone()), (Some("Bob"), json!({"k": true})));
    // The `users` scope is enough.
    let (s, _) = Req::new("GET", "/api/v1/users/bob", None).key("users", USERS_SECRET).send(node.addr).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn disabled_users_and_revoked_tokens_are_shut_out() {
    use crate::common::{token, Auth};
    let node = node_with(&[]);
    // Users without a record work as before.
    let [mut phone, mut tablet, mut bob] = node.connect_each(["alice/phone", "alice/tablet", "bob/phone"]).await;
    let u = ok(&node, "POST", "/api/v1/users/alice/disable", None).await;
    assert_eq!(u["user"]["disabled"], true);
    for c in [&mut phone, &mut tablet] {
        assert_eq!(c.wait_closed(crate::common::TIMEOUT).await, Some(1008), "{}", c.device);
    }
    bob.expect_ok("ping", json!({})).await;
    let t = token("alice", "laptop");
    let refused = Client::try_connect(node.addr, Auth::Bearer(&t), None).await.err().expect("refused");
    assert_eq!((refused.status, refused.body["error"]["code"].as_str()), (403, Some("user_disabled")));
    let send = json!({"from": "alice", "to": "bob", "client_msg_id": "d1", "body": text("hi")});
    err(&node, "POST", "/api/v1/messages", Some(send.clone()), 403, "user_disabled").await;
    let u = ok(&node, "POST", "/api/v1/users/alice/enable", None).await;
    assert_eq!(u["user"]["disabled"], false);
    ok(&node, "POST", "/api/v1/messages", Some(send)).await;
    let mut phone = node.connect("alice", "phone").await;

    // Revocation: tokens issued before it are refused, sessions are closed, new tokens work.
    let old = token("alice", "phone");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = ok(&node, "POST", "/api/v1/users/alice/tokens/revoke", None).await;
    assert!(r["user"]["tokens_valid_after"].as_u64().unwrap() > 0);
    assert_eq!(phone.wait_closed(crate::common::TIMEOUT).await, Some(1008));
    let refused = Client::try_connect(node.addr, Auth::Bearer(&old), None).await.err().expect("refused");
    assert_eq!((refused.status, refused.body["error"]["code"].as_str()), (401, Some("token_revoked")));
    let fresh = ok(&node, "POST", "/api/v1/users/alice/tokens", Some(json!({"device": "phone"}))).await;
    let mut c = Client::try_connect(node.addr, Auth::Bearer(fresh["token"].as_str().unwrap()), None).await.unwrap();
    c.user = "alice".into();
    c.expect_ok("ping", json!({})).await;

    // One device forced offline: its sessions close and its tokens so far are refused; the
    // user's other devices stay, and a token minted for it afterwards works.
    let mut tablet = node.connect("alice", "tablet").await;
    let old_tablet = token("alice", "tablet");
    let r = ok(&node, "POST", "/api/v1/users/alice/devices/tablet/revoke", None).await;
    assert_eq!((r["user_id"].as_str(), r["device"].as_str()), (Some("alice"), Some("tablet")));
    assert!(r["revoked_before_ms"].as_u64().unwrap() > 0);
    assert_eq!(tablet.wait_closed(crate::common::TIMEOUT).await, Some(1008));
    c.expect_ok("ping", json!({})).await;
    let refused = Client::try_connect(node.addr, Auth::Bearer(&old_tablet), None).await.err().expect("refused");
    assert_eq!((refused.status, refused.body["error"]["code"].as_str()), (401, Some("token_revoked")));
    let phone_token = token("alice", "phone");
    Client::try_connect(node.addr, Auth::Bearer(&phone_token), None).await.expect("another device's token works");
    let fresh = ok(&node, "POST", "/api/v1/users/alice/tokens", Some(json!({"device": "tablet"}))).await;
    let mut t = Client::try_connect(node.addr, Auth::Bearer(fresh["token"].as_str().unwrap()), None).await.unwrap();
    t.user = "alice".into();
    t.expect_ok("ping", json!({})).await;
    err(&node, "POST", "/api/v1/users/alice/devices/bad%20id/revoke", None, 400, "invalid_request").await;
    // Bob was never touched.
    bob.expect_ok("ping", json!({})).await;
}

#[tokio::test]
async fn group_profile_roles_and_dismissal() {
    let node = node_with(&[]);
    let [mut alice, mut bob, mut carol] = node.connect_each(["alice/phone", "bob/phone", "carol/phone"]).await;
    create_group(&node, "team", "Team", "alice", &["bob", "carol"]).await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.next_event("membership").await;
        c.next_event("message").await;
    }

    // Profile: owner or admins only; every member hears of it.
    bob.expect_err("group_update", json!({"group_id": "team", "notice": "x"}), "forbidden").await;
    let r = alice
        .expect_ok("group_update", json!({"group_id": "team", "notice": "Be nice", "ext": {"topic": "rust"}}))
        .await;
    assert_eq!((r["group"]["notice"].as_str(), r["group"]["name"].as_str()), (Some("Be nice"), Some("Team")));
    assert_eq!(r["message"]["body"]["event"], "group_updated");
    for c in [&mut alice, &mut bob, &mut carol] {
        // The acting device has the system message in its reply, not again as an event.
        if c.user != "alice" {
            assert_eq!(c.next_event("message").await["seq"], r["message"]["seq"], "{}", c.user);
        }
        let e = c.next_event("group").await;
        assert_eq!((e["change"].as_str(), e["group"]["notice"].as_str()), (Some("updated"), Some("Be nice")));
    }
    let p =
        ok(&node, "PATCH", "/api/v1/groups/team", Some(json!({"name": "Team 2", "avatar": "https://x/t.png"}))).await;
    assert_eq!((p["group"]["name"].as_str(), p["group"]["notice"].as_str()), (Some("Team 2"), Some("Be nice")));
    assert_eq!(p["message"]["body"]["data"]["by"], "alice");
    assert!(p["message"]["body"]["data"].get("notice").is_none(), "only the changed fields: {p}");
    assert_eq!(bob.next_event("group").await["group"]["avatar"], "https://x/t.png");
    err(&node, "PATCH", "/api/v1/groups/team", Some(json!({})), 400, "invalid_request").await;
    err(&node, "PATCH", "/api/v1/groups/team", Some(json!({"ext": [1]})), 400, "invalid_request").await;
    err(&node, "PATCH", "/api/v1/groups/team", Some(json!({"name": "x", "by": "carol"})), 403, "forbidden").await;
    err(&node, "PATCH", "/api/v1/groups/nope", Some(json!({"name": "x"})), 404, "not_found").await;

    // Roles: the owner names admins; admins may then manage.
    for c in [&mut alice, &mut bob, &mut carol] {
        c.drain_events(100).await;
    }
    let r = ok(&node, "PUT", "/api/v1/groups/team/members/bob/role", Some(json!({"role": "admin"}))).await;
    assert_eq!(r["message"]["body"]["event"], "roles_changed");
    let e = carol.next_event("group").await;
    assert_eq!(e["change"], "roles");
    bob.expect_ok("group_update", json!({"group_id": "team", "notice": "by an admin"})).await;
    bob.expect_err("group_set_role", json!({"group_id": "team", "user_id": "carol", "role": "admin"}), "forbidden")
        .await;
    err(&node, "PUT", "/api/v1/groups/team/members/bob/role", Some(json!({"role": "admin"})), 409, "conflict").await;
    err(&node, "PUT", "/api/v1/groups/team/members/zed/role", Some(json!({"role": "admin"})), 404, "not_found").await;
    err(&node, "PUT", "/api/v1/groups/team/members/bob/role", Some(json!({"role": "boss"})), 400, "invalid_request")
        .await;
    // Transfer the ownership over WebSocket: the previous owner becomes an admin.
    let t = alice.expect_ok("group_set_role", json!({"group_id": "team", "user_id": "carol", "role": "owner"})).await;
    assert_eq!(t["group"]["owner"], "carol");
    let m = ok(&node, "GET", "/api/v1/groups/team/members", None).await;
    assert_eq!(roles(&m), [("carol", "owner"), ("alice", "admin"), ("bob", "admin")]);
    alice.expect_err("group_dismiss", json!({"group_id": "team"}), "forbidden").await;
    err(&node, "POST", "/api/v1/groups/team/dismiss", Some(json!({"by": "bob"})), 403, "forbidden").await;
    for c in [&mut alice, &mut bob, &mut carol] {
        c.drain_events(100).await;
    }

    // Dismissal (as the owner by default): announced, then everything is refused.
    let d = ok(&node, "POST", "/api/v1/groups/team/dismiss", None).await;
    assert_eq!((d["group"]["dismissed"].as_bool(), d["group"]["member_count"].as_u64()), (Some(true), Some(0)));
    assert_eq!(d["message"]["body"]["event"], "group_dismissed");
    for c in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(c.next_event("message").await["body"]["event"], "group_dismissed", "{}", c.user);
        assert_eq!(c.next_event("group").await["change"], "dismissed");
    }
    let body = json!({"conv_id": "g_team", "client_msg_id": "late", "body": text("anyone?")});
    let e = bob.request("send", body).await;
    assert_eq!(e["error"]["code"], "group_dismissed", "{e}");
    let sys =
        json!({"from": null, "conv_id": "g_team", "client_msg_id": "s1", "body": {"type": "system", "event": "x"}});
    err(&node, "POST", "/api/v1/messages", Some(sys), 410, "group_dismissed").await;
    err(&node, "PATCH", "/api/v1/groups/team", Some(json!({"name": "x"})), 410, "group_dismissed").await;
    err(&node, "POST", "/api/v1/groups/team/dismiss", None, 410, "group_dismissed").await;
    err(&node, "POST", "/api/v1/groups/team/members", Some(json!({"members": ["dave"]})), 410, "group_dismissed").await;
    alice.expect_err("group_leave", json!({"group_id": "team"}), "group_dismissed").await;
    let g = ok(&node, "GET", "/api/v1/groups/team", None).await;
    assert_eq!(g["group"]["dismissed"], true);
    let conv = bob.expect_ok("conversation", json!({"conv_id": "g_team"})).await;
    assert_eq!(conv["active"], false, "{conv}");
    for c in [&mut alice, &mut bob, &mut carol] {
        c.no_event_within(200).await;
    }
}

#[tokio::test]
async fn system_messages_to_groups_are_idempotent() {
    let node = node_with(&[]);
    let mut bob = node.connect("bob", "phone").await;
    create_group(&node, "news", "News", "alice", &["bob"]).await;
    bob.next_event("membership").await;
    bob.next_event("message").await;
    let send = json!({"from": null, "conv_id": "g_news", "client_msg_id": "sys-1", "body": {"type": "system", "event": "promo", "data": {"n": 1}}});
    let r = ok(&node, "POST", "/api/v1/messages", Some(send.clone())).await;
    assert_eq!((r["seq"].as_u64(), r["message"]["client_msg_id"].as_str()), (Some(2), Some("sys-1")));
    assert_eq!(bob.next_event("message").await, r["message"]);
    let again = ok(&node, "POST", "/api/v1/messages", Some(send)).await;
    assert_eq!(again, r, "a re-send returns the stored message");
    bob.no_event_within(200).await;
    let other = json!({"from": null, "conv_id": "g_news", "client_msg_id": "sys-2", "body": {"type": "system", "event": "promo"}});
    assert_eq!(ok(&node, "POST", "/api/v1/messages", Some(other)).await["seq"], 3);
}

/// What a backend does in bulk or on a user's behalf: import users, ask who is online, list a
/// user's groups, page through members, read, flag and delete for a user, send to many users.
#[tokio::test]
async fn bulk_and_on_behalf_operations() {
    let node = node_with(&[]);
    // Users in bulk: a result per user; a bad one does not stop the others.
    let users =
        json!({"users": [{"id": "alice", "nickname": "Alice"}, {"id": "b b"}, {"id": "bob", "nickname": "Bob"}]});
    let r = ok(&node, "POST", "/api/v1/users/import", Some(users.clone())).await;
    let got: Vec<(String, bool)> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["id"].as_str().unwrap().to_owned(), x["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(got, [("alice".to_owned(), true), ("b b".to_owned(), false), ("bob".to_owned(), true)]);
    assert_eq!(r["results"][1]["error"], "invalid_request");
    assert_eq!(ok(&node, "GET", "/api/v1/users/bob", None).await["user"]["nickname"], "Bob");
    err(&node, "POST", "/api/v1/users/import", Some(json!({"users": []})), 400, "invalid_request").await;
    // Listing users by id, a page at a time, and by prefix.
    let page = ok(&node, "GET", "/api/v1/users?limit=1", None).await;
    assert_eq!((page["users"][0]["id"].as_str(), page["next_after"].as_str()), (Some("alice"), Some("alice")));
    let page = ok(&node, "GET", "/api/v1/users?limit=1&after=alice", None).await;
    assert_eq!((page["users"][0]["id"].as_str(), page.get("next_after")), (Some("bob"), None));
    let page = ok(&node, "GET", "/api/v1/users?prefix=bo", None).await;
    assert_eq!(page["users"].as_array().unwrap().len(), 1);
    err(&node, "GET", "/api/v1/users?prefix=a%20b", None, 400, "invalid_request").await;

    // Who is online.
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/tablet"]).await;
    let r = ok(&node, "POST", "/api/v1/users/online", Some(json!({"ids": ["alice", "carol"]}))).await;
    assert_eq!((r["users"][0]["online"].as_bool(), r["users"][1]["online"].as_bool()), (Some(true), Some(false)));
    assert_eq!(r["users"][0]["devices"][0]["device"], "phone");
    let many: Vec<String> = (0..101).map(|i| format!("u{i}")).collect();
    err(&node, "POST", "/api/v1/users/online", Some(json!({"ids": many})), 400, "invalid_request").await;

    // A user's groups; a group's members page by page.
    create_group(&node, "g1", "G1", "alice", &["bob", "m1", "m2", "m3"]).await;
    create_group(&node, "g2", "G2", "bob", &[]).await;
    let r = ok(&node, "GET", "/api/v1/users/bob/groups", None).await;
    let groups: Vec<(&str, &str)> = r["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["group_id"].as_str().unwrap(), g["role"].as_str().unwrap()))
        .collect();
    assert_eq!(groups, [("g1", "member"), ("g2", "owner")]);
    let listed = ok(&node, "GET", "/api/v1/groups?prefix=g&limit=1", None).await;
    assert_eq!((listed["groups"][0]["id"].as_str(), listed["next_after"].as_str()), (Some("g1"), Some("g1")));
    let listed = ok(&node, "GET", "/api/v1/groups?prefix=g&after=g1", None).await;
    assert_eq!(listed["groups"][0]["id"], "g2");
    let mut seen = Vec::new();
    let mut path = "/api/v1/groups/g1/members?limit=2".to_owned();
    loop {
        let page = ok(&node, "GET", &path, None).await;
        seen.extend(page["members"].as_array().unwrap().iter().map(|m| m["user_id"].as_str().unwrap().to_owned()));
        match page["next_after"].as_str() {
            Some(after) => path = format!("/api/v1/groups/g1/members?limit=2&after={after}"),
            None => break,
        }
    }
    assert_eq!(seen, ["alice", "bob", "m1", "m2", "m3"]);
    err(&node, "GET", "/api/v1/groups/g1/members?after=bob", None, 400, "invalid_request").await;

    // On bob's behalf: read, flags, delete-for-me.
    let ab = direct_id("alice", "bob");
    for i in 0..3 {
        alice.send_msg(json!({"to": "bob"}), &format!("m{i}"), text("hi")).await;
    }
    ok(&node, "POST", &format!("/api/v1/users/bob/conversations/{ab}/read"), Some(json!({"seq": 2}))).await;
    let list = ok(&node, "GET", "/api/v1/users/bob/conversations", None).await;
    let item = list["conversations"].as_array().unwrap().iter().find(|c| c["conv_id"] == ab.as_str()).unwrap().clone();
    assert_eq!((item["read_seq"].as_u64(), item["unread"].as_u64()), (Some(2), Some(1)));
    let r =
        ok(&node, "POST", &format!("/api/v1/users/bob/conversations/{ab}/flags"), Some(json!({"pinned": true}))).await;
    assert_eq!(r["pinned"], true);
    ok(&node, "POST", &format!("/api/v1/users/bob/conversations/{ab}/delete"), Some(json!({"seqs": [1]}))).await;
    let h = bob.expect_ok("history", json!({"conv_id": ab})).await;
    assert_eq!(seqs(&h["messages"]), [2, 3]);
    let r = ok(&node, "POST", &format!("/api/v1/users/bob/conversations/{ab}/clear"), None).await;
    assert_eq!((r["cleared_seq"].as_u64(), r["unread"].as_u64()), (Some(3), Some(0)));
    while bob.next_event("conversation").await["cleared_seq"] != 3 {}
    assert_eq!(bob.expect_ok("history", json!({"conv_id": ab})).await["messages"], json!([]));
    err(&node, "POST", &format!("/api/v1/users/carol/conversations/{ab}/clear"), None, 403, "not_member").await;
    err(
        &node,
        "POST",
        &format!("/api/v1/users/carol/conversations/{ab}/read"),
        Some(json!({"seq": 1})),
        403,
        "not_member",
    )
    .await;

    // One message to many users: a result each; bob blocked alice; a retry stores nothing twice.
    bob.expect_ok("block", json!({"user_id": "alice"})).await;
    let batch =
        json!({"from": "alice", "to": ["carol", "bob", "dave"], "client_msg_id": "promo-1", "body": text("news")});
    let r = ok(&node, "POST", "/api/v1/messages/batch", Some(batch.clone())).await;
    let res = r["results"].as_array().unwrap();
    assert_eq!(
        (res[0]["ok"].as_bool(), res[1]["error"].as_str(), res[2]["seq"].as_u64()),
        (Some(true), Some("blocked"), Some(1))
    );
    let again = ok(&node, "POST", "/api/v1/messages/batch", Some(batch)).await;
    assert_eq!(again["results"][0]["seq"], res[0]["seq"]);
    assert_eq!(again["results"][2]["seq"], 1, "the retry returned the stored message");
    // From the system, to users who blocked nobody in particular.
    let sys = json!({"from": null, "to": ["bob", "carol"], "client_msg_id": "sys-1", "body": text("maintenance")});
    let r = ok(&node, "POST", "/api/v1/messages/batch", Some(sys)).await;
    assert!(r["results"].as_array().unwrap().iter().all(|x| x["ok"] == true), "{r}");
    while bob.next_event("message").await["body"] != text("maintenance") {}
    let long = json!({"from": "alice", "to": ["bob"], "client_msg_id": "x".repeat(48), "body": text("x")});
    err(&node, "POST", "/api/v1/messages/batch", Some(long), 400, "invalid_request").await;
    alice.close().await;
}

/// A disabled user's changes made on their behalf are refused like their own requests
/// (`user_disabled`), and change nothing.
#[tokio::test]
async fn changes_on_behalf_of_a_disabled_user_are_refused() {
    let node = node_with(&[]);
    ok(
        &node,
        "POST",
        "/api/v1/groups",
        Some(json!({"id": "club", "name": "Club", "owner": "own", "members": ["dis"]})),
    )
    .await;
    ok(&node, "PATCH", "/api/v1/groups/club", Some(json!({"join_mode": "free"}))).await;
    ok(&node, "POST", "/api/v1/users/dis/disable", None).await;
    let conv = "g_club";
    for (method, path, body) in [
        ("POST", "/api/v1/users/dis/contacts/bob".to_owned(), json!({"action": "request"})),
        ("POST", "/api/v1/groups/club/leave".to_owned(), json!({"user": "dis"})),
        ("POST", "/api/v1/groups/club/invitations".to_owned(), json!({"by": "dis", "members": ["x"]})),
        ("POST", "/api/v1/groups/club/notice/confirmations".to_owned(), json!({"user": "dis"})),
        ("POST", format!("/api/v1/users/dis/conversations/{conv}/read"), json!({"seq": 1})),
        ("POST", format!("/api/v1/users/dis/conversations/{conv}/flags"), json!({"pinned": true})),
        ("POST", format!("/api/v1/users/dis/conversations/{conv}/delete"), json!({"seqs": [1]})),
        ("POST", format!("/api/v1/users/dis/conversations/{conv}/clear"), json!({})),
    ] {
        err(&node, method, &path, Some(body), 403, "user_disabled").await;
    }
    ok(&node, "POST", "/api/v1/users/dis2/disable", None).await;
    err(&node, "POST", "/api/v1/groups/club/join", Some(json!({"user": "dis2"})), 403, "user_disabled").await;
    assert_eq!(ok(&node, "GET", "/api/v1/groups/club", None).await["group"]["member_count"], 2);
    assert_eq!(ok(&node, "GET", "/api/v1/users/bob/contacts/dis", None).await["contact"], Value::Null);
}

/// Statistics: users with a record, live groups, and today's messages and active users; the
/// days asked for are checked.
#[tokio::test]
async fn stats_count_users_groups_messages_and_active_users() {
    let node = node_with(&[]);
    let before = ok(&node, "GET", "/api/v1/stats?days=1", None).await;
    assert_eq!(before["days"].as_array().unwrap().len(), 1);
    assert_eq!((before["users"].as_u64(), before["groups"].as_u64()), (Some(0), Some(0)));
    ok(&node, "POST", "/api/v1/users", Some(json!({"id": "alice", "nickname": "Alice"}))).await;
    create_group(&node, "g1", "G1", "alice", &["bob"]).await;
    let [mut alice, mut bob] = node.connect_each(["alice/phone", "bob/phone"]).await;
    let _tablet = node.connect("alice", "tablet").await;
    alice.send_msg(json!({"to": "bob"}), "s1", text("one")).await;
    alice.send_msg(json!({"to": "bob"}), "s1", text("one")).await;
    bob.send_msg(json!({"conv_id": "g_g1"}), "s2", text("two")).await;
    // Active users are written by a task as they connect: wait for them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let st = loop {
        let st = ok(&node, "GET", "/api/v1/stats", None).await;
        if st["days"][6]["active_users"] == 2 || std::time::Instant::now() > deadline {
            break st;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let days = st["days"].as_array().unwrap();
    assert_eq!(days.len(), 7, "{st}");
    let today = &days[6];
    assert_eq!((today["messages"].as_u64(), today["active_users"].as_u64()), (Some(2), Some(2)), "{st}");
    assert!(days[..6].iter().all(|d| d["messages"] == 0), "{st}");
    assert!(today["date"].as_str().unwrap() > days[5]["date"].as_str().unwrap());
    assert_eq!((st["users"].as_u64(), st["groups"].as_u64(), st["online_here"].as_u64()), (Some(1), Some(1), Some(2)));
    for bad in ["days=0", "days=91", "days=x", "day=1"] {
        err(&node, "GET", &format!("/api/v1/stats?{bad}"), None, 400, "invalid_request").await;
    }
}

/// `GET /users?q=` and `GET /groups?q=` search by name prefix, ignoring case; `q` with `prefix` or
/// `after`, or a bad `q`, is refused.
#[tokio::test]
async fn users_and_groups_are_searched_by_name() {
    let node = node_with(&[]);
    for (id, nick) in [("u1", "Alice"), ("u2", "alicia"), ("u3", "Bob")] {
        ok(&node, "POST", "/api/v1/users", Some(json!({"id": id, "nickname": nick}))).await;
    }
    create_group(&node, "g1", "Rust Club", "u1", &[]).await;
    create_group(&node, "g2", "Go", "u1", &[]).await;
    let r = ok(&node, "GET", "/api/v1/users?q=ALI&limit=10", None).await;
    let ids: Vec<&str> = r["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!((ids, r.get("next_after")), (vec!["u1", "u2"], None));
    let r = ok(&node, "GET", "/api/v1/groups?q=rust", None).await;
    assert_eq!(r["groups"].as_array().unwrap().len(), 1);
    assert_eq!(r["groups"][0]["id"], "g1");
    for bad in ["q=a&prefix=u", "q=a&after=u1", &format!("q={}", "x".repeat(65)), "q=%20%20"] {
        err(&node, "GET", &format!("/api/v1/users?{bad}"), None, 400, "invalid_request").await;
    }
}

/// Waits until broadcast `id` at `addr` is no longer running; returns it.
async fn broadcast_finished(addr: SocketAddr, id: &str, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let b = ok_at(addr, "GET", &format!("/api/v1/broadcasts/{id}"), None).await["broadcast"].clone();
        if b["state"] != "running" {
            return b;
        }
        assert!(std::time::Instant::now() < deadline, "broadcast {id} still running: {b}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A broadcast reaches every user of its segment once, from the system or from a user (whose
/// rules apply: a block is a failure with its code); creating it again is idempotent; bad
/// requests are refused; a cancel stops it and the rate holds.
#[tokio::test]
async fn broadcasts_reach_each_user_of_the_segment_once() {
    let node = node_with(&[("CONFAB__API__BROADCAST_MAX_RATE", "100")]);
    let users: Vec<Value> = (0..25).map(|i| json!({"id": format!("b{i:02}")})).collect();
    ok(&node, "POST", "/api/v1/users/import", Some(json!({"users": users}))).await;
    ok(&node, "POST", "/api/v1/users", Some(json!({"id": "other"}))).await;
    let mut b03 = node.connect("b03", "phone").await;
    let req = json!({"id": "promo", "body": text("sale"), "segment": {"kind": "prefix", "prefix": "b"}, "rate": 100});
    let r = ok(&node, "POST", "/api/v1/broadcasts", Some(req.clone())).await;
    assert_eq!((r["broadcast"]["state"].as_str(), r["broadcast"]["sent"].as_u64()), (Some("running"), Some(0)));
    assert_eq!(ok(&node, "POST", "/api/v1/broadcasts", Some(req.clone())).await["broadcast"]["id"], "promo");
    let mut different = req.clone();
    different["body"] = text("other");
    err(&node, "POST", "/api/v1/broadcasts", Some(different), 409, "conflict").await;
    let b = broadcast_finished(node.addr, "promo", 20).await;
    assert_eq!(
        (b["state"].as_str(), b["sent"].as_u64(), b["failed"].as_u64()),
        (Some("done"), Some(25), Some(0)),
        "{b}"
    );
    assert_eq!(b["cursor"], "b24");
    let m = b03.next_event("message").await;
    assert_eq!((m["body"].clone(), m["sender"].as_str()), (text("sale"), Some("system")));
    b03.no_event_within(200).await;
    let h = ok(&node, "GET", &format!("/api/v1/conversations/{}/messages", direct_id("system", "b24")), None).await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    let outside = format!("/api/v1/conversations/{}/messages", direct_id("system", "other"));
    err(&node, "GET", &outside, None, 404, "not_found").await;

    // From a user: a recipient who blocked them is a failure with the code.
    let mut b05 = node.connect("b05", "phone").await;
    b05.expect_ok("block", json!({"user_id": "b01"})).await;
    let req = json!({"id": "hello", "from": "b01", "body": text("hi"), "segment": {"kind": "users", "users": ["b05", "b02", "b02"]}});
    ok(&node, "POST", "/api/v1/broadcasts", Some(req)).await;
    let b = broadcast_finished(node.addr, "hello", 20).await;
    assert_eq!((b["sent"].as_u64(), b["failed"].as_u64()), (Some(1), Some(1)), "{b}");
    assert_eq!(b["errors"], json!([{"user_id": "b05", "error": "blocked"}]));

    // Cancelled: nothing after the step it is in; the rate held meanwhile.
    let req = json!({"id": "slow", "body": text("slow"), "segment": {"kind": "all"}, "rate": 2});
    ok(&node, "POST", "/api/v1/broadcasts", Some(req)).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let c = ok(&node, "POST", "/api/v1/broadcasts/slow/cancel", None).await["broadcast"].clone();
    assert_eq!(c["state"], "cancelled");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let after = ok(&node, "GET", "/api/v1/broadcasts/slow", None).await["broadcast"].clone();
    let sent = after["sent"].as_u64().unwrap();
    assert!((1..=4).contains(&sent), "2 a second for about 1.5 s of sending (the runner looks every second): {after}");
    assert_eq!(after["state"], "cancelled");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(ok(&node, "GET", "/api/v1/broadcasts/slow", None).await["broadcast"]["sent"].as_u64(), Some(sent));

    for bad in [
        json!({"id": "x", "body": text("a"), "segment": {"kind": "all"}, "rate": 0}),
        json!({"id": "x", "body": text("a"), "segment": {"kind": "all"}, "rate": 101}),
        json!({"id": "x".repeat(41), "body": text("a"), "segment": {"kind": "all"}}),
        json!({"id": "x", "body": text("a"), "segment": {"kind": "users", "users": []}}),
        json!({"id": "x", "body": text("a"), "segment": {"kind": "everyone"}}),
        json!({"id": "x", "body": text("a"), "segment": {"kind": "prefix", "prefix": "bad prefix"}}),
    ] {
        err(&node, "POST", "/api/v1/broadcasts", Some(bad), 400, "invalid_request").await;
    }
    err(
        &node,
        "POST",
        "/api/v1/broadcasts",
        Some(json!({"id": "x", "body": {"type": "text", "text": ""}, "segment": {"kind": "all"}})),
        400,
        "invalid_body",
    )
    .await;
    err(&node, "GET", "/api/v1/broadcasts/nope", None, 404, "not_found").await;
    ok(&node, "POST", "/api/v1/users/b09/disable", None).await;
    let from_disabled = json!({"id": "dis", "from": "b09", "body": text("a"), "segment": {"kind": "all"}});
    err(&node, "POST", "/api/v1/broadcasts", Some(from_disabled), 403, "user_disabled").await;
    err(&node, "POST", "/api/v1/broadcasts/nope/cancel", None, 404, "not_found").await;
}

/// A node killed (-9) in the middle of a broadcast resumes it when it starts again: every user
/// of the segment ends with the message exactly once.
#[tokio::test]
async fn a_broadcast_resumes_after_kill_9_and_sends_nothing_twice() {
    use crate::common::BinaryNode;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let keys = keys();
    let env = [("CONFAB__API__KEYS", keys.as_str())];
    let node = BinaryNode::start(&dir, &env).await;
    let users: Vec<Value> = (0..40).map(|i| json!({"id": format!("k{i:02}")})).collect();
    ok_at(node.addr, "POST", "/api/v1/users/import", Some(json!({"users": users}))).await;
    let req = json!({"id": "resume", "body": text("once"), "segment": {"kind": "all"}, "rate": 20});
    ok_at(node.addr, "POST", "/api/v1/broadcasts", Some(req)).await;
    // Until it has sent some, not all.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let b = ok_at(node.addr, "GET", "/api/v1/broadcasts/resume", None).await["broadcast"].clone();
        if b["sent"].as_u64().unwrap() >= 5 {
            assert_eq!(b["state"], "running", "{b}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the broadcast did not start: {b}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    node.kill_9().await;
    let node = BinaryNode::start(&dir, &env).await;
    let b = broadcast_finished(node.addr, "resume", 30).await;
    assert_eq!(b["state"], "done", "{b}");
    for i in 0..40 {
        let path = format!("/api/v1/conversations/{}/messages", direct_id("system", &format!("k{i:02}")));
        let h = ok_at(node.addr, "GET", &path, None).await;
        assert_eq!(h["messages"].as_array().unwrap().len(), 1, "k{i:02}: {h}");
    }
    node.stop().await;
}
