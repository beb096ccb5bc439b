"""A heartbeat: call a function every few seconds from a thread, until stopped.

The running iteration, each running trial (through Optuna) and the daemon all
say they are alive this way, so that whoever finds their row later can tell
a live process from a dead one.  A beat that fails (the database briefly
locked or unreachable) is logged and tried again at the next one: the work
the heartbeat watches must go on.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("dstune.heartbeat")


class Heartbeat:
    """Calls ``beat`` every ``interval_s`` seconds from a daemon thread; a context manager, or start/stop."""

    def __init__(self, beat: Callable[[], None], interval_s: float, what: str) -> None:
        self.beat, self.interval_s, self.what = beat, interval_s, what
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"dstune-heartbeat-{what}", daemon=True)

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the work must go on
                log.warning("heartbeat of %s failed: %s", self.what, exc)

    def start(self) -> "Heartbeat":
        if self.interval_s > 0:
            self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join()

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
