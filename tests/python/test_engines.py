"""Engines vibecheck launches, through the real binary: llama.cpp's real `llama-server` (built natively by
scripts/fetch-llama-server.sh) served and chatted with through the official `openai` client, killed mid-stream, and
stopped with vibecheck; vLLM's and SGLang's command lines and weight swaps against a protocol STAND-IN
(standin_engine.py: no GPU here, so no real vLLM or SGLang); `cost` end to end on the real model; `deploy` files
parsed by real parsers."""
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import threading
import time

import httpx
import openai
import pytest
import yaml
from openai import OpenAI

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("VIBECHECK_BIN", str(ROOT / "target/debug/vibecheck"))
GGUF = pathlib.Path(os.environ.get("VIBECHECK_MODEL_CACHE") or ROOT / ".cache/models") / "SmolLM2-135M-Instruct.Q4_1.gguf"
STANDIN = str(ROOT / "tests/python/standin_engine.py")
LLAMA_SERVER = os.environ.get("VIBECHECK_LLAMA_SERVER", "")


def llama_server():
    if LLAMA_SERVER and os.access(LLAMA_SERVER, os.X_OK):
        return LLAMA_SERVER
    if os.environ.get("CI"):
        pytest.fail("VIBECHECK_LLAMA_SERVER is not set: scripts/test.sh builds llama-server with "
                    "scripts/fetch-llama-server.sh")
    pytest.skip("llama-server not built: run scripts/fetch-llama-server.sh and set VIBECHECK_LLAMA_SERVER")


