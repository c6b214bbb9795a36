//! Fake push providers for the push tests: FCM HTTP v1 (with its OAuth2 token endpoint), APNs
//! (HTTP/2 cleartext) and the signed relay, each on 127.0.0.1:0 and checking what the real
//! service checks (signatures of the authentication tokens, headers, payload shape), and the
//! settings that point a node at them. `providers_direct` tests `confab::push::providers`
//! against them without a node.
//!
//! Each fake keeps what it accepted (`received`), counts what it refused (`rejected`: bad
//! authentication or a malformed request; a test expects 0), and can be told to answer a token
//! as invalid (`set_invalid`) or the next requests with an error status (`set_fail_next`).

// Helpers for the push tests: not every test uses every one.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab::push::providers::jwt;
use ring::rand::SecureRandom;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The FCM project of the fakes and their settings.
pub(crate) const FCM_PROJECT: &str = "confab-test";
/// The APNs team, key id and topic of the fakes and their settings.
pub(crate) const APNS_TEAM: &str = "TEAM123456";
pub(crate) const APNS_KEY_ID: &str = "KEY1234567";
pub(crate) const APNS_TOPIC: &str = "org.confab.app";
/// The relay's signing key.
pub(crate) const RELAY_KEY: &str = "relay";
pub(crate) const RELAY_SECRET: &str = "relay-secret-0123456789abcdef";

/// A file of tests/fixtures/push (throw-away keys).
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/push").join(name)
}

/// `[push]` of the defaults with `env` over them.
pub(crate) fn push_config(env: &[(String, String)]) -> confab::config::Push {
    confab::config::Config::load_with_env(None, env.iter().cloned()).unwrap().push
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What a fake does and saw.
#[derive(Default)]
struct State {
    /// Tokens answered as invalid, and how (a status and a body).
    invalid: HashMap<String, (u16, String)>,
    /// Answer this many (accepted) requests with this status.
    fail_next: Option<(usize, u16)>,
    /// Accepted requests, in order.
    received: Vec<Value>,
    /// Requests refused for bad authentication or shape.
    rejected: usize,
    /// Why the last refusal happened (for assertion messages).
    last_rejection: String,
    /// FCM: token endpoint calls (any outcome).
    token_requests: usize,
    /// FCM: access tokens issued and still valid.
    access_tokens: HashSet<String>,
    /// APNs: distinct provider tokens accepted.
    provider_tokens: HashSet<String>,
    /// Relay: nonces seen.
    nonces: HashSet<String>,
}

impl State {
    fn reject(&mut self, why: impl Into<String>) {
        self.rejected += 1;
        self.last_rejection = why.into();
    }

    /// Takes one of the failures asked for, if any.
    fn take_failure(&mut self) -> Option<u16> {
        let (n, status) = self.fail_next?;
        self.fail_next = if n > 1 { Some((n - 1, status)) } else { None };
        Some(status)
    }
}

/// The accessors every fake has.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<State>>);

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }

    async fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let got = self.with(|s| s.received.clone());
            if pred(&got) {
                return got;
            }
            let why = self.with(|s| s.last_rejection.clone());
            assert!(Instant::now() < deadline, "timed out waiting for {what}; got {got:#?} (last refusal: {why:?})");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

macro_rules! accessors {
    () => {
        /// Answers the next `n` accepted requests with `status` (instead of their normal answer).
        pub(crate) fn set_fail_next(&self, n: usize, status: u16) {
            self.state.with(|s| s.fail_next = if n == 0 { None } else { Some((n, status)) });
        }

        /// The requests accepted, in order.
        pub(crate) fn received(&self) -> Vec<Value> {
            self.state.with(|s| s.received.clone())
        }

        /// Requests refused for bad authentication or a malformed request.
        pub(crate) fn rejected(&self) -> usize {
            self.state.with(|s| s.rejected)
        }

        /// Why the last request was refused ("" when none was).
        pub(crate) fn last_rejection(&self) -> String {
            self.state.with(|s| s.last_rejection.clone())
        }

        /// Waits until `pred` holds over the requests accepted (failing the test after `secs`).
        pub(crate) async fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
            self.state.wait_for(what, secs, pred).await
        }
    };
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1, just enough for reqwest's requests.

use crate::common::Http1Request;

struct Http1Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn answer(status: u16, body: Value) -> Http1Answer {
    Http1Answer { status, headers: Vec::new(), body: body.to_string() }
}

type Handler = Arc<dyn Fn(Http1Request) -> Http1Answer + Send + Sync>;

