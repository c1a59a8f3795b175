"""Scale on paper: per-device memory of lab's GPT train step, replicated and FSDP, from the compiler.

    python -m benchmarks.scale_memory [--configs=gpt125m,gpt350m,gpt1.3b]
        [--layouts='data:8;data:1,fsdp:8;data:2,fsdp:4'] [--batches=8,64]
        [--activations=all] [--budget_gb=80] [--out=FILE]

Compiles (never runs) lab's own train step (`lab.train.build_train_step`: the GPT's loss and
gradient, AdamW with clipping and its schedule from the `transformer_lm` recipe, the metric
accumulator; jit with the state donated) on 8 simulated CPU devices
(`--xla_force_host_platform_device_count=8`, set here before jax is imported), for GPT-2/3-like
shapes (vocab 50304, context 1024, biases as GPT-2, dropout 0, float32), on abstract inputs only
(`jax.eval_shape` + the shardings lab computes: nothing is allocated at full size). For each
(config, layout, global batch) it reports, per device:
  * analytic: parameter, optimizer-state (Adam mu + nu + counts) and batch bytes from each leaf's
    `NamedSharding.shard_shape`, and the `4 N / shards + replicated leaves` figure;
  * compiler (`compiled.memory_analysis()`): argument, output, alias (outputs written into the
    donated inputs) and temporary bytes; `peak = argument + output - alias + temp`;
  * the collectives in the compiled HLO (all-gather, all-reduce, reduce-scatter, ...: count,
    bytes, largest), the SPMD partitioner's "involuntary full rematerialization" warnings, the
    compile seconds and the process's peak RSS;
and, per (config, layout), temp as a line in the sequences per device and the most sequences
that fit `--budget_gb`. Every FSDP layout is compiled three ways (`--activations=all`):
  * `gathered`: lab's step (`MeshParallel.gather_for_compute`: the split parameters gathered
    whole inside the step, so the activations stay split by batch);
  * `propagated`: the step without that gather (lab before it): XLA's sharding propagation picks
    the activations' sharding from the split kernels;
  * `pinned`: the propagated step with every block's output constrained to the batch sharding
    (`BatchShardedLMTask`, a diagnostic).
Prints a table and writes JSON (default `benchmarks/runs/<date>_<time>/scale_memory.json`;
`--out=benchmarks/results/scale_memory.json` updates the committed one).

The default flags make 30 compiles (nothing runs): expect minutes; the JSON records each
compile's seconds and the peak RSS. Temporaries are XLA:CPU's: its scheduler, fusion and collectives (all-reduce +
slice where XLA:GPU would make a reduce-scatter) differ from XLA:GPU's and TPU's, so read `temp`
as an estimate.
"""

from __future__ import annotations

import os
import sys

DEVICES = 8
_FLAG = "--xla_force_host_platform_device_count"


def force_host_devices(n: int = DEVICES) -> None:
    """Makes jax see `n` CPU devices: sets XLA_FLAGS (other flags kept) before jax starts.

    Raises RuntimeError when jax has already started with another device count (the flag is
    read once, when the backend starts).
    """
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_FLAG)]
    os.environ["XLA_FLAGS"] = " ".join(flags + [f"{_FLAG}={n}"])
    if "jax" not in sys.modules:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        return
    import jax

    if jax.device_count() != n:
        raise RuntimeError(f"benchmarks.scale_memory needs {n} simulated devices, but jax was already "
                           f"started with {jax.device_count()} ({jax.devices()[0].platform}): import it "
                           f"(or run it) in a fresh process, before anything imports jax")


force_host_devices()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from lab import optim, parallel, train  # noqa: E402
from lab.models import transformer  # noqa: E402
from lab.sharding import FSDP_AXIS, parse_mesh  # noqa: E402
from lab.models.transformer import TransformerConfig  # noqa: E402
from lab.task import StepTools  # noqa: E402
from lab.tasks.language_model import CausalLMTask  # noqa: E402

VOCAB = 50304  # GPT-2's 50257 rounded up to a multiple of 64 (as nanoGPT)
CONTEXT = 1024
# name -> (layers, width, heads) [, vocab, context]: GPT-2 small, GPT-2 medium, GPT-3 XL shapes.
CONFIGS = {
    "gpt125m": dict(num_layers=12, width=768, num_heads=12),
    "gpt350m": dict(num_layers=24, width=1024, num_heads=16),
    "gpt1.3b": dict(num_layers=24, width=2048, num_heads=16),
    # For the test: every kind of leaf (sharded kernels and embeddings, replicated vectors).
    "tiny": dict(num_layers=1, width=64, num_heads=4, vocab_size=512, max_len=64),
}
LAYOUTS = ("data:8", "data:1,fsdp:8", "data:2,fsdp:4")
_DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "bf16": 2, "f16": 2, "s8": 1, "u8": 1, "pred": 1,
                "s64": 8, "u64": 8, "f64": 8}


