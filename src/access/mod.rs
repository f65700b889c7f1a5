//! The access log (placeholder while it is written).
