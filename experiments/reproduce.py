"""Reruns lab's published numbers from fixed seeds and checks them against the reference table.

    python -m experiments.reproduce --workdir=DIR [--budget=quick|full] [--seeds=N] [--only=row,...]

Each row of `experiments/reference_results.json` is one experiment run through its own entry
point (`python -m experiments.<name> --workdir=DIR/<budget>/<row>/seed_<s> --config=...`, seeds
0 .. N-1), so a reproduction runs exactly what a researcher runs. Then:

- `DIR/RESULTS.md` and `DIR/results.json`: per row and headline metric the value (mean ± std
  over the seeds when N > 1), the reference (mean ± std over its seeds), the band it must fall in
  and the shift the gate detects (`lab.reproduce`: a two-sample t test on both sides' seeds), the
  tier it was judged by (bit: on the reference's machine class every seed must equal the
  reference's to the bit; band: elsewhere), whether it holds, and the wall time; and per row
  where the recorded environment (CPU, versions, XLA_FLAGS, PRNG, dataset checksum) differs.
- Exit status 1 if any metric fails its gate or any run failed; 2 on bad flags.
- A row that another needs (a GAN's classifier) measures every seed of it with its own seed 0,
  as a fixed instrument; brought in by `--only` for another row's sake, it runs seed 0 alone.
- A repeated command with the same DIR skips a run that finished with the same flags on the
  same code (revision, and the uncommitted diff if any), reruns one whose flags or code changed,
  and resumes an interrupted one from its last checkpoint (the train loop's own resume; its wall
  time is then that of the resumed part only).

Budgets: `quick` (shrunken configs with their own references; minutes, what CI runs) and
`full` (the published configs); a row whose quick run would be its full run has one reference.
`--write_reference` stores this run's values as the table's reference for the budget, from a
committed tree only (run it with `--seeds=5` or more for rows under two minutes a seed).
`--readme` prints README's results table, generated from the reference table, and exits.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from experiments import REFERENCE_TABLE
from lab import provenance, reference_table, reproduce
from lab.errors import EXIT_FAILURE, EXIT_USAGE, exit_with_error
from lab.files import write_whole

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEDGER = "ledger.json"  # DIR's record of the finished runs: what a rerun skips
_DEFAULT_WALL_S = 60.0  # the ETA's guess for a run the table has no time for

flags.DEFINE_string("workdir", None, "Directory of the reproduction: one workdir per run, RESULTS.md, results.json.")
flags.DEFINE_enum("budget", "quick", list(reference_table.BUDGETS), "quick: minutes, shrunken configs; full: the published configs.")
flags.DEFINE_integer("seeds", 1, "Seeds 0 .. N-1 per row.")
flags.DEFINE_list("only", [], "Rows to run (and the rows they need); default: every row of the budget.")
flags.DEFINE_string("reference", REFERENCE_TABLE, "The reference table.")
flags.DEFINE_bool("write_reference", False, "Store this run's values as the reference of --budget (all runs must succeed).")
flags.DEFINE_bool("allow_dirty_tree", False, "With --write_reference: write although the tree has uncommitted "
                  "changes (for tests; a published reference comes from a committed tree).")
flags.DEFINE_bool("readme", False, "Print README's results table from the reference table and exit.")
FLAGS = flags.FLAGS


def _read_json(path: str, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return default


def _write_json(path: str, obj) -> None:
    write_whole(path, json.dumps(obj, indent=2) + "\n")


def _error_line(log_path: str, returncode: int) -> str:
    """The run's own `error: ...` line, else its exit status; with where the whole log is."""
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.startswith("error: ")]
    what = lines[-1][len("error: "):] if lines else f"exit status {returncode}"
    return f"{what} (log: {log_path})"


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _run_one(row: dict, budget: str, seed: int, workdir: str, needs: dict) -> tuple[dict | None, float, str | None]:
    """Runs (or resumes) one row's seed: (its results.json, wall seconds, error or None)."""
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    command = [sys.executable, "-m", f"experiments.{row['experiment']}", f"--workdir={workdir}",
               *reproduce.config_flags(row, budget, seed, needs)]
    log_path = workdir + ".log"
    start = time.perf_counter()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(command)}\n")
        log.flush()
        proc = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return None, wall, _error_line(log_path, proc.returncode)
    results = _read_json(os.path.join(workdir, "results.json"), None)
    if results is None:
        return None, wall, f"the run wrote no results.json (log: {log_path})"
    missing = [m for m in row["metrics"] if not isinstance(results.get(m), (int, float))]
    if missing:
        return None, wall, f"results.json has no {', '.join(missing)} (log: {log_path})"
    return results, wall, None


