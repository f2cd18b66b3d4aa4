"""The shell entry points choose their interpreter: $PYTHON, else the repository's .venv, else python3."""
import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

SCRIPTS = {"hw1_1.sh": ("in", "out.csv"), "hw1_2.sh": ("in", "out"), "hw1_download.sh": ("--help",)}


def fake_python(path, name):
    """An executable that prints which interpreter it is and what it was asked to run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "{name} $*"\n')
    path.chmod(0o755)


def run(script, repo, path_dir, python=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env["PATH"] = f"{path_dir}{os.pathsep}{env['PATH']}"
    if python:
        env["PYTHON"] = str(python)
    proc = subprocess.run(["bash", str(repo / script), *SCRIPTS[script]], env=env, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_the_interpreter_is_python_then_the_venv_then_python3(script, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / script, repo / script)
    (repo / "utils").mkdir()
    shutil.copy(REPO / "utils" / "python.sh", repo / "utils" / "python.sh")  # the choice they share
    fake_python(tmp_path / "bin" / "python3", "system-python3")
    target = str(repo / {"hw1_1.sh": "p1_inference.py", "hw1_2.sh": "p2_inference.py"}.get(script, "hw1_download.py"))

    said = run(script, repo, tmp_path / "bin")  # a fresh clone: no .venv, no $PYTHON
    assert said[:2] == ["system-python3", target]
    fake_python(repo / ".venv" / "bin" / "python", "venv-python")
    said = run(script, repo, tmp_path / "bin")  # after the README's install: the .venv
    assert said[:2] == ["venv-python", target]
    fake_python(tmp_path / "other" / "python", "chosen-python")
    said = run(script, repo, tmp_path / "bin", python=tmp_path / "other" / "python")  # the grader's or the user's
    assert said[:2] == ["chosen-python", target]
    assert said[-len(SCRIPTS[script]):] == list(SCRIPTS[script])  # the arguments pass through unchanged
