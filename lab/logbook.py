"""Where a run's numbers go: `metrics.jsonl`, TensorBoard event files and the progress lines.

Only process 0 writes (multi-host runs log once). `metrics.jsonl` holds one JSON object per
logged step: `{"step": s, "<tag>": value, ...}`, with one tag scheme (TensorBoard's scalars too):

    train/<metric>          the running mean over the train steps since the previous record
                            (`log_every_steps`), the per-step norms, `train/learning_rate` (one
                            per named optimizer: `train/learning_rate_<name>`, the rate the
                            record's last update used)
    eval_<split>/<metric>   one evaluation pass over a split (`eval_test/accuracy`; the train
                            split evaluated is `eval_train/loss`, never the running mean)
    steps_per_sec, <unit>_per_sec   the train rate of the record's window

(`results.json` keeps its `<split>_<metric>` names.) On resume from step k, records past k
are dropped first: they were written after the checkpoint and will be written again, so a resumed
run's file equals an uninterrupted run's, except the first train record after a resume from a
checkpoint between log steps: its running mean covers the steps since the checkpoint only, and
its `train/window_steps` (every train record has it) says how many. A torn last line (a kill or a full disk mid-write) is
dropped too, and a record the file already holds at step k is not written twice.

TensorBoard also gets the config (a text summary and the hparams plugin's session start), the
pictures and text a task's `on_eval` saves with a tag (`lab.report.eval_outputs`), and at the
end the run's PNGs (`pictures_to_tensorboard`).

Progress lines: one after the first train call completes (whatever `log_every_steps`), one per
record, and one whenever `PROGRESS_EVERY_SECONDS` pass without a line; the in-between lines read
the step accumulator without resetting it and write no record.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Callable, Mapping

import jax
import numpy as np

from lab.errors import LabError
from lab.files import write_whole
from lab.parallel import PER_STEP_SUFFIX


def _parse(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None  # torn by a kill or a full disk mid-write: the step is logged again
    return record if isinstance(record, dict) and "step" in record else None


PROGRESS_EVERY_SECONDS = 30.0  # a progress line at least this often, between log steps too
TRAIN = "train/"  # the running means' prefix; an eval's is `eval_tag(split, '')`


def eval_tag(split: str, metric: str) -> str:
    """The tag of `metric` evaluated on `split`: 'eval_<split>/<metric>'."""
    return f"eval_{split}/{metric}"


def scalars(metrics: dict) -> dict[str, float]:
    """The 0-d entries of `metrics` as floats."""
    return {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}


def vectors(metrics: dict, max_size: int = 64) -> dict[str, list[float]]:
    """The short 1-D metrics (a histogram over classes, say) as lists, for metrics.jsonl."""
    return {k: np.asarray(v, np.float64).tolist() for k, v in metrics.items()
            if np.ndim(v) == 1 and np.size(v) <= max_size}


def window_metrics(summarize: Callable[[dict], dict], sums: dict, seconds: float,
                   count_unit: str) -> dict[str, float]:
    """The `train/` metrics of a window of steps from the step accumulator's sums (name ->
    array, incl. `steps` and `count`): the task's summary of the sums, the per-step norms
    averaged over the steps and, given the window's `seconds` > 0, the rates."""
    sums = dict(sums)
    steps = float(sums.pop("steps"))
    norms = {TRAIN + k: float(sums.pop(k)) / steps for k in list(sums) if k.endswith(PER_STEP_SUFFIX)}
    out = {TRAIN + k: v for k, v in scalars(summarize(sums)).items()}
    out.update(norms)
    out[TRAIN + "window_steps"] = steps  # a resumed run's first window may be shorter: it says so
    if seconds > 0:
        out["steps_per_sec"] = steps / seconds
        out[f"{count_unit}_per_sec"] = float(sums["count"]) / seconds
    return out


def headline(metrics: dict) -> dict[str, float]:
    """The metrics a person reads in a progress line: the `train/` scalars without the norms,
    the learning rate as `lr`."""
    out = {}
    for k, v in metrics.items():
        if k.startswith(TRAIN) and not k.endswith((PER_STEP_SUFFIX, "window_steps")):
            name = k[len(TRAIN):]
            out[name.replace("learning_rate", "lr", 1) if name.startswith("learning_rate") else name] = v
    return out


