"""lab's hand-written attention against `jax.nn.dot_product_attention` on this CPU: ms per jitted
call, forward and forward+backward, float32 and bfloat16, at the shapes of lab's GPT configs.

    python -m benchmarks.attention [--configs=default,wide] [--rounds=5] [--reps=10] [--out=FILE]

What is timed, per config (experiments/transformer_lm/config.py: the default recipe, B=12, L=64,
H=4, K=32; `wide`, B=8, L=256, H=6, K=64) and per dtype of q, k, v (float32; bfloat16, what
`--config.model.compute_dtype=bfloat16` feeds the attention):
  lab  `lab.models.transformer._attend`, imported (not copied), under the mask GPT builds
       (`jnp.tril(jnp.ones((L, L), bool))[None, None]`, made inside the jitted function as in
       `GPT.__call__`): q scaled by 1/sqrt(K) in q's dtype, scores `einsum('blhk,bthk->bhlt')` in
       q's dtype then cast to float32, masked with `finfo(float32).min`, softmax in float32,
       probabilities cast back to q's dtype, `einsum('bhlt,bthk->blhk')` with v;
  jax  `jax.nn.dot_product_attention(q, k, v, is_causal=True)` (implementation=None, which on a
       CPU is 'xla': the script checks that both lower to the same HLO): scores
       `einsum(..., preferred_element_type=float32)` (for bf16 with the BF16_BF16_F32 algorithm),
       then scaled by 1/sqrt(K) in float32, masked with -0.7 * finfo(float32).max, softmax in
       float32, probabilities cast to v's dtype, the same second einsum.
Each as a jitted forward `f(q, k, v)` and a jitted forward+backward
`grad(lambda q, k, v: f(q, k, v).astype(float32).sum(), argnums=(0, 1, 2))`.

Timing: `--rounds` rounds; each round runs every (config, dtype, pass, implementation) in turn
(the order reversed every other round, so a slow spell of a shared machine hits both sides),
`--reps` calls each waited for (median: "ms per call") and `--reps` calls in a row (mean). The
reported numbers are the medians over rounds; jax/lab < 1 means jax.nn is faster.

Numerics (float32 and bfloat16 inputs, per config): max |lab - jax| of the outputs and of the
three gradients, whether they are bitwise equal, and each side's max error against a float64
NumPy reference of the same (dtype-rounded) inputs.

Prints a table and writes JSON (default `benchmarks/runs/<date>_<time>/attention.json`;
`--out=benchmarks/results/attention.json` updates the committed one) with the CPU model
and its vector extensions, the load average before, after each round and after, and every round.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from lab.models.transformer import _attend

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
IMPLS = ("lab", "jax")
PASSES = ("fwd", "fwd+bwd")
# /proc/cpuinfo flags beyond common.cpu_info's that decide which kernels XLA:CPU / oneDNN can use.
EXTRA_FLAGS = ("fma", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_fp16", "amx_tile", "amx_int8")


def gpt_shapes(name: str) -> dict:
    """{'batch', 'length', 'heads', 'head_dim', 'width'} of experiments/transformer_lm's config `name`."""
    from experiments.transformer_lm.config import get_config

    c = get_config(None if name == "default" else name)
    m = c.model
    return {"batch": c.batch_size, "length": m.block_size, "heads": m.num_heads,
            "head_dim": m.width // m.num_heads, "width": m.width, "layers": m.num_layers}


def lab_attention(q, k, v):
    """lab's attention exactly as GPT calls it: `_attend` under GPT's causal mask."""
    length = q.shape[1]
    causal_1x1xLxL = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]
    return _attend(q, k, v, causal_1x1xLxL)


def jax_attention(q, k, v, implementation=None):
    return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)


ATTENTION = {"lab": lab_attention, "jax": jax_attention}


def forward_backward(f):
    """q, k, v -> (dq, dk, dv) of sum(f(q, k, v)) (summed in float32)."""
    return jax.grad(lambda q, k, v: f(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2))


