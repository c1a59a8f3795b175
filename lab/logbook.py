"""Where a run's numbers go: `metrics.jsonl`, TensorBoard event files and the progress lines.

Only process 0 writes (multi-host runs log once). `metrics.jsonl` holds one JSON object per
logged step: `{"step": s, "<split>/<metric>": value, ...}`. On resume from step k, records past k
are dropped first: they were written after the checkpoint and will be written again, so a resumed
run's file equals an uninterrupted run's. A torn last line (a kill or a full disk mid-write) is
dropped too, and a record the file already holds at step k is not written twice.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np

from lab.errors import LabError


def _parse(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None  # torn by a kill or a full disk mid-write: the step is logged again
    return record if isinstance(record, dict) and "step" in record else None


class MetricLogger:
    """Appends metric records to `workdir/metrics.jsonl` and TensorBoard; prints progress lines."""

    def __init__(self, workdir: str, total_steps: int, resume_step: int = 0):
        self.is_main = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.total_steps = total_steps
        self._tb = None
        self._at_resume: set[frozenset] = set()  # key sets already logged at the resume step
        self._resume_step = resume_step
        if self.is_main:
            self._truncate_after(resume_step)
            from tensorboardX import SummaryWriter  # imported here: costly, and only process 0 needs it
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._t0, self._s0 = time.perf_counter(), resume_step

    def _truncate_after(self, step: int) -> None:
        """Keeps the records up to `step` (rewritten whole: temp file, then rename). Only a torn
        *last* line is dropped; a damaged line before it is refused, not silently lost."""
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = f.readlines()
        parsed = [_parse(line) for line in lines]
        damaged = [i + 1 for i, r in enumerate(parsed[:-1]) if r is None]
        if damaged:
            raise LabError(f"{self.path} is damaged at line {damaged[0]} (not a JSON record; "
                           f"{len(damaged)} such line(s) before the last): repair or remove those lines, or move "
                           f"the file aside to resume without its history")
        records = [r for r in parsed if r is not None and r["step"] <= step]
        self._at_resume = {frozenset(r) for r in records if r["step"] == step}
        with open(self.path + ".tmp", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
        os.replace(self.path + ".tmp", self.path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Records `metrics` (flat `name -> float`) at `step`."""
        if not self.is_main:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        if step == self._resume_step and frozenset(record) in self._at_resume:
            return  # e.g. the final eval of a finished run, evaluated again on a rerun
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def progress(self, step: int, shown: dict[str, float], steps_per_sec: float,
                 items_per_sec: float, unit: str) -> None:
        """Prints one line: step, the metrics that matter, the train rate and the ETA.

        Args:
          step: the step just finished.
          shown: metric name -> value, as they should read (e.g. {'loss': 0.31}).
          steps_per_sec, items_per_sec: the train rate of the last window (steps only).
          unit: what items are ('examples', 'tokens').
        The ETA divides the remaining steps by the rate since start, evals and checkpoints included.
        """
        if not self.is_main:
            return
        elapsed = time.perf_counter() - self._t0
        overall = (step - self._s0) / elapsed if elapsed > 0 else 0.0
        eta = (self.total_steps - step) / overall if overall > 0 else float("nan")
        parts = [f"step {step}/{self.total_steps}"]
        parts += [f"{k} {v:.4g}" for k, v in shown.items()]
        if steps_per_sec > 0:
            parts.append(f"{steps_per_sec:,.1f} steps/s ({_si(items_per_sec)} {unit}/s)")
        parts.append(f"ETA {_duration(eta)}" if step < self.total_steps else f"{_duration(elapsed)} elapsed")
        print(" | ".join(parts), flush=True)

    def eval_line(self, step: int, split: str, shown: dict[str, float]) -> None:
        """Prints one line with a split's eval metrics."""
        if self.is_main:
            print(f"  eval {split} at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()),
                  flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _si(x: float) -> str:
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.1f}{suffix}"
    return f"{x:.0f}"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN; keep the record readable by strict parsers
    return v


def startup_lines(workdir: str, start_step: int, total_steps: int, params, devices, mesh_shape: dict | None,
                  parallel: str, batch_size: int, split_sizes: dict[str, int]) -> list[str]:
    """The block a run prints before it compiles: where it writes, the model's size by top-level
    module, the devices and mesh, the data, the steps.

    Args:
      params: the parameter tree (arrays or ShapeDtypeStructs).
      mesh_shape: axis name -> size, or None (pmap: every device on one axis).
      split_sizes: split name -> examples, where the data knows them.
    """
    sizes = {k: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for k, v in params.items()} \
        if isinstance(params, dict) else {"params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))}
    total = sum(sizes.values())
    shown = ", ".join(f"{k} {n:,}" for k, n in list(sizes.items())[:8]) + (", ..." if len(sizes) > 8 else "")
    kinds = sorted({d.platform for d in devices})
    mesh = " x ".join(f"{k}={v}" for k, v in mesh_shape.items()) if mesh_shape else "one axis"
    data = ", ".join(f"{k} {n:,} examples" for k, n in split_sizes.items()) or "sizes not known to the loop"
    where = "fresh" if start_step == 0 else f"resuming from step {start_step:,}"
    return [f"run: {workdir} ({where})",
            f"  model: {total:,} parameters ({shown})",
            f"  devices: {len(devices)} {'/'.join(kinds)} in {jax.process_count()} process(es); parallel={parallel}, "
            f"mesh {mesh}",
            f"  data: {data}; global batch {batch_size}",
            f"  steps: {start_step:,} -> {total_steps:,}"]


class Profiler:
    """A `jax.profiler` trace of steps START..STOP (`config.profile_steps='START:STOP'`) into
    `workdir/profile/` (open it with TensorBoard's profile plugin or Perfetto). Calls are whole:
    with steps_per_call K the trace starts and stops at the call boundaries around the window."""

    def __init__(self, spec: str, workdir: str):
        self.window = parse_profile_steps(spec)
        self.directory = os.path.join(workdir, "profile")
        self.active = False

    def at_step(self, step: int, wait_for) -> None:
        """Call after each train call with the step reached; `wait_for`: what to block on before
        the trace stops (the state), so the device work of the window is in it."""
        if self.window is None:
            return
        start, stop = self.window
        if not self.active and start <= step < stop:
            jax.profiler.start_trace(self.directory)
            self.active = True
        elif self.active and step >= stop:
            jax.block_until_ready(wait_for)
            jax.profiler.stop_trace()
            self.active = False
            print(f"  profile of steps {start}-{stop}: {self.directory}", flush=True)

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
    """'START:STOP' -> (START, STOP) with 0 <= START < STOP; '' -> None.

    Raises:
      ValueError: any other text.
    """
    if not spec:
        return None
    try:
        start, stop = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ValueError(f"config.profile_steps={spec!r}: write START:STOP (e.g. 10:20)") from None
    if not 0 <= start < stop:
        raise ValueError(f"config.profile_steps={spec!r}: need 0 <= START < STOP")
    return start, stop
