//! Write operations. Each runs on the writer thread inside the batch's `WriteTransaction`.
//!
//! Rule: every operation checks everything that can fail with a domain error (`NotFound`,
//! `Conflict`) before its first write, so such an error leaves the shared transaction untouched.
//! Only `Unavailable` (I/O, corrupt data) can happen after a write; the writer then aborts the
//! whole batch.

use confab_actors::error::{ErrorCode, StoreError};
use confab_actors::model::{
    group_conv_id, Body, ConvKind, Conversation, FlagsPatch, Group, Member, Message, UserConvState,
};
use confab_actors::store::{
    group_conversation, live_group, Appended, MemberChange, NewGroup, NewMessage, Recalled, StoreResult,
};
use std::collections::hash_map::Entry;
use std::collections::HashMap;

use redb::{ReadableTable, Table, WriteTransaction};

use super::tables::{
    current_ver, decode, get_json, next_ver, not_found, put_json, unavailable, CONVS, CONV_USERS, DEDUPE, DELETIONS,
    GROUPS, GROUP_BANS, GROUP_NAMES, GROUP_REQUESTS, MEMBERS, MESSAGES, META, RECALLS, REPLIES, REPLIES_INDEXED_KEY,
    USER_CONVS, VER_KEY,
};

type JsonTable<'t, K> = Table<'t, K, &'static [u8]>;

/// Inserts or replaces a user's row and records them as a participant of the conversation.
fn put_row(
    rows: &mut JsonTable<'_, (&'static str, &'static str)>,
    conv_users: &mut Table<'_, (&'static str, &'static str), ()>,
    user: &str,
    conv_id: &str,
    state: &UserConvState,
) -> StoreResult<()> {
    put_json(rows, (user, conv_id), state)?;
    conv_users.insert((conv_id, user), ()).map_err(unavailable)?;
    Ok(())
}

fn row_or_not_found(
    rows: &JsonTable<'_, (&'static str, &'static str)>,
    user: &str,
    conv_id: &str,
) -> StoreResult<UserConvState> {
    get_json(rows, (user, conv_id))?.ok_or_else(|| not_found(format!("{user} has no row in {conv_id}")))
}

/// Appends in a row, with their tables open once and the rows they all touch kept in memory.
///
/// An append reads and rewrites the conversation's row (`last_seq`), the sender's cursor row and
/// the store version. Done one append at a time that is ~10 B-tree operations and three JSON
/// round trips per message; a batch under load holds many appends to the same conversations and
/// cursors. The appender keeps those rows (and `ver`) in memory from the first append of a run
/// until [`Appender::flush`], which writes each changed row once. Messages and dedupe keys are
/// written at once, so a re-send later in the same run finds its first copy.
///
/// Within a transaction the result is exactly that of running the appends one by one, and no
/// other job runs before the flush (`writer::Batch::txn` flushes first).
pub(super) struct Appender<'t> {
    dedupe: Table<'t, (&'static str, &'static str), (&'static str, u64)>,
    messages: JsonTable<'t, (&'static str, u64)>,
    convs: JsonTable<'t, &'static str>,
    rows: JsonTable<'t, (&'static str, &'static str)>,
    conv_users: Table<'t, (&'static str, &'static str), ()>,
    replies: Table<'t, (&'static str, u64, u64), ()>,
    meta: Table<'t, &'static str, u64>,
    /// Messages stored in this run, by day.
    per_day: std::collections::BTreeMap<u32, u64>,
    /// The last version handed out.
    ver: u64,
    /// Conversations read or created in this run, and whether they changed.
    conv_cache: HashMap<String, (Conversation, bool)>,
    /// `(user, conv_id)` rows read or written in this run (`None`: no row), and whether they changed.
    row_cache: HashMap<(String, String), (Option<UserConvState>, bool)>,
}

