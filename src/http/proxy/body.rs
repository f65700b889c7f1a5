//! An origin's answer on its way to the client, stored as it passes when it may be: each
//! chunk is sent on at once and, while the answer is still under the route's
//! `max_object_bytes`, kept too. Memory follows what the origin actually sent: nothing is
//! reserved from a Content-Length, and once the bytes pass the limit what was kept is
//! dropped and the rest only streams. The answer is stored when its last byte has passed
//! (before the client's last write, so the client's next request finds it); a body cut short
//! (origin failure, client gone) stores nothing.

use super::{store::Stored, Route};
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
}

impl ProxyBody {
    pub fn new(inner: OriginBody, keep: Option<Keeping>) -> Self {
        Self {
            inner,
            keep: keep.map(Box::new),
        }
    }

    fn finish(&mut self) {
        if let Some(k) = self.keep.take() {
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
                1 => chunks.into_iter().next().expect("one chunk"),
                _ => {
                    let mut all = BytesMut::with_capacity(len as usize);
                    for c in chunks {
                        all.extend_from_slice(&c);
                    }
                    all.freeze()
                }
            };
            let held = loading.as_mut().and_then(|l| l.held.take());
            route.store(&key, &request, head, held);
            // Only now: those waiting here find it stored.
            drop(loading);
        }
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
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.keep = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(k)) = (frame.data_ref(), this.keep.as_mut()) {
                    k.len += data.len() as u64;
                    if k.len > k.route.max_object_bytes {
                        // Too large to store: what was kept goes, the rest only streams.
                        this.keep = None;
                    } else {
                        k.chunks.push(data.clone());
                    }
                }
                // hyper stops polling once the body says it has ended.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // An empty body may be over before it is polled at all.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}
