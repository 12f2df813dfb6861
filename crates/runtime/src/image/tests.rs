//! Unit tests of the pure parts: references, configs, challenges, platforms, prune selection.
