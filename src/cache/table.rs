//! Redis' command table, as the server describes itself in its `COMMAND` reply: for any
//! request, which arguments are keys and whether each is read or written, the command's
//! flags, ACL categories and routing tips. The gateway forwards every command it does not
//! serve; to keep L1 coherent (a command that writes a key must drop it from L1) and to apply
//! per-user key-prefix permissions it must know this of commands it has never heard of.
//!
//! It is read from the server rather than written down here because the server is the only
//! authority: a hand-kept list lags every Redis release and every loaded module, and a write
//! missing from it would go past the cache unseen. Redis 7 describes keys with key specs (a
//! `begin_search` step and a `find_keys` step); [`Spec::keys`] follows Redis'
//! `getKeysUsingKeySpecs` (src/db.c, 7.0) step for step, and says when the specs cannot be
//! trusted ([`Keys::complete`]) instead of guessing: Redis itself then falls back to C code of
//! the command's own that no client can run.
//!
//! Both reply shapes are read, RESP2 (maps as flat arrays) and RESP3 (maps and sets), so the
//! table loads whichever protocol the connection speaks. The reply of a server older than 7
//! (no key specs) is refused rather than read as "no keys".

use bytes::Bytes;
use redis::Value;
use smallvec::SmallVec;
use std::collections::HashMap;

/// Keys of one request that hash to several cluster slots (`Table::slot`).
#[derive(Debug, PartialEq, Eq)]
pub struct CrossSlot;

/// Longest command or subcommand name looked up; a longer one is unknown. Lookups lowercase
/// the name into a stack buffer of this size so the hot path never allocates. Redis 7.0's
/// longest name is 20 bytes (`georadiusbymember_ro`).
const MAX_NAME: usize = 64;

type ByName<V> = HashMap<Box<[u8]>, V, ahash::RandomState>;

/// Every command the server lists, by lowercase name.
#[derive(Debug, PartialEq)]
pub struct Table {
    commands: ByName<Command>,
}

#[derive(Debug, PartialEq)]
struct Command {
    spec: Spec,
    /// By the lowercase part after `|`: `set` for `config|set`. Empty unless a container.
    subcommands: ByName<Spec>,
}

/// What Redis says of one command or subcommand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// Lowercase, as Redis names it: `get`, or `config|set` for a subcommand.
    pub name: String,
    /// Arguments including the command name (and subcommand name); negative: at least that many.
    pub arity: i64,
    pub flags: Flags,
    pub acl: AclCategories,
    pub request_policy: Option<RequestPolicy>,
    pub response_policy: Option<ResponsePolicy>,
    pub nondeterministic_output: bool,
    pub nondeterministic_output_order: bool,
    /// The pre-7 (first, last, step) triplet; 0,0,0 when it cannot describe the keys.
    /// Kept for reporting: [`Spec::keys`] reads only the key specs.
    pub first_key: i64,
    pub last_key: i64,
    pub key_step: i64,
    pub key_specs: Vec<KeySpec>,
}

/// One Redis 7 key spec: where to start looking, then which arguments from there are keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub flags: KeyFlags,
    pub begin_search: BeginSearch,
    pub find_keys: FindKeys,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BeginSearch {
    /// The argument at this index.
    Index(i64),
    /// After the argument equal (ASCII case-insensitive) to `keyword`, searched from index
    /// `startfrom`, or from `argc + startfrom` towards the start when negative.
    Keyword { keyword: Box<[u8]>, startfrom: i64 },
    /// Only the command's own code knows.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FindKeys {
    /// Keys from the start up to `lastkey` after it (negative: counted from the end), every
    /// `keystep`; with `limit` > 0 and `lastkey` -1, the first 1/`limit` of what remains.
    Range {
        lastkey: i64,
        keystep: i64,
        limit: i64,
    },
    /// The argument `keynumidx` after the start says how many keys follow, the first of them
    /// `firstkey` after the start, every `keystep`.
    Keynum {
        keynumidx: i64,
        firstkey: i64,
        keystep: i64,
    },
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestPolicy {
    AllNodes,
    AllShards,
    MultiShard,
    Special,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponsePolicy {
    OneSucceeded,
    AllSucceeded,
    AggLogicalAnd,
    AggLogicalOr,
    AggMin,
    AggMax,
    AggSum,
    Special,
}

/// The keys of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Keys {
    /// In key-spec order; an argument named by two specs appears twice. Inline up to four:
    /// looked up for every forwarded command.
    pub found: SmallVec<[Key; 4]>,
    /// False when the key specs cannot be followed to the end for these arguments (a spec
    /// Redis marks incomplete or unknown, a key count that is not a number or points past the
    /// end, movable keys no spec describes): other arguments may be keys too, so `found` is
    /// a lower bound and the caller must act as if any key could be touched.
    pub complete: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    /// Into the request's arguments; always less than their count.
    pub index: usize,
    pub access: Access,
}

/// How a command uses a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access {
    pub read: bool,
    pub write: bool,
}

impl Access {
    pub const READ: Self = Self {
        read: true,
        write: false,
    };
    pub const WRITE: Self = Self {
        read: false,
        write: true,
    };
    pub const READ_WRITE: Self = Self {
        read: true,
        write: true,
    };
}

/// A set of named flags as Redis lists them, with one constant per flag. Names Redis sends
/// that are not listed are ignored: a newer server may add flags this build does not know.
macro_rules! bitset {
    ($(#[$meta:meta])* $name:ident($repr:ty) { $($flag:ident = $bit:literal, $text:literal;)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name($repr);

        impl $name {
            $(pub const $flag: Self = Self(1 << $bit);)*
            const NAMES: &'static [(Self, &'static str)] = &[$((Self::$flag, $text)),*];

            pub const fn empty() -> Self {
                Self(0)
            }

            pub const fn bits(self) -> $repr {
                self.0
            }

            /// Every flag of `other` is set.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// Any flag of `other` is set.
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            /// The flag Redis calls `name` (ASCII case-insensitive), if this build knows it.
            pub fn from_name(name: &[u8]) -> Option<Self> {
                Self::NAMES
                    .iter()
                    .find(|(_, text)| text.as_bytes().eq_ignore_ascii_case(name))
                    .map(|&(flag, _)| flag)
            }
        }

        impl std::ops::BitOr for $name {
            type Output = Self;
            fn bitor(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }
        }

        impl std::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, other: Self) {
                self.0 |= other.0;
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let set = Self::NAMES.iter().filter(|&&(flag, _)| self.contains(flag));
                f.debug_set().entries(set.map(|(_, text)| text)).finish()
            }
        }
    };
}

