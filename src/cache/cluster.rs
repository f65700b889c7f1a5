//! Forwarding over a Redis Cluster: the slot map, a connection of our own per master
//! (`pipe::Pipe`, RESP2 and RESP3, connected on first use), and the routing of a run of
//! forwarded commands, whose replies stay the bytes Redis sent (`Reply::Raw`) and whose
//! commands stay pipelined: a run's commands are grouped per node, each group one round trip,
//! the groups at once, and the replies put back in the client's order.
//!
//! Where a command goes, by Redis' own command table (`table`):
//! - its keys (and SPUBLISH's shard channel) in one slot: that slot's master;
//! - keys across slots: MGET, DEL, UNLINK, EXISTS and TOUCH are split per slot as cluster
//!   clients split them (MGET's arrays spliced back in key order, the others' counts added,
//!   see `merge`); anything else is answered `-CROSSSLOT`, as a cluster answers it;
//! - no key: every master when the `request_policy` tip says all_shards or all_nodes, the
//!   replies merged as its `response_policy` says (DBSIZE summed, KEYS concatenated,
//!   FLUSHALL all succeeded ...); else one master, in turn. A `special` response policy
//!   (FUNCTION STATS, MEMORY STATS ...) has no general merge: one master answers it.
//! - SCAN walks the masters one after another (see `Cursor`).
//!
//! Redirections: `-MOVED slot host:port` sends the command again to that node (the map is
//! patched for the slot at once and read again in the background); `-ASK slot host:port`
//! sends `ASKING` and the command to that node, once. At most `REDIRECTS` times a command:
//! the client never sees MOVED or ASK.
//!
//! Invalidation: each key a run writes is announced with an SPUBLISH on its slot's shard
//! channel (`conn::shard_channel`), pipelined after the run's commands to the node that owns
//! the slot, so it is heard after the write is applied. "Everything" (FLUSHALL, a script of
//! unknown keys) is an SPUBLISH of the empty key on slot 0's channel, sent once every node
//! has answered the run (every instance listens on every slot's channel); so are the keys
//! again when a command of the run was redirected, since an ASK may have applied a write
//! after its announcement.

use super::{
    conn::{shard_channel, slot_of, SLOTS},
    dedicated::{Dedicated, LendError, Lent},
    forward::{Announce, Run},
    l2::L2Error,
    merge::{self, Merge},
    pipe::{self, Pipe, Reply, Target},
    table::{RequestPolicy, ResponsePolicy, Table},
};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use redis::Value;
use std::{
    borrow::Cow,
    collections::HashMap,
    ops::Range,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

/// Times one command is sent again after MOVED or ASK.
const REDIRECTS: usize = 3;

const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";
const UNSERVED: &[u8] = b"-CLUSTERDOWN Hash slot not served\r\n";
const INVALID_CURSOR: &[u8] = b"-ERR invalid cursor\r\n";
const REDIRECTED_TOO_OFTEN: &[u8] =
    b"-TRYAGAIN the cluster redirected this command too many times; retry later\r\n";

/// Commands a cluster client splits by slot when their keys span several (each of its
/// arguments a key): their parts' replies merge without changing what the command means.
/// MSETNX, also `multi_shard` in Redis' tips, is not split: it is all or nothing.
const SPLIT: &[&str] = &["mget", "del", "unlink", "exists", "touch"];

/// One master, and our connections to it.
pub struct Node {
    host: String,
    port: u16,
    pipes: Box<[Pipe]>,
    pipes3: Box<[Pipe]>,
    /// Connections lent to one client at a time (`resp::pinned`), under the cluster's bound.
    dedicated: Dedicated,
}

impl Node {
    fn pipe(&self, resp3: bool) -> &Pipe {
        let pipes = if resp3 { &self.pipes3 } else { &self.pipes };
        pipe::pick(pipes)
    }
}

/// Which master serves each slot.
pub struct SlotMap {
    /// Masters, ordered by the first slot each serves: the order SCAN cursors number them in,
    /// the same on every instance and across refreshes that move no range's start.
    masters: Vec<Arc<Node>>,
    /// For each slot, its master's index in `masters`, or `NONE`.
    owner: Box<[u16]>,
}

const NONE: u16 = u16::MAX;

impl SlotMap {
    fn owner(&self, slot: u16) -> Option<&Arc<Node>> {
        let i = *self.owner.get(usize::from(slot))?;
        self.masters.get(usize::from(i))
    }
}

pub struct Cluster {
    /// The configured nodes: where the map is first read, and the login every node gets.
    seeds: Vec<Target>,
    map: ArcSwapOption<SlotMap>,
    /// Connections by `host:port`, shared by the map and redirections. Locked only to look
    /// up or insert, never across an await.
    nodes: Mutex<HashMap<String, Arc<Node>>>,
    /// A background read of the map is under way.
    refreshing: AtomicBool,
    /// Connections per node and protocol, and the queue of each (`Pipe::start`).
    connections: usize,
    queue: usize,
    /// Rotates keyless commands over the masters.
    next: AtomicUsize,
    /// `l2.dedicated_connections`: most connections lent at once, over all masters together.
    dedicated: usize,
    lent: Arc<tokio::sync::Semaphore>,
}

/// One piece of a client's command, for one node.
struct Sub<'a> {
    node: Arc<Node>,
    args: Cow<'a, [Bytes]>,
    /// Sent after ASKING (an ASK redirection).
    asking: bool,
}

