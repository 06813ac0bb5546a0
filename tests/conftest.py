"""Shared test plumbing: the reliability suite's measured figures.

Tests of guarantees call ``figure("what was measured", value)``; with
``ALEXNET_RELIABILITY_JSON=path`` set (``make reliability`` does), the session writes
every figure with its test id to that file, the source of ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

_FIGURES: list[dict] = []


@pytest.fixture
def figure(request: pytest.FixtureRequest) -> Callable[[str, object], None]:
    def record(name: str, value: object) -> None:
        _FIGURES.append({"test": request.node.nodeid, "figure": name, "value": value})

    return record


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    out = os.environ.get("ALEXNET_RELIABILITY_JSON")
    if out and _FIGURES:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"exitstatus": int(exitstatus), "figures": _FIGURES}, indent=1))
