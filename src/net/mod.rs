//! Sockets: listeners built with socket2, the accept loop every front door shares, and the
//! read that tells tokio when a socket is drained.

mod accept;
mod listener;
pub mod read;
mod task;

pub use accept::accept_loop;
pub use listener::{bind, ListenOptions};
pub use task::spawn_isolated;
