# Sourced by the benchmark scripts: fetches the fixture model, builds the release binary, and sets `py` to the
# benchmark venv's Python (.cache/bench-venv, or BENCH_PYTHON) with llama-cpp-python (which builds llama.cpp from
# source: several minutes the first time), torch, transformers and the packages named in `extra_packages` installed.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo build --release -p vibecheck-cli
py="${BENCH_PYTHON:-}"
if [ -z "$py" ]; then
  [ -x .cache/bench-venv/bin/python ] || python3 -m venv .cache/bench-venv
  py=.cache/bench-venv/bin/python
fi
# shellcheck disable=SC2086 # a space-separated list of package names
"$py" -m pip install --quiet --disable-pip-version-check llama-cpp-python==0.3.36 torch transformers ${extra_packages:-}