async fn serve_http1(handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_http1_conn(stream, handler.clone()));
        }
    });
    addr
}

async fn serve_http1_conn(mut stream: TcpStream, handler: Handler) {
    let mut buf: Vec<u8> = Vec::new();
    while let Some(req) = crate::common::read_http1(&mut stream, &mut buf).await {
        let a = handler(req);
        let mut resp = format!(
            "HTTP/1.1 {} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            a.status,
            a.body.len()
        );
        for (k, v) in &a.headers {
            resp.push_str(&format!("{k}: {v}\r\n"));
        }
        resp.push_str("\r\n");
        resp.push_str(&a.body);
        if stream.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `application/x-www-form-urlencoded` pairs.
fn form(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                    match u8::from_str_radix(hex, 16) {
                        Ok(v) => {
                            out.push(v);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// FCM

/// A fake FCM: the OAuth2 token endpoint (`POST /token`) and the HTTP v1 send endpoint
/// (`POST /v1/projects/{project}/messages:send`).
///
/// The token endpoint checks the grant type and the assertion: an RS256 JWT that verifies with
/// the service account's public key, `typ` JWT, `iss` an account email, `aud` this token URI,
/// the messaging `scope`, `iat` not in the future and `exp` in the future at most an hour after
/// it. It answers a new random access token valid 3600 s (a refusal is a 400 `invalid_grant`).
///
/// The send endpoint answers 401 (`UNAUTHENTICATED`) unless the bearer is an access token it
/// issued, and 400 (`INVALID_ARGUMENT`) unless the payload has a non-empty `message.token`,
/// string `notification.title` and `.body`, `data` whose values are all strings and
/// `android.collapse_key`. Then: a failure asked for, a token set invalid (404 `UNREGISTERED`,
/// the real body), or 200 with the message's name.
pub(crate) struct FakeFcm {
    addr: SocketAddr,
    project: String,
    state: Shared,
}

impl FakeFcm {
    /// Starts a fake for project `project_id` whose service account's public key (DER
    /// `RSAPublicKey`) is at `public_key_der_path`.
    pub(crate) async fn start(project_id: &str, public_key_der_path: impl AsRef<Path>) -> FakeFcm {
        let public = std::fs::read(public_key_der_path).unwrap();
        let state = Shared::default();
        let (st, project) = (state.clone(), project_id.to_owned());
        // The token URI is only known once bound: the handler reads it from here.
        let token_uri = Arc::new(Mutex::new(String::new()));
        let uri = token_uri.clone();
        let addr =
            serve_http1(Arc::new(move |req| st.with(|s| fcm_handle(s, &project, &public, &uri.lock().unwrap(), req))))
                .await;
        *token_uri.lock().unwrap() = format!("http://{addr}/token");
        FakeFcm { addr, project: project_id.to_owned(), state }
    }

    /// The fake with the project and key of the fixtures.
    pub(crate) async fn start_default() -> FakeFcm {
        FakeFcm::start(FCM_PROJECT, fixture("fcm-public.der")).await
    }

    /// The service account's `token_uri`.
    pub(crate) fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// `push.fcm.endpoint`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers sends to `token` with 404 `UNREGISTERED`.
    pub(crate) fn set_invalid(&self, token: &str) {
        let body = json!({"error": {
            "code": 404,
            "message": "Requested entity was not found.",
            "status": "NOT_FOUND",
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}],
        }});
        self.state.with(|s| s.invalid.insert(token.to_owned(), (404, body.to_string())));
    }

    /// Forgets the access tokens issued: the next send with one is answered 401, as an expired
    /// token is.
    pub(crate) fn revoke_access_tokens(&self) {
        self.state.with(|s| s.access_tokens.clear());
    }

    /// Calls of the token endpoint.
    pub(crate) fn token_requests(&self) -> usize {
        self.state.with(|s| s.token_requests)
    }

    /// Writes a service account's JSON key (the fixture's, with this fake's token URI) into
    /// `dir`; answers its path.
    pub(crate) fn service_account(&self, dir: &Path) -> PathBuf {
        let mut sa: Value = serde_json::from_slice(&std::fs::read(fixture("service-account.json")).unwrap()).unwrap();
        sa["token_uri"] = json!(self.token_uri());
        let path = dir.join(format!("service-account-{}.json", self.addr.port()));
        std::fs::write(&path, sa.to_string()).unwrap();
        path
    }

    /// The settings that send FCM tokens to this fake (the service account written into `dir`).
    pub(crate) fn env(&self, dir: &Path) -> Vec<(String, String)> {
        vec![
            ("CONFAB__PUSH__FCM__PROJECT_ID".into(), self.project.clone()),
            ("CONFAB__PUSH__FCM__SERVICE_ACCOUNT_FILE".into(), self.service_account(dir).display().to_string()),
            ("CONFAB__PUSH__FCM__ENDPOINT".into(), self.endpoint()),
        ]
    }

    accessors!();
}

fn fcm_error(code: u16, status: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "status": status}})
}

