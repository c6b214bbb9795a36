//! CPU time per stored message of confab's embedded-store write workload ("pairs/500": 500
//! one-to-one conversations, group commits of 2,000 messages) under several storage designs.
//! See README.md. Every design runs the same appender logic (`append_batch`, a mirror of
//! `src/store/embedded/ops.rs` `Appender`) over its own tables and codecs.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use fjall::{Keyspace, KeyspaceCreateOptions, PersistMode};
use redb::{Durability, ReadableTable, Table, TableDefinition, WriteTransaction};
use rustix::time::ClockId;
use serde::{Deserialize, Serialize};

/// The allocator of the `confab` binary (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type R<T> = Result<T, Box<dyn Error + Send + Sync>>;

const USERS: usize = 1_000;
const BATCH: usize = 2_000;
const PAGE: usize = 50;
const PAGES: usize = 100;
/// `--no-dedupe` (a diagnostic): no DEDUPE lookups or inserts, to show what that index costs.
static NO_DEDUPE: AtomicBool = AtomicBool::new(false);
/// `--local-dedupe`: the DEDUPE key starts with the conversation, `(conv_id, sender, client id)`,
/// so a batch's inserts land next to the conversation's other rows instead of on random pages.
static LOCAL_DEDUPE: AtomicBool = AtomicBool::new(false);
/// `--hash-dedupe`: today's layout, but the DEDUPE key is a 128-bit hash of `(sender, client id)`.
static HASH_DEDUPE: AtomicBool = AtomicBool::new(false);
/// `--ordered-ids`: client ids that grow with time (12 hex digits of the send time, then 10
/// random characters, as ULIDs and UUIDv7 do) instead of 22 random characters.
static ORDERED_IDS: AtomicBool = AtomicBool::new(false);
const ALL: &[&str] =
    &["redb-now", "redb-now-nodurable", "redb-now-wal", "redb-binary", "redb-wal", "fjall", "log-only"];

// ---------------------------------------------------------------- the stored model (as confab's)

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Body {
    Text { text: String },
}

#[derive(Serialize, Deserialize)]
struct ReplyRef {
    seq: u64,
    sender: Option<String>,
    quote: String,
    #[serde(default)]
    recalled: bool,
}

/// `confab_actors::model::Message`, field for field (absent options left out, `sender` always).
#[derive(Serialize, Deserialize)]
struct Message {
    conv_id: String,
    seq: u64,
    sender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_msg_id: Option<String>,
    body: Body,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply_to: Option<ReplyRef>,
    ts: i64,
    ver: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum ConvKind {
    Direct,
    Group,
}

/// `Conversation`.
#[derive(Serialize, Deserialize)]
struct Conv {
    conv_id: String,
    kind: ConvKind,
    members: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<String>,
    last_seq: u64,
    ver: u64,
}

/// `UserConvState`.
#[derive(Serialize, Deserialize, Default)]
struct Row {
    read_seq: u64,
    pinned: bool,
    muted: bool,
    hidden: bool,
    active: bool,
    ver: u64,
    #[serde(default)]
    left_seq: u64,
}

/// `NewMessage` of a one-to-one conversation, as the conversation actor hands it to the store.
struct NewMsg {
    conv_id: String,
    members: (String, String),
    sender: String,
    cmid: String,
    text: String,
    ts: i64,
}

// ---------------------------------------------------------------- the compact binary codec

fn put_u(o: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        o.push(v as u8 | 0x80);
        v >>= 7;
    }
    o.push(v as u8);
}

fn put_s(o: &mut Vec<u8>, s: &str) {
    put_u(o, s.len() as u64);
    o.extend_from_slice(s.as_bytes());
}

/// A reader of varints and length-prefixed strings.
struct Rd<'a>(&'a [u8]);

impl<'a> Rd<'a> {
    fn u(&mut self) -> R<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.0.split_first().ok_or("truncated record")?;
            self.0 = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("bad varint".into())
    }
    fn s(&mut self) -> R<&'a str> {
        let n = usize::try_from(self.u()?)?;
        let (s, rest) = (self.0.get(..n).ok_or("truncated record")?, &self.0[n..]);
        self.0 = rest;
        Ok(std::str::from_utf8(s)?)
    }
}

/// A message without its key (conv, seq): flags (1 sender, 2 client_msg_id), sender,
/// client_msg_id, body type (0 text), text, ts (zigzag), ver. All varints and strings.
fn bin_msg(o: &mut Vec<u8>, m: &Message) -> R<()> {
    if m.reply_to.is_some() {
        return Err("reply_to: not in this workload".into());
    }
    put_u(o, u64::from(m.sender.is_some()) | u64::from(m.client_msg_id.is_some()) << 1);
    for s in [&m.sender, &m.client_msg_id].into_iter().flatten() {
        put_s(o, s);
    }
    let Body::Text { text, .. } = &m.body;
    put_u(o, 0);
    put_s(o, text);
    put_u(o, ((m.ts << 1) ^ (m.ts >> 63)) as u64);
    put_u(o, m.ver);
    Ok(())
}

fn bin_unmsg(conv_id: &str, seq: u64, b: &[u8]) -> R<Message> {
    let mut r = Rd(b);
    let flags = r.u()?;
    let sender = if flags & 1 != 0 { Some(r.s()?.to_owned()) } else { None };
    let client_msg_id = if flags & 2 != 0 { Some(r.s()?.to_owned()) } else { None };
    if r.u()? != 0 {
        return Err("unknown body type".into());
    }
    let body = Body::text(r.s()?);
    let z = r.u()?;
    let (ts, ver) = ((z >> 1) as i64 ^ -((z & 1) as i64), r.u()?);
    Ok(Message { conv_id: conv_id.to_owned(), seq, sender, client_msg_id, body, reply_to: None, ts, ver })
}

