//! Own echoes: this instance's batched announcements (`pipe`), heard back on its own
//! subscription. Each is tagged (`Echoes::open`) with this instance's random id and the
//! batch's sequence number; the writers of the batch report, once each has evicted its keys
//! here after Redis answered (`Echoes::evicted`), and an echo whose writers have all done so
//! carries nothing L1 still needs (`Echoes::state`). A writer that never reports (it timed
//! out, was cancelled, got an error, or its connection failed) leaves its batch pending,
//! and the echo evicts as any other announcement: it is what covers a write applied
//! without its writer's eviction.
//!
//! Bounded: one word per slot of a ring of `SLOTS`, indexed by sequence number; a batch
//! whose slot a later one has taken is unknown, and its echo evicts.
//!
//! Alone on the bus (no other subscriber: `bus`), this instance does not subscribe to its
//! own announcements, and Redis does not send them back. Each batch's message is then kept
//! here once Redis has answered its PUBLISH (`keep`), and the bus takes them in turn
//! (`take_kept`) and settles them as echoes heard: what a writer that never reported left
//! in L1 is evicted all the same. Bounded by `KEPT`; past it, L1 is flushed instead.

use bytes::Bytes;
use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
};

/// How a tag starts: it is the first bulk string of a message on the keys channel, followed
/// by the instance's id (16 hex digits), ':' and the batch's sequence number in decimal. An
/// instance that predates tags reads it as one more key to evict, which costs nothing. Every
/// message this version sends starts with one (`MARK` alone when untagged, `untagged`), so
/// a key that starts like a tag is never read as one.
pub const MARK: &[u8] = b"\0tiergate:";

/// Batches remembered (a power of two): far more than are ever sent and not yet heard back.
const SLOTS: usize = 4096;
/// A slot is `seq << PENDING_BITS | writers not yet evicted`.
const PENDING_BITS: u32 = 16;
const PENDING: u64 = (1 << PENDING_BITS) - 1;
const SEQ: u64 = u64::MAX >> PENDING_BITS;

/// Own messages kept between two turns of the bus while alone (`keep`): the bus takes them
/// every `bus::ECHO_GRACE`, far fewer than this at any rate of writes it can keep up with.
const KEPT: usize = 4096;

/// How a hello ends: `MARK`, the instance's id, ':', then this (`Echoes::hello`).
const HELLO: &[u8] = b"hello";

pub struct Echoes {
    /// `MARK`, this instance's id, ':': how its own tags start.
    own: Box<[u8]>,
    next: AtomicU64,
    slots: Box<[AtomicU64]>,
    /// Alone on the bus: own messages are kept here rather than heard back.
    alone: AtomicBool,
    /// Own messages applied by Redis while alone, for the bus to settle. A lock the bus
    /// takes once per turn and a connection once per round trip, never across an await.
    kept: Mutex<VecDeque<Bytes>>,
    /// Some message could not be kept (`KEPT`): the bus flushes L1 instead.
    overflowed: AtomicBool,
}

/// Whose hello a message on the bus's channel is (`Echoes::hello_of`).
#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    Own,
    Other,
}

/// One write's share of a tagged batch, handed back with its replies: given to
/// `Echoes::evicted` once its keys have left L1, or dropped (then the echo evicts them).
#[derive(Debug, Default, PartialEq, Eq)]
#[must_use = "dropping a batch makes its echo evict"]
pub struct Batch(u64);

impl Batch {
    /// Not part of a tagged batch (nothing announced, or no tags on this connection).
    pub const NONE: Batch = Batch(0);
}

/// What a tag says about the message it starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Tag {
    /// No tag: a message from an instance that predates tags.
    None,
    /// Another instance's batch.
    Other,
    /// One of ours, by sequence number.
    Own(u64),
}

/// Where an own batch's writers are.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// Every writer has evicted its keys here, after Redis' reply.
    Evicted,
    /// Some writer has not (yet).
    Pending,
    /// Not remembered (its slot was reused): treated as pending for good.
    Unknown,
}