bitset! {
    /// Command flags (Redis 7.0's list, and `random`/`sort_for_script` of older servers).
    /// Redis 7.0 hides `may_replicate` from `COMMAND`; it is read if a server sends it.
    Flags(u32) {
        WRITE = 0, "write";
        READONLY = 1, "readonly";
        DENYOOM = 2, "denyoom";
        MODULE = 3, "module";
        ADMIN = 4, "admin";
        PUBSUB = 5, "pubsub";
        NOSCRIPT = 6, "noscript";
        BLOCKING = 7, "blocking";
        LOADING = 8, "loading";
        STALE = 9, "stale";
        SKIP_MONITOR = 10, "skip_monitor";
        SKIP_SLOWLOG = 11, "skip_slowlog";
        ASKING = 12, "asking";
        FAST = 13, "fast";
        NO_AUTH = 14, "no_auth";
        MAY_REPLICATE = 15, "may_replicate";
        NO_MANDATORY_KEYS = 16, "no_mandatory_keys";
        NO_ASYNC_LOADING = 17, "no_async_loading";
        NO_MULTI = 18, "no_multi";
        MOVABLEKEYS = 19, "movablekeys";
        ALLOW_BUSY = 20, "allow_busy";
        RANDOM = 21, "random";
        SORT_FOR_SCRIPT = 22, "sort_for_script";
    }
}

bitset! {
    /// ACL categories, without the `@` Redis writes before them.
    AclCategories(u32) {
        KEYSPACE = 0, "keyspace";
        READ = 1, "read";
        WRITE = 2, "write";
        SET = 3, "set";
        SORTEDSET = 4, "sortedset";
        LIST = 5, "list";
        HASH = 6, "hash";
        STRING = 7, "string";
        BITMAP = 8, "bitmap";
        HYPERLOGLOG = 9, "hyperloglog";
        GEO = 10, "geo";
        STREAM = 11, "stream";
        PUBSUB = 12, "pubsub";
        ADMIN = 13, "admin";
        FAST = 14, "fast";
        SLOW = 15, "slow";
        BLOCKING = 16, "blocking";
        DANGEROUS = 17, "dangerous";
        CONNECTION = 18, "connection";
        TRANSACTION = 19, "transaction";
        SCRIPTING = 20, "scripting";
    }
}

bitset! {
    /// Key-spec flags: how the keys a spec finds are used, and how far the spec can be trusted.
    KeyFlags(u16) {
        RO = 0, "RO";
        RW = 1, "RW";
        OW = 2, "OW";
        RM = 3, "RM";
        ACCESS = 4, "access";
        UPDATE = 5, "update";
        INSERT = 6, "insert";
        DELETE = 7, "delete";
        NOT_KEY = 8, "not_key";
        INCOMPLETE = 9, "incomplete";
        VARIABLE_FLAGS = 10, "variable_flags";
    }
}

impl Table {
    /// Reads the reply of `COMMAND` (RESP2 or RESP3).
    pub fn parse(reply: &Value) -> Result<Table, String> {
        let entries = items(reply).ok_or("COMMAND reply is not an array")?;
        let mut commands = ByName::default();
        for entry in entries {
            let (key, command) = parse_command(entry)?;
            commands.insert(key, command);
        }
        if commands.is_empty() {
            return Err("COMMAND reply lists no commands".into());
        }
        Ok(Table { commands })
    }

    /// Sends `COMMAND` and reads the reply.
    pub async fn load(conn: &mut impl redis::aio::ConnectionLike) -> Result<Table, String> {
        let reply: Value = redis::cmd("COMMAND")
            .query_async(conn)
            .await
            .map_err(|e| format!("COMMAND: {e}"))?;
        Table::parse(&reply)
    }

    /// The spec for a request: its command by `args[0]`, and for a container (CONFIG, OBJECT,
    /// ...) its subcommand by `args[1]`, or the container itself when `args[1]` is missing or
    /// not one of its subcommands. Both names match ASCII case-insensitively.
    pub fn lookup(&self, args: &[Bytes]) -> Option<&Spec> {
        let mut buf = [0; MAX_NAME];
        let command = self.commands.get(lowercase(args.first()?, &mut buf)?)?;
        Some(command.subcommand(args.get(1)).unwrap_or(&command.spec))
    }

    /// The cluster hash slot a request goes to: that of its keys (and shard channels: see
    /// `Spec::routing_keys`); None when it names none (or Redis does not know it); Err when
    /// they hash to several slots, which a cluster answers `-CROSSSLOT`.
    pub fn slot(&self, args: &[Bytes]) -> Result<Option<u16>, CrossSlot> {
        let Some(spec) = self.lookup(args) else {
            return Ok(None);
        };
        let mut slots = spec
            .routing_keys(args)
            .into_iter()
            .map(|k| super::conn::slot_of(&args[k]));
        let Some(first) = slots.next() else {
            return Ok(None);
        };
        if slots.all(|s| s == first) {
            Ok(Some(first))
        } else {
            Err(CrossSlot)
        }
    }

    /// Commands, not counting subcommands (what `COMMAND COUNT` says).
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Every command and subcommand, in no particular order.
    pub fn specs(&self) -> impl Iterator<Item = &Spec> {
        self.commands
            .values()
            .flat_map(|c| std::iter::once(&c.spec).chain(c.subcommands.values()))
    }
}

impl Command {
    fn subcommand(&self, arg: Option<&Bytes>) -> Option<&Spec> {
        if self.subcommands.is_empty() {
            return None;
        }
        let mut buf = [0; MAX_NAME];
        self.subcommands.get(lowercase(arg?, &mut buf)?)
    }
}

/// `name` in ASCII lowercase, in `buf`; `None` when it does not fit (no such name is looked up).
fn lowercase<'a>(name: &[u8], buf: &'a mut [u8; MAX_NAME]) -> Option<&'a [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, c) in out.iter_mut().zip(name) {
        *o = c.to_ascii_lowercase();
    }
    Some(out)
}

