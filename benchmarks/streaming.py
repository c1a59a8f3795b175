"""Streamed data: the cost of a train batch read from the array_record files, against memory and grain.

    python -m benchmarks.streaming [--dataset=fashion_mnist] [--batch_sizes=128,1024] [--steps=50,10]
                                   [--rounds=3] [--train_steps=600] [--out=FILE]

Batchers, each giving the same batches (checked before timing; grain's too) of the train split:
  memory       `lab.pipeline.EpochBatcher` over `lab.data.load`'s arrays (the default data_source);
  stream       the same batcher over `lab.data.stream` (data_source='stream'): lab's gatherer, one
               bulk array_record read of the batch's rows, then its own decoder of the records;
  stream_tfds  the same batcher over a row source that decodes with TFDS's `__getitems__`
               (the generic decoder `lab.data.stream` bypasses for fixed-shape numeric features);
  grain        `grain.MapDataset.source(indices).map(tfds_source[i]).batch(B)` over the same TFDS
               data source and the batcher's own example order, read as `ds[step]` (a pure
               function of the step, like lab's batchers);
  grain_iter   that dataset iterated with `to_iter_dataset(grain.ReadOptions())` (16 threads):
               grain's threads read ahead of the consumer; timed from the iterator's start.
For each batch size: the mean time per batch over `--steps` steps (the median over `--rounds`
rounds), examples/s, and the first batch's cost including opening the split (memory: reading the
whole split; grain_iter: starting its threads). The array_record files are in the OS page cache
(they were just built or read): cold-disk reads would cost more.

Needs grain, which lab does not depend on: `pip install grain`.

End to end: steps/s of `python -m experiments.mlp_classifier --config=...:fashion` (or the default
digits config with `--dataset=digits`) for `--train_steps` steps with `--config.data_source=memory`
and `=stream`, the median over its log intervals (compile and the final eval excluded) and the
whole loop's; the two runs' test metrics must be identical. Prints a table and writes JSON
(default `benchmarks/runs/<date>_<time>/streaming.json`; `--out=benchmarks/results/streaming.json`
updates the committed one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version

import numpy as np
import tensorflow_datasets as tfds

import lab.data
from benchmarks import common
from experiments.cli import ensure_malloc_env
from lab import pipeline
from lab.data import registry, storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TfdsDecodedRows:
    """A `lab.pipeline.RowSource` that decodes with TFDS's own bulk `__getitems__`, for comparison."""

    def __init__(self, name: str, split: str):
        self.spec = registry._spec(name)
        self.builder = registry._prepared(name, storage.default_data_dir())
        self.source = self.builder.as_data_source(split=split)

    def __len__(self) -> int:
        return len(self.source)

    def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """Rows `indices` int (K,) in `lab.data.load`'s form: {key: (K, ...)}."""
        raw = storage._stack(self.source.__getitems__(np.asarray(indices).tolist()))
        return self.spec.canonical({k: raw[k] for k in self.spec.keys}, self.builder)


def _grain():
    """The grain module; exits with one line if it is not installed (lab does not depend on it)."""
    try:
        import grain
    except ImportError:
        raise SystemExit("error: benchmarks.streaming compares with grain, which lab does not install: "
                         "pip install grain") from None
    return grain


def grain_dataset(name: str, batcher: pipeline.EpochBatcher, steps: int):
    """A grain.MapDataset over the split's TFDS data source: element `step` is the batcher's batch
    `step` (its example order, read example by example through TFDS, stacked by grain's batch)."""
    grain = _grain()
    spec, builder = registry._spec(name), registry._prepared(name, storage.default_data_dir())
    source = tfds.data_source(builder.name, split="train", data_dir=storage.default_data_dir())
    order = np.concatenate([batcher.indices(s) for s in range(steps)])
    return (grain.MapDataset.source(order)
            .map(lambda i: source[int(i)])
            .batch(batcher.batch_size)
            .map(lambda raw: spec.canonical(raw, builder)))


def _same(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)


def measure_batchers(name: str, batch_size: int, steps: int, rounds: int) -> dict:
    """Per batcher: `ms_per_batch` (median over rounds of the mean over `steps` batches),
    `examples_per_sec`, `first_batch_ms` (opening the split and reading batch 0)."""
    seed = 0
    t = time.perf_counter()
    memory = pipeline.EpochBatcher(lab.data.load(name, "train"), batch_size, seed)
    memory.batch(0)
    first = {"memory": time.perf_counter() - t}
    t = time.perf_counter()
    stream = pipeline.EpochBatcher(lab.data.stream(name, "train"), batch_size, seed)
    stream.batch(0)
    first["stream"] = time.perf_counter() - t
    t = time.perf_counter()
    stream_tfds = pipeline.EpochBatcher(TfdsDecodedRows(name, "train"), batch_size, seed)
    stream_tfds.batch(0)
    first["stream_tfds"] = time.perf_counter() - t
    t = time.perf_counter()
    ds = grain_dataset(name, memory, steps)
    ds[0]
    first["grain"] = time.perf_counter() - t

    for step in (0, steps - 1):  # every batcher gives the in-memory batch
        want = memory.batch(step)
        for label, got in (("stream", stream.batch(step)), ("stream_tfds", stream_tfds.batch(step)),
                           ("grain", ds[step])):
            assert _same(got, want), f"{label} batch {step} differs from the in-memory one"

    def timed(read) -> float:
        t = time.perf_counter()
        for step in range(steps):
            read(step)
        return (time.perf_counter() - t) / steps

    def timed_iter() -> tuple[float, float]:
        # Timed from the iterator's start: its threads read ahead up to `steps` batches, so the
        # batches after the first come out of its buffer and timing them alone would flatter it.
        t = time.perf_counter()
        it = iter(ds.to_iter_dataset(_grain().ReadOptions()))
        first_batch = next(it)
        first = time.perf_counter() - t
        for _ in range(steps - 1):
            next(it)
        total = time.perf_counter() - t
        assert _same(first_batch, memory.batch(0)), "grain_iter batch 0 differs from the in-memory one"
        return first, total / steps

    times = {k: [] for k in ("memory", "stream", "stream_tfds", "grain", "grain_iter")}
    for _ in range(rounds):
        times["memory"].append(timed(memory.batch))
        times["stream"].append(timed(stream.batch))
        times["stream_tfds"].append(timed(stream_tfds.batch))
        times["grain"].append(timed(ds.__getitem__))
        first["grain_iter"], per_batch = timed_iter()
        times["grain_iter"].append(per_batch)
    out = {}
    for k, ts in times.items():
        ms = float(np.median(ts)) * 1e3
        out[k] = {"ms_per_batch": ms, "round_ms": [x * 1e3 for x in ts],
                  "examples_per_sec": batch_size / ms * 1e3, "first_batch_ms": first[k] * 1e3}
    return {"batch_size": batch_size, "steps": steps, "rounds": rounds, "batchers": out}


