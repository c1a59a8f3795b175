"""Start a multi-process run on this machine, as a cluster would start it on many.

    python -m lab.launch --num_processes=2 --devices_per_process=2 -- \\
        python -m experiments.mlp_classifier --workdir=/tmp/run

starts the command once per process with `--coordinator_address=127.0.0.1:PORT
--num_processes=N --process_id=I` appended (a free port unless `--port` is given) and, with
`--devices_per_process=K`, K simulated CPU devices per process
(`XLA_FLAGS=--xla_force_host_platform_device_count=K`). Every output line comes back prefixed
with its process (`[p1] ...`). When one process fails, the others are stopped at once and the
launcher exits non-zero naming it; when all succeed, it exits 0. Checkpoints already committed
stay: rerunning the same command resumes the run.

The workers never outlive the launcher: SIGTERM, SIGINT (Ctrl-C) or SIGHUP to the launcher (or to
its process group) stops every worker and says so in one line (exit 128 + the signal's number), and
each worker gets SIGTERM from the kernel if the launcher itself dies, even by SIGKILL (Linux's
parent-death signal).

On a real cluster nothing here is needed: SLURM's `srun` (or a TPU pod's per-host command)
starts the processes, and `--coordinator_address=auto` lets each find the others.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from lab.distributed import port_is_free
from lab.errors import EXIT_USAGE, exit_with_error
GRACE_SECONDS = 5.0  # after SIGTERM, before SIGKILL
SETTLE_SECONDS = 1.0  # after the first failure, how long to wait for the others' to tell the cause


def _usage(message: str) -> None:
    exit_with_error(f"{message} (usage: python -m lab.launch --num_processes=N "
                    f"[--devices_per_process=K] [--port=P] -- COMMAND ...)", EXIT_USAGE)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own two-line message, as lab's one line
        _usage(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(options, command) from `[options] -- command...`; bad input exits with one line."""
    if "--" not in argv:
        if any(a in ("-h", "--help") for a in argv):
            print(__doc__)
            sys.exit(0)
        _usage("give the command after `--`")
    split = argv.index("--")
    parser = _Parser(prog="python -m lab.launch")
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--devices_per_process", type=int, default=None,
                        help="simulated CPU devices per process (sets XLA_FLAGS)")
    parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    options = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        _usage("the command after `--` is empty")
    if options.num_processes < 1:
        _usage(f"--num_processes={options.num_processes} is invalid: use a positive integer")
    if options.devices_per_process is not None and options.devices_per_process < 1:
        _usage(f"--devices_per_process={options.devices_per_process} is invalid: use a positive integer")
    if options.port is not None and not 0 < options.port < 65536:
        _usage(f"--port={options.port} is invalid")
    if options.port is not None and not port_is_free(options.port):
        # Checked here: a coordinator that cannot bind crashes process 0 (a segfault in jax's
        # client) under pages of the other processes' connection errors.
        _usage(f"--port={options.port} is in use on 127.0.0.1: give another port, or leave --port out for a free one")
    return options, command