/// How a command's reply is made.
enum Plan {
    /// Answered here, without Redis.
    Local(&'static [u8]),
    /// Its one part's reply, as it is.
    One,
    /// Its parts' replies merged.
    Merge(Merge),
    /// SCAN on master `node` of `nodes`: the cursor in its reply re-encoded.
    Scan { node: usize, nodes: usize },
}

struct Routed {
    plan: Plan,
    /// Its parts, in `subs`.
    subs: Range<usize>,
}

impl Cluster {
    /// `seeds` are the configured nodes (over TCP: the caller checks). Nothing connects yet.
    /// `dedicated`: most connections lent to one client at a time, all masters together.
    pub fn new(seeds: Vec<Target>, connections: usize, queue: usize, dedicated: usize) -> Self {
        Self {
            seeds,
            map: ArcSwapOption::empty(),
            nodes: Mutex::default(),
            refreshing: AtomicBool::new(false),
            connections: connections.max(1),
            queue,
            next: AtomicUsize::new(0),
            dedicated,
            lent: Arc::new(tokio::sync::Semaphore::new(dedicated)),
        }
    }

    /// Most connections lent at once (`l2.dedicated_connections`), all masters together.
    pub fn dedicated_size(&self) -> usize {
        self.dedicated
    }

    /// Lends a connection (`dedicated`) to the master of `slot`, or to any master (the next
    /// in turn) for None; speaking RESP3 when `resp3`.
    pub async fn lend(&self, slot: Option<u16>, resp3: bool) -> Result<Lent, LendError> {
        let map = self.map().await.map_err(LendError::L2)?;
        let node = match slot {
            Some(slot) => map.owner(slot),
            None if map.masters.is_empty() => None,
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % map.masters.len();
                map.masters.get(i)
            }
        };
        let Some(node) = node else {
            return Err(LendError::L2(L2Error::store(
                "CLUSTERDOWN",
                "Hash slot not served",
            )));
        };
        node.dedicated.lend(resp3).await
    }

    /// The connections to `host:port`, started on first use.
    fn node(&self, host: &str, port: u16) -> Arc<Node> {
        let key = format!("{host}:{port}");
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get(&key) {
            return n.clone();
        }
        let target = self.seeds[0].at(host, port);
        let start = |t: &Target| -> Box<[Pipe]> {
            (0..self.connections)
                .map(|_| Pipe::start(t.clone(), self.queue, None, None))
                .collect()
        };
        let node = Arc::new(Node {
            host: host.to_owned(),
            port,
            pipes: start(&target),
            pipes3: start(&target.clone().resp3()),
            dedicated: Dedicated::shared(target, self.dedicated, self.lent.clone()),
        });
        nodes.insert(key, node.clone());
        node
    }

    /// Whether the slot map has been read.
    pub fn has_map(&self) -> bool {
        self.map.load().is_some()
    }

