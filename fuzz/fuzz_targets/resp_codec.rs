//! The RESP codec: `frame::parse` (and the `check` inside it) over arbitrary bytes under
//! arbitrary small limits, and `Frame::encode`.
//!
//! Input: 4 bytes of limits, 2 bytes of cut point, then the byte stream a client sends.
//! Asserted, beyond not panicking:
//! - no command comes out without arguments;
//! - the stream fed whole, cut in two at the cut point, and byte by byte (the `Progress`
//!   carried over) gives the same commands, the same bytes left over and the same error
//!   (bar the timing that `same_end` allows, which redis-server shares);
//! - each command, encoded as a multibulk array of bulks, parses back to the same arguments;
//! - replies built from the stream, encoded as RESP2 and RESP3, read back as the same frames.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use std::borrow::Cow;
use tiergate::resp::frame::{parse, Frame, Limits, Progress, Protocol, ProtocolError};

/// Bounds that nothing re-encoded from a fuzz input comes near.
const ROOMY: Limits = Limits {
    max_multibulk_len: 1 << 20,
    max_bulk_len: 1 << 20,
    max_bulk_len_from: "limits.max_value_bytes",
    max_inline_len: 1 << 20,
    max_request_len: 1 << 24,
};

/// The commands a stream parsed into, and how it ended: the bytes left waiting for more, or
/// the protocol error that closes the connection.
#[derive(Debug, PartialEq)]
struct Outcome {
    commands: Vec<Vec<Bytes>>,
    end: Result<Vec<u8>, ProtocolError>,
}

fn feed<'a>(chunks: impl IntoIterator<Item = &'a [u8]>, limits: &Limits) -> Outcome {
    let mut buf = BytesMut::new();
    let mut progress = Progress::default();
    let mut commands = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parse(&mut buf, limits, &mut progress) {
                Ok(Some(args)) => {
                    assert!(!args.is_empty(), "a command without arguments");
                    commands.push(args);
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        commands,
                        end: Err(e),
                    }
                }
            }
        }
    }
    Outcome {
        commands,
        end: Ok(buf.to_vec()),
    }
}

/// Whether `split` (fed in pieces) ended as `whole` did. One difference is allowed, and
/// redis-server has it too: a `*` line that is over the inline bound with no `\r` yet is
/// refused as too long when it arrives in pieces, and as not a number when its `\r` came in
/// the same read.
fn same_end(whole: &Outcome, split: &Outcome) -> bool {
    whole.end == split.end
        || (whole.end == Err(ProtocolError::InvalidMultibulkLength)
            && split.end == Err(ProtocolError::TooBigCount))
}

fn encode(frame: &Frame, proto: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    frame.encode(proto, &mut out);
    out
}

/// Reads one reply from `b` at `pos`: enough of a RESP2/RESP3 client to check the encoder.
fn read_reply(b: &[u8], pos: &mut usize) -> Frame {
    let tag = b[*pos];
    let eol = *pos + 1 + b[*pos + 1..].windows(2).position(|w| w == b"\r\n").unwrap();
    let line = &b[*pos + 1..eol];
    *pos = eol + 2;
    let text = || String::from_utf8(line.to_vec()).unwrap();
    let number = || text().parse::<i64>().unwrap();
    match tag {
        b'+' => Frame::Simple(Cow::Owned(text())),
        b'-' => Frame::Error(Cow::Owned(text())),
        b':' => Frame::Integer(number()),
        b'_' => {
            assert!(line.is_empty());
            Frame::Null
        }
        b'$' if line == b"-1" => Frame::Null,
        b'$' => {
            let len = usize::try_from(number()).unwrap();
            let data = Bytes::copy_from_slice(&b[*pos..*pos + len]);
            assert_eq!(&b[*pos + len..*pos + len + 2], b"\r\n");
            *pos += len + 2;
            Frame::Bulk(data)
        }
        b'*' => Frame::Array((0..number()).map(|_| read_reply(b, pos)).collect()),
        b'%' => Frame::Map(
            (0..number())
                .map(|_| (read_reply(b, pos), read_reply(b, pos)))
                .collect(),
        ),
        t => panic!("unknown reply tag {:?}", char::from(t)),
    }
}

