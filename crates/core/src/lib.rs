//! berth's core: the app spec (`berth.toml`) and the deploy planner.
//!
//! Everything here is pure: no files, no network, no clock. Time is an input
//! ([`plan::Timestamp`]), text is an input ([`spec::AppSpec::parse`]).

pub mod plan;
pub mod spec;

pub use plan::{plan, Action, Desired, DesiredService, Instance, InstanceState, Observed};
pub use spec::{AppSpec, ServiceSpec, SpecError, SpecErrors};
