#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets) for a bounded time, each from a seed corpus built from the
# tests' fixtures: the reference checkpoints' safetensors headers, config.json, tokenizer.json and chat templates,
# a small GGUF written here and the head of the real SmolLM2 GGUF, and OpenAI request bodies. A crash fails the
# run; its input is left in fuzz/artifacts/TARGET/ (turn it into a regression test, then fix it).
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]   (default 60 s each, every target)
# cargo-fuzz needs libFuzzer's sanitizer flags, which only a nightly compiler accepts; on a stable toolchain the
# script sets RUSTC_BOOTSTRAP=1 for the fuzz build alone (the project itself builds on stable without it).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs="${1:-${VIBECHECK_FUZZ_SECONDS:-60}}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf_header safetensors_header config_json tokenizer_json chat_template openai_request torch_pickle)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
export RUSTC_BOOTSTRAP=1
# The fuzz build's own target folder (instrumented release builds), kept between runs like CI's.
target_dir="${VIBECHECK_FUZZ_TARGET_DIR:-$HOME/.cache/vibecheck-fuzz-target}"
reference="${VIBECHECK_REFERENCE_DIR:-$root/../shared/reference}"
gguf="${VIBECHECK_MODEL_CACHE:-$root/.cache/models}/SmolLM2-135M-Instruct.Q4_1.gguf"

corpus="$root/fuzz/corpus"
mkdir -p "$corpus"
python3 - "$corpus" "$reference" "$gguf" <<'PY'
import json, pathlib, struct, sys
corpus, reference, gguf = (pathlib.Path(p) for p in sys.argv[1:4])
def put(target, name, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())

# GGUF: a small valid file of every value type, and the head of the real model (its header runs past it).
def s(x): b = x.encode(); return struct.pack("<Q", len(b)) + b
kv = [(s("general.architecture"), 8, s("llama")), (s("general.alignment"), 4, struct.pack("<I", 32)),
      (s("llama.block_count"), 4, struct.pack("<I", 1)), (s("f"), 6, struct.pack("<f", 1.5)),
      (s("b"), 7, b"\x01"), (s("i64"), 11, struct.pack("<q", -3)), (s("d"), 12, struct.pack("<d", 2.5)),
      (s("arr"), 9, struct.pack("<IQ", 8, 2) + s("a") + s("b")), (s("u8"), 0, b"\x07"), (s("i16"), 3, b"\x01\x00")]
head = b"GGUF" + struct.pack("<IQQ", 3, 2, len(kv)) + b"".join(k + struct.pack("<I", t) + v for k, t, v in kv)
tensors = s("token_embd.weight") + struct.pack("<IQQIQ", 2, 32, 4, 0, 0)
tensors += s("blk.0.attn_q.weight") + struct.pack("<IQQIQ", 2, 32, 2, 0, 512)
body = head + tensors
body += b"\0" * (-len(body) % 32) + b"\0" * (512 + 256)
put("gguf_header", "small.gguf", body)
if gguf.is_file():
    with open(gguf, "rb") as f:
        put("gguf_header", "smollm2-head.gguf", f.read(64 << 10))

# Safetensors headers and a shard index; config.json, tokenizer.json and chat templates of every architecture.
for ckpt in sorted(p for p in reference.glob("tiny/*") if p.is_dir()):
    st = ckpt / "model.safetensors"
    if st.is_file():
        with open(st, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            f.seek(0)
            put("safetensors_header", ckpt.name, f.read(8 + min(n, 1 << 20)))
    for name, target in [("config.json", "config_json"), ("tokenizer.json", "tokenizer_json")]:
        if (ckpt / name).is_file():
            put(target, ckpt.name, (ckpt / name).read_bytes())
    tc = ckpt / "tokenizer_config.json"
    if tc.is_file():
        tmpl = json.loads(tc.read_text()).get("chat_template")
        if isinstance(tmpl, str):
            put("chat_template", ckpt.name, tmpl)
    for jinja in ckpt.glob("*.jinja"):
        put("chat_template", ckpt.name + "-" + jinja.stem, jinja.read_bytes())
put("safetensors_header", "index.json", json.dumps({"metadata": {"total_size": 8}, "weight_map": {
    "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}}))
put("chat_template", "chatml", "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Torch pickles: the data.pkl of every .bin fixture (plain tensors, bfloat16 shards, one that names os.system).
import zipfile
for binfile in sorted(pathlib.Path("tests/fixtures/torch").glob("**/*.bin")):
    if zipfile.is_zipfile(binfile):
        with zipfile.ZipFile(binfile) as z:
            for n in z.namelist():
                if n.endswith("data.pkl"):
                    put("torch_pickle", binfile.parent.name + "-" + binfile.stem, z.read(n))

# Request bodies: byte 0 picks chat (even) or text completion (odd).
for i, body in enumerate([
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True,
         "stream_options": {"include_usage": True}, "stop": ["\n"], "seed": 3, "n": 2},
        {"model": "m", "messages": [{"role": "system", "content": [{"type": "text", "text": "x"}]},
                                    {"role": "user", "content": "y"}], "temperature": 0.7, "top_p": 0.9},
        {"model": "m", "messages": [{"role": "user", "content": "z"}], "logprobs": True, "tools": []}]):
    put("openai_request", f"chat{i}", b"\0" + json.dumps(body).encode())
put("openai_request", "text0", b"\1" + json.dumps({"model": "m", "prompt": "Once", "max_tokens": 4}).encode())
put("openai_request", "text1", b"\1" + json.dumps({"model": "m", "prompt": ["a"], "echo": False}).encode())
PY

failed=0
for t in "${targets[@]}"; do
  echo "fuzzing $t for ${secs} s"
  # -rss_limit_mb: an input that makes a parser allocate past 2 GB counts as a crash (the probe's OOM cases).
  if ! cargo fuzz run --fuzz-dir fuzz --target-dir "$target_dir" "$t" "$corpus/$t" -- \
      -max_total_time="$secs" -max_len=262144 -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
      2>&1 | { grep -vE '^#[0-9]+\s+(NEW|REDUCE|pulse)' || true; }; then
    echo "fuzz target $t FAILED (its input is in fuzz/artifacts/$t/)"
    failed=$((failed + 1))
  fi
done
echo "fuzz: $(( ${#targets[@]} - failed )) passed, $failed failed"
[ "$failed" -eq 0 ]
