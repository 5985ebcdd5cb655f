#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs exactly this via .ci/run).
# Installs libtorch when missing, then: format check, clippy with warnings denied, the build
# without the training feature, and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-libtorch.sh
cargo fmt --check
cargo clippy --all-targets -- -D warnings
cargo check --no-default-features --lib --bins
cargo test
