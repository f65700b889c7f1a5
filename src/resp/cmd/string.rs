//! String commands: GET, SET, MGET, MSET, INCR / DECR / INCRBY / DECRBY.

use super::{check_key, check_value, is, l2_error, parse_int, syntax_error, Ctx, Parse};
use crate::{
    cache::{Hit, L2Error, SetCond, SetOptions, SetOutcome, SetTtl, TieredCache},
    metrics::Tier,
    resp::{frame::Frame, Limits},
};
use bytes::Bytes;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Get {
    pub(super) key: Bytes,
}

impl Get {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        Ok(Self {
            key: p.next_bytes()?,
        })
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        if let Err(e) = check_key(&self.key, ctx.limits) {
            return e;
        }
        let (reply, tier) = answer(ctx.shared.cache.get(&self.key).await);
        ctx.tier = tier;
        reply
    }

    /// The GET of a door that forwards: L1's answer (with the tier that gave it), or the key
    /// to read from Redis with the client's run of forwarded commands, when L1 holds nothing
    /// for it (`TieredCache::get_held`).
    pub async fn look(self, cache: &TieredCache, limits: &Limits) -> Looked {
        if let Err(e) = check_key(&self.key, limits) {
            return Looked::Answered(e, None);
        }
        match cache.get_held(&self.key).await {
            Some(read) => {
                let (reply, tier) = answer(read);
                Looked::Answered(reply, tier)
            }
            None => Looked::Missing(self.key),
        }
    }

    pub fn key_len(&self) -> u32 {
        self.key.len() as u32
    }
}

/// What `Get::look` found.
pub enum Looked {
    Answered(Frame, Option<Tier>),
    Missing(Bytes),
}

/// GET's reply to what the cache read, and the tier that had it.
fn answer(read: Result<Option<Hit>, L2Error>) -> (Frame, Option<Tier>) {
    match read {
        Ok(Some(hit)) => (Frame::Bulk(hit.value), Some(hit.tier)),
        Ok(None) => (Frame::Null, None),
        Err(e) => (l2_error(e), None),
    }
}

pub struct Set {
    pub(super) key: Bytes,
    value: Bytes,
    pub(super) opts: SetOptions,
}

impl Set {
    /// SET key value [NX | XX] [GET] [EX s | PX ms | EXAT ts | PXAT ts-ms | KEEPTTL]
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        let key = p.next_bytes()?;
        let value = p.next_bytes()?;
        let mut opts = SetOptions::default();
        let mut ttl_given = false;
        while let Some(opt) = p.next_opt() {
            let cond = if is(&opt, "nx") {
                Some(SetCond::IfAbsent)
            } else if is(&opt, "xx") {
                Some(SetCond::IfPresent)
            } else {
                None
            };
            if let Some(cond) = cond {
                if opts.cond != SetCond::Always {
                    return Err(syntax_error());
                }
                opts.cond = cond;
                continue;
            }
            if is(&opt, "get") {
                opts.get = true;
                continue;
            }
            if ttl_given {
                return Err(syntax_error());
            }
            ttl_given = true;
            if is(&opt, "keepttl") {
                opts.ttl = SetTtl::Keep;
                continue;
            }
            let unit_ms: i64 = if is(&opt, "ex") || is(&opt, "exat") {
                1000
            } else {
                1
            };
            let absolute = is(&opt, "exat") || is(&opt, "pxat");
            if !(absolute || is(&opt, "ex") || is(&opt, "px")) {
                return Err(syntax_error());
            }
            let n = p.next_opt().ok_or_else(syntax_error)?;
            let n = parse_int(&n).ok_or_else(super::not_an_integer)?;
            // As redis-server checks it: positive, in milliseconds within an i64, and a
            // relative one still within it once the current time is added.
            let ms = Some(n)
                .filter(|&n| n > 0)
                .and_then(|n| n.checked_mul(unit_ms))
                .filter(|&ms| absolute || ms.checked_add(super::keyspace::now_ms()).is_some())
                .ok_or_else(|| Frame::error("ERR invalid expire time in 'set' command"))?;
            let ms = Duration::from_millis(ms as u64);
            opts.ttl = if absolute {
                SetTtl::At(UNIX_EPOCH + ms)
            } else {
                SetTtl::In(ms)
            };
        }
        Ok(Self { key, value, opts })
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        self.write(&ctx.shared.cache, ctx.limits).await
    }

    /// `apply` with only what it needs: also how a SET held alone is written.
    pub async fn write(self, cache: &TieredCache, limits: &Limits) -> Frame {
        if let Err(e) = self.check(limits) {
            return e;
        }
        Self::into_frame(cache.set_with(self.key, self.value, self.opts).await)
    }

    /// What `apply` refuses before writing anything, as its reply.
    pub fn check(&self, limits: &Limits) -> Result<(), Frame> {
        check_key(&self.key, limits)?;
        check_value(&self.value, limits)?;
        if let SetTtl::At(at) = self.opts.ttl {
            // Far-future deadlines are Redis' business; in the memory store they must fit.
            if at
                .duration_since(SystemTime::now())
                .is_ok_and(|d| d > Duration::from_secs(100 * 365 * 86_400))
            {
                return Err(Frame::error("ERR invalid expire time in 'set' command"));
            }
        }
        Ok(())
    }

    /// SET ... GET: the reply is the old value, which may be large.
    pub fn returns_old(&self) -> bool {
        self.opts.get
    }

    pub fn key_len(&self) -> u32 {
        u32::try_from(self.key.len()).unwrap_or(u32::MAX)
    }

    /// The write, for running with others (`TieredCache::set_each`).
    pub fn into_write(self) -> (Bytes, Bytes, SetOptions) {
        (self.key, self.value, self.opts)
    }

    /// The reply to a write's outcome.
    pub fn into_frame(outcome: Result<SetOutcome, L2Error>) -> Frame {
        match outcome {
            Ok(SetOutcome::Written) => Frame::OK,
            Ok(SetOutcome::NotWritten) => Frame::Null,
            Ok(SetOutcome::Old(v)) => v.map_or(Frame::Null, Frame::Bulk),
            Err(e) => l2_error(e),
        }
    }
}

