"""`python -m experiments.reproduce`: runs rows of a reference table through the experiments'
own entry points, checks them against the table's tolerances, skips what finished, resumes
what was interrupted."""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lab import reference_table, reproduce

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")

# One seconds-long row: the digits MLP, 20 steps, checkpoints at 10 and 20.
TINY_ROW = {"name": "tiny_mlp", "experiment": "mlp_classifier", "variant": None, "dataset": "digits",
            "metrics": ["test_accuracy", "test_loss"],
            "budgets": {"quick": {"flags": {"num_train_steps": 20, "eval_every_steps": 10,
                                            "checkpoint_every_steps": 10, "log_every_steps": 10}}}}


def run_reproduce(*args):
    return subprocess.run([sys.executable, "-m", "experiments.reproduce", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_reference_rerun_tolerance_and_resume(tmp_path):
    """One reproduction, in order: (1) two seeds, stored as the reference; (2) the same command
    again skips both runs and lands on the reference to the bit; (3) a planted out-of-band
    reference fails with a clear row; (4) an interrupted run resumes from its checkpoint.
    (One test: each step stands on the state the previous one left.)"""
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"rows": [TINY_ROW]}))
    run = tmp_path / "run"

    # (1) --write_reference: values, spread and the environment of seed 0 (this tree may have
    # uncommitted changes while lab is developed: a published reference may not).
    proc = run_reproduce(f"--workdir={run}", f"--reference={table}", "--seeds=2", "--write_reference",
                         "--allow_dirty_tree")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = json.loads(table.read_text())["rows"][0]["measured"]["quick"]
    assert entry["seeds"] == [0, 1]
    accuracy = entry["metrics"]["test_accuracy"]
    ledger = json.loads((run / "ledger.json").read_text())["quick"]["tiny_mlp"]
    assert accuracy["values"] == [ledger["0"]["metrics"]["test_accuracy"], ledger["1"]["metrics"]["test_accuracy"]]
    assert accuracy["values"][0] != accuracy["values"][1]  # two seeds, two runs
    mean, std = reproduce.mean_std(accuracy["values"])
    assert accuracy["mean"] == mean and accuracy["std"] == std > 0
    env = entry["environment"]
    assert {"git", "versions", "devices", "cpu", "xla_flags", "prng_impl", "seed", "dataset"} <= set(env)
    assert env["seed"] == 0 and env["dataset"]["sha256"]

    # (2) The same command again: nothing runs, every value holds, bit-identical.
    proc = run_reproduce(f"--workdir={run}", f"--reference={table}", "--seeds=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("finished earlier, skipped") == 2
    results = json.loads((run / "results.json").read_text())
    assert results["holds"] and all(line["holds"] and line["exact"] == "2/2" and line["tier"] == "bit"
                                    for line in results["rows"][0]["lines"])
    seed_0 = run / "quick" / "tiny_mlp" / "seed_0"
    assert len(json.loads((seed_0 / "environment.json").read_text())["starts"]) == 1  # not run again
    assert "| tiny_mlp | `mlp_classifier` | digits | test_accuracy |" in (run / "RESULTS.md").read_text()

    # (3) A reference off by one float step: on this machine class (the bit tier) it fails
    # although it is inside the band; on another class (another core count) it holds; a
    # reference far outside the band fails there too.
    def planted(change, environment=None) -> str:
        edited = json.loads(table.read_text())
        measured = edited["rows"][0]["measured"]["quick"]
        change(measured["metrics"]["test_accuracy"])
        measured["environment"].update(environment or {})
        path = tmp_path / "planted.json"
        path.write_text(json.dumps(edited))
        return f"--reference={path}"

    def one_ulp_up(m):
        m["values"][0] = float(np.nextafter(m["values"][0], 2.0))

    proc = run_reproduce(f"--workdir={run}", planted(one_ulp_up), "--seeds=2")
    assert proc.returncode == 1 and "NOT ALL HOLD" in proc.stdout
    assert "FAILS: tiny_mlp test_accuracy" in proc.stdout and "not bit-identical on the reference's machine class" in proc.stdout
    failing = [line for line in (run / "RESULTS.md").read_text().splitlines() if "**NO**" in line]
    assert len(failing) == 1 and "test_accuracy" in failing[0] and "| bit |" in failing[0]
    other_class = {"cpu": {**env["cpu"], "count": env["cpu"]["count"] + 1}}
    proc = run_reproduce(f"--workdir={run}", planted(one_ulp_up, other_class), "--seeds=2")
    assert proc.returncode == 0, proc.stdout
    assert all(line["tier"] == "band" and line["holds"] for line in json.loads((run / "results.json").read_text())["rows"][0]["lines"])

    def far(m):
        m["values"] = [v - 0.5 for v in m["values"]]
        m["mean"] -= 0.5
    proc = run_reproduce(f"--workdir={run}", planted(far, other_class), "--seeds=2")
    assert proc.returncode == 1 and "outside the band" in proc.stdout

    # (3b) The row's flags change: the ledger reruns both seeds (the old runs kept beside).
    changed = json.loads(table.read_text())
    changed["rows"][0]["budgets"]["quick"]["flags"]["log_every_steps"] = 5
    changed_path = tmp_path / "changed.json"
    changed_path.write_text(json.dumps(changed))
    proc = run_reproduce(f"--workdir={run}", f"--reference={changed_path}", "--seeds=2")
    assert proc.stdout.count("its flags changed since it ran: run again") == 2, proc.stdout
    assert (run / "quick" / "tiny_mlp" / "seed_0.stale" / "results.json").exists()
    assert proc.returncode == 0 and "finished earlier" not in proc.stdout  # log cadence moves no number
    proc = run_reproduce(f"--workdir={run}", f"--reference={changed_path}", "--seeds=2")
    assert proc.stdout.count("finished earlier, skipped") == 2
    proc = run_reproduce(f"--workdir={run}", f"--reference={table}", "--seeds=2")  # back to the first flags
    assert proc.returncode == 0 and proc.stdout.count("its flags changed") == 2

    # (4) Seed 1 as a kill after step 10 leaves it: no results, no step-20 checkpoint, not in
    # the ledger. The rerun resumes it at step 10 and lands on the reference's value to the bit.
    seed_1 = run / "quick" / "tiny_mlp" / "seed_1"
    os.remove(seed_1 / "results.json")
    shutil.rmtree(seed_1 / "checkpoints" / "20")
    ledger = json.loads((run / "ledger.json").read_text())
    del ledger["quick"]["tiny_mlp"]["1"]
    (run / "ledger.json").write_text(json.dumps(ledger))
    proc = run_reproduce(f"--workdir={run}", f"--reference={table}", "--seeds=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tiny_mlp seed 0: finished earlier, skipped" in proc.stdout
    assert [s["step"] for s in json.loads((seed_1 / "environment.json").read_text())["starts"]] == [0, 10]
    lines = json.loads((run / "results.json").read_text())["rows"][0]["lines"]
    assert all(line["holds"] and line["exact"] == "2/2" for line in lines)


def test_environment_differences_name_each_key():
    env = {"cpu": {"model_name": "A", "avx512f": True}, "versions": {"jax": "1"}, "seed": 0, "step": 0,
           "git": {"revision": "abc", "dirty": False}, "xla_flags": ""}
    assert reproduce.environment_differences(env, env) == []
    other = {**env, "cpu": {"model_name": "B", "avx512f": True}, "seed": 1, "git": {"revision": "def", "dirty": False},
             "xla_flags": "--xla_cpu_use_thunk_runtime=false"}
    assert reproduce.environment_differences(other, env) == [
        "cpu.model_name: here 'B', reference 'A'",
        "xla_flags: here '--xla_cpu_use_thunk_runtime=false', reference ''"]
    dirty = {**env, "git": {"revision": "abc", "dirty": True}}
    assert reproduce.environment_differences(dirty, env) == ["git: this run's tree had uncommitted changes"]


def test_bad_flags_are_one_clear_line(tmp_path):
    proc = run_reproduce(f"--workdir={tmp_path}", "--only=lm_default,no_such_row")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --only: unknown 'no_such_row'; known: mlp_fashion,")
    proc = run_reproduce(f"--workdir={tmp_path}", "--only=lm_tuned")  # a full-only row
    assert proc.returncode == 2 and "has no 'quick' budget" in proc.stderr
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    proc = run_reproduce(f"--workdir={tmp_path}", f"--reference={broken}")
    assert proc.returncode == 2 and "is not JSON" in proc.stderr
    assert not list(tmp_path.glob("quick"))  # nothing ran


def test_selection_brings_the_rows_a_row_needs():
    table = reference_table.load_table(os.path.join(ROOT, "experiments", "reference_results.json"))
    assert [r["name"] for r in reproduce.select(table, "quick", ["gan_digits"])] == ["cnn_digits", "gan_digits"]
    assert [r["name"] for r in reproduce.select(table, "full", ["vae_fashion"])] == ["cnn_fashion", "vae_fashion"]


def test_every_quick_row_has_a_reference_and_the_readme_shows_the_table():
    """CI runs the quick budget against these references; README's Results table is generated
    from the same file (`python -m experiments.reproduce --readme`)."""
    table = reference_table.load_table(os.path.join(ROOT, "experiments", "reference_results.json"))
    families = set()
    for row in table["rows"]:
        if "quick" in row["budgets"]:
            budget = reproduce.budget_of(row, "quick")
            assert set(row["metrics"]) <= set(row.get("measured", {}).get(budget, {}).get("metrics", {})), row["name"]
            families.add(row["experiment"].split("_")[0])
    assert {"mlp", "transformer", "lstm", "gan", "vae"} <= families
    with open(README) as f:
        readme = f.read()
    begin, end = "<!-- results table: python -m experiments.reproduce --readme -->\n", "<!-- end of results table -->"
    assert begin in readme and end in readme
    assert readme.split(begin)[1].split(end)[0] == reproduce.reference_markdown(table)


def test_references_are_committed_measurements_with_enough_seeds_and_every_weak_metric_says_why():
    """Every reference comes from a committed tree; one a seed runs under two minutes has five
    seeds or more; a metric the one-seed gate cannot hold to a 5% shift (a point of accuracy)
    names its reason in the row, and README shows it."""
    table = reference_table.load_table(os.path.join(ROOT, "experiments", "reference_results.json"))
    for row in table["rows"]:
        for budget, entry in row.get("measured", {}).items():
            assert entry["environment"]["git"]["dirty"] is False, (row["name"], budget)
            if entry["wall_s"] < 120:
                assert len(entry["seeds"]) >= 5, (row["name"], budget)
        for metric, _ in reproduce.weak_lines(row):
            assert row.get("weak", {}).get(metric), (row["name"], metric)
    assert "no reason given" not in reproduce.reference_markdown(table)


def test_seeds_that_agree_to_the_bit_have_their_value_as_mean_and_no_spread():
    """A deterministic baseline's seeds: mean = the value, std exactly 0 (not a rounding residue)."""
    for value in (1.7950863838195801, 0.1, 0.98611):
        assert reproduce.mean_std([value] * 3) == (value, 0.0)
    mean, std = reproduce.mean_std([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)


def test_a_rows_own_floor_widens_only_its_metrics_band_and_says_why():
    """An optimiser's fit (Holt-Winters) lands 0.45% away on another machine class: the default
    floor (0.1%) fails it, the row's own 1% floor holds it; the other metric keeps the default
    and README names the floor and its reason."""
    env = {"cpu": {"family_model": "6/167"}}
    measured = {"seeds": [0, 1, 2], "wall_s": 1.0, "environment": env,
                "metrics": {m: {"values": [0.33] * 3, "mean": 0.33, "std": 0.0} for m in ("fit", "sum")}}
    row = {"name": "r", "experiment": "lstm_forecast", "metrics": ["fit", "sum"], "budgets": {"full": {"flags": {}}},
           "measured": {"full": measured}}
    moved = {0: {"fit": 0.33 * 1.0045, "sum": 0.33 * 1.0045}}
    assert [line["holds"] for line in reproduce.compare(row, "full", moved)] == [False, False]
    row["floor"] = {"fit": {"relative": 0.01, "why": "an optimiser's optimum moves"}}
    fit, total = reproduce.compare(row, "full", moved)
    assert fit["holds"] and fit["band"] == pytest.approx(0.0033) and not total["holds"]
    assert "(floor 1% of the value: an optimiser's optimum moves)" in reproduce.reference_markdown({"rows": [row]})


def test_the_gate_keeps_its_false_alarm_rate_and_its_power_on_simulated_seeds():
    """Seeds drawn from one normal distribution: a correct reproduction fails at most
    FALSE_ALARM of the time; one whose true mean moved by `detectable_shift` (computed from the
    true spread) fails at least POWER of the time. 4,000 draws a case: three standard errors of
    slack."""
    rng = np.random.default_rng(0)
    trials = 4000
    for m, n in ((3, 1), (5, 1), (10, 1), (5, 5)):
        unit = np.arange(m) - (m - 1) / 2
        shift = reproduce.detectable_shift(list(unit / unit.std(ddof=1)), n)  # for the true spread, 1
        for moved, bound in ((0.0, reproduce.FALSE_ALARM), (shift, reproduce.POWER)):
            fails = 0
            for _ in range(trials):
                reference, reproduction = rng.standard_normal(m), rng.standard_normal(n) + moved
                fails += abs(reproduction.mean() - reference.mean()) > reproduce.band(list(reference), list(reproduction))
            rate, slack = fails / trials, 3 * math.sqrt(bound * (1 - bound) / trials)
            if moved == 0.0:
                assert rate <= bound + slack, (m, n, rate)
            else:
                assert rate >= bound - slack, (m, n, rate)


def test_a_planted_regression_fails_the_quick_gate(tmp_path):
    """The LM's quick row with its learning rate halved (a plausible slip in code): its seed 0
    falls outside the row's band on any machine, and is not bit-identical on the reference's."""
    table = reference_table.load_table(os.path.join(ROOT, "experiments", "reference_results.json"))
    row = next(r for r in table["rows"] if r["name"] == "lm_default")
    from experiments.transformer_lm.config import get_config

    halved = get_config().optimizer.learning_rate / 2
    proc = subprocess.run([sys.executable, "-m", "experiments.transformer_lm", f"--workdir={tmp_path}",
                           *reproduce.config_flags(row, "quick", 0, {}), f"--config.optimizer.learning_rate={halved}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    environment = json.loads((tmp_path / "environment.json").read_text())["starts"][-1]
    (line,) = reproduce.compare(row, "quick", {0: results}, environment)
    assert line["holds"] is False and abs(line["mean"] - line["reference"]) > line["band"], line
    assert line["exact"] == "0/1"


def test_a_needed_row_is_a_fixed_instrument_measured_by_its_seed_0(tmp_path):
    """Every seed of a row measures with seed 0 of the row it needs; a row --only brought in
    for another's sake runs seed 0 alone and keeps its reference."""
    needed = {**TINY_ROW, "name": "tiny_a", "metrics": ["test_accuracy"]}
    # (data_dir stands in for a path key such as features_run: the run's folder, a dataset built into it)
    needing = {**TINY_ROW, "name": "tiny_b", "metrics": ["test_accuracy"], "needs": {"data_dir": "tiny_a"}}
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"rows": [needed, needing]}))
    run = tmp_path / "run"
    proc = run_reproduce(f"--workdir={run}", f"--reference={table}", "--seeds=2", "--only=tiny_b",
                         "--write_reference", "--allow_dirty_tree")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ledger = json.loads((run / "ledger.json").read_text())["quick"]
    assert sorted(ledger["tiny_a"]) == ["0"] and sorted(ledger["tiny_b"]) == ["0", "1"]
    for seed in ("0", "1"):
        assert f"--config.data_dir={run}/quick/tiny_a/seed_0" in ledger["tiny_b"][seed]["flags"]
    written = {r["name"]: r for r in json.loads(table.read_text())["rows"]}
    assert "measured" not in written["tiny_a"] and written["tiny_b"]["measured"]["quick"]["seeds"] == [0, 1]
