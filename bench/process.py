#!/usr/bin/env python3
"""Whole-process benchmark: start, load the GGUF, a chat prompt, 128 generated tokens, exit — `vibecheck generate`
against llama.cpp's `llama-cli` (single turn), same file, same threads, several runs each, alternating. Reports
wall time, peak resident memory (from the kernel's accounting of each child, `wait4`) and peak private memory
(anonymous pages, sampled from /proc every 2 ms: resident memory also counts shared code and file pages).

Usage: python bench/process.py --llama-cli PATH/TO/llama-cli [--runs 5] [--threads 2]
"""
import argparse
import os
import pathlib
import statistics
import subprocess
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROMPT = "Write a short story about a robot who learns to paint, in three paragraphs."


def private_peak(pid, stop):
    """Largest private (anonymous) resident memory of a running process, in MiB, sampled every 2 ms from
    /proc/PID/status until `stop` is set (resident memory also counts the binary's code and mapped files' pages,
    which other processes share)."""
    peak = 0
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            break
        time.sleep(0.002)
    return peak / 1024


def timed(cmd, env=None):
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env)
    stop = threading.Event()
    anon = []
    sampler = threading.Thread(target=lambda: anon.append(private_peak(proc.pid, stop)))
    sampler.start()
    err = proc.stderr.read()
    stop.set()
    sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"{cmd[0]} failed: {err.decode(errors='replace')[-2000:]}")
    return wall, usage.ru_maxrss / 1024, anon[0], err.decode(errors="replace")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--binary", default=str(ROOT / "target/release/vibecheck"))
    ap.add_argument("--gguf", default=str(ROOT / ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--llama-cli", required=True)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    t = str(a.threads)
    ours = [a.binary, "generate", a.gguf, "--prompt", PROMPT, "--max-tokens", "128", "--ignore-eos", "--threads", t]
    lib = str(pathlib.Path(a.llama_cli).parent)
    env = dict(os.environ, LD_LIBRARY_PATH=lib + ":" + os.environ.get("LD_LIBRARY_PATH", ""))
    peer = [a.llama_cli, "-m", a.gguf, "-p", PROMPT, "-n", "128", "--ignore-eos", "-t", t, "-tb", t, "-st",
            "--simple-io", "-c", "1024"]
    results = {"vibecheck": [], "llama-cli": []}
    for i in range(a.runs + 1):  # the first round warms the page cache and is not counted
        for name, cmd, e in (("vibecheck", ours, None), ("llama-cli", peer, env)):
            wall, rss, anon, err = timed(cmd, e)
            if i > 0:
                results[name].append((wall, rss, anon))
            if i == 1 and name == "vibecheck":
                print("vibecheck:", err.strip().splitlines()[-1])
    for name, rows in results.items():
        walls = [w for w, _, _ in rows]
        print(f"{name:10} wall median {statistics.median(walls):.2f} s (min {min(walls):.2f}, max {max(walls):.2f}), "
              f"peak RSS {max(r for _, r, _ in rows):.0f} MiB, peak private {max(a for _, _, a in rows):.0f} MiB")
    ratio = (statistics.median(w for w, _, _ in results["llama-cli"])
             / statistics.median(w for w, _, _ in results["vibecheck"]))
    print(f"llama-cli time / vibecheck time: {ratio:.2f}x (>1: vibecheck finishes sooner)")


if __name__ == "__main__":
    main()