impl<'t> Appender<'t> {
    pub(super) fn open(txn: &'t WriteTransaction) -> StoreResult<Self> {
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        let ver = current_ver(&mut meta)?;
        Ok(Appender {
            dedupe: txn.open_table(DEDUPE).map_err(unavailable)?,
            messages: txn.open_table(MESSAGES).map_err(unavailable)?,
            convs: txn.open_table(CONVS).map_err(unavailable)?,
            rows: txn.open_table(USER_CONVS).map_err(unavailable)?,
            conv_users: txn.open_table(CONV_USERS).map_err(unavailable)?,
            replies: txn.open_table(REPLIES).map_err(unavailable)?,
            meta,
            per_day: Default::default(),
            ver,
            conv_cache: HashMap::new(),
            row_cache: HashMap::new(),
        })
    }

    /// Writes every changed row and the version counter, and closes the tables.
    pub(super) fn flush(mut self) -> StoreResult<()> {
        for (conv_id, (conv, changed)) in &self.conv_cache {
            if *changed {
                put_json(&mut self.convs, conv_id.as_str(), conv)?;
            }
        }
        for ((user, conv_id), (row, changed)) in &self.row_cache {
            if let (Some(state), true) = (row, *changed) {
                put_json(&mut self.rows, (user.as_str(), conv_id.as_str()), state)?;
            }
        }
        self.meta.insert(VER_KEY, self.ver).map_err(unavailable)?;
        for (&day, &n) in &self.per_day {
            let key = super::tables::message_day_key(day);
            let before = self.meta.get(key.as_str()).map_err(unavailable)?.map_or(0, |v| v.value());
            self.meta.insert(key.as_str(), before + n).map_err(unavailable)?;
        }
        Ok(())
    }

    /// The conversation's row as of this point of the run, if it exists.
    fn conversation(&mut self, conv_id: &str) -> StoreResult<Option<&mut (Conversation, bool)>> {
        if !self.conv_cache.contains_key(conv_id) {
            match get_json::<&str, Conversation>(&self.convs, conv_id)? {
                Some(conv) => {
                    self.conv_cache.insert(conv_id.to_owned(), (conv, false));
                }
                None => return Ok(None),
            }
        }
        Ok(self.conv_cache.get_mut(conv_id))
    }

    /// A user's row in the conversation as of this point of the run.
    fn row(&mut self, user: &str, conv_id: &str) -> StoreResult<&mut (Option<UserConvState>, bool)> {
        match self.row_cache.entry((user.to_owned(), conv_id.to_owned())) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let row: Option<UserConvState> = get_json(&self.rows, (user, conv_id))?;
                Ok(e.insert((row, false)))
            }
        }
    }

    /// Appends one message (see [`Store::append`](confab_actors::store::Store::append)).
    pub(super) fn append(&mut self, m: NewMessage) -> StoreResult<Appended> {
        // 1. De-duplicate: a re-send returns the stored message and writes nothing.
        // System messages (no sender) share the empty sender: user ids are never empty.
        if let Some(cmid) = &m.client_msg_id {
            let sender = m.sender.as_deref().unwrap_or("");
            let hit = self.dedupe.get((sender, cmid.as_str())).map_err(unavailable)?;
            if let Some(guard) = hit {
                let (conv_id, seq) = guard.value();
                let stored: Option<Message> = get_json(&self.messages, (conv_id, seq))?;
                return match stored {
                    Some(message) => Ok(Appended { message, duplicate: true }),
                    None => {
                        Err(StoreError::Unavailable(format!("dedupe entry points at missing message {conv_id}/{seq}")))
                    }
                };
            }
        }

        // 2. Find or create the conversation (checks only; writes come after).
        let conv_id = m.conv_id.as_str();
        let participants = m.participants();
        let last_seq = match self.conversation(conv_id)? {
            Some((conv, _)) => conv.last_seq,
            None if m.direct_members.is_some() => {
                let conv = Conversation {
                    conv_id: m.conv_id.clone(),
                    kind: ConvKind::Direct,
                    members: participants.clone(),
                    group_id: None,
                    last_seq: 0,
                    ver: 0,
                };
                self.conv_cache.insert(m.conv_id.clone(), (conv, true));
                0
            }
            None => return Err(not_found(format!("conversation {}", m.conv_id))),
        };

        // 3. Write.
        self.ver += 1;
        let ver = self.ver;
        let seq = last_seq + 1;
        for user in &participants {
            let (row, changed) = self.row(user, conv_id)?;
            if row.is_none() {
                *row = Some(UserConvState { active: true, ver, ..UserConvState::default() });
                *changed = true;
                self.conv_users.insert((conv_id, user.as_str()), ()).map_err(unavailable)?;
            }
        }
        if let Some(sender) = &m.sender {
            let (row, changed) = self.row(sender, conv_id)?;
            if let Some(state) = row {
                state.read_seq = state.read_seq.max(seq);
                state.ver = ver;
                *changed = true;
            }
        }
        let mut reply_to = m.reply_to;
        if let Some(r) = &mut reply_to {
            // The quote was taken before this transaction: a recall committed since scrubs it.
            let quoted: Option<Message> = get_json(&self.messages, (conv_id, r.seq))?;
            if quoted.is_some_and(|q| q.is_recalled()) {
                r.scrub();
            }
            self.replies.insert((conv_id, r.seq, seq), ()).map_err(unavailable)?;
        }
        let message = Message {
            conv_id: m.conv_id.clone(),
            seq,
            sender: m.sender.clone(),
            client_msg_id: m.client_msg_id.clone(),
            body: m.body,
            reply_to,
            ts: m.ts,
            ver,
        };
        put_json(&mut self.messages, (conv_id, seq), &message)?;
        if let Some(cmid) = &m.client_msg_id {
            self.dedupe
                .insert((m.sender.as_deref().unwrap_or(""), cmid.as_str()), (conv_id, seq))
                .map_err(unavailable)?;
        }
        let (conv, changed) =
            self.conversation(conv_id)?.ok_or_else(|| not_found(format!("conversation {conv_id}")))?;
        conv.last_seq = seq;
        conv.ver = ver;
        *changed = true;
        *self.per_day.entry(confab_actors::store::day_of(message.ts)).or_default() += 1;
        Ok(Appended { message, duplicate: false })
    }
}