impl Echoes {
    pub fn new() -> Self {
        let mut own = MARK.to_vec();
        own.extend_from_slice(format!("{:016x}:", fastrand::u64(..)).as_bytes());
        Self {
            own: own.into(),
            // 0 is `Batch::NONE`.
            next: AtomicU64::new(1),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            alone: AtomicBool::new(false),
            kept: Mutex::new(VecDeque::new()),
            overflowed: AtomicBool::new(false),
        }
    }

    /// What a subscription publishes on the bus's channel as it starts, so that an instance
    /// alone there starts hearing announcements: `MARK`, this instance's id, ":hello". An
    /// instance that predates it evicts it as a key, which costs nothing.
    pub fn hello(&self) -> Vec<u8> {
        [&self.own[..], HELLO].concat()
    }

    /// Whether `message`, heard on the bus's channel, is a hello, and whose.
    pub fn hello_of(&self, message: &[u8]) -> Option<Hello> {
        let rest = message.strip_prefix(MARK)?.strip_suffix(HELLO)?;
        if !rest.ends_with(b":") {
            return None;
        }
        Some(
            if message.starts_with(&self.own) && message.len() == self.own.len() + HELLO.len() {
                Hello::Own
            } else {
                Hello::Other
            },
        )
    }

    /// Whether this instance is alone on the bus (set by the bus, read per round trip).
    pub fn is_alone(&self) -> bool {
        self.alone.load(Ordering::Acquire)
    }

    /// Alone or not: whether the batches sent from now on keep their messages.
    pub fn set_alone(&self, alone: bool) {
        self.alone.store(alone, Ordering::Release);
    }

    /// An own batch's message (its tag, then its keys), once Redis has applied it, while
    /// alone: kept for the bus to settle as an echo.
    pub fn keep(&self, message: Bytes) {
        let mut kept = self.lock_kept();
        if kept.len() < KEPT {
            kept.push_back(message);
        } else {
            self.overflowed.store(true, Ordering::Release);
        }
    }

    /// What was kept, oldest first, into `out`; true if some message could not be.
    pub fn take_kept(&self, out: &mut VecDeque<Bytes>) -> bool {
        std::mem::swap(&mut *self.lock_kept(), out);
        self.overflowed.swap(false, Ordering::AcqRel)
    }

    fn lock_kept(&self) -> std::sync::MutexGuard<'_, VecDeque<Bytes>> {
        // A panic while it was held left a queue of whole messages: still usable.
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slot(&self, seq: u64) -> &AtomicU64 {
        &self.slots[seq as usize & (SLOTS - 1)]
    }

    /// Starts a batch of `writers` writes that announce keys: appends its tag to `out` as a
    /// RESP bulk string, and returns the sequence number each writer's `Batch` carries
    /// (None, and no tag, when there are too many writers to count).
    pub fn open(&self, writers: usize, out: &mut Vec<u8>) -> Option<u64> {
        let writers = u64::try_from(writers).ok().filter(|&w| w <= PENDING)?;
        let seq = match self.next.fetch_add(1, Ordering::Relaxed) & SEQ {
            0 => self.next.fetch_add(1, Ordering::Relaxed) & SEQ,
            seq => seq,
        };
        self.slot(seq)
            .store(seq << PENDING_BITS | writers, Ordering::Release);
        let mut n = itoa::Buffer::new();
        let seq_text = n.format(seq);
        out.push(b'$');
        out.extend_from_slice(
            itoa::Buffer::new()
                .format(self.own.len() + seq_text.len())
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.own);
        out.extend_from_slice(seq_text.as_bytes());
        out.extend_from_slice(b"\r\n");
        Some(seq)
    }

    /// The tag of a message no writer reports against (`MARK` alone), appended to `out`.
    pub fn untagged(out: &mut Vec<u8>) {
        super::pipe::pack_key(out, MARK);
    }