/// What a client reads back for `frame`: RESP2 has no maps, only their flat arrays.
fn as_read(frame: &Frame, proto: Protocol) -> Frame {
    match (frame, proto) {
        (Frame::Array(items), _) => Frame::Array(items.iter().map(|f| as_read(f, proto)).collect()),
        (Frame::Map(pairs), Protocol::Resp2) => Frame::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| [as_read(k, proto), as_read(v, proto)])
                .collect(),
        ),
        (Frame::Map(pairs), Protocol::Resp3) => Frame::Map(
            pairs
                .iter()
                .map(|(k, v)| (as_read(k, proto), as_read(v, proto)))
                .collect(),
        ),
        // No CR or LF reaches the wire in a status or error line: each is a space.
        (Frame::Simple(s), _) => Frame::Simple(s.replace(['\r', '\n'], " ").into()),
        (Frame::Error(s), _) => Frame::Error(s.replace(['\r', '\n'], " ").into()),
        (f, _) => f.clone(),
    }
}

/// A reply tree drawn from `bytes`.
fn reply(bytes: &mut &[u8], depth: u32) -> Frame {
    let mut take = |n: usize| {
        let (head, rest) = bytes.split_at(n.min(bytes.len()));
        *bytes = rest;
        head.to_vec()
    };
    let kind = take(1).first().copied().unwrap_or(0);
    let len = usize::from(take(1).first().copied().unwrap_or(0) % 8);
    let text = |raw: Vec<u8>| Cow::Owned(String::from_utf8_lossy(&raw).into_owned());
    match kind % 7 {
        0 => Frame::Simple(text(take(len))),
        1 => Frame::Error(text(take(len))),
        2 => {
            let mut n = [0u8; 8];
            let raw = take(8);
            n[..raw.len()].copy_from_slice(&raw);
            Frame::Integer(i64::from_le_bytes(n))
        }
        3 => Frame::Bulk(Bytes::from(take(len * 4))),
        4 => Frame::Null,
        5 if depth < 4 => Frame::Array((0..len).map(|_| reply(bytes, depth + 1)).collect()),
        6 if depth < 4 => Frame::Map(
            (0..len)
                .map(|_| (reply(bytes, depth + 1), reply(bytes, depth + 1)))
                .collect(),
        ),
        _ => Frame::Integer(len as i64),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((head, stream)) = data.split_first_chunk::<6>() else {
        return;
    };
    // Small bounds, so that every one of them is crossed. A header line of a valid length is
    // at most 20 bytes (`-`, 18 digits, `\r`); config keeps the inline bound at 1KiB or more.
    let limits = Limits {
        max_multibulk_len: 1 + usize::from(head[0] % 16),
        max_bulk_len: usize::from(head[1] % 64),
        max_bulk_len_from: "limits.max_value_bytes",
        max_inline_len: 20 + usize::from(head[2] % 128),
        max_request_len: usize::from(head[3]) * 4,
    };
    let cut = usize::from(u16::from_le_bytes([head[4], head[5]])) % (stream.len() + 1);

    // Every feed ends with a `\n` of its own. A `*` or `$` line whose `\r` is the last byte
    // read waits for the byte after it (so does redis-server), where a feed in pieces may
    // already have refused that line as too long before its `\r` came.
    let end: &[u8] = b"\n";
    let whole = feed([stream, end], &limits);
    let halves = feed([&stream[..cut], &stream[cut..], end], &limits);
    let bytes = feed(stream.chunks(1).chain([end]), &limits);
    for split in [&halves, &bytes] {
        assert_eq!(whole.commands, split.commands, "cut at {cut}");
        assert!(
            same_end(&whole, split),
            "cut at {cut}: {:?} / {:?}",
            whole.end,
            split.end
        );
    }

    for args in &whole.commands {
        let array = Frame::Array(args.iter().cloned().map(Frame::Bulk).collect());
        let mut wire = encode(&array, Protocol::Resp2);
        let back = parse(&mut wire, &ROOMY, &mut Progress::default());
        assert_eq!(back, Ok(Some(args.clone())));
        assert!(wire.is_empty());
    }

    let mut rest = stream;
    let frame = reply(&mut rest, 0);
    for proto in [Protocol::Resp2, Protocol::Resp3] {
        let wire = encode(&frame, proto);
        assert_eq!(frame.encoded_len(proto), wire.len());
        let mut pos = 0;
        assert_eq!(read_reply(&wire, &mut pos), as_read(&frame, proto));
        assert_eq!(pos, wire.len());
    }
});
