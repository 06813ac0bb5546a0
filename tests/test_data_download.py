"""Downloads against a local HTTP server (127.0.0.1) serving archives built here in the
official formats: CIFAR-10's python pickle tarball and Imagenette's tgz layout."""

from __future__ import annotations

import contextlib
import hashlib
import io
import pickle
import re
import socket
import struct
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.cli import main
from alexnet.data.download import (
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download_dataset,
    fetch,
    load_cifar_pickle,
)

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SYNSETS = ["n01440764", "n02102040", "n03888257"]


# --------------------------------------------------------------------------- a tiny server


class _Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []  # the Range header of every GET
        self.honour_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.ranges.append(rng)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                if rng and server.honour_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args) -> None:  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


# --------------------------------------------------------------------------- archives in the official formats


def _tar(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Py2Pickler(pickle._Pickler):
    """Writes ``bytes`` and ``str`` as Python 2 wrote ``str`` (BINSTRING opcodes), not as
    Python 3's ``_codecs.encode(...)`` call, so the archive matches the official files."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:  # NumPy's dtype state ("|", "u1") was a Python 2 str too
        self.save_bytes(obj.encode("latin-1"))

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _py2_pickle(obj: object) -> bytes:
    """A pickle as CIFAR-10's (Python 2 + NumPy 1): BINSTRING bytes, globals in ``numpy.core``."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return _py2_style(buf.getvalue())


def _py2_style(blob: bytes) -> bytes:
    return blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def _cifar_tarball(per_batch: int = 6, seed: int = 0) -> tuple[bytes, dict[str, tuple[np.ndarray, list[int]]]]:
    rng = np.random.default_rng(seed)
    batches = {}
    members = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        batches[name] = (data, labels)
        d = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        members[f"cifar-10-batches-py/{name}"] = _py2_pickle(d)
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_vis": 3072}
    members["cifar-10-batches-py/batches.meta"] = _py2_pickle(meta)
    members["cifar-10-batches-py/readme.html"] = b"<html></html>"
    return _tar(members), batches


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 16), colour).save(buf, "JPEG")
    return buf.getvalue()


def _imagenette_tgz(top: str = "imagenette2-160") -> bytes:
    members = {f"{top}/noisy_imagenette.csv": b"path,noisy_labels_0,is_valid\n"}
    for split, n in (("train", 3), ("val", 2)):
        for k, syn in enumerate(SYNSETS):
            for i in range(n):
                members[f"{top}/{split}/{syn}/{syn}_{i}.JPEG"] = _jpeg((80 * k, 10 * i, 200))
    return _tar(members)


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()


# --------------------------------------------------------------------------- tests


def test_cifar10_download_verify_extract(server, tmp_path):
    blob, batches = _cifar_tarball()
    server.files["/cifar-10-python.tar.gz"] = blob
    out = tmp_path / "cifar"
    download_dataset("cifar10", out, url=server.url + "/cifar-10-python.tar.gz", md5=_md5(blob),
                     cache_dir=tmp_path / "cache", progress=False)
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(CIFAR_CLASSES)
    assert sum(1 for _ in (out / "train").rglob("*.png")) == 5 * 6
    assert sum(1 for _ in (out / "val").rglob("*.png")) == 6
    # Every image lands in its label's folder with its exact pixels (CHW rows -> HWC PNG).
    for name, split in (("data_batch_3", "train"), ("test_batch", "val")):
        data, labels = batches[name]
        for i, y in enumerate(labels):
            png = out / split / CIFAR_CLASSES[y] / f"{name}_{i:05d}.png"
            got = np.asarray(Image.open(png))
            assert np.array_equal(got, data[i].reshape(3, 32, 32).transpose(1, 2, 0))
    assert (out / "download.json").is_file()
    assert not any((tmp_path / "cache").iterdir())  # archive removed after a good unpack
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cifar")]  # no leftovers


def test_imagenette_layout_and_env_url(server, tmp_path, monkeypatch):
    blob = _imagenette_tgz()
    server.files["/mirror/imagenette2-160.tgz"] = blob
    monkeypatch.setenv("ALEXNET_IMAGENETTE_URL", server.url + "/mirror/imagenette2-160.tgz")
    out = tmp_path / "nette"
    download_dataset("imagenette", out, md5=_md5(blob), cache_dir=tmp_path / "cache", progress=False, keep_archive=True)
    for split, n in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (out / split).iterdir()) == SYNSETS
        for syn in SYNSETS:
            assert len(list((out / split / syn).glob("*.JPEG"))) == n
    assert (out / "noisy_imagenette.csv").is_file()
    assert not (out / ".extract").exists()
    assert (tmp_path / "cache" / "imagenette2-160.tgz").is_file()
    # A second run finds the complete dataset and does nothing.
    n_requests = len(server.ranges)
    download_dataset("imagenette", out, md5=_md5(blob), cache_dir=tmp_path / "cache", progress=False)
    assert len(server.ranges) == n_requests