def inputs(shape: dict, dtype) -> tuple:
    """Standard-normal q, k, v of BxLxHxK in `dtype`."""
    dims = (shape["batch"], shape["length"], shape["heads"], shape["head_dim"])
    keys = jax.random.split(jax.random.key(0), 3)
    return tuple(jax.random.normal(key, dims, jnp.float32).astype(dtype) for key in keys)


def reference_f64(q, k, v) -> np.ndarray:
    """Causal softmax attention in float64 NumPy on the (already dtype-rounded) inputs."""
    q, k, v = (np.asarray(x.astype(jnp.float32), np.float64) for x in (q, k, v))
    s = np.einsum("blhk,bthk->bhlt", q, k) / math.sqrt(q.shape[-1])
    length = q.shape[1]
    s = np.where(np.tril(np.ones((length, length), bool))[None, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bhlt,bthk->blhk", p, v)


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def numerics(compiled: dict, config: str, shape: dict, dtype_name: str) -> dict:
    """How far lab's and jax's outputs and gradients are apart, and from float64.

    compiled: (config, dtype, pass, impl) -> the compiled function that main times."""
    q, k, v = inputs(shape, DTYPES[dtype_name])
    out = {impl: compiled[(config, dtype_name, "fwd", impl)](q, k, v).astype(jnp.float32) for impl in IMPLS}
    grads = {impl: [g.astype(jnp.float32) for g in compiled[(config, dtype_name, "fwd+bwd", impl)](q, k, v)]
             for impl in IMPLS}
    ref = reference_f64(q, k, v)
    return {
        "max_abs_diff_out": max_abs(out["lab"], out["jax"]),
        "bitwise_equal_out": bool(np.array_equal(np.asarray(out["lab"]), np.asarray(out["jax"]))),
        "max_abs_diff_grads_dq_dk_dv": [max_abs(a, b) for a, b in zip(grads["lab"], grads["jax"])],
        "bitwise_equal_grads": all(np.array_equal(np.asarray(a), np.asarray(b))
                                   for a, b in zip(grads["lab"], grads["jax"])),
        "max_abs_err_vs_f64_out": {impl: max_abs(out[impl], ref) for impl in IMPLS},
        "max_abs_out": float(np.max(np.abs(ref))),
    }


def none_is_xla(shape: dict) -> dict:
    """Whether implementation=None lowers to the same HLO as implementation='xla' (f32 and bf16)."""
    same = {}
    for name, dtype in DTYPES.items():
        q, k, v = inputs(shape, dtype)
        texts = [jax.jit(lambda q, k, v, i=i: jax_attention(q, k, v, i)).lower(q, k, v).as_text()
                 for i in (None, "xla")]
        same[name] = texts[0] == texts[1]
    return same


def cpu() -> dict:
    info = common.cpu_info()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return {**info, **{flag: flag in flags for flag in EXTRA_FLAGS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="default,wide",
                        help="comma-separated experiments/transformer_lm configs (default = the recipe)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10, help="calls per measurement per round")
    common.add_out_flag(parser, "attention.json")
    args = parser.parse_args()
    out = common.out_path(args.out, "attention.json")
    dtypes = args.dtypes.split(",")
    for d in dtypes:
        if d not in DTYPES:
            parser.error(f"unknown dtype {d!r}: use {', '.join(DTYPES)}")
    shapes = {name: gpt_shapes(name) for name in args.configs.split(",")}

    load_before = os.getloadavg()
    common.print_header("attention", out)
    info = cpu()
    print("more CPU flags: " + ", ".join(f"{f} {'yes' if info.get(f) else 'no'}" for f in EXTRA_FLAGS)
          + f"; load average {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")

    # Compile everything first (compile seconds recorded), then time in alternating rounds.
    cases = []  # (config, dtype, pass, impl, compiled, args)
    compile_s = {}
    for config, shape in shapes.items():
        for dtype_name in dtypes:
            q, k, v = inputs(shape, DTYPES[dtype_name])
            for pass_ in PASSES:
                for impl in IMPLS:
                    f = ATTENTION[impl] if pass_ == "fwd" else forward_backward(ATTENTION[impl])
                    t = time.perf_counter()
                    compiled = jax.jit(f).lower(q, k, v).compile()
                    compile_s[(config, dtype_name, pass_, impl)] = time.perf_counter() - t
                    jax.block_until_ready(compiled(q, k, v))
                    cases.append((config, dtype_name, pass_, impl, compiled, (q, k, v)))

    waited = {c[:4]: [] for c in cases}
    in_a_row = {c[:4]: [] for c in cases}
    loads = []
    for r in range(args.rounds):
        for case in (cases if r % 2 == 0 else cases[::-1]):
            key, compiled, xs = case[:4], case[4], case[5]
            times = []
            for _ in range(args.reps):
                t = time.perf_counter()
                jax.block_until_ready(compiled(*xs))
                times.append(time.perf_counter() - t)
            waited[key].append(float(np.median(times)) * 1e3)
            t = time.perf_counter()
            for _ in range(args.reps):
                y = compiled(*xs)
            jax.block_until_ready(y)
            in_a_row[key].append((time.perf_counter() - t) / args.reps * 1e3)
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.rounds} done, load average {loads[-1]:.2f}")

    rows = []
    for config, shape in shapes.items():
        for dtype_name in dtypes:
            for pass_ in PASSES:
                row = {"config": config, **shape, "dtype": dtype_name, "pass": pass_}
                for impl in IMPLS:
                    key = (config, dtype_name, pass_, impl)
                    row[impl] = {"ms_per_call": float(np.median(waited[key])), "round_medians_ms": waited[key],
                                 "in_a_row_ms": float(np.median(in_a_row[key])), "round_in_a_row_ms": in_a_row[key],
                                 "compile_s": compile_s[key]}
                row["jax_over_lab"] = row["jax"]["ms_per_call"] / row["lab"]["ms_per_call"]
                row["jax_over_lab_in_a_row"] = row["jax"]["in_a_row_ms"] / row["lab"]["in_a_row_ms"]
                rows.append(row)
    by_key = {c[:4]: c[4] for c in cases}
    accuracy = {f"{config}/{d}": numerics(by_key, config, shape, d) for config, shape in shapes.items() for d in dtypes}
    none_xla = none_is_xla(next(iter(shapes.values())))
    load_after = os.getloadavg()

    print(f"\n{'config':8s} {'dtype':9s} {'pass':8s} {'lab ms':>8s} {'jax ms':>8s} {'jax/lab':>8s}"
          f" {'(in a row)':>10s}")
    for row in rows:
        print(f"{row['config']:8s} {row['dtype']:9s} {row['pass']:8s} {row['lab']['ms_per_call']:8.3f} "
              f"{row['jax']['ms_per_call']:8.3f} {row['jax_over_lab']:8.3f} {row['jax_over_lab_in_a_row']:10.3f}")
    print(f"\n{'config/dtype':18s} {'max|lab-jax| out':>17s} {'bitwise':>8s} {'max|lab-jax| dq,dk,dv':>30s} "
          f"{'lab err':>9s} {'jax err':>9s}  (err: against float64)")
    for name, a in accuracy.items():
        grads = ",".join(f"{g:.1e}" for g in a["max_abs_diff_grads_dq_dk_dv"])
        print(f"{name:18s} {a['max_abs_diff_out']:17.2e} {str(a['bitwise_equal_out']):>8s} {grads:>30s} "
              f"{a['max_abs_err_vs_f64_out']['lab']:9.2e} {a['max_abs_err_vs_f64_out']['jax']:9.2e}")
    print(f"implementation=None lowers as 'xla': {none_xla}; load average after "
          f"{load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")

    common.save({"machine": common.machine(), "cpu": info, "rounds": args.rounds, "reps": args.reps,
                 "load_average_1_5_15min": {"before": load_before, "after": load_after},
                 "load_average_1min_after_rounds": loads, "implementation_none_is_xla": none_xla,
                 "rows": rows, "numerics": accuracy}, out)


if __name__ == "__main__":
    main()
