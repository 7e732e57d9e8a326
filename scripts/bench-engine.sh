#!/usr/bin/env bash
# Engine benchmark against llama.cpp (llama-cpp-python builds it from source: several minutes the first time)
# and transformers, in a virtual environment under .cache/bench-venv. Usage: scripts/bench-engine.sh [--skip-transformers]
set -euo pipefail
source "$(dirname "$0")/bench-setup.sh"
"$py" bench/engine.py "$@"