impl Spec {
    /// `argc` arguments (command name included) are as many as Redis accepts.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = i64::try_from(argc).unwrap_or(i64::MAX);
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= self.arity.saturating_neg()
        }
    }

    /// The keys of a request (`args[0]` the command name), as Redis' `getKeysUsingKeySpecs`
    /// finds them. Where Redis would give up on a spec and ask the command's own code, this
    /// keeps what the other specs found and says `complete: false`.
    ///
    /// Each key's access is its spec's. Where Redis marks the spec `variable_flags` (SET,
    /// BITFIELD: options decide whether the key is read or written) that is the union.
    ///
    /// One difference: a key count of 0 is zero keys, complete. Redis treats it as a spec it
    /// cannot follow, and the command's own code then finds no keys either.
    pub fn keys(&self, args: &[Bytes]) -> Keys {
        let mut keys = Keys {
            found: SmallVec::new(),
            complete: !self.keys_beyond_specs(),
        };
        for spec in self.real_key_specs() {
            if !spec.find(args, &mut keys.found) {
                keys.complete = false;
            }
        }
        keys
    }

    /// The arguments that decide where a request goes in a cluster: every argument Redis' key
    /// specs name, `not_key` ones included (SPUBLISH's shard channel routes like a key), in
    /// spec order. A spec that cannot be followed names none: wherever the request then goes,
    /// Redis answers it (with the error its arguments deserve, as a rule).
    pub fn routing_keys(&self, args: &[Bytes]) -> Vec<usize> {
        let mut found = Vec::new();
        for spec in &self.key_specs {
            spec.find(args, &mut found);
        }
        found.into_iter().map(|k| k.index).collect()
    }

    /// It may write: the write flag, `may_replicate`, or a key spec that writes (EVAL and
    /// FCALL have no write flag; PFCOUNT is `readonly` but may update the key it counts).
    pub fn writes(&self) -> bool {
        self.flags.intersects(Flags::WRITE | Flags::MAY_REPLICATE)
            || self.real_key_specs().any(|s| s.access().write)
    }

    /// Specs of keys proper: `not_key` ones (SPUBLISH's shard channel) only route in a cluster.
    fn real_key_specs(&self) -> impl Iterator<Item = &KeySpec> {
        self.key_specs
            .iter()
            .filter(|s| !s.flags.contains(KeyFlags::NOT_KEY))
    }

    /// Movable keys that the key specs do not settle: Redis then asks the command's getkeys
    /// code (or a module's getkeys callback), which no client can run. With no spec there is
    /// nothing to follow; with `variable_flags` Redis does not use the specs at all.
    fn keys_beyond_specs(&self) -> bool {
        self.flags.contains(Flags::MOVABLEKEYS)
            && (self.real_key_specs().next().is_none()
                || self
                    .real_key_specs()
                    .any(|s| s.flags.contains(KeyFlags::VARIABLE_FLAGS)))
    }
}

/// Where a key spec's search starts.
enum Begin {
    At(i64),
    /// The keyword is not there: this spec names no key in this request.
    Absent,
    Unknown,
}

/// The arguments a key spec's `find_keys` step names.
enum Span {
    Keys {
        first: i64,
        last: i64,
        step: i64,
    },
    /// A key count of 0.
    None,
    /// Cannot be followed: unknown, or the arguments do not fit it (a syntax error Redis will
    /// reply to, or a spec this code does not understand).
    Invalid,
}

impl KeySpec {
    /// How the keys this spec finds are used. Flags naming no use at all (a module's spec
    /// may) count as both, the one safe reading.
    pub fn access(&self) -> Access {
        let f = self.flags;
        let read = f.intersects(KeyFlags::RO | KeyFlags::RW | KeyFlags::ACCESS);
        let write = f.intersects(
            KeyFlags::RW
                | KeyFlags::OW
                | KeyFlags::RM
                | KeyFlags::INSERT
                | KeyFlags::UPDATE
                | KeyFlags::DELETE,
        );
        if read || write {
            Access { read, write }
        } else {
            Access::READ_WRITE
        }
    }

    /// Appends the keys of this spec in `args` to `out`; false when the spec cannot be
    /// trusted for them (what Redis' `invalid_spec` label covers, and `incomplete`).
    fn find(&self, args: &[Bytes], out: &mut impl Extend<Key>) -> bool {
        let first = match self.begin_search.start(args) {
            Begin::At(first) => first,
            Begin::Absent => return true,
            Begin::Unknown => return false,
        };
        let (first, last, step) = match self.find_keys.span(first, args) {
            Span::Keys { first, last, step } => (first, last, step),
            Span::None => return true,
            Span::Invalid => return false,
        };
        let Some((first, last, step)) = in_bounds(first, last, step, args.len()) else {
            return false;
        };
        let access = self.access();
        out.extend(
            (first..=last)
                .step_by(step)
                .map(|index| Key { index, access }),
        );
        !self.flags.contains(KeyFlags::INCOMPLETE)
    }
}

/// Redis' "first or last is out of bounds" check, plus what Redis leaves to its own table
/// being sane: a step of at least 1 (0 would never end) and no key at the command name.
fn in_bounds(first: i64, last: i64, step: i64, argc: usize) -> Option<(usize, usize, usize)> {
    let first = usize::try_from(first).ok().filter(|&f| f >= 1)?;
    let last = usize::try_from(last)
        .ok()
        .filter(|&l| l >= first && l < argc)?;
    let step = usize::try_from(step).ok().filter(|&s| s >= 1)?;
    Some((first, last, step))
}

impl BeginSearch {
    fn start(&self, args: &[Bytes]) -> Begin {
        match self {
            BeginSearch::Index(pos) => Begin::At(*pos),
            BeginSearch::Keyword { keyword, startfrom } => {
                match find_keyword(keyword, *startfrom, args) {
                    Some(at) => Begin::At(at + 1),
                    None => Begin::Absent,
                }
            }
            BeginSearch::Unknown => Begin::Unknown,
        }
    }
}

