#!/usr/bin/env bash
# cross-build.sh: build the rocksteady binaries for the RK3588 board (aarch64) on an x86-64 Debian machine.
#
# What it does, in order (each step is printed):
#   1. installs what is missing: the rustup target aarch64-unknown-linux-gnu and
#      Debian's cross compilers (gcc/g++-aarch64-linux-gnu) plus cmake, clang and
#      libclang-dev, which llama.cpp (built by the llama-cpp-sys-2 crate through
#      cmake and bindgen) needs;
#   2. points cargo, the cc crate, cmake and bindgen at the cross toolchain, and
#      compiles C/C++ (llama.cpp above all) for the board's cores:
#      armv8.2-a with the dot-product and fp16 extensions (A76_ARCH below), not
#      plain armv8-a; see deploy/cmake/ggml-a76.cmake for how that reaches
#      ggml's kernels;
#   3. runs `cargo build --target aarch64-unknown-linux-gnu --workspace --bins`
#      with the chosen profile and lists the binaries it produced;
#   4. (arm64) checks that worker-cpu carries the dotprod and fp16 kernels
#      (deploy/check-a76-build.sh), so a plain armv8-a build never ships.
# Running it again is cheap: installed tools are detected and cargo rebuilds only
# what changed.
#
# Usage: deploy/cross-build.sh [--target TRIPLE] [--profile NAME | --smoke | --debug] [--no-install] [-- CARGO_ARGS...]
#   --target TRIPLE aarch64-unknown-linux-gnu (default, the board) or
#                   x86_64-unknown-linux-gnu (a native build with the same
#                   profiles, for the amd64 package)
#   --profile NAME  cargo profile to build (default: release, what the package ships)
#   --smoke         the "smoke" profile defined below: release without LTO and with
#                   Rust code at opt-level 1, for CI's emulated smoke test. llama.cpp
#                   is still an optimised cmake Release build (llama-cpp-sys-2 picks
#                   Release whenever debug info is off), so inference speed, which
#                   is what the emulated run waits on, is the same as release.
#   --debug         the workspace's dev profile (unoptimised Rust, optimised llama.cpp)
#   --no-install    fail instead of installing missing tools
#   -- ARGS         passed to cargo build (e.g. -- --locked, -- -j1)
#
# Output: target/<triple>/<profile dir>/ (release -> release,
# smoke -> smoke), or under $CARGO_TARGET_DIR when that is set.
set -euo pipefail

readonly SYSROOT=/usr/aarch64-linux-gnu
# The RK3588's cores: four Cortex-A76 and four Cortex-A55, all armv8.2-a with
# the dot-product (sdot/udot: llama.cpp's quantised matrix kernels) and
# half-precision arithmetic extensions. Not -mcpu=cortex-a76: ggml passes its
# own -march after every CFLAGS entry, and a -march overrides the architecture
# of any -mcpu, so the architecture is named the way ggml takes it.
readonly A76_ARCH=armv8.2-a+dotprod+fp16

# The workspace's own binaries, in the order a reader expects; the ones not in
# the workspace yet are simply not listed at the end.
readonly KNOWN_BINARIES=(rocksteady-supervisor supctl worker-cpu worker-npu rocksteady-gateway rocksteady-openai)

step() { printf '\n==> %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf 'cross-build: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

TARGET=aarch64-unknown-linux-gnu
profile=release
install_missing=1
cargo_extra=()
while (($#)); do
    case "$1" in
        --profile) [[ $# -ge 2 ]] || die "--profile needs a name"; profile=$2; shift 2 ;;
        --profile=*) profile=${1#--profile=}; shift ;;
        --target) [[ $# -ge 2 ]] || die "--target needs a triple"; TARGET=$2; shift 2 ;;
        --target=*) TARGET=${1#--target=}; shift ;;
        --smoke) profile=smoke; shift ;;
        --debug) profile=dev; shift ;;
        --no-install) install_missing=0; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; cargo_extra=("$@"); break ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done
[[ -n $profile ]] || die "--profile needs a name"
case "$TARGET" in
    aarch64-unknown-linux-gnu)
        cross=1
        machine=AArch64
        APT_PACKAGES=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu cmake clang libclang-dev) ;;
    x86_64-unknown-linux-gnu)
        [[ $(uname -m) == x86_64 ]] || die "--target $TARGET builds natively and needs an x86-64 machine"
        cross=0
        machine="Advanced Micro Devices X86-64"
        APT_PACKAGES=(gcc g++ cmake clang libclang-dev) ;;
    *) die "--target must be aarch64-unknown-linux-gnu or x86_64-unknown-linux-gnu, not '$TARGET'" ;;
esac

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo_root"

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $*"
    fi
}

step "checking the Rust target $TARGET"
command -v rustup >/dev/null || die "rustup not found: install Rust with rustup (Debian's rustc has no cross std)"
if rustup target list --installed | grep -qx "$TARGET"; then
    info "installed"
elif ((install_missing)); then
    info "missing: rustup target add $TARGET"
    rustup target add "$TARGET"
else
    die "rustup target $TARGET is not installed (run: rustup target add $TARGET)"
fi

