#!/usr/bin/env bash
# GPU check of the training stage, for a lent GPU machine that has PyTorch but no Rust.
# It builds nothing: it runs `pipeline` (and the `pipeline-torch` beside it, which runs its
# train/evaluate/infer) and the training benchmark built elsewhere
# (`cargo build --release && cargo bench --bench train --no-run`; the libtorch they were linked
# against must be the same PyTorch release as the machine's: 2.11.0, see README "libtorch").
#
#   scripts/gpu-check.sh /path/to/torch_unet_ref.py [steps]
#
#   PIPELINE_BIN   the binary (default: target/release/pipeline)
#   BENCH_BIN      the criterion training benchmark (default: the newest target/release/deps/train-*)
#   WORK           scratch folder (default: a new temporary folder)
#   DATA           a diaretdb1_v_1_1 folder to generate from (default: `pipeline synth` makes one;
#                  without either, the training-on-data part is skipped)
#
# What it does, in about 5 minutes on an H100:
#   1. points LD_LIBRARY_PATH at the machine's torch/lib and checks that `pipeline` uses CUDA;
#   2. makes a small 512x512 dataset (synth -> generate -> split);
#   3. the reference model (8 levels, 16 filters, ~125M parameters), 512x512, batch 2:
#      a. the criterion benchmark benches/train.rs, cases cuda/unet_reference_{fp32,bf16}: the
#         training step on random inputs, as torch_unet_ref.py times it (criterion's median);
#      b. `pipeline train` for real on the generated data (1 epoch, <steps> steps), fp32 and bf16;
#      c. `pipeline evaluate` and `pipeline infer` on the trained checkpoint;
#   4. torch_unet_ref.py with the same size, batch and steps, fp32 and bf16;
#   5. prints images/s of each, the pipeline/PyTorch ratio, and peak GPU memory: the process's
#      peak as nvidia-smi saw it (sampled every 100 ms; includes the CUDA context and the
#      caching allocator's reserve) for both, plus PyTorch's own max_memory_allocated.
set -euo pipefail

ref=${1:?usage: scripts/gpu-check.sh /path/to/torch_unet_ref.py [steps]}
steps=${2:-30}
bin=${PIPELINE_BIN:-target/release/pipeline}
[ -f "$ref" ] || { echo "gpu-check: $ref not found" >&2; exit 2; }
[ -x "$bin" ] || { echo "gpu-check: no binary at $bin (build it with cargo build --release elsewhere)" >&2; exit 2; }
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
[ -x "$(dirname "$bin")/pipeline-torch" ] || { echo "gpu-check: no pipeline-torch beside $bin (cargo build --release builds both)" >&2; exit 2; }
bench=${BENCH_BIN:-$(ls -t target/release/deps/train-* 2>/dev/null | grep -v '\.d$' | head -1)}
[ -n "$bench" ] && [ -x "$bench" ] || { echo "gpu-check: no training benchmark (cargo bench --bench train --no-run elsewhere, or set BENCH_BIN)" >&2; exit 2; }
bench=$(cd "$(dirname "$bench")" && pwd)/$(basename "$bench")
ref=$(cd "$(dirname "$ref")" && pwd)/$(basename "$ref")

torch_dir=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')
export LD_LIBRARY_PATH="$torch_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "== torch: $(python3 -c 'import torch;print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))')"
echo "== LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

work=${WORK:-$(mktemp -d)}
mkdir -p "$work"
echo "== scratch folder: $work"
cd "$work"

# Peak GPU memory used while a command runs (MiB above the idle level, all processes).
gpu_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -1; }
peak_of() { # peak_of LOGFILE CMD...: runs CMD, prints its output to LOGFILE, echoes peak MiB
  local log=$1; shift
  local idle; idle=$(gpu_mem)
  : >"$log.mem"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 >"$log.mem" 2>/dev/null &
  local mon=$!
  local rc=0
  "$@" >"$log" 2>&1 || rc=$?
  kill "$mon" 2>/dev/null || true
  wait "$mon" 2>/dev/null || true
  local peak; peak=$(sort -n "$log.mem" | tail -1)
  echo $(( ${peak:-0} - idle ))
  if [ $rc -ne 0 ]; then echo "gpu-check: failed ($rc): $*" >&2; cat "$log" >&2; fi
  return $rc
}
field() { grep -o "$2=[^ ]*" "$1" | tail -1 | cut -d= -f2; }

