"""Progress lines of the slow phases of a start (building data or a tokenizer, encoding a corpus):
a line that says what is being done before the work, and one with how long it took after it.

    with progress.phase("training the BPE tokenizer on the train text", "trained the BPE tokenizer") as p:
        tokenizer = train(...)
        p.note = f"kept in {path}"

prints, to stdout and flushed at once, as the loop prints `compiling the train step ...` and
`compiled the train step in T s`:

    training the BPE tokenizer on the train text ...
    trained the BPE tokenizer in 2.4 s (kept in runs/x/tokenizer.json)

A phase that raises prints no second line (the error says what happened). In a multi-process
run only process 0 prints, as the loop does. This module imports nothing of lab, so every
layer may use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator


@dataclasses.dataclass
class Phase:
    """A running phase: `note` (set inside the block) is added to its closing line; `seconds`
    holds its duration once the block has ended."""

    doing: str
    done: str
    note: str = ""
    seconds: float | None = None


def _prints() -> bool:
    """False in the processes other than 0 of a multi-process JAX run (checked without starting
    JAX's backends: a process that has not joined a distributed run prints)."""
    jax = sys.modules.get("jax")
    if jax is None:
        return True
    try:
        if not jax.distributed.is_initialized():
            return True
        return jax.process_index() == 0
    except Exception:  # a JAX without these functions, or one that cannot tell: print
        return True


def duration(seconds: float) -> str:
    """`seconds` for a progress line: '0.4 s', '12.3 s', '2 min 05 s'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"


def say(line: str) -> None:
    """Prints one progress line (stdout, flushed; only process 0 of a multi-process run)."""
    if _prints():
        print(line, flush=True)


@contextlib.contextmanager
def phase(doing: str, done: str | None = None) -> Iterator[Phase]:
    """Prints `doing ...` before the block and `done in T s` (with the block's `note` in
    parentheses, if it set one) after it; `done` defaults to `doing`. Yields the `Phase`."""
    p = Phase(doing, done or doing)
    say(f"{doing} ...")
    start = time.perf_counter()
    yield p
    p.seconds = time.perf_counter() - start
    say(f"{p.done} in {duration(p.seconds)}" + (f" ({p.note})" if p.note else ""))