def model_config(name: str, dropout_rate: float = 0.0) -> TransformerConfig:
    """The GPT of config `name` (vocab 50304, context 1024 unless the entry says otherwise)."""
    shape = {"vocab_size": VOCAB, "max_len": CONTEXT, **CONFIGS[name]}
    return TransformerConfig(mlp_ratio=4, dropout_rate=dropout_rate, use_bias=True, **shape)


def gpt_param_count(cfg: TransformerConfig) -> int:
    """V*D + T*D + N * (12 D^2 + 13 D) + 2 D: the GPT's docstring formula (biases, tied head)."""
    d = cfg.width
    return cfg.vocab_size * d + cfg.max_len * d + cfg.num_layers * (12 * d * d + 13 * d) + 2 * d


class BatchShardedLMTask(CausalLMTask):
    """lab's CausalLMTask with every Block's and the Embedder's output constrained to the batch
    sharding (`with_sharding_constraint`, through `flax.linen.intercept_methods`, lab unchanged).

    A diagnostic, not lab's step: lab's declared placements place only the state; XLA then picks the
    activations' sharding by propagation, and from kernels split along the width it picks
    width- (not batch-) split activations and gathers the global logits. This variant shows
    what pinning the activations to the batch sharding (as FSDP means) would save.
    """

    def __init__(self, config: TransformerConfig, batch_sharding):
        super().__init__(config)
        self.batch_sharding = batch_sharding

    def loss(self, params, batch: dict, rng: jax.Array):
        def pin(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and isinstance(context.module, (transformer.Block, transformer.Embedder)):
                out = jax.lax.with_sharding_constraint(out, self.batch_sharding)
            return out

        with nn.intercept_methods(pin):
            return super().loss(params, batch, rng)


REMAT_WARNING = "Involuntary full rematerialization"


@contextlib.contextmanager
def count_stderr_lines(pattern: str):
    """Counts the lines of the C++ stderr (fd 2) that contain `pattern` while the block runs
    (yields a one-element list, filled on exit); every other line is passed on to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    box = [0]
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield box
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines = tmp.read().decode(errors="replace").splitlines()
            box[0] = sum(pattern in line for line in lines)
            rest = [line for line in lines if pattern not in line]
            if rest:
                print("\n".join(rest), file=sys.stderr, flush=True)


def _per_device_bytes(tree, shardings) -> tuple[int, int]:
    """(bytes per device of the leaves split over devices, of the replicated ones)."""
    split = replicated = 0
    for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
        nbytes = int(np.prod(sharding.shard_shape(leaf.shape), dtype=np.int64)) * leaf.dtype.itemsize
        if sharding.is_fully_replicated:
            replicated += nbytes
        else:
            split += nbytes
    return split, replicated


def collectives(hlo: str) -> dict:
    """Per collective kind in the compiled HLO: {count, bytes (result sizes summed), largest}."""
    out = {}
    for kind in ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute"):
        sizes = []
        for line in hlo.splitlines():
            m = re.search(rf"= (.*?) {kind}(-start)?\(", line)
            if m:
                sizes.append(sum(_DTYPE_BYTES.get(t, 4) * int(np.prod([int(x) for x in dims.split(",") if x], dtype=np.int64))
                                 for t, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1))))
        out[kind] = {"count": len(sizes), "bytes": int(sum(sizes)), "largest": int(max(sizes, default=0))}
    return out


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux: ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


ACTIVATIONS = ("gathered", "propagated", "pinned")


def measure(cfg: TransformerConfig, mesh_text: str, global_batch: int, fast_compile: bool = False,
            activations: str = "gathered") -> dict:
    """Compiles lab's train step for `cfg` on mesh `mesh_text` over abstract inputs; one row.

    Args:
      cfg: the GPT.
      mesh_text: `config.mesh`, e.g. 'data:8' or 'data:1,fsdp:8'.
      global_batch: sequences per step over all devices (each `cfg.max_len` tokens).
      fast_compile: compile without XLA:CPU's expensive LLVM passes (lab's `compile_once`
        options; the buffer sizes came out the same on the configs tried, see the test).
      activations: 'gathered' (lab's step), 'propagated' (without `gather_for_compute`) or
        'pinned' (propagated, with `BatchShardedLMTask`, a diagnostic); the same on a mesh
        without FSDP.
    Returns:
      The row: model shape, parameter count, per-device analytic bytes (`analytic`), the compiler's
      (`compiled`), the collectives, `compile_s` and `peak_rss_mb`.
    """
    from experiments.transformer_lm.config import get_config

    recipe = get_config()  # the optimizer lab's GPT recipe trains with: AdamW, clipping, warmup+cosine
    strategy = parallel.MeshParallel(mesh_text)
    tools = StepTools(optim.make_optimizers(recipe, recipe.num_train_steps),
                      gather=strategy.gather_for_compute if activations == "gathered" else None)
    task = BatchShardedLMTask(cfg, strategy.data_sharding) if activations == "pinned" else CausalLMTask(cfg)
    key = jax.random.key(0)
    abstract = jax.eval_shape(train.init_state_fn(task, tools.optimizers), key)
    shardings = strategy.state_shardings(abstract, jax.eval_shape(task.init, key))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
    tokens = jax.ShapeDtypeStruct((global_batch, cfg.max_len), jnp.int32, sharding=strategy.data_sharding)
    batch = {"inputs": tokens, "targets": tokens}
    step, layout = train.build_train_step(task, tools, key, strategy, shardings, state, batch)
    acc = jax.ShapeDtypeStruct((layout.size,), jnp.float32, sharding=strategy.replicated)

    t = time.perf_counter()
    with count_stderr_lines(REMAT_WARNING) as remats:
        lowered = step.lower(state, acc, batch)
        compiled = lowered.compile(parallel._FAST_COMPILE if fast_compile else None)
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()

    n_params = int(sum(x.size for x in jax.tree.leaves(abstract.params)))
    n_split = int(sum(x.size for x, s in zip(jax.tree.leaves(abstract.params), jax.tree.leaves(shardings.params))
                      if not s.is_fully_replicated))
    fsdp = dict(strategy.mesh.shape)[FSDP_AXIS]
    p_split, p_repl = _per_device_bytes(abstract.params, shardings.params)
    o_split, o_repl = _per_device_bytes(abstract.opt_state, shardings.opt_state)
    b_split, b_repl = _per_device_bytes(batch, {k: strategy.data_sharding for k in batch})
    other = 4 * layout.size + _per_device_bytes(abstract.step, shardings.step)[1]  # metric vector, step
    analytic = {
        "params": p_split + p_repl, "params_split": p_split, "params_replicated": p_repl,
        "opt_state": o_split + o_repl, "opt_state_split": o_split, "opt_state_replicated": o_repl,
        "batch": b_split + b_repl, "other": other,
        # 4 N / shards + replicated leaves, Adam's mu + nu 8 N / shards + replicated (+ 2 counts)
        "params_formula": 4 * n_split // fsdp + 4 * (n_params - n_split),
        "opt_formula": 8 * n_split // fsdp + 8 * (n_params - n_split) + 8,
    }
    analytic["arguments"] = analytic["params"] + analytic["opt_state"] + analytic["batch"] + other
    analytic["state"] = analytic["params"] + analytic["opt_state"] + _per_device_bytes(abstract.step, shardings.step)[1]
    measured = {"arguments": int(mem.argument_size_in_bytes), "outputs": int(mem.output_size_in_bytes),
                "alias": int(mem.alias_size_in_bytes), "temp": int(mem.temp_size_in_bytes),
                "generated_code": int(mem.generated_code_size_in_bytes)}
    measured["peak"] = measured["arguments"] + measured["outputs"] - measured["alias"] + measured["temp"]
    return {"layers": cfg.num_layers, "width": cfg.width, "heads": cfg.num_heads, "vocab": cfg.vocab_size,
            "context": cfg.max_len, "params": n_params, "params_split": n_split,
            "mesh": dict(strategy.mesh.shape), "layout": mesh_text, "global_batch": global_batch,
            "batch_per_device": global_batch // jax.device_count(), "analytic": analytic, "compiled": measured,
            "activations": activations,
            "collectives": collectives(compiled.as_text()), "involuntary_remats": remats[0], "compile_s": compile_s,
            "fast_compile": fast_compile, "peak_rss_mb": peak_rss_mb()}


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def print_table(rows: list[dict]) -> None:
    """The rows as a Markdown table, GB (1e9 bytes) per device."""
    print("| config | layout | acts | seq/dev | params | opt | batch | args (analytic) | args | out | alias | "
          "temp | peak | all-gather: n, GB, largest | remats | compile s |")
    print("|" + "---|" * 16)
    for r in rows:
        a, c = r["analytic"], r["compiled"]
        ag = r["collectives"]["all-gather"]
        print(f"| {r['config']} | {r['layout']} | {r['activations']} | {r['batch_per_device']} | "
              f"{_gb(a['params'])} | {_gb(a['opt_state'])} | {_gb(a['batch'])} | {_gb(a['arguments'])} | "
              f"{_gb(c['arguments'])} | {_gb(c['outputs'])} | {_gb(c['alias'])} | {_gb(c['temp'])} | "
              f"{_gb(c['peak'])} | {ag['count']}, {_gb(ag['bytes'])}, {_gb(ag['largest'])} | "
              f"{r['involuntary_remats']} | {r['compile_s']:.0f} |", flush=True)


def fits(rows: list[dict], budget: float) -> list[dict]:
    """Per (config, layout, activations) measured at two or more batches: temp as a line in the
    sequences per device (through the smallest and largest batch), and the most sequences per
    device whose predicted peak (arguments + outputs - alias + temp) stays within `budget` bytes."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["layout"], r["activations"]), []).append(r)
    out = []
    for (name, layout, acts), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["batch_per_device"])
        lo, hi = rs[0], rs[-1]
        if hi["batch_per_device"] == lo["batch_per_device"]:
            continue
        per_seq = (hi["compiled"]["temp"] - lo["compiled"]["temp"]) / (hi["batch_per_device"] - lo["batch_per_device"])
        fixed = lo["compiled"]["temp"] - per_seq * lo["batch_per_device"]
        c = lo["compiled"]
        state = c["arguments"] + c["outputs"] - c["alias"] - lo["analytic"]["batch"]
        per_seq_total = per_seq + lo["analytic"]["batch"] / lo["batch_per_device"]
        most = int((budget - state - fixed) // per_seq_total) if per_seq_total > 0 else None
        out.append({"config": name, "layout": layout, "activations": acts, "state_bytes": state,
                    "temp_fixed_bytes": fixed, "temp_per_sequence_bytes": per_seq,
                    "budget_bytes": budget, "max_sequences_per_device": max(most, 0)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="gpt125m,gpt350m,gpt1.3b", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--layouts", default=";".join(LAYOUTS),
                        help="config.mesh values separated by ';' (e.g. 'data:8;data:1,fsdp:8')")
    parser.add_argument("--batches", default="8,64", help="global batches (sequences), over the 8 devices")
    parser.add_argument("--activations", choices=("all",) + ACTIVATIONS, default="all",
                        help="which steps to compile on FSDP layouts (see the module docstring)")
    parser.add_argument("--num_layers", type=int, default=0, help="override every config's depth (0: keep)")
    parser.add_argument("--fast_compile", action="store_true", help="skip XLA:CPU's expensive LLVM passes")
    parser.add_argument("--budget_gb", type=float, default=80.0, help="device memory for the fit column (1e9 B)")
    from benchmarks import common

    common.add_out_flag(parser, "scale_memory.json")
    args = parser.parse_args()
    names = args.configs.split(",")
    for name in names:
        if name not in CONFIGS:
            parser.error(f"unknown config {name!r}: use {', '.join(CONFIGS)}")
    layouts = [x for x in args.layouts.split(";") if x]
    batches = [int(b) for b in args.batches.split(",")]
    for b in batches:
        if b % DEVICES:
            parser.error(f"global batch {b} does not split over {DEVICES} devices")

    out = common.out_path(args.out, "scale_memory.json")
    common.print_header("scale_memory", out)
    start = time.perf_counter()
    rows = []
    for name in names:
        cfg = model_config(name)
        if args.num_layers:
            cfg = TransformerConfig(**{**cfg.__dict__, "num_layers": args.num_layers})
        for layout in layouts:
            modes = ACTIVATIONS if args.activations == "all" else (args.activations,)
            if parse_mesh(layout, DEVICES)[FSDP_AXIS] == 1:
                modes = ("gathered",)  # nothing is split: the three steps are one
            for mode in modes:
                for b in batches:
                    row = {"config": name, **measure(cfg, layout, b, args.fast_compile, mode)}
                    assert row["params"] == gpt_param_count(cfg), (row["params"], gpt_param_count(cfg))
                    rows.append(row)
                    print_table([row])
    print()
    print_table(rows)
    fit = fits(rows, args.budget_gb * 1e9)
    print(f"\nmost sequences ({rows[0]['context']} tokens) per device within "
          f"{args.budget_gb:g} GB, from XLA:CPU's temporaries, linear in the batch:")
    for f in fit:
        print(f"  {f['config']} {f['layout']} ({f['activations']}): state {_gb(f['state_bytes'])} GB, temp "
              f"{_gb(f['temp_fixed_bytes'])} GB + {_gb(f['temp_per_sequence_bytes'])} GB/sequence -> "
              f"{f['max_sequences_per_device']}")
    cpu = common.cpu_info()
    total = time.perf_counter() - start
    print(f"CPU {cpu.get('model_name', '?')}, {os.cpu_count()} cores; jax {jax.__version__}; "
          f"{total:.0f} s in all; peak RSS {peak_rss_mb():.0f} MB")
    common.save({"rows": rows, "fit": fit, "cpu": cpu, "machine": common.machine(), "jax": jax.__version__,
                 "devices": DEVICES, "total_s": total, "peak_rss_mb": peak_rss_mb(),
                 "command": " ".join(sys.argv)}, out)


if __name__ == "__main__":
    main()
