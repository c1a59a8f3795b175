"""GPT train-step speed: lab's step for the nanoGPT CPU recipe and for a wider model.

    python -m benchmarks.transformer_lm [--steps=30] [--rounds=3] [--torch_python=PYTHON] [--out=FILE]

For each config: compile time, median step time, tokens/s, and model FLOP/s as a fraction of
this machine's matmul peak, measured here with a jit'd float32 matmul. The step measured is
lab's own (`lab.train.build_train_step`: loss, grads, AdamW with clipping, metrics), on random
tokens. Model FLOPs per token follow nanoGPT's estimate: 6 * (non-embedding params + tied
embedding matmul) + 12 * layers * width * block (attention scores and values, fwd + bwd).

The yardstick runs side by side: `benchmarks/nanogpt_torch.py` (the same recipe in eager
PyTorch) under `--torch_python` (a Python with torch; default: this one, skipped if it has no
torch), in its own process, in the environment a user gives nanoGPT (without lab's malloc
settings) and, for the record, with them. The measurements alternate, lab then PyTorch, for
`--rounds` rounds, and each side reports the median of its round medians, so a slow spell of a
shared machine hits both sides.
Prints a table and writes JSON (default `benchmarks/results/transformer_lm.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from experiments.transformer_lm.config import get_config
from experiments.cli import MALLOC_ENV, ensure_malloc_env
from lab.tasks.language_model import CausalLMTask, gpt_config

VOCAB = 76  # the shakespeare_char vocabulary


def matmul_peak(sizes=(1024, 2048), repeats=5) -> dict:
    """Best float32 GFLOP/s of a jit'd square matmul."""
    best = {}
    for n in sizes:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
        f = jax.jit(lambda x, y: x @ y)
        f(a, a).block_until_ready()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            f(a, a).block_until_ready()
            times.append(time.perf_counter() - t)
        best[n] = 2 * n ** 3 / min(times) / 1e9
    return {"gflops_by_size": best, "peak_gflops": max(best.values())}


def flops_per_step(cfg, batch: int) -> float:
    d, layers, length = cfg.width, cfg.num_layers, cfg.max_len
    per_layer = 12 * d * d  # qkv (3 d^2) + out (d^2) + mlp (8 d^2) weights
    matmul_params = layers * per_layer + VOCAB * d  # + the tied output projection
    per_token = 6 * matmul_params + 12 * layers * d * length
    return per_token * batch * length


def lab_step(name: str):
    """Compiles lab's train step for config `name`; -> (info dict, run) with `run` below."""
    config = get_config(None if name == "default" else name)
    cfg = gpt_config(config.model, VOCAB)
    task = CausalLMTask(cfg)
    rng = np.random.default_rng(0)
    b, length = config.batch_size, cfg.max_len
    batches = [{"inputs": rng.integers(0, VOCAB, (b, length)).astype(np.int32),
                "targets": rng.integers(0, VOCAB, (b, length)).astype(np.int32)} for _ in range(4)]
    run, compile_s, n_params = common.compiled_train_step(task, config, batches)
    info = {"config": name, "layers": cfg.num_layers, "heads": cfg.num_heads, "width": cfg.width,
            "block": length, "batch": b, "params": int(n_params), "use_bias": cfg.use_bias,
            "compile_s": compile_s, "model_gflop_per_step": flops_per_step(cfg, b) / 1e9}
    return info, run


def torch_step_ms(python: str, info: dict, steps: int, malloc_settings: bool) -> float | None:
    """Median step time (ms) of benchmarks/nanogpt_torch.py under `python`, in a fresh process,
    for the model shape in `info` (from `lab_step`); None (and its error on stderr) if it fails."""
    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    if malloc_settings:
        env.update(MALLOC_ENV)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shape = [f"--{k}={info[k]}" for k in ("layers", "heads", "width", "block", "batch")]
    out = subprocess.run([python, "-m", "benchmarks.nanogpt_torch", f"--steps={steps}", *shape],
                         capture_output=True, text=True, cwd=root, env=env)
    if out.returncode != 0:
        print(f"the PyTorch yardstick failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["median_step_ms"]


def has_torch(python: str) -> str | None:
    """torch's version under `python`, or None if it has none."""
    out = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def bench_config(name: str, steps: int, rounds: int, torch_python: str | None) -> dict:
    info, run = lab_step(name)
    lab_medians, lab_pipelined, torch_medians, torch_malloc_medians = [], [], [], []
    for _ in range(rounds):
        waited, pipelined = run(steps)
        lab_medians.append(float(np.median(waited)) * 1e3)
        lab_pipelined.append(pipelined * 1e3)
        if torch_python:
            torch_medians.append(torch_step_ms(torch_python, info, steps, malloc_settings=False))
            torch_malloc_medians.append(torch_step_ms(torch_python, info, steps, malloc_settings=True))
    median_ms = float(np.median(lab_medians))
    row = dict(info, median_step_ms=median_ms, round_medians_ms=lab_medians,
               pipelined_step_ms=float(np.median(lab_pipelined)), round_pipelined_ms=lab_pipelined,
               tokens_per_sec=info["batch"] * info["block"] / median_ms * 1e3,
               model_gflops=info["model_gflop_per_step"] / median_ms * 1e3)
    if torch_python and None not in torch_medians + torch_malloc_medians:
        row["torch_median_step_ms"] = float(np.median(torch_medians))
        row["torch_round_medians_ms"] = torch_medians
        row["torch_with_malloc_settings_median_step_ms"] = float(np.median(torch_malloc_medians))
        row["lab_over_torch"] = median_ms / row["torch_median_step_ms"]
    return row


def main() -> None:
    ensure_malloc_env()  # measure the process the experiments run in
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default="default,wide")
    parser.add_argument("--torch_python", default=sys.executable,
                        help="a Python with torch for the nanoGPT-recipe yardstick; '' skips it")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "transformer_lm.json"))
    args = parser.parse_args()
    torch_version = has_torch(args.torch_python) if args.torch_python else None
    if args.torch_python and not torch_version:
        print(f"no torch under {args.torch_python}: the PyTorch yardstick is skipped")
    torch_python = args.torch_python if torch_version else None
    peak = matmul_peak()
    rows = [bench_config(name, args.steps, args.rounds, torch_python) for name in args.configs.split(",")]
    for r in rows:
        r["fraction_of_matmul_peak"] = r["model_gflops"] / peak["peak_gflops"]
    result = {"matmul_peak": peak, "configs": rows, "torch": torch_version,
              "machine": common.machine()}
    print(f"matmul peak {peak['peak_gflops']:.1f} GFLOP/s (f32, jit)")
    for r in rows:
        print(f"{r['config']:8s} {r['layers']}L/{r['heads']}H/w{r['width']}/block{r['block']}/batch{r['batch']}: "
              f"compile {r['compile_s']:.1f} s, step {r['median_step_ms']:.1f} ms "
              f"({r['pipelined_step_ms']:.1f} ms in a row), "
              f"{r['tokens_per_sec']:.0f} tokens/s, {r['model_gflops']:.1f} GFLOP/s = "
              f"{100 * r['fraction_of_matmul_peak']:.0f}% of peak")
        if "torch_median_step_ms" in r:
            print(f"{'':8s} nanoGPT recipe in PyTorch {torch_version}: step {r['torch_median_step_ms']:.1f} ms "
                  f"({r['torch_with_malloc_settings_median_step_ms']:.1f} ms with lab's malloc settings); "
                  f"lab / PyTorch = {r['lab_over_torch']:.2f}")
    common.save(result, args.out)


if __name__ == "__main__":
    main()
