"""benchmarks/scale_memory.py on a tiny GPT: the compiler's per-device bytes follow the shardings.

Each test runs in a subprocess: the benchmark needs 8 simulated CPU devices, fixed when jax starts.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_MEASURE = """
import json
from benchmarks import scale_memory as sm
cfg = sm.model_config("tiny")
rows = {mesh: sm.measure(cfg, mesh, 8, fast_compile=True) for mesh in ("data:8", "data:1,fsdp:8")}
print(json.dumps({"rows": rows, "params": sm.gpt_param_count(cfg), "vocab": cfg.vocab_size,
                  "context": cfg.max_len, "layers": cfg.num_layers, "width": cfg.width}))
"""


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_fsdp_divides_the_sharded_state_by_eight_and_the_compiler_agrees():
    proc = _run(_MEASURE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    replicated, fsdp = out["rows"]["data:8"], out["rows"]["data:1,fsdp:8"]
    v, t, n_layers, d = out["vocab"], out["context"], out["layers"], out["width"]
    # Counted here from the model's shapes: kernels and embeddings (split by lab's rules), and
    # the biases and LayerNorm vectors (replicated).
    n_split = v * d + t * d + n_layers * 12 * d * d
    n_small = n_layers * 13 * d + 2 * d
    assert out["params"] == replicated["params"] == fsdp["params"] == n_split + n_small
    assert fsdp["params_split"] == n_split and fsdp["mesh"] == {"data": 1, "fsdp": 8}

    # Analytic: 4 bytes x N / 8 for the split leaves, in full for the replicated ones; mu + nu twice that.
    assert fsdp["analytic"]["params_split"] == 4 * n_split // 8
    assert fsdp["analytic"]["params_replicated"] == 4 * n_small
    assert fsdp["analytic"]["opt_state_split"] == 8 * n_split // 8
    assert replicated["analytic"]["params"] == 4 * (n_split + n_small)
    assert replicated["analytic"]["params_split"] == 0
    # The batch is split over all 8 devices in both layouts: 1 sequence of inputs and targets each.
    assert fsdp["analytic"]["batch"] == replicated["analytic"]["batch"] == 2 * 4 * t

    for row in (replicated, fsdp):
        a, c = row["analytic"], row["compiled"]
        # The compiler's per-device arguments are the bytes the shardings give.
        assert c["arguments"] == pytest.approx(a["arguments"], rel=0.01), row["layout"]
        # Donation: the new state is written into the old one, so no second copy of it.
        assert c["alias"] == pytest.approx(a["state"], rel=0.01), row["layout"]
        assert c["outputs"] - c["alias"] < 0.01 * c["outputs"], row["layout"]

    # FSDP saves 7/8 of the split state (params + Adam mu + nu: 12 bytes each) and nothing else.
    saved = replicated["compiled"]["arguments"] - fsdp["compiled"]["arguments"]
    assert saved == pytest.approx(12 * n_split * 7 / 8, rel=0.01)
    # ... so its arguments are 1/8 of the split state plus what is replicated (vectors, counts,
    # step, metric vector) and its batch.
    rest = 12 * n_small + fsdp["analytic"]["batch"] + fsdp["analytic"]["other"] + 8
    assert fsdp["compiled"]["arguments"] == pytest.approx(12 * n_split / 8 + rest, rel=0.01)
    # The FSDP step gathers the split parameters; the replicated one has nothing to gather.
    assert fsdp["collectives"]["all-gather"]["count"] > 0
    assert replicated["collectives"]["all-gather"]["count"] == 0


def test_refuses_a_jax_started_with_another_device_count():
    proc = _run("import jax; jax.devices()\nimport benchmarks.scale_memory")
    assert proc.returncode != 0
    assert "needs 8 simulated devices, but jax was already started with 1" in proc.stderr
