//! Offline push, the contract side: device registrations (one push token per device), the
//! durable queue of notifications (one job per user, device and conversation, so a burst in a
//! conversation is one notification), and the decisions of who gets one. The pusher that plans
//! and sends them lives in the `confab` crate (`src/push/`); storage adapters implement the
//! [`Store`](crate::store::Store) methods that keep registrations and jobs.

use serde::{Deserialize, Serialize};

use crate::model::UserConvState;

/// The outbox cursor of push planning (beside the webhook endpoints' cursors; not a valid
/// endpoint name, so it never meets one).
pub const CURSOR: &str = "~push";

/// A device's push registration: where its notifications go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushRegistration {
    pub user: String,
    pub device: String,
    /// `fcm`, `apns`, or a name the relay takes (`huawei`, `xiaomi`, ...).
    pub provider: String,
    /// The provider's token for the device (opaque, at most [`MAX_TOKEN_LEN`] bytes).
    pub token: String,
    /// When it was registered, ms since the Unix epoch.
    pub updated_at: i64,
}

/// Longest push token accepted (FCM tokens are ~160 bytes, APNs 64 hex digits).
pub const MAX_TOKEN_LEN: usize = 4096;

/// Checks a token: 1 to [`MAX_TOKEN_LEN`] bytes of printable ASCII, no spaces.
pub fn validate_token(token: &str) -> crate::error::Result<()> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(crate::error::Error::invalid(format!(
            "token must be 1 to {MAX_TOKEN_LEN} bytes of printable ASCII without spaces"
        )));
    }
    Ok(())
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// To be sent at `due_at`.
    Pending,
    /// Sent, dropped or given up; kept so that planning an event again (after a crash) finds it
    /// and adds nothing.
    Done,
}

/// The notification owed to one device for one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJob {
    pub user: String,
    pub device: String,
    pub conv_id: String,
    /// The newest message it is about, and its sender.
    pub seq: u64,
    pub sender: String,
    /// Messages it stands for since it was last sent.
    pub count: u32,
    /// One of them mentions the user.
    pub mention: bool,
    pub state: JobState,
    /// When it is to go (ms since the Unix epoch).
    pub due_at: i64,
    /// Failed attempts since it was last sent.
    pub attempts: u32,
    /// Changes with every write: the sender finishes a job only if no message was added since it
    /// read it.
    pub rev: u64,
    /// The outbox event of the newest message in it: planning that event again adds nothing.
    pub last_event: u64,
    /// The time of the oldest message it stands for (for the latency metric).
    pub first_ts: i64,
}

impl PushJob {
    /// The store key: user, device and conversation (ids never hold a NUL).
    pub fn key(&self) -> String {
        job_key(&self.user, &self.device, &self.conv_id)
    }
}

/// See [`PushJob::key`].
pub fn job_key(user: &str, device: &str, conv_id: &str) -> String {
    format!("{user}\0{device}\0{conv_id}")
}

/// One message planned for one device (what [`merge`] folds into its job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub user: String,
    pub device: String,
    pub conv_id: String,
    pub seq: u64,
    pub sender: String,
    pub mention: bool,
    /// The message's outbox event.
    pub event: u64,
    /// The message's time.
    pub ts: i64,
    /// When a new job is due (the message's time plus `push.delay_ms`).
    pub due_at: i64,
}

/// The job after planning `p` into `existing` (the device's job for the conversation), or
/// `None` when nothing changes: the event was planned already (a replay after a crash).
///
/// A pending job takes the message in (newest seq and sender, one more in `count`) and keeps its
/// due time, so a burst goes out as one notification. A done job starts again from the message.
pub fn merge(existing: Option<&PushJob>, p: &Planned) -> Option<PushJob> {
    match existing {
        Some(j) if j.last_event >= p.event => None,
        Some(j) if j.state == JobState::Pending => Some(PushJob {
            seq: j.seq.max(p.seq),
            sender: if p.seq >= j.seq { p.sender.clone() } else { j.sender.clone() },
            count: j.count.saturating_add(1),
            mention: j.mention || p.mention,
            rev: j.rev + 1,
            last_event: p.event,
            ..j.clone()
        }),
        _ => Some(PushJob {
            user: p.user.clone(),
            device: p.device.clone(),
            conv_id: p.conv_id.clone(),
            seq: p.seq,
            sender: p.sender.clone(),
            count: 1,
            mention: p.mention,
            state: JobState::Pending,
            due_at: p.due_at,
            attempts: 0,
            rev: existing.map_or(1, |j| j.rev + 1),
            last_event: p.event,
            first_ts: p.ts,
        }),
    }
}

/// How the sender finishes a job it read (at revision `rev`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Sent, dropped or given up: done.
    Done,
    /// Failed; try again at `next_at` (`attempts` failed so far).
    Retry { next_at: i64, attempts: u32 },
}

