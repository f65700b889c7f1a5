//! The framer of forwarded replies (`cache::reply::Framer`) over arbitrary bytes, as a
//! hostile or broken Redis might send them.
//!
//! Input: 2 bytes of cut point, then the byte stream Redis sends.
//! Asserted, beyond not panicking:
//! - the stream fed whole, cut in two at the cut point, and byte by byte (the framer's
//!   progress carried over) frames the same replies and ends the same way;
//! - fed byte by byte with everything scanned dropped as it goes (a reply over its bound),
//!   each reply still ends where it ends when kept;
//! - a framed reply starts with a type byte and ends in CR LF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tiergate::cache::reply::Framer;

/// How a stream framed: each whole reply's length, then whether it ended in an error.
#[derive(Debug, PartialEq)]
struct Outcome {
    lengths: Vec<usize>,
    error: bool,
}

fn feed<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, drop_scanned: bool) -> Outcome {
    let mut buf: Vec<u8> = Vec::new();
    let mut framer = Framer::default();
    let mut lengths = Vec::new();
    let mut dropped = 0;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match framer.scan(&buf) {
                Ok(Some(len)) => {
                    if dropped == 0 {
                        assert!(buf[len - 2..len] == *b"\r\n", "a reply not ending in CR LF");
                    }
                    lengths.push(dropped + len);
                    dropped = 0;
                    buf.drain(..len);
                }
                Ok(None) => {
                    if drop_scanned {
                        dropped += framer.scanned();
                        buf.drain(..framer.scanned());
                        framer.dropped_scanned();
                    }
                    break;
                }
                Err(_) => {
                    return Outcome {
                        lengths,
                        error: true,
                    }
                }
            }
        }
    }
    Outcome {
        lengths,
        error: false,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cut = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let stream = &data[2..];
    let whole = feed([stream], false);
    let cut = cut.min(stream.len());
    let halves = feed([&stream[..cut], &stream[cut..]], false);
    assert_eq!(whole, halves, "cut at {cut}");
    let trickled = feed(stream.chunks(1), false);
    assert_eq!(whole, trickled, "byte by byte");
    let dropped = feed(stream.chunks(1), true);
    // Dropping may find an error only later than keeping does (a bulk body is passed over,
    // not looked at, once dropped), never earlier; the replies framed before it agree.
    if !whole.error {
        assert_eq!(whole, dropped, "dropped as it arrived");
    }
});
