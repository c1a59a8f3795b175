"""Checkpoints through Orbax's `CheckpointManager`: save, resume, and pretrained sub-trees.

A checkpoint step holds two items:
  * `state`: the train state pytree (StandardSave; restored onto an abstract target, so optax
    states keep their structure and arrays land with the sharding the target asks for);
  * `meta`: JSON with the step, the data position and the config, for humans and for checks.

Resume order (the train loop follows it): build the abstract state from the config -> find the
latest step -> restore state and meta onto that target -> continue from `meta['step']`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from typing import Any, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from lab.errors import CheckpointError, ConfigValueError, WorkdirConfigError
from lab.files import write_json

PyTree = Any


class _QuietOrbaxErrors(logging.Filter):
    """Drops Orbax's own error logs (tracebacks from its writer threads): the failure reaches the
    caller as the exception lab raises, which says what to do. LAB_DEBUG=1 keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def _quiet_closed_loop_hook(previous):
    """A `sys.unraisablehook` that drops "Event loop is closed": TensorStore's threads report it
    when a failed save's writes complete after Orbax has closed its event loop. Anything else goes
    on to `previous`."""
    def hook(unraisable):
        if not (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)
    hook.lab_quiet_closed_loop = True
    return hook


def check_writable(directory: str) -> None:
    """Creates `directory` and writes a probe file in it, so a checkpoint directory that cannot be
    written fails before training rather than at the first save.

    Raises:
      OSError: with the errno of the failure (read-only disk, no permission, full disk).
    """
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".write-probe-{os.getpid()}-{jax.process_index()}")
    with open(probe, "w") as f:
        f.write("lab")
    os.remove(probe)


class Checkpointer:
    """Saves every `every_steps` steps (and when forced), keeps the newest `max_to_keep`, async.

    A save that fails in the background (full disk) raises its OSError at the next `save` or at
    `wait`; after that the checkpointer refuses further saves. Orbax's writer threads that were
    waiting on the failed save may then never finish: an entry point reports the error and leaves
    without waiting for them (experiments/cli.py).
    """

    def __init__(self, directory: str, every_steps: int, max_to_keep: int = 3, async_save: bool = True):
        if max_to_keep < 1:  # Orbax would read 0 as "keep none" and delete every checkpoint
            raise ValueError(f"max_to_keep must be >= 1, got {max_to_keep}")
        self.directory = os.path.abspath(directory)
        self.every_steps = every_steps
        self.failed: BaseException | None = None
        check_writable(self.directory)
        self._quiet = None if os.environ.get("LAB_DEBUG") else _QuietOrbaxErrors()
        if self._quiet is not None:
            logging.getLogger("absl").addFilter(self._quiet)
            if not getattr(sys.unraisablehook, "lab_quiet_closed_loop", False):
                sys.unraisablehook = _quiet_closed_loop_hook(sys.unraisablehook)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                save_interval_steps=1,  # lab decides when to save; Orbax must not skip a forced save
                enable_async_checkpointing=async_save,
            ),
        )

    def latest_step(self) -> int | None:
        """The newest finished checkpoint step, or None for a fresh directory."""
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, state: PyTree, meta: dict) -> None:
        """Starts an (async) save of `state` and `meta` at `step`; raises an earlier save's error."""
        if self.failed is not None:
            raise self.failed
        if step in self.manager.all_steps():
            return
        with self._failure():
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    @contextlib.contextmanager
    def _failure(self):
        """Records the first write error (an OSError anywhere in the chain is what is raised)."""
        try:
            yield
        except Exception as e:
            self.failed = _os_error(e, self.directory) or e
            raise self.failed from (None if self.failed is e else e)

    def restore(self, step: int, abstract_state: PyTree) -> tuple[PyTree, dict]:
        """Restores (state, meta) at `step` onto `abstract_state` (shapes, dtypes, shardings)."""
        path = os.path.join(self.directory, str(step))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        except Exception as e:  # Orbax raises many types; the user needs one message.
            raise CheckpointError(
                f"checkpoint {path} is unreadable ({type(e).__name__}: {_first_line(e)}); "
                f"move that step directory aside to resume from an earlier one, or use a new --workdir"
            ) from e
        return restored["state"], restored["meta"]

    def wait(self) -> None:
        """Blocks until async saves are on disk; call before the process exits. Raises the error
        of a save that failed."""
        if self.failed is not None:
            raise self.failed
        with self._failure():
            self.manager.wait_until_finished()

    def close(self) -> None:
        """Releases the manager (after a failed save only the log filter: Orbax's close would
        wait on writer threads that cannot finish)."""
        if self.failed is None:
            self.manager.close()
        if self._quiet is not None:
            logging.getLogger("absl").removeFilter(self._quiet)
            self._quiet = None


