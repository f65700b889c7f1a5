//! Where one whole Redis reply ends in a buffer, RESP2 or RESP3, without decoding it: what
//! lets a forwarded command's reply be copied back to its client as the bytes Redis sent
//! (maps, pushes, doubles and attributes included) instead of being parsed into values and
//! encoded again.
//!
//! The scan resumes where it stopped (a `Framer` keeps how many elements are still to come
//! and how much of a bulk body is left), so a large reply arriving over many reads costs one
//! pass, not one per read. Nothing depends on the bytes already passed, so a reply over its
//! size bound can be dropped as it arrives and still be framed to its end: the connection
//! stays in step with Redis and only that reply is lost.

use memchr::memchr;

/// The longest line (simple string, error, number) a reply may have. A script can make
/// Redis answer with a status line of any length, and a line cannot be passed through in
/// pieces: it is held until it ends.
const MAX_LINE: usize = 1 << 20;

/// A framing error: the bytes are not RESP, so the connection they came on is out of step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Redis sent a reply that is not RESP: {0}")]
pub struct NotResp(&'static str);

/// Progress through one reply (see the module doc).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Framer {
    /// Bytes of the reply passed so far, from the start of the buffer given to `scan`.
    at: usize,
    /// Elements still to come, the one under way included; 0 before the first `scan`.
    left: u64,
    /// Bytes of a bulk body still to come, its CR LF not included.
    body: u64,
    /// A bulk body has passed and its CR LF is next.
    tail: bool,
    /// Bytes of the line under way already searched for its end: a long line arriving over
    /// many reads is searched once.
    searched: usize,
    started: bool,
}

impl Framer {
    /// Scans `buf` (which starts with this reply) on from where the last call stopped:
    /// `Some(len)` once the reply is whole and `len` bytes long, None while more is needed.
    /// The framer is then ready for the next reply.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, NotResp> {
        if !self.started {
            *self = Framer {
                left: 1,
                started: true,
                ..Framer::default()
            };
        }
        loop {
            if self.body > 0 {
                let avail = (buf.len() - self.at) as u64;
                let take = avail.min(self.body);
                self.at += take as usize;
                self.body -= take;
                if self.body > 0 {
                    return Ok(None);
                }
                self.tail = true;
            }
            if self.tail {
                // Taken whole or not at all: the caller may drop what was scanned.
                let Some(end) = buf.get(self.at..self.at + 2) else {
                    return Ok(None);
                };
                if end != b"\r\n" {
                    return Err(NotResp("a bulk body does not end in CR LF"));
                }
                self.at += 2;
                self.tail = false;
                if self.end_element() {
                    return Ok(Some(self.finish()));
                }
                continue;
            }
            let Some(&tag) = buf.get(self.at) else {
                return Ok(None);
            };
            let Some(nl) = memchr(b'\n', &buf[self.at + self.searched..]) else {
                self.searched = buf.len() - self.at;
                if self.searched > MAX_LINE {
                    return Err(NotResp("a line longer than 1 MiB"));
                }
                return Ok(None);
            };
            let nl = self.searched + nl;
            self.searched = 0;
            let line_end = self.at + nl + 1;
            if nl == 0 || buf[line_end - 2] != b'\r' {
                return Err(NotResp("a line does not end in CR LF"));
            }
            let line = &buf[self.at + 1..line_end - 2];
            self.at = line_end;
            match tag {
                // Simple string, error, integer, null, double, boolean, big number.
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
                // Bulk string, bulk error, verbatim string.
                b'$' | b'!' | b'=' => match count(line)? {
                    None => {}
                    Some(n) => {
                        self.body = n;
                        self.tail = true;
                        continue;
                    }
                },
                // Array, set, push: n elements; map: n pairs; attribute: n pairs, then the
                // reply they describe.
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = count(line)?.unwrap_or(0);
                    let n = match tag {
                        b'%' => n.checked_mul(2),
                        b'|' => n.checked_mul(2).and_then(|n| n.checked_add(1)),
                        _ => Some(n),
                    };
                    self.left = self
                        .left
                        .checked_add(n.ok_or(NotResp("an aggregate count overflows"))?)
                        .ok_or(NotResp("an aggregate count overflows"))?;
                }
                _ => return Err(NotResp("an unknown type byte")),
            }
            if self.end_element() {
                return Ok(Some(self.finish()));
            }
        }
    }

    /// Bytes of the reply under way already scanned: what it holds so far.
    pub fn scanned(&self) -> usize {
        self.at
    }

    /// Forgets the bytes scanned so far, which the caller has dropped from the front of its
    /// buffer (a reply over its bound, passed through without being kept).
    pub fn dropped_scanned(&mut self) {
        self.at = 0;
    }

    /// One element done; whether it was the reply's last.
    fn end_element(&mut self) -> bool {
        self.left -= 1;
        self.left == 0
    }

    fn finish(&mut self) -> usize {
        let len = self.at;
        *self = Framer::default();
        len
    }
}

/// A length or count line: None for -1 (a null), an error for anything else not a
/// non-negative decimal.
fn count(line: &[u8]) -> Result<Option<u64>, NotResp> {
    if line == b"-1" {
        return Ok(None);
    }
    if line.is_empty() || line.len() > 19 || !line.iter().all(u8::is_ascii_digit) {
        return Err(NotResp("a length that is not a number"));
    }
    Ok(Some(
        line.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    ))
}

