//! The HTTP door's own reading of request heads (`http::h1`: which requests it serves, which
//! it hands to hyper) over arbitrary bytes, as a hostile client might send them.
//!
//! Input: 1 byte of limits (bit 0: a small `http.max_headers` of 4; bit 1: the smallest
//! `http.max_header_bytes`, 8 KiB), then the bytes the client sends.
//! Asserted, beyond not panicking:
//! - the bytes fed whole and byte by byte take the same requests (method, target, headers)
//!   and stop the same way, at the same place;
//! - what is taken plus what is left is exactly what was sent (nothing lost to hyper);
//! - a head handed over is left untouched, a target taken is a path.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tiergate::http::h1::{take_for_fuzz, Limits, Stop};

type Run = (Vec<String>, Stop, usize);

/// Takes what it can after each chunk; stops at the first request that is not ours.
fn feed<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, limits: Limits) -> (Run, Vec<u8>) {
    let mut buf = BytesMut::new();
    let (mut taken, mut consumed) = (Vec::new(), 0);
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match take_for_fuzz(&mut buf, &limits) {
                Ok(seen) => {
                    let target = seen.split(' ').nth(1).unwrap_or_default();
                    assert!(target.starts_with('/'), "a target taken is a path: {seen}");
                    consumed += before - buf.len();
                    taken.push(seen);
                }
                Err(Stop::Partial) => break,
                Err(Stop::Other) => {
                    assert_eq!(buf.len(), before, "a head handed over is left as it was");
                    return ((taken, Stop::Other, consumed), buf.to_vec());
                }
            }
        }
    }
    ((taken, Stop::Partial, consumed), buf.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, wire)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_head: if flags & 2 != 0 { 8 << 10 } else { 16 << 10 },
        max_headers: if flags & 1 != 0 { 4 } else { 100 },
        h2: true,
    };
    let (whole, rest) = feed([wire], limits);
    assert_eq!(
        whole.2 + rest.len(),
        wire.len(),
        "taken and left are what was sent"
    );
    assert_eq!(&wire[whole.2..], &rest[..]);
    let (bytewise, _) = feed(wire.chunks(1), limits);
    // Byte by byte, a head over the bound is handed over as soon as the bound is passed;
    // whole, the same. Below it, the same requests and the same stop.
    assert_eq!(whole, bytewise);
});
