//! HTTP routes: health, readiness, metrics, the WebSocket upgrade and the `/api/v1` integration API
//! (in [`crate::api`]). Handlers stay thin: they
//! extract, call the engine, and map errors through the one error table.

use actix_web::body::BodyStream;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use confab_actors::engine::Engine;
use confab_actors::error::{Error, ErrorCode};
use confab_actors::session::{ControlBody, SessionAuth, SessionConfig, Transport, WsSession};

use crate::cluster::Cluster;
use crate::frame_guard::FrameGuard;

/// What every worker shares.
pub struct AppState {
    pub engine: Engine,
    pub session: SessionConfig,
    /// Verifies access tokens (`[auth]`).
    pub tokens: crate::auth::Tokens,
    /// Per-address WebSocket limits, and whose `X-Forwarded-For` to believe.
    pub ip_limits: crate::conn::IpLimits,
    pub proxies: crate::conn::TrustedProxies,
    /// `auth.access_check_timeout_ms`.
    pub access_check_timeout: std::time::Duration,
    /// `server.ready_timeout_ms`.
    pub ready_timeout: std::time::Duration,
    /// The signed HTTP integration API (`/api/v1`).
    pub api: crate::api::ApiState,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/ws", web::get().to(ws))
        .configure(crate::api::routes);
}

/// The JSON error body every HTTP error uses: `{"error": {"code", "message"}}`.
pub fn error_response(e: &Error) -> HttpResponse {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(serde_json::json!({ "error": e }))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Ready when the store answers. In a cluster, Redis's state is reported but does not make the
/// node unready: without Redis a node still serves its own users.
async fn readyz(state: web::Data<AppState>, cluster: Option<web::Data<Cluster>>) -> HttpResponse {
    // Bounded: a balancer's health check must get an answer even while the store hangs.
    let ping = tokio::time::timeout(state.ready_timeout, state.engine.store().ping()).await;
    let ping = ping.unwrap_or_else(|_| {
        Err(confab_actors::error::StoreError::Unavailable(format!(
            "the store did not answer within {} ms",
            state.ready_timeout.as_millis()
        )))
    });
    match ping {
        Ok(()) => match cluster {
            None => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
            Some(c) => HttpResponse::Ok().json(serde_json::json!({
                "status": "ready",
                "cluster": { "node_id": c.node_id(), "redis": if c.redis_up() { "up" } else { "down" } },
            })),
        },
        Err(e) => error_response(&Error::new(ErrorCode::Unavailable, e.to_string())),
    }
}

async fn metrics(state: web::Data<AppState>, cluster: Option<web::Data<Cluster>>) -> HttpResponse {
    let mut text = state.engine.metrics().render();
    if let Some(c) = cluster {
        text.push_str(&c.metrics().render());
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text)
}

/// The token from `Authorization: Bearer …` (the scheme in any case, RFC 9110), or `?token=`
/// for browsers.
fn token(req: &HttpRequest) -> Option<String> {
    if let Some(h) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
        let (scheme, token) = h.trim_start().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("token").cloned())
}

