#!/usr/bin/env bash
# Engine benchmark against llama.cpp (llama-cpp-python builds it from source: several minutes the first time)
# and transformers, in a virtual environment under .cache/bench-venv. Usage: scripts/bench-engine.sh [--skip-transformers]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo build --release -p vibecheck-cli
py="${BENCH_PYTHON:-}"
if [ -z "$py" ]; then
  venv=.cache/bench-venv
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check llama-cpp-python torch transformers
  py="$venv/bin/python"
fi
"$py" bench/engine.py "$@"
