//! A bounded pool of I/O buffers. A connection takes a buffer when it has bytes to read or
//! replies to write and gives it back when it is done with them, so an idle connection
//! costs its task and socket, not buffers. The pool is a lock-free bounded queue
//! (crossbeam's `ArrayQueue`); when it is full, returned buffers are freed, and buffers that
//! grew past `max_keep` (a large value passed through) are freed rather than hoarded.

use bytes::BytesMut;
use crossbeam_queue::ArrayQueue;
use prometheus::{IntCounter, IntGauge};

pub struct BufferPool {
    queue: ArrayQueue<BytesMut>,
    buf_size: usize,
    max_keep: usize,
    hits: IntCounter,
    misses: IntCounter,
    pooled: IntGauge,
}

/// Counters the pool reports into (registered by `Metrics`).
pub struct PoolMetrics {
    pub hits: IntCounter,
    pub misses: IntCounter,
    pub pooled: IntGauge,
}

impl BufferPool {
    /// Keeps at most `max_buffers` buffers of `buf_size` bytes (and up to 4x that if they grew).
    pub fn new(max_buffers: usize, buf_size: usize, metrics: PoolMetrics) -> Self {
        Self {
            queue: ArrayQueue::new(max_buffers.max(1)),
            buf_size,
            max_keep: buf_size * 4,
            hits: metrics.hits,
            misses: metrics.misses,
            pooled: metrics.pooled,
        }
    }

    /// The size of the buffers it hands out.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// An empty buffer with room for at least `buf_size` bytes.
    pub fn get(&self) -> BytesMut {
        match self.queue.pop() {
            Some(b) => {
                self.hits.inc();
                self.pooled.dec();
                b
            }
            None => {
                self.misses.inc();
                BytesMut::with_capacity(self.buf_size)
            }
        }
    }

    /// Returns a buffer. Its contents are dropped. `reserve` on an empty buffer whose storage
    /// is no longer shared reclaims the whole allocation in place, so after a read buffer has
    /// been split into frames it comes back at full size without a new allocation.
    pub fn put(&self, mut b: BytesMut) {
        b.clear();
        if b.capacity() > self.max_keep {
            return;
        }
        b.reserve(self.buf_size);
        if b.capacity() > self.max_keep {
            return;
        }
        if self.queue.push(b).is_ok() {
            self.pooled.inc();
        }
    }
}

/// A connection's claim on at most one pooled buffer: taken on first use, given back by
/// `release` or on drop, so every exit path of a connection returns what it borrowed.
pub struct Lease<'a> {
    pool: &'a BufferPool,
    buf: Option<BytesMut>,
}

impl BufferPool {
    /// A lease that holds no buffer yet.
    pub fn lease(&self) -> Lease<'_> {
        Lease {
            pool: self,
            buf: None,
        }
    }
}

impl Lease<'_> {
    /// The buffer, borrowed from the pool if not held yet.
    // Inline: called per command parsed and per reply encoded, and the call cost more than
    // its body when the buffer is already held.
    #[inline]
    pub fn buf(&mut self) -> &mut BytesMut {
        let pool = self.pool;
        self.buf.get_or_insert_with(|| pool.get())
    }

    /// Whether no bytes are held (with or without a buffer).
    pub fn is_empty(&self) -> bool {
        self.buf.as_ref().is_none_or(|b| b.is_empty())
    }

    /// The bytes held (0 without a buffer).
    #[inline]
    pub fn len(&self) -> usize {
        self.buf.as_ref().map_or(0, BytesMut::len)
    }

    /// Gives the buffer back, contents dropped.
    pub fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            self.pool.put(b);
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn pool(max: usize) -> BufferPool {
        BufferPool::new(
            max,
            1024,
            PoolMetrics {
                hits: IntCounter::new("h", "h").unwrap(),
                misses: IntCounter::new("m", "m").unwrap(),
                pooled: IntGauge::new("p", "p").unwrap(),
            },
        )
    }

    #[test]
    fn buffers_are_reused_and_the_pool_is_bounded() {
        let p = pool(2);
        let a = p.get();
        let ptr = a.as_ptr();
        assert_eq!(p.misses.get(), 1);
        p.put(a);
        let a = p.get();
        assert_eq!(a.as_ptr(), ptr, "the same allocation came back");
        assert_eq!(p.hits.get(), 1);
        p.put(a);
        p.put(BytesMut::with_capacity(1024));
        p.put(BytesMut::with_capacity(1024));
        assert_eq!(p.pooled.get(), 2, "the third buffer was freed, not kept");
    }

    #[test]
    fn split_buffers_are_reclaimed_whole_and_grown_ones_dropped() {
        let p = pool(4);
        let mut b = p.get();
        let ptr = b.as_ptr();
        b.put_slice(&[1u8; 600]);
        let frame = b.split_to(600).freeze();
        drop(frame);
        p.put(b);
        let b = p.get();
        assert_eq!(
            b.as_ptr(),
            ptr,
            "reclaimed in place once the frame was dropped"
        );
        assert!(b.capacity() >= 1024);

        let mut big = p.get();
        big.reserve(64 * 1024);
        p.put(big);
        assert_eq!(
            p.pooled.get(),
            0,
            "a buffer that grew for a large value is freed"
        );
    }

    #[test]
    fn leases_borrow_lazily_and_return_on_drop() {
        let p = pool(4);
        {
            let mut l = p.lease();
            assert!(l.is_empty());
            assert_eq!(p.misses.get(), 0, "nothing borrowed until used");
            l.buf().put_slice(b"x");
            assert!(!l.is_empty());
        }
        assert_eq!(p.pooled.get(), 1, "returned on drop");
    }
}
