"""Container events fan-out: every subscriber gets every event, none can stall the runtime.

The state layer publishes an event after each container transition (created,
started, stopped, deleted), outside its lock. Each subscriber has a bounded
queue. Policy when a subscriber is too slow and its queue is full: the oldest
undelivered event is dropped and the subscriber's ``dropped`` count grows, so
the runtime never blocks on a reader (the kubelet's evented PLEG relists when
it suspects it missed events, which is exactly what a dropped count tells it).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Any

DEFAULT_QUEUE = 1024


class Subscription:
    """One reader's bounded queue. Iterate it, or call ``get`` with a timeout."""

    def __init__(self, hub: EventHub, maxlen: int) -> None:
        self._hub = hub
        self._items: collections.deque[Any] = collections.deque(maxlen=maxlen)
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def _put(self, event: Any) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._items) == self._items.maxlen:
                self.dropped += 1
            self._items.append(event)
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Any | None:
        """The next event, or ``None`` after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            return self._items.popleft() if self._items else None

    def __iter__(self) -> Iterator[Any]:
        while True:
            event = self.get(timeout=0.25)
            if event is not None:
                yield event
            elif self.closed:
                return

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed and not self._items

    def close(self) -> None:
        """Stop receiving; also removes the subscription from its hub."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._hub._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Publish once, deliver to every live subscription."""

    def __init__(self, queue_size: int = DEFAULT_QUEUE) -> None:
        self.queue_size = queue_size
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()

    def subscribe(self, queue_size: int | None = None) -> Subscription:
        sub = Subscription(self, queue_size or self.queue_size)
        with self._lock:
            self._subs.append(sub)
        return sub

    def publish(self, event: Any) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub._put(event)

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def close(self) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()
