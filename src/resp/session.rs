//! One client's state: protocol version, name, id, whether it has authenticated, and how far
//! the codec got through a partly received command.

use super::frame::{Progress, Protocol};

pub struct Session {
    pub id: u64,
    pub proto: Protocol,
    /// Boxed slice, not `Bytes`: every idle connection carries this field, few set it.
    pub name: Option<Box<[u8]>>,
    pub authenticated: bool,
    /// Where the codec stopped in a command that has not fully arrived.
    pub progress: Progress,
}

impl Session {
    /// A new client; it starts authenticated unless a password is required.
    pub fn new(id: u64, requires_auth: bool) -> Self {
        Self {
            id,
            proto: Protocol::Resp2,
            name: None,
            authenticated: !requires_auth,
            progress: Progress::default(),
        }
    }
}
