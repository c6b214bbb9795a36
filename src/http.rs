//! HTTP routes: health, readiness, metrics, the WebSocket upgrade and the `/api/v1` integration API
//! (in [`crate::api`]). Handlers stay thin: they
//! extract, call the engine, and map errors through the one error table.

use actix_web::body::BodyStream;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use confab_actors::engine::Engine;
use confab_actors::error::{Error, ErrorCode};
use confab_actors::session::{ControlBody, SessionConfig, WsSession};

use crate::auth;
use crate::cluster::Cluster;

/// What every worker shares.
pub struct AppState {
    pub engine: Engine,
    pub session: SessionConfig,
    pub secret: String,
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
    match state.engine.store().ping().await {
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

/// The token from `Authorization: Bearer …`, or `?token=` for browsers.
fn token(req: &HttpRequest) -> Option<String> {
    if let Some(h) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
        return h.strip_prefix("Bearer ").map(|t| t.trim().to_string());
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
        Some(t) => match auth::verify(&state.secret, &t) {
            Ok(c) => c,
            Err(e) => return Ok(error_response(&e)),
        },
    };
    // A disabled user, or a token issued before the user's tokens were revoked, is refused.
    if let Err(e) = state.engine.check_access(&claims.sub, Some(claims.iat)).await {
        return Ok(error_response(&e));
    }
    // actix-ws does the handshake and reads frames; the session actor owns actix-ws's `Session`
    // (control frames) and the outlet, the response body, writes the data frames and carries
    // actix-ws's own body.
    let (response, ws, stream) = actix_ws::handle(&req, body)?;
    // Frames up to 4x the limit are read and answered `frame_too_large`; beyond, the
    // connection is closed (1009) without buffering more.
    let hard_limit = state.session.max_frame_bytes.saturating_mul(4);
    let stream = stream.max_frame_size(hard_limit).aggregate_continuations().max_continuation_size(hard_limit);
    let (head, ws_body) = response.into_parts();
    let control: ControlBody = Box::pin(ControlStream(ws_body));
    let (actor, outlet) = WsSession::new(
        state.engine.clone(),
        claims.sub.into(),
        claims.dev.into(),
        state.session.clone(),
        ws,
        stream,
        control,
    );
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

    #[test]
    fn protocol_doc_lists_every_error_code_with_its_status() {
        for row in ERROR_TABLE {
            let line = format!("| `{}` | {} |", row.name, row.http_status);
            assert!(PROTOCOL.contains(&line), "docs/protocol.md lacks the row for {}", row.name);
        }
    }

    #[test]
    fn protocol_doc_describes_every_op() {
        for op in OP_NAMES {
            assert!(PROTOCOL.contains(&format!("`{op}`")), "docs/protocol.md does not describe op {op}");
        }
    }
}
