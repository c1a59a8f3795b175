"""XLA:CPU settings against lab's own train steps: which library fusions and dispatch modes pay.

    python -m benchmarks.xla_cpu_flags [--models=mlp,lm_default,lm_wide] [--settings=NAME,...]
        [--steps=30] [--rounds=3] [--out=FILE]

Each (model, setting) is measured in a fresh process (XLA_FLAGS and jax's options are read once,
at start-up), and the measurements alternate: round 1 runs every setting once, round 2 again, and
so on, so a slow spell of a shared machine hits every setting; each reports the median of its
round medians, as a ratio to `baseline` of the same model (below 1: faster).

Models (lab's own step, `common.compiled_train_step`: loss, grads, optimizer, metrics, on random
data of the recipe's shapes):
  mlp         experiments/mlp_classifier `fashion`: 784-128-64-10, SGD 0.001/0.9, batch 100;
  lm_default  experiments/transformer_lm default: nanoGPT's CPU recipe (4L/4H/128, block 64, batch 12);
  lm_wide     its `wide` variant;
  lm_default_bf16, lm_wide_bf16   the same with `model.compute_dtype = "bfloat16"`.
Settings (SETTINGS below): the installed jaxlib's default, each library-fusion mode of XLA:CPU
(YNNPACK, the default's; XNNPACK; oneDNN; none), the concurrency-optimized scheduler, and jax's
synchronous CPU dispatch. Per measurement: compile seconds, the median step (each step waited
for), the mean step of steps run in a row (how lab's loop runs them: it syncs only at log
points).
Prints a table and writes JSON (default `benchmarks/runs/<date>_<time>/xla_cpu_flags.json`;
`--out=benchmarks/results/xla_cpu_flags.json` updates the committed one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

# name -> (XLA_FLAGS, extra environment). Flags go after any XLA_FLAGS the caller set.
SETTINGS = {
    "baseline": ("", {}),
    "no_library_fusion": ("--xla_cpu_experimental_ynn_fusion_type=", {}),
    "xnn_dot_eltwise_reduce": ("--xla_cpu_experimental_ynn_fusion_type= "
                               "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce", {}),
    "onednn_dot_eltwise": ("--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_onednn=true "
                           "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise", {}),
    "concurrency_scheduler": ("--xla_cpu_enable_concurrency_optimized_scheduler=true", {}),
    "sync_dispatch": ("", {"JAX_CPU_ENABLE_ASYNC_DISPATCH": "false"}),
}
MODELS = ("mlp", "lm_default", "lm_wide", "lm_default_bf16", "lm_wide_bf16")


def task_config_batches(model: str):
    """(task, config, a few random batches of the recipe's shapes) for `model`."""
    rng = np.random.default_rng(0)
    if model == "mlp":
        from experiments.mlp_classifier.config import get_config
        from lab.tasks.classification import ClassificationTask, image_classifier

        config = get_config("fashion")
        b = config.batch_size
        task = ClassificationTask(image_classifier(config.model, 10),
                                  example_inputs={"inputs": np.zeros((1, 28, 28, 1), np.float32)})
        batches = [{"inputs": rng.random((b, 28, 28, 1)).astype(np.float32),
                    "label": rng.integers(0, 10, b).astype(np.int32)} for _ in range(4)]
        return task, config, batches, b
    from experiments.transformer_lm.config import get_config
    from lab.tasks.language_model import CausalLMTask, gpt_config

    vocab = 76  # the shakespeare_char vocabulary
    variant = model[len("lm_"):].removesuffix("_bf16")
    config = get_config(None if variant == "default" else variant)
    config.model.compute_dtype = "bfloat16" if model.endswith("_bf16") else "float32"
    cfg = gpt_config(config.model, vocab)
    b, length = config.batch_size, cfg.max_len
    batches = [{"inputs": rng.integers(0, vocab, (b, length)).astype(np.int32),
                "targets": rng.integers(0, vocab, (b, length)).astype(np.int32)} for _ in range(4)]
    return CausalLMTask(cfg), config, batches, b * length


def _child(model: str, steps: int) -> None:
    """Measures one model under this process's settings; prints one JSON line."""
    from benchmarks import common
    from experiments.cli import ensure_malloc_env

    ensure_malloc_env()
    task, config, batches, units = task_config_batches(model)
    run, compile_s, n_params = common.compiled_train_step(task, config, batches)
    run(5)  # warm-up
    waited, in_a_row = run(steps)
    print(json.dumps({"compile_s": compile_s, "median_step_ms": float(np.median(waited)) * 1e3,
                      "in_a_row_step_ms": in_a_row * 1e3, "params": n_params, "units_per_step": units}))


def _measure(model: str, setting: str, steps: int) -> dict | None:
    flags, extra = SETTINGS[setting]
    env = dict(os.environ, **extra)
    env["XLA_FLAGS"] = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), flags) if f)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "benchmarks.xla_cpu_flags", "--child", f"--models={model}",
                          f"--steps={steps}"], capture_output=True, text=True, cwd=root, env=env)
    if out.returncode != 0:
        print(f"{model} / {setting} failed: {out.stderr.strip()[-400:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None,
                        help="the JSON to write (default: benchmarks/runs/<date>_<time>/xla_cpu_flags.json; "
                             "--out=benchmarks/results/xla_cpu_flags.json updates the committed result)")
    args = parser.parse_args()
    models, settings = args.models.split(","), args.settings.split(",")
    for name in models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}: use {', '.join(MODELS)}")
    for name in settings:
        if name not in SETTINGS:
            parser.error(f"unknown setting {name!r}: use {', '.join(SETTINGS)}")
    if args.child:
        _child(models[0], args.steps)
        return
    if "baseline" not in settings:
        settings.insert(0, "baseline")

    from benchmarks import common
    from benchmarks.transformer_lm import matmul_peak

    out = common.out_path(args.out, "xla_cpu_flags.json")
    common.print_header("xla_cpu_flags", out)
    loads_before = os.getloadavg()
    rounds = {(m, s): [] for m in models for s in settings}
    for r in range(args.rounds):
        for m in models:
            for s in settings:
                res = _measure(m, s, args.steps)
                if res is not None:
                    rounds[(m, s)].append(res)
                    print(f"round {r + 1} {m:10s} {s:24s} step {res['median_step_ms']:8.3f} ms "
                          f"({res['in_a_row_step_ms']:8.3f} in a row)", flush=True)
    rows = []
    for m in models:
        base = rounds[(m, "baseline")]
        base_ms = float(np.median([x["median_step_ms"] for x in base])) if base else None
        base_row = float(np.median([x["in_a_row_step_ms"] for x in base])) if base else None
        for s in settings:
            got = rounds[(m, s)]
            if not got:
                rows.append({"model": m, "setting": s, "failed": True})
                continue
            ms = float(np.median([x["median_step_ms"] for x in got]))
            row_ms = float(np.median([x["in_a_row_step_ms"] for x in got]))
            rows.append({"model": m, "setting": s, "xla_flags": SETTINGS[s][0], "env": SETTINGS[s][1],
                         "median_step_ms": ms, "round_medians_ms": [x["median_step_ms"] for x in got],
                         "in_a_row_step_ms": row_ms, "round_in_a_row_ms": [x["in_a_row_step_ms"] for x in got],
                         "compile_s": float(np.median([x["compile_s"] for x in got])),
                         "over_baseline": ms / base_ms if base_ms else None,
                         "in_a_row_over_baseline": row_ms / base_row if base_row else None})
    cpu = common.cpu_info()
    peak = matmul_peak()
    result = {"cpu": cpu, "matmul_peak": peak, "machine": common.machine(), "steps": args.steps,
              "rounds": args.rounds, "rows": rows,
              "load_average_1_5_15min": {"before": loads_before, "after": os.getloadavg()}}
    print(f"CPU {cpu.get('model_name', '?')} (family/model {cpu.get('family_model')}, AVX-512: "
          f"{'yes' if cpu.get('avx512f') else 'no'}); matmul peak {peak['peak_gflops']:.1f} GFLOP/s (f32, jit); "
          f"load average {loads_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    for r in rows:
        if r.get("failed"):
            print(f"{r['model']:10s} {r['setting']:24s} failed")
            continue
        print(f"{r['model']:10s} {r['setting']:24s} step {r['median_step_ms']:8.3f} ms "
              f"(x{r['over_baseline']:.3f}), in a row {r['in_a_row_step_ms']:8.3f} ms "
              f"(x{r['in_a_row_over_baseline']:.3f}), compile {r['compile_s']:.1f} s")
    common.save(result, out)


if __name__ == "__main__":
    main()
