"""A training run as a trainer leaves it, through the real binary and the official `openai` client: LoRA adapter
checkpoints over the real SmolLM2 served and watched, and a DeepSpeed ZeRO checkpoint beside them listed with the
command that consolidates it, never left out."""
import json
import os
import pathlib
import shutil
import subprocess

import httpx
import openai
import pytest
from openai import OpenAI

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("VIBECHECK_BIN", str(ROOT / "target/debug/vibecheck"))
GGUF = pathlib.Path(os.environ.get("VIBECHECK_MODEL_CACHE") or ROOT / ".cache/models") / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trl")
    base = tmp / "smollm2-f32"
    subprocess.run([BINARY, "convert", str(GGUF), str(base)], check=True, capture_output=True)
    run = tmp / "sft-run"
    for step in (100, 300):
        ckpt = run / f"checkpoint-{step}"
        shutil.copytree(ROOT / "tests/fixtures/smollm2-lora", ckpt)
        cfg = json.loads((ckpt / "adapter_config.json").read_text())
        cfg["base_model_name_or_path"] = str(base)
        (ckpt / "adapter_config.json").write_text(json.dumps(cfg))
        (ckpt / "reference.json").unlink()
    zero = run / "checkpoint-200"
    (zero / "global_step200").mkdir(parents=True)
    shutil.copy(base / "config.json", zero / "config.json")
    (zero / "global_step200" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"x")
    (zero / "latest").write_text("global_step200")
    (zero / "zero_to_fp32.py").write_text("# DeepSpeed's script")
    return run


def test_a_lora_run_with_a_zero_checkpoint_is_served_and_listed(run):
    proc = subprocess.Popen([BINARY, "serve", str(run), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
        models = {m["id"]: m for m in httpx.get(url + "/models", timeout=30).json()["data"]}
        assert set(models) == {"sft-run/checkpoint-100", "sft-run/checkpoint-200", "sft-run/checkpoint-300"}
        assert models["sft-run/checkpoint-100"]["format"] == "lora"
        assert models["sft-run/checkpoint-100"]["status"] == "available"
        zero = models["sft-run/checkpoint-200"]
        assert zero["status"] == "unsupported" and "zero_to_fp32.py" in zero["reason"], zero

        client = OpenAI(base_url=url, api_key="unused")
        reply = client.chat.completions.create(model="sft-run/checkpoint-100", temperature=0, max_tokens=16,
                                               messages=[{"role": "user", "content": QUESTION}])
        text = reply.choices[0].message.content
        assert text and reply.usage.completion_tokens >= 1
        # The served adapter answers as `vibecheck generate` does on the same checkpoint.
        printed = subprocess.run([BINARY, "generate", str(run / "checkpoint-100"), "--prompt", QUESTION,
                                  "--max-tokens", "16"], capture_output=True, text=True, check=True).stdout
        assert printed == text + "\n"
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(model="sft-run/checkpoint-200", max_tokens=4,
                                           messages=[{"role": "user", "content": QUESTION}])
        assert e.value.status_code == 503 and "DeepSpeed ZeRO" in str(e.value)
        health = httpx.get(url.removesuffix("/v1") + "/health", timeout=120)
        assert health.status_code == 200, health.text
        assert [u["id"] for u in health.json()["unavailable"]] == ["sft-run/checkpoint-200"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_watching_it_answers_the_adapters_and_says_what_it_skipped(run, tmp_path):
    db = tmp_path / "v.db"
    r = subprocess.run([BINARY, "watch", str(run), "--once", "--db", str(db), "--max-tokens", "8"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "checkpoint-200: skipped" in r.stderr and "zero_to_fp32.py" in r.stderr, r.stderr
    assert "2 checkpoints answered; 1 skipped (checkpoint-200)" in r.stderr, r.stderr
    # The skipped checkpoint is in the store with its reason, so `log` and the timeline show it.
    log = subprocess.run([BINARY, "log", "sft-run", "--db", str(db)], capture_output=True, text=True, check=True)
    assert "failed to load checkpoint-200" in log.stdout, log.stdout
