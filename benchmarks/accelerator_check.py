"""A prepared accelerator check: what lab does on one GPU, in one short run, written to one JSON.

    python -m benchmarks.accelerator_check [--platform=gpu|cpu] [--budget_s=480] [--out=FILE]
        [--parts=tests,gpt_wide,torch,gpt125m,mlp[,nanogpt]] [--gpt_steps=300] [--torch_python=PYTHON]
        [--cpu_reference=FILE] [--quick]

Parts, in order; one is skipped (and the JSON says why) when the budget left cannot cover it:
  tests     lab's parallel and contract tests (`tests/test_parallel.py`, `tests/test_contract.py`)
            with jax's default backend on the device (needs pytest).
  gpt_wide  `transformer_lm`'s `wide` recipe (nanoGPT's GPU model shape): lab's compiled train step
            in float32 and bfloat16 (median step time, tokens/s, model FLOP/s as a fraction of the
            device's bfloat16 matmul peak), then the real run for `--gpt_steps` steps and its
            validation loss; with `--cpu_reference` (this script's JSON from a CPU run of the same
            steps) the difference from the CPU's loss.
  torch     the same recipe in eager PyTorch on the same device (`benchmarks.nanogpt_torch
            --device=cuda`), if `--torch_python` has torch with CUDA: lab / PyTorch per dtype.
  gpt125m   a GPT of GPT-2 small's shape (12 layers, width 768, vocabulary 50304, 1,024 tokens per
            sequence) in bfloat16: step time and MFU against the device's bfloat16 peak (its
            datasheet figure when `--peak_tflops` gives it, else the measured matmul peak).
  mlp       the MLP recipe `mlp_classifier:digits_tuned` run to its end: test accuracy against its
            row (`mlp_digits_tuned`) in experiments/reference_results.json.
  nanogpt   only when named: nanoGPT's GPU recipe (`transformer_lm:nanogpt_gpu`, row lm_nanogpt_gpu)
            run to its end for seeds 0 .. `--nanogpt_seeds`-1 while the budget lasts: each seed's
            best-eval and last val loss and wall time.
`--quick` shrinks every shape and step count (the CPU test of this script); `--platform=cpu`
runs it on the CPU (JAX_PLATFORMS=cpu), to check the script where no GPU is lent.

The GPU machine this targets has jax and jaxlib (0.10 or 0.11) with CUDA, flax, optax and
orbax-checkpoint installed and no network: lab's other dependencies travel as wheels made here,
    pip download --only-binary=:all: --no-deps --python-version 3.12 --platform manylinux2014_x86_64 \\
        --platform manylinux_2_17_x86_64 -d wheels ml-collections tensorflow-datasets array_record \\
        dm-tree etils promise simple-parsing tensorboardX tokenizers mnist1d pytest
and are installed there with `pip install --no-index --no-deps wheels/*` before this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("tests", "gpt_wide", "torch", "gpt125m", "mlp", "nanogpt")
DEFAULT_PARTS = PARTS[:-1]  # nanogpt is whole runs: asked for by name
# The least time (s) each part needs on a GPU; it is skipped when less is left.
NEEDS_S = {"tests": 60, "gpt_wide": 90, "torch": 60, "gpt125m": 60, "mlp": 30, "nanogpt": 240}


def _flags(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--budget_s", type=float, default=480.0, help="stop starting parts after this")
    parser.add_argument("--out", default=None, help="the JSON (default: benchmarks/runs/DATE_TIME/accelerator_check.json)")
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--nanogpt_seeds", type=int, default=3, help="seeds of the nanogpt part (0, 1, ...)")
    parser.add_argument("--gpt_steps", type=int, default=300, help="steps of the real wide run")
    parser.add_argument("--torch_python", default="", help="a Python with CUDA torch for the yardstick")
    parser.add_argument("--cpu_reference", default="", help="this script's JSON from a CPU run")
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="the device's dense bfloat16 peak from its datasheet (0: the measured matmul peak)")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and steps: the script's own test")
    args = parser.parse_args(argv)
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}: use {', '.join(PARTS)}")
    return args


def _run(cmd: list[str], timeout: float, env: dict | None = None, cwd: str = ROOT) -> tuple[int, str, float]:
    """(exit status, the output's last 3,000 characters, seconds) of `cmd`; 124 on a timeout."""
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
        return proc.returncode, (proc.stdout + proc.stderr)[-3000:], time.perf_counter() - t
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out[-3000:], time.perf_counter() - t


def bf16_matmul_peak(n: int) -> float:
    """The best TFLOP/s of a jit'd n x n bfloat16 matmul accumulating in float32, on the default device."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.bfloat16)
    f = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=jnp.float32))
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e12


def gpt_flops_per_step(cfg, batch: int) -> float:
    """Model FLOPs of one GPT train step (nanoGPT's estimate): per token 6 x the matmul weights
    (blocks and the tied head) + 12 x layers x width x sequence length (attention)."""
    d, layers, length = cfg.width, cfg.num_layers, cfg.max_len
    matmul_params = layers * 12 * d * d + cfg.vocab_size * d
    return (6 * matmul_params + 12 * layers * d * length) * batch * length


def time_gpt_step(cfg, config, batch: int, steps: int) -> dict:
    """lab's compiled train step for the TransformerConfig `cfg` on random tokens: compile time,
    median step time (each step waited for) and tokens/s."""
    import numpy as np

    from benchmarks import common
    from lab.tasks.language_model import CausalLMTask

    rng = np.random.default_rng(0)
    batches = [{"inputs": rng.integers(0, cfg.vocab_size, (batch, cfg.max_len)).astype(np.int32),
                "targets": rng.integers(0, cfg.vocab_size, (batch, cfg.max_len)).astype(np.int32)} for _ in range(2)]
    run, compile_s, n_params = common.compiled_train_step(CausalLMTask(cfg), config, batches)
    run(2)  # the first calls allocate
    times, _ = run(steps)
    median = float(np.median(times))
    return {"params": n_params, "compile_s": compile_s, "median_step_ms": median * 1e3,
            "tokens_per_sec": batch * cfg.max_len / median}


def part_tests(args, left: float) -> dict:
    """lab's parallel and contract tests on the device."""
    code, out, secs = _run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            "tests/test_parallel.py", "tests/test_contract.py"], left)
    return {"exit": code, "passed": code == 0, "seconds": secs, "tail": out.splitlines()[-5:]}


