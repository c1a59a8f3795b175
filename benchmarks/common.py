"""What every benchmark records beside its numbers, and how it saves them.

Where a result goes: a run without `--out` writes its JSON into a folder of its own,
`benchmarks/runs/<date>_<time>/NAME.json` (ignored by git; `$LAB_BENCHMARK_RUNS` moves the
`benchmarks/runs` part), so running a benchmark never overwrites the committed results in
`benchmarks/results/`; `--out=benchmarks/results/NAME.json` updates one on purpose
(`add_out_flag`, `out_path`). Every benchmark starts by printing its header (`print_header`: the
CPU's model and the vector extensions XLA:CPU's kernels depend on, and where the JSON goes), and
every saved JSON has the CPU under "cpu" (`save` adds it where a benchmark did not).
"""

import argparse
import json
import os
import platform
import sys
import time
from typing import Sequence

import jax

from lab.provenance import cpu_info  # noqa: F401  (the benchmarks call common.cpu_info)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")  # the committed results: written only when --out names them
RUNS_ENV = "LAB_BENCHMARK_RUNS"  # where runs without --out go (default benchmarks/runs)
# cpu_info() key -> the name a header prints it under.
CPU_FLAGS = (("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512_BF16"), ("amx_bf16", "AMX"))
_RUN_STAMP: list[str] = []  # this process's run folder name, fixed at its first use


def run_dir() -> str:
    """This process's run folder: `$LAB_BENCHMARK_RUNS` (default `benchmarks/runs`) /
    `<YYYY-MM-DD_HHMMSS>` of the first call (one folder per process; created when a result is
    saved)."""
    if not _RUN_STAMP:
        _RUN_STAMP.append(time.strftime("%Y-%m-%d_%H%M%S"))
    return os.path.join(os.environ.get(RUNS_ENV) or os.path.join(HERE, "runs"), _RUN_STAMP[0])


def add_out_flag(parser: argparse.ArgumentParser, name: str) -> None:
    """Adds `--out` (default: none, i.e. `out_path`'s run folder) for the result file `name`."""
    parser.add_argument("--out", default=None,
                        help=f"the JSON to write (default: benchmarks/runs/<date>_<time>/{name}; "
                             f"--out=benchmarks/results/{name} updates the committed result)")


def out_path(out: str | None, name: str) -> str:
    """Where a result goes: `out` when given, else `name` in this process's `run_dir()`."""
    return out or os.path.join(run_dir(), name)


def cpu_line(cpu: dict | None = None) -> str:
    """'CPU <model> (family/model F/M; AVX2 yes, AVX-512 no, AVX512_BF16 no, AMX no), N logical
    CPUs' for `cpu` (default: this machine's `cpu_info()`)."""
    cpu = cpu_info() if cpu is None else cpu
    flags = ", ".join(f"{label} {'yes' if cpu.get(key) else 'no'}" for key, label in CPU_FLAGS)
    return (f"CPU {cpu.get('model_name') or 'unknown'} (family/model {cpu.get('family_model', '?')}; {flags}), "
            f"{os.cpu_count()} logical CPUs")


def print_header(name: str, out: str) -> dict:
    """Prints the two lines every benchmark starts with: `benchmarks.NAME -> OUT` and `cpu_line()`;
    returns `cpu_info()`."""
    cpu = cpu_info()
    print(f"benchmarks.{name} -> {out}\n{cpu_line(cpu)}", flush=True)
    return cpu


def machine() -> dict:
    """The machine and stack a result was measured on."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "jax": jax.__version__,
            "devices": str(jax.devices())}


def against_torch_flags(doc: str, configs: Sequence[str], steps_help: str, out_name: str):
    """The flags of a lab-vs-PyTorch benchmark, parsed: (args, the chosen configs, the torch
    Python (None: no yardstick), its torch version).

    Flags: --steps, --rounds, --configs (comma-separated names of `configs`), --torch_python,
    --torch_threads, --out (`add_out_flag`; `args.out` comes back resolved by `out_path`). Prints
    the header (`print_header`) once the flags are read.
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help=f"timed steps per round ({steps_help})")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default=",".join(configs))
    parser.add_argument("--torch_python", default=sys.executable,
                        help="a Python with torch for the PyTorch yardstick; '' skips it")
    parser.add_argument("--torch_threads", type=int, default=0,
                        help="torch.set_num_threads for the yardstick; 0 (default): PyTorch's default")
    add_out_flag(parser, out_name)
    args = parser.parse_args()
    chosen = args.configs.split(",")
    for name in chosen:
        if name not in configs:
            parser.error(f"unknown config {name!r}: use {', '.join(configs)}")
    args.out = out_path(args.out, out_name)
    print_header(os.path.splitext(out_name)[0], args.out)
    from benchmarks.transformer_lm import has_torch

    torch_version = has_torch(args.torch_python) if args.torch_python else None
    if args.torch_python and not torch_version:
        print(f"no torch under {args.torch_python}: the PyTorch yardstick is skipped")
    return args, chosen, (args.torch_python if torch_version else None), torch_version


