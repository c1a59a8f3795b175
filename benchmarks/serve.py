"""Serving throughput and latency: `lab.serve` on 127.0.0.1 driven by concurrent clients.

    python -m benchmarks.serve [--model=ARTIFACT] [--clients=16] [--seconds=8] [--max_requests=4000]

For each of: 1 or 32 inputs per request x dynamic batching on (--max_wait_ms=5, up to 64 rows
per model call) or off (--max_wait_ms=0: each request runs alone), starts a fresh server process,
warms it up, then lets `--clients` threads (each with its own keep-alive HTTP connection) send
requests for `--seconds` or `--max_requests`, whichever ends first. Reports requests/s, inputs/s,
p50/p99 latency, errors, and the model calls the server made (from its /metrics). Saves JSON
(default benchmarks/results/serve.json). Without --model it trains the digits MLP
(`mlp_classifier:digits_tuned`, a short run) and exports it into runs/bench_serve/.

The clients run on the same cores as the server, so the figures are a floor for the server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ensure_model(path: str | None) -> str:
    if path:
        return path
    run, out = os.path.join(ROOT, "runs", "bench_serve", "run"), os.path.join(ROOT, "runs", "bench_serve", "model")
    if not os.path.isfile(os.path.join(out, "model.json")):
        subprocess.run([sys.executable, "-m", "experiments.mlp_classifier", f"--workdir={run}",
                        "--config=experiments/mlp_classifier/config.py:digits_tuned"], cwd=ROOT, check=True,
                       capture_output=True)
        subprocess.run([sys.executable, "-m", "lab.export", f"--workdir={run}", f"--out={out}"], cwd=ROOT, check=True)
    return out


def start_server(model: str, port: int, max_wait_ms: float, max_batch: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-m", "lab.serve", f"--model={model}", f"--port={port}",
                               f"--max_wait_ms={max_wait_ms}", f"--max_batch={max_batch}"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return server
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("the server did not start")


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def drive(port: int, body: bytes, clients: int, seconds: float, max_requests: int) -> dict:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    sent = [0]
    deadline = time.perf_counter() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.perf_counter() < deadline:
            with lock:
                if sent[0] >= max_requests:
                    return
                sent[0] += 1
            start = time.perf_counter()
            try:
                conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                ok = False
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                latencies.append(time.perf_counter() - start)
                errors[0] += not ok

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": wall, "requests_per_sec": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "errors": errors[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--max_requests", type=int, default=4000)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "serve.json"))
    args = parser.parse_args()
    from benchmarks import common
    from lab.artifact import Artifact
    from lab.launch import free_port

    model = ensure_model(args.model)
    shape = Artifact(model).inputs["inputs"]["shape"][1:]
    rng = np.random.default_rng(0)
    rows = []
    for per_request in (1, 32):
        body = json.dumps({"inputs": rng.random((per_request, *shape)).round(3).tolist()}).encode()
        for batching, wait in (("on", 5.0), ("off", 0.0)):
            port = free_port()
            server = start_server(model, port, wait, 64)
            try:
                drive(port, body, 4, 1.0, 200)  # warm-up: compiles each batch shape the run will see
                calls0 = metric(port, "lab_batch_rows_count")
                result = drive(port, body, args.clients, args.seconds, args.max_requests)
                calls = metric(port, "lab_batch_rows_count") - calls0
            finally:
                server.terminate()
                server.wait(timeout=10)
            row = {"inputs_per_request": per_request, "dynamic_batching": batching, "max_wait_ms": wait,
                   "clients": args.clients, **result, "inputs_per_sec": result["requests_per_sec"] * per_request,
                   "model_calls": int(calls), "rows_per_call": result["requests"] * per_request / max(calls, 1)}
            rows.append(row)
            print(f"{per_request:3d} inputs/request, batching {batching:3s}: {row['requests_per_sec']:7.1f} req/s "
                  f"{row['inputs_per_sec']:8.1f} inputs/s  p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
                  f"errors {row['errors']}  {row['rows_per_call']:.1f} rows per model call", flush=True)
    common.save({"cpu": common.cpu_info(), "model": os.path.abspath(model), "rows": rows,
                 "command": "python -m benchmarks.serve " + " ".join(sys.argv[1:])}, args.out)


if __name__ == "__main__":
    main()
