"""Endpoint: requests/s and p50/p95 latency at 1, 4 and 16 concurrent clients, max_new_tokens 32,
ftctl's local endpoint against `mlflow models serve` of the same registered model; plus the endpoint's
own time per request at 1 client: its latency minus the model's time, which the endpoint reports in
each reply's Server-Timing header (templates, tokenizing, `model.generate`, decoding, on its model
thread). The two are paired per request, so the machine's drift cancels. Compared instead with a bare
`model.generate` in a process of its own (still measured, in each repetition right after the 1-client
round), the difference swung from 2.1 to 7.2 ms for the same server code: the bare p50 moved from 13 to
21 ms within the hour; it also runs with torch's default threads, the endpoint with those it chose.

    python bench/endpoint.py [--requests 48] [--repetitions 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import fmt, ftctl_command, run_measured, table, write_result

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PARAMS = {"max_new_tokens": 32, "do_sample": False}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[float, float | None]:
    """The request's latency, and the model's part of it when the server reports it (Server-Timing)."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    start = time.perf_counter()
    with opener.open(request, timeout=300) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
        timing = response.headers.get("Server-Timing") or ""
    elapsed = time.perf_counter() - start
    _, found, duration = timing.partition("model;dur=")
    return elapsed, float(duration) / 1000 if found else None


def load(url: str, body: bytes, headers: dict[str, str], clients: int, total: int) -> dict[str, float]:
    latencies: list[float] = []
    own: list[float] = []  # latency minus the model's time, where the server reports it
    lock = threading.Lock()
    counter = iter(range(total))

    def worker() -> None:
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            elapsed, model_s = _post(url, body, headers)
            with lock:
                latencies.append(elapsed)
                if model_s is not None:
                    own.append(elapsed - model_s)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "rps": len(latencies) / wall,
        "p50": statistics.median(ordered),
        "p95": ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))],
        **({"own_p50": statistics.median(own)} if own else {}),
    }


def _wait(url: str, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.time() < deadline:
        try:
            with opener.open(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def bare_generate_p50(model_dir: Path, repetitions: int = 15) -> float:
    code = r"""
import json, statistics, sys, time, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from ftctl.models.layout import resolve_hf_dir
d = resolve_hf_dir(sys.argv[1]); msgs = json.loads(sys.argv[2]); n = int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(d); model = AutoModelForCausalLM.from_pretrained(d).eval()
end = tok.convert_tokens_to_ids("<|end|>")
times = []
for _ in range(n + 2):
    t = time.perf_counter()
    enc = tok(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True), return_tensors="pt",
              add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=32, do_sample=False, eos_token_id=[tok.eos_token_id, end],
                             pad_token_id=tok.pad_token_id)
    tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    times.append(time.perf_counter() - t)
print(statistics.median(times[2:]))
"""
    out = subprocess.run(
        [sys.executable, "-c", code, str(model_dir), json.dumps(QUESTION), str(repetitions)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main(requests: int, repetitions: int) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="bench-endpoint-"))
    workspace = scratch / ".ftctl"
    ftctl = [*ftctl_command(), "--workspace", str(workspace)]
    run_measured([*ftctl, "run", "--to", "deploy"])
    state = json.loads((workspace / "state.json").read_text())
    deploy = state["stages"]["deploy"]["outputs"]
    key = (workspace / "secrets" / f"{deploy['endpoint_name']}.key").read_text().strip()
    model_dir = Path(deploy["model_dir"])

    port = _free_port()
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    serve = subprocess.Popen(
        [str(mlflow_exe), "models", "serve", "-m", str(model_dir), "--env-manager", "local", "-h", "127.0.0.1",
         "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # mlflow runs `uvicorn` from PATH: put this environment's scripts first.
        env={**os.environ, "MLFLOW_TRACKING_URI": "", "PATH": f"{mlflow_exe.parent}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{port}/ping")
        contenders = {
            "ftctl endpoint": (
                deploy["scoring_uri"],
                json.dumps(
                    {"input_data": {"input_string": [QUESTION], "parameters": PARAMS}, "params": {}}
                ).encode(),
                {"Authorization": f"Bearer {key}"},
            ),
            "mlflow models serve": (
                f"http://127.0.0.1:{port}/invocations",
                json.dumps({"inputs": [{"messages": QUESTION}], "params": PARAMS}).encode(),
                {},
            ),
        }
        for url, body, headers in contenders.values():  # warm up
            for _ in range(3):
                _post(url, body, headers)
        results: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name in contenders}
        bares: list[float] = []
        for _ in range(repetitions):
            for clients in (1, 4, 16):
                for name, (url, body, headers) in contenders.items():
                    total = requests if clients > 1 else max(16, requests // 3)
                    results[name].setdefault(str(clients), []).append(
                        load(url, body, headers, clients, total)
                    )
                if clients == 1:  # beside the 1-client round it is compared with, as the machine is now
                    bares.append(bare_generate_p50(model_dir))
    finally:
        serve.terminate()
        serve.wait()
        run_measured([*ftctl, "teardown"])
    bare = statistics.median(bares)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    for clients in ("1", "4", "16"):
        for name in results:
            runs = results[name][clients]
            med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p95")}
            summary.setdefault(name, {})[clients] = med
        base = summary["mlflow models serve"][clients]["rps"]
        for name in results:
            med = summary[name][clients]
            rows.append(
                [
                    clients,
                    name,
                    f"{med['rps']:.1f}",
                    fmt(med["p50"]),
                    fmt(med["p95"]),
                    f"{med['rps'] / base:.2f}x",
                ]
            )
    unpaired = summary["ftctl endpoint"]["1"]["p50"] - bare
    overhead = statistics.median(r["own_p50"] for r in results["ftctl endpoint"]["1"])
    text = table(rows, ["clients", "server", "req/s", "p50", "p95", "req/s vs mlflow"])
    text += (
        f"\n\nftctl endpoint at 1 client: p50 {fmt(summary['ftctl endpoint']['1']['p50'])}; its own time "
        f"per request (latency minus the model's, from Server-Timing), p50: {overhead * 1000:.1f} ms"
        f"\nbare model.generate in a process of its own, p50: {fmt(bare)} "
        f"(endpoint p50 minus it: {unpaired * 1000:.1f} ms)"
    )
    print(text)
    write_result(
        "endpoint",
        {"requests": requests, "repetitions": repetitions, "max_new_tokens": 32, "results": summary,
         "bare_generate_p50_s": bare, "overhead_p50_s": overhead, "unpaired_overhead_p50_s": unpaired,
         "table": text,
         "goal": ">= 10x req/s at 16 clients; p50 overhead < 5 ms at 1 client"},
    )  # fmt: skip
    return summary


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--repetitions", type=int, default=2)
    args = parser.parse_args()
    main(args.requests, args.repetitions)
