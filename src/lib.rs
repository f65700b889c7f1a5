//! tiergate: a high-concurrency data gateway. HTTP and Redis-protocol front doors over one
//! tiered cache engine: L1 in process (moka), L2 in Redis.
//!
//! `server` wires the pieces together; `main.rs` is a thin CLI over it.

pub mod access;
pub mod auth;
pub mod buf;
pub mod cache;
pub mod config;
pub mod exec;
pub mod fdlimit;
pub mod host;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod origin;
pub mod reload;
pub mod resp;
pub mod server;
pub mod shutdown;
