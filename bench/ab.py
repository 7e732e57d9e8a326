#!/usr/bin/env python3
"""Two vibecheck binaries' `bench` figures, interleaved (A B A B ...) on one model: prefill, decode and (with
`--batch N`) batched decode tokens/s, with the CPU time other processes used during each run. Medians are taken over
the rounds in which others used less than --quiet CPU seconds (all rounds if none was that quiet).

Usage: bench/ab.py BASELINE_BIN CANDIDATE_BIN [--model FILE] [--rounds 6] [--quiet 1.0] -- [bench args...]
Example: bench/ab.py old/vibecheck target/release/vibecheck -- --threads 1 --batch 4
"""
import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys

from cpu import children_s, machine_busy_s

ROOT = pathlib.Path(__file__).resolve().parent.parent
GGUF = pathlib.Path(os.environ.get("VIBECHECK_MODEL_CACHE") or ROOT / ".cache/models") / "SmolLM2-135M-Instruct.Q4_1.gguf"




def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("baseline")
    ap.add_argument("candidate")
    ap.add_argument("--model", default=str(GGUF))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--quiet", type=float, default=1.0)
    argv = sys.argv[1:]
    # Everything after `--` goes to `vibecheck bench` as is.
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    a.bench_args = argv[cut + 1 :]
    runs = {"baseline": [], "candidate": []}
    for i in range(a.rounds):
        for name in runs:
            binary = getattr(a, name)
            busy, kids = machine_busy_s(), children_s()
            out = subprocess.run([binary, "bench", a.model, "--json", *a.bench_args],
                                 capture_output=True, text=True, check=True).stdout
            other = (machine_busy_s() - busy) - (children_s() - kids)
            r = json.loads(out)
            figures = {"prefill": r["prefill_tok_s"], "decode": r["decode_tok_s"]}
            if r.get("batch_decode_tok_s"):
                figures[f"batch {r['batch']} decode"] = r["batch_decode_tok_s"]
            runs[name].append((other, figures))
            print(f"round {i + 1} {name}: others {other:.1f} CPU s, "
                  + ", ".join(f"{k} {v:.1f}" for k, v in figures.items()), flush=True)
    print(f"{'tok/s (median of quiet rounds)':32} {'baseline':>10} {'candidate':>10} {'cand/base':>10}")
    medians = {}
    for name, rs in runs.items():
        quiet = [f for o, f in rs if o < a.quiet] or [f for _, f in rs]
        medians[name] = ({k: statistics.median(f[k] for f in quiet) for k in quiet[0]}, len(quiet))
    for k in medians["baseline"][0]:
        b, c = medians["baseline"][0][k], medians["candidate"][0][k]
        print(f"{k:32} {b:10.1f} {c:10.1f} {c / b:10.2f}")
    print(f"quiet rounds: baseline {medians['baseline'][1]}, candidate {medians['candidate'][1]} of {a.rounds}")


if __name__ == "__main__":
    main()