fn fcm_handle(s: &mut State, project: &str, public: &[u8], token_uri: &str, req: Http1Request) -> Http1Answer {
    if req.method == "POST" && req.path == "/token" {
        s.token_requests += 1;
        return match check_assertion(public, token_uri, &req) {
            Ok(()) => {
                let token = format!("ya29.{}", random_hex(16));
                s.access_tokens.insert(token.clone());
                answer(200, json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer"}))
            }
            Err(why) => {
                s.reject(format!("token endpoint: {why}"));
                answer(400, json!({"error": "invalid_grant", "error_description": why}))
            }
        };
    }
    if req.method != "POST" || req.path != format!("/v1/projects/{project}/messages:send") {
        s.reject(format!("{} {}: no such endpoint", req.method, req.path));
        return answer(404, fcm_error(404, "NOT_FOUND", "Requested entity was not found."));
    }
    let bearer = req.headers.get("authorization").and_then(|a| a.strip_prefix("Bearer ")).unwrap_or("");
    if !s.access_tokens.contains(bearer) {
        s.reject(format!("send: not an access token issued: {bearer:?}"));
        return answer(
            401,
            fcm_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
            ),
        );
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    if let Err(why) = check_fcm_message(&body) {
        s.reject(format!("send: {why}"));
        return answer(400, fcm_error(400, "INVALID_ARGUMENT", &format!("Invalid JSON payload received. {why}")));
    }
    if let Some(status) = s.take_failure() {
        let name = match status {
            401 => "UNAUTHENTICATED",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            429 => "RESOURCE_EXHAUSTED",
            500 => "INTERNAL",
            503 => "UNAVAILABLE",
            _ => "INVALID_ARGUMENT",
        };
        let mut a = answer(status, fcm_error(status, name, "failure asked for by the test"));
        if status == 429 || status == 503 {
            a.headers.push(("retry-after", "1".into()));
        }
        return a;
    }
    let token = body["message"]["token"].as_str().unwrap_or("");
    if let Some((status, b)) = s.invalid.get(token) {
        return Http1Answer { status: *status, headers: Vec::new(), body: b.clone() };
    }
    let id = s.received.len() + 1;
    s.received.push(body);
    answer(200, json!({"name": format!("projects/{project}/messages/{id}")}))
}

fn check_assertion(public: &[u8], token_uri: &str, req: &Http1Request) -> Result<(), String> {
    let f = form(&req.body);
    if f.get("grant_type").map(String::as_str) != Some(confab::push::providers::fcm::GRANT_TYPE) {
        return Err(format!("grant_type {:?}", f.get("grant_type")));
    }
    let assertion = f.get("assertion").ok_or("no assertion")?;
    let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, public);
    let (h, c) = jwt::decode_verified(assertion, |m, sig| pk.verify(m, sig).is_ok())?;
    if h["alg"] != "RS256" || h["typ"] != "JWT" {
        return Err(format!("header {h}"));
    }
    if !c["iss"].as_str().is_some_and(|i| i.contains('@')) {
        return Err(format!("iss {}", c["iss"]));
    }
    if c["aud"] != token_uri {
        return Err(format!("aud {} (expected {token_uri})", c["aud"]));
    }
    if c["scope"] != "https://www.googleapis.com/auth/firebase.messaging" {
        return Err(format!("scope {}", c["scope"]));
    }
    let (iat, exp, now) = (c["iat"].as_u64().unwrap_or(u64::MAX), c["exp"].as_u64().unwrap_or(0), now());
    if iat > now + 60 || exp <= now || exp < iat || exp - iat > 3600 {
        return Err(format!("iat {iat} / exp {exp} at {now}"));
    }
    Ok(())
}

