//! Read operations. Each runs on a blocking thread inside one redb `ReadTransaction` (a consistent
//! MVCC snapshot of the last commit); none of them waits for the writer.

use confab_actors::model::{Changes, Conversation, ConversationView, Group, Member, Message, UserConvState};
use confab_actors::store::{HistoryQuery, StoreResult};
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

fn last_message(
    messages: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    conv: &Conversation,
) -> StoreResult<Option<Message>> {
    if conv.last_seq == 0 {
        return Ok(None);
    }
    get_json(messages, (conv.conv_id.as_str(), conv.last_seq))
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
    let conv = ConversationView::visible(conv, &state);
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    let last_message = last_message(&messages, &conv)?;
    Ok(Some(ConversationView { conv, state, last_message }))
}

/// Scans all of the user's rows (a prefix range on `(user, _)`), keeps those whose cursor is
/// after `since`, sorts by cursor and loads the last message of the page only.
pub(super) fn list_conversations(
    txn: &ReadTransaction,
    user: &str,
    since: u64,
    limit: usize,
) -> StoreResult<Vec<ConversationView>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = txn.open_table(USER_CONVS).map_err(unavailable)?;
    let convs = txn.open_table(CONVS).map_err(unavailable)?;
    let mut page: Vec<(u64, Conversation, UserConvState)> = Vec::new();
    for item in rows.range((user, "")..).map_err(unavailable)? {
        let (k, v) = item.map_err(unavailable)?;
        let (row_user, conv_id) = k.value();
        if row_user != user {
            break;
        }
        let state: UserConvState = decode(v.value())?;
        let Some(conv) = get_json::<_, Conversation>(&convs, conv_id)? else {
            continue;
        };
        let view = ConversationView { conv: ConversationView::visible(conv, &state), state, last_message: None };
        let cursor = view.cursor();
        if cursor > since {
            page.push((cursor, view.conv, view.state));
        }
    }
    page.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.conv_id.cmp(&b.1.conv_id)));
    page.truncate(limit);
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    let mut out = Vec::with_capacity(page.len());
    for (_, conv, state) in page {
        let last_message = last_message(&messages, &conv)?;
        out.push(ConversationView { conv, state, last_message });
    }
    Ok(out)
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
