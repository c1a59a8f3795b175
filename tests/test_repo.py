"""The repository keeps its promises: .ci/run runs the README's test command."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    blocks = re.findall(r"```bash\n(.*?)\n```", read("README.md"), re.S)
    test_commands = [b for b in blocks if "pytest" in b]
    assert len(test_commands) == 1, "README must state exactly one test command"
    ci = read(".ci/run")
    assert test_commands[0].strip() in ci, ".ci/run no longer runs README's test command"


def test_readme_main_command_runs_the_digits_experiment():
    blocks = re.findall(r"```bash\n(.*?)\n```", read("README.md"), re.S)
    assert "experiments.mlp_classifier --workdir=" in blocks[0]
