"""Serving throughput and latency: `lab.serve` on 127.0.0.1 driven by concurrent clients.

    python -m benchmarks.serve [--model=ARTIFACT] [--clients=16] [--seconds=8] [--max_requests=4000]

For each of: 1 or 32 inputs per request x dynamic batching on (--max_wait_ms=5, up to 64 rows
per model call) or off (--max_wait_ms=0: each request runs alone), starts a fresh server process,
warms it up, then lets `--clients` threads (each with its own keep-alive HTTP connection) send
requests for `--seconds` or `--max_requests`, whichever ends first. Reports requests/s, inputs/s,
p50/p99 latency, errors, and the model calls the server made (from its /metrics). Saves JSON
(default benchmarks/runs/<date>_<time>/serve.json; --out=benchmarks/results/serve.json updates the
committed one), with the CPU the server and clients shared. Without --model it trains the digits MLP
(`mlp_classifier:digits_tuned`, a short run) and exports it into runs/bench_serve/.

The clients run on the same cores as the server, so the figures are a floor for the server.

`--mixed` measures what the steady runs' warm-up hides: one fresh server (its start-up timed up to
/healthz answering 200, nothing sent before), then clients sending requests of mixed shapes (a
classifier: 1..32 inputs per request; a text generator: prompts of 1..its longest length) from
the first request on. Reports p50/p99 over every request, the first request of each shape among
them, and the XLA compilations the server made meanwhile (0: no request compiled). Saves
serve_mixed.json.
"""

from __future__ import annotations

import argparse
import gc
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


def post(conn, port: int, route: str, body: str, timeout: float):
    """One timed JSON POST on a keep-alive connection: (answered 200, seconds, the connection to
    use next: a new one after a connection error)."""
    start = time.perf_counter()
    try:
        conn.request("POST", route, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        response.read()
        ok = response.status == 200
    except OSError:
        ok = False
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    return ok, time.perf_counter() - start, conn


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
            ok, seconds, conn = post(conn, port, "/predict", body, timeout=30)
            with lock:
                latencies.append(seconds)
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


def drive_mixed(port: int, route: str, bodies: dict[int, bytes], clients: int, seconds: float,
                max_requests: int) -> dict:
    """`clients` threads sending bodies[shape] for shapes drawn at random, none sent before: latency
    p50/p99/max over every request, and over the first request of each shape."""
    latencies: list[tuple[float, bool]] = []  # (seconds, the first request of its shape)
    seen: set[int] = set()
    errors = [0]
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    shapes = sorted(bodies)

    def client(index: int):
        rng = np.random.default_rng(index)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while time.perf_counter() < deadline:
            shape = int(rng.choice(shapes))
            with lock:
                if len(latencies) + errors[0] >= max_requests:
                    return
                first = shape not in seen
                seen.add(shape)
            ok, seconds, conn = post(conn, port, route, bodies[shape], timeout=120)
            with lock:
                latencies.append((seconds, first))
                errors[0] += not ok

    gc.freeze()  # the clients' process holds jax too: its full collections would stall every client at once
    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = np.array([s for s, _ in latencies]) * 1000
    first_ms = np.array([s for s, first in latencies if first]) * 1000
    return {"requests": len(latencies), "seconds": wall, "requests_per_sec": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max()), "p99_over_p50": float(np.percentile(ms, 99) / np.percentile(ms, 50)),
            "shapes": len(shapes), "first_of_shape_p50_ms": float(np.percentile(first_ms, 50)),
            "first_of_shape_max_ms": float(first_ms.max()), "errors": errors[0]}


