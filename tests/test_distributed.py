"""The per-round store that keeps torchrun restarts from reading the previous round's addresses."""

from __future__ import annotations

import ipaddress
import socket
import threading
from datetime import timedelta
from pathlib import Path

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


def _listening(port: int) -> list[str]:
    """Addresses with a socket listening on TCP ``port`` (Linux: read from /proc/net)."""
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, _, p = local.partition(":")
            if state == "0A" and int(p, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(addr)  # 32-bit words in host (little-endian) order
                found.append(socket.inet_ntop(family, b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))))
    return found


def _can_bind(address: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the listening sockets from /proc/net")
@pytest.mark.parametrize(
    ("master_addr", "bound"),
    [("127.0.0.1", "127.0.0.1"), ("127.0.0.2", "127.0.0.2"), ("localhost", None), ("::1", "::1")],
)
def test_round_store_listens_only_on_the_master_address(agent, monkeypatch, master_addr, bound):
    if bound and not _can_bind(bound):
        pytest.skip(f"{bound} is not configured here")
    bound = bound or socket.getaddrinfo(master_addr, 0, type=socket.SOCK_STREAM)[0][4][0]
    monkeypatch.setenv("MASTER_ADDR", master_addr)
    store0 = D._round_store(D.DistInfo(rank=0, world_size=2), timeout=timedelta(seconds=30))
    assert _listening(store0.port) == [bound]  # not 0.0.0.0 or :: (every interface)
    store1 = D._round_store(D.DistInfo(rank=1, world_size=2), timeout=timedelta(seconds=30))
    store0.set("hello", "from rank 0")  # the workers still meet there
    assert store1.get("hello") == b"from rank 0"
    if bound == "127.0.0.2":  # another address of this machine: nothing listens there
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", store0.port), timeout=5).close()


def test_a_name_for_loopback_does_not_lock_other_nodes_out():
    # Debian maps the own hostname to 127.0.1.1: with other nodes taking part, binding there
    # would refuse them, so such a name keeps the store on every interface.
    assert D._listen_on("localhost", multi_node=True) is None
    with D._listen_on("localhost", multi_node=False) as single, D._listen_on("127.0.0.1", multi_node=True) as literal:
        assert ipaddress.ip_address(single.getsockname()[0]).is_loopback
        assert literal.getsockname()[0] == "127.0.0.1"  # a literal address is what the user chose