def part_gpt_wide(args, left: float, peak_tflops: float) -> dict:
    """The wide recipe's step in f32 and bf16, then the real run's validation loss."""
    from experiments.transformer_lm.config import get_config
    from lab.tasks.language_model import gpt_config

    out = {}
    for dtype in ("float32", "bfloat16"):
        config = get_config("wide")
        config.model.compute_dtype = dtype
        if args.quick:
            config.model.update(num_layers=1, width=64, num_heads=2, block_size=32)
        cfg = gpt_config(config.model, 76)
        row = time_gpt_step(cfg, config, config.batch_size, 3 if args.quick else 20)
        row["mfu"] = gpt_flops_per_step(cfg, config.batch_size) / (row["median_step_ms"] / 1e3) / (peak_tflops * 1e12)
        out[dtype] = row
    steps = 4 if args.quick else args.gpt_steps
    with tempfile.TemporaryDirectory() as workdir:
        flags = [f"--config.num_train_steps={steps}", f"--config.eval_every_steps={steps}",
                 f"--config.checkpoint_every_steps={steps}"]
        if args.quick:
            flags += ["--config.model.num_layers=1", "--config.model.width=64", "--config.model.num_heads=2",
                      "--config.model.block_size=32", "--config.eval_batches=2"]
        code, tail, secs = _run([sys.executable, "-m", "experiments.transformer_lm", f"--workdir={workdir}",
                                 f"--config={ROOT}/experiments/transformer_lm/config.py:wide", *flags], left - 10)
        results = os.path.join(workdir, "results.json")
        val = json.load(open(results)).get("val_loss") if code == 0 and os.path.exists(results) else None
    out["run"] = {"steps": steps, "exit": code, "seconds": secs, "val_loss": val,
                  "tail": None if code == 0 else tail.splitlines()[-5:]}
    if args.cpu_reference and val is not None:
        cpu = json.load(open(args.cpu_reference))["parts"]["gpt_wide"]["run"]
        out["run"]["cpu_val_loss"] = cpu["val_loss"]
        out["run"]["minus_cpu"] = val - cpu["val_loss"] if cpu["steps"] == steps else None
    return out