    /// Reads the slot map (CLUSTER SLOTS) from the first node that answers: the masters
    /// known now, then the configured nodes. Connections to nodes no longer in it are let go
    /// (those in use finish first).
    pub async fn load(&self) -> Result<(), L2Error> {
        let mut asked: Vec<(String, u16)> = self
            .map
            .load()
            .as_ref()
            .map(|m| m.masters.iter().map(|n| (n.host.clone(), n.port)).collect())
            .unwrap_or_default();
        asked.extend(self.seeds.iter().map(|s| {
            let (h, p) = s.addr();
            (h.to_owned(), p)
        }));
        let mut last = L2Error::Unavailable("no cluster node to read the slot map from".into());
        for (host, port) in asked {
            let node = self.node(&host, port);
            let mut cmd = Vec::new();
            pipe::encode(&mut cmd, &[b"CLUSTER", b"SLOTS"]);
            let reply = match node.pipe(false).call(cmd, 1).await {
                Ok(mut r) => r.pop(),
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            let ranges = match reply {
                Some(Reply::Value(v)) => parse_slots(&v, &host),
                Some(Reply::Error { code, detail }) => Err(format!("{code} {detail}")),
                _ => Err("no reply".to_string()),
            };
            match ranges {
                Ok(ranges) if !ranges.is_empty() => {
                    self.install(&ranges);
                    return Ok(());
                }
                Ok(_) => last = L2Error::Unavailable(format!("{host}:{port} serves no slot")),
                Err(e) => {
                    last = L2Error::Unavailable(format!("CLUSTER SLOTS on {host}:{port}: {e}"))
                }
            }
        }
        Err(last)
    }

    /// Makes `ranges` the slot map.
    fn install(&self, ranges: &[SlotRange]) {
        let mut firsts: Vec<(u16, &str, u16)> = Vec::new();
        for r in ranges {
            match firsts
                .iter_mut()
                .find(|(_, h, p)| *h == r.host && *p == r.port)
            {
                Some(f) => f.0 = f.0.min(r.start),
                None => firsts.push((r.start, &r.host, r.port)),
            }
        }
        firsts.sort_unstable();
        let masters: Vec<Arc<Node>> = firsts
            .iter()
            .map(|&(_, host, port)| self.node(host, port))
            .collect();
        let mut owner = vec![NONE; usize::from(SLOTS)].into_boxed_slice();
        for r in ranges {
            let Some(i) = masters
                .iter()
                .position(|n| n.host == r.host && n.port == r.port)
            else {
                continue;
            };
            for slot in r.start..=r.end.min(SLOTS - 1) {
                owner[usize::from(slot)] = i as u16;
            }
        }
        {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes.retain(|_, n| masters.iter().any(|m| Arc::ptr_eq(m, n)));
        }
        self.map.store(Some(Arc::new(SlotMap { masters, owner })));
    }

    /// The slot map, read now if it has not been yet.
    async fn map(&self) -> Result<Arc<SlotMap>, L2Error> {
        if let Some(map) = self.map.load_full() {
            return Ok(map);
        }
        self.load().await?;
        self.map
            .load_full()
            .ok_or_else(|| L2Error::Unavailable("no slot map".into()))
    }

    /// Reads the map again in the background, unless that is under way.
    fn refresh_soon(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.load().await {
                tracing::warn!(error = %e, "cannot read the cluster's slot map again");
            }
            me.refreshing.store(false, Ordering::Release);
        });
    }

    /// A MOVED said `slot` is `node`'s: the map says so at once, when `node` is a master it
    /// knows (a new one comes with the next full read).
    fn moved(&self, slot: u16, node: &Arc<Node>) {
        let Some(map) = self.map.load_full() else {
            return;
        };
        let Some(i) = map.masters.iter().position(|m| Arc::ptr_eq(m, node)) else {
            return;
        };
        if map.owner.get(usize::from(slot)) == Some(&(i as u16)) {
            return;
        }
        let mut owner = map.owner.clone();
        owner[usize::from(slot)] = i as u16;
        self.map.store(Some(Arc::new(SlotMap {
            masters: map.masters.clone(),
            owner,
        })));
    }

    /// Forwards a run (see the module doc): each command's reply in the client's order, as
    /// Redis sent it (or merged from its parts' replies), `Reply::TooLarge` once the replies
    /// together pass `limit`. `channel`: where writes are announced (None: not announcing).
    pub async fn forward(
        self: &Arc<Self>,
        table: &Table,
        run: &mut Run,
        channel: Option<&str>,
        resp3: bool,
        limit: usize,
    ) -> Result<Vec<Reply>, L2Error> {
        let map = self.map().await?;
        let (keys, everything) = match (channel, run.announce()) {
            (None, _) => (Vec::new(), false),
            (Some(_), Announce::Everything) => (Vec::new(), true),
            (Some(_), Announce::Keys(keys)) => (keys.to_vec(), false),
        };
        let mut subs = Vec::with_capacity(run.len() + keys.len());
        let routed: Vec<Routed> = run
            .commands()
            .iter()
            .map(|args| {
                let start = subs.len();
                let plan = self.plan(&map, table, args, &mut subs);
                Routed {
                    plan,
                    subs: start..subs.len(),
                }
            })
            .collect();
        let announced = channel.map_or(0, |c| announcements(&map, c, &keys, &mut subs));
        let (mut replies, redirected) = self.execute(resp3, &mut subs, limit).await?;
        replies.truncate(replies.len() - announced);
        if let Some(channel) = channel {
            // As it is now: a redirection may have patched it.
            let map = self.map.load_full().unwrap_or(map);
            let mut again = Vec::new();
            if everything {
                if let Some(node) = map.owner(0) {
                    again.push(Sub {
                        node: node.clone(),
                        args: Cow::Owned(spublish(channel, 0, Bytes::new())),
                        asking: false,
                    });
                }
            } else if redirected {
                announcements(&map, channel, &keys, &mut again);
            }
            if !again.is_empty() {
                self.execute(false, &mut again, limit).await?;
            }
        }
        let mut replies = replies.into_iter();
        let mut out = Vec::with_capacity(routed.len());
        for r in routed {
            let parts: Vec<Reply> = replies.by_ref().take(r.subs.len()).collect();
            out.push(answer(r.plan, parts));
        }
        bound(&mut out, limit);
        Ok(out)
    }

    /// Where one command goes: its parts pushed onto `subs`, and how its reply is made.
    fn plan<'a>(
        &self,
        map: &SlotMap,
        table: &Table,
        args: &'a [Bytes],
        subs: &mut Vec<Sub<'a>>,
    ) -> Plan {
        // A name Redis does not know: any node answers it, in Redis' words.
        let Some(spec) = table.lookup(args) else {
            return self.anywhere(map, args, subs);
        };
        if spec.name == "scan" {
            return scan(map, args, subs).unwrap_or_else(|| self.anywhere(map, args, subs));
        }
        let keys = spec.routing_keys(args);
        if let Some((&first, rest)) = keys.split_first() {
            let slot = slot_of(&args[first]);
            if rest.iter().all(|&k| slot_of(&args[k]) == slot) {
                let Some(node) = map.owner(slot) else {
                    return Plan::Local(UNSERVED);
                };
                subs.push(Sub::whole(node, args));
                return Plan::One;
            }
            // Split only where every argument after the name is a key, as for these five.
            let all_keys =
                keys.len() + 1 == args.len() && keys.iter().zip(1..).all(|(&k, i)| k == i);
            if !SPLIT.contains(&spec.name.as_str()) || !all_keys {
                return Plan::Local(CROSSSLOT);
            }
            return split(map, &spec.name, args, subs);
        }
        match (spec.request_policy, spec.response_policy) {
            (_, Some(ResponsePolicy::Special)) => self.anywhere(map, args, subs),
            (Some(RequestPolicy::AllNodes | RequestPolicy::AllShards), response) => {
                if map.masters.is_empty() {
                    return Plan::Local(UNSERVED);
                }
                for node in &map.masters {
                    subs.push(Sub::whole(node, args));
                }
                Plan::Merge(Merge::of(response))
            }
            _ => self.anywhere(map, args, subs),
        }
    }

    /// To one master, the next in turn.
    fn anywhere<'a>(&self, map: &SlotMap, args: &'a [Bytes], subs: &mut Vec<Sub<'a>>) -> Plan {
        if map.masters.is_empty() {
            return Plan::Local(UNSERVED);
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % map.masters.len();
        subs.push(Sub::whole(&map.masters[i], args));
        Plan::One
    }

    /// Sends `subs`, grouped per node (one round trip each, all at once), following MOVED and
    /// ASK; each sub's reply, and whether any was redirected. Err when a node could not be
    /// reached: then which commands were applied is not known, as when one Redis fails.
    async fn execute(
        self: &Arc<Self>,
        resp3: bool,
        subs: &mut [Sub<'_>],
        limit: usize,
    ) -> Result<(Vec<Reply>, bool), L2Error> {
        let mut replies: Vec<Option<Reply>> = (0..subs.len()).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..subs.len()).collect();
        let mut redirected = false;
        for round in 0..=REDIRECTS {
            if pending.is_empty() {
                break;
            }
            let mut groups: Vec<(Arc<Node>, Vec<usize>)> = Vec::new();
            for &i in &pending {
                match groups
                    .iter_mut()
                    .find(|(n, _)| Arc::ptr_eq(n, &subs[i].node))
                {
                    Some((_, group)) => group.push(i),
                    None => groups.push((subs[i].node.clone(), vec![i])),
                }
            }
            let calls = groups.iter().map(|(node, group)| {
                let mut commands = Vec::new();
                let mut count = 0;
                for &i in group {
                    if subs[i].asking {
                        pipe::encode(&mut commands, &[b"ASKING"]);
                        count += 1;
                    }
                    pipe::encode_args(&mut commands, &subs[i].args);
                    count += 1;
                }
                // Nothing announced here (announcements are SPUBLISHes among `subs`): no batch.
                let call = node.pipe(resp3).call_raw(commands, 0, count, limit);
                async move { call.await.map(|(replies, _none)| replies) }
            });
            let results = futures_util::future::join_all(calls).await;
            let mut next = Vec::new();
            for ((node, group), result) in groups.iter().zip(results) {
                let got = match result {
                    Ok(got) => got,
                    Err(e) => {
                        // A master gone (a failover): its slots are someone else's now.
                        self.refresh_soon();
                        return Err(e);
                    }
                };
                let mut got = got.into_iter();
                for &i in group {
                    if subs[i].asking {
                        // ASKING's +OK.
                        got.next();
                    }
                    let reply = got.next().ok_or_else(|| {
                        L2Error::Unavailable("a node sent too few replies".into())
                    })?;
                    let Some(to) = redirection(&reply, &node.host) else {
                        replies[i] = Some(reply);
                        continue;
                    };
                    if round == REDIRECTS {
                        replies[i] = Some(Reply::Raw(Bytes::from_static(REDIRECTED_TOO_OFTEN)));
                        continue;
                    }
                    redirected = true;
                    let target = self.node(&to.host, to.port);
                    if to.moved {
                        self.moved(to.slot, &target);
                        self.refresh_soon();
                    }
                    subs[i].node = target;
                    subs[i].asking = !to.moved;
                    next.push(i);
                }
            }
            // Sent again in the client's order.
            next.sort_unstable();
            pending = next;
        }
        let replies = replies
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Reply::Raw(Bytes::from_static(REDIRECTED_TOO_OFTEN))))
            .collect();
        Ok((replies, redirected))
    }
}

