"""Section ``startup``: from process start to a served Version, and the stubs' share.

A fresh interpreter runs ``import crilab; rt = crilab.FakeRuntime(); c =
crilab.connect(rt.endpoint); c.version()`` and prints a line; the clock stops
when that line arrives. ``python -c pass`` (to its exit) is the interpreter's
own share; crilab's part is the difference of the medians, target at most 0.5 s.
The stub cache is warmed by one untimed run first.

The stubs' share: a fresh interpreter imports ``grpc``, then both generated
pairs (``api_pb2``, ``api_pb2_grpc``, ``helloworld_pb2``, ``helloworld_pb2_grpc``)
from the warm cache; the same with ``grpc`` alone is subtracted, so what is left
is finding the cached stubs and loading them (protoc never runs).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

from .common import REPO_DIR, Settings, section_result, target

LIMIT_S = 0.5
SNIPPET = (
    "import crilab; rt = crilab.FakeRuntime(); c = crilab.connect(rt.endpoint); c.version(); "
    "print('served', flush=True)"
)
GRPC_ONLY = "import grpc; print('imported', flush=True)"
WARM_STUBS = (
    "import grpc; "
    "from crilab.stubs import api_pb2, api_pb2_grpc, helloworld_pb2, helloworld_pb2_grpc; "
    "print('imported', flush=True)"
)

COLUMNS = [
    ("what", "process", ""),
    ("median_s", "median s", ".3f"),
    ("min_s", "min s", ".3f"),
    ("max_s", "max s", ".3f"),
    ("runs", "runs", "d"),
]


def time_to_line(argv: list[str]) -> float:
    """Seconds from spawning ``argv`` to its first stdout line (or its exit, if silent)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=REPO_DIR, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    took = time.perf_counter() - start
    proc.stdout.read()
    proc.stdout.close()
    if proc.wait(timeout=60) != 0:
        raise RuntimeError(f"{argv!r} failed with exit code {proc.returncode}")
    if not line:  # no output: the process's whole life is the figure
        took = time.perf_counter() - start
    return took


def _row(what: str, times: list[float]) -> dict[str, Any]:
    return {
        "what": what,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "runs": len(times),
    }


def interleaved(argvs: dict[str, list[str]], runs: int) -> dict[str, list[float]]:
    """``runs`` timings of each command, taken in turn (the order flips every round)."""
    times: dict[str, list[float]] = {name: [] for name in argvs}
    names = list(argvs)
    for index in range(runs):
        for name in names if index % 2 == 0 else reversed(names):
            times[name].append(time_to_line(argvs[name]))
    return times


def run(settings: Settings) -> dict[str, Any]:
    crilab_argv = [sys.executable, "-c", SNIPPET]
    time_to_line(crilab_argv)  # warm the stub cache and the bytecode caches
    runs = settings.pick(5, 3)
    times = interleaved(
        {
            "python -c pass": [sys.executable, "-c", "pass"],
            "FakeRuntime + connect + Version": crilab_argv,
            "import grpc": [sys.executable, "-c", GRPC_ONLY],
            "import grpc + both stub pairs (warm cache)": [sys.executable, "-c", WARM_STUBS],
        },
        runs,
    )
    rows = [_row(what, got) for what, got in times.items()]
    medians = {row["what"]: row["median_s"] for row in rows}
    share = medians["FakeRuntime + connect + Version"] - medians["python -c pass"]
    stubs = medians["import grpc + both stub pairs (warm cache)"] - medians["import grpc"]
    rows.insert(2, {"what": "crilab's part (difference of medians)", "median_s": share})
    rows.append({"what": "warm stub import (difference of medians)", "median_s": stubs})
    targets = [target("startup: crilab's part to a served Version", share, LIMIT_S, "s")]
    notes = [
        "Wall time measured by the parent from spawn to the child's first line "
        "('served' or 'imported').",
        "Warm stub import: the api and helloworld pairs from the stub cache, beyond `import "
        "grpc`; it is part of crilab's part above.",
    ]
    return section_result(rows, COLUMNS, targets=targets, notes=notes)
