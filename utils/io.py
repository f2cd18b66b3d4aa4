"""Atomic file output: a file either appears complete or not at all, and a failed block leaves no new
folder or file behind (:func:`output_folder`)."""
import contextlib
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

from utils.errors import UserError, brief


@functools.cache
def _umask():
    """The process's umask (read once, at the first file written: reading it means setting it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path, mode="w", **open_kwargs):
    """Open a temporary file beside ``path`` and rename it onto ``path`` when the block succeeds.

    A crash or exception inside the block removes the temporary file and leaves any previous
    ``path`` untouched. The rename is atomic on POSIX because both names share one folder.

    Args:
        path: the final file path; its folder must exist.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        **open_kwargs: passed to ``open`` (``newline=""`` for CSV, say).
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # the rename would replace a device node or a folder link
        raise UserError(f"{path}: not a regular file; not replaced")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates files readable by their owner only; a finished output file gets the
        # permissions an ordinary open() would have given it.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def output_folder(path, *, keep_written=False):
    """The folder ``path`` for a block to write into, created (parents too) where missing; when the
    block fails, what it added goes: the folders it created, with everything in them, or in a folder
    that was there the entries that were not. What the block replaced in place stays replaced (the
    files it writes atomically are whole either way).

    Args:
        path: the folder.
        keep_written: keep the files the block wrote (downloads, worth having on the next try);
            only the folders it made go, where they stay empty.

    Yields:
        ``path`` as a ``Path``.
    """
    path = Path(path).absolute()
    top = next((p for p in reversed((path, *path.parents)) if not p.exists()), None)  # the first to create
    before = None if top is not None else set(os.listdir(path))
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if top is not None and not (keep_written and any(path.iterdir())):
            shutil.rmtree(top, ignore_errors=True)
        elif top is None and not keep_written:
            for name in set(os.listdir(path)) - before:
                entry = path / name
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


def write_json(path, obj):
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def append_jsonl(path, record):
    """Append one JSON line (one record per epoch) and flush it to disk."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def check_writable(path, flag, folder=False):
    """Fail early, creating nothing, if ``path`` (a file or folder to be made) cannot be written.

    Walks up to the nearest existing ancestor and checks it is a writable folder, so a bad output
    path is reported before any work is done rather than after.

    Args:
        path: the output file or folder.
        flag: the flag or argument that named it, for the message.
        folder: ``path`` is to be a folder: an existing file there is refused too.
    """
    path = Path(path).absolute()
    if folder and path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a folder")
    if not folder and path.exists() and not path.is_file() and not path.is_dir():
        raise UserError(f"{flag} {path}: not a regular file (a device or a socket), which a write would replace")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if parent == path and path.is_dir():
        ok, where = os.access(path, os.W_OK | os.X_OK), path
    elif parent == path:
        ok, where = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK), path.parent
    else:
        ok, where = parent.is_dir() and os.access(parent, os.W_OK | os.X_OK), parent
    if not ok:
        raise UserError(f"{flag} {path}: cannot write there ({where} is not a writable folder)")
    # Permission bits are not the whole story: root passes os.access everywhere, and /proc, /sys or
    # a read-only mount refuse new files all the same. Creating one is the only real test.
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot write there (no file can be created in {where}: "
                        f"{e.strerror or brief(e)})") from None
