//! Message bodies: the `type`-tagged content of a message and the checks a client's body must pass.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest URL in a media body.
pub const MAX_URL_LEN: usize = 2048;
/// Longest file name, group name, language tag and similar short strings.
pub const MAX_NAME_LEN: usize = 256;
/// Largest encoded `custom` payload.
pub const MAX_CUSTOM_BYTES: usize = 16 * 1024;
/// Most users one message may mention.
pub const MAX_MENTIONS: usize = 100;
/// Characters kept in a reply's quote.
pub const QUOTE_CHARS: usize = 80;

/// Every body `type` (including the server-only ones).
pub const BODY_TYPES: &[&str] =
    &["text", "image", "audio", "video", "file", "code", "location", "custom", "system", "recalled"];

/// A message's content, tagged by `type`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Body {
    /// `mentions` names users the message is addressed to (@), `mention_all` everyone (only a
    /// group's owner and admins may send it): they are notified even in a muted conversation.
    Text {
        text: String,
        mentions: Option<Vec<String>>,
        mention_all: Option<bool>,
    },
    /// With `file_id` (an upload of kind `image`), the server fills `url`, `size`, `width`
    /// and `height`; without it, `url` is required (hosted elsewhere).
    Image {
        #[serde(default)]
        url: String,
        width: Option<u32>,
        height: Option<u32>,
        size: Option<u64>,
        file_id: Option<String>,
    },
    Audio {
        #[serde(default)]
        url: String,
        duration_ms: u64,
        size: Option<u64>,
        file_id: Option<String>,
    },
    Video {
        #[serde(default)]
        url: String,
        duration_ms: u64,
        width: Option<u32>,
        height: Option<u32>,
        size: Option<u64>,
        thumbnail_url: Option<String>,
        file_id: Option<String>,
    },
    /// With `file_id`, the server fills `url`, `size`, `mime` and (unless given) `name`.
    File {
        #[serde(default)]
        url: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        size: u64,
        mime: Option<String>,
        file_id: Option<String>,
    },
    Code {
        code: String,
        lang: Option<String>,
    },
    Location {
        lat: f64,
        lng: f64,
        name: Option<String>,
        address: Option<String>,
    },
    /// App-defined JSON; `summary` is what conversation lists and quotes show.
    Custom {
        data: serde_json::Value,
        summary: Option<String>,
    },
    /// Server-generated (group created, members added, ...). Clients cannot send it.
    System {
        event: String,
        #[serde(default)]
        data: serde_json::Value,
    },
    /// What a recalled message turns into, in events and in history.
    Recalled {
        by: String,
    },
}

/// Checks a URL field: 1 to [`MAX_URL_LEN`] bytes, no whitespace.
pub(super) fn check_url(field: &str, url: &str) -> Result<()> {
    if url.is_empty() || url.len() > MAX_URL_LEN {
        return Err(Error::body(format!("{field} must be 1 to {MAX_URL_LEN} bytes")));
    }
    if url.chars().any(char::is_whitespace) {
        return Err(Error::body(format!("{field} must not contain whitespace")));
    }
    Ok(())
}

fn check_short(field: &str, s: &Option<String>) -> Result<()> {
    match s {
        Some(v) if v.chars().count() > MAX_NAME_LEN => {
            Err(Error::body(format!("{field} must be at most {MAX_NAME_LEN} characters")))
        }
        _ => Ok(()),
    }
}

fn check_text(field: &str, s: &str, max_chars: usize) -> Result<()> {
    if s.trim().is_empty() {
        return Err(Error::body(format!("{field} must not be empty")));
    }
    if s.chars().count() > max_chars {
        return Err(Error::body(format!("{field} must be at most {max_chars} characters")));
    }
    Ok(())
}

impl Body {
    /// A plain text body (no mentions).
    pub fn text(text: impl Into<String>) -> Body {
        Body::Text { text: text.into(), mentions: None, mention_all: None }
    }

    /// Whether the message mentions `user`: by name, or everyone.
    pub fn mentions(&self, user: &str) -> bool {
        match self {
            Body::Text { mentions, mention_all, .. } => {
                *mention_all == Some(true) || mentions.as_ref().is_some_and(|m| m.iter().any(|u| u == user))
            }
            _ => false,
        }
    }

    /// Whether the message mentions everyone (`mention_all`).
    pub fn mentions_all(&self) -> bool {
        matches!(self, Body::Text { mention_all: Some(true), .. })
    }

