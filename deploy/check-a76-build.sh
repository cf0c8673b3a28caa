#!/usr/bin/env bash
# check-a76-build.sh: checks that an arm64 worker-cpu carries llama.cpp's kernels for the RK3588's cores (dotprod and fp16), not the plain armv8-a ones.
#
# The board's cores (Cortex-A76 and A55) are armv8.2-a with the dot-product
# and half-precision extensions; llama.cpp's quantised matrix kernels use
# sdot/udot there and its f16 paths fmla/fmul on .8h/.4h vectors. A build for
# plain armv8-a has none of them (and runs those kernels several times slower),
# so counting them in the disassembly tells the two builds apart.
#
# Usage: deploy/check-a76-build.sh BINARY
# Needs aarch64-linux-gnu-objdump (Debian's binutils-aarch64-linux-gnu, which
# comes with gcc-aarch64-linux-gnu). Exits 0 when both kinds are present,
# 1 when either is missing, 2 on a usage error.
set -euo pipefail

die() { printf 'check-a76-build: error: %s\n' "$*" >&2; exit 2; }

[[ $# -eq 1 ]] || die "usage: $0 BINARY"
bin=$1
[[ -f $bin ]] || die "$bin does not exist"
objdump=aarch64-linux-gnu-objdump
command -v "$objdump" >/dev/null || die "$objdump not found (apt-get install binutils-aarch64-linux-gnu)"

dis=$(mktemp)
trap 'rm -f "$dis"' EXIT
"$objdump" -d --no-show-raw-insn "$bin" >"$dis"
# Instruction lines look like "  4a1b2c:<TAB>sdot<TAB>v0.4s, v1.16b, v2.16b".
dot=$(grep -cP '\t[su]dot\t' "$dis" || true)
# Half-precision vector arithmetic (fcvtl/fcvtn, the f16<->f32 conversions,
# exist in armv8.0 and do not count).
fp16=$(grep -cP '\tf(mla|mls|mul|add|sub|max|min)\t[^\n]*\.[48]h' "$dis" || true)
printf '%s: %s dot-product instructions (sdot/udot), %s fp16 vector arithmetic instructions\n' \
    "${bin##*/}" "$dot" "$fp16"
rc=0
if ((dot == 0)); then
    printf 'no sdot/udot: llama.cpp was built for plain armv8-a, not the A76 (see deploy/cross-build.sh)\n'
    rc=1
fi
if ((fp16 == 0)); then
    printf 'no fp16 vector arithmetic: llama.cpp was built without +fp16 (see deploy/cross-build.sh)\n'
    rc=1
fi
exit "$rc"
