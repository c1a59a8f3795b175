"""Multi-process runs on jax.distributed, started by `lab.launch` on 127.0.0.1, and FSDP meshes.

Each test here starts several processes (marked `multiprocess`); each runs once per suite, on one
xdist worker. The processes share the persistent compilation cache of tests/conftest.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments.cli import MALLOC_ENV
from tests.helpers import final_params, math_records, max_abs_diff, override

pytestmark = pytest.mark.multiprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 160 steps between syncs: XLA:CPU with several devices (across processes or within one)
# deadlocked with ~100 steps in flight (_Strategy.max_steps_in_flight bounds them).
MLP_FLAGS = {"num_train_steps": 160, "log_every_steps": 160, "eval_every_steps": 160, "checkpoint_every_steps": 160,
             "model.dropout_rate": 0.2}
LM_FLAGS = {"num_train_steps": 4, "log_every_steps": 2, "eval_every_steps": 4, "checkpoint_every_steps": 4}
MLP = ["-m", "experiments.mlp_classifier", *[f"--config.{k}={v}" for k, v in MLP_FLAGS.items()]]
LM = ["-m", "experiments.transformer_lm", "--config=experiments/transformer_lm/config.py:tiny",
      *[f"--config.{k}={v}" for k, v in LM_FLAGS.items()]]


def in_process(module: str, workdir, variant=None, **overrides):
    """The experiment run here, on this test process's one device (no start-up cost)."""
    import importlib

    config = override(importlib.import_module(f"experiments.{module}.config").get_config(variant), **overrides)
    return importlib.import_module(f"experiments.{module}.__main__").main(config, str(workdir))


