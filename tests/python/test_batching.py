"""Continuous batching seen from the official `openai` client: concurrent streams against `vibecheck serve` of the
real SmolLM2 model share one running batch (the server's /metrics says how full it was), each answer equals the
answer the same request gets alone, and a request arriving mid-stream joins without disturbing the others."""
import concurrent.futures
import os
import pathlib
import re
import subprocess
import threading
import time

import httpx
import pytest
from openai import OpenAI

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = ["What is the capital of France?", "Name three fruits.", "Write a haiku about rain.",
             "What is 12 times 12?", "Give me a tip for sleeping well.", "Who wrote Hamlet?"]


@pytest.fixture(scope="module")
def server():
    binary = os.environ.get("VIBECHECK_BIN", str(ROOT / "target/debug/vibecheck"))
    gguf = pathlib.Path(os.environ.get("VIBECHECK_MODEL_CACHE") or ROOT / ".cache/models") / MODEL
    proc = subprocess.Popen([binary, "serve", str(gguf), "--port", "0", "--max-concurrent", "8"],
                            stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    yield url
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def metrics(url):
    text = httpx.get(url.removesuffix("/v1") + "/metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(vibecheck_batch_\w+) (\S+)$", text, re.M)}


def ask(client, question, max_tokens=32, stream=True):
    messages = [{"role": "user", "content": question}]
    if not stream:
        r = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens)
        return r.choices[0].message.content, []
    pieces, times = [], []
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                                max_tokens=max_tokens, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            times.append(time.monotonic())
    return "".join(pieces), times


def test_concurrent_streams_share_a_batch_and_answer_as_alone(server):
    client = OpenAI(base_url=server, api_key="unused")
    alone = [ask(client, q, stream=False)[0] for q in QUESTIONS]
    assert "Paris" in alone[0]
    before = metrics(server)
    assert before["vibecheck_batch_largest"] == 1, before  # one request at a time so far
    with concurrent.futures.ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: ask(client, q)[0], QUESTIONS))
    assert together == alone
    after = metrics(server)
    steps = after["vibecheck_batch_steps_total"] - before["vibecheck_batch_steps_total"]
    tokens = after["vibecheck_batch_tokens_total"] - before["vibecheck_batch_tokens_total"]
    assert after["vibecheck_batch_largest"] >= 4, after
    assert tokens / steps > 2.5, f"mean batch {tokens / steps:.2f}"


def test_a_request_joins_a_running_stream(server):
    client = OpenAI(base_url=server, api_key="unused")
    long_q = "Tell me a long story about a lighthouse keeper."
    alone_long = ask(client, long_q, max_tokens=96, stream=False)[0]
    alone_short = ask(client, QUESTIONS[5], stream=False)[0]
    result = {}
    steps0 = metrics(server)["vibecheck_batch_steps_total"]
    t = threading.Thread(target=lambda: result.update(long=ask(client, long_q, max_tokens=96)))
    t.start()
    deadline = time.monotonic() + 60
    while metrics(server)["vibecheck_batch_steps_total"] < steps0 + 5:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The long answer is streaming now.
    short_text, short_times = ask(client, QUESTIONS[5])
    t.join()
    long_text, long_times = result["long"]
    assert long_text == alone_long and short_text == alone_short
    assert short_times[0] > long_times[0] and short_times[-1] < long_times[-1], \
        "the short request ran inside the long one's stream"
