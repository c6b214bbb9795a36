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
    /// The newest of them that mentions the user (0: none does).
    pub mention_seq: u64,
    pub state: JobState,
    /// When it is to go (ms since the Unix epoch).
    pub due_at: i64,
    /// Failed attempts since it was last sent.
    pub attempts: u32,
    /// Changes with every write: finishing a job compares it with the one the sender read, to
    /// keep the messages added since ([`finish`]); stores write jobs by compare-and-set on it.
    pub rev: u64,
    /// The outbox event of the newest message in it: planning that event again adds nothing.
    pub last_event: u64,
    /// The time of the oldest message it stands for (for the latency metric).
    pub first_ts: i64,
}

impl PushJob {
    /// One of its messages mentions the user.
    pub fn mentioned(&self) -> bool {
        self.mention_seq > 0
    }

    /// The store key: user, device and conversation (ids never hold a NUL).
    pub fn key(&self) -> String {
        job_key(&self.user, &self.device, &self.conv_id)
    }
}

/// See [`PushJob::key`].
pub fn job_key(user: &str, device: &str, conv_id: &str) -> String {
    format!("{user}\0{device}\0{conv_id}")
}

/// Messages planned for one device in one conversation (what [`merge`] folds into its job): one
/// message, or several of one planning step folded together with [`Planned::absorb`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub user: String,
    pub device: String,
    pub conv_id: String,
    /// The newest message, and its sender.
    pub seq: u64,
    pub sender: String,
    /// How many messages.
    pub count: u32,
    /// The newest of them that mentions the user (0: none).
    pub mention_seq: u64,
    /// The newest message's outbox event.
    pub event: u64,
    /// The oldest message's time.
    pub ts: i64,
    /// When a new job is due (the oldest message's time plus `push.delay_ms`).
    pub due_at: i64,
}

impl Planned {
    /// Takes in `later`, planned for the same device and conversation after this one.
    pub fn absorb(&mut self, later: Planned) {
        if later.seq >= self.seq {
            self.seq = later.seq;
            self.sender = later.sender;
        }
        self.count = self.count.saturating_add(later.count);
        self.mention_seq = self.mention_seq.max(later.mention_seq);
        self.event = self.event.max(later.event);
        self.ts = self.ts.min(later.ts);
        self.due_at = self.due_at.min(later.due_at);
    }
}

/// The job after planning `p` into `existing` (the device's job for the conversation), or
/// `None` when nothing changes: the event was planned already (a replay after a crash).
///
/// A pending job takes the messages in (newest seq and sender, more in `count`) and keeps its
/// due time, so a burst goes out as one notification. A done job starts again from them.
pub fn merge(existing: Option<&PushJob>, p: &Planned) -> Option<PushJob> {
    match existing {
        Some(j) if j.last_event >= p.event => None,
        Some(j) if j.state == JobState::Pending => Some(PushJob {
            seq: j.seq.max(p.seq),
            sender: if p.seq >= j.seq { p.sender.clone() } else { j.sender.clone() },
            count: j.count.saturating_add(p.count),
            mention_seq: j.mention_seq.max(p.mention_seq),
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
            count: p.count,
            mention_seq: p.mention_seq,
            state: JobState::Pending,
            due_at: p.due_at,
            attempts: 0,
            rev: existing.map_or(1, |j| j.rev + 1),
            last_event: p.event,
            first_ts: p.ts,
        }),
    }
}

/// How the sender finishes a job it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Sent, dropped or given up. Messages folded in since it was read are due at `requeue_at`
    /// at the earliest (now plus `push.delay_ms`: they get their own window).
    Done { requeue_at: i64 },
    /// Failed; try again at `next_at` (`attempts` failed so far).
    Retry { next_at: i64, attempts: u32 },
}

/// What finishing a job does to the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// Write this.
    Write(PushJob),
    /// Remove the job: done, and its last event is behind the planning cursor, so planning it
    /// again cannot happen (nothing needs the record).
    Delete,
    /// Nothing to do (it is not pending any more).
    Unchanged,
}

