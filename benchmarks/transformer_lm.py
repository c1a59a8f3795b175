"""GPT train-step speed: lab's step for the nanoGPT CPU recipe and a wider model, in float32 and
bfloat16, against PyTorch.

    python -m benchmarks.transformer_lm [--steps=30] [--rounds=3] [--configs=default,wide,default_bf16,wide_bf16]
                                        [--torch_python=PYTHON] [--torch_threads=0] [--out=FILE]

Configs (each lab's own step, `lab.train.build_train_step`: loss, grads, AdamW with clipping,
metrics, on random tokens of the config's shapes):
  default       experiments/transformer_lm's default config, nanoGPT's shakespeare_char CPU recipe:
                4 layers, 4 heads, width 128, block 64, batch 12, no biases, AdamW (beta2 0.99,
                weight decay 0.1, clip 1.0).
  wide          its `wide` variant, nanoGPT's GPU model shape: 6 layers, 6 heads, width 384,
                block 256, batch 8.
  default_bf16  `default` with `model.compute_dtype = "bfloat16"` (lab's mixed precision: matmuls
                and activations in bfloat16; parameters, optimizer state, softmax, logits and the
                loss in float32; `lab.tasks.language_model.gpt_config`).
  wide_bf16     `wide` likewise.
For each: compile time, median step time (each step waited for), the mean time of steps run in a
row (how lab's loop runs them), tokens/s (batch * block per step), and model FLOP/s as a fraction
of this machine's jit'd float32 matmul peak (`matmul_peak`; the bfloat16 rows against the same
float32 peak). Model FLOPs per step follow nanoGPT's estimate, the same for both dtypes:
6 * (non-embedding params + tied embedding matmul) + 12 * layers * width * block per token
(attention scores and values, forward and backward).

The yardstick runs side by side: `benchmarks/nanogpt_torch.py` (the same recipe in eager PyTorch,
PyTorch's default threads unless `--torch_threads`) under `--torch_python` (a Python with torch;
default: this one, skipped if it has no torch), in its own process without lab's malloc settings,
with each model shape's own flags and 5 untimed warm-up steps (or `--steps`, if fewer). Pairings:
default and wide against `gpt_f32`; default_bf16 and wide_bf16 against `gpt_bf16` (the forward
and loss under `torch.autocast("cpu", bfloat16)`, parameters and AdamW state float32).
Measurements alternate, lab (both dtypes of a shape) then PyTorch, for `--rounds` rounds; each
side reports the median of its round medians. Prints a table and writes JSON (default
`benchmarks/runs/<date>_<time>/transformer_lm.json`; `--out=benchmarks/results/transformer_lm.json`
updates the committed one).
On a CPU without AVX512_BF16 or AMX, PyTorch's bfloat16 step is emulated, many times slower
than its float32 step (for `wide`, too slow to time), so leave `wide_bf16` out there
(`--configs=default,wide,default_bf16`).
"""

from __future__ import annotations

import os
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from experiments.cli import ensure_malloc_env
from experiments.transformer_lm.config import get_config
from lab.tasks.language_model import CausalLMTask, gpt_config

VOCAB = 76  # the shakespeare_char vocabulary
STEPS = 30  # default timed steps per round
WARMUP = 5  # the yardstick's untimed steps per run (fewer if fewer are timed)

# model shape -> its lab rows (measured together against one yardstick run of that shape).
GROUPS = {
    "default": ("default", "default_bf16"),
    "wide": ("wide", "wide_bf16"),
}
# lab row -> the torch recipes it is compared with.
PAIRINGS = {
    "default": ("gpt_f32",),
    "wide": ("gpt_f32",),
    "default_bf16": ("gpt_bf16",),
    "wide_bf16": ("gpt_bf16",),
}
CONFIGS = ("default", "wide", "default_bf16", "wide_bf16")


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
    """nanoGPT's model FLOPs of one train step of the TransformerConfig `cfg` on `batch` rows."""
    d, layers, length = cfg.width, cfg.num_layers, cfg.max_len
    per_layer = 12 * d * d  # qkv (3 d^2) + out (d^2) + mlp (8 d^2) weights
    matmul_params = layers * per_layer + VOCAB * d  # + the tied output projection
    per_token = 6 * matmul_params + 12 * layers * d * length
    return per_token * batch * length


def has_torch(python: str) -> str | None:
    """torch's version under `python`, or None if it has none."""
    out = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def lab_step(name: str):
    """Compiles lab's train step for config `name`; -> (info dict, run, torch shape flags)."""
    variant, _, dtype = name.partition("_")
    config = get_config(None if variant == "default" else variant)
    config.model.compute_dtype = "bfloat16" if dtype == "bf16" else "float32"
    cfg = gpt_config(config.model, VOCAB)
    task = CausalLMTask(cfg)
    rng = np.random.default_rng(0)
    b, length = config.batch_size, cfg.max_len
    batches = [{"inputs": rng.integers(0, VOCAB, (b, length)).astype(np.int32),
                "targets": rng.integers(0, VOCAB, (b, length)).astype(np.int32)} for _ in range(4)]
    run, compile_s, n_params = common.compiled_train_step(task, config, batches)
    shape = {"layers": cfg.num_layers, "heads": cfg.num_heads, "width": cfg.width, "block": length,
             "batch": b}
    info = dict(shape, config=name, compute_dtype=config.model.compute_dtype, params=int(n_params),
                use_bias=cfg.use_bias, unit="tokens", units_per_step=b * length, compile_s=compile_s,
                model_gflop_per_step=flops_per_step(cfg, b) / 1e9)
    return info, run, shape


def bench_group(names, steps: int | None, rounds: int, torch_python: str | None,
                torch_threads: int = 0) -> list[dict]:
    """Measures lab rows `names` (one model shape) against their torch recipes
    (`common.alternate_with_torch`); -> one row per lab row."""
    steps = steps or STEPS
    built = {name: lab_step(name) for name in names}
    shape = next(iter(built.values()))[2]
    return common.alternate_with_torch({name: (info, run) for name, (info, run, _) in built.items()},
                                       {name: PAIRINGS[name] for name in names}, "benchmarks.nanogpt_torch",
                                       shape, steps, min(WARMUP, steps), rounds, torch_python, torch_threads)


def main() -> None:
    """Parses the flags, measures each config, prints the table and saves the JSON."""
    ensure_malloc_env()  # measure the process the experiments run in
    args, names, torch_python, torch_version = common.against_torch_flags(
        __doc__, CONFIGS, f"default: {STEPS}", "transformer_lm.json")
    load_before = os.getloadavg()
    peak = matmul_peak()
    rows = []
    for group in GROUPS.values():
        chosen = [n for n in group if n in names]
        if chosen:
            rows += bench_group(chosen, args.steps, args.rounds, torch_python, args.torch_threads)
    common.report_against_torch(rows, peak, load_before, torch_version, args.out, width=12)


if __name__ == "__main__":
    main()
