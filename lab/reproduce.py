"""The reference table of lab's published numbers, and the check of a reproduction against it.

`experiments/reference_results.json` holds one row per run that produces a headline number:

    {"name": "lm_default", "experiment": "transformer_lm", "variant": null, "dataset": "shakespeare_char",
     "metrics": ["val_loss"],                       # keys of the run's results.json
     "needs": {"features_run": "cnn_digits"},       # config key -> the row whose workdir it names
     "budgets": {"quick": {"flags": {"num_train_steps": 300}}, "full": {"flags": {}}},
     "outside": [{"metric": "val_loss", "value": ..., "source": "nanoGPT's README, CPU recipe"}],
     "measured": {"quick": {"seeds": [0, 1, 2], "wall_s": ..., "environment": {...},
                            "metrics": {"val_loss": {"values": [...], "mean": ..., "std": ...,
                                                     "tolerance": ...}}}, "full": {...}}}

`budgets` says how each budget runs the row (config overrides on top of the variant; `full` is
the published config); `measured` is written by `reproduce --write_reference` from a run with
several seeds, never by hand. `experiments/reproduce.py` is the command; this module is its
arithmetic: which rows, the tolerance rule, the comparison and the tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from lab import configs
from lab.reference_table import ReproduceError, fmt

# Three seed-to-seed standard deviations of the reference, and never less than a fraction of its
# value: a one-seed or bit-identical reference still admits float reassociation on another CPU kind.
TOLERANCE_STDS = 3.0
TOLERANCE_FLOOR = 0.01  # relative to |mean|
# What a run records that is not about the machine or the stack (each run has its own).
_NOT_COMPARED = ("step", "time_utc", "seed", "git.revision", "git.dirty")


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
    for key, value in row["budgets"][budget].get("flags", {}).items():
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


def tolerance(mean: float, std: float) -> float:
    """The band a reproduction's mean must fall in around the reference mean (see TOLERANCE_*)."""
    return max(TOLERANCE_STDS * std, TOLERANCE_FLOOR * abs(mean))


def measured_entry(metrics_by_seed: Mapping[int, Mapping[str, float]], metrics: Iterable[str],
                   wall_by_seed: Mapping[int, float], environment: dict) -> dict:
    """A row's `measured[budget]` entry from its runs: per metric the values in seed order,
    their mean, std and tolerance; the mean wall time per seed; seed 0's environment."""
    seeds = sorted(metrics_by_seed)
    entry = {"seeds": seeds, "wall_s": round(sum(wall_by_seed[s] for s in seeds) / len(seeds), 1),
             "environment": environment, "metrics": {}}
    for metric in metrics:
        values = [float(metrics_by_seed[s][metric]) for s in seeds]
        mean, std = mean_std(values)
        entry["metrics"][metric] = {"values": values, "mean": mean, "std": std, "tolerance": tolerance(mean, std)}
    return entry


def compare(row: dict, budget: str, metrics_by_seed: Mapping[int, Mapping[str, float]]) -> list[dict]:
    """One line per metric of `row`: this reproduction's mean (and std) against the reference.

    Each line: metric, mean, std, seeds, and where the table has a reference for this budget:
    reference, reference_std, reference_seeds, tolerance, holds (|mean - reference| <=
    tolerance), exact (how many of the seeds both ran gave the reference's value to the bit).
    Without a reference, holds is None.
    """
    ref = row.get("measured", {}).get(budget)
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
            line.update(reference=r["mean"], reference_std=r["std"], reference_seeds=len(ref["seeds"]),
                        tolerance=r["tolerance"], holds=bool(abs(mean - r["mean"]) <= r["tolerance"]),
                        exact=f"{sum(float(metrics_by_seed[s][metric]) == ref_by_seed[s] for s in shared)}/{len(shared)}")
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


def results_markdown(budget: str, outcomes: Sequence[dict], command: str) -> str:
    """`RESULTS.md`: one table (row, experiment, dataset, metric, value, reference, tolerance,
    holds, wall time), then the environment differences per row and the outside references.

    Args:
      budget: the budget that ran.
      outcomes: per row, {"row": row, "lines": compare(...) or [], "wall_s": seconds per seed,
        "error": message or None, "differences": environment_differences(...)}.
      command: the command that produced it.
    """
    out = [f"# Reproduction, budget `{budget}`", "", f"`{command}`", "",
           "| row | experiment | dataset | metric | value | reference | tolerance | holds | bit-identical seeds | wall s / seed |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        row = o["row"]
        if o.get("error"):
            out.append(f"| {row['name']} | {_row_label(row)} | {row.get('dataset', '')} | | | | | **error**: "
                       f"{o['error']} | | |")
            continue
        for line in o["lines"]:
            if "reference" in line:
                ref = _value_cell(line["reference"], line["reference_std"], line["reference_seeds"])
                holds = "yes" if line["holds"] else "**NO**"
                tol, exact = f"± {fmt(line['tolerance'], 2)}", line["exact"]
            else:
                ref, holds, tol, exact = "(none for this budget)", "", "", ""
            out.append(f"| {row['name']} | {_row_label(row)} | {row.get('dataset', '')} | {line['metric']} | "
                       f"{_value_cell(line['mean'], line['std'], len(line['seeds']))} | {ref} | {tol} | {holds} | "
                       f"{exact} | {o['wall_s']:.0f} |")
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


def reference_markdown(table: dict) -> str:
    """README's results table, generated from the reference table: per row and metric the
    measured value of each budget (mean ± std over its seeds) and the outside references."""
    out = ["| row | experiment | dataset | metric | full budget | quick budget | outside reference |",
           "|---|---|---|---|---|---|---|"]
    for row in table["rows"]:
        for metric in row["metrics"]:
            cells = []
            for budget in ("full", "quick"):
                m = row.get("measured", {}).get(budget)
                if m and metric in m["metrics"]:
                    r = m["metrics"][metric]
                    cells.append(f"{_value_cell(r['mean'], r['std'], len(m['seeds']))} ({len(m['seeds'])} seeds, "
                                 f"{m['wall_s']:.0f} s)")
                else:
                    cells.append("not measured yet" if budget in row["budgets"] else "")
            outside = "; ".join(f"{fmt(r['value'])}: {r['source']}" for r in row.get("outside", [])
                                if r["metric"] == metric)
            out.append(f"| {row['name']} | {_row_label(row)} | {row.get('dataset', '')} | {metric} | {cells[0]} | "
                       f"{cells[1]} | {outside} |")
    return "\n".join(out) + "\n"
