//! The origin client's reading of an answer (`origin::http1`: the head, then the body by its
//! framing) over arbitrary bytes, as a broken or hostile origin might send them.
//!
//! Input: 1 byte of flags (bit 0: the request was a HEAD), 2 bytes of cut point, then the
//! bytes the origin sends.
//! Asserted, beyond not panicking:
//! - the bytes fed whole, cut in two at the cut point, and byte by byte read the same head
//!   (status, framing, keep-alive), the same body bytes, and end the same way;
//! - the body is never longer than a Content-Length said, nor than the bytes sent.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tiergate::origin::http1::{decode, parse_head, Framing};

/// How an answer read: its head (status, whether kept alive, the length it declared), the
/// body's bytes, and whether it ended in an error, in the body or at its end.
#[derive(Debug, PartialEq)]
struct Outcome {
    head: Option<(u16, bool, Option<u64>)>,
    body: Vec<u8>,
    error: bool,
    ended: bool,
}

fn feed<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, head_request: bool) -> Outcome {
    let mut buf = BytesMut::new();
    let mut out = Outcome {
        head: None,
        body: Vec::new(),
        error: false,
        ended: false,
    };
    let mut framing = None;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        if framing.is_none() {
            match parse_head(&mut buf, head_request) {
                Ok(Some(head)) => {
                    let length = match head.framing {
                        Framing::Length(n) => Some(n),
                        _ => None,
                    };
                    out.head = Some((head.status.as_u16(), head.reusable, length));
                    framing = Some(head.framing);
                }
                Ok(None) => continue,
                Err(_) => {
                    out.error = true;
                    return out;
                }
            }
        }
        let f = framing.as_mut().expect("a head");
        loop {
            match decode(&mut buf, f) {
                Ok(Some(data)) => out.body.extend_from_slice(&data),
                Ok(None) => break,
                Err(_) => {
                    out.error = true;
                    return out;
                }
            }
        }
        if matches!(f, Framing::Done) {
            out.ended = true;
            return out;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let head_request = data[0] & 1 == 1;
    let cut = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let wire = &data[3..];
    let whole = feed([wire], head_request);
    let cut = cut.min(wire.len());
    let halves = feed([&wire[..cut], &wire[cut..]], head_request);
    assert_eq!(whole, halves, "cut at {cut}");
    let trickled = feed(wire.chunks(1), head_request);
    assert_eq!(whole, trickled, "byte by byte");
    assert!(whole.body.len() <= wire.len(), "more body than bytes");
    if let Some((_, _, Some(n))) = whole.head {
        assert!(
            whole.body.len() as u64 <= n,
            "more body than its Content-Length"
        );
    }
});
