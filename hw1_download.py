"""Fetch the trained checkpoints and, with --data, the course data: resumable and sha256-verified.

Usage:
    bash hw1_download.sh                       # checkpoints/p1_best.pth and p2_best.pth
    bash hw1_download.sh --data                # also hw1_data/p1_data and hw1_data/p2_data
    bash hw1_download.sh --only hw1_data.zip   # the data alone
    python3 hw1_download.py --publish runs/p1_beit/best.pth --name p1_best.pth --url URL
    HW1_MIRROR=http://host/dir bash hw1_download.sh   # every file from http://host/dir/<name>
    python3 hw1_download.py --pretrained weights      # pretrained weights for offline training

What comes from where is the manifest, checkpoints.txt: one line per file, ``name url sha256``
(``-`` where one is not known yet). A transfer that breaks off resumes from <dest>/.<name>.part on
the next attempt or run (an HTTP Range request); transient failures (connection, timeout, a body
cut short, HTTP 5xx) are retried with back-off, HTTP 4xx is not. A file reaches its final name
only once its sha256 matches the manifest's; a file already there whose sha256 matches is kept.
The data (hw1_data.zip) comes from Google Drive through gdown (pip install gdown), or over plain
HTTP from HW1_MIRROR; it is unpacked into a temporary folder beside hw1_data/ and moved into place
only when complete.

Pretrained weights for machines without internet: on a machine with it, run
    python3 hw1_download.py --pretrained weights
It saves the state dicts of timm's BEiT (beit_base_patch16_224.in22k_ft_in22k), torchvision's
VGG16 (VGG16_Weights.IMAGENET1K_V1, for fcn32s), DeepLabv3-ResNet50
(DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1) and MobileNetV3-Large
(MobileNet_V3_Large_Weights.IMAGENET1K_V1, for lraspp) in weights/ and prints, for each, the
training command that loads it offline with --pretrained-file. Or fill the libraries' own caches:
run it (or a training run) online with TORCH_HOME=DIR/torch HF_HOME=DIR/hf, copy DIR, and train
offline with the same two variables plus HF_HUB_OFFLINE=1, using --pretrained as usual.
"""
import utils.quiet_start  # noqa: F401  (first: a Ctrl-C while the libraries load exits without a traceback)
import argparse
import hashlib
import http.client
import os
import re
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from utils.args import REPO, bars_disabled, check_positive, make_parser
from utils.errors import Interrupted, UserError, brief, run_cli
from utils.io import atomic_write, check_writable, output_folder

DATA_NAME = "hw1_data.zip"
DATA_FOLDERS = ("p1_data", "p2_data")
GDRIVE = "gdrive:"
CHUNK = 1 << 20
# Worth retrying besides every 5xx: the server asks the client to come back later.
RETRY_STATUS = {408, 425, 429}


@dataclass(frozen=True)
class Entry:
    """One manifest line: a file name, where it comes from and its sha256 (``None``: not known)."""

    name: str
    url: str | None
    sha256: str | None


@dataclass(frozen=True)
class Policy:
    """How transfers are made: retries after the first attempt, back-off, timeout, progress bar."""

    retries: int
    retry_delay: float
    timeout: float
    progress: bool


class TransferError(Exception):
    """A failed HTTP transfer; ``transient`` ones are retried."""

    def __init__(self, reason, transient):
        super().__init__(reason)
        self.transient = transient


def get_args_parser():
    parser = make_parser(__doc__, [])
    parser.add_argument("--manifest", type=Path, default=REPO / "checkpoints.txt",
                        help="list of files: 'name url sha256' per line, '-' for unknown, '#' comments")
    parser.add_argument("--dest", type=Path, default=REPO / "checkpoints",
                        help="folder for the checkpoints (where hw1_1.sh and hw1_2.sh look)")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="fetch these manifest entries only (default: every checkpoint; "
                             f"{DATA_NAME} among them means the data)")
    parser.add_argument("--data", default=False, action=argparse.BooleanOptionalAction,
                        help=f"also fetch the course data ({DATA_NAME}) and unpack it into "
                             "<data-root>/hw1_data/p1_data and p2_data (skipped when both exist)")
    parser.add_argument("--data-root", type=Path, default=REPO,
                        help="folder that receives hw1_data/ (and the zip while it is unpacked)")
    g = parser.add_argument_group("transfers")
    g.add_argument("--retries", type=int, default=4,
                   help="retries of a transient failure (connection, timeout, cut body, HTTP 5xx) per file")
    g.add_argument("--retry-delay", type=float, default=1.0,
                   help="seconds before the first retry, doubled before each next one")
    g.add_argument("--timeout", type=float, default=60.0, help="seconds a connection may stay silent")
    g.add_argument("--progress", default=None, action=argparse.BooleanOptionalAction,
                   help="show a progress bar for each transfer (default: when stderr is a terminal)")
    g = parser.add_argument_group("other modes (download nothing from the manifest)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--publish", nargs="+", type=Path, metavar="FILE",
                      help="print the manifest line ('name url sha256  # size') of each of your own "
                           "files (a run's best.pth), to paste into checkpoints.txt")
    mode.add_argument("--pretrained", type=Path, metavar="DIR",
                      help="save BEiT, VGG16, DeepLabv3 and MobileNetV3 pretrained weights into DIR (needs internet) "
                           "and print the --pretrained-file command for each")
    g.add_argument("--name", help="with --publish of one file: its manifest name (default: the file's "
                                  "name), e.g. p1_best.pth")
    g.add_argument("--url", help="with --publish of one file: where it was uploaded (default: '-')")
    return parser


