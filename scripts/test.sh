#!/usr/bin/env bash
# The project's test command: fetch the fixture model (once), run every Rust test of the workspace, then the
# Python tests that drive the binary with real peers (the official `openai` client), and print one closing line
# with the totals.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
# The NEON kernels: the engine's tests cross-built for AArch64 and run under qemu-user (.ci/run installs the tools).
armfailed=0
if command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null \
  && rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
  scripts/test-aarch64.sh 2>&1 | tee -a "$log" || status=$?
elif [ -n "${CI:-}" ]; then
  echo "the AArch64 cross tools are missing: the NEON kernels' tests cannot run"
  status=1
  armfailed=1
else
  echo "AArch64 (NEON) tests skipped: see scripts/test-aarch64.sh for the cross tools they need"
fi
passed=$({ grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" || true; } | awk '{s+=$4} END {print s+0}')
failed=$({ grep -oE '[0-9]+ failed;' "$log" || true; } | awk '{s+=$1} END {print s+0}')

# llama.cpp's llama-server, built natively once per machine and CPU (a real engine for `serve --engine`).
if llama_bin="$(scripts/fetch-llama-server.sh | tail -1)" && [ -x "$llama_bin/llama-server" ]; then
  export VIBECHECK_LLAMA_SERVER="$llama_bin/llama-server"
elif [ -n "${CI:-}" ]; then
  echo "llama-server could not be built: the engine tests cannot run"
  status=1
fi
# Python peers, in a virtual environment of their own.
venv=.cache/test-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
export VIBECHECK_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/vibecheck"
cargo build --locked -p vibecheck-cli --quiet
pylog="$(mktemp)"
"$venv/bin/python" -m pytest -q tests/python 2>&1 | tee "$pylog" || status=$?
pypassed=$({ grep -oE '[0-9]+ passed' "$pylog" || true; } | tail -1 | awk '{print $1+0}')
pyfailed=$({ grep -oE '[0-9]+ (failed|error)' "$pylog" || true; } | awk '{s+=$1} END {print s+0}')
rm -f "$pylog"
# The web UI in headless Chromium (Debian's chromium; .ci/run installs it).
brpassed=0
brfailed=0
if command -v chromium >/dev/null; then
  (cd tests/browser && npm install --silent --no-audit --no-fund >/dev/null)
  brlog="$(mktemp)"
  for t in tests/browser/*.test.js; do
    node "$t" 2>&1 | tee -a "$brlog" || status=$?
  done
  brpassed=$({ grep -oE 'browser: [0-9]+ passed' "$brlog" || true; } | awk '{s+=$2} END {print s+0}')
  brfailed=$({ grep -oE 'browser: [0-9]+ passed, [0-9]+ failed' "$brlog" || true; } | awk '{s+=$4} END {print s+0}')
  rm -f "$brlog"
elif [ -n "${CI:-}" ]; then
  echo "chromium is missing: the browser test cannot run"
  status=1
  brfailed=1
else
  echo "browser test skipped: install Debian's chromium to run it"
fi
# The fuzz targets for the parsers of untrusted input, each for a bounded time (CI: 30 s each; elsewhere only when
# asked, since the instrumented build takes a while the first time).
fzpassed=0
fzfailed=0
fuzz_secs="${VIBECHECK_FUZZ_SECONDS:-}"
[ -n "$fuzz_secs" ] || { [ -n "${CI:-}" ] && fuzz_secs=30; }
if [ -n "$fuzz_secs" ]; then
  fzlog="$(mktemp)"
  scripts/fuzz.sh "$fuzz_secs" 2>&1 | tee "$fzlog" || status=$?
  fzpassed=$({ grep -oE '^fuzz: [0-9]+ passed' "$fzlog" || true; } | awk '{s+=$2} END {print s+0}')
  fzfailed=$({ grep -oE '^fuzz: [0-9]+ passed, [0-9]+ failed' "$fzlog" || true; } | awk '{s+=$4} END {print s+0}')
  # A fuzz run that never got to its summary (the build failed) counts as a failure.
  grep -qE '^fuzz: [0-9]+ passed' "$fzlog" || fzfailed=$((fzfailed + 1))
  rm -f "$fzlog"
else
  echo "fuzzing skipped: set VIBECHECK_FUZZ_SECONDS=30 to run scripts/fuzz.sh (CI runs it)"
fi
echo "total: $((passed + ${pypassed:-0} + ${brpassed:-0} + fzpassed)) passed, $((failed + armfailed + pyfailed + ${brfailed:-0} + fzfailed)) failed"
exit "$status"