def part_torch(args, left: float, wide: dict | None) -> dict:
    """The wide recipe in eager PyTorch on the device, and lab / PyTorch per dtype."""
    if not args.torch_python:
        return {"skipped": "no --torch_python"}
    code, out, _ = _run([args.torch_python, "-c", "import torch; assert torch.cuda.is_available()"], 60)
    if code:
        return {"skipped": f"no CUDA torch under {args.torch_python}"}
    from experiments.transformer_lm.config import get_config

    c = get_config("wide")
    shape = dict(layers=c.model.num_layers, heads=c.model.num_heads, width=c.model.width,
                 block=c.model.block_size, batch=c.batch_size)
    code, tail, _ = _run([args.torch_python, "-m", "benchmarks.nanogpt_torch", "--recipes=gpt_f32,gpt_bf16",
                          "--device=cuda", "--steps=20", *[f"--{k}={v}" for k, v in shape.items()]], left)
    if code:
        return {"exit": code, "tail": tail.splitlines()[-5:]}
    torch_rows = json.loads(tail.strip().splitlines()[-1])["recipes"]
    out = {"torch": torch_rows}
    for dtype, recipe in (("float32", "gpt_f32"), ("bfloat16", "gpt_bf16")):
        if wide and dtype in wide:
            out[f"lab_over_torch_{dtype}"] = wide[dtype]["median_step_ms"] / torch_rows[recipe]["median_step_ms"]
    return out


def part_gpt125m(args, left: float, peak_tflops: float) -> dict:
    """GPT-2 small's shape at 1,024 tokens in bf16: step time and MFU."""
    from experiments.transformer_lm.config import get_config
    import jax.numpy as jnp

    from lab.models.transformer import TransformerConfig

    config = get_config()
    shape = dict(num_layers=12, width=768, num_heads=12, vocab_size=50304, max_len=1024)
    batch = 16
    if args.quick:
        shape, batch = dict(num_layers=1, width=64, num_heads=2, vocab_size=512, max_len=64), 2
    cfg = TransformerConfig(mlp_ratio=4, dropout_rate=0.0, use_bias=True, dtype=jnp.bfloat16, **shape)
    row = time_gpt_step(cfg, config, batch, 3 if args.quick else 10)
    row.update(batch=batch, **shape)
    row["mfu"] = gpt_flops_per_step(cfg, batch) / (row["median_step_ms"] / 1e3) / (peak_tflops * 1e12)
    return row


def part_mlp(args, left: float) -> dict:
    """The MLP recipe to its end, against its reference row."""
    from experiments import REFERENCE_TABLE
    from lab import reference_table, reproduce

    with tempfile.TemporaryDirectory() as workdir:
        flags = ["--config.num_train_steps=20", "--config.eval_every_steps=20"] if args.quick else []
        code, tail, secs = _run([sys.executable, "-m", "experiments.mlp_classifier", f"--workdir={workdir}",
                                 f"--config={ROOT}/experiments/mlp_classifier/config.py:digits_tuned", *flags], left)
        results = os.path.join(workdir, "results.json")
        acc = json.load(open(results)).get("test_accuracy") if code == 0 and os.path.exists(results) else None
    row = next(r for r in reference_table.load_table(REFERENCE_TABLE)["rows"] if r["name"] == "mlp_digits_tuned")
    ref = row["measured"]["full"]["metrics"]["test_accuracy"]
    line = reproduce.compare(row, "full", {0: {"test_accuracy": acc}})[0] if acc is not None else {}
    return {"exit": code, "seconds": secs, "test_accuracy": acc, "reference_mean": ref["mean"],
            "reference_band": line.get("band"), "comparable": not args.quick,  # --quick: 20 steps
            "holds": None if args.quick else line.get("holds"),
            "tail": None if code == 0 else tail.splitlines()[-5:]}


