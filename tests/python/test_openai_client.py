"""The official `openai` client against a running `vibecheck serve` of the real SmolLM2 model."""
import os
import pathlib
import subprocess

import openai
import pytest
from openai import OpenAI

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server():
    binary = os.environ.get("VIBECHECK_BIN", str(ROOT / "target/debug/vibecheck"))
    gguf = pathlib.Path(os.environ.get("VIBECHECK_MODEL_CACHE") or ROOT / ".cache/models") / MODEL
    proc = subprocess.Popen([binary, "serve", str(gguf), "--port", "0"], stdout=subprocess.PIPE, text=True)
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    yield url, binary, gguf
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "SIGTERM ends the server cleanly"


def test_models_chat_stream_and_errors(server):
    url, binary, gguf = server
    client = OpenAI(base_url=url, api_key="unused")
    assert [m.id for m in client.models.list().data] == [MODEL]

    reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    text = reply.choices[0].message.content
    assert "Paris" in text
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.prompt_tokens > 10 and reply.usage.completion_tokens >= 1

    # The greedy answer is exactly what `vibecheck generate` prints.
    printed = subprocess.run([binary, "generate", str(gguf), "--prompt", QUESTION[0]["content"], "--max-tokens", "24"],
                             capture_output=True, text=True, check=True).stdout
    assert printed == text + "\n"

    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24, stream=True,
                                            stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        usage = chunk.usage or usage
    assert "".join(pieces) == text
    assert usage.completion_tokens == reply.usage.completion_tokens

    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=QUESTION)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=5)