async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let claims = match token(&req) {
        None => return Ok(error_response(&Error::new(ErrorCode::Unauthorized, "an access token is required"))),
        Some(t) => match state.tokens.verify(&t) {
            Ok(c) => c,
            Err(e) => return Ok(error_response(&e)),
        },
    };
    let engine = &state.engine;
    // Per client address: how fast connections are opened, and how many are open.
    let hold = match state.proxies.client_ip(&req) {
        Some(ip) => match state.ip_limits.admit(ip) {
            Ok(slot) => Some(Box::new(slot) as Box<dyn std::any::Any>),
            Err(e) => {
                engine.metrics().rate_limited.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(error_response(&e));
            }
        },
        None => None,
    };
    // A disabled user, or a token issued before the user's tokens were revoked, is refused. The
    // registry's access epoch is read first: a revocation applied during the check is caught
    // when the session registers (see `Registry::register`). When the store cannot answer in
    // time the connection is let in and the session checks again until the store answers.
    let epoch = engine.registry().access_epoch(&claims.sub);
    let issued_ms = claims.issued_ms();
    let verified =
        match tokio::time::timeout(state.access_check_timeout, engine.check_access(&claims.sub, Some(issued_ms))).await
        {
            Ok(Ok(())) => true,
            Ok(Err(e)) if e.code != ErrorCode::Unavailable => return Ok(error_response(&e)),
            Ok(Err(_)) | Err(_) => false,
        };
    // Frames are refused from their header (close 1009) when they, or a fragmented message,
    // exceed the limit: nothing larger is ever buffered (see `frame_guard`).
    let limit = state.session.max_frame_bytes;
    let guard = FrameGuard::new(body.into_inner(), limit);
    let frame_too_large = guard.tripped();
    let mut guarded: actix_web::dev::Payload = actix_web::dev::Payload::Stream { payload: Box::pin(guard) };
    let body = <web::Payload as actix_web::FromRequest>::from_request(&req, &mut guarded).await?;
    // actix-ws does the handshake and reads frames; the session actor owns actix-ws's `Session`
    // (control frames) and the outlet, the response body, writes the data frames and carries
    // actix-ws's own body.
    let (response, ws, stream) = actix_ws::handle(&req, body)?;
    let stream = stream.max_frame_size(limit).aggregate_continuations().max_continuation_size(limit);
    let (head, ws_body) = response.into_parts();
    let control: ControlBody = Box::pin(ControlStream(ws_body));
    let auth = SessionAuth { issued_ms, expires_ms: claims.exp.saturating_mul(1000), epoch, verified };
    let transport = Transport { ws, stream, control, frame_too_large, hold };
    let (actor, outlet) =
        WsSession::new(engine.clone(), claims.sub.into(), claims.dev.into(), state.session.clone(), auth, transport);
    actix::Actor::start(actor);
    Ok(head.set_body(BodyStream::new(outlet)).map_into_boxed_body())
}

/// actix-ws's response body as a stream of chunks, for the session's outlet.
struct ControlStream(actix_web::body::BoxBody);

impl futures_util::Stream for ControlStream {
    type Item = Result<actix_web::web::Bytes, Box<dyn std::error::Error>>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        actix_web::body::MessageBody::poll_next(std::pin::Pin::new(&mut self.0), cx)
    }
}

#[cfg(test)]
mod tests {
    use confab_actors::error::ERROR_TABLE;
    use confab_actors::proto::OP_NAMES;

    const PROTOCOL: &str = include_str!("../docs/protocol.md");

    /// docs/protocol.md's error table is exactly the code's: the same codes, statuses and
    /// meanings, no row more, none less.
    #[test]
    fn protocol_doc_lists_exactly_the_error_codes() {
        let section = PROTOCOL.split("\n## Errors").nth(1).expect("an Errors section");
        let documented: Vec<(String, u16, String)> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .map(|l| {
                let (name, rest) = l.split_once("` | ").expect("| `code` | status | meaning |");
                let (status, meaning) = rest.split_once(" | ").expect("status | meaning");
                let status = status.parse().expect("a status");
                (name.to_owned(), status, meaning.trim_end_matches(" |").trim_end_matches('|').trim().to_owned())
            })
            .collect();
        let table: Vec<(String, u16, String)> =
            ERROR_TABLE.iter().map(|r| (r.name.to_owned(), r.http_status, r.meaning.to_owned())).collect();
        for row in &table {
            assert!(documented.contains(row), "docs/protocol.md lacks or misstates {row:?}");
        }
        for row in &documented {
            assert!(table.contains(row), "docs/protocol.md lists {row:?}, which the server does not have");
        }
    }

    #[test]
    fn protocol_doc_describes_every_op() {
        for op in OP_NAMES {
            assert!(PROTOCOL.contains(&format!("`{op}`")), "docs/protocol.md does not describe op {op}");
        }
    }
}