@pytest.mark.reliability
def test_checksum_mismatch_is_a_clear_error_with_no_output(server, tmp_path):
    blob, _ = _cifar_tarball(per_batch=2)
    server.files["/c.tar.gz"] = blob
    out = tmp_path / "cifar"
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        download_dataset("cifar10", out, url=server.url + "/c.tar.gz", md5="0" * 32,
                         cache_dir=tmp_path / "cache", progress=False)
    assert not out.exists()
    assert not any((tmp_path / "cache").iterdir())  # the bad file is not kept
    # The default is the official checksum, which the test archive cannot match.
    with pytest.raises(ChecksumError):
        download_dataset("cifar10", out, url=server.url + "/c.tar.gz", cache_dir=tmp_path / "cache", progress=False)
    # Through the CLI: exit code 2 and an error line.
    rc = main(["data", "download", "cifar10", str(out), "--url", server.url + "/c.tar.gz",
               "--cache", str(tmp_path / "cache"), "--md5", "1" * 32])
    assert rc == 2 and not out.exists()


@pytest.mark.reliability
def test_resume_uses_range_request(server, tmp_path):
    blob = bytes(range(256)) * 4000  # 1 MB
    server.files["/big.bin"] = blob
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(blob[:300_001])
    fetch(server.url + "/big.bin", dest, _md5(blob), progress=False)
    assert server.ranges == ["bytes=300001-"]
    assert dest.read_bytes() == blob and not (tmp_path / "big.bin.part").exists()


def test_resume_restarts_when_server_ignores_range(server, tmp_path):
    blob = b"0123456789" * 1000
    server.files["/f.bin"] = blob
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"garbage that must not be kept")
    fetch(server.url + "/f.bin", tmp_path / "f.bin", _md5(blob), progress=False)
    assert (tmp_path / "f.bin").read_bytes() == blob


def test_complete_part_file_is_accepted_after_416(server, tmp_path):
    blob = b"x" * 5000
    server.files["/done.bin"] = blob
    (tmp_path / "done.bin.part").write_bytes(blob)
    fetch(server.url + "/done.bin", tmp_path / "done.bin", _md5(blob), progress=False)
    assert (tmp_path / "done.bin").read_bytes() == blob


def test_http_error_is_a_download_error(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        fetch(server.url + "/missing.tgz", tmp_path / "m.tgz", progress=False, retries=0)
    with pytest.raises(DownloadError, match="scheme"):
        fetch("ftp://example.org/x.tgz", tmp_path / "x.tgz", progress=False)


def _malicious(kind: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        ok = tarfile.TarInfo("imagenette2-160/train/n01440764/a.JPEG")
        data = _jpeg((1, 2, 3))
        ok.size = len(data)
        tf.addfile(ok, io.BytesIO(data))
        if kind == "traversal":
            bad = tarfile.TarInfo("imagenette2-160/../../evil.txt")
            bad.size = 4
            tf.addfile(bad, io.BytesIO(b"evil"))
        elif kind == "absolute":
            bad = tarfile.TarInfo("/tmp/evil-absolute.txt")
            bad.size = 4
            tf.addfile(bad, io.BytesIO(b"evil"))
        elif kind == "symlink":
            bad = tarfile.TarInfo("imagenette2-160/val")
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc"
            tf.addfile(bad)
        elif kind == "device":
            bad = tarfile.TarInfo("imagenette2-160/null")
            bad.type = tarfile.CHRTYPE
            tf.addfile(bad)
    return buf.getvalue()


@pytest.mark.reliability
@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink", "device"])
def test_malicious_archive_is_refused(server, tmp_path, kind):
    blob = _malicious(kind)
    server.files["/evil.tgz"] = blob
    out = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchiveError):
        download_dataset("imagenette", out, url=server.url + "/evil.tgz", md5=_md5(blob),
                         cache_dir=tmp_path / "cache", progress=False)
    assert not out.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()
    assert not [p for p in (tmp_path / "deep").iterdir() if p.name.startswith(".out")]


@pytest.mark.reliability
def test_restricted_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    with pytest.raises(DownloadError, match="refusing"):
        load_cifar_pickle(pickle.dumps({b"data": Evil()}, protocol=2))
    assert not (tmp_path / "pwned").exists()
    # Arrays load from Python 2 style pickles (the official files) and Python 3 protocol 2
    # pickles, under NumPy 1 and NumPy 2 module names.
    arr = np.arange(12, dtype=np.uint8).reshape(2, 6)
    d = {b"data": arr, b"labels": [1, 2]}
    for blob in (_py2_pickle(d), pickle.dumps(d, protocol=2), _py2_style(pickle.dumps(d, protocol=2))):
        got = load_cifar_pickle(blob)
        assert np.array_equal(got["data"], arr) and got["labels"] == [1, 2]
    with pytest.raises(DownloadError, match="refusing"):  # _codecs.encode only as pickle uses it
        load_cifar_pickle(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(DownloadError):
        load_cifar_pickle(b"not a pickle")


@pytest.mark.reliability
def test_cifar_with_bad_contents_is_refused(server, tmp_path):
    # Labels out of range: a clear error, not a wrong folder.
    members = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        d = {b"labels": [12], b"data": np.zeros((1, 3072), np.uint8)}
        members[f"cifar-10-batches-py/{name}"] = pickle.dumps(d, protocol=2)
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CIFAR_CLASSES]})
    blob = _tar(members)
    server.files["/c.tgz"] = blob
    out = tmp_path / "c"
    with pytest.raises(DownloadError, match="labels"):
        download_dataset("cifar10", out, url=server.url + "/c.tgz", md5=_md5(blob),
                         cache_dir=tmp_path / "cache", progress=False)
    assert not out.exists()


