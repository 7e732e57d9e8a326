"""`vibecheck judge`, `vibecheck plot` and `vibecheck export --what judgments` as a user runs them, against a judge
endpoint served on 127.0.0.1 by Python's http.server (it prefers the longer answer and rates by length). The
charts are parsed as XML, the verdicts read back with the csv module."""
import csv
import http.server
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import threading
import xml.etree.ElementTree as ET

import pytest

from test_export import BINARY, reference_dir


class Judge(http.server.BaseHTTPRequestHandler):
    calls = 0

    def log_message(self, *args):
        pass

    def do_POST(self):
        Judge.calls += 1
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        user = body["messages"][-1]["content"]

        def words(tag):
            m = re.search(r"<<<%s>>>\n(.*?)\n<<<END %s>>>" % (tag, tag), user, re.S)
            return len(m.group(1).split()) if m else 0

        if "<<<REPLY A>>>" in user:
            a, b = words("REPLY A"), words("REPLY B")
            reply = "[[A]]" if a > b else "[[B]]" if b > a else "[[C]]"
        else:
            reply = "Fine. [[%d]]" % min(10, 1 + words("REPLY") // 2)
        out = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("judge")
    run = tmp / "tiny-run"
    for step in (10, 20, 30):
        shutil.copytree(reference_dir() / "tiny/llama", run / f"checkpoint-{step}")
    (tmp / "suite.toml").write_text('[defaults]\nmax_tokens = 6\n[[prompts]]\nid = "a"\nprompt = "hello"\n'
                                    '[[prompts]]\nid = "b"\nturns = ["one", "two"]\n')
    db = tmp / "v.db"
    subprocess.run([BINARY, "watch", str(run), "--prompts", str(tmp / "suite.toml"), "--db", str(db), "--once",
                    "--poll", "0.1"], check=True, capture_output=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield tmp, db, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def vibecheck(*args):
    return subprocess.run([BINARY, *map(str, args)], check=True, capture_output=True, text=True)


def test_judge_previous_prints_a_table_and_caches(watched):
    tmp, db, url = watched
    out = vibecheck("judge", "tiny-run", "--db", db, "--judge", url, "--judge-model", "scripted", "--mode", "previous")
    # The three checkpoints hold the same weights: equal answers, so every pair is a tie (50%).
    assert "tiny-run/checkpoint-10 (previous)" in out.stdout, out.stdout
    assert out.stdout.count("50.0%") == 4, out.stdout
    # 2 comparisons x 3 turns x 2 orders.
    assert "12 asked (12 verdicts, 0 parse failures, 0 errors), 0 already judged" in out.stderr, out.stderr
    calls = Judge.calls
    again = vibecheck("judge", "tiny-run", "--db", db, "--judge", url, "--judge-model", "scripted", "--mode", "previous")
    assert "0 asked" in again.stderr and "12 already judged" in again.stderr
    assert Judge.calls == calls, "nothing is judged twice"


def test_single_grades_then_export_and_plots(watched):
    tmp, db, url = watched
    vibecheck("judge", "tiny-run", "--db", db, "--judge", url, "--judge-model", "scripted", "--mode", "single")
    rows = list(csv.DictReader(io.StringIO(vibecheck("export", "--db", db, "--what", "judgments", "--format",
                                                     "csv").stdout)))
    singles = [r for r in rows if r["kind"] == "single"]
    assert len(singles) == 9 and all(1 <= float(r["score"]) <= 10 for r in singles)
    assert {r["status"] for r in rows} == {"ok"}
    plots = vibecheck("plot", "tiny-run", "--db", db, "--out", tmp / "plots", "--judge", f"scripted@{url}")
    files = sorted(pathlib.Path(p).name for p in plots.stdout.split())
    assert files == ["arena.svg", "length.svg", "score.svg", "winrate.svg"]
    score = ET.parse(tmp / "plots/score.svg").getroot()
    circles = score.findall(".//{http://www.w3.org/2000/svg}circle")
    assert len(circles) == 3, "one rating per checkpoint"
