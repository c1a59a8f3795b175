"""The one train loop of lab: every experiment calls `train_and_evaluate`.

A family brings a `Task` (its model, loss and metrics); the experiment brings the config and the
data. The loop owns everything else: the state from the seed, the data-parallel step, periodic
eval, logging, checkpoints, exact resume, and stopping on a non-finite loss.

The step is `(state, batch) -> state'` with `rng = fold_in(train_key, state.step)`, jitted with the
state donated. It also adds its metrics into an on-device accumulator, so the host reads metrics
only at sync points (log, eval, checkpoint, end) and the device runs ahead of the Python loop
meanwhile (as in nanodo): no per-step device-to-host transfer.

Resume order: config check -> abstract state -> latest checkpoint -> restore state + meta ->
check the data position -> continue at meta['step'] (batches are a function of the step).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lab import checkpoint as ckpt_lib
from lab import configs, optim, parallel as parallel_lib, pipeline, report
from lab.logbook import MetricLogger

PyTree = Any


class Task(Protocol):
    """What a model family gives the loop. All functions are pure and jit-able except `summarize`."""

    count_unit: str  # what `count` counts, for throughput: 'examples' or 'tokens'

    def init_params(self, rng: jax.Array) -> PyTree:
        """Fresh parameters from `rng`."""

    def loss(self, params: PyTree, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict]:
        """Train loss: (sum of per-example losses, dict of sums incl. `count`). No collectives."""

    def evaluate(self, params: PyTree, batch: dict) -> dict:
        """Eval sums over a batch with `batch['mask']` (1 real, 0 padding); incl. `loss`, `count`."""

    def summarize(self, sums: dict) -> dict:
        """Host-side: metrics (means, rates, matrices) from summed arrays."""


@dataclass
class Data:
    """The data of a run. `train.batch(step)` must be a pure function of the step (exact resume).

    `evals` maps a split name to a function returning a fresh iterator of padded batches.
    """

    train: Any  # lab.pipeline.EpochBatcher | WindowBatcher
    evals: dict[str, Callable[[], Iterable[dict]]] = field(default_factory=dict)


def epoch_data(train_arrays: dict, eval_arrays: dict[str, dict], config) -> Data:
    """`Data` for an in-memory dataset: shuffled epochs to train, padded passes to evaluate.

    Args:
      train_arrays: numpy arrays of the train split, same leading size N.
      eval_arrays: split name -> numpy arrays; the first split is the headline one.
      config: reads `batch_size`, `eval_batch_size` and `seed`.
    Each process reads only its own slice of every batch.
    """
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    return Data(
        train=pipeline.EpochBatcher(train_arrays, config.batch_size, config.seed, **shard),
        evals={name: functools.partial(pipeline.padded_batches, arrays, config.eval_batch_size, **shard)
               for name, arrays in eval_arrays.items()},
    )


@flax.struct.dataclass
class TrainState:
    """The whole train state as one pytree: what a checkpoint holds."""

    step: jax.Array  # int32 scalar: number of updates applied
    params: PyTree
    opt_state: PyTree


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient became NaN or infinite."""


class ConfigValueError(ValueError):
    """A config value the loop cannot run with."""


def _validate(config, num_devices: int) -> None:
    for key in ("batch_size", "eval_batch_size", "num_train_steps", "log_every_steps",
                "eval_every_steps", "checkpoint_every_steps"):
        value = config[key]
        if not isinstance(value, int) or value < (0 if key == "checkpoint_every_steps" else 1):
            raise ConfigValueError(f"config.{key} must be a positive integer, got {value!r}")
    for key in ("batch_size", "eval_batch_size"):
        if config[key] % num_devices:
            raise ConfigValueError(
                f"config.{key}={config[key]} is not divisible by the {num_devices} devices; "
                f"use a multiple of {num_devices}")


class MetricVector:
    """Packs a step's metric dict into one float32 vector, and unpacks it on the host.

    The step adds its metrics into one on-device vector: one buffer in and out per step
    instead of one per metric.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.keys = sorted(shapes)
        self.shapes = [tuple(shapes[k]) for k in self.keys]
        self.size = int(sum(np.prod(s, dtype=int) for s in self.shapes))

    def pack(self, metrics: dict) -> jax.Array:
        return jnp.concatenate([jnp.ravel(metrics[k]).astype(jnp.float32) for k in self.keys])

    def unpack(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        out, i = {}, 0
        for k, shape in zip(self.keys, self.shapes):
            n = int(np.prod(shape, dtype=int))
            out[k] = np.asarray(vector[i:i + n]).reshape(shape)
            i += n
        return out

    def zeros(self) -> np.ndarray:
        return np.zeros((self.size,), np.float32)


_STEP_METRICS = ("loss", "steps", "grad_norm", "param_norm")


def train_metric_vector(task: Task, params: PyTree, batch: dict, rng: jax.Array) -> MetricVector:
    """The layout of the train step's metrics: the task's sums plus the loop's own."""
    _, sums = jax.eval_shape(task.loss, params, batch, rng)
    shapes = {k: s.shape for k, s in sums.items()}
    shapes.update({k: () for k in _STEP_METRICS})
    return MetricVector(shapes)


