#!/usr/bin/env bash
# board-tune-test.sh: runs deploy/board-tune.sh against a fake RK3588 sysfs tree and checks tune, idempotence and restore.
#
# The fake tree mirrors the real layout: cpufreq policies 0, 4 and 6 (the
# RK3588's A55 cluster and two A76 clusters) and the devfreq devices of the NPU,
# GPU and memory controller, as class/devfreq symlinks into devices/ like the
# kernel makes them. The memory controller offers no performance governor, so
# it exercises the min_freq fallback; policy6 offers none either and must be
# left alone. Exits non-zero if any check fails; the last line is the count.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tune=$here/../board-tune.sh
[[ -x $tune ]] || { echo "board-tune-test: $tune is missing or not executable" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export SYSFS_ROOT=$work/sys
export BOARD_TUNE_STATE=$work/state/board-tune.saved
unset BOARD_TUNE_DEVFREQ

passed=0
failed=0
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
        printf 'ok   %s\n' "$what"
    else
        failed=$((failed + 1))
        printf 'FAIL %s\n' "$what"
    fi
}
# File $1 (relative to the fake sysfs) holds exactly $2.
has() { [[ $(<"$SYSFS_ROOT/$1") == "$2" ]]; }
run() { "$tune" "$@" >"$work/out" 2>"$work/err"; }

make_tree() {
    rm -rf "$SYSFS_ROOT" "$work/state"
    local p
    for p in 0 4; do
        mkdir -p "$SYSFS_ROOT/devices/system/cpu/cpufreq/policy$p"
        echo schedutil >"$SYSFS_ROOT/devices/system/cpu/cpufreq/policy$p/scaling_governor"
        echo "conservative ondemand userspace powersave performance schedutil " \
            >"$SYSFS_ROOT/devices/system/cpu/cpufreq/policy$p/scaling_available_governors"
    done
    mkdir -p "$SYSFS_ROOT/devices/system/cpu/cpufreq/policy6"
    echo schedutil >"$SYSFS_ROOT/devices/system/cpu/cpufreq/policy6/scaling_governor"
    echo "ondemand schedutil" >"$SYSFS_ROOT/devices/system/cpu/cpufreq/policy6/scaling_available_governors"

    mkdir -p "$SYSFS_ROOT/class/devfreq"
    devfreq fdab0000.npu platform/fdab0000.npu/devfreq/fdab0000.npu rknpu_ondemand \
        "rknpu_ondemand userspace powersave performance simple_ondemand" \
        "300000000 400000000 600000000 800000000 1000000000" 300000000
    devfreq fb000000.gpu platform/fb000000.gpu/devfreq/fb000000.gpu simple_ondemand \
        "userspace powersave performance simple_ondemand" \
        "300000000 600000000 1000000000" 300000000
    # Listed unsorted on purpose: the top one must still be picked.
    devfreq dmc platform/dmc/devfreq/dmc dmc_ondemand \
        "dmc_ondemand userspace powersave simple_ondemand" \
        "528000000 2112000000 1068000000 1560000000" 528000000
}
devfreq() { # name devpath governor available_governors frequencies min_freq
    local d=$SYSFS_ROOT/devices/$2
    mkdir -p "$d"
    echo "$3" >"$d/governor"
    echo "$4" >"$d/available_governors"
    echo "$5" >"$d/available_frequencies"
    echo "$6" >"$d/min_freq"
    ln -s "../../devices/$2" "$SYSFS_ROOT/class/devfreq/$1"
}