/// The job after finishing it at revision `rev`, or `None` when a message was added since it
/// was read (it stays pending and goes out with the newer message).
pub fn finish(job: &PushJob, rev: u64, f: Finish) -> Option<PushJob> {
    if job.rev != rev || job.state != JobState::Pending {
        return None;
    }
    let mut j = job.clone();
    j.rev += 1;
    match f {
        Finish::Done => {
            j.state = JobState::Done;
            j.attempts = 0;
            j.count = 0;
            j.mention = false;
        }
        Finish::Retry { next_at, attempts } => {
            j.due_at = next_at;
            j.attempts = attempts;
        }
    }
    Some(j)
}

/// Why a due job is not sent (the metrics label), or `None` when it is to go.
///
/// `state` is the user's row of the conversation (absent: never a member), `connected` whether
/// the device is connected to some node now, `mentions_override_mute` the setting.
pub fn skip_reason(
    job: &PushJob,
    state: Option<&UserConvState>,
    connected: bool,
    mentions_override_mute: bool,
) -> Option<&'static str> {
    let Some(state) = state else { return Some("not_member") };
    if !state.active {
        return Some("not_member");
    }
    if connected {
        return Some("online");
    }
    if state.read_seq >= job.seq || state.cleared_seq >= job.seq {
        return Some("read");
    }
    if state.muted && !(job.mention && mentions_override_mute) {
        return Some("muted");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(seq: u64, event: u64, mention: bool) -> Planned {
        Planned {
            user: "bob".into(),
            device: "phone".into(),
            conv_id: "g_t".into(),
            seq,
            sender: format!("s{seq}"),
            mention,
            event,
            ts: 1000 + seq as i64,
            due_at: 2000 + seq as i64,
        }
    }

    #[test]
    fn a_burst_folds_into_one_pending_job_due_at_its_first_message() {
        let j1 = merge(None, &planned(1, 10, false)).expect("new");
        assert_eq!((j1.count, j1.due_at, j1.rev, j1.state), (1, 2001, 1, JobState::Pending));
        let j2 = merge(Some(&j1), &planned(2, 11, true)).expect("merged");
        assert_eq!((j2.seq, j2.count, j2.due_at, j2.mention, j2.sender.as_str()), (2, 2, 2001, true, "s2"));
        assert_eq!(j2.first_ts, 1001);
        // Planned again after a crash: nothing changes.
        assert_eq!(merge(Some(&j2), &planned(2, 11, true)), None);
        assert_eq!(merge(Some(&j2), &planned(1, 10, false)), None);
    }

    #[test]
    fn a_done_job_starts_again_and_a_finish_after_a_merge_leaves_it_pending() {
        let j1 = merge(None, &planned(1, 10, true)).expect("new");
        let done = finish(&j1, j1.rev, Finish::Done).expect("finished");
        assert_eq!((done.state, done.count, done.mention), (JobState::Done, 0, false));
        let again = merge(Some(&done), &planned(5, 20, false)).expect("restarted");
        assert_eq!((again.state, again.count, again.due_at, again.seq), (JobState::Pending, 1, 2005, 5));
        assert!(again.rev > done.rev);
        let merged = merge(Some(&again), &planned(6, 21, false)).expect("merged");
        assert_eq!(finish(&merged, again.rev, Finish::Done), None, "a newer message keeps it pending");
        let retry = finish(&merged, merged.rev, Finish::Retry { next_at: 9000, attempts: 1 }).expect("retry");
        assert_eq!((retry.state, retry.due_at, retry.attempts), (JobState::Pending, 9000, 1));
    }

    #[test]
    fn who_is_not_pushed() {
        let job = merge(None, &planned(5, 10, false)).expect("new");
        let row = UserConvState { active: true, read_seq: 4, ..Default::default() };
        assert_eq!(skip_reason(&job, Some(&row), false, true), None);
        assert_eq!(skip_reason(&job, Some(&row), true, true), Some("online"));
        assert_eq!(skip_reason(&job, None, false, true), Some("not_member"));
        let left = UserConvState { active: false, ..row.clone() };
        assert_eq!(skip_reason(&job, Some(&left), false, true), Some("not_member"));
        let read = UserConvState { read_seq: 5, ..row.clone() };
        assert_eq!(skip_reason(&job, Some(&read), false, true), Some("read"));
        let cleared = UserConvState { cleared_seq: 5, ..row.clone() };
        assert_eq!(skip_reason(&job, Some(&cleared), false, true), Some("read"));
        let muted = UserConvState { muted: true, ..row.clone() };
        assert_eq!(skip_reason(&job, Some(&muted), false, true), Some("muted"));
        let mention = merge(None, &planned(5, 10, true)).expect("new");
        assert_eq!(skip_reason(&mention, Some(&muted), false, true), None, "a mention overrides the mute");
        assert_eq!(skip_reason(&mention, Some(&muted), false, false), Some("muted"), "unless configured off");
    }

    #[test]
    fn tokens() {
        assert!(validate_token("abc:DEF_123-x").is_ok());
        for bad in ["", "a b", "tab\t", "é"] {
            assert!(validate_token(bad).is_err(), "{bad:?}");
        }
        assert!(validate_token(&"a".repeat(MAX_TOKEN_LEN + 1)).is_err());
    }
}
