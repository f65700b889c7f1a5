//! One client's state: protocol version, name, id, who it is logged in as, its failed logins,
//! and how far the codec got through a partly received command.

use super::frame::{Progress, Protocol};
use crate::auth::{Auth, Principal};
use std::sync::Arc;

pub struct Session {
    pub id: u64,
    pub proto: Protocol,
    /// A box of a boxed slice: one pointer, not `Bytes` (four words) or a boxed slice
    /// (two). Every idle connection carries this field and few set it (see `SESSION_BYTES`).
    name: Option<Box<Box<[u8]>>>,
    /// Who the client acts as; None until it authenticates.
    pub user: Option<Arc<Principal>>,
    /// Where the codec stopped in a command that has not fully arrived.
    pub progress: Progress,
    /// Failed AUTH attempts on this connection (see `auth.max_failures_per_connection`): a
    /// byte in what was padding, so the session stays within `SESSION_BYTES`.
    auth_failures: u8,
    /// Inside a transaction whose MULTI could have no dedicated connection: its commands are
    /// dropped and EXEC refuses it (`pinned::step`).
    pub refused_tx: bool,
    /// A MULTI over a Redis Cluster, answered here until the transaction's first command
    /// tells which master it runs on (`pinned::step`).
    pub deferred: Deferred,
}

/// A cluster transaction that has no connection yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Deferred {
    #[default]
    None,
    /// MULTI was answered: the next command opens it on its key's master.
    Open,
    /// A command of it was refused here: EXEC answers EXECABORT.
    Doomed,
}

/// The most a session may take. Each idle connection is a tokio task whose cell is
/// 128-byte aligned: at 48 bytes the session pushed the RESP connection's future from 408 to
/// 416 bytes and its cell from 512 to 640 bytes, measured as 840 -> 1,050 bytes of RSS per
/// idle connection (`loadtest/idle_memory.sh`).
const SESSION_BYTES: usize = 40;
const _: () = assert!(std::mem::size_of::<Session>() <= SESSION_BYTES);

impl Session {
    /// A new client, logged in as `user` (the default user when no password is required).
    pub fn new(id: u64, user: Option<Arc<Principal>>) -> Self {
        Self {
            id,
            proto: Protocol::Resp2,
            name: None,
            user,
            progress: Progress::default(),
            auth_failures: 0,
            refused_tx: false,
            deferred: Deferred::None,
        }
    }

    /// RESET: the protocol, name and login of a new connection (its id stays).
    pub fn reset(&mut self, user: Option<Arc<Principal>>) {
        self.proto = Protocol::Resp2;
        self.name = None;
        self.user = user;
        self.refused_tx = false;
        self.deferred = Deferred::None;
    }

    /// Counts a failed AUTH; returns how many this connection has made.
    pub fn auth_failed(&mut self) -> u8 {
        self.auth_failures = self.auth_failures.saturating_add(1);
        self.auth_failures
    }

    /// CLIENT SETNAME / HELLO SETNAME: an empty name clears it, as in redis-server.
    pub fn set_name(&mut self, name: &[u8]) {
        self.name = (!name.is_empty()).then(|| Box::new(name.into()));
    }

    pub fn name(&self) -> Option<&[u8]> {
        self.name.as_deref().map(|n| &**n)
    }

    /// Follows a reload of the rules: the session keeps its user's name and takes the new
    /// scopes, or loses its login if the user is gone. One relaxed load per command otherwise.
    pub fn follow_reload(&mut self, auth: &Auth) {
        if let Some(p) = &self.user {
            if p.is_replaced() {
                self.user = auth.refresh(p);
            }
        }
    }
}
