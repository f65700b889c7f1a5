//! The replies of several cluster nodes to one forwarded command, made into the reply one
//! Redis would have sent, from their bytes (RESP2 or RESP3): what a split command (MGET, DEL
//! ... across slots) and a command sent to every master (DBSIZE, KEYS, FLUSHALL ...) answer
//! the client. How is Redis' own `response_policy` command tip (`Merge::of`), or the key
//! order of a split MGET (`Merge::Spread`).
//!
//! Elements are never decoded: an aggregate's elements are found with the reply framer and
//! spliced under a new header, so a value comes back byte for byte as its node sent it. Only
//! integers are read, where they are added, compared or and-ed.

use super::{pipe::decimal, reply::Framer, table::ResponsePolicy};
use bytes::{BufMut, Bytes, BytesMut};

/// How the replies of a command's parts make its reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Merge {
    /// Integers added (agg_sum: DBSIZE; DEL, UNLINK, EXISTS, TOUCH split by slot).
    Sum,
    /// The least integer (agg_min: WAIT).
    Min,
    /// The greatest integer (agg_max).
    Max,
    /// 1 when every integer is non-zero (agg_logical_and: SCRIPT EXISTS, element by element).
    And,
    /// 1 when any integer is non-zero (agg_logical_or).
    Or,
    /// The first error, or else the first reply (FLUSHALL, SCRIPT LOAD, FUNCTION LOAD).
    AllSucceeded,
    /// The first reply that is not an error, or else the first error (SCRIPT KILL).
    OneSucceeded,
    /// No policy: aggregates concatenated (KEYS), or else the first reply that is not null
    /// (RANDOMKEY); the first error before either.
    Collect,
    /// A split MGET: part `i`'s elements go, in order, to `positions[i]` of an array of
    /// `len` elements (the client's key order).
    Spread {
        positions: Vec<Vec<usize>>,
        len: usize,
    },
}

impl Merge {
    /// The merge Redis' response policy asks for (`Special` is the caller's to avoid).
    pub fn of(policy: Option<ResponsePolicy>) -> Merge {
        match policy {
            Some(ResponsePolicy::AggSum) => Merge::Sum,
            Some(ResponsePolicy::AggMin) => Merge::Min,
            Some(ResponsePolicy::AggMax) => Merge::Max,
            Some(ResponsePolicy::AggLogicalAnd) => Merge::And,
            Some(ResponsePolicy::AggLogicalOr) => Merge::Or,
            Some(ResponsePolicy::AllSucceeded) => Merge::AllSucceeded,
            Some(ResponsePolicy::OneSucceeded) => Merge::OneSucceeded,
            Some(ResponsePolicy::Special) | None => Merge::Collect,
        }
    }
}

/// The reply made of `parts` (each one whole reply, in node or slot order).
pub fn merge(how: &Merge, parts: &[Bytes]) -> Bytes {
    let Some(first) = parts.first() else {
        return Bytes::from_static(b"-ERR no node answered\r\n");
    };
    let first_error = || parts.iter().find(|p| is_error(p)).cloned();
    match how {
        Merge::AllSucceeded => first_error().unwrap_or_else(|| first.clone()),
        Merge::OneSucceeded => parts.iter().find(|p| !is_error(p)).unwrap_or(first).clone(),
        Merge::Sum | Merge::Min | Merge::Max | Merge::And | Merge::Or => {
            first_error().unwrap_or_else(|| numbers(how, parts).unwrap_or_else(|| first.clone()))
        }
        Merge::Collect => first_error().unwrap_or_else(|| collect(parts)),
        Merge::Spread { positions, len } => first_error().unwrap_or_else(|| {
            spread(parts, positions, *len).unwrap_or_else(|| {
                Bytes::from_static(b"-ERR the nodes' replies to a split command do not fit it\r\n")
            })
        }),
    }
}

/// An error reply: simple (`-`) or, in RESP3, bulk (`!`).
pub fn is_error(reply: &[u8]) -> bool {
    matches!(reply.first(), Some(b'-' | b'!'))
}

fn is_null(reply: &[u8]) -> bool {
    matches!(reply, b"$-1\r\n" | b"*-1\r\n" | b"_\r\n")
}

/// An integer reply's value.
fn integer(reply: &[u8]) -> Option<i64> {
    decimal(reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?)
}

fn combine(how: &Merge, a: i64, b: i64) -> i64 {
    match how {
        Merge::Sum => a.saturating_add(b),
        Merge::Min => a.min(b),
        Merge::Max => a.max(b),
        Merge::And => i64::from(a != 0 && b != 0),
        Merge::Or => i64::from(a != 0 || b != 0),
        _ => a,
    }
}

