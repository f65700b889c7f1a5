//! RESP frames. Requests: a cheap `check` that finds where the next complete command ends
//! (validating every length against its bound before anything is allocated), then `parse`
//! that slices the arguments out of the read buffer without copying them. "Incomplete" is a
//! normal outcome (`Ok(None)`), not an error. Replies: `Frame`, encoded as RESP2 or RESP3.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::borrow::Cow;

/// Bounds on what a client may send, checked before buffering.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Arguments in one multibulk command.
    pub max_multibulk_len: usize,
    /// Bytes in one bulk argument (a key or a value).
    pub max_bulk_len: usize,
    /// The config key `max_bulk_len` comes from, named in the error that enforces it: a
    /// client told only "invalid bulk length" cannot tell a limit from a bug.
    pub max_bulk_len_from: &'static str,
    /// Bytes in an inline command line, and in a `*N` / `$N` header line.
    pub max_inline_len: usize,
    /// Bytes in one whole command, checked from the headers before its bytes are buffered.
    pub max_request_len: usize,
}

/// A framing error: the connection is answered with `-ERR Protocol error: ...` and closed,
/// because after one the byte stream can no longer be split into commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// Not a length: no digits, leading zeros, negative, or not ending its line.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A length, over `Limits::max_bulk_len`.
    #[error("Protocol error: bulk length {len} exceeds {limit} ({max})")]
    BulkTooLong {
        len: u64,
        max: u64,
        limit: &'static str,
    },
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0))]
    ExpectedBulk(u8),
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    #[error("Protocol error: too big mbulk count string")]
    TooBigCount,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: request exceeds resp.max_request_bytes")]
    TooBigRequest,
}

/// How far `check` got through a multibulk command that has not fully arrived, so the next
/// read resumes there instead of rescanning every argument header from the start (which
/// would cost O(args^2) for a large command trickling in). Reset when a command completes.
///
/// `u32`s because every connection carries one: argc is bounded by `max_multibulk_len` (at
/// most 2^31 - 1) and offsets by `max_request_len` (config keeps it below 4 GiB).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    argc: u32,
    /// Arguments fully checked, and the offset just after the last of them.
    done: u32,
    pos: u32,
}

/// Where the next command lies in the buffer.
enum Layout {
    /// A multibulk command of `argc` arguments, `len` bytes long.
    Multibulk { len: usize, argc: usize },
    /// An inline command line of `len` bytes (newline included).
    Inline { len: usize },
    /// `*0`, `*-1` or a blank line: consumed, nothing to run (as redis-server does).
    Empty { len: usize },
}

/// Takes the next complete command out of `buf`: `Ok(None)` when more bytes are needed.
/// Nothing is reserved for the part of a command still to come: memory follows the bytes a
/// client actually sent, never a length it declared (a 40-byte header declaring a 4 MiB value
/// once reserved 4 MiB). The reader grows the buffer by doubling as bytes arrive, so a large
/// value is still copied only O(log n) times.
pub fn parse(
    buf: &mut BytesMut,
    limits: &Limits,
    progress: &mut Progress,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    loop {
        let checked = check(buf, limits, progress);
        if !matches!(checked, Ok(Check::Incomplete)) {
            *progress = Progress::default();
        }
        match checked? {
            Check::Incomplete => return Ok(None),
            Check::Complete(Layout::Empty { len }) => {
                buf.advance(len);
                continue;
            }
            Check::Complete(Layout::Multibulk { len, argc }) => {
                let frame = buf.split_to(len).freeze();
                return Ok(Some(split_multibulk(frame, argc)));
            }
            Check::Complete(Layout::Inline { len }) => {
                let line = buf.split_to(len).freeze();
                return split_inline(line).map(Some);
            }
        }
    }
}

enum Check {
    Complete(Layout),
    Incomplete,
}

