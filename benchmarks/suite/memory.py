"""Section ``memory``: RSS of a ``crilab serve`` process as calls accumulate.

The fake records every call in a history bounded to 10,000 calls (the default),
so RSS should climb while the history fills and then stay flat. Version, the
smallest call, shows what the history's own bookkeeping costs per call.
ListContainers of 100 containers has bigger answers: the history keeps each
request and answer under 64 KiB, and all of them together within a byte budget
(older ones become size notes), so it is bounded in bytes as well as in calls.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from crilab.runtime.instrument import KEEP_RESPONSE_BYTES, KEEP_TOTAL_BYTES
from crilab.stubs import api_pb2

from .common import (
    CALL_TIMEOUT,
    VERSION_REQUEST,
    Settings,
    crilab_serve,
    listen_address,
    open_channel,
    rss_mib,
    runtime_stub,
    scratch_dir,
    section_result,
)
from .latency import CONTAINERS, fill_over_grpc

HISTORY = 10_000
FLAT_MIB = 5.0  # growth after the history is full that still counts as flat

COLUMNS = [
    ("rpc", "calls of", ""),
    ("calls", "calls", "d"),
    ("before_mib", "RSS before MiB", ".1f"),
    ("full_mib", f"after {HISTORY:,} MiB", ".1f"),
    ("after_mib", "after all MiB", ".1f"),
    ("growth_mib", "growth MiB", ".1f"),
    ("growth_after_full_mib", "growth once full MiB", ".1f"),
    ("per_call_kib", "KiB per kept call", ".1f"),
    ("flat", "flat once full", ""),
]


def _checkpoints(total: int) -> list[int]:
    marks = sorted({min(HISTORY, total), *range(0, total + 1, max(total // 5, 1))} - {0})
    return [m for m in marks if m <= total]


def watch_rss(pid: int, call: Callable[[], object], total: int) -> dict[int, float]:
    """Make ``total`` calls, reading the server's RSS at a few checkpoints."""
    done, series = 0, {0: rss_mib(pid)}
    for mark in _checkpoints(total):
        while done < mark:
            call()
            done += 1
        series[mark] = rss_mib(pid)
    return series


def measure(rpc: str, total: int, fill: bool) -> dict[str, Any]:
    """One ``crilab serve`` process: ``total`` calls of ``rpc``, RSS along the way."""
    print(f"  memory: {total} {rpc} calls ...", flush=True)
    with (
        scratch_dir() as scratch,
        crilab_serve(listen_address("unix", scratch, "mem"), preload=("busybox",)) as server,
    ):
        if fill:
            fill_over_grpc(server.endpoint, scratch)
        with contextlib.closing(open_channel(server.endpoint)) as channel:
            series = watch_rss(server.pid, _caller(rpc, channel), total)
    return _row(rpc, total, series)


def _caller(rpc: str, channel: Any) -> Callable[[], object]:
    stub = runtime_stub(channel)
    if rpc == "Version":
        return lambda: stub.Version(VERSION_REQUEST, timeout=CALL_TIMEOUT)
    request = api_pb2.ListContainersRequest()
    return lambda: stub.ListContainers(request, timeout=CALL_TIMEOUT)


def _row(rpc: str, total: int, series: dict[int, float]) -> dict[str, Any]:
    before, after = series[0], series[total]
    full = series.get(HISTORY, after)
    kept = min(total, HISTORY)
    growth_full = after - full if total > HISTORY else float("nan")
    return {
        "rpc": rpc,
        "calls": total,
        "before_mib": before,
        "full_mib": full,
        "after_mib": after,
        "growth_mib": after - before,
        "growth_after_full_mib": growth_full,
        "per_call_kib": (full - before) * 1024 / kept,
        "flat": None if total <= HISTORY else growth_full <= FLAT_MIB,
        "series_mib": {str(k): v for k, v in series.items()},
    }


def run(settings: Settings) -> dict[str, Any]:
    rows = [
        measure("Version", settings.pick(100_000, 20_000), fill=False),
        measure(f"ListContainers ({CONTAINERS})", settings.pick(12_000, 2_000), fill=True),
    ]
    notes = [
        f"`crilab serve` with the default history ({HISTORY:,} calls); one client thread.",
        f"The history keeps a request or answer of at most {KEEP_RESPONSE_BYTES // 1024} KiB, "
        f"and {KEEP_TOTAL_BYTES / 2**20:.0f} MiB of them in all; past that, older ones are "
        "replaced by a note of their size.",
        f"flat: RSS grew at most {FLAT_MIB:g} MiB between the {HISTORY:,}th call and the last.",
        "KiB per kept call: RSS growth while the history fills, over the calls it keeps.",
    ]
    notes += [
        f"A full history of {r['rpc']} calls costs {r['per_call_kib'] * HISTORY / 1024:.0f} MiB."
        for r in rows
    ]
    return section_result(rows, COLUMNS, notes=notes)
