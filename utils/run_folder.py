"""A training run's folder: the one module that names, writes and reads its files (the README
points here). Training writes through :class:`RunFolder`; the report figures and the scripts
read through it. A run folder holds:

- ``args.json`` (:data:`ARGS`): the run's flags, written at its start; ``p1_train.py --config
  RUN/args.json`` reruns it;
- ``metrics.jsonl`` (:data:`METRICS`): one JSON line per finished epoch;
- ``last.pth`` (:data:`LAST`): the whole state of the latest epoch, or of an epoch stopped
  part-way (what ``--resume`` takes);
- ``best.pth`` (:data:`BEST`): the weights of the best epoch and what inference needs, no
  optimiser (the file to grade with and publish);
- ``epoch_NNN.pth`` (:data:`SNAPSHOT`): snapshots of chosen epochs, as ``best.pth``, for the
  report's figures.

- ``.lock`` (:data:`LOCK`): the process training into the folder holds an exclusive ``flock`` on
  it, and writes its process id there; the kernel drops the lock when that process ends, however
  it ends (``kill -9`` included), so a second run into the folder is refused while the first runs,
  and never after. A run that ends removes the file; one killed leaves it, holding no lock.

Each epoch writes its metrics line first and ``last.pth`` last, every file atomically, so a crash
at any moment leaves loadable checkpoints, and a resume drops the lines it will redo; a fresh run
that fails before its first checkpoint leaves nothing (:meth:`RunFolder.release`). What a
checkpoint holds is declared in :mod:`utils.checkpoint`.
"""
import json
import math
import os
import re
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs into one folder are not kept apart there
    fcntl = None

from utils.checkpoint import PROBLEM_NAMES, inference_checkpoint, save_checkpoint
from utils.errors import UserError
from utils.io import append_jsonl, atomic_write, check_writable, write_json

ARGS, METRICS, BEST, LAST, LOCK = "args.json", "metrics.jsonl", "best.pth", "last.pth", ".lock"
SNAPSHOT = "epoch_{:03d}.pth"
SNAPSHOT_RE = re.compile(r"epoch_(\d+)\.pth")
# A run's problem, told by the validation metric it logs.
METRIC_OF = {"p1": "acc", "p2": "miou"}