/// Integers combined, or arrays of integers combined element by element (SCRIPT EXISTS);
/// None when the replies are not all of one such shape.
fn numbers(how: &Merge, parts: &[Bytes]) -> Option<Bytes> {
    let logical = matches!(how, Merge::And | Merge::Or);
    // A lone integer under and/or is still 0 or 1.
    let start = |n: i64| if logical { i64::from(n != 0) } else { n };
    if let Some(first) = integer(&parts[0]) {
        let mut acc = start(first);
        for p in &parts[1..] {
            acc = combine(how, acc, integer(p)?);
        }
        return Some(int_reply(acc));
    }
    let (kind, first) = elements(&parts[0])?;
    let mut acc: Vec<i64> = first
        .iter()
        .map(|e| integer(e).map(start))
        .collect::<Option<_>>()?;
    for p in &parts[1..] {
        let (k, items) = elements(p)?;
        if k != kind || items.len() != acc.len() {
            return None;
        }
        for (a, e) in acc.iter_mut().zip(items) {
            *a = combine(how, *a, integer(e)?);
        }
    }
    let mut out = BytesMut::with_capacity(16 + acc.len() * 4);
    header(&mut out, kind, acc.len());
    for n in acc {
        out.put_slice(&int_reply(n));
    }
    Some(out.freeze())
}

fn int_reply(n: i64) -> Bytes {
    let mut b = itoa::Buffer::new();
    let mut out = BytesMut::with_capacity(24);
    out.put_u8(b':');
    out.put_slice(b.format(n).as_bytes());
    out.put_slice(b"\r\n");
    out.freeze()
}

/// Aggregates of one kind concatenated, a map's pairs included; else the first reply that
/// is not null, else the first.
fn collect(parts: &[Bytes]) -> Bytes {
    let first = &parts[0];
    if let Some((kind, _)) = elements(first) {
        let mut all = Vec::new();
        for p in parts {
            match elements(p) {
                Some((k, items)) if k == kind => all.extend(items),
                _ => return first.clone(),
            }
        }
        let size = all.iter().map(|e| e.len()).sum::<usize>() + 24;
        let mut out = BytesMut::with_capacity(size);
        // A map's count is of pairs.
        let count = if kind == b'%' {
            all.len() / 2
        } else {
            all.len()
        };
        header(&mut out, kind, count);
        all.iter().for_each(|e| out.put_slice(e));
        return out.freeze();
    }
    parts.iter().find(|p| !is_null(p)).unwrap_or(first).clone()
}

/// See `Merge::Spread`; None when a part does not have as many elements as it has keys.
fn spread(parts: &[Bytes], positions: &[Vec<usize>], len: usize) -> Option<Bytes> {
    if parts.len() != positions.len() {
        return None;
    }
    let mut slots: Vec<Option<&[u8]>> = vec![None; len];
    let mut kind = b'*';
    for (part, at) in parts.iter().zip(positions) {
        let (k, items) = elements(part)?;
        if items.len() != at.len() {
            return None;
        }
        kind = k;
        for (item, &i) in items.into_iter().zip(at) {
            *slots.get_mut(i)? = Some(item);
        }
    }
    let size = slots
        .iter()
        .map(|s| s.map_or(0, <[u8]>::len))
        .sum::<usize>()
        + 24;
    let mut out = BytesMut::with_capacity(size);
    header(&mut out, kind, len);
    for s in slots {
        out.put_slice(s?);
    }
    Some(out.freeze())
}

fn header(out: &mut BytesMut, kind: u8, count: usize) {
    out.put_u8(kind);
    out.put_slice(itoa::Buffer::new().format(count).as_bytes());
    out.put_slice(b"\r\n");
}

