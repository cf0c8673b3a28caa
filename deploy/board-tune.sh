#!/usr/bin/env bash
# board-tune.sh: pin the RK3588's CPU, NPU, GPU and memory clocks for steady inference speed, and undo it with --restore.
#
# Usage: board-tune.sh [--restore | --status | --help]
#   (no option)  tune: every cpufreq policy gets the "performance" governor; the
#                NPU, GPU and memory controller (devfreq devices fdab0000.npu,
#                fb000000.gpu, dmc) get "performance" too, or, where a device
#                does not offer that governor, their minimum frequency raised to
#                their highest one. The value each file had before is saved
#                first, so --restore can put it back.
#   --restore    write the saved values back (newest first) and remove the
#                saved file; does nothing when nothing is saved.
#   --status     print the current values, change nothing.
#
# Why: with the default on-demand governors the clocks ramp up only after load
# appears, so the first tokens of every reply run slow and speeds in benchmarks
# wander. Pinning costs power and heat (the supervisor watches temperatures).
#
# Safe to repeat: tuning twice keeps the values saved by the first run (only a
# file not saved yet is added), restoring twice is a no-op. Files that do not
# exist on this board are reported and skipped. Exit status: 0 when every
# write took effect, 1 when any failed (the rest is still done), 2 on bad usage.
#
# Environment (all optional; tests point them at a fake tree):
#   SYSFS_ROOT          where sysfs is mounted (default /sys)
#   BOARD_TUNE_STATE    the saved-values file (default /var/lib/rocksteady/board-tune.saved)
#   BOARD_TUNE_DEVFREQ  devfreq device names (default "fdab0000.npu fb000000.gpu dmc")
set -euo pipefail

SYSFS_ROOT=${SYSFS_ROOT:-/sys}
STATE_FILE=${BOARD_TUNE_STATE:-/var/lib/rocksteady/board-tune.saved}
read -r -a DEVFREQ_DEVICES <<<"${BOARD_TUNE_DEVFREQ:-fdab0000.npu fb000000.gpu dmc}"

failures=0

say() { printf '%s\n' "$*"; }
warn() { printf 'board-tune: warning: %s\n' "$*" >&2; }
fail() { printf 'board-tune: error: %s\n' "$*" >&2; failures=$((failures + 1)); }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