fn check(buf: &[u8], limits: &Limits, progress: &mut Progress) -> Result<Check, ProtocolError> {
    let Some(&first) = buf.first() else {
        return Ok(Check::Incomplete);
    };
    if first != b'*' {
        return check_inline(buf, limits);
    }
    let (argc, mut pos, done) = if progress.argc > 0 {
        (
            progress.argc as usize,
            progress.pos as usize,
            progress.done as usize,
        )
    } else {
        let Some((count, pos)) = header_line(buf, 1, limits, ProtocolError::TooBigCount)? else {
            return Ok(Check::Incomplete);
        };
        let argc = count.ok_or(ProtocolError::InvalidMultibulkLength)?;
        match argc {
            n if n <= 0 => return Ok(Check::Complete(Layout::Empty { len: pos })),
            n if n as u64 > limits.max_multibulk_len as u64 => {
                return Err(ProtocolError::InvalidMultibulkLength)
            }
            n => (n as usize, pos, 0),
        }
    };
    for i in done..argc {
        *progress = Progress {
            argc: argc as u32,
            done: i as u32,
            pos: pos as u32,
        };
        let Some(&tag) = buf.get(pos) else {
            return Ok(Check::Incomplete);
        };
        if tag != b'$' {
            return Err(ProtocolError::ExpectedBulk(tag));
        }
        let Some((len, data)) =
            header_line(buf, pos + 1, limits, ProtocolError::InvalidBulkLength)?
        else {
            return Ok(Check::Incomplete);
        };
        let len = match len {
            Some(n) if n >= 0 && n as u64 <= limits.max_bulk_len as u64 => n as usize,
            Some(n) if n >= 0 => {
                return Err(ProtocolError::BulkTooLong {
                    len: n as u64,
                    max: limits.max_bulk_len as u64,
                    limit: limits.max_bulk_len_from,
                })
            }
            _ => return Err(ProtocolError::InvalidBulkLength),
        };
        let end = data + len + 2;
        if end > limits.max_request_len {
            return Err(ProtocolError::TooBigRequest);
        }
        if buf.len() < end {
            return Ok(Check::Incomplete);
        }
        if &buf[data + len..end] != b"\r\n" {
            return Err(ProtocolError::InvalidBulkLength);
        }
        pos = end;
    }
    Ok(Check::Complete(Layout::Multibulk { len: pos, argc }))
}

/// A `*N\r\n` / `$N\r\n` line starting at `from` (just after its tag): its value, None when
/// it is not a decimal of at most 18 digits, and the offset after the line. Ok(None) until
/// the line has arrived. The digits are read as they are walked: a length line is found and
/// read in one pass, and only one that is not a length is searched on for its end.
// Inline, with `leading_decimal`: called three times per GET, the calls were a third of the
// parse (callgrind, 3.14k -> 3.02k instructions per pipelined GET).
#[inline(always)]
fn header_line(
    buf: &[u8],
    from: usize,
    limits: &Limits,
    too_long: ProtocolError,
) -> Result<Option<(Option<i64>, usize)>, ProtocolError> {
    let rest = &buf[from.min(buf.len())..];
    let (n, end) = leading_decimal(rest);
    let cr = if rest.get(end) == Some(&b'\r') {
        Some(end)
    } else {
        find_cr(&rest[end..]).map(|i| end + i)
    };
    match cr {
        Some(i) if rest.len() > i + 1 => Ok(Some((n.filter(|_| i == end), from + i + 2))),
        Some(_) => Ok(None),
        None if rest.len() > limits.max_inline_len => Err(too_long),
        None => Ok(None),
    }
}

