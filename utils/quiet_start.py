"""Imported first by each entry script: a Ctrl-C in the seconds before :func:`utils.errors.run_cli`
starts (while torch and the libraries load) ends the process as SIGINT's default action does, without
Python's traceback through the imports; ``run_cli`` then restores Python's handler, under which a
Ctrl-C is reported in one line (or, in training, stops at the next step and saves).

It acts only when the program run is one of this repository's scripts: a test or a notebook that
imports a script keeps its own handler. A process that started with SIGINT ignored keeps ignoring it.
"""
import signal
import sys
from pathlib import Path

_main = sys.modules.get("__main__")
_file = getattr(_main, "__file__", None)
_repo = Path(__file__).resolve().parent.parent
if (_file is not None and Path(_file).resolve().parent in (_repo, _repo / "benchmarks")
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
    signal.signal(signal.SIGINT, signal.SIG_DFL)
