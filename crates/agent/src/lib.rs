//! berth's node agent: the parts that watch and feed a running instance. [`health`] probes an
//! instance (HTTP, TCP or a command inside it) and turns the results into health transitions;
//! [`secrets`] keeps app secrets sealed in the state store under a key kept outside it, and
//! hands them to containers as environment variables or as files on a tmpfs.

pub mod health;
pub mod secrets;
