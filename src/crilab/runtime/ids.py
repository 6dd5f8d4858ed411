"""IDs as containerd makes them (64 hex characters) and lookup by unique prefix.

crictl prints 13-character IDs and sends them back, so every call that takes
an ID must accept a unique prefix. A sorted list and ``bisect`` find all IDs
with a prefix in O(log n), with no scan.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import os
from collections.abc import Iterator

from .errors import InvalidArgument, NotFound


class IdFactory:
    """Deterministic for a given seed (tests, docs); a random seed otherwise."""

    def __init__(self, seed: str | int | None = None) -> None:
        self._seed = str(seed) if seed is not None else os.urandom(16).hex()
        self._count = itertools.count(1)

    def new(self, kind: str) -> str:
        return hashlib.sha256(f"{self._seed}:{kind}:{next(self._count)}".encode()).hexdigest()


class PrefixIndex:
    """A sorted set of IDs that resolves unique prefixes."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        pods = kind == "pod sandbox"
        self._how_to_list = (
            "ListPodSandbox, crictl pods" if pods else "ListContainers, crictl ps -a"
        )
        self._ids: list[str] = []

    def add(self, ident: str) -> None:
        bisect.insort(self._ids, ident)

    def discard(self, ident: str) -> None:
        i = bisect.bisect_left(self._ids, ident)
        if i < len(self._ids) and self._ids[i] == ident:
            del self._ids[i]

    def clear(self) -> None:
        self._ids.clear()

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        """The IDs in sorted order (a copy: the index may change meanwhile)."""
        return iter(list(self._ids))

    def __contains__(self, ident: str) -> bool:
        i = bisect.bisect_left(self._ids, ident)
        return i < len(self._ids) and self._ids[i] == ident

    def matching(self, prefix: str, limit: int = 2) -> list[str]:
        """Up to ``limit`` IDs starting with ``prefix``."""
        i = bisect.bisect_left(self._ids, prefix)
        out: list[str] = []
        while i < len(self._ids) and self._ids[i].startswith(prefix) and len(out) < limit:
            out.append(self._ids[i])
            i += 1
        return out

    def resolve(self, prefix: str, field: str) -> str:
        """The one ID with this prefix, else NotFound or InvalidArgument (ambiguous)."""
        if not prefix:
            raise InvalidArgument(f"{field} is empty: give the {self.kind} ID (or a unique prefix)")
        found = self.matching(prefix)
        if not found:
            raise NotFound(
                f"{self.kind} {prefix!r} not found: list them to see the IDs ({self._how_to_list})"
            )
        if len(found) > 1:
            raise InvalidArgument(
                f"{self.kind} ID prefix {prefix!r} is ambiguous: it matches more than one "
                f"{self.kind} (e.g. {found[0][:16]}… and {found[1][:16]}…); give more characters"
            )
        return found[0]