/// Redis' keyword search, bounds and all: forwards from `startfrom` up to but not including
/// the last argument, or backwards from `argc + startfrom` down to but not including index 1.
/// Each step moves one argument towards a bound it stops at, so it ends within `argc` steps.
fn find_keyword(keyword: &[u8], startfrom: i64, args: &[Bytes]) -> Option<i64> {
    let argc = i64::try_from(args.len()).ok()?;
    let (start, end) = if startfrom > 0 {
        (startfrom, argc - 1)
    } else {
        (argc.saturating_add(startfrom), 1)
    };
    let forwards = start <= end;
    let mut i = start;
    while i != end {
        let arg = usize::try_from(i)
            .ok()
            .filter(|&i| i >= 1)
            .and_then(|i| args.get(i))?;
        if arg.eq_ignore_ascii_case(keyword) {
            return Some(i);
        }
        i = if forwards { i + 1 } else { i - 1 };
    }
    None
}

impl FindKeys {
    fn span(&self, first: i64, args: &[Bytes]) -> Span {
        let argc = i64::try_from(args.len()).unwrap_or(i64::MAX);
        match *self {
            FindKeys::Range {
                lastkey,
                keystep,
                limit,
            } => match range_last(first, argc, lastkey, limit) {
                Some(last) => Span::Keys {
                    first,
                    last,
                    step: keystep,
                },
                None => Span::Invalid,
            },
            FindKeys::Keynum {
                keynumidx,
                firstkey,
                keystep,
            } => {
                let Some(numkeys) = key_count(args, first.saturating_add(keynumidx)) else {
                    return Span::Invalid;
                };
                if numkeys == 0 {
                    return Span::None;
                }
                let first = first.saturating_add(firstkey);
                Span::Keys {
                    first,
                    last: first.saturating_add(numkeys - 1),
                    step: keystep,
                }
            }
            FindKeys::Unknown => Span::Invalid,
        }
    }
}

/// The last key of a range spec, as Redis computes it; `None` for a shape Redis asserts
/// never happens (a limit with a lastkey other than -1, a negative limit).
fn range_last(first: i64, argc: i64, lastkey: i64, limit: i64) -> Option<i64> {
    if lastkey >= 0 {
        Some(first.saturating_add(lastkey))
    } else if limit == 0 {
        Some(argc.saturating_add(lastkey))
    } else if lastkey == -1 && limit > 0 {
        let share = argc.saturating_sub(first) / limit;
        Some(first.saturating_add(share).saturating_sub(1))
    } else {
        None
    }
}

/// The key count at `at`, read as Redis' `string2ll` reads it (no sign, no leading zero, no
/// space): whatever it takes for a number, Redis takes for the same number.
fn key_count(args: &[Bytes], at: i64) -> Option<i64> {
    let arg = args.get(usize::try_from(at).ok()?)?;
    match arg.as_ref() {
        b"0" => Some(0),
        [b'1'..=b'9', ..] => arg.iter().try_fold(0i64, |n, &c| {
            let digit = char::from(c).to_digit(10)?;
            n.checked_mul(10)?.checked_add(i64::from(digit))
        }),
        _ => None,
    }
}

// ---- reading the reply ----

/// One entry of the reply, and its key in the table.
fn parse_command(entry: &Value) -> Result<(Box<[u8]>, Command), String> {
    let (spec, subs) = parse_entry(entry)?;
    let mut subcommands = ByName::default();
    for sub in subs {
        let (spec, _) = parse_entry(sub)?;
        subcommands.insert(subcommand_key(&spec.name), spec);
    }
    let key = spec.name.as_bytes().into();
    Ok((key, Command { spec, subcommands }))
}

/// `set` for `config|set`.
fn subcommand_key(fullname: &str) -> Box<[u8]> {
    let name = fullname.rsplit('|').next().unwrap_or(fullname);
    name.as_bytes().into()
}

/// One command's description (an array of 10 in Redis 7), and its subcommands' entries.
fn parse_entry(entry: &Value) -> Result<(Spec, &[Value]), String> {
    let f = items(entry).ok_or("COMMAND entry is not an array")?;
    if f.len() < 10 {
        return Err(format!(
            "COMMAND entry of {} fields, not 10: key specs need Redis 7 or later",
            f.len()
        ));
    }
    let name = text(&f[0]).ok_or("COMMAND entry without a name")?;
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    let subs = items(&f[9]).ok_or_else(|| format!("COMMAND entry {name}: subcommands"))?;
    match parse_fields(&f[1..9]) {
        Ok(spec) => Ok((Spec { name, ..spec }, subs)),
        Err(what) => Err(format!("COMMAND entry {name}: {what}")),
    }
}

/// Fields 1 to 8 of an entry, arity to key specs; the name is left empty.
fn parse_fields(f: &[Value]) -> Result<Spec, &'static str> {
    let [arity, flags, first, last, step, acl, tips, key_specs] = f else {
        return Err("fields");
    };
    let mut spec = Spec {
        name: String::new(),
        arity: int(arity).ok_or("arity")?,
        flags: names(flags, Flags::from_name).ok_or("flags")?,
        acl: names(acl, acl_category).ok_or("ACL categories")?,
        request_policy: None,
        response_policy: None,
        nondeterministic_output: false,
        nondeterministic_output_order: false,
        first_key: int(first).ok_or("first key")?,
        last_key: int(last).ok_or("last key")?,
        key_step: int(step).ok_or("key step")?,
        key_specs: Vec::new(),
    };
    for tip in items(tips).ok_or("tips")? {
        spec.add_tip(text(tip).ok_or("tip")?);
    }
    for key_spec in items(key_specs).ok_or("key specs")? {
        spec.key_specs
            .push(parse_key_spec(key_spec).ok_or("key spec")?);
    }
    Ok(spec)
}

impl Spec {
    /// Reads one command tip; tips this build does not know are ignored.
    fn add_tip(&mut self, tip: &[u8]) {
        match tip {
            b"nondeterministic_output" => self.nondeterministic_output = true,
            b"nondeterministic_output_order" => self.nondeterministic_output_order = true,
            _ => {
                if let Some(policy) = tip.strip_prefix(b"request_policy:") {
                    self.request_policy = request_policy(policy);
                } else if let Some(policy) = tip.strip_prefix(b"response_policy:") {
                    self.response_policy = response_policy(policy);
                }
            }
        }
    }
}

fn request_policy(name: &[u8]) -> Option<RequestPolicy> {
    Some(match name {
        b"all_nodes" => RequestPolicy::AllNodes,
        b"all_shards" => RequestPolicy::AllShards,
        b"multi_shard" => RequestPolicy::MultiShard,
        b"special" => RequestPolicy::Special,
        _ => return None,
    })
}