class RunFolder:
    """The folder of one training run.

    Args:
        path: the folder (a new run creates it at :meth:`start`, not before).
    """

    def __init__(self, path):
        self.path = Path(path)
        self._lock = None  # the descriptor holding LOCK while this process trains here
        self._fresh = None  # at start(): what a fresh run that fails before a checkpoint removes

    def __repr__(self):
        return f"RunFolder({str(self.path)!r})"

    @property
    def last(self):
        return self.path / LAST

    @property
    def best(self):
        return self.path / BEST

    # reading

    def read_args(self, flag="--run"):
        """The run's flags (its ``args.json``: :func:`read_args_file`), or ``None`` where it has none."""
        return read_args_file(self.path, flag) if (self.path / ARGS).is_file() else None

    def read_metrics(self):
        """The records of the run's ``metrics.jsonl`` (none before its first epoch ends), but a last
        line without its newline (torn by a kill while it was written).

        Raises:
            UserError: naming the file and line, for a line that is not an epoch's record.
        """
        path = self.path / METRICS
        if not path.is_file():
            return []
        lines = path.read_text(errors="replace").split("\n")[:-1]  # the part after the last newline is torn
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or "epoch" not in record:
                raise UserError(f"{path}: line {number} is not an epoch's record ({line[:40]!r})")
            records.append(record)
        return records

    def snapshots(self):
        """``{epoch: path}`` of the run's ``epoch_NNN.pth`` files, by epoch."""
        found = {int(m.group(1)): p for p in self.path.iterdir() if (m := SNAPSHOT_RE.fullmatch(p.name))}
        return dict(sorted(found.items()))

    def check(self, flag, problem=None):
        """Refuse a folder that holds no run (no ``metrics.jsonl``), or, given ``problem``, a run of
        the other problem, in one line naming ``flag``; returns the run's metric (``acc``, ``miou``)."""
        if not self.path.is_dir():
            raise UserError(f"{flag} {self.path}: no such run folder")
        if not (self.path / METRICS).is_file():
            raise UserError(f"{flag} {self.path}: not a run folder (no {METRICS})")
        records = self.read_metrics()
        if not records:
            raise UserError(f"{flag} {self.path}: no epochs in its {METRICS} yet")
        found = [p for p, m in METRIC_OF.items() if f"val_{m}" in records[0]]
        if not found:
            raise UserError(f"{flag} {self.path}: its {METRICS} has neither val_acc nor val_miou")
        if problem is not None and found[0] != problem:
            raise UserError(f"{flag} {self.path}: a {PROBLEM_NAMES[found[0]]} run (it logs val_{METRIC_OF[found[0]]}); "
                            f"this needs a {PROBLEM_NAMES[problem]} run, of {problem}_train.py")
        return METRIC_OF[found[0]]

    # writing (the training run's main process)

    def check_new(self, *, resumed, overwrite):
        """Refuse an unwritable folder, one a running process trains into, or one holding another run
        (unless ``overwrite``), before anything is created."""
        check_writable(self.path, "--output-dir", folder=True)
        if (self.path / LOCK).is_file():
            descriptor = os.open(self.path / LOCK, os.O_RDONLY)
            try:
                self._refuse_if_held(descriptor)
            finally:
                os.close(descriptor)
        if not resumed and not overwrite and self.last.exists():
            raise UserError(f"--output-dir {self.path} already holds a run; pass --resume {self.last} to "
                            "continue it, --overwrite to replace it, or another --output-dir")

    def start(self, args, *, resume_epoch=None):
        """Create the folder, write ``args.json``, and clear what this run will write anew.

        Args:
            args: the run's flags as JSON values.
            resume_epoch: the epoch the run resumes after, or ``None`` for a fresh run.
        """
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._hold()
        self._fresh = None if resume_epoch is not None else {"folder": created}
        metrics = self.path / METRICS
        if resume_epoch is None:
            for name in (ARGS, METRICS, BEST, LAST):
                (self.path / name).unlink(missing_ok=True)
            for snapshot in self.snapshots().values():
                snapshot.unlink()
        elif metrics.exists():
            # Lines after the checkpoint's epoch were written by a run that died before its
            # last.pth: those epochs run again, so their old lines go.
            kept = [line for line in metrics.read_text().splitlines() if _epoch_of(line) <= resume_epoch]
            with atomic_write(metrics) as f:
                f.write("".join(line + "\n" for line in kept))
        write_json(self.path / ARGS, args)

    def release(self, *, failed=False):
        """Let another run into the folder (this process's end does it too), and remove the lock file.

        Args:
            failed: the run ended on an error. A fresh run that wrote no checkpoint then leaves
                nothing: its ``args.json`` and metrics go, and the folder where it made it.
        """
        if self._lock is None:
            return
        (self.path / LOCK).unlink(missing_ok=True)
        os.close(self._lock)
        self._lock = None
        if failed and self._fresh is not None and not self.last.exists():
            for name in (ARGS, METRICS):
                (self.path / name).unlink(missing_ok=True)
            if self._fresh["folder"] and not any(self.path.iterdir()):
                self.path.rmdir()

    def _hold(self):
        """Take the folder's lock for this process, or refuse a folder another process trains into."""
        if fcntl is None or self._lock is not None:
            return
        descriptor = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._refuse_if_held(descriptor)
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(descriptor)
            raise
        self._lock = descriptor

    def _refuse_if_held(self, descriptor):
        """Lock ``descriptor`` (the folder's LOCK) if no other process holds it; refuse in one line if one does.

        Raises:
            UserError: naming the folder and, from the file, the process holding it.
        """
        if fcntl is None:
            return
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip()
            raise UserError(f"--output-dir {self.path}: another run is training there (process "
                            f"{holder or 'unknown'}); wait for it to end, stop it, or choose another --output-dir")

    def end_epoch(self, record, checkpoint, *, is_best, snapshot):
        """Log one epoch and write its checkpoints (metrics line, best, snapshot, then last).

        ``best.pth`` and the snapshot keep what inference needs, weights included, not the
        optimiser (:func:`utils.checkpoint.inference_checkpoint`): graded and published, best.pth
        need not carry slots that double (SGD with momentum) or triple (AdamW) a file. When the
        epoch is both, the snapshot is a second name of ``best.pth`` (a hard link, renamed into
        place) rather than a second write.
        """
        append_jsonl(self.path / METRICS, record)
        snap = self.path / SNAPSHOT.format(record["epoch"])
        weights = inference_checkpoint(checkpoint) if is_best or snapshot else None
        if is_best:
            save_checkpoint(weights, self.best)
        if snapshot and not (is_best and _link_replace(self.best, snap)):
            save_checkpoint(weights, snap)
        save_checkpoint(checkpoint, self.last)

    def save_partial(self, checkpoint):
        """Write ``last.pth`` of an epoch stopped part-way (no metrics line, best or snapshot)."""
        save_checkpoint(checkpoint, self.last)


def read_args_file(path, flag):
    """The flags of a run's ``args.json`` (``path``, or the run folder that holds it), for ``flag``.

    Raises:
        UserError: naming ``flag`` and the file, when it is missing or is not a run's flags.
    """
    path = Path(path)
    if path.is_dir():
        path = path / ARGS
    if not path.is_file():
        raise UserError(f"{flag} {path}: no such file")
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{flag} {path}: not a run's {ARGS} ({type(e).__name__}: {e})") from None
    if not isinstance(saved, dict) or "model" not in saved:
        raise UserError(f"{flag} {path}: not a run's {ARGS} (no model entry)")
    return saved


def _epoch_of(line):
    """The epoch of a metrics line; infinity for a line torn by a kill during its write."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def _link_replace(src, dst):
    """Atomically make ``dst`` another name of ``src``; False where hard links are unsupported."""
    tmp = dst.with_name(f".{dst.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
