"""lab's user-facing error classes: bad input a person can fix, each with a one-line message.

Entry points (the experiments' CLI, the sample CLI) turn exactly these (and a few OS errors such
as a full disk) into one `error: ...` line and a non-zero exit. Anything else, a bug in lab or in
a family's own code (a shape mismatch in a new model, say), keeps its traceback.
"""


import signal
import sys

EXIT_USAGE = 2  # bad flags: nothing ran
EXIT_FAILURE = 1  # the command started and stopped on an error


def exit_with_error(message: str, code: int = EXIT_FAILURE):
    """The end of a command-line tool on bad input: one `error: ...` line on stderr, exit `code`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


class LabError(Exception):
    """Bad input from the user: the message says what is wrong and what to do."""


class ConfigValueError(LabError, ValueError):
    """A config value the run cannot use (wrong type, range or name)."""


class WorkdirConfigError(LabError, ValueError):
    """The workdir holds a run of a different config."""


class CheckpointError(LabError, RuntimeError):
    """A checkpoint that cannot be used: missing, unreadable, or of another model."""


class NonFiniteLossError(LabError, FloatingPointError):
    """A loss, gradient or parameter became NaN or infinite."""


class Interrupted(LabError):
    """SIGINT or SIGTERM stopped the run after saving a checkpoint at `step`."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum  # 130 for SIGINT, 143 for SIGTERM, as the shell reports a kill
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; its checkpoint is saved: "
                         f"rerun the same command to resume")
