#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls this): set-up (system
# packages, the default model), formatting and lint gates, the workspace's
# tests on the real model, the demo run, and the deployment checks (systemd
# units, arm64 build under emulation, packages).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$here"

step() { printf '\n== %s ==\n' "$*"; }

step "set-up"
"$here/deploy/setup.sh"

step "cargo fmt --check"
cargo fmt --all -- --check

step "build"
# Integration tests start the workers and the supervisor as processes, so
# every binary must exist before any test runs. All targets, as clippy and the
# tests see them: the same feature set, so llama.cpp is built once, not again
# for a narrower set.
cargo build --workspace --all-targets

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test"
cargo test --workspace --no-fail-fast

step "demo"
# The demo as a newcomer runs it: no WARN/ERROR where nothing is wrong, one
# answer, a clean shutdown (after the tests: it needs the built binaries and
# runs cargo itself, which must not wait on the test run's build lock).
"$here/deploy/tests/demo-test.sh"

if [ "${ROCKSTEADY_SKIP_DEPLOY_CHECKS:-}" != 1 ]; then
  step "deployment checks"
  "$here/deploy/ci-deploy-checks.sh"
fi
