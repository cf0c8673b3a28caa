#!/usr/bin/env bash
# demo-test.sh: runs deploy/demo.sh as a newcomer would (no Discord token, no
# config of their own) and checks what they see: the supervisor and its
# workers log no WARN or ERROR line from start to clean shutdown, the question
# gets an answer, and the demo ends successfully. On a machine without the
# RKLLM runtime it also checks that the demo says the NPU is not there (one
# plain line) instead of warning about it. Exits non-zero if any check fails.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=$(mktemp /tmp/rocksteady-demo-test.XXXXXX)
trap 'rm -f "$out"' EXIT

# A newcomer's environment: the demo's own config and log level.
status=0
env -u DISCORD_TOKEN -u CREDENTIALS_DIRECTORY -u ROCKSTEADY_CONFIG -u RUST_LOG \
  "$here/deploy/demo.sh" >"$out" 2>&1 || status=$?

failed=0
fail() {
  echo "demo-test: FAIL: $*" >&2
  failed=1
}
[ "$status" -eq 0 ] || fail "deploy/demo.sh exited with status $status"
# tracing's lines: "<RFC 3339 time>  WARN target: message" (no colours: not a terminal).
if grep -nE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[^ ]+ +(WARN|ERROR) ' "$out"; then
  fail "the demo logged the WARN/ERROR lines above"
fi
# supctl ask ends an answer with its summary line.
grep -qE '\[(cpu|npu) · .* generated [0-9]+ tokens' "$out" \
  || fail "no answered request (no summary line from supctl ask)"
grep -q '^demo: done$' "$out" || fail "the demo did not shut the supervisor down cleanly"
if [ ! -e /usr/lib/librkllmrt.so ]; then
  [ "$(grep -c '^demo: no RK3588 NPU runtime on this machine' "$out")" -eq 1 ] \
    || fail "the demo did not say once that this machine has no NPU runtime"
fi
if [ "$failed" -ne 0 ]; then
  echo "---- demo output ----" >&2
  cat "$out" >&2
  exit 1
fi
echo "demo-test: ok (no WARN/ERROR, one answer, clean shutdown)"
