//! Ids and cursors: what a user, device, group or conversation id may be, conversation ids and
//! their kinds, and the bounds of cursors and pages.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest user id, device id, group id or `client_msg_id`.
pub const MAX_ID_LEN: usize = 64;
/// Largest page of history or of conversations.
pub const MAX_PAGE: usize = 100;

/// Checks an id: 1..=64 characters from `[A-Za-z0-9_.@:-]`, and not `.` or `..` (ids appear in
/// HTTP API paths, where clients and proxies normalise those segments away).
pub fn validate_id(kind: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Error::invalid(format!("{kind} must be 1 to {MAX_ID_LEN} characters")));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@' | b':')) {
        return Err(Error::invalid(format!("{kind} may only contain letters, digits and _ - . @ :")));
    }
    if id == "." || id == ".." {
        return Err(Error::invalid(format!("{kind} must not be . or ..")));
    }
    Ok(())
}

/// The largest integer JSON clients in JavaScript, PHP and Java (as a double) hold exactly:
/// cursors and seqs a client sends are refused above it, so none is ever echoed back.
pub const MAX_SAFE_INT: u64 = (1 << 53) - 1;

/// Checks a cursor or seq a client sent (see [`MAX_SAFE_INT`]).
pub fn validate_cursor(kind: &str, v: u64) -> Result<()> {
    if v > MAX_SAFE_INT {
        return Err(Error::invalid(format!("{kind} must be at most {MAX_SAFE_INT}")));
    }
    Ok(())
}

/// The kind of a conversation, visible in its id prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConvKind {
    /// One-to-one; id `d_<32 hex>` derived from the two user ids.
    Direct,
    /// A group's conversation; id `g_<group id>`.
    Group,
}

/// The conversation id of a one-to-one chat: `d_` + the first 32 hex digits of the FNV-1a-128 hash
/// of the two user ids, sorted and joined with a NUL byte. The same pair always gives the same id.
pub fn direct_conv_id(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    // FNV-1a 128-bit: stable across versions and platforms, no dependency needed.
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for byte in x.bytes().chain(std::iter::once(0u8)).chain(y.bytes()) {
        h ^= u128::from(byte);
        h = h.wrapping_mul(PRIME);
    }
    format!("d_{h:032x}")
}

/// The conversation id of a group.
pub fn group_conv_id(group_id: &str) -> String {
    format!("g_{group_id}")
}

/// The kind of a conversation id, or an error if it is not one.
pub fn conv_kind(conv_id: &str) -> Result<ConvKind> {
    if let Some(hex) = conv_id.strip_prefix("d_") {
        if hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(ConvKind::Direct);
        }
    } else if let Some(g) = conv_id.strip_prefix("g_") {
        if validate_id("group id", g).is_ok() {
            return Ok(ConvKind::Group);
        }
    }
    Err(Error::invalid("conv_id is not a conversation id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ids_are_symmetric_and_distinct() {
        assert_eq!(direct_conv_id("alice", "bob"), direct_conv_id("bob", "alice"));
        assert_ne!(direct_conv_id("alice", "bob"), direct_conv_id("alice", "bobb"));
        assert_ne!(direct_conv_id("ab", "c"), direct_conv_id("a", "bc"));
        assert_eq!(conv_kind(&direct_conv_id("a", "b")).ok(), Some(ConvKind::Direct));
        assert_eq!(conv_kind("g_team-1").ok(), Some(ConvKind::Group));
        assert!(conv_kind("x_1").is_err());
        assert!(conv_kind("d_zz").is_err());
    }

    #[test]
    fn dot_ids_are_refused() {
        assert!(validate_id("id", ".").is_err());
        assert!(validate_id("id", "..").is_err());
        assert!(validate_id("id", "...").is_ok());
        assert!(validate_id("id", ".a").is_ok());
        assert!(validate_cursor("since", MAX_SAFE_INT).is_ok());
        assert!(validate_cursor("since", MAX_SAFE_INT + 1).is_err());
    }
}
