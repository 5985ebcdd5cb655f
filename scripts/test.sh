#!/usr/bin/env bash
# The project's test command (README "Run the tests"; CI runs exactly this via .ci/run).
# Installs libtorch (and nasm, for the SIMD JPEG encoder) when missing, then, for the whole
# workspace (the generator package, which links no libtorch, and `train/`, the libtorch stages):
# format check, clippy with warnings denied, and every test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-libtorch.sh
scripts/setup-nasm.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