/// kind, last_seq, ver, conv_id, group_id ("" for none), members.
fn bin_conv(c: &Conv) -> Vec<u8> {
    let mut o = Vec::with_capacity(64);
    for v in [u64::from(c.kind == ConvKind::Group), c.last_seq, c.ver] {
        put_u(&mut o, v);
    }
    put_s(&mut o, &c.conv_id);
    put_s(&mut o, c.group_id.as_deref().unwrap_or(""));
    put_u(&mut o, c.members.len() as u64);
    c.members.iter().for_each(|m| put_s(&mut o, m));
    o
}

fn bin_unconv(b: &[u8]) -> R<Conv> {
    let mut r = Rd(b);
    let kind = if r.u()? == 1 { ConvKind::Group } else { ConvKind::Direct };
    let (last_seq, ver, conv_id) = (r.u()?, r.u()?, r.s()?.to_owned());
    let group_id = Some(r.s()?).filter(|g| !g.is_empty()).map(str::to_owned);
    let members = (0..r.u()?).map(|_| r.s().map(str::to_owned)).collect::<R<Vec<_>>>()?;
    Ok(Conv { conv_id, kind, members, group_id, last_seq, ver })
}

/// flags (pinned, muted, hidden, active), read_seq, ver, left_seq.
fn bin_row(s: &Row) -> Vec<u8> {
    let mut o = Vec::with_capacity(16);
    let flags = [s.pinned, s.muted, s.hidden, s.active].iter().enumerate().map(|(i, &f)| u64::from(f) << i).sum();
    [flags, s.read_seq, s.ver, s.left_seq].into_iter().for_each(|v| put_u(&mut o, v));
    o
}

fn bin_unrow(b: &[u8]) -> R<Row> {
    let mut r = Rd(b);
    let (f, read_seq, ver, left_seq) = (r.u()?, r.u()?, r.u()?, r.u()?);
    let bit = |i: u32| f & (1 << i) != 0;
    Ok(Row { read_seq, pinned: bit(0), muted: bit(1), hidden: bit(2), active: bit(3), ver, left_seq })
}

/// The 16-byte MESSAGES key `(conv_no, seq)`, ordered by seq within a conversation.
fn mkey(conv_no: u64, seq: u64) -> u128 {
    (u128::from(conv_no) << 64) | u128::from(seq)
}

/// The DEDUPE key: a 128-bit hash of `(sender, client_msg_id)`.
fn dkey(sender: &str, cmid: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128_with_seed(cmid.as_bytes(), xxhash_rust::xxh3::xxh3_64(sender.as_bytes()))
}

/// The conversation-local DEDUPE key: the conversation number, then a 64-bit hash.
fn local_dkey(conv_no: u64, sender: &str, cmid: &str) -> u128 {
    (u128::from(conv_no) << 64) | u128::from(xxhash_rust::xxh3::xxh3_64_with_seed(cmid.as_bytes(), xxhash_rust::xxh3::xxh3_64(sender.as_bytes())))
}

/// A dedupe hit is only a duplicate if the stored message has the same key (the hash may collide).
fn same_key(m: Message, sender: &str, cmid: &str) -> Option<Message> {
    Some(m).filter(|m| m.sender.as_deref() == Some(sender) && m.client_msg_id.as_deref() == Some(cmid))
}

/// A log record: conv_id, seq, then the message as `bin_msg`.
fn log_record(o: &mut Vec<u8>, m: &Message) -> R<()> {
    put_s(o, &m.conv_id);
    put_u(o, m.seq);
    bin_msg(o, m)
}

// ---------------------------------------------------------------- the appender, over any layout

/// The reads and writes the appender makes; each layout implements them over its tables.
trait Ops {
    fn ver(&mut self) -> R<u64>;
    fn put_ver(&mut self, ver: u64) -> R<()>;
    /// The message stored under `(sender, client_msg_id)`, if any.
    fn dedupe_hit(&mut self, conv_id: &str, sender: &str, cmid: &str) -> R<Option<Message>>;
    fn put_dedupe(&mut self, sender: &str, cmid: &str, conv_id: &str, seq: u64) -> R<()>;
    fn conv(&mut self, conv_id: &str) -> R<Option<Conv>>;
    fn put_conv(&mut self, c: &Conv) -> R<()>;
    fn row(&mut self, user: &str, conv_id: &str) -> R<Option<Row>>;
    fn put_row(&mut self, user: &str, conv_id: &str, r: &Row) -> R<()>;
    fn put_conv_user(&mut self, conv_id: &str, user: &str) -> R<()>;
    fn put_msg(&mut self, m: &Message) -> R<()>;
}

type RowCache = HashMap<(String, String), (Option<Row>, bool)>;

fn row_entry<'c>(ops: &mut impl Ops, rows: &'c mut RowCache, user: &str, conv: &str) -> R<&'c mut (Option<Row>, bool)> {
    Ok(match rows.entry((user.to_owned(), conv.to_owned())) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => e.insert((ops.row(user, conv)?, false)),
    })
}

