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


def test_one_limits_table_for_the_server_the_cli_and_suites(server, tmp_path):
    """`--max-tokens-cap` is a real flag, and the same limits (and messages) apply to the API, the CLI and suites."""
    url, binary, gguf = server
    proc = subprocess.Popen([binary, "serve", str(gguf), "--port", "0", "--max-tokens-cap", "8"],
                            stdout=subprocess.PIPE, text=True)
    try:
        capped = proc.stdout.readline().strip()
        client = OpenAI(base_url=capped, api_key="unused")
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=9)
        assert e.value.body["param"] == "max_tokens" and "between 1 and 8" in e.value.body["message"]
        reply = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0)
        assert reply.usage.completion_tokens <= 8, "the default shrinks to the cap"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = subprocess.run([binary, "serve", str(gguf), "--max-tokens-cap", "40000"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--max-tokens-cap must be between 1 and 32768" in bad.stderr

    # The API and the CLI refuse the same temperature with the same words.
    client = OpenAI(base_url=url, api_key="unused")
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=2.5)
    assert "`temperature` must be a number between 0 and 2" in e.value.body["message"]
    cli = subprocess.run([binary, "generate", str(gguf), "--prompt", "hi", "--temperature", "2.5"],
                         capture_output=True, text=True)
    assert cli.returncode != 0 and "`temperature` must be a number between 0 and 2" in cli.stderr, cli.stderr

    # A suite file goes through the same table, and takes the API's settings (stop strings included).
    suite = tmp_path / "suite.toml"
    suite.write_text('[[prompts]]\nid = "a"\nprompt = "x"\npresence_penalty = 3\n')
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint-1").mkdir(parents=True)
    bad = subprocess.run([binary, "watch", str(run_dir), "--prompts", str(suite), "--once",
                          "--db", str(tmp_path / "v.db")], capture_output=True, text=True)
    assert bad.returncode != 0 and "presence_penalty = 3 must be a number between -2 and 2" in bad.stderr, bad.stderr
    suite.write_text('[[prompts]]\nid = "a"\nprompt = "x"\nseed = 4\n')
    bad = subprocess.run([binary, "watch", str(run_dir), "--prompts", str(suite), "--once",
                          "--db", str(tmp_path / "v.db")], capture_output=True, text=True)
    assert bad.returncode != 0 and "`seed` is set by the runner" in bad.stderr, bad.stderr
