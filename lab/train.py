"""The one train loop of lab: every experiment (and any research script) calls `train_and_evaluate`.

A family brings a `lab.task.Task` (its model, loss or update, and metrics); the caller brings the
config and the data. The loop owns everything else: the state from the seed, its shardings, the
data-parallel step, periodic eval, logging, checkpoints, exact resume, and stopping on a
non-finite loss, gradient or parameter.

The step is `(state, acc, batch) -> (state, acc)` with `rng = fold_in(train_key, state.step)`,
jitted with the state donated. It adds its metrics into an on-device accumulator, so the host
reads metrics only at sync points (log, eval, checkpoint, end; and for a progress line after the
first call and every `logbook.PROGRESS_EVERY_SECONDS`, without resetting it) and the device runs
ahead of the Python loop meanwhile (as in nanodo): no per-step device-to-host transfer. With
`config.steps_per_call = K` one compiled call runs up to K steps under a `lax.scan` over K
batches sent at once (never past a sync point): the same step, rng and numbers, fewer calls.

Multi-process runs (`lab.distributed`): every process runs this same loop over the global devices;
each feeds its own rows of every batch, all take part in checkpoints, only process 0 writes logs,
results and plots, and a final barrier keeps any process from leaving before the last checkpoint
is committed.

Resume order: config check -> abstract state (`eval_shape(init)`) -> shardings -> latest
checkpoint -> restore state + meta onto the sharded target -> check the data position ->
continue at meta['step'] (batches are a function of the step). A fresh run instead initialises
with those shardings and, given `config.init_from`, takes pretrained parameters (read only then).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from lab import checkpoint as ckpt_lib
from lab import configs, distributed, optim, parallel as parallel_lib, pipeline, provenance, report
from lab.errors import ConfigValueError, Interrupted, NonFiniteLossError
from lab.files import write_json
from lab import logbook
from lab.logbook import MetricLogger
from lab.metrics import MetricVector
from lab.task import EMA, StepTools, Task, TrainState

PyTree = Any

__all__ = ["Data", "Task", "TrainState", "build_train_step", "epoch_data", "init_state_fn",
           "make_train_step", "train_and_evaluate"]


@dataclass
class Data:
    """The data of a run. `train.batch(step)` must be a pure function of the step (exact resume).

    `evals` maps a split name to a function returning a fresh iterator of padded batches; the
    first split is the headline one. `class_names` maps a label key ('label', or a head's name)
    to its class names, for plots.
    """

    train: Any  # lab.pipeline.EpochBatcher | WindowBatcher
    evals: dict[str, Callable[[], Iterable[dict]]] = field(default_factory=dict)
    class_names: Mapping[str, list[str]] = field(default_factory=dict)
    sizes: Mapping[str, int] = field(default_factory=dict)  # examples per split, for the start-up block


def epoch_data(train_arrays: Mapping | pipeline.RowSource, eval_arrays: dict[str, Mapping | pipeline.RowSource],
               config, class_names: Mapping[str, list[str]] | None = None) -> Data:
    """`Data` for a split dataset: shuffled epochs to train, padded passes to evaluate.

    Args:
      train_arrays: numpy arrays of the train split, same leading size N, or its rows streamed
        from disk (a `pipeline.RowSource`, e.g. `lab.data.stream(...)`).
      eval_arrays: split name -> arrays (or a RowSource); the first split is the headline one.
      config: reads `batch_size`, `eval_batch_size`, `eval_batches` (the sizes shown) and `seed`.
      class_names: label key -> class names (see `Data`).
    Each process reads only its own slice of every batch. Rows that are not in memory (a
    `pipeline.RowSource` such as `lab.data.stream(...)`) are read ahead of the step
    (`pipeline.Prefetcher`).
    """
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    batcher = pipeline.EpochBatcher(train_arrays, config.batch_size, config.seed, **shard)
    limit = config.get("eval_batches")  # an eval reads at most this many batches of a split

    def shown_size(arrays) -> int:
        n = len(pipeline.as_rows(arrays))
        return min(n, limit * config.eval_batch_size) if limit else n

    return Data(
        train=batcher if isinstance(train_arrays, Mapping) else pipeline.Prefetcher(batcher),
        evals={name: functools.partial(pipeline.padded_batches, arrays, config.eval_batch_size, **shard)
               for name, arrays in eval_arrays.items()},
        class_names=dict(class_names or {}),
        sizes={"train": batcher.num_examples, **{name: shown_size(arrays) for name, arrays in eval_arrays.items()}},
    )


def make_train_step(task: Task, tools: StepTools, train_key: jax.Array, ema_decay: float = 0.0) -> Callable:
    """The data-parallel train step `(state, batch) -> (state, metrics)`, before packing.

    `metrics` holds the update's global sums, `steps` (1), `param_norm` and `state_norm`: the
    norms of the parameters and of the rest of the state (optimizer moments, `extra`) *after* the
    update, so a step that makes any of it non-finite is caught before any checkpoint holds it. With `ema_decay` > 0, `extra['ema']` follows the new parameters
    (`TrainState.eval_variables` debiases it).
    """

    def step_fn(state: TrainState, batch: dict):
        # The strategy's engine (`tools.engine`) makes the key this device's and the sums global.
        rng = tools.engine.device_rng(jax.random.fold_in(train_key, state.step))
        new_state, sums = task.update(state, batch, rng, tools)
        sums = tools.engine.reduce_metrics(sums)
        new_state = new_state.replace(step=state.step + 1)
        if ema_decay:
            ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.extra[EMA], new_state.params)
            new_state = new_state.replace(extra={**new_state.extra, EMA: ema})
        rest = [x for x in jax.tree.leaves((new_state.opt_state, new_state.extra)) if jnp.issubdtype(x.dtype, jnp.inexact)]
        metrics = dict(sums, steps=jnp.ones((), jnp.float32), param_norm=optax.tree.norm(new_state.params),
                       state_norm=optax.tree.norm(rest))
        return new_state, metrics

    return step_fn


def build_train_step(task: Task, tools: StepTools, train_key: jax.Array, strategy, shardings: PyTree,
                     state: TrainState, batch: dict, steps_per_call: int = 1,
                     ema_decay: float = 0.0) -> tuple[Callable, MetricVector]:
    """The compiled-on-first-call step `(state, acc, batch) -> (state, acc)` and its metric layout.

    Args:
      task, tools, train_key, ema_decay: as `make_train_step`.
      strategy: a `lab.parallel` strategy; `shardings`: the state's (from `state_shardings`).
      state, batch: a placed state and batch, to read the metrics' shapes from.
      steps_per_call: above 1, the returned function takes K batches stacked on a leading axis
        (`strategy.put_batches`, any K: each new K compiles once) and runs the K steps in one
        `lax.scan`, the same step on the same rng per step as K calls would.
    `acc` is a `layout`-sized float32 vector the step adds its metrics into.
    """
    step_fn = make_train_step(task, tools, train_key, ema_decay)
    shapes = strategy.step_metric_shapes(step_fn, state, batch)
    layout = MetricVector({k: s.shape for k, s in shapes.items()})

    def packed(state, acc, batch):
        state, metrics = step_fn(state, batch)
        return state, acc + layout.pack(metrics)

    def scanned(state, acc, batches):
        def body(carry, batch):
            return packed(*carry, batch), None
        return jax.lax.scan(body, (state, acc), batches)[0]

    return strategy.compile_step(packed if steps_per_call == 1 else scanned, shardings, strategy.replicated), layout


def _next_sync(step: int, config, checkpointer, total_steps: int) -> int:
    """The first step after `step` where the loop reads metrics: a log, eval or checkpoint
    step, or the last."""
    every = [config.log_every_steps, config.eval_every_steps, checkpointer.every_steps]
    return min([total_steps] + [(step // e + 1) * e for e in every if e > 0])


def init_state_fn(task: Task, optimizers, ema_decay: float = 0.0) -> Callable[[jax.Array], TrainState]:
    """`rng -> TrainState`: the task's fresh variables and every optimizer's initial state (and,
    with `ema_decay` > 0, the parameters' moving average at zeros in `extra['ema']`). Variables
    a model boxes with their placement (`nn.with_logical_partitioning`) are unboxed: the state
    holds plain arrays; `strategy.state_shardings` reads the boxes from `task.init`."""

    def init_state(rng):
        variables = dict(nn.unbox(task.init(rng)))
        params = variables.pop("params")
        if isinstance(optimizers, Mapping):
            missing = sorted(set(optimizers) - set(params))
            if missing:
                raise ConfigValueError(f"config.optimizers names {missing}, which the model's params do not "
                                       f"have (top-level params: {sorted(params)})")
            opt_state = {name: tx.init(params[name]) for name, tx in optimizers.items()}
        else:
            opt_state = optimizers.init(params)
        if ema_decay:
            variables[EMA] = jax.tree.map(jnp.zeros_like, params)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, extra=variables)
    return init_state


def _warm_start(config, state: TrainState, shardings: TrainState) -> tuple[TrainState, str | None]:
    """Fresh runs only: `config.init_from_params` entries of params from the run `config.init_from`."""
    source = config.get("init_from")
    if not source:
        return state, None
    names = tuple(config.get("init_from_params") or tuple(state.params))
    # The fresh params serve as the target (names, shapes, dtypes); only the loaded entries move.
    params, where = ckpt_lib.load_pretrained(source, names, state.params, config.get("init_from_step"))
    print(f"initialised params {list(names)} from {where}", flush=True)
    return state.replace(params=parallel_lib.host_to_global(params, shardings.params)), where


def train_and_evaluate(config, workdir: str, task: Task, data: Data, *,
                       allow_config_change: bool = False, return_params: bool = False) -> dict | tuple[dict, PyTree]:
    """Trains `task` on `data` as `config` says, in `workdir`, resuming what is there.

    Writes `config.json`, `environment.json` (`lab.provenance`: what the run ran on, per start),
    `metrics.jsonl`, TensorBoard events, Orbax checkpoints in `checkpoints/`, `results.json` and
    PNG plots. Returns the results dict (final eval metrics) or, with `return_params`, (results,
    the trained parameters as numpy arrays on the host).
    A finished workdir is not trained or logged again: its results (and its last checkpoint's
    parameters) are returned as they are.

    Raises:
      lab.errors.LabError subclasses (ConfigValueError, WorkdirConfigError, CheckpointError,
        NonFiniteLossError), each with a one-line message that says what to do.
    """
    t_begin = time.perf_counter()
    configs.validate(config, jax.device_count(), workdir, jax.process_count())
    strategy = parallel_lib.make_parallel(config.parallel, config.get("mesh"))
    workdir = os.path.abspath(workdir)
    # Process 0 checks (and writes) the workdir's config; an error there stops every process.
    distributed.agree("the workdir check", lambda: configs.check_workdir(workdir, config, allow_config_change))

    root = jax.random.key(config.seed)
    init_key, train_key, sample_key, eval_rng = (jax.random.fold_in(root, i) for i in range(4))
    total_steps = config.num_train_steps
    optimizers = optim.make_optimizers(config, total_steps)
    tools = StepTools(optimizers, strategy.engine, strategy.gather_for_compute, config.get("accumulate_steps", 1))
    ema_decay = float(config.get("ema_decay", 0.0))
    init_state = init_state_fn(task, optimizers, ema_decay)
    abstract = jax.eval_shape(init_state, init_key)
    # The model is part of the run: a changed one never resumes from, or reports, the old one.
    distributed.agree("the model check", lambda: ckpt_lib.check_param_tree(workdir, abstract.params,
                                                                            allow_config_change))
    shardings = strategy.state_shardings(abstract, jax.eval_shape(task.init, init_key))

    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         config.checkpoint_every_steps, config.max_checkpoints_to_keep)
    start_step = checkpointer.latest_step()
    init_source = None
    if start_step is None:
        state = strategy.init_state(init_state, init_key, shardings)
        state, init_source = _warm_start(config, state, shardings)
        start_step = 0
    else:
        # The data is part of the run too: a rebuilt or changed dataset never resumes silently.
        distributed.agree("the dataset check", lambda: provenance.check_dataset(workdir, config, allow_config_change))
        finished = _finished_results(workdir, start_step, total_steps, data.evals)
        if finished is not None:
            checkpointer.close()
            print(f"{workdir} is finished (step {start_step}): nothing to train", flush=True)
            report.print_summary(config, finished, workdir, time.perf_counter() - t_begin)
            return (finished, ckpt_lib.load_params(workdir)[0]) if return_params else finished
        target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                              abstract, shardings)
        state, meta = checkpointer.restore(start_step, target)
        init_source = meta.get("init_from")
        expected = data.train.position(start_step)
        if meta.get("data_position") != expected:
            raise ckpt_lib.CheckpointError(
                f"checkpoint {start_step} was written at data position {meta.get('data_position')}, "
                f"but this run's data puts step {start_step} at {expected}; the dataset or batch size "
                f"changed: use a new --workdir")
        print(f"resumed from {checkpointer.directory} at step {start_step}", flush=True)
    if jax.process_index() == 0:
        provenance.record(workdir, provenance.environment(config, start_step))
    state = strategy.put_state(state, shardings)

    steps_per_call = config.get("steps_per_call", 1)
    if jax.process_index() == 0:
        print("\n".join(logbook.startup_lines(
            workdir, start_step, total_steps, abstract.params, jax.devices(),
            dict(strategy.mesh.shape) if hasattr(strategy, "mesh") else None, config.parallel, config.batch_size,
            dict(data.sizes)) + ["  compiling the train step ..."]), flush=True)
    t_compile = time.perf_counter()
    train_step, layout = build_train_step(task, tools, train_key, strategy, shardings, state,
                                          strategy.put_batch(data.train.batch(start_step)), steps_per_call, ema_decay)

    def next_batches(step: int) -> tuple[dict, int]:
        """The placed input of the call at `step` and how many steps it runs: one batch, or
        up to steps_per_call of them stacked, stopping at the next sync point."""
        if steps_per_call == 1:
            return strategy.put_batch(data.train.batch(step)), 1
        n = min(steps_per_call, _next_sync(step, config, checkpointer, total_steps) - step)
        return strategy.put_batches(pipeline.stacked_batches(data.train, step, n)), n

    def eval_fn(variables, batch, rng):
        if tools.gather is not None:  # FSDP: whole parameters, activations split by batch
            variables = tools.gather(variables)
        return task.evaluate(variables, batch, rng)

    eval_step = strategy.compile_eval(eval_fn)
    logger = MetricLogger(workdir, total_steps, resume_step=start_step, config=configs.to_dict(config),
                          learning_rates=optim.learning_rate_schedules(config, total_steps))
    acc_zero = strategy.put_acc(layout.zeros())
    window: dict[str, np.ndarray] = {}
    window_start, window_seconds = time.perf_counter(), 0.0
    last_good_checkpoint = checkpointer.latest_step()

    def kept() -> str:  # what a stop on a non-finite number leaves behind
        return (f"the last good checkpoint (step {last_good_checkpoint}) is kept in {checkpointer.directory}"
                if last_good_checkpoint is not None else "no checkpoint was written yet")
    if config.get("keep_best") and not any(config.keep_best.startswith(f"{split}_") for split in data.evals):
        raise ConfigValueError(f"config.keep_best={config.keep_best!r} names no split this run evaluates: use "
                               f"<split>_<metric> with a split of {', '.join(data.evals)}")
    best = ckpt_lib.BestCheckpointer(os.path.join(workdir, "best"), config.keep_best, config.get("keep_best_mode", "max")) \
        if config.get("keep_best") else None
    profiler = logbook.Profiler(config.get("profile_steps", "") if jax.process_index() == 0 else "", workdir)
    sync_from = start_step

    def run_evals(state, step: int) -> dict[str, dict]:
        variables = strategy.get_state(state).eval_variables(ema_decay)
        results = {}
        for split, batches in data.evals.items():
            total = None
            for index, batch in enumerate(itertools.islice(batches(), config.get("eval_batches"))):  # sums to the host per batch
                # Each batch its own key (the same at every eval): a masked LM masks other cells in each.
                batch_rng = jax.random.fold_in(eval_rng, index)
                sums = strategy.metrics_to_host(eval_step(variables, strategy.global_batch(batch), batch_rng))
                total = sums if total is None else jax.tree.map(np.add, total, sums)
            results[split] = task.summarize(jax.tree.map(np.asarray, total))
            logger.log_eval(step, split, results[split])  # `eval_<split>/...` records
            bad = sorted(k for k, v in logbook.scalars(results[split]).items() if not np.isfinite(v))
            if bad:  # finite parameters whose evaluation overflows: not a model to checkpoint
                raise NonFiniteLossError(f"non-finite eval_{split}/{', '.join(bad)} at step {step}; {kept()}; lower "
                                         "optimizer.learning_rate or set optimizer.grad_clip_norm, then rerun")
        if type(task).on_eval is Task.on_eval:  # the task draws nothing: nothing to gather
            return results
        # Every process runs the hook (its sampling is jitted): on host-local copies of the
        # variables when they span processes, so no process computes with the others' devices.
        local = variables if jax.process_count() == 1 else multihost_utils.process_allgather(variables, tiled=True)
        with report.eval_outputs(step, results, logger):  # captions; tagged pictures and text to TensorBoard
            task.on_eval(local, step, workdir, jax.random.fold_in(sample_key, step))
        return results

    t_start = time.perf_counter()
    eval_results: dict[str, dict] = {}
    step = start_step
    acc = acc_zero
    in_flight = 0  # steps dispatched since the host last waited for one
    stop = _StopRequest()
    try:
        stop.install()
        while step < total_steps:
            batch, num_steps = next_batches(step)
            state, acc = train_step(state, acc, batch)
            profiler.at_step(step + num_steps, state)
            if t_compile is not None:  # the first call compiles (and dispatches the step)
                print(f"  compiled the train step in {time.perf_counter() - t_compile:.1f} s", flush=True)
                t_compile = None
            step += num_steps
            in_flight += num_steps
            if strategy.max_steps_in_flight and in_flight >= strategy.max_steps_in_flight:
                acc.block_until_ready()
                in_flight = 0
            is_log = step % config.log_every_steps == 0
            is_eval = step % config.eval_every_steps == 0
            is_ckpt = checkpointer.should_save(step)
            is_last = step == total_steps
            stopping = stop.signum is not None and not is_last  # read once: a signal may land mid-sync
            is_ckpt = is_ckpt or stopping
            if not (is_log or is_eval or is_ckpt or is_last):
                if logger.line_due():  # the first call, then every PROGRESS_EVERY_SECONDS: a read, no reset
                    host = layout.unpack(strategy.acc_to_host(acc))
                    logger.running_line(step, task.summarize, task.count_unit,
                                        host if not window else {k: window[k] + host[k] for k in window})
                continue
            # Sync point: read the accumulated metrics (this waits for the steps dispatched so
            # far), refuse to go on (or save) past a non-finite loss, gradient or parameter.
            # Time spent after the read (eval, checkpoint, logging) is kept out of the train rate.
            host = layout.unpack(strategy.acc_to_host(acc))
            in_flight = 0
            window_seconds += time.perf_counter() - window_start
            acc = acc_zero
            bad = sorted(k for k, v in host.items() if not np.all(np.isfinite(v)))
            if bad:
                raise NonFiniteLossError(
                    f"non-finite {', '.join(bad)} between steps {sync_from} and {step}; {kept()}; lower "
                    "optimizer.learning_rate or set optimizer.grad_clip_norm, then rerun")
            sync_from = step
            window = host if not window else {k: window[k] + host[k] for k in window}
            if is_log or is_last:
                logger.log_window(step, task.summarize, task.count_unit, window, window_seconds)
                window, window_seconds = {}, 0.0
            elif logger.line_due():
                logger.running_line(step, task.summarize, task.count_unit, window)
            meta = {"step": step, "data_position": data.train.position(step), "config": configs.to_dict(config),
                    **({"init_from": init_source} if init_source else {})}
            if is_eval or is_last:
                eval_results = run_evals(state, step)
                if best is not None:
                    best.update(step, {f"{split}_{k}": v for split, m in eval_results.items()
                                       for k, v in logbook.scalars(m).items()}, strategy.get_state(state), meta)
            if is_ckpt or is_last:
                checkpointer.save(step, strategy.get_state(state), meta)
                last_good_checkpoint = step
            if stopping:
                raise Interrupted(stop.signum, step)  # after the finally below has committed the checkpoint
            window_start = time.perf_counter()
        if start_step >= total_steps:  # checkpointed at the end, but killed before its results
            eval_results = run_evals(state, step)
    finally:
        stop.uninstall()
        profiler.close()
        try:
            checkpointer.wait()  # raises a failed save's error (unless another error is on its way)
            if best is not None:
                best.wait()
        finally:
            checkpointer.close()
            if best is not None:
                best.close()
            logger.close()
    # No process leaves before every process has committed the last checkpoint.
    distributed.barrier("the end of training")

    seconds = time.perf_counter() - t_start
    results = {"step": int(step), "train_seconds": seconds,
               "steps_per_sec": (step - start_step) / seconds if seconds > 0 and step > start_step else None}
    if init_source:
        results["init_from"] = init_source
    if best is not None:  # the eval that config.keep_best selected, beside the last one
        results.update(best.selected())
    for split, metrics in eval_results.items():
        results.update({f"{split}_{k}": _jsonable(v) for k, v in metrics.items()})
    if eval_results:  # the first eval split is the headline one: its metrics also unprefixed
        primary = next(iter(eval_results.values()))
        results.update({k: _jsonable(primary[k]) for k in ("precision", "recall", "f1", "confusion_matrix")
                        if k in primary})
    if jax.process_index() == 0:
        path = os.path.join(workdir, "results.json")
        write_json(path, results, indent=2)  # whole: a kill mid-write leaves the old file
        pictures = report.plot_run(workdir, results, data.class_names, task.curves)
        logbook.pictures_to_tensorboard(workdir, step, {os.path.basename(p)[:-4]: report.read_png(p) for p in pictures})
        report.print_summary(config, results, workdir, time.perf_counter() - t_begin)
    if not return_params:
        return results
    params = strategy.get_state(state).params
    if jax.process_count() > 1:
        params = multihost_utils.process_allgather(params, tiled=True)
    return results, jax.tree.map(np.asarray, params)


class _StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM during training ask the loop to save at the next step and stop
    (`Interrupted`); a second signal stops at once. Only a single-process run on the main thread
    listens: a multi-process save needs every process, which `lab.launch` stops together."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def install(self) -> None:
        if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second one: the default behaviour, now
            self.uninstall()
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint at the next step, then stopping "
              f"(again to stop at once, without it)", file=sys.stderr, flush=True)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}


def _finished_results(workdir: str, start_step: int, total_steps: int, splits: Iterable[str]) -> dict | None:
    """The saved results of a run that already reached `total_steps`, if they are complete: the
    step, and metrics of every eval split (a file without them is not a finished run's)."""
    path = os.path.join(workdir, "results.json")
    if start_step < total_steps or not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None  # torn by a kill: evaluate again
    if not isinstance(results, dict) or results.get("step") != start_step:
        return None
    return results if all(any(k.startswith(f"{split}_") for k in results) for split in splits) else None


def _jsonable(v):
    v = np.asarray(v)
    return v.tolist() if v.ndim else v.item()
