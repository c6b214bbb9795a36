//! The OpenAPI 3 description of the API, generated from the handlers' annotations and the types
//! they exchange. Served at `/api-docs/openapi.json`, printed by `confab openapi`, and committed
//! as `docs/openapi.json` (a test keeps the file equal to what the code generates).

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{conversations, groups, messages, users, webhooks};

/// The error body of every failed request.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    error: ErrorDetail,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code from the error table (docs/protocol.md).
    code: String,
    /// For humans; do not match on it.
    message: String,
}

const SIGNING: &str =
    "Every request is signed: X-Confab-Key (key id), X-Confab-Timestamp (unix seconds, within 60 s), \
X-Confab-Nonce (fresh per request), X-Confab-Signature = lowercase hex HMAC-SHA256(secret, METHOD \"\\n\" \
path-with-query \"\\n\" timestamp \"\\n\" nonce \"\\n\" hex(SHA-256(body))). The scopes listed per operation are \
the key scopes it needs (`admin` grants all). See docs/http-api.md.";

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "confab_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description("X-Confab-Signature", SIGNING))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "confab HTTP integration API", version = "1", description = "Signed HTTP API for backends: see docs/http-api.md."),
    paths(
        users::upsert,
        users::get,
        users::disable,
        users::enable,
        users::revoke_tokens,
        users::mint_token,
        users::devices,
        messages::send,
        messages::recall,
        conversations::history,
        conversations::list,
        conversations::unread,
        groups::create,
        groups::info,
        groups::members,
        groups::add,
        groups::remove,
        groups::update,
        groups::dismiss,
        groups::set_role,
        webhooks::deliveries,
        webhooks::event,
        webhooks::replay,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&Security),
    tags(
        (name = "users", description = "Profiles, access, tokens and online devices"),
        (name = "messages", description = "Send, recall, history"),
        (name = "conversations", description = "Conversation lists and unread counts"),
        (name = "groups", description = "Groups and their members"),
        (name = "webhooks", description = "The webhook delivery log and replays (docs/webhooks.md)"),
    )
)]
pub struct ApiDoc;

/// The description as pretty JSON with a final newline (the form of docs/openapi.json).
pub fn json() -> String {
    let mut s = ApiDoc::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// `GET /api-docs/openapi.json` (public: it holds no secrets).
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(json())
}

#[cfg(test)]
mod tests {
    const COMMITTED: &str = include_str!("../../docs/openapi.json");

    #[test]
    fn committed_openapi_matches_the_code() {
        let generated = super::json();
        if generated != COMMITTED {
            // `cargo run -- openapi > docs/openapi.json` regenerates it.
            let _ = std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/target/openapi.generated.json"), &generated);
            panic!("docs/openapi.json is stale: run `cargo run -q -- openapi > docs/openapi.json`");
        }
    }

    #[test]
    fn every_route_is_described() {
        let doc = super::json();
        for p in [
            "/api/v1/users/{id}/tokens",
            "/api/v1/users/{id}/devices",
            "/api/v1/messages",
            "/api/v1/conversations/{conv_id}/messages/{seq}/recall",
            "/api/v1/conversations/{conv_id}/messages",
            "/api/v1/users/{id}/conversations",
            "/api/v1/users/{id}/unread",
            "/api/v1/groups",
            "/api/v1/groups/{id}",
            "/api/v1/groups/{id}/members",
            "/api/v1/groups/{id}/members/{user}",
            "/api/v1/webhooks/deliveries",
            "/api/v1/webhooks/replay",
        ] {
            assert!(doc.contains(&format!("\"{p}\"")), "{p} is not in the OpenAPI description");
        }
    }
}