def flat_config(config: dict, prefix: str = "") -> dict[str, str | float | bool]:
    """A nested config dict as `{'a.b': value}` with values TensorBoard's hparams take: numbers,
    booleans and strings as they are, anything else (lists, None) as its JSON text."""
    out: dict = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v, default=str)
    return out


def _markdown_block(text: str) -> str:
    """Text as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())


class MetricLogger:
    """Appends metric records to `workdir/metrics.jsonl` and TensorBoard; prints progress lines.

    Args:
      workdir: the run's directory (`metrics.jsonl`, `tensorboard/`).
      total_steps: the run's last step, for the ETA.
      resume_step: the step the run starts from (0: fresh); TensorBoard drops what earlier
        event files hold past it.
      learning_rates: optimizer name ('' for the single one) -> its schedule (`lab.optim.
        learning_rate_schedules`), evaluated on the host at each record.
      config: the run's config as a dict, written to TensorBoard (text and hparams).
    """

    def __init__(self, workdir: str, total_steps: int, resume_step: int = 0, *,
                 learning_rates: Mapping[str, Callable] | None = None, config: dict | None = None):
        self.is_main = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.total_steps = total_steps
        self._tb = None
        self._at_resume: set[frozenset] = set()  # key sets already logged at the resume step
        self._resume_step = resume_step
        self._schedules = dict(learning_rates or {})
        if self.is_main:
            self._truncate_after(resume_step)
            self._tb = _summary_writer(workdir, purge_step=resume_step + 1 if resume_step else None)
            if config is not None:
                self._write_config(config, resume_step)
        self._t_start = time.perf_counter()
        self._t0, self._s0 = self._t_start, resume_step  # the ETA's origin: reset at the first line
        self._last_line: float | None = None  # when the last progress line was printed

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
        write_whole(self.path, "".join(json.dumps(r) + "\n" for r in records))

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

    def _write_config(self, config: dict, step: int) -> None:
        """The config as a text summary ('config') and as the hparams plugin's session start."""
        from tensorboardX.summary import hparams

        self._tb.add_text("config", _markdown_block(json.dumps(config, indent=2, default=str)), step)
        _, session_start, _ = hparams(flat_config(config), {})
        self._tb._get_file_writer().add_summary(session_start, step)

    def learning_rates(self, step: int) -> dict[str, float]:
        """`train/learning_rate[_<name>]` -> the rate of the update that made `step` (the schedule
        at step - 1), computed on the host's CPU: the train state is not read."""
        if not self._schedules:
            return {}
        try:
            where = jax.default_device(jax.local_devices(backend="cpu")[0])
        except RuntimeError:  # no CPU backend in this process: the default device
            where = contextlib.nullcontext()
        with where:
            return {TRAIN + "learning_rate" + (f"_{name}" if name else ""): float(schedule(max(step - 1, 0)))
                    for name, schedule in self._schedules.items()}

    def log_window(self, step: int, summarize: Callable[[dict], dict], count_unit: str, sums: dict,
                   seconds: float) -> dict[str, float]:
        """Records and prints a window of train steps ending at `step` (`window_metrics` of the
        accumulator's `sums` over `seconds`, and the learning rates); returns the record."""
        metrics = window_metrics(summarize, sums, seconds, count_unit)
        if self.is_main:  # the rates after the other train/ tags, before the throughput
            rates = {k: metrics.pop(k) for k in list(metrics) if not k.startswith(TRAIN)}
            metrics.update(self.learning_rates(step), **rates)
        self.write(step, metrics)
        self.progress(step, headline(metrics), metrics.get("steps_per_sec", 0.0),
                      metrics.get(f"{count_unit}_per_sec", 0.0), count_unit)
        return metrics

    def log_eval(self, step: int, split: str, summary: dict) -> None:
        """Records (`eval_<split>/...`: the scalars and short vectors) and prints one split's
        eval summary at `step`."""
        shown = scalars(summary)
        self.write(step, {eval_tag(split, k): v for k, v in dict(shown, **vectors(summary)).items()})
        self.eval_line(step, split, shown)

    def line_due(self) -> bool:
        """Whether a progress line is due between records (process 0): none yet (the first
        train call just ran) or none for `PROGRESS_EVERY_SECONDS`."""
        return self.is_main and (self._last_line is None
                                 or time.perf_counter() - self._last_line >= PROGRESS_EVERY_SECONDS)

    def running_line(self, step: int, summarize: Callable[[dict], dict], count_unit: str, sums: dict) -> None:
        """Prints a progress line from the sums accumulated since the last record (nothing
        recorded: the window goes on)."""
        if self.is_main:
            metrics = dict(window_metrics(summarize, sums, 0.0, count_unit), **self.learning_rates(step))
            self.progress(step, headline(metrics), 0.0, 0.0, count_unit)

    def progress(self, step: int, shown: dict[str, float], steps_per_sec: float,
                 items_per_sec: float, unit: str) -> None:
        """Prints one line: step, the metrics that matter, the train rate and the ETA.

        Args:
          step: the step just finished.
          shown: metric name -> value, as they should read (e.g. {'loss': 0.31}).
          steps_per_sec, items_per_sec: the train rate of the last window (0: not shown).
          unit: what items are ('examples', 'tokens').
        The ETA divides the remaining steps by the rate since the first line (which follows the
        first train call, so compiling is left out), evals and checkpoints included.
        """
        if not self.is_main:
            return
        now = time.perf_counter()
        if self._last_line is None:
            self._t0, self._s0 = now, step
        self._last_line = now
        elapsed = now - self._t0
        overall = (step - self._s0) / elapsed if elapsed > 0 and step > self._s0 else 0.0
        eta = (self.total_steps - step) / overall if overall > 0 else float("nan")
        parts = [f"step {step}/{self.total_steps}"]
        parts += [f"{k} {v:.4g}" for k, v in shown.items()]
        if steps_per_sec > 0:
            parts.append(f"{steps_per_sec:,.1f} steps/s ({_si(items_per_sec)} {unit}/s)")
        parts.append(f"ETA {_duration(eta)}" if step < self.total_steps
                     else f"{_duration(now - self._t_start)} elapsed")
        print(" | ".join(parts), flush=True)

    def eval_line(self, step: int, split: str, shown: dict[str, float]) -> None:
        """Prints one line with a split's eval metrics."""
        if self.is_main:
            print(f"  eval {split} at step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()),
                  flush=True)

    def add_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """An (H, W, 3) uint8 RGB picture to TensorBoard's images at `step` (process 0)."""
        if self._tb is not None:
            self._tb.add_image(tag, np.asarray(image), step, dataformats="HWC")

    def add_text(self, tag: str, text: str, step: int) -> None:
        """Text to TensorBoard's text tab at `step`, as a code block (line breaks kept)."""
        if self._tb is not None:
            self._tb.add_text(tag, _markdown_block(text), step)

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def pictures_to_tensorboard(workdir: str, step: int, pictures: Mapping[str, np.ndarray]) -> None:
    """Adds tag -> (H, W, 3) uint8 pictures (a finished run's curves and confusion matrices) to
    `workdir/tensorboard` at `step`, through a writer of its own (process 0 only)."""
    if jax.process_index() != 0 or not pictures:
        return
    with _summary_writer(workdir) as writer:
        for tag, picture in pictures.items():
            writer.add_image(tag, np.asarray(picture), step, dataformats="HWC")


def _summary_writer(workdir: str, **kwargs):
    """A TensorBoard writer into `workdir/tensorboard` whose event file has a name of its own:
    tensorboardX names files by the second and opens them for writing from scratch, so two
    writers started within one second (a run's pictures, a quick resume) would overwrite each
    other. The nanosecond suffix also keeps the files in the order they were written."""
    from tensorboardX import SummaryWriter  # imported here: costly, and only process 0 needs it

    return SummaryWriter(os.path.join(workdir, "tensorboard"), filename_suffix=f".{time.time_ns()}", **kwargs)


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
