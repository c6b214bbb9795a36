//! What the writer batches: the write operations ([`Op`]) and its knowledge of conversations'
//! `last_seq` ([`ConvCache`]), shared by the writer, the transaction that applies a batch and
//! the operations' encodings.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use confab_actors::model::FlagsPatch;
use confab_actors::store::{
    ContactChange, GroupDismiss, GroupUpdate, MemberChange, MuteChange, NewGroup, NewMessage, RoleChange,
};

/// Cached `last_seq`s kept at most; the cache starts over when it grows past this.
const CACHE_CAPACITY: usize = 200_000;
/// How long a conversation found written by another node is advanced with `findAndModify`.
const CONTENDED_FOR: Duration = Duration::from_secs(30);

/// A write operation.
#[derive(Debug)]
pub(crate) enum Op {
    Append(NewMessage),
    Recall { conv_id: String, seq: u64, by: String },
    MarkRead { user: String, conv_id: String, seq: u64 },
    SetFlags { user: String, conv_id: String, patch: FlagsPatch },
    Delete { user: String, conv_id: String, seqs: Vec<u64> },
    Clear { user: String, conv_id: String },
    CreateGroup(NewGroup),
    ChangeMembers(MemberChange),
    UpdateGroup(GroupUpdate),
    SetRoles(RoleChange),
    DismissGroup(GroupDismiss),
    ChangeContact(ContactChange),
    MuteMembers(MuteChange),
    PutJoinRequests { group_id: String, requests: Vec<confab_actors::model::JoinRequest> },
    RemoveJoinRequest { group_id: String, user: String },
    // An outbox event with no store change of its own (presence); `outbox::record` gives its id.
    PushEvent(confab_actors::outbox::NewEvent),
}

struct Cached {
    last_seq: u64,
    contended_until: Option<Instant>,
}

/// The writer's knowledge of conversations' `last_seq`, from its own commits.
#[derive(Default)]
pub(crate) struct ConvCache {
    map: HashMap<String, Cached>,
}

impl ConvCache {
    /// The cached `last_seq`, unless unknown or the conversation is contended.
    pub fn usable(&self, conv_id: &str) -> Option<u64> {
        let c = self.map.get(conv_id)?;
        match c.contended_until {
            Some(t) if Instant::now() < t => None,
            _ => Some(c.last_seq),
        }
    }

    pub(crate) fn apply(&mut self, overlay: HashMap<String, u64>) {
        if self.map.len() + overlay.len() > CACHE_CAPACITY {
            self.map.clear();
        }
        for (conv_id, last_seq) in overlay {
            self.map
                .entry(conv_id)
                .and_modify(|c| c.last_seq = last_seq)
                .or_insert(Cached { last_seq, contended_until: None });
        }
    }

    pub(crate) fn forget<'a>(&mut self, convs: impl IntoIterator<Item = &'a String>) {
        for c in convs {
            self.map.remove(c);
        }
    }

    /// After a stale attempt: the actual values. Those that differ from the cache were written by
    /// another node: count them as contended for a while.
    pub(crate) fn refresh(&mut self, checked: &[String], actual: &HashMap<String, u64>) {
        let now = Instant::now();
        for conv_id in checked {
            match actual.get(conv_id) {
                None => {
                    self.map.remove(conv_id);
                }
                Some(&last_seq) => {
                    let differs = self.map.get(conv_id).map(|c| c.last_seq) != Some(last_seq);
                    let entry = self.map.entry(conv_id.clone()).or_insert(Cached { last_seq, contended_until: None });
                    entry.last_seq = last_seq;
                    if differs {
                        entry.contended_until = Some(now + CONTENDED_FOR);
                    }
                }
            }
        }
    }
}
