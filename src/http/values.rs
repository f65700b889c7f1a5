//! batchGet's answer, `{"values":{"key": value | null, ...}}`: its exact encoded size, known
//! before any of it is encoded, so a reply over `limits.max_reply_bytes` is refused without
//! being built; and a body that encodes it while the connection sends it, so the memory a
//! reply holds follows what the socket takes, not the reply's size (issue 15 point 3: one
//! 2 KB request could make the gateway build gigabytes).
//!
//! A long value that needs no escaping goes out as the `Bytes` L1 or L2 gave (refcounted,
//! not copied); everything else (keys, short values, escaped text, base64) is encoded into a
//! staging buffer handed to hyper at about `CHUNK` bytes. Each value's reference is dropped
//! once it is sent. The bytes are those serde_json wrote for the same map before: keys in
//! byte order, each once; escapes as serde_json's (tested against it).

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use bytes::{BufMut, Bytes, BytesMut};

/// Encoded bytes gathered before they are handed to hyper: large enough that a batch of
/// small values costs a few writes, small enough not to matter per connection.
const CHUNK: usize = 64 << 10;
/// Values at least this long are sent on their own (as they are, when they need no
/// escaping); shorter ones are copied into the staging buffer with their neighbours.
const LARGE: usize = 16 << 10;
/// Input bytes base64-encoded per frame: a multiple of 3, so the pieces concatenate to the
/// encoding of the whole, and 64 KiB of output.
const B64_PIECE: usize = CHUNK / 4 * 3;

const OPEN: &[u8] = b"{\"values\":{";
const CLOSE: &[u8] = b"}}";
const B64_OPEN: &[u8] = b"{\"base64\":\"";
const B64_CLOSE: &[u8] = b"\"}";

/// How a JSON string escapes each byte, as serde_json does: 0 not at all, `u` as `\u00XX`,
/// any other as a backslash and that letter.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        t[b] = b'u';
        b += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Bytes an escape adds to the byte it replaces.
fn extra(b: u8) -> usize {
    match ESCAPE[b as usize] {
        0 => 0,
        b'u' => 5,
        _ => 1,
    }
}

/// Bytes the escapes of `s` add to it.
fn escapes(s: &[u8]) -> usize {
    s.iter().map(|&b| extra(b)).sum()
}

/// Appends `s` escaped as the inside of a JSON string.
fn escape_into(out: &mut BytesMut, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let e = ESCAPE[b as usize];
        if e == 0 {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        if e == b'u' {
            let hex = [HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]];
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', hex[0], hex[1]]);
        } else {
            out.extend_from_slice(&[b'\\', e]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
}

fn base64_into(out: &mut BytesMut, s: &[u8]) {
    let at = out.len();
    out.resize(at + base64_len(s.len()), 0);
    B64.encode_slice(s, &mut out[at..])
        .expect("sized by base64_len");
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// How a value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    Null,
    /// UTF-8 with nothing to escape: a JSON string of its very bytes.
    Raw,
    /// UTF-8 with bytes to escape.
    Escaped,
    /// `{"base64": ...}`: not UTF-8, or asked for.
    Base64,
}

impl Form {
    fn open(self) -> &'static [u8] {
        match self {
            Form::Null => b"null",
            Form::Raw | Form::Escaped => b"\"",
            Form::Base64 => B64_OPEN,
        }
    }

    fn close(self) -> &'static [u8] {
        match self {
            Form::Null => b"",
            Form::Raw | Form::Escaped => b"\"",
            Form::Base64 => B64_CLOSE,
        }
    }
}

/// The form of `value` and its encoded length, quotes or wrapper included.
fn measure(value: Option<&Bytes>, base64: bool) -> (Form, usize) {
    let Some(v) = value else {
        return (Form::Null, 4);
    };
    let form = match (base64, std::str::from_utf8(v)) {
        (false, Ok(_)) => match escapes(v) {
            0 => return (Form::Raw, v.len() + 2),
            n => return (Form::Escaped, v.len() + n + 2),
        },
        _ => Form::Base64,
    };
    (form, B64_OPEN.len() + base64_len(v.len()) + B64_CLOSE.len())
}