fn check_fcm_message(body: &Value) -> Result<(), String> {
    let m = &body["message"];
    if m["token"].as_str().is_none_or(str::is_empty) {
        return Err("message.token must be a non-empty string".into());
    }
    if !m["notification"]["title"].is_string() || !m["notification"]["body"].is_string() {
        return Err("message.notification.title and .body must be strings".into());
    }
    match m["data"].as_object() {
        Some(d) if d.values().all(Value::is_string) => {}
        Some(d) => return Err(format!("message.data values must be strings: {d:?}")),
        None => return Err("message.data must be an object".into()),
    }
    if !m["android"]["collapse_key"].is_string() {
        return Err("message.android.collapse_key missing".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// APNs

/// A fake APNs: HTTP/2 without TLS, by prior knowledge (a client speaking HTTP/1.1 to it fails
/// its handshake, counted in `rejected`).
///
/// It checks the path (`/3/device/<token>`, else 404 `BadPath`) and method (POST), the provider
/// token (`authorization: bearer <jwt>`: ES256, verifying with the team key's public key, `kid`
/// the key id, `iss` the team, `iat` within the last hour; else 403 `InvalidProviderToken`),
/// `apns-topic` (else 400 `TopicDisallowed`), `apns-push-type` (else 400 `InvalidPushType`),
/// `apns-collapse-id` at most 64 bytes (else 400 `BadCollapseId`) and a body with `aps.alert`
/// and `aps.badge` (else 400 `PayloadEmpty`). Then: a failure asked for, a token set invalid
/// (410 `Unregistered`) or bad (400 `BadDeviceToken`), or 200 with an `apns-id`.
pub(crate) struct FakeApns {
    addr: SocketAddr,
    team_id: String,
    key_id: String,
    topic: String,
    state: Shared,
}

/// What the APNs fake checks requests against.
struct ApnsExpect {
    team_id: String,
    key_id: String,
    topic: String,
    public: Vec<u8>,
}

impl FakeApns {
    /// Starts a fake for team `team_id`, key `key_id` (whose public key, the 65-byte uncompressed
    /// point, is at `public_key_raw_path`) and app `topic`.
    pub(crate) async fn start(
        team_id: &str,
        key_id: &str,
        topic: &str,
        public_key_raw_path: impl AsRef<Path>,
    ) -> FakeApns {
        let expect = Arc::new(ApnsExpect {
            team_id: team_id.to_owned(),
            key_id: key_id.to_owned(),
            topic: topic.to_owned(),
            public: std::fs::read(public_key_raw_path).unwrap(),
        });
        let state = Shared::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_h2_conn(stream, st.clone(), expect.clone()));
            }
        });
        FakeApns { addr, team_id: team_id.to_owned(), key_id: key_id.to_owned(), topic: topic.to_owned(), state }
    }

    /// The fake with the team, key and topic of the fixtures.
    pub(crate) async fn start_default() -> FakeApns {
        FakeApns::start(APNS_TEAM, APNS_KEY_ID, APNS_TOPIC, fixture("apns-public.raw")).await
    }

    /// `push.apns.endpoint`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers sends to `token` with 410 `Unregistered` (the app was removed).
    pub(crate) fn set_invalid(&self, token: &str) {
        let body = json!({"reason": "Unregistered", "timestamp": now() * 1000});
        self.state.with(|s| s.invalid.insert(token.to_owned(), (410, body.to_string())));
    }

    /// Answers sends to `token` with 400 `BadDeviceToken`.
    pub(crate) fn set_bad_token(&self, token: &str) {
        let body = json!({"reason": "BadDeviceToken"});
        self.state.with(|s| s.invalid.insert(token.to_owned(), (400, body.to_string())));
    }

    /// Distinct provider tokens accepted (a provider reuses one for 50 minutes).
    pub(crate) fn provider_tokens(&self) -> usize {
        self.state.with(|s| s.provider_tokens.len())
    }

    /// The settings that send APNs tokens to this fake (with the fixture key).
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        vec![
            ("CONFAB__PUSH__APNS__TEAM_ID".into(), self.team_id.clone()),
            ("CONFAB__PUSH__APNS__KEY_ID".into(), self.key_id.clone()),
            ("CONFAB__PUSH__APNS__KEY_FILE".into(), fixture("apns-key.p8").display().to_string()),
            ("CONFAB__PUSH__APNS__TOPIC".into(), self.topic.clone()),
            ("CONFAB__PUSH__APNS__ENDPOINT".into(), self.endpoint()),
        ]
    }

    accessors!();
}

