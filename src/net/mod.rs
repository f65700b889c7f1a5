//! Sockets: listeners built with socket2 and the accept loop every front door shares.

mod accept;
mod listener;
mod task;

pub use accept::accept_loop;
pub use listener::{bind, ListenOptions};
pub use task::spawn_isolated;
