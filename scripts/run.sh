#!/usr/bin/env bash
# The project's main command (README "Run it"): everything from one config, set-up included.
#   scripts/run.sh [CONFIG]
# With DIARETDB1 unpacked in diaretdb1_v_1_1/ it runs CONFIG (default
# generator-configs/hemorrhages.json). Without it, it writes synthetic demo data to demo-data/
# and runs generator-configs/demo.json on it. Extra arguments go to `pipeline all`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-libtorch.sh
scripts/setup-nasm.sh
cargo build --release
bin=target/release/pipeline
if compgen -G "diaretdb1_v_1_1/resources/images/ddb1_fundusimages/*.png" >/dev/null; then
  config=${1:-generator-configs/hemorrhages.json}
  shift || true
  "$bin" all --config "$config" "$@"
else
  echo "No DIARETDB1 in diaretdb1_v_1_1/ (see diaretdb1_v_1_1/README.md): running the demo on synthetic data."
  [ -d demo-data/resources ] || "$bin" synth --out demo-data --count 12 --seed 1
  "$bin" all --config generator-configs/demo.json --data demo-data "${@:2}"
fi
