//! The domain error type and the one table of stable error codes.
//!
//! Clients match on [`ErrorCode`] strings, never on messages. Every code has exactly one row in
//! [`ERROR_TABLE`]: its wire name, the HTTP status a REST transport answers with, and what it means.
//! `docs/protocol.md` reproduces this table; a test checks that the two agree.

use std::fmt;

/// A stable, documented error code. The wire form is the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unauthorized,
    TokenExpired,
    MalformedFrame,
    FrameTooLarge,
    UnknownOp,
    InvalidRequest,
    InvalidBody,
    NotMember,
    Forbidden,
    NotFound,
    RecallWindowExpired,
    OwnerCannotLeave,
    Conflict,
    TooManyRequests,
    Unavailable,
    Internal,
    SignatureInvalid,
    TimestampOutOfRange,
    NonceReplayed,
    ScopeMissing,
    BodyTooLarge,
    UserDisabled,
    TokenRevoked,
    GroupDismissed,
    MessageRejected,
    RateLimited,
}

/// One row of the error table.
pub struct ErrorRow {
    pub code: ErrorCode,
    pub name: &'static str,
    pub http_status: u16,
    pub meaning: &'static str,
}

/// The single source of truth for error codes. Keep `docs/protocol.md` in step.
pub const ERROR_TABLE: &[ErrorRow] = &[
    ErrorRow { code: ErrorCode::Unauthorized, name: "unauthorized", http_status: 401, meaning: "No token, or a token that is malformed, not signed with this server's secret, issued (`iat`, `nbf`) in the future beyond `auth.max_clock_skew_secs`, or living longer than `auth.max_token_ttl_secs`. HTTP API: no `X-Confab-Key`, an unknown key, or no keys configured." },
    ErrorRow { code: ErrorCode::TokenExpired, name: "token_expired", http_status: 401, meaning: "The token's `exp` is in the past. Mint a new one. An open connection whose token expires is closed with 1008 and this reason (send `refresh` before)." },
    ErrorRow { code: ErrorCode::MalformedFrame, name: "malformed_frame", http_status: 400, meaning: "The frame is not a JSON object with an `op` string (or it is a binary frame)." },
    ErrorRow { code: ErrorCode::FrameTooLarge, name: "frame_too_large", http_status: 413, meaning: "The frame (or a fragmented message) exceeds `server.max_frame_bytes`: the connection is closed with 1009 and this reason as soon as the frame's header announces it." },
    ErrorRow { code: ErrorCode::UnknownOp, name: "unknown_op", http_status: 400, meaning: "The `op` is not one this server knows." },
    ErrorRow { code: ErrorCode::InvalidRequest, name: "invalid_request", http_status: 400, meaning: "The request's fields are missing, of the wrong type, or out of range." },
    ErrorRow { code: ErrorCode::InvalidBody, name: "invalid_body", http_status: 400, meaning: "The message body fails validation for its type (missing field, too long, bad value)." },
    ErrorRow { code: ErrorCode::NotMember, name: "not_member", http_status: 403, meaning: "The caller is not a member of the conversation or group." },
    ErrorRow { code: ErrorCode::Forbidden, name: "forbidden", http_status: 403, meaning: "The caller is a member but lacks the right (for example recalling another user's message, or removing members without being owner or admin)." },
    ErrorRow { code: ErrorCode::NotFound, name: "not_found", http_status: 404, meaning: "The conversation, message or group does not exist." },
    ErrorRow { code: ErrorCode::RecallWindowExpired, name: "recall_window_expired", http_status: 403, meaning: "The sender's recall window (`chat.recall_window_secs`) has passed." },
    ErrorRow { code: ErrorCode::OwnerCannotLeave, name: "owner_cannot_leave", http_status: 409, meaning: "A group's owner cannot leave it." },
    ErrorRow { code: ErrorCode::Conflict, name: "conflict", http_status: 409, meaning: "The request conflicts with the current state (for example the group id is taken)." },
    ErrorRow { code: ErrorCode::TooManyRequests, name: "too_many_requests", http_status: 429, meaning: "Too many requests are in flight on this connection (`session.max_inflight_requests`), or (HTTP API) the node's replay-protection nonce cache is full (`api.nonce_cache_size`); retry shortly." },
    ErrorRow { code: ErrorCode::Unavailable, name: "unavailable", http_status: 503, meaning: "The store could not be reached or failed; the request was not acknowledged. Retry a send with the same `client_msg_id`: it is never stored twice (on MongoDB a commit whose outcome was lost may already hold it, and the retry returns it)." },
    ErrorRow { code: ErrorCode::SignatureInvalid, name: "signature_invalid", http_status: 401, meaning: "HTTP API: `X-Confab-Signature` is missing, malformed, or not the HMAC-SHA256 of the request with the key's secret." },
    ErrorRow { code: ErrorCode::TimestampOutOfRange, name: "timestamp_out_of_range", http_status: 401, meaning: "HTTP API: `X-Confab-Timestamp` is missing, not unix seconds, or more than 60 seconds from the server's clock." },
    ErrorRow { code: ErrorCode::NonceReplayed, name: "nonce_replayed", http_status: 401, meaning: "HTTP API: this key already used this `X-Confab-Nonce` within the last 60 seconds (a replayed request)." },
    ErrorRow { code: ErrorCode::ScopeMissing, name: "scope_missing", http_status: 403, meaning: "HTTP API: the key is valid but lacks the scope the endpoint needs." },
    ErrorRow { code: ErrorCode::BodyTooLarge, name: "body_too_large", http_status: 413, meaning: "HTTP API: the request body exceeds `api.max_body_bytes`." },
    ErrorRow { code: ErrorCode::UserDisabled, name: "user_disabled", http_status: 403, meaning: "The user was disabled (HTTP API `POST /api/v1/users/{id}/disable`): it cannot connect or send, its open sessions are closed on every node (WebSocket close code 1008, reason `user_disabled`), and their requests are refused from that moment." },
    ErrorRow { code: ErrorCode::TokenRevoked, name: "token_revoked", http_status: 401, meaning: "The token was issued before the user's tokens were revoked (`POST /api/v1/users/{id}/tokens/revoke`, to the millisecond). Mint a new one. Open connections holding such a token are closed (1008, reason `token_revoked`) and their requests refused." },
    ErrorRow { code: ErrorCode::GroupDismissed, name: "group_dismissed", http_status: 410, meaning: "The group was dismissed: it refuses sends and further changes." },
    ErrorRow { code: ErrorCode::MessageRejected, name: "message_rejected", http_status: 422, meaning: "The `before_send` webhook refused the message (the message gives its reason), or it could not be asked and `webhooks.before_send.fail_open` is false." },
    ErrorRow { code: ErrorCode::RateLimited, name: "rate_limited", http_status: 429, meaning: "A rate limit was reached (`limits.*`: requests or messages per connection, messages, group creations or users added per user, connections per IP address); nothing was done. The message says which limit and when a retry may pass." },
    ErrorRow { code: ErrorCode::Internal, name: "internal", http_status: 500, meaning: "An unexpected server error." },
];

