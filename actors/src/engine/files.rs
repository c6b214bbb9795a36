//! Files in messages: what a body's `file_id` fills in, and who may download a file.

use super::*;
use crate::model::{FileKind, FileMeta};

impl Engine {
    /// Fills a media body that names an uploaded file (`file_id`) from the file's record: `url`
    /// (`/files/<id>`), `size`, and the type's own fields (`mime` and, unless given, `name` of a
    /// file; an image's `width` and `height`). The file must exist and have been uploaded as the
    /// body's type (`invalid_body` otherwise). Other bodies pass unchanged.
    pub async fn resolve_file(&self, mut req: proto::SendReq) -> Result<proto::SendReq> {
        let Ok(body) = &mut req.body else { return Ok(req) };
        let Some(id) = body.file_id().map(str::to_owned) else { return Ok(req) };
        model::validate_id("file_id", &id).map_err(|e| Error::body(e.message))?;
        let meta = self.core.store.file(&id).await?.ok_or_else(|| Error::body("file_id: no such file"))?;
        let url = format!("/files/{id}");
        let wrong = || Error::body(format!("file_id: the file was uploaded as {}", meta.kind.as_str()));
        match (body, meta.kind) {
            (Body::Image { url: u, width, height, size, .. }, FileKind::Image) => {
                *u = url;
                *size = Some(meta.size);
                (*width, *height) = (meta.width, meta.height);
            }
            (Body::Audio { url: u, size, .. }, FileKind::Audio) => {
                *u = url;
                *size = Some(meta.size);
            }
            (Body::Video { url: u, size, .. }, FileKind::Video) => {
                *u = url;
                *size = Some(meta.size);
            }
            (Body::File { url: u, name, size, mime, .. }, _) => {
                *u = url;
                *size = meta.size;
                *mime = Some(meta.mime.clone());
                if name.trim().is_empty() {
                    *name = meta.name.clone().unwrap_or_else(|| "file".to_owned());
                }
            }
            _ => return Err(wrong()),
        }
        Ok(req)
    }

    /// Whether `user` may download `file`: its uploader always; anyone else through a message
    /// they can read (`at`: its conversation and seq) whose body names the file. A message the
    /// user deleted for themselves, cleared, or that was recalled no longer gives access.
    pub async fn file_access(&self, user: &str, file: &FileMeta, at: Option<(&str, u64)>) -> Result<()> {
        if file.owner == user {
            return Ok(());
        }
        let Some((conv_id, seq)) = at else {
            return Err(Error::invalid("conv_id and seq of a message with the file are required"));
        };
        model::validate_cursor("seq", seq)?;
        let state = self.row(user, conv_id).await?;
        let last = self.core.store.conversation(conv_id).await?.map_or(0, |c| c.last_seq);
        if seq == 0 || seq > state.visible_upto(last) || seq <= state.cleared_seq {
            return Err(Error::not_found("no such message"));
        }
        let page = self.core.store.history(conv_id, Some(user), HistoryQuery::After { seq: seq - 1, limit: 1 }).await?;
        let names_it = page.first().is_some_and(|m| m.seq == seq && m.body.file_id() == Some(file.id.as_str()));
        if !names_it {
            return Err(Error::not_found("no message of yours there names this file"));
        }
        Ok(())
    }
}
