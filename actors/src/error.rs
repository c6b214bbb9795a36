//! The domain error type and the one table of stable error codes.
//!
//! Clients match on [`ErrorCode`] strings, never on messages. Every code has exactly one row in
//! [`ERROR_TABLE`]: its wire name, the HTTP status a REST transport answers with, and what it means.
//! `docs/protocol.md` reproduces this table; a test checks that the two agree.

use std::fmt;

/// Declares every error code once: the enum variant, its wire name, the HTTP status a REST
/// transport answers with, and its meaning. Generates [`ErrorCode`], [`ERROR_TABLE`] and the
/// lookups, so a code cannot exist without its row.
macro_rules! error_codes {
    ($( $variant:ident = $name:literal, $status:literal, $meaning:literal; )*) => {
        /// A stable, documented error code. The wire form is the snake_case name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode { $( $variant, )* }

        /// The single source of truth for error codes; `docs/protocol.md` lists the same rows.
        pub const ERROR_TABLE: &[ErrorRow] = &[
            $( ErrorRow { code: ErrorCode::$variant, name: $name, http_status: $status, meaning: $meaning }, )*
        ];

        impl ErrorCode {
            /// The wire name, e.g. `not_member`.
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $name, )* }
            }

            /// The HTTP status a REST transport answers with.
            pub fn http_status(self) -> u16 {
                match self { $( ErrorCode::$variant => $status, )* }
            }

            /// What the code means (the table's last column).
            pub fn meaning(self) -> &'static str {
                match self { $( ErrorCode::$variant => $meaning, )* }
            }
        }
    };
}

/// One row of the error table.
pub struct ErrorRow {
    pub code: ErrorCode,
    pub name: &'static str,
    pub http_status: u16,
    pub meaning: &'static str,
}

