//! Uploaded files: the record the store keeps of each (its bytes live in the node's file storage).

use serde::{Deserialize, Serialize};

/// What a file was uploaded as: the body type it may be sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum FileKind {
    Image,
    Audio,
    Video,
    File,
}

impl FileKind {
    pub fn parse(s: &str) -> Option<FileKind> {
        Some(match s {
            "image" => FileKind::Image,
            "audio" => FileKind::Audio,
            "video" => FileKind::Video,
            "file" => FileKind::File,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FileKind::Image => "image",
            FileKind::Audio => "audio",
            FileKind::Video => "video",
            FileKind::File => "file",
        }
    }

    /// Whether content of type `mime` may be uploaded as this kind (executables never may: the
    /// sniffer refuses them first).
    pub fn accepts(self, mime: &str) -> bool {
        match self {
            FileKind::Image => mime.starts_with("image/"),
            FileKind::Audio => mime.starts_with("audio/"),
            FileKind::Video => mime.starts_with("video/"),
            FileKind::File => true,
        }
    }
}

/// An uploaded file.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileMeta {
    /// Random, 32 hex characters: unguessable.
    pub id: String,
    /// The uploader.
    pub owner: String,
    pub kind: FileKind,
    /// From the content, never from the name.
    pub mime: String,
    pub size: u64,
    /// The name the uploader gave (for `Content-Disposition`).
    pub name: Option<String>,
    /// Images: from the header.
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Hex SHA-256 of the content (the download's `ETag`).
    pub sha256: String,
    /// Images the server could decode: a JPEG thumbnail fitting 320×320.
    #[serde(default)]
    pub thumbnail: Option<Thumbnail>,
    /// Unix ms.
    pub created_at: i64,
}

/// An image's thumbnail (downloaded as `<file id>.thumb`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Thumbnail {
    pub width: u32,
    pub height: u32,
    pub size: u64,
}