    /// The wire name of this body's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            Body::Text { .. } => "text",
            Body::Image { .. } => "image",
            Body::Audio { .. } => "audio",
            Body::Video { .. } => "video",
            Body::File { .. } => "file",
            Body::Code { .. } => "code",
            Body::Location { .. } => "location",
            Body::Custom { .. } => "custom",
            Body::System { .. } => "system",
            Body::Recalled { .. } => "recalled",
        }
    }

    /// The uploaded file a media body names, if any.
    pub fn file_id(&self) -> Option<&str> {
        match self {
            Body::Image { file_id, .. }
            | Body::Audio { file_id, .. }
            | Body::Video { file_id, .. }
            | Body::File { file_id, .. } => file_id.as_deref(),
            _ => None,
        }
    }

    /// Validates a body a client wants to send. `system` and `recalled` are server-only.
    pub fn validate_client(&self, max_text_chars: usize) -> Result<()> {
        if let Some(id) = self.file_id() {
            super::validate_id("file_id", id).map_err(|e| Error::body(e.message))?;
        }
        match self {
            Body::Text { text, mentions, .. } => {
                check_text("text", text, max_text_chars)?;
                let Some(ids) = mentions else { return Ok(()) };
                if ids.len() > MAX_MENTIONS {
                    return Err(Error::body(format!("mentions must name at most {MAX_MENTIONS} users")));
                }
                for id in ids {
                    super::validate_id("mentions", id).map_err(|e| Error::body(e.message))?;
                }
                Ok(())
            }
            Body::Image { url, .. } => check_url("url", url),
            Body::Audio { url, duration_ms, .. } => {
                check_url("url", url)?;
                if *duration_ms == 0 {
                    return Err(Error::body("duration_ms must be positive"));
                }
                Ok(())
            }
            Body::Video { url, thumbnail_url, .. } => {
                check_url("url", url)?;
                if let Some(t) = thumbnail_url {
                    check_url("thumbnail_url", t)?;
                }
                Ok(())
            }
            Body::File { url, name, mime, .. } => {
                check_url("url", url)?;
                check_text("name", name, MAX_NAME_LEN)?;
                check_short("mime", mime)
            }
            Body::Code { code, lang } => {
                check_text("code", code, max_text_chars)?;
                check_short("lang", lang)
            }
            Body::Location { lat, lng, name, address } => {
                if !lat.is_finite() || !(-90.0..=90.0).contains(lat) {
                    return Err(Error::body("lat must be between -90 and 90"));
                }
                if !lng.is_finite() || !(-180.0..=180.0).contains(lng) {
                    return Err(Error::body("lng must be between -180 and 180"));
                }
                check_short("name", name)?;
                check_short("address", address)
            }
            Body::Custom { data, summary } => {
                let encoded = serde_json::to_vec(data).map_err(|e| Error::body(e.to_string()))?;
                if encoded.len() > MAX_CUSTOM_BYTES {
                    return Err(Error::body(format!("custom data must be at most {MAX_CUSTOM_BYTES} bytes")));
                }
                check_short("summary", summary)
            }
            Body::System { .. } | Body::Recalled { .. } => {
                Err(Error::body(format!("clients cannot send {} messages", self.type_name())))
            }
        }
    }

    /// A short plain-text rendering for quotes and conversation lists.
    pub fn summary(&self) -> String {
        let s = match self {
            Body::Text { text, .. } => text.clone(),
            Body::Code { code, .. } => code.clone(),
            Body::Image { .. } => "[image]".into(),
            Body::Audio { .. } => "[audio]".into(),
            Body::Video { .. } => "[video]".into(),
            Body::File { name, .. } => format!("[file] {name}"),
            Body::Location { name, .. } => format!("[location] {}", name.as_deref().unwrap_or("")),
            Body::Custom { summary, .. } => summary.clone().unwrap_or_else(|| "[custom]".into()),
            Body::System { event, .. } => format!("[{event}]"),
            Body::Recalled { .. } => "[recalled]".into(),
        };
        s.chars().take(QUOTE_CHARS).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_keep_their_numbers_exactly() {
        // Found by fuzzing (fuzz/fuzz_targets/body.rs): without serde_json's `float_roundtrip`
        // this number reads back one unit in the last place off, so a location or custom body
        // changed on its way through the store.
        let json = r#"{"type":"location","lat":1.1666666666666665,"lng":0}"#;
        let body: Body = serde_json::from_str(json).unwrap();
        assert_eq!(body, Body::Location { lat: 1.1666666666666665, lng: 0.0, name: None, address: None });
        let again: Body = serde_json::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(again, body);
    }

    #[test]
    fn bodies_validate() {
        let ok = |j: &str| {
            serde_json::from_str::<Body>(j)
                .map_err(|e| e.to_string())
                .and_then(|b| b.validate_client(10).map_err(|e| e.to_string()))
        };
        assert!(ok(r#"{"type":"text","text":"hi"}"#).is_ok());
        assert!(ok(r#"{"type":"text","text":"   "}"#).is_err());
        assert!(ok(r#"{"type":"text","text":"12345678901"}"#).is_err());
        assert!(ok(r#"{"type":"text"}"#).is_err());
        assert!(ok(r#"{"type":"text","text":"a","x":1}"#).is_err());
        assert!(ok(r#"{"type":"image","url":"https://x/y.png","width":3}"#).is_ok());
        assert!(ok(r#"{"type":"audio","url":"u","duration_ms":0}"#).is_err());
        assert!(ok(r#"{"type":"location","lat":91,"lng":0}"#).is_err());
        assert!(ok(r#"{"type":"system","event":"x"}"#).is_err());
        assert!(ok(r#"{"type":"file","url":"u","name":"a.pdf","size":3}"#).is_ok());
        assert!(ok(r#"{"type":"custom","data":{"k":[1,2]}}"#).is_ok());
        assert!(ok(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn body_types_lists_every_type() {
        for t in BODY_TYPES {
            // A known type with its fields missing fails on a field, not on the type.
            let e = serde_json::from_value::<Body>(serde_json::json!({ "type": t, "zz": 1 })).unwrap_err().to_string();
            assert!(!e.contains("unknown variant"), "{t}: {e}");
        }
        let e = serde_json::from_value::<Body>(serde_json::json!({ "type": "nope" })).unwrap_err().to_string();
        assert!(e.contains("unknown variant"), "{e}");
        assert!(e.contains(&BODY_TYPES.join("`, `")), "BODY_TYPES is out of step with Body: {e}");
    }
}
