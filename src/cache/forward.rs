//! A run of commands the RESP door does not serve, forwarded to Redis as they came: encoded
//! once into the buffer our connection writes, sent in one round trip in the client's order,
//! and answered with the bytes Redis sent (`reply`). What each command writes is known from
//! Redis' command table (`table`) by the door, and handed over here as `Writes`: once Redis
//! has answered, those keys leave this instance's L1, and the run's last commands announce
//! them to every other instance on the invalidation bus (an empty key announces "everything",
//! for FLUSHALL and writes whose keys cannot be known).

use super::pipe::{self, Reply};
use bytes::Bytes;

/// What a forwarded command may change in L1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writes {
    /// Nothing: a read, or a command about no key.
    Nothing,
    /// These arguments (indices into the command) are keys it writes.
    Keys(Box<[u32]>),
    /// Any key: FLUSHALL, SWAPDB, a script that declares no keys.
    Everything,
}

/// Commands gathered for one round trip.
#[derive(Default)]
pub struct Run {
    commands: Vec<u8>,
    count: usize,
    /// The keys the run writes, to invalidate and announce.
    written: Vec<Bytes>,
    everything: bool,
}

impl Run {
    /// Adds a command; `writes` says what it may change.
    pub fn push(&mut self, args: &[Bytes], writes: &Writes) {
        pipe::encode_args(&mut self.commands, args);
        self.count += 1;
        self.wrote(args, writes);
    }

    /// Records what a command sent elsewhere wrote (on a dedicated connection): a run of
    /// only these announces them and empties them from L1.
    pub fn wrote(&mut self, args: &[Bytes], writes: &Writes) {
        match writes {
            Writes::Nothing => {}
            Writes::Everything => self.everything = true,
            Writes::Keys(at) => {
                let keys = at.iter().filter_map(|&i| args.get(i as usize)).cloned();
                self.written.extend(keys);
            }
        }
    }

    /// Commands in the run.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether it holds neither commands nor writes.
    pub fn is_void(&self) -> bool {
        self.count == 0 && !self.everything && self.written.is_empty()
    }

    /// Bytes the run's commands take, encoded.
    pub fn bytes(&self) -> usize {
        self.commands.len()
    }

    /// The run's commands, with an announcement of what they wrote after them on `channel`
    /// (None: not announcing, as in tracking mode, where Redis itself tells every instance);
    /// how many replies Redis will send. A key written twice is announced once.
    pub(super) fn finish(&mut self, channel: Option<&str>) -> (Vec<u8>, usize) {
        let mut replies = self.count;
        let mut commands = std::mem::take(&mut self.commands);
        if let Some(channel) = channel {
            if self.everything {
                pipe::encode(&mut commands, &[b"PUBLISH", channel.as_bytes(), b""]);
                replies += 1;
            } else {
                self.written.sort_unstable();
                self.written.dedup();
                for key in &self.written {
                    pipe::encode(&mut commands, &[b"PUBLISH", channel.as_bytes(), key]);
                    replies += 1;
                }
            }
        }
        (commands, replies)
    }

    /// What L1 must drop once the run has reached Redis: every key (Err) or these.
    pub(super) fn written(&self) -> Result<&[Bytes], ()> {
        if self.everything {
            Err(())
        } else {
            Ok(&self.written)
        }
    }
}

/// Forwarded replies, in the client's order: the bytes Redis sent, or how long one was that
/// passed `limits.max_reply_bytes` and was dropped.
pub type Replies = Vec<Reply>;
