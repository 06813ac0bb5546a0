"""The per-round store that keeps torchrun restarts from reading the previous round's addresses."""

from __future__ import annotations

import socket
import threading
from datetime import timedelta

import pytest
import torch.distributed as dist

from alexnet.training import distributed as D

pytestmark = pytest.mark.reliability


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def agent(monkeypatch) -> dist.TCPStore:
    """torchrun's shared store, still holding what the previous round's rank 0 published
    before torchrun stopped it."""
    store = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(store.port))
    store.set(D._ROUND_KEY, f"127.0.0.1:{_closed_port()}")
    return store


def test_round_store_skips_a_stale_address_and_joins_this_rounds_rank0(agent):
    got: dict[str, object] = {}

    def rank1() -> None:
        try:
            got["store"] = D._round_store(D.DistInfo(rank=1, world_size=2), timeout=timedelta(seconds=30))
        except Exception as exc:  # reported to the test thread below
            got["error"] = exc

    worker = threading.Thread(target=rank1)
    worker.start()
    worker.join(timeout=1.0)
    assert worker.is_alive(), f"rank 1 must not settle on the stale address: {got}"

    store0 = D._round_store(D.DistInfo(rank=0, world_size=2), timeout=timedelta(seconds=30))
    worker.join(timeout=30)
    assert not worker.is_alive() and "error" not in got, got
    store1 = got["store"]
    store0.set("hello", "from rank 0")  # the two ranks now share one fresh store
    assert store1.get("hello") == b"from rank 0"
    assert store0.port != agent.port


def test_round_store_gives_up_with_a_clear_error(agent):
    with pytest.raises(RuntimeError, match="cannot be reached"):
        D._round_store(D.DistInfo(rank=1, world_size=2), timeout=timedelta(seconds=3))
