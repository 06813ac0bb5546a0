"""Published ImageNet weights: fetched, verified and kept in the data home.

``alexnet weights download torchvision`` fetches torchvision's ``alexnet`` weights, the
file ``alexnet-owt-7be5be79.pth`` whose name carries the first 8 hex digits of its SHA-256
(torchvision's convention, checked here the same way). The download resumes an
interrupted ``.part`` file (:func:`alexnet.data.download.fetch`), a file whose digest does
not start with the published prefix is deleted and reported, and the result lives in
``<data home>/weights/``. :func:`alexnet.checkpoint.load_model` recognises the state dict
and builds ``alexnet_owt`` (the single-column network whose keys are torchvision's), so
every command that takes ``--checkpoint`` takes this file.

``url=`` or ``$ALEXNET_TORCHVISION_URL`` points at a mirror (the tests serve a file on
127.0.0.1); the published digest is still required unless ``sha256=`` names another.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from alexnet.data.download import discard, fetch, file_digest
from alexnet.errors import ChecksumError, DownloadError


@dataclass(frozen=True)
class Published:
    """One published weights file: where it is, the digest prefix it is published with, the model it fits."""

    name: str
    url: str
    sha256_prefix: str
    model: str
    url_env: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


WEIGHTS: dict[str, Published] = {
    "torchvision": Published(
        "torchvision",
        "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        "7be5be79",
        "alexnet_owt",
        "ALEXNET_TORCHVISION_URL",
    ),
}


def weights_dir() -> Path:
    """``<data home>/weights``: where downloaded weights are kept."""
    from alexnet.data.home import data_home

    return data_home() / "weights"


def weights_path(name: str, directory: str | Path | None = None) -> Path:
    """Where weights ``name`` are (or would be) stored."""
    return Path(directory or weights_dir()) / _spec(name).filename


def _spec(name: str) -> Published:
    if name not in WEIGHTS:
        raise DownloadError(f"unknown weights {name!r}: choose from {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


def download_weights(
    name: str = "torchvision",
    *,
    url: str | None = None,
    sha256: str | None = None,
    directory: str | Path | None = None,
    progress: bool = False,
    timeout: float = 60.0,
) -> Path:
    """Fetch (resuming), verify and store weights ``name``; returns the file's path.

    A file already in place is re-verified and reused. ``sha256``: a full digest or a
    prefix (at least 8 hex digits) to require instead of the published prefix.
    """
    spec = _spec(name)
    expected = (sha256 or spec.sha256_prefix).lower()
    if not re.fullmatch(r"[0-9a-f]{8,64}", expected):
        raise DownloadError(f"the expected SHA-256 must be 8 to 64 hex digits, got {expected!r}")
    url = url or os.environ.get(spec.url_env) or spec.url
    dest = weights_path(name, directory)
    path = fetch(url, dest, None, progress=progress, timeout=timeout)
    got = file_digest(path, "sha256")
    if not got.startswith(expected):
        discard(path)
        raise ChecksumError(
            f"{url}: SHA-256 {got[:16]}... does not start with the published {expected}; the file was deleted. "
            f"Rerun to download it again."
        )
    return path
