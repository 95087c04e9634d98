#!/usr/bin/env bash
# README's test command: installs everything the tests need on a fresh Debian
# machine (idempotent: what is already there is skipped), then runs the format
# and lint checks and every test. CI runs exactly this, through .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

# Builds go outside the clone so repeated runs on one machine reuse them.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/kiln-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Debian packages: Bazel 4.2.3 is the real client the tests drive.
missing=()
command -v bazel >/dev/null 2>&1 || missing+=(bazel-bootstrap)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "==> installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

echo "==> cargo fmt --check"
cargo fmt --check
echo "==> cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "==> cargo test"
cargo test --all-targets