/// `Appender::open`, `append` for each message, then `flush`: the conversation and cursor rows
/// the batch touches are kept in memory and written once; messages and dedupe keys at once.
fn append_batch(ops: &mut impl Ops, batch: Vec<NewMsg>) -> R<Vec<Message>> {
    let mut ver = ops.ver()?;
    let mut convs: HashMap<String, (Conv, bool)> = HashMap::new();
    let mut rows = RowCache::new();
    let mut out = Vec::with_capacity(batch.len());
    let dedupe = !NO_DEDUPE.load(Relaxed);
    for m in batch {
        if let Some(stored) = dedupe.then(|| ops.dedupe_hit(&m.conv_id, &m.sender, &m.cmid)).transpose()?.flatten() {
            out.push(stored);
            continue;
        }
        let mut participants = vec![m.members.0.clone(), m.members.1.clone()];
        participants.sort();
        participants.dedup();
        if !convs.contains_key(&m.conv_id) {
            let entry = match ops.conv(&m.conv_id)? {
                Some(c) => (c, false),
                None => {
                    let (members, conv_id) = (participants.clone(), m.conv_id.clone());
                    (Conv { conv_id, kind: ConvKind::Direct, members, group_id: None, last_seq: 0, ver: 0 }, true)
                }
            };
            convs.insert(m.conv_id.clone(), entry);
        }
        ver += 1;
        let seq = convs.get(&m.conv_id).map_or(0, |c| c.0.last_seq) + 1;
        for user in &participants {
            let (row, changed) = row_entry(ops, &mut rows, user, &m.conv_id)?;
            if row.is_none() {
                *row = Some(Row { active: true, ver, ..Row::default() });
                *changed = true;
                ops.put_conv_user(&m.conv_id, user)?;
            }
        }
        if let (Some(state), changed) = row_entry(ops, &mut rows, &m.sender, &m.conv_id)? {
            state.read_seq = state.read_seq.max(seq);
            state.ver = ver;
            *changed = true;
        }
        let message = Message {
            conv_id: m.conv_id.clone(),
            seq,
            sender: Some(m.sender.clone()),
            client_msg_id: Some(m.cmid.clone()),
            body: Body::text(m.text),
            reply_to: None,
            ts: m.ts,
            ver,
        };
        ops.put_msg(&message)?;
        if dedupe {
            ops.put_dedupe(&m.sender, &m.cmid, &m.conv_id, seq)?;
        }
        let (conv, changed) = convs.get_mut(&m.conv_id).ok_or("conversation vanished")?;
        (conv.last_seq, conv.ver, *changed) = (seq, ver, true);
        out.push(message);
    }
    for (conv, _) in convs.values().filter(|c| c.1) {
        ops.put_conv(conv)?;
    }
    for ((user, conv_id), (row, _)) in rows.iter().filter(|r| r.1 .1) {
        if let Some(state) = row {
            ops.put_row(user, conv_id, state)?;
        }
    }
    ops.put_ver(ver)?;
    Ok(out)
}

// ---------------------------------------------------------------- redb: today's layout (tables.rs)

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const CONVS: TableDefinition<&str, &[u8]> = TableDefinition::new("conversations");
const MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("messages");
const DEDUPE: TableDefinition<(&str, &str), (&str, u64)> = TableDefinition::new("dedupe");
const DEDUPE_H: TableDefinition<u128, (&str, u64)> = TableDefinition::new("dedupe_h");
const USER_CONVS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("user_convs");
const CONV_USERS: TableDefinition<(&str, &str), ()> = TableDefinition::new("conv_users");
const REPLIES: TableDefinition<(&str, u64, u64), ()> = TableDefinition::new("replies");

type Str = &'static str;
type Bytes = &'static [u8];

/// The tables `Appender::open` opens.
struct JsonTx<'t> {
    meta: Table<'t, Str, u64>,
    dedupe: Table<'t, (Str, Str), (Str, u64)>,
    dedupe_h: Table<'t, u128, (Str, u64)>,
    msgs: Table<'t, (Str, u64), Bytes>,
    convs: Table<'t, Str, Bytes>,
    rows: Table<'t, (Str, Str), Bytes>,
    conv_users: Table<'t, (Str, Str), ()>,
    _replies: Table<'t, (Str, u64, u64), ()>,
}

impl<'t> JsonTx<'t> {
    fn open(txn: &'t WriteTransaction) -> R<Self> {
        let (meta, dedupe, msgs) = (txn.open_table(META)?, txn.open_table(DEDUPE)?, txn.open_table(MESSAGES)?);
        let (convs, rows, conv_users) =
            (txn.open_table(CONVS)?, txn.open_table(USER_CONVS)?, txn.open_table(CONV_USERS)?);
        let dedupe_h = txn.open_table(DEDUPE_H)?;
        Ok(JsonTx { meta, dedupe, dedupe_h, msgs, convs, rows, conv_users, _replies: txn.open_table(REPLIES)? })
    }
}

impl Ops for JsonTx<'_> {
    fn ver(&mut self) -> R<u64> {
        Ok(self.meta.get("ver")?.map_or(0, |g| g.value()))
    }
    fn put_ver(&mut self, ver: u64) -> R<()> {
        self.meta.insert("ver", ver)?;
        Ok(())
    }
    fn dedupe_hit(&mut self, conv_id: &str, sender: &str, cmid: &str) -> R<Option<Message>> {
        if HASH_DEDUPE.load(Relaxed) {
            let Some(hit) = self.dedupe_h.get(dkey(sender, cmid))? else { return Ok(None) };
            let v = self.msgs.get(hit.value())?.ok_or("dedupe entry points at a missing message")?;
            return Ok(same_key(serde_json::from_slice(v.value())?, sender, cmid));
        }
        let local;
        let key = if LOCAL_DEDUPE.load(Relaxed) {
            local = format!("{sender}\0{cmid}");
            (conv_id, local.as_str())
        } else {
            (sender, cmid)
        };
        let Some(hit) = self.dedupe.get(key)? else { return Ok(None) };
        let v = self.msgs.get(hit.value())?.ok_or("dedupe entry points at a missing message")?;
        Ok(Some(serde_json::from_slice(v.value())?))
    }
    fn put_dedupe(&mut self, sender: &str, cmid: &str, conv_id: &str, seq: u64) -> R<()> {
        if HASH_DEDUPE.load(Relaxed) {
            self.dedupe_h.insert(dkey(sender, cmid), (conv_id, seq))?;
        } else if LOCAL_DEDUPE.load(Relaxed) {
            self.dedupe.insert((conv_id, format!("{sender}\0{cmid}").as_str()), (conv_id, seq))?;
        } else {
            self.dedupe.insert((sender, cmid), (conv_id, seq))?;
        }
        Ok(())
    }
    fn conv(&mut self, conv_id: &str) -> R<Option<Conv>> {
        Ok(self.convs.get(conv_id)?.map(|g| serde_json::from_slice(g.value())).transpose()?)
    }
    fn put_conv(&mut self, c: &Conv) -> R<()> {
        self.convs.insert(c.conv_id.as_str(), serde_json::to_vec(c)?.as_slice())?;
        Ok(())
    }
    fn row(&mut self, user: &str, conv_id: &str) -> R<Option<Row>> {
        Ok(self.rows.get((user, conv_id))?.map(|g| serde_json::from_slice(g.value())).transpose()?)
    }
    fn put_row(&mut self, user: &str, conv_id: &str, r: &Row) -> R<()> {
        self.rows.insert((user, conv_id), serde_json::to_vec(r)?.as_slice())?;
        Ok(())
    }
    fn put_conv_user(&mut self, conv_id: &str, user: &str) -> R<()> {
        self.conv_users.insert((conv_id, user), ())?;
        Ok(())
    }
    fn put_msg(&mut self, m: &Message) -> R<()> {
        self.msgs.insert((m.conv_id.as_str(), m.seq), serde_json::to_vec(m)?.as_slice())?;
        Ok(())
    }
}

