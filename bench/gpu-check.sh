#!/usr/bin/env bash
# Device check for the CUDA build (binaries `vibecheck` and the engine test binary `it`, packed in bins.tar.xz
# beside this script with a copy of shared/reference): correctness on the tiny reference checkpoints, then decode speed of a
# SmolLM2-135M-shaped float32 (and bf16) folder with random weights, beside PyTorch eager on the same GPU.
set -u
cd "$(dirname "$0")"
python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall('.')"
chmod +x vibecheck it
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "== reference tests on cuda:0"
VIBECHECK_REFERENCE_DIR=$PWD/reference VIBECHECK_TEST_DEVICE=cuda:0 ./it reference:: 2>&1 | tail -16
echo "== random-weight SmolLM2-135M-shaped folders"
python3 - <<'PY'
import json, shutil, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
                  rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)
torch.manual_seed(0)
m = LlamaForCausalLM(cfg).float()
m.save_pretrained("/tmp/smol-f32")
m.to(torch.bfloat16).save_pretrained("/tmp/smol-bf16")
for d in ("/tmp/smol-f32", "/tmp/smol-bf16"):
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"reference/tiny/llama/{f}", d)
# PyTorch eager baseline on the same GPU: greedy decode of 128 tokens after a 128-token prompt.
for dtype, name in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
    model = LlamaForCausalLM.from_pretrained(f"/tmp/smol-{name}", dtype=dtype).cuda().eval()
    ids = torch.randint(0, 500, (1, 128), device="cuda")
    with torch.no_grad():
        for rep in range(2):
            out = model(ids, use_cache=True); past = out.past_key_values; nxt = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize(); t0 = time.perf_counter()
            for _ in range(128):
                out = model(nxt, past_key_values=past, use_cache=True); past = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
        print(json.dumps({"engine": "pytorch-eager", "dtype": name, "decode_tok_s": 128 / (time.perf_counter() - t0)}))
PY
for d in f32 bf16; do
  echo "== vibecheck bench /tmp/smol-$d on cuda:0"
  ./vibecheck bench /tmp/smol-$d --device cuda:0 --json
done
