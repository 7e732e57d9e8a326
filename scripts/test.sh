#!/usr/bin/env bash
# The project's test command: fetch the fixture model (once), then run every test of the workspace.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh
cargo test --workspace --locked "$@"