// ---------------------------------------------------------------- the binary layout, any engine

/// A key of the binary layout, by table. Conversation ids are interned to numbers: MESSAGES is
/// keyed by `(conv_no, seq)` in 16 bytes, DEDUPE by a 128-bit hash of `(sender, client_msg_id)`
/// (→ the message's key), CONVS by `conv_no`, USER_CONVS by `(user, conv_no)`, CONV_USERS by
/// `(conv_no, user)`, CONV_IDS (`conv_id` → `conv_no`) and META by name. Values are bytes.
#[derive(Clone, Copy)]
enum Key<'a> {
    Meta(&'a str),
    ConvId(&'a str),
    Conv(u64),
    Msg(u128),
    Dedupe(u128),
    Row(&'a str, u64),
    ConvUser(u64, &'a str),
}

/// A write batch of an engine over the binary layout.
trait Kv {
    fn get<V>(&mut self, key: Key, f: impl FnOnce(&[u8]) -> R<V>) -> R<Option<V>>;
    fn put(&mut self, key: Key, value: &[u8]) -> R<()>;
}

fn be(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

fn un_be(b: &[u8]) -> R<u64> {
    Ok(u64::from_be_bytes(b.try_into()?))
}

/// Conversation ids interned to numbers: the cache (kept across batches) and the last number.
#[derive(Default)]
struct Interned {
    ids: HashMap<String, u64>,
    last: u64,
}

struct BinOps<'s, K> {
    kv: K,
    interned: &'s mut Interned,
    /// For engines whose batch cannot be read back (fjall): the dedupe keys this batch wrote.
    pending: Option<HashSet<u128>>,
    buf: Vec<u8>,
}

impl<K: Kv> BinOps<'_, K> {
    /// The number of a conversation id (cached; CONV_IDS on a miss), allocated if `create`.
    fn conv_no(&mut self, conv_id: &str, create: bool) -> R<Option<u64>> {
        if let Some(&n) = self.interned.ids.get(conv_id) {
            return Ok(Some(n));
        }
        let n = match self.kv.get(Key::ConvId(conv_id), un_be)? {
            Some(n) => n,
            None if create => {
                self.interned.last += 1;
                self.kv.put(Key::ConvId(conv_id), &be(self.interned.last))?;
                self.interned.last
            }
            None => return Ok(None),
        };
        self.interned.ids.insert(conv_id.to_owned(), n);
        Ok(Some(n))
    }

    fn no(&mut self, conv_id: &str) -> R<u64> {
        Ok(self.conv_no(conv_id, true)?.ok_or("no conversation number")?)
    }
}

impl<K: Kv> Ops for BinOps<'_, K> {
    fn ver(&mut self) -> R<u64> {
        Ok(self.kv.get(Key::Meta("ver"), un_be)?.unwrap_or(0))
    }
    fn put_ver(&mut self, ver: u64) -> R<()> {
        self.kv.put(Key::Meta("ver"), &be(ver))
    }
    fn dedupe_hit(&mut self, conv_id: &str, sender: &str, cmid: &str) -> R<Option<Message>> {
        let key = if LOCAL_DEDUPE.load(Relaxed) {
            match self.conv_no(conv_id, false)? {
                Some(n) => local_dkey(n, sender, cmid),
                None => return Ok(None),
            }
        } else {
            dkey(sender, cmid)
        };
        if self.pending.as_ref().is_some_and(|p| p.contains(&key)) {
            return Err("a re-send within one batch: not in this workload".into());
        }
        let Some(at) = self.kv.get(Key::Dedupe(key), |v| Ok(u128::from_be_bytes(v.try_into()?)))? else {
            return Ok(None);
        };
        let m = self
            .kv
            .get(Key::Msg(at), |v| bin_unmsg("", at as u64, v))?
            .ok_or("dedupe entry points at a missing message")?;
        Ok(same_key(m, sender, cmid))
    }
    fn put_dedupe(&mut self, sender: &str, cmid: &str, conv_id: &str, seq: u64) -> R<()> {
        let n = self.no(conv_id)?;
        let key = if LOCAL_DEDUPE.load(Relaxed) { local_dkey(n, sender, cmid) } else { dkey(sender, cmid) };
        if let Some(p) = &mut self.pending {
            p.insert(key);
        }
        self.kv.put(Key::Dedupe(key), &mkey(n, seq).to_be_bytes())
    }
    fn conv(&mut self, conv_id: &str) -> R<Option<Conv>> {
        let Some(n) = self.conv_no(conv_id, false)? else { return Ok(None) };
        self.kv.get(Key::Conv(n), bin_unconv)
    }
    fn put_conv(&mut self, c: &Conv) -> R<()> {
        let n = self.no(&c.conv_id)?;
        self.kv.put(Key::Conv(n), &bin_conv(c))
    }
    fn row(&mut self, user: &str, conv_id: &str) -> R<Option<Row>> {
        let Some(n) = self.conv_no(conv_id, false)? else { return Ok(None) };
        self.kv.get(Key::Row(user, n), bin_unrow)
    }
    fn put_row(&mut self, user: &str, conv_id: &str, r: &Row) -> R<()> {
        let n = self.no(conv_id)?;
        self.kv.put(Key::Row(user, n), &bin_row(r))
    }
    fn put_conv_user(&mut self, conv_id: &str, user: &str) -> R<()> {
        let n = self.no(conv_id)?;
        self.kv.put(Key::ConvUser(n, user), &[])
    }
    fn put_msg(&mut self, m: &Message) -> R<()> {
        let n = self.no(&m.conv_id)?;
        self.buf.clear();
        bin_msg(&mut self.buf, m)?;
        self.kv.put(Key::Msg(mkey(n, m.seq)), &self.buf)
    }
}

const B_META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const B_CONV_IDS: TableDefinition<&str, &[u8]> = TableDefinition::new("conv_ids");
const B_CONVS: TableDefinition<u64, &[u8]> = TableDefinition::new("conversations");
const B_MESSAGES: TableDefinition<u128, &[u8]> = TableDefinition::new("messages");
const B_DEDUPE: TableDefinition<u128, u128> = TableDefinition::new("dedupe");
const B_USER_CONVS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("user_convs");
const B_CONV_USERS: TableDefinition<(u64, &str), ()> = TableDefinition::new("conv_users");

/// The binary layout in redb: fixed-width integer keys (`u128`, `u64`) where the layout has them.
struct RedbKv<'t> {
    meta: Table<'t, Str, Bytes>,
    conv_ids: Table<'t, Str, Bytes>,
    convs: Table<'t, u64, Bytes>,
    msgs: Table<'t, u128, Bytes>,
    dedupe: Table<'t, u128, u128>,
    rows: Table<'t, (Str, u64), Bytes>,
    conv_users: Table<'t, (u64, Str), ()>,
}

