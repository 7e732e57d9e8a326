#!/usr/bin/env bash
# K-quant GGUF files of SmolLM2 made with llama.cpp's own converter and quantizer (Q4_K_M, Q6_K, Q2_K by default),
# then the engine benchmark's GGUF rows on each against llama.cpp. Uses the venv of scripts/bench-engine.sh (or
# BENCH_PYTHON) plus llama.cpp's conversion script from the llama-cpp-python source package.
# Usage: scripts/bench-kquants.sh [--synthetic] [TYPE...]   (types: Q4_K_M Q5_K_M Q6_K Q3_K_M Q2_K)
# --synthetic: the files are made from a random-weight 290M-parameter Llama (bench/synthetic_llama.py) whose
# matrices are all K-quants, instead of from SmolLM2 (whose 576-wide matrices llama.cpp stores in Q5_0/Q8_0).
set -euo pipefail
extra_packages="sentencepiece gguf"
source "$(dirname "$0")/bench-setup.sh"
work=.cache/bench/kquants
src="$work/llama-cpp-python-src"
if [ ! -f "$src/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
  tmp="$(mktemp -d)"
  "$py" -m pip download --quiet --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d "$tmp"
  mkdir -p "$src"
  tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$src" --strip-components=1
  rm -rf "$tmp"
fi
bf16=.cache/bench/smollm2-bf16
[ -f "$bf16/model.safetensors" ] ||
  target/release/vibecheck convert .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf "$bf16" --dtype bf16
name=smollm2
if [ "${1:-}" = --synthetic ]; then
  shift
  name=synthetic-290m
  [ -f "$work/$name/model.safetensors" ] || "$py" bench/synthetic_llama.py "$bf16" "$work/$name"
  bf16="$work/$name"
fi
f16="$work/$name-F16.gguf"
[ -f "$f16" ] || "$py" "$src/vendor/llama.cpp/convert_hf_to_gguf.py" "$bf16" --outtype f16 --outfile "$f16"
types=("$@")
[ ${#types[@]} -gt 0 ] || types=(Q4_K_M Q6_K Q2_K)
for t in "${types[@]}"; do
  out="$work/$name-$t.gguf"
  [ -f "$out" ] || "$py" - "$f16" "$out" "$t" <<'PY'
import ctypes, sys
import llama_cpp
ftypes = {"Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18}
src, out, kind = sys.argv[1:]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = ftypes[kind]
if llama_cpp.llama_model_quantize(src.encode(), out.encode(), ctypes.byref(params)) != 0:
    sys.exit(f"llama.cpp could not quantize {src} to {kind}")
PY
  echo "== $t"
  "$py" bench/engine.py --gguf "$out" --skip-folders --skip-transformers --long-prompt-tokens 0
done
