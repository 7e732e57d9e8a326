"""`vibecheck export` read back by real parsers: Python's json and csv modules, and alpaca_eval's
model_outputs.json shape (a list of {instruction, output, generator})."""
import csv
import io
import json
import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("VIBECHECK_BIN", str(ROOT / "target/debug/vibecheck"))


def reference_dir():
    env = os.environ.get("VIBECHECK_REFERENCE_DIR")
    if env:
        return pathlib.Path(env)
    for parent in ROOT.parents:
        candidate = parent / "shared/reference"
        if candidate.is_dir():
            return candidate
    pytest.fail("shared/reference not found; set VIBECHECK_REFERENCE_DIR")


SUITE = r"""
name = "export test"
[defaults]
max_tokens = 8
[[prompts]]
id = "quote"
prompt = "Say \"hello, world\"\nand stop."
[[prompts]]
id = "two"
turns = ["first", "second"]
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    run = tmp / "tiny-run"
    for step in (10, 20):
        shutil.copytree(reference_dir() / "tiny/llama", run / f"checkpoint-{step}")
    (tmp / "suite.toml").write_text(SUITE)
    db = tmp / "v.db"
    subprocess.run([BINARY, "watch", str(run), "--prompts", str(tmp / "suite.toml"), "--db", str(db), "--once",
                    "--poll", "0.1", "--samples", "1"], check=True, capture_output=True)
    return db


def export(db, fmt):
    return subprocess.run([BINARY, "export", "--db", str(db), "--format", fmt], check=True, capture_output=True,
                          text=True).stdout


def test_jsonl_has_every_answer_with_its_reproducibility_fields(store):
    rows = [json.loads(line) for line in export(store, "jsonl").splitlines()]
    # 2 checkpoints x (greedy + 1 sample) x (1 + 2 turns)
    assert len(rows) == 12
    for field in ("run", "checkpoint", "checkpoint_path", "step", "checkpoint_hash", "suite_hash", "prompt_id",
                  "turn", "text", "params", "seed", "template_hash", "vibecheck_version", "prompt_tokens",
                  "completion_tokens", "prefill_ms", "decode_ms", "created"):
        assert field in rows[0], field
    assert {r["step"] for r in rows} == {10, 20}
    assert {(r["sample"], r["seed"]) for r in rows} == {(0, None), (1, 1)}


def test_csv_reads_back_with_quotes_commas_and_newlines_intact(store):
    text = export(store, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    as_json = [json.loads(line) for line in export(store, "jsonl").splitlines()]
    assert len(rows) == len(as_json)
    assert [r["text"] for r in rows] == [r["text"] for r in as_json]
    assert [r["params"] for r in rows] == [r["params"] for r in as_json]


def test_alpaca_eval_outputs_one_generator_per_checkpoint(store):
    outputs = json.loads(export(store, "alpaca-eval"))
    assert {o["generator"] for o in outputs} == {"tiny-run/checkpoint-10", "tiny-run/checkpoint-20"}
    assert all(set(o) >= {"instruction", "output", "generator"} for o in outputs)
    # First turns of the greedy answers only: 2 prompts per checkpoint.
    assert len(outputs) == 4
    assert 'Say "hello, world"\nand stop.' in {o["instruction"] for o in outputs}
