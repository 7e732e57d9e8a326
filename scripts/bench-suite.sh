#!/usr/bin/env bash
# Suite benchmark: wall time of `vibecheck watch --once` on one checkpoint of the real model (SmolLM2-135M-Instruct
# as a bfloat16 Hugging Face folder, what trainers write), for the built-in default suite and for the 80 MT-Bench
# questions (first turn only, 128 tokens), each one conversation at a time and batched 8 at a time. Prints each
# run's summary line (answers, seconds, tokens/s).
# Usage: scripts/bench-suite.sh [MT_BENCH_QUESTION_JSONL]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
scripts/fetch-model.sh >/dev/null
cargo build --release --locked -p vibecheck-cli --quiet
bin="${CARGO_TARGET_DIR:-$root/target}/release/vibecheck"
models=.cache/models
folder="$models/SmolLM2-135M-Instruct-bf16"
[ -f "$folder/model.safetensors" ] || "$bin" convert "$models/SmolLM2-135M-Instruct.Q4_1.gguf" "$folder" --dtype bf16
questions="${1:-$root/../shared/data/mt_bench/question.jsonl}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/run"
ln -s "$(cd "$folder" && pwd)" "$work/run/checkpoint-1"
python3 - "$questions" "$work/mt_bench_first_turn.toml" <<'PY'
import json, sys
out = ['name = "mt-bench first turns"', "[defaults]", "max_tokens = 128"]
for line in open(sys.argv[1]):
    q = json.loads(line)
    out += ["[[prompts]]", f"id = {json.dumps(str(q['question_id']))}", f"category = {json.dumps(q['category'])}",
            f"prompt = {json.dumps(q['turns'][0])}"]
open(sys.argv[2], "w").write("\n".join(out) + "\n")
PY
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
# Each suite one conversation at a time (--batch 1, the baseline) and batched (--batch 8, the default).
for suite in default mt-bench; do
  args=()
  [ "$suite" = mt-bench ] && args=(--prompts "$work/mt_bench_first_turn.toml")
  for batch in 1 8; do
    start=$(date +%s.%N)
    line=$("$bin" watch "$work/run" --db "$work/$suite-$batch.db" --once --poll 0.2 --batch "$batch" "${args[@]}" \
      2>/dev/null | tail -1)
    end=$(date +%s.%N)
    printf '%-9s batch %d  wall %6.1f s  | %s\n' "$suite" "$batch" "$(echo "$end - $start" | bc)" "$line"
  done
done
