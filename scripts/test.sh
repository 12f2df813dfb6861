#!/usr/bin/env bash
# The project's one test command: installs what the tests need, checks formatting and lints,
# builds everything and runs the whole suite with nextest (whose summary line ends the output).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked
cargo nextest run --workspace --no-fail-fast --locked
