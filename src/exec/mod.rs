//! Admission control: how much work each front door takes on at once, and the executor
//! background work runs on.

pub mod admission;
pub mod background;
pub mod placement;

pub use admission::{Admission, Refused};
pub use background::Background;