def make_train_step(task: Task, tx: optax.GradientTransformation, train_key: jax.Array,
                    axis_name: str | None, layout: MetricVector) -> Callable:
    """The data-parallel train step `(state, acc, batch) -> (state, acc)`.

    `acc` (a `layout` vector) accumulates the step's global metric sums plus `steps` and the
    norms of gradients and parameters, so the host reads them once per sync point.
    """

    def step_fn(state: TrainState, acc: jax.Array, batch: dict):
        rng = jax.random.fold_in(train_key, state.step)
        if axis_name is not None:  # distinct dropout per device, as one global batch would have
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        grads, sums = parallel_lib.global_mean_grads(task.loss, state.params, batch, rng, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(sums, steps=jnp.ones((), jnp.float32),
                       grad_norm=optax.tree.norm(grads), param_norm=optax.tree.norm(params))
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), acc + layout.pack(metrics)

    return step_fn


def make_eval_step(task: Task, axis_name: str | None) -> Callable:
    """`(params, batch) -> sums` over the global batch."""

    def eval_fn(params, batch):
        sums = task.evaluate(params, batch)
        if axis_name is not None:
            sums = jax.lax.psum(sums, axis_name)
        return sums

    return eval_fn


def _train_window_metrics(task: Task, sums: dict, seconds: float) -> dict[str, float]:
    steps = float(sums.pop("steps"))
    norms = {f"train/{k}": float(sums.pop(k)) / steps for k in ("grad_norm", "param_norm")}
    out = {f"train/{k}": v for k, v in _scalars(task.summarize(sums)).items()}
    out.update(norms)
    if seconds > 0:
        out["steps_per_sec"] = steps / seconds
        out[f"{task.count_unit}_per_sec"] = float(sums["count"]) / seconds
    return out


