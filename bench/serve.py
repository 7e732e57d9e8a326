#!/usr/bin/env python3
"""Serve benchmark: `vibecheck serve` against llama-cpp-python's OpenAI server on the same GGUF and threads.

1. Start to first token: from launching the server process to the first streamed token of the first chat request.
2. Aggregate throughput: 8 concurrent streaming chats of up to 128 tokens, completion tokens per second of wall time.

Peers: llama-cpp-python's server (`python -m llama_cpp.server --interrupt_requests False`, one request at a time;
needs `pip install "llama-cpp-python[server]"`), and with `--llama-server PATH` llama.cpp's own `llama-server` with
`--parallel 8` (continuous batching across the 8 streams), the stronger peer. Build it from the llama.cpp sources
(for example the copy vendored in the llama-cpp-python sdist): `cmake -B build -DLLAMA_CURL=OFF && cmake --build
build --target llama-server`. Needs `pip install httpx`.
"""
import argparse
import concurrent.futures
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_token(base, model, started):
    body = {"model": model, "messages": PROMPT, "max_tokens": 8, "stream": True, "temperature": 0}
    while True:
        try:
            with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"content"' in line and '"content": ""' not in line \
                            and '"content":""' not in line:
                        return time.perf_counter() - started
        except httpx.TransportError:
            pass
        # Not listening yet, or still loading (llama-server answers 503 until the model is in).
        time.sleep(0.01)


def one_stream(base, model):
    try:
        return one_stream_inner(base, model)
    except httpx.HTTPError as e:
        print(f"stream failed: {e}", file=sys.stderr)
        return 0


def one_stream_inner(base, model):
    body = {"model": model, "messages": PROMPT, "max_tokens": 128, "stream": True, "temperature": 0,
            "stream_options": {"include_usage": True}}
    deltas, usage = 0, None
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                    deltas += 1
    # The server's own token count when it reports one, else one token per streamed piece.
    return usage if usage is not None else deltas


def run(name, cmd, model, port):
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        ttft = first_token(base, model, started)
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            counts = list(pool.map(lambda _: one_stream(base, model), range(8)))
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"engine": name, "start_to_first_token_s": ttft, "streams": 8, "tokens": sum(counts),
            "aggregate_tok_s": sum(counts) / wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", default=str(ROOT / "target/release/vibecheck"))
    ap.add_argument("--gguf", default=str(ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--llama-server", help="path to llama.cpp's llama-server binary (adds it as a peer)")
    ap.add_argument("--skip-llama-cpp-python", action="store_true")
    args = ap.parse_args()
    name = pathlib.Path(args.gguf).name
    p1 = free_port()
    ours = run("vibecheck", [args.binary, "serve", args.gguf, "--port", str(p1), "--max-concurrent", "8"], name, p1)
    p2 = free_port()
    peers = []
    if not args.skip_llama_cpp_python:
        peers.append(run("llama-cpp-python server",
                         [sys.executable, "-m", "llama_cpp.server", "--model", args.gguf, "--port", str(p2),
                          "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads), "--n_ctx", "2048",
                          "--interrupt_requests", "False"], args.gguf, p2))
    if args.llama_server:
        p3 = free_port()
        # 8 slots of 512 tokens each: room for the prompt and 128 new tokens per stream.
        peers.append(run("llama-server --parallel 8",
                         [args.llama_server, "-m", args.gguf, "--port", str(p3), "--host", "127.0.0.1",
                          "--threads", str(args.threads), "--threads-batch", str(args.threads),
                          "--parallel", "8", "-c", "4096"], name, p3))
    for r in [ours] + peers:
        print(json.dumps(r))
    for peer in peers:
        print(f"start to first token: vibecheck {ours['start_to_first_token_s']:.2f} s, {peer['engine']} "
              f"{peer['start_to_first_token_s']:.2f} s, ratio {peer['start_to_first_token_s'] / ours['start_to_first_token_s']:.2f}x")
        print(f"8-stream throughput: vibecheck {ours['aggregate_tok_s']:.1f} tok/s, {peer['engine']} "
              f"{peer['aggregate_tok_s']:.1f} tok/s, ratio {ours['aggregate_tok_s'] / peer['aggregate_tok_s']:.2f}x")


if __name__ == "__main__":
    main()
