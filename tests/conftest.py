"""Shared fixtures: small generated image folders and a helper to run the scripts as a user would."""
import io
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The runs the tests train write about 10 GB of checkpoints in all (fsynced: the code's own atomic
# writes); in memory (/dev/shm) those writes take about a third less of the suite's time than on a
# disk. A folder of this session's own there, when it has room for the largest test's files
# (strong BEiT's, about 1.5 GB, with the session's runs), removed after a run that passed.
_RAM_FOLDER, _RAM_NEEDED = Path("/dev/shm"), 4 << 30
# A script's flags for a run on the CPU in float32: --amp auto would pick bf16 on a CPU that computes
# it natively, and the tests compare with float32 computations and must give one result on every CPU.
CPU_FP32 = ("--device", "cpu", "--amp", "off")


def pytest_configure(config):
    if config.option.basetemp is not None or not _RAM_FOLDER.is_dir() or not os.access(_RAM_FOLDER, os.W_OK):
        return
    if shutil.disk_usage(_RAM_FOLDER).free >= _RAM_NEEDED:
        config.option.basetemp = tempfile.mkdtemp(prefix="pytest-", dir=_RAM_FOLDER)
        config._ram_basetemp = config.option.basetemp


def pytest_unconfigure(config):
    folder = getattr(config, "_ram_basetemp", None)
    if folder is not None and getattr(config, "_passed", False):  # a failed run's files stay for a look
        shutil.rmtree(folder, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    session.config._passed = exitstatus == 0


def write_p1_folder(folder, classes, per_class, seed=0, size=32):
    """Write ``per_class`` PNGs for each class in ``classes`` as ``{label}_{id}.png``.

    Each class has its own colour and a bright bar at its own position plus noise, so a small
    network separates them within a few epochs.
    """
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for label in classes:
        colour = np.array([(label * 53) % 256, (label * 97 + 80) % 256, (label * 151 + 160) % 256])
        for i in range(per_class):
            img = rng.normal(0, 25, (size, size, 3)) + colour
            img[:, (label * 3) % size: (label * 3) % size + 3] = 255
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{label}_{i}.png")
    return folder


@pytest.fixture(scope="session")
def p1_data(tmp_path_factory):
    """A tiny Problem 1 dataset: 4 classes, 12 training and 4 validation images each."""
    root = tmp_path_factory.mktemp("p1_data")
    train = write_p1_folder(root / "train_50", range(4), 12, seed=0)
    val = write_p1_folder(root / "val_50", range(4), 4, seed=1)
    return train, val


@pytest.fixture(scope="session")
def p1_run(p1_data, tmp_path_factory):
    """A finished 4-epoch VGG13 run on :func:`p1_data` (snapshots 1, 2, 4); returns its folder."""
    import p1_train

    out = tmp_path_factory.mktemp("p1_run")
    train, val = p1_data
    args = p1_train.get_args_parser().parse_args([
        "--train-dir", str(train), "--val-dir", str(val), "--output-dir", str(out),
        "--epochs", "4", "--batch-size", "16", *CPU_FP32, "--no-progress"])
    p1_train.main(args)
    return out


def run_script(*argv, env=None, cwd=None):
    """Run a repository script in a fresh interpreter; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    cmd = [sys.executable, *map(str, argv)] if str(argv[0]).endswith(".py") else list(map(str, argv))
    return subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=300)


def run_main(script, *argv):
    """Run a script's command line in this process, as ``python3 script.py argv...`` would.

    Args:
        script: the imported script module (``get_args_parser`` and ``main``).
        argv: its arguments.

    Returns:
        A CompletedProcess: the exit code ``run_cli`` (or argparse) gives, and what was printed.
    """
    import warnings

    from utils.errors import run_cli

    out, err = io.StringIO(), io.StringIO()
    saved, showwarning = sys.argv, warnings.showwarning
    command = [Path(script.__file__).name, *map(str, argv)]
    sys.argv = command  # argparse names the script from it
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = run_cli(script.main, script.get_args_parser(), sys.argv[1:])
            except SystemExit as e:
                code = e.code
    finally:
        sys.argv, warnings.showwarning = saved, showwarning
    return subprocess.CompletedProcess(command, code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc, *needles):
    """The process failed with exactly one line on stderr that names every needle."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], lines[0]


@pytest.fixture(scope="session")
def p2_data(tmp_path_factory):
    """A tiny Problem 2 dataset of 64x64 procedural tiles: 8 training and 4 validation pairs."""
    from datasets.synthetic import write_tiles

    root = tmp_path_factory.mktemp("p2_data")
    return (write_tiles(root / "train", 8, size=64, seed=0),
            write_tiles(root / "validation", 4, size=64, seed=1, start=100))


@pytest.fixture(scope="session")
def p2_run(p2_data, tmp_path_factory):
    """A finished 2-epoch LR-ASPP run (random init) on :func:`p2_data`; returns its folder.

    LR-ASPP, not FCN32s: its checkpoints are 13 MB, not 0.5-1 GB, which the many tests that load
    this run feel; FCN32s is trained by its own tests."""
    import p2_train

    out = tmp_path_factory.mktemp("p2_run")
    args = p2_train.get_args_parser().parse_args([
        "--model", "lraspp", "--train-dir", str(p2_data[0]), "--val-dir", str(p2_data[1]), "--output-dir", str(out),
        "--tile-size", "64", "--no-pretrained", "--epochs", "2", "--batch-size", "4",
        "--opt", "adamw", "--lr", "1e-4", *CPU_FP32, "--no-progress"])
    p2_train.main(args)
    return out
