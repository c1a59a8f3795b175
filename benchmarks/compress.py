"""Compression of the Fashion-MNIST MLP: accuracy, parameter bytes and CPU latency per method.

    python -m benchmarks.compress [--workdir=runs/compress_bench] [--out=FILE]

Trains (once; a finished run in --workdir is reused) the seed recipe `mlp_classifier:fashion`
(784-128-64-10, SGD, 6,000 steps) on the one loop, then compares beside it:
  int8       `lab.compress.quantize` of its params (per-channel scales), dequantized inside the jit;
  pruned-50, pruned-90
             fine-tuned from it on the loop with the `optimizer.prune` block: sparsity ramped
             (cubic) over 2,000 steps, then 1,000 steps with the masks fixed; sparsity checked on
             the saved params;
  distilled  a 784-32-10 student trained on the loop with `lab.compress.DistillationTask`
             (T=4, alpha=0.9) from the baseline, beside the same student on labels alone.
Each row: test accuracy (10,000 images), parameter bytes, and the median latency of the jitted
apply over many calls at batch 1 and 256 on CPU (params as arguments, as an exported model).
Prints a table and writes JSON (default `benchmarks/results/compress.json`).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import ml_collections
import numpy as np

import lab.data
from benchmarks import common
from experiments.mlp_classifier.__main__ import main as train_mlp
from experiments.mlp_classifier.config import get_config
from lab import train
from lab.checkpoint import load_params
from lab.compress import DistillationTask, dequantize, param_bytes, quantize, sparsity
from lab.models.mlp import MLP
from lab.tasks.classification import ClassificationTask

BASE_FEATURES = (128, 64)
STUDENT_FEATURES = (32,)


def _accuracy(apply, params, test: dict) -> float:
    """Test accuracy of jitted `apply(params, x)`, in batches of 1,000."""
    fn = jax.jit(apply)
    correct = 0
    for i in range(0, len(test["label"]), 1000):
        logits = np.asarray(fn(params, test["inputs"][i:i + 1000]))
        correct += int(np.sum(np.argmax(logits, -1) == test["label"][i:i + 1000]))
    return correct / len(test["label"])


def _latency_ms(apply, params, test: dict, batch: int, calls: int) -> float:
    """Median wall time of one jitted `apply(params, x)` call on `batch` test images, waited for."""
    fn = jax.jit(apply)
    x = test["inputs"][:batch]
    fn(params, x).block_until_ready()  # compile
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        fn(params, x).block_until_ready()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def _row(name: str, apply, params, test: dict, calls: int, **extra) -> dict:
    row = dict(method=name, test_accuracy=_accuracy(apply, params, test), param_bytes=param_bytes(params),
               latency_ms_batch_1=_latency_ms(apply, params, test, 1, calls),
               latency_ms_batch_256=_latency_ms(apply, params, test, 256, max(calls // 4, 50)), **extra)
    print(f"{name:14s} accuracy {row['test_accuracy']:.4f}  {row['param_bytes']:>9,d} B  "
          f"batch 1: {row['latency_ms_batch_1']:.3f} ms  batch 256: {row['latency_ms_batch_256']:.3f} ms", flush=True)
    return row


def _apply_fn(features, quantized: bool = False):
    model = MLP(features=features)
    if quantized:
        return lambda q, x: model.apply({"params": dequantize(q)}, x)
    return lambda p, x: model.apply({"params": p}, x)


def _pruned_run(baseline_dir: str, workdir: str, target: float) -> tuple[dict, float]:
    """Fine-tunes the baseline with pruning to `target`; (its params, seconds of the run)."""
    c = get_config("fashion")
    c.init_from = baseline_dir
    c.num_train_steps = 3000
    c.eval_every_steps = c.checkpoint_every_steps = 3000
    c.optimizer.prune = ml_collections.ConfigDict(dict(target_sparsity=target, begin_step=0, end_step=2000,
                                                       update_every=100))
    t = time.perf_counter()
    train_mlp(c, workdir)
    return load_params(workdir)[0], time.perf_counter() - t


def _student_run(task, workdir: str, train_rows, test_rows) -> tuple[dict, float]:
    """Trains a 784-32-10 student with `task` on the fashion recipe; (its params, seconds)."""
    c = get_config("fashion")
    c.model.features = STUDENT_FEATURES
    c.eval_every_steps = c.checkpoint_every_steps = c.num_train_steps
    data = train.epoch_data(train_rows, {"test": test_rows}, c)
    t = time.perf_counter()
    train.train_and_evaluate(c, workdir, task, data)
    return load_params(workdir)[0], time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/compress_bench", help="runs are cached here")
    parser.add_argument("--calls", type=int, default=500, help="timed calls at batch 1 (a quarter at 256)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "compress.json"))
    args = parser.parse_args()
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    root = os.path.abspath(args.workdir)
    train_rows, test = lab.data.load("fashion_mnist", "train"), lab.data.load("fashion_mnist", "test")

    baseline_dir = os.path.join(root, "baseline")
    train_mlp(get_config("fashion"), baseline_dir)
    base = load_params(baseline_dir)[0]
    rows = [_row("baseline", _apply_fn(BASE_FEATURES), base, test, args.calls)]
    q = quantize(base)
    rows.append(_row("int8", _apply_fn(BASE_FEATURES, quantized=True), q, test, args.calls))
    for target in (0.5, 0.9):
        params, seconds = _pruned_run(baseline_dir, os.path.join(root, f"pruned_{int(target * 100)}"), target)
        nonzero = int(sum(np.count_nonzero(x) for x in jax.tree.leaves(params)))
        rows.append(_row(f"pruned-{int(target * 100)}", _apply_fn(BASE_FEATURES), params, test, args.calls,
                         sparsity=sparsity(params), nonzero_params=nonzero, train_seconds=seconds))

    example = {"inputs": train_rows["inputs"][:1]}
    student = MLP(features=STUDENT_FEATURES)
    teacher = MLP(features=BASE_FEATURES)
    distill = DistillationTask(student, example, lambda p, x: teacher.apply({"params": p}, x), base,
                               temperature=4.0, alpha=0.9)
    params, seconds = _student_run(distill, os.path.join(root, "distilled"), train_rows, test)
    rows.append(_row("distilled", _apply_fn(STUDENT_FEATURES), params, test, args.calls, train_seconds=seconds))
    params, seconds = _student_run(ClassificationTask(student, example), os.path.join(root, "student_labels"),
                                   train_rows, test)
    rows.append(_row("student-labels", _apply_fn(STUDENT_FEATURES), params, test, args.calls,
                     train_seconds=seconds))

    base_row = rows[0]
    print(f"\n{'method':14s} {'accuracy':>8s} {'vs base':>8s} {'bytes':>9s} {'x smaller':>9s} "
          f"{'ms @1':>7s} {'ms @256':>8s}")
    for r in rows:
        print(f"{r['method']:14s} {r['test_accuracy']:8.4f} {r['test_accuracy'] - base_row['test_accuracy']:+8.4f} "
              f"{r['param_bytes']:9,d} {base_row['param_bytes'] / r['param_bytes']:9.2f} "
              f"{r['latency_ms_batch_1']:7.3f} {r['latency_ms_batch_256']:8.3f}")
    cpu = common.cpu_info()
    print(f"CPU {cpu.get('model_name', '?')}; load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; {time.perf_counter() - t_start:.0f} s in all")
    common.save({"rows": rows, "cpu": cpu, "machine": common.machine(),
                 "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
                 "seconds": time.perf_counter() - t_start,
                 "notes": "pruned params are stored dense (same bytes, same dense matmuls); "
                          "int8 latency includes dequantizing inside the jitted call"}, args.out)


if __name__ == "__main__":
    main()
