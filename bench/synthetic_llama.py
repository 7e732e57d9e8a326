#!/usr/bin/env python3
"""A random-weight Llama of ~290M parameters (hidden 1024, 16 layers, 16 heads / 8 KV heads, MLP 2816, untied
output), written as a bf16 Hugging Face folder with SmolLM2's tokenizer. Every matrix is 1024 or 2816 wide, a
multiple of 256, so llama.cpp's K-quant types store all of them in K-quants (SmolLM2's 576-wide rows fall back to
Q5_0/Q8_0): speed figures for K-quant files, not answers. Needs torch and transformers.

Usage: python bench/synthetic_llama.py TOKENIZER_FOLDER OUT_FOLDER
"""
import pathlib
import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=1024, intermediate_size=2816, num_hidden_layers=16,
                      num_attention_heads=16, num_key_value_heads=8, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=False,
                      bos_token_id=1, eos_token_id=2)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / name, out / name)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters in {out}")


if __name__ == "__main__":
    main()
