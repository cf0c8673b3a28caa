#!/usr/bin/env bash
# The main job. With a Discord token configured (DISCORD_TOKEN, or a
# credentials directory holding discord-token) it runs the supervisor and the
# Discord gateway in the foreground until Ctrl-C. Without one it runs the demo:
# a supervisor with the board's shape (an NPU slot and a CPU slot on the
# default model) where the RKLLM runtime is installed, else with the CPU slot
# alone (it says so: an NPU the machine does not have is not a warning),
# `supctl ask "What is 2+2?"` streaming its answer, `supctl status`, and a
# clean shutdown. deploy/tests/demo-test.sh checks that a demo run logs no
# warning or error.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

"$here/deploy/setup.sh"
# The same target and feature set as deploy/test.sh, so the demo's build is
# the test suite's build: llama.cpp (the slow part) is compiled once.
if [ ! -x "$here/target/debug/rocksteady-supervisor" ]; then
  echo "demo: first build: cargo compiles llama.cpp from source, about 12 minutes on 2 cores (later runs take seconds)"
else
  echo "demo: building (incremental)"
fi
cargo build --workspace --all-targets
bin=$here/target/debug

work=$(mktemp -d /tmp/rocksteady-demo.XXXXXX)
sup_pid=""
cleanup() {
  if [ -n "$sup_pid" ] && kill -0 "$sup_pid" 2>/dev/null; then
    kill -TERM "$sup_pid" 2>/dev/null || true
    wait "$sup_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

config=${ROCKSTEADY_CONFIG:-$work/config.toml}
if [ -z "${ROCKSTEADY_CONFIG:-}" ]; then
  npu_runtime=${ROCKSTEADY_NPU_RUNTIME:-/usr/lib/librkllmrt.so}
  if [ -e "$npu_runtime" ]; then
    template=$here/deploy/demo.toml
    echo "demo: RKLLM runtime found at $npu_runtime: NPU slot first, CPU slot as its fallback"
  else
    template=$here/deploy/demo-cpu.toml
    echo "demo: no RK3588 NPU runtime on this machine ($npu_runtime): the CPU worker serves alone (on the board the NPU slot serves first)"
  fi
  sed -e "s|@WORK@|$work|g" -e "s|@MODELS@|$here/models|g" -e "s|@NPU_RUNTIME@|$npu_runtime|g" "$template" > "$config"
fi

token_present=false
if [ -n "${DISCORD_TOKEN:-}" ] || { [ -n "${CREDENTIALS_DIRECTORY:-}" ] && [ -f "$CREDENTIALS_DIRECTORY/discord-token" ]; }; then
  token_present=true
fi

# Warnings and errors only (the workers inherit the filter): where nothing is
# wrong, the demo's own lines and the answer are all there is to read.
RUST_LOG=${RUST_LOG:-warn} "$bin/rocksteady-supervisor" --config "$config" &
sup_pid=$!

# Wait until a worker is ready (or none can be).
for _ in $(seq 1 600); do
  if "$bin/supctl" --config "$config" status --json 2>/dev/null \
      | grep -qE '"state": "(Ready|Busy)"'; then
    break
  fi
  kill -0 "$sup_pid" 2>/dev/null || { echo "demo: the supervisor exited" >&2; exit 1; }
  sleep 0.2
done

if $token_present && [ -x "$bin/rocksteady-gateway" ]; then
  echo "demo: Discord token found: running the gateway (Ctrl-C stops both)"
  "$bin/rocksteady-gateway" --config "$config"
  exit $?
fi

echo
echo "\$ supctl ask \"What is 2+2?\""
"$bin/supctl" --config "$config" ask "What is 2+2?"
echo
echo "\$ supctl status"
"$bin/supctl" --config "$config" status
echo
echo "demo: stopping the supervisor"
kill -TERM "$sup_pid"
wait "$sup_pid"
sup_pid=""
echo "demo: done"
