#!/usr/bin/env bash
# package.sh: build the rocksteady Debian package (.deb) for the board (arm64) and/or x86-64 (amd64) with cargo-deb.
#
# Usage: deploy/package.sh [--arch arm64|amd64|all] [--profile NAME | --smoke] [--no-build]
#   --arch       arm64 (default, the RK3588 board), amd64, or all (both)
#   --profile    cargo profile (default release); --smoke as in cross-build.sh
#   --no-build   package binaries built earlier (by deploy/cross-build.sh with the
#                same --target and profile) instead of building them
#
# Steps (each printed): install cargo-deb if missing (cargo install, crates.io);
# build the workspace with deploy/cross-build.sh; copy the binaries of the
# workspace into a staging directory; (arm64) check that worker-cpu has
# llama.cpp's dotprod/fp16 kernels for the board (deploy/check-a76-build.sh); check that the package's `depends` (in
# supervisor/Cargo.toml) covers what the binaries link against and the glibc
# version they need; run cargo-deb; check the package (architecture, binaries,
# units, the conffile, the maintainer scripts).
#
# Output: target/debian/rocksteady_<version>_<arch>.deb, one per architecture.
# DEB_VERSION in the environment overrides the version (e.g. 0.1.0-2).
#
# What the package installs (see [package.metadata.deb] in supervisor/Cargo.toml):
#   /usr/bin/{rocksteady-supervisor,supctl,worker-cpu,worker-npu,rocksteady-gateway,rocksteady-openai,rocksteady-bridge}
#   /usr/sbin/rocksteady-board-tune, /usr/share/rocksteady/fetch-model.sh
#   /usr/lib/systemd/system/rocksteady-{supervisor,gateway,openai,board-tune}.service
#   /etc/rocksteady/config.toml (conffile, from deploy/config.example.toml)
#   /usr/share/doc/rocksteady/{README.md,config.example.toml}
# and its postinst creates the rocksteady user and group and /var/lib/rocksteady.
set -euo pipefail

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'package: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

# Every binary the package may carry. Those the workspace defines are
# required; those it does not define (yet) are left out with a notice.
readonly KNOWN_BINARIES=(rocksteady-supervisor supctl worker-cpu worker-npu rocksteady-gateway rocksteady-openai rocksteady-bridge)
# Which Debian package provides each shared library the binaries may link.
declare -A LIB_PACKAGE=(
    [libc.so.6]=libc6 [libm.so.6]=libc6 [libdl.so.2]=libc6 [libpthread.so.0]=libc6
    [librt.so.1]=libc6 [ld-linux-aarch64.so.1]=libc6 [ld-linux-x86-64.so.2]=libc6
    [libgcc_s.so.1]=libgcc-s1 [libstdc++.so.6]=libstdc++6 [libgomp.so.1]=libgomp1
)

arches=(arm64)
profile=release
build=1
while (($#)); do
    case "$1" in
        --arch) [[ $# -ge 2 ]] || die "--arch needs a value"; arch_arg=$2; shift 2 ;;
        --arch=*) arch_arg=${1#--arch=}; shift ;;
        --profile) [[ $# -ge 2 ]] || die "--profile needs a name"; profile=$2; shift 2 ;;
        --profile=*) profile=${1#--profile=}; shift ;;
        --smoke) profile=smoke; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
case "${arch_arg:-arm64}" in
    arm64) arches=(arm64) ;;
    amd64) arches=(amd64) ;;
    all) arches=(arm64 amd64) ;;
    *) die "--arch must be arm64, amd64 or all, not '$arch_arg'" ;;
esac
# A dev build is packaged only as it is (CI's install check reuses the test
# build); building one for a package makes no sense.
case "$profile" in
    debug) die "the dev profile is called dev" ;;
    dev) ((build == 0)) || die "dev builds are packaged only with --no-build; use --smoke for a quick package" ;;
esac

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"
target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
manifest=supervisor/Cargo.toml

