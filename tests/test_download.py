"""hw1_download.py and hw1_download.sh against a loopback HTTP server: verify, resume, retry, unpack."""
import hashlib
import io
import os
import random
import shutil
import subprocess
import sys
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import hw1_download
from tests.conftest import REPO, assert_one_line_error, run_main, run_script
from utils.errors import UserError, brief

GDRIVE_ID = "1LMIaOY8NSKWmGtbvTsjXcHVaYKnNN_9u"


class Handler(BaseHTTPRequestHandler):
    """Serves ``server.root``, honours ``Range: bytes=N-``, and misbehaves on request (see ``server``)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv, name, wanted = self.server, self.path.lstrip("/"), self.headers.get("Range")
        srv.seen.append((name, wanted))
        if name in srv.ignore_range:
            wanted = None
        if name in srv.fail_once:
            srv.fail_once.discard(name)
            self.send_error(500)
            return
        path = srv.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(wanted.removeprefix("bytes=").split("-")[0]) if wanted else 0
        if start >= len(data) and wanted:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if wanted else 200)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in srv.cut_once:  # the full length announced, half the body sent, connection closed
            srv.cut_once.discard(name)
            body = body[: len(body) // 2]
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path):
    """A loopback server of ``tmp_path/served``; ``seen`` lists (file, Range) per request;
    names in ``cut_once`` are cut short once, those in ``fail_once`` answer 500 once and those in
    ``ignore_range`` are always sent whole (200)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.root = tmp_path / "served"
    srv.root.mkdir()
    srv.seen, srv.cut_once, srv.fail_once, srv.ignore_range = [], set(), set(), set()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def payload(seed, size=300_000):
    return random.Random(seed).randbytes(size)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def serve(server, name, data):
    (server.root / name).write_bytes(data)
    return data


def write_manifest(path, *lines):
    path.write_text("# a test manifest\n" + "\n".join(lines) + "\n")
    return path