pub(super) fn recall(txn: &WriteTransaction, conv_id: &str, seq: u64, by: &str) -> StoreResult<Recalled> {
    let mut messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    let mut message: Message =
        get_json(&messages, (conv_id, seq))?.ok_or_else(|| not_found(format!("message {conv_id}/{seq}")))?;
    if message.is_recalled() {
        return Ok(Recalled { message, changed: false });
    }
    let mut convs = txn.open_table(CONVS).map_err(unavailable)?;
    let mut conv: Conversation = get_json(&convs, conv_id)?
        .ok_or_else(|| StoreError::Unavailable(format!("message {conv_id}/{seq} has no conversation")))?;
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let ver = next_ver(&mut meta)?;
    message.body = Body::Recalled { by: by.to_owned() };
    message.ver = ver;
    conv.ver = ver;
    put_json(&mut messages, (conv_id, seq), &message)?;
    put_json(&mut convs, conv_id, &conv)?;
    let mut recalls = txn.open_table(RECALLS).map_err(unavailable)?;
    recalls.insert((conv_id, ver), seq).map_err(unavailable)?;
    // Replies keep their place and sender, but no longer quote the recalled text.
    let replies = txn.open_table(REPLIES).map_err(unavailable)?;
    for item in replies.range((conv_id, seq, 0u64)..=(conv_id, seq, u64::MAX)).map_err(unavailable)? {
        let (k, _) = item.map_err(unavailable)?;
        let (_, _, reply_seq) = k.value();
        let Some(mut reply) = get_json::<_, Message>(&messages, (conv_id, reply_seq))? else { continue };
        if let Some(r) = reply.reply_to.as_mut().filter(|r| r.seq == seq && !r.recalled) {
            r.scrub();
            put_json(&mut messages, (conv_id, reply_seq), &reply)?;
        }
    }
    Ok(Recalled { message, changed: true })
}

