//! The deploy planner (placeholder while the spec lands).
