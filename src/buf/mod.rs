//! Buffers: the pool that lets idle connections hold no memory of their own.

pub mod pool;

pub use pool::BufferPool;