/// Indexes every stored reply in [`REPLIES`] once (data directories written before the index
/// existed); later appends index their own. One pass over the messages, at the first open.
pub(super) fn index_replies(txn: &WriteTransaction) -> StoreResult<()> {
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    if meta.get(REPLIES_INDEXED_KEY).map_err(unavailable)?.is_some() {
        return Ok(());
    }
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    let mut replies = txn.open_table(REPLIES).map_err(unavailable)?;
    let mut n = 0u64;
    for item in messages.iter().map_err(unavailable)? {
        let (k, v) = item.map_err(unavailable)?;
        let (conv_id, seq) = k.value();
        let m: Message = decode(v.value())?;
        if let Some(r) = &m.reply_to {
            replies.insert((conv_id, r.seq, seq), ()).map_err(unavailable)?;
            n += 1;
        }
    }
    meta.insert(REPLIES_INDEXED_KEY, 1).map_err(unavailable)?;
    if n > 0 {
        tracing::info!(replies = n, "indexed the replies stored before this version");
    }
    Ok(())
}

pub(super) fn mark_read(
    txn: &WriteTransaction,
    user: &str,
    conv_id: &str,
    seq: u64,
) -> StoreResult<Option<UserConvState>> {
    let mut rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let mut state = row_or_not_found(&rows, user, conv_id)?;
    let convs = txn.open_table(CONVS).map_err(unavailable)?;
    let conv: Conversation = get_json(&convs, conv_id)?.ok_or_else(|| not_found(format!("conversation {conv_id}")))?;
    let Some(target) = state.read_target(seq, conv.last_seq) else {
        return Ok(None);
    };
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    state.read_seq = target;
    state.ver = next_ver(&mut meta)?;
    put_json(&mut rows, (user, conv_id), &state)?;
    Ok(Some(state))
}

pub(super) fn set_flags(
    txn: &WriteTransaction,
    user: &str,
    conv_id: &str,
    patch: FlagsPatch,
) -> StoreResult<UserConvState> {
    let mut rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let mut state = row_or_not_found(&rows, user, conv_id)?;
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    patch.apply(&mut state);
    state.ver = next_ver(&mut meta)?;
    put_json(&mut rows, (user, conv_id), &state)?;
    Ok(state)
}

pub(super) fn delete_for_user(
    txn: &WriteTransaction,
    user: &str,
    conv_id: &str,
    seqs: &[u64],
) -> StoreResult<UserConvState> {
    let mut rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let mut state = row_or_not_found(&rows, user, conv_id)?;
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    let mut deletions = txn.open_table(DELETIONS).map_err(unavailable)?;
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let ver = next_ver(&mut meta)?;
    for &seq in seqs {
        let exists = messages.get((conv_id, seq)).map_err(unavailable)?.is_some();
        if !exists {
            continue;
        }
        let already = deletions.get((user, conv_id, seq)).map_err(unavailable)?.is_some();
        if !already {
            deletions.insert((user, conv_id, seq), ver).map_err(unavailable)?;
        }
    }
    state.ver = ver;
    put_json(&mut rows, (user, conv_id), &state)?;
    Ok(state)
}

pub(super) fn clear_for_user(txn: &WriteTransaction, user: &str, conv_id: &str) -> StoreResult<UserConvState> {
    let mut rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let mut state = row_or_not_found(&rows, user, conv_id)?;
    let convs = txn.open_table(CONVS).map_err(unavailable)?;
    let conv: Option<Conversation> = get_json(&convs, conv_id)?;
    let last_seq = conv.map_or(0, |c| c.last_seq);
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let ver = next_ver(&mut meta)?;
    state.clear(last_seq, ver);
    put_json(&mut rows, (user, conv_id), &state)?;
    Ok(state)
}