@pytest.fixture
def cli(monkeypatch):
    """``cli(*argv)`` runs ``python3 hw1_download.py argv...`` in this process, from the repository,
    with no HW1_MIRROR and no proxy for the loopback server; monkeypatch undoes it all afterwards."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.delenv("HW1_MIRROR", raising=False)
    return lambda *argv: run_main(hw1_download, *argv)


@pytest.fixture
def fetch(server, cli, monkeypatch):
    """``fetch(manifest, dest, *flags, mirror=True)`` runs hw1_download.py as a user would, with
    HW1_MIRROR pointing to the server (unset with ``mirror=False``)."""
    def run(manifest, dest, *flags, mirror=True):
        if mirror:
            monkeypatch.setenv("HW1_MIRROR", server.url)
        else:
            monkeypatch.delenv("HW1_MIRROR", raising=False)
        return cli("--manifest", manifest, "--dest", dest, "--retry-delay", "0", "--no-progress", *flags)

    return run


def test_download_through_the_shell_script(server, tmp_path):
    p1, p2 = serve(server, "p1_best.pth", payload(1)), serve(server, "p2_best.pth", payload(2, 123_457))
    manifest = write_manifest(tmp_path / "m.txt", f"p1_best.pth {server.url}/p1_best.pth {sha256(p1)}",
                              f"p2_best.pth {server.url}/p2_best.pth {sha256(p2)}  # 0.1 MB")
    dest = tmp_path / "ckpt"
    proc = run_script("bash", REPO / "hw1_download.sh", "--manifest", manifest, "--dest", dest, "--no-progress",
                      cwd=tmp_path, env={"PYTHON": sys.executable, "HW1_MIRROR": "",
                                         "no_proxy": "127.0.0.1", "NO_PROXY": "127.0.0.1"})
    assert proc.returncode == 0, proc.stderr
    assert (dest / "p1_best.pth").read_bytes() == p1 and (dest / "p2_best.pth").read_bytes() == p2
    assert sorted(os.listdir(dest)) == ["p1_best.pth", "p2_best.pth"]  # no .part left
    assert proc.stdout.count("sha256 verified") == 2
    assert sorted(server.seen) == [("p1_best.pth", None), ("p2_best.pth", None)]


def test_wrong_sha256_leaves_nothing(server, fetch, tmp_path):
    serve(server, "p1_best.pth", payload(1))
    manifest = write_manifest(tmp_path / "m.txt", f"p1_best.pth - {sha256(b'other bytes')}")
    dest = tmp_path / "ckpt"
    proc = fetch(manifest, dest)
    assert_one_line_error(proc, "p1_best.pth", f"{server.url}/p1_best.pth", "sha256", sha256(b"other bytes"))
    assert os.listdir(dest) == []  # neither the final name nor the .part


def test_cut_short_then_resumed_by_the_next_run(server, fetch, tmp_path):
    data = serve(server, "p1_best.pth", payload(3))
    manifest = write_manifest(tmp_path / "m.txt", f"p1_best.pth - {sha256(data)}")
    dest = tmp_path / "ckpt"
    server.cut_once.add("p1_best.pth")
    proc = fetch(manifest, dest, "--retries", "0")
    assert_one_line_error(proc, "p1_best.pth", f"{server.url}/p1_best.pth", "cut short", "run again to resume")
    half = len(data) // 2
    assert os.listdir(dest) == [".p1_best.pth.part"]  # never under the final name
    assert (dest / ".p1_best.pth.part").read_bytes() == data[:half]

    proc = fetch(manifest, dest)
    assert proc.returncode == 0, proc.stderr
    assert server.seen == [("p1_best.pth", None), ("p1_best.pth", f"bytes={half}-")]
    assert (dest / "p1_best.pth").read_bytes() == data
    assert os.listdir(dest) == ["p1_best.pth"]


def test_cut_short_then_resumed_by_a_retry(server, fetch, tmp_path):
    data = serve(server, "p2_best.pth", payload(4))
    manifest = write_manifest(tmp_path / "m.txt", f"p2_best.pth - {sha256(data)}")
    server.cut_once.add("p2_best.pth")
    proc = fetch(manifest, tmp_path / "ckpt")
    assert proc.returncode == 0, proc.stderr
    assert server.seen == [("p2_best.pth", None), ("p2_best.pth", f"bytes={len(data) // 2}-")]
    assert (tmp_path / "ckpt" / "p2_best.pth").read_bytes() == data


@pytest.mark.parametrize("case", ["complete part", "range ignored", "stale part"])
def test_part_left_by_an_earlier_run(server, fetch, tmp_path, case):
    data = serve(server, "p1_best.pth", payload(10))
    manifest = write_manifest(tmp_path / "m.txt", f"p1_best.pth - {sha256(data)}")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ".p1_best.pth.part").write_bytes(data if case == "complete part" else b"x" * 1000)
    if case == "range ignored":
        server.ignore_range.add("p1_best.pth")
    proc = fetch(manifest, tmp_path / "ckpt")
    assert proc.returncode == 0, proc.stderr
    assert server.seen == {
        "complete part": [("p1_best.pth", f"bytes={len(data)}-")],  # 416: nothing left to send
        "range ignored": [("p1_best.pth", "bytes=1000-")],  # 200: the part starts over
        "stale part": [("p1_best.pth", "bytes=1000-"), ("p1_best.pth", None)],  # sha256 fails: afresh
    }[case]
    assert (tmp_path / "ckpt" / "p1_best.pth").read_bytes() == data
    assert os.listdir(tmp_path / "ckpt") == ["p1_best.pth"]


def test_404_is_not_retried(server, fetch, tmp_path):
    manifest = write_manifest(tmp_path / "m.txt", f"p1_best.pth - {sha256(b'x')}")
    proc = fetch(manifest, tmp_path / "ckpt", "--retries", "3")
    assert_one_line_error(proc, "p1_best.pth", f"{server.url}/p1_best.pth", "404")
    assert proc.returncode == 2
    assert server.seen == [("p1_best.pth", None)]
    assert os.listdir(tmp_path / "ckpt") == []


def test_500_is_retried(server, fetch, tmp_path):
    data = serve(server, "p1_best.pth", payload(5))
    manifest = write_manifest(tmp_path / "m.txt", f"p1_best.pth - {sha256(data)}")
    server.fail_once.add("p1_best.pth")
    proc = fetch(manifest, tmp_path / "ckpt")
    assert proc.returncode == 0, proc.stderr
    assert "HTTP 500" in proc.stdout and "retry 1/4" in proc.stdout
    assert server.seen == [("p1_best.pth", None)] * 2
    assert (tmp_path / "ckpt" / "p1_best.pth").read_bytes() == data


def test_500_every_time_fails_in_one_line(server, fetch, tmp_path):
    manifest = write_manifest(tmp_path / "m.txt", f"p1_best.pth - {sha256(b'x')}")
    server.fail_once.add("p1_best.pth")
    proc = fetch(manifest, tmp_path / "ckpt", "--retries", "0")
    assert_one_line_error(proc, "p1_best.pth", f"{server.url}/p1_best.pth", "HTTP 500", "after 1 attempt:")
    assert os.listdir(tmp_path / "ckpt") == []


def test_present_and_verified_makes_no_request(server, fetch, tmp_path):
    data = serve(server, "p1_best.pth", payload(6))
    manifest = write_manifest(tmp_path / "m.txt", f"p1_best.pth - {sha256(data)}")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "p1_best.pth").write_bytes(data)
    proc = fetch(manifest, tmp_path / "ckpt")
    assert proc.returncode == 0, proc.stderr
    assert "p1_best.pth: present, sha256 verified" in proc.stdout
    assert server.seen == []


def test_present_with_wrong_content_is_replaced(server, fetch, tmp_path):
    data = serve(server, "p1_best.pth", payload(7))
    manifest = write_manifest(tmp_path / "m.txt", f"p1_best.pth - {sha256(data)}")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "p1_best.pth").write_bytes(b"an older checkpoint")
    proc = fetch(manifest, tmp_path / "ckpt")
    assert proc.returncode == 0, proc.stderr
    assert "does not match" in proc.stdout
    assert (tmp_path / "ckpt" / "p1_best.pth").read_bytes() == data
    assert os.listdir(tmp_path / "ckpt") == ["p1_best.pth"]


def test_entry_without_url_says_how_to_fill_it(server, fetch, tmp_path):
    manifest = write_manifest(tmp_path / "checkpoints.txt", "p1_best.pth - -", "p2_best.pth - -")
    proc = fetch(manifest, tmp_path / "ckpt", mirror=False)
    assert_one_line_error(proc, manifest, "no URL for p1_best.pth, p2_best.pth", "train",
                          "--publish runs/p1_.../best.pth --name p1_best.pth --url URL", "paste the printed line")
    assert not (tmp_path / "ckpt").exists() and server.seen == []


def test_only_fetches_the_named_entries(server, fetch, tmp_path):
    data = serve(server, "p2_best.pth", payload(8))
    manifest = write_manifest(tmp_path / "m.txt", "p1_best.pth - -", f"p2_best.pth - {sha256(data)}")
    proc = fetch(manifest, tmp_path / "ckpt", "--only", "p2_best.pth", mirror=False)
    assert_one_line_error(proc, "no URL for p2_best.pth")  # p1's empty line is not even looked at
    proc = fetch(manifest, tmp_path / "ckpt", "--only", "p2_best.pth")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp_path / "ckpt") == ["p2_best.pth"]
    assert_one_line_error(fetch(manifest, tmp_path / "ckpt", "--only", "p3.pth"), "--only p3.pth", "not in")


def test_publish_prints_a_manifest_line(cli, tmp_path):
    best = tmp_path / "runs" / "p1_beit" / "best.pth"
    best.parent.mkdir(parents=True)
    best.write_bytes(payload(9, 2_500_000))
    proc = cli("--publish", best, "--name", "p1_best.pth", "--url", "https://h/p1.pth")
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    assert line.split() == ["p1_best.pth", "https://h/p1.pth", sha256(best.read_bytes()), "#", "2.5", "MB"]
    entries = hw1_download.read_manifest(write_manifest(tmp_path / "m.txt", line))  # it pastes as is
    assert entries["p1_best.pth"] == hw1_download.Entry("p1_best.pth", "https://h/p1.pth", sha256(best.read_bytes()))
    proc = cli("--publish", best, best, "--name", "p1_best.pth")
    assert_one_line_error(proc, "--name and --url describe one file")


def test_repository_manifest():
    entries = hw1_download.read_manifest(REPO / "checkpoints.txt")
    assert {"p1_best.pth", "p2_best.pth"} <= set(entries)
    assert entries["hw1_data.zip"].url == f"gdrive:{GDRIVE_ID}"


@pytest.mark.parametrize("line, message", [
    ("p1_best.pth -", "expected 'name url sha256'"),
    ("p1_best.pth - abc", "not a sha256"),
    ("../p1_best.pth - -", "not a plain file name"),
    ("p1_best.pth ftp://h/x -", "not an http(s) URL"),
    ("p1_best.pth - -\np1_best.pth - -", "listed twice"),
])
def test_bad_manifest_lines(tmp_path, line, message):
    with pytest.raises(UserError) as error:
        hw1_download.read_manifest(write_manifest(tmp_path / "m.txt", line))
    assert f"m.txt line {2 + line.count(chr(10))}: " in str(error.value) and message in str(error.value)


def make_zip(prefix, junk=b""):
    """A small hw1_data.zip whose p1_data and p2_data sit under ``prefix`` inside it."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(f"{prefix}p1_data/train_50/0_0.png", b"png bytes")
        z.writestr(f"{prefix}p2_data/train/0000_sat.jpg", b"jpg bytes")
        z.writestr(f"__MACOSX/{prefix}p1_data/._0_0.png", b"resource fork")
    return buffer.getvalue() + junk


