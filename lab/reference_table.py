"""The reference table, `experiments/reference_results.json`: reading and checking it, and the
reference a config's closing summary compares its result with.

Every published number lives in that file (README's results table is generated from it); configs
read their reference from it (`table_reference`) and `lab.reproduce` checks reproductions against
it. See `lab.reproduce` for the file's format.
"""

from __future__ import annotations

import json
import os

from lab.errors import LabError

BUDGETS = ("quick", "full")


class ReproduceError(LabError):
    """A reference table or a selection that cannot be used (the message says how to fix it)."""


def load_table(path: str) -> dict:
    """The reference table at `path`, checked: every row names an experiment, its metrics and a
    budget, dependencies name rows that come before it."""
    try:
        with open(path) as f:
            table = json.load(f)
    except OSError as e:
        raise ReproduceError(f"cannot read the reference table {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ReproduceError(f"the reference table {path} is not JSON ({e}): restore it from git") from None
    except UnicodeDecodeError:
        raise ReproduceError(f"the reference table {path} is not text: restore it from git") from None
    rows = table.get("rows") if isinstance(table, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ReproduceError(f"the reference table {path} has no 'rows' list: restore it from git")
    seen = set()
    for row in rows:
        if not isinstance(row, dict):
            raise ReproduceError(f"the reference table {path} has a row that is not an object: {row!r}")
        name = row.get("name")
        for key in ("name", "experiment", "metrics", "budgets"):
            if not row.get(key):
                raise ReproduceError(f"row {name or row!r} of {path} has no {key!r}")
        if name in seen:
            raise ReproduceError(f"row {name!r} appears twice in {path}")
        unknown = set(row["budgets"]) - set(BUDGETS)
        if unknown:
            raise ReproduceError(f"row {name!r} of {path}: unknown budget {sorted(unknown)}; use {', '.join(BUDGETS)}")
        for budget, spec in row["budgets"].items():
            if isinstance(spec, str) and not isinstance(row["budgets"].get(spec), dict):
                raise ReproduceError(f"row {name!r} of {path}: budget {budget!r} runs as {spec!r}, which the row "
                                     f"does not define")
        for dep in row.get("needs", {}).values():
            if dep not in seen:
                raise ReproduceError(f"row {name!r} of {path} needs {dep!r}, which is not a row above it")
        seen.add(name)
    return table


def fmt(value: float | None, digits: int = 5) -> str:
    """A metric value for the tables: `digits` significant digits ('' for None)."""
    return "" if value is None else f"{value:.{digits}g}"


def table_reference(path: str, row: str, metric: str, label: str = "") -> dict:
    """A config's `reference` block (`metric`, `value`, `source`: what the run's closing summary
    compares its result with), read from the reference table at `path`.

    `value` is the full-budget mean of `metric` in the row named `row` (the published config's
    number, to 5 significant digits; None while the row has no full-budget measurement);
    `source` names the row, its seeds and spread, and the row's outside references for `metric`.

    Args:
      path: the reference table, `experiments/reference_results.json`.
      row: the row's `name`.
      metric: one of the row's `metrics`.
      label: what the row is to this config when it is not the config's own run (e.g. "the
        tuned MLP"); empty for the config's own row.

    Raises:
      ReproduceError: an unreadable table, no such row, or a metric the row lacks.
    """
    table = load_table(path)
    rows = {r["name"]: r for r in table["rows"]}
    shown = os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))
    if row not in rows:
        raise ReproduceError(f"{shown} has no row {row!r}; its rows: {', '.join(rows)}")
    if metric not in rows[row]["metrics"]:
        raise ReproduceError(f"row {row!r} of {shown} has no metric {metric!r}; "
                                       f"its metrics: {', '.join(rows[row]['metrics'])}")
    measured = rows[row].get("measured", {}).get("full")
    source = (f"{label}, " if label else "") + f"row {row} of {shown}"
    value = None
    if measured and metric in measured["metrics"]:
        m = measured["metrics"][metric]
        value = float(fmt(m["mean"]))
        n = len(measured["seeds"])
        source += f" (full budget, mean of {n} seeds" + (f", std {fmt(m['std'], 2)})" if n > 1 else ")")
    else:
        source += " (full budget not measured yet)"
    outside = [f"{fmt(o['value'])}: {o['source']}" for o in rows[row].get("outside", [])
               if o["metric"] == metric]
    if outside:
        source += "; outside: " + "; ".join(outside)
    return {"metric": metric, "value": value, "source": source}