class BestCheckpointer:
    """Keeps the checkpoint of the best evaluation so far by one metric (`config.keep_best`), in
    its own directory (`workdir/best/`, one step kept), apart from the checkpoints a resume uses,
    and the results of every eval split at that step: model selection, e.g. on a validation split,
    with the test numbers of the selected step beside the last step's (`selected()`).

    Args:
      directory: where the best checkpoint goes.
      metric: `<split>_<metric>`, a key of the run's results (e.g. 'validation_loss').
      mode: 'max' or 'min': which way is better.
    """

    def __init__(self, directory: str, metric: str, mode: str):
        self.metric, self.mode = metric, mode
        self.checkpointer = Checkpointer(directory, every_steps=0, max_to_keep=1)
        latest = self.checkpointer.latest_step()
        self.best = None  # the best value so far (from the saved one on resume)
        self.step, self.results = None, {}  # the best eval's step and scalar results
        if latest is not None:
            with open(os.path.join(directory, str(latest), "meta", "metadata")) as f:
                saved = json.load(f).get("best", {})
            self.best, self.step, self.results = saved.get("value"), latest, saved.get("results", {})

    def update(self, step: int, results: dict, state: PyTree, meta: dict) -> bool:
        """Saves `state` when `results[metric]` beats the best so far; whether it did.

        Args:
          results: `{<split>_<metric>: scalar}` of every eval split at `step`.

        Raises:
          ConfigValueError: the results have no such metric (the message lists theirs).
        """
        if self.metric not in results:
            raise ConfigValueError(f"config.keep_best={self.metric!r} is not a result of this run; its results: "
                                   f"{', '.join(sorted(k for k in results if not isinstance(results[k], list)))}")
        value = float(results[self.metric])
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.step = value, step
            self.results = {k: float(v) for k, v in results.items()}
            self.checkpointer.save(step, state, dict(meta, best={"metric": self.metric, "value": value,
                                                                 "results": self.results}))
        return better

    def selected(self) -> dict:
        """`selected_by`, `selected_step` and `selected_<split>_<metric>` for every result of the
        best eval so far ({} before the first)."""
        if self.step is None:
            return {}
        return {"selected_by": self.metric, "selected_step": self.step,
                **{f"selected_{k}": v for k, v in self.results.items()}}

    def wait(self) -> None:
        self.checkpointer.wait()

    def close(self) -> None:
        self.checkpointer.close()