def _env(devices=None):
    env = {**MALLOC_ENV, **os.environ}
    env.pop("XLA_FLAGS", None)
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def launch(num_processes, devices_per_process, *command, timeout=300, popen=False):
    """`python -m lab.launch ... -- python COMMAND`; CompletedProcess (or Popen) with text output."""
    args = [sys.executable, "-m", "lab.launch", f"--num_processes={num_processes}",
            f"--devices_per_process={devices_per_process}", "--", sys.executable, *command]
    if popen:
        return subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    return subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def run(devices, *command, timeout=300):
    """One process with `devices` simulated devices."""
    proc = subprocess.run([sys.executable, *command], cwd=ROOT, env=_env(devices), capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_same_numbers(workdir, reference, keys, atol=1e-5, param_atol=1e-5):
    """Same metrics (to atol) and final params (to param_atol) as the reference run. Layouts that
    split the batch differently sum in another order: their params drift apart with the steps
    (1.3e-5 after 200 MLP steps on a Xeon with AVX-512, under 1e-5 on a Zen 3 EPYC)."""
    records, ref = math_records(workdir), math_records(reference)
    assert [r["step"] for r in records] == [r["step"] for r in ref]
    compared = 0
    for r, q in zip(records, ref):
        for key in keys:
            if key in q:
                np.testing.assert_allclose(r[key], q[key], atol=atol, err_msg=f"{workdir} {key} step {q['step']}")
                compared += 1
    assert compared >= 2
    assert max_abs_diff(final_params(workdir), final_params(reference)) < param_atol


def test_two_processes_equal_one_process_and_write_once(tmp_path):
    """2 processes x 2 devices == 1 x 1 (within 1e-5), for the MLP (with dropout) and the
    Transformer LM (whose evals sample text: every process samples, process 0 writes). One process
    on 4 devices == 1 x 1 is test_parallel's."""
    for name, command in (("mlp", MLP), ("lm", LM)):
        proc = launch(2, 2, *command, f"--workdir={tmp_path}/{name}_2x2")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        lines = proc.stdout.splitlines()
        assert any(line.startswith("[p0] done: step") for line in lines)
        assert not any(line.startswith("[p1] done:") or line.startswith("[p1] step ") for line in lines)
    in_process("mlp_classifier", tmp_path / "mlp_1x1", **MLP_FLAGS)
    in_process("transformer_lm", tmp_path / "lm_1x1", "tiny", **LM_FLAGS)
    for name, keys in (("mlp", ("train/loss", "eval_test/loss", "eval_test/accuracy")), ("lm", ("train/loss", "eval_val/loss"))):
        assert_same_numbers(f"{tmp_path}/{name}_2x2", f"{tmp_path}/{name}_1x1", keys)
        records = math_records(f"{tmp_path}/{name}_2x2")  # one writer: no record twice
        assert len({(r["step"], tuple(sorted(r))) for r in records}) == len(records)
        results = json.loads((tmp_path / f"{name}_2x2" / "results.json").read_text())
        assert results["step"] == (160 if name == "mlp" else 4)
    assert os.listdir(tmp_path / "lm_2x2" / "samples") == ["step_4.txt"]
    assert (tmp_path / "lm_2x2" / "samples" / "step_4.txt").read_text() == \
        (tmp_path / "lm_1x1" / "samples" / "step_4.txt").read_text()


_FSDP_RUNS = """
import json, sys, jax
from lab import optim, parallel, train
from lab.tasks.language_model import CausalLMTask, gpt_config
from tests.test_distributed import LM_MOVES, in_process
from experiments.transformer_lm.config import get_config
config = get_config("tiny")
task = CausalLMTask(gpt_config(config.model, 65))
init = train.init_state_fn(task, optim.make_optimizers(config, config.num_train_steps))
strategy = parallel.make_parallel("jit", "fsdp:4")
abstract = jax.eval_shape(init, jax.random.key(0))
state = strategy.init_state(init, jax.random.key(0), strategy.state_shardings(abstract, jax.eval_shape(task.init, jax.random.key(0))))
shard = lambda x: list(x.addressable_shards[0].data.shape)
print(json.dumps({"qkv": shard(state.params["block_0"]["attn"]["qkv"]["kernel"]),
                  "qkv_mu": shard(state.opt_state[1][0].mu["block_0"]["attn"]["qkv"]["kernel"]),
                  "embedding": shard(state.params["embed"]["token"]["embedding"]),
                  "ln": shard(state.params["block_0"]["ln_1"]["scale"])}))
in_process("transformer_lm", sys.argv[1] + "/whole", "tiny", mesh="fsdp:4", **LM_MOVES)
in_process("transformer_lm", sys.argv[1] + "/moved", "tiny", mesh="fsdp:4", **dict(LM_MOVES, num_train_steps=4))
"""
# The schedule is shaped over the 12 steps from the start, so each leg may stop earlier.
LM_MOVES = {"num_train_steps": 12, "eval_every_steps": 4, "checkpoint_every_steps": 4, "log_every_steps": 2,
            "optimizer.decay_steps": 12}


def test_fsdp_checkpoint_moves_between_meshes(tmp_path):
    """FSDP shards are built in place (a quarter of each kernel and its Adam moment per device);
    a run saved on 4 devices with FSDP continues on 2 devices replicated, then on 4 again as
    data:2,fsdp:2, and matches the uninterrupted FSDP run."""
    out = run(4, "-c", _FSDP_RUNS, str(tmp_path)).stdout
    shards = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert shards == {"qkv": [8, 96], "qkv_mu": [8, 96], "embedding": [65, 8], "ln": [32]}, shards
    lm = [*LM[:3], *[f"--config.{k}={v}" for k, v in LM_MOVES.items()], f"--workdir={tmp_path}/moved"]
    proc = run(2, *lm, "--config.mesh=data:2", "--config.num_train_steps=8")
    assert "resumed from" in proc.stdout and "at step 4" in proc.stdout
    proc = run(4, *lm, "--config.mesh=data:2,fsdp:2")
    assert "at step 8" in proc.stdout
    assert_same_numbers(f"{tmp_path}/moved", f"{tmp_path}/whole", ("train/loss", "eval_val/loss"))


def _pids(pattern):
    out = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def test_a_killed_process_fails_the_launch_and_the_rerun_resumes(tmp_path):
    workdir = tmp_path / "killed"
    flags = {"num_train_steps": 200, "checkpoint_every_steps": 20, "eval_every_steps": 100, "log_every_steps": 20}
    mlp = ["-m", "experiments.mlp_classifier", f"--workdir={workdir}", *[f"--config.{k}={v}" for k, v in flags.items()]]
    launcher = launch(2, 1, *mlp, popen=True)
    try:
        deadline = time.monotonic() + 120
        while not (workdir / "checkpoints" / "40").is_dir():
            assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()[-3000:]
            time.sleep(0.1)
        (victim,) = _pids(f"{workdir}.*--process_id=1")
        os.kill(victim, signal.SIGKILL)
        output, _ = launcher.communicate(timeout=30)  # fails fast: not after jax's heartbeat timeout
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "error: process 1 was killed by signal SIGKILL" in output, output[-3000:]
    assert not _pids(f"{workdir}.*--process_id=0"), "process 0 was left running"

    proc = launch(2, 1, *mlp)
    assert proc.returncode == 0, proc.stdout[-3000:]
    resumed = [line for line in proc.stdout.splitlines() if line.startswith("[p0] resumed from")]
    assert resumed and int(resumed[0].rsplit(" ", 1)[-1]) >= 40
    records = math_records(str(workdir))
    assert [r["step"] for r in records if "train/loss" in r] == list(range(20, 201, 20))
    in_process("mlp_classifier", tmp_path / "whole", **flags)
    assert_same_numbers(str(workdir), f"{tmp_path}/whole", ("train/loss", "eval_test/loss"), param_atol=1e-4)

    # A workdir check that fails on process 0 stops process 1 too, at once.
    proc = launch(2, 1, *mlp, "--config.seed=3", timeout=60)
    assert proc.returncode != 0
    assert "[p0] error: workdir" in proc.stdout and "different config" in proc.stdout
    assert "[p1] error: process 0 stopped the run at 'the workdir check'" in proc.stdout


_BARRIER = """
import os, sys, time
from absl import flags
from lab import distributed
flags.DEFINE_string("coordinator_address", None, ""); flags.DEFINE_integer("num_processes", None, "")
flags.DEFINE_integer("process_id", None, ""); f = flags.FLAGS; f(sys.argv)
distributed.initialize(f.coordinator_address, f.num_processes, f.process_id, timeout_s=2)
if f.process_id == 1:
    time.sleep(30)
try:
    distributed.barrier("the test barrier")
except distributed.DistributedError as e:
    print("error:", e, flush=True)
    os._exit(3)  # as lab's CLI does: a plain exit would wait at jax's shutdown barrier for process 1
"""


def test_timeouts_name_the_process_that_did_not_arrive(tmp_path):
    proc = launch(2, 1, "-c", _BARRIER, timeout=60)
    assert proc.returncode == 3
    assert "[p0] error: process 0: process 1 did not reach 'the test barrier' within 2 s" in proc.stdout, proc.stdout
    # Process 1 may be aborted by jax's runtime at the same moment (the barrier failed for all):
    # the launcher names process 0, whose own error came first in cause.
    assert "error: process 0 exited with status 3" in proc.stderr

    from lab.launch import free_port
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "experiments.mlp_classifier", f"--workdir={tmp_path}/alone",
                           f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2",
                           "--process_id=0", "--distributed_timeout=3"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and time.monotonic() - start < 30
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "process 0: all 2 processes did not connect to the coordinator" in line
    assert not os.path.exists(tmp_path / "alone")


# A worker that says it started, sleeps, and on SIGTERM prints a runtime-style dump and its error line.
_SLEEPER = ("import os, signal, sys, time\n"
            "def stop(*_):\n"
            "    print('F0000 coordination_service.cc] Terminating process because a peer died', flush=True)\n"
            "    print('error: interrupted', flush=True)\n"
            "    sys.exit(1)\n"
            "signal.signal(signal.SIGTERM, stop)\n"
            "print('started', flush=True)\n"
            "open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\n"
            "time.sleep(600)\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited: only its parent has not reaped it yet
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_never_outlive_the_launcher(tmp_path, sig):
    launcher = subprocess.Popen([sys.executable, "-m", "lab.launch", "--num_processes=2", "--",
                                 sys.executable, "-c", _SLEEPER, str(tmp_path)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(os.listdir(tmp_path)) < 2:
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        workers = [int(name) for name in os.listdir(tmp_path)]
        launcher.send_signal(sig)
        stdout, stderr = launcher.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in workers), "a worker outlived the launcher"
    finally:
        launcher.kill()
        for name in os.listdir(tmp_path):
            try:
                os.kill(int(name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    if sig == signal.SIGTERM:  # SIGKILL leaves the launcher no word to say; the kernel stops the workers
        (line,) = [x for x in stderr.splitlines() if x.startswith("error:")]
        assert "received SIGTERM; stopped every process" in line and launcher.returncode == 128 + signal.SIGTERM
        # While stopping, the workers' dumps are dropped; their own error lines still come through.
        assert "Terminating process" not in stdout and stdout.count("error: interrupted") == 2, stdout
        assert stdout.count("started") == 2


@pytest.mark.parametrize("argv, message", [
    (["--", sys.executable, "-c", "pass"], "--num_processes"),
    (["--num_processes=0", "--", "true"], "--num_processes=0 is invalid"),
    (["--num_processes=2"], "give the command after `--`"),
])
def test_launcher_usage_errors(argv, message):
    proc = subprocess.run([sys.executable, "-m", "lab.launch", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert message in line


def test_a_busy_coordinator_port_is_one_line_before_any_worker_starts(tmp_path):
    import socket

    marker = tmp_path / "started"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "lab.launch", "--num_processes=2", f"--port={port}", "--",
                               "touch", str(marker)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and not marker.exists()
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert f"--port={port} is in use" in line
        # The same port given by hand to process 0 of a run: one line, no crash inside jax.
        proc = subprocess.run([sys.executable, "-m", "experiments.mlp_classifier", f"--workdir={tmp_path / 'run'}",
                               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=0"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
        assert f"port {port} is in use" in line


def test_mesh_flags_and_pmap_with_processes_are_checked_up_front():
    from lab import configs, sharding
    from jax.sharding import PartitionSpec as P
    from lab.errors import ConfigValueError
    from tests.test_train import small_config

    assert sharding.parse_mesh("", 4) == {"data": 4, "fsdp": 1}
    assert sharding.parse_mesh("fsdp:4", 8) == {"data": 2, "fsdp": 4}
    assert sharding.parse_mesh("data:2, fsdp:2", 4) == {"data": 2, "fsdp": 2}
    for bad in ("data:2,fsdp:3", "fsdp:3", "data:0", "tensor:2", "data:2,data:2"):
        with pytest.raises(ConfigValueError, match="config.mesh"):
            sharding.parse_mesh(bad, 4)
    with pytest.raises(ConfigValueError, match="pmap"):
        configs.validate(small_config(parallel="pmap"), 4, None, num_processes=2)
    configs.validate(small_config(parallel="jit", mesh="data:2,fsdp:2"), 4, None, num_processes=2)
    # The default FSDP placement: big leaves split along their largest divisible dimension.
    assert sharding.fsdp_spec((512, 1024), 4) == P(None, "fsdp")
    assert sharding.fsdp_spec((1024, 6), 4) == P("fsdp", None)
    assert sharding.fsdp_spec((10, 10), 4) == P()  # small: replicated
    assert sharding.fsdp_spec((4099, 7), 2) == P()  # nothing divides