def assert_unpacked(root):
    assert os.listdir(root) == ["hw1_data"]  # no zip, no temporary folder left
    assert sorted(os.listdir(root / "hw1_data")) == ["p1_data", "p2_data"]
    assert (root / "hw1_data" / "p1_data" / "train_50" / "0_0.png").read_bytes() == b"png bytes"
    assert (root / "hw1_data" / "p2_data" / "train" / "0000_sat.jpg").read_bytes() == b"jpg bytes"


@pytest.mark.parametrize("prefix", ["hw1_data/hw1_data/", "hw1_data/", ""])
def test_data_from_the_mirror(server, fetch, tmp_path, prefix):
    data = serve(server, "hw1_data.zip", make_zip(prefix))
    manifest = write_manifest(tmp_path / "m.txt", f"hw1_data.zip gdrive:{GDRIVE_ID} {sha256(data)}")
    root = tmp_path / "root"
    proc = fetch(manifest, tmp_path / "ckpt", "--data", "--data-root", root)
    assert proc.returncode == 0, proc.stderr
    assert_unpacked(root)
    proc = fetch(manifest, tmp_path / "ckpt", "--data", "--data-root", root)
    assert proc.returncode == 0 and "hw1_data: present" in proc.stdout
    assert server.seen == [("hw1_data.zip", None)]


