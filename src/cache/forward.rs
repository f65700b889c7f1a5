//! A run of commands the RESP door does not serve, forwarded to Redis as they came: to one
//! Redis encoded once into the buffer our connection writes, sent in one round trip in the
//! client's order; to a cluster routed by slot, one round trip per master (`cluster`). Either
//! way answered with the bytes Redis sent (`reply`). What each command writes is known from
//! Redis' command table (`table`) by the door, and handed over here as `Writes`: once Redis
//! has answered, those keys leave this instance's L1, and the run's last commands announce
//! them to every other instance on the invalidation bus (an empty key announces "everything",
//! for FLUSHALL and writes whose keys cannot be known).

use super::{
    echo::Echoes,
    pipe::{self, Reply},
};
use bytes::Bytes;
use smallvec::SmallVec;

/// What a forwarded command may change in L1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writes {
    /// Nothing: a read, or a command about no key.
    Nothing,
    /// These arguments (indices into the command) are keys it writes.
    Keys(Indices),
    /// Any key: FLUSHALL, SWAPDB, a script that declares no keys.
    Everything,
    /// These arguments are keys written by a command that takes only keys of another type
    /// than strings (HSET, LPUSH, SADD, ZADD, XADD ...: on a string it fails WRONGTYPE) and
    /// overwrites none: L1 holds no value of such a key, only, when `l1.negative_ttl` is on,
    /// its absence. So they are evicted and announced only then.
    Typed(Indices),
}

/// Arguments of a command, by index: inline up to four (a write of one key is the rule).
pub type Indices = smallvec::SmallVec<[u32; 4]>;

/// Commands gathered for one round trip.
#[derive(Default)]
pub struct Run {
    /// Each command's arguments, in the client's order: encoded into one pipeline for one
    /// Redis (`finish`), routed by slot on a cluster (`cluster`). Inline, as `written`: an
    /// unpipelined client's run is one command, and a run is made per batch it sends.
    commands: SmallVec<[Vec<Bytes>; 1]>,
    /// Bytes of the commands' arguments, a measure of the run's size.
    bytes: usize,
    /// The keys the run writes, to invalidate and announce.
    written: SmallVec<[Bytes; 1]>,
    /// Keys of `Writes::Typed`: announced only where absences are cached (`with_typed`).
    typed: SmallVec<[Bytes; 1]>,
    everything: bool,
    /// GETs of keys L1 does not hold (`push_read`), in the order of `commands`.
    pub(super) reads: Vec<Read>,
}

/// A GET sent with the run for a key L1 does not hold, with a PTTL after it: the client
/// gets GET's reply, and L1 keeps the value for as long as Redis does (`TieredCache::forward`).
pub(super) struct Read {
    /// Where its GET is in the run; its PTTL is next.
    pub at: usize,
    pub key: Bytes,
    /// The key's write epoch before the GET was sent (see `TieredCache::drop_if_raced`).
    pub epoch: u64,
}

/// What a run announces once it has reached Redis.
pub(super) enum Announce<'a> {
    /// Every key: an empty key on the bus.
    Everything,
    /// These keys, each once.
    Keys(&'a [Bytes]),
}

impl Run {
    /// Adds a command; `writes` says what it may change.
    pub fn push(&mut self, args: Vec<Bytes>, writes: &Writes) {
        self.wrote(&args, writes);
        // As `encode_args` reserves: `finish` sizes the pipeline with it, and a buffer short
        // of it grew once per run (2% of an unpipelined INCR, callgrind).
        self.bytes += pipe::encoded_len(&args);
        self.commands.push(args);
    }

    /// Adds a GET of a key L1 does not hold, read into L1 with Redis' TTL once the run is
    /// answered: a client's pipelined misses then share one round trip, as a proxy would
    /// send them. The client gets one reply for it, GET's, among the run's replies.
    pub fn push_read(&mut self, key: Bytes) {
        self.reads.push(Read {
            at: self.commands.len(),
            key: key.clone(),
            epoch: 0,
        });
        self.push(
            vec![Bytes::from_static(b"GET"), key.clone()],
            &Writes::Nothing,
        );
        self.push(vec![Bytes::from_static(b"PTTL"), key], &Writes::Nothing);
    }

    /// Whether any command held may write: a read after it must not be answered from L1
    /// before the run has been sent.
    pub fn writes(&self) -> bool {
        self.everything || !self.written.is_empty() || !self.typed.is_empty()
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
            Writes::Typed(at) => {
                let keys = at.iter().filter_map(|&i| args.get(i as usize)).cloned();
                self.typed.extend(keys);
            }
        }
    }

    /// Counts the keys of `Writes::Typed` as written: L1 caches absences.
    pub(super) fn with_typed(&mut self) {
        self.written.append(&mut self.typed);
    }

    /// Commands in the run.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// Whether it holds neither commands nor writes.
    pub fn is_void(&self) -> bool {
        self.commands.is_empty() && !self.everything && self.written.is_empty()
    }

    /// Bytes the run's commands take, about as encoded.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The run's commands, in the client's order.
    pub(super) fn commands(&self) -> &[Vec<Bytes>] {
        &self.commands
    }

    /// What to announce: every key, or the written keys sorted, each once.
    pub(super) fn announce(&mut self) -> Announce<'_> {
        if self.everything {
            return Announce::Everything;
        }
        self.written.sort_unstable();
        self.written.dedup();
        Announce::Keys(&self.written)
    }

    /// The run's commands encoded for one Redis, then the keys they write, to be announced
    /// after them (`pipe::pack_key`; none when `channel` is None, as in tracking mode, where
    /// Redis itself tells every instance; an empty key for every key); how many bytes at the
    /// end are those keys, and how many replies Redis will send. A key written twice is
    /// announced once. Writes made elsewhere (`wrote`), with no command of the run's own, are
    /// announced by a PUBLISH here, whose reply is the one Redis sends.
    pub(super) fn finish(&mut self, channel: Option<&str>) -> (Vec<u8>, usize, usize) {
        // Room for the keys announced after the commands too (`pack_key`: a length line of at
        // most 24 bytes each), so that the buffer is allocated once.
        let keys = match channel {
            Some(_) => self.written.iter().map(|k| k.len() + 24).sum(),
            None => 0,
        };
        let mut out = Vec::with_capacity(self.bytes + keys + 24);
        for args in &self.commands {
            pipe::encode_args(&mut out, args);
        }
        let replies = self.commands.len();
        let Some(channel) = channel else {
            return (out, 0, replies);
        };
        // Packed straight after the commands, in the room reserved above: a `Vec` of their own
        // grew one reallocation at a time, 4% of an unpipelined INCR (callgrind).
        let from = out.len();
        match self.announce() {
            Announce::Everything => pipe::pack_key(&mut out, b""),
            Announce::Keys(written) => {
                for key in written {
                    pipe::pack_key(&mut out, key);
                }
            }
        }
        let announced = out.len() - from;
        if announced == 0 || replies > 0 {
            return (out, announced, replies);
        }
        // Untagged (nobody reports against it), but led by a tag all the same, so that its
        // first key is never taken for one (`echo::MARK`).
        let mut message = Vec::with_capacity(announced + 16);
        Echoes::untagged(&mut message);
        message.extend_from_slice(&out[from..]);
        out.truncate(from);
        let channel = pipe::keys_channel(channel);
        pipe::encode(&mut out, &[b"PUBLISH", channel.as_bytes(), &message]);
        (out, 0, 1)
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