/// The signed decimal `bytes` start with, of 1 to 18 digits (None: no digits), and where it
/// ends. Past 18 digits it stops, so that a longer one is not followed by its `\r`. Written
/// as redis-server's `string2ll` reads it: a leading zero (`$05`, `*00`) or a minus zero
/// (`*-0`) is not a number, so both servers split a byte stream into the same commands.
#[inline]
fn leading_decimal(bytes: &[u8]) -> (Option<i64>, usize) {
    let digit = |i: usize| {
        bytes
            .get(i)
            .map(|b| b.wrapping_sub(b'0'))
            .filter(|&d| d <= 9)
    };
    let neg = bytes.first() == Some(&b'-');
    let start = usize::from(neg);
    // The first digit read apart, so the leading-zero check costs no second look.
    let Some(first) = digit(start) else {
        return (None, start);
    };
    let mut n = i64::from(first);
    let mut i = start + 1;
    while let Some(d) = digit(i) {
        if i - start == 18 {
            break;
        }
        n = n * 10 + i64::from(d);
        i += 1;
    }
    let zero_led = first == 0 && (neg || i - start > 1);
    let value = (!zero_led).then_some(if neg { -n } else { n });
    (value, i)
}

/// The first `\r` in `bytes`. Header lines are a few digits: a plain loop over the first
/// bytes finds their end for a tenth of what memchr's vector setup costs per call, and
/// memchr takes over for a longer (inline) line.
fn find_cr(bytes: &[u8]) -> Option<usize> {
    const SHORT: usize = 24;
    let head = &bytes[..bytes.len().min(SHORT)];
    match head.iter().position(|&b| b == b'\r') {
        Some(i) => Some(i),
        None if bytes.len() > SHORT => memchr::memchr(b'\r', &bytes[SHORT..]).map(|i| i + SHORT),
        None => None,
    }
}

fn check_inline(buf: &[u8], limits: &Limits) -> Result<Check, ProtocolError> {
    match memchr::memchr(b'\n', buf) {
        Some(i) if i > limits.max_inline_len => Err(ProtocolError::TooBigInline),
        Some(i) if buf[..i].iter().all(|&b| is_space(b)) => {
            Ok(Check::Complete(Layout::Empty { len: i + 1 }))
        }
        Some(i) => Ok(Check::Complete(Layout::Inline { len: i + 1 })),
        None if buf.len() > limits.max_inline_len => Err(ProtocolError::TooBigInline),
        None => Ok(Check::Incomplete),
    }
}

fn split_multibulk(frame: Bytes, argc: usize) -> Vec<Bytes> {
    let mut args = Vec::with_capacity(argc);
    // Lengths were validated by `check`; walk the same layout again, slicing.
    let (_, count_end) = leading_decimal(&frame[1..]);
    let mut pos = 1 + count_end + 2;
    for _ in 0..argc {
        let (len, len_end) = leading_decimal(&frame[pos + 1..]);
        let data = pos + 1 + len_end + 2;
        let len = len.expect("checked") as usize;
        args.push(frame.slice(data..data + len));
        pos = data + len + 2;
    }
    args
}

