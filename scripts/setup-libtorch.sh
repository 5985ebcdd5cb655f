#!/usr/bin/env bash
# Installs libtorch for the `tch` crate into a project-local venv (.venv-torch), as README.md
# ("libtorch") describes: the PyPI torch wheel without its CUDA dependencies, plus the two
# CUDA runtime libraries that libtorch_cpu.so loads at start. Idempotent: a second run that
# finds the right torch version returns at once.
#
# Override: set LIBTORCH to an existing libtorch (or torch package folder) and this script does nothing.
set -euo pipefail
TORCH_VERSION=2.11.0
CUDA_RUNTIME=nvidia-cuda-runtime==13.0.96
CUDA_CUPTI=nvidia-cuda-cupti==13.0.85

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv-torch"

if [ -n "${LIBTORCH:-}" ] && [ "${LIBTORCH}" != "$venv/torch" ]; then
  echo "setup-libtorch: LIBTORCH=$LIBTORCH is set; using it, nothing to install"
  exit 0
fi

marker="$venv/.installed-torch-$TORCH_VERSION"
if [ -f "$marker" ] && [ -e "$venv/torch/lib/libtorch_cpu.so" ]; then
  exit 0
fi

py=${PYTHON:-python3}
echo "setup-libtorch: installing torch $TORCH_VERSION (CPU use, ~1.3 GB) into $venv"
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
  "torch==$TORCH_VERSION" "$CUDA_RUNTIME" "$CUDA_CUPTI"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# A stable path for cargo's [env] LIBTORCH (relative to the repo), whatever the python minor version.
ln -sfn "$site/torch" "$venv/torch"
test -e "$venv/torch/lib/libtorch_cpu.so"
touch "$marker"
echo "setup-libtorch: done, LIBTORCH=$venv/torch"
