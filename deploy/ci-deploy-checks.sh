#!/usr/bin/env bash
# ci-deploy-checks.sh: CI checks of the deployment pieces: clock tuning, systemd units, aarch64 build under emulation, packages.
#
# Checks, in order (each timed; a failed one does not stop the independent
# ones after it, and the run exits non-zero if any failed):
#   lint           shellcheck over the deployment and maintainer scripts
#   board-tune     deploy/tests/board-tune-test.sh on a fake sysfs tree
#   arm64-build    deploy/cross-build.sh --smoke (release without LTO)
#   arm64-a76      the arm64 worker-cpu has llama.cpp's kernels for the
#                  board's cores: sdot/udot and fp16 vector arithmetic in
#                  `aarch64-linux-gnu-objdump -d` (deploy/check-a76-build.sh;
#                  a plain armv8-a build has neither)
#   units          systemd-analyze verify on the units (any warning
#                  fails), and systemd-analyze security --offline against a
#                  ceiling per unit so hardening cannot quietly regress
#   qemu-supctl    the arm64 supctl prints its version under qemu-aarch64
#   qemu-generate  the arm64 worker-cpu loads the default model under
#                  qemu-aarch64 emulating a Cortex-A76 (no newer extension,
#                  dotprod and fp16 present) and generates 4 tokens
#                  (`worker-cpu generate`)
#   arm64-package  deploy/package.sh --arch arm64 of the arm64 build
#   amd64-package  deploy/package.sh --arch amd64 --smoke (native build)
#   install        installs the amd64 package with apt, checks user, dirs,
#                  conffile and units, runs the installed binaries, upgrades
#                  with a locally edited config (kept), removes (config and
#                  state kept), purges (gone; the user stays)
#
# Needs root (apt-get, the install check) and the network for Debian's
# archive, crates.io and PyPI (the model). Installs its own packages (at most
# one `apt-get update`): qemu-user, systemd (systemd-analyze), the cross
# compilers and what llama.cpp's build needs. The install check puts the
# package on this machine for a few seconds and purges it again.
#
# Usage: deploy/ci-deploy-checks.sh
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
arm_dir=$target_dir/aarch64-unknown-linux-gnu/smoke
model=$repo_root/models/SmolLM2-135M-Instruct.Q4_1.gguf
work=$(mktemp -d)

readonly APT_PACKAGES=(qemu-user systemd gcc-aarch64-linux-gnu g++-aarch64-linux-gnu
    binutils-aarch64-linux-gnu cmake clang libclang-dev binutils python3 python3-pip adduser init-system-helpers debconf shellcheck)

passed=0
failed=0
results=()
declare -A ok=()

log() { printf '%s\n' "$*"; }
# run_check NAME FUNCTION: runs one check in a subshell that stops at its
# first failing command, records pass or fail and its duration. The subshell
# must not be the condition of an `if` or an operand of || and &&: bash
# ignores `set -e` in everything run there, functions included.
run_check() {
    local name=$1 fn=$2 start rc took
    printf '\n######## %s\n' "$name"
    start=$SECONDS
    set +e
    (set -euo pipefail; "$fn")
    rc=$?
    set -e
    took=$((SECONDS - start))
    if ((rc == 0)); then
        passed=$((passed + 1)); ok[$name]=1
        results+=("ok    $name (${took} s)")
    else
        failed=$((failed + 1))
        results+=("FAIL  $name (${took} s, exit $rc)")
    fi
}
# needs NAME...: a check that depends on earlier ones fails (does not skip)
# when any of them failed, naming the one it waited for.
needs() {
    local n
    for n in "$@"; do
        [[ -n ${ok[$n]:-} ]] || { log "cannot run: '$n' failed"; return 1; }
    done
}

# --- setup (not a check: nothing below can run without it) ----------------
[[ $EUID -eq 0 ]] || { log "ci-deploy-checks: run as root (apt-get, package install)"; exit 1; }
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "==> apt-get install ${missing[*]}"
    # Package lists fetched earlier in the same CI run (deploy/setup.sh) are
    # used as they are; `apt-get update` runs once, only if they do not do.
    apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
    apt_install || { apt-get update -qq && apt_install; }
fi
# A package left over from an interrupted run would hide install problems.
cleanup_package() {
    if dpkg-query -W -f='${Status}' rocksteady 2>/dev/null | grep -q 'installed'; then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq rocksteady >/dev/null || dpkg --purge rocksteady || true
    fi
}
cleanup_package
trap 'cleanup_package; rm -rf "$work"' EXIT

# --- checks ----------------------------------------------------------------
check_shellcheck() {
    shellcheck deploy/cross-build.sh deploy/package.sh deploy/board-tune.sh deploy/check-a76-build.sh \
        deploy/ci-deploy-checks.sh deploy/tests/board-tune-test.sh \
        deploy/tests/demo-test.sh \
        deploy/debian/postinst deploy/debian/postrm
    log "shellcheck: clean"
}

check_board_tune() {
    deploy/tests/board-tune-test.sh
}

