"""Benchmarks write their runs outside the committed results and name the CPU they ran on."""

import glob
import json
import os
import re
import sys

from benchmarks import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _listing(folder):
    """name -> (size, mtime) of every file under `folder`."""
    out = {}
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        st = os.stat(path)
        out[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return out


def test_a_benchmark_run_without_out_leaves_the_committed_results_alone(tmp_path, monkeypatch, capsys):
    from benchmarks import bf16_matmul

    before = _listing(common.RESULTS_DIR)
    monkeypatch.setenv(common.RUNS_ENV, str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["bf16_matmul", "--shapes=8x8x8", "--calls=1"])
    bf16_matmul.main()
    assert _listing(common.RESULTS_DIR) == before
    [path] = glob.glob(str(tmp_path / "*" / "bf16_matmul.json"))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d{6}", os.path.basename(os.path.dirname(path)))
    with open(path) as f:
        result = json.load(f)
    cpu = common.cpu_info()
    assert result["cpu"] == cpu and {"model_name", "avx2", "avx512f", "avx512_bf16", "amx_bf16"} <= set(cpu)
    out = capsys.readouterr().out.splitlines()
    # The header, before any measurement: where the JSON goes and the CPU with its vector extensions.
    assert out[0] == f"benchmarks.bf16_matmul -> {path}"
    assert out[1] == common.cpu_line(cpu) and out[1].startswith(f"CPU {cpu['model_name']} (")
    assert all(f"{flag} {'yes' if cpu[key] else 'no'}" in out[1] for key, flag in common.CPU_FLAGS)
    assert out[-1] == f"wrote {path}"


def test_out_names_the_file_and_every_saved_result_names_the_cpu(tmp_path, capsys):
    assert common.out_path(str(tmp_path / "x.json"), "serve.json") == str(tmp_path / "x.json")
    assert common.out_path(None, "serve.json") == os.path.join(common.run_dir(), "serve.json")
    assert not common.run_dir().startswith(common.RESULTS_DIR)
    common.save({"rows": []}, str(tmp_path / "x.json"))  # a result that did not name the CPU
    with open(tmp_path / "x.json") as f:
        assert json.load(f)["cpu"] == common.cpu_info()


def test_no_benchmark_defaults_its_json_into_the_committed_results():
    """Every benchmark's --out defaults to a run folder (common.add_out_flag / out_path); only an
    explicit --out writes into benchmarks/results/."""
    scripts = sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.py")))
    assert len(scripts) > 10
    for path in scripts:
        if path.endswith("common.py"):  # names RESULTS_DIR, to mark a write there as one on purpose
            continue
        with open(path) as f:
            code = f.read()
        assert "RESULTS_DIR" not in code, path
        assert not re.search(r"""os\.path\.join\([^)]*["']results["']""", code), path
        assert not re.search(r"""default\s*=\s*["'][^"']*benchmarks/results""", code), path
    with open(os.path.join(ROOT, ".gitignore")) as f:
        assert "/benchmarks/runs/" in f.read().split()


def test_the_step_profile_counts_kernels_not_the_runtimes_own_spans(tmp_path):
    """XLA:CPU's trace has three thread-pool spans per parallel kernel and waits for donated
    buffers: counted as kernels they tripled the kernels per step of the GPT profile."""
    import gzip

    from benchmarks.profile_step import kernel_times

    events = [{"ph": "X", "name": name, "dur": 5.0} for name in (
        "ynn_fusion.3", "ThreadpoolListener::Record", "ThreadpoolListener::StartRegion",
        "ThreadpoolListener::StopRegion", "Wait for donation holds", "multiply_add_fusion.1", "ynn_fusion.3")]
    (tmp_path / "host").mkdir()
    with gzip.open(tmp_path / "host" / "x.trace.json.gz", "wt") as f:
        json.dump({"traceEvents": events + [{"ph": "M", "name": "process_name"}]}, f)
    assert kernel_times(str(tmp_path)) == {"ynn_fusion.3": [2, 10.0], "multiply_add_fusion.1": [1, 5.0]}
