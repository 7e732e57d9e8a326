#!/usr/bin/env python3
"""What the hardening costs: two vibecheck binaries (a baseline and a candidate) measured in the same run, rounds
interleaved (A B A B ...), medians and ratios printed.

1. `vibecheck bench --json` on the GGUF and on a bf16 safetensors folder (converted from it): load time, prefill
   and decode speed, peak resident memory. Loading reads tensors with pread instead of mapping them.
2. `vibecheck serve`: time to the first token of a ~1 900-token prompt and of a short one sent alone, through the
   API (the batcher now prefills in chunks of 512 when idle and probes the client between chunks).

Usage: bench/hardening.py BASELINE_BIN CANDIDATE_BIN [--rounds 3]. Needs httpx and the fixture model
(scripts/fetch-model.sh). Other processes' CPU time during each round is printed; compare only quiet rounds.
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

from cpu import children_s, machine_busy_s

ROOT = pathlib.Path(__file__).resolve().parent.parent
GGUF = pathlib.Path(os.environ.get("VIBECHECK_MODEL_CACHE") or ROOT / ".cache/models") / "SmolLM2-135M-Instruct.Q4_1.gguf"
LONG = "Summarise this: " + "The keeper climbed the stairs every night to light the lamp. " * 160




def bench(binary, model):
    out = subprocess.run([binary, "bench", str(model), "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def first_token_s(url, content):
    body = {"model": "m", "messages": [{"role": "user", "content": content}], "max_tokens": 1, "stream": True}
    models = httpx.get(url + "/v1/models", timeout=60).json()["data"]
    body["model"] = models[0]["id"]
    started = time.perf_counter()
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                return time.perf_counter() - started
    raise RuntimeError("no token came")


def serve_round(binary):
    proc = subprocess.Popen([binary, "serve", str(GGUF), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip().removesuffix("/v1")
        first_token_s(url, "Hi")  # loads the model
        return first_token_s(url, LONG), first_token_s(url, "What is the capital of France?")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("baseline")
    ap.add_argument("candidate")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp())
    folder = tmp / "bf16"
    subprocess.run([a.candidate, "convert", str(GGUF), str(folder), "--dtype", "bf16"], check=True,
                   capture_output=True)
    results = {name: {} for name in ("baseline", "candidate")}
    for r in range(a.rounds):
        for name, binary in (("baseline", a.baseline), ("candidate", a.candidate)):
            before = machine_busy_s() - children_s()
            row = results[name]
            for label, model in (("gguf", GGUF), ("bf16", folder)):
                b = bench(binary, model)
                for k in ("load_s", "prefill_tok_s", "decode_tok_s", "peak_resident_mib"):
                    row.setdefault(f"{label} {k}", []).append(b[k])
            long_s, short_s = serve_round(binary)
            row.setdefault("serve 1900-token prompt, first token s", []).append(long_s)
            row.setdefault("serve short prompt, first token s", []).append(short_s)
            # The servers' CPU time counts once they are waited for, so "others" is what no process of ours used.
            others = machine_busy_s() - children_s() - before
            print(f"round {r + 1} {name}: other processes used {others:.1f} CPU s", file=sys.stderr)
    print(f"{'measure':42} {'baseline':>10} {'candidate':>10} {'cand/base':>10}")
    for key in results["baseline"]:
        base = statistics.median(results["baseline"][key])
        cand = statistics.median(results["candidate"][key])
        print(f"{key:42} {base:10.3f} {cand:10.3f} {cand / base:10.2f}")


if __name__ == "__main__":
    main()