def _stream(pipe, prefix: str, lock: threading.Lock, quiet: threading.Event) -> None:
    """Relays a worker's lines with its prefix; once `quiet` is set (the launcher is stopping
    the run) only its `error:` lines: the rest is the runtime's dump as its peers vanish."""
    for line in iter(pipe.readline, ""):
        if quiet.is_set() and not line.startswith("error:"):
            continue
        with lock:
            sys.stdout.write(prefix + line)
            sys.stdout.flush()
    pipe.close()


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM to every process still running (its whole group), then SIGKILL after a grace."""
    for p in procs:
        if p.poll() is None:
            _signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(p, signal.SIGKILL)
            p.wait()


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:  # exited between the check and the signal
        pass


FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


class _Signalled(Exception):
    """The launcher received one of FORWARDED_SIGNALS."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_signalled(signum, frame):
    raise _Signalled(signum)


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies, however it dies (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the signal handlers below still forward
        pass


def _blame(code: int) -> int:
    """Which failure most likely caused the others (lower first): a process killed from outside
    or crashing (a signal other than SIGABRT), then one that stopped on its own error (status >
    0), then one aborted by jax's runtime because another process failed (SIGABRT)."""
    if code < 0 and -code != signal.SIGABRT:
        return 0
    return 1 if code > 0 else 2


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with status {code}"


def launch(num_processes: int, command: list[str], devices_per_process: int | None = None,
           port: int | None = None) -> int:
    """Runs `command` as processes 0..N-1 of one run on 127.0.0.1; returns the exit status.

    0 when every process exits 0; else the first failing process's status (1 if it was killed),
    after stopping the others and printing which process failed.
    """
    address = f"127.0.0.1:{port or free_port()}"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if devices_per_process is not None:
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
    procs: list[subprocess.Popen] = []
    relays: list[threading.Thread] = []  # one a process: its output, prefixed, to ours
    quiet = threading.Event()
    previous = {sig: signal.signal(sig, _raise_signalled) for sig in FORWARDED_SIGNALS}
    try:
        return _run(procs, relays, num_processes, command, address, env, quiet)
    except _Signalled as e:
        for sig in FORWARDED_SIGNALS:  # a second Ctrl-C must not cut the stopping short
            signal.signal(sig, signal.SIG_IGN)
        quiet.set()
        _stop(procs)
        _drain(relays)  # the workers' last lines (their error lines) before ours
        name = signal.Signals(e.signum).name
        print(f"error: the launcher received {name}; stopped every process. Committed checkpoints are kept: "
              f"rerun the same command to resume", file=sys.stderr, flush=True)
        return 128 + e.signum
    finally:
        _stop(procs)  # nothing outlives the launcher, whatever ends it
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _drain(relays: list[threading.Thread]) -> None:
    """Waits (a little) for the relays to pass on what the exited processes wrote last."""
    for t in relays:
        t.join(timeout=2)


def _run(procs: list[subprocess.Popen], relays: list[threading.Thread], num_processes: int, command: list[str],
         address: str, env: dict, quiet: threading.Event) -> int:
    """`launch` once its signal handlers are set: starts the processes into `procs`, their output
    relays into `relays`, and waits."""
    for i in range(num_processes):
        args = command + [f"--coordinator_address={address}", f"--num_processes={num_processes}",
                          f"--process_id={i}"]
        try:
            # A session of its own: Ctrl-C in the terminal reaches the launcher only, which stops
            # the workers in order; the parent-death signal covers a launcher killed outright.
            proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1, start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as e:
            print(f"error: cannot start process {i} ({args[0]}): {e.strerror}", file=sys.stderr)
            return EXIT_USAGE
        procs.append(proc)
    lock = threading.Lock()
    relays += [threading.Thread(target=_stream, args=(proc.stdout, f"[p{i}] ", lock, quiet), daemon=True)
               for i, proc in enumerate(procs)]
    for thread in relays:  # after every fork: preexec_fn runs while no other thread exists
        thread.start()
    finished: list[int] = []  # process indices in the order they were seen to exit
    while True:
        finished += [i for i, p in enumerate(procs) if p.poll() is not None and i not in finished]
        failed = [i for i in finished if procs[i].returncode != 0]
        if failed or len(finished) == len(procs):
            break
        time.sleep(0.1)
    if failed:  # one failure brings down the others within moments: see them all, then judge
        deadline = time.monotonic() + SETTLE_SECONDS
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        finished += [i for i, p in enumerate(procs) if p.poll() is not None and i not in finished]
        failed = sorted((i for i in finished if procs[i].returncode != 0),
                        key=lambda i: (_blame(procs[i].returncode), finished.index(i)))
    if not failed:
        _drain(relays)
        return 0
    first = failed[0]
    code = procs[first].returncode
    others_running = any(p.poll() is None for p in procs)
    _stop(procs)
    _drain(relays)
    print(f"error: process {first} {_describe(code)}"
          + ("; stopped the other processes" if others_running else "")
          + ". Committed checkpoints are kept: rerun the same command to resume", file=sys.stderr, flush=True)
    return code if code > 0 else 1


def main(argv: list[str] | None = None) -> None:
    options, command = parse_args(sys.argv[1:] if argv is None else argv)
    sys.exit(launch(options.num_processes, command, options.devices_per_process, options.port))


if __name__ == "__main__":
    main()