impl<'a> Sub<'a> {
    fn whole(node: &Arc<Node>, args: &'a [Bytes]) -> Self {
        Sub {
            node: node.clone(),
            args: Cow::Borrowed(args),
            asking: false,
        }
    }
}

/// A multi-key command split per slot, its parts in the order of each slot's first key.
fn split<'a>(map: &SlotMap, name: &str, args: &'a [Bytes], subs: &mut Vec<Sub<'a>>) -> Plan {
    let mut parts: Vec<(u16, Vec<usize>)> = Vec::new();
    // Each slot's part by a map, not a search: a client's MGET of many keys over many slots
    // would otherwise cost keys × slots.
    let mut part_of: ahash::HashMap<u16, usize> = ahash::HashMap::default();
    for (pos, key) in args[1..].iter().enumerate() {
        let slot = slot_of(key);
        let part = *part_of.entry(slot).or_insert_with(|| {
            parts.push((slot, Vec::new()));
            parts.len() - 1
        });
        parts[part].1.push(pos);
    }
    let start = subs.len();
    for (slot, at) in &parts {
        let Some(node) = map.owner(*slot) else {
            subs.truncate(start);
            return Plan::Local(UNSERVED);
        };
        let mut part = Vec::with_capacity(at.len() + 1);
        part.push(args[0].clone());
        part.extend(at.iter().map(|&p| args[p + 1].clone()));
        subs.push(Sub {
            node: node.clone(),
            args: Cow::Owned(part),
            asking: false,
        });
    }
    if name == "mget" {
        Plan::Merge(Merge::Spread {
            len: args.len() - 1,
            positions: parts.into_iter().map(|(_, at)| at).collect(),
        })
    } else {
        Plan::Merge(Merge::Sum)
    }
}

