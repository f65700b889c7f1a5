//! A differential corpus for the RESP door's forwarding of the Redis commands tiergate does not
//! serve itself: several hundred commands across every data type, error cases included, run
//! over raw connections in RESP2 and RESP3, every reply recorded as the exact bytes the server
//! wrote. Two servers are expected to answer byte for byte alike.
//!
//! Today both sides are plain redis-servers, which proves the corpus itself deterministic; the
//! stand-in is to be replaced by a tiergate in front of a redis-server of its own.
//!
//! The corpus is written as small scripts, one step a line (see `family`).

mod support;

use std::{fmt, net::SocketAddr};
use support::{
    wire::{bulk, elements, reply_len, show, Wire},
    Redis,
};

/// The families that need connection state a gateway must pin to one Redis connection
/// (transactions, subscriptions, blocked clients, the selected database). They come last in
/// `corpus()`, so a gateway can run the others first.
pub const STATEFUL: &[&str] = &["transactions", "pubsub", "blocking", "select"];

/// The argument of a `CallWithLast` step replaced by the payload of the last bulk string
/// reply read on its connection (how DUMP's payload reaches RESTORE).
pub const LAST: &[u8] = b"{last}";

/// A named scenario: steps over one or more connections, using keys of its own (a prefix per
/// family) and leaving none behind.
pub struct Family {
    pub name: &'static str,
    pub steps: Vec<Step>,
}

impl Family {
    /// How many connections its steps use.
    pub fn connections(&self) -> usize {
        self.steps.iter().map(|s| s.conn() + 1).max().unwrap_or(1)
    }
}

/// One step on connection `.0` (0 unless a script line starts with `@N`).
#[derive(Clone, Debug)]
pub enum Step {
    /// Send a command and record its reply.
    Call(usize, Vec<Vec<u8>>),
    /// Send a command without reading its reply yet (a blocking command, ...).
    Send(usize, Vec<Vec<u8>>),
    /// Read and record one reply or push.
    Recv(usize),
    /// A SCAN/SSCAN/HSCAN/ZSCAN iterated from cursor 0 to completion; records the union of
    /// the items found, sorted (the order and the cursors depend on the server's hash seed).
    ScanAll(usize, Vec<Vec<u8>>),
    /// A command whose aggregate reply comes in hash-table order (KEYS, SMEMBERS of a
    /// hashtable-encoded set): records it with its top-level elements sorted.
    Unordered(usize, Vec<Vec<u8>>),
    /// A command with a `LAST` argument, replaced by the payload of the last bulk string reply
    /// on this connection; records its reply.
    CallWithLast(usize, Vec<Vec<u8>>),
}

impl Step {
    pub fn conn(&self) -> usize {
        match self {
            Step::Call(c, _)
            | Step::Send(c, _)
            | Step::Recv(c)
            | Step::ScanAll(c, _)
            | Step::Unordered(c, _)
            | Step::CallWithLast(c, _) => *c,
        }
    }

    /// Whether the step sends a command (all but `Recv`).
    pub fn sends(&self) -> bool {
        !matches!(self, Step::Recv(_))
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mode, args) = match self {
            Step::Call(_, a) => ("", a),
            Step::Send(_, a) => ("send ", a),
            Step::Recv(_) => ("recv", &Vec::new()),
            Step::ScanAll(_, a) => ("scan-all ", a),
            Step::Unordered(_, a) => ("unordered ", a),
            Step::CallWithLast(_, a) => ("", a),
        };
        write!(f, "@{} {mode}", self.conn())?;
        for (i, a) in args.iter().enumerate() {
            let text = show(a);
            let sep = if i == 0 { "" } else { " " };
            if a.is_empty() || a.iter().any(|b| b.is_ascii_whitespace() || *b == b'"') {
                write!(f, "{sep}\"{}\"", text.replace('"', "\\\""))?;
            } else {
                write!(f, "{sep}{text}")?;
            }
        }
        Ok(())
    }
}

/// Builds a family from a script, one step a line, blank lines and `#` lines skipped:
/// `CMD args` calls on connection 0; `@N CMD args` on connection N; `send CMD args` sends
/// without reading; `recv` reads one reply or push; `scan-all SCAN 0 ...` iterates a scan to
/// completion; `unordered CMD args` sorts the reply's elements; a `{last}` argument makes the
/// call a `CallWithLast`. Arguments split on spaces; `"..."` quotes one, with `\" \\ \n \r \t
/// \xNN` escapes inside.
pub fn family(name: &'static str, script: &str) -> Family {
    let steps = script
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| step(l).unwrap_or_else(|e| panic!("family {name}, line {l:?}: {e}")))
        .collect();
    Family { name, steps }
}

fn step(line: &str) -> Result<Step, String> {
    let mut words = tokens(line)?;
    let mut conn = 0;
    if let Some(n) = words.first().and_then(|w| w.strip_prefix(b"@")) {
        conn = std::str::from_utf8(n)
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or("bad @connection")?;
        words.remove(0);
    }
    let mode = match words.first().map(Vec::as_slice) {
        Some(b"send" | b"recv" | b"scan-all" | b"unordered") => words.remove(0),
        _ => Vec::new(),
    };
    if mode == b"recv" {
        return if words.is_empty() {
            Ok(Step::Recv(conn))
        } else {
            Err("recv takes no command".into())
        };
    }
    if words.is_empty() {
        return Err("no command".into());
    }
    Ok(match mode.as_slice() {
        b"send" => Step::Send(conn, words),
        b"scan-all" => Step::ScanAll(conn, words),
        b"unordered" => Step::Unordered(conn, words),
        _ if words.iter().any(|w| w == LAST) => Step::CallWithLast(conn, words),
        _ => Step::Call(conn, words),
    })
}

fn tokens(line: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let Some(first) = chars.next() else {
            return Ok(out);
        };
        let mut word = Vec::new();
        if first != '"' {
            let mut buf = [0; 4];
            word.extend_from_slice(first.encode_utf8(&mut buf).as_bytes());
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                word.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
            out.push(word);
            continue;
        }
        loop {
            let c = chars.next().ok_or("unterminated quote")?;
            match c {
                '"' => break,
                '\\' => match chars.next().ok_or("dangling backslash")? {
                    'n' => word.push(b'\n'),
                    'r' => word.push(b'\r'),
                    't' => word.push(b'\t'),
                    'x' => {
                        let hex: String =
                            [chars.next(), chars.next()].into_iter().flatten().collect();
                        word.push(u8::from_str_radix(&hex, 16).map_err(|_| "bad \\x escape")?);
                    }
                    other => word.extend_from_slice(other.to_string().as_bytes()),
                },
                c => word.extend_from_slice(c.to_string().as_bytes()),
            }
        }
        if chars.peek().is_some_and(|c| !c.is_whitespace()) {
            return Err("a quoted argument runs into the next".into());
        }
        out.push(word);
    }
}

/// The protocol every connection of a run speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