def read_manifest(path):
    """Parse a manifest into ``{name: Entry}``.

    Args:
        path: the manifest; blank lines and everything from a ``#`` word on are ignored.

    Raises:
        UserError: naming the file and line of anything malformed.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"--manifest {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--manifest {path}: unreadable ({brief(e)})") from None
    entries = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        comment = next((i for i, f in enumerate(fields) if f.startswith("#")), len(fields))
        fields = fields[:comment]
        if not fields:
            continue
        where = f"{path} line {number}"
        if len(fields) != 3:
            raise UserError(f"{where}: expected 'name url sha256' ('-' where unknown), got {len(fields)} fields")
        name, url, sha256 = fields
        check_name(name, where)
        if url != "-" and not (is_http(url) or name == DATA_NAME and url.startswith(GDRIVE)):
            raise UserError(f"{where}: {url!r} is not an http(s) URL or '-'")
        sha256 = sha256.lower()
        if sha256 != "-" and not re.fullmatch("[0-9a-f]{64}", sha256):
            raise UserError(f"{where}: {sha256!r} is not a sha256 (64 hex digits) or '-'")
        if name in entries:
            raise UserError(f"{where}: {name} is listed twice")
        entries[name] = Entry(name, None if url == "-" else url, None if sha256 == "-" else sha256)
    return entries


def check_name(name, where):
    if name != PurePosixPath(name).name or name.startswith("."):
        raise UserError(f"{where}: {name!r} is not a plain file name")


def is_http(url):
    return urllib.parse.urlsplit(url).scheme in ("http", "https")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def megabytes(size):
    return f"{size / 1e6:.1f} MB"


def keep_present(path, sha256):
    """Whether a file already at ``path`` can stay: its sha256 matches, or none is known."""
    if not path.is_file():
        return False
    if sha256 is None:
        print(f"{path.name}: present, kept (the manifest has no sha256 to check it against)", flush=True)
        return True
    if sha256_of(path) == sha256:
        print(f"{path.name}: present, sha256 verified", flush=True)
        return True
    print(f"{path.name}: present but its sha256 does not match the manifest; downloading it again", flush=True)
    return False


def _content_range_start(value):
    try:
        return int(value.split()[1].split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return None


def transfer(url, part, *, name, timeout, progress):
    """One HTTP attempt: append to ``part`` from where it ends (a Range request), or start it afresh.

    Raises:
        TransferError: on any failure; the bytes received so far stay in ``part``.
    """
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "hw1_download.py", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:
            return  # nothing past the end of the part: it already holds the whole file
        raise TransferError(f"HTTP {e.code} {e.reason}", e.code >= 500 or e.code in RETRY_STATUS) from None
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, reset, timed out
        raise TransferError(brief(getattr(e, "reason", e)), True) from None
    with response:
        if have and response.status != 206:
            print(f"{name}: the server ignored the request to resume at byte {have}; starting over", flush=True)
            have = 0
        elif have and _content_range_start(response.headers.get("Content-Range")) != have:
            part.unlink()
            raise TransferError("the server resumed at another offset than asked", True)
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        got = 0
        with open(part, "ab" if have else "wb") as f, \
                tqdm(total=None if expected is None else have + expected, initial=have, desc=name, unit="B",
                     unit_scale=True, unit_divisor=1024, disable=bars_disabled(progress), leave=False) as bar:
            try:
                while block := response.read(CHUNK):
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as e:  # reset, timed out, IncompleteRead
                raise TransferError(f"connection lost after {have + got} bytes ({brief(e)})", True) from None
    if expected is not None and got < expected:
        raise TransferError(f"transfer cut short at {have + got} of {have + expected} bytes", True)


def transfer_with_retries(url, part, name, policy):
    """:func:`transfer`, retrying transient failures with doubling delays; one-line error at the end."""
    for attempt in range(policy.retries + 1):
        try:
            return transfer(url, part, name=name, timeout=policy.timeout, progress=policy.progress)
        except TransferError as e:
            if not e.transient:
                raise UserError(f"{name}: download from {url} failed: {e}") from None
            if attempt == policy.retries:
                kept = part.stat().st_size if part.is_file() else 0
                resume = f"; run again to resume from the {kept} bytes in {part}" if kept else ""
                tries = f"{attempt + 1} attempts" if attempt else "1 attempt"
                raise UserError(f"{name}: download from {url} failed after {tries}: {e}{resume}") from None
            wait = policy.retry_delay * 2 ** attempt
            print(f"{name}: {e}; retry {attempt + 1}/{policy.retries} in {wait:g} s", flush=True)
            time.sleep(wait)


def download(name, url, sha256, folder, policy):
    """Fetch ``url`` into ``folder/name`` through ``folder/.name.part``, renamed once verified.

    A part left by an earlier run is resumed; if the resumed file fails its sha256 it is fetched
    once more from the start. A file that fails its sha256 is deleted, never renamed into place.

    Returns:
        The final path.
    """
    final, part = folder / name, folder / f".{name}.part"
    for _ in range(2):
        resumed = part.is_file() and part.stat().st_size > 0
        try:
            transfer_with_retries(url, part, name, policy)
        except KeyboardInterrupt:
            kept = part.stat().st_size if part.is_file() else 0
            raise Interrupted(f"{name}: interrupted; the {kept} bytes received are kept in {part}, and the "
                              "next run resumes from there", signal.SIGINT) from None
        digest = sha256_of(part)
        if sha256 in (None, digest):
            break
        part.unlink()
        if not resumed:
            raise UserError(f"{name}: the file from {url} has sha256 {digest}, the manifest expects {sha256}; "
                            "deleted it")
        print(f"{name}: sha256 mismatch after resuming an earlier partial download; downloading it afresh",
              flush=True)
    os.replace(part, final)
    check = "sha256 verified" if sha256 else f"sha256 {digest} (the manifest has none to verify)"
    print(f"{name}: downloaded {megabytes(final.stat().st_size)} from {url}, {check}", flush=True)
    return final


def how_to_fill(manifest, names, dest):
    """The one-line error for entries that have no URL yet."""
    first = names[0]
    run = f"runs/{first[:2]}_..." if first[:2] in ("p1", "p2") else "runs/..."
    return UserError(
        f"{manifest}: no URL for {', '.join(names)} yet. To fill a line: train, copy the run's best.pth, "
        f"upload it where plain HTTP(S) serves it, run `python3 hw1_download.py --publish {run}/best.pth "
        f"--name {first} --url URL` and paste the printed line into {manifest.name} (or copy your own "
        f"best.pth to {dest / first}, or set HW1_MIRROR=URL)")


def source(entry, mirror):
    """Where ``entry`` comes from: the mirror's ``URL/<name>`` when one is set, else its own URL."""
    return f"{mirror.rstrip('/')}/{urllib.parse.quote(entry.name)}" if mirror else entry.url