/// SCAN with the client's cursor decoded: to the master it names, with that node's own
/// cursor. None when the cursor is not a number: any node answers Redis' error.
fn scan<'a>(map: &SlotMap, args: &'a [Bytes], subs: &mut Vec<Sub<'a>>) -> Option<Plan> {
    let cursor = Cursor::parse(args.get(1)?)?;
    let nodes = map.masters.len();
    let Some(node) = map.masters.get(cursor.node) else {
        return Some(Plan::Local(INVALID_CURSOR));
    };
    let mut own = args.to_vec();
    own[1] = Bytes::copy_from_slice(itoa::Buffer::new().format(cursor.at).as_bytes());
    subs.push(Sub {
        node: node.clone(),
        args: Cow::Owned(own),
        asking: false,
    });
    Some(Plan::Scan {
        node: cursor.node,
        nodes,
    })
}

/// A SCAN cursor over the whole cluster: the master's index (in the map's order) in the top
/// `NODE_BITS` bits, that master's own cursor in the rest. Cursor 0 is master 0's start;
/// when a master's scan ends (its cursor 0), the next master's start is returned, and 0 after
/// the last. A master's own cursor is below its table size (a power of two), far below 2^54.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Cursor {
    node: usize,
    at: u64,
}

const NODE_BITS: u32 = 10;
const AT_BITS: u32 = 64 - NODE_BITS;

impl Cursor {
    /// The client's cursor, read as Redis reads one (an unsigned decimal).
    fn parse(arg: &[u8]) -> Option<Cursor> {
        if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u64 = std::str::from_utf8(arg).ok()?.parse().ok()?;
        Some(Cursor {
            node: (n >> AT_BITS) as usize,
            at: n & ((1 << AT_BITS) - 1),
        })
    }

    /// The cursor to give the client after master `node` of `nodes` answered `at`; None
    /// when it does not fit.
    fn after(node: usize, nodes: usize, at: u64) -> Option<u64> {
        let (node, at) = match at {
            0 if node + 1 < nodes => (node + 1, 0),
            0 => return Some(0),
            at => (node, at),
        };
        if at >> AT_BITS != 0 || node >> NODE_BITS != 0 {
            return None;
        }
        Some(((node as u64) << AT_BITS) | at)
    }
}

