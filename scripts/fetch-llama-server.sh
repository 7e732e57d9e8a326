#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (and `llama-bench`) natively from the llama.cpp source vendored in the
# llama-cpp-python 0.3.36 sdist on PyPI, into a cache folder outside the clone (cmake comes from PyPI too). The
# tests launch it as a real engine (`vibecheck serve --engine llama-server`). Idempotent: a build for this CPU is
# reused. Prints the folder holding the binaries on its last line.
set -euo pipefail
version=0.3.36
# The build uses this CPU's instructions (GGML_NATIVE), so it is kept per CPU model and flag set.
cpu="$( (grep -m1 -E '^(model name|flags)' /proc/cpuinfo; grep -m1 '^flags' /proc/cpuinfo) 2>/dev/null | sha256sum | cut -c1-12)"
cache="${VIBECHECK_LLAMA_CACHE:-$HOME/.cache/vibecheck-llama-cpp}"
dest="$cache/$version-$cpu"
if [ -x "$dest/bin/llama-server" ] && [ -x "$dest/bin/llama-bench" ]; then
  echo "llama.cpp present: $dest/bin" >&2
  echo "$dest/bin"
  exit 0
fi
mkdir -p "$cache"
work="$(mktemp -d "$cache/build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check --only-binary :all: cmake
# The sdist itself, by its pinned hash (`pip download` would build its metadata, and cmake from source with it).
url="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$version.tar.gz"
sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
python3 - "$url" "$work/llama_cpp_python-$version.tar.gz" "$sha" <<'PY'
import hashlib, sys, urllib.request
url, out, want = sys.argv[1:]
with urllib.request.urlopen(url, timeout=300) as r, open(out, "wb") as f:
    while chunk := r.read(1 << 20):
        f.write(chunk)
got = hashlib.sha256(open(out, "rb").read()).hexdigest()
if got != want:
    sys.exit(f"{url}: sha256 {got}, expected {want}")
PY
tar xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work" "llama_cpp_python-$version/vendor/llama.cpp"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
jobs="$(nproc 2>/dev/null || echo 2)"
"$work/venv/bin/cmake" -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DBUILD_SHARED_LIBS=OFF >&2
"$work/venv/bin/cmake" --build "$work/build" --config Release -j "$jobs" --target llama-server llama-bench >&2
mkdir -p "$dest.part/bin"
cp "$work/build/bin/llama-server" "$work/build/bin/llama-bench" "$dest.part/bin/"
rm -rf "$dest"
mv "$dest.part" "$dest"
echo "llama.cpp built: $dest/bin" >&2
echo "$dest/bin"