/// A batchGet answer, encoded as it is sent (an HTTP body through `super::ReplyBody`).
#[derive(Debug)]
pub struct Values {
    /// Sorted, each once; with their values, each taken once sent.
    keys: Vec<Bytes>,
    values: Vec<Option<Bytes>>,
    forms: Vec<Form>,
    /// Encoded bytes not handed out yet.
    remaining: u64,
    /// The next entry to start.
    next: usize,
    /// The unsent part of a long value, and its form.
    current: Option<(Bytes, Form)>,
    staged: BytesMut,
    closed: bool,
}

impl Values {
    /// The answer for `keys` (sorted, each once) and their `values` (None: absent), every
    /// value as base64 if `base64`. Measures, encodes nothing.
    pub fn new(keys: Vec<Bytes>, values: Vec<Option<Bytes>>, base64: bool) -> Self {
        debug_assert!(keys.windows(2).all(|w| w[0] < w[1]), "sorted, each once");
        debug_assert_eq!(keys.len(), values.len());
        let mut len = OPEN.len() + CLOSE.len() + keys.len().saturating_sub(1);
        let mut forms = Vec::with_capacity(keys.len());
        for (k, v) in keys.iter().zip(&values) {
            let (form, n) = measure(v.as_ref(), base64);
            forms.push(form);
            len += k.len() + escapes(k) + 3 + n;
        }
        let mut staged = BytesMut::with_capacity(len.min(CHUNK));
        staged.put_slice(OPEN);
        Self {
            keys,
            values,
            forms,
            remaining: len as u64,
            next: 0,
            current: None,
            staged,
            closed: false,
        }
    }