/// An aggregate reply's kind (`*` array, `~` set, `%` map) and its top-level elements (a
/// map's keys and values in turn), each as its bytes; None for anything else, a null array
/// included.
pub fn elements(reply: &[u8]) -> Option<(u8, Vec<&[u8]>)> {
    let kind = *reply.first().filter(|k| matches!(k, b'*' | b'~' | b'%'))?;
    let nl = memchr::memchr(b'\n', reply)?;
    let count = reply.get(1..nl.checked_sub(1)?)?;
    let count = usize::try_from(decimal(count)?).ok()?;
    let count = if kind == b'%' {
        count.checked_mul(2)?
    } else {
        count
    };
    let mut at = nl + 1;
    // Bounded by the reply: every element takes at least 3 bytes.
    let mut items = Vec::with_capacity(count.min(reply.len() / 3));
    for _ in 0..count {
        let rest = reply.get(at..)?;
        let len = Framer::default().scan(rest).ok()??;
        items.push(&rest[..len]);
        at += len;
    }
    (at == reply.len()).then_some((kind, items))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn m(how: &Merge, parts: &[&str]) -> String {
        let parts: Vec<Bytes> = parts.iter().map(|p| b(p)).collect();
        String::from_utf8(merge(how, &parts).to_vec()).unwrap()
    }

    #[test]
    fn integers_are_added_compared_and_combined() {
        assert_eq!(m(&Merge::Sum, &[":1\r\n", ":0\r\n", ":41\r\n"]), ":42\r\n");
        assert_eq!(m(&Merge::Min, &[":3\r\n", ":-2\r\n"]), ":-2\r\n");
        assert_eq!(m(&Merge::Max, &[":3\r\n", ":-2\r\n"]), ":3\r\n");
        assert_eq!(m(&Merge::And, &[":1\r\n", ":0\r\n"]), ":0\r\n");
        assert_eq!(m(&Merge::Or, &[":0\r\n", ":7\r\n"]), ":1\r\n");
        assert_eq!(
            m(&Merge::Sum, &[":9223372036854775807\r\n", ":1\r\n"]),
            ":9223372036854775807\r\n"
        );
        // SCRIPT EXISTS: element by element.
        assert_eq!(
            m(&Merge::And, &["*2\r\n:1\r\n:1\r\n", "*2\r\n:1\r\n:0\r\n"]),
            "*2\r\n:1\r\n:0\r\n"
        );
        // The first error wins; a shape that cannot be combined is the first reply.
        assert_eq!(
            m(&Merge::Sum, &[":1\r\n", "-ERR no\r\n", "-ERR other\r\n"]),
            "-ERR no\r\n"
        );
        assert_eq!(m(&Merge::Sum, &["+OK\r\n", ":1\r\n"]), "+OK\r\n");
    }

    #[test]
    fn all_and_one_succeeded() {
        assert_eq!(m(&Merge::AllSucceeded, &["+OK\r\n", "+OK\r\n"]), "+OK\r\n");
        assert_eq!(
            m(&Merge::AllSucceeded, &["+OK\r\n", "-ERR x\r\n"]),
            "-ERR x\r\n"
        );
        assert_eq!(
            m(&Merge::OneSucceeded, &["-NOTBUSY a\r\n", "+OK\r\n"]),
            "+OK\r\n"
        );
        assert_eq!(
            m(&Merge::OneSucceeded, &["-NOTBUSY a\r\n", "-NOTBUSY b\r\n"]),
            "-NOTBUSY a\r\n"
        );
    }

    #[test]
    fn aggregates_are_concatenated_as_sent() {
        assert_eq!(
            m(
                &Merge::Collect,
                &[
                    "*1\r\n$1\r\na\r\n",
                    "*0\r\n",
                    "*2\r\n$2\r\nbc\r\n$0\r\n\r\n"
                ]
            ),
            "*3\r\n$1\r\na\r\n$2\r\nbc\r\n$0\r\n\r\n"
        );
        assert_eq!(
            m(&Merge::Collect, &["~1\r\n+a\r\n", "~1\r\n+b\r\n"]),
            "~2\r\n+a\r\n+b\r\n"
        );
        assert_eq!(
            m(
                &Merge::Collect,
                &["%1\r\n+a\r\n:1\r\n", "%1\r\n+b\r\n*1\r\n:2\r\n"]
            ),
            "%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n"
        );
        // RANDOMKEY: the first that is not null.
        assert_eq!(
            m(&Merge::Collect, &["$-1\r\n", "$1\r\nk\r\n"]),
            "$1\r\nk\r\n"
        );
        assert_eq!(m(&Merge::Collect, &["_\r\n", "_\r\n"]), "_\r\n");
    }

    #[test]
    fn a_split_mget_comes_back_in_key_order() {
        let how = Merge::Spread {
            positions: vec![vec![0, 2], vec![1, 3]],
            len: 4,
        };
        assert_eq!(
            m(
                &how,
                &["*2\r\n$1\r\na\r\n$-1\r\n", "*2\r\n$1\r\nb\r\n$1\r\nd\r\n"]
            ),
            "*4\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n$1\r\nd\r\n"
        );
        assert_eq!(
            m(&how, &["*2\r\n_\r\n$1\r\nc\r\n", "*2\r\n$1\r\nb\r\n_\r\n"]),
            "*4\r\n_\r\n$1\r\nb\r\n$1\r\nc\r\n_\r\n"
        );
        assert!(m(&how, &["*1\r\n$1\r\na\r\n", "*2\r\n:1\r\n:2\r\n"]).starts_with("-ERR"));
        assert_eq!(
            m(&how, &["*2\r\n:1\r\n:2\r\n", "-MOVED 1 h:1\r\n"]),
            "-MOVED 1 h:1\r\n"
        );
    }

    #[test]
    fn elements_are_framed_not_guessed() {
        let (kind, items) = elements(b"*2\r\n*1\r\n$3\r\na\r\n\r\n:5\r\n").unwrap();
        assert_eq!(kind, b'*');
        assert_eq!(items, vec![&b"*1\r\n$3\r\na\r\n\r\n"[..], b":5\r\n"]);
        for bad in [
            &b"*-1\r\n"[..],
            b"*2\r\n:1\r\n",
            b"*1\r\n:1\r\n:2\r\n",
            b"$1\r\na\r\n",
            b"*x\r\n",
            b"*99999999999999999999\r\n",
        ] {
            assert!(elements(bad).is_none(), "{bad:?}");
        }
    }
}
