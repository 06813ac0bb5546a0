"""The one bounded cache the explorer and the attribution share."""

from __future__ import annotations

import threading

import pytest

from alexnet.lru import LRU


def test_least_recently_used_goes_first() -> None:
    c: LRU[int] = LRU(2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # now "b" is the least recent
    c.put("c", 3)
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3 and len(c) == 2
    assert c.put("a", 9) == 9 and c.get("a") == 9 and len(c) == 2
    c.clear()
    assert len(c) == 0 and c.get("a") is None


def test_bounded_under_threads() -> None:
    c: LRU[int] = LRU(50)

    def work(k: int) -> None:
        for i in range(2000):
            c.put((k, i), i)
            c.get((k, i - 1))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(c) == 50


def test_a_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        LRU(0)
