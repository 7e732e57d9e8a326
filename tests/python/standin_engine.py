#!/usr/bin/env python3
"""A STAND-IN for vLLM and SGLang, for tests on machines without a GPU. It is not an engine: it generates no text
from weights. It speaks the parts of their protocols vibecheck drives, as their documentation and source describe
them, and checks what it is sent:

- the command line: `serve MODEL ...` (vLLM) or `-m sglang.launch_server ...` (SGLang), parsed with only the
  documented flags (an unknown flag exits 2, as argparse does in the real ones);
- `/health` (503 while "loading", then 200), `/v1/models` and `/v1/chat/completions` behind the API key;
- SGLang: `POST /update_weights_from_disk` {model_path, weight_version} -> {success, message, num_paused_requests}
  (400 with success false when refused), `GET /model_info` with `weight_version`, `/get_server_info`;
- vLLM (dev mode only, `VLLM_SERVER_DEV_MODE=1`, else 404): `POST /sleep?level=2`, `/wake_up?tags=weights|kv_cache`,
  `/collective_rpc` {method: reload_weights, kwargs: {weights_path}} -> {results: [...]}; chat refused while asleep;
  `GET /version`;
- Prometheus `/metrics` with the engine's generation-token counter.

Its "answer" names the weights it holds (the folder's name and a hash of its config.json) so a test can see which
checkpoint answered. A folder whose config.json has `"standin_refuse": true` is refused by a swap, as a real
engine refuses weights that do not fit the model.
"""
import argparse
import hashlib
import json
import os
import pathlib
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def parse(argv):
    if argv[:1] == ["serve"]:
        kind = "vllm"
        p = argparse.ArgumentParser(prog="vllm serve")
        p.add_argument("model")
        p.add_argument("--served-model-name", required=True)
        p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
        p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
        p.add_argument("--max-model-len", type=int)
        p.add_argument("--distributed-executor-backend", choices=["ray", "mp"])
        p.add_argument("--enable-sleep-mode", action="store_true")
        rest = argv[1:]
    elif argv[:2] == ["-m", "sglang.launch_server"]:
        kind = "sglang"
        p = argparse.ArgumentParser(prog="python -m sglang.launch_server", allow_abbrev=False)
        p.add_argument("--model-path", required=True)
        p.add_argument("--served-model-name", required=True)
        p.add_argument("--tp-size", type=int, default=1)
        p.add_argument("--pp-size", type=int, default=1)
        p.add_argument("--context-length", type=int)
        p.add_argument("--nnodes", type=int, default=1)
        p.add_argument("--node-rank", type=int, default=0)
        p.add_argument("--dist-init-addr")
        p.add_argument("--enable-metrics", action="store_true")
        p.add_argument("--weight-version", default="default")
        rest = argv[2:]
    else:
        sys.exit(f"stand-in: expected `serve MODEL ...` (vLLM) or `-m sglang.launch_server ...` (SGLang), got {argv}")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--api-key")
    args = p.parse_args(rest)
    return kind, args


def weights_id(path):
    cfg = pathlib.Path(path) / "config.json"
    digest = hashlib.sha256(cfg.read_bytes()).hexdigest()[:8] if cfg.is_file() else "no-config"
    return f"{pathlib.Path(path).name}:{digest}"


