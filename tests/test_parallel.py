"""Data parallelism on 4 fake CPU devices: jit+NamedSharding, pmap and 1 device agree."""

import os
import subprocess
import sys

import numpy as np

from tests.helpers import final_params, math_records, max_abs_diff
from tests.test_train import small_config

from experiments.mlp_classifier.__main__ import main

_FOUR_DEVICE_RUNS = """
import json, sys, jax
assert jax.device_count() == 4, jax.devices()
from experiments.mlp_classifier.__main__ import main
from tests.test_train import small_config
for mode in ("jit", "pmap"):
    main(small_config(parallel=mode), sys.argv[1] + "/" + mode)
"""


def test_jit_pmap_and_one_device_agree(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICE_RUNS, str(tmp_path)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    main(small_config(), str(tmp_path / "one"))  # this process has 1 device

    runs = {name: str(tmp_path / name) for name in ("one", "jit", "pmap")}
    records = {name: math_records(d) for name, d in runs.items()}
    params = {name: final_params(d) for name, d in runs.items()}
    for name in ("jit", "pmap"):
        assert [r["step"] for r in records[name]] == [r["step"] for r in records["one"]]
        for r, ref in zip(records[name], records["one"]):
            for key in ("train/loss", "test/loss", "test/accuracy"):
                if key in ref:
                    np.testing.assert_allclose(r[key], ref[key], atol=1e-5, err_msg=f"{name} {key}")
        assert max_abs_diff(params[name], params["one"]) < 1e-5, name
    assert max_abs_diff(params["jit"], params["pmap"]) < 1e-5
