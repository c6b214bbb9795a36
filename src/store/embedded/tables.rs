//! Table definitions, the value codec and small helpers shared by reads and write operations.

use std::borrow::Borrow;
use std::fmt::Display;

use confab_actors::error::StoreError;
use confab_actors::store::StoreResult;
use redb::{Key, ReadableTable, Table, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// `"ver"` → the store-wide version counter (last `ver` handed out; 0 on a fresh store).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `conv_id` → `Conversation` (JSON).
pub(crate) const CONVS: TableDefinition<&str, &[u8]> = TableDefinition::new("conversations");
/// `(conv_id, seq)` → `Message` (JSON). Ordered by `seq` within a conversation.
pub(crate) const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
/// `(sender, client_msg_id)` → `(conv_id, seq)` of the stored message (sender `""` for system
/// messages sent with a key).
pub(crate) const DEDUPE: TableDefinition<(&str, &str), (&str, u64)> = TableDefinition::new("dedupe");
/// `(user, conv_id)` → `UserConvState` (JSON). A prefix scan on `user` lists their conversations.
pub(crate) const USER_CONVS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("user_convs");
/// `(conv_id, user)` → `()`: every user who ever had a row in the conversation.
pub(crate) const CONV_USERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("conv_users");
/// `(conv_id, ver)` → `seq` of the message recalled at that version.
pub(crate) const RECALLS: TableDefinition<(&str, u64), u64> = TableDefinition::new("recalls");
/// `(user, conv_id, seq)` → `ver` at which the user deleted that message for themselves.
pub(crate) const DELETIONS: TableDefinition<(&str, &str, u64), u64> = TableDefinition::new("deletions");
/// `group_id` → `Group` (JSON).
pub(crate) const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
/// `(group_id, user)` → `Member` (JSON), active members only.
pub(crate) const MEMBERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("members");

/// `(conv_id, quoted seq, reply seq)` → `()`: the replies to each message, so a recall scrubs
/// their quotes without a scan.
pub(crate) const REPLIES: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("replies");

/// `(group_id, user)` → `GroupBan` (JSON): users banned from a group.
pub(crate) const GROUP_BANS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("group_bans");
/// `(group_id, user)` → `JoinRequest` (JSON): pending requests to join a group.
pub(crate) const GROUP_REQUESTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("group_requests");
/// `(group_id, user)` → `NoticeConfirmation` (JSON): who confirmed a group's notice.
pub(crate) const NOTICE_CONFIRMATIONS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("notice_confirmations");
/// `(owner, peer)` → `Contact` (JSON): the owner's row about the peer.
pub(crate) const CONTACTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("contacts");
/// `(owner, ver)` → `peer`: the owner's rows by the `ver` of their last change.
pub(crate) const CONTACTS_BY_VER: TableDefinition<(&str, u64), &str> = TableDefinition::new("contacts_by_ver");

/// `user_id` → `User` (JSON).
pub(crate) const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// File id → `FileMeta` JSON.
pub(crate) const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
/// Broadcast id → `Broadcast` JSON.
pub(crate) const BROADCASTS: TableDefinition<&str, &[u8]> = TableDefinition::new("broadcasts");
/// `(nickname key, user id)` of every user with a nickname (see `names.rs`).
pub(crate) const USER_NAMES: TableDefinition<(&str, &str), ()> = TableDefinition::new("user_names");
/// `(name key, group id)` of every group.
pub(crate) const GROUP_NAMES: TableDefinition<(&str, &str), ()> = TableDefinition::new("group_names");
/// The `meta` key of the count of messages stored with a `ts` on `day` (days since the Unix
/// epoch, UTC). In `meta`, which every append writes already: counting adds no table to a commit.
pub(crate) fn message_day_key(day: u32) -> String {
    format!("{MESSAGE_DAY_PREFIX}{day:010}")
}
pub(crate) const MESSAGE_DAY_PREFIX: &str = "messages_day:";
/// `(day, user)`: the user was active that day.
pub(crate) const ACTIVE_USERS: TableDefinition<(u32, &str), ()> = TableDefinition::new("active_users");
/// `(user, device)` → tokens of that device issued before this time (unix ms) are revoked.
pub(crate) const DEVICE_REVOCATIONS: TableDefinition<(&str, &str), u64> = TableDefinition::new("device_revocations");

/// The key of the version counter in [`META`].
pub(super) const VER_KEY: &str = "ver";
/// The key in [`META`] set once [`REPLIES`] indexes every stored reply (data directories from
/// before the index are indexed once, when first opened).
pub(super) const REPLIES_INDEXED_KEY: &str = "replies_indexed";

/// Maps an engine or codec error to `Unavailable`.
pub(super) fn unavailable(e: impl Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn not_found(what: impl Display) -> StoreError {
    StoreError::NotFound(what.to_string())
}

pub(super) fn encode<T: Serialize>(v: &T) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Unavailable(format!("cannot encode a record: {e}")))
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Unavailable(format!("corrupt record: {e}")))
}

/// Reads and decodes one JSON value.
pub(super) fn get_json<'k, K, T>(
    table: &impl ReadableTable<K, &'static [u8]>,
    key: impl Borrow<K::SelfType<'k>>,
) -> StoreResult<Option<T>>
where
    K: Key + 'static,
    T: DeserializeOwned,
{
    match table.get(key).map_err(unavailable)? {
        Some(guard) => decode(guard.value()).map(Some),
        None => Ok(None),
    }
}

/// Encodes and writes one JSON value.
pub(super) fn put_json<'k, K, T>(
    table: &mut Table<'_, K, &'static [u8]>,
    key: impl Borrow<K::SelfType<'k>>,
    value: &T,
) -> StoreResult<()>
where
    K: Key + 'static,
    T: Serialize,
{
    let bytes = encode(value)?;
    table.insert(key, bytes.as_slice()).map_err(unavailable)?;
    Ok(())
}

/// The store-wide version handed out last (0 on a fresh store).
pub(super) fn current_ver(meta: &mut Table<'_, &'static str, u64>) -> StoreResult<u64> {
    Ok(meta.get(VER_KEY).map_err(unavailable)?.map(|g| g.value()).unwrap_or(0))
}

/// Hands out the next store-wide version.
pub(super) fn next_ver(meta: &mut Table<'_, &'static str, u64>) -> StoreResult<u64> {
    let next = current_ver(meta)? + 1;
    meta.insert(VER_KEY, next).map_err(unavailable)?;
    Ok(next)
}