impl<'t> RedbKv<'t> {
    fn open(txn: &'t WriteTransaction) -> R<Self> {
        let (meta, conv_ids, convs) = (txn.open_table(B_META)?, txn.open_table(B_CONV_IDS)?, txn.open_table(B_CONVS)?);
        let (msgs, dedupe, rows) =
            (txn.open_table(B_MESSAGES)?, txn.open_table(B_DEDUPE)?, txn.open_table(B_USER_CONVS)?);
        Ok(RedbKv { meta, conv_ids, convs, msgs, dedupe, rows, conv_users: txn.open_table(B_CONV_USERS)? })
    }
}

impl Kv for RedbKv<'_> {
    fn get<V>(&mut self, key: Key, f: impl FnOnce(&[u8]) -> R<V>) -> R<Option<V>> {
        match key {
            Key::Meta(k) => self.meta.get(k)?.map(|g| f(g.value())),
            Key::ConvId(k) => self.conv_ids.get(k)?.map(|g| f(g.value())),
            Key::Conv(k) => self.convs.get(k)?.map(|g| f(g.value())),
            Key::Msg(k) => self.msgs.get(k)?.map(|g| f(g.value())),
            Key::Dedupe(k) => self.dedupe.get(k)?.map(|g| f(&g.value().to_be_bytes())),
            Key::Row(u, n) => self.rows.get((u, n))?.map(|g| f(g.value())),
            Key::ConvUser(n, u) => self.conv_users.get((n, u))?.map(|_| f(&[])),
        }
        .transpose()
    }
    fn put(&mut self, key: Key, v: &[u8]) -> R<()> {
        match key {
            Key::Meta(k) => drop(self.meta.insert(k, v)?),
            Key::ConvId(k) => drop(self.conv_ids.insert(k, v)?),
            Key::Conv(k) => drop(self.convs.insert(k, v)?),
            Key::Msg(k) => drop(self.msgs.insert(k, v)?),
            Key::Dedupe(k) => drop(self.dedupe.insert(k, u128::from_be_bytes(v.try_into()?))?),
            Key::Row(u, n) => drop(self.rows.insert((u, n), v)?),
            Key::ConvUser(n, u) => drop(self.conv_users.insert((n, u), ())?),
        }
        Ok(())
    }
}

const KEYSPACES: [&str; 7] = ["meta", "conv_ids", "conversations", "messages", "dedupe", "user_convs", "conv_users"];

/// The binary layout in fjall: one keyspace per table, integers big-endian in the keys (so byte
/// order is numeric order), `user NUL conv_no` for USER_CONVS.
struct FjallKv<'a> {
    ks: &'a [Keyspace; 7],
    batch: fjall::OwnedWriteBatch,
}

/// The keyspace and the key bytes of a key.
fn fjall_key<'a>(ks: &'a [Keyspace; 7], key: Key<'_>) -> (&'a Keyspace, Vec<u8>) {
    let (i, k) = match key {
        Key::Meta(k) => (0, k.as_bytes().to_vec()),
        Key::ConvId(k) => (1, k.as_bytes().to_vec()),
        Key::Conv(n) => (2, be(n).to_vec()),
        Key::Msg(k) => (3, k.to_be_bytes().to_vec()),
        Key::Dedupe(k) => (4, k.to_be_bytes().to_vec()),
        Key::Row(u, n) => (5, [u.as_bytes(), &[0], &be(n)].concat()),
        Key::ConvUser(n, u) => (6, [&be(n)[..], u.as_bytes()].concat()),
    };
    (&ks[i], k)
}

impl Kv for FjallKv<'_> {
    fn get<V>(&mut self, key: Key, f: impl FnOnce(&[u8]) -> R<V>) -> R<Option<V>> {
        let (ks, k) = fjall_key(self.ks, key);
        ks.get(k)?.map(|v| f(&v)).transpose()
    }
    fn put(&mut self, key: Key, value: &[u8]) -> R<()> {
        let (ks, k) = fjall_key(self.ks, key);
        self.batch.insert(ks, k, value);
        Ok(())
    }
}

// ---------------------------------------------------------------- the designs

