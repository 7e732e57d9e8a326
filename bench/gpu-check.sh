#!/usr/bin/env bash
# Device check for the CUDA build (binaries `vibecheck` and the engine test binary `it`, packed in bins.tar.xz
# beside this script with a copy of shared/reference): the reference tests on the GPU (logits against
# transformers, ragged batches, merged caches, the continuous-batching thread), then decode speed of random-weight
# bf16 folders shaped like SmolLM2-135M and TinyLlama-1.1B, one sequence and batches of 8, beside PyTorch eager on
# the same GPU and folders.
set -u
cd "$(dirname "$0")"
python3 -c "import tarfile; tarfile.open('bins.tar.xz').extractall('.')"
chmod +x vibecheck it
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.memory --format=csv,noheader
echo "== reference tests on cuda:0"
VIBECHECK_REFERENCE_DIR=$PWD/reference VIBECHECK_TEST_DEVICE=cuda:0 ./it reference:: 2>&1 | grep -E "^test |test result|panicked" | head -30
echo "== random-weight bf16 folders"
python3 - <<'PY'
import json, shutil, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
shapes = {
    "smol": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=64, vocab_size=49152, tie_word_embeddings=True),
    "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                      num_key_value_heads=4, head_dim=64, vocab_size=32000, tie_word_embeddings=False),
}
for name, shape in shapes.items():
    cfg = LlamaConfig(max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5, **shape)
    torch.manual_seed(0)
    with torch.device("cuda"):
        m = LlamaForCausalLM(cfg).to(torch.bfloat16)
    d = f"/tmp/{name}-bf16"
    m.save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"reference/tiny/llama/{f}", d)
    nbytes = sum(p.numel() * p.element_size() for p in m.parameters())
    m.eval()
    for batch in (1, 8):
        ids = torch.randint(0, 400, (batch, 128), device="cuda")
        with torch.no_grad():
            for rep in range(2):
                out = m(ids, use_cache=True); past = out.past_key_values; nxt = out.logits[:, -1:].argmax(-1)
                torch.cuda.synchronize(); t0 = time.perf_counter()
                for _ in range(128):
                    out = m(nxt, past_key_values=past, use_cache=True); past = out.past_key_values
                    nxt = out.logits[:, -1:].argmax(-1)
                torch.cuda.synchronize()
        print(json.dumps({"engine": "pytorch-eager", "model": name, "batch": batch, "weight_bytes": nbytes,
                          "decode_tok_s": batch * 128 / (time.perf_counter() - t0)}))
    del m
    torch.cuda.empty_cache()
PY
for d in smol tinyllama; do
  echo "== vibecheck bench /tmp/$d-bf16 on cuda:0"
  ./vibecheck bench /tmp/$d-bf16 --device cuda:0 --batch 8 --json
done