def gdrive_download(file_id, path, sha256, progress):
    """Fetch a Google Drive file with gdown (resumable across runs), then check its sha256."""
    try:
        import gdown
    except ImportError:
        raise UserError(f"{DATA_NAME} comes from Google Drive through gdown, which is not installed: "
                        "pip install gdown (or set HW1_MIRROR=URL)") from None
    url = f"https://drive.google.com/uc?id={file_id}"
    try:
        out, why = gdown.download(id=file_id, output=str(path), quiet=not progress, resume=True), "no file"
    except Exception as e:  # gdown raises its own errors, requests' and OSErrors
        out, why = None, brief(e)
    if not out or not path.is_file():
        raise UserError(f"{DATA_NAME}: download from {url} (gdown) failed: {why}; run again to resume, set "
                        f"HW1_MIRROR=URL, or fetch it yourself and put it at {path} (it is then unpacked and deleted)")
    digest = sha256_of(path)
    if sha256 not in (None, digest):
        path.unlink()
        raise UserError(f"{DATA_NAME}: the file from {url} has sha256 {digest}, the manifest expects {sha256}; "
                        "deleted it")
    check = "sha256 verified" if sha256 else f"sha256 {digest} (the manifest has none to verify)"
    print(f"{DATA_NAME}: downloaded {megabytes(path.stat().st_size)} from {url}, {check}", flush=True)


