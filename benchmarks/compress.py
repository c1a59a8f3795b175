"""Compression of trained classifiers: accuracy, parameter bytes and CPU latency per method.

    python -m benchmarks.compress [--family=mlp,transformer] [--workdir=runs/compress_bench] [--out=FILE]

For each family, trains its baseline once on the one loop (a finished run in --workdir is reused)
and compares beside it:
  int8       `lab.compress.quantize` of its params (per-channel scales), dequantized inside the jit;
  pruned-50, pruned-90
             fine-tuned from it on the loop with the `optimizer.prune` block: sparsity ramped
             (cubic) over the first two thirds of the fine-tune, then the masks fixed; sparsity
             checked on the saved params;
  distilled  a smaller student trained on the loop with `lab.tasks.distill.DistillationTask` (T=4,
             alpha=0.9) from the baseline, beside the same student on labels alone.
The families:
  mlp          the seed recipe `mlp_classifier:fashion` (784-128-64-10, SGD, 6,000 steps) on
               Fashion-MNIST; fine-tune 3,000 steps (ramp 2,000); student 784-32-10.
  transformer  `transformer_classifier` from scratch (2 layers, width 128, 3 epochs) on the
               speeches, play and genre heads; fine-tune 1 epoch; student 1 layer, width 64,
               head 128.
Each row: test accuracy per head, parameter bytes, and the median latency of the jitted apply over
many calls at batch 1 and 256 on CPU (params as arguments, as an exported model). Prints a table
per family and writes JSON (default `benchmarks/runs/<date>_<time>/compress.json`;
`--out=benchmarks/results/compress.json` updates the committed one).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

import lab.data
from benchmarks import common
from lab import train
from lab.checkpoint import load_params
from lab.compress import dequantize, param_bytes, quantize
from lab.optim.prune import sparsity
from lab.tasks.distill import DistillationTask
from lab.tasks.classification import ClassificationTask


@dataclasses.dataclass
class Family:
    """What the benchmark needs of a classifier family.

    build: config -> (flax module, train arrays, test arrays); arrays hold `input_keys` and
      `label_keys` (N, ...).
    """

    name: str
    config: Callable[[], ml_collections.ConfigDict]  # the baseline's config
    train: Callable[[ml_collections.ConfigDict, str], dict]  # the experiment's main
    build: Callable[[ml_collections.ConfigDict], tuple[Any, dict, dict]]
    shrink: Callable[[ml_collections.ConfigDict], None]  # makes the config's model the student
    fine_tune_steps: Callable[[int], int]  # the baseline's steps -> the pruning fine-tune's
    input_keys: tuple[str, ...] = ("inputs",)
    label_keys: tuple[str, ...] = ("label",)


def _mlp_family() -> Family:
    from experiments.mlp_classifier.__main__ import main
    from experiments.mlp_classifier.config import get_config
    from lab.tasks.classification import image_classifier

    def build(c):
        rows = {split: lab.data.load(c.dataset, split, data_dir=c.data_dir) for split in ("train", "test")}
        return image_classifier(c.model, 10), rows["train"], rows["test"]

    return Family("mlp", lambda: get_config("fashion"), main, build,
                  shrink=lambda c: setattr(c.model, "features", (32,)), fine_tune_steps=lambda n: n // 2)


def _transformer_family() -> Family:
    from experiments.transformer_classifier import __main__ as tc
    from experiments.transformer_classifier.config import get_config

    def build(c):
        model, tokenizer, ids, _ = tc.build_model(c)
        train_arrays, test_arrays = (tc.load_split(c, s, tokenizer, ids) for s in ("train", "test"))
        tc.resolve_steps(c, len(train_arrays["play"]))
        return model, train_arrays, test_arrays

    def shrink(c):
        c.model.update(num_layers=1, width=64, head_hidden=128)

    return Family("transformer", get_config, tc.main, build, shrink, fine_tune_steps=lambda n: n // 3,
                  input_keys=("inputs", "token_mask"), label_keys=tc.LABELS)


FAMILIES = {"mlp": _mlp_family, "transformer": _transformer_family}


def _apply_fn(model, family: Family, quantized: bool = False):
    """`(params, inputs dict) -> {head: logits}` in eval mode; int8 params dequantized inside."""
    def apply(params, x):
        params = dequantize(params) if quantized else params
        out = model.apply({"params": params}, *[x[k] for k in family.input_keys], train=False)
        return out if isinstance(out, dict) else {family.label_keys[0]: out}
    return apply


def _accuracy(apply, params, test: dict, family: Family) -> dict[str, float]:
    """Test accuracy per head of jitted `apply`, in batches of 500."""
    fn = jax.jit(apply)
    n = len(test[family.label_keys[0]])
    correct = {k: 0 for k in family.label_keys}
    for i in range(0, n, 500):
        heads = fn(params, {k: test[k][i:i + 500] for k in family.input_keys})
        for k in family.label_keys:
            correct[k] += int(np.sum(np.argmax(np.asarray(heads[k]), -1) == test[k][i:i + 500]))
    return {k: c / n for k, c in correct.items()}


def _latency_ms(apply, params, test: dict, family: Family, batch: int, calls: int) -> float:
    """Median wall time of one jitted `apply` call on `batch` test examples, waited for."""
    fn = jax.jit(apply)
    x = {k: test[k][:batch] for k in family.input_keys}
    jax.block_until_ready(fn(params, x))  # compile
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(fn(params, x))
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def _row(name: str, apply, params, test: dict, family: Family, calls: int, **extra) -> dict:
    accuracy = _accuracy(apply, params, test, family)
    row = dict(method=name, test_accuracy=accuracy[family.label_keys[0]],
               **{f"test_{k}_accuracy": v for k, v in accuracy.items() if len(accuracy) > 1},
               param_bytes=param_bytes(params),
               latency_ms_batch_1=_latency_ms(apply, params, test, family, 1, calls),
               latency_ms_batch_256=_latency_ms(apply, params, test, family, 256, max(calls // 4, 50)), **extra)
    print(f"{family.name} {name:14s} accuracy " + " ".join(f"{k} {v:.4f}" for k, v in accuracy.items())
          + f"  {row['param_bytes']:>9,d} B  batch 1: {row['latency_ms_batch_1']:.3f} ms  "
          f"batch 256: {row['latency_ms_batch_256']:.3f} ms", flush=True)
    return row


def _pruned_run(family: Family, baseline_dir: str, workdir: str, target: float, steps: int) -> tuple[dict, float]:
    """Fine-tunes the baseline with pruning to `target` for `steps` steps (the ramp over the first
    two thirds); (its params, seconds of the run)."""
    c = family.config()
    c.init_from = baseline_dir
    if "init_from_params" in c:
        c.init_from_params = ()  # every parameter, not only a pretrained encoder
    c.num_train_steps = steps
    c.eval_every_steps = c.checkpoint_every_steps = steps
    if c.optimizer.get("warmup_steps", 0) is None:
        c.optimizer.warmup_steps = max(1, steps // 10)
    c.optimizer.prune = ml_collections.ConfigDict(dict(target_sparsity=target, begin_step=0,
                                                       end_step=2 * steps // 3, update_every=max(1, steps // 30)))
    t = time.perf_counter()
    family.train(c, workdir)
    return load_params(workdir)[0], time.perf_counter() - t


def _student_run(family: Family, teacher=None, workdir: str = "") -> tuple[Any, dict, float]:
    """Trains the student on the baseline's recipe, distilled from `teacher` (model, params) or on
    labels alone; (the student module, its params, seconds)."""
    c = family.config()
    family.shrink(c)
    model, train_arrays, test_arrays = family.build(c)
    c.eval_every_steps = c.checkpoint_every_steps = c.num_train_steps
    example = {k: train_arrays[k][:1] for k in family.input_keys}
    extra = dict(label_keys=family.label_keys, extra_input_keys=family.input_keys[1:])
    if teacher is None:
        task = ClassificationTask(model, example, **extra)
    else:
        teacher_model, teacher_params = teacher
        task = DistillationTask(model, example, lambda p, *x: teacher_model.apply({"params": p}, *x, train=False),
                                teacher_params, temperature=4.0, alpha=0.9, **extra)
    data = train.epoch_data(train_arrays, {"test": test_arrays}, c)
    t = time.perf_counter()
    train.train_and_evaluate(c, workdir, task, data)
    return model, load_params(workdir)[0], time.perf_counter() - t


def run_family(family: Family, root: str, calls: int) -> list[dict]:
    """The baseline and its compressed variants (rows as `_row`)."""
    c = family.config()
    model, _, test = family.build(c)
    baseline_dir = os.path.join(root, "baseline")
    t = time.perf_counter()
    family.train(c, baseline_dir)
    base_seconds = time.perf_counter() - t
    base = load_params(baseline_dir)[0]
    rows = [_row("baseline", _apply_fn(model, family), base, test, family, calls,
                 train_steps=int(c.num_train_steps), train_seconds=base_seconds)]
    rows.append(_row("int8", _apply_fn(model, family, quantized=True), quantize(base), test, family, calls))
    steps = family.fine_tune_steps(int(c.num_train_steps))
    for target in (0.5, 0.9):
        params, seconds = _pruned_run(family, baseline_dir, os.path.join(root, f"pruned_{int(target * 100)}"),
                                      target, steps)
        nonzero = int(sum(np.count_nonzero(x) for x in jax.tree.leaves(params)))
        rows.append(_row(f"pruned-{int(target * 100)}", _apply_fn(model, family), params, test, family, calls,
                         sparsity=sparsity(params), nonzero_params=nonzero, train_steps=steps,
                         train_seconds=seconds))
    for name, teacher in (("distilled", (model, base)), ("student-labels", None)):
        student, params, seconds = _student_run(family, teacher, os.path.join(root, name))
        rows.append(_row(name, _apply_fn(student, family), params, test, family, calls, train_seconds=seconds))
    return rows


def _print_table(family: Family, rows: list[dict]) -> None:
    base = rows[0]
    heads = [k for k in base if k.startswith("test_") and k.endswith("_accuracy") and k != "test_accuracy"] \
        or ["test_accuracy"]
    print(f"\n{family.name}: {'method':14s} " + " ".join(f"{h[5:-9] or 'accuracy':>8s}" for h in heads)
          + f" {'vs base':>8s} {'bytes':>10s} {'x smaller':>9s} {'ms @1':>7s} {'ms @256':>8s}")
    for r in rows:
        print(f"{'':{len(family.name) + 2}s}{r['method']:14s} " + " ".join(f"{r[h]:8.4f}" for h in heads)
              + f" {r['test_accuracy'] - base['test_accuracy']:+8.4f} {r['param_bytes']:10,d} "
              f"{base['param_bytes'] / r['param_bytes']:9.2f} {r['latency_ms_batch_1']:7.3f} "
              f"{r['latency_ms_batch_256']:8.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="mlp,transformer", help=f"comma-separated: {', '.join(FAMILIES)}")
    parser.add_argument("--workdir", default="runs/compress_bench", help="runs are cached here")
    parser.add_argument("--calls", type=int, default=500, help="timed calls at batch 1 (a quarter at 256)")
    common.add_out_flag(parser, "compress.json")
    args = parser.parse_args()
    names = args.family.split(",")
    if unknown := [n for n in names if n not in FAMILIES]:
        parser.error(f"unknown --family {', '.join(unknown)}: use {', '.join(FAMILIES)}")
    out = common.out_path(args.out, "compress.json")
    common.print_header("compress", out)
    t_start = time.perf_counter()
    load_before = os.getloadavg()
    results = {}
    for name in names:
        family = FAMILIES[name]()
        # The MLP's runs stay where earlier versions of this benchmark put them (reused).
        root = os.path.abspath(args.workdir if name == "mlp" else os.path.join(args.workdir, name))
        results[name] = run_family(family, root, args.calls)
        _print_table(family, results[name])
    cpu = common.cpu_info()
    print(f"CPU {cpu.get('model_name', '?')}; load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after; {time.perf_counter() - t_start:.0f} s in all")
    common.save({"families": results, "cpu": cpu, "machine": common.machine(),
                 "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
                 "seconds": time.perf_counter() - t_start,
                 "notes": "pruned params are stored dense (same bytes, same dense matmuls); "
                          "int8 latency includes dequantizing inside the jitted call"}, out)


if __name__ == "__main__":
    main()