    /// The `Batch` of batch `seq` (from `open`), for one of its writers.
    pub fn batch(seq: Option<u64>) -> Batch {
        Batch(seq.unwrap_or(0))
    }

    /// A writer of `batch` has evicted its keys from L1 (after Redis' reply). Each batch
    /// counts once: `Batch` is consumed.
    pub fn evicted(&self, batch: Batch) {
        let seq = batch.0;
        if seq == 0 {
            return;
        }
        let slot = self.slot(seq);
        let mut v = slot.load(Ordering::Acquire);
        // Only while the slot is still this batch's: a later batch's count is not ours.
        while v >> PENDING_BITS == seq && v & PENDING != 0 {
            match slot.compare_exchange_weak(v, v - 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(now) => v = now,
            }
        }
    }

    /// Where the writers of own batch `seq` are.
    pub fn state(&self, seq: u64) -> State {
        let v = self.slot(seq).load(Ordering::Acquire);
        if v >> PENDING_BITS != seq {
            State::Unknown
        } else if v & PENDING == 0 {
            State::Evicted
        } else {
            State::Pending
        }
    }

    /// What `tag` (a message's first bulk string, `MARK` and all) says, for this instance.
    pub fn tag_of(own: Option<&Self>, tag: &[u8]) -> Tag {
        let seq = own
            .and_then(|e| tag.strip_prefix(&*e.own))
            .and_then(super::pipe::decimal)
            .and_then(|seq| u64::try_from(seq).ok())
            .filter(|&seq| seq != 0);
        match seq {
            Some(seq) => Tag::Own(seq),
            None => Tag::Other,
        }
    }
}

impl Default for Echoes {
    fn default() -> Self {
        Self::new()
    }
}

