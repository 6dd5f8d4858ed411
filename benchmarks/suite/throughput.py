"""Section ``throughput``: Version calls/s with 1, 4 and 16 client threads.

The fake in this process (``FakeRuntime`` on a background thread, sharing the
client's interpreter) against ``crilab serve`` in its own process; the client
is always this process, each thread with its own channel (its own connection).
Both are measured in alternating batches; the ratio is separate/in-process.
"""

from __future__ import annotations

from typing import Any

import crilab

from .common import (
    PerThreadStubs,
    Settings,
    crilab_serve,
    interleave,
    listen_address,
    ratio,
    scratch_dir,
    section_result,
)

CONCURRENCY = (1, 4, 16)

COLUMNS = [
    ("threads", "client threads", "d"),
    ("inproc_cps", "in-process calls/s", ".0f"),
    ("serve_cps", "crilab serve calls/s", ".0f"),
    ("ratio", "serve / in-process", ".2f"),
    ("inproc_p50_ms", "in-process p50 ms", ".3f"),
    ("serve_p50_ms", "serve p50 ms", ".3f"),
    ("inproc_p99_ms", "in-process p99 ms", ".3f"),
    ("serve_p99_ms", "serve p99 ms", ".3f"),
]


def measure_threads(inproc: str, serve: str, threads: int, settings: Settings) -> dict[str, Any]:
    """One row: both runtimes at ``threads`` concurrent client threads."""
    pools = {"in-process": PerThreadStubs(inproc, threads), "serve": PerThreadStubs(serve, threads)}
    try:
        for pool in pools.values():
            pool.warm_up()
        got = interleave(
            {name: pool.version for name, pool in pools.items()},
            rounds=settings.pick(6, 2),
            batch=settings.pick(1500, 300) * (1 if threads == 1 else 2),
            concurrency=threads,
            warmup=0,
        )
    finally:
        for pool in pools.values():
            pool.close()
    a, b = got["in-process"], got["serve"]
    if a.error_count or b.error_count:
        raise RuntimeError(f"errors: {a.errors} (in-process), {b.errors} (serve)")
    return {
        "threads": threads,
        "calls": a.total,
        "inproc_cps": a.calls_per_second,
        "serve_cps": b.calls_per_second,
        "ratio": ratio(b.calls_per_second, a.calls_per_second),
        "inproc_p50_ms": a.p50 * 1e3,
        "serve_p50_ms": b.p50 * 1e3,
        "inproc_p99_ms": a.p99 * 1e3,
        "serve_p99_ms": b.p99 * 1e3,
    }


def run(settings: Settings) -> dict[str, Any]:
    rows = []
    with scratch_dir() as scratch:
        rt = crilab.FakeRuntime(listen_address("unix", scratch, "inproc"))
        try:
            with crilab_serve(listen_address("unix", scratch, "serve")) as serve:
                for threads in CONCURRENCY:
                    print(f"  throughput: {threads} client thread(s) ...", flush=True)
                    rows.append(measure_threads(rt.endpoint, serve.endpoint, threads, settings))
        finally:
            rt.stop()
    notes = [
        "Unix socket; recording on. calls/s = all calls over the summed wall time of the batches.",
        "In-process, the client threads and the server share one interpreter (one GIL); "
        "`crilab serve` has its own, so on 2 cores it can run beside the client.",
    ]
    return section_result(rows, COLUMNS, notes=notes)
