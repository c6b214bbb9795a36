//! Read operations. Each runs on a blocking thread inside one redb `ReadTransaction` (a consistent
//! MVCC snapshot of the last commit); none of them waits for the writer.

use confab_actors::model::{Changes, Conversation, ConversationView, Group, Member, Message, UserConvState};
use confab_actors::store::{list_page, HistoryQuery, StoreResult};
use redb::{ReadTransaction, ReadableTable};

use super::tables::{
    decode, get_json, unavailable, CONVS, CONV_USERS, DELETIONS, GROUPS, MEMBERS, MESSAGES, RECALLS, USER_CONVS,
};

pub(super) fn message(txn: &ReadTransaction, conv_id: &str, seq: u64) -> StoreResult<Option<Message>> {
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    get_json(&messages, (conv_id, seq))
}

pub(super) fn history(
    txn: &ReadTransaction,
    conv_id: &str,
    for_user: Option<&str>,
    q: HistoryQuery,
) -> StoreResult<Vec<Message>> {
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    let mut out: Vec<Message> = Vec::new();
    match q {
        HistoryQuery::Latest { limit } => {
            for item in messages.range((conv_id, 0u64)..=(conv_id, u64::MAX)).map_err(unavailable)?.rev().take(limit) {
                let (_, v) = item.map_err(unavailable)?;
                out.push(decode(v.value())?);
            }
            out.reverse();
        }
        HistoryQuery::Before { seq, limit } => {
            if seq > 1 {
                for item in messages.range((conv_id, 0u64)..(conv_id, seq)).map_err(unavailable)?.rev().take(limit) {
                    let (_, v) = item.map_err(unavailable)?;
                    out.push(decode(v.value())?);
                }
                out.reverse();
            }
        }
        HistoryQuery::After { seq, limit } => {
            if seq < u64::MAX {
                for item in messages.range((conv_id, seq + 1)..=(conv_id, u64::MAX)).map_err(unavailable)?.take(limit) {
                    let (_, v) = item.map_err(unavailable)?;
                    out.push(decode(v.value())?);
                }
            }
        }
    }
    if let Some(user) = for_user {
        if !out.is_empty() {
            let deletions = txn.open_table(DELETIONS).map_err(unavailable)?;
            let mut kept = Vec::with_capacity(out.len());
            for m in out {
                if deletions.get((user, conv_id, m.seq)).map_err(unavailable)?.is_none() {
                    kept.push(m);
                }
            }
            out = kept;
        }
    }
    Ok(out)
}

pub(super) fn conversation(txn: &ReadTransaction, conv_id: &str) -> StoreResult<Option<Conversation>> {
    let convs = txn.open_table(CONVS).map_err(unavailable)?;
    get_json(&convs, conv_id)
}

pub(super) fn user_conv(txn: &ReadTransaction, user: &str, conv_id: &str) -> StoreResult<Option<UserConvState>> {
    let rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    get_json(&rows, (user, conv_id))
}

/// Loads the last message of the view (the one its user may see).
fn load_last_message(
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    view: &mut ConversationView,
) -> StoreResult<()> {
    if let Some(seq) = view.last_message_seq() {
        view.last_message = get_json(messages, (view.conv.conv_id.as_str(), seq))?;
    }
    Ok(())
}

pub(super) fn conversation_view(
    txn: &ReadTransaction,
    user: &str,
    conv_id: &str,
) -> StoreResult<Option<ConversationView>> {
    let rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let Some(state) = get_json::<_, UserConvState>(&rows, (user, conv_id))? else {
        return Ok(None);
    };
    let convs = txn.open_table(CONVS).map_err(unavailable)?;
    let Some(conv) = get_json::<_, Conversation>(&convs, conv_id)? else {
        return Ok(None);
    };
    let mut view = ConversationView::unloaded(conv, state);
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    load_last_message(&messages, &mut view)?;
    Ok(Some(view))
}

