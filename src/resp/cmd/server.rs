//! COMMAND: enough of it for redis-cli and client libraries (COMMAND, COUNT, INFO, DOCS).

use super::{is, Ctx, Parse};
use crate::resp::frame::Frame;
use bytes::Bytes;

/// name, arity (negative: at least), first key, last key, step: as redis-server reports them.
const TABLE: &[(&str, i64, i64, i64, i64)] = &[
    ("ping", -1, 0, 0, 0),
    ("echo", 2, 0, 0, 0),
    ("quit", -1, 0, 0, 0),
    ("select", 2, 0, 0, 0),
    ("auth", -2, 0, 0, 0),
    ("hello", -1, 0, 0, 0),
    ("client", -2, 0, 0, 0),
    ("command", -1, 0, 0, 0),
    ("get", 2, 1, 1, 1),
    ("set", -3, 1, 1, 1),
    ("mget", -2, 1, -1, 1),
    ("mset", -3, 1, -1, 2),
    ("del", -2, 1, -1, 1),
    ("unlink", -2, 1, -1, 1),
    ("exists", -2, 1, -1, 1),
    ("incr", 2, 1, 1, 1),
    ("decr", 2, 1, 1, 1),
    ("incrby", 3, 1, 1, 1),
    ("decrby", 3, 1, 1, 1),
    ("expire", -3, 1, 1, 1),
    ("pexpire", -3, 1, 1, 1),
    ("ttl", 2, 1, 1, 1),
    ("pttl", 2, 1, 1, 1),
];

pub enum CommandInfo {
    All,
    Count,
    Info(Vec<Bytes>),
    Docs,
}

impl CommandInfo {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        let Some(sub) = p.next_opt() else {
            return Ok(CommandInfo::All);
        };
        if is(&sub, "count") {
            Ok(CommandInfo::Count)
        } else if is(&sub, "info") {
            Ok(CommandInfo::Info(p.rest()))
        } else if is(&sub, "docs") {
            p.rest();
            Ok(CommandInfo::Docs)
        } else {
            Err(Frame::Error(
                format!(
                    "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                    String::from_utf8_lossy(&sub)
                )
                .into(),
            ))
        }
    }

    pub fn apply(self, _: &mut Ctx<'_>) -> Frame {
        match self {
            CommandInfo::All => Frame::Array(TABLE.iter().map(entry).collect()),
            CommandInfo::Count => Frame::Integer(TABLE.len() as i64),
            CommandInfo::Info(names) => Frame::Array(
                names
                    .iter()
                    .map(|n| {
                        TABLE
                            .iter()
                            .find(|t| t.0.as_bytes().eq_ignore_ascii_case(n))
                            .map_or(Frame::Null, entry)
                    })
                    .collect(),
            ),
            CommandInfo::Docs => Frame::Map(Vec::new()),
        }
    }
}

fn entry(&(name, arity, first, last, step): &(&'static str, i64, i64, i64, i64)) -> Frame {
    Frame::Array(vec![
        Frame::bulk_static(name),
        Frame::Integer(arity),
        Frame::Array(Vec::new()),
        Frame::Integer(first),
        Frame::Integer(last),
        Frame::Integer(step),
    ])
}
