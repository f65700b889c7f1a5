//! The inline splitter: what `frame::parse` does with a line that does not start with `*`
//! (`PING`, `SET k "a b"` typed into telnet).
//!
//! Input: 1 byte that picks how arguments are quoted when written back, then the line (up to
//! its first `\n`). Asserted, beyond not panicking:
//! - a line under the bound is either split or refused for its quotes, nothing else;
//! - a line of whitespace is skipped; any other line gives at least one argument;
//! - a line without quotes or backslashes splits on whitespace and nothing else;
//! - the arguments, written back as an inline line (bare, 'single' or "double" quoted with
//!   escapes, as the style byte picks per argument), split into the same arguments.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tiergate::resp::frame::{parse, Limits, Progress, ProtocolError};

const LIMITS: Limits = Limits {
    max_multibulk_len: 1 << 20,
    max_bulk_len: 1 << 20,
    max_bulk_len_from: "limits.max_value_bytes",
    max_inline_len: 1 << 20,
    max_request_len: 1 << 24,
};

/// Skipped between arguments, as by redis-server's `sdssplitargs` (C `isspace`).
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// What ends an unquoted argument there: fewer bytes than are skipped.
fn ends_arg(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The unquoted words of `line`, as `sdssplitargs` finds them.
fn words(line: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if is_space(line[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < line.len() && !ends_arg(line[i]) {
            i += 1;
        }
        out.push(&line[start..i]);
    }
    out
}

fn split(line: &[u8]) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let mut buf = BytesMut::from(line);
    buf.extend_from_slice(b"\r\n");
    let got = parse(&mut buf, &LIMITS, &mut Progress::default());
    if got.is_ok() {
        assert!(buf.is_empty(), "the whole line is taken");
    }
    got
}

/// `arg` written so that the splitter reads it back: bare when `style` is 0 and it can be,
/// 'single' quoted when 1 and it can be, else "double" quoted. A line starting with `*` is a
/// multibulk command, so the first argument is bare only when it does not start with one.
fn quote(arg: &[u8], first: bool, style: u8, out: &mut Vec<u8>) {
    let bare = match arg.first() {
        None | Some(b'"' | b'\'') => false,
        Some(b'*') if first => false,
        Some(&b) if is_space(b) => false,
        Some(_) => !arg.iter().any(|&b| ends_arg(b)),
    };
    // In single quotes only \' is an escape: a trailing backslash would escape the closing
    // quote, and a newline would end the line.
    let single = !arg.contains(&b'\n') && !arg.ends_with(b"\\");
    match style {
        0 if bare => out.extend_from_slice(arg),
        1 if single => {
            out.push(b'\'');
            for &b in arg {
                if b == b'\'' {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'\'');
        }
        _ => {
            out.push(b'"');
            for &b in arg {
                match b {
                    b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b' '..=b'~' => out.push(b),
                    _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                }
            }
            out.push(b'"');
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&style, rest)) = data.split_first() else {
        return;
    };
    let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
    if line.first() == Some(&b'*') {
        return; // a multibulk command: resp_codec's
    }
    let args = match split(line) {
        Ok(Some(args)) => args,
        Ok(None) => {
            assert!(
                line.iter().all(|&b| is_space(b)),
                "only a blank line is skipped"
            );
            return;
        }
        Err(ProtocolError::UnbalancedQuotes) => return,
        Err(e) => panic!("{e}"),
    };
    assert!(!args.is_empty());
    if !line.iter().any(|b| matches!(b, b'"' | b'\'' | b'\\')) {
        assert_eq!(args, words(line));
    }

    let mut again = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        if i > 0 {
            again.push(b' ');
        }
        quote(arg, i == 0, (style >> (2 * (i % 4))) & 3, &mut again);
    }
    assert_eq!(
        split(&again),
        Ok(Some(args)),
        "{}",
        String::from_utf8_lossy(&again)
    );
});
