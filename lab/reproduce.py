"""The reference table of lab's published numbers, and the check of a reproduction against it.

`experiments/reference_results.json` holds one row per run that produces a headline number:

    {"name": "lm_default", "experiment": "transformer_lm", "variant": null, "dataset": "shakespeare_char",
     "metrics": ["val_loss"],                       # keys of the run's results.json
     "needs": {"features_run": "cnn_digits"},       # config key -> the row whose workdir it names
     "budgets": {"quick": {"flags": {"num_train_steps": 300}}, "full": {"flags": {}}},
     "outside": [{"metric": "val_loss", "value": ..., "source": "nanoGPT's README, CPU recipe"}],
     "weak": {"val_loss": "why this metric cannot detect a 5% shift"},   # optional
     "floor": {"val_loss": {"relative": 0.01, "why": "..."}},   # optional: a wider floor, and why
     "measured": {"quick": {"seeds": [0, 1, 2, 3, 4], "wall_s": ..., "environment": {...},
                            "metrics": {"val_loss": {"values": [...], "mean": ..., "std": ...}}},
                  "full": {...}}}

`budgets` says how each budget runs the row (config overrides on top of the variant; `full` is
the published config). A budget given as the name of another (`"quick": "full"`) runs as that one
and is judged by its reference: a row whose quick run would be its full run is measured once.
`measured` is written by `reproduce --write_reference` from a committed tree, never by hand.

The gate, for each metric of a row (`compare`):
- **band**: the seeds of the reference (M) and of the reproduction (N) come from one recipe, so
  one seed-to-seed variance is pooled from both; a two-sample t test at FALSE_ALARM (two-sided)
  flags |mean - reference mean| > t(1 - FALSE_ALARM/2, M+N-2) * s * sqrt(1/M + 1/N) + floor,
  where the floor (FLOOR_RELATIVE of the value) admits float reassociation on another machine
  for metrics whose seeds agree to the bit; a row may widen it for a metric and say why (`floor`:
  an optimiser's fit, say, whose optimum moves further than a sum's rounding). `detectable_shift` is the shift this test catches
  with probability POWER (from the noncentral t); a metric whose shift at one reproduction seed is over WEAK_RELATIVE of
  its value (WEAK_ACCURACY for accuracies) is weak, and the row must say why (`weak`).
- **bit**: on the reference's machine class (`machine_class`: the CPU's ISA level, model and
  core count, the device platform and count, the numeric libraries' versions, XLA_FLAGS, the PRNG and the
  dataset's checksum) every seed both ran must also equal the reference's to the bit, unless the
  row says why it cannot (`nondeterministic`).

`experiments/reproduce.py` is the command; this module is its arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from scipy import optimize, stats

from lab import configs, provenance
from lab.reference_table import ReproduceError, fmt

FALSE_ALARM = 0.01  # per metric: the chance that a correct reproduction fails it
POWER = 0.8  # the chance that a shift of `detectable_shift` fails it
FLOOR_RELATIVE = 1e-3  # of the value: float reassociation on another machine class
WEAK_RELATIVE = 0.05  # a metric whose one-seed detectable shift is larger is weak ...
WEAK_ACCURACY = 0.01  # ... or, for an accuracy, larger than one point
# What a run records that is not about the machine or the stack (each run has its own).
_NOT_COMPARED = ("step", "time_utc", "seed", "git.revision", "git.dirty", "git.diff_sha256")
# The recorded keys that decide whether two runs of one seed may differ in their bits.
# The CPU model is one of them, not only its ISA level: LLVM tunes XLA:CPU's code for the model
# (vector width, unrolling), which can reorder a sum.
_CLASS_KEYS = ("cpu.family_model", "devices.platform", "devices.count", "versions.jax", "versions.jaxlib", "versions.numpy",
               "versions.flax", "versions.optax", "xla_flags", "prng_impl", "dataset.sha256")


def select(table: dict, budget: str, only: Sequence[str] = ()) -> list[dict]:
    """The rows to run for `budget`, in table order: those named by `only` (all when empty) and
    the rows they need.

    Raises:
      ReproduceError: an unknown name (the message lists the known ones), or a named row that
        has no entry for this budget.
    """
    rows = [r for r in table["rows"] if budget in r["budgets"]]
    by_name = {r["name"]: r for r in table["rows"]}
    if not only:
        return rows
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise ReproduceError(f"--only: unknown {', '.join(map(repr, unknown))}; known: {', '.join(by_name)}")
    missing = [n for n in only if budget not in by_name[n]["budgets"]]
    if missing:
        raise ReproduceError(f"--only: {', '.join(missing)} has no {budget!r} budget; "
                             f"the {budget} rows: {', '.join(r['name'] for r in rows)}")
    wanted, stack = set(), list(only)
    while stack:
        name = stack.pop()
        if name not in wanted:
            wanted.add(name)
            stack.extend(by_name[name].get("needs", {}).values())
    return [r for r in rows if r["name"] in wanted]


def config_flags(row: dict, budget: str, seed: int, needs_workdirs: Mapping[str, str]) -> list[str]:
    """The `--config...` flags of one run of `row`: its variant, the budget's overrides, the seed
    and the workdirs of the rows it needs (`needs_workdirs`: row name -> workdir)."""
    path = f"experiments/{row['experiment']}/config.py"
    out = [f"--config={path}:{row['variant']}" if row.get("variant") else f"--config={path}"]
    for key, value in row["budgets"][budget_of(row, budget)].get("flags", {}).items():
        out.append(f"--config.{key}={value}")
    for key, dep in row.get("needs", {}).items():
        out.append(f"--config.{key}={needs_workdirs[dep]}")
    out.append(f"--config.seed={seed}")
    return out


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value). Seeds that agree to the bit give
    their value and a std of exactly 0 (the mean is taken around the first value)."""
    n = len(values)
    mean = values[0] + math.fsum(v - values[0] for v in values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def pooled_std(reference: Sequence[float], reproduction: Sequence[float]) -> tuple[float, int]:
    """(s, degrees of freedom): the seed-to-seed standard deviation pooled from both samples."""
    m, n = len(reference), len(reproduction)
    df = m + n - 2
    if df < 1:
        return 0.0, 0
    squares = sum((len(x) - 1) * mean_std(x)[1] ** 2 for x in (reference, reproduction) if len(x) > 1)
    return math.sqrt(squares / df), df


def band(reference: Sequence[float], reproduction: Sequence[float],
         floor_relative: float = FLOOR_RELATIVE) -> float | None:
    """The largest |mean(reproduction) - mean(reference)| the gate lets pass (see the module
    docstring; `floor_relative`: the floor, as a fraction of the reference's mean); None when
    the two samples hold one seed in all (no spread to judge by)."""
    s, df = pooled_std(reference, reproduction)
    if df < 1:
        return None
    m, n = len(reference), len(reproduction)
    return stats.t.ppf(1 - FALSE_ALARM / 2, df) * s * math.sqrt(1 / m + 1 / n) + _floor(reference, floor_relative)


def detectable_shift(reference: Sequence[float], n: int, floor_relative: float = FLOOR_RELATIVE) -> float | None:
    """The shift of the true mean that a reproduction of `n` seeds fails with probability POWER,
    taking the reference's spread for both samples (the t statistic's noncentral distribution,
    not the normal approximation, which overstates the power of a few seeds); None where fewer
    than two degrees of freedom leave the spread unknown."""
    m = len(reference)
    df = m + n - 2
    if m < 2 or df < 2:
        return None
    critical = stats.t.ppf(1 - FALSE_ALARM / 2, df)
    noncentrality = optimize.brentq(lambda d: stats.nct.sf(critical, df, d) - POWER, 0.0, 10 * critical)
    return noncentrality * mean_std(reference)[1] * math.sqrt(1 / m + 1 / n) + _floor(reference, floor_relative)


def _floor(reference: Sequence[float], relative: float) -> float:
    return relative * abs(mean_std(reference)[0])


def floor_of(row: dict, metric: str) -> float:
    """The relative floor of `metric`'s band in `row`: its own (`floor`), else FLOOR_RELATIVE."""
    return float(row.get("floor", {}).get(metric, {}).get("relative", FLOOR_RELATIVE))


def is_weak(metric: str, value: float, shift: float | None) -> bool:
    """True if `shift` (the one-seed detectable shift) is over WEAK_ACCURACY for an accuracy, or
    over WEAK_RELATIVE of |value| for any other metric."""
    if shift is None:
        return True
    return shift > (WEAK_ACCURACY if "accuracy" in metric else WEAK_RELATIVE * abs(value))


def machine_class(environment: Mapping) -> dict:
    """What decides a run's bits besides its seed: the CPU's ISA level and core count and the
    `_CLASS_KEYS` (the CPU model among them) of a recorded environment (an `environment.json`
    start)."""
    flat = configs.flatten(dict(environment))
    cpu = environment.get("cpu", {})
    return {"cpu": provenance.isa_level(cpu), "cpus": cpu.get("count"), **{k: flat.get(k) for k in _CLASS_KEYS}}


def class_label(environment: Mapping) -> str:
    """A machine class in a few words: 'AMX (family/model 6/143), 2 CPUs, jax 0.10.2'."""
    c = machine_class(environment)
    return ", ".join(x for x in (f"{c['cpu'] or 'unknown ISA'} (family/model {c['cpu.family_model']})",
                                  f"{c['cpus']} CPUs" if c["cpus"] else "",
                                  f"jax {c['versions.jax']}" if c["versions.jax"] else "") if x)


def budget_of(row: dict, budget: str) -> str:
    """The budget whose flags and reference `budget` uses: itself, or the one it names."""
    spec = row["budgets"][budget]
    return spec if isinstance(spec, str) else budget


def measured_entry(metrics_by_seed: Mapping[int, Mapping[str, float]], metrics: Iterable[str],
                   wall_by_seed: Mapping[int, float], environment: dict) -> dict:
    """A row's `measured[budget]` entry from its runs: per metric the values in seed order,
    their mean and std; the mean wall time per seed; seed 0's environment."""
    seeds = sorted(metrics_by_seed)
    entry = {"seeds": seeds, "wall_s": round(sum(wall_by_seed[s] for s in seeds) / len(seeds), 1),
             "environment": environment, "metrics": {}}
    for metric in metrics:
        values = [float(metrics_by_seed[s][metric]) for s in seeds]
        mean, std = mean_std(values)
        entry["metrics"][metric] = {"values": values, "mean": mean, "std": std}
    return entry


def compare(row: dict, budget: str, metrics_by_seed: Mapping[int, Mapping[str, float]],
            environment: Mapping | None = None) -> list[dict]:
    """One line per metric of `row`: this reproduction's mean (and std) against the reference.

    Args:
      row, budget: the table's row and the budget that ran.
      metrics_by_seed: seed -> the run's results.
      environment: the reproduction's recorded environment (seed 0's start); with it, a run on
        the reference's machine class is judged by the bit tier too.
    Returns:
      Per metric: metric, mean, std, seeds, holds (None: no reference for this budget), and with
      a reference: reference, reference_std, reference_seeds, band, detectable (this many seeds),
      tier ('bit' or 'band'), exact ('k/n' of the seeds both ran equal to the bit).
    """
    ref = row.get("measured", {}).get(budget_of(row, budget))
    same_class = bool(ref and environment is not None and machine_class(environment) == machine_class(ref["environment"]))
    seeds = sorted(metrics_by_seed)
    lines = []
    for metric in row["metrics"]:
        values = [float(metrics_by_seed[s][metric]) for s in seeds]
        mean, std = mean_std(values)
        line = {"metric": metric, "mean": mean, "std": std, "seeds": seeds, "holds": None}
        if ref and metric in ref.get("metrics", {}):
            r = ref["metrics"][metric]
            ref_by_seed = dict(zip(ref["seeds"], r["values"]))
            shared = [s for s in seeds if s in ref_by_seed]
            exact = sum(float(metrics_by_seed[s][metric]) == ref_by_seed[s] for s in shared)
            half = band(r["values"], values, floor_of(row, metric))
            tier = "bit" if same_class and shared and not row.get("nondeterministic") else "band"
            in_band = half is None or abs(mean - r["mean"]) <= half
            line.update(reference=r["mean"], reference_std=r["std"], reference_seeds=len(ref["seeds"]),
                        band=half, detectable=detectable_shift(r["values"], len(values), floor_of(row, metric)), tier=tier,
                        exact=f"{exact}/{len(shared)}")
            if half is not None or tier == "bit":
                line["holds"] = bool(in_band and (tier == "band" or exact == len(shared)))
        lines.append(line)
    return lines


def environment_differences(run: Mapping, reference: Mapping) -> list[str]:
    """What this run's recorded environment (an `environment.json` start) has that the
    reference's has not: 'key: here VALUE, reference VALUE', one per differing key (the machine,
    the versions, XLA_FLAGS, the PRNG, the dataset's checksum); plus a note when this run's tree
    was dirty."""
    here, there = configs.flatten(dict(run)), configs.flatten(dict(reference))
    out = [f"{k}: here {here.get(k)!r}, reference {there.get(k)!r}"
           for k in sorted(set(here) | set(there))
           if k not in _NOT_COMPARED and here.get(k) != there.get(k)]
    if run.get("git", {}).get("dirty"):
        out.append("git: this run's tree had uncommitted changes")
    return out


def _value_cell(mean: float, std: float, n: int) -> str:
    return fmt(mean) if n == 1 else f"{fmt(mean)} ± {fmt(std, 2)}"


def _row_label(row: dict) -> str:
    return f"`{row['experiment']}`" + (f" `{row['variant']}`" if row.get("variant") else "")


GATE_TEXT = (f"Band: a two-sample t test on the seeds of both sides, false-alarm rate {FALSE_ALARM:.0%} per metric; "
             f"detectable shift: the shift it catches with {POWER:.0%} power. Tier bit: on the reference's "
             f"machine class every seed must also equal the reference's to the bit.")


def results_markdown(budget: str, outcomes: Sequence[dict], command: str) -> str:
    """`RESULTS.md`: one table (row, experiment, dataset, metric, value, reference, band,
    detectable shift, tier, holds, bit-identical seeds, wall time), then the environment
    differences per row and the outside references.

    Args:
      budget: the budget that ran.
      outcomes: per row, {"row": row, "lines": compare(...) or [], "wall_s": seconds per seed,
        "error": message or None, "differences": environment_differences(...)}.
      command: the command that produced it.
    """
    out = [f"# Reproduction, budget `{budget}`", "", f"`{command}`", "", GATE_TEXT, "",
           "| row | experiment | dataset | metric | value | reference | band | detectable shift | tier | holds "
           "| bit-identical seeds | wall s / seed |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        row = o["row"]
        if o.get("error"):
            out.append(f"| {row['name']} | {_row_label(row)} | {row.get('dataset', '')} | | | | | | | **error**: "
                       f"{o['error']} | | |")
            continue
        for line in o["lines"]:
            if "reference" in line:
                ref = _value_cell(line["reference"], line["reference_std"], line["reference_seeds"])
                holds = "" if line["holds"] is None else "yes" if line["holds"] else "**NO**"
                cells = [ref, _plus_minus(line["band"]), _plus_minus(line["detectable"]), line["tier"], holds,
                         line["exact"]]
            else:
                cells = ["(none for this budget)", "", "", "", "", ""]
            out.append(f"| {row['name']} | {_row_label(row)} | {row.get('dataset', '')} | {line['metric']} | "
                       f"{_value_cell(line['mean'], line['std'], len(line['seeds']))} | {' | '.join(cells)} | "
                       f"{o['wall_s']:.0f} |")
    differing = [o for o in outcomes if o.get("differences")]
    if differing:
        out += ["", "## Where this run's environment differs from the reference's", ""]
        for o in differing:
            out.append(f"- **{o['row']['name']}**: " + "; ".join(o["differences"]))
    outside = [(o["row"], ref) for o in outcomes for ref in o["row"].get("outside", [])]
    if outside:
        out += ["", "## Outside references", "", "| row | metric | value | source |", "|---|---|---|---|"]
        out += [f"| {row['name']} | {ref['metric']} | {fmt(ref['value'])} | {ref['source']} |" for row, ref in outside]
    return "\n".join(out) + "\n"


def _plus_minus(x: float | None) -> str:
    return "n/a" if x is None else f"± {fmt(x, 2)}"


def gate_reference(row: dict) -> tuple[str, dict | None]:
    """(budget, its measured entry) that CI's gate uses for `row`: the quick budget's reference
    where the row has a quick budget, else the full one's."""
    budget = budget_of(row, "quick") if "quick" in row["budgets"] else "full"
    return budget, row.get("measured", {}).get(budget)


def weak_lines(row: dict) -> list[tuple[str, float | None]]:
    """(metric, one-seed detectable shift) of each metric of `row` that is weak under its gate."""
    _, ref = gate_reference(row)
    out = []
    for metric in row["metrics"]:
        if ref and metric in ref["metrics"]:
            r = ref["metrics"][metric]
            shift = detectable_shift(r["values"], 1, floor_of(row, metric))
            if is_weak(metric, r["mean"], shift):
                out.append((metric, shift))
    return out


def reference_markdown(table: dict) -> str:
    """README's results table, generated from the reference table: per row and metric the
    measured value of each budget (mean ± std over its seeds), the shift the gate detects at one
    and at five reproduction seeds, the machine class on which reproductions must match to the
    bit, and the outside references."""
    out = [GATE_TEXT, "",
           "| row | experiment | dataset | metric | full budget | quick budget | detectable shift, 1 seed / 5 seeds "
           "| bit-identical on | outside reference |",
           "|---|---|---|---|---|---|---|---|---|"]
    for row in table["rows"]:
        gate_budget, gate = gate_reference(row)
        weak = dict(weak_lines(row))
        for metric in row["metrics"]:
            cells = []
            for budget in ("full", "quick"):
                m = row.get("measured", {}).get(budget)
                if budget in row["budgets"] and budget_of(row, budget) != budget:
                    cells.append(f"as the {budget_of(row, budget)} budget")
                elif m and metric in m["metrics"]:
                    r = m["metrics"][metric]
                    cells.append(f"{_value_cell(r['mean'], r['std'], len(m['seeds']))} ({len(m['seeds'])} seeds, "
                                 f"{m['wall_s']:.0f} s)")
                else:
                    cells.append("not measured yet" if budget in row["budgets"] else "")
            shift, machine = "", ""
            if gate and metric in gate["metrics"]:
                values = gate["metrics"][metric]["values"]
                floor = floor_of(row, metric)
                shift = (f"{_plus_minus(detectable_shift(values, 1, floor))} / "
                         f"{_plus_minus(detectable_shift(values, 5, floor))}")
                if metric in row.get("floor", {}):
                    shift += f" (floor {floor:.0%} of the value: {row['floor'][metric]['why']})"
                if metric in weak:
                    shift += f" (**weak**: {row.get('weak', {}).get(metric, 'no reason given')})"
                machine = (f"not deterministic: {row['nondeterministic']}" if row.get("nondeterministic")
                           else class_label(gate["environment"]))
            outside = "; ".join(f"{fmt(r['value'])}: {r['source']}" for r in row.get("outside", [])
                                if r["metric"] == metric)
            out.append(f"| {row['name']} | {_row_label(row)} | {row.get('dataset', '')} | {metric} | {cells[0]} | "
                       f"{cells[1]} | {shift} | {machine} | {outside} |")
    return "\n".join(out) + "\n"