/// Every row of `user` with its conversation (a prefix range on `(user, _)`).
fn rows_of(txn: &ReadTransaction, user: &str) -> StoreResult<Vec<(Conversation, UserConvState)>> {
    let rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let convs = txn.open_table(CONVS).map_err(unavailable)?;
    let mut found = Vec::new();
    for item in rows.range((user, "")..).map_err(unavailable)? {
        let (k, v) = item.map_err(unavailable)?;
        let (row_user, conv_id) = k.value();
        if row_user != user {
            break;
        }
        let state: UserConvState = decode(v.value())?;
        if let Some(conv) = get_json::<_, Conversation>(&convs, conv_id)? {
            found.push((conv, state));
        }
    }
    Ok(found)
}

/// Scans all of the user's rows, picks the page ([`list_page`]) and loads the last message of
/// the page's conversations only.
pub(super) fn list_conversations(
    txn: &ReadTransaction,
    user: &str,
    since: u64,
    limit: usize,
) -> StoreResult<Vec<ConversationView>> {
    let mut page = list_page(rows_of(txn, user)?, since, u64::MAX, limit);
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    for view in &mut page {
        load_last_message(&messages, view)?;
    }
    Ok(page)
}

pub(super) fn unread(txn: &ReadTransaction, user: &str) -> StoreResult<(u64, u64)> {
    let (mut total, mut conversations) = (0u64, 0u64);
    for (conv, state) in rows_of(txn, user)? {
        let n = ConversationView { conv, state, last_message: None }.unread();
        total += n;
        conversations += u64::from(n > 0);
    }
    Ok((total, conversations))
}

pub(super) fn changes(txn: &ReadTransaction, user: &str, conv_id: &str, since: u64) -> StoreResult<Changes> {
    let mut out = Changes { recalled: Vec::new(), deleted: Vec::new(), ver: since };
    if since < u64::MAX {
        let recalls = txn.open_table(RECALLS).map_err(unavailable)?;
        for item in recalls.range((conv_id, since + 1)..=(conv_id, u64::MAX)).map_err(unavailable)? {
            let (k, v) = item.map_err(unavailable)?;
            let (_, ver) = k.value();
            out.recalled.push(v.value());
            out.ver = out.ver.max(ver);
        }
    }
    let deletions = txn.open_table(DELETIONS).map_err(unavailable)?;
    for item in deletions.range((user, conv_id, 0u64)..=(user, conv_id, u64::MAX)).map_err(unavailable)? {
        let (k, v) = item.map_err(unavailable)?;
        let (_, _, seq) = k.value();
        let ver = v.value();
        if ver > since {
            out.deleted.push(seq);
            out.ver = out.ver.max(ver);
        }
    }
    Ok(out)
}

pub(super) fn read_cursors(txn: &ReadTransaction, conv_id: &str) -> StoreResult<Vec<(String, u64)>> {
    let conv_users = txn.open_table(CONV_USERS).map_err(unavailable)?;
    let rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let mut out = Vec::new();
    for item in conv_users.range((conv_id, "")..).map_err(unavailable)? {
        let (k, _) = item.map_err(unavailable)?;
        let (c, user) = k.value();
        if c != conv_id {
            break;
        }
        if let Some(state) = get_json::<_, UserConvState>(&rows, (user, conv_id))? {
            if state.active {
                out.push((user.to_owned(), state.read_seq));
            }
        }
    }
    Ok(out)
}

pub(super) fn group(txn: &ReadTransaction, group_id: &str) -> StoreResult<Option<Group>> {
    let groups = txn.open_table(GROUPS).map_err(unavailable)?;
    get_json(&groups, group_id)
}

pub(super) fn members(txn: &ReadTransaction, group_id: &str) -> StoreResult<Vec<Member>> {
    let members = txn.open_table(MEMBERS).map_err(unavailable)?;
    let mut out = Vec::new();
    for item in members.range((group_id, "")..).map_err(unavailable)? {
        let (k, v) = item.map_err(unavailable)?;
        if k.value().0 != group_id {
            break;
        }
        out.push(decode(v.value())?);
    }
    Ok(out)
}
