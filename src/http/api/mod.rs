//! The signed HTTP integration API under `/api/v1` (docs/http-api.md).
//!
//! One file per scope, which lists its routes once (`resources!`: the routes and their OpenAPI
//! description); handlers stay thin: the [`Signed`] extractor checks the key, the signature, the
//! nonce, the scope (a type, e.g. `Signed<scope::Groups>`) and the query string (`Signed<S, Q>`
//! parses parameters `Q`; without `Q` any is refused) before the handler runs; the handler reads
//! its path parameters (a type of [`path`]) and the body, calls
//! [`Engine`](confab_actors::engine::Engine) with a [`Caller`] on device `api`, and answers.
//! Errors map through the one error table.

pub mod auth;
mod broadcasts;
mod contacts;
pub(crate) mod conversations;
mod files;
mod groups;
mod messages;
pub mod openapi;
pub mod path;
pub mod schema;
mod stats;
pub(crate) mod users;
mod webhooks;

use std::marker::PhantomData;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt as _;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;

use confab_actors::engine::Caller;
use confab_actors::error::{Error, ErrorCode};
use confab_actors::model::validate_id;

use crate::config::Config;
use crate::http::{error_response, AppState};

pub use auth::Scope;
pub use schema::ErrorBody;

/// The API's share of the node's state.
pub struct ApiState {
    pub verifier: auth::Verifier,
    pub system_user: String,
    pub max_body_bytes: usize,
    pub token_ttl_secs: u64,
    pub broadcast_max_rate: u32,
    /// The store's webhook outbox (delivery log and replay), set at start-up.
    pub outbox: std::sync::OnceLock<Arc<dyn confab_actors::outbox::Outbox>>,
}

impl ApiState {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            verifier: auth::Verifier::new(&cfg.api.keys, cfg.api.nonce_cache_size),
            system_user: cfg.api.system_user.clone(),
            max_body_bytes: cfg.api.max_body_bytes,
            token_ttl_secs: cfg.auth.token_ttl_secs,
            broadcast_max_rate: cfg.api.broadcast_max_rate,
            outbox: std::sync::OnceLock::new(),
        }
    }
}

/// An API error: answered as `{"error": {"code", "message"}}` with the table's status.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
    fn error_response(&self) -> HttpResponse {
        tracing::debug!(code = %self.0.code, error = %self.0.message, "refused");
        error_response(&self.0)
    }
}

pub type ApiResult = Result<HttpResponse, ApiError>;

/// `200` with a JSON body.
pub fn ok<T: Serialize>(v: &T) -> ApiResult {
    Ok(HttpResponse::Ok().json(v))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The scope an endpoint needs, as a type (see [`Signed`]).
pub trait ScopeOf {
    const SCOPE: Scope;
}

/// The scopes as types: `Signed<scope::Groups>` is a request signed with a key that has the
/// `groups` scope.
pub mod scope {
    use super::{Scope, ScopeOf};
    macro_rules! scopes {
        ($($name:ident),*) => {$(
            pub struct $name;
            impl ScopeOf for $name {
                const SCOPE: Scope = Scope::$name;
            }
        )*};
    }
    scopes!(Users, Messages, Conversations, Groups, Webhooks, Stats, Any);
}

/// No query parameters: an endpoint that takes none refuses any (`invalid_request`), so a
/// misspelt or misplaced parameter is never silently ignored.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// A request whose key, timestamp, signature, nonce and scope `S` were checked, with its body
/// and its query parameters `Q` (a struct with `deny_unknown_fields`: unknown parameters are
/// refused). As an extractor it does all of that before the handler runs, so a handler is:
/// parse, one `Engine` call, a response.
pub struct Signed<S, Q = NoQuery> {
    req: HttpRequest,
    body: web::Bytes,
    pub query: Q,
    _scope: PhantomData<S>,
}

impl<S: ScopeOf + 'static, Q: DeserializeOwned + 'static> FromRequest for Signed<S, Q> {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        let payload = payload.take();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<AppState>>()
                .cloned()
                .ok_or_else(|| ApiError(Error::internal("the API's state is missing")))?;
            let body = verify(&req, payload, &state, S::SCOPE).await?;
            // Only after the signature: an unsigned request learns nothing of the parameters.
            let query = web::Query::<Q>::from_query(req.query_string()).map_err(|e| {
                if std::any::TypeId::of::<Q>() == std::any::TypeId::of::<NoQuery>() {
                    Error::invalid("this endpoint takes no query parameters")
                } else {
                    Error::invalid(format!("invalid query: {e}"))
                }
            })?;
            Ok(Signed { req, body, query: query.into_inner(), _scope: PhantomData })
        })
    }
}

