"""Where lab's train step spends its time on XLA:CPU: a `jax.profiler` trace, summed per kernel.

    python -m benchmarks.profile_step [--model=lm_default] [--steps=10] [--top=25] [--out=FILE]

Compiles lab's own step for `--model` (`benchmarks.xla_cpu_flags` models: mlp, lm_default,
lm_wide; random data of the recipe's shapes), warms it up, then traces `--steps` steps run in a
row and sums the trace's kernel events (XLA:CPU's thunks: library fusions `ynn_fusion` /
`xnn_fusion`, `dot`, XLA's own loop fusions, copies) per name and per kind (the name without its
`.N` suffix). Per kind: milliseconds per step, share of the kernel time, kernels per step. The
kernel total against the step time shows how much of a step is the program's own work and how
much dispatch and waiting. Run it under other XLA_FLAGS to see what a flag moves.
Prints the table and writes JSON (default `benchmarks/runs/<date>_<time>/profile_<model>.json`;
`--out=benchmarks/results/profile_<model>.json` updates a committed one).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

from benchmarks import common
from benchmarks.xla_cpu_flags import MODELS, task_config_batches

# Trace events that are not kernels of the compiled program: the runtime's own spans (the
# thread pool's regions, three a parallel kernel, and the wait for donated buffers among them)
# and Python frames (jax's profiler records those as '$file:line name').
_NOT_KERNELS = re.compile(r"^(\$|ThunkExecutor|PjitFunction|CommonPjRt|ParseArguments|SlinkyThreadPool|"
                          r"ThreadpoolListener|Wait for donation holds|end: )")


def kernel_times(trace_dir: str) -> dict[str, list]:
    """Kernel name -> [count, total microseconds] from the perfetto trace under `trace_dir`."""
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise SystemExit(f"no trace written under {trace_dir}")
    with gzip.open(files[0]) as f:
        events = json.load(f)["traceEvents"]
    out: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("ph") == "X" and not _NOT_KERNELS.match(e.get("name", "")):
            out[e["name"]][0] += 1
            out[e["name"]][1] += e["dur"]
    return dict(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lm_default", choices=MODELS)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    common.add_out_flag(parser, "profile_<model>.json")
    args = parser.parse_args()
    out = common.out_path(args.out, f"profile_{args.model}.json")
    common.print_header("profile_step", out)
    from experiments.cli import ensure_malloc_env

    ensure_malloc_env()
    task, config, batches, _ = task_config_batches(args.model)
    run, compile_s, n_params = common.compiled_train_step(task, config, batches)
    run(5)
    _, step_s = run(args.steps)  # untraced, for the step time
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
            t = time.perf_counter()
            run(args.steps)  # `run` times each step waited for, then the same number in a row
            traced_s = (time.perf_counter() - t) / (2 * args.steps)
        kernels = kernel_times(trace_dir)
    n = 2 * args.steps
    kinds: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for name, (count, us) in kernels.items():
        kind = re.sub(r"\.\d+$", "", name)
        kinds[kind][0] += count
        kinds[kind][1] += us
    total_us = sum(us for _, us in kinds.values())
    rows = [{"kind": k, "ms_per_step": us / 1e3 / n, "share": us / total_us, "per_step": c / n}
            for k, (c, us) in sorted(kinds.items(), key=lambda kv: -kv[1][1])]
    top = [{"kernel": k, "ms_per_step": us / 1e3 / n, "per_step": c / n}
           for k, (c, us) in sorted(kernels.items(), key=lambda kv: -kv[1][1])[:args.top]]
    cpu = common.cpu_info()
    result = {"model": args.model, "params": n_params, "compile_s": compile_s, "step_ms": step_s * 1e3,
              "traced_step_ms": traced_s * 1e3, "kernel_ms_per_step": total_us / 1e3 / n,
              "kernels_per_step": sum(c for c, _ in kinds.values()) / n, "kinds": rows, "top_kernels": top,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu": cpu, "machine": common.machine(),
              "load_average_1_5_15min": os.getloadavg()}
    print(f"{args.model}: CPU {cpu.get('model_name', '?')} (AVX-512: {'yes' if cpu.get('avx512f') else 'no'}); "
          f"step {step_s * 1e3:.2f} ms in a row ({traced_s * 1e3:.2f} traced); kernels "
          f"{result['kernel_ms_per_step']:.2f} ms per step in {result['kernels_per_step']:.0f} kernels; "
          f"XLA_FLAGS={result['xla_flags']!r}")
    for r in rows[:args.top]:
        print(f"  {r['ms_per_step']:8.3f} ms {100 * r['share']:5.1f}% {r['per_step']:6.1f}/step  {r['kind']}")
    common.save(result, out)


if __name__ == "__main__":
    main()
