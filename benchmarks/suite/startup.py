"""Section ``startup``: from process start to a served Version answer.

A fresh interpreter runs ``import crilab; rt = crilab.FakeRuntime(); c =
crilab.connect(rt.endpoint); c.version()`` and prints a line; the clock stops
when that line arrives. ``python -c pass`` (to its exit) is the interpreter's
own share; crilab's part is the difference of the medians, target at most 0.5 s.
The stub cache is warmed by one untimed run first.
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


def run(settings: Settings) -> dict[str, Any]:
    crilab_argv = [sys.executable, "-c", SNIPPET]
    bare_argv = [sys.executable, "-c", "pass"]
    time_to_line(crilab_argv)  # warm the stub cache and the bytecode caches
    runs = settings.pick(5, 3)
    bare, full = [], []
    for _ in range(runs):  # interleaved
        bare.append(time_to_line(bare_argv))
        full.append(time_to_line(crilab_argv))
    rows = [_row("python -c pass", bare), _row("FakeRuntime + connect + Version", full)]
    share = rows[1]["median_s"] - rows[0]["median_s"]
    rows.append({"what": "crilab's part (difference of medians)", "median_s": share})
    targets = [target("startup: crilab's part to a served Version", share, LIMIT_S, "s")]
    notes = ["Wall time measured by the parent from spawn to the child's 'served' line."]
    return section_result(rows, COLUMNS, targets=targets, notes=notes)
