#!/usr/bin/env bash
# Builds berth (release) and runs its main job on the embedded default: today the OCI
# registry, listening on 127.0.0.1:5000 with data under /var/lib/berth/registry.
# Extra arguments go to `berth registry serve` (see `berth registry serve --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then
    echo "run.sh: cargo is required (install Rust with rustup)" >&2
    exit 1
fi
cargo build --release --locked -p berth
exec target/release/berth registry serve "$@"