originals=(
    "devices/system/cpu/cpufreq/policy0/scaling_governor=schedutil"
    "devices/system/cpu/cpufreq/policy4/scaling_governor=schedutil"
    "devices/system/cpu/cpufreq/policy6/scaling_governor=schedutil"
    "class/devfreq/fdab0000.npu/governor=rknpu_ondemand"
    "class/devfreq/fb000000.gpu/governor=simple_ondemand"
    "class/devfreq/dmc/governor=dmc_ondemand"
    "class/devfreq/dmc/min_freq=528000000"
)
all_original() {
    local e
    for e in "${originals[@]}"; do has "${e%%=*}" "${e#*=}" || return 1; done
}
all_tuned() {
    has devices/system/cpu/cpufreq/policy0/scaling_governor performance &&
        has devices/system/cpu/cpufreq/policy4/scaling_governor performance &&
        has devices/system/cpu/cpufreq/policy6/scaling_governor schedutil &&
        has class/devfreq/fdab0000.npu/governor performance &&
        has class/devfreq/fb000000.gpu/governor performance &&
        has class/devfreq/dmc/governor dmc_ondemand &&
        has class/devfreq/dmc/min_freq 2112000000
}
snapshot() { (cd "$SYSFS_ROOT" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }

echo "== tune"
make_tree
check "tune exits 0" run
check "tuned values written (policy6 and dmc governor untouched, dmc min_freq pinned to the top)" all_tuned
check "saved-values file exists" test -s "$BOARD_TUNE_STATE"
check "saved 5 entries (only the changed files)" test "$(wc -l <"$BOARD_TUNE_STATE")" -eq 5
check "policy6 reported as skipped" grep -q 'policy6: skipped' "$work/out"
check "saved the original NPU governor" grep -qxF "class/devfreq/fdab0000.npu/governor"$'\t'"rknpu_ondemand" "$BOARD_TUNE_STATE"
saved_first=$(<"$BOARD_TUNE_STATE")
tree_first=$(snapshot)

echo "== tune again (idempotent)"
check "second tune exits 0" run
check "second tune leaves every file as the first left it" test "$(snapshot)" == "$tree_first"
check "second tune keeps the originals saved by the first" test "$(<"$BOARD_TUNE_STATE")" == "$saved_first"
check "second tune reports 'already performance'" grep -q 'already performance' "$work/out"

echo "== status"
# shellcheck disable=SC2016 # $0 is expanded by the inner bash, on purpose
check "status exits 0 and says tuned" bash -c '"$0" --status | grep -q "board is tuned"' "$tune"
check "status changes nothing" test "$(snapshot)" == "$tree_first"

echo "== restore"
check "restore exits 0" run --restore
check "every original value is back" all_original
check "saved-values file removed" test ! -e "$BOARD_TUNE_STATE"
check "restore again exits 0" run --restore
check "restore again says nothing to restore" grep -q 'nothing to restore' "$work/out"
check "restore again changes nothing" all_original

echo "== partial re-tune after an outside change"
make_tree
run
echo powersave >"$SYSFS_ROOT/devices/system/cpu/cpufreq/policy4/scaling_governor"
check "tune after policy4 was changed by hand exits 0" run
check "policy4 tuned again" has devices/system/cpu/cpufreq/policy4/scaling_governor performance
check "policy4's first original (schedutil) kept, not the hand-set value" \
    grep -qxF "devices/system/cpu/cpufreq/policy4/scaling_governor"$'\t'"schedutil" "$BOARD_TUNE_STATE"
check "policy4 saved once, not once per run" test "$(grep -c 'policy4/' "$BOARD_TUNE_STATE")" -eq 1
run --restore
check "restore after that brings the first originals back" all_original

echo "== restore order"
make_tree
mkdir -p "$work/state"
# Two entries for one file (as an interrupted older run could leave): the
# oldest is the true original and must be written last.
printf '%s\t%s\n' devices/system/cpu/cpufreq/policy0/scaling_governor ondemand \
    devices/system/cpu/cpufreq/policy0/scaling_governor powersave >"$BOARD_TUNE_STATE"
check "restore with a repeated entry exits 0" run --restore
check "the oldest saved value wins" has devices/system/cpu/cpufreq/policy0/scaling_governor ondemand

echo "== missing hardware"
rm -rf "$SYSFS_ROOT" "$work/state"
mkdir -p "$SYSFS_ROOT"
check "tune on an empty sysfs exits 0" run
check "every missing part reported as skipped" test "$(grep -c 'skipped' "$work/out")" -eq 4
check "no saved-values file when nothing changed" test ! -e "$BOARD_TUNE_STATE"
make_tree
rm -f "$SYSFS_ROOT/class/devfreq/fb000000.gpu"
check "tune without a GPU devfreq node exits 0" run
check "GPU reported as not present" grep -q 'fb000000.gpu: skipped, not present' "$work/out"
run --restore

echo "== failures are reported"
make_tree
# A file that reads fine but refuses writes, as a real sysfs file can (EINVAL,
# EBUSY): /proc/version has no write method, even for root.
rm "$SYSFS_ROOT/class/devfreq/fb000000.gpu/governor"
ln -s /proc/version "$SYSFS_ROOT/class/devfreq/fb000000.gpu/governor"
if run; then tune_rc=0; else tune_rc=$?; fi
check "a failed write makes tune exit 1" test "$tune_rc" -eq 1
check "the failed write is named on stderr" grep -q 'fb000000.gpu/governor' "$work/err"
check "the parts after it were still tuned" has class/devfreq/dmc/min_freq 2112000000
check "the parts before it were still tuned" has devices/system/cpu/cpufreq/policy0/scaling_governor performance

echo "== bad input"
make_tree
mkdir -p "$work/state"
printf 'devices/../../etc/passwd\tx\n' >"$BOARD_TUNE_STATE"
if run --restore; then rc=0; else rc=$?; fi
check "a saved entry pointing outside sysfs is refused (exit 1)" test "$rc" -eq 1
check "the refusal is explained" grep -q 'refusing saved entry' "$work/err"
check "the refused saved file is kept for inspection" test -e "$BOARD_TUNE_STATE"
if "$tune" --bogus >/dev/null 2>&1; then rc=0; else rc=$?; fi
check "an unknown option exits 2" test "$rc" -eq 2

echo
echo "board-tune: $passed passed, $failed failed"
((failed == 0))
