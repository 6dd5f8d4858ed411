"""Section ``wiretap``: the rows of ``benchmarks/wiretap_overhead.py``, when it exists.

That module (written separately) exposes ``run() -> list[dict]``; if its
``run`` takes a ``quick`` argument, ``--quick`` is passed on.
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
