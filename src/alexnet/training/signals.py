"""SIGTERM and SIGINT during training: finish the current step, checkpoint, exit cleanly."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any


class StopFlag:
    """While entered, SIGTERM and SIGINT set ``signal`` instead of killing the process; the
    loop reads it at the next step boundary. A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        # Handlers can only be installed from the main thread (and not on Windows).
        if sys.platform != "win32" and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None and signum == signal.SIGINT:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