/// A SCAN reply with its cursor re-encoded (`Cursor::after`); any other reply as it is.
fn scan_reply(reply: Bytes, node: usize, nodes: usize) -> Bytes {
    let Some(rest) = reply.strip_prefix(b"*2\r\n$") else {
        return reply;
    };
    let Some(nl) = memchr::memchr(b'\n', rest) else {
        return reply;
    };
    let len = rest
        .get(..nl.saturating_sub(1))
        .and_then(pipe::decimal)
        .and_then(|n| usize::try_from(n).ok());
    let Some(len) = len else { return reply };
    let start = 5 + nl + 1;
    let Some(cursor) = reply.get(start..start + len) else {
        return reply;
    };
    let own = std::str::from_utf8(cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok());
    let Some(next) = own.and_then(|at| Cursor::after(node, nodes, at)) else {
        return Bytes::from_static(b"-ERR tiergate cannot number this SCAN cursor\r\n");
    };
    let tail = &reply[start + len..];
    let text = itoa::Buffer::new().format(next).to_owned();
    let mut out = Vec::with_capacity(reply.len() + 24);
    out.extend_from_slice(b"*2\r\n$");
    out.extend_from_slice(itoa::Buffer::new().format(text.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(tail);
    Bytes::from(out)
}

/// A command's reply from its parts' replies.
fn answer(plan: Plan, mut parts: Vec<Reply>) -> Reply {
    let mut raw = Vec::with_capacity(parts.len());
    let mut dropped = 0;
    for p in parts.drain(..) {
        match p {
            Reply::Raw(b) => raw.push(b),
            Reply::TooLarge(n) => dropped += n,
            // Raw calls answer raw.
            Reply::Value(_) | Reply::Error { .. } => {
                return Reply::Raw(Bytes::from_static(
                    b"-ERR a forwarded reply was decoded\r\n",
                ))
            }
        }
    }
    if dropped > 0 {
        return Reply::TooLarge(dropped + raw.iter().map(Bytes::len).sum::<usize>());
    }
    match plan {
        Plan::Local(reply) => Reply::Raw(Bytes::from_static(reply)),
        Plan::One => raw
            .pop()
            .map_or_else(|| Reply::Raw(Bytes::from_static(UNSERVED)), Reply::Raw),
        Plan::Merge(how) => Reply::Raw(merge::merge(&how, &raw)),
        Plan::Scan { node, nodes } => match raw.pop() {
            Some(r) => Reply::Raw(scan_reply(r, node, nodes)),
            None => Reply::Raw(Bytes::from_static(UNSERVED)),
        },
    }
}

/// The replies of a run held to `limit` together, as one connection holds them: the reply
/// that passes it, and every one after it, is dropped (`Reply::TooLarge`).
fn bound(replies: &mut [Reply], limit: usize) {
    let mut held = 0usize;
    let mut over = false;
    for r in replies {
        match r {
            Reply::Raw(b) if !over && held + b.len() <= limit => held += b.len(),
            Reply::Raw(b) => {
                over = true;
                *r = Reply::TooLarge(b.len());
            }
            Reply::TooLarge(_) => over = true,
            Reply::Value(_) | Reply::Error { .. } => {}
        }
    }
}

/// SPUBLISH of `key` on `channel`'s shard of `slot`.
fn spublish(channel: &str, slot: u16, key: Bytes) -> Vec<Bytes> {
    vec![
        Bytes::from_static(b"SPUBLISH"),
        Bytes::from(shard_channel(channel, slot)),
        key,
    ]
}

/// Pushes the announcement of each of `keys` (to its slot's master); how many.
fn announcements(map: &SlotMap, channel: &str, keys: &[Bytes], subs: &mut Vec<Sub<'_>>) -> usize {
    let mut n = 0;
    for key in keys {
        let slot = slot_of(key);
        // A slot no master serves took no write.
        if let Some(node) = map.owner(slot) {
            subs.push(Sub {
                node: node.clone(),
                args: Cow::Owned(spublish(channel, slot, key.clone())),
                asking: false,
            });
            n += 1;
        }
    }
    n
}

/// Where a MOVED or ASK sends a command.
#[derive(Debug, PartialEq, Eq)]
struct Redirection {
    moved: bool,
    slot: u16,
    host: String,
    port: u16,
}

/// The redirection a reply is, if it is one. `from`: the host of the node that sent it,
/// which an empty host means (Redis' "unknown endpoint").
fn redirection(reply: &Reply, from: &str) -> Option<Redirection> {
    let Reply::Raw(b) = reply else { return None };
    let (moved, rest) = if let Some(rest) = b.strip_prefix(b"-MOVED ") {
        (true, rest)
    } else {
        (false, b.strip_prefix(b"-ASK ")?)
    };
    let text = std::str::from_utf8(rest.strip_suffix(b"\r\n")?).ok()?;
    let (slot, addr) = text.split_once(' ')?;
    let slot: u16 = slot.parse().ok().filter(|s| *s < SLOTS)?;
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = if host.is_empty() { from } else { host };
    Some(Redirection {
        moved,
        slot,
        host: host.to_owned(),
        port,
    })
}

/// One range of CLUSTER SLOTS: its slots and their master.
#[derive(Debug, PartialEq, Eq)]
struct SlotRange {
    start: u16,
    end: u16,
    host: String,
    port: u16,
}

/// CLUSTER SLOTS' reply: `[start, end, [host, port, id, ...], replicas...]` per range. An
/// empty host is the node asked (`asked`); a range whose master's address is unknown (`?`)
/// is left out.
fn parse_slots(v: &Value, asked: &str) -> Result<Vec<SlotRange>, String> {
    let Value::Array(entries) = v else {
        return Err("CLUSTER SLOTS did not answer an array".into());
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let Value::Array(fields) = e else {
            return Err("a CLUSTER SLOTS entry is not an array".into());
        };
        let slot = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => u16::try_from(*n).ok().filter(|s| *s < SLOTS),
            _ => None,
        };
        let (Some(start), Some(end)) = (slot(fields.first()), slot(fields.get(1))) else {
            return Err("a CLUSTER SLOTS range is not two slots".into());
        };
        let Some(Value::Array(master)) = fields.get(2) else {
            return Err("a CLUSTER SLOTS range has no master".into());
        };
        let host = match master.first() {
            Some(Value::BulkString(h)) => String::from_utf8_lossy(h).into_owned(),
            Some(Value::SimpleString(h)) => h.clone(),
            _ => return Err("a CLUSTER SLOTS master has no host".into()),
        };
        let port = match master.get(1) {
            Some(Value::Int(p)) => u16::try_from(*p).map_err(|_| "a port out of range")?,
            _ => return Err("a CLUSTER SLOTS master has no port".into()),
        };
        if host == "?" || start > end {
            continue;
        }
        let host = if host.is_empty() {
            asked.to_owned()
        } else {
            host
        };
        out.push(SlotRange {
            start,
            end,
            host,
            port,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::table::redis_7_0;
    use std::time::Duration;

    fn raw(s: &str) -> Reply {
        Reply::Raw(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn moved_and_ask_are_read() {
        assert_eq!(
            redirection(&raw("-MOVED 3999 127.0.0.1:6381\r\n"), "h"),
            Some(Redirection {
                moved: true,
                slot: 3999,
                host: "127.0.0.1".into(),
                port: 6381
            })
        );
        assert_eq!(
            redirection(&raw("-ASK 0 ::1:7000\r\n"), "h"),
            Some(Redirection {
                moved: false,
                slot: 0,
                host: "::1".into(),
                port: 7000
            })
        );
        // An unknown endpoint: the node that answered.
        assert_eq!(
            redirection(&raw("-MOVED 5 :7001\r\n"), "10.0.0.9").map(|r| r.host),
            Some("10.0.0.9".into())
        );
        for not in [
            "-ERR MOVED 1 h:1\r\n",
            "-MOVED 16384 h:1\r\n",
            "-MOVED x h:1\r\n",
            "-MOVED 1 h\r\n",
            "-MOVED 1 h:99999\r\n",
            "+MOVED 1 h:1\r\n",
            "-MOVED 1 h:1",
        ] {
            assert_eq!(redirection(&raw(not), "h"), None, "{not}");
        }
        assert_eq!(redirection(&Reply::TooLarge(10), "h"), None);
    }

    #[test]
    fn cluster_slots_is_read_with_its_edge_cases() {
        let s = |b: &str| Value::BulkString(b.as_bytes().to_vec());
        let v = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![s("127.0.0.1"), Value::Int(30001), s("id1")]),
                Value::Array(vec![s("127.0.0.1"), Value::Int(30004), s("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                Value::Array(vec![s(""), Value::Int(30002)]),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                Value::Array(vec![s("?"), Value::Int(30003)]),
            ]),
        ]);
        let ranges = parse_slots(&v, "10.1.1.1").unwrap();
        assert_eq!(ranges.len(), 2);
        assert_eq!(
            ranges[1],
            SlotRange {
                start: 5461,
                end: 10922,
                host: "10.1.1.1".into(),
                port: 30002
            }
        );
        assert!(parse_slots(&Value::Int(1), "h").is_err());
        let bad = Value::Array(vec![Value::Array(vec![Value::Int(0), Value::Int(16384)])]);
        assert!(parse_slots(&bad, "h").is_err());
    }

    #[test]
    fn scan_cursors_name_the_node_and_its_own_cursor() {
        assert_eq!(Cursor::parse(b"0"), Some(Cursor { node: 0, at: 0 }));
        assert_eq!(Cursor::parse(b"x"), None);
        assert_eq!(Cursor::parse(b"-1"), None);
        assert_eq!(Cursor::parse(b""), None);
        assert_eq!(Cursor::parse(b"18446744073709551616"), None);
        // Within a node, then on to the next, then done.
        let c = Cursor::after(1, 3, 12).unwrap();
        assert_eq!(
            Cursor::parse(c.to_string().as_bytes()),
            Some(Cursor { node: 1, at: 12 })
        );
        let c = Cursor::after(1, 3, 0).unwrap();
        assert_eq!(
            Cursor::parse(c.to_string().as_bytes()),
            Some(Cursor { node: 2, at: 0 })
        );
        assert_eq!(Cursor::after(2, 3, 0), Some(0));
        assert_eq!(Cursor::after(0, 1, 1 << 60), None);
        // The reply's cursor is rewritten, the keys kept as sent.
        let r = scan_reply(
            Bytes::from_static(b"*2\r\n$1\r\n0\r\n*1\r\n$1\r\nk\r\n"),
            0,
            2,
        );
        let want = format!(
            "*2\r\n${}\r\n{}\r\n*1\r\n$1\r\nk\r\n",
            (1u64 << 54).to_string().len(),
            1u64 << 54
        );
        assert_eq!(r, want.as_bytes());
        let r = scan_reply(Bytes::from_static(b"*2\r\n$2\r\n17\r\n*0\r\n"), 0, 2);
        assert_eq!(r, &b"*2\r\n$2\r\n17\r\n*0\r\n"[..]);
        let err = Bytes::from_static(b"-ERR invalid cursor\r\n");
        assert_eq!(scan_reply(err.clone(), 0, 2), err);
    }

    #[test]
    fn replies_past_the_limit_are_dropped_from_there_on() {
        let mut r = vec![raw("+1234\r\n"), raw("+1234\r\n"), raw("+1\r\n")];
        bound(&mut r, 10);
        assert_eq!(r[0], raw("+1234\r\n"));
        assert_eq!(r[1], Reply::TooLarge(7));
        assert_eq!(r[2], Reply::TooLarge(4), "after one dropped, every one is");
    }

    /// A map of three masters over slots 0-5460, 5461-10922, 10923-16383 (no connection is
    /// made: routing only).
    fn three() -> (Arc<Cluster>, Arc<SlotMap>) {
        let client = redis::Client::open("redis://127.0.0.1:1").unwrap();
        let seed = Target::of(&client, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        let cluster = Arc::new(Cluster::new(vec![seed], 1, 8, 4));
        let range = |start, end, port| SlotRange {
            start,
            end,
            host: "127.0.0.1".into(),
            port,
        };
        cluster.install(&[
            range(10923, 16383, 3),
            range(0, 5460, 1),
            range(5461, 10922, 2),
        ]);
        let map = cluster.map.load_full().unwrap();
        (cluster, map)
    }

    fn args(line: &str) -> Vec<Bytes> {
        line.split(' ')
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    }

    /// The plan of `line`, and each part's node (its port) and arguments.
    fn route(line: &str) -> (Plan, Vec<(u16, String)>) {
        let (cluster, map) = three();
        let a = args(line);
        let mut subs = Vec::new();
        let plan = cluster.plan(&map, redis_7_0(), &a, &mut subs);
        let parts = subs
            .iter()
            .map(|s| {
                let text: Vec<String> = s
                    .args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                (s.node.port, text.join(" "))
            })
            .collect();
        (plan, parts)
    }

    #[tokio::test]
    async fn commands_are_routed_by_slot_policy_or_split() {
        let (_, map) = three();
        assert_eq!(
            map.masters.iter().map(|m| m.port).collect::<Vec<_>>(),
            [1, 2, 3],
            "masters in slot order"
        );
        let port = |key: &str| map.owner(slot_of(key.as_bytes())).unwrap().port;

        let (plan, parts) = route("HSET user:1 f v");
        assert!(matches!(plan, Plan::One));
        assert_eq!(parts, [(port("user:1"), "HSET user:1 f v".into())]);
        // One slot by hash tag; SPUBLISH by its shard channel.
        let (plan, _) = route("RENAME {u}a {u}b");
        assert!(matches!(plan, Plan::One));
        let (_, parts) = route("SPUBLISH chan m");
        assert_eq!(parts[0].0, port("chan"));

        let (plan, parts) = route("RENAME a b");
        assert!(matches!(plan, Plan::Local(CROSSSLOT)), "{parts:?}");
        assert!(parts.is_empty());
        let (plan, _) = route("MSETNX a 1 b 2");
        assert!(matches!(plan, Plan::Local(CROSSSLOT)));

        // Split by slot, in the order of each slot's first key.
        let (a, b) = ("a", "b");
        assert_ne!(slot_of(a.as_bytes()), slot_of(b.as_bytes()));
        let (plan, parts) = route("MGET a b {a}x");
        assert_eq!(
            parts,
            [(port(a), "MGET a {a}x".into()), (port(b), "MGET b".into())]
        );
        match plan {
            Plan::Merge(Merge::Spread { positions, len }) => {
                assert_eq!((positions, len), (vec![vec![0, 2], vec![1]], 3));
            }
            _ => panic!("MGET not spread"),
        }
        let (plan, parts) = route("TOUCH a b");
        assert!(matches!(plan, Plan::Merge(Merge::Sum)));
        assert_eq!(parts.len(), 2);

        // Keyless: by the request policy, or one node in turn.
        let (plan, parts) = route("DBSIZE");
        assert!(matches!(plan, Plan::Merge(Merge::Sum)));
        assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), [1, 2, 3]);
        let (plan, parts) = route("KEYS *");
        assert!(matches!(plan, Plan::Merge(Merge::Collect)));
        assert_eq!(parts.len(), 3);
        let (plan, parts) = route("FLUSHALL");
        assert!(matches!(plan, Plan::Merge(Merge::AllSucceeded)));
        assert_eq!(parts.len(), 3);
        let (plan, parts) = route("SCRIPT EXISTS abc");
        assert!(matches!(plan, Plan::Merge(Merge::And)));
        assert_eq!(parts.len(), 3);
        let (plan, parts) = route("MEMORY STATS");
        assert!(matches!(plan, Plan::One), "a special merge: one node");
        assert_eq!(parts.len(), 1);
        let (plan, parts) = route("ECHO x");
        assert!(matches!(plan, Plan::One));
        assert_eq!(parts.len(), 1);
        let (_, parts) = route("NOSUCHCOMMAND a b");
        assert_eq!(parts.len(), 1);

        // SCAN: the cursor names the node.
        let (plan, parts) = route("SCAN 0 COUNT 5");
        assert!(matches!(plan, Plan::Scan { node: 0, nodes: 3 }));
        assert_eq!(parts, [(1, "SCAN 0 COUNT 5".into())]);
        let c = Cursor::after(1, 3, 9).unwrap();
        let (_, parts) = route(&format!("SCAN {c}"));
        assert_eq!(parts, [(2, "SCAN 9".into())]);
        let (plan, _) = route(&format!("SCAN {}", 7u64 << 54));
        assert!(matches!(plan, Plan::Local(INVALID_CURSOR)));
        let (plan, parts) = route("SCAN x");
        assert!(matches!(plan, Plan::One), "Redis answers a bad cursor");
        assert_eq!(parts[0].1, "SCAN x");
    }

    #[tokio::test]
    async fn a_moved_slot_is_patched_into_the_map() {
        let (cluster, map) = three();
        let slot = slot_of(b"a");
        let owner = map.owner(slot).unwrap().clone();
        let other = map
            .masters
            .iter()
            .find(|m| !Arc::ptr_eq(m, &owner))
            .unwrap()
            .clone();
        cluster.moved(slot, &other);
        let now = cluster.map.load_full().unwrap();
        assert!(Arc::ptr_eq(now.owner(slot).unwrap(), &other));
        assert!(Arc::ptr_eq(
            now.owner(slot + 1).unwrap(),
            map.owner(slot + 1).unwrap()
        ));
        // A node the map does not know waits for the next full read.
        let stranger = cluster.node("127.0.0.1", 9);
        cluster.moved(slot, &stranger);
        assert!(Arc::ptr_eq(
            cluster.map.load_full().unwrap().owner(slot).unwrap(),
            &other
        ));
    }

    #[test]
    fn announcements_go_to_each_keys_master_on_its_shard_channel() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let (_, map) = three();
        let keys = [Bytes::from_static(b"a"), Bytes::from_static(b"b")];
        let mut subs = Vec::new();
        assert_eq!(announcements(&map, "inv", &keys, &mut subs), 2);
        for (sub, key) in subs.iter().zip(&keys) {
            let slot = slot_of(key);
            assert!(Arc::ptr_eq(&sub.node, map.owner(slot).unwrap()));
            assert_eq!(sub.args[0], &b"SPUBLISH"[..]);
            assert_eq!(slot_of(&sub.args[1]), slot);
            assert_eq!(sub.args[2], key);
        }
    }
}