/// A message on the keys channel: what its tag says, and its keys (packed, `pipe::pack_key`).
/// Err when it is not a run of bulk strings.
pub fn split<'m>(own: Option<&Echoes>, message: &'m [u8]) -> Result<(Tag, &'m [u8]), ()> {
    if message.is_empty() {
        return Ok((Tag::None, message));
    }
    let (first, rest) = super::reply::split_bulk(message).ok_or(())?;
    if first.starts_with(MARK) {
        Ok((Echoes::tag_of(own, first), rest))
    } else {
        Ok((Tag::None, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::pipe::{pack_key, unpack_keys};

    fn tagged(e: &Echoes, writers: usize, keys: &[&[u8]]) -> (Option<u64>, Vec<u8>) {
        let mut out = Vec::new();
        let seq = e.open(writers, &mut out);
        for k in keys {
            pack_key(&mut out, k);
        }
        (seq, out)
    }

    #[test]
    fn an_echo_is_skippable_once_every_writer_has_evicted() {
        let e = Echoes::new();
        let (seq, message) = tagged(&e, 2, &[b"a", b"b"]);
        let (tag, keys) = split(Some(&e), &message).unwrap();
        let Tag::Own(heard) = tag else {
            panic!("{tag:?}")
        };
        assert_eq!(Some(heard), seq);
        let mut unpacked = Vec::new();
        unpack_keys(keys, |k| unpacked.push(k.to_vec())).unwrap();
        assert_eq!(unpacked, [b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(e.state(heard), State::Pending);
        e.evicted(Echoes::batch(seq));
        assert_eq!(e.state(heard), State::Pending);
        e.evicted(Echoes::batch(seq));
        assert_eq!(e.state(heard), State::Evicted);
        // A writer counted twice (it cannot be: `Batch` is consumed) would not go below 0.
        e.evicted(Echoes::batch(seq));
        assert_eq!(e.state(heard), State::Evicted);
        e.evicted(Batch::NONE);
    }

    #[test]
    fn a_reused_slot_makes_the_old_batch_unknown_and_leaves_the_new_one_alone() {
        let e = Echoes::new();
        let (old, _) = tagged(&e, 1, &[b"k"]);
        let old = old.unwrap();
        let mut newer = None;
        for _ in 0..SLOTS {
            newer = e.open(1, &mut Vec::new());
        }
        let newer = newer.unwrap();
        assert_eq!(newer & (SLOTS as u64 - 1), old & (SLOTS as u64 - 1));
        assert_eq!(e.state(old), State::Unknown);
        // The old batch's writer reports late: the new batch, in its slot, still waits.
        e.evicted(Batch(old));
        assert_eq!(e.state(newer), State::Pending);
        e.evicted(Batch(newer));
        assert_eq!(e.state(newer), State::Evicted);
    }

    #[test]
    fn other_instances_tags_and_untagged_messages_are_told_apart() {
        let ours = Echoes::new();
        let theirs = Echoes::new();
        let (_, message) = tagged(&theirs, 1, &[b"k"]);
        let (tag, keys) = split(Some(&ours), &message).unwrap();
        assert_eq!(tag, Tag::Other);
        assert_eq!(keys, b"$1\r\nk\r\n");
        // An instance that sends no tags of its own still strips other instances' tags.
        assert_eq!(
            split(None, &message).unwrap(),
            (Tag::Other, &b"$1\r\nk\r\n"[..])
        );
        // Untagged (an instance that predates tags): every bulk string is a key.
        let mut plain = Vec::new();
        pack_key(&mut plain, b"tiergate:x");
        pack_key(&mut plain, b"");
        assert_eq!(split(Some(&ours), &plain).unwrap(), (Tag::None, &plain[..]));
        assert_eq!(split(Some(&ours), b"").unwrap(), (Tag::None, &b""[..]));
        assert!(split(Some(&ours), b"junk").is_err());
        // Too many writers to count: no tag.
        assert_eq!(ours.open(PENDING as usize + 1, &mut Vec::new()), None);
        // Untagged by this version: a first key that looks like a tag is still a key.
        let mut sent = Vec::new();
        Echoes::untagged(&mut sent);
        pack_key(&mut sent, b"\0tiergate:0123456789abcdef:1");
        let (tag, keys) = split(Some(&ours), &sent).unwrap();
        assert_eq!(tag, Tag::Other);
        let mut unpacked = Vec::new();
        unpack_keys(keys, |k| unpacked.push(k.to_vec())).unwrap();
        assert_eq!(unpacked, [b"\0tiergate:0123456789abcdef:1".to_vec()]);
    }

    #[test]
    fn hellos_are_told_from_keys_and_from_each_other() {
        let ours = Echoes::new();
        let theirs = Echoes::new();
        assert_eq!(ours.hello_of(&ours.hello()), Some(Hello::Own));
        assert_eq!(ours.hello_of(&theirs.hello()), Some(Hello::Other));
        assert_eq!(theirs.hello_of(&ours.hello()), Some(Hello::Other));
        // Keys, tags and near misses are none.
        assert_eq!(ours.hello_of(b"user:1"), None);
        assert_eq!(ours.hello_of(b"hello"), None);
        assert_eq!(ours.hello_of(b"\0tiergate:hello"), None);
        let mut tag = Vec::new();
        let _ = ours.open(1, &mut tag);
        assert_eq!(ours.hello_of(&tag), None);
        let mut own_tag_then_hello = ours.hello();
        own_tag_then_hello.extend_from_slice(b"!");
        assert_eq!(ours.hello_of(&own_tag_then_hello), None);
    }

    #[test]
    fn kept_messages_are_taken_oldest_first_and_bounded() {
        let e = Echoes::new();
        assert!(!e.is_alone());
        e.set_alone(true);
        assert!(e.is_alone());
        for i in 0..KEPT + 3 {
            e.keep(Bytes::from(i.to_string()));
        }
        let mut out = VecDeque::new();
        assert!(e.take_kept(&mut out), "three could not be kept");
        assert_eq!(out.len(), KEPT);
        assert_eq!(out.front().map(|b| &b[..]), Some(&b"0"[..]));
        out.clear();
        assert!(!e.take_kept(&mut out), "the overflow is reported once");
        assert!(out.is_empty());
    }
}
