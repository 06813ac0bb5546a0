"""Where the project keeps datasets it makes or downloads: one function decides."""

from __future__ import annotations

import os
from pathlib import Path


def data_home() -> Path:
    """Where the project caches datasets: ``$ALEXNET_DATA``, else ``$ALEXNET_HOME/data``,
    else ``$XDG_CACHE_HOME/alexnet`` (default ``~/.cache/alexnet``)."""
    if os.environ.get("ALEXNET_DATA"):
        return Path(os.environ["ALEXNET_DATA"]).expanduser()
    if os.environ.get("ALEXNET_HOME"):
        return Path(os.environ["ALEXNET_HOME"]).expanduser() / "data"
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "alexnet"
