//! The OpenAPI 3 description of the API, generated from the handlers' annotations and the types
//! they exchange. Served at `/api-docs/openapi.json`, printed by `confab openapi`, and committed
//! as `docs/openapi.json` (a test keeps the file equal to what the code generates).
//!
//! Each resource module describes its operations (`users::Api`, …, paths relative to `/api/v1`),
//! every one tagged with the module's scope and declaring it as the scope its key needs
//! ([`Scoped`](super::schema::Scoped)). The statuses every operation can answer before its
//! handler runs ([`COMMON_ERRORS`](super::schema::COMMON_ERRORS): signing, body size, scope, query string, all checked by
//! [`Signed`](super::Signed)) are added to every operation here, in one place; each handler's
//! annotation lists, after its success response, the errors of its own checks and of the engine
//! calls it makes (declared with `operation_errors!` as error codes, which the error table sorts
//! into statuses). The building blocks are in [`super::schema`].

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::schema::{CommonErrors, ConvId, ErrorBody, ErrorDetail, Id, SafeInt, SIGNATURE};
use super::{broadcasts, contacts, conversations, files, groups, messages, stats, users, webhooks};
#[cfg(test)]
use super::{
    schema::{codes_named, COMMON_ERRORS},
    MAX_SAFE_INT,
};

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
            SIGNATURE,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description("X-Confab-Signature", SIGNING))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "confab HTTP integration API", version = "1", description = "Signed HTTP API for backends: see docs/http-api.md."),
    nest(
        (path = "/api/v1", api = users::Api),
        (path = "/api/v1", api = contacts::Api),
        (path = "/api/v1", api = messages::Api),
        (path = "/api/v1", api = conversations::Api),
        (path = "/api/v1", api = groups::Api),
        (path = "/api/v1", api = webhooks::Api),
        (path = "/api/v1", api = stats::Api),
        (path = "/api/v1", api = broadcasts::Api),
        (path = "/api/v1", api = files::Api),
    ),
    components(schemas(ErrorBody, ErrorDetail, Id, ConvId, SafeInt)),
    modifiers(&Security, &CommonErrors),
    tags(
        (name = "users", description = "Profiles, access, tokens and online devices"),
        (name = "messages", description = "Send, recall, history"),
        (name = "conversations", description = "Conversation lists and unread counts"),
        (name = "groups", description = "Groups and their members"),
        (name = "webhooks", description = "The webhook delivery log and replays (docs/webhooks.md)"),
        (name = "stats", description = "Counts for operators: users, groups, messages and active users per day"),
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
    use serde_json::Value;

    const COMMITTED: &str = include_str!("../../../docs/openapi.json");

    #[test]
    fn committed_openapi_matches_the_code() {
        let generated = super::json();
        if generated != COMMITTED {
            // `cargo run -- openapi > docs/openapi.json` regenerates it.
            let _ = std::fs::write(concat!(env!("CARGO_MANIFEST_DIR"), "/target/openapi.generated.json"), &generated);
            panic!("docs/openapi.json is stale: run `cargo run -q -- openapi > docs/openapi.json`");
        }
    }

    fn spec() -> Value {
        serde_json::from_str(&super::json()).expect("the description is JSON")
    }

    /// docs/http-api.md's table of scopes lists exactly the operations each scope grants.
    #[test]
    fn the_scope_table_lists_every_operation() {
        let doc = include_str!("../../../docs/http-api.md");
        let mut documented: Vec<(String, String)> = Vec::new();
        for line in doc.lines().skip_while(|l| *l != "| scope | grants |").skip(2) {
            let Some(row) = line.strip_prefix("| `") else { break };
            let (scope, grants) = row.split_once("` | ").expect("| `scope` | grants |");
            if scope == "admin" {
                continue;
            }
            for op in grants.split('`').skip(1).step_by(2) {
                documented.push((
                    scope.to_owned(),
                    format!("{} /api/v1{}", &op[..op.find(' ').unwrap()], &op[op.find(' ').unwrap() + 1..]),
                ));
            }
        }
        let mut code: Vec<(String, String)> = operations(&spec())
            .into_iter()
            .map(|(op, v)| (v["tags"][0].as_str().expect("a tag").to_owned(), op))
            .collect();
        documented.sort();
        code.sort();
        assert_eq!(documented, code, "docs/http-api.md's scope table differs from the routes");
    }

    /// Every operation under `/api/v1`, as `("GET /api/v1/…", operation)`.
    fn operations(spec: &Value) -> Vec<(String, Value)> {
        let mut ops = Vec::new();
        for (path, item) in spec["paths"].as_object().expect("paths") {
            if !path.starts_with("/api/v1/") {
                continue;
            }
            for (method, op) in item.as_object().expect("path item") {
                ops.push((format!("{} {path}", method.to_uppercase()), op.clone()));
            }
        }
        assert!(ops.len() >= 23, "{} operations", ops.len());
        ops
    }

    /// A schema with `$ref`s followed and a nullable `oneOf` reduced to its non-null branch.
    fn resolve(spec: &Value, schema: &Value) -> Value {
        if let Some(r) = schema["$ref"].as_str() {
            let name = r.trim_start_matches("#/components/schemas/");
            return resolve(spec, &spec["components"]["schemas"][name]);
        }
        if let Some(branches) = schema["oneOf"].as_array() {
            let real: Vec<&Value> = branches.iter().filter(|b| b["type"] != "null").collect();
            if real.len() == 1 {
                return resolve(spec, real[0]);
            }
        }
        schema.clone()
    }

    fn has_type(schema: &Value, t: &str) -> bool {
        schema["type"] == t || schema["type"].as_array().is_some_and(|a| a.iter().any(|x| x == t))
    }

    #[test]
    fn every_operation_declares_the_errors_of_signing_scopes_and_queries() {
        let spec = spec();
        for (name, op) in operations(&spec) {
            // OpenAPI requires a description on every response.
            for (status, r) in op["responses"].as_object().expect("responses") {
                assert!(
                    r["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{name}: {status} has no description"
                );
            }
            for (status, codes) in super::COMMON_ERRORS {
                let r = &op["responses"][*status];
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody",
                    "{name} does not declare {status}"
                );
                let named = super::codes_named(r["description"].as_str().unwrap_or(""));
                for c in *codes {
                    assert!(named.contains(c), "{name}: {status} does not name {c}: {r}");
                }
            }
        }
    }

    #[test]
    fn every_operation_is_tagged_with_the_scope_it_needs() {
        let spec = spec();
        for (name, op) in operations(&spec) {
            let tags = op["tags"].as_array().expect("tags");
            assert_eq!(tags.len(), 1, "{name}: {tags:?}");
            assert_eq!(op["security"], serde_json::json!([{ "confab_signature": [tags[0]] }]), "{name}");
        }
    }

    #[test]
    fn parameters_are_in_the_path_exactly_when_the_path_names_them() {
        let spec = spec();
        for (name, op) in operations(&spec) {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let placeholder = format!("{{{}}}", p["name"].as_str().unwrap_or(""));
                let expected = if name.contains(&placeholder) { "path" } else { "query" };
                assert_eq!(p["in"], expected, "{name}: {p}");
                assert_eq!(p["required"], expected == "path", "{name}: {p}");
            }
        }
    }

    #[test]
    fn error_statuses_name_codes_of_the_error_table() {
        let spec = spec();
        for (name, op) in operations(&spec) {
            for (status, r) in op["responses"].as_object().expect("responses") {
                if status.starts_with('2') {
                    continue;
                }
                assert_eq!(r["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/ErrorBody");
                let named = super::codes_named(r["description"].as_str().unwrap_or(""));
                assert!(!named.is_empty(), "{name}: {status} names no error code");
                for code in named {
                    let row = confab_actors::error::ERROR_TABLE.iter().find(|r| r.name == code).expect("a code");
                    assert_eq!(row.http_status.to_string(), *status, "{name}: {code} is not a {status}");
                }
            }
        }
    }

    #[test]
    fn operations_that_read_the_store_declare_unavailable() {
        // Listing connected devices reads no store; everything else does (minting a token reads
        // the user's last revocation).
        let storeless = ["GET /api/v1/users/{id}/devices"];
        let spec = spec();
        for (name, op) in operations(&spec) {
            let declared = op["responses"]["503"]["description"].as_str().is_some_and(|d| d.contains("unavailable"));
            assert_eq!(declared, !storeless.contains(&name.as_str()), "{name}: 503 unavailable");
        }
    }

    #[test]
    fn ids_seqs_cursors_and_limits_are_bounded() {
        let spec = spec();
        let max = super::MAX_SAFE_INT;
        for (name, op) in operations(&spec) {
            for p in op["parameters"].as_array().into_iter().flatten() {
                let pname = p["name"].as_str().unwrap_or("");
                let s = resolve(&spec, &p["schema"]);
                if has_type(&s, "integer") {
                    let (lo, hi) = (s["minimum"].as_u64(), s["maximum"].as_u64());
                    assert!(lo.is_some() && hi.is_some_and(|hi| hi <= max), "{name}: {pname} is unbounded: {s}");
                    if pname == "limit" {
                        assert_eq!((lo, hi), (Some(1), Some(100)), "{name}: limit");
                    }
                } else if s["enum"].is_null() {
                    assert!(s["pattern"].is_string(), "{name}: {pname} has no pattern: {s}");
                }
            }
        }
        // Ids and integers in request bodies.
        let ids = ["id", "from", "to", "conv_id", "client_msg_id", "device", "owner", "by", "members", "endpoint"];
        let mut seen = 0;
        for (schema, body) in spec["components"]["schemas"].as_object().expect("schemas") {
            let is_request = ["Body", "Req"].iter().any(|s| schema.ends_with(s));
            if !is_request {
                continue;
            }
            for (field, f) in body["properties"].as_object().into_iter().flatten() {
                let mut f = resolve(&spec, f);
                if has_type(&f, "array") {
                    f = resolve(&spec, &f["items"]);
                }
                if has_type(&f, "integer") {
                    assert!(
                        f["minimum"].is_u64() && f["maximum"].as_u64().is_some_and(|m| m <= max),
                        "{schema}.{field}"
                    );
                    seen += 1;
                } else if ids.contains(&field.as_str()) {
                    assert!(f["pattern"].is_string(), "{schema}.{field} has no pattern: {f}");
                    seen += 1;
                }
            }
        }
        assert!(seen >= 20, "only {seen} request fields checked");
        assert_eq!(spec["components"]["schemas"]["SafeInt"]["maximum"], 9007199254740991u64);
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