step "checking the package's source files"
missing=()
for f in deploy/config.example.toml README.md deploy/board-tune.sh deploy/fetch-model.sh \
    deploy/debian/postinst deploy/debian/postrm \
    deploy/systemd/rocksteady-supervisor.service deploy/systemd/rocksteady-gateway.service \
    deploy/systemd/rocksteady-openai.service deploy/systemd/rocksteady-board-tune.service \
    deploy/systemd/rocksteady-bridge.service deploy/systemd/rocksteady-nats.service; do
    if [[ -f $f ]]; then info "$f"; else missing+=("$f"); fi
done
((${#missing[@]} == 0)) || die "missing: ${missing[*]}"
grep -q '^\[package.metadata.deb\]' "$manifest" || die "$manifest has no [package.metadata.deb] section"

step "checking cargo-deb"
# 3.x installs units under /usr/lib/systemd/system and handles the
# target/release/ rewriting this script relies on; older ones differ.
readonly CARGO_DEB_MIN=3.8.0
have=$(cargo deb --version 2>/dev/null | sed -n 's/^cargo-deb \([0-9.]*\).*/\1/p' || true)
if [[ -n $have && $(printf '%s\n%s\n' "$CARGO_DEB_MIN" "$have" | sort -V | head -n1) == "$CARGO_DEB_MIN" ]]; then
    info "cargo-deb $have"
else
    info "${have:+cargo-deb $have is older than $CARGO_DEB_MIN; }installing: cargo install cargo-deb --locked --version ^$CARGO_DEB_MIN"
    cargo install cargo-deb --locked --version "^$CARGO_DEB_MIN"
fi

# The binaries the workspace defines, from cargo's own view of it.
mapfile -t workspace_bins < <(cargo metadata --no-deps --format-version 1 |
    python3 -c 'import json,sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        if "bin" in t["kind"]: print(t["name"])')

# The libc6 floor and the package names declared in `depends`.
depends=$(sed -n 's/^depends *= *"\(.*\)"/\1/p' "$manifest")
[[ -n $depends ]] || die "no depends line in $manifest"
declared_glibc=$(sed -n 's/.*libc6 (>= \([0-9.]*\)).*/\1/p' <<<"$depends")
[[ -n $declared_glibc ]] || die "depends in $manifest has no 'libc6 (>= X.Y)'"
declared_pkgs=" $(tr ',' '\n' <<<"$depends" | sed 's/(.*)//; s/ //g' | tr '\n' ' ') "

# version_gt A B: whether dotted version A is greater than B.
version_gt() { [[ $1 != "$2" && $(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -n1) == "$1" ]]; }

debs=()
for arch in "${arches[@]}"; do
    case "$arch" in
        arm64) triple=aarch64-unknown-linux-gnu; machine=AArch64 ;;
        amd64) triple=x86_64-unknown-linux-gnu; machine="Advanced Micro Devices X86-64" ;;
    esac
    profile_dir=$profile
    # cargo names the dev profile's output directory "debug".
    [[ $profile == dev ]] && profile_dir=debug
    out_dir=$target_dir/$triple/$profile_dir

    if ((build)); then
        step "building for $arch ($triple, profile $profile)"
        if [[ $profile == smoke ]]; then
            deploy/cross-build.sh --target "$triple" --smoke
        else
            deploy/cross-build.sh --target "$triple" --profile "$profile"
        fi
    fi

    step "staging the $arch binaries"
    stage=$out_dir/deb-usr-bin
    rm -rf "$stage"
    mkdir -p "$stage"
    for bin in "${KNOWN_BINARIES[@]}"; do
        if ! printf '%s\n' "${workspace_bins[@]}" | grep -qx "$bin"; then
            info "$bin: not in the workspace, left out"
            continue
        fi
        [[ -f $out_dir/$bin ]] || die "$bin is in the workspace but not built in ${out_dir#"$repo_root"/} (run without --no-build)"
        got=$(LC_ALL=C readelf -h "$out_dir/$bin" | sed -n 's/^ *Machine: *//p')
        [[ $got == "$machine" ]] || die "$bin is built for '$got', not $arch"
        cp -p "$out_dir/$bin" "$stage/"
        info "$bin"
    done

    if [[ $arch == arm64 && -f $stage/worker-cpu ]]; then
        step "checking that the arm64 worker-cpu has the board's kernels"
        # A plain armv8-a llama.cpp (e.g. built without deploy/cross-build.sh)
        # runs several times slower on the A76; never package one.
        deploy/check-a76-build.sh "$stage/worker-cpu" ||
            die "the arm64 worker-cpu was not built for the board's cores (build it with deploy/cross-build.sh)"
    fi

    step "checking the $arch binaries against depends = \"$depends\""
    needed_glibc=0
    for f in "$stage"/*; do
        while read -r lib; do
            pkg=${LIB_PACKAGE[$lib]:-}
            [[ -n $pkg ]] || die "${f##*/} links $lib, which package.sh does not know: add it to LIB_PACKAGE and to depends"
            [[ $declared_pkgs == *" $pkg "* ]] || die "${f##*/} links $lib from $pkg, which depends does not list"
        done < <(LC_ALL=C readelf -d "$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
        v=$(LC_ALL=C readelf -V --wide "$f" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
        if [[ -n $v ]] && version_gt "$v" "$needed_glibc"; then needed_glibc=$v; fi
    done
    info "highest glibc symbol version needed: $needed_glibc (declared: libc6 >= $declared_glibc)"
    if version_gt "$needed_glibc" "$declared_glibc"; then
        die "the binaries need glibc $needed_glibc but depends says libc6 (>= $declared_glibc); raise it in $manifest"
    fi

    step "cargo deb for $arch"
    deb_args=(-p supervisor --no-build --target "$triple" --profile "$profile" --output "$target_dir/debian/")
    [[ -n ${DEB_VERSION:-} ]] && deb_args+=(--deb-version "$DEB_VERSION")
    deb=$(cargo deb "${deb_args[@]}" | tail -n1)
    [[ -f $deb ]] || die "cargo deb did not report a package file (got: $deb)"
    info "$deb"

    step "checking $(basename "$deb")"
    got_arch=$(dpkg-deb -f "$deb" Architecture)
    [[ $got_arch == "$arch" ]] || die "package architecture is $got_arch, expected $arch"
    contents=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's#^\./#/#')
    for bin in "$stage"/*; do
        grep -qx "/usr/bin/${bin##*/}" <<<"$contents" || die "/usr/bin/${bin##*/} is not in the package"
    done
    for f in /etc/rocksteady/config.toml /usr/sbin/rocksteady-board-tune \
        /usr/lib/systemd/system/rocksteady-supervisor.service \
        /usr/lib/systemd/system/rocksteady-gateway.service \
        /usr/lib/systemd/system/rocksteady-openai.service \
        /usr/lib/systemd/system/rocksteady-board-tune.service \
        /usr/lib/systemd/system/rocksteady-bridge.service \
        /usr/lib/systemd/system/rocksteady-nats.service; do
        grep -qx "$f" <<<"$contents" || die "$f is not in the package"
    done
    ctrl=$(mktemp -d)
    dpkg-deb -e "$deb" "$ctrl"
    grep -qx /etc/rocksteady/config.toml "$ctrl/conffiles" || die "/etc/rocksteady/config.toml is not a conffile"
    grep -q 'adduser --system' "$ctrl/postinst" || die "postinst does not create the rocksteady user"
    grep -q 'deb-systemd-helper' "$ctrl/postinst" || die "postinst lacks the systemd unit steps"
    rm -rf "$ctrl"
    info "architecture $got_arch; binaries, units and conffile present"
    dpkg-deb -f "$deb" Package Version Architecture Depends Installed-Size | sed 's/^/    /'
    debs+=("$deb")
done

step "done"
printf '%s\n' "${debs[@]}"
