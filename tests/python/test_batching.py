"""Continuous batching seen from the official `openai` client: concurrent streams against `vibecheck serve` of the
real SmolLM2 model share one running batch (the server's /metrics says how full it was), each answer agrees with
the answer the same request gets alone (identical, or the same until a late rounding-level near-tie), and a
request arriving mid-stream joins without disturbing the others."""
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


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def assert_agree(batched, alone, min_identical):
    """A batch rounds its sums in a different order than a lone run, so a greedy near-tie can flip late in an
    answer. A batching bug (sequences mixing, wrong positions) diverges at once; rounding does not: every answer
    must agree with its lone run for its first 60 characters, and most must be identical."""
    for b, a in zip(batched, alone):
        assert common_prefix(a, b) >= min(60, len(a), len(b)), (b, a)
    identical = sum(a == b for a, b in zip(batched, alone))
    assert identical >= min_identical, f"{identical} of {len(alone)} identical: {batched} vs {alone}"


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
    assert_agree(together, alone, min_identical=len(alone) - 2)
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
    assert_agree([long_text, short_text], [alone_long, alone_short], min_identical=1)
    assert short_times[0] > long_times[0] and short_times[-1] < long_times[-1], \
        "the short request ran inside the long one's stream"