def test_cli_download(server, tmp_path):
    blob = _imagenette_tgz("imagenette2")
    server.files["/imagenette2.tgz"] = blob
    out = tmp_path / "n"
    rc = main(["data", "download", "imagenette", str(out), "--variant", "full", "--url",
               server.url + "/imagenette2.tgz", "--no-verify", "--cache", str(tmp_path / "cache")])
    assert rc == 0
    assert sorted(p.name for p in (out / "val").iterdir()) == SYNSETS
    assert Path(out / "download.json").is_file()


# --------------------------------------------------------------------------- a hostile server


class _Hostile:
    """A raw-socket server on 127.0.0.1 that answers connection ``i`` with ``script[i]``.

    Each behaviour gets the accepted socket and the request head, and may send anything,
    valid HTTP or not. The thread serves at most ``len(script)`` connections and gives
    up ``deadline`` seconds after starting, so a test that fails cannot leave it running.
    """

    def __init__(self, script: list, deadline: float = 20.0) -> None:
        self.script, self.requests = list(script), []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/file.tgz"
        self.stop_at = time.monotonic() + deadline
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.sock:
            for behave in self.script:
                while time.monotonic() < self.stop_at:
                    try:
                        conn, _ = self.sock.accept()
                        break
                    except TimeoutError:
                        continue
                else:
                    return
                with conn:
                    conn.settimeout(5)
                    head = b""
                    with contextlib.suppress(OSError):
                        while b"\r\n\r\n" not in head and len(head) < 65536:
                            if not (chunk := conn.recv(4096)):
                                break
                            head += chunk
                    self.requests.append(head.decode("latin-1"))
                    with contextlib.suppress(OSError):
                        behave(conn)

    def close(self) -> None:
        self.stop_at = 0
        self.thread.join(5)


def _ok(body: bytes, **headers: str):
    """A correct answer: 200 with Content-Length, or 206 for the Range the client asked."""

    def behave(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)

    return behave


def _raw(data: bytes, then_reset: bool = False):
    def behave(conn: socket.socket) -> None:
        conn.sendall(data)
        if then_reset:  # RST instead of FIN: the client sees "connection reset by peer"
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return behave


def _stall(conn: socket.socket) -> None:
    """Accept, read the request, answer nothing until the client gives up (bounded)."""
    with contextlib.suppress(OSError):
        conn.recv(1)


