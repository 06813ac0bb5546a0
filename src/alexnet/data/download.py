"""Downloads for real users: CIFAR-10 and Imagenette, fetched, verified and unpacked.

``alexnet data download cifar10|imagenette OUT`` gives ``OUT/train/<class>/*`` and
``OUT/val/<class>/*``, the folder layout :func:`alexnet.data.open_dataset` reads.

* **Fetch**: the official archive over HTTP(S) with ``urllib``, into a cache folder
  (``<data home>/downloads``, see :func:`alexnet.data.home.data_home`) as ``NAME.part``;
  an interrupted download resumes with an HTTP ``Range`` request. ``--url`` or the
  environment variables ``ALEXNET_CIFAR10_URL`` / ``ALEXNET_IMAGENETTE_URL`` point at a
  mirror.
* **Verify**: MD5 against CIFAR-10's published checksum and, for Imagenette (whose
  authors publish none), the checksums torchvision pins for the same files; a mismatch
  deletes the file and stops with no output written. The MD5 and SHA-256 of what was
  unpacked are recorded in ``OUT/download.json``.
* **Unpack**, treating the archive as untrusted: only regular files and directories,
  no absolute paths or ``..``, bounded member count and size (:func:`safe_extract`).
  CIFAR-10's pickled batches are read with a restricted unpickler that can build
  nothing but NumPy arrays and builtin containers (:func:`load_cifar_pickle`), then
  written as PNG files.

Output is assembled in a hidden sibling directory and renamed to ``OUT`` at the end,
so ``OUT`` either holds a complete dataset or does not exist.
"""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import logging
import os
import pickle
import random
import re
import shutil
import socket
import ssl
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from alexnet.errors import ChecksumError, DownloadError, UnsafeArchiveError

MARKER = "download.json"  # written last into OUT: what was downloaded, from where, checksum
CHUNK = 1 << 20
USER_AGENT = "alexnet-downloader/1"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str


# Official archives and MD5s (CIFAR-10: published at https://www.cs.toronto.edu/~kriz/cifar.html;
# Imagenette, https://github.com/fastai/imagenette: none published, these are torchvision's pins).
ARCHIVES: dict[str, dict[str, Archive]] = {
    "cifar10": {
        "python": Archive(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
        ),
    },
    "imagenette": {
        "full": Archive(
            "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz",
            "fe2fc210e6bb7c5664d602c3cd71e612",
        ),
        "320": Archive(
            "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",
            "3df6f0d01a2c9592104656642f5e78a3",
        ),
        "160": Archive(
            "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
            "e793b78cc4c9e9a4ccc0c1155377a412",
        ),
    },
}
DEFAULT_VARIANT = {"cifar10": "python", "imagenette": "320"}
URL_ENV = {"cifar10": "ALEXNET_CIFAR10_URL", "imagenette": "ALEXNET_IMAGENETTE_URL"}

# Bounds on what an archive may unpack to: well above the real datasets, far below a bomb.
MAX_MEMBERS = 200_000
MAX_TOTAL_BYTES = 8 << 30
MAX_MEMBER_BYTES = 1 << 30
MAX_DOWNLOAD_BYTES = 8 << 30


# --------------------------------------------------------------------------- fetching


