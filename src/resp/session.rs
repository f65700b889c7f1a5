//! One client's state: protocol version, name, id, and whether it has authenticated.

use super::frame::Protocol;
use bytes::Bytes;

pub struct Session {
    pub id: u64,
    pub proto: Protocol,
    pub name: Option<Bytes>,
    pub authenticated: bool,
}

impl Session {
    /// A new client; it starts authenticated unless a password is required.
    pub fn new(id: u64, requires_auth: bool) -> Self {
        Self {
            id,
            proto: Protocol::Resp2,
            name: None,
            authenticated: !requires_auth,
        }
    }
}
