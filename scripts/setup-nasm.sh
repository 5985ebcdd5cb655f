#!/usr/bin/env bash
# Installs nasm, the assembler that the `mozjpeg-sys` crate (libjpeg-turbo, the JPEG encoder)
# needs for its SIMD code, when it is missing and Debian's apt-get can be used (README
# "Install"). Without nasm the build still works and JPEG files have the same bytes; JPEG
# encoding is about 2x slower. Run before the first build: a build made without nasm keeps its
# portable libjpeg-turbo until `cargo clean -p mozjpeg-sys`. Idempotent; never fails the caller.
set -uo pipefail
command -v nasm >/dev/null && exit 0
sudo=""
[ "$(id -u)" = 0 ] || { command -v sudo >/dev/null && sudo="sudo -n"; }
if command -v apt-get >/dev/null; then
  echo "setup-nasm: installing nasm (Debian package) for libjpeg-turbo's SIMD JPEG encoder"
  $sudo apt-get install -y -q nasm >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q nasm >/dev/null 2>&1; }
fi
command -v nasm >/dev/null ||
  echo "setup-nasm: nasm is not installed (install it with your package manager for 2x faster JPEG output; the bytes are the same without it)" >&2
exit 0