async fn serve_h2_conn(stream: TcpStream, state: Shared, expect: Arc<ApnsExpect>) {
    let mut conn = match h2::server::handshake(stream).await {
        Ok(c) => c,
        Err(e) => {
            state.with(|s| s.reject(format!("not an HTTP/2 connection: {e}")));
            return;
        }
    };
    while let Some(next) = conn.accept().await {
        let Ok((req, respond)) = next else { return };
        let (state, expect) = (state.clone(), expect.clone());
        tokio::spawn(async move {
            let (parts, mut recv) = req.into_parts();
            let mut body = Vec::new();
            while let Some(chunk) = recv.data().await {
                let Ok(chunk) = chunk else { return };
                let _ = recv.flow_control().release_capacity(chunk.len());
                body.extend_from_slice(&chunk);
            }
            let (status, reply, apns_id) = state.with(|s| apns_handle(s, &expect, &parts, &body));
            let mut respond = respond;
            let resp = http::Response::builder().status(status).header("apns-id", apns_id).body(()).unwrap();
            match reply {
                None => {
                    let _ = respond.send_response(resp, true);
                }
                Some(b) => {
                    if let Ok(mut send) = respond.send_response(resp, false) {
                        let _ = send.send_data(bytes::Bytes::from(b), true);
                    }
                }
            }
        });
    }
}

/// The status, the body (none on success) and the `apns-id` of an answer.
fn apns_handle(
    s: &mut State,
    expect: &ApnsExpect,
    req: &http::request::Parts,
    body: &[u8],
) -> (u16, Option<String>, String) {
    let apns_id =
        req.headers.get("apns-id").and_then(|v| v.to_str().ok()).map(str::to_owned).unwrap_or_else(|| random_hex(16));
    let reason = |r: &str| Some(json!({"reason": r}).to_string());
    let hdr = |k: &str| req.headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if req.version != http::Version::HTTP_2 {
        s.reject(format!("{:?}", req.version));
        return (505, None, apns_id);
    }
    let Some(token) = req.uri.path().strip_prefix("/3/device/").filter(|t| !t.is_empty() && !t.contains('/')) else {
        s.reject(format!("path {}", req.uri.path()));
        return (404, reason("BadPath"), apns_id);
    };
    if req.method != http::Method::POST {
        s.reject(format!("method {}", req.method));
        return (405, reason("MethodNotAllowed"), apns_id);
    }
    let auth = hdr("authorization");
    let Some(provider_token) = auth.strip_prefix("bearer ") else {
        s.reject(format!("authorization {auth:?}"));
        return (403, reason("MissingProviderToken"), apns_id);
    };
    if let Err(why) = check_provider_token(expect, provider_token) {
        s.reject(format!("provider token: {why}"));
        return (403, reason("InvalidProviderToken"), apns_id);
    }
    if hdr("apns-topic") != expect.topic {
        s.reject(format!("apns-topic {:?}", hdr("apns-topic")));
        return (400, reason("TopicDisallowed"), apns_id);
    }
    if hdr("apns-push-type").is_empty() {
        s.reject("no apns-push-type");
        return (400, reason("InvalidPushType"), apns_id);
    }
    if hdr("apns-collapse-id").len() > 64 {
        s.reject("apns-collapse-id over 64 bytes");
        return (400, reason("BadCollapseId"), apns_id);
    }
    let payload: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if payload["aps"]["alert"].is_null() || !payload["aps"]["badge"].is_u64() {
        s.reject(format!("payload {payload}"));
        return (400, reason("PayloadEmpty"), apns_id);
    }
    s.provider_tokens.insert(provider_token.to_owned());
    if let Some(status) = s.take_failure() {
        let r = match status {
            403 => "ExpiredProviderToken",
            404 => "BadPath",
            410 => "Unregistered",
            413 => "PayloadTooLarge",
            429 => "TooManyRequests",
            500 => "InternalServerError",
            503 => "ServiceUnavailable",
            _ => "BadMessageId",
        };
        return (status, reason(r), apns_id);
    }
    if let Some((status, b)) = s.invalid.get(token) {
        return (*status, Some(b.clone()), apns_id);
    }
    let headers: serde_json::Map<String, Value> =
        req.headers.iter().map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or("")))).collect();
    s.received.push(json!({"token": token, "headers": headers, "body": payload}));
    (200, None, apns_id)
}