def _environment(workdir: str) -> dict:
    """The last start recorded in the run's environment.json (the machine that finished it)."""
    starts = _read_json(os.path.join(workdir, "environment.json"), {}).get("starts") or [{}]
    return starts[-1]


def main(argv):
    if len(argv) > 1:
        exit_with_error(f"unexpected arguments {argv[1:]}; flags are written --name=value", EXIT_USAGE)
    try:
        table = reference_table.load_table(FLAGS.reference)
        if FLAGS.readme:
            print(reproduce.reference_markdown(table), end="")
            return
        if not FLAGS.workdir:
            exit_with_error("--workdir is required: the directory that receives the runs and RESULTS.md", EXIT_USAGE)
        if FLAGS.seeds < 1:
            exit_with_error(f"--seeds={FLAGS.seeds}: use 1 or more", EXIT_USAGE)
        rows = reproduce.select(table, FLAGS.budget, FLAGS.only)
    except reference_table.ReproduceError as e:
        exit_with_error(str(e), EXIT_USAGE)
    git = provenance.git_state()
    code = {"revision": git["revision"], "diff_sha256": git.get("diff_sha256")}  # what a finished run ran
    if FLAGS.write_reference and git["dirty"] and not FLAGS.allow_dirty_tree:
        exit_with_error("--write_reference: the tree has uncommitted changes; a reference comes from a committed "
                        "tree: commit, then run it again", EXIT_USAGE)

    budget, seeds = FLAGS.budget, list(range(FLAGS.seeds))
    root = os.path.abspath(FLAGS.workdir)
    try:  # a workdir that cannot hold the runs is one line before any run starts
        os.makedirs(root, exist_ok=True)
        tempfile.TemporaryFile(dir=root).close()
    except OSError as e:
        exit_with_error(f"--workdir={root}: {e.strerror or e}: give a folder you can write to", EXIT_USAGE)
    ledger_path = os.path.join(root, LEDGER)
    ledger = _read_json(ledger_path, {})
    done = ledger.setdefault(budget, {})

    def expected_wall(row):
        return row.get("measured", {}).get(reproduce.budget_of(row, budget), {}).get("wall_s") or _DEFAULT_WALL_S

    # A row that --only brought in for another's sake (a GAN's classifier) is that row's measuring
    # instrument: its seed 0 serves every seed of the rows that need it, and only seed 0 runs.
    asked = set(FLAGS.only) or {row["name"] for row in rows}
    seeds_of = {row["name"]: seeds if row["name"] in asked else seeds[:1] for row in rows}
    todo = [(row, s) for row in rows for s in seeds_of[row["name"]]]
    remaining_expected = sum(expected_wall(row) for row, _ in todo)
    spent, spent_expected = 0.0, 0.0
    failed: dict[str, str] = {}
    print(f"reproduce: {len(rows)} rows x {len(seeds)} seeds, budget {budget}, expected "
          f"{_clock(remaining_expected)} on the reference machine", flush=True)
    try:
        for i, (row, seed) in enumerate(todo, 1):
            name = row["name"]
            workdir = os.path.join(root, budget, name, f"seed_{seed}")
            entry = done.get(name, {}).get(str(seed))
            blocked = [dep for dep in row.get("needs", {}).values() if dep in failed]
            remaining_expected -= expected_wall(row)
            needs = {dep: os.path.join(root, budget, dep, "seed_0") for dep in row.get("needs", {}).values()}
            run_flags = reproduce.config_flags(row, budget, seed, needs)
            if entry and os.path.exists(os.path.join(workdir, "results.json")):
                if entry.get("flags") == run_flags and entry.get("code") == code:
                    print(f"[{i}/{len(todo)}] {name} seed {seed}: finished earlier, skipped", flush=True)
                    continue
                changed = "flags" if entry.get("flags") != run_flags else "code"
                print(f"[{i}/{len(todo)}] {name} seed {seed}: its {changed} changed since it ran: run again "
                      f"(the earlier run moved to {workdir}.stale)", flush=True)
                shutil.rmtree(workdir + ".stale", ignore_errors=True)
                os.replace(workdir, workdir + ".stale")
            if blocked:
                failed[name] = f"needs {', '.join(blocked)}, which failed"
                print(f"[{i}/{len(todo)}] {name} seed {seed}: not run: {failed[name]}", flush=True)
                continue
            results, wall, error = _run_one(row, budget, seed, workdir, needs)
            spent += wall
            spent_expected += expected_wall(row)
            if error:
                failed[name] = error
                print(f"[{i}/{len(todo)}] {name} seed {seed}: error: {error}", flush=True)
                continue
            done.setdefault(name, {})[str(seed)] = {
                "metrics": {m: results[m] for m in row["metrics"]},
                "wall_s": wall, "environment": _environment(workdir), "flags": run_flags, "code": code}
            _write_json(ledger_path, ledger)
            values = ", ".join(f"{m} {reference_table.fmt(results[m])}" for m in row["metrics"])
            eta = remaining_expected * (spent / spent_expected if spent_expected else 1.0)
            print(f"[{i}/{len(todo)}] {name} seed {seed}: {values} ({wall:.0f} s; ETA {_clock(eta)})", flush=True)
    except KeyboardInterrupt:
        exit_with_error("interrupted: rerun the same command to resume (finished runs are kept)", EXIT_FAILURE)

    outcomes, ok = [], not failed
    for row in rows:
        name = row["name"]
        runs = {s: done[name][str(s)] for s in seeds_of[name] if str(s) in done.get(name, {})}
        if name in failed or len(runs) < len(seeds_of[name]):
            outcomes.append({"row": row, "lines": [], "wall_s": 0.0, "error": failed.get(name, "not run")})
            continue
        lines = reproduce.compare(row, budget, {s: r["metrics"] for s, r in runs.items()}, runs[seeds[0]]["environment"])
        ok &= all(line["holds"] is not False for line in lines)
        reference_env = row.get("measured", {}).get(reproduce.budget_of(row, budget), {}).get("environment")
        outcomes.append({
            "row": row, "lines": lines, "error": None,
            "wall_s": sum(r["wall_s"] for r in runs.values()) / len(runs),
            "differences": reproduce.environment_differences(runs[seeds[0]]["environment"], reference_env)
            if reference_env else []})

    command = shlex.join(["python", "-m", "experiments.reproduce", *sys.argv[1:]])
    write_whole(os.path.join(root, "RESULTS.md"), reproduce.results_markdown(budget, outcomes, command))
    _write_json(os.path.join(root, "results.json"), {
        "budget": budget, "seeds": seeds, "command": command, "holds": ok,
        "rows": [{"name": o["row"]["name"], "experiment": o["row"]["experiment"], "variant": o["row"].get("variant"),
                  "dataset": o["row"].get("dataset"), "error": o["error"], "lines": o["lines"],
                  "wall_s": o["wall_s"], "differences": o.get("differences", [])} for o in outcomes]})
    for o in outcomes:
        for line in o["lines"]:
            if line["holds"] is False:
                why = ("not bit-identical on the reference's machine class" if line["tier"] == "bit"
                       and (line["band"] is None or abs(line["mean"] - line["reference"]) <= line["band"])
                       else f"outside the band ± {reference_table.fmt(line['band'], 2)}")
                print(f"FAILS: {o['row']['name']} {line['metric']} = {reference_table.fmt(line['mean'])}, reference "
                      f"{reference_table.fmt(line['reference'])}: {why} ({line['exact']} seeds equal to the bit)",
                      flush=True)
        if o.get("differences"):
            print(f"warning: {o['row']['name']}: the environment differs from the reference's: "
                  + "; ".join(o["differences"]), flush=True)
    unreferenced = [o["row"]["name"] for o in outcomes if any(line["holds"] is None for line in o["lines"])]
    if unreferenced:
        print(f"note: no {budget} reference yet for {', '.join(unreferenced)} (--write_reference stores one)", flush=True)
    print(f"{'all hold' if ok else 'NOT ALL HOLD'}: {os.path.join(root, 'RESULTS.md')}", flush=True)

    if FLAGS.write_reference:
        if failed:
            exit_with_error(f"--write_reference: not written, {len(failed)} row(s) failed: {', '.join(failed)}", EXIT_FAILURE)
        for row in rows:  # the rows of the file itself, so the hand-written fields stay as they are
            if row["name"] not in asked:
                continue  # run for another row's sake, with one seed: its reference stays
            runs = {s: done[row["name"]][str(s)] for s in seeds}
            row.setdefault("measured", {})[reproduce.budget_of(row, budget)] = reproduce.measured_entry(
                {s: r["metrics"] for s, r in runs.items()}, row["metrics"],
                {s: r["wall_s"] for s, r in runs.items()}, runs[0]["environment"])
        _write_json(FLAGS.reference, table)
        print(f"reference for budget {budget} written to {FLAGS.reference}", flush=True)
        return
    if not ok:
        sys.exit(EXIT_FAILURE)


if __name__ == "__main__":
    from experiments.cli import parse_flags  # the one way every command answers a bad flag

    app.run(main, flags_parser=parse_flags)