/// Runs `families` in order against `addr`, each on fresh connections (in RESP3 each first
/// says `HELLO 3`, whose reply is not recorded: server versions and client ids differ). Returns
/// every recorded reply, labelled `family/step-index @conn command`.
pub async fn run(addr: SocketAddr, proto: Proto, families: &[Family]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for f in families {
        let mut conns = Vec::new();
        for _ in 0..f.connections() {
            let mut w = Wire::connect(addr).await;
            if proto == Proto::Resp3 {
                let hello = w.hello3().await;
                assert!(
                    hello.starts_with(b"%"),
                    "HELLO 3 to {addr} answered {}",
                    show(&hello)
                );
            }
            conns.push(w);
        }
        let mut last_bulk: Vec<Option<Vec<u8>>> = vec![None; conns.len()];
        for (i, s) in f.steps.iter().enumerate() {
            let label = format!("{}/{i} {s}", f.name);
            let c = s.conn();
            let w = &mut conns[c];
            let reply = match s {
                Step::Call(_, args) => w.call(&refs(args)).await,
                Step::Send(_, args) => {
                    w.send(&refs(args)).await;
                    continue;
                }
                Step::Recv(_) => w.recv().await,
                Step::ScanAll(_, args) => scan_all(w, args).await,
                Step::Unordered(_, args) => sorted(&w.call(&refs(args)).await),
                Step::CallWithLast(_, args) => {
                    let last = last_bulk[c]
                        .clone()
                        .unwrap_or_else(|| panic!("{label}: no bulk reply before it"));
                    let args: Vec<Vec<u8>> = args
                        .iter()
                        .map(|a| if a == LAST { last.clone() } else { a.clone() })
                        .collect();
                    w.call(&refs(&args)).await
                }
            };
            if let Some(b) = bulk(&reply) {
                last_bulk[c] = Some(b.to_vec());
            }
            out.push((label, reply));
        }
    }
    out
}

fn refs(args: &[Vec<u8>]) -> Vec<&[u8]> {
    args.iter().map(Vec::as_slice).collect()
}

/// Iterates a scan from cursor 0 until the server says 0 again; the union of the items (pairs
/// for HSCAN and ZSCAN) sorted and deduplicated, as one array.
async fn scan_all(w: &mut Wire, template: &[Vec<u8>]) -> Vec<u8> {
    let at = if template[0].eq_ignore_ascii_case(b"SCAN") {
        1
    } else {
        2
    };
    let pairs =
        template[0].eq_ignore_ascii_case(b"HSCAN") || template[0].eq_ignore_ascii_case(b"ZSCAN");
    let mut args = template.to_vec();
    args[at] = b"0".to_vec();
    let mut items: Vec<Vec<u8>> = Vec::new();
    for _ in 0..100_000 {
        let reply = w.call(&refs(&args)).await;
        if reply.starts_with(b"-") {
            return reply;
        }
        let parts = elements(&reply);
        assert_eq!(parts.len(), 2, "not a scan reply: {}", show(&reply));
        let cursor = bulk(parts[0]).expect("a cursor").to_vec();
        let found = elements(parts[1]);
        let chunk = if pairs { 2 } else { 1 };
        items.extend(found.chunks(chunk).map(|c| c.concat()));
        if cursor == b"0" {
            items.sort();
            items.dedup();
            let mut out = format!("*{}\r\n", items.len() * chunk).into_bytes();
            items.iter().for_each(|i| out.extend_from_slice(i));
            return out;
        }
        args[at] = cursor;
    }
    panic!("the scan never finished");
}

/// An aggregate reply with its top-level elements sorted; any other reply as it is.
fn sorted(reply: &[u8]) -> Vec<u8> {
    if !matches!(reply.first(), Some(b'*' | b'~' | b'>')) || reply.starts_with(b"*-1") {
        return reply.to_vec();
    }
    let mut parts = elements(reply);
    parts.sort();
    let header = reply.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    let mut out = reply[..header].to_vec();
    parts.iter().for_each(|p| out.extend_from_slice(p));
    out
}

/// Every family, the stateless ones first, then those named in `STATEFUL`.
pub fn corpus() -> Vec<Family> {
    vec![
        strings(),
        bitmaps(),
        hashes(),
        lists(),
        sets(),
        sorted_sets(),
        streams(),
        hyperloglog(),
        geo(),
        scripting(),
        keyspace(),
        server(),
        transactions(),
        pubsub(),
        blocking(),
        select(),
    ]
}

fn strings() -> Family {
    family(
        "strings",
        r#"
        SET str:a hello
        GET str:a
        APPEND str:a " world"
        APPEND str:new abc
        STRLEN str:a
        STRLEN str:missing
        GETRANGE str:a 0 4
        GETRANGE str:a -5 -1
        GETRANGE str:a 100 200
        GETRANGE str:a 0
        GETRANGE str:a x 1
        SUBSTR str:a 6 10
        SETRANGE str:a 6 WORLD
        GET str:a
        SETRANGE str:pad 3 xy
        GET str:pad
        SETRANGE str:a -1 x
        SETRANGE str:a 536870912 x
        GETDEL str:new
        GETDEL str:new
        GETEX str:a
        GETEX str:a PERSIST
        GETEX str:a EXAT 4102444800
        EXPIRETIME str:a
        GETEX str:a EX 0
        GETEX str:a EX 10 PX 10
        GETEX str:missing PERSIST
        SET str:n 10
        INCR str:n
        INCRBY str:n 5
        DECR str:n
        DECRBY str:n 3
        INCRBY str:n notanumber
        INCR str:a
        SET str:max 9223372036854775807
        INCR str:max
        DECRBY str:n -9223372036854775808
        INCRBYFLOAT str:n 1.5
        INCRBYFLOAT str:n -0.25
        INCRBYFLOAT str:n 3.0e3
        INCRBYFLOAT str:n abc
        INCRBYFLOAT str:a 1
        SET str:f 1.7e308
        INCRBYFLOAT str:f 1.7e308
        SET str:inf 1e4932
        INCRBYFLOAT str:inf 1e4932
        SETNX str:a other
        SETNX str:nx first
        GET str:nx
        SETNX str:nx
        MSETNX str:m1 1 str:m2 2
        MSETNX str:m2 x str:m3 3
        MGET str:m1 str:m2 str:m3 str:missing
        MSETNX str:m1
        PSETEX str:px 100000 v
        GET str:px
        PSETEX str:px 0 v
        SETEX str:ex 100 v
        SETEX str:ex -5 v
        SETEX str:ex notint v
        PERSIST str:ex
        TTL str:ex
        TTL str:missing
        SET str:l1 ohmytext
        SET str:l2 mynewtext
        LCS str:l1 str:l2
        LCS str:l1 str:l2 LEN
        LCS str:l1 str:l2 IDX
        LCS str:l1 str:l2 IDX MINMATCHLEN 4 WITHMATCHLEN
        LCS str:l1 str:l2 LEN IDX
        SET str:k v1 GET
        SET str:k v2 NX GET
        SET str:k v3 XX GET
        SET str:k v NX XX
        SET str:empty ""
        GET str:empty
        STRLEN str:empty
        SET str:bin "a\r\nb\x00c"
        GET str:bin
        OBJECT ENCODING str:n
        OBJECT ENCODING str:max
        RPUSH str:list x
        GET str:list
        APPEND str:list x
        STRLEN str:list
        INCR str:list
        GET
        GET str:a str:b
        SET str:k
        DEL str:a str:new str:pad str:n str:max str:f str:inf str:nx str:m1 str:m2 str:m3 str:px str:ex str:l1 str:l2 str:k str:empty str:bin str:list
        "#,
    )
}