    /// Encoded bytes left to send: all of them, before the first frame.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    pub fn is_end(&self) -> bool {
        self.remaining == 0
    }

    fn hand_out(&mut self, b: Bytes) -> Bytes {
        self.remaining -= b.len() as u64;
        b
    }

    fn take_staged(&mut self) -> Bytes {
        let b = self.staged.split().freeze();
        self.hand_out(b)
    }

    /// The next piece of the answer; None once it has all been handed out. Not inlined:
    /// it would be into hyper's write path, which every response takes.
    #[inline(never)]
    pub fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some((mut rest, form)) = self.current.take() {
                // The value's opening (and what came before it) goes first.
                if !self.staged.is_empty() {
                    self.current = Some((rest, form));
                    return Some(self.take_staged());
                }
                let piece = match form {
                    Form::Raw => {
                        self.staged.put_slice(form.close());
                        return Some(self.hand_out(rest));
                    }
                    Form::Escaped => {
                        let piece = rest.split_to(rest.len().min(CHUNK));
                        escape_into(&mut self.staged, &piece);
                        piece
                    }
                    Form::Base64 => {
                        let piece = rest.split_to(rest.len().min(B64_PIECE));
                        base64_into(&mut self.staged, &piece);
                        piece
                    }
                    Form::Null => unreachable!("null has no body"),
                };
                drop(piece);
                if rest.is_empty() {
                    self.staged.put_slice(form.close());
                } else {
                    self.current = Some((rest, form));
                }
                return Some(self.take_staged());
            }
            let i = self.next;
            if i == self.keys.len() {
                if !self.closed {
                    self.closed = true;
                    self.staged.put_slice(CLOSE);
                }
                let last = (!self.staged.is_empty()).then(|| self.take_staged());
                debug_assert!(
                    self.remaining == 0,
                    "{} bytes measured, not sent",
                    self.remaining
                );
                return last;
            }
            self.next += 1;
            if i > 0 {
                self.staged.put_u8(b',');
            }
            self.staged.put_u8(b'"');
            escape_into(&mut self.staged, &self.keys[i]);
            self.staged.put_slice(b"\":");
            let form = self.forms[i];
            self.staged.put_slice(form.open());
            match self.values[i].take() {
                None => {}
                Some(v) if v.len() >= LARGE => self.current = Some((v, form)),
                Some(v) => {
                    match form {
                        Form::Raw | Form::Escaped => escape_into(&mut self.staged, &v),
                        Form::Base64 => base64_into(&mut self.staged, &v),
                        Form::Null => {}
                    }
                    self.staged.put_slice(form.close());
                }
            }
            if self.staged.len() >= CHUNK {
                return Some(self.take_staged());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json makes of the same answer (how batchGet built it before).
    fn by_serde(keys: &[Bytes], values: &[Option<Bytes>], base64: bool) -> Vec<u8> {
        let map: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .zip(values)
            .map(|(k, v)| {
                let v = match v {
                    None => serde_json::Value::Null,
                    Some(v) => match (base64, std::str::from_utf8(v)) {
                        (false, Ok(s)) => serde_json::Value::String(s.to_owned()),
                        _ => serde_json::json!({ "base64": B64.encode(v) }),
                    },
                };
                (String::from_utf8(k.to_vec()).unwrap(), v)
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({ "values": map })).unwrap()
    }

    /// Every frame, joined; checks the measured length against what was sent.
    fn sent(mut v: Values) -> Vec<u8> {
        let measured = v.remaining();
        let mut out = Vec::new();
        while let Some(f) = v.next_frame() {
            assert!(!f.is_empty(), "no empty frames");
            out.extend_from_slice(&f);
        }
        assert!(v.is_end());
        assert_eq!(out.len() as u64, measured, "measured exactly");
        out
    }

    fn check(entries: &[(&str, Option<Vec<u8>>)]) {
        let mut entries = entries.to_vec();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        let keys: Vec<Bytes> = entries
            .iter()
            .map(|e| Bytes::from(e.0.to_owned()))
            .collect();
        let values: Vec<Option<Bytes>> = entries
            .iter()
            .map(|e| e.1.clone().map(Bytes::from))
            .collect();
        for base64 in [false, true] {
            let ours = sent(Values::new(keys.clone(), values.clone(), base64));
            let theirs = by_serde(&keys, &values, base64);
            assert!(ours == theirs, "differs from serde_json (base64: {base64})");
        }
    }

    #[test]
    fn the_answer_is_serde_jsons_byte_for_byte() {
        check(&[]);
        check(&[("a", None)]);
        check(&[
            ("greeting", Some(b"hello world".to_vec())),
            ("absent", None),
        ]);
        let every_byte: Vec<u8> = (0..=255u8).collect();
        let every_ascii: Vec<u8> = (0..128u8).collect();
        check(&[
            ("binary", Some(every_byte.clone())),
            ("ascii", Some(every_ascii.clone())),
            ("key \"quoted\" \\ \n\u{1}", Some(b"v".to_vec())),
            (
                "unicode ключ",
                Some("значение \u{7f} \u{2028}".as_bytes().to_vec()),
            ),
            ("empty", Some(Vec::new())),
        ]);
        // Long values, streamed on their own: raw, escaped, base64, at and around the
        // piece sizes.
        for n in [LARGE - 1, LARGE, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let raw = vec![b'x'; n];
            let escaped: Vec<u8> = every_ascii.iter().copied().cycle().take(n).collect();
            let binary: Vec<u8> = every_byte.iter().copied().cycle().take(n).collect();
            check(&[
                ("a", Some(raw)),
                ("b", Some(escaped)),
                ("c", Some(binary)),
                ("d", None),
                ("e", Some(b"short".to_vec())),
            ]);
        }
        // Many short values: gathered into chunks.
        let many: Vec<(String, Option<Vec<u8>>)> = (0..3000)
            .map(|i| (format!("k{i:05}"), Some(vec![b'v'; i % 100])))
            .collect();
        let many: Vec<(&str, Option<Vec<u8>>)> =
            many.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        check(&many);
    }

    #[test]
    fn short_values_are_gathered_and_long_raw_ones_sent_as_they_are() {
        let long = Bytes::from(vec![b'x'; 1 << 20]);
        let keys: Vec<Bytes> = (0..200).map(|i| Bytes::from(format!("k{i:03}"))).collect();
        let mut values: Vec<Option<Bytes>> = vec![Some(Bytes::from_static(b"v")); 200];
        values[100] = Some(long.clone());
        let mut v = Values::new(keys, values, false);
        let mut frames = Vec::new();
        while let Some(f) = v.next_frame() {
            frames.push(f);
        }
        // Before the long value, its opening, the long value, the rest.
        assert_eq!(
            frames.len(),
            3,
            "{:?}",
            frames.iter().map(Bytes::len).collect::<Vec<_>>()
        );
        assert_eq!(
            frames[1].as_ptr(),
            long.as_ptr(),
            "the value itself, not a copy"
        );
        assert!(frames[0].len() < CHUNK);
    }
}
