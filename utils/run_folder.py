"""A training run's output folder: what it holds, and in which order an epoch writes it.

A run folder holds ``args.json``, ``metrics.jsonl`` (one JSON line per epoch), ``last.pth`` (the
whole state of the latest epoch: what ``--resume`` takes), ``best.pth`` (the weights of the best
epoch and what inference needs, no optimiser: the file to grade with and publish) and
``epoch_NNN.pth`` snapshots (weights, as best.pth, for the report's figures). Each epoch writes
its metrics line first and ``last.pth`` last, every file atomically, so a crash at any moment
leaves loadable checkpoints and a resume that drops the lines it will redo.
"""
import json
import math
import os
from pathlib import Path

from utils.checkpoint import save_checkpoint
from utils.errors import UserError
from utils.io import append_jsonl, atomic_write, check_writable, write_json
from utils.state import inference_checkpoint

RUN_FILES = ("args.json", "metrics.jsonl", "best.pth", "last.pth")


class RunFolder:
    """The output folder of one training run.

    Args:
        path: the folder (created by :meth:`start`, not before).
        resume_epoch: the epoch the run resumes after, or ``None`` for a fresh run.
        overwrite: allow a fresh run to replace the files of an earlier run there.
    """

    def __init__(self, path, *, resume_epoch=None, overwrite=False):
        self.path = Path(path)
        self.resume_epoch = resume_epoch
        check_writable(self.path, "--output-dir", folder=True)
        if resume_epoch is None and not overwrite and (self.path / "last.pth").exists():
            raise UserError(f"--output-dir {self.path} already holds a run; pass --resume "
                            f"{self.path / 'last.pth'} to continue it, --overwrite to replace it, "
                            "or another --output-dir")

    def start(self, args_dict):
        """Create the folder, write ``args.json``, and clear what this run will write anew."""
        self.path.mkdir(parents=True, exist_ok=True)
        metrics = self.path / "metrics.jsonl"
        if self.resume_epoch is None:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
            for snapshot in self.path.glob("epoch_*.pth"):
                snapshot.unlink()
        elif metrics.exists():
            # Lines after the checkpoint's epoch were written by a run that died before its
            # last.pth: those epochs run again, so their old lines go.
            kept = [line for line in metrics.read_text().splitlines() if _epoch_of(line) <= self.resume_epoch]
            with atomic_write(metrics) as f:
                f.write("".join(line + "\n" for line in kept))
        write_json(self.path / "args.json", args_dict)

    def end_epoch(self, record, checkpoint, *, is_best, snapshot):
        """Log one epoch and write its checkpoints (metrics line, best, snapshot, then last).

        ``best.pth`` and the snapshot keep what inference needs, weights included, not the
        optimiser (:func:`utils.state.inference_checkpoint`): graded and published, best.pth
        need not carry slots that double (SGD with momentum) or triple (AdamW) a file. When the epoch is both, the snapshot is a second
        name of ``best.pth`` (a hard link, renamed into place) rather than a second write.
        """
        append_jsonl(self.path / "metrics.jsonl", record)
        best, snap = self.path / "best.pth", self.path / f"epoch_{record['epoch']:03d}.pth"
        weights = inference_checkpoint(checkpoint) if is_best or snapshot else None
        if is_best:
            save_checkpoint(weights, best)
        if snapshot and not (is_best and _link_replace(best, snap)):
            save_checkpoint(weights, snap)
        save_checkpoint(checkpoint, self.path / "last.pth")

    def save_partial(self, checkpoint):
        """Write ``last.pth`` of an epoch stopped part-way (no metrics line, best or snapshot)."""
        save_checkpoint(checkpoint, self.path / "last.pth")


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