trait Design {
    fn write(&mut self, batch: Vec<NewMsg>) -> R<()>;
    /// The last `n` messages of a conversation, newest first (`None`: the design has no index).
    fn history(&mut self, conv_id: &str, n: usize) -> R<Option<Vec<Message>>>;
    /// Called after the prefill (not measured) and after the measured batches (measured).
    fn settle(&mut self) -> R<()> {
        Ok(())
    }
}

enum Mode {
    Immediate,
    NoDurable,
    /// Ack at the log's fdatasync; a durable redb commit (and log truncation) every `every` batches.
    Wal {
        every: u32,
        pending: u32,
        log: File,
        buf: Vec<u8>,
    },
}

struct Redb {
    db: redb::Database,
    binary: bool,
    mode: Mode,
    interned: Interned,
}

impl Design for Redb {
    fn write(&mut self, batch: Vec<NewMsg>) -> R<()> {
        let mut txn = self.db.begin_write()?;
        let durable = match &mut self.mode {
            Mode::Immediate => true,
            Mode::NoDurable => false,
            Mode::Wal { every, pending, .. } => {
                *pending += 1;
                *pending >= *every
            }
        };
        txn.set_durability(if durable { Durability::Immediate } else { Durability::None });
        let stored = if self.binary {
            let (interned, buf) = (&mut self.interned, Vec::with_capacity(256));
            append_batch(&mut BinOps { kv: RedbKv::open(&txn)?, interned, pending: None, buf }, batch)?
        } else {
            append_batch(&mut JsonTx::open(&txn)?, batch)?
        };
        if let (Mode::Wal { log, buf, .. }, false) = (&mut self.mode, durable) {
            buf.clear();
            for m in &stored {
                log_record(buf, m)?;
            }
            log.write_all(buf)?;
            log.sync_data()?; // the acknowledgement point
        }
        txn.commit()?;
        if let (Mode::Wal { log, pending, .. }, true) = (&mut self.mode, durable) {
            // The durable commit holds everything logged (a replay skips records by `ver` anyway).
            log.set_len(0)?;
            *pending = 0;
        }
        Ok(())
    }

    fn history(&mut self, conv_id: &str, n: usize) -> R<Option<Vec<Message>>> {
        let r = self.db.begin_read()?;
        let mut out = Vec::with_capacity(n);
        if self.binary {
            let ids = r.open_table(B_CONV_IDS)?;
            let Some(c) = ids.get(conv_id)?.map(|g| un_be(g.value())).transpose()? else { return Ok(Some(out)) };
            for item in r.open_table(B_MESSAGES)?.range(mkey(c, 0)..=mkey(c, u64::MAX))?.rev().take(n) {
                let (k, v) = item?;
                out.push(bin_unmsg(conv_id, k.value() as u64, v.value())?);
            }
        } else {
            for item in r.open_table(MESSAGES)?.range((conv_id, 0)..=(conv_id, u64::MAX))?.rev().take(n) {
                out.push(serde_json::from_slice(item?.1.value())?);
            }
        }
        Ok(Some(out))
    }

    fn settle(&mut self) -> R<()> {
        if let Mode::Wal { pending: pending @ 1.., log, .. } = &mut self.mode {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::Immediate);
            txn.commit()?;
            log.set_len(0)?;
            *pending = 0;
        }
        Ok(())
    }
}

/// fjall: the binary layout in keyspaces, one atomic write batch per message batch, its journal
/// written and fdatasync'ed (`PersistMode::SyncData`) at the commit.
struct Fjall {
    db: fjall::Database,
    ks: [Keyspace; 7],
    interned: Interned,
}

impl Fjall {
    fn open(dir: &Path) -> R<Self> {
        let db = fjall::Database::builder(dir.join("fjall")).open()?;
        let [a, b, c, d, e, f, g] = KEYSPACES.map(|name| db.keyspace(name, KeyspaceCreateOptions::default));
        Ok(Fjall { ks: [a?, b?, c?, d?, e?, f?, g?], db, interned: Interned::default() })
    }
}

impl Design for Fjall {
    fn write(&mut self, batch: Vec<NewMsg>) -> R<()> {
        let kv = FjallKv { ks: &self.ks, batch: self.db.batch().durability(Some(PersistMode::SyncData)) };
        let (interned, buf) = (&mut self.interned, Vec::with_capacity(256));
        let mut ops = BinOps { kv, interned, pending: Some(HashSet::new()), buf };
        let stored = append_batch(&mut ops, batch)?;
        ops.kv.batch.commit()?;
        drop(stored);
        Ok(())
    }

    fn history(&mut self, conv_id: &str, n: usize) -> R<Option<Vec<Message>>> {
        let mut out = Vec::with_capacity(n);
        let Some(c) = self.ks[1].get(conv_id)? else { return Ok(Some(out)) };
        let c = un_be(&c)?;
        let range = mkey(c, 0).to_be_bytes()..=mkey(c, u64::MAX).to_be_bytes();
        for item in self.ks[3].range(range).rev().take(n) {
            let (k, v) = item.into_inner()?;
            out.push(bin_unmsg(conv_id, un_be(&k[8..])?, &v)?);
        }
        Ok(Some(out))
    }

    /// Flushes the memtables to tables on disk (and waits), so the measured phase pays the
    /// flush of exactly its own data (not the compactions that would follow).
    fn settle(&mut self) -> R<()> {
        self.ks.iter().try_for_each(|ks| ks.rotate_memtable_and_wait())?;
        Ok(())
    }
}

/// The floor: each message serialized compactly, the batch appended to a file, fdatasync.
struct LogOnly {
    log: File,
    last_seq: HashMap<String, u64>,
    ver: u64,
    buf: Vec<u8>,
}

