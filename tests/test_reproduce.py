"""`python -m experiments.reproduce`: runs rows of a reference table through the experiments'
own entry points, checks them against the table's tolerances, skips what finished, resumes
what was interrupted."""

import json
import os
import shutil
import subprocess
import sys

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

    # (1) --write_reference: values, spread, tolerance and the environment of seed 0.
    proc = run_reproduce(f"--workdir={run}", f"--reference={table}", "--seeds=2", "--write_reference")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    entry = json.loads(table.read_text())["rows"][0]["measured"]["quick"]
    assert entry["seeds"] == [0, 1]
    accuracy = entry["metrics"]["test_accuracy"]
    ledger = json.loads((run / "ledger.json").read_text())["quick"]["tiny_mlp"]
    assert accuracy["values"] == [ledger["0"]["metrics"]["test_accuracy"], ledger["1"]["metrics"]["test_accuracy"]]
    assert accuracy["values"][0] != accuracy["values"][1]  # two seeds, two runs
    mean, std = reproduce.mean_std(accuracy["values"])
    assert accuracy["mean"] == mean and accuracy["std"] == std > 0
    assert accuracy["tolerance"] == reproduce.tolerance(mean, std)
    env = entry["environment"]
    assert {"git", "versions", "devices", "cpu", "xla_flags", "prng_impl", "seed", "dataset"} <= set(env)
    assert env["seed"] == 0 and env["dataset"]["sha256"]

    # (2) The same command again: nothing runs, every value holds, bit-identical.
    proc = run_reproduce(f"--workdir={run}", f"--reference={table}", "--seeds=2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("finished earlier, skipped") == 2
    results = json.loads((run / "results.json").read_text())
    assert results["holds"] and all(line["holds"] and line["exact"] == "2/2" for line in results["rows"][0]["lines"])
    seed_0 = run / "quick" / "tiny_mlp" / "seed_0"
    assert len(json.loads((seed_0 / "environment.json").read_text())["starts"]) == 1  # not run again
    assert "| tiny_mlp | `mlp_classifier` | digits | test_accuracy |" in (run / "RESULTS.md").read_text()

    # (3) A reference ten tolerances away: exit 1, a FAILS line, one **NO** row.
    planted = json.loads(table.read_text())
    planted_accuracy = planted["rows"][0]["measured"]["quick"]["metrics"]["test_accuracy"]
    planted_accuracy["mean"] += 10 * planted_accuracy["tolerance"]
    planted_path = tmp_path / "planted.json"
    planted_path.write_text(json.dumps(planted))
    proc = run_reproduce(f"--workdir={run}", f"--reference={planted_path}", "--seeds=2")
    assert proc.returncode == 1
    assert "FAILS: tiny_mlp test_accuracy" in proc.stdout and "NOT ALL HOLD" in proc.stdout
    failing = [line for line in (run / "RESULTS.md").read_text().splitlines() if "**NO**" in line]
    assert len(failing) == 1 and "test_accuracy" in failing[0]

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
            assert set(row["metrics"]) <= set(row.get("measured", {}).get("quick", {}).get("metrics", {})), row["name"]
            families.add(row["experiment"].split("_")[0])
    assert {"mlp", "transformer", "lstm", "gan", "vae"} <= families
    with open(README) as f:
        readme = f.read()
    begin, end = "<!-- results table: python -m experiments.reproduce --readme -->\n", "<!-- end of results table -->"
    assert begin in readme and end in readme
    assert readme.split(begin)[1].split(end)[0] == reproduce.reference_markdown(table)


def test_seeds_that_agree_to_the_bit_have_their_value_as_mean_and_no_spread():
    """A deterministic baseline's seeds: mean = the value, std exactly 0 (not a rounding residue)."""
    for value in (1.7950863838195801, 0.1, 0.98611):
        assert reproduce.mean_std([value] * 3) == (value, 0.0)
    mean, std = reproduce.mean_std([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)