check_arm64_build() {
    deploy/cross-build.sh --smoke
}

check_arm64_a76() {
    needs arm64-build
    deploy/check-a76-build.sh "$arm_dir/worker-cpu"
}

# Verify each unit file; rewrites ExecStart/ExecStop to the binaries just built
# because verify refuses commands that do not exist, and this machine has no
# /usr/bin/rocksteady-* (the install check verifies the installed copies too).
verify_units() { # DIR-WITH-UNITS
    local out rc=0
    out=$(cd "$1" && systemd-analyze verify ./rocksteady-*.service 2>&1) || rc=$?
    if ((rc != 0)) || [[ -n $out ]]; then
        log "systemd-analyze verify (exit $rc):"
        log "$out"
        return 1
    fi
    log "systemd-analyze verify: clean"
}
# Exposure ceilings (0 = fully locked down, 10 = none). Raising one needs a
# reason in the unit file.
declare -A SECURITY_CEILING=([rocksteady-supervisor]=2.5 [rocksteady-gateway]=2.0 [rocksteady-openai]=2.0 [rocksteady-board-tune]=2.5 [rocksteady-bridge]=2.0 [rocksteady-nats]=2.0)
security_units() { # DIR-WITH-UNITS
    local unit score rc=0
    for unit in "${!SECURITY_CEILING[@]}"; do
        score=$(cd "$1" && systemd-analyze security --offline=true --no-pager "$unit.service" 2>&1 |
            sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
        if [[ -z $score ]]; then
            log "$unit: systemd-analyze security gave no score"; rc=1
        elif awk -v s="$score" -v c="${SECURITY_CEILING[$unit]}" 'BEGIN { exit !(s > c) }'; then
            log "$unit: exposure $score is above the ceiling ${SECURITY_CEILING[$unit]}"; rc=1
        else
            log "$unit: exposure $score (ceiling ${SECURITY_CEILING[$unit]})"
        fi
    done
    return $rc
}
check_units() {
    needs arm64-build
    local d=$work/units
    mkdir -p "$d"
    cp deploy/systemd/*.service "$d/"
    # Built binaries for /usr/bin; the script itself for the board tuner.
    sed -i -E "s#^(Exec(Start|Stop)=)/usr/bin/#\\1$arm_dir/#" "$d"/*.service
    sed -i -E "s#^(Exec(Start|Stop)=)/usr/sbin/rocksteady-board-tune#\\1$repo_root/deploy/board-tune.sh#" "$d"/*.service
    grep -h '^Exec' "$d"/*.service
    verify_units "$d"
    security_units "$d"
}

# The board's big core: the binaries must run on exactly what an A76 has
# (qemu's default "max" CPU would also accept SVE or i8mm code the board
# cannot run).
qemu() { timeout 300 qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu "$@"; }

check_qemu_supctl() {
    needs arm64-build
    local want out
    want=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
    out=$(qemu "$arm_dir/supctl" --version)
    log "supctl --version: $out"
    [[ $out == *"$want"* ]] || { log "expected the workspace version $want in it"; return 1; }
}

check_qemu_generate() {
    needs arm64-build
    if [[ ! -f $model ]]; then
        log "fetching the default model"
        deploy/fetch-model.sh
    fi
    local start=$SECONDS rc=0
    qemu "$arm_dir/worker-cpu" generate --model "$model" \
        --prompt "Name the capital of France." --max-tokens 4 \
        >"$work/gen.out" 2>"$work/gen.err" || rc=$?
    log "exit $rc after $((SECONDS - start)) s (emulated)"
    log "stdout: $(<"$work/gen.out")"
    log "stderr (last lines):"
    tail -n 5 "$work/gen.err"
    ((rc == 0)) || return 1
    # Some text came out, and the summary line reports 4 generated tokens.
    grep -q '[[:alnum:]]' "$work/gen.out" || { log "no text generated"; return 1; }
    grep -Eq 'generated 4 tokens' "$work/gen.err" || { log "no summary line with 'generated 4 tokens' on stderr"; return 1; }
}

check_arm64_package() {
    needs arm64-build
    deploy/package.sh --arch arm64 --smoke --no-build
}

# The amd64 package only feeds the install check. When the workspace's dev
# build is there (deploy/test.sh builds it just before), package those
# binaries instead of building llama.cpp once more: that saves CI minutes.
# (Decided here, outside the checks: each check runs in a subshell.)
amd64_args=(--smoke)
x86_dev=$target_dir/x86_64-unknown-linux-gnu/debug
if [[ -x $target_dir/debug/rocksteady-supervisor && -x $target_dir/debug/worker-cpu ]] &&
    { [[ -L $x86_dev ]] || [[ ! -e $x86_dev ]]; }; then
    mkdir -p "$target_dir/x86_64-unknown-linux-gnu"
    ln -sfn ../debug "$target_dir/x86_64-unknown-linux-gnu/debug"
    amd64_args=(--profile dev --no-build)
fi
check_amd64_package() {
    deploy/package.sh --arch amd64 "${amd64_args[@]}"
}

check_install() {
    needs amd64-package
    local deb v1 deb2
    v1=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
    deb=$target_dir/debian/rocksteady_${v1}-1_amd64.deb
    [[ -f $deb ]] || { log "missing $deb"; return 1; }
    # Start from a machine that never had the package, so postinst's user
    # creation runs (a user left by an earlier run of this check is removed).
    if getent passwd rocksteady >/dev/null; then userdel rocksteady; fi
    if getent group rocksteady >/dev/null; then groupdel rocksteady; fi

    log "==> apt-get install $deb"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$deb" >/dev/null
    local f=0
    t() { if "$@"; then log "  ok   ${desc}"; else log "  FAIL ${desc}"; f=$((f + 1)); fi; }
    desc="rocksteady is a system user";            t test "$(id -u rocksteady)" -lt 1000
    desc="group rocksteady exists";                t bash -c "getent group rocksteady >/dev/null"
    desc="user's primary group is rocksteady";     t test "$(id -gn rocksteady)" = rocksteady
    desc="user has no login shell";                t test "$(getent passwd rocksteady | cut -d: -f7)" = /usr/sbin/nologin
    for g in render video; do
        if getent group "$g" >/dev/null; then
            desc="user is in group $g (NPU node)";  t bash -c "id -nG rocksteady | tr ' ' '\n' | grep -qx $g"
        fi
    done
    desc="/var/lib/rocksteady rocksteady:rocksteady 750";        t test "$(stat -c '%U:%G %a' /var/lib/rocksteady)" = "rocksteady:rocksteady 750"
    desc="/var/lib/rocksteady/models rocksteady:rocksteady 750"; t test "$(stat -c '%U:%G %a' /var/lib/rocksteady/models)" = "rocksteady:rocksteady 750"
    desc="/etc/rocksteady/config.toml is the example config";    t cmp -s /etc/rocksteady/config.toml deploy/config.example.toml
    desc="config.toml registered as a conffile"; t bash -c "dpkg-query -W -f='\${Conffiles}' rocksteady | grep -q ' /etc/rocksteady/config.toml '"
    desc="no unit enabled on install";           t bash -c '! ls /etc/systemd/system/*.wants/rocksteady-* 2>/dev/null | grep -q .'
    desc="installed supctl --version runs";      t bash -c "/usr/bin/supctl --version | grep -qF '$v1'"
    desc="installed units verify clean";         t verify_units /usr/lib/systemd/system
    desc="installed worker-cpu generates from the model (native)"
    t bash -c "/usr/bin/worker-cpu generate --model '$model' --prompt 'Say hi.' --max-tokens 4 2>'$work/native.err' | grep -q '[[:alnum:]]'"

    log "==> postinst again (dpkg-reconfigure path): idempotent"
    desc="postinst configure runs twice";        t dpkg-reconfigure -fnoninteractive rocksteady

    log "==> upgrade to ${v1}-2 with a locally edited config"
    printf '\n# local edit kept across upgrades\n' >>/etc/rocksteady/config.toml
    DEB_VERSION="${v1}-2" deploy/package.sh --arch amd64 "${amd64_args[@]}" --no-build >"$work/pkg2.log" 2>&1 ||
        { log "$(tail -n 20 "$work/pkg2.log")"; return 1; }
    deb2=$target_dir/debian/rocksteady_${v1}-2_amd64.deb
    echo rocksteady-test-file >/var/lib/rocksteady/models/keep-me
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confold "$deb2" >/dev/null
    desc="upgraded to ${v1}-2";                  t test "$(dpkg-query -W -f='${Version}' rocksteady)" = "${v1}-2"
    desc="local config edit kept";               t grep -q 'local edit kept across upgrades' /etc/rocksteady/config.toml
    desc="state kept across the upgrade";        t test -f /var/lib/rocksteady/models/keep-me

    log "==> remove"
    DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq rocksteady >/dev/null
    desc="binaries gone after remove";           t test ! -e /usr/bin/rocksteady-supervisor
    desc="config kept after remove";             t grep -q 'local edit kept' /etc/rocksteady/config.toml
    desc="state kept after remove";              t test -f /var/lib/rocksteady/models/keep-me

    log "==> purge"
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq rocksteady >/dev/null
    desc="config gone after purge";              t test ! -e /etc/rocksteady/config.toml
    desc="state gone after purge";               t test ! -e /var/lib/rocksteady
    desc="user kept after purge (Debian practice)"; t bash -c "getent passwd rocksteady >/dev/null"
    ((f == 0))
}

run_check lint check_shellcheck
run_check board-tune check_board_tune
run_check arm64-build check_arm64_build
run_check arm64-a76 check_arm64_a76
run_check units check_units
run_check qemu-supctl check_qemu_supctl
run_check qemu-generate check_qemu_generate
run_check arm64-package check_arm64_package
run_check amd64-package check_amd64_package
run_check install check_install

printf '\n######## summary\n'
printf '%s\n' "${results[@]}"
printf 'deploy checks: %d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
