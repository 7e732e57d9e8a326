#!/usr/bin/env python3
"""GGUF files of the tiny reference checkpoints, written by llama.cpp's own converter (convert_hf_to_gguf.py, as
vendored in the llama-cpp-python 0.3.36 source package), float32, into tests/fixtures/gguf/. CI does not run this
(it needs torch); its outputs are committed.

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    LCPP=llama_cpp_python-0.3.36/vendor/llama.cpp python scripts/make-gguf-fixtures.py ../shared/reference

The changes to the converter, all about the tokenizer (and GPT-NeoX's config keys, given in their transformers-4
spelling, which its converter reads) (the weights and hyper-parameters go through untouched): the
tiny checkpoints' 128-merge tokenizer is no published one, so its pre-tokenizer hash is unknown to
`get_vocab_base_pre`, which then refuses (it is told "default"), and Gemma's and Phi-3's converters want a
SentencePiece file the tiny checkpoints do not have (they write the byte-level BPE tokenizer instead).
"""
import os, shutil, subprocess, sys, tempfile
from pathlib import Path

ref = Path(sys.argv[1]).resolve()
lcpp = Path(os.environ["LCPP"]).resolve()
out = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"
out.mkdir(parents=True, exist_ok=True)
archs = sys.argv[2:] or ["qwen2", "qwen3", "mistral", "gemma", "gemma2", "gemma3", "phi3", "smollm3", "olmo2",
                         "qwen2_moe", "qwen3_moe", "mixtral", "phi", "gpt_neox", "olmo", "stablelm", "cohere",
                         "granite"]
runner = f"""
import sys
sys.path.insert(0, {str(lcpp)!r})
sys.path.insert(0, {str(lcpp / 'gguf-py')!r})
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "default"
_load = base.ModelBase.load_hparams
def _load_hparams(dir_model, is_mistral_format):
    # The GPT-NeoX converter reads transformers 4's `rotary_pct`, which transformers 5 folds into rope_parameters.
    c = _load(dir_model, is_mistral_format)
    if c.get("model_type") == "gpt_neox" and "rotary_pct" not in c:
        rp = c.get("rope_parameters") or {{}}
        c["rotary_pct"] = rp.get("partial_rotary_factor", 1.0)
        c["rotary_emb_base"] = rp.get("rope_theta", 10000.0)
    return c
base.ModelBase.load_hparams = staticmethod(_load_hparams)
import conversion, importlib, pkgutil
for m in pkgutil.iter_modules(conversion.__path__):  # every model class defined
    try:
        importlib.import_module("conversion." + m.name)
    except Exception:
        pass
def _fallback(orig):
    def set_vocab(self):
        try:
            orig(self)
        except (FileNotFoundError, KeyError):
            # Gemma's and Phi-3's converters want a SentencePiece tokenizer.model (or a tokenizer_class); the tiny
            # checkpoints ship a byte-level BPE tokenizer.json, which the GPT-2 path writes.
            self._set_vocab_gpt2()
    return set_vocab
def _all(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all(sub)
for cls in set(_all(base.TextModel)):
    if "set_vocab" in cls.__dict__:
        cls.set_vocab = _fallback(cls.__dict__["set_vocab"])
sys.argv = sys.argv[1:]
import runpy
runpy.run_path({str(lcpp / 'convert_hf_to_gguf.py')!r}, run_name="__main__")
"""
import json


def phi3_longrope(cfg):
    # Phi-3 128k style: long-rope factors over an original context of 64 (the test writes the same config).
    cfg["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0,
                              "short_factor": [1.0 + 0.1 * i for i in range(8)],
                              "long_factor": [2.0 + 0.5 * i for i in range(8)],
                              "original_max_position_embeddings": 64}
    cfg["original_max_position_embeddings"] = 64


# Variants: a tiny checkpoint with its config edited before conversion.
VARIANTS = {"phi3_longrope": ("phi3", phi3_longrope)}
if not sys.argv[2:]:
    archs.append("phi3_longrope")
for arch in archs:
    with tempfile.TemporaryDirectory() as tmp:
        origin, edit = VARIANTS.get(arch, (arch, None))
        src = Path(tmp) / arch
        shutil.copytree(ref / "tiny" / origin, src)
        for p in src.iterdir():
            p.chmod(0o644)
        if edit:
            cfg = json.loads((src / "config.json").read_text())
            edit(cfg)
            (src / "config.json").write_text(json.dumps(cfg))

        dest = out / f"{arch}.gguf"
        r = subprocess.run([sys.executable, "-c", runner, "convert", str(src), "--outtype", "f32",
                            "--outfile", str(dest)], capture_output=True, text=True)
        print(arch, "ok" if r.returncode == 0 else "FAILED\n" + r.stderr[-2000:])
