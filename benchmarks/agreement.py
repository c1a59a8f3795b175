"""Same numbers everywhere: one recipe on 1 process x 1 device, 1 x 4, and 2 processes x 2 devices.

    python -m benchmarks.agreement [--experiments=mlp,lm] [--workdir=runs/agreement] [--out=FILE]

Runs each experiment through its normal entry point (the 2-process runs through `lab.launch` on
127.0.0.1, 4 simulated CPU devices in all), with the replicated mesh and with FSDP
(`data:2,fsdp:2`), and reports, against the 1 x 1 run, the largest difference of every logged
loss and of every final parameter, and the wall time of each run. Saves JSON (default
`benchmarks/runs/<date>_<time>/agreement.json`; `--out=benchmarks/results/agreement.json` updates
the committed one). The recipes: the MLP digits classifier as published (140
steps, dropout off) and the default GPT recipe cut to 300 steps (dropout off, AdamW, warmup +
cosine, evals with samples every 100 steps). Every run is a real training run: expect minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = {
    "mlp": ["-m", "experiments.mlp_classifier"],
    "lm": ["-m", "experiments.transformer_lm", "--config.num_train_steps=300", "--config.eval_every_steps=100",
           "--config.checkpoint_every_steps=100", "--config.optimizer.decay_steps=300"],
}
# name -> (processes, devices per process, config.mesh)
LAYOUTS = {"1x1": (1, 1, ""), "1x4": (1, 4, ""), "2x2": (2, 2, ""), "1x4 fsdp": (1, 4, "data:2,fsdp:2"),
           "2x2 fsdp": (2, 2, "data:2,fsdp:2")}


def run(command: list[str], processes: int, devices: int, workdir: str) -> float:
    """Runs one layout; returns its wall seconds. Raises on a failed run."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    args = [sys.executable, *command, f"--workdir={workdir}"]
    if processes > 1:
        args = [sys.executable, "-m", "lab.launch", f"--num_processes={processes}",
                f"--devices_per_process={devices}", "--", *args]
    elif devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def losses(workdir: str) -> dict[tuple[int, str], float]:
    """Every logged loss of a run: (step, key) -> value."""
    from lab.report import read_metrics
    return {(r["step"], k): v for r in read_metrics(workdir) for k, v in r.items() if k.endswith("/loss")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", default="mlp,lm")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "agreement"))
    from benchmarks import common
    common.add_out_flag(parser, "agreement.json")
    args = parser.parse_args()
    from lab.checkpoint import load_params

    out = common.out_path(args.out, "agreement.json")
    report = {"cpu": common.print_header("agreement", out), "rows": []}
    for name in args.experiments.split(","):
        runs = {}
        for layout, (processes, devices, mesh) in LAYOUTS.items():
            workdir = os.path.join(args.workdir, name, layout.replace(" ", "_"))
            shutil.rmtree(workdir, ignore_errors=True)
            command = EXPERIMENTS[name] + ([f"--config.mesh={mesh}"] if mesh else [])
            runs[layout] = (workdir, run(command, processes, devices, workdir))
        base_dir = runs["1x1"][0]
        base_losses, base_params = losses(base_dir), load_params(base_dir)[0]
        for layout, (workdir, seconds) in runs.items():
            ours = losses(workdir)
            assert ours.keys() == base_losses.keys(), (layout, sorted(set(ours) ^ set(base_losses))[:5])
            params = load_params(workdir)[0]
            param_diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), params, base_params)))
            row = {"experiment": name, "layout": layout, "wall_seconds": round(seconds, 1),
                   "losses_compared": len(ours),
                   "max_loss_diff": max(abs(ours[k] - base_losses[k]) for k in ours),
                   "max_param_diff": param_diff,
                   "final_losses": {k[1]: v for k, v in ours.items() if k[0] == max(s for s, _ in ours)}}
            report["rows"].append(row)
            print(f"{name:4s} {layout:9s} {seconds:6.1f} s  max |loss - 1x1| {row['max_loss_diff']:.2e} "
                  f"over {len(ours)}  max |param - 1x1| {param_diff:.2e}  {row['final_losses']}", flush=True)
    common.save(report, out)


if __name__ == "__main__":
    main()
