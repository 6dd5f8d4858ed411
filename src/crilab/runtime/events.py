"""Container events fan-out: every subscriber gets every event, none can stall the runtime.

The state layer publishes an event at each container transition (created, started,
stopped, deleted) while it holds its lock, so every subscriber sees the events in the
order the transitions happened; publishing only appends to bounded queues, it never
waits for a reader.

Each subscriber's queue is bounded twice: at most ``queue_size`` events (1024) and at
most ``queue_bytes`` bytes of them (8 MiB; the newest event is always kept, whatever
its size). Policy when a subscriber is too slow and its queue is full: the oldest
undelivered events are dropped and the subscriber's ``dropped`` count grows, so the
runtime never blocks on a reader and a reader that stopped reading (a paused notebook
panel) holds a few MiB, not a copy of every pod's statuses for every change (the
kubelet's evented PLEG relists when it suspects it missed events, which is exactly
what a dropped count tells it).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterator
from typing import Any

DEFAULT_QUEUE = 1024
DEFAULT_QUEUE_BYTES = 8 * 1024 * 1024
#: Largest event sent: one gRPC message (16 MiB) less room for framing. The state trims a
#: bigger one (it leaves out container statuses) rather than have the stream fail.
MAX_EVENT_BYTES = 16 * 1024 * 1024 - 64 * 1024


class Subscription:
    """One reader's bounded queue. Iterate it, or call ``get`` with a timeout."""

    def __init__(self, hub: EventHub, maxlen: int, max_bytes: int) -> None:
        self._hub = hub
        self._items: collections.deque[Any] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()  # in step with _items
        self._cond = threading.Condition()
        self._closed = False
        self.maxlen = maxlen
        self.max_bytes = max_bytes
        self.queued_bytes = 0  # of the events waiting in the queue
        self.dropped = 0

    def _put(self, event: Any, size: int) -> None:
        with self._cond:
            if self._closed:
                return
            self._items.append(event)
            self._sizes.append(size)
            self.queued_bytes += size
            while len(self._items) > self.maxlen or (
                self.queued_bytes > self.max_bytes and len(self._items) > 1
            ):
                self._items.popleft()
                self.queued_bytes -= self._sizes.popleft()
                self.dropped += 1
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Any | None:
        """The next event, or ``None`` after ``timeout`` seconds or once closed."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if not self._items:
                return None
            self.queued_bytes -= self._sizes.popleft()
            return self._items.popleft()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

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

    def __init__(
        self, queue_size: int = DEFAULT_QUEUE, queue_bytes: int = DEFAULT_QUEUE_BYTES
    ) -> None:
        self.queue_size = queue_size
        self.queue_bytes = queue_bytes
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()

    def subscribe(
        self, queue_size: int | None = None, queue_bytes: int | None = None
    ) -> Subscription:
        sub = Subscription(self, queue_size or self.queue_size, queue_bytes or self.queue_bytes)
        with self._lock:
            self._subs.append(sub)
        return sub

    def publish(self, event: Any, size: int) -> None:
        """Queue ``event`` (of ``size`` bytes, as its builder measured) for every subscriber."""
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub._put(event, size)

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def subscriptions(self) -> list[Subscription]:
        """The live subscriptions (for tests and the slow-subscriber figures)."""
        with self._lock:
            return list(self._subs)

    def close(self) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()