def data_prefix(names):
    """The folders above ``p1_data`` and ``p2_data`` inside the zip (``("hw1_data",)``, say), or None."""
    seen = {}
    for name in names:
        parts = PurePosixPath(name).parts
        if parts[:1] == ("__MACOSX",):
            continue
        for i, part in enumerate(parts):
            if part in DATA_FOLDERS:
                seen.setdefault(parts[:i], set()).add(part)
                break
    found = [prefix for prefix, folders in seen.items() if folders == set(DATA_FOLDERS)]
    return min(found, key=len) if found else None


def unpack(zip_path, target):
    """Extract ``p1_data`` and ``p2_data`` from the zip into ``target``, wherever they sit inside it.

    The zip is checked first (a bad one is removed); extraction goes to a temporary folder beside
    ``target`` and each folder moves into place only when all of it is there.
    """
    def bad(why):
        zip_path.unlink()
        return UserError(f"{zip_path}: {why}; removed it, run again to download it afresh")

    try:
        with zipfile.ZipFile(zip_path) as z:
            broken, names = z.testzip(), z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise bad(f"not a valid zip ({brief(e)})") from None
    if broken:
        raise bad(f"not a valid zip (member {broken} fails its CRC check)")
    prefix = data_prefix(names)
    if prefix is None:
        raise bad(f"holds no {' and '.join(DATA_FOLDERS)} folders")
    depth = len(prefix)
    members = [n for n in names if (parts := PurePosixPath(n).parts)[:depth] == prefix
               and parts[depth:depth + 1] in [(folder,) for folder in DATA_FOLDERS]]
    staging = Path(tempfile.mkdtemp(prefix=".hw1_data.", dir=target.parent))
    try:
        with zipfile.ZipFile(zip_path) as z:
            z.extractall(staging, members)
        target.mkdir(exist_ok=True)
        for folder in DATA_FOLDERS:
            if not (target / folder).exists():
                os.replace(staging.joinpath(*prefix, folder), target / folder)
    except OSError as e:
        raise UserError(f"{zip_path}: unpacking into {target.parent} failed ({brief(e)})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"hw1_data: unpacked {' and '.join(DATA_FOLDERS)} into {target}", flush=True)


def fetch_data(entry, root, mirror, policy):
    """Download the course data and unpack it into ``root/hw1_data``, unless both folders are there."""
    target = root / "hw1_data"
    if all((target / folder).is_dir() for folder in DATA_FOLDERS):
        print(f"hw1_data: present in {root}, skipped", flush=True)
        return "present"
    zip_path = root / DATA_NAME
    if not keep_present(zip_path, entry.sha256):
        zip_path.unlink(missing_ok=True)  # a mismatched zip; gdown would take it as finished
        url = source(entry, mirror)
        if url is None:
            raise UserError(f"--data: the manifest has no URL for {DATA_NAME}")
        if url.startswith(GDRIVE):
            gdrive_download(url[len(GDRIVE):], zip_path, entry.sha256, policy.progress)
        else:
            download(DATA_NAME, url, entry.sha256, root, policy)
    unpack(zip_path, target)
    zip_path.unlink()
    return "unpacked"


def publish(files, name, url):
    """Print the manifest line of each of the user's own files; returns the lines."""
    if len(files) > 1 and (name or url):
        raise UserError(f"--name and --url describe one file; --publish got {len(files)}")
    if url and not is_http(url):
        raise UserError(f"--url {url}: not an http(s) URL")
    for path in files:
        if not path.is_file():
            raise UserError(f"--publish {path}: no such file")
        check_name(name or path.name, "--name" if name else f"--publish {path}")
    lines = [f"{name or path.name} {url or '-'} {sha256_of(path)}  # {megabytes(path.stat().st_size)}"
             for path in files]
    print("\n".join(lines), flush=True)
    return lines


def pretrained_sources(progress):
    """``(model, training script, file name, fetch)`` for every model with library weights.

    ``fetch()`` returns the state dict that the model's ``--pretrained-file`` expects: timm's full
    BEiT (its 21k-class head is dropped on loading) and torchvision's weights files as they are.
    """
    import timm
    from huggingface_hub.utils import logging as hub_logging
    from torchvision.models import MobileNet_V3_Large_Weights, VGG16_Weights
    from torchvision.models.segmentation import DeepLabV3_ResNet50_Weights

    from models.beit import TIMM_NAME, hub_url
    from models.registry import unreachable

    hub_logging.set_verbosity_error()  # its retry warnings would precede our one-line error

    def reached(url, fetch):
        # Offline, the libraries retry for a minute (the hub) or wait without a timeout (torch.hub).
        reason = unreachable(url)
        if reason is not None:
            raise OSError(reason)
        return fetch()

    def torchvision(model, weights):
        return (model, "p2_train.py", PurePosixPath(urllib.parse.urlsplit(weights.url).path).name,
                lambda: reached(weights.url, lambda: weights.get_state_dict(progress=progress)))

    return [("beit", "p1_train.py", f"{TIMM_NAME}.pth",
             lambda: reached(hub_url(), lambda: timm.create_model(TIMM_NAME, pretrained=True).state_dict())),
            torchvision("fcn32s", VGG16_Weights.IMAGENET1K_V1),
            torchvision("deeplabv3", DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1),
            torchvision("lraspp", MobileNet_V3_Large_Weights.IMAGENET1K_V1)]


def save_pretrained(folder, sources):
    """Save each source's state dict to ``folder/<file name>`` atomically; returns ``{model: path}``."""
    check_writable(folder, "--pretrained", folder=True)
    with output_folder(folder, keep_written=True) as folder:  # weights saved before a failure stay
        return _save_each(folder, sources)


def _save_each(folder, sources):
    import torch

    saved = {}
    for model, script, file_name, fetch in sources:
        path = folder / file_name
        if path.is_file():
            what = "present, kept"
        else:
            try:
                state = fetch()
            except Exception as e:  # hub, cache and network failures come in many types
                raise UserError(f"--pretrained: could not fetch the {model} weights ({brief(e)}); this needs "
                                "internet once") from None
            with atomic_write(path, "wb") as f:
                torch.save(state, f)
            what = f"saved {megabytes(path.stat().st_size)}"
        print(f"{model}: {path} {what}; train offline with: python3 {script} --model {model} "
              f"--pretrained-file {path}", flush=True)
        saved[model] = str(path)
    return saved


def main(args):
    if (args.name or args.url) and not args.publish:
        raise UserError("--name and --url go with --publish")
    if (args.only or args.data) and (args.publish or args.pretrained):
        raise UserError("--only and --data select downloads; they do not go with --publish or --pretrained")
    if args.publish:
        return {"lines": publish(args.publish, args.name, args.url)}
    if args.pretrained:
        return save_pretrained(args.pretrained, pretrained_sources(args.progress))
    check_positive(args, "timeout")
    if args.retries < 0 or args.retry_delay < 0:
        raise UserError("--retries and --retry-delay must not be negative")
    mirror = os.environ.get("HW1_MIRROR", "").strip() or None
    if mirror and not is_http(mirror):
        raise UserError(f"HW1_MIRROR={mirror}: not an http(s) URL")
    entries = read_manifest(args.manifest)
    wanted = list(dict.fromkeys(args.only or [n for n in entries if n != DATA_NAME]))
    for name in wanted:
        if name not in entries:
            raise UserError(f"--only {name}: not in {args.manifest} (it lists {', '.join(entries)})")
    if args.data and DATA_NAME not in entries:
        raise UserError(f"--data: {args.manifest} has no {DATA_NAME} line")
    policy = Policy(args.retries, args.retry_delay, args.timeout, args.progress)
    status = {}
    if args.data or DATA_NAME in wanted:
        check_writable(args.data_root, "--data-root", folder=True)
        args.data_root.mkdir(parents=True, exist_ok=True)
        status["hw1_data"] = fetch_data(entries[DATA_NAME], args.data_root, mirror, policy)
    todo = []
    for name in (n for n in wanted if n != DATA_NAME):
        if keep_present(args.dest / name, entries[name].sha256):
            status[name] = "present"
        else:
            todo.append(entries[name])
    # Entries without a URL yet do not hold up the others: they are reported at the end.
    missing = [e.name for e in todo if source(e, mirror) is None]
    todo = [e for e in todo if e.name not in missing]
    if todo:
        check_writable(args.dest, "--dest", folder=True)
        args.dest.mkdir(parents=True, exist_ok=True)
    for entry in todo:
        download(entry.name, source(entry, mirror), entry.sha256, args.dest, policy)
        status[entry.name] = "downloaded"
    if missing:
        raise how_to_fill(args.manifest, missing, args.dest)
    return status


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