fn response_policy(name: &[u8]) -> Option<ResponsePolicy> {
    Some(match name {
        b"one_succeeded" => ResponsePolicy::OneSucceeded,
        b"all_succeeded" => ResponsePolicy::AllSucceeded,
        b"agg_logical_and" => ResponsePolicy::AggLogicalAnd,
        b"agg_logical_or" => ResponsePolicy::AggLogicalOr,
        b"agg_min" => ResponsePolicy::AggMin,
        b"agg_max" => ResponsePolicy::AggMax,
        b"agg_sum" => ResponsePolicy::AggSum,
        b"special" => ResponsePolicy::Special,
        _ => return None,
    })
}

fn acl_category(name: &[u8]) -> Option<AclCategories> {
    AclCategories::from_name(name.strip_prefix(b"@").unwrap_or(name))
}

/// A set of flag names; names `from_name` does not know are skipped.
fn names<T: Default + std::ops::BitOrAssign>(
    v: &Value,
    from_name: fn(&[u8]) -> Option<T>,
) -> Option<T> {
    let mut set = T::default();
    for name in items(v)? {
        if let Some(flag) = from_name(text(name)?) {
            set |= flag;
        }
    }
    Some(set)
}

/// A key spec map. Search types this build does not know read as `Unknown` (keys it cannot
/// find, not an error); a known type with its fields missing is an error.
fn parse_key_spec(v: &Value) -> Option<KeySpec> {
    let flags = names(field(v, "flags")?, KeyFlags::from_name)?;
    let begin = field(v, "begin_search")?;
    let find = field(v, "find_keys")?;
    Some(KeySpec {
        flags,
        begin_search: parse_begin_search(text(field(begin, "type")?)?, field(begin, "spec")?)?,
        find_keys: parse_find_keys(text(field(find, "type")?)?, field(find, "spec")?)?,
    })
}

fn parse_begin_search(kind: &[u8], spec: &Value) -> Option<BeginSearch> {
    Some(match kind {
        b"index" => BeginSearch::Index(int(field(spec, "index")?)?),
        b"keyword" => BeginSearch::Keyword {
            keyword: text(field(spec, "keyword")?)?.into(),
            startfrom: int(field(spec, "startfrom")?)?,
        },
        _ => BeginSearch::Unknown,
    })
}

fn parse_find_keys(kind: &[u8], spec: &Value) -> Option<FindKeys> {
    let num = |name| field(spec, name).and_then(int);
    Some(match kind {
        b"range" => FindKeys::Range {
            lastkey: num("lastkey")?,
            keystep: num("keystep")?,
            limit: num("limit")?,
        },
        b"keynum" => FindKeys::Keynum {
            keynumidx: num("keynumidx")?,
            firstkey: num("firstkey")?,
            keystep: num("keystep")?,
        },
        _ => FindKeys::Unknown,
    })
}

/// The elements of an array or set (RESP3 sends flags and key specs as sets).
fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(items) | Value::Set(items) => Some(items),
        Value::Attribute { data, .. } => items(data),
        _ => None,
    }
}

fn text(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        Value::Attribute { data, .. } => text(data),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::Attribute { data, .. } => int(data),
        _ => None,
    }
}

/// The value under `name` in a map: a RESP3 map, or RESP2's flat array of key, value, ...
fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    let is_name = |k: &Value| text(k) == Some(name.as_bytes());
    match v {
        Value::Map(pairs) => pairs.iter().find(|(k, _)| is_name(k)).map(|(_, v)| v),
        Value::Array(flat) => flat
            .chunks_exact(2)
            .find(|kv| is_name(&kv[0]))
            .map(|kv| &kv[1]),
        Value::Attribute { data, .. } => field(data, name),
        _ => None,
    }
}

/// `COMMAND` as redis-server 7.0.15 answers it over RESP2, byte for byte.
#[cfg(test)]
const FIXTURE: &[u8] = include_bytes!("testdata/command-redis-7.0.resp");

