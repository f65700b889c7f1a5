//! One client's state: protocol version, name, id, who it is logged in as, and how far the
//! codec got through a partly received command.

use super::frame::{Progress, Protocol};
use crate::auth::{Auth, Principal};
use std::sync::Arc;

pub struct Session {
    pub id: u64,
    pub proto: Protocol,
    /// Boxed slice, not `Bytes`: every idle connection carries this field, few set it.
    pub name: Option<Box<[u8]>>,
    /// Who the client acts as; None until it authenticates.
    pub user: Option<Arc<Principal>>,
    /// Where the codec stopped in a command that has not fully arrived.
    pub progress: Progress,
}

impl Session {
    /// A new client, logged in as `user` (the default user when no password is required).
    pub fn new(id: u64, user: Option<Arc<Principal>>) -> Self {
        Self {
            id,
            proto: Protocol::Resp2,
            name: None,
            user,
            progress: Progress::default(),
        }
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
