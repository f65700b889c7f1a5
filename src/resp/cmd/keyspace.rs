//! Keyspace commands: DEL (and UNLINK, the same here: values are freed off the request path
//! by refcount either way), EXISTS.

use super::{l2_error, Ctx, Parse};
use crate::resp::frame::Frame;
use bytes::Bytes;

fn keys(p: &mut Parse) -> Result<Vec<Bytes>, Frame> {
    let keys = p.rest();
    if keys.is_empty() {
        return Err(p.wrong_arity());
    }
    Ok(keys)
}

pub struct Del {
    keys: Vec<Bytes>,
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
    keys: Vec<Bytes>,
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