def file_digest(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


# HTTP answers worth retrying: the server or a proxy is busy, restarting or rate-limiting.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def default_backoff(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): 1, 2, 4, 8, then 10,
    each with jitter so that many clients cut off together do not come back together."""
    return min(2.0 ** (attempt - 1), 10.0) * random.uniform(0.5, 1.0)


class _Transient(Exception):
    """A failure a later attempt may not meet (reset, timeout, cut body, 503); retried."""


def _network_error(exc: BaseException) -> tuple[str, bool]:
    """What went wrong in words, and whether trying again can help.

    ``urlopen`` lets ``http.client``'s own exceptions through untouched (they are not
    ``OSError``): a bad status line, an overlong header line, more than 100 headers, a cut
    chunked body. Malformed answers are the server's fault and will not mend themselves;
    dropped connections and timeouts may.
    """
    if isinstance(exc, urllib.error.HTTPError):
        return f"the server answered HTTP {exc.code} {exc.reason}", exc.code in TRANSIENT_STATUS
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return _network_error(reason)
        return f"{reason}", False
    if isinstance(exc, http.client.RemoteDisconnected):  # also a BadStatusLine: test it first
        return "the server closed the connection without answering", True
    if isinstance(exc, http.client.IncompleteRead):
        return f"the connection closed mid-body ({len(exc.partial):,} bytes of the last part read)", True
    if isinstance(exc, http.client.LineTooLong):
        return f"the server's answer is not valid HTTP ({exc})", False
    if isinstance(exc, http.client.BadStatusLine):
        return f"the server's answer is not valid HTTP (bad status line {str(exc)[:80]!r})", False
    if isinstance(exc, http.client.HTTPException):
        return f"the server's answer is not valid HTTP ({type(exc).__name__}: {exc})", False
    if isinstance(exc, TimeoutError):
        return "the server stopped answering (timed out)", True
    if isinstance(exc, ConnectionError):
        return f"the connection failed ({type(exc).__name__}: {exc})", True
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted ({exc})", False
    if isinstance(exc, socket.gaierror):
        return f"the host name does not resolve ({exc})", exc.errno == socket.EAI_AGAIN
    if isinstance(exc, ssl.SSLError):
        return f"the TLS connection failed ({exc})", True
    return f"{type(exc).__name__}: {exc}", False


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def discard(dest: str | os.PathLike) -> None:
    """Remove a downloaded file and its completeness marker (a file found wrong after the
    download, e.g. by a checksum its caller checks): the next fetch starts afresh."""
    dest = Path(dest)
    dest.unlink(missing_ok=True)
    _complete_marker(dest).unlink(missing_ok=True)


def _complete_marker(dest: Path) -> Path:
    """Written beside ``dest`` when its length was checked: only such a file is reused unverified."""
    return dest.with_name(dest.name + ".complete")


def _fetch_once(url: str, part: Path, timeout: float, max_bytes: int, progress: bool) -> bool:
    """One attempt: append to (or restart) ``part``. Returns whether the body is known to be
    whole (a Content-Length or Content-Range total was met, or a chunked body ended properly);
    False when the server just closed the connection, which a truncation also looks like.
    Raises :class:`_Transient` for what a retry may cure, :class:`DownloadError` otherwise."""
    from tqdm import tqdm

    start = part.stat().st_size if part.exists() else 0
    try:
        try:
            resp = _open(url, start, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start:  # nothing left from `start` on: is the part the whole file?
                m = re.fullmatch(r"bytes \*/(\d+)", exc.headers.get("Content-Range", "") or "")
                if m and int(m.group(1)) == start:
                    return True
                part.unlink(missing_ok=True)  # longer than the file, or no size said: start over
                raise _Transient(f"the kept partial file ({start:,} bytes) does not fit the file; discarded it") from None
            raise
        with resp:
            total = None
            if start and getattr(resp, "status", 200) == 206:
                crange = resp.headers.get("Content-Range", "")
                m = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", crange.strip())
                if not m or int(m.group(1)) != start:
                    part.unlink(missing_ok=True)
                    raise _Transient(f"the server answered a resume at byte {start:,} with range {crange!r}; restarting")
                total = int(m.group(2)) if m.group(2).isdigit() else None
                mode = "ab"
            else:  # the server ignored the Range header (or there was none): start over
                start, mode = 0, "wb"
            length = resp.headers.get("Content-Length")
            if total is None and length and length.isdigit():
                total = start + int(length)
            if total is not None and total > max_bytes:
                raise DownloadError(f"{url} is {total:,} bytes, more than the {max_bytes:,} allowed")
            written = start
            with (
                open(part, mode) as f,
                tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                     desc=part.name.removesuffix(".part"), disable=not progress) as bar,
            ):
                while block := resp.read(CHUNK):
                    written += len(block)
                    if written > max_bytes:
                        f.close()
                        part.unlink(missing_ok=True)
                        raise DownloadError(f"{url} sent more than the {max_bytes:,} bytes allowed")
                    f.write(block)
                    bar.update(len(block))
            if total is not None and written < total:
                raise _Transient(f"the connection closed at byte {written:,} of {total:,}")
            if total is not None and written > total:
                part.unlink(missing_ok=True)
                raise _Transient(f"the server sent {written:,} bytes after announcing {total:,}; discarded them")
            return total is not None or bool(getattr(resp, "chunked", False))
    except (DownloadError, _Transient):
        raise
    except Exception as exc:  # urllib, http.client, socket and ssl errors alike: see _network_error
        if isinstance(exc, OSError) and getattr(exc, "filename", None) is not None and not isinstance(exc, urllib.error.URLError):
            raise DownloadError(f"cannot write {exc.filename}: {exc.strerror}") from None  # our disk, not the network
        what, transient = _network_error(exc)
        if transient:
            raise _Transient(what) from None
        raise DownloadError(f"downloading {url} failed: {what}.") from None


def check_url(url: str) -> urllib.parse.SplitResult:
    """``url`` parsed, or a :class:`DownloadError` naming it: a malformed address (``http://[::1``),
    a scheme other than http, https or file, or an http(s) address without a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (parsing the port is what finds a bad one)
    except ValueError as exc:
        raise DownloadError(f"malformed URL {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https", "file"):
        raise DownloadError(f"unsupported URL scheme {parts.scheme!r} in {url!r} (use http, https or file)")
    if parts.scheme != "file" and not parts.hostname:
        raise DownloadError(f"malformed URL {url!r}: no host")
    return parts


def fetch(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
    backoff: Callable[[int], float] = default_backoff,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify ``md5`` if given, return ``dest``.

    Every failure is a :class:`DownloadError` naming the URL. Transient ones (reset or
    stalled connections, cut bodies, 408/429/5xx) are retried ``retries`` times, waiting
    ``backoff(n)`` seconds before retry ``n`` and resuming where the last attempt stopped.
    A file is only ever called complete when its length or checksum was checked: a body
    that simply stopped (no Content-Length, no chunked end) is used once but not kept as
    a cached ``dest`` for later runs, so a truncation cannot be reused forever.
    An existing ``dest`` is reused if its checksum matches, or, with no checksum, if a
    checked length was recorded for it. A checksum mismatch deletes the file and raises
    :class:`ChecksumError`.
    """
    dest = Path(dest)
    check_url(url)
    marker = _complete_marker(dest)
    if dest.is_file():
        if md5 is not None and file_digest(dest) == md5.lower():
            return dest
        if md5 is None and marker.is_file() and marker.read_text().strip() == str(dest.stat().st_size):
            return dest
    marker.unlink(missing_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    for attempt in range(retries + 1):
        if attempt:
            time.sleep(max(0.0, backoff(attempt)))
        try:
            complete = _fetch_once(url, part, timeout, max_bytes, progress)
            break
        except _Transient as exc:
            failure = str(exc)
    else:
        raise DownloadError(
            f"downloading {url} failed after {retries + 1} attempt{'s' if retries else ''}: {failure}. "
            f"Rerun to resume, or use --url / the ALEXNET_*_URL variables to pick a mirror."
        )

    if md5 is not None:
        got = file_digest(part)
        if got != md5.lower():
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"checksum mismatch for {url}: md5 {got}, expected {md5.lower()}. The file was deleted; "
                f"rerun to download it again, or pass --md5/--no-verify for a mirror that repackages it."
            )
    elif not complete:
        log.warning("%s gave no length: the download cannot be checked for truncation and will not be reused", url)
    os.replace(part, dest)
    if md5 is not None or complete:
        marker.write_text(f"{dest.stat().st_size}\n")
    return dest


# --------------------------------------------------------------------------- safe extraction


def _safe_member_path(name: str) -> PurePosixPath:
    """The member's path relative to the extraction root, or :class:`UnsafeArchiveError`."""
    if not name or "\x00" in name or "\\" in name:
        raise UnsafeArchiveError(f"archive member with an unsafe name: {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"archive member escapes the target directory: {name!r}")
    parts = [x for x in p.parts if x not in ("", ".")]
    if not parts:
        raise UnsafeArchiveError(f"archive member with an empty path: {name!r}")
    return PurePosixPath(*parts)


def iter_safe_members(
    tf: tarfile.TarFile, max_members: int = MAX_MEMBERS, max_total: int = MAX_TOTAL_BYTES
):
    """Yield ``(member, safe relative path)``, refusing links, devices, traversal and oversize content."""
    total = 0
    for count, m in enumerate(tf, 1):
        if count > max_members:
            raise UnsafeArchiveError(f"archive has more than {max_members:,} members")
        rel = _safe_member_path(m.name)
        if not (m.isfile() or m.isdir()):
            kind = (
                "symlink" if m.issym() else "hard link" if m.islnk() else "device or special file"
            )
            raise UnsafeArchiveError(
                f"archive member {m.name!r} is a {kind}; only files and folders are accepted"
            )
        if m.isfile():
            if m.size > MAX_MEMBER_BYTES:
                raise UnsafeArchiveError(
                    f"archive member {m.name!r} is {m.size:,} bytes, too large"
                )
            total += m.size
            if total > max_total:
                raise UnsafeArchiveError(f"archive unpacks to more than {max_total:,} bytes")
        yield m, rel


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, **limits) -> Path:
    """Extract a (compressed) tar archive into ``dest`` after checking every member.

    Files get mode 0644 and directories 0755 whatever the archive says; nothing but
    regular files and directories is created. On an unsafe member the error is raised
    and whatever was extracted so far is left for the caller to discard (callers here
    extract into a temporary directory).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m, rel in iter_safe_members(tf, **limits):
                target = dest.joinpath(*rel.parts)
                if not target.resolve().is_relative_to(
                    root
                ):  # belt and braces: no symlinks exist here
                    raise UnsafeArchiveError(
                        f"archive member escapes the target directory: {m.name!r}"
                    )
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tf.extractfile(m)
                if src is None:
                    raise UnsafeArchiveError(f"cannot read archive member {m.name!r}")
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                target.chmod(0o644)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(f"{archive} is not a readable tar archive: {exc}") from exc
    return dest


# --------------------------------------------------------------------------- CIFAR-10


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to what Python 3 pickles ``bytes`` with (protocol < 3)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode beyond latin-1 bytes")
    return text.encode("latin-1")


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles builtin containers and NumPy arrays only: anything else is refused.

    CIFAR-10's batches are Python 2 pickles of ``{'data': ndarray, 'labels': list, ...}``.
    A NumPy array pickles as ``_reconstruct(ndarray, shape, dtype)`` plus state; those
    three callables (under NumPy 1's ``numpy.core`` and NumPy 2's ``numpy._core``
    names), and ``_codecs.encode`` limited to latin-1 (how Python 3 pickles ``bytes`` at
    protocol 2, for re-saved copies), are the only globals allowed, so a crafted pickle
    cannot call anything else.
    """

    def find_class(self, module: str, name: str):
        allowed = {
            ("_codecs", "encode"): lambda: (
                _latin1_encode
            ),  # bytes, as pickled by Python 3 at protocol 2
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
            ("numpy", "ndarray"): lambda: np.ndarray,
            ("numpy", "dtype"): lambda: np.dtype,
        }
        try:
            return allowed[(module, name)]()
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from an untrusted pickle"
            ) from None


def load_cifar_pickle(data: bytes) -> dict[str, object]:
    """Load one CIFAR batch pickle safely; keys are returned as ``str``."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any malformed pickle: a clear error, not a crash
        raise DownloadError(f"cannot read CIFAR-10 batch: {exc}") from exc
    if not isinstance(obj, dict):
        raise DownloadError(f"CIFAR-10 batch is a {type(obj).__name__}, expected a dict")
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


_CLASS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_ -]{0,63}$")
CIFAR_DIR = "cifar-10-batches-py"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"


def _cifar_batch(
    d: dict[str, object], name: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    data, labels = d.get("data"), d.get("labels")
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        raise DownloadError(f"{name}: 'data' must be a uint8 array of shape [N, 3072]")
    if not isinstance(labels, list) or len(labels) != data.shape[0]:
        raise DownloadError(f"{name}: 'labels' must be a list with one label per image")
    if not all(isinstance(x, int) and 0 <= x < num_classes for x in labels):
        raise DownloadError(f"{name}: labels must be integers in 0..{num_classes - 1}")
    # Rows are 1024 R, 1024 G, 1024 B values of a 32x32 image in row-major order.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.int64)


def _write_pngs(job: tuple[Path, list[str], str, np.ndarray, np.ndarray]) -> int:
    from PIL import Image

    root, classes, prefix, images, labels = job
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(np.ascontiguousarray(img)).save(
            root / classes[y] / f"{prefix}_{i:05d}.png", optimize=False
        )
    return len(labels)


def cifar10_to_folders(
    archive: str | os.PathLike, out: str | os.PathLike, workers: int | None = None
) -> dict[str, int]:
    """Convert the CIFAR-10 python tarball to ``out/train/<class>/*.png`` (5 training batches)
    and ``out/val/<class>/*.png`` (the test batch). Returns image counts per split."""
    out = Path(out)
    blobs: dict[str, bytes] = {}
    wanted = {f"{CIFAR_DIR}/{n}" for n in [*CIFAR_TRAIN, CIFAR_TEST, "batches.meta"]}
    try:
        with tarfile.open(archive, "r:*") as tf:
            for m, rel in iter_safe_members(tf):
                if str(rel) in wanted and m.isfile():
                    f = tf.extractfile(m)
                    if f is None:
                        raise DownloadError(f"cannot read {m.name} in {archive}")
                    blobs[rel.name] = f.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DownloadError(f"{archive} is not a readable tar archive: {exc}") from exc
    missing = sorted(w.rsplit("/", 1)[1] for w in wanted if w.rsplit("/", 1)[1] not in blobs)
    if missing:
        raise DownloadError(
            f"{archive} is not the CIFAR-10 python archive: missing {', '.join(missing)}"
        )

    meta = load_cifar_pickle(blobs.pop("batches.meta"))
    names = meta.get("label_names")
    if not isinstance(names, list) or not 2 <= len(names) <= 1000:
        raise DownloadError("batches.meta: 'label_names' must be a list of class names")
    classes = [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
    if len(set(classes)) != len(classes) or not all(_CLASS_RE.match(c) for c in classes):
        raise DownloadError(
            f"batches.meta: class names must be unique plain words, got {classes!r}"
        )

    jobs = []
    for split, batch_names in (("train", CIFAR_TRAIN), ("val", [CIFAR_TEST])):
        for c in classes:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        for name in batch_names:
            images, labels = _cifar_batch(load_cifar_pickle(blobs.pop(name)), name, len(classes))
            jobs.append((out / split, classes, name, images, labels))
    counts = {"train": sum(len(j[4]) for j in jobs[:-1]), "val": len(jobs[-1][4])}
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    if workers <= 1:
        for job in jobs:
            _write_pngs(job)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_pngs, jobs))
    return counts


# --------------------------------------------------------------------------- Imagenette


def imagenette_to_folders(archive: str | os.PathLike, out: str | os.PathLike) -> dict[str, int]:
    """Unpack an Imagenette tgz (``imagenette2[-160|-320]/{train,val}/<synset>/*.JPEG``) to
    ``out/train`` and ``out/val``; ``noisy_imagenette.csv`` is kept beside them."""
    out = Path(out)
    staging = out / ".extract"
    safe_extract(archive, staging)
    tops = [p for p in staging.iterdir() if p.is_dir()]
    root = next((p for p in tops if (p / "train").is_dir() and (p / "val").is_dir()), None)
    if root is None:
        raise DownloadError(
            f"{archive} has no <folder>/train and <folder>/val: not an Imagenette archive"
        )
    counts = {}
    for split in ("train", "val"):
        classes = [p for p in (root / split).iterdir() if p.is_dir()]
        if not classes:
            raise DownloadError(f"{archive}: {split}/ has no class folders")
        counts[split] = sum(1 for c in classes for f in c.iterdir() if f.is_file())
        (root / split).rename(out / split)
    for extra in root.glob("*.csv"):
        extra.rename(out / extra.name)
    shutil.rmtree(staging)
    return counts


# --------------------------------------------------------------------------- the command


def download_dataset(
    name: str,
    out: str | os.PathLike,
    *,
    variant: str | None = None,
    url: str | None = None,
    md5: str | None = None,
    verify: bool = True,
    cache_dir: str | os.PathLike | None = None,
    keep_archive: bool = False,
    progress: bool = True,
) -> Path:
    """Download, verify and unpack dataset ``name`` into ``out`` (see the module docstring).

    ``url`` (else ``$ALEXNET_<NAME>_URL``) replaces the official address; the archive is
    still checked against the official checksum (a mirror serves the same file) unless
    ``md5`` gives another one or ``verify`` is False.
    """
    if name not in ARCHIVES:
        raise DownloadError(f"unknown dataset {name!r}: choose from {', '.join(ARCHIVES)}")
    variant = variant or DEFAULT_VARIANT[name]
    if variant not in ARCHIVES[name]:
        raise DownloadError(
            f"unknown {name} variant {variant!r}: choose from {', '.join(ARCHIVES[name])}"
        )
    spec = ARCHIVES[name][variant]
    url = url or os.environ.get(URL_ENV[name]) or spec.url
    expected = (md5 or spec.md5) if verify else None
    if expected is not None and not re.fullmatch(r"[0-9a-fA-F]{32}", expected):
        raise DownloadError(f"--md5 must be 32 hex digits, got {expected!r}")

    out = Path(out)
    if (out / MARKER).is_file():
        if progress:
            log.info("%s already holds %s; nothing to do", out, name)
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DownloadError(f"{out} exists and is not empty; choose a new directory")

    if cache_dir is None:
        from alexnet.data.home import data_home

        cache_dir = data_home() / "downloads"
    filename = PurePosixPath(check_url(url).path).name or f"{name}-{variant}.tar.gz"
    if not re.fullmatch(r"[A-Za-z0-9._-]+", filename):
        filename = f"{name}-{variant}.tar.gz"
    archive = fetch(url, Path(cache_dir) / filename, expected, progress=progress)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        if progress:
            log.info("unpacking %s ...", archive.name)
        convert = cifar10_to_folders if name == "cifar10" else imagenette_to_folders
        counts = convert(archive, tmp)
        record = {
            "dataset": name,
            "variant": variant,
            "url": url,
            "md5": file_digest(archive, "md5"),
            "sha256": file_digest(archive, "sha256"),
            "verified": expected is not None,
            "counts": counts,
        }
        (tmp / MARKER).write_text(json.dumps(record, indent=1) + "\n")
        if out.exists():
            out.rmdir()  # empty, checked above
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archive:
        discard(archive)
    if progress:
        log.info("%s: %s train + %s val images in %s", name, f"{counts['train']:,}", f"{counts['val']:,}", out)
    return out