impl Design for LogOnly {
    fn write(&mut self, batch: Vec<NewMsg>) -> R<()> {
        self.buf.clear();
        for m in batch {
            let seq = self.last_seq.entry(m.conv_id.clone()).or_insert(0);
            (*seq, self.ver) = (*seq + 1, self.ver + 1);
            let (sender, client_msg_id, body) = (Some(m.sender), Some(m.cmid), Body::text(m.text));
            let (seq, ts, ver) = (*seq, m.ts, self.ver);
            let message = Message { conv_id: m.conv_id, seq, sender, client_msg_id, body, reply_to: None, ts, ver };
            log_record(&mut self.buf, &message)?;
        }
        self.log.write_all(&self.buf)?;
        self.log.sync_data()?;
        Ok(())
    }
    fn history(&mut self, _: &str, _: usize) -> R<Option<Vec<Message>>> {
        Ok(None)
    }
}

fn open_design(name: &str, dir: &Path, wal_every: u32) -> R<Box<dyn Design>> {
    let log = || OpenOptions::new().create(true).append(true).open(dir.join("log"));
    let redb = |binary, mode| -> R<Box<dyn Design>> {
        let db = redb::Database::create(dir.join("store.redb"))?;
        Ok(Box::new(Redb { db, binary, mode, interned: Interned::default() }))
    };
    let wal = || -> R<Mode> { Ok(Mode::Wal { every: wal_every, pending: 0, log: log()?, buf: Vec::new() }) };
    match name {
        "redb-now" => redb(false, Mode::Immediate),
        "redb-now-nodurable" => redb(false, Mode::NoDurable),
        "redb-now-wal" => redb(false, wal()?),
        "redb-binary" => redb(true, Mode::Immediate),
        "redb-wal" => redb(true, wal()?),
        "fjall" => Ok(Box::new(Fjall::open(dir)?)),
        "log-only" => Ok(Box::new(LogOnly { log: log()?, last_seq: HashMap::new(), ver: 0, buf: Vec::new() })),
        other => Err(format!("unknown design {other:?} (known: {})", ALL.join(",")).into()),
    }
}

// ---------------------------------------------------------------- the workload

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn text(&mut self, n: usize) -> String {
        const A: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        (0..n).map(|_| A[self.below(A.len())] as char).collect()
    }
}

struct Workload {
    users: Vec<String>,
    convs: Vec<String>,
    rng: Rng,
    ts: i64,
}

impl Workload {
    /// Conversation ids `d_<userA>_<userB>`, or with `hex_ids` confab's own `direct_conv_id`
    /// (`d_` + 32 hex digits of FNV-1a-128 of the two sorted ids joined by a NUL).
    fn new(seed: u64, hex_ids: bool) -> Self {
        let users: Vec<String> = (0..USERS).map(|i| format!("u{i:04}")).collect();
        let conv_id = |a: &str, b: &str| {
            if !hex_ids {
                return format!("d_{a}_{b}");
            }
            let mut h: u128 = 0x6c62272e07bb014262b821756295c58d;
            for byte in a.bytes().chain(std::iter::once(0u8)).chain(b.bytes()) {
                h = (h ^ u128::from(byte)).wrapping_mul(0x0000000001000000000000000000013B);
            }
            format!("d_{h:032x}")
        };
        let convs = (0..USERS / 2).map(|i| conv_id(&users[2 * i], &users[2 * i + 1])).collect();
        Workload { users, convs, rng: Rng(seed), ts: 1_733_577_600_000 }
    }

    /// `n` messages, each from a random user to their partner, with a random 22-character
    /// client_msg_id and 40-character text.
    fn batch(&mut self, n: usize) -> Vec<NewMsg> {
        let mut one = |_| {
            let u = self.rng.below(USERS);
            self.ts += 1;
            let (conv_id, sender) = (self.convs[u / 2].clone(), self.users[u].clone());
            let members = (self.users[u & !1].clone(), self.users[u | 1].clone());
            let cmid = if ORDERED_IDS.load(Relaxed) {
                format!("{:012x}{}", self.ts, self.rng.text(10))
            } else {
                self.rng.text(22)
            };
            NewMsg { conv_id, members, sender, cmid, text: self.rng.text(40), ts: self.ts }
        };
        (0..n).map(&mut one).collect()
    }
}

// ---------------------------------------------------------------- measuring

