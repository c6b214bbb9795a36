//! Users: their record, the public profile other users see, and changes to it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::body::check_url;
use super::validate_id;

/// Longest nickname, in characters.
pub const MAX_NICKNAME_CHARS: usize = 64;
/// Largest encoded `ext` object of a user or a group.
pub const MAX_EXT_BYTES: usize = 4096;
/// Most users a profile lookup may ask for.
pub const MAX_PROFILE_LOOKUP: usize = 100;

/// A user's record. Users never created explicitly have none: they are enabled and have no profile.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    pub id: String,
    pub nickname: Option<String>,
    /// An image URL.
    pub avatar: Option<String>,
    /// App-defined JSON object (`{}` when unset).
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub ext: serde_json::Value,
    /// A disabled user cannot connect or send; their sessions are closed.
    #[serde(default)]
    pub disabled: bool,
    /// Tokens issued (`iat`) before this time, unix seconds, are refused; 0 = none. The second
    /// of [`User::tokens_valid_after_ms`], kept for clients that read seconds.
    #[serde(default)]
    pub tokens_valid_after: u64,
    /// Tokens issued before this time, unix milliseconds, are refused; 0 = none. Records written
    /// before it existed have only `tokens_valid_after` (see [`User::revoked_before_ms`]).
    #[serde(default)]
    pub tokens_valid_after_ms: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub updated_at: i64,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl User {
    /// A record with no profile, enabled.
    pub fn new(id: &str, ts: i64) -> User {
        User {
            id: id.to_owned(),
            nickname: None,
            avatar: None,
            ext: empty_object(),
            disabled: false,
            tokens_valid_after: 0,
            tokens_valid_after_ms: 0,
            created_at: ts,
            updated_at: ts,
        }
    }

    /// Tokens issued before this time (unix ms) are refused.
    pub fn revoked_before_ms(&self) -> u64 {
        self.tokens_valid_after_ms.max(self.tokens_valid_after.saturating_mul(1000))
    }

    /// Revokes every token issued before `at_ms`.
    pub fn revoke_tokens(&mut self, at_ms: u64) {
        self.tokens_valid_after_ms = self.tokens_valid_after_ms.max(at_ms);
        self.tokens_valid_after = self.tokens_valid_after.max(self.tokens_valid_after_ms / 1000);
    }

    /// The public part other users see.
    pub fn profile(&self) -> Profile {
        Profile {
            id: self.id.clone(),
            nickname: self.nickname.clone(),
            avatar: self.avatar.clone(),
            ext: self.ext.clone(),
            updated_at: self.updated_at,
        }
    }

    /// Applies a profile patch (absent fields are kept).
    pub fn apply(&mut self, p: &UserPatch) {
        if let Some(n) = &p.nickname {
            self.nickname = Some(n.clone());
        }
        if let Some(a) = &p.avatar {
            self.avatar = Some(a.clone());
        }
        if let Some(e) = &p.ext {
            self.ext = e.clone();
        }
        self.updated_at = p.ts;
    }
}

/// A user's public profile (WebSocket `users_get`, `profile_update`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Profile {
    pub id: String,
    pub nickname: Option<String>,
    pub avatar: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub ext: serde_json::Value,
    pub updated_at: i64,
}

/// Creates a user's record or changes its profile; `None` keeps a field as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct UserPatch {
    pub id: String,
    pub nickname: Option<String>,
    pub avatar: Option<String>,
    pub ext: Option<serde_json::Value>,
    /// Server time in ms.
    pub ts: i64,
}

impl UserPatch {
    /// Checks the fields: nickname 1 to 64 characters, avatar a URL, ext an object of at most 4 KiB.
    pub fn validate(&self) -> Result<()> {
        validate_id("id", &self.id)?;
        if let Some(n) = &self.nickname {
            let n = n.trim();
            if n.is_empty() || n.chars().count() > MAX_NICKNAME_CHARS {
                return Err(Error::invalid(format!("nickname must be 1 to {MAX_NICKNAME_CHARS} characters")));
            }
        }
        if let Some(a) = &self.avatar {
            check_url("avatar", a).map_err(|e| Error::invalid(e.message))?;
        }
        if let Some(e) = &self.ext {
            validate_ext(e)?;
        }
        Ok(())
    }
}

/// Checks an `ext` value: a JSON object of at most [`MAX_EXT_BYTES`] encoded.
pub fn validate_ext(ext: &serde_json::Value) -> Result<()> {
    if !ext.is_object() {
        return Err(Error::invalid("ext must be a JSON object"));
    }
    let n = serde_json::to_vec(ext).map(|v| v.len()).unwrap_or(usize::MAX);
    if n > MAX_EXT_BYTES {
        return Err(Error::invalid(format!("ext must be at most {MAX_EXT_BYTES} bytes encoded")));
    }
    Ok(())
}

/// The search key of a user's nickname or a group's name: trimmed and lowercased (Unicode), so a
/// search is case-insensitive. Searches match keys by prefix.
pub fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// The least string above every string that starts with `prefix` (by code point, which is the
/// order of UTF-8 bytes): the exclusive end of a prefix range. `None`: no bound.
pub fn name_prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last as u32 + 1 {
            0xD800 => Some('\u{E000}'),
            n => char::from_u32(n),
        };
        if let Some(c) = next {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Checks a search query (`q`): 1 to 64 characters once trimmed; returns its key.
pub fn search_key(q: &str) -> Result<String> {
    let key = name_key(q);
    if key.is_empty() || key.chars().count() > MAX_NICKNAME_CHARS {
        return Err(Error::invalid(format!("q must be 1 to {MAX_NICKNAME_CHARS} characters")));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_hold_exactly_the_names_that_start_with_the_prefix() {
        assert_eq!(name_key("  Alice "), "alice");
        assert_eq!(name_key("ÉLODIE"), "élodie");
        assert_eq!(name_prefix_end("ab").as_deref(), Some("ac"));
        assert_eq!(name_prefix_end("张").as_deref(), Some("弡"));
        assert_eq!(name_prefix_end("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(name_prefix_end("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(name_prefix_end(""), None);
        for name in ["张三", "张", "张三丰"] {
            assert!(name >= "张" && name < name_prefix_end("张").unwrap().as_str());
        }
        assert!(search_key("  ").is_err());
        assert_eq!(search_key("Al").unwrap(), "al");
    }
}