/// Redis 7.0.15's table, from the fixture: for the unit tests of what uses it.
#[cfg(test)]
pub fn redis_7_0() -> &'static Table {
    static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let reply = redis::parse_redis_value(FIXTURE).expect("the fixture is one RESP value");
        Table::parse(&reply).expect("Redis 7.0's table parses")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> Value {
        redis::parse_redis_value(FIXTURE).expect("the fixture is one RESP value")
    }

    fn table() -> &'static Table {
        redis_7_0()
    }

    fn args(line: &str) -> Vec<Bytes> {
        line.split_whitespace()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect()
    }

    fn spec(line: &str) -> &'static Spec {
        table()
            .lookup(&args(line))
            .unwrap_or_else(|| panic!("no spec for {line:?}"))
    }

    /// The keys of `line` as (index, "r" | "w" | "rw"), and whether they are complete.
    fn keys(line: &str) -> (Vec<(usize, &'static str)>, bool) {
        let k = spec(line).keys(&args(line));
        let found = k
            .found
            .iter()
            .map(|k| (k.index, access(k.access)))
            .collect();
        (found, k.complete)
    }

    fn access(a: Access) -> &'static str {
        match (a.read, a.write) {
            (true, false) => "r",
            (false, true) => "w",
            (true, true) => "rw",
            (false, false) => "none",
        }
    }

    #[test]
    fn the_fixture_is_all_of_redis_7_0() {
        let t = table();
        assert_eq!(t.len(), 240, "COMMAND COUNT of 7.0.15");
        assert!(t.specs().count() > t.len(), "subcommands are in too");
        assert!(t.specs().all(|s| s.name == s.name.to_ascii_lowercase()));
        assert!(t.specs().all(|s| s.arity != 0));
    }

    #[test]
    fn plain_key_commands() {
        assert_eq!(keys("GET k"), (vec![(1, "r")], true));
        // SET's spec is RW: its flags vary (GET reads), so the spec gives their union.
        assert_eq!(keys("SET k v"), (vec![(1, "rw")], true));
        assert_eq!(keys("SET k v GET"), (vec![(1, "rw")], true));
        assert_eq!(keys("MSET a 1 b 2"), (vec![(1, "w"), (3, "w")], true));
        assert_eq!(
            keys("MGET a b c"),
            (vec![(1, "r"), (2, "r"), (3, "r")], true)
        );
        assert_eq!(keys("DEL a b"), (vec![(1, "w"), (2, "w")], true));
        assert_eq!(keys("RENAME a b"), (vec![(1, "rw"), (2, "w")], true));
        assert_eq!(keys("COPY a b"), (vec![(1, "r"), (2, "w")], true));
        assert_eq!(
            keys("COPY a b DB 1 REPLACE"),
            (vec![(1, "r"), (2, "w")], true)
        );
        assert_eq!(keys("SMOVE a b m"), (vec![(1, "rw"), (2, "rw")], true));
        assert_eq!(
            keys("LMOVE a b LEFT RIGHT"),
            (vec![(1, "rw"), (2, "rw")], true)
        );
        assert_eq!(
            keys("BITOP AND d a b"),
            (vec![(2, "w"), (3, "r"), (4, "r")], true)
        );
        assert_eq!(keys("XINFO STREAM s FULL"), (vec![(2, "r")], true));
    }

    #[test]
    fn numkeys_commands() {
        assert_eq!(
            keys("ZUNIONSTORE d 2 a b WEIGHTS 1 2"),
            (vec![(1, "w"), (3, "r"), (4, "r")], true)
        );
        assert_eq!(
            keys("ZINTERSTORE d 2 a b"),
            (vec![(1, "w"), (3, "r"), (4, "r")], true)
        );
        assert_eq!(
            keys("ZUNION 2 a b WITHSCORES"),
            (vec![(2, "r"), (3, "r")], true)
        );
        assert_eq!(
            keys("SINTERCARD 2 a b LIMIT 1"),
            (vec![(2, "r"), (3, "r")], true)
        );
        assert_eq!(keys("LMPOP 2 a b LEFT"), (vec![(2, "rw"), (3, "rw")], true));
        assert_eq!(
            keys("BLMPOP 0 2 a b LEFT"),
            (vec![(3, "rw"), (4, "rw")], true)
        );
        assert_eq!(keys("ZMPOP 1 a MIN"), (vec![(2, "rw")], true));
        assert_eq!(keys("BZMPOP 0 1 a MIN"), (vec![(3, "rw")], true));
    }

    #[test]
    fn scripts_name_their_keys_and_write_them() {
        assert_eq!(keys("EVAL s 2 a b x"), (vec![(3, "rw"), (4, "rw")], true));
        assert_eq!(keys("EVALSHA h 1 a"), (vec![(3, "rw")], true));
        assert_eq!(keys("FCALL f 1 a x"), (vec![(3, "rw")], true));
        assert_eq!(keys("EVAL_RO s 1 a"), (vec![(3, "r")], true));
        assert_eq!(keys("FCALL_RO f 1 a"), (vec![(3, "r")], true));
        // No keys is no keys (Redis' own getkeys code agrees).
        assert_eq!(keys("EVAL s 0 x y"), (vec![], true));
        // A key count Redis will refuse: not followed, and said so.
        assert_eq!(keys("EVAL s 3 a"), (vec![], false));
        assert_eq!(keys("EVAL s x a"), (vec![], false));
        assert_eq!(keys("EVAL s -1 a"), (vec![], false));
        assert_eq!(keys("EVAL s 01 a"), (vec![], false));
        assert_eq!(keys("EVAL s 99999999999 a"), (vec![], false));
        assert_eq!(keys("EVAL s 99999999999999999999999 a"), (vec![], false));
        // EVAL has no write flag: its key specs say it writes.
        assert!(!spec("EVAL s 0").flags.contains(Flags::WRITE));
        assert!(spec("EVAL s 0").writes());
        assert!(!spec("EVAL_RO s 0").writes());
    }

    #[test]
    fn keyword_commands() {
        assert_eq!(
            keys("XREAD COUNT 2 STREAMS a b 0 0"),
            (vec![(4, "r"), (5, "r")], true)
        );
        assert_eq!(keys("xread streams a 0"), (vec![(2, "r")], true));
        // An odd count after STREAMS: Redis' own arithmetic finds no key; a syntax error.
        assert_eq!(keys("XREAD STREAMS a"), (vec![], false));
        // No STREAMS at all: no key (Redis will refuse it).
        assert_eq!(keys("XREAD COUNT 2"), (vec![], true));
        assert_eq!(
            keys("XREADGROUP GROUP g c STREAMS a b > >"),
            (vec![(5, "r"), (6, "r")], true)
        );
        assert!(spec("XREADGROUP GROUP g c STREAMS a >").writes());
        assert_eq!(
            keys("GEORADIUS k 0 0 1 km STORE d"),
            (vec![(1, "r"), (7, "w")], true)
        );
        assert_eq!(
            keys("GEORADIUS k 0 0 1 km STOREDIST d"),
            (vec![(1, "r"), (7, "w")], true)
        );
        assert_eq!(keys("GEORADIUS k 0 0 1 km"), (vec![(1, "r")], true));
        assert_eq!(
            keys("GEORADIUSBYMEMBER k m 1 km STORE d"),
            (vec![(1, "r"), (6, "w")], true)
        );
    }

    #[test]
    fn what_redis_7_0_declares_incomplete() {
        // SORT's BY/GET patterns and STORE are "unknown" specs: never complete.
        assert_eq!(keys("SORT k"), (vec![(1, "r")], false));
        assert_eq!(keys("SORT k STORE d"), (vec![(1, "r")], false));
        assert_eq!(keys("SORT_RO k BY w_*"), (vec![(1, "r")], false));
        // MIGRATE's KEYS spec is incomplete; without KEYS the one key is known.
        assert_eq!(keys("MIGRATE h 1 k 0 5000"), (vec![(3, "rw")], true));
        assert_eq!(
            keys("MIGRATE h 1 x 0 5000 REPLACE KEYS a b"),
            (vec![(3, "rw"), (8, "rw"), (9, "rw")], false)
        );
        let incomplete: Vec<_> = {
            let mut v: Vec<_> = table()
                .specs()
                .filter(|s| {
                    s.key_specs.iter().any(|k| {
                        k.flags.contains(KeyFlags::INCOMPLETE)
                            || k.begin_search == BeginSearch::Unknown
                            || k.find_keys == FindKeys::Unknown
                    }) || s.keys_beyond_specs()
                })
                .map(|s| s.name.as_str())
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(incomplete, ["migrate", "sort", "sort_ro"]);
    }

    #[test]
    fn blocking_pubsub_and_keyless_commands() {
        let blpop = spec("BLPOP a b 0");
        assert!(blpop.flags.contains(Flags::BLOCKING));
        assert!(blpop.acl.contains(AclCategories::BLOCKING));
        // The last argument is the timeout, not a key.
        assert_eq!(keys("BLPOP a b 0"), (vec![(1, "rw"), (2, "rw")], true));

        assert_eq!(keys("PUBLISH ch m"), (vec![], true));
        assert!(!spec("PUBLISH ch m").writes());
        let subscribe = spec("SUBSCRIBE ch");
        assert!(subscribe.flags.contains(Flags::PUBSUB));
        assert_eq!(keys("SUBSCRIBE a b"), (vec![], true));
        // A shard channel has a `not_key` spec: it routes, it is not a key.
        assert_eq!(keys("SPUBLISH ch m"), (vec![], true));
        assert_eq!(keys("SSUBSCRIBE a b"), (vec![], true));

        let config_set = spec("CONFIG SET maxmemory 1");
        assert_eq!(config_set.name, "config|set");
        assert!(config_set.flags.contains(Flags::ADMIN));
        assert!(config_set.acl.contains(AclCategories::DANGEROUS));
        assert_eq!(keys("CONFIG SET maxmemory 1"), (vec![], true));

        let flushall = spec("FLUSHALL");
        assert!(flushall.writes());
        assert_eq!(keys("FLUSHALL ASYNC"), (vec![], true));
        for line in ["KEYS *", "SCAN 0"] {
            let s = spec(line);
            assert!(s.flags.contains(Flags::READONLY), "{line}");
            assert!(s.acl.contains(AclCategories::KEYSPACE), "{line}");
            assert!(!s.writes(), "{line}");
            assert_eq!(keys(line), (vec![], true), "{line}");
        }
    }

    #[test]
    fn subcommands_resolve() {
        let object = spec("OBJECT ENCODING k");
        assert_eq!(object.name, "object|encoding");
        assert_eq!(keys("OBJECT ENCODING k"), (vec![(2, "r")], true));
        assert_eq!(spec("object freq k").name, "object|freq");
        assert_eq!(spec("xinfo STREAM s").name, "xinfo|stream");
        assert_eq!(spec("Client No-Evict on").name, "client|no-evict");
        // Missing or unknown subcommand: the container itself.
        assert_eq!(spec("OBJECT").name, "object");
        assert_eq!(spec("OBJECT NOSUCH k").name, "object");
        assert!(!spec("OBJECT").arity_ok(1));
        // Not a container: args[1] is not a subcommand.
        assert_eq!(spec("GET set").name, "get");
    }

    #[test]
    fn lookup_is_case_insensitive_and_bounded() {
        for name in ["get", "GET", "gEt"] {
            assert_eq!(spec(&format!("{name} k")).name, "get");
        }
        assert_eq!(spec("config set x y").name, "config|set");
        assert_eq!(spec("CONFIG Set x y").name, "config|set");
        let t = table();
        assert!(t.lookup(&[]).is_none());
        assert!(t.lookup(&args("NOSUCH k")).is_none());
        assert!(t.lookup(&[Bytes::new()]).is_none());
        let long = Bytes::from(vec![b'g'; MAX_NAME + 1]);
        assert!(t.lookup(std::slice::from_ref(&long)).is_none());
        // A subcommand name too long to look up falls back to the container.
        let config = Bytes::from_static(b"CONFIG");
        assert_eq!(
            t.lookup(&[config, long]).map(|s| &s.name[..]),
            Some("config")
        );
    }

    #[test]
    fn arity() {
        let get = spec("GET k");
        assert_eq!(get.arity, 2);
        assert!(get.arity_ok(2));
        assert!(!get.arity_ok(1));
        assert!(!get.arity_ok(3));
        let config_set = spec("CONFIG SET a b");
        assert_eq!(config_set.arity, -4);
        assert!(!config_set.arity_ok(3));
        assert!(config_set.arity_ok(4));
        assert!(config_set.arity_ok(6));
        assert!(config_set.arity_ok(usize::MAX));
    }

    #[test]
    fn tips_are_redis_own() {
        let tips = |line| {
            let s = spec(line);
            (
                s.request_policy,
                s.response_policy,
                s.nondeterministic_output,
                s.nondeterministic_output_order,
            )
        };
        use RequestPolicy as Req;
        use ResponsePolicy as Resp;
        assert_eq!(
            tips("DBSIZE"),
            (Some(Req::AllShards), Some(Resp::AggSum), false, false)
        );
        assert_eq!(tips("KEYS *"), (Some(Req::AllShards), None, false, true));
        assert_eq!(tips("SCAN 0"), (Some(Req::Special), None, true, false));
        assert_eq!(
            tips("FLUSHALL"),
            (Some(Req::AllShards), Some(Resp::AllSucceeded), false, false)
        );
        assert_eq!(
            tips("MGET a b"),
            (Some(Req::MultiShard), None, false, false)
        );
        assert_eq!(
            tips("MSET a 1"),
            (
                Some(Req::MultiShard),
                Some(Resp::AllSucceeded),
                false,
                false
            )
        );
        assert_eq!(tips("GET k"), (None, None, false, false));
    }

    #[test]
    fn flags_and_legacy_triplet() {
        let mget = spec("MGET a");
        assert_eq!((mget.first_key, mget.last_key, mget.key_step), (1, -1, 1));
        assert!(mget.flags.contains(Flags::READONLY | Flags::FAST));
        assert!(!mget.flags.contains(Flags::WRITE));
        let exec = spec("EXEC");
        assert!(exec.flags.contains(Flags::NOSCRIPT));
        assert!(exec.acl.contains(AclCategories::TRANSACTION));
        assert!(spec("SAVE").flags.contains(Flags::NO_MULTI));
        assert!(spec("EVAL s 0").flags.contains(Flags::MOVABLEKEYS));
        assert!(spec("EVAL s 0").acl.contains(AclCategories::SCRIPTING));
        // PFCOUNT is readonly, yet may write the cached cardinality back: RW key spec.
        assert!(spec("PFCOUNT a").flags.contains(Flags::READONLY));
        assert_eq!(keys("PFCOUNT a b"), (vec![(1, "rw"), (2, "rw")], true));
        assert!(spec("PFCOUNT a").writes());
        assert_eq!(
            format!("{:?}", spec("GET k").flags),
            r#"{"readonly", "fast"}"#
        );
    }

    /// The same reply over RESP3: flags, tips and key specs as sets, maps as maps.
    fn to_resp3(entry: &Value) -> Value {
        let Value::Array(f) = entry else {
            panic!("entry {entry:?}")
        };
        let mut out = f.clone();
        for i in [2, 6, 7] {
            out[i] = to_set(&f[i]);
        }
        let Value::Array(key_specs) = &f[8] else {
            panic!("key specs {:?}", f[8])
        };
        out[8] = Value::Set(key_specs.iter().map(to_map).collect());
        let Value::Array(subs) = &f[9] else {
            panic!("subcommands {:?}", f[9])
        };
        out[9] = Value::Array(subs.iter().map(to_resp3).collect());
        Value::Array(out)
    }

    fn to_set(v: &Value) -> Value {
        let Value::Array(a) = v else {
            panic!("not an array: {v:?}")
        };
        Value::Set(a.clone())
    }

    fn to_map(v: &Value) -> Value {
        let Value::Array(flat) = v else {
            panic!("not a flat map: {v:?}")
        };
        let pairs = flat.chunks(2).map(|kv| {
            let value = match text(&kv[0]) {
                Some(b"flags") => to_set(&kv[1]),
                Some(b"begin_search" | b"find_keys" | b"spec") => to_map(&kv[1]),
                _ => kv[1].clone(),
            };
            (kv[0].clone(), value)
        });
        Value::Map(pairs.collect())
    }

    #[test]
    fn resp3_reads_the_same() {
        let Value::Array(entries) = reply() else {
            panic!("not an array")
        };
        let resp3 = Value::Array(entries.iter().map(to_resp3).collect());
        assert_eq!(&Table::parse(&resp3).unwrap(), table());
    }

    #[test]
    fn replies_it_cannot_read_are_errors() {
        assert!(Table::parse(&Value::Nil).is_err());
        assert!(Table::parse(&Value::Array(vec![])).is_err());
        // Redis 6.2: 7 fields, no key specs.
        let old = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"get".to_vec()),
            Value::Int(2),
            Value::Array(vec![]),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Array(vec![]),
        ])]);
        assert!(Table::parse(&old).unwrap_err().contains("Redis 7"));
    }

    /// Argument vectors of 0..=8 built from values that stress every spec type: all of length
    /// up to 3, a seeded sample of the longer ones.
    fn hostile_vectors() -> Vec<Vec<Bytes>> {
        const VALUES: [&str; 9] = [
            "-1",
            "0",
            "1",
            "2",
            "99999999999",
            "STREAMS",
            "STORE",
            "KEYS",
            "x",
        ];
        let value = |i: usize| Bytes::from_static(VALUES[i].as_bytes());
        let mut out = vec![vec![]];
        for len in 1..=3u32 {
            for n in 0..VALUES.len().pow(len) {
                let digits = (0..len).map(|d| n / VALUES.len().pow(d) % VALUES.len());
                out.push(digits.map(value).collect());
            }
        }
        let mut rng = fastrand::Rng::with_seed(7);
        for len in 4..=8 {
            for _ in 0..200 {
                out.push((0..len).map(|_| value(rng.usize(..VALUES.len()))).collect());
            }
        }
        out
    }

    fn assert_sane(spec: &Spec, args: &[Bytes]) {
        let keys = spec.keys(args);
        for key in &keys.found {
            assert!(
                key.index >= 1 && key.index < args.len(),
                "{}: key at {} of {args:?}",
                spec.name,
                key.index
            );
        }
        assert!(keys.found.len() <= args.len() * spec.key_specs.len().max(1));
    }

    #[test]
    fn hostile_arguments_never_panic_or_point_outside() {
        let vectors = hostile_vectors();
        for spec in table().specs() {
            for args in &vectors {
                assert_sane(spec, args);
                let _ = spec.arity_ok(args.len());
                let _ = table().lookup(args);
            }
        }
    }

    #[test]
    fn hostile_key_specs_never_panic_or_point_outside() {
        let nums = [i64::MIN, -3, -2, -1, 0, 1, 2, 3, i64::MAX];
        let mut key_specs = Vec::new();
        for &a in &nums {
            key_specs.push((BeginSearch::Index(a), FindKeys::Unknown));
            for &b in &nums {
                for &c in &nums {
                    key_specs.push((
                        BeginSearch::Index(a),
                        FindKeys::Range {
                            lastkey: b,
                            keystep: c,
                            limit: a,
                        },
                    ));
                    key_specs.push((
                        BeginSearch::Keyword {
                            keyword: b"STORE"[..].into(),
                            startfrom: a,
                        },
                        FindKeys::Keynum {
                            keynumidx: b,
                            firstkey: c,
                            keystep: a,
                        },
                    ));
                }
            }
        }
        let vectors = hostile_vectors();
        for (begin_search, find_keys) in key_specs {
            let spec = Spec {
                key_specs: vec![KeySpec {
                    flags: KeyFlags::empty(),
                    begin_search,
                    find_keys,
                }],
                ..spec("GET k").clone()
            };
            for args in vectors.iter().step_by(7) {
                assert_sane(&spec, args);
            }
        }
    }

    #[test]
    fn unknown_flags_and_tips_are_ignored() {
        assert_eq!(Flags::from_name(b"WRITE"), Some(Flags::WRITE));
        assert_eq!(Flags::from_name(b"teleport"), None);
        assert_eq!(acl_category(b"@geo"), Some(AclCategories::GEO));
        let mut s = spec("GET k").clone();
        s.add_tip(b"request_policy:everywhere");
        s.add_tip(b"some_future_tip");
        assert_eq!(s, *spec("GET k"));
        // A key spec whose flags name no use is read as both.
        let unnamed = KeySpec {
            flags: KeyFlags::empty(),
            begin_search: BeginSearch::Index(1),
            find_keys: FindKeys::Unknown,
        };
        assert_eq!(unnamed.access(), Access::READ_WRITE);
    }
}
