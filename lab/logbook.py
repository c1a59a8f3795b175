"""Where a run's numbers go: `metrics.jsonl`, TensorBoard event files and a periodic log line.

Only process 0 writes (multi-host runs log once). `metrics.jsonl` holds one JSON object per
logged step: `{"step": s, "<split>/<metric>": value, ...}`. On resume from step k, records past k
are dropped first: they were written after the checkpoint and will be written again, so a resumed
run's file equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax


class MetricLogger:
    """Appends metric records to `workdir/metrics.jsonl` and TensorBoard; prints progress lines."""

    def __init__(self, workdir: str, total_steps: int, resume_step: int = 0):
        self.is_main = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.total_steps = total_steps
        self._tb = None
        if self.is_main:
            self._truncate_after(resume_step)
            from tensorboardX import SummaryWriter  # imported here: costly, and only process 0 needs it
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._t0, self._s0 = time.perf_counter(), resume_step

    def _truncate_after(self, step: int) -> None:
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
        with open(self.path, "w") as f:
            f.writelines(keep)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        """Records `metrics` (flat `name -> float`) at `step`."""
        if not self.is_main:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(k, v, step)

    def progress(self, step: int, metrics: dict[str, float]) -> None:
        """Logs one line: step, the given metrics, steps/s since start, and ETA."""
        if not self.is_main:
            return
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._s0) / elapsed if elapsed > 0 else float("nan")
        eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
        shown = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        print(f"step {step}/{self.total_steps} | {shown} | {rate:.1f} steps/s | ETA {eta_text}", flush=True)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN; keep the record readable by strict parsers
    return v
