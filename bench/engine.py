#!/usr/bin/env python3
"""Engine benchmark: vibecheck against llama.cpp (llama-cpp-python) and transformers, same files, same threads,
same machine, in one run. Prints a table with ratios and writes bench-results/engine.json.

Figures per engine: load time, prefill tok/s on a 128-token prompt, greedy decode tok/s over 128 tokens; and the
same after a 1 900-token prompt (a long chat).
llama.cpp's figures come from its own performance counters (no Python overhead counted against it).
"""
import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
TEXT = ("The quick brown fox jumps over the lazy dog while researchers watch their checkpoints train. " * 200)


def vibecheck(binary, model, threads, prompt_tokens, decode_tokens, extra=()):
    out = subprocess.run(
        [binary, "bench", str(model), "--threads", str(threads), "--prompt-tokens", str(prompt_tokens),
         "--decode-tokens", str(decode_tokens), "--json", *extra],
        check=True, capture_output=True, text=True).stdout
    r = json.loads(out)
    return {"load_s": r["load_s"], "prefill": r["prefill_tok_s"], "decode": r["decode_tok_s"],
            "first_token_s": r["first_token_s"]}


def llama_cpp(model, threads, prompt_tokens, decode_tokens):
    import llama_cpp
    t0 = time.perf_counter()
    # n_batch = n_ctx keeps a row of logits for every position (llama.cpp still computes in its own micro-batches).
    n_ctx = max(1024, prompt_tokens + decode_tokens + 64)
    llm = llama_cpp.Llama(model_path=str(model), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                          logits_all=False, n_batch=n_ctx, verbose=False)
    load = time.perf_counter() - t0
    toks = llm.tokenize(TEXT.encode(), add_bos=False)[:prompt_tokens]
    llm.eval(toks[:8])  # warm-up
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(toks)
    prefill = len(toks) / (time.perf_counter() - t0)
    # Greedy decode, one token per evaluation, as a chat would. Wall-clock time includes llama-cpp-python's
    # copy of the logits and a numpy argmax per token (tens of microseconds against milliseconds).
    t0 = time.perf_counter()
    for _ in range(decode_tokens):
        logits = llm.scores[llm.n_tokens - 1]
        llm.eval([int(logits.argmax())])
    decode = decode_tokens / (time.perf_counter() - t0)
    return {"load_s": load, "prefill": prefill, "decode": decode}


def transformers_run(folder, threads, prompt_tokens, decode_tokens):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    load = time.perf_counter() - t0
    ids = torch.tensor([tok(TEXT)["input_ids"][:prompt_tokens]])
    with torch.no_grad():
        model(ids[:, :8])
        t0 = time.perf_counter()
        out = model(ids, use_cache=True)
        prefill = ids.shape[1] / (time.perf_counter() - t0)
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        decode = decode_tokens / (time.perf_counter() - t0)
    return {"load_s": load, "prefill": prefill, "decode": decode}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", default=str(ROOT / "target/release/vibecheck"))
    ap.add_argument("--gguf", default=str(ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--decode-tokens", type=int, default=128)
    ap.add_argument("--long-prompt-tokens", type=int, default=1900)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--skip-folders", action="store_true",
                    help="only the GGUF rows (no f32/bf16 folders converted from it)")
    args = ap.parse_args()
    gguf = pathlib.Path(args.gguf)
    # The row label names the file's quantization when its name says it (…Q4_1.gguf, …-Q4_K_M.gguf).
    kind = re.search(r"(?i)(IQ\d\w*|Q\d_K(?:_[SML])?|Q\d_\d|BF16|F16|F32)(?=\.gguf$)", gguf.name)
    label = f"{kind.group(1).upper() if kind else ''} GGUF".strip()
    work = ROOT / ".cache/bench"
    folders = {}
    for dtype in () if args.skip_folders else ("f32", "bf16"):
        d = work / f"smollm2-{dtype}"
        if not (d / "model.safetensors").exists():
            subprocess.run([args.binary, "convert", str(gguf), str(d), "--dtype", dtype], check=True)
        folders[dtype] = d

    rows = []
    def add(name, peer_name, ours, peer):
        rows.append({"case": name, "peer": peer_name, "vibecheck": ours, "peer_figures": peer})

    p, n = args.prompt_tokens, args.decode_tokens
    for threads in (1, 2):
        ours = vibecheck(args.binary, gguf, threads, p, n)
        peer = None if args.skip_llama_cpp else llama_cpp(gguf, threads, p, n)
        add(f"{label}, {threads} thread(s)", "llama.cpp", ours, peer)
    # A long chat: a 1 900-token context (prefill of the whole prompt, then decoding against its KV cache).
    if args.long_prompt_tokens > 0:
        ours = vibecheck(args.binary, gguf, 2, args.long_prompt_tokens, n)
        peer = None if args.skip_llama_cpp else llama_cpp(gguf, 2, args.long_prompt_tokens, n)
        add(f"{label}, 2 thr, {args.long_prompt_tokens}-tok ctx", "llama.cpp", ours, peer)
        # The same with our cache in float16, as llama.cpp keeps its own by default.
        ours = vibecheck(args.binary, gguf, 2, args.long_prompt_tokens, n, ["--kv-cache", "f16"])
        add(f"{label}, 2 thr, {args.long_prompt_tokens}-tok ctx, f16 KV", "llama.cpp", ours, peer)
    if folders:
        ours = vibecheck(args.binary, folders["f32"], 2, p, n)
        peer = None if args.skip_transformers else transformers_run(folders["f32"], 2, p, n)
        add("f32 folder, 2 threads", "transformers", ours, peer)
        ours_bf16 = vibecheck(args.binary, folders["bf16"], 2, p, n)
        add("bf16 folder, 2 threads", "our f32 twin", ours_bf16, ours)

    print(f"{'case':40} {'metric':14} {'vibecheck':>10} {'peer':>10} {'ratio':>7}  peer")
    for r in rows:
        for metric, key in (("load s", "load_s"), ("prefill tok/s", "prefill"), ("decode tok/s", "decode")):
            ours = r["vibecheck"][key]
            peer = r["peer_figures"][key] if r["peer_figures"] else None
            ratio = "" if peer is None else (f"{peer / ours:.2f}x" if key == "load_s" else f"{ours / peer:.2f}x")
            peer_s = "" if peer is None else f"{peer:10.2f}"
            print(f"{r['case']:40} {metric:14} {ours:10.2f} {peer_s:>10} {ratio:>7}  {r['peer']}")
    print("(ratio: vibecheck ÷ peer for speeds, peer ÷ vibecheck for load time; >1 means vibecheck is better)")
    out = ROOT / "bench-results"
    out.mkdir(exist_ok=True)
    (out / "engine.json").write_text(json.dumps({"rows": rows, "cpu_count": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
