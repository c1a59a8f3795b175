"""Every shell block of README.md runs as written, in a fresh directory, with the venv active.

Only what would take minutes is shortened, by flags a user could add: training commands get a
few steps and evaluations of one batch, the BPE a small vocabulary, the reproduction one
cheap row, each benchmark `--help` (a block of them in one process), `tensorboard` its
`--inspect` (which reads the event files and exits). Installs are skipped (the
venv running these tests is the one README's setup makes). The test command and the deploy block
have their own tests (tests/test_repo.py).
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "README.md")) as f:
    README = f.read()
BLOCKS = re.findall(r"```bash\n(.*?)\n```", README, re.S)
STEPS = 4
SHORT = (f" --config.num_train_steps={STEPS} --config.eval_every_steps={STEPS}"
         f" --config.checkpoint_every_steps={STEPS}")
# The classifier's pretrained_bpe reads the pretraining run's tokenizer; both learn a small one.
SMALL_BPE = " --config.tokenizer.vocab_size=300"
# Each evaluation reads one batch of each split (a GAN's FD: 1,000 samples, not 10,000).
ONE_EVAL_BATCH = " --config.eval_batches=1"
# What a block with a chat reads from its terminal.
CHAT_INPUT = "Good morrow, my lord.\nWhat news?\n"
TRAINERS = ("mlp_classifier", "transformer_lm", "transformer_mlm", "transformer_classifier",
            "lstm_forecast", "lstm_chatbot", "gan", "vae")


def _is_install(segment: str) -> bool:
    segment = segment.strip()
    return segment.startswith(("python3 -m venv", "pip ", ".venv/bin/pip", "source .venv/bin/activate"))


def shortened(line: str) -> str:
    """One logical command line of README as the test runs it (see the module docstring)."""
    code, sep, comment = line.partition("  #")
    parts = [p for p in code.split("&&") if not _is_install(p)]
    code = " && ".join(p.strip() for p in parts).replace(".venv/bin/python", "python")
    trainer = re.search(r"python -m experiments\.(\w+)( |$)", code)
    if trainer and trainer.group(1) in TRAINERS and "--help" not in code:
        code += SHORT + ONE_EVAL_BATCH + (SMALL_BPE if "bpe" in code else "")
    if "experiments.reproduce" in code:
        code += " --only=mlp_digits_tuned --seeds=1"
    if re.match(r"python -m benchmarks\.\w+", code):
        code = " ".join(code.split()[:3]) + " --help"
    if code.startswith("tensorboard "):
        code = code.replace("tensorboard ", "tensorboard --inspect ", 1)
    return code


def runnable(block: str) -> str:
    logical = block.replace("\\\n", " ").splitlines()
    lines = [shortened(line) for line in logical if shortened(line).strip()]
    helps = [re.fullmatch(r"python -m (benchmarks\.\w+) --help", line) for line in lines]
    if len(lines) > 1 and all(helps):  # one process asks every benchmark for its --help
        modules = " ".join(m.group(1) for m in helps)
        return (f"python -c 'import runpy, sys\nfor m in \"{modules}\".split():\n    sys.argv = [m, \"--help\"]\n"
                f"    try: runpy.run_module(m, run_name=\"__main__\")\n    except SystemExit as e: assert e.code == 0, m'")
    return "\n".join(lines)


def _selected():
    for i, block in enumerate(BLOCKS):
        if "pytest" in block or ("lab.serve" in block and "curl" in block):
            continue  # tests/test_repo.py runs these
        first = next(line for line in block.splitlines() if line.strip())
        yield pytest.param(block, id=f"block{i}-" + re.sub(r"\W+", "_", first.split("--")[0])[:40].strip("_"))


def test_readme_shell_blocks_name_no_placeholders():
    """A `bash` block is a command to paste; templates (`<name>`, `DIR`) go in `text` blocks."""
    for block in BLOCKS:
        assert not re.search(r"<\w+>|=DIR\b|\.\.\. |\[--", "\n".join(line.split("  #")[0] for line in block.splitlines())), block


@pytest.mark.parametrize("block", list(_selected()))
def test_readme_block_runs_as_written(block, tmp_path):
    script = runnable(block)
    if "fashion" in script and not os.path.isdir("/usr/share/datasets/fashion-mnist"):
        pytest.skip("needs Debian's dataset-fashion-mnist (.ci/run installs it)")
    if "tensorboard" in script:  # something to inspect: the main job, shortened, first
        script = runnable(BLOCKS[0].split("&&")[-1]) + "\n" + script
    venv_bin = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=venv_bin + os.pathsep + os.environ["PATH"], VIRTUAL_ENV=os.path.dirname(venv_bin))
    env["PYTHONPATH"] = ROOT  # this tree's lab and experiments (README's setup installs them editable)
    assert shutil.which("tensorboard", path=env["PATH"]), "the main install lacks the tensorboard command"
    cwd = ROOT if script.startswith("python -m benchmarks") else tmp_path  # scripts of the clone
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, input=CHAT_INPUT, timeout=600)
    assert proc.returncode == 0, (script, proc.stdout[-3000:], proc.stderr[-3000:])
    if "experiments.lstm_chatbot.chat" in script:
        assert proc.stdout.count("\n") >= 2, proc.stdout  # a reply per line
    if "transformer_lm.sample" in script:
        assert "ROMEO:" in proc.stdout
    if "tensorboard --inspect" in script:
        assert "scalars" in proc.stdout or "scalar" in proc.stdout.lower(), proc.stdout[-2000:]