impl<S, Q> Signed<S, Q> {
    /// The body as JSON of type `T` (`invalid_request` otherwise).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))
    }

    /// The body as JSON of type `T`, or `T::default()` when there is none.
    pub fn json_or_default<T: DeserializeOwned + Default>(&self) -> Result<T, Error> {
        if self.body.is_empty() {
            return Ok(T::default());
        }
        self.json()
    }

    /// The path's parameters, as the type `P` declares them (see [`path`](mod@path)).
    pub fn path<P: path::PathParams>(&self) -> Result<P, Error> {
        P::read(&self.req)
    }
}

/// Checks the key (before reading anything), reads the body up to `api.max_body_bytes`, then
/// checks timestamp, signature, nonce and scope. The query string is looked at only after
/// this (by [`Signed`]): it is covered by the signature, and a request that is not correctly
/// signed must learn nothing beyond "unauthorized", not even which parameters an endpoint
/// takes.
async fn verify(
    req: &HttpRequest,
    mut payload: actix_web::dev::Payload,
    state: &AppState,
    scope: Scope,
) -> Result<web::Bytes, ApiError> {
    let api = &state.api;
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let headers = auth::Headers {
        key: header("x-confab-key"),
        timestamp: header("x-confab-timestamp"),
        nonce: header("x-confab-nonce"),
        signature: header("x-confab-signature"),
    };
    let key = api.verifier.key(&headers)?;
    // The request's span (`http`, see `crate::http::trace_request`) names the key from here on.
    tracing::Span::current().record("key", tracing::field::display(&key.id));
    let too_large = || Error::new(ErrorCode::BodyTooLarge, format!("the body exceeds {} bytes", api.max_body_bytes));
    let declared = header("content-length").and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > api.max_body_bytes) {
        return Err(too_large().into());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| Error::invalid(format!("could not read the body: {e}")))?;
        if body.len() + chunk.len() > api.max_body_bytes {
            return Err(too_large().into());
        }
        body.extend_from_slice(&chunk);
    }
    let path = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
    api.verifier.verify(&headers, req.method().as_str(), path, &body, scope, now_secs())?;
    // In a cluster the nonce must be new to every node, not only to this one.
    let ttl = std::time::Duration::from_secs(2 * auth::WINDOW_SECS + 1);
    if !state.engine.claim_nonce(headers.key.unwrap_or(""), headers.nonce.unwrap_or(""), ttl).await {
        let e = Error::new(ErrorCode::NonceReplayed, "this nonce was already used; sign each request with a new one");
        return Err(e.into());
    }
    Ok(body.freeze())
}

/// The largest seq, cursor or event id the API takes: 2^53−1, the largest integer a JSON number
/// keeps exactly in JavaScript, and in PHP or Java decoders that read large numbers as doubles.
/// No seq, cursor or id the server hands out comes near it; a larger one can only be a client's
/// mistake, refused rather than answered as if it were a rounded neighbour.
pub const MAX_SAFE_INT: u64 = (1 << 53) - 1;

/// `v`, or `invalid_request` when it exceeds [`MAX_SAFE_INT`].
pub fn safe_int(name: &str, v: u64) -> Result<u64, Error> {
    if v > MAX_SAFE_INT {
        return Err(Error::invalid(format!("{name} must be at most {MAX_SAFE_INT} (2^53-1)")));
    }
    Ok(v)
}

fn safe_int_de<E: serde::de::Error>(v: u64) -> Result<u64, E> {
    // serde does not tell a `deserialize_with` function which field it reads: the message names
    // the kinds of field instead.
    safe_int("a seq, cursor or id", v).map_err(|e| E::custom(e.message))
}

