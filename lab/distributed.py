"""Multi-process runs on JAX's own multi-controller runtime (`jax.distributed`).

Every process runs the same program over all global devices (SPMD); lab adds only what a run
needs around it:

* `initialize`: checks the three flags (`--coordinator_address`, `--num_processes`,
  `--process_id`, or `auto` to let `jax.distributed.initialize()` read SLURM, Cloud TPU or other
  cluster settings) and joins the run before anything touches a device. If not every process
  connects within the timeout, the process says so in one line and exits (jax itself would abort
  with a stack trace).
* `barrier`: every process waits for the others, with a timeout whose message names the
  processes that did not arrive.
* `agree`: process 0 does a check (the workdir check) and tells the others its outcome, so an
  error on process 0 stops every process instead of leaving them waiting in a collective.

The barriers are jax's coordination service's (the service that starts the run; see
`_wait_at_barrier` for why not a public jax call) and `agree`'s outcome travels through jax's
public `multihost_utils.broadcast_one_to_all`, so there is no socket or file protocol of lab's.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from lab.errors import ConfigValueError, LabError

DEFAULT_TIMEOUT_S = 300


class DistributedError(LabError, RuntimeError):
    """A process did not arrive (at start-up or a barrier), or another process stopped the run."""


@dataclass
class _Runtime:
    """This process's settings for the run (one run per process, as jax.distributed has)."""

    timeout_s: float = DEFAULT_TIMEOUT_S
    agreements: int = 0  # `agree` calls so far: each uses fresh barrier ids


_RUNTIME = _Runtime()


def check_flags(coordinator_address: str | None, num_processes: int | None, process_id: int | None) -> bool:
    """Validates the multi-process flags; True when the run is multi-process.

    Raises ConfigValueError (one line) for an incomplete or inconsistent set, before any work.
    """
    if coordinator_address in (None, ""):
        if num_processes not in (None, 1) or process_id not in (None, 0):
            raise ConfigValueError("--num_processes and --process_id need --coordinator_address=HOST:PORT "
                                   "(the address of process 0), or --coordinator_address=auto on a cluster")
        return False
    if coordinator_address == "auto":
        return True
    if not re.fullmatch(r"[\w.\-\[\]:]+:\d{1,5}", coordinator_address):
        raise ConfigValueError(f"--coordinator_address={coordinator_address!r} is invalid: use HOST:PORT of "
                               f"process 0, e.g. 127.0.0.1:12345")
    if num_processes is None or process_id is None:
        raise ConfigValueError("--coordinator_address needs --num_processes=N and --process_id=I (0 <= I < N)")
    if num_processes < 1:
        raise ConfigValueError(f"--num_processes={num_processes} is invalid: use a positive integer")
    if not 0 <= process_id < num_processes:
        raise ConfigValueError(f"--process_id={process_id} is invalid for --num_processes={num_processes}: "
                               f"use 0 to {num_processes - 1}")
    return True


def port_is_free(port: int, host: str = "") -> bool:
    """True if a TCP listener could bind `host`:`port` now ('': every interface, as jax's
    coordinator binds). SO_REUSEADDR, as servers set it: a port with closed connections lingering
    in TIME_WAIT counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def initialize(coordinator_address: str | None, num_processes: int | None = None,
               process_id: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Joins a multi-process run (a no-op for a one-process run); call before any device use.

    Args:
      coordinator_address: HOST:PORT of process 0; 'auto': the cluster's settings (SLURM,
        Cloud TPU, ...), as `jax.distributed.initialize()` detects them; None: one process.
      num_processes, process_id: this process's place in the run.
      timeout_s: how long start-up and every barrier wait for the other processes.
    Raises:
      ConfigValueError: bad flags (see `check_flags`).
    If the processes do not all connect within `timeout_s`, prints one `error:` line naming
    this process and exits with status 1.
    """
    if not check_flags(coordinator_address, num_processes, process_id):
        return
    _RUNTIME.timeout_s = float(timeout_s)
    port = coordinator_address.rpartition(":")[2] if coordinator_address != "auto" else ""
    if process_id == 0 and port.isdigit() and not port_is_free(int(port)):
        # Process 0 hosts the coordinator; one that cannot bind crashes inside jax (a segfault).
        raise ConfigValueError(f"--coordinator_address={coordinator_address}: port {port} is in use on this "
                               f"machine: give every process another port")
    who = "this process" if process_id is None else f"process {process_id}"
    expected = "every process" if num_processes is None else f"all {num_processes} processes"

    def give_up():  # jax would abort with a C++ stack trace a moment later
        print(f"error: {who}: {expected} did not connect to the coordinator at {coordinator_address} within "
              f"{timeout_s:g} s; start each with the same --coordinator_address and --num_processes "
              f"and its own --process_id (the launcher names a process that failed)", file=sys.stderr, flush=True)
        os._exit(1)

    watchdog = threading.Timer(timeout_s, give_up)
    watchdog.daemon = True
    watchdog.start()
    try:
        if coordinator_address == "auto":
            jax.distributed.initialize(initialization_timeout=int(timeout_s) + 30)
        else:
            jax.distributed.initialize(coordinator_address, num_processes, process_id,
                                       initialization_timeout=int(timeout_s) + 30)
        jax.devices()  # the backend's start exchanges every process's devices: part of start-up
    finally:
        watchdog.cancel()