/// A whole reply read as a bulk string: `Some(Some(value))`, `Some(None)` for a null (RESP2
/// `$-1` or RESP3 `_`), None for any other reply (an error, say). `reply` is one whole reply,
/// as `Framer` delimits it.
pub fn bulk(reply: &bytes::Bytes) -> Option<Option<bytes::Bytes>> {
    if reply.as_ref() == b"_\r\n" || reply.as_ref() == b"$-1\r\n" {
        return Some(None);
    }
    match split_bulk(reply)? {
        (value, []) => Some(Some(reply.slice_ref(value))),
        _ => None,
    }
}

/// The bulk string (`$len\r\nbody\r\n`, not a null) at the front of `buf`: its body and
/// what follows it; None when `buf` does not start with a whole one.
pub fn split_bulk(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = buf.strip_prefix(b"$")?;
    let end = memchr(b'\r', rest)?;
    let len = usize::try_from(super::pipe::decimal(&rest[..end])?).ok()?;
    let start = end + 2;
    let body = rest.get(start..start + len)?;
    let tail = rest.get(start + len..)?;
    Some((body, tail.strip_prefix(b"\r\n")?))
}

/// A whole reply read as an integer (`:n`); None for any other reply.
pub fn integer(reply: &[u8]) -> Option<i64> {
    let digits = reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    super::pipe::decimal(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_replies_read_as_a_value_or_an_integer() {
        let b = |s: &'static [u8]| bytes::Bytes::from_static(s);
        assert_eq!(bulk(&b(b"$3\r\nabc\r\n")), Some(Some(b(b"abc"))));
        assert_eq!(bulk(&b(b"$0\r\n\r\n")), Some(Some(b(b""))));
        assert_eq!(bulk(&b(b"$4\r\na\r\nb\r\n")), Some(Some(b(b"a\r\nb"))));
        assert_eq!(bulk(&b(b"$-1\r\n")), Some(None));
        assert_eq!(bulk(&b(b"_\r\n")), Some(None));
        for other in [
            &b"-WRONGTYPE x\r\n"[..],
            b"$3\r\nab\r\n",
            b"$x\r\n",
            b":1\r\n",
            b"",
        ] {
            assert_eq!(
                bulk(&bytes::Bytes::copy_from_slice(other)),
                None,
                "{other:?}"
            );
        }
        assert_eq!(integer(b":-2\r\n"), Some(-2));
        assert_eq!(integer(b":1500\r\n"), Some(1500));
        assert_eq!(integer(b"$1\r\n1\r\n"), None);
        assert_eq!(integer(b":1"), None);
    }

    /// The length of the first whole reply in `bytes`, fed one byte at a time as well as
    /// whole: both must agree.
    fn framed(bytes: &[u8]) -> Option<usize> {
        let whole = Framer::default().scan(bytes).unwrap();
        let mut f = Framer::default();
        let mut trickled = None;
        for end in 1..=bytes.len() {
            if let Some(n) = f.scan(&bytes[..end]).unwrap() {
                trickled = Some(n);
                break;
            }
        }
        assert_eq!(whole, trickled, "{:?}", String::from_utf8_lossy(bytes));
        whole
    }

    #[test]
    fn every_resp2_and_resp3_type_is_framed_whole() {
        let replies: &[&[u8]] = &[
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":42\r\n",
            b"$5\r\nhello\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$1\r\na\r\n:1\r\n",
            b"_\r\n",
            b",3.14\r\n",
            b"#t\r\n",
            b"(12345678901234567890\r\n",
            b"!9\r\nERR x y z\r\n",
            b"=8\r\ntxt:abcd\r\n",
            b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n",
            b"~2\r\n:1\r\n:2\r\n",
            b">3\r\n+message\r\n+ch\r\n$2\r\nhi\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
            b"*3\r\n*0\r\n%0\r\n*1\r\n*1\r\n$-1\r\n",
        ];
        for r in replies {
            assert_eq!(framed(r), Some(r.len()), "{:?}", String::from_utf8_lossy(r));
            // With the next reply behind it, it still ends where it ends.
            let mut two = r.to_vec();
            two.extend_from_slice(b"+NEXT\r\n");
            assert_eq!(Framer::default().scan(&two).unwrap(), Some(r.len()));
        }
    }

    #[test]
    fn a_part_of_a_reply_is_incomplete_not_an_error() {
        for r in [
            &b"$5\r\nhel"[..],
            b"*2\r\n:1\r\n",
            b"%1\r\n+a\r\n",
            b"+OK",
            b"$5",
        ] {
            assert_eq!(Framer::default().scan(r).unwrap(), None);
        }
    }

    #[test]
    fn what_is_not_resp_is_an_error() {
        for r in [
            &b"?\r\n"[..],
            b"$x\r\n",
            b"$-2\r\n",
            b"*99999999999999999999\r\n",
            b"+OK\n",
            b"$2\r\nabcd",
        ] {
            assert!(Framer::default().scan(r).is_err(), "{r:?}");
        }
    }

    #[test]
    fn a_reply_can_be_dropped_as_it_arrives_and_still_end_where_it_ends() {
        let mut reply = b"*2\r\n$10\r\n0123456789\r\n".to_vec();
        reply.extend_from_slice(b"$3\r\nabc\r\n");
        // Hand it over in pieces, dropping what was scanned after each.
        let mut f = Framer::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut total = 0;
        for piece in reply.chunks(3) {
            buf.extend_from_slice(piece);
            if let Some(n) = f.scan(&buf).unwrap() {
                total += n;
                break;
            }
            total += f.scanned();
            buf.drain(..f.scanned());
            f.dropped_scanned();
        }
        assert_eq!(total, reply.len());
    }
}