/// Finishes `current` (the stored job), which the sender read as `read`. `forget_upto`: the
/// planning cursor as stored.
///
/// If messages were folded in since it was read, they stay pending: after a send, the job
/// counts only them and is due at `requeue_at` at the earliest; after a failure, it keeps the
/// retry time and the attempts.
pub fn finish(current: &PushJob, read: &PushJob, f: Finish, forget_upto: u64) -> Finished {
    if current.state != JobState::Pending {
        return Finished::Unchanged;
    }
    let mut j = current.clone();
    j.rev += 1;
    let newer = current.rev != read.rev;
    match f {
        Finish::Done { .. } if !newer => {
            if current.last_event <= forget_upto {
                return Finished::Delete;
            }
            j.state = JobState::Done;
            j.attempts = 0;
            j.count = 0;
            j.mention_seq = 0;
        }
        Finish::Done { requeue_at } => {
            j.count = current.count.saturating_sub(read.count).max(1);
            j.mention_seq = if current.mention_seq > read.seq { current.mention_seq } else { 0 };
            j.due_at = current.due_at.max(requeue_at);
            j.attempts = 0;
        }
        Finish::Retry { next_at, attempts } => {
            j.due_at = next_at;
            j.attempts = attempts;
        }
    }
    Finished::Write(j)
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
    if state.muted && !(job.mentioned() && mentions_override_mute) {
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
            count: 1,
            mention_seq: if mention { seq } else { 0 },
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
        assert_eq!((j2.seq, j2.count, j2.due_at, j2.mention_seq, j2.sender.as_str()), (2, 2, 2001, 2, "s2"));
        assert_eq!(j2.first_ts, 1001);
        // Planned again after a crash: nothing changes.
        assert_eq!(merge(Some(&j2), &planned(2, 11, true)), None);
        assert_eq!(merge(Some(&j2), &planned(1, 10, false)), None);
        // Several messages of one step fold first, the same way.
        let mut p = planned(3, 12, true);
        p.absorb(planned(4, 13, false));
        assert_eq!(
            (p.seq, p.count, p.mention_seq, p.event, p.ts, p.due_at, p.sender.as_str()),
            (4, 2, 3, 13, 1003, 2003, "s4")
        );
        let j3 = merge(Some(&j2), &p).expect("merged");
        assert_eq!((j3.seq, j3.count, j3.mention_seq, j3.last_event), (4, 4, 3, 13));
    }

    #[test]
    fn finishing_a_job_and_messages_that_arrive_while_it_is_sent() {
        let j1 = merge(None, &planned(1, 10, true)).expect("new");
        let done = Finish::Done { requeue_at: 5000 };
        let Finished::Write(d) = finish(&j1, &j1, done, 9) else { panic!("kept: its event is after the cursor") };
        assert_eq!((d.state, d.count, d.mention_seq), (JobState::Done, 0, 0));
        assert_eq!(finish(&d, &j1, done, 9), Finished::Unchanged, "finished once");
        assert_eq!(finish(&j1, &j1, done, 10), Finished::Delete, "behind the cursor: forgotten");
        let again = merge(Some(&d), &planned(5, 20, false)).expect("restarted");
        assert_eq!((again.state, again.count, again.due_at, again.seq), (JobState::Pending, 1, 2005, 5));
        assert!(again.rev > d.rev);
        // Sent while two more came in (one mentioning): those stay, in a window of their own.
        let m = merge(Some(&again), &planned(6, 21, true)).expect("merged");
        let m = merge(Some(&m), &planned(7, 22, false)).expect("merged");
        let Finished::Write(rest) = finish(&m, &again, done, 0) else { panic!("pending") };
        assert_eq!((rest.state, rest.count, rest.mention_seq, rest.due_at), (JobState::Pending, 2, 6, 5000));
        // A retry keeps its time and attempts, whatever came in.
        let Finished::Write(r) = finish(&m, &again, Finish::Retry { next_at: 9000, attempts: 1 }, 0) else {
            panic!("pending")
        };
        assert_eq!((r.state, r.due_at, r.attempts, r.count), (JobState::Pending, 9000, 1, 3));
        // A mention already sent is not carried over.
        let j = merge(None, &planned(8, 30, true)).expect("new");
        let j2 = merge(Some(&j), &planned(9, 31, false)).expect("merged");
        let Finished::Write(rest) = finish(&j2, &j, done, 0) else { panic!("pending") };
        assert_eq!(rest.mention_seq, 0);
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