pub struct MGet {
    pub(super) keys: Vec<Bytes>,
}

impl MGet {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        let keys = p.rest();
        if keys.is_empty() {
            return Err(p.wrong_arity());
        }
        Ok(Self { keys })
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        if let Some(e) = self
            .keys
            .iter()
            .find_map(|k| check_key(k, ctx.limits).err())
        {
            return e;
        }
        match ctx.shared.cache.get_many(&self.keys).await {
            Ok(hits) => Frame::Array(
                hits.into_iter()
                    .map(|h| h.map_or(Frame::Null, |h| Frame::Bulk(h.value)))
                    .collect(),
            ),
            Err(e) => l2_error(e),
        }
    }
}

pub struct MSet {
    pub(super) pairs: Vec<(Bytes, Bytes)>,
}

impl MSet {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        let args = p.rest();
        if args.is_empty() || !args.len().is_multiple_of(2) {
            return Err(p.wrong_arity());
        }
        let mut it = args.into_iter();
        let mut pairs = Vec::new();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((k, v));
        }
        Ok(Self { pairs })
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        for (k, v) in &self.pairs {
            if let Err(e) = check_key(k, ctx.limits) {
                return e;
            }
            if let Err(e) = check_value(v, ctx.limits) {
                return e;
            }
        }
        let items = self.pairs.into_iter().map(|(k, v)| (k, v, None)).collect();
        match ctx.shared.cache.set_many(items).await {
            Ok(()) => Frame::OK,
            Err(e) => l2_error(e),
        }
    }
}

/// INCR, DECR, INCRBY, DECRBY.
pub struct Incr {
    pub(super) key: Bytes,
    delta: i64,
}

impl Incr {
    /// INCR key / DECR key: `by` is 1 or -1.
    pub fn parse_frames(p: &mut Parse, by: i64) -> Result<Self, Frame> {
        Ok(Self {
            key: p.next_bytes()?,
            delta: by,
        })
    }

    /// INCRBY key n / DECRBY key n: `sign` is 1 or -1.
    pub fn parse_frames_by(p: &mut Parse, sign: i64) -> Result<Self, Frame> {
        let key = p.next_bytes()?;
        let n = p.next_int()?;
        let delta = n
            .checked_mul(sign)
            .ok_or_else(|| Frame::error("ERR decrement would overflow"))?;
        Ok(Self { key, delta })
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        if let Err(e) = check_key(&self.key, ctx.limits) {
            return e;
        }
        match ctx.shared.cache.incr_by(self.key, self.delta).await {
            Ok(n) => Frame::Integer(n),
            Err(e) => l2_error(e),
        }
    }
}