fn check_provider_token(expect: &ApnsExpect, token: &str) -> Result<(), String> {
    let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &expect.public);
    let (h, c) = jwt::decode_verified(token, |m, sig| pk.verify(m, sig).is_ok())?;
    if h["alg"] != "ES256" || h["kid"] != expect.key_id.as_str() {
        return Err(format!("header {h}"));
    }
    if c["iss"] != expect.team_id.as_str() {
        return Err(format!("iss {}", c["iss"]));
    }
    let (iat, now) = (c["iat"].as_u64().unwrap_or(0), now());
    if iat > now + 60 || iat + 3600 < now {
        return Err(format!("iat {iat} at {now}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Relay

/// A fake relay: `POST /push`, signed as webhooks are. It checks the key id, the signature
/// (computed independently, as docs/http-api.md defines it, over the method, path, timestamp,
/// nonce and body), the timestamp (within 60 s), that no nonce repeats (else 401) and the body
/// (`provider`, a non-empty `token`, a `notification` object; else 400). Then: a failure asked
/// for, a token set invalid (410 Gone), or 200.
pub(crate) struct FakeRelay {
    addr: SocketAddr,
    key_id: String,
    secret: String,
    state: Shared,
}

impl FakeRelay {
    /// Starts a relay that accepts requests signed with `key_id` / `secret`.
    pub(crate) async fn start(key_id: &str, secret: &str) -> FakeRelay {
        let state = Shared::default();
        let (st, k, sec) = (state.clone(), key_id.to_owned(), secret.to_owned());
        let addr = serve_http1(Arc::new(move |req| st.with(|s| relay_handle(s, &k, &sec, req)))).await;
        FakeRelay { addr, key_id: key_id.to_owned(), secret: secret.to_owned(), state }
    }

    /// The relay with the key of [`RELAY_KEY`] / [`RELAY_SECRET`].
    pub(crate) async fn start_default() -> FakeRelay {
        FakeRelay::start(RELAY_KEY, RELAY_SECRET).await
    }

    /// `push.relay.url`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/push", self.addr)
    }

    /// Answers sends to `token` with 410 Gone.
    pub(crate) fn set_invalid(&self, token: &str) {
        let body = json!({"error": "token rejected by the vendor"});
        self.state.with(|s| s.invalid.insert(token.to_owned(), (410, body.to_string())));
    }

    /// The settings that send the tokens of `providers` (comma-separated) to this relay.
    pub(crate) fn env(&self, providers: &str) -> Vec<(String, String)> {
        vec![
            ("CONFAB__PUSH__RELAY__URL".into(), self.url()),
            ("CONFAB__PUSH__RELAY__KEY_ID".into(), self.key_id.clone()),
            ("CONFAB__PUSH__RELAY__SECRET".into(), self.secret.clone()),
            ("CONFAB__PUSH__RELAY__PROVIDERS".into(), providers.into()),
        ]
    }

    accessors!();
}

fn relay_handle(s: &mut State, key_id: &str, secret: &str, req: Http1Request) -> Http1Answer {
    let hdr = |k: &str| req.headers.get(k).cloned().unwrap_or_default();
    let (ts, nonce) = (hdr("x-confab-timestamp"), hdr("x-confab-nonce"));
    let expected = crate::http_api::signature(secret, &req.method, &req.path, &ts, &nonce, &req.body);
    let why = if req.method != "POST" || req.path != "/push" {
        Some(format!("{} {}", req.method, req.path))
    } else if hdr("x-confab-key") != key_id {
        Some(format!("key {:?}", hdr("x-confab-key")))
    } else if hdr("x-confab-signature") != expected {
        Some("bad signature".into())
    } else if !ts.parse::<u64>().is_ok_and(|t| t.abs_diff(now()) <= 60) {
        Some(format!("timestamp {ts:?}"))
    } else if nonce.is_empty() || !s.nonces.insert(nonce.clone()) {
        Some(format!("nonce {nonce:?} repeated"))
    } else {
        None
    };
    if let Some(why) = why {
        s.reject(why);
        return answer(401, json!({"error": "unauthorized"}));
    }
    let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
    if !hdr("content-type").starts_with("application/json")
        || !body["provider"].is_string()
        || body["token"].as_str().is_none_or(str::is_empty)
        || !body["notification"].is_object()
    {
        s.reject(format!("body {body}"));
        return answer(400, json!({"error": "bad request"}));
    }
    if let Some(status) = s.take_failure() {
        let mut a = answer(status, json!({"error": "failure asked for by the test"}));
        if status == 429 || status == 503 {
            a.headers.push(("retry-after", "1".into()));
        }
        return a;
    }
    if let Some((status, b)) = s.invalid.get(body["token"].as_str().unwrap_or("")) {
        return Http1Answer { status: *status, headers: Vec::new(), body: b.clone() };
    }
    s.received.push(body);
    answer(200, json!({"ok": true}))
}

// ---------------------------------------------------------------------------------------------

/// `confab::push::providers` against the fakes, without a node.
mod providers_direct {
    use std::time::Duration;

    use confab::push::providers::Providers;
    use confab::push::{Notification, Outcome, Target};

    use super::*;

    fn notification(seq: u64) -> Notification {
        Notification {
            user: "bob".into(),
            device: "phone".into(),
            title: "Alice".into(),
            body: "hello".into(),
            image: None,
            badge: 2,
            conv_id: "d:alice:bob".into(),
            seq,
            sender: "alice".into(),
            count: 1,
            collapse_key: "d:alice:bob".into(),
            mention: false,
        }
    }

    fn target(provider: &str, token: &str) -> Target {
        Target { provider: provider.into(), token: token.into() }
    }

    fn providers(env: Vec<(String, String)>) -> Providers {
        let mut env = env;
        env.push(("CONFAB__PUSH__TIMEOUT_MS".into(), "2000".into()));
        Providers::from_config(&push_config(&env)).unwrap()
    }

    #[tokio::test]
    async fn fcm_sends_with_one_access_token() {
        let fcm = FakeFcm::start_default().await;
        let dir = tempfile::tempdir().unwrap();
        let p = providers(fcm.env(dir.path()));
        assert_eq!(p.names(), ["fcm"]);
        assert_eq!(p.send(&target("fcm", "tok-1"), &notification(1)).await, Outcome::Sent, "{}", fcm.last_rejection());
        assert_eq!(p.send(&target("fcm", "tok-1"), &notification(2)).await, Outcome::Sent);
        assert_eq!(fcm.token_requests(), 1, "the access token is reused");
        let got = fcm.received();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1]["message"]["token"], "tok-1");
        assert_eq!(got[1]["message"]["data"]["seq"], "2");
        assert_eq!(got[1]["message"]["android"]["collapse_key"], "d:alice:bob");

        // An expired access token: that send is retried later, with a new one.
        fcm.revoke_access_tokens();
        let o = p.send(&target("fcm", "tok-1"), &notification(3)).await;
        assert_eq!(o.reason(), "auth", "{o:?}");
        assert_eq!(p.send(&target("fcm", "tok-1"), &notification(3)).await, Outcome::Sent);
        assert_eq!(fcm.token_requests(), 2);
        assert_eq!(fcm.rejected(), 1, "only the revoked token was refused");
    }

    #[tokio::test]
    async fn fcm_invalid_tokens_and_failures() {
        let fcm = FakeFcm::start_default().await;
        let dir = tempfile::tempdir().unwrap();
        let p = providers(fcm.env(dir.path()));
        fcm.set_invalid("dead");
        let o = p.send(&target("fcm", "dead"), &notification(1)).await;
        assert!(matches!(&o, Outcome::InvalidToken(d) if d.contains("UNREGISTERED")), "{o:?}");
        fcm.set_fail_next(1, 429);
        let o = p.send(&target("fcm", "live"), &notification(1)).await;
        let after = Some(Duration::from_secs(1));
        assert!(matches!(o, Outcome::Retry { reason: "throttled", after: a, .. } if a == after), "{o:?}");
        fcm.set_fail_next(1, 503);
        assert_eq!(p.send(&target("fcm", "live"), &notification(1)).await.reason(), "http_5xx");
        fcm.set_fail_next(1, 403);
        assert_eq!(p.send(&target("fcm", "live"), &notification(1)).await.reason(), "http_4xx");
        assert_eq!(p.send(&target("fcm", "live"), &notification(1)).await, Outcome::Sent);
        assert_eq!(fcm.rejected(), 0, "{}", fcm.last_rejection());
    }

    /// A token endpoint that refuses the assertion (another account's key) is `Retry(auth)`.
    #[tokio::test]
    async fn fcm_refused_assertion() {
        // The fake verifies with the APNs fixture's key: no RSA signature verifies.
        let fcm = FakeFcm::start(FCM_PROJECT, fixture("apns-public.raw")).await;
        let dir = tempfile::tempdir().unwrap();
        let p = providers(fcm.env(dir.path()));
        let o = p.send(&target("fcm", "tok"), &notification(1)).await;
        assert_eq!(o.reason(), "auth", "{o:?}");
        assert_eq!((fcm.token_requests(), fcm.rejected()), (1, 1));
    }

    #[tokio::test]
    async fn apns_over_h2c() {
        let apns = FakeApns::start_default().await;
        let p = providers(apns.env());
        let t = "a1b2c3d4e5f6";
        assert_eq!(p.send(&target("apns", t), &notification(1)).await, Outcome::Sent, "{}", apns.last_rejection());
        assert_eq!(p.send(&target("apns", t), &notification(2)).await, Outcome::Sent);
        assert_eq!(apns.provider_tokens(), 1, "the provider token is reused");
        let got = apns.received();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["token"], t);
        let h = &got[0]["headers"];
        assert_eq!((h["apns-topic"].as_str(), h["apns-push-type"].as_str()), (Some(APNS_TOPIC), Some("alert")));
        assert_eq!((h["apns-priority"].as_str(), h["apns-collapse-id"].as_str()), (Some("10"), Some("d:alice:bob")));
        let expiration: u64 = h["apns-expiration"].as_str().unwrap().parse().unwrap();
        assert!(expiration > now() + 23 * 3600);
        assert_eq!(got[1]["body"]["aps"]["alert"]["title"], "Alice");
        assert_eq!(got[1]["body"]["aps"]["badge"], 2);
        assert_eq!(got[1]["body"]["seq"], 2);

        apns.set_invalid("gone");
        assert_eq!(p.send(&target("apns", "gone"), &notification(3)).await.reason(), "invalid_token");
        apns.set_bad_token("bad");
        assert_eq!(p.send(&target("apns", "bad"), &notification(3)).await.reason(), "invalid_token");
        apns.set_fail_next(1, 503);
        assert_eq!(p.send(&target("apns", t), &notification(3)).await.reason(), "http_5xx");
        apns.set_fail_next(1, 429);
        assert_eq!(p.send(&target("apns", t), &notification(3)).await.reason(), "throttled");
        // An expired provider token is dropped: the next send signs a new one.
        apns.set_fail_next(1, 403);
        assert_eq!(p.send(&target("apns", t), &notification(3)).await.reason(), "auth");
        assert_eq!(p.send(&target("apns", t), &notification(3)).await, Outcome::Sent);
        assert_eq!(apns.rejected(), 0, "{}", apns.last_rejection());
    }

    #[tokio::test]
    async fn apns_wrong_key_is_refused() {
        let apns = FakeApns::start("OTHERTEAM0", APNS_KEY_ID, APNS_TOPIC, fixture("apns-public.raw")).await;
        let mut env = apns.env();
        env[0].1 = APNS_TEAM.into();
        let p = providers(env);
        assert_eq!(p.send(&target("apns", "abc"), &notification(1)).await.reason(), "auth");
        assert_eq!(apns.rejected(), 1);
        assert!(apns.last_rejection().contains("iss"), "{}", apns.last_rejection());
    }

    #[tokio::test]
    async fn relay_signed() {
        let relay = FakeRelay::start_default().await;
        let p = providers(relay.env("huawei,xiaomi"));
        assert!(p.accepts("huawei") && !p.accepts("fcm"));
        let o = p.send(&target("huawei", "hw-1"), &notification(5)).await;
        assert_eq!(o, Outcome::Sent, "{}", relay.last_rejection());
        let got = relay.received();
        assert_eq!((got[0]["provider"].as_str(), got[0]["token"].as_str()), (Some("huawei"), Some("hw-1")));
        assert_eq!(got[0]["notification"]["seq"], 5);
        assert_eq!(got[0]["notification"]["collapse_key"], "d:alice:bob");
        relay.set_invalid("hw-gone");
        assert_eq!(p.send(&target("huawei", "hw-gone"), &notification(6)).await.reason(), "invalid_token");
        relay.set_fail_next(1, 500);
        assert_eq!(p.send(&target("xiaomi", "mi-1"), &notification(6)).await.reason(), "http_5xx");
        assert_eq!(p.send(&target("xiaomi", "mi-1"), &notification(6)).await, Outcome::Sent);
        assert_eq!(relay.rejected(), 0, "{}", relay.last_rejection());

        // Another secret: the relay refuses the signature.
        let mut env = relay.env("huawei");
        env[2].1 = "another-secret-0123456789".into();
        let p = providers(env);
        assert_eq!(p.send(&target("huawei", "hw-1"), &notification(7)).await.reason(), "http_4xx");
        assert_eq!(relay.rejected(), 1);
    }

    #[tokio::test]
    async fn unreachable_provider_is_retried() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let env = vec![
            ("CONFAB__PUSH__RELAY__URL".to_string(), format!("http://127.0.0.1:{port}/push")),
            ("CONFAB__PUSH__RELAY__KEY_ID".into(), RELAY_KEY.into()),
            ("CONFAB__PUSH__RELAY__SECRET".into(), RELAY_SECRET.into()),
            ("CONFAB__PUSH__RELAY__PROVIDERS".into(), "huawei".into()),
        ];
        let o = providers(env).send(&target("huawei", "hw"), &notification(1)).await;
        assert_eq!(o.reason(), "connect", "{o:?}");
    }
}