def report_against_torch(rows: list[dict], peak: dict, load_before: tuple, torch_version: str | None,
                         out: str, width: int) -> None:
    """Prints the table of a lab-vs-PyTorch benchmark and saves its JSON to `out`.

    Args:
      rows: one dict per config: `config`, `compile_s`, `median_step_ms`, `pipelined_step_ms`,
        `units_per_sec`, `unit`, `model_gflops`, and `torch` (recipe -> `median_step_ms`,
        `lab_over_torch`, `lab_pipelined_over_torch`), `torch_threads`.
      peak: `transformer_lm.matmul_peak()`'s result; each row gets `fraction_of_matmul_peak`.
      load_before: `os.getloadavg()` before the measurements.
      torch_version: the yardstick's torch version (None: no yardstick ran).
      width: the config column's width.
    """
    for r in rows:
        r["fraction_of_matmul_peak"] = r["model_gflops"] / peak["peak_gflops"]
    cpu = cpu_info()
    # Other work on the machine skews both sides (PyTorch's OpenMP threads most): say how busy it was.
    result = {"matmul_peak": peak, "configs": rows, "torch": torch_version, "cpu": cpu,
              "load_average_1_5_15min": {"before": load_before, "after": os.getloadavg()},
              "machine": machine()}
    print(f"CPU {cpu.get('model_name', '?')} (AVX-512: {'yes' if cpu.get('avx512f') else 'no'}); "
          f"matmul peak {peak['peak_gflops']:.1f} GFLOP/s (f32, jit); load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    for r in rows:
        print(f"{r['config']:{width}s} compile {r['compile_s']:.1f} s, step {r['median_step_ms']:.2f} ms "
              f"({r['pipelined_step_ms']:.2f} ms in a row), {r['units_per_sec']:.0f} {r['unit']}/s, "
              f"{r['model_gflops']:.2f} GFLOP/s = {100 * r['fraction_of_matmul_peak']:.1f}% of peak")
        for recipe, t in r.get("torch", {}).items():
            print(f"{'':{width}s} PyTorch {torch_version} ({r['torch_threads']} threads) {recipe}: "
                  f"step {t['median_step_ms']:.2f} ms; lab / PyTorch = {t['lab_over_torch']:.2f} "
                  f"({t['lab_pipelined_over_torch']:.2f} in a row)")
    save(result, out)


def save(result: dict, path: str) -> None:
    """Writes `result` as indented JSON to `path` (folders created) and says where; adds the CPU
    (`cpu_info()`, under "cpu") where the result does not name it."""
    result.setdefault("cpu", cpu_info())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    committed = os.path.dirname(os.path.abspath(path)) == RESULTS_DIR
    print(f"wrote {path}" + (" (a committed result: review the change before committing it)" if committed else ""))


def compiled_train_step(task, config, batches: list[dict]):
    """Compiles lab's own train step (`lab.train.build_train_step`: the task's update, the
    optimizer of `config`, metrics) on one device under jit, for a benchmark.

    Args:
      task: a `lab.task.Task`.
      config: reads the optimizer keys and `num_train_steps` (the schedule's horizon).
      batches: a few batches of the step's shapes, cycled through by `run`.
    Returns:
      (run, compile seconds, number of parameters), where `run(steps)` -> (times of `steps`
      steps each waited for, mean time of `steps` steps in a row). The second is how lab's loop
      runs (it syncs only at log points, so it dispatches a step while the previous one
      computes); the first adds the dispatch to each step.
    """
    import time

    from lab import optim, parallel, train
    from lab.task import StepTools

    tools = StepTools(optim.make_optimizers(config, config.num_train_steps))
    strategy = parallel.make_parallel("jit")
    key = jax.random.key(0)
    init_state = train.init_state_fn(task, tools.optimizers)
    shardings = strategy.state_shardings(jax.eval_shape(init_state, key), jax.eval_shape(task.init, key))
    state = strategy.init_state(init_state, key, shardings)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    step, layout = train.build_train_step(task, tools, key, strategy, shardings, state, batches[0])
    acc = strategy.put_acc(layout.zeros())
    t = time.perf_counter()
    compiled = step.lower(state, acc, batches[0]).compile()
    compile_s = time.perf_counter() - t
    carry = list(compiled(state, acc, batches[0]))
    carry[1].block_until_ready()

    def run(steps: int) -> tuple[list[float], float]:
        times = []
        for i in range(steps):
            t = time.perf_counter()
            carry[:] = compiled(carry[0], carry[1], batches[i % len(batches)])
            carry[1].block_until_ready()
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(steps):
            carry[:] = compiled(carry[0], carry[1], batches[i % len(batches)])
        carry[1].block_until_ready()
        return times, (time.perf_counter() - t) / steps

    return run, compile_s, int(n_params)


def torch_yardstick(module: str, python: str, recipes: Sequence[str], flags: dict, steps: int, warmup: int,
                    threads: int = 0) -> dict | None:
    """One run of the PyTorch script `module` (e.g. 'benchmarks.lstm_torch') under `python` in a
    fresh process (without lab's malloc settings) with `threads` torch threads (0: PyTorch's
    default): its JSON ({'torch', 'threads', 'recipes': {name: {'median_step_ms', ...}}}), or
    None (and its error on stderr) if it fails."""
    import subprocess

    from experiments.cli import MALLOC_ENV

    env = {k: v for k, v in os.environ.items() if k not in MALLOC_ENV}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([python, "-m", module, f"--recipes={','.join(recipes)}", f"--steps={steps}",
                          f"--warmup={warmup}", f"--threads={threads}",
                          *[f"--{k}={v}" for k, v in flags.items()]],
                         capture_output=True, text=True, cwd=root, env=env)
    if out.returncode != 0:
        print(f"the PyTorch yardstick failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def alternate_with_torch(lab_steps: dict, pairings: dict, torch_module: str, torch_flags: dict,
                         steps: int, warmup: int, rounds: int, torch_python: str | None,
                         torch_threads: int = 0) -> list[dict]:
    """Measures lab's compiled steps and their PyTorch yardsticks, alternating, round by round.

    Args:
      lab_steps: row name -> (info, run): `info` with `units_per_step` and `model_gflop_per_step`,
        `run(steps) -> (per-step seconds, mean seconds of steps in a row)`.
      pairings: row name -> the torch recipes it is compared with.
      torch_module, torch_flags: the yardstick script and its shape flags (`torch_yardstick`).
      steps, warmup, rounds: timed steps per round, torch warm-up steps, rounds.
      torch_python: a Python with torch; None: lab only.
    Returns:
      One row per lab step: the medians over rounds of the round medians (each step waited for)
      and of the in-a-row means, rates, the load average after each round, and per paired recipe
      its median step and the lab / PyTorch ratios (plus what the yardstick reports of it).
    """
    import numpy as np

    recipes = list(dict.fromkeys(r for name in lab_steps for r in pairings[name]))
    waited = {name: [] for name in lab_steps}
    in_a_row = {name: [] for name in lab_steps}
    torch_medians = {r: [] for r in recipes}
    torch_out = None
    loads = []  # the 1-minute load average after each round: other work on the machine shows here
    for _ in range(rounds):
        for name, (_, run) in lab_steps.items():
            times, pipelined = run(steps)
            waited[name].append(float(np.median(times)) * 1e3)
            in_a_row[name].append(pipelined * 1e3)
        if torch_python:
            out = torch_yardstick(torch_module, torch_python, recipes, torch_flags, steps, warmup, torch_threads)
            if out is None:
                torch_python = None
            else:
                torch_out = out
                for r in recipes:
                    torch_medians[r].append(out["recipes"][r]["median_step_ms"])
        loads.append(os.getloadavg()[0])
    rows = []
    for name, (info, _) in lab_steps.items():
        median_ms = float(np.median(waited[name]))
        row = dict(info, steps=steps, rounds=rounds, median_step_ms=median_ms, round_medians_ms=waited[name],
                   pipelined_step_ms=float(np.median(in_a_row[name])), round_pipelined_ms=in_a_row[name],
                   load_average_after_rounds=loads,
                   units_per_sec=info["units_per_step"] / median_ms * 1e3,
                   model_gflops=info["model_gflop_per_step"] / median_ms * 1e3)
        if torch_python and torch_out and all(len(torch_medians[r]) == rounds for r in pairings[name]):
            row["torch_threads"] = torch_out["threads"]
            row["torch"] = {}
            for r in pairings[name]:
                torch_ms = float(np.median(torch_medians[r]))
                reported = {k: v for k, v in torch_out["recipes"][r].items() if k != "median_step_ms"}
                row["torch"][r] = dict(reported, median_step_ms=torch_ms, round_medians_ms=torch_medians[r],
                                       lab_over_torch=median_ms / torch_ms,
                                       lab_pipelined_over_torch=row["pipelined_step_ms"] / torch_ms)
        rows.append(row)
    return rows