pub(super) fn create_group(txn: &WriteTransaction, g: NewGroup) -> StoreResult<(Group, Message)> {
    let mut groups = txn.open_table(GROUPS).map_err(unavailable)?;
    let mut convs = txn.open_table(CONVS).map_err(unavailable)?;
    let conv_id = group_conv_id(&g.id);
    if groups.get(g.id.as_str()).map_err(unavailable)?.is_some() {
        return Err(StoreError::Conflict(format!("group {} already exists", g.id)));
    }
    if convs.get(conv_id.as_str()).map_err(unavailable)?.is_some() {
        return Err(StoreError::Conflict(format!("conversation {conv_id} already exists")));
    }
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let mut members = txn.open_table(MEMBERS).map_err(unavailable)?;
    let mut rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let mut conv_users = txn.open_table(CONV_USERS).map_err(unavailable)?;
    let mut messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    let plan = g.plan(next_ver(&mut meta)?);
    for m in &plan.members {
        put_json(&mut members, (g.id.as_str(), m.user_id.as_str()), m)?;
        put_row(&mut rows, &mut conv_users, &m.user_id, &conv_id, &plan.row)?;
    }
    put_json(&mut groups, g.id.as_str(), &plan.group)?;
    put_json(&mut messages, (conv_id.as_str(), 1u64), &plan.message)?;
    put_json(&mut convs, conv_id.as_str(), &plan.conv)?;
    super::names::reindex(txn, GROUP_NAMES, &g.id, None, Some(&plan.group.name))?;
    Ok((plan.group, plan.message))
}

pub(super) fn change_members(txn: &WriteTransaction, c: MemberChange) -> StoreResult<Message> {
    let mut groups = txn.open_table(GROUPS).map_err(unavailable)?;
    let mut group = live_group(get_json(&groups, c.group_id.as_str())?, &c.group_id)?;
    let conv_id = group_conv_id(&c.group_id);
    let mut convs = txn.open_table(CONVS).map_err(unavailable)?;
    let mut conv = group_conversation(get_json(&convs, conv_id.as_str())?, &c.group_id)?;

    let (gid, conv_key) = (c.group_id.as_str(), conv_id.as_str());
    // A banned user is not added (checked before anything is written).
    let mut bans = txn.open_table(GROUP_BANS).map_err(unavailable)?;
    for (user, _) in &c.add {
        if bans.get((gid, user.as_str())).map_err(unavailable)?.is_some() && !c.unban.contains(user) {
            return Err(StoreError::Refused(ErrorCode::Banned, format!("{user} is banned from this group")));
        }
    }
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let mut members = txn.open_table(MEMBERS).map_err(unavailable)?;
    let mut rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let mut conv_users = txn.open_table(CONV_USERS).map_err(unavailable)?;
    let mut messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    let ver = next_ver(&mut meta)?;
    let seq = conv.last_seq + 1;
    for user in &c.unban {
        bans.remove((gid, user.as_str())).map_err(unavailable)?;
    }
    for ban in &c.ban {
        put_json(&mut bans, (gid, ban.user_id.as_str()), ban)?;
    }
    if !c.add.is_empty() {
        let mut requests = txn.open_table(GROUP_REQUESTS).map_err(unavailable)?;
        for (user, _) in &c.add {
            requests.remove((gid, user.as_str())).map_err(unavailable)?;
        }
    }
    // What the store holds of the users the change names.
    let mut before_members = HashMap::new();
    let mut before_rows = HashMap::new();
    for user in c.add.iter().map(|(u, _)| u).chain(&c.remove) {
        if let Some(m) = get_json::<_, Member>(&members, (gid, user.as_str()))? {
            before_members.insert(user.clone(), m);
        }
        if let Some(r) = get_json::<_, UserConvState>(&rows, (user.as_str(), conv_key))? {
            before_rows.insert(user.clone(), r);
        }
    }
    let delta = c.apply(seq, ver, &before_members, &before_rows, group.member_count);
    for m in &delta.insert {
        put_json(&mut members, (gid, m.user_id.as_str()), m)?;
    }
    for user in &delta.delete {
        members.remove((gid, user.as_str())).map_err(unavailable)?;
    }
    for (user, state) in &delta.rows {
        put_row(&mut rows, &mut conv_users, user, conv_key, state)?;
    }
    let message = Message::system(conv_id.clone(), seq, c.system_body, c.ts, ver);
    put_json(&mut messages, (conv_key, seq), &message)?;
    conv.last_seq = seq;
    conv.ver = ver;
    put_json(&mut convs, conv_key, &conv)?;
    group.member_count = delta.member_count;
    put_json(&mut groups, gid, &group)?;
    Ok(message)
}
