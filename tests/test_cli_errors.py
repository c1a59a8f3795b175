"""Bad input at the command line: one clear `error:` line, a non-zero exit, nothing lost."""

import json
import os
import signal

import pytest


MODULE = "experiments.mlp_classifier"
FAST = ["--config.num_train_steps=4", "--config.log_every_steps=2", "--config.eval_every_steps=2",
        "--config.checkpoint_every_steps=2"]


def error_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_unknown_config_key(run_cli, tmp_path):
    proc = run_cli(MODULE, f"--workdir={tmp_path}", "--config.batch_sizee=10")
    assert proc.returncode == 2
    assert "batch_sizee" in error_line(proc)
    assert not os.path.exists(tmp_path / "config.json")


def test_bad_value_type(run_cli, tmp_path):
    proc = run_cli(MODULE, f"--workdir={tmp_path}", "--config.batch_size=ten")
    assert proc.returncode == 2
    assert "batch_size" in error_line(proc)


def test_unknown_dataset(run_cli, tmp_path):
    proc = run_cli(MODULE, f"--workdir={tmp_path}", "--config.dataset=imagenet")
    assert proc.returncode != 0
    line = error_line(proc)
    assert "imagenet" in line and "digits" in line


def test_batch_not_divisible_by_devices(run_cli, tmp_path):
    proc = run_cli(MODULE, f"--workdir={tmp_path}", "--config.batch_size=102", *FAST,
                   env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert proc.returncode != 0
    assert "not divisible by the 4 devices" in error_line(proc)


def test_workdir_of_another_config_is_refused_and_kept(run_cli, tmp_path):
    assert run_cli(MODULE, f"--workdir={tmp_path}", *FAST).returncode == 0
    before = (tmp_path / "results.json").read_text()
    proc = run_cli(MODULE, f"--workdir={tmp_path}", *FAST, "--config.optimizer.learning_rate=0.5")
    assert proc.returncode != 0
    line = error_line(proc)
    assert "different config" in line and "optimizer.learning_rate" in line
    assert (tmp_path / "results.json").read_text() == before
    assert json.loads((tmp_path / "config.json").read_text())["optimizer"]["learning_rate"] == 0.001
    proc = run_cli(MODULE, f"--workdir={tmp_path}", *FAST, "--config.optimizer.learning_rate=0.5",
                   "--allow_config_change")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_corrupt_checkpoint_is_reported_not_deleted(run_cli, tmp_path):
    assert run_cli(MODULE, f"--workdir={tmp_path}", *FAST).returncode == 0
    step_dir = tmp_path / "checkpoints" / "4"
    for root, _, files in os.walk(step_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    proc = run_cli(MODULE, f"--workdir={tmp_path}", *FAST[1:], "--config.num_train_steps=6")
    assert proc.returncode != 0
    line = error_line(proc)
    assert "unreadable" in line and "checkpoints/4" in line
    assert step_dir.is_dir() and (tmp_path / "checkpoints" / "2").is_dir()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(run_cli, tmp_path):
    # Step 1 is finite (the initial params are fine) and checkpointed; the huge update makes a
    # later loss non-finite.
    proc = run_cli(MODULE, f"--workdir={tmp_path}", "--config.num_train_steps=40",
                   "--config.log_every_steps=1", "--config.eval_every_steps=20",
                   "--config.checkpoint_every_steps=1", "--config.optimizer.learning_rate=1e12")
    assert proc.returncode == 1
    line = error_line(proc)
    assert "non-finite" in line and "learning_rate" in line
    kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints") if s.isdigit())
    assert kept and max(kept) < 40
    assert f"step {max(kept)}" in line


def test_missing_workdir_flag(run_cli):
    proc = run_cli(MODULE)
    assert proc.returncode == 2
    assert "--workdir" in error_line(proc)


_DISK_FULL = """
import errno, os, sys
from experiments import cli
def main(config, workdir, allow_config_change):
    os.makedirs(workdir, exist_ok=True)
    open(os.path.join(workdir, "finished_work"), "w").write("kept")
    raise OSError(errno.ENOSPC, "No space left on device", os.path.join(workdir, "checkpoints"))
cli.run("experiments/mlp_classifier/config.py", main)
"""


def test_full_disk_is_one_line_and_keeps_what_was_written(tmp_path):
    import subprocess
    import sys
    from experiments.cli import MALLOC_ENV
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _DISK_FULL, f"--workdir={tmp_path}"], cwd=root,
                          env=dict(MALLOC_ENV, **os.environ), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    line = error_line(proc)
    assert "No space left on device" in line and "disk is full" in line
    assert (tmp_path / "finished_work").read_text() == "kept"


@pytest.fixture
def small_disk(tmp_path):
    """`mount(size, read_only)` -> a tmpfs at tmp_path/run/checkpoints (needs root and mount rights)."""
    import subprocess
    mounted = []

    def mount(size: str, read_only: bool = False):
        target = tmp_path / "run" / "checkpoints"
        target.mkdir(parents=True)
        options = f"size={size}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip("cannot mount a small tmpfs here (needs root): " + proc.stderr.decode()[-200:])
        mounted.append(target)
        return tmp_path / "run"

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


@pytest.mark.parametrize("case", ["read_only", "full_mid_run"])
def test_a_checkpoint_write_that_fails_ends_with_one_line_and_no_hang(run_cli, small_disk, case):
    workdir = small_disk("1m", read_only=True) if case == "read_only" else small_disk("24k")
    proc = run_cli(MODULE, f"--workdir={workdir}", "--config.num_train_steps=60", "--config.log_every_steps=10",
                   "--config.eval_every_steps=30", "--config.checkpoint_every_steps=20", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = error_line(proc)
    if case == "read_only":  # found before any training
        assert "disk is read-only" in line and "step " not in proc.stdout
    else:  # the first save fills the disk; what was logged before it is kept
        assert "disk is full" in line and "step 20/60" in proc.stdout
        assert (workdir / "metrics.jsonl").read_text().count("\n") >= 2


def test_config_values_are_checked_before_any_data_is_read(run_cli, tmp_path):
    data_dir = tmp_path / "data"  # stays absent: nothing was built or loaded
    for flag, key in (("--config.batch_size=0", "batch_size"),
                      ("--config.max_checkpoints_to_keep=0", "max_checkpoints_to_keep"),
                      ("--config.optimizer.learning_rate=-1.0", "optimizer.learning_rate"),
                      ("--config.model.dropout_rate=1.5", "model.dropout_rate"),
                      ("--config.parallel=tpu", "parallel"),
                      ("--config.model.name=resnet", "model.name")):
        proc = run_cli(MODULE, f"--workdir={tmp_path / 'run'}", flag, env={"LAB_DATA_DIR": str(data_dir)})
        assert proc.returncode == 2, (flag, proc.stderr[-2000:])
        assert key in error_line(proc) and "Traceback" not in proc.stderr, flag
    assert not data_dir.exists() and not (tmp_path / "run").exists()


_FAMILY_BUG = """
import sys
from experiments import cli
from lab.errors import CheckpointError
BUG = sys.argv.pop() == "--bug"
def main(config, workdir, allow_config_change):
    if BUG:
        raise TypeError("dot_general requires contracting dimensions to have the same shape")
    raise CheckpointError("checkpoint X is unreadable; move it aside")
cli.run("experiments/mlp_classifier/config.py", main)
"""


def test_only_lab_errors_become_one_line_a_bug_keeps_its_traceback(tmp_path):
    import subprocess
    import sys
    from experiments.cli import MALLOC_ENV
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for last, expect_traceback in (("--bug", True), ("--user-error", False)):
        proc = subprocess.run([sys.executable, "-c", _FAMILY_BUG, f"--workdir={tmp_path}", last], cwd=root,
                              env=dict(MALLOC_ENV, **os.environ), capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        if expect_traceback:
            assert "Traceback" in proc.stderr and "contracting dimensions" in proc.stderr
            assert not any(line.startswith("error:") for line in proc.stderr.splitlines())
        else:
            assert error_line(proc) == "error: checkpoint X is unreadable; move it aside"
            assert "Traceback" not in proc.stderr


def test_bad_multi_process_and_mesh_flags_fail_before_any_work(run_cli, tmp_path):
    """Each: one line naming the flag, exit 2, nothing written (4 simulated devices)."""
    cases = [
        (["--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=2"], "--process_id=2 is invalid"),
        (["--num_processes=2", "--process_id=1"], "need --coordinator_address"),
        (["--config.mesh=data:3"], "needs 3 devices, but this run has 4"),
        (["--config.mesh=model:2"], "config.mesh='model:2' is invalid"),
        (["--config.mesh=fsdp:2", "--config.parallel=pmap"], "config.parallel='pmap'"),
    ]
    for flags, message in cases:
        proc = run_cli(MODULE, f"--workdir={tmp_path}", *flags, env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
        assert proc.returncode == 2, (flags, proc.stderr[-2000:])
        assert message in error_line(proc), (flags, error_line(proc))
        assert not os.path.exists(tmp_path / "config.json")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_prints_the_resume_command(tmp_path, sig):
    import subprocess
    import sys
    import time
    from experiments.cli import MALLOC_ENV
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    command = [sys.executable, "-m", MODULE, f"--workdir={tmp_path}", "--config.num_train_steps=1000000",
               "--config.log_every_steps=50", "--config.eval_every_steps=1000000",
               "--config.checkpoint_every_steps=1000000"]
    proc = subprocess.Popen(command, cwd=root, env=dict(MALLOC_ENV, **os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # the first log step's line (the first step's comes before it)
            if line.startswith("step ") and int(line.split()[1].split("/")[0]) >= 50:
                break
            assert time.monotonic() < deadline
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + sig, stderr[-2000:]
    (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]
    assert f"stopped by {signal.Signals(sig).name} at step" in line and f"-m {MODULE} --workdir={tmp_path}" in line
    saved = int(line.split(" at step ")[1].split(";")[0])
    assert saved >= 50 and os.listdir(tmp_path / "checkpoints") == [str(saved)]
    assert "Traceback" not in stderr


def test_damaged_run_files_are_one_line_and_a_torn_last_metrics_line_is_dropped(run_cli, tmp_path):
    assert run_cli(MODULE, f"--workdir={tmp_path}", *FAST).returncode == 0
    metrics = (tmp_path / "metrics.jsonl").read_text().splitlines()
    # A torn last line (a kill mid-write) is dropped on resume: the run goes on.
    (tmp_path / "metrics.jsonl").write_text("\n".join(metrics) + '\n{"step": 4, "trai')
    os.remove(tmp_path / "results.json")
    assert run_cli(MODULE, f"--workdir={tmp_path}", *FAST).returncode == 0
    # A damaged line in the middle is refused with one line, and the file is left as it was.
    damaged = "\n".join(metrics[:1] + ["garbage"] + metrics[1:]) + "\n"
    (tmp_path / "metrics.jsonl").write_text(damaged)
    os.remove(tmp_path / "results.json")
    proc = run_cli(MODULE, f"--workdir={tmp_path}", *FAST)
    assert proc.returncode == 1 and "metrics.jsonl is damaged at line 2" in error_line(proc)
    assert (tmp_path / "metrics.jsonl").read_text() == damaged
    # A config.json of random bytes: one line, nothing overwritten.
    (tmp_path / "config.json").write_bytes(bytes(range(256)))
    proc = run_cli(MODULE, f"--workdir={tmp_path}", *FAST)
    assert proc.returncode == 1 and "config.json is damaged" in error_line(proc)
    assert (tmp_path / "config.json").read_bytes() == bytes(range(256))