def test_bad_zip_is_removed(server, fetch, tmp_path):
    serve(server, "hw1_data.zip", b"PK\x03\x04 this is no zip")
    manifest = write_manifest(tmp_path / "m.txt", "hw1_data.zip - -")
    root = tmp_path / "root"
    proc = fetch(manifest, tmp_path / "ckpt", "--data", "--data-root", root)
    assert_one_line_error(proc, root / "hw1_data.zip", "not a valid zip", "removed it")
    assert os.listdir(root) == []


def test_data_from_google_drive_through_gdown(cli, tmp_path, monkeypatch):
    """gdown itself needs the network: a stand-in module records its call and writes the zip."""
    (tmp_path / "drive.zip").write_bytes(make_zip("hw1_data/"))

    def download(id=None, output=None, quiet=False, resume=False):
        print("gdown", id, resume, file=sys.stderr)
        return shutil.copy(tmp_path / "drive.zip", output)

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    root = tmp_path / "root"
    manifest = write_manifest(tmp_path / "m.txt", f"hw1_data.zip gdrive:{GDRIVE_ID} -")
    proc = cli("--manifest", manifest, "--only", "hw1_data.zip", "--data-root", root, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert f"gdown {GDRIVE_ID} True" in proc.stderr
    assert_unpacked(root)

    monkeypatch.setitem(sys.modules, "gdown", None)  # `import gdown` raises ImportError: not installed
    proc = cli("--manifest", manifest, "--data", "--data-root", tmp_path / "other", "--dest", tmp_path / "ckpt")
    assert_one_line_error(proc, "gdown", "pip install gdown")


def test_pretrained_weights_saved_with_their_command(tmp_path, capsys):
    import torch

    sources = [("beit", "p1_train.py", "beit.pth", lambda: {"w": torch.ones(2)})]
    saved = hw1_download.save_pretrained(tmp_path / "weights", sources)
    assert torch.load(saved["beit"], weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert f"python3 p1_train.py --model beit --pretrained-file {tmp_path / 'weights' / 'beit.pth'}" \
        in capsys.readouterr().out

    def offline():
        raise OSError("Network is unreachable")

    with pytest.raises(UserError, match="could not fetch the fcn32s weights .*Network is unreachable"):
        hw1_download.save_pretrained(tmp_path / "weights", [("fcn32s", "p2_train.py", "vgg16.pth", offline)])
    assert sorted(os.listdir(tmp_path / "weights")) == ["beit.pth"]
    with pytest.raises(UserError, match="could not fetch the fcn32s weights"):  # nothing saved, nothing made
        hw1_download.save_pretrained(tmp_path / "new" / "weights", [("fcn32s", "p2_train.py", "vgg16.pth", offline)])
    assert not (tmp_path / "new").exists()


def test_entries_with_a_url_are_fetched_before_the_missing_ones_are_reported(server, fetch, tmp_path):
    data = serve(server, "p1_best.pth", payload(11))
    manifest = write_manifest(tmp_path / "m.txt", f"p1_best.pth {server.url}/p1_best.pth {sha256(data)}",
                              "p2_best.pth - -")
    proc = fetch(manifest, tmp_path / "ckpt", mirror=False)
    assert_one_line_error(proc, "no URL for p2_best.pth")
    assert os.listdir(tmp_path / "ckpt") == ["p1_best.pth"]
    assert (tmp_path / "ckpt" / "p1_best.pth").read_bytes() == data


def test_output_folders_that_are_files(server, fetch, tmp_path):
    serve(server, "p1_best.pth", b"x")
    manifest = write_manifest(tmp_path / "m.txt", f"p1_best.pth - {sha256(b'x')}", "hw1_data.zip - -")
    (tmp_path / "file").write_text("")
    proc = fetch(manifest, tmp_path / "file", "--only", "p1_best.pth")
    assert_one_line_error(proc, f"--dest {tmp_path / 'file'}: is a file, not a folder")
    proc = fetch(manifest, tmp_path / "ckpt", "--only", "hw1_data.zip", "--data-root", tmp_path / "file")
    assert_one_line_error(proc, f"--data-root {tmp_path / 'file'}: is a file, not a folder")
    assert server.seen == []


def test_downloader_imports_no_torch():
    """The downloader is plain HTTP: a fresh interpreter that imports it does not pay torch's import."""
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.argv=['hw1_download.py']; import hw1_download; print('torch' in sys.modules)"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr


def test_a_long_error_is_cut_at_a_word_end_not_in_a_word():
    cause = ("HTTPSConnectionPool(host='drive.google.com', port=443): Max retries exceeded "
             "(Caused by NameResolutionError)")
    text = brief(cause, limit=100)
    assert len(text) <= 100 and text.endswith("...") and text[:-3] == cause[:len(text) - 3]
    assert cause[len(text) - 3] == " "  # the cut falls between two words
    assert brief("short", limit=100) == "short"