#[rustfmt::skip]
error_codes! {
    Unauthorized = "unauthorized", 401, "No token, or a token that is malformed, not signed with this server's secret, issued (`iat`, `nbf`) in the future beyond `auth.max_clock_skew_secs`, or living longer than `auth.max_token_ttl_secs`. HTTP API: no `X-Confab-Key`, an unknown key, or no keys configured.";
    TokenExpired = "token_expired", 401, "The token's `exp` is in the past. Mint a new one. An open connection whose token expires is closed with 1008 and this reason (send `refresh` before).";
    MalformedFrame = "malformed_frame", 400, "The frame is not a JSON object with an `op` string (or it is a binary frame).";
    FrameTooLarge = "frame_too_large", 413, "The frame (or a fragmented message) exceeds `server.max_frame_bytes`: the connection is closed with 1009 and this reason as soon as the frame's header announces it.";
    UnknownOp = "unknown_op", 400, "The `op` is not one this server knows.";
    InvalidRequest = "invalid_request", 400, "The request's fields are missing, of the wrong type, or out of range.";
    InvalidBody = "invalid_body", 400, "The message body fails validation for its type (missing field, too long, bad value).";
    NotMember = "not_member", 403, "The caller is not a member of the conversation or group.";
    Forbidden = "forbidden", 403, "The caller is a member but lacks the right (for example recalling another user's message, or removing members without being owner or admin).";
    NotFound = "not_found", 404, "The conversation, message or group does not exist.";
    RecallWindowExpired = "recall_window_expired", 403, "The sender's recall window (`chat.recall_window_secs`) has passed.";
    OwnerCannotLeave = "owner_cannot_leave", 409, "A group's owner cannot leave it.";
    Conflict = "conflict", 409, "The request conflicts with the current state (for example the group id is taken).";
    TooManyRequests = "too_many_requests", 429, "Too many requests are in flight on this connection (`session.max_inflight_requests`), or (HTTP API) the node's replay-protection nonce cache is full (`api.nonce_cache_size`); retry shortly.";
    Unavailable = "unavailable", 503, "The store could not be reached or failed; the request was not acknowledged. Retry a send with the same `client_msg_id`: it is never stored twice (on MongoDB a commit whose outcome was lost may already hold it, and the retry returns it).";
    SignatureInvalid = "signature_invalid", 401, "HTTP API: `X-Confab-Signature` is missing, malformed, or not the HMAC-SHA256 of the request with the key's secret.";
    TimestampOutOfRange = "timestamp_out_of_range", 401, "HTTP API: `X-Confab-Timestamp` is missing, not unix seconds, or more than 60 seconds from the server's clock.";
    NonceReplayed = "nonce_replayed", 401, "HTTP API: this key already used this `X-Confab-Nonce` within the last 60 seconds (a replayed request).";
    ScopeMissing = "scope_missing", 403, "HTTP API: the key is valid but lacks the scope the endpoint needs.";
    BodyTooLarge = "body_too_large", 413, "HTTP API: the request body exceeds `api.max_body_bytes`.";
    UserDisabled = "user_disabled", 403, "The user was disabled (HTTP API `POST /api/v1/users/{id}/disable`): it cannot connect or send, its open sessions are closed on every node (WebSocket close code 1008, reason `user_disabled`), and their requests are refused from that moment.";
    TokenRevoked = "token_revoked", 401, "The token was issued before the user's tokens were revoked (`POST /api/v1/users/{id}/tokens/revoke`, to the millisecond), or its device's (`POST /api/v1/users/{id}/devices/{device}/revoke`). Mint a new one. Open connections holding such a token are closed (1008, reason `token_revoked`) and their requests refused.";
    GroupDismissed = "group_dismissed", 410, "The group was dismissed: it refuses sends and further changes.";
    MessageRejected = "message_rejected", 422, "The `before_send` webhook refused the message (the message gives its reason), or it could not be asked and `webhooks.before_send.fail_open` is false.";
    RequestRejected = "request_rejected", 422, "The `before_group_create` or `before_member_join` webhook refused the request (the message gives its reason), or it could not be asked and its `fail_open` is false. Nothing changed.";
    Blocked = "blocked", 403, "The recipient blocked the sender: a one-to-one message or a friend request to them is refused. Nothing says more (the blocked user cannot tell a block from anything else this code covers).";
    NotFriends = "not_friends", 403, "The node's messaging policy (`chat.who_may_message`) allows one-to-one messages only between friends (or people who share a group), and these two are not; or a friends-only change (delete, remark, tags) was asked for a non-friend. Nothing was stored.";
    RequestNotPending = "request_not_pending", 409, "Accept, reject or cancel of a friend request that is not pending (never sent, already answered or withdrawn: a stale or duplicated answer). Nothing changed.";
    Muted = "muted", 403, "The sender is muted in this group: until the time the message gives (`group_mute`), or everyone but the owner and admins is (`group_mute_all`). Nothing was stored.";
    Banned = "banned", 403, "The user is banned from this group (`group_ban`): they cannot be added or rejoin until unbanned. Nothing changed.";
    FileTooLarge = "file_too_large", 413, "An upload is larger than its kind allows (`files.max_image_bytes`, `max_audio_bytes`, `max_video_bytes`, `max_file_bytes`). Nothing was stored.";
    FileTypeRefused = "file_type_refused", 415, "An upload's content (its first bytes, whatever its name) is an executable, or not of the kind it was uploaded as (an image that is not an image), or an image of more than 100 megapixels. Nothing was stored.";
    LinkInvalid = "link_invalid", 403, "A file download link whose signature does not match (altered, or made for another file). Ask for a new link (`GET /files/{id}/link`).";
    LinkExpired = "link_expired", 403, "A file download link past its `expires` (links last `files.link_ttl_secs`). Ask for a new one.";
    RateLimited = "rate_limited", 429, "A rate limit was reached (`limits.*`: requests or messages per connection, messages, group creations or users added per user, connections per IP address); nothing was done. The message says which limit and when a retry may pass.";
    PushProviderUnknown = "push_provider_unknown", 400, "A push registration names a provider this node does not send through (`push.fcm`, `push.apns`, or a name of `push.relay.providers`, configured). Nothing was stored.";
    Internal = "internal", 500, "An unexpected server error.";
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
    /// A rule of the domain, decided inside the store's transaction (see `store::plan`), refused
    /// the operation: it becomes that code on the wire.
    #[error("{0}: {1}")]
    Refused(ErrorCode, String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Error::new(ErrorCode::Unavailable, m),
            StoreError::Conflict(m) => Error::new(ErrorCode::Conflict, m),
            StoreError::NotFound(m) => Error::new(ErrorCode::NotFound, m),
            StoreError::Refused(code, m) => Error::new(code, m),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_snake_case_and_statuses_are_errors() {
        let mut names: Vec<&str> = ERROR_TABLE.iter().map(|r| r.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ERROR_TABLE.len(), "a name is used twice");
        for r in ERROR_TABLE {
            assert!(r.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", r.name);
            assert!((400..600).contains(&r.http_status), "{}", r.name);
            assert_eq!((r.code.as_str(), r.code.http_status()), (r.name, r.http_status));
            assert!(!r.meaning.is_empty());
        }
    }
}