# First line of a sysfs file, without surrounding blanks.
read_value() {
    local v
    IFS= read -r v <"$1" || true
    v=${v#"${v%%[![:space:]]*}"}
    printf '%s' "${v%"${v##*[![:space:]]}"}"
}

# Whether the space-separated list in file $1 contains the word $2.
offers() {
    [[ -r $1 ]] || return 1
    local word
    for word in $(read_value "$1"); do
        [[ $word == "$2" ]] && return 0
    done
    return 1
}

# Whether a path (relative to SYSFS_ROOT) already has a saved value.
is_saved() {
    [[ -f $STATE_FILE ]] && cut -f1 "$STATE_FILE" | grep -qxF -- "$1"
}

# Write $2 to file $1, read it back, count a failure if it did not take.
write_value() {
    local file=$1 value=$2 now
    if ! { printf '%s\n' "$value" >"$file"; } 2>/dev/null; then
        fail "could not write '$value' to $file"
        return 0
    fi
    now=$(read_value "$file")
    if [[ $now != "$value" ]]; then
        fail "$file reads '$now' after writing '$value'"
    fi
}

# Set sysfs file $1 (relative to SYSFS_ROOT) to $2, saving the old value first.
set_value() {
    local rel=$1 value=$2 label=$3 file=$SYSFS_ROOT/$1 old
    old=$(read_value "$file")
    if [[ -z $old ]]; then
        fail "$label: cannot read the current value of $file; left as is"
        return 0
    fi
    if [[ $old == "$value" ]]; then
        say "  $label: already $value"
        return 0
    fi
    # Save before writing, so an interruption can never lose the original.
    # A value saved by an earlier run is the original one: keep it.
    if ! is_saved "$rel"; then
        printf '%s\t%s\n' "$rel" "$old" >>"$STATE_FILE"
    fi
    say "  $label: $old -> $value"
    write_value "$file" "$value"
}

tune_cpufreq() {
    say "==> CPU governors (cpufreq policies)"
    local dir=$SYSFS_ROOT/devices/system/cpu/cpufreq found=0 policy name
    for policy in "$dir"/policy*; do
        [[ -f $policy/scaling_governor ]] || continue
        found=1
        name=${policy##*/}
        if [[ -f $policy/scaling_available_governors ]] &&
            ! offers "$policy/scaling_available_governors" performance; then
            say "  $name: skipped, no performance governor offered"
            continue
        fi
        set_value "devices/system/cpu/cpufreq/$name/scaling_governor" performance "$name governor"
    done
    ((found)) || say "  skipped: no cpufreq policies under $dir"
}

tune_devfreq() {
    say "==> NPU, GPU and memory clocks (devfreq)"
    local dev dir rel max
    for dev in "${DEVFREQ_DEVICES[@]}"; do
        rel=class/devfreq/$dev
        dir=$SYSFS_ROOT/$rel
        if [[ ! -f $dir/governor ]]; then
            say "  $dev: skipped, not present"
            continue
        fi
        if offers "$dir/available_governors" performance; then
            set_value "$rel/governor" performance "$dev governor"
        elif [[ -f $dir/available_frequencies && -f $dir/min_freq ]]; then
            # No performance governor: raise the floor to the top frequency.
            max=$(read_value "$dir/available_frequencies" | tr -s ' ' '\n' | grep -E '^[0-9]+$' | sort -n | tail -n1)
            if [[ -z $max ]]; then
                fail "$dev: no frequencies listed in $dir/available_frequencies"
                continue
            fi
            set_value "$rel/min_freq" "$max" "$dev min_freq"
        else
            say "  $dev: skipped, neither a performance governor nor a frequency list"
        fi
    done
}

tune() {
    mkdir -p "$(dirname "$STATE_FILE")"
    if [[ -f $STATE_FILE ]]; then
        say "saved values: $STATE_FILE (kept from an earlier run)"
    else
        say "saved values: $STATE_FILE"
    fi
    tune_cpufreq
    tune_devfreq
    # Nothing changed (all already tuned, or nothing present): no empty file.
    if [[ -f $STATE_FILE && ! -s $STATE_FILE ]]; then
        rm -f "$STATE_FILE"
    fi
}

restore() {
    if [[ ! -f $STATE_FILE ]]; then
        say "nothing to restore: $STATE_FILE does not exist"
        return 0
    fi
    say "==> restoring from $STATE_FILE"
    local lines line rel value file n=0
    # Newest first: undo in the reverse order of the changes.
    mapfile -t lines < <(tac "$STATE_FILE")
    for line in "${lines[@]}"; do
        [[ -n $line ]] || continue
        n=$((n + 1))
        if [[ $line != *$'\t'* ]]; then
            fail "line $n of $STATE_FILE is not 'path<TAB>value': '$line'"
            continue
        fi
        rel=${line%%$'\t'*}
        value=${line#*$'\t'}
        # Only paths this script writes: relative, inside sysfs, no "..".
        if [[ $rel == /* || $rel == *..* || -z $value ]]; then
            fail "refusing saved entry '$rel' = '$value' (not a path this script writes)"
            continue
        fi
        file=$SYSFS_ROOT/$rel
        if [[ ! -f $file ]]; then
            warn "$rel no longer exists, cannot restore '$value'"
            continue
        fi
        say "  $rel -> $value"
        write_value "$file" "$value"
    done
    if ((failures == 0)); then
        rm -f "$STATE_FILE"
        say "restored; removed $STATE_FILE"
    else
        say "kept $STATE_FILE: $failures value(s) could not be restored"
    fi
}

status() {
    local f
    say "==> cpufreq"
    for f in "$SYSFS_ROOT"/devices/system/cpu/cpufreq/policy*/scaling_governor; do
        [[ -f $f ]] && say "  ${f#"$SYSFS_ROOT"/}: $(read_value "$f")"
    done
    say "==> devfreq"
    local dev
    for dev in "${DEVFREQ_DEVICES[@]}"; do
        for f in governor min_freq cur_freq max_freq; do
            [[ -f $SYSFS_ROOT/class/devfreq/$dev/$f ]] &&
                say "  $dev $f: $(read_value "$SYSFS_ROOT/class/devfreq/$dev/$f")"
        done
    done
    if [[ -f $STATE_FILE ]]; then
        say "saved values in $STATE_FILE (board is tuned)"
    else
        say "no saved values (board is not tuned by this script)"
    fi
}

[[ $# -le 1 ]] || { printf 'board-tune: one option at most\n' >&2; usage >&2; exit 2; }
case "${1:-}" in
    "") tune ;;
    --restore) restore ;;
    --status) status ;;
    -h|--help) usage; exit 0 ;;
    *) printf 'board-tune: unknown argument: %s\n' "$1" >&2; usage >&2; exit 2 ;;
esac

if ((failures)); then
    printf 'board-tune: %d write(s) failed\n' "$failures" >&2
    exit 1
fi
