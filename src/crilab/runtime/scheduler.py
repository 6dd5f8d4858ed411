"""One timer thread for every simulated process, instead of a thread per container."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The longest one wait may last (``Condition.wait`` overflows past it, ~292 years on
#: Linux): a callback due later than this is as good as never, and is dropped.
MAX_DELAY = threading.TIMEOUT_MAX


def capped(seconds: float) -> float:
    """``seconds`` as a timeout any ``wait`` accepts: 0 <= result <= TIMEOUT_MAX."""
    if not seconds > 0:  # also NaN
        return 0.0
    return min(seconds, MAX_DELAY)


class Scheduler:
    """Run callbacks at a monotonic time, in order, on one daemon thread.

    The thread survives anything one callback does (the error is logged), so a
    bug in one simulated process never freezes every other container.
    """

    def __init__(self, name: str = "crilab-scheduler") -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` at monotonic time ``when``; a time past ``MAX_DELAY`` from now
        (``sleep 9999999999``, infinity) never comes, so nothing is queued for it."""
        if math.isnan(when) or when - time.monotonic() > MAX_DELAY:
            return
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._heap, (when, next(self._seq), callback))
            self._cond.notify()

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.call_at(time.monotonic(), callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        if delay > MAX_DELAY:  # also inf: never (and monotonic() + delay could overflow)
            return
        self.call_at(time.monotonic() + delay, callback)

    def _run(self) -> None:
        while True:
            try:
                callback = self._next()
            except Exception:  # never expected; the thread must outlive it all the same
                log.exception("crilab scheduler: waiting for the next callback failed")
                time.sleep(0.01)
                continue
            if callback is None:
                return
            try:
                callback()
            except Exception:  # a bug in one simulated process must not stop the others
                log.exception("scheduled callback failed")

    def _next(self) -> Callable[[], None] | None:
        """The next due callback (waiting for it), or None once closed."""
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                if self._heap and self._heap[0][0] <= now:
                    break
                wait = capped(self._heap[0][0] - now) if self._heap else None
                self._cond.wait(wait)
            if self._closed:
                return None
            return heapq.heappop(self._heap)[2]

    @property
    def alive(self) -> bool:
        """Whether the timer thread still runs (for tests)."""
        return self._thread.is_alive()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)
