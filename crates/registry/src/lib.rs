//! berth's OCI registry: the distribution spec v1.1 over a content-addressed blob store and
//! a transactional metadata database.

pub mod admin;
pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod gc;
pub mod locks;
pub mod metadata;
pub mod metrics;
pub mod retention;
pub mod route;
pub mod server;
pub mod storage;

pub use config::{BuiltinAdmin, RegistryConfig, Settings};
pub use server::{open_registry, router, ServeError, Server};