def mixed_bodies(model: str) -> tuple[str, dict[int, bytes]]:
    """(route, {shape: request body}): 1..32 random inputs for a classifier (digits-like inputs),
    prompts of 1..the longest length for a text generator."""
    from lab.artifact import Artifact

    artifact = Artifact(model)
    rng = np.random.default_rng(0)
    if artifact.meta.get("task") == "generator":
        vocab = artifact.meta["tokenizer"]["vocab"]
        letters = [c for c in vocab if c.isalpha()] or list(vocab)
        longest = artifact.limits.get("max_prompt_tokens", 8)
        return "/generate", {n: json.dumps({"prompt": "".join(rng.choice(letters, n)), "seed": n}).encode()
                             for n in range(1, longest + 1)}
    shape = artifact.inputs["inputs"]["shape"][1:]
    return "/predict", {n: json.dumps({"inputs": rng.random((n, *shape)).round(3).tolist()}).encode()
                        for n in range(1, 33)}


def run_mixed(model: str, clients: int, seconds: float, max_requests: int, max_batch: int = 32) -> dict:
    """One fresh server under `drive_mixed`: its start-up seconds, the latencies, its compilations."""
    from lab.launch import free_port

    route, bodies = mixed_bodies(model)
    port = free_port()
    began = time.perf_counter()
    server = start_server(model, port, 5.0, max_batch)
    startup = time.perf_counter() - began
    try:
        compiled = metric(port, "lab_xla_compilations")
        result = drive_mixed(port, route, bodies, clients, seconds, max_requests)
        compiled_during = metric(port, "lab_xla_compilations") - compiled
    finally:
        server.terminate()
        server.wait(timeout=10)
    return {"route": route, "clients": clients, "max_batch": max_batch, "startup_s": startup,
            "compilations_at_startup": int(compiled), "compilations_during_run": int(compiled_during), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--max_requests", type=int, default=4000)
    parser.add_argument("--mixed", action="store_true",
                        help="mixed request shapes from a fresh server's first request on (see above)")
    from benchmarks import common
    common.add_out_flag(parser, "serve.json")
    args = parser.parse_args()
    from lab.artifact import Artifact
    from lab.launch import free_port

    out = common.out_path(args.out, "serve_mixed.json" if args.mixed else "serve.json")
    cpu = common.print_header("serve", out)

    model = ensure_model(args.model)
    if args.mixed:
        row = run_mixed(model, args.clients, args.seconds, args.max_requests)
        print(f"mixed shapes ({row['shapes']} on {row['route']}, {row['clients']} clients): start-up "
              f"{row['startup_s']:.1f} s ({row['compilations_at_startup']} compilations), then "
              f"{row['requests']} requests, {row['requests_per_sec']:.1f} req/s, p50 {row['p50_ms']:.1f} ms, "
              f"p99 {row['p99_ms']:.1f} ms ({row['p99_over_p50']:.1f}x p50), max {row['max_ms']:.1f} ms, first of "
              f"each shape p50 {row['first_of_shape_p50_ms']:.1f} ms max {row['first_of_shape_max_ms']:.1f} ms, "
              f"{row['compilations_during_run']} compilations, errors {row['errors']}", flush=True)
        common.save({"cpu": cpu, "machine": common.machine(), "model": os.path.abspath(model), "mixed": row,
                     "command": "python -m benchmarks.serve " + " ".join(sys.argv[1:])}, out)
        return
    shape = Artifact(model).inputs["inputs"]["shape"][1:]
    rng = np.random.default_rng(0)
    rows = []
    for per_request in (1, 32):
        body = json.dumps({"inputs": rng.random((per_request, *shape)).round(3).tolist()}).encode()
        for batching, wait in (("on", 5.0), ("off", 0.0)):
            port = free_port()
            server = start_server(model, port, wait, 64)
            try:
                drive(port, body, 4, 1.0, 200)  # warm-up: connections and caches (shapes compiled at start-up)
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
    common.save({"cpu": cpu, "machine": common.machine(), "model": os.path.abspath(model), "rows": rows,
                 "command": "python -m benchmarks.serve " + " ".join(sys.argv[1:])}, out)


if __name__ == "__main__":
    main()
