"""benchmarks/accelerator_check.py, the script a lent GPU runs, works here on the CPU."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accelerator_check_runs_on_the_cpu_and_writes_one_json(tmp_path):
    reference = tmp_path / "cpu.json"  # a CPU run's JSON, as `--cpu_reference` reads it
    reference.write_text(json.dumps({"parts": {"gpt_wide": {"run": {"steps": 4, "val_loss": 1.0}}}}))
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator_check", "--platform=cpu", "--quick",
                           "--parts=gpt_wide,torch,gpt125m,nanogpt", "--nanogpt_seeds=1", f"--cpu_reference={reference}", f"--out={out}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("benchmarks.accelerator_check -> ") and "AMX" in proc.stdout.splitlines()[1]
    result = json.loads(out.read_text())
    assert result["platform"] == "cpu" and result["bf16_matmul_tflops"] > 0 and "model_name" in result["cpu"]
    parts = result["parts"]
    assert set(parts) == {"gpt_wide", "torch", "gpt125m", "nanogpt"}
    for dtype in ("float32", "bfloat16"):
        row = parts["gpt_wide"][dtype]
        assert row["median_step_ms"] > 0 and 0 < row["mfu"] and row["params"] > 0
    run = parts["gpt_wide"]["run"]
    assert run["exit"] == 0 and run["steps"] == 4 and 0 < run["val_loss"] < 10, run
    assert run["cpu_val_loss"] == 1.0 and run["minus_cpu"] == run["val_loss"] - 1.0
    assert parts["torch"] == {"skipped": "no --torch_python", "wall_s": parts["torch"]["wall_s"]}
    assert parts["gpt125m"]["tokens_per_sec"] > 0
    seeds = parts["nanogpt"]["seeds"]  # nanoGPT's GPU recipe, shrunk by --quick, run to its end per seed
    assert list(seeds) == ["0"] and all(r["exit"] == 0 and r["selected_step"] in (2, 4) for r in seeds.values())
    assert all(0 < r["selected_val_loss"] <= r["val_loss"] for r in seeds.values())  # the last eval is one of those selected from


def test_accelerator_check_refuses_an_unknown_part():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.accelerator_check", "--parts=gpt_huge"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown parts" in proc.stderr
