//! Groups: their profile, members and roles, and changes to the profile.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

use super::body::check_url;
use super::validate_ext;

/// Longest group notice, in characters.
pub const MAX_NOTICE_CHARS: usize = 2048;

/// A member's role in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    /// Whether the role is the owner's or an admin's, who manage the group.
    pub fn can_manage(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// A group's profile.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Group {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub created_at: i64,
    pub member_count: u64,
    /// An image URL.
    pub avatar: Option<String>,
    /// The group's notice (announcement).
    pub notice: Option<String>,
    /// App-defined JSON object.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub ext: Option<serde_json::Value>,
    /// True once the group was dismissed: it refuses sends and changes (`group_dismissed`).
    #[serde(default)]
    pub dismissed: bool,
    /// Everyone but the owner and admins is muted (`group_mute_all`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mute_all: bool,
    /// How users join by themselves (`group_join`).
    #[serde(default)]
    pub join_mode: JoinMode,
    /// Who may invite (`group_invite`).
    #[serde(default)]
    pub invite_mode: InviteMode,
    /// When the current notice was set (unix ms); confirmations name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice_ts: Option<i64>,
    /// Members are asked to confirm they read the current notice (`group_notice_confirm`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notice_confirm: bool,
}

/// A member's confirmation that they read a group's notice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NoticeConfirmation {
    pub user_id: String,
    /// The `notice_ts` of the notice confirmed.
    pub notice_ts: i64,
    /// When they confirmed, unix ms.
    pub ts: i64,
}

/// How users join a group by themselves (`group_join`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum JoinMode {
    /// Nobody: users are added or invited.
    #[default]
    Closed,
    /// Anyone joins at once.
    Free,
    /// A join is an application the owner or admins approve or reject.
    Approval,
}

/// Who may invite users into a group (`group_invite`; the owner and admins always add directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum InviteMode {
    /// Only the owner and admins.
    #[default]
    Admins,
    /// Every member; the invited join at once.
    Members,
    /// Every member; an ordinary member's invitation waits for the owner's or an admin's approval.
    MembersApproved,
}

/// What a pending join request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// The user asked to join (`group_join` in `approval` mode).
    Application,
    /// A member invited the user (`group_invite` in `members_approved` mode).
    Invitation,
}

/// A pending request to join a group, waiting for the owner or an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinRequest {
    /// Who would join.
    pub user_id: String,
    pub kind: RequestKind,
    /// Who asked: the user for an application, the inviting member for an invitation.
    pub by: String,
    /// A short message (at most 200 characters).
    pub message: String,
    pub ts: i64,
}

impl Group {
    /// A new group's profile (no avatar, notice or ext).
    pub fn new(id: String, name: String, owner: String, created_at: i64, member_count: u64) -> Group {
        Group {
            id,
            name,
            owner,
            created_at,
            member_count,
            avatar: None,
            notice: None,
            ext: None,
            dismissed: false,
            mute_all: false,
            join_mode: JoinMode::Closed,
            invite_mode: InviteMode::Admins,
            notice_ts: None,
            notice_confirm: false,
        }
    }
}

/// One member of a group.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    pub user_id: String,
    pub role: Role,
    pub joined_at: i64,
    /// Muted until this time, unix milliseconds (`group_mute`); absent when not muted.
    #[serde(default)]
    pub muted_until: Option<i64>,
}

/// A user banned from a group: not a member, and not to be added or to rejoin until unbanned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GroupBan {
    pub user_id: String,
    /// Who banned them.
    pub by: String,
    pub ts: i64,
}

/// Longest a mute may last: one year.
pub const MAX_MUTE_MS: i64 = 365 * 24 * 3600 * 1000;

/// Changes a group's profile and settings; `None` keeps a field as it is. Serialized, its `None`
/// fields dropped, it is the data of the `group_updated` system message.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GroupPatch {
    /// 1 to 128 characters.
    pub name: Option<String>,
    /// An image URL.
    pub avatar: Option<String>,
    /// At most 2048 characters; an empty string clears it.
    pub notice: Option<String>,
    /// A JSON object of at most 4096 bytes.
    pub ext: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_mode: Option<JoinMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invite_mode: Option<InviteMode>,
    /// With a new `notice`: members are asked to confirm they read it (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notice_confirm: Option<bool>,
}

impl GroupPatch {
    /// Checks the fields and that at least one is given; trims the name.
    pub fn validate(&mut self) -> Result<()> {
        if self.name.is_none()
            && self.avatar.is_none()
            && self.notice.is_none()
            && self.ext.is_none()
            && self.join_mode.is_none()
            && self.invite_mode.is_none()
            && self.notice_confirm.is_none()
        {
            return Err(Error::invalid("give at least one of name, avatar, notice, ext, join_mode, invite_mode"));
        }
        if let Some(n) = &mut self.name {
            *n = n.trim().to_string();
            if n.is_empty() || n.chars().count() > 128 {
                return Err(Error::invalid("name must be 1 to 128 characters"));
            }
        }
        if let Some(a) = &self.avatar {
            check_url("avatar", a).map_err(|e| Error::invalid(e.message))?;
        }
        if let Some(n) = &self.notice {
            if n.chars().count() > MAX_NOTICE_CHARS {
                return Err(Error::invalid(format!("notice must be at most {MAX_NOTICE_CHARS} characters")));
            }
        }
        if let Some(e) = &self.ext {
            validate_ext(e)?;
        }
        if self.notice_confirm.is_some() && self.notice.as_ref().is_none_or(|n| n.is_empty()) {
            return Err(Error::invalid("notice_confirm goes with a new notice"));
        }
        Ok(())
    }

    /// Applies the patch, made at `ts` (unix ms), to a group's profile.
    pub fn apply(&self, g: &mut Group, ts: i64) {
        if let Some(n) = &self.name {
            g.name = n.clone();
        }
        if let Some(a) = &self.avatar {
            g.avatar = Some(a.clone());
        }
        if let Some(n) = &self.notice {
            g.notice = if n.is_empty() { None } else { Some(n.clone()) };
            g.notice_ts = g.notice.as_ref().map(|_| ts);
            g.notice_confirm = g.notice.is_some() && self.notice_confirm.unwrap_or(false);
        }
        if let Some(e) = &self.ext {
            g.ext = Some(e.clone());
        }
        if let Some(m) = self.join_mode {
            g.join_mode = m;
        }
        if let Some(m) = self.invite_mode {
            g.invite_mode = m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_patch_serializes_under_its_field_names() {
        let patch = GroupPatch {
            name: Some("n".into()),
            avatar: Some("https://a/b.png".into()),
            notice: Some(String::new()),
            ext: Some(serde_json::json!({"k": 1})),
            join_mode: None,
            invite_mode: None,
            notice_confirm: None,
        };
        assert_eq!(
            serde_json::to_value(&patch).ok(),
            Some(serde_json::json!({"name": "n", "avatar": "https://a/b.png", "notice": "", "ext": {"k": 1}}))
        );
    }
}
