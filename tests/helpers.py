"""Small shared helpers for the tests."""

import json
import os

import jax
import numpy as np


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
