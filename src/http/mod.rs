//! The transports: thin shells around [`Engine`], in one place. [`health`] (`/healthz`,
//! `/readyz`, `/metrics`), [`ws`] (the WebSocket endpoint and its sessions), [`api`] (the signed
//! integration API under `/api/v1`), [`conn`] (socket options, client addresses, per-address
//! limits). Handlers extract, call the engine, and map errors through the one error table.

pub mod api;
pub mod conn;
pub mod files;
pub mod health;
pub mod ws;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};

use confab_actors::engine::Engine;
use confab_actors::error::Error;

use crate::http::ws::config::SessionConfig;

/// What every worker shares.
pub struct AppState {
    pub engine: Engine,
    pub session: SessionConfig,
    /// Verifies access tokens (`[auth]`).
    pub tokens: crate::auth::Tokens,
    /// Per-address WebSocket limits, and whose `X-Forwarded-For` to believe.
    pub ip_limits: crate::http::conn::IpLimits,
    pub proxies: crate::http::conn::TrustedProxies,
    /// `auth.access_check_timeout_ms`.
    pub access_check_timeout: std::time::Duration,
    /// `server.ready_timeout_ms`.
    pub ready_timeout: std::time::Duration,
    /// The signed HTTP integration API (`/api/v1`).
    pub api: crate::http::api::ApiState,
    /// Uploaded files (`None` when their directory could not be made).
    pub files: Option<std::sync::Arc<files::FilesState>>,
    /// More metrics `/metrics` renders after the node's (the pusher's, when push is on): each
    /// gives its Prometheus text.
    pub more_metrics: Vec<Box<dyn Fn() -> String + Send + Sync>>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .route("/ws", web::get().to(ws::upgrade))
        .configure(files::routes)
        .configure(api::routes);
}

/// Middleware: each HTTP request runs in a span `http{method, path, status}` under the node's
/// span (debug level: disabled, so free, unless the filter enables it). The API's signed
/// requests add their key (`key`); the `/ws` upgrade's session gets a span of its own.
pub async fn trace_request(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    use tracing::Instrument;
    let node = req.app_data::<web::Data<AppState>>().map_or_else(tracing::Span::none, |s| s.engine.core().span());
    let span = tracing::debug_span!(
        parent: &node,
        "http",
        method = %req.method(),
        path = %req.path(),
        key = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    let res = next.call(req).instrument(span.clone()).await;
    if let Ok(r) = &res {
        span.record("status", r.status().as_u16());
    }
    res
}

/// The JSON error body every HTTP error uses: `{"error": {"code", "message"}}`.
pub fn error_response(e: &Error) -> HttpResponse {
    let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status).json(serde_json::json!({ "error": e }))
}

#[cfg(test)]
mod tests {
    use confab_actors::error::ERROR_TABLE;
    use confab_actors::proto::OP_NAMES;

    const PROTOCOL: &str = include_str!("../../docs/protocol.md");

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