step "checking Debian packages: ${APT_PACKAGES[*]}"
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        info "$pkg: installed"
    else
        info "$pkg: missing"
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    ((install_missing)) || die "missing packages: ${missing[*]} (apt-get install ${missing[*]})"
    step "installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ((cross)); then
    [[ -d $SYSROOT ]] || die "$SYSROOT is missing although the cross compilers are installed"

    step "setting the cross toolchain variables"
    # cargo links the final binaries with the cross gcc (rustc's default `cc` would
    # produce x86-64 objects).
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    # The cc crate and cmake-rs (llama.cpp) read the per-target compilers.
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    # bindgen parses llama.cpp's headers with the host libclang; without the sysroot
    # it would pick up the x86-64 glibc headers and generate wrong layouts.
    export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=$SYSROOT"
    # The board's architecture for all C and C++ of the target (the cc crate
    # and, through it, cmake-rs read these). They are also what makes cargo
    # rerun llama-cpp-sys-2's build script when they change: it tracks these
    # variables, not the CMAKE_*/GGML_* ones below.
    export CFLAGS_aarch64_unknown_linux_gnu="-march=$A76_ARCH -mtune=cortex-a76"
    export CXXFLAGS_aarch64_unknown_linux_gnu="-march=$A76_ARCH -mtune=cortex-a76"
    # ggml's CPU kernels take their -march from GGML_CPU_ARM_ARCH, which
    # llama-cpp-sys-2 pins to armv8-a after forwarding ours; the project
    # include puts ours back inside cmake (see the file).
    export GGML_CPU_ARM_ARCH=$A76_ARCH
    export CMAKE_PROJECT_INCLUDE=$repo_root/deploy/cmake/ggml-a76.cmake
    [[ -f $CMAKE_PROJECT_INCLUDE ]] || die "$CMAKE_PROJECT_INCLUDE is missing"
    for v in CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER CC_aarch64_unknown_linux_gnu \
        CXX_aarch64_unknown_linux_gnu AR_aarch64_unknown_linux_gnu \
        BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu CFLAGS_aarch64_unknown_linux_gnu \
        CXXFLAGS_aarch64_unknown_linux_gnu GGML_CPU_ARM_ARCH CMAKE_PROJECT_INCLUDE; do
        info "$v=${!v}"
    done
fi

profile_args=()
case "$profile" in
    release) profile_args=(--release); profile_dir=release ;;
    dev|debug)
        # The workspace's dev profile keeps llama.cpp optimised (see the root
        # Cargo.toml), so this also runs at a usable speed; --smoke builds
        # about as fast and is closer to what ships.
        profile_args=(); profile_dir=debug ;;
    smoke)
        # Defined on the command line so the workspace Cargo.toml stays as it
        # is. No LTO and opt-level 1 for Rust code save link and codegen time;
        # its own directory keeps it from invalidating a release build.
        profile_args=(--profile smoke
            --config 'profile.smoke.inherits="release"'
            --config 'profile.smoke.opt-level=1'
            --config 'profile.smoke.lto=false'
            --config 'profile.smoke.codegen-units=16'
            --config 'profile.smoke.debug=false'
            --config 'profile.smoke.incremental=false')
        profile_dir=smoke ;;
    *) profile_args=(--profile "$profile"); profile_dir=$profile ;;
esac

target_dir=${CARGO_TARGET_DIR:-$repo_root/target}
out_dir=$target_dir/$TARGET/$profile_dir

if ((cross)); then
    # llama-cpp-sys-2 runs cmake's configure step only for a new build
    # directory (cmake-rs' always_configure is off), so a llama.cpp configured
    # earlier for another architecture (plain armv8-a, by an older version of
    # this script or a bare cargo build) would keep it whatever the variables
    # above say. Remove such a build: cargo then reruns the build script and
    # llama.cpp is configured and built afresh (minutes, once).
    for cache in "$out_dir"/build/llama-cpp-sys-2-*/out/build/CMakeCache.txt; do
        [[ -f $cache ]] || continue
        if ! grep -qxF "GGML_CPU_ARM_ARCH:STRING=$A76_ARCH" "$cache"; then
            run_dir=${cache%/out/build/CMakeCache.txt}
            step "llama.cpp in ${run_dir#"$repo_root"/} was configured for $(sed -n 's/^GGML_CPU_ARM_ARCH:STRING=//p' "$cache"), not $A76_ARCH: removing it to rebuild"
            rm -rf "$run_dir"
        fi
    done
fi

step "cargo build --target $TARGET --workspace --bins (profile $profile)"
start=$SECONDS
cargo build --target "$TARGET" --workspace --bins "${profile_args[@]}" "${cargo_extra[@]}"
info "build took $((SECONDS - start)) s"

step "binaries in ${out_dir#"$repo_root"/}"
found=0
for bin in "${KNOWN_BINARIES[@]}"; do
    [[ -f $out_dir/$bin ]] || continue
    found=$((found + 1))
    # Check the architecture, so a missing linker setting cannot slip an x86-64
    # binary into the board package.
    got=$(LC_ALL=C readelf -h "$out_dir/$bin" 2>/dev/null | sed -n 's/^ *Machine: *//p')
    [[ $got == "$machine" ]] || die "$bin is not a $machine binary (readelf says: ${got:-not ELF})"
    info "$bin ($(du -h "$out_dir/$bin" | cut -f1), $got)"
done
((found)) || die "the build produced none of: ${KNOWN_BINARIES[*]}"

if ((cross)) && [[ -f $out_dir/worker-cpu ]]; then
    step "checking that worker-cpu has the A76 kernels ($A76_ARCH)"
    "$repo_root/deploy/check-a76-build.sh" "$out_dir/worker-cpu" ||
        die "worker-cpu lacks the $A76_ARCH kernels: llama.cpp was not built for the board (a stale build? cargo clean -p llama-cpp-sys-2 --target $TARGET)"
fi