def part_nanogpt(args, left: float) -> dict:
    """nanoGPT's GPU recipe run to its end, one seed after another while the budget lasts."""
    start, seeds = time.perf_counter(), {}
    flags = ["--config.num_train_steps=4", "--config.eval_every_steps=2", "--config.eval_batches=2",
             "--config.batch_size=2", "--config.eval_batch_size=2", "--config.model.width=48",
             "--config.model.num_layers=1", "--config.model.block_size=32"] if args.quick else []
    for seed in range(args.nanogpt_seeds):
        remaining = left - (time.perf_counter() - start)
        if seeds and remaining < max(r["seconds"] for r in seeds.values()):
            break  # another seed would not finish
        with tempfile.TemporaryDirectory() as workdir:
            code, tail, secs = _run([sys.executable, "-m", "experiments.transformer_lm", f"--workdir={workdir}",
                                     f"--config={ROOT}/experiments/transformer_lm/config.py:nanogpt_gpu",
                                     f"--config.seed={seed}", *flags], remaining)
            path = os.path.join(workdir, "results.json")
            results = json.load(open(path)) if code == 0 and os.path.exists(path) else {}
        seeds[seed] = {"exit": code, "seconds": secs, **{k: results.get(k) for k in (
            "selected_val_loss", "selected_step", "val_loss", "steps_per_sec")},
            "tail": None if code == 0 else tail.splitlines()[-5:]}
        if code:
            break
    return {"seeds": seeds, "comparable": not args.quick}


def main(argv=None) -> dict:
    """Runs the chosen parts within the budget and writes the JSON; returns it."""
    args = _flags(argv)
    os.environ["JAX_PLATFORMS"] = "cpu" if args.platform == "cpu" else os.environ.get("JAX_PLATFORMS", "")
    import jax

    from benchmarks import common

    out = common.out_path(args.out, "accelerator_check.json")
    common.print_header("accelerator_check", out)
    start = time.perf_counter()
    measured = bf16_matmul_peak(256 if args.quick else 8192)
    peak = args.peak_tflops or measured
    result = {"machine": common.machine(), "cpu": common.cpu_info(), "device_kind": jax.devices()[0].device_kind,
              "platform": jax.devices()[0].platform, "quick": args.quick, "bf16_matmul_tflops": measured,
              "peak_tflops_for_mfu": peak, "peak_source": "datasheet" if args.peak_tflops else "measured", "parts": {}}
    chosen = args.parts.split(",")
    for name in PARTS:
        if name not in chosen:
            continue
        left = args.budget_s - (time.perf_counter() - start)
        if left < (5 if args.quick else NEEDS_S[name]):
            result["parts"][name] = {"skipped": f"{left:.0f} s of the budget left"}
            continue
        print(f"{name}: {left:.0f} s of the budget left", flush=True)
        t = time.perf_counter()
        if name == "tests":
            part = part_tests(args, left)
        elif name == "gpt_wide":
            part = part_gpt_wide(args, left, peak)
        elif name == "torch":
            part = part_torch(args, left, result["parts"].get("gpt_wide"))
        elif name == "gpt125m":
            part = part_gpt125m(args, left, peak)
        elif name == "mlp":
            part = part_mlp(args, left)
        else:
            part = part_nanogpt(args, left)
        part["wall_s"] = time.perf_counter() - t
        result["parts"][name] = part
        print(name, json.dumps(part)[:400], flush=True)
    result["wall_s"] = time.perf_counter() - start
    common.save(result, out)
    return result


if __name__ == "__main__":
    main()