def _os_error(e: BaseException, directory: str) -> OSError | None:
    """The OS error behind a failed save: an OSError in the exception's chain, or the errno that
    TensorStore (Orbax's array writer) puts in its message as `os_error_code='N'`."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, OSError):
            return cause
        code = re.search(r"os_error_code='(\d+)'", str(cause))
        if code:
            return OSError(int(code[1]), os.strerror(int(code[1])), directory)
        cause = cause.__cause__ or cause.__context__
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def _describe(tree: PyTree) -> dict[str, tuple]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(p): (tuple(x.shape), str(x.dtype)) for p, x in flat}


PARAM_TREE = "param_tree.json"  # in the workdir: the model's parameters, as of the run's first start


def check_param_tree(workdir: str, params: PyTree, allow_change: bool = False) -> None:
    """The model is part of a run's identity: refuses a workdir whose recorded parameter tree
    (paths, shapes, dtypes, written at its first start) differs from `params`, then records
    `params`' tree (atomically). Call it before restoring or reporting a finished run, so a
    changed model is never resumed from, nor answered with, the old model's results.

    Args:
      workdir: the run's directory.
      params: the model's parameters (arrays or ShapeDtypeStructs, e.g. from `jax.eval_shape`).
      allow_change: record the new tree without comparing (`--allow_config_change`).
    Raises:
      WorkdirConfigError: naming the first differing parameter and the way out.
    """
    path = os.path.join(workdir, PARAM_TREE)
    now = {k: f"{shape} {dtype}" for k, (shape, dtype) in _describe(params).items()}
    if os.path.exists(path) and not allow_change:
        try:
            with open(path) as f:
                was = json.load(f)
        except (OSError, ValueError):
            was = None  # torn by a kill during its first write: written again below
        if isinstance(was, dict) and was != now:
            changed = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
            first = changed[0]
            raise WorkdirConfigError(
                f"workdir {workdir} holds a run of another model: parameter {first} is "
                f"{was.get(first, 'absent')} there and {now.get(first, 'absent')} in this model"
                + (f" ({len(changed)} parameters differ)" if len(changed) > 1 else "")
                + "; use a new --workdir for the new model, or pass --allow_config_change to record it anyway")
    os.makedirs(workdir, exist_ok=True)
    write_json(path, now, indent=1, sort_keys=True)


def load_params(workdir: str, step: int | None = None) -> tuple[PyTree, str]:
    """The `params` of a run's checkpoint as nested dicts of numpy arrays, and where they came from.

    Args:
      workdir: the run's --workdir.
      step: the checkpoint step; the latest when None.
    Returns:
      (params, "DIR/STEP").
    Raises:
      CheckpointError: no checkpoint there, or an unreadable one.
    """
    state, where = load_state(workdir, step)
    return state["params"], where


def load_state(workdir: str, step: int | None = None) -> tuple[PyTree, str]:
    """A run's whole checkpointed train state (step, params, opt_state, extra) as nested dicts
    of numpy arrays, and "DIR/STEP". Raises CheckpointError as `load_params`."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise CheckpointError(f"no checkpoints in {directory}: train that run first")
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # Orbax warns that a read-only manager is read-only
    try:
        manager = ocp.CheckpointManager(directory, options=options,
                                        item_handlers={"state": ocp.StandardCheckpointHandler(),
                                                       "meta": ocp.JsonCheckpointHandler()})
    finally:
        absl_logger.setLevel(level)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"no finished checkpoint in {directory}: train that run first")
        # The target is built from the checkpoint's own metadata, placed on this process's first
        # device: a run saved on 4 devices (or 4 hosts) reads back on 1. The state comes back as
        # nested dicts (optax structures are not rebuilt; params need none).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                manager.item_metadata(step)["state"])
        # meta is read too (small): leaving it out makes Orbax warn about an unrestored item.
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 meta=ocp.args.JsonRestore()))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"checkpoint {directory}/{step} is unreadable: {_first_line(e)}; "
                              f"move it aside or retrain") from e
    finally:
        manager.close()
    return jax.tree.map(np.asarray, restored["state"]), f"{directory}/{step}"


def load_pretrained(workdir: str, names: Sequence[str], params: PyTree, step: int | None = None
                    ) -> tuple[PyTree, str]:
    """`params` with the top-level entries `names` replaced by those of another run's checkpoint.

    Args:
      workdir: the other run's --workdir.
      names: top-level parameter names to take, e.g. ('encoder',).
      params: this model's (fresh) params, a dict; the replaced entries must match exactly.
      step: checkpoint step to read; the latest when None.
    Returns:
      (new params, "DIR/STEP" of the checkpoint read).
    Raises:
      CheckpointError: no checkpoint, a missing name, or any name/shape/dtype mismatch (the
        message lists the first differences).
    """
    source, where = load_params(workdir, step)
    loaded = {name: _checked_subtree(source, where, (name,), params[name]) for name in names}
    return dict(params, **loaded), where


def _checked_subtree(params: PyTree, where: str, source_path: Sequence[str], target: PyTree) -> PyTree:
    """`params[source_path...]`, checked against `target` (names, shapes, dtypes)."""
    tree = params
    for i, key in enumerate(source_path):
        if not isinstance(tree, dict) or key not in tree:
            have = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
            raise CheckpointError(
                f"checkpoint {where} has no params[{']['.join(source_path[:i + 1])}] "
                f"(found keys: {have}); check the source path and the run")
        tree = tree[key]
    want, got = _describe(target), _describe(tree)
    if want != got:
        diffs = [f"{k}: want {want.get(k)}, checkpoint has {got.get(k)}"
                 for k in sorted(set(want) | set(got)) if want.get(k) != got.get(k)]
        raise CheckpointError(
            f"params[{']['.join(source_path)}] of {where} does not match the model "
            f"({len(diffs)} differences, first: {'; '.join(diffs[:3])}); use a run of the same architecture")
    return jax.tree.unflatten(jax.tree.structure(target), jax.tree.leaves(tree))
