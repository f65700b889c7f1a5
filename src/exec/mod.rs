//! Admission control: how much work each front door takes on at once.

pub mod admission;

pub use admission::{Admission, Refused};