# Init runs once: on CPU, compiling its random initialisers (threefry, truncated normals) with
# LLVM's expensive passes costs seconds (4.7 s -> 0.5 s for the MLP, measured), for no gain.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _compile_once(fn: Callable, *args) -> Callable:
    """jit for a function called once: compiled without expensive optimisation on CPU."""
    lowered = jax.jit(fn).lower(*args)
    return lowered.compile(compiler_options=_FAST_COMPILE if jax.default_backend() == "cpu" else None)


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def train_and_evaluate(config, workdir: str, task: Task, data: Data, *,
                       allow_config_change: bool = False) -> dict:
    """Trains `task` on `data` as `config` says, in `workdir`, resuming what is there.

    Writes `config.json`, `metrics.jsonl`, TensorBoard events, Orbax checkpoints in
    `checkpoints/`, `results.json` and PNG plots. Returns the results dict (final eval metrics).

    Raises:
      ConfigValueError, configs.WorkdirConfigError, ckpt_lib.CheckpointError, NonFiniteLossError:
        each with a one-line message that says what to do.
    """
    strategy = parallel_lib.make_parallel(config.parallel)
    _validate(config, strategy.num_devices)
    workdir = os.path.abspath(workdir)
    if jax.process_index() == 0:
        configs.check_workdir(workdir, config, allow_config_change)

    root = jax.random.key(config.seed)
    init_key, train_key, eval_key = (jax.random.fold_in(root, i) for i in range(3))
    total_steps = config.num_train_steps
    tx = optim.make_optimizer(config.optimizer, total_steps)

    def init_state(rng):
        params = task.init_params(rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         config.checkpoint_every_steps, config.max_checkpoints_to_keep)
    start_step = checkpointer.latest_step()
    if start_step is None:
        state = _compile_once(init_state, init_key)(init_key)
        start_step = 0
    else:
        abstract = jax.eval_shape(init_state, init_key)
        if isinstance(strategy, parallel_lib.MeshParallel):
            abstract = jax.tree.map(
                lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=strategy.replicated), abstract)
        state, meta = checkpointer.restore(start_step, abstract)
        expected = data.train.position(start_step)
        if meta.get("data_position") != expected:
            raise ckpt_lib.CheckpointError(
                f"checkpoint {start_step} was written at data position {meta.get('data_position')}, "
                f"but this run's data puts step {start_step} at {expected}; the dataset or batch size "
                f"changed: use a new --workdir")
        print(f"resumed from {checkpointer.directory} at step {start_step}", flush=True)
    state = strategy.put_state(state)

    layout = train_metric_vector(task, strategy.get_state(state).params, data.train.batch(start_step), train_key)
    step_fn = strategy.compile(make_train_step(task, tx, train_key, strategy.axis_name, layout),
                               donate_state=True)
    eval_fn = strategy.compile(make_eval_step(task, strategy.axis_name), donate_state=False)
    logger = MetricLogger(workdir, total_steps, resume_step=start_step)
    acc_zero = strategy.put_state(layout.zeros())
    window: dict[str, float] = {}
    window_start, window_seconds = time.perf_counter(), 0.0
    last_good_checkpoint = checkpointer.latest_step()
    sync_from = start_step

    def run_evals(params, step: int) -> dict[str, dict]:
        results = {}
        for split, batches in data.evals.items():
            total = None
            for batch in batches():  # sums go to the host per batch: no device-side add to compile
                sums = strategy.metrics_to_host(eval_fn(params, strategy.put_batch(batch)))
                total = sums if total is None else jax.tree.map(np.add, total, sums)
            results[split] = task.summarize(jax.tree.map(np.asarray, total))
            logger.write(step, {f"{split}/{k}": v for k, v in _scalars(results[split]).items()})
        if hasattr(task, "on_eval") and jax.process_index() == 0:
            task.on_eval(strategy.get_state(state).params, step, workdir,
                         jax.random.fold_in(eval_key, step))
        return results

    t_start = time.perf_counter()
    eval_results: dict[str, dict] = {}
    step = start_step
    acc = acc_zero
    try:
        while step < total_steps:
            batch = strategy.put_batch(data.train.batch(step))
            state, acc = step_fn(state, acc, batch)
            step += 1
            is_log = step % config.log_every_steps == 0
            is_eval = step % config.eval_every_steps == 0
            is_ckpt = checkpointer.should_save(step)
            is_last = step == total_steps
            if not (is_log or is_eval or is_ckpt or is_last):
                continue
            # Sync point: read the accumulated metrics (this waits for the steps dispatched so
            # far), refuse to go on (or save) past a NaN. Time spent after the read (eval,
            # checkpoint, logging) is kept out of the train throughput.
            host = layout.unpack(strategy.metrics_to_host(acc))
            window_seconds += time.perf_counter() - window_start
            acc = acc_zero
            if not (math.isfinite(float(host["loss"])) and math.isfinite(float(host["grad_norm"]))):
                raise NonFiniteLossError(
                    f"non-finite loss or gradient between steps {sync_from} and {step}; "
                    + (f"the last good checkpoint (step {last_good_checkpoint}) is kept in "
                       f"{checkpointer.directory}" if last_good_checkpoint is not None else
                       "no checkpoint was written yet")
                    + "; lower optimizer.learning_rate or set "
                    "optimizer.grad_clip_norm, then rerun")
            sync_from = step
            window = host if not window else {k: window[k] + host[k] for k in window}
            if is_log or is_last:
                metrics = _train_window_metrics(task, dict(window), window_seconds)
                logger.write(step, metrics)
                logger.progress(step, metrics)
                window, window_seconds = {}, 0.0
            if is_eval or is_last:
                eval_results = run_evals(state.params, step)
            if is_ckpt or is_last:
                checkpointer.save(step, strategy.get_state(state),
                                  {"step": step, "data_position": data.train.position(step),
                                   "config": configs.to_dict(config)})
                last_good_checkpoint = step
            window_start = time.perf_counter()
        if start_step >= total_steps:  # nothing to train: still report on the restored state
            eval_results = run_evals(state.params, step)
    finally:
        checkpointer.wait()
        checkpointer.close()
        logger.close()

    seconds = time.perf_counter() - t_start
    results = {"step": int(step), "train_seconds": seconds,
               "steps_per_sec": (step - start_step) / seconds if seconds > 0 else None}
    for split, metrics in eval_results.items():
        results.update({f"{split}_{k}": _jsonable(v) for k, v in metrics.items()})
    if eval_results:  # the first eval split is the headline one: its metrics also unprefixed
        primary = next(iter(eval_results.values()))
        results.update({k: _jsonable(primary[k]) for k in ("precision", "recall", "f1", "confusion_matrix")
                        if k in primary})
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
        report.plot_run(workdir, results)
    return results


def _jsonable(v):
    v = np.asarray(v)
    return v.tolist() if v.ndim else v.item()