fn cpu(clock: ClockId) -> Duration {
    let t = rustix::time::clock_gettime(clock);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn write_bytes() -> u64 {
    let io = fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// (utime, stime) in clock ticks of this thread.
fn ticks() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.rsplit(')').next().unwrap_or("").split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    (f.get(11).copied().unwrap_or(0), f.get(12).copied().unwrap_or(0))
}

struct Sample {
    design: String,
    round: usize,
    thread_us: f64,
    proc_us: f64,
    /// Clock ticks (10 ms) of the writing thread in user and system mode.
    ticks: (u64, u64),
    bytes: f64,
    wall_ms: f64,
    page_us: Option<f64>,
}

fn run(name: &str, round: usize, o: &Opts) -> R<Sample> {
    let dir = o.dir.join(format!("{name}-{round}"));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let mut d = open_design(name, &dir, o.wal_every)?;
    let mut w = Workload::new(42, o.hex_ids);
    for _ in 0..o.prefill.div_ceil(BATCH) {
        d.write(w.batch(BATCH))?;
    }
    d.settle()?;
    let batches: Vec<Vec<NewMsg>> = (0..o.messages.div_ceil(BATCH)).map(|_| w.batch(BATCH)).collect();
    let (n, nb) = ((batches.len() * BATCH) as f64, batches.len() as f64);
    let (bytes0, proc0, ticks0) = (write_bytes(), cpu(ClockId::ProcessCPUTime), ticks());
    let (thread0, mut wall) = (cpu(ClockId::ThreadCPUTime), Duration::ZERO);
    for b in batches {
        let t = Instant::now();
        d.write(b)?;
        wall += t.elapsed();
    }
    d.settle()?;
    let thread = cpu(ClockId::ThreadCPUTime) - thread0;
    let proc = cpu(ClockId::ProcessCPUTime) - proc0;
    let (bytes, ticks1) = (write_bytes().saturating_sub(bytes0), ticks());
    let (user, sys) = (ticks1.0 - ticks0.0, ticks1.1 - ticks0.1);
    let (mut rng, start, mut page_us) = (Rng(7 + round as u64), Instant::now(), None);
    for _ in 0..PAGES {
        let conv = &w.convs[rng.below(w.convs.len())];
        if let Some(page) = d.history(conv, PAGE)? {
            let whole = page.len() == PAGE || page.last().is_some_and(|m| m.seq == 1);
            if !whole || page.windows(2).any(|p| p[0].seq != p[1].seq + 1) {
                return Err(format!("{name}: bad history page of {conv}: {} messages", page.len()).into());
            }
            page_us = Some(start.elapsed().as_secs_f64() * 1e6 / PAGES as f64);
        }
    }
    drop(d);
    fs::remove_dir_all(&dir)?;
    Ok(Sample {
        design: name.to_owned(),
        round,
        thread_us: thread.as_secs_f64() * 1e6 / n,
        proc_us: proc.as_secs_f64() * 1e6 / n,
        ticks: (user, sys),
        bytes: bytes as f64 / n,
        wall_ms: wall.as_secs_f64() * 1e3 / nb,
        page_us,
    })
}

struct Opts {
    designs: Vec<String>,
    messages: usize,
    prefill: usize,
    rounds: usize,
    wal_every: u32,
    hex_ids: bool,
    dir: PathBuf,
}

fn parse_opts() -> R<Opts> {
    let designs = ALL.iter().map(|s| s.to_string()).collect();
    let dir = PathBuf::from("/work/tmp-storemicro");
    let mut o = Opts { designs, messages: 64_000, prefill: 200_000, rounds: 2, wal_every: 16, hex_ids: false, dir };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--designs" => o.designs = val()?.split(',').map(str::to_owned).collect(),
            "--messages" => o.messages = val()?.parse()?,
            "--prefill" => o.prefill = val()?.parse()?,
            "--rounds" => o.rounds = val()?.parse()?,
            "--wal-every" => o.wal_every = val()?.parse()?,
            "--dir" => o.dir = PathBuf::from(val()?),
            "--hex-ids" => o.hex_ids = true,
            "--no-dedupe" => NO_DEDUPE.store(true, Relaxed),
            "--local-dedupe" => LOCAL_DEDUPE.store(true, Relaxed),
            "--hash-dedupe" => HASH_DEDUPE.store(true, Relaxed),
            "--ordered-ids" => ORDERED_IDS.store(true, Relaxed),
            _ => {
                let usage =
                    "[--messages N] [--prefill N] [--rounds N] [--wal-every N] [--hex-ids] [--no-dedupe] [--local-dedupe] [--hash-dedupe] [--ordered-ids] [--dir PATH]";
                return Err(format!("usage: storemicro [--designs {}] {usage}", ALL.join(",")).into());
            }
        }
    }
    Ok(o)
}

/// The system share of the writing thread's CPU time, if there are enough ticks to tell.
fn sys_pct((user, sys): (u64, u64)) -> String {
    if user + sys < 20 {
        return "-".to_owned();
    }
    format!("{:.0}", 100.0 * sys as f64 / (user + sys) as f64)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn main() -> R<()> {
    let o = parse_opts()?;
    let created = !o.dir.exists();
    fs::create_dir_all(&o.dir)?;
    let batches = o.messages.div_ceil(BATCH);
    let ids = if o.hex_ids { "d_<32 hex> (confab's)" } else { "d_<userA>_<userB>" };
    println!(
        "# {} messages measured ({batches} batches of {BATCH}) after a prefill of {}, {} round(s), \
         WAL checkpoint every {} batches, conversation ids {ids}{}",
        batches * BATCH,
        o.prefill,
        o.rounds,
        o.wal_every,
        if NO_DEDUPE.load(Relaxed) { ", NO DEDUPE INDEX (diagnostic)" } else { "" }
    );
    let mut samples = Vec::new();
    for round in 0..o.rounds {
        let mut order = o.designs.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        for name in &order {
            let s = run(name, round, &o)?;
            let page = s.page_us.map_or("-".into(), |p| format!("{p:.1} µs"));
            println!(
                "round {round} {:<20} thread {:7.2} µs/msg  process {:7.2} µs/msg  sys {:>4}%  {:6.0} B/msg  \
                 {:7.2} ms/batch  page {page}",
                s.design,
                s.thread_us,
                s.proc_us,
                sys_pct(s.ticks),
                s.bytes,
                s.wall_ms
            );
            samples.push(s);
        }
    }
    if created {
        let _ = fs::remove_dir_all(&o.dir);
    }
    // Ratios against redb-now of the same round, then averaged over the rounds.
    let base = |round| samples.iter().find(|s| s.design == "redb-now" && s.round == round);
    println!("\n| design | thread CPU µs/msg | ratio | process CPU µs/msg | ratio | thread sys % | bytes written/msg | wall ms/batch | history page µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for name in &o.designs {
        let mine: Vec<&Sample> = samples.iter().filter(|s| &s.design == name).collect();
        let avg = |f: fn(&Sample) -> f64| mean(&mine.iter().map(|s| f(s)).collect::<Vec<_>>());
        let ratio = |f: fn(&Sample) -> f64| {
            let rs: Vec<f64> = mine.iter().filter_map(|s| base(s.round).map(|b| f(s) / f(b))).collect();
            if rs.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.2}", mean(&rs))
            }
        };
        let pages: Vec<f64> = mine.iter().filter_map(|s| s.page_us).collect();
        let page = if pages.is_empty() { "-".to_owned() } else { format!("{:.0}", mean(&pages)) };
        println!(
            "| {name} | {:.2} | {} | {:.2} | {} | {} | {:.0} | {:.1} | {page} |",
            avg(|s| s.thread_us),
            ratio(|s| s.thread_us),
            avg(|s| s.proc_us),
            ratio(|s| s.proc_us),
            sys_pct(mine.iter().fold((0, 0), |a, s| (a.0 + s.ticks.0, a.1 + s.ticks.1))),
            avg(|s| s.bytes),
            avg(|s| s.wall_ms)
        );
    }
    Ok(())
}