fn bitmaps() -> Family {
    family(
        "bitmaps",
        r#"
        SETBIT bit:a 7 1
        SETBIT bit:a 7 0
        SETBIT bit:a 100 1
        GETBIT bit:a 100
        GETBIT bit:a 1000
        GETBIT bit:missing 0
        GET bit:a
        SETBIT bit:a 4294967296 1
        SETBIT bit:a -1 1
        SETBIT bit:a 1 2
        GETBIT bit:a x
        SET bit:s foobar
        BITCOUNT bit:s
        BITCOUNT bit:s 0 0
        BITCOUNT bit:s 1 1
        BITCOUNT bit:s -2 -1
        BITCOUNT bit:s 5 30 BIT
        BITCOUNT bit:s 0 -1 WORD
        BITCOUNT bit:s 0
        BITCOUNT bit:missing
        BITPOS bit:s 1
        BITPOS bit:s 0
        BITPOS bit:s 1 2
        BITPOS bit:s 1 2 -1 BYTE
        BITPOS bit:s 1 7 15 BIT
        BITPOS bit:missing 0
        BITPOS bit:missing 1
        BITPOS bit:s 2
        SET bit:k1 foobar
        SET bit:k2 abcdef
        BITOP AND bit:and bit:k1 bit:k2
        GET bit:and
        BITOP OR bit:or bit:k1 bit:k2
        GET bit:or
        BITOP XOR bit:xor bit:k1 bit:k2 bit:missing
        GET bit:xor
        BITOP NOT bit:not bit:k1
        GET bit:not
        BITOP NOT bit:x bit:k1 bit:k2
        BITOP FOO bit:x bit:k1
        BITOP AND bit:x
        BITFIELD bit:bf SET i8 0 100 GET u4 0 INCRBY u2 100 1 OVERFLOW SAT INCRBY i8 0 100
        BITFIELD bit:bf OVERFLOW FAIL INCRBY u8 8 300
        BITFIELD bit:bf OVERFLOW WRAP INCRBY i8 0 100
        BITFIELD bit:bf GET i64 0
        BITFIELD bit:bf GET u64 0
        BITFIELD bit:bf SET i8 #1 5 GET i8 #1
        BITFIELD bit:bf INCRBY i8
        BITFIELD bit:bf OVERFLOW MAYBE
        BITFIELD_RO bit:bf GET i8 0 GET u8 #1
        BITFIELD_RO bit:bf SET i8 0 1
        BITFIELD_RO bit:missing GET u8 0
        RPUSH bit:list a
        SETBIT bit:list 0 1
        GETBIT bit:list 0
        BITCOUNT bit:list
        BITOP AND bit:x bit:list
        BITFIELD bit:list GET u8 0
        DEL bit:a bit:s bit:k1 bit:k2 bit:and bit:or bit:xor bit:not bit:bf bit:list bit:x
        "#,
    )
}

fn hashes() -> Family {
    family(
        "hashes",
        r#"
        HSET h:1 f1 v1 f2 v2
        HSET h:1 f1 v1b f3 3
        HGET h:1 f1
        HGET h:1 nope
        HGET h:missing f
        HMGET h:1 f1 nope f3
        HMGET h:missing a b
        HGETALL h:1
        HGETALL h:missing
        HINCRBY h:1 f3 10
        HINCRBY h:1 f1 1
        HINCRBY h:1 new 5
        HINCRBY h:1 new 9223372036854775807
        HINCRBY h:1 new x
        HINCRBYFLOAT h:1 f3 0.5
        HINCRBYFLOAT h:1 f1 1
        HINCRBYFLOAT h:1 fl 1e2
        HINCRBYFLOAT h:1 fl nan
        HLEN h:1
        HLEN h:missing
        HKEYS h:1
        HVALS h:1
        HEXISTS h:1 f2
        HEXISTS h:1 nope
        HSETNX h:1 f2 x
        HSETNX h:1 f9 x
        HSTRLEN h:1 f1
        HSTRLEN h:1 nope
        HDEL h:1 f2 nope
        HDEL h:1
        HSET h:1 f1
        HMSET h:1 a 1 b
        HMSET h:1 a 1
        HSCAN h:1 0
        HSCAN h:1 0 MATCH f*
        HSCAN h:1 x
        HSET h:one only 1
        HRANDFIELD h:one
        HRANDFIELD h:one 1
        HRANDFIELD h:one 5 WITHVALUES
        HRANDFIELD h:one -3
        HRANDFIELD h:one -2 WITHVALUES
        HRANDFIELD h:missing 2
        HRANDFIELD h:1 0
        HRANDFIELD h:one x
        OBJECT ENCODING h:1
        SET h:str x
        HGET h:str f
        HSET h:str f v
        HGETALL h:str
        DEL h:1 h:one h:str
        HGETALL h:1
        "#,
    )
}

fn lists() -> Family {
    family(
        "lists",
        r#"
        RPUSH l:a a b c
        LPUSH l:a z
        LRANGE l:a 0 -1
        LRANGE l:a -100 100
        LRANGE l:a 5 10
        LRANGE l:a 0 notint
        LINDEX l:a 0
        LINDEX l:a -1
        LINDEX l:a 99
        LINSERT l:a BEFORE b x
        LINSERT l:a AFTER nope y
        LINSERT l:missing BEFORE a b
        LINSERT l:a MIDDLE b y
        LLEN l:a
        LLEN l:missing
        LSET l:a 0 first
        LSET l:a 99 x
        LSET l:missing 0 x
        RPUSH l:a b b
        LPOS l:a b
        LPOS l:a b RANK 2
        LPOS l:a b COUNT 0
        LPOS l:a b RANK -1 COUNT 2
        LPOS l:a b RANK 0
        LPOS l:a nope
        LPOS l:a b MAXLEN 2
        LRANGE l:a 0 -1
        LREM l:a 1 b
        LREM l:a 0 b
        LREM l:a 0 nope
        LTRIM l:a 0 2
        LRANGE l:a 0 -1
        LPUSH l:a p q r
        LPOP l:a
        RPOP l:a
        LPOP l:a 2
        LPOP l:a 10
        LPOP l:a
        EXISTS l:a
        LPOP l:missing
        LPOP l:missing 2
        LPOP l:a -1
        RPUSH l:b 1 2 3 4 5 6 7
        RPOP l:b 2
        RPOP l:b 0
        LMOVE l:b l:c LEFT RIGHT
        LMOVE l:b l:c RIGHT LEFT
        LRANGE l:c 0 -1
        LMOVE l:b l:c UP DOWN
        LMOVE l:missing l:c LEFT LEFT
        RPOPLPUSH l:b l:c
        RPOPLPUSH l:b l:b
        LRANGE l:b 0 -1
        LMPOP 2 l:missing l:c LEFT COUNT 2
        LMPOP 1 l:missing RIGHT
        LMPOP 0 l:c LEFT
        LMPOP 1 l:c LEFT COUNT 0
        LMPOP 1 l:c SIDEWAYS
        LRANGE l:c 0 -1
        LPUSHX l:missing x
        RPUSHX l:c y
        OBJECT ENCODING l:c
        SET l:s x
        LPUSH l:s a
        LRANGE l:s 0 -1
        LLEN l:s
        LPUSH l:a
        LINDEX l:a
        DEL l:a l:b l:c l:s
        "#,
    )
}

