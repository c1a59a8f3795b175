"""Small shared helpers for the tests."""

import contextlib
import json
import os
import urllib.error
import urllib.request

import jax
import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def override(config, **overrides):
    """`config` with dotted keys set: override(c, **{"optimizer.learning_rate": 0.1}); returns it."""
    for key, value in overrides.items():
        node = config
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return config


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def math_records(workdir):
    """metrics.jsonl without the wall-clock fields, which differ from run to run."""
    timing = ("steps_per_sec", "examples_per_sec", "tokens_per_sec")
    return [{k: v for k, v in r.items() if k not in timing}
            for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def final_params(workdir):
    from lab.checkpoint import load_params
    return load_params(workdir)[0]


def max_abs_diff(a, b):
    diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
    return max(jax.tree.leaves(diffs))


def trees_equal(a, b):
    return jax.tree.structure(a) == jax.tree.structure(b) and all(
        np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@contextlib.contextmanager
def serving(model_path, *flags, root=None, timeout=30.0):
    """`python -m lab.serve --model=model_path FLAGS` on a free port of 127.0.0.1 until the block
    ends; yields (base URL, the /healthz answer). Fails with the server's output if it dies."""
    import subprocess
    import sys
    import time
    import urllib.request

    from lab.launch import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "lab.serve", f"--model={model_path}", f"--port={port}", *flags],
                              cwd=root or _ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=1).read())
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-2000:]
                assert time.monotonic() < deadline, f"lab.serve did not answer /healthz in {timeout:.0f} s"
                time.sleep(0.1)
        yield base, health
    finally:
        server.terminate()
        server.wait(timeout=10)


def post_json(url: str, body: bytes, timeout: float = 60):
    """POST `body` to `url`: (HTTP status, the JSON answer), for error statuses too."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
