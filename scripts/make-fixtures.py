#!/usr/bin/env python3
"""Writes the checkpoint fixtures the tests read from tests/fixtures/, with the real tools that make them in the
wild (torch 2.15, transformers 5, peft 0.21). CI does not run this (it needs torch); its outputs are committed.

    python3 -m venv /tmp/fx && /tmp/fx/bin/pip install torch transformers peft gguf safetensors
    /tmp/fx/bin/python scripts/make-fixtures.py ../shared/reference .cache/models

- torch/llama-bin: the tiny llama's weights saved by torch.save (zip format), as transformers 4 wrote
  pytorch_model.bin; torch/llama-bin-sharded: bfloat16 in two shards with pytorch_model.bin.index.json;
  torch/legacy.bin: the pre-1.6 (non-zip) format; torch/evil.bin: a pickle that would run os.system.
- smollm2-lora: a random LoRA adapter (r 4 on q_proj and v_proj, seed 0) over SmolLM2-135M-Instruct
  dequantized from the fixture GGUF, and peft's unmerged greedy tokens for the first case of
  smollm2_transformers_greedy.json.
"""
import json, os, shutil, sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ref = Path(sys.argv[1])
models = Path(sys.argv[2])
out = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

# --- torch .bin checkpoints of the tiny llama ---
tiny = ref / "tiny" / "llama"
sd = load_file(tiny / "model.safetensors")
torch_dir = out / "torch"
if torch_dir.exists():
    shutil.rmtree(torch_dir)
single = torch_dir / "llama-bin"
single.mkdir(parents=True)
for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(tiny / f, single / f)
torch.save(sd, single / "pytorch_model.bin")

sharded = torch_dir / "llama-bin-sharded"
sharded.mkdir()
for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]:
    shutil.copy(tiny / f, sharded / f)
names = sorted(sd)
halves = [names[: len(names) // 2], names[len(names) // 2 :]]
weight_map = {}
for i, part in enumerate(halves):
    fname = f"pytorch_model-0000{i + 1}-of-00002.bin"
    torch.save({k: sd[k].to(torch.bfloat16) for k in part}, sharded / fname)
    weight_map.update({k: fname for k in part})
(sharded / "pytorch_model.bin.index.json").write_text(
    json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2)
)
cfg = json.loads((sharded / "config.json").read_text())
cfg["torch_dtype"] = "bfloat16"
(sharded / "config.json").write_text(json.dumps(cfg, indent=2))

torch.save({"w": torch.zeros(2)}, torch_dir / "legacy.bin", _use_new_zipfile_serialization=False)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo this pickle ran code",))


torch.save({"model.embed_tokens.weight": torch.zeros(2), "x": Evil()}, torch_dir / "evil.bin")

# --- a LoRA adapter over the real SmolLM2 ---
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model

gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
base = AutoModelForCausalLM.from_pretrained(str(models), gguf_file=gguf, dtype=torch.float32)
torch.manual_seed(0)
lora_cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                      lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
model = get_peft_model(base, lora_cfg)
# peft's random init of B is small; scale it so the adapter visibly moves the answers.
with torch.no_grad():
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.mul_(2.0)
model.eval()
case = json.loads((ref / "smollm2_transformers_greedy.json").read_text())[0]
ids = torch.tensor([case["prompt_token_ids"]])
with torch.no_grad():
    gen = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None,
                         pad_token_id=0)[0, ids.shape[1]:].tolist()
    logits = model(ids).logits[0, -1]
top = torch.topk(logits, 5)
lora_dir = out / "smollm2-lora"
if lora_dir.exists():
    shutil.rmtree(lora_dir)
model.save_pretrained(lora_dir)
acfg = json.loads((lora_dir / "adapter_config.json").read_text())
acfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
(lora_dir / "adapter_config.json").write_text(json.dumps(acfg, indent=2, sort_keys=True))
(lora_dir / "README.md").unlink(missing_ok=True)
(lora_dir / "reference.json").write_text(json.dumps({
    "made_with": f"torch {torch.__version__}, peft unmerged over SmolLM2 dequantized to float32 by transformers",
    "case": case["id"],
    "prompt_token_ids": case["prompt_token_ids"],
    "greedy_16": gen,
    "base_greedy_head": case["greedy_token_ids"][:16],
    "last_position_top5": {"ids": top.indices.tolist(), "logits": top.values.tolist()},
}, indent=1))
print("wrote", out)