# 1. Configs: the reference model, 512x512, batch 2; a small generated set.
write_config() { # write_config FILE MIXED_PRECISION
  cat >"$1" <<JSON
{
  "name": "gpucheck",
  "seed": 1,
  "data": "$work/data",
  "out": "$work/out",
  "generate": {
    "size": 512,
    "threshold": 0.75,
    "variants": {
      "hflip": true, "vflip": true, "rotate": [90, 180, 270], "shrink": [], "shear_x": [], "shear_y": [],
      "elastic": [], "distort": [], "lens": { "barrel": false, "pincushion": false }
    }
  },
  "split": { "mode": "by-source", "train": 0.7, "valid": 0.2, "test": 0.1 },
  "model": { "levels": 8, "base_filters": 16 },
  "train": { "epochs": 1, "batch_size": 2, "max_steps_per_epoch": $steps, "max_valid_steps": 5,
             "preview_images": 2, "mixed_precision": $2 }
}
JSON
}
write_config fp32.json false
write_config bf16.json true

echo "== CUDA check (the dataset does not exist yet: only the device line matters)"
"$bin" train --config fp32.json --device auto >cuda.log 2>&1 || true
if ! grep -q "^train: device cuda" cuda.log; then
  echo "gpu-check: pipeline does not use CUDA:" >&2; cat cuda.log >&2; exit 1
fi
grep "^train: device" cuda.log

echo "== dataset"
have_data=1
if [ -n "${DATA:-}" ]; then
  ln -sfn "$(cd "$DATA" && pwd)" "$work/data"
elif ! "$bin" synth --out "$work/data" --count 10 --seed 1; then
  have_data=0
fi
if [ $have_data = 1 ] && "$bin" generate --config fp32.json && "$bin" split --config fp32.json; then
  for s in train valid test; do echo "$s: $(ls out/gpucheck/dataset/$s/images | wc -l) pairs"; done
else
  have_data=0
  echo "gpu-check: no dataset (set DATA to a diaretdb1_v_1_1 folder); skipping the training on data" >&2
fi

echo "== pipeline training step, random inputs (benches/train.rs, criterion median)"
declare -A ips mem
for p in fp32 bf16; do
  mem[bench_$p]=$(peak_of "bench_$p.log" "$bench" --bench "cuda/unet_reference_$p")
  grep -A3 "^cuda/" "bench_$p.log"
  # thrpt:  [low elem/s median elem/s high elem/s]
  ips[bench_$p]=$(grep "thrpt:" "bench_$p.log" | tail -1 | awk '{print $4}')
done

echo "== pipeline, training on the generated set (1 epoch, $steps steps), then evaluate and infer"
for p in fp32 bf16; do
  [ $have_data = 1 ] || { ips[train_$p]=skipped; mem[train_$p]=-; continue; }
  mem[train_$p]=$(peak_of "train_$p.log" "$bin" train --config $p.json --device cuda)
  grep -E "^(train|epoch)" "train_$p.log"
  ips[train_$p]=$(grep -o '[0-9.]* images/s' "train_$p.log" | tail -1 | cut -d' ' -f1)
done
if [ $have_data = 1 ]; then
  "$bin" evaluate --config bf16.json --device cuda
  "$bin" infer --config bf16.json --device cuda | tail -3
  ls out/gpucheck/train out/gpucheck/eval
fi

echo "== PyTorch eager reference, same size, batch and steps"
for p in fp32 bf16; do
  flag=""; [ $p = bf16 ] && flag="--bf16"
  mem[torch_$p]=$(peak_of "torch_$p.log" python3 "$ref" --levels 8 --filters 16 --size 512 --batch 2 \
    --steps "$steps" --device cuda $flag)
  cat "torch_$p.log"
  ips[torch_$p]=$(field "torch_$p.log" images/s)
done

echo
echo "== summary (images/s; peak MiB as nvidia-smi saw it; 512x512, batch 2, levels 8, filters 16)"
printf '%-6s %-28s %10s %10s\n' dtype run images/s peak_MiB
for p in fp32 bf16; do
  printf '%-6s %-28s %10s %10s\n' $p "pipeline random inputs" "${ips[bench_$p]}" "${mem[bench_$p]}"
  printf '%-6s %-28s %10s %10s\n' $p "pipeline generated data" "${ips[train_$p]}" "${mem[train_$p]}"
  printf '%-6s %-28s %10s %10s (max_memory_allocated %s GiB)\n' $p "torch eager (reference)" \
    "${ips[torch_$p]}" "${mem[torch_$p]}" "$(field torch_$p.log peak_gib)"
  python3 -c "import sys; a,b=map(float,sys.argv[1:3]); print(f'{sys.argv[3]}: pipeline/torch images/s = {a/b:.2f}')" \
    "${ips[bench_$p]}" "${ips[torch_$p]}" $p
done
