"""Loop overhead: a full lab run of the seed MLP recipe against a bare jitted step, side by side.

    python -m benchmarks.mlp_classifier [--dataset=fashion_mnist] [--steps=6000] [--steps_per_call=1,10,100,600]
        [--rounds=3] [--out=FILE]

Three ways to run the same math (784-128-64-10 MLP, SGD lr 0.001 momentum 0.9, batch 100):
  bare   a jitted flax/optax step on in-memory numpy slices, nothing else (the yardstick);
  scan   a whole epoch of steps under one jitted `lax.scan` (no per-step dispatch at all);
  lab    `python -m experiments.mlp_classifier --config=...:fashion` in-process: data pipeline,
         eval every epoch, logging, TensorBoard, async checkpoints, results and plots included;
         once per `--steps_per_call` K (`--config.steps_per_call=K`: K steps per compiled call).
The three alternate, round by round (bare, scan, then each lab run), so a slow spell of a shared
machine hits all of them; each rate is the median over rounds, each ratio the median of the
rounds' own ratios, and every round's figures are kept in the JSON.
Prints a table and writes JSON (default `benchmarks/runs/<date>_<time>/mlp_classifier.json`;
`--out=benchmarks/results/mlp_classifier.json` updates the committed one).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import lab.data
from benchmarks import common
from lab.models.mlp import MLP


def _bare_and_scan(x: np.ndarray, y: np.ndarray, steps: int, batch: int) -> dict:
    model = MLP(features=(128, 64), num_classes=10)
    tx = optax.sgd(0.001, momentum=0.9)
    params = model.init(jax.random.key(0), x[:1])["params"]

    def loss_fn(p, xb, yb):
        logits = model.apply({"params": p}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def step(p, o, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        u, o = tx.update(g, o, p)
        return optax.apply_updates(p, u), o, loss

    jstep = jax.jit(step, donate_argnums=(0, 1))
    steps_per_epoch = len(x) // batch
    out = {}

    p = jax.tree.map(jnp.array, params)  # a copy: the step donates its inputs
    o = tx.init(p)
    t0 = time.perf_counter()
    for s in range(steps):
        e, i = divmod(s, steps_per_epoch)
        if i == 0:
            perm = np.random.default_rng([0, e]).permutation(len(x))
            xe, ye = x[perm], y[perm]
        p, o, loss = jstep(p, o, xe[i * batch:(i + 1) * batch], ye[i * batch:(i + 1) * batch])
        if s == 0:
            loss.block_until_ready()
            t_first = time.perf_counter()
    loss.block_until_ready()
    t1 = time.perf_counter()
    out["bare"] = {"seconds": t1 - t0, "steps_per_sec": steps / (t1 - t0),
                   "steady_steps_per_sec": (steps - 1) / (t1 - t_first), "compile_s": t_first - t0,
                   "final_train_loss": float(loss)}

    def epoch(carry, xy):
        p, o = carry
        p, o, loss = step(p, o, *xy)
        return (p, o), loss

    run_epoch = jax.jit(lambda p, o, xs, ys: jax.lax.scan(epoch, (p, o), (xs, ys)), donate_argnums=(0, 1))
    p = jax.tree.map(jnp.array, params)
    o = tx.init(p)
    t0 = time.perf_counter()
    done = 0
    e = 0
    while done < steps:
        perm = np.random.default_rng([0, e]).permutation(len(x))[: steps_per_epoch * batch]
        n = min(steps_per_epoch, steps - done)
        xs = x[perm].reshape((steps_per_epoch, batch) + x.shape[1:])[:n]
        ys = y[perm].reshape(steps_per_epoch, batch)[:n]
        (p, o), losses = run_epoch(p, o, xs, ys)
        done += n
        e += 1
    losses.block_until_ready()
    t1 = time.perf_counter()
    out["scan"] = {"seconds": t1 - t0, "steps_per_sec": steps / (t1 - t0), "final_train_loss": float(losses[-1])}
    return out


def _lab_run(dataset: str, steps: int, steps_per_call: int) -> dict:
    from experiments.mlp_classifier.__main__ import main
    from experiments.mlp_classifier.config import get_config
    config = get_config("fashion")
    config.dataset = dataset
    config.num_train_steps = steps
    config.steps_per_call = steps_per_call
    with tempfile.TemporaryDirectory() as workdir:
        t0 = time.perf_counter()
        results = main(config, workdir)
        wall = time.perf_counter() - t0
    return {"steps_per_call": steps_per_call, "seconds": results["train_seconds"], "steps_per_sec": results["steps_per_sec"],
            "wall_seconds_incl_data_load": wall, "test_accuracy": results["test_accuracy"],
            "evals": steps // config.eval_every_steps, "checkpoints_every": config.checkpoint_every_steps}


def _median_run(runs: list[dict]) -> dict:
    """The round whose steps/s is the median (the lower middle one for an even count), with every
    round's steps/s beside it."""
    ordered = sorted(runs, key=lambda r: r["steps_per_sec"])
    return dict(ordered[(len(ordered) - 1) // 2], round_steps_per_sec=[r["steps_per_sec"] for r in runs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--steps_per_call", default="1,10,100,600",
                        help="comma-separated K: one lab run per K; the first is the 'lab' row")
    parser.add_argument("--rounds", type=int, default=3)
    common.add_out_flag(parser, "mlp_classifier.json")
    args = parser.parse_args()
    out = common.out_path(args.out, "mlp_classifier.json")
    common.print_header("mlp_classifier", out)

    train = lab.data.load(args.dataset, "train")
    x, y = train["inputs"], train["label"]
    from benchmarks.transformer_lm import matmul_peak
    loads_before = os.getloadavg()
    result = {"dataset": args.dataset, "steps": args.steps, "batch_size": 100, "rounds": args.rounds,
              "machine": common.machine(), "cpu": common.cpu_info(), "matmul_peak": matmul_peak()}
    ks = [int(k) for k in args.steps_per_call.split(",")]
    rounds = []  # each round: bare, scan, then one lab run per K, one after the other
    for _ in range(args.rounds):
        measured = _bare_and_scan(x, y, args.steps, 100)
        measured["lab_runs"] = [_lab_run(args.dataset, args.steps, k) for k in ks]
        for r in measured["lab_runs"]:
            r["over_scan"] = r["steps_per_sec"] / measured["scan"]["steps_per_sec"]
            r["over_bare"] = r["steps_per_sec"] / measured["bare"]["steps_per_sec"]
        rounds.append(measured)
    result["round_results"] = rounds
    for name in ("bare", "scan"):
        result[name] = _median_run([m[name] for m in rounds])
    result["lab_runs"] = []
    for i, k in enumerate(ks):
        runs = [m["lab_runs"][i] for m in rounds]
        row = _median_run(runs)
        row["over_scan"] = float(np.median([r["over_scan"] for r in runs]))  # the median of the rounds' ratios
        row["round_over_scan"] = [r["over_scan"] for r in runs]
        row["over_bare"] = float(np.median([r["over_bare"] for r in runs]))
        row["round_over_bare"] = [r["over_bare"] for r in runs]
        result["lab_runs"].append(row)
    result["lab"] = result["lab_runs"][0]
    result["lab_over_bare"] = result["lab"]["over_bare"]
    result["load_average_1_5_15min"] = {"before": loads_before, "after": os.getloadavg()}

    cpu = result["cpu"]
    print(f"CPU {cpu.get('model_name', '?')} (family/model {cpu.get('family_model')}, AVX-512: "
          f"{'yes' if cpu.get('avx512f') else 'no'}, AVX512_BF16: {'yes' if cpu.get('avx512_bf16') else 'no'}); "
          f"matmul peak {result['matmul_peak']['peak_gflops']:.1f} GFLOP/s (f32, jit); load average "
          f"{loads_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {args.rounds} rounds, medians")
    for name in ("bare", "scan"):
        r = result[name]
        rates = ", ".join(f"{v:.0f}" for v in r["round_steps_per_sec"])
        print(f"{name:12s} {r['steps_per_sec']:8.0f} steps/s  (rounds: {rates})")
    for r in result["lab_runs"]:
        ratios = ", ".join(f"{v:.2f}" for v in r["round_over_scan"])
        print(f"lab K={r['steps_per_call']:<6d} {r['steps_per_sec']:8.0f} steps/s  lab / scan {r['over_scan']:.2f} "
              f"(rounds: {ratios})  test accuracy {r['test_accuracy']:.4f}")
    print(f"lab (K={ks[0]}) / bare = {result['lab_over_bare']:.2f} (rounds: "
          f"{', '.join(f'{v:.2f}' for v in result['lab']['round_over_bare'])})")
    common.save(result, out)


if __name__ == "__main__":
    main()
