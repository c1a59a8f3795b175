"""Which bfloat16 matmuls XLA:CPU runs on the bf16 instructions: GFLOP/s of one jitted matmul
per operand dtype, result dtype and operand layout.

    python -m benchmarks.bf16_matmul [--shapes=2048x384x1536,...] [--calls=30] [--out=FILE]

For each MxKxN shape: f32 x f32 -> f32; bf16 x bf16 -> bf16 (what a bf16 `nn.Dense` asks for);
bf16 x bf16 -> f32 (`preferred_element_type=float32`, what `lab.models.transformer`'s bf16
Dense layers ask for); and the two backward forms of the latter, `g @ W.T` (the input gradient)
and `x.T @ g` (the kernel gradient, contracting the rows of both operands). Each rate is the
best of 3 timings of `--calls` calls in a row. On a CPU with AVX512_BF16 or AMX, a form that
XLA:CPU upcasts to f32 runs at the f32 rate or below. Prints a table and writes JSON (default
`benchmarks/runs/<date>_<time>/bf16_matmul.json`; `--out=benchmarks/results/bf16_matmul.json`
updates the committed one).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from jax import lax

from benchmarks import common

F32, BF16 = jnp.float32, jnp.bfloat16

# form -> (operand dtype, result dtype, lhs shape, rhs shape, dimension numbers), for MxKxN.
FORMS = {
    "f32 -> f32": lambda m, k, n: (F32, F32, (m, k), (k, n), (((1,), (0,)), ((), ()))),
    "bf16 -> bf16": lambda m, k, n: (BF16, BF16, (m, k), (k, n), (((1,), (0,)), ((), ()))),
    "bf16 -> f32": lambda m, k, n: (BF16, F32, (m, k), (k, n), (((1,), (0,)), ((), ()))),
    "bf16 -> f32, g @ W.T": lambda m, k, n: (BF16, F32, (m, k), (n, k), (((1,), (1,)), ((), ()))),
    "bf16 -> f32, x.T @ g": lambda m, k, n: (BF16, F32, (m, k), (m, n), (((0,), (0,)), ((), ()))),
}


def rate(form: str, m: int, k: int, n: int, calls: int) -> float:
    """GFLOP/s of `form` at MxKxN: the best of 3 timings of `calls` jitted calls in a row."""
    dtype, out_dtype, lhs_shape, rhs_shape, dims = FORMS[form](m, k, n)
    lhs = jax.random.normal(jax.random.key(0), lhs_shape).astype(dtype)
    rhs = jax.random.normal(jax.random.key(1), rhs_shape).astype(dtype)
    matmul = jax.jit(lambda a, b: lax.dot_general(a, b, dims, preferred_element_type=out_dtype))
    matmul(lhs, rhs).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            out = matmul(lhs, rhs)
        out.block_until_ready()
        best = min(best, (time.perf_counter() - t0) / calls)
    return 2 * m * k * n / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="2048x384x1536,2048x1536x384,768x128x512,2048x2048x2048",
                        help="comma-separated MxKxN")
    parser.add_argument("--calls", type=int, default=30)
    common.add_out_flag(parser, "bf16_matmul.json")
    args = parser.parse_args()
    shapes = [tuple(int(d) for d in s.split("x")) for s in args.shapes.split(",")]
    if any(len(s) != 3 or min(s) < 1 for s in shapes):
        parser.error(f"--shapes={args.shapes!r}: give positive MxKxN triples, e.g. 2048x384x1536")

    out = common.out_path(args.out, "bf16_matmul.json")
    cpu = common.print_header("bf16_matmul", out)
    rows = []
    for m, k, n in shapes:
        for form in FORMS:
            gflops = rate(form, m, k, n, args.calls)
            rows.append({"shape": [m, k, n], "form": form, "gflops": gflops})
            print(f"{m}x{k} @ {k}x{n}  {form:22s} {gflops:7.1f} GFLOP/s")
    common.save({"machine": common.machine(), "cpu": cpu, "calls": args.calls, "rows": rows}, out)


if __name__ == "__main__":
    main()