fn sets() -> Family {
    family(
        "sets",
        r#"
        SADD s:a 3 1 2 5 8
        SADD s:a 1 13
        SMEMBERS s:a
        SMEMBERS s:missing
        SISMEMBER s:a 3
        SISMEMBER s:a 4
        SMISMEMBER s:a 1 4 5
        SCARD s:a
        SCARD s:missing
        SREM s:a 13 99
        SADD s:b 2 3 4 5 6
        SINTER s:a s:b
        SINTER s:a s:missing
        SINTERCARD 2 s:a s:b
        SINTERCARD 2 s:a s:b LIMIT 1
        SINTERCARD 0 s:a
        SINTERCARD 3 s:a s:b
        SUNION s:a s:b
        SDIFF s:a s:b
        SDIFF s:b s:a s:missing
        SDIFFSTORE s:d s:a s:b
        SMEMBERS s:d
        SINTERSTORE s:i s:a s:b
        SMEMBERS s:i
        SUNIONSTORE s:u s:a s:b
        SMEMBERS s:u
        SMOVE s:a s:b 1
        SMOVE s:a s:b 99
        SMEMBERS s:a
        SMEMBERS s:b
        SSCAN s:b 0
        SSCAN s:b 0 MATCH 1*
        SADD s:one 42
        SRANDMEMBER s:one
        SRANDMEMBER s:one 3
        SRANDMEMBER s:one -2
        SPOP s:one
        SPOP s:one
        EXISTS s:one
        OBJECT ENCODING s:a
        SADD s:str apple banana cherry
        unordered SMEMBERS s:str
        scan-all SSCAN s:str 0 COUNT 1
        OBJECT ENCODING s:str
        SISMEMBER s:str banana
        SET s:x v
        SADD s:x 1
        SMEMBERS s:x
        SINTER s:a s:x
        SADD s:a
        SMISMEMBER s:a
        DEL s:a s:b s:d s:i s:u s:str s:x
        "#,
    )
}