class Served:
    """`vibecheck serve ...` as a child, its stderr collected as it comes."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([BINARY, "serve", *args, "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.err = []
        threading.Thread(target=lambda: [self.err.append(l) for l in self.proc.stderr], daemon=True).start()
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.stderr()
        self.root = self.url.removesuffix("/v1")

    def stderr(self):
        time.sleep(0.2)
        return "".join(self.err)

    def engine_pid(self):
        m = re.search(r"is ready at \S+ \(pid (\d+)\)", self.stderr())
        assert m, self.stderr()
        return int(m.group(1))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def group_alive(pgid):
    """Processes still in the process group `pgid`."""
    alive = []
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(int(d.name))
    return alive


def test_llama_server_is_launched_chatted_with_killed_mid_stream_and_stopped():
    bin = llama_server()
    s = Served(str(GGUF), "--engine", "llama-server", "--engine-bin", bin, "--shutdown-grace", "5")
    try:
        pid = s.engine_pid()
        assert "[llama-server]" in s.stderr(), "the engine's log is relayed with its name"
        client = OpenAI(base_url=s.url, api_key="unused")
        [m] = client.models.list().data
        assert m.id == "SmolLM2-135M-Instruct.Q4_1.gguf", "the id vibecheck's own engine serves the file under"
        listed = httpx.get(s.url + "/models").json()["data"][0]
        assert (listed["format"], listed["status"]) == ("llama-server", "available"), listed
        reply = client.chat.completions.create(model=m.id, temperature=0, max_tokens=12,
                                               messages=[{"role": "user", "content": "What is the capital of France?"}])
        assert reply.choices[0].message.content and reply.usage.completion_tokens >= 1
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model=m.id, temperature=0, max_tokens=12, stream=True,
            messages=[{"role": "user", "content": "What is the capital of France?"}]) if c.choices]
        assert "".join(pieces) == reply.choices[0].message.content
        assert httpx.get(s.root + "/health", timeout=60).status_code == 200

        # Killed mid-stream: the stream ends in an error, vibecheck stays up and says so everywhere.
        stream = client.chat.completions.create(model=m.id, max_tokens=2000, stream=True, temperature=0,
                                                messages=[{"role": "user", "content": "Write a very long story."}])
        got = []
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            for chunk in stream:
                got.append(chunk)
                if len(got) == 3:
                    os.kill(pid, signal.SIGKILL)
        assert len(got) >= 3
        time.sleep(0.5)
        listed = httpx.get(s.url + "/models").json()["data"][0]
        assert listed["status"] == "failed" and "exited" in listed["reason"], listed
        time.sleep(2.1)  # past the health answer's reuse window (HEALTH_TTL)
        health = httpx.get(s.root + "/health", timeout=60)
        assert health.status_code == 503 and "exited" in health.text, health.text
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model=m.id, max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
        assert e.value.status_code == 503 and "killed by signal 9" in str(e.value)
        assert s.proc.poll() is None, "vibecheck stays up"
        assert not group_alive(pid)
    finally:
        assert s.stop() == 0, s.stderr()

    # Stopped with vibecheck: SIGTERM to vibecheck stops the engine's whole group, and nothing is left.
    s = Served(str(GGUF), "--engine", "llama-server", "--engine-bin", bin)
    pid = s.engine_pid()
    assert group_alive(pid)
    assert s.stop() == 0, s.stderr()
    assert not group_alive(pid), "an orphan engine process is left"


def test_dry_runs_print_each_engines_documented_command(tmp_path):
    ckpt = tmp_path / "big-ckpt"
    shutil.copytree(ROOT / "tests/fixtures/torch/llama-bin", ckpt)

    def dry(*args):
        r = subprocess.run([BINARY, "serve", str(ckpt), "--dry-run", *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    vllm = dry("--engine", "vllm", "--tensor-parallel", "8", "--max-model-len", "8192", "--engine-arg=--enforce-eager")
    assert vllm.startswith(f"vllm serve {ckpt} --served-model-name big-ckpt --host 127.0.0.1 --port "), vllm
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 1 --max-model-len 8192 --enforce-eager" in vllm
    assert '--api-key "$VIBECHECK_ENGINE_KEY"' in vllm
    ray = dry("--engine", "vllm", "--tensor-parallel", "8", "--pipeline-parallel", "2", "--ray-address", "10.0.0.1:6379")
    assert ray.startswith("RAY_ADDRESS=10.0.0.1:6379 vllm serve") and "--distributed-executor-backend ray" in ray
    sg = dry("--engine", "sglang", "--tensor-parallel", "16", "--nnodes", "2", "--node-rank", "1",
             "--dist-init-addr", "10.0.0.1:5000", "--gpus", "0,1,2,3,4,5,6,7")
    assert sg.startswith("CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 python3 -m sglang.launch_server --model-path"), sg
    assert "--tp-size 16 --pp-size 1 --nnodes 2 --node-rank 1 --dist-init-addr 10.0.0.1:5000" in sg
    # Each command parses with the stand-in's table of documented flags.
    plain = dry("--engine", "vllm", "--tensor-parallel", "8", "--max-model-len", "8192")
    for line, engine in ((plain, "vllm"), (sg, "sglang")):
        words = line.split()
        start = words.index("serve") if engine == "vllm" else words.index("-m")
        port = words[words.index("--port") + 1]
        probe = subprocess.run(["python3", "-c", f"import sys; sys.argv = ['x'] + {words[start:]!r}; "
                                f"sys.path.insert(0, {str(ROOT / 'tests/python')!r}); import standin_engine as s; "
                                "print(s.parse(sys.argv[1:])[0])"], capture_output=True, text=True)
        assert probe.stdout.strip() == engine, probe.stderr + port
    # --engine auto: what vibecheck's engine loads and fits stays here; what it cannot load goes to vLLM, with why.
    r = subprocess.run([BINARY, "serve", str(ckpt), "--engine", "auto", "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 1 and "--engine auto: vibecheck's own engine, because" in r.stderr, r.stderr
    assert "none to print" in r.stderr
    odd = tmp_path / "odd-arch"
    shutil.copytree(ckpt, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "mamba", ["MambaForCausalLM"]
    (odd / "config.json").write_text(json.dumps(cfg))
    r = subprocess.run([BINARY, "serve", str(odd), "--engine", "auto", "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 0 and "--engine auto: vLLM, because vibecheck's engine cannot load" in r.stderr, r.stderr
    assert r.stdout.startswith(f"vllm serve {odd} ")
    r = subprocess.run([BINARY, "serve", str(ckpt), "--engine", "auto", "--tensor-parallel", "2", "--dry-run"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "vLLM, because parallelism" in r.stderr, r.stderr
    for args, needle in [
        (("--engine", "vllm", "--tensor-parallel", "8", "--gpus", "0,1"), "needs 8 GPUs"),
        (("--engine", "llama-server"), "reads one .gguf file"),
        (("--engine", "vllm", "--engine-arg=--port=9"), "vibecheck picks a free loopback port"),
        (("--engine", "sglang", "--ray-address", "h:1"), "--ray-address is vLLM's"),
        (("--engine", "tgi"), "unknown engine"),
    ]:
        r = subprocess.run([BINARY, "serve", str(ckpt), "--dry-run", *args], capture_output=True, text=True)
        assert r.returncode == 1 and needle in r.stderr, (args, r.stderr)


def make_run(tmp_path, refuse_last=True):
    run = tmp_path / "big-run"
    for step in (100, 200, 300):
        ckpt = run / f"checkpoint-{step}"
        shutil.copytree(ROOT / "tests/fixtures/torch/llama-bin", ckpt)
        cfg = json.loads((ckpt / "config.json").read_text())
        cfg["standin_step"] = step
        if refuse_last and step == 300:
            cfg["standin_refuse"] = True
        (ckpt / "config.json").write_text(json.dumps(cfg))
    return run


@pytest.mark.parametrize("engine,swap", [("sglang", "update_weights_from_disk"),
                                         ("vllm", "collective_rpc:reload_weights")])
def test_watch_on_an_engine_swaps_each_checkpoint_in_and_records_how(tmp_path, engine, swap):
    run = make_run(tmp_path)
    db = tmp_path / "v.db"
    r = subprocess.run([BINARY, "watch", str(run), "--once", "--db", str(db), "--max-tokens", "8",
                        "--engine", engine, "--engine-bin", STANDIN], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "2 checkpoints answered; 1 skipped (checkpoint-300)" in r.stderr, r.stderr
    assert f"[{engine}] stand-in {engine} starting on {run / 'checkpoint-100'}" in r.stderr, "started once, on the first"
    assert r.stderr.count("stand-in starting") == 0 and r.stderr.count(f"stand-in {engine} starting") == 1, r.stderr
    assert "checkpoint-300: skipped: swapping" in r.stderr and "failed" in r.stderr, r.stderr
    out = subprocess.run([BINARY, "export", "--db", str(db)], capture_output=True, text=True, check=True).stdout
    answers = [json.loads(l) for l in out.splitlines()]
    by_ckpt = {}
    for a in answers:
        by_ckpt.setdefault(a["checkpoint"], []).append(a)
    assert set(by_ckpt) == {"checkpoint-100", "checkpoint-200"}
    for name, how in (("checkpoint-100", "launch"), ("checkpoint-200", swap)):
        for a in by_ckpt[name]:
            e = json.loads(a["params"])["engine"]
            assert (e["name"], e["swap"], e["weight_version"]) == (engine, how, name), e
            assert e["version"] == f"stand-in-{engine}"
            # The probe's greedy answer shows which weights served it; the answers came from the same weights.
            assert f"[{name}:" in e["probe"]["answer"] and a["text"].startswith(f"[{name}:"), (e, a["text"])
    # The refused checkpoint is recorded as failed with its reason; nothing else is lost.
    log = subprocess.run([BINARY, "log", "big-run", "--db", str(db)], capture_output=True, text=True)
    assert "checkpoint-300" in log.stdout + log.stderr, log
    # Nothing is left running.
    assert subprocess.run(["pgrep", "-f", "standin_engine"], capture_output=True).returncode == 1


def test_cost_measures_the_real_model_and_prices_it_beside_hosted_apis(tmp_path):
    db = tmp_path / "cost.db"
    r = subprocess.run([BINARY, "cost", str(GGUF), "--max-concurrency", "2", "--input-tokens", "96",
                        "--output-tokens", "24", "--price-per-hour", "0.50", "--latency", "p99-ttft=20s,itl=2s",
                        "--json", "--db", str(db)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert [l["concurrency"] for l in rep["levels"]] == [1, 2]
    assert rep["chosen"] == 2 and all(l["meets_target"] and l["failed"] == 0 for l in rep["levels"])
    best = rep["levels"][-1]
    # The chosen level respects the target, and every figure follows from the measured rate and the price.
    assert best["ttft_p99_s"] <= 20 and best["itl_p99_s"] <= 2
    assert best["output_tokens"] == 24 * best["requests"], "ignore_eos: every answer is as long as asked"
    assert best["engine_counters"] == "vibecheck" and abs(best["engine_output_tok_s"] - best["output_tok_s"]) < 0.1 * best["output_tok_s"] + 1
    assert 5 < rep["output_tok_s"] < 5000, rep["output_tok_s"]
    assert abs(rep["usd_per_1m_output"] - 0.50 / (rep["output_tok_s"] * 3600) * 1e6) < 1e-9
    assert rep["usd_per_1m_blended"] < rep["usd_per_1m_output"]
    mini = next(a for a in rep["apis"] if a["name"] == "gpt-4o-mini")
    assert mini["checked_on"] == "2026-05-07" and mini["source"].startswith("https://")
    per_request = (best["prompt_tokens"] / best["requests"] * 0.15 + 24 * 0.60) / 1e6
    assert abs(mini["breakeven_requests_per_day"] - 0.50 * 24 / per_request) < 1e-6 * mini["breakeven_requests_per_day"]
    # Stored, and shown on the /cost page with the table's dates.
    (tmp_path / "norun").mkdir()
    w = subprocess.Popen([BINARY, "watch", str(tmp_path / "norun"), "--db", str(db), "--serve", "--port", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        page = httpx.get(w.stdout.readline().strip() + "cost", timeout=30)
        assert page.status_code == 200
        assert "At concurrency <b>2</b>" in page.text and "$ per 1M output tokens by concurrency" in page.text
        assert "2026-05-07" in page.text and "gpt-4o-mini" in page.text and "<svg" in page.text
    finally:
        w.terminate()
        w.wait(timeout=30)
    text = subprocess.run([BINARY, "cost", str(GGUF), "--max-concurrency", "1", "--output-tokens", "8",
                           "--input-tokens", "32", "--latency", "ttft=20s"], capture_output=True, text=True,
                          timeout=300)
    assert text.returncode == 0, text.stderr
    assert "per 1M output tokens" in text.stdout and "2026-05-07" in text.stdout and "this machine" in text.stdout


def test_a_target_no_load_meets_fails_with_its_reason():
    r = subprocess.run([BINARY, "cost", str(GGUF), "--max-concurrency", "1", "--output-tokens", "8",
                        "--input-tokens", "32", "--latency", "p50-ttft=1ms"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "no load met the target" in r.stderr, r.stderr


def test_cost_of_a_launched_llama_server_reads_its_prometheus_counters():
    bin = llama_server()
    r = subprocess.run([BINARY, "cost", str(GGUF), "--engine", "llama-server", "--engine-bin", bin,
                        "--max-concurrency", "1", "--output-tokens", "16", "--input-tokens", "64",
                        "--gpu", "L4-24GB", "--latency", "ttft=20s,itl=2s", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    level = rep["levels"][0]
    assert level["engine_counters"] == "llama.cpp" and level["engine_output_tok_s"] > 0, level
    assert rep["hardware"].startswith("1 × L4-24GB (Modal") and rep["price_checked_on"] == "2026-05-07"
    assert subprocess.run(["pgrep", "-f", "llama-server"], capture_output=True).returncode == 1


def test_deploy_writes_files_their_tools_parse(tmp_path):
    def deploy(*args):
        r = subprocess.run([BINARY, "deploy", "meta-llama/Llama-3.1-70B-Instruct", *args], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        return r.stdout

    sky = yaml.safe_load(deploy("--target", "skypilot", "--engine", "vllm", "--tensor-parallel", "8",
                                "--accelerator", "H100", "--price-gpu", "H100-80GB-SXM"))
    assert sky["resources"]["accelerators"] == "H100:8" and sky["num_nodes"] == 1
    assert "vllm serve meta-llama/Llama-3.1-70B-Instruct" in sky["run"] and "--tensor-parallel-size 8" in sky["run"]
    text = deploy("--target", "skypilot", "--tensor-parallel", "8", "--price-gpu", "H100-80GB-SXM")
    assert re.search(r"# Cost: 8 × H100-80GB-SXM at \$[0-9.]+/GPU-hour \(.*checked 2026-\d\d-\d\d\)", text), text

    script = tmp_path / "demo.sbatch"
    subprocess.run([BINARY, "deploy", "meta-llama/Llama-3.1-70B-Instruct", "--target", "slurm", "--nodes", "2",
                    "--tensor-parallel", "8", "--pipeline-parallel", "2", "--out", str(script)], check=True,
                   capture_output=True)
    body = script.read_text()
    assert "#SBATCH --nodes=2" in body and "#SBATCH --gpus-per-node=8" in body
    assert "ray start --head" in body and "--distributed-executor-backend ray" in body
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0

    helm = yaml.safe_load(deploy("--target", "k8s", "--tensor-parallel", "4"))
    spec = helm["servingEngineSpec"]["modelSpec"][0]
    assert spec["modelURL"] == "meta-llama/Llama-3.1-70B-Instruct" and spec["requestGPU"] == 4
    assert spec["vllmConfig"]["extraArgs"][:2] == ["--tensor-parallel-size", "4"]
    r = subprocess.run([BINARY, "deploy", "x", "--target", "k8s", "--engine", "sglang"], capture_output=True, text=True)
    assert r.returncode == 1 and "production-stack" in r.stderr
