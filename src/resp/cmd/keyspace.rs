//! Keyspace commands: DEL (and UNLINK, the same here: values are freed off the request path
//! by refcount either way), EXISTS, EXPIRE / PEXPIRE, TTL / PTTL.

use super::{is, l2_error, Ctx, Parse};
use crate::{
    cache::{ExpireCond, Ttl as CacheTtl},
    resp::frame::Frame,
};
use bytes::Bytes;

fn keys(p: &mut Parse) -> Result<Vec<Bytes>, Frame> {
    let keys = p.rest();
    if keys.is_empty() {
        return Err(p.wrong_arity());
    }
    Ok(keys)
}

pub struct Del {
    pub(super) keys: Vec<Bytes>,
}

impl Del {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        Ok(Self { keys: keys(p)? })
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        match ctx.shared.cache.delete_many(&self.keys).await {
            Ok(n) => Frame::Integer(n as i64),
            Err(e) => l2_error(e),
        }
    }
}

pub struct Exists {
    pub(super) keys: Vec<Bytes>,
}

impl Exists {
    pub fn parse_frames(p: &mut Parse) -> Result<Self, Frame> {
        Ok(Self { keys: keys(p)? })
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        match ctx.shared.cache.exists(&self.keys).await {
            Ok(n) => Frame::Integer(n as i64),
            Err(e) => l2_error(e),
        }
    }
}

/// EXPIRE and PEXPIRE, with Redis 7's NX / XX / GT / LT.
pub struct Expire {
    pub(super) key: Bytes,
    ttl_ms: i64,
    cond: ExpireCond,
}

impl Expire {
    /// `unit_ms` is 1000 for EXPIRE (seconds), 1 for PEXPIRE.
    pub fn parse_frames(p: &mut Parse, unit_ms: i64) -> Result<Self, Frame> {
        let key = p.next_bytes()?;
        let n = p.next_int()?;
        let name = if unit_ms == 1 { "pexpire" } else { "expire" };
        let ttl_ms = n
            .checked_mul(unit_ms)
            .filter(|ms| ms.checked_add(now_ms()).is_some())
            .ok_or_else(|| {
                Frame::Error(format!("ERR invalid expire time in '{name}' command").into())
            })?;
        let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
        for opt in p.rest() {
            if is(&opt, "nx") {
                nx = true;
            } else if is(&opt, "xx") {
                xx = true;
            } else if is(&opt, "gt") {
                gt = true;
            } else if is(&opt, "lt") {
                lt = true;
            } else {
                return Err(Frame::Error(
                    format!("ERR Unsupported option {}", String::from_utf8_lossy(&opt)).into(),
                ));
            }
        }
        if nx && (xx || gt || lt) {
            return Err(Frame::error(
                "ERR NX and XX, GT or LT options at the same time are not compatible",
            ));
        }
        if gt && lt {
            return Err(Frame::error(
                "ERR GT and LT options at the same time are not compatible",
            ));
        }
        // XX with GT or LT: the comparison already implies a TTL exists (GT) or is checked (LT).
        let cond = match (nx, xx, gt, lt) {
            (true, ..) => ExpireCond::NoTtl,
            (_, _, true, _) => ExpireCond::Longer,
            (_, true, _, true) => ExpireCond::HasTtlShorter,
            (_, _, _, true) => ExpireCond::Shorter,
            (_, true, ..) => ExpireCond::HasTtl,
            _ => ExpireCond::Always,
        };
        Ok(Self { key, ttl_ms, cond })
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        match ctx
            .shared
            .cache
            .expire(self.key, self.ttl_ms, self.cond)
            .await
        {
            Ok(applied) => Frame::Integer(applied as i64),
            Err(e) => l2_error(e),
        }
    }
}

/// Milliseconds since the epoch, as Redis adds to a relative expiry before checking it fits.
pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// TTL and PTTL.
pub struct Ttl {
    pub(super) key: Bytes,
    millis: bool,
}

impl Ttl {
    pub fn parse_frames(p: &mut Parse, millis: bool) -> Result<Self, Frame> {
        Ok(Self {
            key: p.next_bytes()?,
            millis,
        })
    }

    pub async fn apply(self, ctx: &mut Ctx<'_>) -> Frame {
        match ctx.shared.cache.ttl(&self.key).await {
            Ok(CacheTtl::Missing) => Frame::Integer(-2),
            Ok(CacheTtl::Persistent) => Frame::Integer(-1),
            Ok(CacheTtl::Left(d)) if self.millis => Frame::Integer(d.as_millis() as i64),
            // redis-server rounds to the nearest second.
            Ok(CacheTtl::Left(d)) => Frame::Integer(((d.as_millis() + 500) / 1000) as i64),
            Err(e) => l2_error(e),
        }
    }
}