def _wait_at_barrier(barrier_id: str, timeout_s: float) -> None:
    """Waits at the coordination service's barrier `barrier_id`; raises jax's runtime error on timeout.

    This module's one use of a private jax module (`jax._src.distributed`, the client that
    `jax.distributed.initialize` starts). jax's public barrier,
    `jax.experimental.multihost_utils.sync_global_devices`, is a device collective with no timeout:
    a process that never arrives leaves the others waiting, and nothing names it. The coordination
    service's barrier takes a timeout and its error names the processes that did not arrive.
    """
    from jax._src import distributed
    distributed.global_state.client.wait_at_barrier(barrier_id, int(timeout_s * 1000))


def _missing(message: str) -> str:
    """The process ids the coordination service lists as not arrived ('1, 3'), or ''."""
    tail = message.split("timed out task names:", 1)[-1] if "timed out task names:" in message else ""
    ids = re.findall(r"task:(\d+)", tail) or re.findall(r"\b(\d+)\b", tail.split("RPC:")[0])
    return ", ".join(sorted(set(ids), key=int))


def barrier(name: str, timeout_s: float | None = None) -> None:
    """Waits until every process reaches the barrier `name` (no-op with one process).

    Raises DistributedError naming the processes that did not arrive within the timeout
    (`initialize`'s by default).
    """
    if jax.process_count() == 1:
        return
    _barrier(f"lab/{name}", name, _RUNTIME.timeout_s if timeout_s is None else timeout_s)


def _barrier(barrier_id: str, name: str, timeout_s: float) -> None:
    try:
        _wait_at_barrier(barrier_id, timeout_s)
    except Exception as e:  # jax raises its runtime error with the coordination service's text
        if "DEADLINE_EXCEEDED" not in str(e) and "timed out" not in str(e):
            raise
        missing = _missing(str(e))
        who = f"process {missing}" if missing else "another process"
        raise DistributedError(f"process {jax.process_index()}: {who} did not reach {name!r} within "
                               f"{timeout_s:g} s (stopped or stuck: see its output); "
                               f"rerun to resume from the last checkpoint") from e


def agree(name: str, check: Callable[[], None]) -> None:
    """Process 0 runs `check`; every process then stops with an error if it raised a LabError.

    Process 0 re-raises its own error; the others raise DistributedError quoting it, so no
    process is left waiting in a collective for one that stopped. The others wait for process 0
    at a barrier (`barrier`'s timeout and message), then receive its outcome through jax's
    `multihost_utils.broadcast_one_to_all`. After an error, process 0 waits (up to 30 s) until
    the others call their error's `after_report()`, which the CLI does once it has printed the
    error line.
    """
    if jax.process_count() == 1:
        check()
        return
    _RUNTIME.agreements += 1
    key = f"lab/agree/{_RUNTIME.agreements}/{name}"
    error = None
    if jax.process_index() == 0:
        try:
            check()
        except LabError as e:
            error = e
    _barrier(f"{key}/checked", name, _RUNTIME.timeout_s)
    message = "" if error is None else " ".join(str(error).split()) or type(error).__name__
    message = _from_process_0(message)

    def reported():
        # Process 0 leaves, and the run's coordination service with it, once every process is
        # past this barrier: a process that left before reporting could be aborted by the lost
        # service before its error line was out (seen under load).
        try:
            _wait_at_barrier(f"{key}/reported", min(_RUNTIME.timeout_s, 30))
        except Exception:
            pass  # a process that does not come must not hide the error

    if error is not None:
        reported()
        raise error
    if message:
        error = DistributedError(f"process 0 stopped the run at {name!r}: {message}")
        error.after_report = reported  # the CLI calls it once the error line is printed
        raise error


def _from_process_0(text: str, max_bytes: int = 4096) -> str:
    """Process 0's `text` (up to `max_bytes` of UTF-8) on every process: jax's public broadcast,
    a collective over every process's devices."""
    data = np.zeros(max_bytes, np.uint8)
    if jax.process_index() == 0:
        raw = text.encode()[:max_bytes]
        data[:len(raw)] = np.frombuffer(raw, np.uint8)
    data = np.asarray(multihost_utils.broadcast_one_to_all(data))
    return bytes(data).rstrip(b"\0").decode(errors="ignore")
