//! An origin's answer on its way to the client, stored as it passes when it may be: each
//! chunk is sent on at once and, while the answer is still under the route's
//! `max_object_bytes`, kept too. Memory follows what the origin actually sent: nothing is
//! reserved from a Content-Length, and once the bytes pass the limit what was kept is
//! dropped and the rest only streams. The answer is stored when its last byte has come from
//! the origin, and the client's last frame waits for its copy in L2 too (`Saving`): a
//! client that has its whole answer finds it stored on every instance, and a purge it
//! sends then removes it. A body cut short (origin failure, client gone) stores nothing.

use super::{spawn_here, store::Stored, Route, Saving};
use crate::origin::OriginBody;
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What to store once the body has passed.
pub struct Keeping {
    pub route: Arc<Route>,
    pub key: String,
    pub request: http::Request<()>,
    /// Everything but the body.
    pub head: Stored,
    pub chunks: Vec<Bytes>,
    pub len: u64,
    /// Wakes those waiting for this URL once stored, or once the keeping is given up.
    pub _loading: Option<super::Loading>,
}

/// A proxied answer's body: the origin's, streamed, maybe kept (see the module doc).
pub struct ProxyBody {
    inner: OriginBody,
    keep: Option<Box<Keeping>>,
    /// The answer's copy in L2 being saved, and the last frame, held back until it is.
    saving: Option<(Saving, Option<Frame<Bytes>>)>,
}

impl ProxyBody {
    pub fn new(inner: OriginBody, keep: Option<Keeping>) -> Self {
        Self {
            inner,
            keep: keep.map(Box::new),
            saving: None,
        }
    }

    /// Stores what was kept, if anything; the saving of its copy in L2 to wait for.
    fn finish(&mut self) -> Option<Saving> {
        let k = self.keep.take()?;
        let Keeping {
            route,
            key,
            request,
            mut head,
            chunks,
            len,
            _loading: mut loading,
        } = *k;
        head.body = match chunks.len() {
            0 => Bytes::new(),
            // A copy of its own, as when joined: a stored answer must not hold the origin
            // connection's read buffer, which the chunk is a slice of, for as long as it stays.
            1 => Bytes::copy_from_slice(&chunks[0]),
            _ => {
                let mut all = BytesMut::with_capacity(len as usize);
                for c in chunks {
                    all.extend_from_slice(&c);
                }
                all.freeze()
            }
        };
        let held = loading.as_mut().and_then(|l| l.held.take());
        let (_, saving) = route.store(&key, &request, head, held);
        // Only now: those waiting here find it stored.
        drop(loading);
        saving
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some((saving, _)) = &mut this.saving {
                std::task::ready!(saving.as_mut().poll(cx));
                let (_, last) = this.saving.take().expect("saving");
                return Poll::Ready(last.map(Ok));
            }
            let last = match std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                None => None,
                Some(Err(e)) => {
                    this.keep = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Some(Ok(frame)) => {
                    if let (Some(data), Some(k)) = (frame.data_ref(), this.keep.as_mut()) {
                        k.len += data.len() as u64;
                        if k.len > k.route.max_object_bytes {
                            // Too large to store: what was kept goes, the rest only streams.
                            this.keep = None;
                        } else {
                            k.chunks.push(data.clone());
                        }
                    }
                    // hyper stops polling once the body says it has ended: this frame is
                    // the last, and waits for the saving.
                    if !this.inner.is_end_stream() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Some(frame)
                }
            };
            match this.finish() {
                Some(saving) => this.saving = Some((saving, last)),
                None => return Poll::Ready(last.map(Ok)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.saving.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // An empty body may be over before it is polled at all; a client gone while the
        // saving ran still leaves the answer (and the lock's release) to the other instances.
        let saving = match self.saving.take() {
            Some((saving, _)) => Some(saving),
            None if self.inner.is_end_stream() => self.finish(),
            None => None,
        };
        if let Some(saving) = saving {
            spawn_here(saving);
        }
    }
}
