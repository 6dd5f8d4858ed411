"""Section ``wiretap``: the cost of a wiretap between a client and the fake.

The rows come from ``benchmarks/wiretap_overhead.py`` (its ``run()``; the file
also runs on its own): Version calls straight to the fake and through
``crilab.wiretap`` (what ``crilab tap`` runs), interleaved, with the wiretap's
p50 and p99 as ratios of the direct ones, the calls it captured, and the time
it spends decoding each call's frames.
"""

from __future__ import annotations

import importlib.util
import inspect
from types import ModuleType
from typing import Any

from .common import BENCH_DIR, Settings, columns_for, section_result

MODULE_PATH = BENCH_DIR / "wiretap_overhead.py"


def load() -> ModuleType | None:
    """The module, or None when it is missing or has no ``run``."""
    if not MODULE_PATH.is_file():
        return None
    spec = importlib.util.spec_from_file_location("wiretap_overhead", MODULE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module if callable(getattr(module, "run", None)) else None


def run(settings: Settings) -> dict[str, Any]:
    module = load()
    if module is None:
        print("  wiretap: not available")
        return section_result([], [], notes=["not available"])
    kwargs = (
        {"quick": settings.quick} if "quick" in inspect.signature(module.run).parameters else {}
    )
    rows = [dict(r) for r in module.run(**kwargs)]
    return section_result(
        rows, columns_for(rows), notes=["Rows from benchmarks/wiretap_overhead.py."]
    )
