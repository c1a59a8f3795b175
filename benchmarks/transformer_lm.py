"""GPT train-step speed: lab's step for the nanoGPT CPU recipe and for a wider model.

    python -m benchmarks.transformer_lm [--steps=30] [--out=FILE]

For each config: compile time, median step time, tokens/s, and model FLOP/s as a fraction of
this machine's matmul peak, measured here with a jit'd float32 matmul. The step measured is
lab's own (`lab.train.make_train_step`: loss, grads, AdamW with clipping, metrics), on random
tokens. Model FLOPs per token follow nanoGPT's estimate: 6 * (non-embedding params + tied
embedding matmul) + 12 * layers * width * block (attention scores and values, fwd + bwd).
Prints a table and writes JSON (default `benchmarks/results/transformer_lm.json`).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from experiments.transformer_lm.__main__ import model_config
from experiments.transformer_lm.config import get_config
from experiments.cli import ensure_malloc_env
from lab import optim, train
from lab.tasks.language_model import CausalLMTask

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


def bench_config(name: str, steps: int) -> dict:
    config = get_config(None if name == "default" else name)
    cfg = model_config(config, VOCAB)
    task = CausalLMTask(cfg)
    tx = optim.make_optimizer(config.optimizer, config.num_train_steps)
    key = jax.random.key(0)
    rng = np.random.default_rng(0)
    b, length = config.batch_size, cfg.max_len
    batches = [{"inputs": rng.integers(0, VOCAB, (b, length)).astype(np.int32),
                "targets": rng.integers(0, VOCAB, (b, length)).astype(np.int32)} for _ in range(4)]
    params = task.init_params(key)
    layout = train.train_metric_vector(task, params, batches[0], key)
    step = jax.jit(train.make_train_step(task, tx, key, None, layout), donate_argnums=0)
    state = train.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    acc = jnp.zeros(layout.size)
    t = time.perf_counter()
    compiled = step.lower(state, acc, batches[0]).compile()
    compile_s = time.perf_counter() - t
    state, acc = compiled(state, acc, batches[0])
    acc.block_until_ready()
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state, acc = compiled(state, acc, batches[i % 4])
        acc.block_until_ready()
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    flops = flops_per_step(cfg, b)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    return {"config": name, "layers": cfg.num_layers, "heads": cfg.num_heads, "width": cfg.width,
            "block": length, "batch": b, "params": int(n_params), "compile_s": compile_s,
            "median_step_ms": median * 1e3, "p10_step_ms": float(np.percentile(times, 10)) * 1e3,
            "tokens_per_sec": b * length / median, "model_gflop_per_step": flops / 1e9,
            "model_gflops": flops / median / 1e9}


def main() -> None:
    ensure_malloc_env()  # measure the process the experiments run in
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--configs", default="default,wide")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "transformer_lm.json"))
    args = parser.parse_args()
    peak = matmul_peak()
    rows = [bench_config(name, args.steps) for name in args.configs.split(",")]
    for r in rows:
        r["fraction_of_matmul_peak"] = r["model_gflops"] / peak["peak_gflops"]
    result = {"matmul_peak": peak, "configs": rows,
              "machine": common.machine()}
    print(f"matmul peak {peak['peak_gflops']:.1f} GFLOP/s (f32, jit)")
    for r in rows:
        print(f"{r['config']:8s} {r['layers']}L/{r['heads']}H/w{r['width']}/block{r['block']}/batch{r['batch']}: "
              f"compile {r['compile_s']:.1f} s, step {r['median_step_ms']:.1f} ms, "
              f"{r['tokens_per_sec']:.0f} tokens/s, {r['model_gflops']:.1f} GFLOP/s = "
              f"{100 * r['fraction_of_matmul_peak']:.0f}% of peak")
    common.save(result, args.out)


if __name__ == "__main__":
    main()