fn sorted_sets() -> Family {
    family(
        "sorted-sets",
        r#"
        ZADD z:a 1 one 2 two 3 three
        ZADD z:a NX 10 one 4 four
        ZADD z:a XX 20 two 5 five
        ZADD z:a XX CH 21 two
        ZADD z:a GT CH 1 one
        ZADD z:a GT CH 7 one
        ZADD z:a LT 100 one
        ZADD z:a INCR 2.5 three
        ZADD z:a NX XX 1 x
        ZADD z:a GT LT 1 x
        ZADD z:a INCR 1 a 2 b
        ZADD z:a 1
        ZADD z:a nan x
        ZADD z:a x y
        ZRANGE z:a 0 -1 WITHSCORES
        ZRANGE z:a 0 -1 REV
        ZRANGE z:a (1 5 BYSCORE WITHSCORES
        ZRANGE z:a +inf -inf BYSCORE REV LIMIT 1 2
        ZRANGE z:a 0 -1 LIMIT 0 1
        ZADD z:lex 0 a 0 b 0 c 0 d 0 e
        ZRANGE z:lex [b (e BYLEX
        ZRANGE z:lex + - BYLEX REV LIMIT 0 2
        ZRANGE z:lex b c BYLEX
        ZLEXCOUNT z:lex - +
        ZLEXCOUNT z:lex [b [d
        ZRANGESTORE z:dst z:a 0 1
        ZRANGE z:dst 0 -1 WITHSCORES
        ZRANGESTORE z:dst z:lex [c + BYLEX
        ZSCORE z:a two
        ZSCORE z:a nope
        ZMSCORE z:a one nope two
        ZINCRBY z:a 1.5 one
        ZINCRBY z:a x one
        ZRANK z:a two
        ZREVRANK z:a two
        ZRANK z:a nope
        ZCOUNT z:a 2 10
        ZCOUNT z:a -inf +inf
        ZCOUNT z:a x 1
        ZCARD z:a
        ZPOPMIN z:a
        ZPOPMAX z:a 2
        ZPOPMIN z:missing
        ZPOPMIN z:a -1
        ZMPOP 2 z:missing z:a MIN COUNT 1
        ZMPOP 1 z:missing MAX
        ZMPOP 1 z:a MIDDLE
        ZRANGE z:a 0 -1 WITHSCORES
        ZADD z:b 1 a 2 b 3 c
        ZADD z:c 10 b 20 c 30 d
        ZUNIONSTORE z:u 2 z:b z:c WEIGHTS 1 2
        ZRANGE z:u 0 -1 WITHSCORES
        ZINTERSTORE z:i 2 z:b z:c AGGREGATE MAX
        ZRANGE z:i 0 -1 WITHSCORES
        ZUNION 2 z:b z:c WITHSCORES
        ZINTER 2 z:b z:c WITHSCORES
        ZDIFF 2 z:b z:c WITHSCORES
        ZDIFF 2 z:c z:b
        ZDIFFSTORE z:d 2 z:c z:b
        ZINTERSTORE z:i 0 z:b
        ZUNIONSTORE z:u 2 z:b
        ZUNION 2 z:b z:c AGGREGATE AVG
        ZREM z:c b nope
        ZREMRANGEBYSCORE z:c 25 +inf
        ZRANGE z:c 0 -1 WITHSCORES
        ZREMRANGEBYRANK z:b 0 0
        ZREMRANGEBYLEX z:lex [a [b
        ZRANGE z:lex 0 -1
        ZSCAN z:b 0
        ZADD z:one 1 solo
        ZRANDMEMBER z:one -2 WITHSCORES
        ZRANDMEMBER z:one
        OBJECT ENCODING z:b
        SET z:s x
        ZADD z:s 1 a
        ZRANGE z:s 0 -1
        ZSCORE z:s a
        DEL z:a z:lex z:dst z:b z:c z:u z:i z:d z:one z:s
        "#,
    )
}

fn streams() -> Family {
    family(
        "streams",
        r#"
        XADD x:s 1-1 f v
        XADD x:s 1-2 f v2 g w
        XADD x:s 2-0 f v3
        XADD x:s 1-5 f late
        XADD x:s 0-0 f v
        XADD x:s 3-0 f
        XADD x:s 3-* f v4
        XADD x:missing NOMKSTREAM 1-1 f v
        XADD x:s x-y f v
        XLEN x:s
        XLEN x:missing
        XRANGE x:s - +
        XRANGE x:s 1-2 + COUNT 1
        XRANGE x:s (1-1 2
        XRANGE x:s x y
        XREVRANGE x:s + - COUNT 2
        XREAD COUNT 2 STREAMS x:s 0
        XREAD STREAMS x:s 3-0
        XREAD STREAMS x:s $
        XREAD STREAMS x:s
        XGROUP CREATE x:s g1 0
        XGROUP CREATE x:s g1 0
        XGROUP CREATE x:missing g 0
        XGROUP CREATE x:new g $ MKSTREAM
        XGROUP CREATECONSUMER x:s g1 alice
        XGROUP CREATECONSUMER x:s g1 alice
        XREADGROUP GROUP g1 alice COUNT 2 STREAMS x:s >
        XREADGROUP GROUP g1 bob STREAMS x:s >
        XREADGROUP GROUP g1 bob STREAMS x:s >
        XREADGROUP GROUP g1 alice STREAMS x:s 0
        XREADGROUP GROUP nogroup alice STREAMS x:s >
        XPENDING x:s g1
        XACK x:s g1 1-1 9-9
        XPENDING x:s g1
        XCLAIM x:s g1 carol 0 1-2
        XCLAIM x:s g1 carol 0 2-0 JUSTID
        XAUTOCLAIM x:s g1 dave 0 0-0 COUNT 1
        XAUTOCLAIM x:s g1 dave 0 0-0 JUSTID
        XPENDING x:s g1
        XINFO STREAM x:s
        XINFO GROUPS x:s
        XDEL x:s 1-1 9-9
        XTRIM x:s MAXLEN 2
        XTRIM x:s MINID 3-0
        XTRIM x:s MAXLEN x
        XRANGE x:s - +
        XINFO STREAM x:s
        XGROUP DELCONSUMER x:s g1 dave
        XGROUP SETID x:s g1 0
        XGROUP DESTROY x:s g1
        XGROUP DESTROY x:s g1
        XINFO GROUPS x:s
        SET x:str v
        XADD x:str 1-1 f v
        XLEN x:str
        XRANGE x:str - +
        DEL x:s x:new x:str
        "#,
    )
}

fn hyperloglog() -> Family {
    family(
        "hyperloglog",
        r#"
        PFADD hll:a a b c d e f g
        PFADD hll:a a b
        PFADD hll:empty
        PFCOUNT hll:a
        PFCOUNT hll:missing
        PFADD hll:b e f g h i
        PFCOUNT hll:a hll:b
        PFMERGE hll:m hll:a hll:b
        PFCOUNT hll:m
        GET hll:a
        SET hll:s notanhll
        PFCOUNT hll:s
        PFADD hll:s x
        RPUSH hll:l x
        PFCOUNT hll:l
        PFADD
        PFMERGE hll:m hll:s
        DEL hll:a hll:empty hll:b hll:m hll:s hll:l
        "#,
    )
}

fn geo() -> Family {
    family(
        "geo",
        r#"
        GEOADD geo:s 13.361389 38.115556 Palermo 15.087269 37.502669 Catania
        GEOADD geo:s NX 2.349014 48.864716 Paris
        GEOADD geo:s XX CH 13.361389 38.115556 Palermo
        GEOADD geo:s 200 100 Nowhere
        GEOADD geo:s 1 2
        GEODIST geo:s Palermo Catania
        GEODIST geo:s Palermo Catania km
        GEODIST geo:s Palermo Nope
        GEODIST geo:s Palermo Catania parsecs
        GEOPOS geo:s Palermo Nope Catania
        GEOHASH geo:s Palermo Catania Nope
        GEOSEARCH geo:s FROMLONLAT 15 37 BYRADIUS 200 km ASC WITHDIST WITHCOORD WITHHASH
        GEOSEARCH geo:s FROMMEMBER Palermo BYBOX 400 400 km ASC COUNT 1
        GEOSEARCH geo:s FROMLONLAT 15 37 BYRADIUS 2000 km DESC COUNT 2 ANY
        GEOSEARCH geo:s FROMMEMBER Nope BYRADIUS 10 km
        GEOSEARCH geo:s FROMLONLAT 15 37
        GEOSEARCHSTORE geo:dst geo:s FROMLONLAT 15 37 BYRADIUS 200 km ASC
        ZRANGE geo:dst 0 -1 WITHSCORES
        GEOSEARCHSTORE geo:dst2 geo:s FROMLONLAT 15 37 BYRADIUS 200 km STOREDIST
        ZRANGE geo:dst2 0 -1 WITHSCORES
        GEORADIUS geo:s 15 37 200 km ASC
        TYPE geo:s
        SET geo:str x
        GEOADD geo:str 1 1 m
        DEL geo:s geo:dst geo:dst2 geo:str
        "#,
    )
}

fn scripting() -> Family {
    family(
        "scripting",
        r##"
        SET lua:k hello
        HSET lua:h f v
        EVAL "return redis.call('GET', KEYS[1])" 1 lua:k
        EVAL "return {1, 2, {3, 'x'}, ARGV[1]}" 0 a
        EVAL "return redis.status_reply('FINE')" 0
        EVAL "return redis.error_reply('MYERR custom')" 0
        EVAL "return 3.99" 0
        EVAL "return nil" 0
        EVAL "return true" 0
        EVAL "return false" 0
        EVAL "return redis.call('INCR', KEYS[1])" 1 lua:k
        EVAL "return redis.pcall('INCR', KEYS[1])" 1 lua:k
        EVAL "return x" 0
        EVAL "this is not lua" 0
        EVAL "return 1" -1
        EVAL "return 1" 5 a
        EVAL "redis.setresp(3); return redis.call('HGETALL', KEYS[1])" 1 lua:h
        EVAL "return redis.call('SET', KEYS[1], ARGV[1])" 1 lua:k2 written
        GET lua:k2
        SCRIPT EXISTS 0049f04d559a6679fc4e224908e9c64e43946540
        SCRIPT LOAD "return 'loaded:' .. ARGV[1]"
        EVALSHA 0049f04d559a6679fc4e224908e9c64e43946540 0 arg
        EVALSHA 0000000000000000000000000000000000000000 0
        SCRIPT EXISTS 0049f04d559a6679fc4e224908e9c64e43946540 0000000000000000000000000000000000000000
        EVAL_RO "return redis.call('GET', KEYS[1])" 1 lua:k
        EVAL_RO "return redis.call('SET', KEYS[1], 'x')" 1 lua:k
        EVALSHA_RO 0049f04d559a6679fc4e224908e9c64e43946540 0 ro
        FUNCTION LOAD "#!lua name=corpuslib\nredis.register_function('corpus_get', function(keys, args) return redis.call('GET', keys[1]) end)\nredis.register_function('corpus_set', function(keys, args) return redis.call('SET', keys[1], args[1]) end)\nredis.register_function{function_name='corpus_echo', callback=function(keys, args) return args[1] end, flags={'no-writes'}}"
        FUNCTION LOAD "#!lua name=corpuslib\nredis.register_function('corpus_get', function(keys, args) return redis.call('GET', keys[1]) end)"
        FUNCTION LOAD REPLACE "#!lua name=corpuslib\nredis.register_function('corpus_get', function(keys, args) return redis.call('GET', keys[1]) end)\nredis.register_function('corpus_set', function(keys, args) return redis.call('SET', keys[1], args[1]) end)\nredis.register_function{function_name='corpus_echo', callback=function(keys, args) return args[1] end, flags={'no-writes'}}"
        FCALL corpus_get 1 lua:k
        FCALL corpus_set 1 lua:k3 v
        GET lua:k3
        FCALL_RO corpus_echo 0 hi
        FCALL_RO corpus_set 1 lua:k3 v
        FCALL nofunc 0
        FCALL corpus_get x
        FUNCTION DELETE corpuslib
        FUNCTION DELETE corpuslib
        FUNCTION LOAD "return 1"
        SCRIPT FLUSH
        SCRIPT EXISTS 0049f04d559a6679fc4e224908e9c64e43946540
        DEL lua:k lua:h lua:k2 lua:k3
        "##,
    )
}

fn keyspace() -> Family {
    family(
        "keyspace",
        r#"
        SET ks:a 1
        SET ks:b hello
        RPUSH ks:l 3 1 2
        SADD ks:s 5 6
        HSET ks:h f v
        ZADD ks:z 1 m
        XADD ks:x 1-1 f v
        PFADD ks:hll a
        SET ks:raw 0123456789012345678901234567890123456789012345678901234567890123456789
        TYPE ks:a
        TYPE ks:l
        TYPE ks:s
        TYPE ks:h
        TYPE ks:z
        TYPE ks:x
        TYPE ks:hll
        TYPE ks:missing
        OBJECT ENCODING ks:a
        OBJECT ENCODING ks:b
        OBJECT ENCODING ks:raw
        OBJECT ENCODING ks:l
        OBJECT ENCODING ks:s
        OBJECT ENCODING ks:h
        OBJECT ENCODING ks:z
        OBJECT ENCODING ks:x
        OBJECT ENCODING ks:missing
        OBJECT BOGUS ks:a
        DUMP ks:l
        RESTORE ks:l2 0 {last}
        LRANGE ks:l2 0 -1
        DUMP ks:h
        RESTORE ks:l2 0 {last}
        RESTORE ks:l2 0 {last} REPLACE
        TYPE ks:l2
        HGETALL ks:l2
        RESTORE ks:bad 0 garbage
        DUMP ks:missing
        RENAME ks:a ks:a2
        GET ks:a2
        RENAME ks:missing ks:x2
        RENAMENX ks:a2 ks:b
        RENAMENX ks:a2 ks:a
        COPY ks:b ks:bcopy
        COPY ks:b ks:bcopy
        COPY ks:a ks:bcopy REPLACE
        GET ks:bcopy
        COPY ks:missing ks:bcopy
        EXPIREAT ks:b 4102444800
        EXPIRETIME ks:b
        PEXPIRETIME ks:b
        EXPIRETIME ks:a
        EXPIRETIME ks:missing
        EXPIREAT ks:b 4102444801 GT
        EXPIREAT ks:b 4102444700 GT
        EXPIREAT ks:b 4102444900 NX
        EXPIRETIME ks:b
        PERSIST ks:b
        PERSIST ks:b
        TTL ks:b
        TTL ks:missing
        EXPIREAT ks:b notanumber
        TOUCH ks:a ks:b ks:missing
        EXISTS ks:a ks:a ks:missing
        SORT ks:l
        SORT ks:l DESC LIMIT 0 2
        SORT ks:l ALPHA
        RPUSH ks:names b c a
        SORT ks:names
        SORT ks:names ALPHA DESC
        SET ks:w_1 30
        SET ks:w_2 10
        SET ks:w_3 20
        SET ks:o_1 one
        SET ks:o_2 two
        SET ks:o_3 three
        SORT ks:l BY ks:w_* GET ks:o_* GET #
        SORT ks:l BY ks:w_* STORE ks:sorted
        LRANGE ks:sorted 0 -1
        SORT_RO ks:l DESC
        SORT ks:l LIMIT 0
        SORT ks:h
        unordered KEYS ks:w_*
        KEYS ks:o_1
        KEYS nomatch:*
        scan-all SCAN 0 MATCH ks:* COUNT 3
        scan-all SCAN 0 MATCH ks:w_* TYPE string
        scan-all HSCAN ks:h 0
        SCAN 0 MATCH ks:* COUNT x
        SCAN notacursor
        UNLINK ks:w_1 ks:w_2 ks:missing
        EXISTS ks:w_1 ks:w_3
        FLUSHDB
        EXISTS ks:a ks:l ks:s
        "#,
    )
}

fn server() -> Family {
    family(
        "server",
        r#"
        PING
        PING hello
        PING a b
        ECHO hi
        ECHO ""
        ECHO
        DBSIZE
        SET srv:k v
        DBSIZE
        EXISTS srv:k
        NOSUCHCOMMAND
        NOSUCHCOMMAND a b
        DEL srv:k
        DBSIZE
        "#,
    )
}

fn transactions() -> Family {
    family(
        "transactions",
        r#"
        MULTI
        SET tx:a 1
        INCR tx:a
        GET tx:a
        EXEC
        MULTI
        MULTI
        DISCARD
        DISCARD
        EXEC
        MULTI
        SET tx:b
        INCR tx:a
        EXEC
        GET tx:a
        MULTI
        SET tx:s x
        INCR tx:s
        LPUSH tx:s y
        EXEC
        WATCH tx:a
        @1 SET tx:a 100
        MULTI
        INCR tx:a
        EXEC
        GET tx:a
        WATCH tx:a
        UNWATCH
        @1 SET tx:a 200
        MULTI
        INCR tx:a
        EXEC
        WATCH tx:missing
        @1 SET tx:missing x
        MULTI
        GET tx:missing
        EXEC
        MULTI
        WATCH tx:b
        EXEC
        MULTI
        PING
        ECHO x
        BLPOP tx:empty 0
        EXEC
        DEL tx:a tx:s tx:missing
        "#,
    )
}

fn pubsub() -> Family {
    family(
        "pubsub",
        r#"
        @1 SUBSCRIBE ps:news ps:sport
        @1 recv
        PUBSUB NUMSUB ps:news ps:sport ps:none
        PUBSUB CHANNELS ps:n*
        PUBLISH ps:news hello
        @1 recv
        PUBLISH ps:none x
        @1 PING
        @1 GET ps:none
        @1 PSUBSCRIBE ps:s*
        PUBSUB NUMPAT
        PUBLISH ps:sport goal
        @1 recv
        @1 recv
        @1 UNSUBSCRIBE ps:news
        @1 UNSUBSCRIBE ps:sport
        @1 PUNSUBSCRIBE ps:s*
        @1 GET ps:none
        PUBSUB NUMSUB ps:news
        @1 UNSUBSCRIBE
        @1 SUBSCRIBE ps:solo
        @1 UNSUBSCRIBE
        @2 SSUBSCRIBE ps:shard
        PUBSUB SHARDNUMSUB ps:shard
        SPUBLISH ps:shard hi
        @2 recv
        @2 SUNSUBSCRIBE ps:shard
        PUBSUB SHARDNUMSUB ps:shard
        @1 SUBSCRIBE
        PUBLISH ps:news
        "#,
    )
}

fn blocking() -> Family {
    family(
        "blocking",
        r#"
        @1 send BLPOP bl:l 0
        RPUSH bl:l a b
        @1 recv
        LRANGE bl:l 0 -1
        BLPOP bl:empty 0.1
        BLPOP bl:l 0.1
        BLPOP bl:l -1
        BLPOP bl:l notanumber
        BLPOP bl:l
        @1 send BZPOPMIN bl:z 0
        ZADD bl:z 2 two 1 one
        @1 recv
        BZPOPMAX bl:z 0.1
        BZPOPMIN bl:z 0.1
        @1 send BLMOVE bl:src bl:dst LEFT RIGHT 0
        LPUSH bl:src x
        @1 recv
        LRANGE bl:dst 0 -1
        LLEN bl:src
        BLMOVE bl:empty bl:dst LEFT RIGHT 0.1
        @1 send BLMPOP 0 2 bl:e1 bl:e2 LEFT COUNT 2
        RPUSH bl:e2 p q r
        @1 recv
        BRPOP bl:e2 0.1
        @1 send BRPOPLPUSH bl:r bl:dst 0
        RPUSH bl:r y
        @1 recv
        @1 LRANGE bl:dst 0 -1
        @1 send XREAD BLOCK 0 STREAMS bl:x 0-0
        XADD bl:x 1-1 f v
        @1 recv
        XGROUP CREATE bl:x2 g $ MKSTREAM
        @1 send XREADGROUP GROUP g c BLOCK 0 STREAMS bl:x2 >
        XADD bl:x2 1-1 f v
        @1 recv
        SET bl:str x
        BLPOP bl:str 0.1
        DEL bl:l bl:z bl:dst bl:x bl:x2 bl:str
        "#,
    )
}

fn select() -> Family {
    family(
        "select",
        r#"
        SELECT 1
        SET sel:k in-db-1
        GET sel:k
        DBSIZE
        SELECT 0
        GET sel:k
        EXISTS sel:k
        SELECT 99
        SELECT x
        SET sel:k in-db-0
        MOVE sel:k 1
        MOVE sel:k 0
        SELECT 1
        DEL sel:k
        SELECT 0
        MOVE sel:k 1
        EXISTS sel:k
        COPY sel:missing sel:k DB 1
        SELECT 1
        GET sel:k
        DEL sel:k
        SELECT 0
        "#,
    )
}

fn addr(r: &Redis) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], r.port))
}

/// Fails unless the families left nothing behind: no key in databases 0 and 1, no function.
async fn assert_clean(r: &Redis, after: &str) {
    let mut w = Wire::connect(addr(r)).await;
    for db in [&b"0"[..], b"1"] {
        assert_eq!(w.call(&[b"SELECT", db]).await, b"+OK\r\n");
        let n = w.call(&[b"DBSIZE"]).await;
        assert_eq!(
            n,
            b":0\r\n",
            "{after} left keys in db {}: {}",
            show(db),
            show(&w.call(&[b"KEYS", b"*"]).await)
        );
    }
    let functions = w.call(&[b"FUNCTION", b"LIST"]).await;
    assert_eq!(functions, b"*0\r\n", "{after} left functions behind");
}

/// Asserts two runs' replies equal, naming the first step that differs.
fn assert_same(a: &[(String, Vec<u8>)], b: &[(String, Vec<u8>)], what: &str) {
    for (i, ((la, ra), (lb, rb))) in a.iter().zip(b).enumerate() {
        assert_eq!(la, lb, "{what}: the runs went out of step at reply {i}");
        assert!(
            ra == rb,
            "{what}: replies differ at {la}\n  one:   {}\n  other: {}",
            show(ra),
            show(rb)
        );
    }
    assert_eq!(a.len(), b.len(), "{what}: a different number of replies");
}

/// Runs the corpus `rounds` times against two redis-servers (the reference family by family,
/// checking each leaves nothing behind; the other in one go) and asserts every reply equal,
/// across the servers and across the rounds.
async fn deterministic(proto: Proto, rounds: usize) {
    let (reference, other) = (Redis::start(), Redis::start());
    let families = corpus();
    let mut first: Option<Vec<(String, Vec<u8>)>> = None;
    for round in 0..rounds {
        let mut ours = Vec::new();
        for f in &families {
            ours.extend(run(addr(&reference), proto, std::slice::from_ref(f)).await);
            assert_clean(&reference, f.name).await;
        }
        let theirs = run(addr(&other), proto, &families).await;
        assert_clean(&other, "the corpus").await;
        assert_same(
            &ours,
            &theirs,
            &format!("{proto:?} round {round}, reference vs stand-in"),
        );
        match &first {
            None => first = Some(ours),
            Some(first) => assert_same(first, &ours, &format!("{proto:?} round 0 vs {round}")),
        }
    }
}

#[test]
fn the_corpus_holds_at_least_300_commands_across_every_family() {
    let families = corpus();
    let mut names: Vec<&str> = families.iter().map(|f| f.name).collect();
    let counts: Vec<(&str, usize)> = families
        .iter()
        .map(|f| (f.name, f.steps.iter().filter(|s| s.sends()).count()))
        .collect();
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    println!("{counts:?}, {total} in all");
    assert!(total >= 300, "only {total} commands: {counts:?}");
    for (name, n) in &counts {
        assert!(*n >= 10, "family {name} sends only {n} commands");
    }
    // The stateful families exist and come last, so a gateway can run the others first.
    let tail: Vec<&str> = names[names.len() - STATEFUL.len()..].to_vec();
    assert_eq!(tail, STATEFUL);
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), families.len(), "family names repeat");
    // Only the stateful families use more than one connection.
    for f in &families {
        if !STATEFUL.contains(&f.name) {
            assert_eq!(f.connections(), 1, "{} uses several connections", f.name);
        }
    }
}

#[test]
fn the_wire_measures_whole_replies_of_every_type() {
    let whole: &[&[u8]] = &[
        b"+OK\r\n",
        b"-ERR no\r\n",
        b":-5\r\n",
        b"$-1\r\n",
        b"$0\r\n\r\n",
        b"$4\r\na\r\nb\r\n",
        b"*-1\r\n",
        b"*2\r\n*1\r\n:1\r\n$1\r\nx\r\n",
        b"_\r\n",
        b",1.5\r\n",
        b"#t\r\n",
        b"(123\r\n",
        b"!3\r\nERR\r\n",
        b"=7\r\ntxt:abc\r\n",
        b"%1\r\n+k\r\n~2\r\n:1\r\n:2\r\n",
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n",
        b"|1\r\n+ttl\r\n:3\r\n*1\r\n:1\r\n",
    ];
    for r in whole {
        let mut buf = r.to_vec();
        buf.extend_from_slice(b"+NEXT\r\n");
        assert_eq!(reply_len(&buf), Ok(Some(r.len())), "{}", show(r));
        for cut in 0..r.len() {
            assert_eq!(reply_len(&r[..cut]), Ok(None), "{} cut at {cut}", show(r));
        }
    }
    assert!(
        reply_len(b"$?\r\n").is_err(),
        "streamed strings are refused"
    );
    assert!(reply_len(b"x\r\n").is_err(), "an unknown type is refused");
    assert_eq!(
        elements(b"%1\r\n+k\r\n:1\r\n"),
        vec![&b"+k\r\n"[..], b":1\r\n"]
    );
    assert_eq!(bulk(b"$2\r\nab\r\n"), Some(&b"ab"[..]));
    assert_eq!(show(b"+a\\\r\n\x00"), "+a\\\\\\r\\n\\x00");
    assert_eq!(
        sorted(b"*3\r\n$1\r\nb\r\n:1\r\n$1\r\na\r\n"),
        b"*3\r\n$1\r\na\r\n$1\r\nb\r\n:1\r\n"
    );
    let s = step(r#"@2 send SET k "a b\r\n\x41" """#).unwrap();
    assert!(
        matches!(&s, Step::Send(2, a) if a == &[&b"SET"[..], b"k", b"a b\r\nA", b""]),
        "{s:?}"
    );
    assert_eq!(s.to_string(), r#"@2 send SET k "a b\r\nA" """#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_is_deterministic_against_redis_server_resp2() {
    deterministic(Proto::Resp2, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_is_deterministic_against_redis_server_resp3() {
    deterministic(Proto::Resp3, 5).await;
}

/// The families run over a cluster: all but those that need a dedicated connection, whose
/// keys span slots (one transaction writes `tx:a` and `tx:s`, BLMOVE moves across lists) and
/// whose PUBSUB NUMSUB counts one node's subscribers (`tests/dedicated.rs` covers them).
fn stateless() -> Vec<Family> {
    corpus()
        .into_iter()
        .filter(|f| !STATEFUL.contains(&f.name))
        .collect()
}

/// Runs every family through a tiergate in front of a redis-server of its own, and against a
/// redis-server alone, and asserts every reply byte-equal.
async fn through_tiergate(proto: Proto) {
    let reference = Redis::start();
    let l2 = Redis::start();
    let gw = support::Gateway::start_ready(support::config(Some(&l2.url()))).await;
    let resp = gw.running.as_ref().unwrap().resp_addr;
    let families = corpus();
    let want = run(addr(&reference), proto, &families).await;
    let got = run(resp, proto, &families).await;
    assert_same(&want, &got, &format!("{proto:?}, redis-server vs tiergate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_through_tiergate_are_redis_servers_byte_for_byte_resp2() {
    through_tiergate(Proto::Resp2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_through_tiergate_are_redis_servers_byte_for_byte_resp3() {
    through_tiergate(Proto::Resp3).await;
}

/// Commands tiergate splits by slot over a cluster, as cluster clients do; any other whose
/// keys span slots is answered `CROSSSLOT`.
const SPLIT: &[&str] = &["MGET", "DEL", "UNLINK", "EXISTS", "TOUCH"];

const CROSSSLOT: &[u8] = b"-CROSSSLOT Keys in request don't hash to the same slot\r\n";

/// Steps a Redis Cluster answers otherwise than one redis-server, whatever routes them: the
/// cluster's own refusal (SORT's BY and GET patterns may name keys of any slot), as the
/// reply starts.
const CLUSTER_MODE: &[(&str, &str)] = &[(
    "SORT ks:l BY ks:w_* GET ks:o_* GET #",
    "-ERR BY option of SORT denied in Cluster mode",
)];

/// The keys of `args` as redis-server finds them (COMMAND GETKEYS; none when it finds none
/// or the arguments are wrong), and how many distinct slots they fall in.
async fn slots(keys: &mut Wire, slotter: &mut Wire, args: &[Vec<u8>]) -> usize {
    let mut getkeys: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
    getkeys.extend(args.iter().map(Vec::as_slice));
    let reply = keys.call(&getkeys).await;
    if !reply.starts_with(b"*") {
        return 0;
    }
    let mut slots = Vec::new();
    for k in elements(&reply) {
        let key = bulk(k).expect("a key");
        slots.push(slotter.call(&[b"CLUSTER", b"KEYSLOT", key]).await);
    }
    slots.sort();
    slots.dedup();
    slots.len()
}

/// Runs one step's command (its `LAST` replaced by `last`) as `run` would.
async fn step_on(w: &mut Wire, s: &Step, args: &[Vec<u8>]) -> Vec<u8> {
    match s {
        Step::ScanAll(..) => scan_all(w, args).await,
        Step::Unordered(..) => sorted(&w.call(&refs(args)).await),
        _ => w.call(&refs(args)).await,
    }
}

/// Runs the stateless families through a tiergate over a 3-master cluster and against one
/// redis-server, step by step: a step whose keys span slots (by the server's COMMAND
/// GETKEYS) and that is not split must be answered exactly `CROSSSLOT` by tiergate, and is
/// not run on the server (so both keep the same data); every other step must be answered
/// byte for byte alike, but for `CLUSTER_MODE`.
async fn through_tiergate_over_a_cluster(proto: Proto) {
    let reference = Redis::start();
    let cluster = support::Cluster::start();
    let gw = support::Gateway::start_ready(cluster.config()).await;
    let resp = gw.running.as_ref().unwrap().resp_addr;
    let mut keys = Wire::connect(addr(&reference)).await;
    let mut slotter = Wire::connect(addr(&cluster.nodes[0])).await;
    let (mut crossslot, mut split, mut compared) = (0, 0, 0);
    for f in stateless() {
        let mut want_conn = Wire::connect(addr(&reference)).await;
        let mut got_conn = Wire::connect(resp).await;
        if proto == Proto::Resp3 {
            want_conn.hello3().await;
            got_conn.hello3().await;
        }
        let (mut want_last, mut got_last) = (Vec::new(), Vec::new());
        for (i, s) in f.steps.iter().enumerate() {
            let label = format!("{proto:?} {}/{i} {s}", f.name);
            let (Step::Call(_, args)
            | Step::ScanAll(_, args)
            | Step::Unordered(_, args)
            | Step::CallWithLast(_, args)) = s
            else {
                panic!("{label}: a stateless family sends and reads in step");
            };
            let with = |last: &Vec<u8>| -> Vec<Vec<u8>> {
                args.iter()
                    .map(|a| if a == LAST { last.clone() } else { a.clone() })
                    .collect()
            };
            let (want_args, got_args) = (with(&want_last), with(&got_last));
            let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
            let spans = slots(&mut keys, &mut slotter, &want_args).await > 1;
            let got = step_on(&mut got_conn, s, &got_args).await;
            if spans && !SPLIT.contains(&name.as_str()) {
                assert!(
                    got == CROSSSLOT,
                    "{label}: keys across slots, but tiergate answered {}",
                    show(&got)
                );
                crossslot += 1;
                continue;
            }
            split += usize::from(spans);
            let want = step_on(&mut want_conn, s, &want_args).await;
            let line = s.to_string();
            match CLUSTER_MODE.iter().find(|(step, _)| line.ends_with(step)) {
                Some((_, refusal)) => assert!(
                    got.starts_with(refusal.as_bytes()),
                    "{label}: {}",
                    show(&got)
                ),
                None => {
                    assert!(
                        want == got,
                        "{label}: replies differ\n  redis-server: {}\n  tiergate:     {}",
                        show(&want),
                        show(&got)
                    );
                    compared += 1;
                }
            }
            if let Some(b) = bulk(&want) {
                want_last = b.to_vec();
            }
            if let Some(b) = bulk(&got) {
                got_last = b.to_vec();
            }
        }
    }
    println!("{proto:?}: {compared} replies equal, {split} split, {crossslot} CROSSSLOT");
    assert!(compared > 500, "only {compared} compared");
    assert!(
        crossslot >= 20 && split >= 10,
        "{crossslot} CROSSSLOT, {split} split"
    );
    assert_clean(&reference, "the corpus").await;
    let dbsize = Wire::connect(resp).await.call(&[b"DBSIZE"]).await;
    assert_eq!(dbsize, b":0\r\n", "the corpus left keys on the cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_through_tiergate_over_a_cluster_are_a_clusters_resp2() {
    through_tiergate_over_a_cluster(Proto::Resp2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_through_tiergate_over_a_cluster_are_a_clusters_resp3() {
    through_tiergate_over_a_cluster(Proto::Resp3).await;
}