impl ErrorCode {
    fn row(self) -> &'static ErrorRow {
        // The table is small and lists every variant; a test checks that.
        ERROR_TABLE.iter().find(|r| r.code == self).unwrap_or(&ERROR_TABLE[ERROR_TABLE.len() - 1])
    }

    /// The wire name, e.g. `not_member`.
    pub fn as_str(self) -> &'static str {
        self.row().name
    }

    /// The HTTP status a REST transport answers with.
    pub fn http_status(self) -> u16 {
        self.row().http_status
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The error every domain operation returns: a stable code and a human message.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize)]
#[error("{code}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn body(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidBody, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn not_member() -> Self {
        Self::new(ErrorCode::NotMember, "you are not a member of this conversation")
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

/// Errors from a storage adapter. They become `unavailable` (I/O, driver) or `conflict` on the wire.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or failed to commit. Nothing of the operation was written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness rule was violated (for example a group id that already exists).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The operation named something that does not exist.
    #[error("not found: {0}")]
    NotFound(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Error::new(ErrorCode::Unavailable, m),
            StoreError::Conflict(m) => Error::new(ErrorCode::Conflict, m),
            StoreError::NotFound(m) => Error::new(ErrorCode::NotFound, m),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_row() {
        let all = [
            ErrorCode::Unauthorized,
            ErrorCode::TokenExpired,
            ErrorCode::MalformedFrame,
            ErrorCode::FrameTooLarge,
            ErrorCode::UnknownOp,
            ErrorCode::InvalidRequest,
            ErrorCode::InvalidBody,
            ErrorCode::NotMember,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::RecallWindowExpired,
            ErrorCode::OwnerCannotLeave,
            ErrorCode::Conflict,
            ErrorCode::TooManyRequests,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
            ErrorCode::SignatureInvalid,
            ErrorCode::TimestampOutOfRange,
            ErrorCode::NonceReplayed,
            ErrorCode::ScopeMissing,
            ErrorCode::BodyTooLarge,
            ErrorCode::UserDisabled,
            ErrorCode::TokenRevoked,
            ErrorCode::GroupDismissed,
            ErrorCode::MessageRejected,
            ErrorCode::RateLimited,
        ];
        assert_eq!(all.len(), ERROR_TABLE.len());
        for c in all {
            assert_eq!(ERROR_TABLE.iter().filter(|r| r.code == c).count(), 1, "{c:?}");
        }
    }
}