def _chunked(body: bytes, cut: bool) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 100]), body[i : i + 100]) for i in range(0, len(body), 100))
    return head + (chunks[: len(chunks) // 2] if cut else chunks + b"0\r\n\r\n")


BODY = bytes(range(256)) * 20
MALFORMED = {
    "bad status line": b"HTTP/1.1 two hundred OK\r\n\r\n" + BODY,
    "not HTTP at all": b"SSH-2.0-OpenSSH_9.6\r\n",
    "overlong header line": b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 70_000 + b"\r\n\r\n" + BODY,
    "200 headers": b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n" + BODY,
    "overlong status line": b"HTTP/1.1 200 " + b"O" * 70_000 + b"\r\n\r\n",
}


def _fetch(url: str, dest: Path, md5: str | None = None, *, waits: list[int] | None = None, timeout: float = 2.0, **kw):
    """fetch() with no waiting between attempts; the attempt numbers backoff saw go to ``waits``."""
    seen = [] if waits is None else waits
    return fetch(url, dest, md5, progress=False, timeout=timeout, backoff=lambda n: seen.append(n) or 0.0, **kw)


@pytest.mark.reliability
@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_answers_are_a_clear_error_naming_the_url(tmp_path, kind):
    server = _Hostile([_raw(MALFORMED[kind])] * 4)
    try:
        with pytest.raises(DownloadError, match="not valid HTTP") as e:
            _fetch(server.url, tmp_path / "f.tgz", retries=3)
        assert server.url in str(e.value)
        assert len(server.requests) == 1  # the server's fault: not retried
        assert not (tmp_path / "f.tgz").exists()
    finally:
        server.close()


@pytest.mark.reliability
@pytest.mark.parametrize(
    "failure",
    [
        _raw(_chunked(BODY, cut=True)),  # chunked transfer cut short
        _raw(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:1000], then_reset=True),
        _raw(b"", then_reset=True),  # reset before any answer
        _raw(b""),  # closed before any answer
        _raw(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n\r\n"),
        _raw(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\n\r\n"),
        _stall,  # accepts, then never answers: the timeout ends it
    ],
    ids=["cut-chunked", "reset-mid-body", "reset", "closed", "503", "429", "stalled"],
)
def test_transient_failures_are_retried_with_backoff(tmp_path, failure):
    server = _Hostile([failure, failure, _ok(BODY)])
    waits: list[int] = []
    try:
        dest = _fetch(server.url, tmp_path / "f.tgz", _md5(BODY), retries=3, waits=waits, timeout=0.5)
        assert dest.read_bytes() == BODY and len(server.requests) == 3 and waits == [1, 2]
    finally:
        server.close()
    # and when every attempt fails: one clear error naming the URL, after retries + 1 tries
    server = _Hostile([failure] * 3)
    try:
        with pytest.raises(DownloadError, match="after 3 attempts") as e:
            _fetch(server.url, tmp_path / "g.tgz", retries=2, timeout=0.5)
        assert server.url in str(e.value) and len(server.requests) == 3
        assert not (tmp_path / "g.tgz").exists()
    finally:
        server.close()


def test_permanent_http_errors_are_not_retried(tmp_path):
    server = _Hostile([_raw(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")] * 3)
    try:
        with pytest.raises(DownloadError, match="403") as e:
            _fetch(server.url, tmp_path / "f.tgz", retries=2)
        assert server.url in str(e.value) and len(server.requests) == 1
    finally:
        server.close()


@pytest.mark.reliability
def test_body_cut_short_is_resumed_where_it_stopped(tmp_path):
    def resume(conn: socket.socket) -> None:
        start = int(re.search(r"Range: bytes=(\d+)-", server.requests[-1]).group(1))
        conn.sendall(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\nContent-Length: %d\r\n\r\n"
                     % (start, len(BODY) - 1, len(BODY), len(BODY) - start) + BODY[start:])

    cut = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:3000]
    server = _Hostile([_raw(cut), resume])
    try:
        assert _fetch(server.url, tmp_path / "f.tgz", retries=1).read_bytes() == BODY  # no checksum: the length decides
        assert "Range: bytes=3000-" in server.requests[1]
    finally:
        server.close()


@pytest.mark.reliability
@pytest.mark.parametrize("cut_at", [0, 1, 2000, len(BODY) - 1])
def test_truncation_without_a_length_is_never_cached_as_complete(tmp_path, cut_at):
    # No Content-Length and no chunked end: a close is all the client sees, and a cut body
    # looks complete. Without a checksum (--no-verify) such a file must not be reused.
    close_delimited = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    server = _Hostile([_raw(close_delimited + BODY[:cut_at]), _ok(BODY)])
    dest = tmp_path / "f.tgz"
    try:
        _fetch(server.url, dest)  # this run has only what it got
        assert _fetch(server.url, dest).read_bytes() == BODY  # the next run downloads again
        assert len(server.requests) == 2
        assert _fetch(server.url, dest).read_bytes() == BODY  # a checked length is reused
        assert len(server.requests) == 2
    finally:
        server.close()


def test_complete_chunked_body_is_cached(tmp_path):
    server = _Hostile([_raw(_chunked(BODY, cut=False))])
    try:
        assert _fetch(server.url, tmp_path / "f.tgz").read_bytes() == BODY
        assert _fetch(server.url, tmp_path / "f.tgz").read_bytes() == BODY
        assert len(server.requests) == 1
    finally:
        server.close()


def test_partial_file_longer_than_the_file_is_discarded(tmp_path):
    (tmp_path / "f.tgz.part").write_bytes(b"x" * (len(BODY) + 10))  # a different, longer file
    too_far = b"HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */%d\r\nContent-Length: 0\r\n\r\n" % len(BODY)
    server = _Hostile([_raw(too_far), _ok(BODY)])
    try:
        assert _fetch(server.url, tmp_path / "f.tgz", retries=1).read_bytes() == BODY
    finally:
        server.close()