def main():
    kind, args = parse(sys.argv[1:])
    state = {
        "model": args.model if kind == "vllm" else args.model_path,
        "version": getattr(args, "weight_version", "default"),
        "ready_at": time.time() + 0.5,
        "asleep": set(),
        "generated": 0,
        "log": [],
    }
    dev = os.environ.get("VLLM_SERVER_DEV_MODE") == "1"
    print(f"stand-in {kind} starting on {state['model']} (port {args.port})", flush=True)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, code, body=None):
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def authorized(self):
            if args.api_key and self.headers.get("authorization") != f"Bearer {args.api_key}":
                self.reply(401, {"error": "Unauthorized"})
                return False
            return True

        def body(self):
            n = int(self.headers.get("content-length") or 0)
            return json.loads(self.rfile.read(n) or b"{}")

        def do_GET(self):
            url = urlparse(self.path)
            if url.path == "/health":
                return self.reply(200 if time.time() >= state["ready_at"] else 503)
            if time.time() < state["ready_at"]:
                return self.reply(503)
            if url.path == "/metrics":
                name = "vllm:generation_tokens_total" if kind == "vllm" else "sglang:generation_tokens_total"
                text = f'# TYPE {name} counter\n{name}{{model_name="{args.served_model_name}"}} {state["generated"]}\n'
                data = text.encode()
                self.send_response(200)
                self.send_header("content-type", "text/plain; version=0.0.4")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                return self.wfile.write(data)
            if not self.authorized():
                return
            if url.path == "/v1/models":
                return self.reply(200, {"object": "list", "data": [
                    {"id": args.served_model_name, "object": "model", "owned_by": kind, "root": state["model"]}]})
            if kind == "sglang" and url.path in ("/model_info", "/get_model_info"):
                return self.reply(200, {"model_path": state["model"], "weight_version": state["version"],
                                        "is_generation": True})
            if kind == "sglang" and url.path == "/get_server_info":
                return self.reply(200, {"version": "stand-in-sglang", "weight_version": state["version"]})
            if kind == "vllm" and url.path == "/version":
                return self.reply(200, {"version": "stand-in-vllm"})
            if kind == "vllm" and dev and url.path == "/is_sleeping":
                return self.reply(200, {"is_sleeping": bool(state["asleep"])})
            self.reply(404, {"error": f"no route {url.path}"})

        def do_POST(self):
            url = urlparse(self.path)
            q = parse_qs(url.query)
            if time.time() < state["ready_at"]:
                return self.reply(503)
            if not self.authorized():
                return
            body = self.body()
            if url.path == "/v1/chat/completions":
                if body.get("model") != args.served_model_name:
                    return self.reply(404, {"error": {"message": f"model {body.get('model')} does not exist"}})
                if state["asleep"]:
                    return self.reply(503, {"error": {"message": "the engine is sleeping"}})
                last = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
                text = f"[{weights_id(state['model'])} v={state['version']}] " + " ".join(last.split()[:6])
                n = min(int(body.get("max_tokens") or 16), len(text.split()))
                with lock:
                    state["generated"] += n
                return self.reply(200, {
                    "id": "chatcmpl-standin", "object": "chat.completion", "model": args.served_model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": len(last.split()), "completion_tokens": n,
                              "total_tokens": len(last.split()) + n}})
            if kind == "sglang" and url.path == "/update_weights_from_disk":
                path = body.get("model_path")
                cfg = pathlib.Path(path or "") / "config.json"
                if not cfg.is_file() or json.loads(cfg.read_text()).get("standin_refuse"):
                    return self.reply(400, {"success": False, "message": f"Failed to update weights: {path} does not "
                                            "match the model's parameters", "num_paused_requests": 0})
                state["model"] = path
                if body.get("weight_version") is not None:
                    state["version"] = body["weight_version"]
                return self.reply(200, {"success": True, "num_paused_requests": 0,
                                        "message": f"Succeeded to update model weights. Weight version updated to "
                                                   f"{state['version']}."})
            if kind == "vllm" and dev and url.path == "/sleep":
                if q.get("level") != ["2"]:
                    return self.reply(400, {"error": "the stand-in checks level=2"})
                state["asleep"] = {"weights", "kv_cache"}
                return self.reply(200)
            if kind == "vllm" and dev and url.path == "/wake_up":
                for tag in q.get("tags", ["weights", "kv_cache"]):
                    state["asleep"].discard(tag)
                return self.reply(200)
            if kind == "vllm" and dev and url.path == "/collective_rpc":
                if body.get("method") != "reload_weights":
                    return self.reply(400, {"error": f"the stand-in knows only reload_weights, not {body.get('method')}"})
                if "weights" in state["asleep"]:
                    return self.reply(500, {"error": "weights are asleep"})
                path = (body.get("kwargs") or {}).get("weights_path")
                cfg = pathlib.Path(path or "") / "config.json"
                if not cfg.is_file() or json.loads(cfg.read_text()).get("standin_refuse"):
                    return self.reply(500, {"error": f"reload_weights failed: {path}"})
                state["model"] = path
                return self.reply(200, {"results": [None] * args.tensor_parallel_size})
            self.reply(404, {"error": f"no route {url.path}"})

    server = ThreadingHTTPServer((args.host, args.port), Handler)

    def stop(*_):
        print("stand-in stopping", flush=True)
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()


if __name__ == "__main__":
    main()
