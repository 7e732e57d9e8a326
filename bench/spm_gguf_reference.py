#!/usr/bin/env python3
"""Reference token ids for the SentencePiece-vocabulary GGUF that the engine test
`sentencepiece_gguf_vocabulary_tokenizes_as_transformers_does` writes. Produce the file with
`VIBECHECK_DUMP_SPM_GGUF=/tmp/spm/spm.gguf cargo test -p vibecheck-engine --test it sentencepiece`, then run
`python bench/spm_gguf_reference.py /tmp/spm/spm.gguf` with transformers installed and paste its output into
the test's SPM_CASES."""
import json
import pathlib
import sys

from transformers import AutoTokenizer

TEXTS = [
    "the cat sat on the mat",
    "What is the capital of France?",
    "this is it",
    "  two leading spaces and  two inside",
    "Ünïcödé ✓ costs 123 €",
    "hello\nworld\ttab",
    "<s>special</s> tokens",
    "",
]

path = pathlib.Path(sys.argv[1])
tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
for text in TEXTS:
    ids = tok(text)["input_ids"]
    decoded = tok.decode(ids, skip_special_tokens=True)
    print(f"    ({json.dumps(text, ensure_ascii=False)}, &{ids}, {json.dumps(decoded, ensure_ascii=False)}),")
