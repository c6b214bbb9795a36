//! The pieces the API's description is built from: the error body, the schemas of ids, seqs
//! and cursors, the errors every operation shares ([`COMMON_ERRORS`], added by
//! [`CommonErrors`]), each operation's own errors (`operation_errors!`) and the scope modifier of
//! a resource module ([`Scoped`]). The resource modules use these in their annotations;
//! [`super::openapi`] assembles the description from the modules.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::SecurityRequirement;
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, PartialSchema, ToSchema};

use confab_actors::error::ErrorCode;

use super::{Scope, MAX_SAFE_INT};

/// The name of the signature's security scheme.
pub(super) const SIGNATURE: &str = "confab_signature";

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

/// An id (user, device, group, webhook endpoint, `client_msg_id`): what `validate_id` accepts,
/// less `.` and `..` (which would read as path segments in URLs). ECMA-262, as OpenAPI uses.
pub const ID_PATTERN: &str = r"^(?!\.{1,2}$)[A-Za-z0-9_.@:-]{1,64}$";

/// A conversation id: `d_` and 32 lowercase hex digits (one-to-one), or `g_` and a group id.
pub const CONV_ID_PATTERN: &str = r"^(d_[0-9a-f]{32}|g_(?!\.{1,2}$)[A-Za-z0-9_.@:-]{1,64})$";

/// Declares a type that stands for a schema in `value_type = …` (the Rust fields stay `String` or
/// `u64`): `$schema`, an [`ObjectBuilder`], is its schema.
macro_rules! schema_type {
    ($(#[$doc:meta])* $name:ident = $schema:expr) => {
        $(#[$doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $schema.into()
            }
        }

        impl ToSchema for $name {}
    };
}

schema_type! {
    /// The schema of ids, for `value_type = Id`.
    Id = ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(64))
        .pattern(Some(ID_PATTERN))
        .description(Some("1 to 64 characters of `A-Z a-z 0-9 _ - . @ :`, not `.` or `..`"))
}

schema_type! {
    /// The schema of conversation ids, for `value_type = ConvId`.
    ConvId = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(CONV_ID_PATTERN))
        .description(Some("`d_<32 lowercase hex digits>` (one-to-one) or `g_<group id>` (group)"))
}

schema_type! {
    /// The schema of seqs, cursors and event ids in requests, for `value_type = SafeInt`: larger
    /// ones are refused (see [`MAX_SAFE_INT`]).
    SafeInt = ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(0))
        .maximum(Some(MAX_SAFE_INT))
        .description(Some("A seq, cursor or event id: 0 to 2^53-1 (9007199254740991); larger ones are refused"))
}

/// The statuses every operation under `/api/v1` can answer whatever its handler does, with their
/// codes: `Signed` checks the key, the body's size (also of a GET), the timestamp, signature,
/// nonce and scope, then the query string, before the handler runs.
pub const COMMON_ERRORS: &[(&str, &[&str])] = &[
    ("400", &["invalid_request"]),
    ("401", &["unauthorized", "timestamp_out_of_range", "signature_invalid", "nonce_replayed"]),
    ("403", &["scope_missing"]),
    ("413", &["body_too_large"]),
    ("429", &["too_many_requests"]),
];

/// The error codes a response description names (the words that are codes of the error table).
pub fn codes_named(description: &str) -> Vec<&str> {
    description
        .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .filter(|w| confab_actors::error::ERROR_TABLE.iter().any(|r| r.name == *w))
        .collect()
}

/// Adds [`COMMON_ERRORS`] to every operation: a status the handler did not declare is added
/// with the common codes; one it declared (with codes of its own) gets the common codes named
/// first.
pub(super) struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for op in operations_mut(openapi) {
            for (status, codes) in COMMON_ERRORS {
                match op.responses.responses.entry((*status).to_owned()) {
                    Entry::Vacant(v) => {
                        v.insert(error_response(codes.join(", ")).into());
                    }
                    Entry::Occupied(o) => {
                        if let RefOr::T(r) = o.into_mut() {
                            let named = codes_named(&r.description);
                            let missing: Vec<&str> = codes.iter().copied().filter(|c| !named.contains(c)).collect();
                            if !missing.is_empty() {
                                r.description = format!("{}, {}", missing.join(", "), r.description);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The modifier of a resource module's description (`users::Api`, …): every operation there is
/// tagged with the scope its handlers are signed for (`Signed<scope::…>`), and declares that
/// scope as the one its key needs.
pub struct Scoped(pub Scope);

impl Modify for Scoped {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scope = self.0.as_str();
        for op in operations_mut(openapi) {
            op.tags = Some(vec![scope.to_owned()]);
            op.security = Some(vec![SecurityRequirement::new(SIGNATURE, [scope])]);
        }
    }
}

/// Every operation of the description.
fn operations_mut(openapi: &mut utoipa::openapi::OpenApi) -> impl Iterator<Item = &mut Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
    })
}

/// The error responses of an operation's own checks and engine calls, for its annotation's
/// `responses(…)` (`operation_errors!` declares them): one response per status that the error
/// table gives the codes, naming its codes in the order given, each with its detail (if any) in
/// parentheses.
pub fn error_responses(errors: &[(ErrorCode, &str)]) -> BTreeMap<String, RefOr<Response>> {
    let mut named: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (code, detail) in errors {
        let name = if detail.is_empty() { code.as_str().to_owned() } else { format!("{} ({detail})", code.as_str()) };
        named.entry(code.http_status().to_string()).or_default().push(name);
    }
    named.into_iter().map(|(status, names)| (status, error_response(names.join(", ")).into())).collect()
}

/// Declares, for each operation of a module, a type naming the errors it answers besides
/// [`COMMON_ERRORS`], to list after its success response in `#[utoipa::path(responses(…))]`:
/// `AddErrors: Forbidden, NotMember("by"), …;`, codes of
/// [`ErrorCode`], each with an optional detail. See
/// [`error_responses`].
macro_rules! operation_errors {
    ($($name:ident: $($code:ident $(($detail:literal))?),+;)+) => {$(
        struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<
                String,
                utoipa::openapi::RefOr<utoipa::openapi::response::Response>,
            > {
                $crate::http::api::schema::error_responses(&[
                    $((confab_actors::error::ErrorCode::$code, concat!("" $(, $detail)?)),)+
                ])
            }
        }
    )+};
}
pub(super) use operation_errors;

fn error_response(description: String) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))))
        .build()
}