/// What redis-server's inline splitter (`sdssplitargs`) skips between arguments and accepts
/// after a closing quote: C's `isspace`, which, unlike `is_ascii_whitespace`, takes the
/// vertical tab.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// What ends an unquoted argument in `sdssplitargs`: fewer bytes than it skips, so `a\x0bb`
/// is one argument there, and here.
fn ends_arg(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Splits an inline command like redis-server: on whitespace, with "double" and 'single'
/// quoted arguments (double quotes take \n, \t, \\, \" and \xHH escapes). A NUL is kept
/// in its argument (redis-server, reading the line as a C string, waits for a newline past
/// it that it never sees).
fn split_inline(line: Bytes) -> Result<Vec<Bytes>, ProtocolError> {
    let text: &[u8] = line.strip_suffix(b"\n").unwrap_or(&line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    let mut args = Vec::new();
    let mut i = 0;
    while i < text.len() {
        if is_space(text[i]) {
            i += 1;
            continue;
        }
        match text[i] {
            q @ (b'"' | b'\'') => {
                let mut arg = Vec::new();
                i += 1;
                loop {
                    let Some(&c) = text.get(i) else {
                        return Err(ProtocolError::UnbalancedQuotes);
                    };
                    i += 1;
                    if c == q {
                        // A closing quote must end the argument.
                        if text.get(i).is_some_and(|&c| !is_space(c)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        break;
                    }
                    if c == b'\\' && q == b'"' {
                        let Some(&e) = text.get(i) else {
                            return Err(ProtocolError::UnbalancedQuotes);
                        };
                        i += 1;
                        arg.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'x' if text.len() >= i + 2
                                && text[i..i + 2].iter().all(u8::is_ascii_hexdigit) =>
                            {
                                let hex = std::str::from_utf8(&text[i..i + 2]).expect("hex digits");
                                i += 2;
                                u8::from_str_radix(hex, 16).expect("hex digits")
                            }
                            other => other,
                        });
                    } else if c == b'\\' && q == b'\'' && text.get(i) == Some(&b'\'') {
                        arg.push(b'\'');
                        i += 1;
                    } else {
                        arg.push(c);
                    }
                }
                args.push(Bytes::from(arg));
            }
            _ => {
                let start = i;
                while i < text.len() && !ends_arg(text[i]) {
                    i += 1;
                }
                let offset = start + (text.as_ptr() as usize - line.as_ptr() as usize);
                args.push(line.slice(offset..offset + (i - start)));
            }
        }
    }
    Ok(args)
}

/// Which reply dialect the connection speaks: RESP2 until `HELLO 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

/// A reply.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Simple(Cow<'static, str>),
    /// The whole error line after '-', code included: "ERR syntax error", "NOAUTH ...".
    Error(Cow<'static, str>),
    Integer(i64),
    Bulk(Bytes),
    /// Absent value: `$-1` in RESP2, `_` in RESP3.
    Null,
    Array(Vec<Frame>),
    /// A map: `%` in RESP3, a flat array of key, value, ... in RESP2.
    Map(Vec<(Frame, Frame)>),
    /// A whole reply as Redis sent it to a forwarded command, written unchanged: it came over
    /// a connection speaking the client's protocol, so it is already in its dialect.
    Raw(Bytes),
}

/// Error codes the access log names; any other error is logged as "error".
const ERROR_CODES: &[&str] = &[
    "ERR",
    "WRONGTYPE",
    "NOPERM",
    "NOAUTH",
    "WRONGPASS",
    "BUSY",
    "TRYAGAIN",
    "NOPROTO",
];

impl Frame {
    /// "ok" for a reply that is not an error, else its code word ("ERR", "NOPERM", ...).
    pub fn code(&self) -> &'static str {
        let word = match self {
            Frame::Error(msg) => msg.split(' ').next().unwrap_or_default(),
            Frame::Raw(r) if r.first() == Some(&b'-') => {
                let word = r[1..].split(|&b| b == b' ' || b == b'\r').next();
                std::str::from_utf8(word.unwrap_or_default()).unwrap_or_default()
            }
            _ => return "ok",
        };
        ERROR_CODES
            .iter()
            .find(|c| **c == word)
            .copied()
            .unwrap_or("error")
    }

    pub const OK: Frame = Frame::Simple(Cow::Borrowed("OK"));

    pub fn error(msg: impl Into<Cow<'static, str>>) -> Frame {
        Frame::Error(msg.into())
    }

    pub fn bulk_static(s: &'static str) -> Frame {
        Frame::Bulk(Bytes::from_static(s.as_bytes()))
    }

    /// The bytes `encode` writes for this frame, counted without writing them.
    pub fn encoded_len(&self, proto: Protocol) -> usize {
        let head = |n: usize| 3 + itoa::Buffer::new().format(n).len();
        match self {
            Frame::Simple(s) | Frame::Error(s) => s.len() + 3,
            Frame::Integer(n) => 3 + itoa::Buffer::new().format(*n).len(),
            Frame::Bulk(b) => head(b.len()) + b.len() + 2,
            Frame::Raw(r) => r.len(),
            Frame::Null => match proto {
                Protocol::Resp2 => 5,
                Protocol::Resp3 => 3,
            },
            Frame::Array(items) => {
                head(items.len()) + items.iter().map(|f| f.encoded_len(proto)).sum::<usize>()
            }
            Frame::Map(pairs) => {
                let n = match proto {
                    Protocol::Resp2 => pairs.len() * 2,
                    Protocol::Resp3 => pairs.len(),
                };
                head(n)
                    + pairs
                        .iter()
                        .map(|(k, v)| k.encoded_len(proto) + v.encoded_len(proto))
                        .sum::<usize>()
            }
        }
    }

    /// The header line of an array, a map or a bulk string (`*3`, `%2`, `$5`): what comes
    /// before its items or its bytes, for a writer that sends those separately. Other frames
    /// have no header and write nothing.
    pub fn encode_head(&self, proto: Protocol, out: &mut BytesMut) {
        let mut n = itoa::Buffer::new();
        match self {
            Frame::Bulk(b) => line(out, b'$', n.format(b.len()).as_bytes()),
            Frame::Array(items) => line(out, b'*', n.format(items.len()).as_bytes()),
            Frame::Map(pairs) => match proto {
                Protocol::Resp2 => line(out, b'*', n.format(pairs.len() * 2).as_bytes()),
                Protocol::Resp3 => line(out, b'%', n.format(pairs.len()).as_bytes()),
            },
            _ => {}
        }
    }

    pub fn encode(&self, proto: Protocol, out: &mut BytesMut) {
        match self {
            Frame::Simple(s) => status_line(out, b'+', s.as_bytes()),
            Frame::Error(s) => status_line(out, b'-', s.as_bytes()),
            Frame::Integer(n) => line(out, b':', itoa::Buffer::new().format(*n).as_bytes()),
            Frame::Bulk(b) => {
                out.reserve(b.len() + 16);
                self.encode_head(proto, out);
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Frame::Null => match proto {
                Protocol::Resp2 => out.put_slice(b"$-1\r\n"),
                Protocol::Resp3 => out.put_slice(b"_\r\n"),
            },
            Frame::Raw(r) => out.extend_from_slice(r),
            Frame::Array(items) => {
                self.encode_head(proto, out);
                for f in items {
                    f.encode(proto, out);
                }
            }
            Frame::Map(pairs) => {
                self.encode_head(proto, out);
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
        }
    }
}

/// A simple string or an error: one line, whatever it was built from. An error often echoes
/// the client's own arguments (a command name, a key), and a CR or LF among them would end the
/// line early and let the client forge the replies that follow, so each one becomes a space,
/// as redis-server does for every status and error line.
fn status_line(out: &mut BytesMut, tag: u8, body: &[u8]) {
    if memchr::memchr2(b'\r', b'\n', body).is_none() {
        return line(out, tag, body);
    }
    out.reserve(body.len() + 3);
    out.put_u8(tag);
    out.extend(
        body.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

fn line(out: &mut BytesMut, tag: u8, body: &[u8]) {
    out.reserve(body.len() + 3);
    out.put_u8(tag);
    out.put_slice(body);
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_multibulk_len: 1024,
        max_bulk_len: 64,
        max_bulk_len_from: "limits.max_value_bytes",
        max_inline_len: 128,
        max_request_len: 4096,
    };

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(args) = parse(&mut buf, &LIMITS, &mut Progress::default())? {
            out.push(args);
        }
        Ok(out)
    }

    fn strs(args: &[Bytes]) -> Vec<&str> {
        args.iter()
            .map(|a| std::str::from_utf8(a).unwrap())
            .collect()
    }

    #[test]
    fn pipelined_commands_parse_in_order() {
        let cmds =
            parse_all(b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n").unwrap();
        assert_eq!(cmds.len(), 2);
        assert_eq!(strs(&cmds[0]), ["PING"]);
        assert_eq!(strs(&cmds[1]), ["SET", "k", ""]);
    }

    #[test]
    fn every_prefix_is_incomplete_not_an_error() {
        let full = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(
                parse(&mut buf, &LIMITS, &mut Progress::default()),
                Ok(None),
                "prefix of {cut} bytes"
            );
            assert_eq!(buf.len(), cut, "nothing consumed");
        }
        let mut buf = BytesMut::from(&full[..]);
        assert_eq!(
            strs(
                &parse(&mut buf, &LIMITS, &mut Progress::default())
                    .unwrap()
                    .unwrap()
            ),
            ["GET", "hello"]
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn lengths_are_bounded_before_allocation() {
        let mut buf = BytesMut::from(&b"*2147483647\r\n"[..]);
        assert_eq!(
            parse(&mut buf, &LIMITS, &mut Progress::default()),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        let mut buf = BytesMut::from(&b"*1\r\n$999999999999\r\n"[..]);
        assert_eq!(
            parse(&mut buf, &LIMITS, &mut Progress::default()),
            Err(ProtocolError::BulkTooLong {
                len: 999_999_999_999,
                max: 64,
                limit: "limits.max_value_bytes"
            })
        );
        assert!(
            buf.capacity() < 4096,
            "no room was reserved for the refused value"
        );
        assert_eq!(
            parse_all(b"*1\r\n$65\r\n"),
            Err(ProtocolError::BulkTooLong {
                len: 65,
                max: 64,
                limit: "limits.max_value_bytes"
            })
        );
        assert_eq!(
            parse_all(b"*1\r\n$65\r\n").unwrap_err().to_string(),
            "Protocol error: bulk length 65 exceeds limits.max_value_bytes (64)",
            "the limit is named, with its value"
        );
        assert_eq!(
            parse_all(b"*1\r\n$-5\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            parse_all(b"*x\r\n"),
            Err(ProtocolError::InvalidMultibulkLength)
        );
        assert_eq!(
            parse_all(b"*1\r\n:5\r\n"),
            Err(ProtocolError::ExpectedBulk(b':'))
        );
        assert_eq!(
            parse_all(b"*1\r\n$3\r\nabcXY"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(parse_all(&[b'*'; 200]), Err(ProtocolError::TooBigCount));
        assert_eq!(parse_all(&[b'a'; 200]), Err(ProtocolError::TooBigInline));
    }

    #[test]
    fn a_length_is_one_to_eighteen_digits_ending_its_line() {
        for bad in [
            &b"*1\r\n$\r\n"[..],
            b"*1\r\n$-\r\n",
            b"*1\r\n$+3\r\nabc\r\n",
            b"*1\r\n$3x\r\nabc\r\n",
            b"*1\r\n$ 3\r\nabc\r\n",
            b"*1\r\n$1234567890123456789\r\n",
        ] {
            assert_eq!(
                parse_all(bad),
                Err(ProtocolError::InvalidBulkLength),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [
            &b"*\r\n"[..],
            b"*1x\r\n",
            b"*-\r\n",
            b"*9999999999999999999\r\n",
        ] {
            assert_eq!(parse_all(bad), Err(ProtocolError::InvalidMultibulkLength));
        }
        // Nineteen digits are not a length; `*-1` and `*-5` are empty
        // commands, and leading zeros are refused, as redis-server reads them.
        assert_eq!(
            parse_all(b"*1\r\n$1234567890123456789\r\nabc\r\n"),
            Err(ProtocolError::InvalidBulkLength)
        );
        assert_eq!(
            strs(&parse_all(b"*-1\r\n*-5\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap()[0]),
            ["GET", "k"]
        );
        assert_eq!(strs(&parse_all(b"*1\r\n$0\r\n\r\n").unwrap()[0]), [""]);
        for bad in [&b"*01\r\n"[..], b"*00\r\n", b"*-0\r\n", b"*-01\r\n"] {
            assert_eq!(
                parse_all(bad),
                Err(ProtocolError::InvalidMultibulkLength),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [
            &b"*1\r\n$05\r\nhello\r\n"[..],
            b"*1\r\n$00\r\n\r\n",
            b"*1\r\n$-0\r\n",
        ] {
            assert_eq!(
                parse_all(bad),
                Err(ProtocolError::InvalidBulkLength),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_command_fed_byte_by_byte_resumes_where_it_stopped() {
        let full = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*1\r\n$4\r\nPING\r\n";
        let mut buf = BytesMut::new();
        let mut progress = Progress::default();
        let mut got = Vec::new();
        for &b in full.iter() {
            buf.extend_from_slice(&[b]);
            while let Some(args) = parse(&mut buf, &LIMITS, &mut progress).unwrap() {
                got.push(args);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(strs(&got[0]), ["SET", "k", "hello"]);
        assert_eq!(strs(&got[1]), ["PING"]);
        assert_eq!(
            progress,
            Progress::default(),
            "reset once the command completed"
        );
    }

    #[test]
    fn resumed_scans_skip_the_arguments_already_checked() {
        let mut buf = BytesMut::from(&b"*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\n"[..]);
        let mut progress = Progress::default();
        assert_eq!(parse(&mut buf, &LIMITS, &mut progress), Ok(None));
        assert_eq!(
            (progress.argc, progress.done),
            (3, 2),
            "two arguments are behind us"
        );
        buf.extend_from_slice(b"c\r\n");
        let args = parse(&mut buf, &LIMITS, &mut progress).unwrap().unwrap();
        assert_eq!(strs(&args), ["a", "b", "c"]);
    }

    #[test]
    fn a_whole_command_over_the_request_bound_is_refused_from_its_headers() {
        // 100 arguments of 64 bytes each is over the 4096-byte bound: refused at the header
        // that crosses it, before those bytes arrive.
        let mut input = b"*100\r\n".to_vec();
        for _ in 0..70 {
            input.extend_from_slice(b"$64\r\n");
            input.extend_from_slice(&[b'x'; 64]);
            input.extend_from_slice(b"\r\n");
        }
        assert_eq!(parse_all(&input), Err(ProtocolError::TooBigRequest));
    }

    #[test]
    fn memory_follows_the_bytes_sent_not_the_length_declared() {
        let limits = Limits {
            max_bulk_len: 4 << 20,
            max_request_len: 8 << 20,
            ..LIMITS
        };
        // The 40 bytes that, sent by 500 connections, once reserved 2 GB.
        let head = b"*3\r\n$3\r\nSET\r\n$4\r\nslow\r\n$4194304\r\n";
        let mut buf = BytesMut::with_capacity(64);
        buf.extend_from_slice(head);
        let mut progress = Progress::default();
        assert_eq!(parse(&mut buf, &limits, &mut progress), Ok(None));
        assert!(buf.capacity() < 4096, "reserved {}", buf.capacity());
        // As the value arrives the buffer at most doubles what it holds, and the command
        // completes whole.
        let value = vec![b'v'; 4 << 20];
        for chunk in value.chunks(64 << 10) {
            buf.extend_from_slice(chunk);
            assert!(buf.capacity() <= 2 * buf.len() + (64 << 10));
            assert_eq!(parse(&mut buf, &limits, &mut progress), Ok(None));
        }
        buf.extend_from_slice(b"\r\n");
        let args = parse(&mut buf, &limits, &mut progress).unwrap().unwrap();
        assert_eq!(args[2].len(), 4 << 20);
    }

    #[test]
    fn empty_multibulk_and_blank_lines_are_skipped() {
        let cmds = parse_all(b"*0\r\n*-1\r\n\r\n  \n*1\r\n$4\r\nPING\r\n").unwrap();
        assert_eq!(cmds.len(), 1);
    }

    #[test]
    fn inline_commands_split_like_redis() {
        let cmds = parse_all(b"SET k \"a b\\n\\x41\"\r\nGET 'it\\'s'\nPING\r\n").unwrap();
        assert_eq!(
            cmds[0],
            vec![Bytes::from("SET"), Bytes::from("k"), Bytes::from("a b\nA")]
        );
        assert_eq!(strs(&cmds[1]), ["GET", "it's"]);
        assert_eq!(strs(&cmds[2]), ["PING"]);
        // As redis-server splits them (checked against 7.0): a vertical tab or form feed is
        // skipped between arguments but does not end one.
        let cmds = parse_all(b"\x0b\r\n\x0bECHO\x0ba\x0c \x0c b\r\n").unwrap();
        assert_eq!(cmds.len(), 1);
        assert_eq!(strs(&cmds[0]), ["ECHO\x0ba\x0c", "b"]);
        assert_eq!(
            parse_all(b"GET \"open\r\n"),
            Err(ProtocolError::UnbalancedQuotes)
        );
    }

    fn enc(f: &Frame, p: Protocol) -> String {
        let mut out = BytesMut::new();
        f.encode(p, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn a_status_or_error_line_never_carries_a_cr_or_lf() {
        // The forged-reply attack: an unknown command named `x\r\n$5\r\nHACKD\r\n-X`
        // echoed back would have made the client read `HACKD` as its next command's reply.
        let forged = Frame::Error("ERR unknown command 'x\r\n$5\r\nHACKD\r\n-X'".into());
        assert_eq!(
            enc(&forged, Protocol::Resp2),
            "-ERR unknown command 'x  $5  HACKD  -X'\r\n"
        );
        assert_eq!(
            enc(&Frame::Simple("a\nb\rc".into()), Protocol::Resp3),
            "+a b c\r\n"
        );
        // Bulk strings carry any bytes: their length says where they end.
        assert_eq!(
            enc(&Frame::bulk_static("a\r\nb"), Protocol::Resp2),
            "$4\r\na\r\nb\r\n"
        );
    }

    #[test]
    fn encoded_len_counts_what_encode_writes() {
        let frames = [
            Frame::OK,
            Frame::error("ERR x"),
            Frame::Integer(-1234567),
            Frame::Null,
            Frame::bulk_static(""),
            Frame::Bulk(Bytes::from(vec![b'v'; 1000])),
            Frame::Array(vec![
                Frame::Null,
                Frame::Array(vec![Frame::Integer(1); 11]),
                Frame::bulk_static("abc"),
            ]),
            Frame::Map(vec![(Frame::bulk_static("a"), Frame::Map(Vec::new()))]),
        ];
        for f in &frames {
            for p in [Protocol::Resp2, Protocol::Resp3] {
                assert_eq!(f.encoded_len(p), enc(f, p).len(), "{f:?} {p:?}");
            }
        }
    }

    #[test]
    fn replies_encode_per_protocol() {
        assert_eq!(enc(&Frame::OK, Protocol::Resp2), "+OK\r\n");
        assert_eq!(enc(&Frame::error("ERR x"), Protocol::Resp2), "-ERR x\r\n");
        assert_eq!(enc(&Frame::Integer(-42), Protocol::Resp2), ":-42\r\n");
        assert_eq!(
            enc(&Frame::bulk_static("hi"), Protocol::Resp2),
            "$2\r\nhi\r\n"
        );
        assert_eq!(enc(&Frame::Null, Protocol::Resp2), "$-1\r\n");
        assert_eq!(enc(&Frame::Null, Protocol::Resp3), "_\r\n");
        let m = Frame::Map(vec![(Frame::bulk_static("a"), Frame::Integer(1))]);
        assert_eq!(enc(&m, Protocol::Resp2), "*2\r\n$1\r\na\r\n:1\r\n");
        assert_eq!(enc(&m, Protocol::Resp3), "%1\r\n$1\r\na\r\n:1\r\n");
    }
}