def end_to_end(dataset: str, steps: int) -> dict:
    """Steps/s of the MLP classifier's CLI run with data_source memory, then stream."""
    variant = "fashion" if dataset == "fashion_mnist" else "digits"
    log_every = max(1, steps // 6)
    out = {"command": f"python -m experiments.mlp_classifier --config=experiments/mlp_classifier/config.py:"
                      f"{variant} --config.num_train_steps={steps} --config.log_every_steps={log_every} "
                      f"--config.eval_every_steps={steps} --config.data_source=..."}
    results = {}
    for source in ("memory", "stream"):
        with tempfile.TemporaryDirectory() as workdir:
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "experiments.mlp_classifier", f"--workdir={workdir}",
                 f"--config=experiments/mlp_classifier/config.py:{variant}",
                 f"--config.num_train_steps={steps}", f"--config.log_every_steps={log_every}",
                 f"--config.eval_every_steps={steps}", f"--config.data_source={source}"],
                cwd=ROOT, capture_output=True, text=True)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                raise RuntimeError(f"the {source} run failed: {proc.stderr[-2000:]}")
            with open(os.path.join(workdir, "results.json")) as f:
                results[source] = json.load(f)
            with open(os.path.join(workdir, "metrics.jsonl")) as f:
                rates = [r["steps_per_sec"] for r in map(json.loads, f) if "steps_per_sec" in r]
        # The first log interval holds the compile: the median of the rest is the steady rate.
        out[source] = {"steady_steps_per_sec": float(np.median(rates[1:])), "interval_steps_per_sec": rates,
                       "loop_steps_per_sec": results[source]["steps_per_sec"],
                       "train_seconds": results[source]["train_seconds"], "process_wall_seconds": wall,
                       "test_accuracy": results[source]["test_accuracy"]}
    metrics = ("test_accuracy", "test_loss", "test_confusion_matrix")
    out["identical_results"] = all(results["memory"][k] == results["stream"][k] for k in metrics)
    out["stream_over_memory_steady"] = out["stream"]["steady_steps_per_sec"] / out["memory"]["steady_steps_per_sec"]
    return out


def main() -> None:
    """Parses the flags, measures the batchers and the end-to-end runs, prints and saves JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist", help="falls back to digits if it cannot be built")
    parser.add_argument("--batch_sizes", default="128,1024")
    parser.add_argument("--steps", default="50,10", help="timed batches per round, one per batch size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train_steps", type=int, default=600, help="end-to-end run length; 0 skips it")
    common.add_out_flag(parser, "streaming.json")
    args = parser.parse_args()  # --help needs no grain
    _grain()  # before any work
    ensure_malloc_env()  # measure the process the experiments run in
    out = common.out_path(args.out, "streaming.json")
    common.print_header("streaming", out)

    dataset = args.dataset
    try:
        n = len(lab.data.stream(dataset, "train"))
    except lab.data.DataError as e:
        print(f"{dataset} is not available ({e}): measuring digits instead")
        dataset = "digits"
        n = len(lab.data.stream(dataset, "train"))
    load_before = os.getloadavg()
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    rows = [measure_batchers(dataset, b, s, args.rounds) for b, s in zip(sizes, steps, strict=True)]
    e2e = end_to_end(dataset, args.train_steps) if args.train_steps else None
    cpu = common.cpu_info()
    result = {"dataset": dataset, "train_examples": n, "batchers": rows, "end_to_end": e2e,
              "grain": version("grain"),
              "tensorflow_datasets": tfds.__version__, "cpu": cpu,
              "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
              "machine": common.machine()}

    print(f"CPU {cpu.get('model_name', '?')}; {dataset} train ({n} examples); load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    for row in rows:
        print(f"batch {row['batch_size']}:")
        for name, r in row["batchers"].items():
            print(f"  {name:12s} {r['ms_per_batch']:8.3f} ms/batch  {r['examples_per_sec']:10.0f} examples/s  "
                  f"first batch {r['first_batch_ms']:7.1f} ms")
    if e2e:
        for source in ("memory", "stream"):
            r = e2e[source]
            print(f"end to end, data_source={source}: {r['steady_steps_per_sec']:.0f} steps/s steady, "
                  f"{r['loop_steps_per_sec']:.0f} over the loop, test accuracy {r['test_accuracy']:.4f}")
        print(f"stream / memory = {e2e['stream_over_memory_steady']:.2f}; identical results: "
              f"{e2e['identical_results']}")
    common.save(result, out)


if __name__ == "__main__":
    main()
