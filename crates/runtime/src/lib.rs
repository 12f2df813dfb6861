//! berth's node runtime.

pub mod host;
pub mod image;
pub mod logs;
pub mod network;