/// `deserialize_with` for a seq, cursor or event id in a query or a body (see [`MAX_SAFE_INT`]).
pub fn de_safe_int<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    safe_int_de(<u64 as serde::Deserialize>::deserialize(d)?)
}

/// [`de_safe_int`] for an optional one (use with `#[serde(default)]`).
pub fn de_safe_int_opt<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    <Option<u64> as serde::Deserialize>::deserialize(d)?.map(safe_int_de).transpose()
}

/// An integer path segment (`{seq}`, an event id), at most [`MAX_SAFE_INT`].
fn path_int(req: &HttpRequest, name: &str) -> Result<u64, Error> {
    let v = req.match_info().get(name).unwrap_or("");
    let n = v.parse().map_err(|_| Error::invalid(format!("{name} must be a non-negative integer")))?;
    safe_int(name, n)
}

/// A path segment (`{id}`), checked as an id.
fn path_id(req: &HttpRequest, name: &str) -> Result<String, Error> {
    let v = req.match_info().get(name).unwrap_or("");
    validate_id(name, v)?;
    Ok(v.to_string())
}

/// A path segment as given (conversation ids are checked by the engine).
fn path_raw(req: &HttpRequest, name: &str) -> String {
    req.match_info().get(name).unwrap_or("").to_string()
}

/// The API acts on behalf of `user`, from device `api`, with no connection of its own, so every
/// device of the user (and of other members) receives the events.
pub fn caller(user: &str) -> Result<Caller, Error> {
    validate_id("user", user)?;
    Ok(Caller { user: Arc::from(user), device: Arc::from("api"), conn_id: None })
}

/// [`caller`] for a change the API makes as `user` (not a read): refused with `user_disabled`
/// when the user was disabled, as their own requests would be.
pub async fn acting(state: &AppState, user: &str) -> Result<Caller, Error> {
    let c = caller(user)?;
    state.engine.check_access(user, None).await?;
    Ok(c)
}

/// Runs `f` over `items` with at most `parallel` in flight, answering in the items' order (the
/// bulk endpoints: their writes share the store's group commits instead of waiting one by one).
pub async fn in_order<T, R, F, Fut>(items: Vec<T>, parallel: usize, f: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    use futures_util::StreamExt;
    futures_util::stream::iter(items).map(f).buffered(parallel).collect().await
}

/// Every route under `/api/v1`; anything else there is `not_found` (after the signature check).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api-docs/openapi.json", web::get().to(openapi::serve));
    cfg.service(
        web::scope("/api/v1")
            .configure(users::routes)
            .configure(contacts::routes)
            .configure(messages::routes)
            .configure(conversations::routes)
            .configure(groups::routes)
            .configure(webhooks::routes)
            .configure(stats::routes)
            .configure(broadcasts::routes)
            .configure(files::routes)
            .default_service(web::to(unknown)),
    );
}

/// Declares a resource module's operations once, each path with its methods and handlers:
/// `routes`, which registers them under `/api/v1` (other methods on a path answer `not_found`),
/// and `Api`, their OpenAPI description, every one tagged and signed with scope `$scope` (see
/// [`schema::Scoped`]).
macro_rules! resources {
    ($scope:ident: $($path:literal => $($method:ident $handler:ident),+;)+) => {
        /// Registers these operations.
        pub fn routes(cfg: &mut actix_web::web::ServiceConfig) {
            $(cfg.service($crate::http::api::resource($path)$(.route(actix_web::web::$method().to($handler)))+);)+
        }

        /// The description of these operations.
        #[derive(utoipa::OpenApi)]
        #[openapi(paths($($($handler),+),+), modifiers(&SCOPE))]
        pub struct Api;

        const SCOPE: $crate::http::api::schema::Scoped =
            $crate::http::api::schema::Scoped($crate::http::api::Scope::$scope);
    };
}
use resources;

/// A resource whose other methods answer `not_found` like unknown paths.
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(unknown))
}

async fn unknown(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> ApiResult {
    // Whatever the query string: an unknown resource is `not_found`, not a bad query.
    verify(&req, payload.into_inner(), &state, Scope::Any).await?;
    Err(Error::not_found(format!("no such resource: {} {}", req.method(), req.path())).into())
}
