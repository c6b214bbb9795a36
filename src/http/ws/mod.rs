//! The WebSocket endpoint: `GET /ws` checks the token, the client's address and the user's
//! access, guards the frames' sizes and starts a [`session::WsSession`], whose [`outlet`] is the
//! response body.

pub mod config;
pub mod frame_guard;
pub mod outlet;
pub mod session;

use actix_web::body::BodyStream;
use actix_web::{web, HttpRequest, HttpResponse};

use confab_actors::error::{Error, ErrorCode};

use self::config::{SessionAuth, Transport};
use self::frame_guard::FrameGuard;
use self::outlet::ControlBody;
use self::session::WsSession;
use super::{error_response, AppState};

/// The token from `Authorization: Bearer …` (the scheme in any case, RFC 9110), or `?token=`
/// for browsers.
pub(crate) fn token(req: &HttpRequest) -> Option<String> {
    if let Some(h) = req.headers().get("authorization").and_then(|v| v.to_str().ok()) {
        let (scheme, token) = h.trim_start().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("token").cloned())
}

pub async fn upgrade(
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
    let verified = match tokio::time::timeout(
        state.access_check_timeout,
        engine.check_access(&claims.sub, Some((&claims.dev, issued_ms))),
    )
    .await
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
