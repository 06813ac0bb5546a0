"""Process-group setup for ``torchrun`` (DistributedDataParallel) and single-process runs.

``torchrun --nproc-per-node N -m alexnet train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous variables; :func:`setup` reads them, joins the group
(NCCL on GPUs, Gloo on CPUs) and pins each process to GPU ``LOCAL_RANK``. Without them
the run is a single process and every collective below is a no-op.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    restart_count: int = 0  # torchrun's TORCHELASTIC_RESTART_COUNT: > 0 after a worker failure
    # torchrun's job id (its --rdzv-id; a fresh one per --standalone launch). The same id in a
    # run's config.json means this process belongs to a later round of the same job: on a
    # node whose own workers did not fail, torchrun restarts them with restart_count still 0.
    run_id: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """What torchrun told this process (defaults: one process)."""

    def num(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default

    return DistInfo(
        rank=num("RANK", 0),
        world_size=num("WORLD_SIZE", 1),
        local_rank=num("LOCAL_RANK", 0),
        restart_count=num("TORCHELASTIC_RESTART_COUNT", 0),
        run_id=os.environ.get("TORCHELASTIC_RUN_ID") or None,
    )


def setup(device: torch.device) -> DistInfo:
    """Join the process group if launched by torchrun; returns this process's place in it."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = _round_store(info) if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" else None
        kwargs = {"store": store, "rank": info.rank, "world_size": info.world_size} if store is not None else {}
        dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None, **kwargs)
    return info


_ROUND_KEY = "alexnet/round_store"
log = logging.getLogger(__name__)


def _listen_on(host: str, multi_node: bool) -> socket.socket | None:
    """A listening socket on ``host``'s address (port chosen by the kernel), or None for
    TCPStore's default of every interface.

    TCPStore has no bind-address option: as master it listens on all interfaces, so with
    ``MASTER_ADDR=127.0.0.1`` anyone on the network could read and write the round's keys
    (and so steer its workers). Binding the socket here and handing it over as
    ``master_listen_fd`` keeps the store where the user said it is. One exception: a host
    name that resolves to loopback on this machine (Debian maps the own hostname to
    127.0.1.1) while other nodes take part, where binding there would lock those nodes out.
    """
    try:
        infos = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return None  # TCPStore reports the unresolvable name itself
    family, _, _, _, address = infos[0]
    if multi_node and ipaddress.ip_address(address[0]).is_loopback:
        try:
            ipaddress.ip_address(host)
        except ValueError:  # a name, not the literal loopback address the user chose
            log.warning("MASTER_ADDR %s resolves to %s here: the round store listens on every interface", host, address[0])
            return None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def _round_store(info: DistInfo, timeout: timedelta = timedelta(minutes=10)) -> dist.Store:
    """A fresh, empty key-value store for this round of workers.

    Under torchrun the workers share the agent's TCPStore, and torchrun (through 2.13 at
    least) keeps that store across ``--max-restarts`` rounds without a per-round namespace:
    a restarted worker can read the previous round's Gloo/NCCL addresses, which fails with
    "Connection refused" or hangs in ``init_process_group`` (pytorch/pytorch#135712).
    ``TORCHELASTIC_RESTART_COUNT`` cannot serve as the namespace, because with several nodes
    it differs between nodes. So rank 0 hosts a new store on a free port each round and
    publishes its address in the agent's store; the other ranks take the address and
    connect. A stale address points to the previous round's rank 0, which torchrun has
    stopped, so the connection is refused and the rank reads the key again until rank 0
    of this round has overwritten it.
    """
    host = os.environ.get("MASTER_ADDR", "127.0.0.1")
    agent = dist.TCPStore(host, int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    if info.rank == 0:
        multi_node = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size)) < info.world_size
        sock = _listen_on(host, multi_node)
        if sock is None:
            store = dist.TCPStore(host, 0, info.world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        else:
            port = sock.getsockname()[1]
            store = dist.TCPStore(host, port, info.world_size, is_master=True, timeout=timeout,
                                  wait_for_workers=False, master_listen_fd=sock.detach())  # the store owns it now
        agent.set(_ROUND_KEY, f"{host}:{store.port}")
        return store
    deadline = time.monotonic() + timeout.total_seconds()
    while True:
        address = agent.get(_ROUND_KEY).decode()  # waits (up to `timeout`) for rank 0's first round
        addr, _, port = address.rpartition(":")
        try:
            store = dist.TCPStore(addr, int(port), is_master=False, timeout=timedelta(seconds=2))
        except (RuntimeError, ValueError):  # DistNetworkError derives from RuntimeError
            if time.monotonic() > deadline:
                raise RuntimeError(f"rank {info.rank}: rank 0's store at {address} cannot be reached") from None
            time.sleep(0.1)
            continue
        store.set_timeout(timeout)
        return store


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place (no-op in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_flag(flag: bool, device: torch.device) -> bool:
    """True on every process if ``flag`` is true on any (a stop request, a NaN)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_gather_object(obj: object) -> list[object]:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object) -> object:
    """``obj`` from rank 0 on every process."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
